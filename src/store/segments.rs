//! Chunk files: append-only segments of chunks, outside sled's pages. Each fold writes one new
//! segment holding every chunk it (re)wrote; the directory (in sled) says where each meter's
//! chunks are, and how many of each segment's bytes are still live. A segment with no live byte
//! is removed; one less than half live is compacted (its live chunks copied into a new one).
//!
//! ```text
//! segment: magic "HMSEG1\n\0" ‖ record*
//! record:  meter (u64 BE) ‖ first ts_ms (u64 BE) ‖ length (u32 BE) ‖ chunk bytes
//! ```
//!
//! A segment is written whole and synced before the directory points into it, so a crash
//! leaves at worst a segment nothing points to, removed at the next open.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use hydromesh_proto::MeterId;

use super::files::{sync_parent, write_durably};
use super::StoreError;

const MAGIC: &[u8; 8] = b"HMSEG1\n\0";
/// Bytes of a segment before its first record.
pub const MAGIC_BYTES: u64 = MAGIC.len() as u64;
/// Bytes of a record before its chunk.
pub const RECORD_HEADER: u64 = 20;
/// A chunk's length is at most this (a damaged length never allocates without bound).
const MAX_CHUNK_BYTES: u32 = 1 << 20;

/// Where a chunk is: its segment, and its bytes' offset and length there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

impl Location {
    /// The directory's form: segment, offset, length (u32 BE each).
    pub fn encode(&self) -> [u8; 12] {
        let mut value = [0; 12];
        value[..4].copy_from_slice(&self.segment.to_be_bytes());
        value[4..8].copy_from_slice(&self.offset.to_be_bytes());
        value[8..].copy_from_slice(&self.len.to_be_bytes());
        value
    }

    pub fn decode(value: &[u8]) -> Result<Location, StoreError> {
        let value: &[u8; 12] = value.try_into().map_err(|_| {
            StoreError::Corrupt(format!("a chunk location of {} bytes instead of 12", value.len()))
        })?;
        let word = |at: usize| u32::from_be_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
        Ok(Location { segment: word(0), offset: word(4), len: word(8) })
    }

    /// The record's bytes in its segment, header included.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER + u64::from(self.len)
    }
}

/// A segment being built in memory before it is written.
pub struct Builder {
    pub segment: u32,
    bytes: Vec<u8>,
}

impl Builder {
    /// Adds a chunk; returns where it will be.
    pub fn add(&mut self, meter: MeterId, first_ts: u64, chunk: &[u8]) -> Location {
        self.bytes.extend_from_slice(&meter.code().to_be_bytes());
        self.bytes.extend_from_slice(&first_ts.to_be_bytes());
        self.bytes.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        let offset = self.bytes.len() as u32;
        self.bytes.extend_from_slice(chunk);
        Location { segment: self.segment, offset, len: chunk.len() as u32 }
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.len() == MAGIC.len()
    }

    /// Bytes so far.
    pub fn len(&self) -> u64 {
        self.bytes.len() as u64
    }
}

/// The segment files of a store.
pub struct Segments {
    dir: PathBuf,
    /// Open segments. Readers hold the read lock from a directory lookup to the read of the
    /// chunk; a segment is removed under the write lock.
    files: RwLock<HashMap<u32, Arc<File>>>,
    /// The next segment's number: above every segment file found or written, so that a new
    /// segment never takes the name of a file waiting to be removed.
    next: AtomicU32,
}

/// The open segments, held while chunks found in the directory are read.
pub struct Pinned<'a>(RwLockReadGuard<'a, HashMap<u32, Arc<File>>>);

impl Pinned<'_> {
    /// A chunk's bytes.
    pub fn read(&self, at: Location) -> Result<Vec<u8>, StoreError> {
        let file = self.0.get(&at.segment).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the directory points into chunk file {}, which is missing",
                at.segment
            ))
        })?;
        let mut bytes = vec![0; at.len.min(MAX_CHUNK_BYTES) as usize];
        file.read_exact_at(&mut bytes, u64::from(at.offset))
            .map_err(|source| StoreError::Io { path: PathBuf::from(segment_name(at.segment)), source })?;
        Ok(bytes)
    }
}

