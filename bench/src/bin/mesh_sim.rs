//! The mesh simulation of `scripts/bench.sh`: many fog nodes running the real node code (libp2p,
//! gossip, sync, sled) in one process on loopback TCP, to measure what a mesh of hundreds to a
//! thousand nodes costs each node.
//!
//! It starts NODES nodes in waves, each bootstrapping to the first node and to one earlier node
//! at random, and waits until every node's coverage includes every node. Then it measures, in
//! order:
//! - `idle`: loopback bytes and process CPU over a window, per node and second;
//! - `query`: `top 10` and `stats` asked of one node in-process (the node's own answer time,
//!   through its event loop, without a network hop), many times;
//! - `convergence`: rounds that each ingest one new meter with the largest consumption so far
//!   into a random node and time, from its durable acknowledgement, until every node answers the
//!   exact expected top-10;
//! - `loaded`: LOADED nodes each receive METERS simulated meters reporting every INTERVAL
//!   (ingested in-process, so that only mesh traffic crosses loopback), and the same bytes and
//!   CPU figures are taken over a window.
//!
//! Bytes are the loopback interface's transmitted bytes: run it in a network namespace of its
//! own (scripts/bench.sh does), so that nothing else is counted. On loopback every byte sent is
//! also received, so bytes per node per second is the loopback delta ÷ nodes ÷ seconds: what a
//! node sends (and, on average, receives).
//!
//! It prints one JSON line per phase.
//!
//! A mesh larger than one process can hold open connections for (every connection in one
//! process takes two descriptors) runs as several processes in one network namespace: the
//! first writes its nodes' addresses (`--addrs-out`), each later one is given them (`--join`)
//! and numbers its nodes from `--offset`; all wait for `--mesh-size` nodes, and (`--barrier`)
//! for one another before each phase, so that every process's window sees the whole mesh in the
//! same phase (without it, one process measured its idle window while the other's nodes were
//! still forming, or its loaded window while the other's meters started or its nodes stopped).
//! Then each reports the namespace's loopback bytes per node of the whole mesh, and its own CPU
//! per node of its own (convergence needs the whole mesh in one process: `--rounds 0`).
//!
//! `--slow F` runs every node's timers F times slower (gossip heartbeat, publish debounce and
//! interval and the summary pace's windows, republish, pings, staleness, idle timeout; the
//! summary budget F times smaller, the simulated meters F times less often), and reports bytes
//! and CPU per *simulated* second (the measured figures × F): a mesh too large to run in real
//! time on this machine still runs its real protocol code, each node doing per simulated second
//! what it would per real second. Timers the node does not take from its configuration (dial
//! backoff, request timeouts, how long a connection another node opened is kept) stay at real
//! time, so they run F times more often than they would: the traffic figures err high, if at
//! all. Convergence is reported in real milliseconds.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin mesh_sim -- DIR [--nodes 100] [--loaded 10]
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use hydromesh::node::NodeClient;
use hydromesh::{App, AppHandle, Config};
use hydromesh_proto::ingest;
use hydromesh_proto::query::{Request, Response};
use hydromesh_proto::{Alarms, MeterId, Reading};
use libp2p::Multiaddr;
use serde_json::json;

const HOUR_MS: u64 = 3_600_000;
const TOP_N: usize = 10;

