//! Embedding a fog node in your own program: start it from the library, feed it readings and
//! ask it questions in-process, then stop it in order.
//!
//! ```text
//! cargo run --example embedded_node [DATA_DIR] [BOOTSTRAP_MULTIADDR]
//! ```
//!
//! Without a bootstrap address the node is a mesh of one; with one it joins that mesh, and its
//! answers include every node.

use std::time::Duration;

use anyhow::Context;
use hydromesh::{Config, Node};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{ingest, Alarms, Reading};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let temp = tempfile::tempdir()?;
    let data_dir =
        args.next().filter(|dir| !dir.is_empty()).map_or_else(|| temp.path().join("node"), Into::into);
    let bootstrap = args.next().map(|addr| addr.parse()).transpose().context("bootstrap address")?;
    let config = Config {
        data_dir,
        name: "embedded".into(),
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
        bootstrap: bootstrap.into_iter().collect(),
        // This example talks to its node in-process only.
        http: None,
        mqtt: None,
        ..Config::default()
    };
    let node = Node::spawn(config).await?;
    println!("node {} listening on {:?}", node.peer_id(), node.listen_addrs().await);

    let client = node.client();
    let now = hydromesh::clock::now_ms();
    let readings: Vec<Reading> = (0..4)
        .map(|k| Reading {
            meter: 42.into(),
            ts_ms: now - (4 - k) * 900_000,
            litres: 1_000 + k * 37,
            flow_lph: None,
            alarms: Alarms::empty(),
        })
        .collect();
    match client.ingest(readings).await {
        ingest::Response::Done { outcomes, commands } => {
            println!("stored: {outcomes:?}; valve commands: {commands:?}")
        }
        other => anyhow::bail!("not stored: {other:?}"),
    }

    // The summary is published shortly after a change; then global answers include the meter.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Response::Stats(stats) = client.query(Request::Stats).await {
            if stats.meters > 0 {
                println!(
                    "{} meters, {} L in total, {:.1} L on average, {} fog node(s)",
                    stats.meters,
                    stats.total_consumption_l,
                    stats.average_consumption_l(),
                    stats.coverage.included.len()
                );
                break;
            }
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the summary never counted the meter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Response::Meter(meter) =
        client.query(Request::Meter { meter: 42.into(), from_ms: None, to_ms: None }).await
    {
        println!(
            "meter 42 consumed {} L over {} readings",
            meter.consumption_l,
            meter.history.readings.len()
        );
    }
    node.shutdown().await?;
    Ok(())
}
