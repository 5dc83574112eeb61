//! The view benchmark of `scripts/bench.sh`: how long a node takes to answer the global `top 10`
//! and `stats` from its merged view of NODES fog nodes, without the network or the event loop.
//!
//! It builds NODES signed summaries, each with TOP meters (the worst case: every node holds some
//! of the global top-K), merges them into a view, and times `View::top(10)` and `View::stats`
//! over many calls, then the merge of a new version of one node's summary (which keeps those
//! answers up to date; signature check included). It prints one JSON line, times in µs.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin view_bench -- [--nodes 1000] [--top 100]
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use hydromesh::mesh::summary::{filter_hash, sign};
use hydromesh::mesh::View;
use hydromesh_proto::summary::{MeterFilter, MeterSpan, NodeSummary, Point, SignedSummary};
use libp2p::identity::Keypair;
use serde_json::json;

/// What to measure.
#[derive(Debug, Parser)]
struct Args {
    /// Fog nodes in the view.
    #[arg(long, default_value_t = 1000)]
    nodes: u64,
    /// Top meters in each node's summary.
    #[arg(long, default_value_t = 100)]
    top: u64,
    /// Calls of each kind.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now_ms = hydromesh::clock::now_ms();
    let local = Keypair::generate_ed25519().public().to_peer_id();
    let mut view = View::new(local, Duration::from_secs(3600));
    let empty_filter = filter_hash(&MeterFilter::with_capacity(0));
    let summary = |key: &Keypair, node: u64, version: u64| -> anyhow::Result<SignedSummary> {
        let mut top: Vec<MeterSpan> = (0..args.top)
            .map(|k| {
                let meter = node * 1_000_000 + k;
                let litres = (meter.wrapping_mul(2_654_435_761).wrapping_add(version) % 1_000_000) + 1;
                MeterSpan {
                    meter: hydromesh_bench::meter(meter),
                    first: Point { ts_ms: now_ms - 3_600_000, litres: 0 },
                    last: Point { ts_ms: now_ms, litres },
                }
            })
            .collect();
        top.sort_by_key(|span| std::cmp::Reverse(span.last.litres));
        let summary = NodeSummary {
            origin: key.public().to_peer_id().to_string(),
            name: format!("fog-{node}"),
            version,
            generated_at_ms: now_ms,
            meter_count: args.top,
            total_consumption_l: top.iter().map(|s| s.last.litres).sum(),
            top,
            filter_hash: empty_filter.clone(),
            ..NodeSummary::default()
        };
        Ok(sign(key, &summary)?)
    };
    let keys: Vec<Keypair> = (0..args.nodes).map(|_| Keypair::generate_ed25519()).collect();
    for (node, key) in keys.iter().enumerate() {
        view.merge(summary(key, node as u64, 1)?, Instant::now(), false)?;
    }
    // New versions of the nodes' summaries, in turn, for the merge timing.
    let mut updates = (0..args.calls)
        .map(|call| {
            let node = call % keys.len();
            summary(&keys[node], node as u64, 2 + (call / keys.len()) as u64)
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter();
    let time = |f: &mut dyn FnMut()| -> (f64, f64) {
        let mut nanos: Vec<u64> = (0..args.calls)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed().as_nanos() as u64
            })
            .collect();
        nanos.sort_unstable();
        let micros = |ns: u64| (ns as f64 / 10.0).round() / 100.0;
        (micros(nanos[nanos.len() / 2]), micros(nanos[nanos.len() * 99 / 100]))
    };
    let (top_p50, top_p99) = time(&mut || {
        std::hint::black_box(view.top(10, Instant::now(), now_ms));
    });
    let (stats_p50, stats_p99) = time(&mut || {
        std::hint::black_box(view.stats(Instant::now(), now_ms));
    });
    let (merge_p50, merge_p99) = time(&mut || {
        let update = updates.next().expect("one update per call");
        std::hint::black_box(view.merge(update, Instant::now(), false).expect("merge"));
    });
    println!(
        "{}",
        json!({
            "bench": "view_answers", "nodes": args.nodes, "top_meters_per_node": args.top,
            "top10_p50_us": top_p50, "top10_p99_us": top_p99,
            "stats_p50_us": stats_p50, "stats_p99_us": stats_p99,
            "merge_p50_us": merge_p50, "merge_p99_us": merge_p99,
        })
    );
    Ok(())
}
