//! The node's durable state in sled, behind one type: readings and their index, the summary
//! version, the persisted merged view and the admin commands. Nothing else in hydromesh touches
//! sled, and the store holds no rule state: that is the ingest writer's.
//!
//! Readings are kept the way a time-series database keeps them:
//! - **chunks** (tree `chunks`): each meter's readings in runs of up to [`CHUNK_READINGS`],
//!   compressed column by column ([`chunk`]: a few bytes a reading), keyed by
//!   `meter (u64 BE) ‖ first ts_ms (u64 BE)`, so one meter's chunks are one contiguous,
//!   time-ordered key range;
//! - a **write-ahead part** (tree `wal`): every accepted batch as one record, written before
//!   its acknowledgement, so a batch writes O(batch) bytes; its readings are also held in memory
//!   (`pending`) and folded into the chunks once [`FOLD_AT`] of them have gathered (and at
//!   close). Folding writes the chunks before it removes the records, and merging a reading
//!   into a chunk that already holds it changes nothing: a crash at any point of a fold loses
//!   nothing and counts nothing twice;
//! - a **meter index** (tree `meters`): each meter's first and last reading, kept with the
//!   chunks, read at open (with the write-ahead records) instead of scanning the readings. In
//!   memory, it lets the common case of ingest (a reading newer than the meter's last) validate
//!   without touching the disk; it is locked per reading, never for a whole batch, so readers
//!   wait microseconds at most.
//!
//! A store written by an earlier version (one key per reading, tree `readings`) is migrated into
//! chunks when it is opened.

mod chunk;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hydromesh_proto::ingest::{Outcome, Rejection};
use hydromesh_proto::query::MeterHistory;
use hydromesh_proto::summary::{MeterSpan, Point};
use hydromesh_proto::{Alarms, MeterId, Reading};

use crate::domain;

