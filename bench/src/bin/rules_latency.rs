//! The water-rules benchmarks of `scripts/bench.sh`: how fast a cut reaches a meter, and how
//! fast a followed meter's readings reach an operator attached to another node.
//!
//! Given two nodes of a mesh (FIRST, where the operator is attached, and HOME, where the
//! meters report) and an admin key trusted by the mesh, it measures:
//!
//! - `cap_crossing`: a meter on HOME sends the reading that takes it over the policy's cap; the
//!   milliseconds until the acknowledgement that says `valve: closed` (it is the same one);
//! - `cap_policy`: a new cap is set through FIRST while a meter on HOME, already over it, keeps
//!   reporting every few milliseconds; the milliseconds from the admin's acknowledgement to the
//!   first acknowledgement on HOME that closes the valve (gossip of the policy included);
//! - `follow`: a follower attached to FIRST follows a meter on HOME while readings are sent to
//!   HOME; for each reading, the milliseconds from HOME's acknowledgement to the follower having
//!   it (negative values, when the follower is served before the writer, count as 0), and from
//!   the send.
//!
//! It prints one JSON line per figure, with p50, p99 and max.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin rules_latency -- FIRST_ADDR HOME_ADDR ADMIN_KEY_FILE [--samples 200]
//! ```

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hydromesh::client::Client;
use hydromesh_proto::control::{Action, Command, Policy};
use hydromesh_proto::ingest::{self, MeterCommand, Valve};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{Alarms, Reading};
use libp2p::identity::ed25519;
use libp2p::Multiaddr;
use serde_json::json;

/// Latency of rationing cuts and of live follow.
#[derive(Debug, Parser)]
struct Args {
    /// The node the operator (admin, follower) talks to.
    first: Multiaddr,
    /// The meters' home node.
    home: Multiaddr,
    /// An admin key the mesh trusts (from `hydromesh keygen`).
    key: PathBuf,
    /// Samples per figure.
    #[arg(long, default_value_t = 200)]
    samples: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let key = hydromesh::cli::keygen::read_secret(&args.key)?;
    let timeout = Duration::from_secs(10);
    let mut first = Client::connect(&args.first, timeout).await.context("connect to FIRST")?;
    let mut home = Client::connect(&args.home, timeout).await.context("connect to HOME")?;
    // Meter ids unique to this run, far from simulated fleets.
    let base_meter = 9_000_000_000 + hydromesh::clock::now_ms() % 1_000_000_000;
    let cap_l = 1_000;
    set_policy(&mut first, &key, Some(cap_l)).await?;
    wait_for_cap(&mut home, Some(cap_l)).await?;

