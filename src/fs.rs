//! Files written so that a reader, a second writer, or a run killed at any moment never sees half of one; and
//! the lock that keeps two runs out of one output folder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `bytes` to a temporary file beside `path` whose name no other write shares (process id and a
/// counter), flushes it to disk, renames it over `path`, then flushes the folder so the rename itself
/// survives a crash. On failure the temporary file is removed. The error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot write {}: not a file name", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{}.{}{TEMPORARY_SUFFIX}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(&parent(path))
    })();
    written.map_err(|e| {
        std::fs::remove_file(&tmp).ok();
        io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display()))
    })
}

/// How `write_atomic`'s temporary files end: `.<name>.<pid>.<counter>.tmp`.
const TEMPORARY_SUFFIX: &str = ".tmp";

/// The process that made `file_name` if it is one of `write_atomic`'s temporary files.
fn temporary_file_owner(file_name: &str) -> Option<u32> {
    let stem = file_name
        .strip_prefix('.')?
        .strip_suffix(TEMPORARY_SUFFIX)?;
    let mut parts = stem.rsplitn(3, '.');
    let (counter, pid, name) = (parts.next()?, parts.next()?, parts.next()?);
    let is_counter = !counter.is_empty() && counter.bytes().all(|b| b.is_ascii_digit());
    if !is_counter || name.is_empty() {
        return None;
    }
    pid.parse().ok()
}

/// Whether process `pid` is running. Where that cannot be told (no `/proc`), every process counts as running,
/// so nothing of a live one is ever taken for stale.
fn process_is_running(pid: u32) -> bool {
    let proc = Path::new("/proc");
    pid == std::process::id() || !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// Removes the temporary files in `dir` that `write_atomic` calls of processes no longer running left when
/// they were killed mid-write (a live process's may still be renamed into place, and are kept); returns them.
pub(crate) fn remove_stale_temporaries(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let named = |e: io::Error, what: &Path| {
        io::Error::new(e.kind(), format!("cannot clean {}: {e}", what.display()))
    };
    for entry in std::fs::read_dir(dir).map_err(|e| named(e, dir))? {
        let path = entry.map_err(|e| named(e, dir))?.path();
        let owner = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(temporary_file_owner);
        if owner.is_some_and(|pid| !process_is_running(pid)) && path.is_file() {
            std::fs::remove_file(&path).map_err(|e| named(e, &path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The folder `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a folder's entries (a rename into it) durable. Only Unix can open a folder to sync it.
fn sync_dir(dir: &Path) -> io::Result<()> {
    if cfg!(unix) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// An exclusive hold on a run's output folder, released when dropped or when the process ends in any way
/// (the operating system drops the lock of a killed process, so a stale lock file is simply taken over).
#[derive(Debug)]
pub(crate) struct FolderLock {
    _file: File,
}

/// The lock file inside a locked folder.
pub(crate) const LOCK_FILE: &str = ".hourglass.lock";

impl FolderLock {
    /// Takes the folder `dir` (which must exist), or fails naming it and the process that holds it.
    pub(crate) fn acquire(dir: &Path) -> io::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).ok();
                let holder = match holder.trim() {
                    "" => String::new(),
                    pid => format!(" (process {pid})"),
                };
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another running hourglass{holder}: wait for it to finish, or \
                         choose another --out",
                        dir.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot lock {}: {e}", path.display()),
                ))
            }
        }
        // Who holds it, for the message a second run prints.
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn a_folder_lock_refuses_a_second_holder_until_released_and_a_stale_lock_is_taken_over() {
        let scratch = TempDir::new("fs-lock");
        let dir = scratch.path();
        // A lock file left by a killed run (the OS dropped its lock; the pid inside is stale).
        std::fs::write(dir.join(LOCK_FILE), "999999999").unwrap();
        let first = FolderLock::acquire(dir).unwrap();
        let err = FolderLock::acquire(dir).unwrap_err().to_string();
        assert!(
            err.contains(dir.to_str().unwrap())
                && err.contains("in use")
                && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        drop(first);
        FolderLock::acquire(dir).unwrap();
    }

    #[test]
    fn stale_temporary_files_of_dead_writers_are_removed_and_a_live_one_s_kept() {
        let scratch = TempDir::new("fs-stale-tmp");
        let dir = scratch.path();
        let dead = dir.join(".checkpoint.safetensors.999999999.3.tmp");
        let live = dir.join(format!(".history.csv.{}.0.tmp", std::process::id()));
        let others = [
            dir.join("checkpoint.safetensors"),
            dir.join(".notes.tmp"),
            dir.join(".a.b.x.tmp"),
        ];
        for file in others.iter().chain([&dead, &live]) {
            std::fs::write(file, b"x").unwrap();
        }
        let removed = remove_stale_temporaries(dir).unwrap();
        assert_eq!(removed, std::slice::from_ref(&dead));
        assert!(!dead.exists());
        for kept in others.iter().chain([&live]) {
            assert!(kept.exists(), "{} was removed", kept.display());
        }
    }
}