/// How many summary versions are reserved on disk at a time (see [`Store::next_summary_version`]).
const VERSION_BLOCK: u64 = 1024;
const KEY_VERSION_RESERVED: &[u8] = b"summary_version_reserved";
/// Readings a chunk is filled to before a new one starts.
pub const CHUNK_READINGS: usize = 128;
/// Readings held in the write-ahead part before they are folded into chunks: enough that a
/// fold adds many readings to each chunk it rewrites, few enough to stay a few MB of memory.
pub const FOLD_AT: usize = 200_000;
/// The file beside sled's that says how many meters the store held at its last fold.
const HELD_FILE: &str = "meters-held";
/// How long a database lock held by this process's last handle is waited for (see `open_sled`).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Readings migrated from the old layout per write.
const MIGRATE_BATCH: usize = 100_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open the database in {path}: {source}")]
    Open {
        /// Its folder.
        path: PathBuf,
        /// What sled said.
        source: sled::Error,
    },
    /// A read or write failed.
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
    /// A file of the store could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Writes could not be made durable (the flush failed).
    #[error("the store could not make writes durable: {0}")]
    Durability(String),
    /// A blocking read could not run.
    #[error("a store task failed: {0}")]
    Task(String),
    /// Stored bytes are not what this version wrote.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database opened with fewer meters than it held when last written: sled, finding
    /// its log damaged or cut short, keeps what precedes the damage and drops the rest.
    #[error(
        "the store in {path} held {held} meters when last written but opens with {found}: its \
         database file was damaged or cut short. Nothing was changed: restore this folder from a \
         backup, or move it away to start with an empty store"
    )]
    Damaged {
        /// The store's folder.
        path: PathBuf,
        /// Meters it held.
        held: usize,
        /// Meters it opens with.
        found: usize,
    },
    /// The database cannot be read at all.
    #[error(
        "cannot read the database in {path} ({reason}): it is damaged. Nothing was changed: \
         restore this folder from a backup, or move it away to start with an empty store"
    )]
    Unreadable {
        /// The store's folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The sled-backed store of one node.
pub struct Store {
    /// The store's folder.
    dir: PathBuf,
    db: sled::Db,
    chunks: sled::Tree,
    wal: sled::Tree,
    meter_index: sled::Tree,
    meta: sled::Tree,
    views: sled::Tree,
    control: sled::Tree,
    /// Each meter's first and last reading over all data held. Written by the one writer.
    meters: Mutex<HashMap<MeterId, MeterSpan>>,
    /// The readings of the write-ahead records, not folded into chunks yet. Written by the one
    /// writer.
    pending: Mutex<Pending>,
    /// Next summary version to hand out, and the first one not yet reserved on disk.
    versions: Mutex<(u64, u64)>,
}

#[derive(Default)]
struct Pending {
    readings: BTreeMap<(MeterId, u64), Reading>,
    /// Key of the next write-ahead record.
    next_record: u64,
}

/// What [`Store::append`] did.
#[derive(Debug, Default)]
pub struct Appended {
    /// One outcome per reading, in order.
    pub outcomes: Vec<Outcome>,
    /// The new span of every meter that gained a reading.
    pub spans: HashMap<MeterId, MeterSpan>,
}

impl Store {
    /// Opens (or creates) the store in `dir`, migrating a store of the old layout.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        remove_unfinished_snapshots(dir)?;
        let db = open_sled(dir)?;
        let meta = db.open_tree("meta")?;
        let reserved = match meta.get(KEY_VERSION_RESERVED)? {
            Some(bytes) => u64_at(&bytes, 0)?,
            None => 1,
        };
        let store = Store {
            dir: dir.to_path_buf(),
            chunks: db.open_tree("chunks")?,
            wal: db.open_tree("wal")?,
            meter_index: db.open_tree("meters")?,
            views: db.open_tree("views")?,
            control: db.open_tree("control")?,
            meta,
            meters: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            versions: Mutex::new((reserved, reserved)),
            db,
        };
        store.load_index()?;
        store.replay_records()?;
        store.migrate_old_layout()?;
        store.check_meters_held()?;
        Ok(store)
    }

    /// Validates and writes readings, returning one outcome per reading in order and the new
    /// spans of the meters that gained one. Written readings are durable only after
    /// [`Store::flush`]. Only one thread may append (the ingest writer).
    pub fn append(&self, readings: &[Reading], now_ms: u64) -> Result<Appended, StoreError> {
        let mut appended = Appended { outcomes: Vec::with_capacity(readings.len()), spans: HashMap::new() };
        let mut accepted = Vec::new();
        for reading in readings {
            let outcome = match domain::check_fields(reading, now_ms) {
                Err(rejection) => Outcome::Rejected(rejection),
                Ok(()) => self.place(reading)?,
            };
            if outcome == Outcome::Accepted {
                accepted.push(*reading);
                if let Some(span) = self.span(reading.meter) {
                    appended.spans.insert(reading.meter, span);
                }
            }
            appended.outcomes.push(outcome);
        }
        if !accepted.is_empty() {
            let record = lock(&self.pending).next_record;
            self.wal.insert(record.to_be_bytes(), chunk::encode_record(&accepted))?;
            lock(&self.pending).next_record = record + 1;
        }
        if lock(&self.pending).readings.len() >= FOLD_AT {
            self.fold()?;
        }
        Ok(appended)
    }

    /// The meter's first and last reading over all data held.
    pub fn span(&self, meter: MeterId) -> Option<MeterSpan> {
        lock(&self.meters).get(&meter).copied()
    }

    /// Every meter's span (for the ingest writer's start).
    pub fn spans(&self) -> Vec<MeterSpan> {
        lock(&self.meters).values().copied().collect()
    }

    /// The meter's readings from `from_ms` on and the last one before it (where a run that
    /// reaches into the window started), at most `max` of them (the latest), by time.
    pub fn recent_readings(
        &self,
        meter: MeterId,
        from_ms: u64,
        max: usize,
    ) -> Result<Vec<Reading>, StoreError> {
        self.scan_back(meter, from_ms, u64::MAX, max)
    }

    /// Consumption over `[from_ms, to_ms)` by the one definition.
    pub fn window_consumption(&self, meter: MeterId, from_ms: u64, to_ms: u64) -> Result<u64, StoreError> {
        if to_ms <= from_ms {
            return Ok(0);
        }
        let last = self.at_or_before(meter, to_ms - 1)?.filter(|reading| reading.ts_ms >= from_ms);
        let base = self.window_base(meter, from_ms)?;
        Ok(match (base, last) {
            (Some(base), Some(last)) => last.litres.saturating_sub(base.litres),
            _ => 0,
        })
    }

    /// The reading a window starting at `from_ms` counts from: the last at or before it, else
    /// the first after it.
    pub fn window_base(&self, meter: MeterId, from_ms: u64) -> Result<Option<Point>, StoreError> {
        let base = match self.at_or_before(meter, from_ms)? {
            Some(reading) => Some(reading),
            None => self.at_or_after(meter, from_ms)?,
        };
        Ok(base.as_ref().map(domain::point))
    }

    /// Saves an admin command under its subject.
    pub fn save_command(&self, subject: &str, signed: &[u8]) -> Result<(), StoreError> {
        self.control.insert(subject.as_bytes(), signed)?;
        Ok(())
    }

    /// Every saved admin command.
    pub fn commands(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.control.iter().values().map(|v| Ok(v?.to_vec())).collect()
    }

    fn place(&self, reading: &Reading) -> Result<Outcome, StoreError> {
        let span = self.span(reading.meter);
        let neighbours = match span {
            None => (None, None),
            Some(span) if reading.ts_ms > span.last.ts_ms => (Some(span.last), None),
            Some(span) if reading.ts_ms < span.first.ts_ms => (None, Some(span.first)),
            Some(_) => {
                let before = self.at_or_before(reading.meter, reading.ts_ms)?;
                if let Some(stored) = before.filter(|stored| stored.ts_ms == reading.ts_ms) {
                    return Ok(if stored == *reading {
                        Outcome::Duplicate
                    } else {
                        Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: stored.litres })
                    });
                }
                let after = self.at_or_after(reading.meter, reading.ts_ms)?;
                (before.as_ref().map(domain::point), after.as_ref().map(domain::point))
            }
        };
        if let Some(earlier) = neighbours.0.filter(|p| p.litres > reading.litres) {
            return Ok(Outcome::Rejected(Rejection::RegisterDecreased {
                earlier_ts_ms: earlier.ts_ms,
                earlier_litres: earlier.litres,
            }));
        }
        if let Some(later) = neighbours.1.filter(|p| p.litres < reading.litres) {
            return Ok(Outcome::Rejected(Rejection::RegisterAboveLater {
                later_ts_ms: later.ts_ms,
                later_litres: later.litres,
            }));
        }
        lock(&self.pending).readings.insert((reading.meter, reading.ts_ms), *reading);
        widen_span(&mut lock(&self.meters), reading);
        Ok(Outcome::Accepted)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Folds the write-ahead part into the chunks and makes everything durable: what a node
    /// does when it stops, so that the next start has nothing to replay.
    pub fn close(&self) -> Result<(), StoreError> {
        self.fold()?;
        self.flush()
    }

    /// Whether this node holds readings of `meter`.
    pub fn holds(&self, meter: MeterId) -> bool {
        lock(&self.meters).contains_key(&meter)
    }

    /// A meter's readings in `[from, to)`, at most `limit` of them (the latest), and the reading
    /// its consumption counts from. `None` when the node holds no reading of the meter.
    pub fn meter_history(
        &self,
        meter: MeterId,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        limit: usize,
    ) -> Result<Option<MeterHistory>, StoreError> {
        if !self.holds(meter) {
            return Ok(None);
        }
        let from = from_ms.unwrap_or(0);
        let mut baseline = match from_ms {
            Some(from_ms) => self.at_or_before(meter, from_ms)?,
            None => None,
        };
        let mut readings = match to_ms {
            Some(to) if to <= from => Vec::new(),
            Some(to) => self.scan_back(meter, from, to - 1, limit.saturating_add(1))?,
            None => self.scan_back(meter, from, u64::MAX, limit.saturating_add(1))?,
        };
        readings.retain(|reading| reading.ts_ms >= from);
        let truncated = readings.len() > limit;
        if truncated {
            readings.remove(0);
            // The window's first reading is cut off, but consumption still counts from it.
            if baseline.is_none() {
                baseline = self.at_or_after(meter, from)?;
            }
        }
        Ok(Some(MeterHistory { baseline, readings, truncated }))
    }

    /// Spans of the `n` meters that consumed most in `[from_ms, now)`, consumption descending then
    /// meter ascending.
    pub fn top_since(&self, n: usize, from_ms: u64) -> Result<Vec<MeterSpan>, StoreError> {
        let candidates: Vec<MeterSpan> =
            lock(&self.meters).values().filter(|span| span.last.ts_ms >= from_ms).copied().collect();
        let mut spans = Vec::with_capacity(candidates.len());
        for span in candidates {
            if let Some(first) = self.window_base(span.meter, from_ms)? {
                spans.push(MeterSpan { meter: span.meter, first, last: span.last });
            }
        }
        Ok(domain::rank(spans, n))
    }

    /// The meter's latest `max` readings at or before `to_ms`, going back to the last one before
    /// `from_ms` at most, by time: its chunks read from the latest back (one scan, stopping
    /// once enough are found), and its readings in the write-ahead part.
    fn scan_back(
        &self,
        meter: MeterId,
        from_ms: u64,
        to_ms: u64,
        max: usize,
    ) -> Result<Vec<Reading>, StoreError> {
        let mut chunks = Vec::new();
        let (mut in_window, range) = (0, chunk_key(meter, 0).to_vec()..=chunk_key(meter, to_ms).to_vec());
        for entry in self.chunks.range(range).rev() {
            let (key, value) = entry?;
            let chunk = decode_chunk(&key, &value)?;
            let reaches_before = chunk.first().is_some_and(|first| first.ts_ms < from_ms);
            in_window += chunk.iter().filter(|r| (from_ms..=to_ms).contains(&r.ts_ms)).count();
            chunks.push(chunk);
            if reaches_before || in_window >= max {
                break;
            }
        }
        // By time again (the sort below then finds the readings in order).
        let mut readings: Vec<Reading> =
            chunks.into_iter().rev().flatten().filter(|reading| reading.ts_ms <= to_ms).collect();
        let pending = lock(&self.pending);
        readings.extend(pending.readings.range((meter, 0)..=(meter, to_ms)).map(|(_, r)| *r));
        drop(pending);
        // A fold in progress may have put a pending reading into a chunk already.
        readings.sort_by_key(|r| r.ts_ms);
        readings.dedup_by_key(|r| r.ts_ms);
        // From the last reading before the window, then the latest `max`.
        let first_in_window = readings.partition_point(|r| r.ts_ms < from_ms);
        readings.drain(..first_in_window.saturating_sub(1));
        let cut = readings.len().saturating_sub(max);
        readings.drain(..cut);
        Ok(readings)
    }

    /// The meter's last reading at or before `ts_ms`.
    fn at_or_before(&self, meter: MeterId, ts_ms: u64) -> Result<Option<Reading>, StoreError> {
        let stored = match self.chunk_at(meter, ts_ms)? {
            Some((key, value)) => {
                decode_chunk(&key, &value)?.into_iter().take_while(|r| r.ts_ms <= ts_ms).last()
            }
            None => None,
        };
        let pending =
            lock(&self.pending).readings.range((meter, 0)..=(meter, ts_ms)).next_back().map(|(_, r)| *r);
        Ok(stored.into_iter().chain(pending).max_by_key(|r| r.ts_ms))
    }

    /// The meter's first reading at or after `ts_ms`.
    fn at_or_after(&self, meter: MeterId, ts_ms: u64) -> Result<Option<Reading>, StoreError> {
        let mut stored = None;
        let start = match self.chunk_at(meter, ts_ms)? {
            Some((key, _)) => key.to_vec(),
            None => chunk_key(meter, ts_ms).to_vec(),
        };
        for entry in self.chunks.range(start..=chunk_key(meter, u64::MAX).to_vec()) {
            let (key, value) = entry?;
            stored = decode_chunk(&key, &value)?.into_iter().find(|r| r.ts_ms >= ts_ms);
            if stored.is_some() {
                break;
            }
        }
        let pending =
            lock(&self.pending).readings.range((meter, ts_ms)..=(meter, u64::MAX)).next().map(|(_, r)| *r);
        Ok(stored.into_iter().chain(pending).min_by_key(|r| r.ts_ms))
    }

    /// The chunk that `ts_ms` falls in: the meter's last one starting at or before it.
    fn chunk_at(&self, meter: MeterId, ts_ms: u64) -> Result<Option<(sled::IVec, sled::IVec)>, StoreError> {
        Ok(self.chunks.range(chunk_key(meter, 0)..=chunk_key(meter, ts_ms)).next_back().transpose()?)
    }

    /// Folds the pending readings into the chunks, then removes their write-ahead records.
    fn fold(&self) -> Result<(), StoreError> {
        let (readings, records_below) = {
            let pending = lock(&self.pending);
            (pending.readings.values().copied().collect::<Vec<_>>(), pending.next_record)
        };
        if readings.is_empty() {
            return Ok(());
        }
        self.write_chunks(&readings)?;
        // The chunks durable before the records go.
        self.db.flush()?;
        self.note_meters_held()?;
        let mut records = sled::Batch::default();
        for entry in self.wal.range(..records_below.to_be_bytes()) {
            records.remove(entry?.0);
        }
        self.wal.apply_batch(records)?;
        let mut pending = lock(&self.pending);
        for reading in &readings {
            pending.readings.remove(&(reading.meter, reading.ts_ms));
        }
        Ok(())
    }

    /// Merges `readings` (by meter, then time) into the chunks and the meter index.
    fn write_chunks(&self, readings: &[Reading]) -> Result<(), StoreError> {
        let mut chunks = sled::Batch::default();
        let mut index = sled::Batch::default();
        for new in readings.chunk_by(|a, b| a.meter == b.meter) {
            let meter = new[0].meter;
            // The chunks the readings may fall in: from the one the earliest falls in to the
            // meter's last (one chunk when readings arrive in order).
            let start = match self.chunk_at(meter, new[0].ts_ms)? {
                Some((key, _)) => key.to_vec(),
                None => chunk_key(meter, 0).to_vec(),
            };
            let existing = self
                .chunks
                .range(start..=chunk_key(meter, u64::MAX).to_vec())
                .collect::<Result<Vec<_>, _>>()?;
            // Each reading goes into the chunk it falls in, one before the first into the first.
            let firsts = existing.iter().map(|(key, _)| u64_at(key, 8)).collect::<Result<Vec<_>, _>>()?;
            let mut groups: Vec<Vec<Reading>> = vec![Vec::new(); existing.len().max(1)];
            for reading in new {
                groups[firsts.partition_point(|first| *first <= reading.ts_ms).saturating_sub(1)]
                    .push(*reading);
            }
            for (at, added) in groups.into_iter().enumerate().filter(|(_, added)| !added.is_empty()) {
                let mut merged = match existing.get(at) {
                    Some((key, value)) => decode_chunk(key, value)?,
                    None => Vec::new(),
                };
                let held = merged.len();
                merged.extend(added);
                // Stable: a reading the chunk already holds stays and its copy is dropped (a
                // fold interrupted by a crash is replayed).
                merged.sort_by_key(|r| r.ts_ms);
                merged.dedup_by_key(|r| r.ts_ms);
                if merged.len() == held {
                    continue;
                }
                if let Some((key, _)) = existing.get(at) {
                    chunks.remove(key.clone());
                }
                for piece in merged.chunks(CHUNK_READINGS) {
                    chunks.insert(&chunk_key(meter, piece[0].ts_ms), chunk::encode(piece));
                }
            }
            if let Some(span) = self.span(meter) {
                index.insert(&meter.to_be_bytes(), &encode_span(&span));
            }
        }
        self.chunks.apply_batch(chunks)?;
        self.meter_index.apply_batch(index)?;
        Ok(())
    }

    /// Writes how many meters the store holds (durably: called after a flush) to a file beside
    /// sled's, for [`Store::check_meters_held`].
    fn note_meters_held(&self) -> Result<(), StoreError> {
        let (path, tmp) = (self.dir.join(HELD_FILE), self.dir.join(format!("{HELD_FILE}.tmp")));
        let held = format!("{}\n", lock(&self.meters).len());
        std::fs::write(&tmp, held)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| StoreError::Io { path, source })
    }

    /// Refuses a store that opens with fewer meters than it held when last written (meters are
    /// never removed): never start empty, or with part of the data, silently.
    fn check_meters_held(&self) -> Result<(), StoreError> {
        let path = self.dir.join(HELD_FILE);
        let held = match std::fs::read_to_string(&path).map(|text| text.trim().parse::<usize>()) {
            Ok(Ok(held)) => held,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            // Only a safety net: a power cut may leave it empty, which must not stop the node.
            unreadable => {
                tracing::warn!(path = %path.display(), ?unreadable, "cannot read how many meters the store held; not checked");
                return Ok(());
            }
        };
        let found = lock(&self.meters).len();
        if found < held {
            return Err(StoreError::Damaged { path: self.dir.clone(), held, found });
        }
        Ok(())
    }

    /// Reads the meter index.
    fn load_index(&self) -> Result<(), StoreError> {
        let mut meters = lock(&self.meters);
        for entry in self.meter_index.iter() {
            let (key, value) = entry?;
            let span = decode_span(&key, &value)?;
            meters.insert(span.meter, span);
        }
        Ok(())
    }

    /// Takes the write-ahead records back into memory (and their readings into the index).
    fn replay_records(&self) -> Result<(), StoreError> {
        let mut pending = lock(&self.pending);
        let mut meters = lock(&self.meters);
        for entry in self.wal.iter() {
            let (key, value) = entry?;
            let record = u64_at(&key, 0)?;
            let readings = chunk::decode_record(&value)
                .map_err(|e| StoreError::Corrupt(format!("write-ahead record {record}: {e}")))?;
            for reading in readings {
                widen_span(&mut meters, &reading);
                pending.readings.insert((reading.meter, reading.ts_ms), reading);
            }
            pending.next_record = record + 1;
        }
        Ok(())
    }

    /// Moves the readings of an earlier version's layout (one key per reading in tree
    /// `readings`) into chunks, then drops that tree.
    fn migrate_old_layout(&self) -> Result<(), StoreError> {
        if !self.db.tree_names().iter().any(|name| name.as_ref() == b"readings") {
            return Ok(());
        }
        let old = self.db.open_tree("readings")?;
        tracing::info!(readings = old.len(), "migrating readings into compressed chunks");
        let mut batch = Vec::with_capacity(MIGRATE_BATCH);
        for entry in old.iter() {
            let reading = decode_old_reading(entry)?;
            widen_span(&mut lock(&self.meters), &reading);
            batch.push(reading);
            if batch.len() == MIGRATE_BATCH {
                self.write_chunks(&batch)?;
                batch.clear();
            }
        }
        self.write_chunks(&batch)?;
        self.db.flush()?;
        self.db.drop_tree("readings")?;
        self.db.flush()?;
        tracing::info!("migration done");
        Ok(())
    }

    /// Hands out the next summary version: strictly greater than every version handed out
    /// before, across restarts. Versions are reserved on disk a block at a time, so only one
    /// call in [`VERSION_BLOCK`] waits for a flush.
    pub fn next_summary_version(&self) -> Result<u64, StoreError> {
        let mut versions = lock(&self.versions);
        let (next, reserved) = *versions;
        if next >= reserved {
            let new_reserved = next + VERSION_BLOCK;
            self.meta.insert(KEY_VERSION_RESERVED, &new_reserved.to_be_bytes())?;
            self.db.flush()?;
            versions.1 = new_reserved;
        }
        versions.0 = next + 1;
        Ok(next)
    }

    /// Makes the next summary version greater than `version` (seen in a copy of this node's
    /// summary from before its store was lost or restored).
    pub fn skip_summary_versions_past(&self, version: u64) -> Result<(), StoreError> {
        let mut versions = lock(&self.versions);
        if versions.0 <= version {
            versions.0 = version.saturating_add(1);
            // Reserved at the next call of next_summary_version.
            versions.1 = versions.1.min(versions.0);
        }
        Ok(())
    }

    /// Saves the latest signed summary of `origin` (the merged view survives restarts).
    pub fn save_view(&self, origin: &str, signed: &[u8]) -> Result<(), StoreError> {
        self.views.insert(origin.as_bytes(), signed)?;
        Ok(())
    }

    /// Forgets `origin`'s summary.
    pub fn forget_view(&self, origin: &str) -> Result<(), StoreError> {
        self.views.remove(origin.as_bytes())?;
        Ok(())
    }

    /// Every saved signed summary.
    pub fn views(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.views.iter().values().map(|v| Ok(v?.to_vec())).collect()
    }

    /// Bytes of keys and values in the chunk and index trees (what the readings take, before
    /// the storage engine's own overhead).
    pub fn live_bytes(&self) -> Result<(u64, u64), StoreError> {
        let mut sizes = (0, 0);
        for entry in self.chunks.iter() {
            let (key, value) = entry?;
            sizes.0 += (key.len() + value.len()) as u64;
        }
        for entry in self.meter_index.iter() {
            let (key, value) = entry?;
            sizes.1 += (key.len() + value.len()) as u64;
        }
        Ok(sizes)
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// Removes the snapshot files sled left unfinished (`snap.*.generating`). sled writes a snapshot
/// of its page table at every start under that name and renames it when complete; killed before
/// the rename, it leaves a file that sorts after the last complete snapshot, and sled 0.34 then
/// reads it first and refuses to open ("corrupt snapshot file found, crc does not match"). The
/// snapshot is only a summary of the log, which sled replays from the previous snapshot (still
/// there: old ones are removed only after the rename), so removing the unfinished one loses
/// nothing.
fn remove_unfinished_snapshots(dir: &Path) -> Result<(), StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::Io { path: dir.to_path_buf(), source: error }),
    };
    for entry in entries {
        let path = entry.map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?.path();
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(path = %path.display(), "removing a snapshot file left unfinished by a crash");
            std::fs::remove_file(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        }
    }
    Ok(())
}

