//! The storage benchmark of `scripts/bench.sh`, on the node's store itself (no network):
//!
//! - `year DIR`: one meter's year of 15-minute readings (35,040), appended in batches of 1,000
//!   and flushed as the ingest writer does, the store closed and opened again, then the whole
//!   year read back (`meter_history`, what `query meter` asks of the meter's node) ROUNDS
//!   times. Prints the read time (median, p99) and the bytes on disk per reading.
//! - `fill DIR METERS PER_METER`: a node's store with METERS meters of PER_METER hourly
//!   readings each (batches of 10,000, flushed), closed; `bench.sh` then starts a node on it and
//!   times its start to the first answer and its memory.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin store_bench -- year DIR
//! cargo run --release -p hydromesh-bench --bin store_bench -- fill DIR METERS PER_METER
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use hydromesh::store::Store;
use hydromesh_bench::disk_usage;
use hydromesh_proto::{Alarms, Reading};
use serde_json::json;

/// First timestamp: 2024-01-01T00:00:00Z, in ms.
const FIRST_TS_MS: u64 = 1_704_067_200_000;
const QUARTER_HOUR_MS: u64 = 900_000;
const HOUR_MS: u64 = 3_600_000;
/// Readings of a year at 15 minutes.
const YEAR_READINGS: u64 = 365 * 96;
const ROUNDS: usize = 200;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["year", dir] => year(Path::new(dir)),
        ["fill", dir, meters, per_meter] => {
            let meters: u64 = meters.parse().with_context(|| format!("METERS `{meters}`"))?;
            let per_meter: u64 = per_meter.parse().with_context(|| format!("PER_METER `{per_meter}`"))?;
            fill(Path::new(dir), meters, per_meter)
        }
        _ => bail!("usage: store_bench year DIR | store_bench fill DIR METERS PER_METER"),
    }
}

fn fresh(dir: &Path) -> anyhow::Result<Store> {
    // Never write into (or measure) a store that is not this run's own.
    if dir.exists() {
        bail!("{} already exists; give a new path", dir.display());
    }
    Store::open(dir).with_context(|| format!("cannot open a store in {}", dir.display()))
}

/// A register that grows by a varying few litres a reading, with a flow now and then.
fn reading(meter: u64, i: u64, ts_ms: u64) -> Reading {
    let litres = 1_000_000 + i * 12 + (i * 7919) % 13;
    let flow_lph = i.is_multiple_of(4).then_some(((i * 31) % 200) as u32);
    Reading { meter: hydromesh_bench::meter(meter), ts_ms, litres, flow_lph, alarms: Alarms::empty() }
}

fn year(dir: &Path) -> anyhow::Result<()> {
    let store = fresh(dir)?;
    let now = FIRST_TS_MS + YEAR_READINGS * QUARTER_HOUR_MS;
    let readings: Vec<Reading> =
        (0..YEAR_READINGS).map(|i| reading(42, i, FIRST_TS_MS + i * QUARTER_HOUR_MS)).collect();
    for batch in readings.chunks(1_000) {
        store.append(batch, now)?;
        store.flush()?;
    }
    store.close()?;
    drop(store);
    let store = Store::open(dir)?;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let history = store
            .meter_history(hydromesh_bench::meter(42), None, None, usize::MAX)?
            .context("the meter is held")?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
        if history.readings.len() as u64 != YEAR_READINGS {
            bail!("read back {} of {YEAR_READINGS} readings", history.readings.len());
        }
    }
    times.sort_by(f64::total_cmp);
    drop(store);
    let bytes = disk_usage(dir)?;
    println!(
        "{}",
        json!({
            "bench": "store_year_read",
            "readings": YEAR_READINGS,
            "rounds": ROUNDS,
            "p50_ms": round3(times[ROUNDS / 2]),
            "p99_ms": round3(times[ROUNDS * 99 / 100]),
            "bytes_on_disk": bytes,
            "bytes_per_reading": round3(bytes as f64 / YEAR_READINGS as f64),
        })
    );
    Ok(())
}

fn fill(dir: &Path, meters: u64, per_meter: u64) -> anyhow::Result<()> {
    let store = fresh(dir)?;
    let start = Instant::now();
    let now = FIRST_TS_MS + per_meter * HOUR_MS;
    let mut batch = Vec::with_capacity(10_000);
    for hour in 0..per_meter {
        for meter in 0..meters {
            batch.push(reading(100_000 + meter, hour, FIRST_TS_MS + hour * HOUR_MS));
            if batch.len() == 10_000 {
                store.append(&batch, now)?;
                store.flush()?;
                batch.clear();
            }
        }
    }
    store.append(&batch, now)?;
    store.close()?;
    let (chunks, index) = store.live_bytes()?;
    drop(store);
    println!(
        "{}",
        json!({
            "bench": "store_fill",
            "meters": meters,
            "readings": meters * per_meter,
            "seconds": round3(start.elapsed().as_secs_f64()),
            "chunk_bytes_per_reading": round3(chunks as f64 / (meters * per_meter) as f64),
            "index_bytes_per_meter": round3(index as f64 / meters as f64),
            "bytes_on_disk": disk_usage(dir)?,
        })
    );
    Ok(())
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