/// What to simulate.
#[derive(Debug, Parser)]
struct Args {
    /// Folder for the nodes' data (removed by the caller).
    dir: PathBuf,
    /// Fog nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Nodes started at once before waiting for their addresses.
    #[arg(long, default_value_t = 25)]
    wave: usize,
    /// Nodes that receive simulated meters in the loaded phase.
    #[arg(long, default_value_t = 10)]
    loaded: usize,
    /// Meters per loaded node.
    #[arg(long, default_value_t = 50)]
    meters: u64,
    /// How often each simulated meter reports.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Measurement window of the idle and loaded phases.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// Wait before each window, for the mesh to settle.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Give up waiting for the mesh to form after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    form_deadline: Duration,
    /// Convergence rounds.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Give a convergence round up after this long.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    round_deadline: Duration,
    /// Queries of each kind in the query phase.
    #[arg(long, default_value_t = 2000)]
    queries: usize,
    /// Run every node's timers this many times slower (see above); windows, settle and meter
    /// intervals are in simulated time.
    #[arg(long, default_value_t = 1)]
    slow: u32,
    /// Nodes in the whole mesh, when other processes run some of them (default: `--nodes`).
    #[arg(long)]
    mesh_size: Option<usize>,
    /// The number of this process's first node (names, meter ids).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Addresses of nodes another process runs (a file, one a line): each node here also
    /// bootstraps to one of them.
    #[arg(long)]
    join: Option<PathBuf>,
    /// Write this process's node addresses here, one a line, once they have started.
    #[arg(long)]
    addrs_out: Option<PathBuf>,
    /// With other processes of one mesh: a folder where the `--processes` processes meet before
    /// each phase (the mesh formed everywhere, idle measured everywhere, loaded measured
    /// everywhere), so that every window sees the whole mesh in the same phase.
    #[arg(long, requires = "processes")]
    barrier: Option<PathBuf>,
    /// How many processes meet at `--barrier`.
    #[arg(long)]
    processes: Option<usize>,
}

impl Args {
    fn mesh_size(&self) -> usize {
        self.mesh_size.unwrap_or(self.nodes)
    }

