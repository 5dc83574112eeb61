//! A private mesh (`swarm_key`): nodes holding the key converge; a client or a node without it,
//! or with another key, gets no connection at all.

mod common;

use std::time::Duration;

use common::{eventually, readings, Mesh};
use hydromesh::p2p::client::Client;
use hydromesh::p2p::SwarmKey;
use hydromesh_proto::ingest;
use hydromesh_proto::query::{Request, Response};

/// Generous: CI machines are slow and loaded.
const CONVERGE: Duration = Duration::from_secs(60);

async fn stats(mesh: &Mesh, node: usize) -> Option<(u64, usize)> {
    let client = mesh.nodes[node].handle.as_ref()?.client();
    match client.query(Request::Stats).await {
        Response::Stats(stats) => Some((stats.meters, stats.coverage.included.len())),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_swarm_key_join_or_ask() {
    let mut mesh = Mesh::new();
    let (ours, theirs) = (mesh.root.path().join("ours.key"), mesh.root.path().join("theirs.key"));
    let key = SwarmKey::generate();
    key.write_new(&ours).expect("write our key");
    SwarmKey::generate().write_new(&theirs).expect("write another key");
    let config = |mesh: &Mesh, i: usize, key: &std::path::Path, bootstrap| {
        let mut config = common::config(mesh.root.path().join(format!("n{i}")), &format!("n{i}"), bootstrap);
        config.swarm_key = Some(key.to_path_buf());
        config
    };
    let n0 = mesh.start(config(&mesh, 0, &ours, vec![])).await;
    let first = mesh.nodes[n0].addr.clone();
    let n1 = mesh.start(config(&mesh, 1, &ours, vec![first.clone()])).await;
    // An outsider with another key, bootstrapped to n0 too, with a meter of its own.
    let outsider = mesh.start(config(&mesh, 2, &theirs, vec![first.clone()])).await;
    for (node, meter) in [(n1, 11), (outsider, 99)] {
        let client = mesh.nodes[node].handle.as_ref().expect("running").client();
        let response = client.ingest(readings([meter], 3)).await;
        assert!(matches!(response, ingest::Response::Done { .. }), "{response:?}");
    }

    // (meters, nodes) each node sees: the members see each other's meter, and the outsider —
    // whose address is as good as n1's, only the key keeps it out — only its own.
    eventually("the members to see each other's meter, the outsider only its own", CONVERGE, || async {
        let seen = (stats(&mesh, n0).await?, stats(&mesh, n1).await?, stats(&mesh, outsider).await?);
        (seen == ((1, 2), (1, 2), (1, 1))).then_some(())
    })
    .await;

    // Clients: with the key they ask; without it, or with another, they cannot connect.
    let timeout = Duration::from_secs(5);
    let mut client = Client::connect_with(&first, timeout, Some(key)).await.expect("a holder connects");
    assert!(matches!(client.query(Request::Stats).await, Ok(Response::Stats(_))));
    let without = Client::connect(&first, timeout).await;
    assert!(without.is_err(), "a client without the key connected");
    let other = SwarmKey::load(&theirs).expect("load");
    let with_other = Client::connect_with(&first, timeout, Some(other)).await;
    assert!(with_other.is_err(), "a client with another key connected");
    for node in [outsider, n1, n0] {
        mesh.stop(node).await;
    }
}
