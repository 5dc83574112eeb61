//! The convergence benchmark of `scripts/bench.sh`: how long after a node acknowledges readings
//! another node of the mesh answers the global top-10 with them.
//!
//! Given the first and the last node of a chain, each round ingests one batch into the first
//! node: fresh meters (ids unique to this run), each with two readings an hour apart in the past,
//! five of them with a consumption larger than any so far, so that every round changes the
//! global top-10. From the instant the batch is acknowledged (durable), it asks the last node
//! `Top { n: 10 }` again and again, as fast as it answers, until the ranking (meters and
//! consumptions) equals the top-10 this program expects, and records the milliseconds; a round
//! gives up after the deadline.
//!
//! The expected ranking is computed from what the last node ranked before the first round and
//! from every reading sent since, so the mesh should not receive other readings of those meters
//! meanwhile (simulators' meters may only stay below this program's).
//!
//! It prints one JSON line: nodes in the last answer, rounds, median, p90 and max, every sample,
//! and the number of rounds that timed out (then it exits with status 1).
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin convergence -- FIRST_ADDR LAST_ADDR [--rounds 7]
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hydromesh::client::Client;
use hydromesh_proto::ingest::{self, Outcome};
use hydromesh_proto::query::{self, TopAnswer};
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::Multiaddr;

/// Meters in each round's batch; the first `LEADERS` of them enter the top-10.
const METERS_PER_ROUND: u64 = 100;
const LEADERS: u64 = 5;
const TOP_N: usize = 10;
const HOUR_MS: u64 = 3_600_000;

/// Time from an ingest acknowledgement at one node to the global top-10 at another.
#[derive(Debug, Parser)]
struct Args {
    /// The node that receives the readings.
    first: Multiaddr,
    /// The node whose top-10 is watched.
    last: Multiaddr,
    /// How many rounds.
    #[arg(long, default_value_t = 7)]
    rounds: u32,
    /// Give a round up after this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    deadline: Duration,
    /// Pause between rounds, so that each starts from a settled mesh.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pause: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(10);
    let mut first = Client::connect(&args.first, timeout).await.context("first node")?;
    let mut last = Client::connect(&args.last, timeout).await.context("last node")?;

    // What the mesh already ranks counts towards the expected top-10 too.
    let before = top(&mut last).await?;
    let mut known: HashMap<MeterId, u64> =
        before.entries.iter().map(|e| (e.meter, e.consumption_l)).collect();
    let mut record = known.values().copied().max().unwrap_or(0);
    // Ids no earlier run used: this run's start in seconds, times room for every round's meters.
    let first_meter = 100_000_000_000 + hydromesh::clock::now_ms() / 1000 % 80_000_000 * 10_000;

    let mut samples = Vec::new();
    let mut timeouts = 0u32;
    let mut nodes = 0usize;
    for round in 0..u64::from(args.rounds) {
        let now_ms = hydromesh::clock::now_ms();
        let mut readings = Vec::new();
        for k in 0..METERS_PER_ROUND {
            let meter = hydromesh_bench::meter(first_meter + round * METERS_PER_ROUND + k);
            // Leaders beat every consumption so far by a clear margin; the rest stay small.
            let consumption = if k < LEADERS {
                record += 1_000;
                record
            } else {
                k
            };
            known.insert(meter, consumption);
            readings.push(reading(meter, now_ms - 2 * HOUR_MS, 10_000));
            readings.push(reading(meter, now_ms - HOUR_MS, 10_000 + consumption));
        }
        let expected = expected_top(&known);

        let sent = readings.len();
        let response = first.ingest(readings).await.context("ingest")?;
        let acked = Instant::now();
        check_accepted(&response, sent)?;

        loop {
            let answer = top(&mut last).await?;
            let ranking: Vec<(MeterId, u64)> =
                answer.entries.iter().map(|e| (e.meter, e.consumption_l)).collect();
            if ranking == expected {
                samples.push(acked.elapsed().as_secs_f64() * 1000.0);
                nodes = answer.coverage.included.len();
                break;
            }
            if acked.elapsed() > args.deadline {
                eprintln!("round {round}: no convergence within {:?}", args.deadline);
                timeouts += 1;
                break;
            }
        }
        tokio::time::sleep(args.pause).await;
    }

    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let samples_ms: Vec<String> = samples.iter().map(|ms| format!("{ms:.1}")).collect();
    // Written by hand so that "bench" comes first, as in every line bench.sh prints.
    println!(
        "{{\"bench\":\"convergence\",\"nodes\":{nodes},\"rounds\":{},\"readings_per_round\":{},\
         \"median_ms\":{},\"p90_ms\":{},\"max_ms\":{},\"samples_ms\":[{}],\"timeouts\":{timeouts}}}",
        args.rounds,
        2 * METERS_PER_ROUND,
        json_ms(median(&sorted)),
        json_ms(nearest_rank(&sorted, 0.9)),
        json_ms(sorted.last().copied()),
        samples_ms.join(","),
    );
    if timeouts > 0 {
        bail!("{timeouts} of {} rounds did not converge", args.rounds);
    }
    Ok(())
}

fn reading(meter: MeterId, ts_ms: u64, litres: u64) -> Reading {
    Reading { meter, ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
}

/// The global top-10 as the node answers it.
async fn top(client: &mut Client) -> anyhow::Result<TopAnswer> {
    loop {
        let request = query::Request::Top { n: TOP_N as u32, since_ms: None };
        match client.query(request).await.context("top query")? {
            query::Response::Top(answer) => return Ok(answer),
            // An overloaded node asks to be asked again.
            query::Response::Busy => tokio::time::sleep(Duration::from_millis(10)).await,
            other => bail!("unexpected answer to a top query: {other:?}"),
        }
    }
}

/// Highest consumption first, then lower meter id: the node's own order.
fn expected_top(known: &HashMap<MeterId, u64>) -> Vec<(MeterId, u64)> {
    let mut all: Vec<(MeterId, u64)> = known.iter().map(|(m, c)| (*m, *c)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(TOP_N);
    all
}

fn check_accepted(response: &ingest::Response, sent: usize) -> anyhow::Result<()> {
    match response {
        ingest::Response::Done { outcomes, .. } => {
            let accepted = outcomes.iter().filter(|o| **o == Outcome::Accepted).count();
            if accepted != sent {
                let refused = outcomes.iter().find(|o| **o != Outcome::Accepted);
                bail!("the node accepted {accepted} of {sent} readings, e.g. {refused:?}");
            }
            Ok(())
        }
        other => bail!("the node did not store the batch: {other:?}"),
    }
}

fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The smallest sample with at least `q` of the samples at or below it.
fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

/// Milliseconds to one decimal, or `null` without a sample.
fn json_ms(ms: Option<f64>) -> String {
    ms.map_or_else(|| "null".to_owned(), |ms| format!("{ms:.1}"))
}
