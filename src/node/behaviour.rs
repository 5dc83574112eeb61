//! The node's combined libp2p behaviour.

use std::time::Duration;

use hydromesh_proto::protocols;
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::request_response::ProtocolSupport;
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{gossipsub, identify, identity::Keypair, kad, mdns, ping, StreamProtocol};

use crate::config::Config;
use crate::protocol::{self, ingest, query, sync};

/// Everything a fog node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that connections over the limits are refused before anything else sees them.
    pub limits: connection_limits::Behaviour,
    pub ingest: ingest::Behaviour,
    pub query: query::Behaviour,
    pub sync: sync::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    pub fn new(keypair: &Keypair, config: &Config) -> Result<Self, String> {
        let peer_id = keypair.public().to_peer_id();
        let mut kad_config = kad::Config::new(StreamProtocol::new(protocols::KAD));
        kad_config.set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
        let mut kad = kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Fog nodes are servers: without this, a node on loopback or behind no confirmed
        // external address would stay a DHT client and never be found.
        kad.set_mode(Some(kad::Mode::Server));
        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| format!("mDNS: {e}"))?,
            )
        } else {
            None
        };
        let limits = ConnectionLimits::default()
            .with_max_pending_incoming(Some(128))
            .with_max_established_incoming(Some(config.max_incoming_connections))
            .with_max_established_per_peer(Some(4));
        Ok(Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            ingest: ingest::behaviour(ProtocolSupport::Full),
            query: query::behaviour(ProtocolSupport::Full),
            sync: sync::behaviour(ProtocolSupport::Full),
            gossipsub: protocol::summary::gossipsub(keypair, config.gossip_heartbeat)?,
            kad,
            identify: identify::Behaviour::new(
                identify::Config::new(protocols::IDENTIFY.to_owned(), keypair.public())
                    .with_push_listen_addr_updates(true),
            ),
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
        })
    }
}