impl Segments {
    /// Opens the segments in `dir` (created if missing) that the directory names (`live`), and
    /// lists the other segment files there: written by a fold or a compaction that a crash
    /// interrupted, or compacted and not yet removed. The caller removes them once the store is
    /// known sound ([`Segments::remove_files`]): a damaged directory must not cost the files it
    /// lost track of. A segment in `live` that is missing refuses the store.
    pub fn open(dir: &Path, live: &[u32]) -> Result<(Segments, Vec<PathBuf>), StoreError> {
        let io = |source| StoreError::Io { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        let (mut files, mut strays, mut last) = (HashMap::new(), Vec::new(), 0);
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            // Only segment files are the store's: anything else in the folder is left alone.
            let Some(number) = path.file_name().and_then(|name| name.to_str()).and_then(parse_segment_name)
            else {
                continue;
            };
            last = last.max(number);
            if live.contains(&number) {
                let file =
                    File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
                files.insert(number, Arc::new(file));
            } else {
                strays.push(path);
            }
        }
        if let Some(missing) = live.iter().find(|number| !files.contains_key(number)) {
            return Err(StoreError::Unreadable {
                path: dir.parent().unwrap_or(dir).to_path_buf(),
                reason: format!("its chunk file {} is missing", dir.join(segment_name(*missing)).display()),
            });
        }
        let segments =
            Segments { dir: dir.to_path_buf(), files: RwLock::new(files), next: AtomicU32::new(last + 1) };
        Ok((segments, strays))
    }

    /// Removes files of the segment folder that are no segment of the store.
    pub fn remove_files(&self, strays: &[PathBuf]) -> Result<(), StoreError> {
        for path in strays {
            tracing::info!(path = %path.display(), "removing a chunk file nothing points to");
            std::fs::remove_file(path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        }
        Ok(())
    }

    /// Pins the open segments for reading.
    pub fn pin(&self) -> Pinned<'_> {
        Pinned(self.files.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// A new, empty segment to fill.
    pub fn builder(&self) -> Builder {
        Builder { segment: self.next.fetch_add(1, Ordering::Relaxed), bytes: MAGIC.to_vec() }
    }

    /// Writes a built segment, durably, and opens it for reading.
    pub fn write(&self, built: Builder) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(built.segment));
        write_durably(&path, &built.bytes)?;
        let file = File::open(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        self.files
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(built.segment, Arc::new(file));
        Ok(())
    }

    /// Removes segments (nothing points into them any more).
    pub fn remove(&self, segments: &[u32]) -> Result<(), StoreError> {
        let mut files = self.files.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for segment in segments {
            files.remove(segment);
            let path = self.dir.join(segment_name(*segment));
            std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
        }
        drop(files);
        sync_parent(&self.dir.join("x"))
    }

    /// Every record of a segment: meter, first ts and where its chunk is.
    pub fn records(&self, segment: u32) -> Result<Vec<(MeterId, u64, Location)>, StoreError> {
        let path = self.dir.join(segment_name(segment));
        let bytes = std::fs::read(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        let corrupt =
            |at: usize| StoreError::Corrupt(format!("{}: a record cut short at byte {at}", path.display()));
        if !bytes.starts_with(MAGIC) {
            return Err(StoreError::Corrupt(format!("{} is not a chunk file", path.display())));
        }
        let (mut records, mut at) = (Vec::new(), MAGIC.len());
        while at < bytes.len() {
            let header = bytes.get(at..at + RECORD_HEADER as usize).ok_or_else(|| corrupt(at))?;
            let meter = header[..8]
                .try_into()
                .ok()
                .and_then(|code| MeterId::from_code(u64::from_be_bytes(code)))
                .ok_or_else(|| corrupt(at))?;
            let first_ts = u64::from_be_bytes(header[8..16].try_into().map_err(|_| corrupt(at))?);
            let len = u32::from_be_bytes(header[16..].try_into().map_err(|_| corrupt(at))?);
            let offset = at + RECORD_HEADER as usize;
            if len > MAX_CHUNK_BYTES || offset + len as usize > bytes.len() {
                return Err(corrupt(at));
            }
            records.push((meter, first_ts, Location { segment, offset: offset as u32, len }));
            at = offset + len as usize;
        }
        Ok(records)
    }

    /// Bytes of every segment file.
    pub fn size(&self) -> u64 {
        let files = self.files.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        files.values().filter_map(|file| file.metadata().ok()).map(|meta| meta.len()).sum()
    }
}

fn segment_name(segment: u32) -> String {
    format!("{segment:010}.seg")
}

fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_suffix(".seg").filter(|digits| digits.len() == 10).and_then(|digits| digits.parse().ok())
}
