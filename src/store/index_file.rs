//! The meter index: every meter's first and last reading, the last fold that changed its
//! readings, and where its open (last) chunk is, in one file written whole by each fold (to a new
//! file, synced, then renamed over the old one) and read at open: a sequential read instead of a
//! walk of a database tree, and no database pages rewritten per meter and fold. It names the fold
//! that wrote it, which sled's directory must have seen too: a directory that lost writes is
//! found at open.
//!
//! ```text
//! magic "HMIDX3\n\0" ‖ fold (u64 LE) ‖ count (u64 LE)
//!   ‖ count × (meter, first ts, first litres, last ts, last litres, changed by fold,
//!              open chunk's first ts: u64 LE each; its segment, offset, length: u32 LE each,
//!              segment u32::MAX for none)
//!   ‖ crc32 (LE)
//! ```
//!
//! Earlier versions are read too: version 2 has no open chunks (every chunk was in the
//! directory), version 1 not even the folds that changed each meter (read as if the fold that
//! wrote it had changed every meter).

use std::path::Path;

use hydromesh_proto::summary::{MeterSpan, Point};
use hydromesh_proto::MeterId;

use super::chunk::crc32;
use super::segments::Location;
use super::{Open, StoreError};

const MAGIC: &[u8; 8] = b"HMIDX3\n\0";
pub(super) const ENTRY_BYTES: usize = 68;
/// Version 2: no open chunks.
const MAGIC_V2: &[u8; 8] = b"HMIDX2\n\0";
const ENTRY_BYTES_V2: usize = 48;
/// Version 1: neither the fold that changed each meter.
const MAGIC_V1: &[u8; 8] = b"HMIDX1\n\0";
const ENTRY_BYTES_V1: usize = 40;
const HEADER_BYTES: usize = MAGIC.len() + 16;
/// The segment of "no open chunk".
const NO_SEGMENT: u32 = u32::MAX;

/// One meter in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub span: MeterSpan,
    /// The last fold that changed its readings.
    pub changed: u64,
    /// Its open chunk, unless its last chunk is in the directory.
    pub open: Option<Open>,
}

/// The index file's bytes (written whole, with [`super::write_atomically`]): fold number `fold`
/// wrote it, over `count` meters.
pub fn encode(fold: u64, count: usize, entries: impl Iterator<Item = Entry>) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + count * ENTRY_BYTES + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&fold.to_le_bytes());
    bytes.extend_from_slice(&(count as u64).to_le_bytes());
    for Entry { span, changed, open } in entries {
        let first_ts = open.map_or(0, |open| open.first_ts);
        for number in [
            span.meter.code(),
            span.first.ts_ms,
            span.first.litres,
            span.last.ts_ms,
            span.last.litres,
            changed,
            first_ts,
        ] {
            bytes.extend_from_slice(&number.to_le_bytes());
        }
        let at = open.map_or(Location { segment: NO_SEGMENT, offset: 0, len: 0 }, |open| open.at);
        for number in [at.segment, at.offset, at.len] {
            bytes.extend_from_slice(&number.to_le_bytes());
        }
    }
    let crc = crc32(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// The fold that wrote the index, and its spans each with the last fold that changed it;
/// `None` when there is no index file.
pub fn read(path: &Path) -> Result<Option<(u64, Vec<Entry>)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    let damaged = |what: &str| StoreError::Unreadable {
        path: path.parent().unwrap_or(path).to_path_buf(),
        reason: format!("its meter index {} {what}", path.display()),
    };
    let entry_bytes = match &bytes.get(..MAGIC.len()) {
        Some(magic) if magic == MAGIC => ENTRY_BYTES,
        Some(magic) if magic == MAGIC_V2 => ENTRY_BYTES_V2,
        Some(magic) if magic == MAGIC_V1 => ENTRY_BYTES_V1,
        _ => return Err(damaged("is not an index file")),
    };
    if bytes.len() < HEADER_BYTES + 4 {
        return Err(damaged("is not an index file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(damaged("fails its checksum"));
    }
    let (fold, count) = (u64_le(body, MAGIC.len()), u64_le(body, MAGIC.len() + 8));
    let entries = &body[HEADER_BYTES..];
    if count.checked_mul(entry_bytes as u64) != Some(entries.len() as u64) {
        return Err(damaged(&format!("says {count} meters in {} bytes", entries.len())));
    }
    let spans = entries
        .chunks_exact(entry_bytes)
        .map(|entry| {
            let code = u64_le(entry, 0);
            let meter = MeterId::from_code(code)
                .ok_or_else(|| damaged(&format!("holds {code}, the code of no meter id")))?;
            let span = MeterSpan {
                meter,
                first: Point { ts_ms: u64_le(entry, 8), litres: u64_le(entry, 16) },
                last: Point { ts_ms: u64_le(entry, 24), litres: u64_le(entry, 32) },
            };
            let changed = if entry_bytes == ENTRY_BYTES_V1 { fold } else { u64_le(entry, 40) };
            let open = (entry_bytes == ENTRY_BYTES && u32_le(entry, 56) != NO_SEGMENT).then(|| Open {
                first_ts: u64_le(entry, 48),
                at: Location {
                    segment: u32_le(entry, 56),
                    offset: u32_le(entry, 60),
                    len: u32_le(entry, 64),
                },
            });
            Ok::<_, StoreError>(Entry { span, changed, open })
        })
        .collect::<Result<_, _>>()?;
    Ok(Some((fold, spans)))
}

/// The u64 (LE) at `at` (within bounds the caller checked).
fn u64_le(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// The u32 (LE) at `at` (within bounds the caller checked).
fn u32_le(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::super::write_atomically;
    use super::*;

    #[test]
    fn an_index_reads_back_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meters.idx");
        assert!(read(&path).expect("read").is_none());
        let entries: Vec<Entry> = (0..50u64)
            .map(|m| {
                let span = MeterSpan {
                    meter: MeterId::parse(&format!("zz-{m}")).expect("id"),
                    first: Point { ts_ms: m, litres: m * 2 },
                    last: Point { ts_ms: m + 9, litres: m * 3 },
                };
                let at = Location { segment: m as u32, offset: 8 + m as u32, len: 3 };
                let open = (m % 3 != 0).then_some(Open { first_ts: m + 1, at });
                Entry { span, changed: m % 7, open }
            })
            .collect();
        let write = |fold, entries: &[Entry]| {
            write_atomically(&path, &encode(fold, entries.len(), entries.iter().copied())).expect("write")
        };
        write(7, &entries);
        assert_eq!(read(&path).expect("read"), Some((7, entries.clone())));
        write(8, &entries[..3]);
        assert_eq!(read(&path).expect("read"), Some((8, entries[..3].to_vec())));
        let mut bytes = std::fs::read(&path).expect("bytes");
        bytes[HEADER_BYTES + 5] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        let error = read(&path).expect_err("refused").to_string();
        assert!(error.contains("meters.idx") && error.contains("checksum"), "{error}");
    }

    #[test]
    fn an_index_of_version_1_says_its_fold_changed_every_meter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meters.idx");
        let span = MeterSpan {
            meter: 42.into(),
            first: Point { ts_ms: 1, litres: 2 },
            last: Point { ts_ms: 3, litres: 4 },
        };
        let mut bytes = MAGIC_V1.to_vec();
        for number in [9u64, 1, 42, 1, 2, 3, 4] {
            bytes.extend_from_slice(&number.to_le_bytes());
        }
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(read(&path).expect("read"), Some((9, vec![Entry { span, changed: 9, open: None }])));
    }
}
