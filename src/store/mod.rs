//! The node's durable state in sled, behind one type: readings and their index, the summary
//! version, the persisted merged view and the admin commands. Nothing else in hydromesh touches
//! sled, and the store holds no rule state: that is the ingest writer's.
//!
//! Readings are keyed by `meter (u64 BE) ‖ ts_ms (u64 BE)`, so one meter's readings are one
//! contiguous, time-ordered key range. An in-memory index keeps each meter's first and last
//! reading, rebuilt at open with two seeks per meter, so the common case of ingest (a reading
//! newer than the meter's last) validates without touching the disk. The index is locked per
//! reading, never for a whole batch, so readers wait microseconds at most.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hydromesh_proto::ingest::{Outcome, Rejection};
use hydromesh_proto::query::MeterHistory;
use std::ops::Bound;

use hydromesh_proto::summary::{MeterSpan, Point};
use hydromesh_proto::{Alarms, MeterId, Reading};

use crate::domain;

/// How many summary versions are reserved on disk at a time (see [`Store::next_summary_version`]).
const VERSION_BLOCK: u64 = 1024;
const KEY_VERSION_RESERVED: &[u8] = b"summary_version_reserved";

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
}

/// The sled-backed store of one node.
pub struct Store {
    db: sled::Db,
    readings: sled::Tree,
    meta: sled::Tree,
    views: sled::Tree,
    /// Each meter's first and last reading over all data held. Written by the one writer.
    meters: Mutex<HashMap<MeterId, MeterSpan>>,
    control: sled::Tree,
    /// Next summary version to hand out, and the first one not yet reserved on disk.
    versions: Mutex<(u64, u64)>,
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
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        remove_unfinished_snapshots(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(128 * 1024 * 1024)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|source| StoreError::Open { path: dir.to_path_buf(), source })?;
        let readings = db.open_tree("readings")?;
        let meta = db.open_tree("meta")?;
        let views = db.open_tree("views")?;
        let control = db.open_tree("control")?;
        let meters = Mutex::new(index_meters(&readings)?);
        let reserved = match meta.get(KEY_VERSION_RESERVED)? {
            Some(bytes) => u64_at(&bytes, 0)?,
            None => 1,
        };
        Ok(Store { db, readings, meta, views, meters, control, versions: Mutex::new((reserved, reserved)) })
    }

    /// Validates and writes readings, returning one outcome per reading in order and the new
    /// spans of the meters that gained one. Written readings are durable only after
    /// [`Store::flush`]. Only one thread may append (the ingest writer).
    pub fn append(&self, readings: &[Reading], now_ms: u64) -> Result<Appended, StoreError> {
        let mut appended = Appended { outcomes: Vec::with_capacity(readings.len()), spans: HashMap::new() };
        for reading in readings {
            let outcome = match domain::check_fields(reading, now_ms) {
                Err(rejection) => Outcome::Rejected(rejection),
                Ok(()) => self.place(reading)?,
            };
            if outcome == Outcome::Accepted {
                if let Some(span) = self.span(reading.meter) {
                    appended.spans.insert(reading.meter, span);
                }
            }
            appended.outcomes.push(outcome);
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
        let mut recent = Vec::new();
        for entry in self.readings.range(reading_key(meter, 0)..=reading_key(meter, u64::MAX)).rev() {
            let reading = decode_reading(meter, entry)?;
            let before_window = reading.ts_ms < from_ms;
            recent.push(reading);
            if before_window || recent.len() == max {
                break;
            }
        }
        recent.reverse();
        Ok(recent)
    }

    /// Consumption over `[from_ms, to_ms)` by the one definition.
    pub fn window_consumption(&self, meter: MeterId, from_ms: u64, to_ms: u64) -> Result<u64, StoreError> {
        if to_ms <= from_ms {
            return Ok(0);
        }
        let last = point_of(
            self.readings.range(reading_key(meter, from_ms)..reading_key(meter, to_ms)).next_back(),
        )?;
        let base = self.window_base(meter, from_ms)?;
        Ok(match (base, last) {
            (Some(base), Some(last)) => last.litres.saturating_sub(base.litres),
            _ => 0,
        })
    }

    /// The reading a window starting at `from_ms` counts from: the last at or before it, else
    /// the first after it.
    pub fn window_base(&self, meter: MeterId, from_ms: u64) -> Result<Option<Point>, StoreError> {
        let mut before = self.readings.range(reading_key(meter, 0)..=reading_key(meter, from_ms));
        match point_of(before.next_back())? {
            Some(point) => Ok(Some(point)),
            None => point_of(
                self.readings.range(reading_key(meter, from_ms)..=reading_key(meter, u64::MAX)).next(),
            ),
        }
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
        let key = reading_key(reading.meter, reading.ts_ms);
        let span = self.span(reading.meter);
        let neighbours = match span {
            None => (None, None),
            Some(span) if reading.ts_ms > span.last.ts_ms => (Some(span.last), None),
            Some(span) if reading.ts_ms < span.first.ts_ms => (None, Some(span.first)),
            Some(_) => {
                if let Some(stored) = self.readings.get(key)? {
                    return Ok(if stored.as_ref() == encode_value(reading).as_slice() {
                        Outcome::Duplicate
                    } else {
                        Outcome::Rejected(Rejection::ConflictingDuplicate {
                            stored_litres: u64_at(&stored, 0)?,
                        })
                    });
                }
                let before = self.readings.range(reading_key(reading.meter, 0)..key).next_back();
                let after = self.readings.range(key..=reading_key(reading.meter, u64::MAX)).next();
                (point_of(before)?, point_of(after)?)
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
        self.readings.insert(key, encode_value(reading).as_slice())?;
        let point = domain::point(reading);
        let new = MeterSpan { meter: reading.meter, first: point, last: point };
        lock(&self.meters).insert(reading.meter, span.map_or(new, |span| domain::join_spans(span, new)));
        Ok(Outcome::Accepted)
    }

    /// Makes everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
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
        let from = reading_key(meter, from_ms.unwrap_or(0));
        let window = (
            Bound::Included(from),
            match to_ms {
                Some(to) => Bound::Excluded(reading_key(meter, to)),
                None => Bound::Included(reading_key(meter, u64::MAX)),
            },
        );
        let before = match from_ms {
            Some(from_ms) => {
                self.readings.range(reading_key(meter, 0)..=reading_key(meter, from_ms)).next_back()
            }
            None => None,
        };
        let mut baseline = before.map(|entry| decode_reading(meter, entry)).transpose()?;
        let mut readings = Vec::new();
        let mut truncated = false;
        if to_ms.is_none_or(|to| to > from_ms.unwrap_or(0)) {
            for entry in self.readings.range(window).rev() {
                if readings.len() == limit {
                    truncated = true;
                    break;
                }
                readings.push(decode_reading(meter, entry)?);
            }
        }
        readings.reverse();
        if truncated && baseline.is_none() {
            // The window's first reading is cut off, but consumption still counts from it.
            let first = self.readings.range(window).next();
            baseline = first.map(|entry| decode_reading(meter, entry)).transpose()?;
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
            let meter = span.meter;
            let mut at_or_before = self.readings.range(reading_key(meter, 0)..=reading_key(meter, from_ms));
            let base = match point_of(at_or_before.next_back())? {
                Some(point) => Some(point),
                None => point_of(
                    self.readings.range(reading_key(meter, from_ms)..=reading_key(meter, u64::MAX)).next(),
                )?,
            };
            if let Some(first) = base {
                spans.push(MeterSpan { meter, first, last: span.last });
            }
        }
        Ok(domain::rank(spans, n))
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the index half-updated (every update is one
    // insert), so a poisoned lock is still safe to use.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn index_meters(readings: &sled::Tree) -> Result<HashMap<MeterId, MeterSpan>, StoreError> {
    let mut meters = HashMap::new();
    let mut next = readings.first()?;
    while let Some((key, value)) = next {
        let meter = u64_at(&key, 0)?;
        let first = decode_point(&key, &value)?;
        let last = point_of(readings.range(..=reading_key(meter, u64::MAX)).next_back())?
            .ok_or_else(|| StoreError::Corrupt(format!("meter {meter} has no last reading")))?;
        meters.insert(meter, MeterSpan { meter, first, last });
        next = match meter.checked_add(1) {
            Some(following) => readings.range(reading_key(following, 0)..).next().transpose()?,
            None => None,
        };
    }
    Ok(meters)
}

fn reading_key(meter: MeterId, ts_ms: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&meter.to_be_bytes());
    key[8..].copy_from_slice(&ts_ms.to_be_bytes());
    key
}

/// Value: litres (u64 BE), alarm bits (u8), then flow (u32 BE) when the meter reported one.
fn encode_value(reading: &Reading) -> Vec<u8> {
    let mut value = Vec::with_capacity(13);
    value.extend_from_slice(&reading.litres.to_be_bytes());
    value.push(reading.alarms.bits());
    if let Some(flow) = reading.flow_lph {
        value.extend_from_slice(&flow.to_be_bytes());
    }
    value
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, StoreError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("expected 8 bytes at {at}, found {}", bytes.len())))
}

type Entry = sled::Result<(sled::IVec, sled::IVec)>;

fn decode_point(key: &[u8], value: &[u8]) -> Result<Point, StoreError> {
    Ok(Point { ts_ms: u64_at(key, 8)?, litres: u64_at(value, 0)? })
}

/// The point of an optional entry from a range scan.
fn point_of(entry: Option<Entry>) -> Result<Option<Point>, StoreError> {
    entry.transpose()?.map(|(key, value)| decode_point(&key, &value)).transpose()
}

fn decode_reading(meter: MeterId, entry: Entry) -> Result<Reading, StoreError> {
    let (key, value) = entry?;
    let alarms = value
        .get(8)
        .and_then(|bits| Alarms::from_bits(*bits))
        .ok_or_else(|| StoreError::Corrupt(format!("reading of meter {meter} has no valid alarm bits")))?;
    let flow_lph = value.get(9..13).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    Ok(Reading { meter, ts_ms: u64_at(&key, 8)?, litres: u64_at(&value, 0)?, flow_lph, alarms })
}

#[cfg(test)]
mod tests {
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