    let mut crossing = Vec::new();
    for i in 0..u64::from(args.samples) {
        let meter = base_meter + i;
        let t = hydromesh::clock::now_ms() - 60_000;
        send(&mut home, vec![reading(meter, t, 0)]).await?;
        let started = Instant::now();
        let commands = send(&mut home, vec![reading(meter, t + 1, cap_l + 1)]).await?;
        if !commands.contains(&MeterCommand { meter: hydromesh_bench::meter(meter), valve: Valve::Closed }) {
            bail!("meter {meter} over the cap was not cut: {commands:?}");
        }
        crossing.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report("cap_crossing", &mut crossing);

    let mut policy = Vec::new();
    let rounds = (args.samples / 20).max(5);
    for round in 0..u64::from(rounds) {
        set_policy(&mut first, &key, None).await?;
        wait_for_cap(&mut home, None).await?;
        let meter = base_meter + 100_000 + round;
        let t = hydromesh::clock::now_ms() - 60_000;
        send(&mut home, vec![reading(meter, t, 0), reading(meter, t + 1, cap_l + 1)]).await?;
        set_policy(&mut first, &key, Some(cap_l)).await?;
        let started = Instant::now();
        let mut ts = t + 2;
        loop {
            ts += 1;
            let commands = send(&mut home, vec![reading(meter, ts, cap_l + 1)]).await?;
            if commands.contains(&MeterCommand { meter: hydromesh_bench::meter(meter), valve: Valve::Closed })
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("the policy never reached the home");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        policy.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    report("cap_policy", &mut policy);
    set_policy(&mut first, &key, None).await?;

    let (from_ack, from_send) =
        follow(&mut first, &mut home, &args.home, base_meter + 200_000, args.samples).await?;
    let (mut from_ack, mut from_send) = (from_ack, from_send);
    report("follow_from_ack", &mut from_ack);
    report("follow_from_send", &mut from_send);
    Ok(())
}

/// Follows `meter` through FIRST while writing readings to HOME; returns the latencies.
async fn follow(
    first: &mut Client,
    home: &mut Client,
    home_addr: &Multiaddr,
    meter: u64,
    samples: u32,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let t0 = hydromesh::clock::now_ms() - 600_000;
    send(home, vec![reading(meter, t0, 0)]).await?;
    let acks: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    // The follower starts from the meter's latest reading, then long polls for the next. A new
    // meter is routable once its home's next summary has reached FIRST.
    let started = Instant::now();
    let readings = loop {
        let request = Request::Follow { meter: hydromesh_bench::meter(meter), after_ts_ms: None };
        match first.query_within(request, Duration::from_secs(15)).await? {
            Response::Readings { readings, .. } => break readings,
            other if started.elapsed() > Duration::from_secs(10) => {
                bail!("cannot follow meter {meter}: {other:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut after = readings.last().map_or(t0, |r| r.ts_ms);
    let mut received = Vec::new();
    let writer = {
        let acks = acks.clone();
        let mut home = Client::connect(home_addr, Duration::from_secs(10)).await?;
        tokio::spawn(async move {
            for k in 1..=u64::from(samples) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let sent = Instant::now();
                if send(&mut home, vec![reading(meter, t0 + k, k)]).await.is_err() {
                    break;
                }
                acks.lock().map(|mut acks| acks.push((sent, Instant::now()))).ok();
            }
        })
    };
    while received.len() < samples as usize {
        let response = first
            .query_within(
                Request::Follow { meter: hydromesh_bench::meter(meter), after_ts_ms: Some(after) },
                Duration::from_secs(15),
            )
            .await?;
        let Response::Readings { readings, .. } = response else { bail!("follow failed: {response:?}") };
        let now = Instant::now();
        for reading in readings {
            after = after.max(reading.ts_ms);
            received.push((reading.litres, now));
        }
    }
    writer.await?;
    let acks = acks.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut from_ack = Vec::new();
    let mut from_send = Vec::new();
    for (k, at) in received {
        let Some((sent, acked)) = acks.get(k as usize - 1) else {
            continue;
        };
        from_ack.push(at.saturating_duration_since(*acked).as_secs_f64() * 1000.0);
        from_send.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
    }
    Ok((from_ack, from_send))
}

fn reading(meter: u64, ts_ms: u64, litres: u64) -> Reading {
    Reading { meter: hydromesh_bench::meter(meter), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
}

async fn send(client: &mut Client, readings: Vec<Reading>) -> anyhow::Result<Vec<MeterCommand>> {
    match client.ingest(readings).await? {
        ingest::Response::Done { commands, .. } => Ok(commands),
        other => bail!("batch not taken: {other:?}"),
    }
}

async fn set_policy(client: &mut Client, key: &ed25519::Keypair, cap_l: Option<u64>) -> anyhow::Result<()> {
    let command = Command {
        issued_at_ms: hydromesh::clock::now_ms(),
        action: Action::Policy(Policy { cap_l, ..Policy::default() }),
    };
    match client.query(Request::Admin(hydromesh::mesh::control::sign(key, &command)?)).await? {
        Response::Applied(_) => Ok(()),
        other => bail!("policy refused: {other:?}"),
    }
}

async fn wait_for_cap(client: &mut Client, cap_l: Option<u64>) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Response::Policy(policy, _) = client.query(Request::Policy).await? {
            if policy.cap_l == cap_l {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the policy did not reach the home");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(figure: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
    };
    let round = |x: f64| (x * 100.0).round() / 100.0;
    println!(
        "{}",
        json!({
            "bench": figure,
            "samples": samples.len(),
            "p50_ms": round(at(0.5)),
            "p99_ms": round(at(0.99)),
            "max_ms": round(at(1.0)),
        })
    );
}
