//! What the benchmark drivers of `scripts/bench.sh` share.

use std::path::Path;

use anyhow::Context;

/// Apparent size of a folder and everything in it, as `du -sb` counts it.
pub fn disk_usage(path: &Path) -> anyhow::Result<u64> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("cannot stat {}", path.display()))?;
    let mut total = meta.len();
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            total += disk_usage(&entry?.path())?;
        }
    }
    Ok(total)
}
