//! Overload of a node's HTTP ingest, and whether it keeps its throughput, its latency and its
//! answers to questions.
//!
//! 1. One client posts batches of readings (`POST /api/v1/readings`) one after the other for
//!    `--single-seconds`: what one client sustains (S readings/s).
//! 2. `--clients` clients then offer `--factor` x S between them for `--seconds`, open loop:
//!    each sends a batch at its due time on one of its `--connections` keep-alive connections,
//!    whatever happened to the others (a due batch that finds every connection of its client
//!    waiting is counted `unsent`). A batch answered 503 is not sent again, unless
//!    `--honour-retry-after`, where the client then sends nothing until that time has passed.
//!    Meanwhile a probe asks `GET /api/v1/stats` every 100 ms on its own connection, each
//!    timed from its due time, and the node's resident memory is sampled (`--pid`).
//!
//! Each phase has its own `--meters` meters, so that both pay for new meters alike. Every
//! reading is new (its own meter and time), so goodput is the readings acknowledged a
//! second. Prints one JSON line, with the readings the node's metrics count as accepted (to be
//! compared with those acknowledged).

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use clap::Parser;
use hydromesh_bench::http1::{connect, exchange, Answer};
use hydromesh_bench::{counter, percentile};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Longest wait for one answer before it counts as an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the probe asks its question, and the node's memory is sampled.
const PROBE_EVERY: Duration = Duration::from_millis(100);
/// The first meter of the single client (the overload's clients follow).
const FIRST_METER: u64 = 1_000_000;
/// Time of the first readings: 2026-01-01T00:00:00Z, in ms.
const FIRST_TS_MS: u64 = 1_767_225_600_000;

#[derive(Debug, Parser)]
struct Args {
    /// The node's HTTP address (HOST:PORT, as in DATA_DIR/http).
    #[arg(long)]
    addr: SocketAddr,
    /// The node's process id, to sample its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Clients of the overload.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=64))]
    clients: u64,
    /// Offered load, in multiples of what one client sustains.
    #[arg(long, default_value_t = 12.0)]
    factor: f64,
    /// Readings per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// How long the single client runs, in seconds.
    #[arg(long, default_value_t = 10)]
    single_seconds: u64,
    /// How long the overload runs, in seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Keep-alive connections of each client of the overload.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=128))]
    connections: u64,
    /// Meters of each phase: the single client's readings cycle through this many, and the
    /// overload's clients share as many others.
    #[arg(long, default_value_t = 100_000)]
    meters: u64,
    /// Clients that were answered 503 wait for its `Retry-After` before sending again.
    #[arg(long)]
    honour_retry_after: bool,
}

/// The readings of one client: batch k covers `batch` of its meters, each a minute after its
/// previous reading, with a register 10 litres higher.
struct Feed {
    host: String,
    first_meter: u64,
    meters: u64,
    batch: u64,
    next: u64,
}

impl Feed {
    /// The feed of `meters` meters from `first_meter`.
    fn new(addr: SocketAddr, first_meter: u64, meters: u64, batch: u64) -> Self {
        Feed { host: addr.to_string(), first_meter, meters: meters.max(batch), batch, next: 0 }
    }

