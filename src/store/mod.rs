//! The node's durable state, behind one type: readings and their index, the summary version,
//! the persisted merged view and the admin commands. Nothing else in hydromesh touches its
//! files, and the store holds no rule state: that is the ingest writer's.
//!
//! Readings are kept the way a time-series database keeps them:
//! - a **write-ahead log** (file `wal.log`, [`wal`]): every accepted batch as one record,
//!   appended before its acknowledgement and made durable by one `fdatasync` per group commit,
//!   so a batch writes O(batch) bytes. Its readings are also held in memory (`pending`) and
//!   folded into chunks once [`FOLD_AT`] of them have gathered (and at close);
//! - **chunks** ([`chunk`]): each meter's readings in runs of up to [`CHUNK_READINGS`],
//!   compressed column by column (a few bytes a reading), in append-only **segment files**
//!   (folder `chunks`, [`segments`]): each fold writes the chunks it changed into one new
//!   segment; segments that became mostly garbage are compacted;
//! - a **directory** (sled tree `directory`): where each full chunk is, keyed by
//!   `meter ‖ first ts`, so that one meter's chunks are one contiguous, time-ordered key range,
//!   how many bytes of each segment are still live, and the record of the last fold (its number
//!   and the segment it wrote);
//! - a **meter index** (file `meters.idx`, [`index_file`]): each meter's first and last
//!   reading, the last fold that changed its readings, and its **open chunk** (its last one,
//!   which in-order readings go to: a fold rewrites it without touching sled, which learns of
//!   a chunk once it is full), written whole by each fold and read at open. In memory, it lets
//!   the common case of ingest (a reading newer than the meter's last) validate without
//!   touching the disk; it is locked per reading, never for a whole batch, so readers wait
//!   microseconds at most.
//!
//! A fold writes the segment, then the directory (sled, made durable, with the fold's record in
//! the same batch), then the index, and only then empties the log; merging a reading into a
//! chunk that already holds it changes nothing. A crash between sled and the index leaves the
//! index one fold behind, rolled forward at the next open from that fold's segment (its chunks
//! the directory does not list are the open ones). A crash at any point of a fold loses nothing
//! and counts nothing twice, and leaves at worst a segment nothing points to, removed at the
//! next open.
//!
//! sled keeps the directory, the merged view, the admin commands and the summary versions. A
//! store written by an earlier version (one sled key per reading; or chunks, write-ahead
//! records and the meter index in sled) is migrated when it is opened; one with every chunk in
//! the directory opens as it is.

mod chunk;
mod files;
mod index_file;

pub use chunk::{crc32, crc32_continue};
pub use files::{write_atomically, write_atomically_with};
mod segments;
mod wal;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hydromesh_proto::ingest::{Outcome, Rejection};
use hydromesh_proto::query::MeterHistory;
use hydromesh_proto::summary::{MeterSpan, Point};
use hydromesh_proto::{Alarms, MeterId, Reading};

use crate::domain;
use crate::sync::lock;
use segments::{Location, Pinned, Segments};
use wal::Wal;

/// How many summary versions are reserved on disk at a time (see [`Store::next_summary_version`]).
const VERSION_BLOCK: u64 = 1024;
const KEY_VERSION_RESERVED: &[u8] = b"summary_version_reserved";
/// Set once a store is known to name meters by printed id (see [`Store::check_meter_ids`]).
const KEY_PRINTED_IDS: &[u8] = b"printed_meter_ids";
/// Readings a chunk is filled to before a new one starts.
pub const CHUNK_READINGS: usize = 128;
/// Readings held in the write-ahead part before they are folded into chunks: enough that a
/// fold adds many readings to each chunk it rewrites, few enough to stay a few MB of memory.
pub const FOLD_AT: usize = 200_000;
/// The meter index file, in the store's folder.
const INDEX_FILE: &str = "meters.idx";
/// sled's record of the last fold (see [`index_file`]): in tree `directory` (key `f`, written
/// in the fold's own batch), and in tree `meta` in stores of earlier versions.
const FOLD_KEY: &[u8] = b"f";
const KEY_FOLD: &[u8] = b"fold";
/// How long a database lock held by this process's last handle is waited for (see `open_sled`).
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Readings migrated from an earlier layout per write.
const MIGRATE_BATCH: usize = 100_000;
/// How soon a fold or an opening of the engine that failed is tried again.
const RETRY: Duration = Duration::from_secs(1);
/// A compaction stops taking victims once its new segment holds this many bytes (segment
/// offsets are 32-bit, and the segment is built in memory).
const COMPACTION_BYTES: u64 = 256 * 1024 * 1024;
/// The folder of the segment files, in the store's folder.
const CHUNK_DIR: &str = "chunks";
/// The write-ahead log, in the store's folder.
const WAL_FILE: &str = "wal.log";
/// First byte of a chunk's directory key.
const CHUNK_PREFIX: u8 = b'c';
/// First byte of a segment's directory key.
const SEGMENT_PREFIX: u8 = b's';

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
    /// Another process (another node) holds the store's lock.
    #[error(
        "another hydromesh node is using {path} (its database is locked): stop that node, or give \
         this one a data dir of its own (--data-dir)"
    )]
    InUse {
        /// The store's folder.
        path: PathBuf,
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
    /// A store of an earlier version holds a numeric meter id this version cannot name.
    #[error(
        "the store in {path} was written by an earlier version, which took any number as a meter \
         id, and holds meter {code}: this version names a meter by the id printed on it, at most \
         12 characters (numbers of up to 12 digits keep their meaning). Nothing was changed: keep \
         this store with the earlier version"
    )]
    UnnamedMeter {
        /// The store's folder.
        path: PathBuf,
        /// The meter's number.
        code: u64,
    },
    /// A file of the store is damaged, or the files disagree (sled, finding its log damaged or
    /// cut short, keeps what precedes the damage and drops the rest).
    #[error(
        "cannot read the store in {path} ({reason}): it is damaged. Nothing was changed: \
         restore this folder from a backup, or move it away to start with an empty store"
    )]
    Unreadable {
        /// The store's folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The store of one node: sled for the directory, the meter index and the node's other state;
/// segment files for the chunks; a log file for the write-ahead part.
pub struct Store {
    /// The store's folder.
    dir: PathBuf,
    /// sled and the segment files; `None` while they are opened again after a failure.
    engine: RwLock<Option<Arc<Engine>>>,
    wal: Mutex<Wal>,
    /// Each meter's first and last reading over all data held. Written by the one writer.
    meters: Mutex<Spans>,
    /// The readings of the write-ahead log, not folded into chunks yet. Written by the one
    /// writer.
    pending: Mutex<BTreeMap<(MeterId, u64), Reading>>,
    /// Held shared by a read of a meter's chunks, exclusively while a fold or a compaction
    /// moves chunks between the directory and the meter index: a read sees each meter's chunks
    /// all before or all after.
    switch: RwLock<()>,
    /// What failed, and when it is tried again.
    trouble: Mutex<Trouble>,
    /// Next summary version to hand out, and the first one not yet reserved on disk.
    versions: Mutex<(u64, u64)>,
    /// The number of the last fold.
    folds: AtomicU64,
    /// How many times the memory state was read from disk (see [`Store::loads`]).
    loads: AtomicU64,
}

/// sled and the segment files. sled, once a write of its own failed (a full disk), refuses
/// every later write until it is opened again: the store then drops this whole and opens it
/// again, which replays sled's log as after a crash.
struct Engine {
    db: sled::Db,
    /// Where each chunk is (`c` ‖ meter ‖ first ts → location) and how many bytes of each
    /// segment are live (`s` ‖ segment → live ‖ size): one tree, so that one batch moves both.
    directory: sled::Tree,
    meta: sled::Tree,
    views: sled::Tree,
    control: sled::Tree,
    /// What meters' handoffs between fog nodes left here (meter code BE → the writer's record).
    tenures: sled::Tree,
    segments: Segments,
}

impl Engine {
    /// Opens sled and the segment files; also returns the segment files nothing points to.
    fn open(dir: &Path) -> Result<(Engine, Vec<PathBuf>), StoreError> {
        remove_unfinished_snapshots(dir)?;
        let db = open_sled(dir)?;
        let directory = db.open_tree("directory")?;
        let live = segment_stats(&directory)?.into_iter().map(|(segment, _)| segment).collect::<Vec<_>>();
        let (segments, strays) = Segments::open(&dir.join(CHUNK_DIR), &live)?;
        let engine = Engine {
            directory,
            meta: db.open_tree("meta")?,
            views: db.open_tree("views")?,
            control: db.open_tree("control")?,
            tenures: db.open_tree("tenures")?,
            segments,
            db,
        };
        Ok((engine, strays))
    }

    /// The directory's chunk of `meter` that `ts_ms` falls in (its last one starting at or
    /// before it), as (first ts, location).
    fn chunk_at(&self, meter: MeterId, ts_ms: u64) -> Result<Option<(u64, Location)>, StoreError> {
        match self.directory.range(chunk_key(meter, 0)..=chunk_key(meter, ts_ms)).next_back() {
            Some(entry) => decode_chunk_entry(&entry?).map(Some),
            None => Ok(None),
        }
    }

    /// Where the directory lists the chunk of `meter` starting at `first_ts`, if it does.
    fn listed_at(&self, meter: MeterId, first_ts: u64) -> Result<Option<Location>, StoreError> {
        self.directory.get(chunk_key(meter, first_ts))?.map(|value| Location::decode(&value)).transpose()
    }

    /// The last fold sled saw, and the segment it wrote (if any).
    fn fold_record(&self) -> Result<(u64, Option<u32>), StoreError> {
        if let Some(value) = self.directory.get(FOLD_KEY)? {
            let segment = u32::from_be_bytes(
                value
                    .get(8..12)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("a fold record of {} bytes", value.len())))?,
            );
            return Ok((u64_at(&value, 0)?, (segment != u32::MAX).then_some(segment)));
        }
        let noted = self.meta.get(KEY_FOLD)?.map(|bytes| u64_at(&bytes, 0)).transpose()?;
        Ok((noted.unwrap_or(0), None))
    }
}

