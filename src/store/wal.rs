//! The write-ahead log: one append-only file of the batches accepted since the last fold, each
//! record `length (u32 LE) ‖ record` (a [`chunk::encode_record`], which carries its own CRC).
//! A batch is appended before its acknowledgement and made durable by [`Wal::sync`] (the group
//! commit: one `fdatasync` for every batch waiting); a fold empties the file once its readings
//! are in chunks.
//!
//! Nothing half-written is ever followed by more: a failed append cuts the file back to where
//! it stood, and a failed sync cuts it back to what the last good sync made durable.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use hydromesh_proto::Reading;

use super::files::sync_parent;
use super::{chunk, StoreError};

/// Largest record accepted when reading the log back (a batch is far smaller): a damaged
/// length never allocates without bound.
const MAX_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// The open log.
pub struct Wal {
    path: PathBuf,
    file: File,
    /// Bytes written: the file's length.
    len: u64,
    /// Bytes made durable by the last good sync.
    synced: u64,
}

impl Wal {
    /// Opens (or creates) the log at `path` and reads back the readings of every whole record.
    /// The log ends at its first record that is cut short or fails its checksum: what a crash
    /// interrupted before the sync that would have acknowledged it. That tail is cut off (with a
    /// warning) so that new records follow whole ones.
    pub fn open(path: &Path) -> Result<(Wal, Vec<Reading>), StoreError> {
        let io = |source| StoreError::Io { path: path.to_path_buf(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (readings, whole) = read_records(&bytes).map_err(|reason| StoreError::Unreadable {
            path: path.parent().unwrap_or(path).to_path_buf(),
            reason: format!("its write-ahead log {}: {reason}", path.display()),
        })?;
        if whole < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                bytes = bytes.len() - whole,
                "cutting off the end of the write-ahead log at its first record cut short or \
                 damaged: a write a crash interrupted before its sync (never acknowledged), or \
                 damage to the file"
            );
            file.set_len(whole as u64).and_then(|()| file.sync_all()).map_err(io)?;
        }
        sync_parent(path)?;
        let len = whole as u64;
        Ok((Wal { path: path.to_path_buf(), file, len, synced: len }, readings))
    }

    /// Appends one record of `readings`. On failure the file is cut back to where it stood.
    pub fn append(&mut self, readings: &[Reading]) -> Result<(), StoreError> {
        let record = chunk::encode_record(readings);
        let mut framed = Vec::with_capacity(4 + record.len());
        framed.extend_from_slice(&(record.len() as u32).to_le_bytes());
        framed.extend_from_slice(&record);
        // Appended at the length this log knows, whatever a failed write left past it.
        let written = std::os::unix::fs::FileExt::write_all_at(&self.file, &framed, self.len);
        match written {
            Ok(()) => {
                self.len += framed.len() as u64;
                Ok(())
            }
            Err(source) => {
                // Whatever part of the record reached the file is cut off (best effort: the next
                // append overwrites it anyway, and `open` stops at it).
                let _ = self.file.set_len(self.len);
                Err(StoreError::Io { path: self.path.clone(), source })
            }
        }
    }

    /// Makes every record appended so far durable. On failure, everything appended since the
    /// last good sync is cut off (its batches were not acknowledged, and a second sync after a
    /// failed one may report success for pages the system dropped); the caller reloads what the
    /// log holds.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.synced == self.len {
            return Ok(());
        }
        match self.file.sync_data() {
            Ok(()) => {
                self.synced = self.len;
                Ok(())
            }
            Err(source) => {
                let error = StoreError::Io { path: self.path.clone(), source };
                self.len = self.synced;
                if let Err(cut) = self.file.set_len(self.synced).and_then(|()| self.file.sync_all()) {
                    tracing::error!(path = %self.path.display(), %cut, "cannot cut the write-ahead log back");
                }
                Err(error)
            }
        }
    }

    /// Empties the log (its readings are all in chunks, durably).
    pub fn clear(&mut self) -> Result<(), StoreError> {
        let io = |source| StoreError::Io { path: self.path.clone(), source };
        match self.file.set_len(0) {
            // The file is empty now, durable or not: the next record goes at its start.
            Ok(()) => (self.len, self.synced) = (0, 0),
            Err(source) => {
                // Where the file stands, whatever the failed call did.
                if let Ok(meta) = self.file.metadata() {
                    (self.len, self.synced) = (meta.len(), self.synced.min(meta.len()));
                }
                return Err(io(source));
            }
        }
        self.file.sync_all().map_err(io)
    }

    /// The readings of every record in the file, as the file stands (after a failed sync).
    pub fn reread(&mut self) -> Result<Vec<Reading>, StoreError> {
        let mut bytes = vec![0; self.len as usize];
        std::os::unix::fs::FileExt::read_exact_at(&self.file, &mut bytes, 0)
            .map_err(|source| StoreError::Io { path: self.path.clone(), source })?;
        read_records(&bytes)
            .map(|(readings, _)| readings)
            .map_err(|reason| StoreError::Corrupt(format!("the write-ahead log: {reason}")))
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.len
    }
}