    /// The next request, head and body.
    fn next_request(&mut self) -> Vec<u8> {
        let per_round = self.meters / self.batch;
        let (round, slot) = (self.next / per_round, self.next % per_round);
        self.next += 1;
        let mut body = Vec::with_capacity(self.batch as usize * 56);
        body.push(b'[');
        for i in 0..self.batch {
            let meter = self.first_meter + slot * self.batch + i;
            let ts = FIRST_TS_MS + round * 60_000;
            if i > 0 {
                body.push(b',');
            }
            let _ = write!(body, r#"{{"meter":{meter},"ts":{ts},"litres":{}}}"#, 1_000 + round * 10);
        }
        body.push(b']');
        let mut request = format!(
            "POST /api/v1/readings HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        request
    }
}

/// What happened to the requests of a phase.
#[derive(Default)]
struct Tally {
    sent: u64,
    unsent: u64,
    held_back: u64,
    acked_readings: u64,
    busy: u64,
    other_status: u64,
    errors: u64,
    ack_ms: Vec<f64>,
    busy_ms: Vec<f64>,
}

/// One request on a connection (opened if needed); the connection is given back unless it
/// failed or the server closes it.
async fn send(
    addr: SocketAddr,
    connection: Option<TcpStream>,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> (Option<TcpStream>, Result<Answer, ()>) {
    let mut stream = match connection {
        Some(stream) => stream,
        None => match connect(addr).await {
            Ok(stream) => stream,
            Err(_) => return (None, Err(())),
        },
    };
    match tokio::time::timeout(RESPONSE_TIMEOUT, exchange(&mut stream, request, buf)).await {
        Ok(Ok(answer)) => ((!answer.closes).then_some(stream), Ok(answer)),
        _ => (None, Err(())),
    }
}

/// Counts one answer of `readings` readings, sent `started`.
fn record(tally: &mut Tally, answer: Result<Answer, ()>, readings: u64, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    tally.sent += 1;
    match answer {
        Ok(answer) if answer.status == 200 => {
            tally.acked_readings += readings;
            tally.ack_ms.push(ms);
        }
        Ok(answer) if answer.status == 503 => {
            tally.busy += 1;
            tally.busy_ms.push(ms);
        }
        Ok(_) => tally.other_status += 1,
        Err(()) => tally.errors += 1,
    }
}

/// One client posting batch after batch for `seconds`.
async fn single(args: &Args) -> Tally {
    let (addr, batch, seconds) = (args.addr, args.batch, args.single_seconds);
    let mut feed = Feed::new(addr, FIRST_METER, args.meters, batch);
    let (mut tally, mut buf, mut connection) = (Tally::default(), Vec::new(), None);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let request = feed.next_request();
        let started = Instant::now();
        let (back, answer) = send(addr, connection, &request, &mut buf).await;
        connection = back;
        record(&mut tally, answer, batch, started);
    }
    tally
}

/// One client of the overload: a batch every `interval` from `start` to `end`.
/// Every client counts into `tally`.
async fn client(
    args: Arc<Args>,
    index: u64,
    interval: Duration,
    (start, end): (Instant, Instant),
    tally: Arc<Mutex<Tally>>,
) {
    let paused_until = Arc::new(Mutex::new(start));
    let (idle, mut idle_rx) = mpsc::channel::<Option<TcpStream>>(args.connections as usize);
    for _ in 0..args.connections {
        let _ = idle.try_send(connect(args.addr).await.ok());
    }
    let share = args.meters / args.clients;
    let first = FIRST_METER + args.meters + index * share;
    let mut feed = Feed::new(args.addr, first, share, args.batch);
    let mut tasks = Vec::new();
    let mut due = start + interval.mul_f64(index as f64 / args.clients as f64);
    while due < end {
        tokio::time::sleep_until(due).await;
        due += interval;
        if Instant::now() < *paused_until.lock().unwrap_or_else(PoisonError::into_inner) {
            tally.lock().unwrap_or_else(PoisonError::into_inner).held_back += 1;
            continue;
        }
        let Ok(connection) = idle_rx.try_recv() else {
            tally.lock().unwrap_or_else(PoisonError::into_inner).unsent += 1;
            continue;
        };
        let request = feed.next_request();
        let (args, idle, tally, paused_until) =
            (args.clone(), idle.clone(), tally.clone(), paused_until.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let (back, answer) = send(args.addr, connection, &request, &mut Vec::new()).await;
            if let (true, Ok(Answer { status: 503, retry_after_s: Some(s), .. })) =
                (args.honour_retry_after, answer)
            {
                let until = Instant::now() + Duration::from_secs(s);
                let mut paused = paused_until.lock().unwrap_or_else(PoisonError::into_inner);
                *paused = (*paused).max(until);
            }
            record(&mut tally.lock().unwrap_or_else(PoisonError::into_inner), answer, args.batch, started);
            let _ = idle.try_send(back);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// Asks `GET /api/v1/stats` every [`PROBE_EVERY`] until `end`; latencies from each due time,
/// and the node's peak resident memory.
async fn probe(addr: SocketAddr, pid: Option<u32>, end: Instant) -> (Vec<f64>, u64, u64) {
    let request = format!("GET /api/v1/stats HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
    let (mut latencies, mut errors, mut peak_rss) = (Vec::new(), 0, 0);
    let (mut connection, mut buf) = (None, Vec::new());
    let mut due = Instant::now();
    while due < end {
        tokio::time::sleep_until(due).await;
        if let Some(rss) = pid.and_then(rss_bytes) {
            peak_rss = peak_rss.max(rss);
        }
        let (back, answer) = send(addr, connection, request.as_bytes(), &mut buf).await;
        connection = back;
        match answer {
            Ok(answer) if answer.status == 200 => latencies.push(due.elapsed().as_secs_f64() * 1000.0),
            _ => errors += 1,
        }
        // A late answer does not pile up questions: the next is due after it.
        due = (due + PROBE_EVERY).max(Instant::now());
    }
    (latencies, errors, peak_rss)
}

/// The readings the node counts as accepted (`hydromesh_readings_total` in its metrics).
async fn accepted_by_node(addr: SocketAddr) -> anyhow::Result<u64> {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut buf = Vec::new();
    let (_, answer) = send(addr, None, request.as_bytes(), &mut buf).await;
    anyhow::ensure!(answer.is_ok_and(|answer| answer.status == 200), "no metrics from the node");
    Ok(counter(&String::from_utf8_lossy(&buf), "hydromesh_readings_total{outcome=\"accepted\"}"))
}

/// Resident memory of process `pid`, bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn ms(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One thread: on a small machine the node under test keeps the other cores.
    let args = Arc::new(Args::parse());
    let single = single(&args).await;
    anyhow::ensure!(single.acked_readings > 0, "the single client had no batch acknowledged");
    let single_rps = single.acked_readings as f64 / args.single_seconds as f64;
    let offered_rps = single_rps * args.factor;
    let interval = Duration::from_secs_f64(args.clients as f64 * args.batch as f64 / offered_rps);
    let start = Instant::now() + Duration::from_millis(200);
    let end = start + Duration::from_secs(args.seconds);
    let probe = tokio::spawn(probe(args.addr, args.pid, end));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let clients: Vec<_> = (0..args.clients)
        .map(|index| tokio::spawn(client(args.clone(), index, interval, (start, end), tally.clone())))
        .collect();
    for task in clients {
        task.await?;
    }
    let mut all = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    let (mut queries, query_errors, peak_rss) = probe.await?;
    all.ack_ms.sort_by(f64::total_cmp);
    all.busy_ms.sort_by(f64::total_cmp);
    queries.sort_by(f64::total_cmp);
    let goodput = all.acked_readings as f64 / args.seconds as f64;
    let node_accepted = accepted_by_node(args.addr).await?;
    let line = json!({
        "clients": args.clients,
        "factor": args.factor,
        "batch_readings": args.batch,
        "honour_retry_after": args.honour_retry_after,
        "single_readings_per_s": single_rps.round(),
        "offered_readings_per_s": offered_rps.round(),
        "goodput_readings_per_s": goodput.round(),
        "goodput_ratio": (goodput / single_rps * 1000.0).round() / 1000.0,
        "requests_sent": all.sent,
        "requests_unsent": all.unsent,
        "requests_held_back": all.held_back,
        "busy": all.busy,
        "other_status": all.other_status,
        "errors": all.errors,
        "ack_p50_ms": ms(percentile(&all.ack_ms, 0.5)),
        "ack_p99_ms": ms(percentile(&all.ack_ms, 0.99)),
        "ack_max_ms": ms(all.ack_ms.last().copied().unwrap_or(0.0)),
        "busy_p50_ms": ms(percentile(&all.busy_ms, 0.5)),
        "busy_p99_ms": ms(percentile(&all.busy_ms, 0.99)),
        "queries": queries.len(),
        "query_errors": query_errors,
        "query_p50_ms": ms(percentile(&queries, 0.5)),
        "query_p99_ms": ms(percentile(&queries, 0.99)),
        "query_max_ms": ms(queries.last().copied().unwrap_or(0.0)),
        "node_peak_rss_bytes": peak_rss,
        "acked_readings_total": single.acked_readings + all.acked_readings,
        "node_accepted_readings": node_accepted,
    });
    // "bench" first, as in every line bench.sh prints.
    println!("{{\"bench\":\"overload\",{}", &line.to_string()[1..]);
    Ok(())
}
