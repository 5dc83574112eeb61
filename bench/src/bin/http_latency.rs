//! Open-loop HTTP latency of a node's API: sends `GET /api/v1/top` (or `--path`) at a fixed
//! rate over N keep-alive HTTP/1.1 connections, and prints one JSON line with the latency
//! percentiles.
//!
//! Request k is due at `start + k / rate`, whatever happened to the others, and its latency is
//! measured from that due time to the end of its response. A slow answer therefore counts for
//! every request that had to wait behind it (no coordinated omission): a connection still busy
//! at a due time sends as soon as it is free, and the wait is part of the latency.
//!
//! ```sh
//! cargo run --release -p hydromesh-bench --bin http_latency -- --addr 127.0.0.1:8080
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hydromesh_bench::http1::{connect, exchange};
use hydromesh_bench::percentile;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest wait for one response before it counts as an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Load generator arguments.
#[derive(Debug, Parser)]
struct Args {
    /// The node's HTTP address (HOST:PORT, as in DATA_DIR/http).
    #[arg(long)]
    addr: SocketAddr,
    /// The path to ask.
    #[arg(long, default_value = "/api/v1/top")]
    path: String,
    /// Requests per second, scheduled by time.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Keep-alive connections; request k goes on connection k mod N.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
}

/// What happened to one connection's requests: latencies in ms, and errors.
#[derive(Default)]
struct Tally {
    latencies_ms: Vec<f64>,
    errors: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // One thread: on a small machine the node under test keeps the other cores.
    let args = Args::parse();
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let request =
        format!("GET {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\r\n", args.path, args.addr);
    let mut streams = Vec::new();
    for _ in 0..args.connections {
        streams.push(connect(args.addr).await?);
    }
    // Every connection is open before the clock starts.
    let start = Instant::now() + Duration::from_millis(100);
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(index, stream)| {
            let due: Vec<Instant> = (index as u64..total)
                .step_by(args.connections as usize)
                .map(|k| start + interval.mul_f64(k as f64))
                .collect();
            tokio::spawn(run_connection(args.addr, stream, request.clone(), due))
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let tally = task.await?;
        all.latencies_ms.extend(tally.latencies_ms);
        all.errors += tally.errors;
    }
    all.latencies_ms.sort_by(f64::total_cmp);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Written by hand so that "bench" comes first, as in every line bench.sh prints.
    println!(
        "{{\"bench\":\"http_top\",\"rate_per_s\":{},\"seconds\":{},\"requests\":{total},\"errors\":{},\
         \"p50_ms\":{},\"p99_ms\":{},\"max_ms\":{},\"machine\":{}}}",
        args.rate,
        args.seconds,
        all.errors,
        ms(percentile(&all.latencies_ms, 0.50)),
        ms(percentile(&all.latencies_ms, 0.99)),
        ms(all.latencies_ms.last().copied().unwrap_or(0.0)),
        json!(format!("{cores} cores")),
    );
    Ok(())
}

/// Sends this connection's requests at their due times, one at a time (HTTP/1.1 without
/// pipelining), reconnecting after an error.
async fn run_connection(addr: SocketAddr, stream: TcpStream, request: String, due: Vec<Instant>) -> Tally {
    let mut tally = Tally::default();
    let mut stream = Some(stream);
    let mut buf = Vec::with_capacity(64 * 1024);
    for at in due {
        tokio::time::sleep_until(at).await;
        if stream.is_none() {
            stream = connect(addr).await.ok();
        }
        let Some(connection) = stream.as_mut() else {
            tally.errors += 1;
            continue;
        };
        let exchange =
            tokio::time::timeout(RESPONSE_TIMEOUT, exchange(connection, request.as_bytes(), &mut buf)).await;
        match exchange {
            Ok(Ok(answer)) if answer.status == 200 => {
                tally.latencies_ms.push(at.elapsed().as_secs_f64() * 1000.0)
            }
            Ok(Ok(_)) => tally.errors += 1,
            Ok(Err(_)) | Err(_) => {
                tally.errors += 1;
                stream = None;
            }
        }
    }
    tally
}

/// Milliseconds with three decimals (microseconds).
fn ms(value: f64) -> String {
    format!("{value:.3}")
}
