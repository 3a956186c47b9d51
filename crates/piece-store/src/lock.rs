//! An exclusive lock on a data directory, so two processes never share one.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::store::StoreError;

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = "lock";

/// Holds an exclusive advisory lock (`flock`) on `DIR/lock` until dropped.
///
/// The OS releases the lock when the process dies, so a crash never leaves a
/// directory locked; a lock file without a holder means nothing.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock on `dir`, failing at once with [`StoreError::Locked`]
    /// if another process (or another `DirLock` in this one) holds it.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
                path: dir.to_path_buf(),
                lock: path,
            }),
            Err(TryLockError::Error(source)) => Err(StoreError::Io {
                op: "lock",
                path,
                source,
            }),
        }
    }

    /// Whether some process holds the lock on `dir` now (used by tools to
    /// decide whether files a node left in `dir` are current).
    pub fn is_held(dir: &Path) -> Result<bool, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(StoreError::Io {
                    op: "open",
                    path,
                    source,
                });
            }
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(false),
            Err(TryLockError::WouldBlock) => Ok(true),
            Err(TryLockError::Error(source)) => Err(StoreError::Io {
                op: "lock",
                path,
                source,
            }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).map_err(StoreError::io("open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_opener_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        assert!(DirLock::is_held(dir.path()).unwrap());
        assert!(matches!(
            DirLock::acquire(dir.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        assert!(!DirLock::is_held(dir.path()).unwrap());
        let _again = DirLock::acquire(dir.path()).unwrap();
    }
}
