//! The crash benchmark of `scripts/bench.sh`: a real `hydromesh node` process killed with
//! SIGKILL at random moments, CYCLES times, while a client sends it readings, then started once
//! more and every meter read back.
//!
//! Each cycle starts the node on the same data folder and kills it after a random 0 to 600 ms,
//! so some kills land during start-up (before it listens, or while it replays its write-ahead
//! records), some during ingest, some while the store folds those records into chunks (every
//! 200,000 readings), some while it is idle. Meanwhile the
//! client sends batches of readings one at a time and counts a batch acknowledged once the node
//! answered it (every reading accepted or already held); after a kill, it sends the first
//! batch not acknowledged again. Each cycle sends at most PER_CYCLE readings, so the store
//! grows by steps a restart can take in.
//!
//! At the end it checks, meter by meter, that every acknowledged reading is held exactly as
//! sent, and that nothing is held that was not sent. It prints one JSON line: cycles, kills
//! before the node listened, readings acknowledged, lost, unexpected, and the slowest start.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin crash_bench -- HYDROMESH_BIN DIR [CYCLES]
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hydromesh::client::Client;
use hydromesh_proto::ingest::{self, Outcome};
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{Alarms, Reading};
use libp2p::Multiaddr;
use serde_json::json;

const METERS: u64 = 1_000;
const BATCH: u64 = 5_000;
const PER_CYCLE: u64 = 60_000;
/// 2024-01-01T00:00:00Z, in ms; readings a minute apart from there.
const T0: u64 = 1_704_067_200_000;
const MINUTE: u64 = 60_000;
const LONGEST_LIFE: Duration = Duration::from_millis(600);
const START_DEADLINE: Duration = Duration::from_secs(60);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bin, dir, cycles) = match args.as_slice() {
        [bin, dir] => (bin, dir, 100),
        [bin, dir, cycles] => (bin, dir, cycles.parse().with_context(|| format!("CYCLES `{cycles}`"))?),
        _ => bail!("usage: crash_bench HYDROMESH_BIN DIR [CYCLES]"),
    };
    let (bin, dir) = (PathBuf::from(bin), PathBuf::from(dir));
    if dir.exists() {
        bail!("{} already exists; give a new path", dir.display());
    }
    std::fs::create_dir_all(&dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(&bin, &dir, cycles))
}

/// The `i`-th reading sent: meters in turn, each a minute after its previous one, registers
/// growing by a varying few litres.
fn reading(i: u64) -> Reading {
    let (meter, step) = (i % METERS, i / METERS);
    Reading {
        meter: hydromesh_bench::meter(500_000 + meter),
        ts_ms: T0 + step * MINUTE,
        litres: step * 7 + (step * meter) % 5,
        flow_lph: None,
        alarms: Alarms::empty(),
    }
}

