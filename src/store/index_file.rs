//! The meter index: every meter's first and last reading, in one file written whole by each fold
//! (to a new file, synced, then renamed over the old one) and read at open: a sequential read
//! instead of a walk of a database tree, and no database pages rewritten per meter and fold.
//! It names the fold that wrote it, which sled's directory must have seen too: a directory that
//! lost writes is found at open.
//!
//! ```text
//! magic "HMIDX1\n\0" ‖ fold (u64 LE) ‖ count (u64 LE)
//!   ‖ count × (meter, first ts, first litres, last ts, last litres: u64 LE each) ‖ crc32 (LE)
//! ```

use std::path::Path;

use hydromesh_proto::summary::{MeterSpan, Point};

use super::chunk::crc32;
use super::files::write_atomically;
use super::StoreError;

const MAGIC: &[u8; 8] = b"HMIDX1\n\0";
const ENTRY_BYTES: usize = 40;
const HEADER_BYTES: usize = MAGIC.len() + 16;

/// Writes the index of `spans`, made by fold number `fold`, durably in place of the old one.
pub fn write(path: &Path, fold: u64, spans: &[MeterSpan]) -> Result<(), StoreError> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + spans.len() * ENTRY_BYTES + 4);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&fold.to_le_bytes());
    bytes.extend_from_slice(&(spans.len() as u64).to_le_bytes());
    for span in spans {
        for number in [span.meter, span.first.ts_ms, span.first.litres, span.last.ts_ms, span.last.litres] {
            bytes.extend_from_slice(&number.to_le_bytes());
        }
    }
    let crc = crc32(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    write_atomically(path, &bytes)
}

/// The fold that wrote the index and its spans; `None` when there is no index file.
pub fn read(path: &Path) -> Result<Option<(u64, Vec<MeterSpan>)>, StoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
    };
    let damaged = |what: &str| StoreError::Unreadable {
        path: path.parent().unwrap_or(path).to_path_buf(),
        reason: format!("its meter index {} {what}", path.display()),
    };
    if !bytes.starts_with(MAGIC) || bytes.len() < HEADER_BYTES + 4 {
        return Err(damaged("is not an index file"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(damaged("fails its checksum"));
    }
    let (fold, count) = (u64_le(body, MAGIC.len()), u64_le(body, MAGIC.len() + 8));
    let entries = &body[HEADER_BYTES..];
    if count.checked_mul(ENTRY_BYTES as u64) != Some(entries.len() as u64) {
        return Err(damaged(&format!("says {count} meters in {} bytes", entries.len())));
    }
    let spans = entries
        .chunks_exact(ENTRY_BYTES)
        .map(|entry| MeterSpan {
            meter: u64_le(entry, 0),
            first: Point { ts_ms: u64_le(entry, 8), litres: u64_le(entry, 16) },
            last: Point { ts_ms: u64_le(entry, 24), litres: u64_le(entry, 32) },
        })
        .collect();
    Ok(Some((fold, spans)))
}

/// The u64 (LE) at `at` (within bounds the caller checked).
fn u64_le(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_back_and_a_damaged_one_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("meters.idx");
        assert!(read(&path).expect("read").is_none());
        let spans: Vec<MeterSpan> = (0..50u64)
            .map(|m| MeterSpan {
                meter: u64::MAX - m,
                first: Point { ts_ms: m, litres: m * 2 },
                last: Point { ts_ms: m + 9, litres: m * 3 },
            })
            .collect();
        write(&path, 7, &spans).expect("write");
        assert_eq!(read(&path).expect("read"), Some((7, spans.clone())));
        write(&path, 8, &spans[..3]).expect("write again");
        assert_eq!(read(&path).expect("read"), Some((8, spans[..3].to_vec())));
        let mut bytes = std::fs::read(&path).expect("bytes");
        bytes[HEADER_BYTES + 5] ^= 1;
        std::fs::write(&path, &bytes).expect("damage");
        let error = read(&path).expect_err("refused").to_string();
        assert!(error.contains("meters.idx") && error.contains("checksum"), "{error}");
    }
}
