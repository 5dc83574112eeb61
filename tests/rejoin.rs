//! A node restarted while its only bootstrap peer is down rejoins the mesh through the nodes it
//! knew, and its new readings reach every node; nodes whose bootstrap was down when they
//! started, and which found only each other, join it once it is up.

mod common;

use std::time::Duration;

use common::{eventually, readings, Mesh};
use hydromesh_proto::ingest;
use hydromesh_proto::query::{Request, Response};

/// Generous: CI machines are slow and loaded.
const CONVERGE: Duration = Duration::from_secs(60);

async fn meters_seen(mesh: &Mesh, node: usize) -> Option<u64> {
    let client = mesh.nodes[node].handle.as_ref()?.client();
    match client.query(Request::Stats).await {
        Response::Stats(stats) => Some(stats.meters),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_bootstrap_is_down_rejoins_through_the_nodes_it_knew() {
    // n0 ← n1 ← n2: n2 knows only n1's address at start.
    let mut mesh = Mesh::chain(3).await;
    for node in 0..3 {
        let batch = readings([node as u64 * 100 + 1], 3);
        let client = mesh.nodes[node].handle.as_ref().expect("running").client();
        assert!(matches!(client.ingest(batch).await, ingest::Response::Done { .. }));
    }
    eventually("n0 to see every node's meter", CONVERGE, || async {
        (meters_seen(&mesh, 0).await == Some(3)).then_some(())
    })
    .await;

    // Stop n2 and n1; start n2 again while its bootstrap (n1) is down.
    let (n1_dir, n2_dir) = (mesh.nodes[1].dir.clone(), mesh.nodes[2].dir.clone());
    let n1_bootstrap = vec![mesh.nodes[0].addr.clone()];
    let n2_bootstrap = vec![mesh.nodes[1].addr.clone()];
    mesh.stop(2).await;
    mesh.stop(1).await;
    let n2 = mesh.start(common::config(n2_dir, "n2", n2_bootstrap)).await;
    let n1 = mesh.start(common::config(n1_dir, "n1", n1_bootstrap)).await;

    // A new meter on the restarted n2 reaches n0 (which n2 knew only from its saved view).
    let client = mesh.nodes[n2].handle.as_ref().expect("running").client();
    assert!(matches!(client.ingest(readings([999], 3)).await, ingest::Response::Done { .. }));
    for node in [0, n1] {
        eventually("the restarted node's new meter on every node", CONVERGE, || async {
            (meters_seen(&mesh, node).await == Some(4)).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_bootstrap_was_down_at_start_join_it_when_it_comes_up() {
    // n1 bootstraps to an address where nothing listens yet; n2 bootstraps to n1. They find
    // each other (an island of two), then the bootstrap node starts at that address.
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
    let bootstrap: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("multiaddr");
    let mut mesh = Mesh::new();
    let dir = |name: &str| mesh.root.path().join(name);
    let (n1_dir, n2_dir, n0_dir) = (dir("n1"), dir("n2"), dir("n0"));
    let n1 = mesh.start(common::config(n1_dir, "n1", vec![bootstrap.clone()])).await;
    let n1_addr = mesh.nodes[n1].addr.clone();
    let n2 = mesh.start(common::config(n2_dir, "n2", vec![n1_addr])).await;
    let client = mesh.nodes[n2].handle.as_ref().expect("running").client();
    assert!(matches!(client.ingest(readings([7], 3)).await, ingest::Response::Done { .. }));
    eventually("n1 and n2 to find each other", CONVERGE, || async {
        (meters_seen(&mesh, n1).await == Some(1)).then_some(())
    })
    .await;

    let mut config = common::config(n0_dir, "n0", Vec::new());
    config.listen = vec![bootstrap];
    let n0 = mesh.start(config).await;
    let client = mesh.nodes[n0].handle.as_ref().expect("running").client();
    assert!(matches!(client.ingest(readings([8], 3)).await, ingest::Response::Done { .. }));
    for node in [n0, n1, n2] {
        eventually("one mesh of three", CONVERGE, || async {
            (meters_seen(&mesh, node).await == Some(2)).then_some(())
        })
        .await;
    }
}