/// The fold record of fold `fold`, which wrote `segment`: written in the fold's own batch.
fn encode_fold(fold: u64, segment: Option<u32>) -> [u8; 12] {
    let mut value = [0; 12];
    value[..8].copy_from_slice(&fold.to_be_bytes());
    value[8..].copy_from_slice(&segment.unwrap_or(u32::MAX).to_be_bytes());
    value
}

/// A chunk's directory entry as (first ts, location).
fn decode_chunk_entry((key, value): &(sled::IVec, sled::IVec)) -> Result<(u64, Location), StoreError> {
    Ok((u64_at(key, 9)?, Location::decode(value)?))
}

#[derive(Default)]
struct Trouble {
    /// When a fold last failed: tried again a second later at the earliest.
    fold_failed_at: Option<Instant>,
    /// When opening the engine again last failed: tried again a second later at the earliest.
    reopen_failed_at: Option<Instant>,
    /// Whether the memory state must be read from disk again before the next write (a sync
    /// failed, and so did reading the log back).
    reload: bool,
    /// Whether the meter index file is behind sled (its write failed after a fold): written
    /// again before the next fold, so that it is never more than one fold behind.
    index_behind: bool,
}

/// What [`Store::append`] did.
#[derive(Debug, Default)]
pub struct Appended {
    /// One outcome per reading, in order.
    pub outcomes: Vec<Outcome>,
    /// Every meter that gained a reading: its span before the batch (`None` for a meter new
    /// to the store) and after it.
    pub spans: HashMap<MeterId, (Option<MeterSpan>, MeterSpan)>,
}

/// Each meter's entry in the memory index: a B-tree, which holds a million meters in about
/// 80 MB where a hash map's spare slots took more than twice that.
type Spans = BTreeMap<MeterId, Indexed>;

/// A meter's first and last reading, the last fold that changed its readings ([`UNFOLDED`]
/// while some are only in the write-ahead log: state derived from a meter's readings and saved
/// at fold `f` is still the meter's at a later start if `changed <= f`), and its open chunk.
#[derive(Clone, Copy, Debug)]
struct Indexed {
    first: Point,
    last: Point,
    changed: u64,
    open: Option<Open>,
}

/// A meter's last chunk, the one readings in time order go to: held by the meter index rather
/// than the directory, so that a fold that adds readings to it rewrites no database entry, and
/// the directory learns of a chunk only once it is full (or a later one exists).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Open {
    first_ts: u64,
    at: Location,
}

/// [`Indexed::changed`] of a meter with readings not folded yet.
const UNFOLDED: u64 = u64::MAX;

impl Indexed {
    fn span(&self, meter: MeterId) -> MeterSpan {
        MeterSpan { meter, first: self.first, last: self.last }
    }

    fn entry(&self, meter: MeterId) -> index_file::Entry {
        index_file::Entry { span: self.span(meter), changed: self.changed, open: self.open }
    }
}

/// What an append changed in memory, undone if its record cannot be written.
type Undo = Vec<((MeterId, u64), Option<MeterSpan>)>;

