//! Files written so that a reader, or a run killed at any moment, never sees half of one.

use std::io;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` + ".tmp", then renames that over `path`; on failure the temporary file is removed.
/// The error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            std::fs::remove_file(&tmp).ok();
            io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
        })
}
