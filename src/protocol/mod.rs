//! The libp2p protocols of hydromesh, one module each, and the transport they share.
//!
//! Request-response protocols (`ingest`, `query`, `sync`) use one bincode [`codec::Codec`] that
//! refuses a message over its protocol's size limit before decoding it. Node summaries travel
//! on gossipsub ([`summary`]).

pub mod codec;
pub mod summary;

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

            /// A behaviour that answers (`Full`) or only asks (`Outbound`).
            pub fn behaviour(support: ProtocolSupport) -> Behaviour {
                let codec = codec::Codec::new($request_limit, $response_limit);
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
    ingest as ingest_wire, limits, protocols, query as query_wire, summary as summary_wire,
};

request_response_protocol!(
    /// `/hydromesh/ingest/1`: batches of readings, acknowledged once durable.
    ingest, protocols::INGEST, ingest_wire::Request, ingest_wire::Response,
    limits::MAX_REQUEST_BYTES, limits::MAX_RESPONSE_BYTES, Duration::from_secs(30)
);
request_response_protocol!(
    /// `/hydromesh/query/1`: questions from clients and peers.
    query, protocols::QUERY, query_wire::Request, query_wire::Response,
    limits::MAX_REQUEST_BYTES, limits::MAX_RESPONSE_BYTES, Duration::from_secs(10)
);
request_response_protocol!(
    /// `/hydromesh/sync/1`: anti-entropy, whole summary maps both ways.
    sync, protocols::SYNC, summary_wire::SyncRequest, summary_wire::SyncResponse,
    limits::MAX_SYNC_BYTES, limits::MAX_SYNC_BYTES, Duration::from_secs(10)
);

/// Why a swarm could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the network transport: {0}")]
pub struct TransportError(String);

/// Builds a swarm on TCP and QUIC (noise, yamux) with DNS, for a node or a client.
pub fn build_swarm<B: NetworkBehaviour>(
    keypair: Keypair,
    idle_connection_timeout: Duration,
    behaviour: B,
) -> Result<Swarm<B>, TransportError> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| TransportError(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| TransportError(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| TransportError(e.to_string()))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(idle_connection_timeout))
        .build();
    Ok(swarm)
}
