//! A meter gateway that speaks to a fog node with `hydromesh-proto` and libp2p only (no
//! hydromesh library): it sends one batch of readings on `/hydromesh/ingest/1` and prints each
//! reading's outcome and the valve commands the node sends back.
//!
//! ```text
//! cargo run --example gateway -- /ip4/127.0.0.1/tcp/4001 METER LITRES [LITRES…]
//! ```
//!
//! Readings are one minute apart, ending now. This is the whole protocol a gateway needs: a
//! libp2p connection (TCP, noise, yamux), one stream per request, and on it one versioned
//! bincode envelope each way (`hydromesh_proto::encode` / `decode`), the request closed by the
//! writer's half-close.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use hydromesh_proto::{ingest, limits, protocols, Alarms, MeterId, Reading};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};

/// The ingest protocol's codec: one envelope per direction, read with the protocol's limits.
#[derive(Clone, Default)]
struct IngestCodec;

async fn read_limited<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

fn invalid(error: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl request_response::Codec for IngestCodec {
    type Protocol = StreamProtocol;
    type Request = ingest::Request;
    type Response = ingest::Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ingest::Request> {
        let bytes = read_limited(io, limits::MAX_REQUEST_BYTES).await?;
        hydromesh_proto::decode(&bytes, limits::MAX_REQUEST_BYTES).map_err(invalid)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<ingest::Response> {
        let bytes = read_limited(io, limits::MAX_RESPONSE_BYTES).await?;
        hydromesh_proto::decode(&bytes, limits::MAX_RESPONSE_BYTES).map_err(invalid)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: ingest::Request,
    ) -> io::Result<()> {
        io.write_all(&hydromesh_proto::encode(&request).map_err(invalid)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: ingest::Response,
    ) -> io::Result<()> {
        io.write_all(&hydromesh_proto::encode(&response).map_err(invalid)?).await?;
        io.close().await
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gateway MULTIADDR METER LITRES [LITRES…]";
    let node: Multiaddr = args.next().context(usage)?.parse().context("node address")?;
    let meter: MeterId = args.next().context(usage)?.parse().context("meter id")?;
    let registers: Vec<u64> = args.map(|l| l.parse()).collect::<Result<_, _>>().context("litres")?;
    if registers.is_empty() {
        bail!(usage);
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let readings: Vec<Reading> = registers
        .iter()
        .enumerate()
        .map(|(k, litres)| Reading {
            meter,
            ts_ms: now - (registers.len() - 1 - k) as u64 * 60_000,
            litres: *litres,
            flow_lph: None,
            alarms: Alarms::empty(),
        })
        .collect();

    let behaviour = request_response::Behaviour::with_codec(
        IngestCodec,
        [(StreamProtocol::new(protocols::INGEST), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
    );
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)?
        .with_behaviour(|_| behaviour)?
        .build();
    swarm.dial(node.clone())?;
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                println!("connected to {peer_id}");
                swarm.behaviour_mut().send_request(&peer_id, ingest::Request { readings: readings.clone() });
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => bail!("cannot connect to {node}: {error}"),
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => {
                match response {
                    ingest::Response::Done { outcomes, commands } => {
                        for (reading, outcome) in readings.iter().zip(outcomes) {
                            println!("{} L at {}: {outcome:?}", reading.litres, reading.ts_ms);
                        }
                        for command in commands {
                            println!("meter {}: valve {}", command.meter, command.valve.as_str());
                        }
                    }
                    other => println!("batch not stored: {other:?}"),
                }
                return Ok(());
            }
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                bail!("request failed: {error}")
            }
            _ => {}
        }
    }
}
