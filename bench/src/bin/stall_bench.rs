//! Stalled sync streams: several peers each open many `/hydromesh/sync/1` streams to a node, send
//! just under the request limit on each, and stall (they never finish their request). Prints
//! what was attempted and how the streams ended as one JSON line; `scripts/bench.sh` reads the
//! node's resident memory meanwhile.
//!
//! `stall_bench ADDR PEERS STREAMS SECONDS`

use std::io;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt, StreamExt};
use hydromesh::p2p::build_swarm;
use hydromesh_proto::{limits, protocols};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, Multiaddr, StreamProtocol};
use serde_json::json;

/// Bytes sent on each stream before it stalls: just under the sync request limit.
const SENT: usize = limits::MAX_SYNC_BYTES - 1024;

/// A codec whose requests are `SENT` zero bytes and then nothing, ever.
#[derive(Clone, Default)]
struct Staller;

impl request_response::Codec for Staller {
    type Protocol = StreamProtocol;
    type Request = ();
    type Response = ();

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<()> {
        Ok(())
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<()> {
        Ok(())
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        (): (),
    ) -> io::Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < SENT {
            let piece = (SENT - sent).min(zeros.len());
            io.write_all(&zeros[..piece]).await?;
            sent += piece;
        }
        io.flush().await?;
        futures::future::pending::<()>().await;
        Ok(())
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        (): (),
    ) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, peers, streams, seconds] = args.as_slice() else {
        bail!("usage: stall_bench ADDR PEERS STREAMS SECONDS");
    };
    let addr: Multiaddr = addr.parse().context("ADDR")?;
    let (peers, streams): (usize, usize) = (peers.parse()?, streams.parse()?);
    let window = Duration::from_secs(seconds.parse()?);
    let mut tasks = Vec::new();
    for _ in 0..peers {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let behaviour = request_response::Behaviour::with_codec(
                Staller,
                [(StreamProtocol::new(protocols::SYNC), ProtocolSupport::Outbound)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(600))
                    .with_max_concurrent_streams(streams),
            );
            let mut swarm = build_swarm(Keypair::generate_ed25519(), Duration::from_secs(600), behaviour, None)
                .expect("swarm");
            swarm.dial(addr).expect("dial");
            let (mut refused, end) = (0usize, tokio::time::Instant::now() + window);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(end) => break,
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            for _ in 0..streams {
                                swarm.behaviour_mut().send_request(&peer_id, ());
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure { .. }) => refused += 1,
                        _ => {}
                    },
                }
            }
            refused
        }));
    }
    let mut refused = 0;
    for task in tasks {
        refused += task.await?;
    }
    println!(
        "{}",
        json!({
            "bench": "stalled_streams",
            "peers": peers,
            "streams": peers * streams,
            "bytes_a_stream": SENT,
            "bytes_attempted": peers * streams * SENT,
            "streams_refused_or_failed": refused,
            "seconds": window.as_secs(),
        })
    );
    Ok(())
}