impl Store {
    /// Opens (or creates) the store in `dir`, migrating a store of an earlier layout.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let (engine, strays) = Engine::open(dir)?;
        let reserved = match engine.meta.get(KEY_VERSION_RESERVED)? {
            Some(bytes) => u64_at(&bytes, 0)?,
            None => 1,
        };
        let (wal, logged) = Wal::open(&dir.join(WAL_FILE))?;
        let store = Store {
            dir: dir.to_path_buf(),
            engine: RwLock::new(Some(Arc::new(engine))),
            wal: Mutex::new(wal),
            meters: Mutex::new(BTreeMap::new()),
            pending: Mutex::new(BTreeMap::new()),
            switch: RwLock::new(()),
            trouble: Mutex::new(Trouble::default()),
            versions: Mutex::new((reserved, reserved)),
            folds: AtomicU64::new(0),
            loads: AtomicU64::new(0),
        };
        store.migrate_meter_tree()?;
        let (indexed, noted) = store.load(logged)?;
        store.check_folds(indexed, noted)?;
        store.migrate_old_layouts()?;
        store.check_meter_ids()?;
        store.engine()?.segments.remove_files(&strays)?;
        Ok(store)
    }

    /// Refuses a store of a version before printed meter ids that holds a numeric id of more
    /// than 12 digits: that version's ids were any u64, whose codes from 10^12 now name printed
    /// ids. Every smaller numeric id keeps its code, so such a store needs no change.
    fn check_meter_ids(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        if engine.meta.get(KEY_PRINTED_IDS)?.is_some() {
            return Ok(());
        }
        if let Some(meter) = lock(&self.meters).keys().next_back().filter(|m| m.as_number().is_none()) {
            return Err(StoreError::UnnamedMeter { path: self.dir.clone(), code: meter.code() });
        }
        self.sled_write(engine.meta.insert(KEY_PRINTED_IDS, &[1u8][..]))?;
        Ok(())
    }

    /// sled and the segment files, opened again first if a failure dropped them (a second
    /// after the last attempt at the earliest).
    fn engine(&self) -> Result<Arc<Engine>, StoreError> {
        if let Some(engine) = read(&self.engine).as_ref() {
            return Ok(engine.clone());
        }
        let mut trouble = lock(&self.trouble);
        if let Some(engine) = read(&self.engine).as_ref() {
            return Ok(engine.clone());
        }
        if trouble.reopen_failed_at.is_some_and(|at| at.elapsed() < RETRY) {
            return Err(StoreError::Durability(
                "the store is being opened again after a storage failure".into(),
            ));
        }
        let opened = Engine::open(&self.dir).and_then(|(engine, strays)| {
            // sled must have kept every fold it acknowledged before its segments are tidied.
            let (noted, _) = engine.fold_record()?;
            let folds = self.folds.load(Ordering::Relaxed);
            if noted < folds {
                return Err(StoreError::Unreadable {
                    path: self.dir.clone(),
                    reason: format!("its database, opened again, has seen fold {noted} of {folds}"),
                });
            }
            engine.segments.remove_files(&strays)?;
            Ok(Arc::new(engine))
        });
        match opened {
            Ok(engine) => {
                tracing::info!(dir = %self.dir.display(), "the store is open again");
                trouble.reopen_failed_at = None;
                *write(&self.engine) = Some(engine.clone());
                Ok(engine)
            }
            Err(error) => {
                trouble.reopen_failed_at = Some(Instant::now());
                Err(error)
            }
        }
    }

    /// Drops sled and the segment files after a failure, to be opened again at their next use.
    fn drop_engine(&self) {
        write(&self.engine).take();
    }

    /// A write to sled outside a fold: if it failed, sled refuses every write from now on, so
    /// it is dropped to be opened again (a fold's failure does the same in `make_room`).
    fn sled_write<T>(&self, result: sled::Result<T>) -> Result<T, StoreError> {
        result.map_err(|error| {
            self.drop_engine();
            StoreError::Sled(error)
        })
    }

    /// Validates and writes readings, returning one outcome per reading in order and the new
    /// spans of the meters that gained one. Written readings are durable only after
    /// [`Store::flush`]. Only one thread may append (the ingest writer). On an error nothing of
    /// the batch is kept.
    pub fn append(&self, readings: &[Reading], now_ms: u64) -> Result<Appended, StoreError> {
        self.make_room()?;
        let mut appended = Appended { outcomes: Vec::with_capacity(readings.len()), spans: HashMap::new() };
        let (mut accepted, mut undo) = (Vec::new(), Undo::new());
        for reading in readings {
            let outcome = match domain::check_fields(reading, now_ms) {
                Err(rejection) => Outcome::Rejected(rejection),
                Ok(()) => match self.place(reading, &mut undo) {
                    Ok(Outcome::Accepted) => {
                        // `place` recorded the meter's span before this reading last.
                        let before = undo.last().and_then(|(_, span)| *span);
                        if let Some(after) = self.span(reading.meter) {
                            appended.spans.entry(reading.meter).or_insert((before, after)).1 = after;
                        }
                        Outcome::Accepted
                    }
                    Ok(outcome) => outcome,
                    Err(error) => {
                        self.undo(undo);
                        return Err(error);
                    }
                },
            };
            if outcome == Outcome::Accepted {
                accepted.push(*reading);
            }
            appended.outcomes.push(outcome);
        }
        if !accepted.is_empty() {
            if let Err(error) = lock(&self.wal).append(&accepted) {
                self.undo(undo);
                return Err(error);
            }
        }
        Ok(appended)
    }

    /// Before a batch: the memory state read again if a sync failed, and the write-ahead part
    /// folded into chunks once it is large. A fold that fails (a full disk) is tried again a
    /// second later; the log takes batches meanwhile, up to twice its usual size.
    fn make_room(&self) -> Result<(), StoreError> {
        if lock(&self.trouble).reload {
            let logged = lock(&self.wal).reread()?;
            self.load(logged)?;
            lock(&self.trouble).reload = false;
        }
        let held = lock(&self.pending).len();
        let due = lock(&self.trouble).fold_failed_at.is_none_or(|at| at.elapsed() >= RETRY);
        if held >= FOLD_AT && due {
            let folded = self.fold();
            lock(&self.trouble).fold_failed_at = folded.as_ref().err().map(|_| Instant::now());
            if let Err(error) = folded {
                tracing::warn!(%error, "cannot fold the write-ahead log into chunks; trying again shortly");
                // sled refuses every write after one of its own failed: opened again first.
                self.drop_engine();
            }
        }
        if lock(&self.pending).len() >= 2 * FOLD_AT {
            return Err(StoreError::Durability(
                "the write-ahead log is full and cannot be folded into chunks".into(),
            ));
        }
        Ok(())
    }

    /// Undoes what a batch placed in memory.
    fn undo(&self, undo: Undo) {
        let (mut pending, mut meters) = (lock(&self.pending), lock(&self.meters));
        for (key, span) in undo.into_iter().rev() {
            pending.remove(&key);
            match (span, meters.get_mut(&key.0)) {
                // Still marked changed: conservative for state saved meanwhile.
                (Some(span), Some(indexed)) => (indexed.first, indexed.last) = (span.first, span.last),
                _ => {
                    meters.remove(&key.0);
                }
            }
        }
    }

    /// The store's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of the last fold: state derived from a meter's readings and saved under it
    /// is the meter's at a later start while the meter's fold of change (see
    /// [`Store::spans_and_changes`]) is not after it.
    pub fn fold_number(&self) -> u64 {
        self.folds.load(Ordering::Relaxed)
    }

    /// How many times the memory state was read from disk: at open, and again after a failed
    /// sync dropped batches from it. State derived from the store (the ingest writer's) is read
    /// again when this changes.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The meter's first and last reading over all data held.
    pub fn span(&self, meter: MeterId) -> Option<MeterSpan> {
        lock(&self.meters).get(&meter).map(|indexed| indexed.span(meter))
    }

    /// Every meter's span, in meter order.
    #[cfg(test)]
    fn spans(&self) -> Vec<MeterSpan> {
        lock(&self.meters).iter().map(|(&meter, indexed)| indexed.span(meter)).collect()
    }

    /// Every meter's span, in meter order, with the last fold that changed its readings
    /// (`u64::MAX` for a meter with readings not folded yet): for the ingest writer's start.
    pub fn spans_and_changes(&self) -> Vec<(MeterSpan, u64)> {
        lock(&self.meters).iter().map(|(&meter, indexed)| (indexed.span(meter), indexed.changed)).collect()
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
        let engine = self.engine()?;
        self.sled_write(engine.control.insert(subject.as_bytes(), signed))?;
        Ok(())
    }

    /// Every saved admin command.
    pub fn commands(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let engine = self.engine()?;
        engine.control.iter().values().map(|v| Ok(v?.to_vec())).collect()
    }

    fn place(&self, reading: &Reading, undo: &mut Undo) -> Result<Outcome, StoreError> {
        let span = self.span(reading.meter);
        let neighbours = match span {
            None => (None, None),
            Some(span) if reading.ts_ms > span.last.ts_ms => (Some(span.last), None),
            Some(span) if reading.ts_ms < span.first.ts_ms => (None, Some(span.first)),
            Some(_) => {
                let before = self.at_or_before(reading.meter, reading.ts_ms)?;
                if let Some(stored) = before.filter(|stored| stored.ts_ms == reading.ts_ms) {
                    // The register is the reading: a re-send with the same litres is the same
                    // reading even if a gateway added or dropped its flow or alarms (the stored
                    // copy stays); another register at the same time is a conflict.
                    return Ok(if stored.litres == reading.litres {
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
        let key = (reading.meter, reading.ts_ms);
        undo.push((key, span));
        lock(&self.pending).insert(key, *reading);
        widen_span(&mut lock(&self.meters), reading);
        Ok(Outcome::Accepted)
    }

    /// Makes everything appended so far durable (one sync of the write-ahead log). If that
    /// fails, what the sync covered is dropped from the log and from memory: it is not
    /// acknowledged, and the client sends it again.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut wal = lock(&self.wal);
        let Err(error) = wal.sync() else { return Ok(()) };
        let reloaded = wal.reread().and_then(|logged| self.load(logged));
        if let Err(reload) = reloaded {
            tracing::error!(%reload, "cannot read the store back after a failed sync; trying again at the next batch");
            lock(&self.trouble).reload = true;
        }
        Err(error)
    }

    /// Folds the write-ahead part into the chunks and makes everything durable: what a node
    /// does when it stops, so that the next start has nothing to replay.
    pub fn close(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        self.fold()?;
        engine.db.flush()?;
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
        let candidates: Vec<(MeterId, Point)> = lock(&self.meters)
            .iter()
            .filter(|(_, indexed)| indexed.last.ts_ms >= from_ms)
            .map(|(&meter, indexed)| (meter, indexed.last))
            .collect();
        let mut spans = Vec::with_capacity(candidates.len());
        for (meter, last) in candidates {
            if let Some(first) = self.window_base(meter, from_ms)? {
                spans.push(MeterSpan { meter, first, last });
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
        let engine = self.engine()?;
        let mut chunks = Vec::new();
        let mut in_window = 0;
        let switch = read(&self.switch);
        let pinned = engine.segments.pin();
        // Whether the scan has gone far enough once `chunk` is taken.
        let mut take = |chunk: Vec<Reading>| {
            let reaches_before = chunk.first().is_some_and(|first| first.ts_ms < from_ms);
            in_window += chunk.iter().filter(|r| (from_ms..=to_ms).contains(&r.ts_ms)).count();
            chunks.push(chunk);
            reaches_before || in_window >= max
        };
        let open = self.open_chunk(meter).filter(|open| open.first_ts <= to_ms);
        let done = match open {
            Some(open) => take(self.read_chunk(&pinned, meter, open.first_ts, open.at)?),
            None => false,
        };
        if !done {
            let upper = match open {
                Some(open) => Bound::Excluded(chunk_key(meter, open.first_ts)),
                None => Bound::Included(chunk_key(meter, to_ms)),
            };
            for entry in engine.directory.range((Bound::Included(chunk_key(meter, 0)), upper)).rev() {
                let (first_ts, at) = decode_chunk_entry(&entry?)?;
                if take(self.read_chunk(&pinned, meter, first_ts, at)?) {
                    break;
                }
            }
        }
        drop((pinned, switch));
        // By time again (the sort below then finds the readings in order).
        let mut readings: Vec<Reading> =
            chunks.into_iter().rev().flatten().filter(|reading| reading.ts_ms <= to_ms).collect();
        let pending = lock(&self.pending);
        readings.extend(pending.range((meter, 0)..=(meter, to_ms)).map(|(_, r)| *r));
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

    /// The meter's open chunk.
    fn open_chunk(&self, meter: MeterId) -> Option<Open> {
        lock(&self.meters).get(&meter).and_then(|indexed| indexed.open)
    }

    /// The chunk of `meter` that `ts_ms` falls in (its last one starting at or before it), as
    /// (first ts, location): its open chunk or one of the directory's. Call with the switch held
    /// (or from the writer, which alone moves chunks).
    fn chunk_at(
        &self,
        engine: &Engine,
        meter: MeterId,
        ts_ms: u64,
    ) -> Result<Option<(u64, Location)>, StoreError> {
        match self.open_chunk(meter).filter(|open| open.first_ts <= ts_ms) {
            Some(open) => Ok(Some((open.first_ts, open.at))),
            None => engine.chunk_at(meter, ts_ms),
        }
    }

    /// The meter's last reading at or before `ts_ms`.
    fn at_or_before(&self, meter: MeterId, ts_ms: u64) -> Result<Option<Reading>, StoreError> {
        let engine = self.engine()?;
        let switch = read(&self.switch);
        let pinned = engine.segments.pin();
        let stored = match self.chunk_at(&engine, meter, ts_ms)? {
            Some((first_ts, at)) => self
                .read_chunk(&pinned, meter, first_ts, at)?
                .into_iter()
                .take_while(|r| r.ts_ms <= ts_ms)
                .last(),
            None => None,
        };
        drop((pinned, switch));
        let pending = lock(&self.pending).range((meter, 0)..=(meter, ts_ms)).next_back().map(|(_, r)| *r);
        Ok(stored.into_iter().chain(pending).max_by_key(|r| r.ts_ms))
    }

    /// The meter's first reading at or after `ts_ms`.
    fn at_or_after(&self, meter: MeterId, ts_ms: u64) -> Result<Option<Reading>, StoreError> {
        let engine = self.engine()?;
        let switch = read(&self.switch);
        let pinned = engine.segments.pin();
        let chunks = self.chunks_from(&engine, meter, ts_ms)?;
        let mut stored = None;
        for (first_ts, at) in chunks {
            stored = self.read_chunk(&pinned, meter, first_ts, at)?.into_iter().find(|r| r.ts_ms >= ts_ms);
            if stored.is_some() {
                break;
            }
        }
        drop((pinned, switch));
        let pending = lock(&self.pending).range((meter, ts_ms)..=(meter, u64::MAX)).next().map(|(_, r)| *r);
        Ok(stored.into_iter().chain(pending).min_by_key(|r| r.ts_ms))
    }

    /// The chunks of `meter` from the one `ts_ms` falls in (or the first after it) to its last,
    /// in time order, as (first ts, location). Call with the switch held (or from the writer,
    /// which alone moves chunks).
    fn chunks_from(
        &self,
        engine: &Engine,
        meter: MeterId,
        ts_ms: u64,
    ) -> Result<Vec<(u64, Location)>, StoreError> {
        let open = self.open_chunk(meter);
        let start = self.chunk_at(engine, meter, ts_ms)?.map_or(ts_ms, |(first_ts, _)| first_ts);
        let mut chunks = Vec::new();
        if open.is_none_or(|open| start < open.first_ts) {
            let upper = match open {
                Some(open) => Bound::Excluded(chunk_key(meter, open.first_ts)),
                None => Bound::Included(chunk_key(meter, u64::MAX)),
            };
            for entry in engine.directory.range((Bound::Included(chunk_key(meter, start)), upper)) {
                chunks.push(decode_chunk_entry(&entry?)?);
            }
        }
        chunks.extend(open.map(|open| (open.first_ts, open.at)));
        Ok(chunks)
    }

    /// The readings of one of the meter's chunks.
    fn read_chunk(
        &self,
        pinned: &Pinned,
        meter: MeterId,
        first_ts: u64,
        at: Location,
    ) -> Result<Vec<Reading>, StoreError> {
        let bytes = pinned.read(at)?;
        chunk::decode(meter, &bytes)
            .map_err(|e| StoreError::Corrupt(format!("the chunk of meter {meter} from {first_ts} ms: {e}")))
    }

    /// Folds the pending readings into the chunks, empties the write-ahead log, then removes
    /// or compacts the segments that became mostly garbage.
    fn fold(&self) -> Result<(), StoreError> {
        if lock(&self.trouble).index_behind {
            self.write_index(self.folds.load(Ordering::Relaxed), false)?;
        }
        let readings: Vec<Reading> = lock(&self.pending).values().copied().collect();
        if readings.is_empty() {
            return Ok(());
        }
        // The chunks, the directory and the index durable before the log goes.
        self.fold_in(&readings, true)?;
        lock(&self.wal).clear()?;
        let mut pending = lock(&self.pending);
        for reading in &readings {
            pending.remove(&(reading.meter, reading.ts_ms));
        }
        drop(pending);
        self.tidy_segments()
    }

    /// One fold of `readings` (by meter, then time) into the chunks, made durable: the chunks
    /// they fall in written again into one new segment; then, in one sled batch, the directory
    /// (full chunks), the segments' live bytes and the fold's record; then the meter index (open
    /// chunks). `pending` says whether `readings` are all the pending ones (then every meter's
    /// readings are folded).
    fn fold_in(&self, readings: &[Reading], pending: bool) -> Result<(), StoreError> {
        let engine = self.engine()?;
        let fold = self.folds.load(Ordering::Relaxed) + 1;
        let mut segment = engine.segments.builder();
        let mut directory = sled::Batch::default();
        let mut freed: HashMap<u32, u64> = HashMap::new();
        let mut opens = Vec::new();
        let pinned = engine.segments.pin();
        for new in readings.chunk_by(|a, b| a.meter == b.meter) {
            let meter = new[0].meter;
            // The chunks the readings may fall in: from the one the earliest falls in to the
            // meter's last (one chunk when readings arrive in order).
            let existing = self.chunks_from(&engine, meter, new[0].ts_ms)?;
            let open = self.open_chunk(meter);
            // Each reading goes into the chunk it falls in, one before the first into the first.
            let mut groups: Vec<Vec<Reading>> = vec![Vec::new(); existing.len().max(1)];
            for reading in new {
                groups[existing.partition_point(|(first, _)| *first <= reading.ts_ms).saturating_sub(1)]
                    .push(*reading);
            }
            let last = groups.len() - 1;
            for (at, added) in groups.into_iter().enumerate().filter(|(_, added)| !added.is_empty()) {
                let mut merged = match existing.get(at) {
                    Some(&(first_ts, location)) => self.read_chunk(&pinned, meter, first_ts, location)?,
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
                if let Some(&(first_ts, old)) = existing.get(at) {
                    *freed.entry(old.segment).or_default() += old.record_bytes();
                    if open.is_none_or(|open| open.at != old) {
                        directory.remove(&chunk_key(meter, first_ts));
                    }
                }
                // The meter's last piece is its open chunk; the others go to the directory.
                let pieces = merged.chunks(CHUNK_READINGS).count();
                for (number, piece) in merged.chunks(CHUNK_READINGS).enumerate() {
                    let location = segment.add(meter, piece[0].ts_ms, &chunk::encode(piece));
                    if at == last && number + 1 == pieces {
                        opens.push((meter, Open { first_ts: piece[0].ts_ms, at: location }));
                    } else {
                        directory.insert(&chunk_key(meter, piece[0].ts_ms), &location.encode());
                    }
                }
            }
        }
        // Writing a segment waits for readers to let go of the segments.
        drop(pinned);
        let written = self.write_segment(&engine, segment, freed, &mut directory)?;
        directory.insert(FOLD_KEY, &encode_fold(fold, written));
        self.switch_chunks(&engine, directory, &opens)?;
        self.commit(fold, pending)
    }

    /// Writes `segment`, if it holds chunks, and adds to `directory` the live bytes of the
    /// segments: `freed` fewer in those chunks left, and the new segment's. Returns its number.
    fn write_segment(
        &self,
        engine: &Engine,
        segment: segments::Builder,
        freed: HashMap<u32, u64>,
        directory: &mut sled::Batch,
    ) -> Result<Option<u32>, StoreError> {
        if segment.is_empty() {
            return Ok(None);
        }
        let stats = segment_stats(&engine.directory)?.into_iter().collect::<HashMap<_, _>>();
        for (number, bytes) in freed {
            let (live, size) = stats.get(&number).copied().unwrap_or_default();
            directory.insert(&segment_key(number), &encode_stats(live.saturating_sub(bytes), size));
        }
        let (number, size) = (segment.segment, segment.len());
        directory.insert(&segment_key(number), &encode_stats(size - segments::MAGIC_BYTES, size));
        engine.segments.write(segment)?;
        Ok(Some(number))
    }

    /// Applies a directory batch and moves open chunks in the meter index, as one step for
    /// readers.
    fn switch_chunks(
        &self,
        engine: &Engine,
        directory: sled::Batch,
        opens: &[(MeterId, Open)],
    ) -> Result<(), StoreError> {
        let _switch = write(&self.switch);
        engine.directory.apply_batch(directory)?;
        let mut meters = lock(&self.meters);
        for (meter, open) in opens {
            if let Some(indexed) = meters.get_mut(meter) {
                indexed.open = Some(*open);
            }
        }
        Ok(())
    }

    /// Ends a fold (or a compaction): sled made durable, then the meter index written under the
    /// fold's number. `folded` says that every pending reading was in the fold: the meters they
    /// changed are then marked changed by it.
    fn commit(&self, fold: u64, folded: bool) -> Result<(), StoreError> {
        self.engine()?.db.flush()?;
        self.folds.store(fold, Ordering::Relaxed);
        self.write_index(fold, folded)
    }

    /// Writes the meter index of fold `fold` (see [`Store::commit`]). If that fails, it is
    /// written again before the next fold.
    fn write_index(&self, fold: u64, folded: bool) -> Result<(), StoreError> {
        let index = {
            let meters = lock(&self.meters);
            let entries = meters.iter().map(|(&meter, indexed)| {
                let entry = indexed.entry(meter);
                index_file::Entry {
                    changed: if folded { entry.changed.min(fold) } else { entry.changed },
                    ..entry
                }
            });
            index_file::encode(fold, meters.len(), entries)
        };
        let written = write_atomically(&self.dir.join(INDEX_FILE), &index);
        lock(&self.trouble).index_behind = written.is_err();
        written?;
        if folded {
            // Only now: had the index not been written, the log would be replayed at the next
            // start and its meters marked changed again.
            for indexed in lock(&self.meters).values_mut() {
                indexed.changed = indexed.changed.min(fold);
            }
        }
        Ok(())
    }

    /// Keeps the readings older than `cutoff_ms` (taken down to a whole hour) as hourly
    /// registers, for up to `max_meters` meters after `after` (in meter order): of those
    /// readings, a meter keeps its first, any on a whole hour, and the last of each hour, so
    /// that consumption over windows bounded by whole hours (every period and bill) stays
    /// exact. Only full chunks are rewritten (a meter's open chunk is its newest), each only if
    /// it loses readings; a second pass over the same meters changes nothing. Returns the meter
    /// to go on after (`None` once past the last) and the chunks rewritten.
    pub fn thin_before(
        &self,
        cutoff_ms: u64,
        after: Option<MeterId>,
        max_meters: usize,
    ) -> Result<(Option<MeterId>, usize), StoreError> {
        let cutoff_ms = cutoff_ms - cutoff_ms % domain::HOUR_MS;
        let meters: Vec<(MeterId, u64)> = {
            let meters = lock(&self.meters);
            let from = after.map_or(Bound::Unbounded, Bound::Excluded);
            meters
                .range((from, Bound::Unbounded))
                .take(max_meters)
                .map(|(&m, i)| (m, i.first.ts_ms))
                .collect()
        };
        let engine = self.engine()?;
        let mut segment = engine.segments.builder();
        let mut directory = sled::Batch::default();
        let mut freed: HashMap<u32, u64> = HashMap::new();
        let mut rewritten = 0;
        let pinned = engine.segments.pin();
        for &(meter, first_ts) in &meters {
            for entry in engine.directory.range(chunk_key(meter, 0)..chunk_key(meter, cutoff_ms)) {
                let (chunk_ts, at) = decode_chunk_entry(&entry?)?;
                let readings = self.read_chunk(&pinned, meter, chunk_ts, at)?;
                let kept = domain::hourly_before(&readings, cutoff_ms, first_ts);
                if kept.len() == readings.len() {
                    continue;
                }
                *freed.entry(at.segment).or_default() += at.record_bytes();
                directory.remove(&chunk_key(meter, chunk_ts));
                let location = segment.add(meter, kept[0].ts_ms, &chunk::encode(&kept));
                directory.insert(&chunk_key(meter, kept[0].ts_ms), &location.encode());
                rewritten += 1;
            }
        }
        drop(pinned);
        if self.write_segment(&engine, segment, freed, &mut directory)?.is_some() {
            self.switch_chunks(&engine, directory, &[])?;
            engine.db.flush()?;
            self.tidy_segments()?;
        }
        let next = (meters.len() == max_meters).then(|| meters.last().map(|(meter, _)| *meter)).flatten();
        Ok((next, rewritten))
    }

    /// Removes the segments no chunk is in any more, and compacts those less than half live:
    /// their live chunks are copied into a new segment and the directory and the meter index
    /// pointed there, made durable, then the old files removed (a crash in between leaves files
    /// nothing points to, removed at the next open).
    fn tidy_segments(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        let stats = segment_stats(&engine.directory)?;
        let mut gone: Vec<u32> = stats.iter().filter(|(_, (live, _))| *live == 0).map(|(n, _)| *n).collect();
        let victims: Vec<u32> =
            stats.iter().filter(|(_, (live, size))| *live > 0 && live * 2 < *size).map(|(n, _)| *n).collect();
        let mut batch = sled::Batch::default();
        let mut opens = Vec::new();
        let mut compacted_into = None;
        if !victims.is_empty() {
            let mut segment = engine.segments.builder();
            let pinned = engine.segments.pin();
            let mut compacted = Vec::new();
            for victim in victims {
                // One compaction writes a bounded segment; the other victims wait for the next.
                if segment.len() >= COMPACTION_BYTES {
                    break;
                }
                compacted.push(victim);
                for (meter, first_ts, at) in engine.segments.records(victim)? {
                    let key = chunk_key(meter, first_ts);
                    let open = self.open_chunk(meter) == Some(Open { first_ts, at });
                    if open {
                        let moved = segment.add(meter, first_ts, &pinned.read(at)?);
                        opens.push((meter, Open { first_ts, at: moved }));
                    } else if engine.listed_at(meter, first_ts)? == Some(at) {
                        let moved = segment.add(meter, first_ts, &pinned.read(at)?);
                        batch.insert(&key, &moved.encode());
                    }
                }
            }
            drop(pinned);
            let size = segment.len();
            batch.insert(&segment_key(segment.segment), &encode_stats(size - segments::MAGIC_BYTES, size));
            compacted_into = Some(segment.segment);
            engine.segments.write(segment)?;
            gone.extend(compacted);
        }
        if gone.is_empty() {
            return Ok(());
        }
        for number in &gone {
            batch.remove(&segment_key(*number));
        }
        // Chunks moved: a fold of its own, which a start can roll the meter index forward to.
        let fold = compacted_into.map(|segment| (self.folds.load(Ordering::Relaxed) + 1, segment));
        if let Some((fold, segment)) = fold {
            batch.insert(FOLD_KEY, &encode_fold(fold, Some(segment)));
        }
        self.switch_chunks(&engine, batch, &opens)?;
        match fold {
            Some((fold, _)) => self.commit(fold, false)?,
            None => {
                engine.db.flush()?;
            }
        }
        engine.segments.remove(&gone)
    }

    /// Refuses a store whose sled lost writes that the meter index saw (the index was written
    /// by a fold sled does not know, or sled knows folds but the index is gone), or whose index
    /// lost open chunks (it is behind sled by more than the fold it is rolled forward over):
    /// never start empty, or with part of the data, silently.
    fn check_folds(&self, indexed: Option<u64>, noted: u64) -> Result<(), StoreError> {
        let damaged = |reason: String| StoreError::Unreadable { path: self.dir.clone(), reason };
        match indexed {
            Some(fold) if fold > noted => {
                return Err(damaged(format!(
                    "its database file lost writes: the meter index was written by fold {fold}, the \
                     database has seen {noted}"
                )))
            }
            // An index of an earlier version (no open chunks) may be behind: the database holds
            // every chunk.
            Some(fold)
                if fold < noted && lock(&self.meters).values().any(|indexed| indexed.open.is_some()) =>
            {
                return Err(damaged(format!(
                    "its meter index {} was written by fold {fold}, the database has seen {noted}",
                    self.dir.join(INDEX_FILE).display()
                )))
            }
            None if noted > 0 => {
                return Err(damaged(format!(
                    "its meter index {} is missing",
                    self.dir.join(INDEX_FILE).display()
                )))
            }
            _ => {}
        }
        self.folds.store(noted, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the memory state from disk: the meter index, then the readings of the write-ahead
    /// log (`logged`), which are also the pending ones. An index one fold behind sled (a crash,
    /// or a failed write, came between the two) is rolled forward: the open chunks that fold
    /// wrote are in its segment. Returns the fold the index is then at.
    fn load(&self, logged: Vec<Reading>) -> Result<(Option<u64>, u64), StoreError> {
        let (mut fold, entries) = match index_file::read(&self.dir.join(INDEX_FILE))? {
            Some((fold, entries)) => (Some(fold), entries),
            None => (None, Vec::new()),
        };
        let mut meters: Spans = entries
            .into_iter()
            .map(|entry| {
                let (span, changed, open) = (entry.span, entry.changed, entry.open);
                (span.meter, Indexed { first: span.first, last: span.last, changed, open })
            })
            .collect();
        let mut pending = BTreeMap::new();
        for reading in logged {
            widen_span(&mut meters, &reading);
            pending.insert((reading.meter, reading.ts_ms), reading);
        }
        let engine = self.engine()?;
        let (noted, segment) = engine.fold_record()?;
        if fold.is_some_and(|fold| fold + 1 == noted) {
            if let Some(segment) = segment {
                self.roll_forward(&engine, &mut meters, segment)?;
            }
            fold = Some(noted);
            lock(&self.trouble).index_behind = true;
        }
        *lock(&self.meters) = meters;
        *lock(&self.pending) = pending;
        self.loads.fetch_add(1, Ordering::Relaxed);
        Ok((fold, noted))
    }

    /// Points the meters' open chunks at those `segment` holds: its chunks that are not the
    /// directory's (a segment holds one version of each chunk it wrote).
    fn roll_forward(&self, engine: &Engine, meters: &mut Spans, segment: u32) -> Result<(), StoreError> {
        let records = engine.segments.records(segment)?;
        tracing::info!(
            segment,
            chunks = records.len(),
            "the meter index is one fold behind; rolling it forward"
        );
        for (meter, first_ts, at) in records {
            if engine.listed_at(meter, first_ts)? == Some(at) {
                continue;
            }
            let indexed = meters.get_mut(&meter).ok_or_else(|| StoreError::Unreadable {
                path: self.dir.clone(),
                reason: format!(
                    "chunk file {segment} holds meter {meter}, which its meter index does not know"
                ),
            })?;
            indexed.open = Some(Open { first_ts, at });
        }
        Ok(())
    }

    /// Moves the meter index of the earlier layout (sled tree `meters`) into the index file.
    fn migrate_meter_tree(&self) -> Result<(), StoreError> {
        let engine = self.engine()?;
        if !engine.db.tree_names().iter().any(|name| name.as_ref() == b"meters") {
            return Ok(());
        }
        let tree = engine.db.open_tree("meters")?;
        let spans = tree
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                decode_span(&key, &value)
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(meters = spans.len(), "moving the meter index into its own file");
        *lock(&self.meters) = spans
            .into_iter()
            .map(|span| {
                (span.meter, Indexed { first: span.first, last: span.last, changed: UNFOLDED, open: None })
            })
            .collect();
        self.fold_in(&[], false)?;
        engine.db.drop_tree("meters")?;
        engine.db.flush()?;
        Ok(())
    }

    /// Moves the readings of earlier layouts into chunks, then drops their trees: one key per
    /// reading (tree `readings`); chunks and write-ahead records held in sled (trees `chunks`
    /// and `wal`).
    fn migrate_old_layouts(&self) -> Result<(), StoreError> {
        self.migrate("readings", |key, value| Ok(vec![decode_old_reading(key, value)?]))?;
        self.migrate("chunks", |key, value| {
            let meter = meter_at(key, 0)?;
            chunk::decode(meter, value)
                .map_err(|e| StoreError::Corrupt(format!("a chunk of meter {meter}: {e}")))
        })?;
        self.migrate("wal", |_, value| {
            chunk::decode_record(value).map_err(|e| StoreError::Corrupt(format!("a write-ahead record: {e}")))
        })
    }

    fn migrate(
        &self,
        tree: &str,
        decode: impl Fn(&[u8], &[u8]) -> Result<Vec<Reading>, StoreError>,
    ) -> Result<(), StoreError> {
        let engine = self.engine()?;
        if !engine.db.tree_names().iter().any(|name| name.as_ref() == tree.as_bytes()) {
            return Ok(());
        }
        let old = engine.db.open_tree(tree)?;
        tracing::info!(tree, entries = old.len(), "migrating readings into chunk files");
        let mut batch = Vec::with_capacity(MIGRATE_BATCH);
        let write = |batch: &mut Vec<Reading>| -> Result<(), StoreError> {
            batch.sort_by_key(|r| (r.meter, r.ts_ms));
            self.fold_in(batch, false)?;
            batch.clear();
            Ok(())
        };
        for entry in old.iter() {
            let (key, value) = entry?;
            for reading in decode(&key, &value)? {
                widen_span(&mut lock(&self.meters), &reading);
                batch.push(reading);
            }
            if batch.len() >= MIGRATE_BATCH {
                write(&mut batch)?;
            }
        }
        write(&mut batch)?;
        engine.db.drop_tree(tree)?;
        engine.db.flush()?;
        self.tidy_segments()?;
        tracing::info!(tree, "migration done");
        Ok(())
    }

    /// Hands out the next summary version: strictly greater than every version handed out
    /// before, across restarts. Versions are reserved on disk a block at a time, so only one
    /// call in [`VERSION_BLOCK`] waits for a flush.
    pub fn next_summary_version(&self) -> Result<u64, StoreError> {
        let engine = self.engine()?;
        let mut versions = lock(&self.versions);
        let (next, reserved) = *versions;
        if next >= reserved {
            let new_reserved = next + VERSION_BLOCK;
            self.sled_write(engine.meta.insert(KEY_VERSION_RESERVED, &new_reserved.to_be_bytes()))?;
            self.sled_write(engine.db.flush())?;
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
        let engine = self.engine()?;
        self.sled_write(engine.views.insert(origin.as_bytes(), signed))?;
        Ok(())
    }

    /// Forgets `origin`'s summary.
    pub fn forget_view(&self, origin: &str) -> Result<(), StoreError> {
        let engine = self.engine()?;
        self.sled_write(engine.views.remove(origin.as_bytes()))?;
        Ok(())
    }

    /// Saves (with `None`, forgets) what a handoff left of `meter` here, the ingest writer's
    /// record; durable when it returns.
    pub fn save_tenure(&self, meter: MeterId, record: Option<&[u8]>) -> Result<(), StoreError> {
        let engine = self.engine()?;
        let key = meter.code().to_be_bytes();
        match record {
            Some(record) => self.sled_write(engine.tenures.insert(key, record))?,
            None => self.sled_write(engine.tenures.remove(key))?,
        };
        self.sled_write(engine.db.flush())?;
        Ok(())
    }

    /// Every saved handoff record, by meter.
    pub fn tenures(&self) -> Result<Vec<(MeterId, Vec<u8>)>, StoreError> {
        let engine = self.engine()?;
        engine
            .tenures
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                Ok((meter_at(&key, 0)?, value.to_vec()))
            })
            .collect()
    }

    /// Every saved signed summary.
    pub fn views(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let engine = self.engine()?;
        engine.views.iter().values().map(|v| Ok(v?.to_vec())).collect()
    }

    /// Bytes of the live chunks (in segment files, record headers included), and bytes of
    /// keys and values in sled's directory and meter index: what the readings take, before
    /// garbage not yet compacted and the storage engine's own overhead.
    pub fn live_bytes(&self) -> Result<(u64, u64), StoreError> {
        let engine = self.engine()?;
        let chunks = segment_stats(&engine.directory)?.into_iter().map(|(_, (live, _))| live).sum();
        let mut index = 0;
        for entry in engine.directory.scan_prefix([CHUNK_PREFIX]) {
            let (key, value) = entry?;
            index += (key.len() + value.len()) as u64;
        }
        index += (lock(&self.meters).len() * index_file::ENTRY_BYTES) as u64;
        Ok((chunks, index))
    }

    /// Bytes the store takes on disk: sled's files, the segments and the write-ahead log.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        let engine = self.engine()?;
        Ok(engine.db.size_on_disk()? + engine.segments.size() + lock(&self.wal).len())
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
    let deadline = Instant::now() + LOCK_WAIT;
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
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(StoreError::InUse { path: dir.to_path_buf() });
                }
                std::thread::sleep(Duration::from_millis(20));
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

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Widens the meter's span in `meters` to take in `reading`, and marks it changed since every
/// fold.
fn widen_span(meters: &mut Spans, reading: &Reading) {
    let (meter, point) = (reading.meter, domain::point(reading));
    let new = MeterSpan { meter, first: point, last: point };
    let indexed =
        meters.entry(meter).or_insert(Indexed { first: point, last: point, changed: UNFOLDED, open: None });
    let span = domain::join_spans(indexed.span(meter), new, 0);
    (indexed.first, indexed.last, indexed.changed) = (span.first, span.last, UNFOLDED);
}

/// Directory key of a chunk: `c` ‖ meter ‖ first ts (u64 BE each), so that one meter's chunks
/// are one contiguous, time-ordered key range.
fn chunk_key(meter: MeterId, ts_ms: u64) -> [u8; 17] {
    let mut key = [CHUNK_PREFIX; 17];
    key[1..9].copy_from_slice(&meter.code().to_be_bytes());
    key[9..].copy_from_slice(&ts_ms.to_be_bytes());
    key
}

/// Directory key of a segment's live and total bytes: `s` ‖ segment (u32 BE).
fn segment_key(segment: u32) -> [u8; 5] {
    let mut key = [SEGMENT_PREFIX; 5];
    key[1..].copy_from_slice(&segment.to_be_bytes());
    key
}

/// A segment's live bytes and its size.
type SegmentStats = (u64, u64);

fn encode_stats(live: u64, size: u64) -> [u8; 16] {
    let mut value = [0; 16];
    value[..8].copy_from_slice(&live.to_be_bytes());
    value[8..].copy_from_slice(&size.to_be_bytes());
    value
}

/// Every segment in the directory, with its live and total bytes.
fn segment_stats(directory: &sled::Tree) -> Result<Vec<(u32, SegmentStats)>, StoreError> {
    let mut stats = Vec::new();
    for entry in directory.scan_prefix([SEGMENT_PREFIX]) {
        let (key, value) = entry?;
        let number = key
            .get(1..5)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| StoreError::Corrupt(format!("a segment key of {} bytes", key.len())))?;
        stats.push((number, (u64_at(&value, 0)?, u64_at(&value, 8)?)));
    }
    Ok(stats)
}

/// A meter index entry of the earlier layout: first ts, first litres, last ts, last litres
/// (u64 BE each).
#[cfg(test)]
fn encode_span(span: &MeterSpan) -> [u8; 32] {
    let mut value = [0; 32];
    for (at, number) in
        [span.first.ts_ms, span.first.litres, span.last.ts_ms, span.last.litres].into_iter().enumerate()
    {
        value[at * 8..at * 8 + 8].copy_from_slice(&number.to_be_bytes());
    }
    value
}

/// Reads [`encode_span`]'s form.
fn decode_span(key: &[u8], value: &[u8]) -> Result<MeterSpan, StoreError> {
    if value.len() != 32 {
        return Err(StoreError::Corrupt(format!(
            "a meter index entry of {} bytes instead of 32",
            value.len()
        )));
    }
    Ok(MeterSpan {
        meter: meter_at(key, 0)?,
        first: Point { ts_ms: u64_at(value, 0)?, litres: u64_at(value, 8)? },
        last: Point { ts_ms: u64_at(value, 16)?, litres: u64_at(value, 24)? },
    })
}

fn meter_at(bytes: &[u8], at: usize) -> Result<MeterId, StoreError> {
    let code = u64_at(bytes, at)?;
    MeterId::from_code(code)
        .ok_or_else(|| StoreError::Corrupt(format!("{code} is not the code of a meter id")))
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
fn decode_old_reading(key: &[u8], value: &[u8]) -> Result<Reading, StoreError> {
    let meter = meter_at(key, 0)?;
    let alarms = value
        .get(8)
        .and_then(|bits| Alarms::from_bits(*bits))
        .ok_or_else(|| StoreError::Corrupt(format!("reading of meter {meter} has no valid alarm bits")))?;
    let flow_lph = value.get(9..13).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes);
    Ok(Reading { meter, ts_ms: u64_at(key, 8)?, litres: u64_at(value, 0)?, flow_lph, alarms })
}

#[cfg(test)]
mod tests {
    use super::chunk::tests::Rng;
    use super::*;

    const T0: u64 = 1_795_000_000_000;
    const NOW: u64 = T0 + 86_400_000;

    /// The numeric meter id `n`.
    fn id(n: u64) -> MeterId {
        MeterId::number(n).expect("a numeric id")
    }

    fn reading(meter: u64, ts_ms: u64, litres: u64) -> Reading {
        Reading { meter: id(meter), ts_ms, litres, flow_lph: None, alarms: Alarms::empty() }
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
                let sent = next_ts.get(&id(meter)).map_or(1, |ts| ts - T0 + 1);
                let ts = match rng.below(8) {
                    // A back-fill anywhere in what was sent so far.
                    0 | 1 => T0 + rng.below(sent),
                    // The same time as a reading sent before: a duplicate or a conflict.
                    2 => T0 + rng.below(sent) / 1000 * 1000,
                    _ => {
                        let ts = next_ts.entry(id(meter)).or_insert(T0);
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
                    Outcome::Duplicate => {
                        assert_eq!(held.map(|h| h.litres), Some(reading.litres), "round {round}")
                    }
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
        let chunks = store.engine().expect("engine").directory.scan_prefix([CHUNK_PREFIX]).count();
        assert!(chunks > 8, "several chunks per meter: {chunks}");
        for (segment, (live, size)) in
            segment_stats(&store.engine().expect("engine").directory).expect("stats")
        {
            assert!(live * 2 >= size, "segment {segment} is {live} of {size} bytes live: not compacted");
        }
        let backfilled = model.iter().filter(|((_, ts), _)| !(ts - T0).is_multiple_of(1000)).count();
        assert!(backfilled > 100, "{backfilled} back-fills accepted");
    }

    fn check_against(store: &Store, model: &BTreeMap<(MeterId, u64), Reading>, rng: &mut Rng) {
        for meter in 1..=4 {
            let held: Vec<Reading> =
                model.range((id(meter), 0)..=(id(meter), u64::MAX)).map(|(_, r)| *r).collect();
            assert!(
                held.windows(2).all(|pair| pair[0].litres <= pair[1].litres),
                "accepted readings keep the register rules"
            );
            let history = store.meter_history(id(meter), None, None, usize::MAX).expect("history");
            assert_eq!(history.map(|h| h.readings).unwrap_or_default(), held, "meter {meter}");
            if let (Some(first), Some(last)) = (held.first(), held.last()) {
                let span = store.span(id(meter)).expect("span");
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
                store.window_consumption(id(meter), from, to).expect("window"),
                expected,
                "meter {meter} [{from}, {to})"
            );
            let history = store.meter_history(id(meter), Some(from), Some(to), 3).expect("history");
            if let Some(history) = history {
                let window: Vec<Reading> = in_window.iter().map(|r| **r).collect();
                let cut = window.len().saturating_sub(3);
                assert_eq!(history.readings, window[cut..], "meter {meter} [{from}, {to}) at most 3");
                assert_eq!(history.truncated, cut > 0);
                let before = held.iter().rev().find(|r| r.ts_ms <= from).copied();
                let want = if cut > 0 { before.or(window.first().copied()) } else { before };
                assert_eq!(history.baseline, want, "meter {meter} [{from}, {to}) baseline");
            }
            let recent = store.recent_readings(id(meter), from, 5).expect("recent");
            let mut want: Vec<Reading> = held.iter().rev().take_while(|r| r.ts_ms >= from).copied().collect();
            want.extend(held.iter().rev().find(|r| r.ts_ms < from));
            want.truncate(5);
            want.reverse();
            assert_eq!(recent, want, "meter {meter} from {from}");
        }
    }

    /// Stores of the earlier layouts: one sled key per reading (meter 5), then chunks and
    /// write-ahead records held in sled (meter 6), all in one store as an upgrade finds them.
    #[test]
    fn stores_of_earlier_layouts_are_migrated_into_chunk_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let readings: Vec<Reading> = (0..300)
            .map(|i| Reading {
                flow_lph: (i % 3 == 0).then_some(i as u32),
                ..reading(5 + i % 2, T0 + i * 1000, 10 * i)
            })
            .collect();
        let old_key = |meter: MeterId, ts: u64| [meter.code().to_be_bytes(), ts.to_be_bytes()].concat();
        {
            let db = sled::open(dir.path()).expect("sled");
            let tree = |name: &str| db.open_tree(name).expect("tree");
            let (one_each, chunks, wal) = (tree("readings"), tree("chunks"), tree("wal"));
            let meter_index = db.open_tree("meters").expect("tree");
            for r in readings.iter().filter(|r| r.meter == 5.into()) {
                let mut value = r.litres.to_be_bytes().to_vec();
                value.push(r.alarms.bits());
                if let Some(flow) = r.flow_lph {
                    value.extend_from_slice(&flow.to_be_bytes());
                }
                one_each.insert(old_key(r.meter, r.ts_ms), value).expect("insert");
            }
            let six: Vec<Reading> = readings.iter().filter(|r| r.meter == 6.into()).copied().collect();
            for piece in six[..100].chunks(CHUNK_READINGS) {
                chunks.insert(old_key(id(6), piece[0].ts_ms), chunk::encode(piece)).expect("insert");
            }
            let span =
                MeterSpan { meter: 6.into(), first: domain::point(&six[0]), last: domain::point(&six[99]) };
            meter_index.insert(6u64.to_be_bytes(), &encode_span(&span)).expect("insert");
            for (record, batch) in six[100..].chunks(7).enumerate() {
                wal.insert((record as u64).to_be_bytes(), chunk::encode_record(batch)).expect("insert");
            }
            db.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("open and migrate");
        for tree in ["readings", "chunks", "wal"] {
            assert!(
                !store
                    .engine()
                    .expect("engine")
                    .db
                    .tree_names()
                    .iter()
                    .any(|name| name.as_ref() == tree.as_bytes()),
                "{tree} is gone"
            );
        }
        let check = |store: &Store| {
            for meter in [5, 6] {
                let want: Vec<Reading> = readings.iter().filter(|r| r.meter == id(meter)).copied().collect();
                let history =
                    store.meter_history(id(meter), None, None, usize::MAX).expect("read").expect("held");
                assert_eq!(history.readings, want);
                let span = store.span(id(meter)).expect("span");
                assert_eq!(
                    (span.first, span.last),
                    (domain::point(&want[0]), domain::point(&want[want.len() - 1]))
                );
            }
        };
        check(&store);
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.spans().len(), 2, "the index was written with the chunks");
        check(&store);
    }

    #[test]
    fn a_damaged_database_file_is_refused_by_name_never_opened_empty_or_in_part() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            // 300 readings a meter: full chunks in the database, open ones in the meter index.
            let readings: Vec<Reading> = (0..6_000).map(|i| reading(i % 20, T0 + i * 10, i)).collect();
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
            (0..20)
                .map(|meter| {
                    Ok(store
                        .meter_history(id(meter), None, None, usize::MAX)?
                        .map(|h| h.readings)
                        .unwrap_or_default())
                })
                .collect()
        };
        let whole = histories(&Store::open(dir.path()).expect("open")).expect("read");
        let mut refused = 0;
        for cut in [0, intact.len() / 4, intact.len() / 2, intact.len().saturating_sub(1024)] {
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
        assert_eq!(Store::open(dir.path()).expect("the restored store opens").spans().len(), 20);
        // The meter index gone: refused by name, not opened empty.
        std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("remove the index");
        let error = Store::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(INDEX_FILE) && error.contains("is missing"), "{error}");
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
        let span = store.span(7.into()).expect("the meter survived");
        assert_eq!((span.first.litres, span.last.litres), (100, 150));
    }

    #[test]
    fn duplicates_are_counted_once_and_conflicts_refused() {
        let (_dir, store) = open();
        let batch = [reading(1, T0, 100), reading(1, T0 + 10, 110)];
        assert_eq!(store.append(&batch, NOW).expect("append").outcomes, vec![Outcome::Accepted; 2]);
        let with_flow = Reading { flow_lph: Some(40), alarms: Alarms::LEAK, ..reading(1, T0, 100) };
        let again = [with_flow, reading(1, T0 + 10, 111), reading(1, T0 + 10, 110)];
        let outcomes = store.append(&again, NOW).expect("append").outcomes;
        assert_eq!(outcomes[0], Outcome::Duplicate, "same register, other extras: the same reading");
        assert_eq!(outcomes[1], Outcome::Rejected(Rejection::ConflictingDuplicate { stored_litres: 110 }));
        assert_eq!(outcomes[2], Outcome::Duplicate);
        let held = store.meter_history(1.into(), None, None, 10).expect("read").expect("held").readings;
        assert_eq!(held[0], reading(1, T0, 100), "the stored copy stays");
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
        let span = store.span(1.into()).expect("held");
        assert_eq!((span.first.ts_ms, span.last.litres), (T0 - 100, 200));
    }

    #[test]
    fn history_windows_and_baseline() {
        let (_dir, store) = open();
        let batch: Vec<_> = (0..10).map(|i| reading(7, T0 + i * 1000, 100 + i * i)).collect();
        store.append(&batch, NOW).expect("append");
        let history = store
            .meter_history(7.into(), Some(T0 + 2500), Some(T0 + 6000), 100)
            .expect("read")
            .expect("held");
        assert_eq!(history.baseline.map(|r| r.litres), Some(104));
        assert_eq!(history.readings.iter().map(|r| r.litres).collect::<Vec<_>>(), vec![109, 116, 125]);
        assert_eq!(domain::history_consumption(7.into(), &history), 21);
        let cut = store.meter_history(7.into(), None, None, 3).expect("read").expect("held");
        assert!(cut.truncated);
        assert_eq!(cut.readings.len(), 3);
        assert_eq!(domain::history_consumption(7.into(), &cut), 81, "consumption survives truncation");
        assert!(store.meter_history(8.into(), None, None, 3).expect("read").is_none());
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
        assert_eq!(got, vec![(id(2), 100), (id(3), 100)]);
        let all = store.top_since(5, 0).expect("top");
        assert_eq!(all.iter().map(|s| s.meter).collect::<Vec<_>>(), [1, 2, 3].map(id));
    }

    /// The readings of `meter`, as the store answers them.
    fn history(store: &Store, meter: MeterId) -> Vec<Reading> {
        store
            .meter_history(meter, None, None, usize::MAX)
            .expect("history")
            .map(|h| h.readings)
            .unwrap_or_default()
    }

    fn directory_chunks(store: &Store) -> usize {
        store.engine().expect("engine").directory.scan_prefix([CHUNK_PREFIX]).count()
    }

    #[test]
    fn a_meter_s_last_chunk_stays_out_of_the_database_until_it_is_full() {
        let (dir, store) = open();
        let readings: Vec<Reading> = (0..300).map(|i| reading(7, T0 + i * 1000, i)).collect();
        for (folds, batch) in readings.chunks(20).enumerate() {
            store.append(batch, NOW).expect("append");
            store.close().expect("fold");
            let held = (folds + 1) * 20;
            assert_eq!(directory_chunks(&store), held / CHUNK_READINGS, "after {held} readings");
            assert_eq!(history(&store, 7.into()), readings[..held]);
        }
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(history(&store, 7.into()), readings);
        assert_eq!(store.at_or_after(7.into(), T0 + 200_500).expect("read").map(|r| r.litres), Some(201));
        assert_eq!(store.at_or_before(7.into(), T0 + 200_500).expect("read").map(|r| r.litres), Some(200));
        // A back-fill into a full chunk and one before the first reading.
        let back = [reading(7, T0 + 500, 0), reading(7, T0 - 1000, 0)];
        assert_eq!(store.append(&back, NOW).expect("append").outcomes, vec![Outcome::Accepted; 2]);
        store.close().expect("fold");
        let mut expected = readings.clone();
        expected.extend(back);
        expected.sort_by_key(|r| r.ts_ms);
        assert_eq!(history(&store, 7.into()), expected);
    }

    /// A crash between a fold's database write and its meter index write leaves the index one
    /// fold behind: the open chunks that fold wrote are found again in its chunk file.
    #[test]
    fn an_index_one_fold_behind_is_rolled_forward_and_two_behind_refused() {
        let (dir, store) = open();
        let first: Vec<Reading> = (0..100).map(|i| reading(i % 2, T0 + i * 1000, i)).collect();
        store.append(&first, NOW).expect("append");
        store.close().expect("fold");
        let behind = std::fs::read(dir.path().join(INDEX_FILE)).expect("index");
        // The next fold fills meter 0's chunk and starts another, and brings a new meter 5.
        let second: Vec<Reading> =
            (100..400).map(|i| reading(if i % 3 == 0 { 5 } else { i % 2 }, T0 + i * 1000, i)).collect();
        store.append(&second, NOW).expect("append");
        store.close().expect("fold");
        let expected: Vec<Vec<Reading>> = [0, 1, 5].map(|meter| history(&store, id(meter))).to_vec();
        drop(store);
        std::fs::write(dir.path().join(INDEX_FILE), &behind).expect("the index of the fold before");
        // The write-ahead log still held the fold's readings at such a crash.
        let logged = second.clone();
        {
            let (wal, _) = Wal::open(&dir.path().join(WAL_FILE)).expect("log");
            let mut wal = wal;
            wal.append(&logged).expect("log");
            wal.sync().expect("sync");
        }
        let store = Store::open(dir.path()).expect("rolled forward");
        assert_eq!([0, 1, 5].map(|meter| history(&store, id(meter))).to_vec(), expected);
        store.append(&[reading(1, T0 + 500_000, 500)], NOW).expect("append");
        store.close().expect("fold");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(history(&store, 1.into()).last().map(|r| r.litres), Some(500));
        assert_eq!(history(&store, 0.into()), expected[0]);
        // Two folds behind: refused by name.
        store.append(&[reading(1, T0 + 600_000, 600)], NOW).expect("append");
        store.close().expect("fold");
        drop(store);
        std::fs::write(dir.path().join(INDEX_FILE), &behind).expect("an older index");
        let error = Store::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains(INDEX_FILE) && error.contains("was written by fold"), "{error}");
    }

    #[test]
    fn readings_older_than_the_cutoff_become_hourly_and_hour_windows_stay_exact() {
        let (dir, store) = open();
        let hour = domain::HOUR_MS;
        let base = T0 - T0 % hour;
        // Every 15 minutes (7, 22, 37 and 52 past each hour), and a meter reporting at odd
        // times; registers grow unevenly.
        let mut readings = Vec::new();
        for i in 0..384u64 {
            readings.push(reading(9, base + 7 * 60_000 + i * 900_000, 1_000 + i * i % 37 + i * 40));
            readings.push(reading(10, base + 13_337 + i * 1_111_111, 50 + i * 3));
        }
        readings.sort_by_key(|r| (r.meter, r.ts_ms));
        let appended = store.append(&readings, base + 10 * 86_400_000).expect("append");
        assert!(appended.outcomes.iter().all(|outcome| *outcome == Outcome::Accepted));
        store.close().expect("fold");
        let cutoff = base + 2 * 86_400_000 + 30 * 60_000;
        let windows: Vec<(u64, u64)> =
            (0..110).flat_map(|a| (a..120).step_by(7).map(move |b| (a, b))).collect();
        let consumption = |store: &Store, meter| -> Vec<u64> {
            windows
                .iter()
                .map(|&(a, b)| {
                    store.window_consumption(meter, base + a * hour, base + b * hour).expect("window")
                })
                .collect()
        };
        let before = [consumption(&store, 9.into()), consumption(&store, 10.into())];
        let spans = store.spans();
        let (next, rewritten) = store.thin_before(cutoff, None, 10).expect("thin");
        assert_eq!(next, None, "both meters done in one pass");
        assert!(rewritten >= 2, "{rewritten} chunks rewritten");
        let check = |store: &Store| {
            assert_eq!(
                [consumption(store, 9.into()), consumption(store, 10.into())],
                before,
                "hour windows unchanged"
            );
            assert_eq!(store.spans(), spans);
            for meter in [9, 10] {
                let held = history(store, id(meter));
                let raw: Vec<Reading> = readings.iter().filter(|r| r.meter == id(meter)).copied().collect();
                let cut = cutoff - cutoff % hour;
                assert_eq!(
                    held.iter().filter(|r| r.ts_ms >= cut).collect::<Vec<_>>(),
                    raw.iter().filter(|r| r.ts_ms >= cut).collect::<Vec<_>>(),
                    "meter {meter}: readings from the cutoff on untouched"
                );
                let old: Vec<&Reading> = held.iter().filter(|r| r.ts_ms < cut).collect();
                let hours: std::collections::BTreeSet<u64> = old.iter().map(|r| r.ts_ms / hour).collect();
                assert!(
                    old.len() <= 2 * hours.len() + 1,
                    "meter {meter}: {} readings in {} hours",
                    old.len(),
                    hours.len()
                );
                assert!(old.len() < raw.iter().filter(|r| r.ts_ms < cut).count(), "meter {meter} thinned");
            }
        };
        check(&store);
        assert_eq!(store.thin_before(cutoff, None, 10).expect("again").1, 0, "a second pass changes nothing");
        drop(store);
        let store = Store::open(dir.path()).expect("reopen");
        check(&store);
        // One meter a pass: the next pass goes on after it.
        assert_eq!(store.thin_before(cutoff, None, 1).expect("one meter").0, Some(id(9)));
    }

    #[test]
    fn a_store_of_numeric_ids_opens_as_it_was_and_one_past_12_digits_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let forget_marker = || {
            let db = sled::open(dir.path()).expect("sled");
            db.open_tree("meta").expect("meta").remove(KEY_PRINTED_IDS).expect("remove");
            db.flush().expect("flush");
        };
        {
            let store = Store::open(dir.path()).expect("open");
            store.append(&[reading(42, T0, 5), reading(999_999_999_999, T0, 7)], NOW).expect("append");
            store.close().expect("close");
        }
        // As if written by the earlier version: its numbers are the same meters.
        forget_marker();
        let store = Store::open(dir.path()).expect("numeric ids of an earlier store");
        assert_eq!(store.span(id(999_999_999_999)).map(|s| s.last.litres), Some(7));
        // What the earlier version could also hold: a number of 13 digits, whose code is now
        // a printed id's.
        let thirteen = MeterId::from_code(10_000_000_000_011).expect("a code");
        store.append(&[Reading { meter: thirteen, ..reading(0, T0, 9) }], NOW).expect("append");
        store.close().expect("close");
        drop(store);
        assert!(Store::open(dir.path()).is_ok(), "this version's own store opens");
        forget_marker();
        let refused = Store::open(dir.path()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("holds meter 10000000000011"), "{refused}");
    }

    #[test]
    fn index_versions_and_views_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let largest = MeterId::parse("____________").expect("the largest id");
        let first_version = {
            let store = Store::open(dir.path()).expect("open");
            store
                .append(
                    &[
                        Reading { meter: largest, ..reading(0, T0, 5) },
                        Reading { meter: largest, ..reading(0, T0 + 1, 9) },
                        reading(3, T0, 1),
                    ],
                    NOW,
                )
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
        assert_eq!(store.span(largest).map(|s| s.last.litres), Some(9));
        assert_eq!(store.views().expect("views"), vec![b"signed".to_vec()]);
    }
}
