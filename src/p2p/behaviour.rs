//! The node's combined libp2p behaviour, and the gossipsub topics it publishes on.

use std::time::Duration;

use hydromesh_proto::{limits, protocols};
use libp2p::connection_limits::{self, ConnectionLimits};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity, ValidationMode};
use libp2p::request_response::ProtocolSupport;
use libp2p::swarm::{behaviour::toggle::Toggle, NetworkBehaviour};
use libp2p::{identify, identity::Keypair, mdns, ping};
use sha2::{Digest, Sha256};

use super::{ingest, peer, query, sync, TransportError};

/// Inbound connections still negotiating (transport security and multiplexing) at once. A TCP
/// connection that sends nothing counts until the upgrade times out (10 s): at 128, as many
/// silent connections kept every client and node out. Each costs a socket and a few kilobytes,
/// so the bound is high: idle connections cannot fill it before they time out.
pub const MAX_PENDING_INCOMING: u32 = 16_384;

/// What the node's behaviour is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Discover peers on the LAN.
    pub mdns: bool,
    /// Most inbound connections at once.
    pub max_incoming_connections: u32,
    /// Gossipsub heartbeat.
    pub gossip_heartbeat: Duration,
    /// How often each connection is pinged; a ping unanswered for as long (at most 20 s) fails.
    pub ping_interval: Duration,
}

// No Kademlia: every summary carries its node's addresses, so a node that reached one member
// learns every node's addresses by sync, and its dialer keeps a few of them connected. Kademlia's
// walks connected each node to most others (about 107 connections per node at 100 nodes), and
// gossipsub keeps a stream open on every connection, so they never idled out.

/// Everything a fog node speaks.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that connections over the limits are refused before anything else sees them.
    pub limits: connection_limits::Behaviour,
    /// Readings from meters and gateways.
    pub ingest: ingest::Behaviour,
    /// Questions from clients.
    pub query: query::Behaviour,
    /// Questions between fog nodes.
    pub peer: peer::Behaviour,
    /// Anti-entropy.
    pub sync: sync::Behaviour,
    /// Summaries and admin commands.
    pub gossipsub: gossipsub::Behaviour,
    /// Listen addresses and protocols of peers.
    pub identify: identify::Behaviour,
    /// Liveness of connections.
    pub ping: ping::Behaviour,
    /// LAN discovery, when enabled.
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

impl Behaviour {
    /// The behaviour of a node with `keypair`.
    pub fn new(keypair: &Keypair, settings: &Settings) -> Result<Self, TransportError> {
        let peer_id = keypair.public().to_peer_id();
        let mdns = if settings.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| TransportError::Behaviour { what: "mDNS", reason: e.to_string() })?,
            )
        } else {
            None
        };
        // One budget for the inbound requests of every protocol.
        let budget = super::codec::Budget::new(super::codec::MAX_INBOUND_BUFFERED);
        let limits = ConnectionLimits::default()
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_established_incoming(Some(settings.max_incoming_connections))
            .with_max_established_per_peer(Some(4));
        Ok(Behaviour {
            limits: connection_limits::Behaviour::new(limits),
            ingest: ingest::behaviour(ProtocolSupport::Full, budget.clone()),
            query: query::behaviour(ProtocolSupport::Full, budget.clone()),
            peer: peer::behaviour(ProtocolSupport::Full, budget.clone()),
            sync: sync::behaviour(ProtocolSupport::Full, budget),
            gossipsub: gossipsub(settings.gossip_heartbeat)?,
            identify: identify::Behaviour::new(
                identify::Config::new(protocols::IDENTIFY.to_owned(), keypair.public())
                    .with_push_listen_addr_updates(true),
            ),
            // A slow ping costs little per connection; the node closes a connection whose ping
            // times out (a cut link), so that it dials again rather than wait for TCP.
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(settings.ping_interval)
                    .with_timeout(settings.ping_interval.min(Duration::from_secs(20))),
            ),
            mdns: mdns.into(),
        })
    }
}

/// The summary topic.
pub fn summary_topic() -> IdentTopic {
    IdentTopic::new(protocols::SUMMARY_TOPIC)
}

/// The admin command topic.
pub fn control_topic() -> IdentTopic {
    IdentTopic::new(protocols::CONTROL_TOPIC)
}

/// A gossipsub behaviour tuned for fog meshes of a handful to a thousand nodes: a small mesh
/// degree (3, pruned back from above 4) so that three nodes already form a mesh and each message
/// reaches a node about three times, gossip of message ids to 2 peers outside the mesh each
/// heartbeat (anti-entropy repairs what gossip misses; at 100 idle nodes, gossip to 3 peers was
/// about a third of a node's traffic), a short first heartbeat, and application validation of
/// every message before it is relayed.
///
/// Messages are anonymous and named by a hash of their content: every hydromesh message is
/// already signed by its origin (summaries and liveness by the node, commands by an admin), so
/// gossipsub's own author, sequence number and second signature would only add ~130 bytes to
/// each; and the same message relayed by two paths is recognised as one.
fn gossipsub(heartbeat: Duration) -> Result<gossipsub::Behaviour, TransportError> {
    let refused = |reason: String| TransportError::Behaviour { what: "gossipsub", reason };
    let config = gossipsub::ConfigBuilder::default()
        .mesh_n(3)
        .mesh_n_low(2)
        .mesh_n_high(4)
        .mesh_outbound_min(1)
        .flood_publish(false)
        .gossip_lazy(2)
        .idontwant_message_size_threshold(256)
        .heartbeat_initial_delay(Duration::from_millis(100))
        .heartbeat_interval(heartbeat)
        .validation_mode(ValidationMode::Anonymous)
        .message_id_fn(|message| gossipsub::MessageId::from(&Sha256::digest(&message.data)[..20]))
        .validate_messages()
        .max_transmit_size(limits::MAX_SUMMARY_BYTES + 1024)
        .build()
        .map_err(|e| refused(e.to_string()))?;
    gossipsub::Behaviour::new(MessageAuthenticity::Anonymous, config).map_err(|e| refused(e.to_owned()))
}
