//! The baseline of the ingest benchmark (`scripts/bench.sh`): how fast plain sled stores
//! readings durably on this machine, with no network, parsing, validation or index, so that
//! `hydromesh ingest` can be judged against the storage engine it is built on.
//!
//! It writes COUNT readings of METERS meters into a new sled database at PATH, one key per
//! reading laid out as the node's store lays them out (16-byte key: meter `u64` BE ‖ timestamp
//! ms `u64` BE; 13-byte value: litres `u64` BE, alarm bits `u8`, flow L/h `u32` BE), in batches
//! of 1,000 with [`sled::Batch`] and `apply_batch`, calling `flush` after every batch: each batch
//! is durable before the next is written, as an acknowledged ingest batch is. The database has
//! the node's sled settings (128 MiB cache, high-throughput mode), so the two differ only by
//! what hydromesh adds. Readings come hour by hour (every meter's reading of one hour, then the
//! next hour) with increasing registers, like the CSV that `bench.sh` feeds the node.
//!
//! It prints one JSON line: readings, meters, seconds of writing (open and close excluded),
//! readings per second, bytes on disk (files and folders, as `du -sb` counts them, after the
//! database is closed) and bytes on disk per reading.
//!
//! ```text
//! cargo run --release -p hydromesh-bench --bin sled_baseline -- PATH COUNT METERS
//! ```

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use hydromesh_bench::disk_usage;

/// Readings per `apply_batch` and per flush.
const BATCH: u64 = 1_000;
/// First timestamp: 2024-01-01T00:00:00Z, in ms.
const FIRST_TS_MS: u64 = 1_704_067_200_000;
const HOUR_MS: u64 = 3_600_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, count, meters] = args.as_slice() else {
        bail!("usage: sled_baseline PATH COUNT METERS");
    };
    let path = Path::new(path);
    let count: u64 = count.parse().with_context(|| format!("COUNT `{count}` is not a whole number"))?;
    let meters: u64 = meters.parse().with_context(|| format!("METERS `{meters}` is not a whole number"))?;
    if count == 0 || meters == 0 {
        bail!("COUNT and METERS must be at least 1");
    }
    // Never write into (or measure) a database that is not this run's own.
    if path.exists() {
        bail!("{} already exists; give a new path", path.display());
    }

    let db = sled::Config::new()
        .path(path)
        .cache_capacity(128 * 1024 * 1024)
        .mode(sled::Mode::HighThroughput)
        .open()
        .with_context(|| format!("cannot open a sled database in {}", path.display()))?;
    let readings = db.open_tree("readings")?;

    let start = Instant::now();
    let mut written = 0;
    while written < count {
        let mut batch = sled::Batch::default();
        let end = (written + BATCH).min(count);
        for index in written..end {
            let (key, value) = reading(index, meters);
            batch.insert(&key[..], &value[..]);
        }
        readings.apply_batch(batch)?;
        db.flush()?;
        written = end;
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(readings);
    drop(db);

    let bytes = disk_usage(path)?;
    // Written by hand so that "bench" comes first, as in every line bench.sh prints.
    println!(
        "{{\"bench\":\"sled_baseline\",\"readings\":{count},\"meters\":{meters},\"batch\":{BATCH},\
         \"seconds\":{seconds:.3},\"readings_per_s\":{rate:.0},\"bytes_on_disk\":{bytes},\
         \"bytes_per_reading\":{per_reading:.1}}}",
        rate = count as f64 / seconds,
        per_reading = bytes as f64 / count as f64,
    );
    Ok(())
}

/// The key and value of reading number `index`: meter `index % meters` at hour `index / meters`,
/// its register growing by 1 to 40 litres an hour depending on the meter.
fn reading(index: u64, meters: u64) -> ([u8; 16], [u8; 13]) {
    let (hour, meter) = (index / meters, index % meters);
    let per_hour = 1 + meter % 40;
    let ts_ms = FIRST_TS_MS + hour * HOUR_MS;
    let litres = meter * 1_000 + hour * per_hour;
    let flow_lph = u32::try_from(per_hour).unwrap_or(u32::MAX);
    let mut key = [0; 16];
    key[..8].copy_from_slice(&(100_000 + meter).to_be_bytes());
    key[8..].copy_from_slice(&ts_ms.to_be_bytes());
    let mut value = [0; 13];
    value[..8].copy_from_slice(&litres.to_be_bytes());
    value[8] = 0; // no alarm
    value[9..].copy_from_slice(&flow_lph.to_be_bytes());
    (key, value)
}