/// The readings of the whole records at the start of `bytes`, and where they end (a record cut
/// short or damaged ends them). A whole record (its checksum holds) that cannot be read is an
/// error: cutting the log there would drop acknowledged readings.
fn read_records(bytes: &[u8]) -> Result<(Vec<Reading>, usize), String> {
    let (mut readings, mut at) = (Vec::new(), 0);
    while let Some(header) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 || len > MAX_RECORD_BYTES {
            break;
        }
        let Some(record) = bytes.get(at + 4..at + 4 + len) else { break };
        match chunk::decode_record(record) {
            Ok(batch) => readings.extend(batch),
            Err(error) if chunk::is_whole(record) => {
                return Err(format!("a whole record at byte {at}: {error}"))
            }
            Err(_) => break,
        }
        at += 4 + len;
    }
    Ok((readings, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hydromesh_proto::{Alarms, MeterId};

    fn batch(meter: u32, n: u64) -> Vec<Reading> {
        (0..n)
            .map(|i| Reading {
                meter: meter.into(),
                ts_ms: 1_000 + i,
                litres: i * 3,
                flow_lph: None,
                alarms: Alarms::empty(),
            })
            .collect()
    }

    /// A whole record (its checksum holds) that names no meter (a store of an earlier version
    /// whose numeric ids ran past 12 digits) stops the store opening; the log is not cut there.
    #[test]
    fn a_whole_record_that_cannot_be_read_refuses_rather_than_cuts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let varint = |mut n: u64| {
            let mut out = Vec::new();
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out
        };
        // Meter `a` is the code 10^12 + 11; 10^12 + 2 would spell `1`, a number: no id's code.
        let a = MeterId::parse("a").expect("id");
        let mut record = chunk::encode_record(&[Reading { meter: a, ..batch(1, 1)[0] }]);
        let (valid, invalid) = (varint(a.code()), varint(a.code() - 9));
        let at = record.windows(valid.len()).position(|w| w == valid.as_slice()).expect("the code");
        record[at..at + valid.len()].copy_from_slice(&invalid);
        let body = record.len() - 4;
        let crc = chunk::crc32(&record[..body]).to_le_bytes();
        record[body..].copy_from_slice(&crc);
        let mut framed = (record.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&record);
        std::fs::write(&path, &framed).expect("write");
        let refused = Wal::open(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(refused.contains("not the code of a meter id"), "{refused}");
        assert_eq!(std::fs::read(&path).expect("read"), framed, "the log is as it was");
    }

    #[test]
    fn records_survive_reopening_and_a_cut_tail_is_dropped_and_written_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, read) = Wal::open(&path).expect("open");
        assert!(read.is_empty());
        wal.append(&batch(1, 3)).expect("append");
        wal.append(&batch(2, 2)).expect("append");
        wal.sync().expect("sync");
        let whole = wal.len();
        drop(wal);
        // A crash in the middle of the next record's write.
        let mut bytes = std::fs::read(&path).expect("read");
        let next = {
            let record = chunk::encode_record(&batch(3, 4));
            let mut framed = (record.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&record);
            framed
        };
        bytes.extend_from_slice(&next[..next.len() - 3]);
        std::fs::write(&path, &bytes).expect("write");
        let (mut wal, read) = Wal::open(&path).expect("reopen");
        assert_eq!(read, [batch(1, 3), batch(2, 2)].concat());
        assert_eq!(wal.len(), whole, "the cut record is gone");
        wal.append(&batch(4, 1)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let (mut wal, read) = Wal::open(&path).expect("reopen");
        assert_eq!(read, [batch(1, 3), batch(2, 2), batch(4, 1)].concat());
        wal.clear().expect("clear");
        drop(wal);
        assert!(Wal::open(&path).expect("reopen").1.is_empty());
    }

    #[test]
    fn a_damaged_record_ends_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.log");
        let (mut wal, _) = Wal::open(&path).expect("open");
        wal.append(&batch(1, 3)).expect("append");
        let first = wal.len() as usize;
        wal.append(&batch(2, 3)).expect("append");
        wal.sync().expect("sync");
        drop(wal);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[first + 6] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(Wal::open(&path).expect("reopen").1, batch(1, 3));
    }
}
