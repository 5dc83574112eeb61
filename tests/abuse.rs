//! Requests no honest client sends: over the size limits, over the batch limit, undecodable.
//! The node refuses them, drops the offender, and keeps serving everyone else.

mod common;

use std::time::Duration;

use common::{readings, Mesh};
use futures::StreamExt;
use hydromesh::p2p::{
    build_swarm,
    codec::{Budget, Codec},
};
use hydromesh_proto::{ingest, limits, protocols, query};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, StreamProtocol};

type Rogue = request_response::Behaviour<Codec<ingest::Request, ingest::Response>>;

/// A client whose codec lets it send far more than the node accepts.
fn rogue() -> libp2p::Swarm<Rogue> {
    let behaviour = request_response::Behaviour::with_codec(
        Codec::new(64 << 20, 64 << 20, Budget::new(0)),
        [(StreamProtocol::new(protocols::INGEST), ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    );
    build_swarm(Keypair::generate_ed25519(), Duration::from_secs(30), behaviour, None).expect("swarm")
}

async fn send(
    swarm: &mut libp2p::Swarm<Rogue>,
    addr: &libp2p::Multiaddr,
    request: ingest::Request,
) -> Result<ingest::Response, String> {
    swarm.dial(addr.clone()).expect("dial");
    let peer = loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            break peer_id;
        }
    };
    swarm.behaviour_mut().send_request(&peer, request);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Err(error.to_string())
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_overlong_requests_are_refused_and_the_node_keeps_serving() {
    let mesh = Mesh::chain(1).await;
    let addr = mesh.nodes[0].addr.clone();

    // More readings than a batch may hold, within the byte limit: refused as a whole, clearly.
    let too_many = readings(0..(limits::MAX_BATCH_READINGS as u64 + 1), 1);
    let response = send(&mut rogue(), &addr, ingest::Request { readings: too_many }).await;
    match response {
        Ok(ingest::Response::Refused { reason }) => {
            assert!(reason.contains("at most 10000"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Over the byte limit: the codec refuses it before decoding, and the node drops the peer.
    let huge = readings(0..200_000, 1);
    let response = send(&mut rogue(), &addr, ingest::Request { readings: huge }).await;
    assert!(response.is_err(), "an oversized request got an answer: {response:?}");

    // Everyone else is still served, and nothing of the refused batches was stored.
    let mut client = mesh.client(0).await;
    let query::Response::Stats(stats) = client.query(query::Request::Stats).await.expect("stats") else {
        panic!("stats")
    };
    assert_eq!(stats.meters, 0);
    let ok = client.ingest(readings(0..3, 2)).await.expect("ingest");
    assert!(matches!(ok, ingest::Response::Done { ref outcomes, .. } if outcomes.len() == 6), "{ok:?}");
}

/// Connections that open TCP and then send nothing, many more than the 128 that used to fill
/// the node's room for connections still negotiating: a client connects and is answered all
/// the same, long before the silent ones time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_connections_do_not_keep_clients_out() {
    use hydromesh::p2p::client::Client;
    // Both ends of 1,000 connections live in this process: as a node does, it takes the open
    // files its hard limit allows.
    hydromesh::cli::node::raise_open_files_limit();
    let mesh = Mesh::chain(1).await;
    let addr = mesh.nodes[0].addr.clone();
    let port = addr
        .iter()
        .find_map(|protocol| match protocol {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a TCP address");
    let mut silent = Vec::new();
    for _ in 0..1_000 {
        silent.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect"));
    }
    // Within the upgrade timeout (10 s): the silent connections are all still pending.
    let started = tokio::time::Instant::now();
    let mut client = Client::connect(&addr, Duration::from_secs(5)).await.expect("the client connects");
    let query::Response::Stats(_) = client.query(query::Request::Stats).await.expect("stats") else {
        panic!("not a stats answer")
    };
    eprintln!("answered {:?} after 1,000 silent connections", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}