    /// Real time for `simulated` time.
    fn real(&self, simulated: Duration) -> Duration {
        simulated * self.slow
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Every node's tasks share one runtime, as they would share a machine.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let nodes = start_nodes(&args).await?;
    if let Some(path) = &args.addrs_out {
        let lines: String = nodes.iter().map(|(_, addr)| format!("{addr}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let clients: Vec<NodeClient> = nodes.iter().map(|(app, _)| app.client()).collect();
    eprintln!("[mesh_sim] {} nodes started in {:.1} s; waiting for the mesh", nodes.len(), secs(started));
    let formed = Instant::now();
    wait_formed(&nodes, &clients, args.mesh_size(), args.form_deadline).await?;
    eprintln!("[mesh_sim] every node sees {} nodes after {:.1} s", args.mesh_size(), secs(formed));
    barrier(&args, "formed").await?;

    tokio::time::sleep(args.real(args.settle)).await;
    let idle = measure(&nodes, args.real(args.window)).await?;
    print_phase("idle", &args, &idle, json!({}));
    barrier(&args, "idle").await?;

    let (top_us, stats_us) = (
        time_queries(&clients[0], Request::Top { n: TOP_N as u32, since_ms: None }, args.queries).await?,
        time_queries(&clients[0], Request::Stats, args.queries).await?,
    );
    println!(
        "{}",
        json!({
            "bench": "mesh_sim_query", "nodes": args.mesh_size(), "queries": args.queries,
            "top10_p50_us": percentile(&top_us, 50), "top10_p99_us": percentile(&top_us, 99),
            "stats_p50_us": percentile(&stats_us, 50), "stats_p99_us": percentile(&stats_us, 99),
        })
    );

    if args.rounds > 0 {
        let convergence = converge(&clients, &args).await?;
        println!(
            "{}",
            json!({
                "bench": "mesh_sim_convergence", "nodes": clients.len(), "rounds": convergence.len(),
                "p50_ms": percentile(&convergence, 50), "p99_ms": percentile(&convergence, 99),
                "max_ms": convergence.iter().max(), "slow": args.slow,
            })
        );
    }

    let meters = spawn_meters(&clients, &args);
    tokio::time::sleep(args.real(args.settle)).await;
    let loaded = measure(&nodes, args.real(args.window)).await?;
    print_phase(
        "loaded",
        &args,
        &loaded,
        json!({ "loaded_nodes": args.loaded.min(clients.len()), "meters_per_loaded_node": args.meters,
                "report_interval_s": args.interval.as_secs_f64() }),
    );
    barrier(&args, "loaded").await?;
    drop(meters);

    for (app, _) in nodes {
        app.shutdown().await.context("a node did not stop cleanly")?;
    }
    Ok(())
}

fn secs(since: Instant) -> f64 {
    since.elapsed().as_secs_f64()
}

/// A node's configuration: the defaults, with every timer it takes from them `slow` times
/// slower (and its summary budget, bytes a second, `slow` times smaller).
fn config(dir: PathBuf, name: String, bootstrap: Vec<Multiaddr>, slow: u32) -> Config {
    let default = Config::default();
    Config {
        data_dir: dir,
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")],
        bootstrap,
        name,
        http: None,
        mqtt: None,
        republish_interval: default.republish_interval * slow,
        publish_debounce: default.publish_debounce * slow,
        publish_interval: default.publish_interval * slow,
        stale_after: default.stale_after * slow,
        gossip_heartbeat: default.gossip_heartbeat * slow,
        idle_connection_timeout: default.idle_connection_timeout * slow,
        summary_budget: (default.summary_budget / u64::from(slow)).max(1),
        ..default
    }
}

/// Starts the nodes in waves; each bootstraps to the first node and to one earlier at random
/// (and to one of another process's nodes, with `--join`).
async fn start_nodes(args: &Args) -> anyhow::Result<Vec<(AppHandle, Multiaddr)>> {
    let others: Vec<Multiaddr> = match &args.join {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .context("an address to join")?,
        None => Vec::new(),
    };
    let mut nodes: Vec<(AppHandle, Multiaddr)> = Vec::with_capacity(args.nodes);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ args.offset as u64;
    while nodes.len() < args.nodes {
        // The first node alone: every later one bootstraps to it.
        let wave_end = if nodes.is_empty() { 1 } else { (nodes.len() + args.wave).min(args.nodes) };
        let mut wave = Vec::new();
        for i in nodes.len()..wave_end {
            let mut bootstrap = Vec::new();
            if let Some((_, first)) = nodes.first() {
                bootstrap.push(first.clone());
                seed = splitmix(seed);
                bootstrap.push(nodes[(seed % nodes.len() as u64) as usize].1.clone());
                bootstrap.dedup();
            }
            if !others.is_empty() {
                seed = splitmix(seed);
                bootstrap.push(others[(seed % others.len() as u64) as usize].clone());
            }
            let name = format!("fog-{}", args.offset + i);
            let dir = args.dir.join(&name);
            wave.push(tokio::spawn(App::spawn(config(dir, name, bootstrap, args.slow))));
        }
        for started in wave {
            let app = started.await?.context("a node did not start")?;
            let addr = app.listen_addrs().await.into_iter().next().context("a node has no address")?;
            let addr = addr.with_p2p(app.peer_id()).map_err(|_| anyhow::anyhow!("address with /p2p"))?;
            nodes.push((app, addr));
        }
    }
    Ok(nodes)
}

/// With `--barrier`: says this process reached `step`, and waits (up to `--form-deadline`) for
/// every process to say so.
async fn barrier(args: &Args, step: &str) -> anyhow::Result<()> {
    let (Some(dir), Some(processes)) = (&args.barrier, args.processes) else { return Ok(()) };
    let mine = dir.join(format!("{step}-{}", args.offset));
    std::fs::write(&mine, b"").with_context(|| format!("cannot write {}", mine.display()))?;
    let end = Instant::now() + args.form_deadline;
    loop {
        let arrived = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&format!("{step}-")))
            .count();
        if arrived >= processes {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("{arrived} of {processes} processes reached `{step}` within the deadline");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every node sees `mesh_size` live nodes.
async fn wait_formed(
    nodes: &[(AppHandle, Multiaddr)],
    clients: &[NodeClient],
    mesh_size: usize,
    deadline: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + deadline;
    let mut pending: Vec<usize> = (0..clients.len()).collect();
    let mut last_report = Instant::now();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for &i in &pending {
            if included(&clients[i]).await < mesh_size {
                still.push(i);
            }
        }
        pending = still;
        if Instant::now() > end {
            for &i in pending.iter().take(5) {
                describe(i, &clients[i]).await;
            }
            let seen = included(&clients[pending[0]]).await;
            bail!(
                "{} nodes still do not see the whole mesh (node {} sees {seen})",
                pending.len(),
                pending[0]
            );
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "[mesh_sim] {} nodes do not see the whole mesh yet; {} syncs asked so far",
                pending.len(),
                syncs_asked(nodes)
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// What a node that does not see the whole mesh knows of it, for the log.
async fn describe(index: usize, client: &NodeClient) {
    if let Response::Peers(answer) = client.query(Request::Peers).await {
        let known = answer.peers.len();
        let stale = answer.peers.iter().filter(|peer| peer.stale).count();
        let connected: Vec<&str> =
            answer.peers.iter().filter(|peer| peer.connected).map(|peer| peer.name.as_str()).collect();
        let fresh: Vec<&str> =
            answer.peers.iter().filter(|peer| !peer.stale).map(|peer| peer.name.as_str()).collect();
        eprintln!(
            "[mesh_sim] node {index}: knows {known}, {stale} stale; connected to {connected:?}; hears {fresh:?}"
        );
    }
}

async fn included(client: &NodeClient) -> usize {
    match client.query(Request::Stats).await {
        Response::Stats(stats) => stats.coverage.included.len() - stats.coverage.stale.len(),
        _ => 0,
    }
}

/// Loopback bytes sent and CPU time used over `window`.
struct Usage {
    bytes: u64,
    cpu: Duration,
    /// Anti-entropy exchanges this process's nodes asked for.
    syncs: u64,
    window: Duration,
}

async fn measure(nodes: &[(AppHandle, Multiaddr)], window: Duration) -> anyhow::Result<Usage> {
    let (bytes, cpu, syncs, start) = (lo_tx_bytes()?, cpu_time()?, syncs_asked(nodes), Instant::now());
    tokio::time::sleep(window).await;
    Ok(Usage {
        bytes: lo_tx_bytes()?.saturating_sub(bytes),
        cpu: cpu_time()?.saturating_sub(cpu),
        syncs: syncs_asked(nodes).saturating_sub(syncs),
        window: start.elapsed(),
    })
}

/// Syncs the nodes asked for so far, from their metrics.
fn syncs_asked(nodes: &[(AppHandle, Multiaddr)]) -> u64 {
    const SERIES: &str = "hydromesh_syncs_total{side=\"asked\"} ";
    let count = |text: String| {
        text.lines().find_map(|line| line.strip_prefix(SERIES)?.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    nodes.iter().map(|(app, _)| count(app.metrics().encode())).sum()
}

/// One phase's line: bytes and CPU per node and simulated second.
fn print_phase(phase: &str, args: &Args, usage: &Usage, extra: serde_json::Value) {
    // The loopback carries the whole mesh's traffic; the CPU is this process's nodes'.
    let (mesh, own) = (args.mesh_size() as f64, args.nodes as f64);
    let seconds = usage.window.as_secs_f64() / f64::from(args.slow);
    let mut line = json!({
        "bench": format!("mesh_sim_{phase}"),
        "nodes": args.mesh_size(),
        "process_nodes": args.nodes,
        "slow": args.slow,
        "window_s": (seconds * 10.0).round() / 10.0,
        "bytes_per_node_per_s": (usage.bytes as f64 / mesh / seconds).round(),
        "cpu_percent_per_node": (usage.cpu.as_secs_f64() / seconds / own * 100.0 * 1000.0).round() / 1000.0,
        "cpu_percent_total": (usage.cpu.as_secs_f64() / seconds * 100.0).round(),
        "syncs_per_node_per_min": (usage.syncs as f64 / own / seconds * 60.0 * 100.0).round() / 100.0,
    });
    if let (Some(line), serde_json::Value::Object(extra)) = (line.as_object_mut(), extra) {
        line.extend(extra);
    }
    println!("{line}");
}

fn lo_tx_bytes() -> anyhow::Result<u64> {
    let text =
        std::fs::read_to_string("/sys/class/net/lo/statistics/tx_bytes").context("loopback counters")?;
    Ok(text.trim().parse()?)
}

/// This process's user + system CPU time.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").context("/proc/self/stat")?.1.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // Linux reports in USER_HZ, 100 on every mainstream configuration.
    Ok(Duration::from_millis(ticks * 10))
}

async fn time_queries(client: &NodeClient, request: Request, count: usize) -> anyhow::Result<Vec<u64>> {
    let mut micros = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let answer = client.query(request.clone()).await;
        micros.push(start.elapsed().as_micros() as u64);
        if !matches!(answer, Response::Top(_) | Response::Stats(_)) {
            bail!("unexpected answer {answer:?}");
        }
    }
    Ok(micros)
}

/// Convergence rounds: ms from the acknowledgement to the exact top-10 on every node.
async fn converge(clients: &[NodeClient], args: &Args) -> anyhow::Result<Vec<u64>> {
    let first_meter = 900_000_000_000;
    let mut expected: Vec<(MeterId, u64)> = Vec::new();
    let mut samples = Vec::new();
    let mut seed = 42u64;
    for round in 0..u64::from(args.rounds) {
        seed = splitmix(seed);
        let home = (seed % clients.len() as u64) as usize;
        let (meter, consumption) = (hydromesh_bench::meter(first_meter + round), 1_000_000_000 + round);
        let now_ms = hydromesh::clock::now_ms();
        let readings = [0, consumption].into_iter().enumerate().map(|(k, litres)| Reading {
            meter,
            ts_ms: now_ms - 2 * HOUR_MS + k as u64 * HOUR_MS,
            litres,
            flow_lph: None,
            alarms: Alarms::empty(),
        });
        match clients[home].ingest(readings.collect()).await {
            ingest::Response::Done { .. } => {}
            other => bail!("round {round}: the node did not take the readings: {other:?}"),
        }
        let acked = Instant::now();
        expected.insert(0, (meter, consumption));
        expected.truncate(TOP_N);
        let mut pending: Vec<usize> = (0..clients.len()).collect();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for &i in &pending {
                let exact = match clients[i].query(Request::Top { n: TOP_N as u32, since_ms: None }).await {
                    Response::Top(top) => {
                        top.entries.iter().map(|e| (e.meter, e.consumption_l)).collect::<Vec<_>>() == expected
                    }
                    _ => false,
                };
                if !exact {
                    still.push(i);
                }
            }
            pending = still;
            if acked.elapsed() > args.round_deadline {
                bail!(
                    "round {round}: {} nodes still lack the exact top-10 after {:?}",
                    pending.len(),
                    args.round_deadline
                );
            }
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        samples.push(acked.elapsed().as_millis() as u64);
        // A settled mesh for the next round: past the publish cadence.
        tokio::time::sleep(args.real(Duration::from_millis(1500))).await;
    }
    Ok(samples)
}

/// Simulated meters on the first `loaded` nodes, each reporting every `interval`.
fn spawn_meters(clients: &[NodeClient], args: &Args) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for (node, client) in clients.iter().take(args.loaded).enumerate() {
        let (client, interval, meters) = (client.clone(), args.real(args.interval), args.meters);
        let first = (args.offset as u64 + node as u64 + 1) * 100_000;
        set.spawn(async move {
            let mut tick = tokio::time::interval(interval);
            let mut reports = 0u64;
            loop {
                tick.tick().await;
                reports += 1;
                let ts_ms = hydromesh::clock::now_ms();
                // Each meter draws its own steady flow, so that consumptions differ.
                let readings = (first..first + meters)
                    .map(|meter| Reading {
                        meter: hydromesh_bench::meter(meter),
                        ts_ms,
                        litres: reports * (1 + meter % 97),
                        flow_lph: None,
                        alarms: Alarms::empty(),
                    })
                    .collect();
                if !matches!(client.ingest(readings).await, ingest::Response::Done { .. }) {
                    eprintln!("[mesh_sim] a simulated batch was not taken");
                }
            }
        });
    }
    set
}

/// The `p`th percentile (nearest rank) of `values`.
fn percentile(values: &[u64], p: usize) -> u64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(0)
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
