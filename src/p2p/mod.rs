//! libp2p: the transport (TCP and QUIC, noise, yamux), one module per request-response
//! protocol, the node's combined behaviour ([`behaviour`]) and a client of one node
//! ([`client`]).
//!
//! Request-response protocols (`ingest`, `query`, `peer`, `sync`) use one bincode
//! [`codec::Codec`] that refuses a message over its protocol's size limit before decoding it.
//! Summaries and admin commands travel on gossipsub.

pub(crate) mod behaviour;
pub mod client;
pub mod codec;
pub mod swarm_key;

pub use swarm_key::{SwarmKey, SwarmKeyError};

use std::time::Duration;

use libp2p::request_response::{self, ProtocolSupport};
use libp2p::{identity::Keypair, noise, swarm::NetworkBehaviour, tcp, yamux, StreamProtocol, Swarm};

/// Declares a request-response protocol module: its behaviour type and constructor.
macro_rules! request_response_protocol {
    ($(#[$doc:meta])* $module:ident, $name:expr, $request:ty, $response:ty, $request_limit:expr, $response_limit:expr, $timeout:expr) => {
        $(#[$doc])*
        pub mod $module {
            use super::*;

            /// The behaviour speaking this protocol.
            pub type Behaviour = request_response::Behaviour<codec::Codec<$request, $response>>;

            /// A behaviour that answers (`Full`) or only asks (`Outbound`), reading inbound
            /// requests within `budget`.
            pub fn behaviour(support: ProtocolSupport, budget: codec::Budget) -> Behaviour {
                let codec = codec::Codec::new($request_limit, $response_limit, budget);
                let config = request_response::Config::default()
                    .with_request_timeout($timeout)
                    .with_max_concurrent_streams(64);
                request_response::Behaviour::with_codec(
                    codec,
                    [(StreamProtocol::new($name), support)],
                    config,
                )
            }
        }
    };
}

use hydromesh_proto::{
    ingest as ingest_wire, limits, peer as peer_wire, protocols, query as query_wire, summary as summary_wire,
};

request_response_protocol!(
    /// `/hydromesh/ingest/1`: batches of readings, acknowledged once durable.
    ingest, protocols::INGEST, ingest_wire::Request, ingest_wire::Response,
    limits::MAX_REQUEST_BYTES, limits::MAX_RESPONSE_BYTES, Duration::from_secs(30)
);
request_response_protocol!(
    /// `/hydromesh/query/2`: questions from clients.
    query, protocols::QUERY, query_wire::Request, query_wire::Response,
    limits::MAX_REQUEST_BYTES, limits::MAX_RESPONSE_BYTES, Duration::from_secs(10)
);
request_response_protocol!(
    /// `/hydromesh/peer/1`: what a node asks another about the other's own meters.
    peer, protocols::PEER, peer_wire::Request, peer_wire::Response,
    limits::MAX_REQUEST_BYTES, limits::MAX_RESPONSE_BYTES, Duration::from_secs(10)
);
request_response_protocol!(
    /// `/hydromesh/sync/1`: anti-entropy, whole summary maps both ways (a digest names every
    /// admin command in force, so it may be large too).
    sync, protocols::SYNC, summary_wire::SyncRequest, summary_wire::SyncResponse,
    limits::MAX_SYNC_BYTES, limits::MAX_SYNC_BYTES, Duration::from_secs(10)
);

/// Why the network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The transport could not be built.
    #[error("cannot set up the network transport: {0}")]
    Transport(String),
    /// A behaviour could not be built.
    #[error("cannot set up {what}: {reason}")]
    Behaviour {
        /// Which behaviour.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Builds a swarm for a node or a client: TCP and QUIC (noise, yamux) with DNS, or with a swarm
/// key, TCP alone with the private-mesh handshake before noise.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    idle_connection_timeout: Duration,
    behaviour: B,
    swarm_key: Option<SwarmKey>,
) -> Result<Swarm<B>, TransportError> {
    let failed = |e: &dyn std::fmt::Display| TransportError::Transport(e.to_string());
    // The two transports make builders of different types; what follows them is the same.
    macro_rules! with_dns_and_behaviour {
        ($builder:expr) => {
            $builder
                .with_dns()
                .map_err(|e| failed(&e))?
                .with_behaviour(|_| behaviour)
                .map_err(|e| failed(&e))?
                .with_swarm_config(|config| config.with_idle_connection_timeout(idle_connection_timeout))
                .build()
        };
    }
    let builder = libp2p::SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let swarm = match swarm_key {
        None => with_dns_and_behaviour!(builder
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
            .map_err(|e| failed(&e))?
            .with_quic()),
        Some(SwarmKey(psk)) => with_dns_and_behaviour!(builder
            .with_other_transport(|keypair| {
                use libp2p::core::upgrade::Version;
                use libp2p::Transport;
                let noise = noise::Config::new(keypair)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .and_then(move |socket, _| libp2p::pnet::PnetConfig::new(psk).handshake(socket))
                        .upgrade(Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| failed(&e))?),
    };
    Ok(swarm)
}
