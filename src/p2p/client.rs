//! A client of one fog node over libp2p: what the CLI, the tests and embedders use to send
//! readings and ask questions.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use hydromesh_proto::{ingest, query, Reading};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identity::Keypair, Multiaddr, PeerId, Swarm};

use super::codec::Budget;
use super::{build_swarm, ingest as ingest_protocol, query as query_protocol, SwarmKey, TransportError};
use crate::clock::sleep_until;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// A request failed on the way.
    #[error("request failed: {0}")]
    Request(String),
    /// The client could not start.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

#[derive(NetworkBehaviour)]
struct ClientBehaviour {
    ingest: ingest_protocol::Behaviour,
    query: query_protocol::Behaviour,
}

/// A connection to one fog node.
pub struct Client {
    swarm: Swarm<ClientBehaviour>,
    peer: PeerId,
    timeout: Duration,
}

impl Client {
    /// Connects to the node at `addr` (with or without `/p2p/`), giving up after `timeout`.
    pub async fn connect(addr: &Multiaddr, timeout: Duration) -> Result<Self, ClientError> {
        Client::connect_with(addr, timeout, None).await
    }

    /// [`Client::connect`] to a node of a private mesh, with its key.
    pub async fn connect_with(
        addr: &Multiaddr,
        timeout: Duration,
        swarm_key: Option<SwarmKey>,
    ) -> Result<Self, ClientError> {
        let behaviour = ClientBehaviour {
            // A client only asks: it reads no requests, so its budget is never used.
            ingest: ingest_protocol::behaviour(ProtocolSupport::Outbound, Budget::new(0)),
            query: query_protocol::behaviour(ProtocolSupport::Outbound, Budget::new(0)),
        };
        let mut swarm =
            build_swarm(Keypair::generate_ed25519(), Duration::from_secs(60), behaviour, swarm_key)?;
        let connect_error = |reason: String| ClientError::Connect { addr: addr.clone(), reason };
        swarm.dial(addr.clone()).map_err(|e| connect_error(e.to_string()))?;
        let connected = async {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => return Ok(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        return Err(connect_error(dial_reason(&error, swarm_key.is_some())))
                    }
                    _ => {}
                }
            }
        };
        let peer = tokio::time::timeout(timeout, connected).await.map_err(|_| {
            let waited = humantime::format_duration(timeout);
            connect_error(format!("no answer within {waited} {}", key_hint(swarm_key.is_some())))
        })??;
        Ok(Client { swarm, peer, timeout })
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer
    }

    /// Asks the node a question.
    pub async fn query(&mut self, request: query::Request) -> Result<query::Response, ClientError> {
        self.query_within(request, self.timeout).await
    }

    /// Asks the node a question that may take up to `timeout` (a follow long poll).
    pub async fn query_within(
        &mut self,
        request: query::Request,
        timeout: Duration,
    ) -> Result<query::Response, ClientError> {
        let id = self.swarm.behaviour_mut().query.send_request(&self.peer, request);
        let wait = async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(ClientBehaviourEvent::Query(event)) => match event {
                        request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        } if request_id == id => return Ok(response),
                        request_response::Event::OutboundFailure { request_id, error, .. }
                            if request_id == id =>
                        {
                            return Err(ClientError::Request(error.to_string()))
                        }
                        _ => {}
                    },
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                        return Err(ClientError::Request("the node closed the connection".into()))
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout { what: "query", after: timeout })?
    }

    /// Sends a single batch and waits for its acknowledgement.
    pub async fn ingest(&mut self, readings: Vec<Reading>) -> Result<ingest::Response, ClientError> {
        let mut response = None;
        self.ingest_batches(std::iter::once(readings), 1, |_, r| response = Some(r)).await?;
        response.ok_or_else(|| ClientError::Request("no acknowledgement".into()))
    }

    /// Sends batches with up to `window` unacknowledged at once, calling `on_ack(index, response)`
    /// for each batch (in completion order). A batch the node refuses as busy is sent again
    /// after the delay it asks for; nothing is dropped.
    pub async fn ingest_batches(
        &mut self,
        batches: impl IntoIterator<Item = Vec<Reading>>,
        window: usize,
        mut on_ack: impl FnMut(usize, ingest::Response),
    ) -> Result<(), ClientError> {
        let mut batches = batches.into_iter().enumerate();
        let mut in_flight: HashMap<OutboundRequestId, (usize, Vec<Reading>)> = HashMap::new();
        let mut retry: Vec<(usize, Vec<Reading>)> = Vec::new();
        let mut exhausted = false;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let ready = retry_at.is_none_or(|at| tokio::time::Instant::now() >= at);
            // While the node is busy, wait for it before sending anything new.
            while ready && in_flight.len() < window.max(1) {
                let next = match retry.pop() {
                    Some(batch) => Some(batch),
                    None if !exhausted => {
                        let batch = batches.next();
                        exhausted = batch.is_none();
                        batch
                    }
                    None => None,
                };
                let Some((index, readings)) = next else { break };
                let id = self
                    .swarm
                    .behaviour_mut()
                    .ingest
                    .send_request(&self.peer, ingest::Request { readings: readings.clone() });
                in_flight.insert(id, (index, readings));
            }
            if in_flight.is_empty() && retry.is_empty() && exhausted {
                return Ok(());
            }
            let event = tokio::select! {
                event = self.swarm.select_next_some() => event,
                () = sleep_until(retry_at) => { retry_at = None; continue; }
                () = tokio::time::sleep(self.timeout) => {
                    return Err(ClientError::Timeout { what: "ingest acknowledgement", after: self.timeout });
                }
            };
            match event {
                SwarmEvent::Behaviour(ClientBehaviourEvent::Ingest(event)) => match event {
                    request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    } => {
                        let Some((index, readings)) = in_flight.remove(&request_id) else {
                            continue;
                        };
                        if let ingest::Response::Busy { retry_after_ms } = response {
                            retry.push((index, readings));
                            let at = tokio::time::Instant::now()
                                + Duration::from_millis(u64::from(retry_after_ms.clamp(10, 5000)));
                            retry_at = Some(retry_at.map_or(at, |current| current.max(at)));
                        } else {
                            on_ack(index, response);
                        }
                    }
                    request_response::Event::OutboundFailure { error, .. } => {
                        return Err(ClientError::Request(error.to_string()));
                    }
                    _ => {}
                },
                SwarmEvent::ConnectionClosed { num_established: 0, .. } => {
                    return Err(ClientError::Request("the node closed the connection".into()));
                }
                _ => {}
            }
        }
    }
}