/// Opens sled in `dir`. sled 0.34 panics on some damaged files ("tried to serialize
/// Uninitialized"): that is refused as a damaged store (nothing of the open is used again). A
/// database of this process that was just dropped keeps its file lock until sled's background
/// threads notice, so a lock held is tried again for a while before it is reported.
fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        let open = || {
            sled::Config::new()
                .path(dir)
                .cache_capacity(128 * 1024 * 1024)
                .mode(sled::Mode::HighThroughput)
                .open()
        };
        let opened = std::panic::catch_unwind(open).map_err(|panic| StoreError::Unreadable {
            path: dir.to_path_buf(),
            reason: panic_message(&*panic),
        })?;
        match opened {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            opened => return opened.map_err(|source| StoreError::Open { path: dir.to_path_buf(), source }),
        }
    }
}

/// What a panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => (*message).to_owned(),
        (_, Some(message)) => message.clone(),
        _ => "sled panicked".to_owned(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the index half-updated (every update is one
    // insert), so a poisoned lock is still safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Widens the meter's span in `meters` to take in `reading`.
fn widen_span(meters: &mut HashMap<MeterId, MeterSpan>, reading: &Reading) {
    let point = domain::point(reading);
    let new = MeterSpan { meter: reading.meter, first: point, last: point };
    let span = meters.get(&reading.meter).map_or(new, |span| domain::join_spans(*span, new));
    meters.insert(reading.meter, span);
}

fn chunk_key(meter: MeterId, ts_ms: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&meter.to_be_bytes());
    key[8..].copy_from_slice(&ts_ms.to_be_bytes());
    key
}

fn decode_chunk(key: &[u8], value: &[u8]) -> Result<Vec<Reading>, StoreError> {
    let (meter, first_ts) = (u64_at(key, 0)?, u64_at(key, 8)?);
    chunk::decode(meter, value)
        .map_err(|e| StoreError::Corrupt(format!("the chunk of meter {meter} from {first_ts} ms: {e}")))
}

/// A meter index entry: first ts, first litres, last ts, last litres (u64 BE each).
fn encode_span(span: &MeterSpan) -> [u8; 32] {
    let mut value = [0; 32];
    for (at, number) in
        [span.first.ts_ms, span.first.litres, span.last.ts_ms, span.last.litres].into_iter().enumerate()
    {
        value[at * 8..at * 8 + 8].copy_from_slice(&number.to_be_bytes());
    }
    value
}

fn decode_span(key: &[u8], value: &[u8]) -> Result<MeterSpan, StoreError> {
    if value.len() != 32 {
        return Err(StoreError::Corrupt(format!(
            "a meter index entry of {} bytes instead of 32",
            value.len()
        )));
    }
    Ok(MeterSpan {
        meter: u64_at(key, 0)?,
        first: Point { ts_ms: u64_at(value, 0)?, litres: u64_at(value, 8)? },
        last: Point { ts_ms: u64_at(value, 16)?, litres: u64_at(value, 24)? },
    })
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("expected 8 bytes at {at}, found {}", bytes.len())))
}