async fn run(bin: &Path, dir: &Path, cycles: u32) -> anyhow::Result<()> {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut acked = 0u64; // readings [0, acked) are acknowledged
    let (mut early_kills, mut slowest_start) = (0u32, Duration::ZERO);
    for cycle in 0..cycles {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let life = Duration::from_millis(seed % LONGEST_LIFE.as_millis() as u64);
        let mut node = Node::start(bin, dir)?;
        let started = Instant::now();
        let sent_up_to = acked + PER_CYCLE;
        let ingest = async {
            let addr = node.addr(started + life).await?;
            let mut client = Client::connect(&addr, Duration::from_secs(5)).await.ok()?;
            while acked < sent_up_to {
                let batch: Vec<Reading> = (acked..acked + BATCH).map(reading).collect();
                match client.ingest(batch).await {
                    Ok(ingest::Response::Done { outcomes, .. })
                        if outcomes.iter().all(|o| matches!(o, Outcome::Accepted | Outcome::Duplicate)) =>
                    {
                        acked += BATCH;
                    }
                    Ok(ingest::Response::Busy { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
                    _ => return None,
                }
            }
            Some(())
        };
        let _ = tokio::time::timeout(life, ingest).await;
        // Killed at the drawn moment, whatever the node is doing then.
        tokio::time::sleep_until((started + life).into()).await;
        if node.listening().is_none() {
            early_kills += 1;
        }
        node.kill()?;
        if let Some(at) = node.listening() {
            slowest_start = slowest_start.max(at.duration_since(started));
        }
        if cycle % 10 == 9 {
            eprintln!("[crash_bench] {} kills, {acked} readings acknowledged", cycle + 1);
        }
    }
    let mut node = Node::start(bin, dir)?;
    let addr = node
        .addr(Instant::now() + START_DEADLINE)
        .await
        .context("the node did not start after the last kill")?;
    let mut client = Client::connect(&addr, Duration::from_secs(10)).await?;
    let (mut lost, mut unexpected) = (0u64, 0u64);
    let steps = acked.div_ceil(METERS);
    for meter in 0..METERS {
        let answer = client
            .query(Request::Meter {
                meter: hydromesh_bench::meter(500_000 + meter),
                from_ms: None,
                to_ms: None,
            })
            .await?;
        let held = match answer {
            Response::Meter(answer) => answer.history.readings,
            Response::NotFound(_) => Vec::new(),
            other => bail!("meter {meter}: unexpected answer {other:?}"),
        };
        let acknowledged = (0..steps).map(|step| step * METERS + meter).filter(|i| *i < acked).map(reading);
        // Held: the acknowledged ones, then possibly some stored whose acknowledgement the kill
        // cut off; each once and exactly as sent.
        lost += acknowledged.filter(|r| !held.contains(r)).count() as u64;
        let as_sent = |r: &Reading| r.ts_ms >= T0 && *r == reading((r.ts_ms - T0) / MINUTE * METERS + meter);
        unexpected += held.iter().filter(|r| !as_sent(r)).count() as u64;
        unexpected += held.windows(2).filter(|pair| pair[0].ts_ms >= pair[1].ts_ms).count() as u64;
    }
    node.kill()?;
    println!(
        "{}",
        json!({
            "bench": "crash",
            "cycles": cycles,
            "killed_before_listening": early_kills,
            "acknowledged": acked,
            "lost": lost,
            "unexpected": unexpected,
            "slowest_start_s": (slowest_start.as_secs_f64() * 1000.0).round() / 1000.0,
        })
    );
    if lost > 0 || unexpected > 0 {
        bail!("{lost} acknowledged readings lost, {unexpected} held that were not sent as such");
    }
    Ok(())
}

/// A node process on the data folder, its log appended to `DIR/node.log`.
struct Node {
    child: Child,
    dir: PathBuf,
    listening_at: Option<Instant>,
}

impl Node {
    fn start(bin: &Path, dir: &Path) -> anyhow::Result<Self> {
        let data = dir.join("data");
        let _ = std::fs::remove_file(data.join("addrs"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("node.log"))?;
        let child = Command::new(bin)
            .args(["node", "--data-dir"])
            .arg(&data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "off", "--mqtt", "off", "--name", "crash"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Node { child, dir: data, listening_at: None })
    }

    /// The node's address once it listens, or `None` at `deadline` (it failing to start is an
    /// error then, seen by the caller).
    async fn addr(&mut self, deadline: Instant) -> Option<Multiaddr> {
        loop {
            if let Ok(text) = std::fs::read_to_string(self.dir.join("addrs")) {
                if let Some(addr) = text.lines().next().and_then(|line| line.parse().ok()) {
                    self.listening_at = Some(Instant::now());
                    return Some(addr);
                }
            }
            if Instant::now() >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn listening(&self) -> Option<Instant> {
        self.listening_at
    }

    /// SIGKILL; a node that had exited by itself (it could not start) is an error.
    fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the node exited by itself ({status}); see {}",
                self.dir.with_file_name("node.log").display()
            );
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}