/// A failed dial as one line: libp2p nests the same cause several times over ("Failed to
/// negotiate transport protocol(s): [(…: Multiple dial errors occurred: - Connection refused
/// …)]"); this names the innermost cause of each attempt once, with a hint where one helps.
/// Why a dial failed, in words a user can act on; `keyed`: whether the client had a swarm key
/// (a handshake that fails once connected is most often a private mesh's key, or its absence).
fn dial_reason(error: &libp2p::swarm::DialError, keyed: bool) -> String {
    use libp2p::swarm::DialError;
    match error {
        DialError::Transport(attempts) => {
            let mut causes: Vec<String> = attempts.iter().map(|(_, error)| innermost(error)).collect();
            causes.dedup();
            let said = causes.join("; ");
            if said.starts_with("connection refused") {
                said
            } else {
                format!("{said} {}", key_hint(keyed))
            }
        }
        DialError::WrongPeerId { obtained, .. } => {
            format!("the node there is {obtained}, not the one the address names (check its /p2p/ part)")
        }
        other => innermost(other),
    }
}

/// What may be wrong when a node does not complete the handshake: a private mesh's key, or its
/// absence (such a node says nothing a client without its key understands).
fn key_hint(keyed: bool) -> &'static str {
    if keyed {
        "(the node may run a private mesh with another swarm key, or none)"
    } else {
        "(if the node runs a private mesh, give its swarm key: --swarm-key FILE)"
    }
}

/// The deepest cause of an error, in words a user can act on.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    // The transports' own error types end the chain (their causes are not exposed as sources).
    let said = cause.to_string();
    if said.starts_with("Connection refused") {
        "connection refused: no node listens there".into()
    } else {
        said
    }
}