/// A reading of the earlier layout: key `meter ‖ ts_ms`, value litres (u64 BE), alarm bits
/// (u8), then flow (u32 BE) when the meter reported one.
fn decode_old_reading(entry: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Reading, StoreError> {
    let (key, value) = entry?;
    let meter = u64_at(&key, 0)?;
    let alarms = value
        .get(8)
        .and_then(|bits| Alarms::from_bits(*bits))
        .ok_or_else(|| StoreError::Corrupt(format!("reading of meter {meter} has no valid alarm bits")))?;
    let flow_lph = value.get(9..13).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    Ok(Reading { meter, ts_ms: u64_at(&key, 8)?, litres: u64_at(&value, 0)?, flow_lph, alarms })
}

#[cfg(test)]
mod tests {
    use super::chunk::tests::Rng;
    use super::*;

    const T0: u64 = 1_795_000_000_000;
    const NOW: u64 = T0 + 86_400_000;

    fn reading(meter: MeterId, ts_ms: u64, litres: u64) -> Reading {
        Reading { meter, ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        (dir, store)
    }

    /// Random batches (mostly in order, with back-fills, duplicates and conflicts) against a
    /// plain ordered map of what was accepted, with folds into chunks and reopenings (replays
    /// of the write-ahead part) in between: every answer the store gives matches the map.
    #[test]
    fn chunks_and_the_write_ahead_part_answer_like_a_plain_map() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(dir.path()).expect("open");
        let mut model: BTreeMap<(MeterId, u64), Reading> = BTreeMap::new();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut next_ts: HashMap<MeterId, u64> = HashMap::new();
        for round in 0..40 {
            let mut batch = Vec::new();
            for _ in 0..60 {
                let meter = 1 + rng.below(4);
                let sent = next_ts.get(&meter).map_or(1, |ts| ts - T0 + 1);
                let ts = match rng.below(8) {
                    // A back-fill anywhere in what was sent so far.
                    0 | 1 => T0 + rng.below(sent),
                    // The same time as a reading sent before: a duplicate or a conflict.
                    2 => T0 + rng.below(sent) / 1000 * 1000,
                    _ => {
                        let ts = next_ts.entry(meter).or_insert(T0);
                        *ts += 1000;
                        *ts
                    }
                };
                // Registers roughly follow time; some readings break the rules and are refused.
                let litres = (ts - T0) / 100 + rng.below(12);
                batch.push(Reading {
                    flow_lph: (rng.below(2) == 0).then_some(7),
                    ..reading(meter, ts, litres)
                });
            }
            let outcomes = store.append(&batch, NOW).expect("append").outcomes;
            for (reading, outcome) in batch.iter().zip(outcomes) {
                let held = model.get(&(reading.meter, reading.ts_ms)).copied();
                match outcome {
                    Outcome::Accepted => {
                        assert!(held.is_none(), "round {round}: {reading:?} accepted twice");
                        model.insert((reading.meter, reading.ts_ms), *reading);
                    }
                    Outcome::Duplicate => assert_eq!(held, Some(*reading), "round {round}"),
                    Outcome::Rejected(_) => {}
                }
            }
            match round % 5 {
                1 => store.close().expect("fold"),
                3 => {
                    drop(store);
                    store = Store::open(dir.path()).expect("reopen");
                }
                _ => {}
            }
            check_against(&store, &model, &mut rng);
        }
        assert!(store.chunks.len() > 8, "several chunks per meter: {}", store.chunks.len());
        let backfilled = model.iter().filter(|((_, ts), _)| !(ts - T0).is_multiple_of(1000)).count();
        assert!(backfilled > 100, "{backfilled} back-fills accepted");
    }

    fn check_against(store: &Store, model: &BTreeMap<(MeterId, u64), Reading>, rng: &mut Rng) {
        for meter in 1..=4 {
            let held: Vec<Reading> = model.range((meter, 0)..=(meter, u64::MAX)).map(|(_, r)| *r).collect();
            assert!(
                held.windows(2).all(|pair| pair[0].litres <= pair[1].litres),
                "accepted readings keep the register rules"
            );
            let history = store.meter_history(meter, None, None, usize::MAX).expect("history");
            assert_eq!(history.map(|h| h.readings).unwrap_or_default(), held, "meter {meter}");
            if let (Some(first), Some(last)) = (held.first(), held.last()) {
                let span = store.span(meter).expect("span");
                assert_eq!((span.first, span.last), (domain::point(first), domain::point(last)));
            }
            let (from, to) = (T0 + rng.below(200_000), T0 + rng.below(200_000));
            let in_window: Vec<&Reading> = held.iter().filter(|r| r.ts_ms >= from && r.ts_ms < to).collect();
            let base =
                held.iter().rev().find(|r| r.ts_ms <= from).or_else(|| held.iter().find(|r| r.ts_ms >= from));
            let expected = match (base, in_window.last()) {
                (Some(base), Some(last)) if to > from => last.litres.saturating_sub(base.litres),
                _ => 0,
            };
            assert_eq!(
                store.window_consumption(meter, from, to).expect("window"),
                expected,
                "meter {meter} [{from}, {to})"
            );
            let history = store.meter_history(meter, Some(from), Some(to), 3).expect("history");
            if let Some(history) = history {
                let window: Vec<Reading> = in_window.iter().map(|r| **r).collect();
                let cut = window.len().saturating_sub(3);
                assert_eq!(history.readings, window[cut..], "meter {meter} [{from}, {to}) at most 3");
                assert_eq!(history.truncated, cut > 0);
                let before = held.iter().rev().find(|r| r.ts_ms <= from).copied();
                let want = if cut > 0 { before.or(window.first().copied()) } else { before };
                assert_eq!(history.baseline, want, "meter {meter} [{from}, {to}) baseline");
            }
            let recent = store.recent_readings(meter, from, 5).expect("recent");
            let mut want: Vec<Reading> = held.iter().rev().take_while(|r| r.ts_ms >= from).copied().collect();
            want.extend(held.iter().rev().find(|r| r.ts_ms < from));
            want.truncate(5);
            want.reverse();
            assert_eq!(recent, want, "meter {meter} from {from}");
        }
    }

    #[test]
    fn a_store_of_the_old_layout_is_migrated_into_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let readings: Vec<Reading> = (0..300)
            .map(|i| Reading {
                flow_lph: (i % 3 == 0).then_some(i as u32),
                ..reading(5 + i % 2, T0 + i * 1000, 10 * i)
            })
            .collect();
        {
            let db = sled::open(dir.path()).expect("sled");
            let old = db.open_tree("readings").expect("tree");
            for r in &readings {
                let mut value = r.litres.to_be_bytes().to_vec();
                value.push(r.alarms.bits());
                if let Some(flow) = r.flow_lph {
                    value.extend_from_slice(&flow.to_be_bytes());
                }
                old.insert(chunk_key(r.meter, r.ts_ms), value).expect("insert");
            }
            db.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("open and migrate");
        assert!(
            !store.db.tree_names().iter().any(|name| name.as_ref() == b"readings"),
            "the old tree is gone"
        );
        for meter in [5, 6] {
            let want: Vec<Reading> = readings.iter().filter(|r| r.meter == meter).copied().collect();
            let history = store.meter_history(meter, None, None, usize::MAX).expect("read").expect("held");
            assert_eq!(history.readings, want);
            assert_eq!(store.span(meter).map(|s| s.last), want.last().map(domain::point));
        }
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.spans().len(), 2, "the index was written with the chunks");
    }

    #[test]
    fn a_damaged_database_file_is_refused_by_name_never_opened_empty_or_in_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            let readings: Vec<Reading> = (0..2_000).map(|i| reading(i % 500, T0 + i * 10, i)).collect();
            store.append(&readings, NOW).expect("append");
            store.close().expect("close");
        }
        // The folder as a backup would hold it.
        let backup: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.path().is_file())
            .map(|entry| (entry.path(), std::fs::read(entry.path()).expect("read")))
            .collect();
        let restore = || {
            for entry in std::fs::read_dir(dir.path()).expect("dir").filter_map(Result::ok) {
                if entry.path().is_file() {
                    std::fs::remove_file(entry.path()).expect("remove");
                }
            }
            for (path, bytes) in &backup {
                std::fs::write(path, bytes).expect("write");
            }
        };
        let file = dir.path().join("db");
        let intact = std::fs::read(&file).expect("read");
        let histories = |store: &Store| -> Result<Vec<Vec<Reading>>, StoreError> {
            (0..500)
                .map(|meter| {
                    Ok(store
                        .meter_history(meter, None, None, usize::MAX)?
                        .map(|h| h.readings)
                        .unwrap_or_default())
                })
                .collect()
        };
        let whole = histories(&Store::open(dir.path()).expect("open")).expect("read");
        let mut refused = 0;
        for cut in [0, intact.len() / 4, intact.len() / 2, intact.len() - 1024] {
            restore();
            std::fs::write(&file, &intact[..cut]).expect("cut");
            // Refused at open, or every meter read back whole, or a read refused: never less data
            // answered as if it were all.
            match Store::open(dir.path()) {
                Err(error) => {
                    refused += 1;
                    let message = error.to_string();
                    assert!(message.contains(&dir.path().display().to_string()), "cut at {cut}: {message}");
                    assert!(message.contains("restore this folder from a backup"), "cut at {cut}: {message}");
                }
                Ok(store) => {
                    if let Ok(read) = histories(&store) {
                        assert!(read == whole, "cut at {cut} of {}: data lost silently", intact.len());
                    }
                }
            }
        }
        assert!(refused >= 1, "a database file cut to nothing is refused");
        restore();
        assert_eq!(Store::open(dir.path()).expect("the restored store opens").spans().len(), 500);
        // A power cut may leave the note empty: the store still opens.
        std::fs::write(dir.path().join(HELD_FILE), b"").expect("empty the note");
        assert_eq!(Store::open(dir.path()).expect("opens without its note").spans().len(), 500);
    }

    #[test]
    fn a_snapshot_left_unfinished_by_a_crash_does_not_stop_the_store_opening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store.append(&[reading(7, T0, 100), reading(7, T0 + 10, 150)], NOW).expect("append");
            store.flush().expect("flush");
        }
        // What a kill during sled's start-up snapshot leaves: a partial file, named to sort last.
        let unfinished = dir.path().join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&unfinished, b"half a snapshot, no checksum").expect("write");
        let store = Store::open(dir.path()).expect("opens despite the unfinished snapshot");
        assert!(!unfinished.exists());
        let span = store.span(7).expect("the meter survived");
        assert_eq!((span.first.litres, span.last.litres), (100, 150));
    }

    #[test]
    fn duplicates_are_counted_once_and_conflicts_refused() {
        let (_dir, store) = open();
        let batch = [reading(1, T0, 100), reading(1, T0 + 10, 110)];
        assert_eq!(store.append(&batch, NOW).expect("append").outcomes, vec![Outcome::Accepted; 2]);
        let again = [reading(1, T0, 100), reading(1, T0 + 10, 111), reading(1, T0 + 10, 110)];
        let outcomes = store.append(&again, NOW).expect("append").outcomes;
        assert_eq!(outcomes[0], Outcome::Duplicate);
        assert_eq!(outcomes[1], Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: 110 }));
        assert_eq!(outcomes[2], Outcome::Duplicate);
    }

    #[test]
    fn the_register_never_decreases_in_either_direction() {
        let (_dir, store) = open();
        store.append(&[reading(1, T0, 100), reading(1, T0 + 100, 200)], NOW).expect("append");
        let outcomes = store
            .append(
                &[
                    reading(1, T0 + 200, 150), // after the last, lower
                    reading(1, T0 - 100, 120), // before the first, higher
                    reading(1, T0 + 50, 90),   // in between, below the earlier
                    reading(1, T0 + 50, 210),  // in between, above the later
                    reading(1, T0 + 50, 150),  // in between, fine (back-filled)
                    reading(1, T0 - 100, 100), // before the first, equal: fine
                ],
                NOW,
            )
            .expect("append")
            .outcomes;
        assert!(matches!(
            outcomes[0],
            Outcome::Rejected(Rejection::RegisterDecreased { earlier_litres: 200, .. })
        ));
        assert!(matches!(
            outcomes[1],
            Outcome::Rejected(Rejection::RegisterAboveLater { later_litres: 100, .. })
        ));
        assert!(matches!(
            outcomes[2],
            Outcome::Rejected(Rejection::RegisterDecreased { earlier_litres: 100, .. })
        ));
        assert!(matches!(
            outcomes[3],
            Outcome::Rejected(Rejection::RegisterAboveLater { later_litres: 200, .. })
        ));
        assert_eq!(outcomes[4..], [Outcome::Accepted, Outcome::Accepted]);
        let span = store.span(1).expect("held");
        assert_eq!((span.first.ts_ms, span.last.litres), (T0 - 100, 200));
    }

    #[test]
    fn history_windows_and_baseline() {
        let (_dir, store) = open();
        let batch: Vec<_> = (0..10).map(|i| reading(7, T0 + i * 1000, 100 + i * i)).collect();
        store.append(&batch, NOW).expect("append");
        let history =
            store.meter_history(7, Some(T0 + 2500), Some(T0 + 6000), 100).expect("read").expect("held");
        assert_eq!(history.baseline.map(|r| r.litres), Some(104));
        assert_eq!(history.readings.iter().map(|r| r.litres).collect::<Vec<_>>(), vec![109, 116, 125]);
        assert_eq!(domain::history_consumption(7, &history), 21);
        let cut = store.meter_history(7, None, None, 3).expect("read").expect("held");
        assert!(cut.truncated);
        assert_eq!(cut.readings.len(), 3);
        assert_eq!(domain::history_consumption(7, &cut), 81, "consumption survives truncation");
        assert!(store.meter_history(8, None, None, 3).expect("read").is_none());
    }

    #[test]
    fn top_since_ranks_by_window_consumption() {
        let (_dir, store) = open();
        store
            .append(
                &[
                    reading(1, T0, 0),
                    reading(1, T0 + 10, 500),
                    reading(1, T0 + 20, 510),
                    reading(2, T0, 0),
                    reading(2, T0 + 20, 100),
                    reading(3, T0, 0),
                    reading(3, T0 + 20, 100),
                ],
                NOW,
            )
            .expect("append");
        let top = store.top_since(2, T0 + 10).expect("top");
        let got: Vec<_> = top.iter().map(|s| (s.meter, domain::span_consumption(s))).collect();
        assert_eq!(got, vec![(2, 100), (3, 100)]);
        let all = store.top_since(5, 0).expect("top");
        assert_eq!(all.iter().map(|s| s.meter).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn index_versions_and_views_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first_version = {
            let store = Store::open(dir.path()).expect("open");
            store
                .append(&[reading(u64::MAX, T0, 5), reading(u64::MAX, T0 + 1, 9), reading(3, T0, 1)], NOW)
                .expect("append");
            store.save_view("peer", b"signed").expect("save");
            store.flush().expect("flush");
            store.next_summary_version().expect("version")
        };
        let store = Store::open(dir.path()).expect("reopen");
        assert!(store.next_summary_version().expect("version") > first_version);
        store.skip_summary_versions_past(5_000).expect("skip");
        assert_eq!(store.next_summary_version().expect("version"), 5_001);
        assert_eq!(store.spans().len(), 2);
        assert_eq!(store.span(u64::MAX).map(|s| s.last.litres), Some(9));
        assert_eq!(store.views().expect("views"), vec![b"signed".to_vec()]);
    }
}
