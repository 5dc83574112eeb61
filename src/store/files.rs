//! Files written durably: what the write-ahead log, the segments, the meter index and the
//! ingest writer's saved state share.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::StoreError;

/// Makes a file's creation durable (its directory entry).
pub fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| StoreError::Io { path: parent.to_path_buf(), source })
}

/// Writes `bytes` to a new file at `path`, durably.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.to_path_buf(), source };
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(path).map_err(io)?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
    sync_parent(path)
}

/// Replaces the file at `path` with `bytes`, whole or not at all: written to a file beside it,
/// made durable, then renamed over it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomically_with(path, |file| file.write_all(bytes))
}

/// [`write_atomically`], with the bytes written by `write` (through a buffer): a large file
/// is never held whole in memory.
pub fn write_atomically_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let io = |source| StoreError::Io { path: tmp.clone(), source };
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io)?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, file);
    write(&mut buffered).map_err(io)?;
    let file = buffered.into_inner().map_err(|error| io(error.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?;
    sync_parent(path)
}
