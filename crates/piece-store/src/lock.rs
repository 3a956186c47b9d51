//! An exclusive lock on a data directory, so two processes never share one,
//! and a probe that tells a tool whether a process holds it.
//!
//! A tool probing the lock ([`DirLock::is_held`]) takes it for an instant;
//! a node starting at that instant retries for [`LOCK_RETRY_FOR`] before
//! reporting the directory in use.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::store::StoreError;

/// Name of the lock file inside a locked directory.
pub const LOCK_FILE: &str = "lock";
/// How long [`DirLock::acquire`] keeps trying a busy lock: far longer than
/// a probe holds it, short enough that a second node fails promptly.
pub const LOCK_RETRY_FOR: Duration = Duration::from_secs(1);
/// Pause between two attempts at a busy lock.
pub const LOCK_RETRY_STEP: Duration = Duration::from_millis(20);

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
    /// Takes the lock on `dir`, retrying a busy lock every
    /// [`LOCK_RETRY_STEP`] for up to [`LOCK_RETRY_FOR`]; then fails with
    /// [`StoreError::Locked`] if another process (or another `DirLock` in
    /// this one) still holds it. Blocks the thread while it retries.
    pub fn acquire(dir: &Path) -> Result<Self, StoreError> {
        Self::acquire_within(dir, LOCK_RETRY_FOR)
    }

    /// Like [`Self::acquire`], retrying for `patience` (`Duration::ZERO`:
    /// one attempt).
    pub fn acquire_within(dir: &Path, patience: Duration) -> Result<Self, StoreError> {
        let path = dir.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        let deadline = Instant::now().checked_add(patience);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file, path }),
                Err(TryLockError::WouldBlock) => {
                    let left = deadline.map_or(LOCK_RETRY_STEP, |d| {
                        d.saturating_duration_since(Instant::now())
                    });
                    if left.is_zero() {
                        return Err(StoreError::Locked {
                            path: dir.to_path_buf(),
                            lock: path,
                        });
                    }
                    std::thread::sleep(left.min(LOCK_RETRY_STEP));
                }
                Err(TryLockError::Error(source)) => {
                    return Err(StoreError::Io {
                        op: "lock",
                        path,
                        source,
                    });
                }
            }
        }
    }

    /// Whether some process holds the lock on `dir` now, without blocking
    /// (used by tools to decide whether files a node left in `dir` are
    /// current). Opens the lock file without following a link (a link or a
    /// non-regular file is an error: someone planted it), takes a shared
    /// lock with `LOCK_NB` and releases it at once, so two probes never see
    /// each other; never creates the lock file (absent: nobody holds it). A
    /// node starting during the probe retries ([`Self::acquire`]).
    pub fn is_held(dir: &Path) -> Result<bool, StoreError> {
        use std::os::unix::fs::{FileTypeExt as _, OpenOptionsExt as _};
        let path = dir.join(LOCK_FILE);
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StoreError::Io {
                    op: "open (a symbolic link, never followed: remove it)",
                    path,
                    source: err,
                });
            }
            Err(source) => {
                return Err(StoreError::Io {
                    op: "open",
                    path,
                    source,
                });
            }
        };
        let kind = file
            .metadata()
            .map_err(StoreError::io("inspect", &path))?
            .file_type();
        if !kind.is_file() || kind.is_fifo() {
            return Err(StoreError::Io {
                op: "inspect (not a regular file: remove it)",
                path,
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        match file.try_lock_shared() {
            Ok(()) => {
                // Released before anything else: a node starting now gets it.
                file.unlock().map_err(StoreError::io("unlock", &path))?;
                Ok(false)
            }
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
            DirLock::acquire_within(dir.path(), Duration::ZERO),
            Err(StoreError::Locked { .. })
        ));
        drop(first);
        assert!(!DirLock::is_held(dir.path()).unwrap());
        let _again = DirLock::acquire_within(dir.path(), Duration::ZERO).unwrap();
    }

    #[test]
    fn a_probe_of_a_free_lock_leaves_it_free() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!DirLock::is_held(dir.path()).unwrap(), "no lock file yet");
        assert!(
            !dir.path().join(LOCK_FILE).exists(),
            "the probe creates nothing"
        );
        drop(DirLock::acquire(dir.path()).unwrap());
        assert!(!DirLock::is_held(dir.path()).unwrap());
        assert!(
            !DirLock::is_held(dir.path()).unwrap(),
            "two probes in a row"
        );
        // Still free: taken at the first attempt.
        let _lock = DirLock::acquire_within(dir.path(), Duration::ZERO).unwrap();
        assert!(DirLock::is_held(dir.path()).unwrap());
    }

    #[test]
    fn a_lock_released_while_a_node_retries_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let holder = DirLock::acquire(dir.path()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(holder);
        });
        let started = Instant::now();
        let lock = DirLock::acquire(dir.path());
        release.join().unwrap();
        assert!(lock.is_ok(), "{lock:?}");
        assert!(started.elapsed() < LOCK_RETRY_FOR);
    }

    #[test]
    fn a_lock_busy_past_the_retry_interval_is_reported_held() {
        let dir = tempfile::tempdir().unwrap();
        let _holder = DirLock::acquire(dir.path()).unwrap();
        let patience = Duration::from_millis(100);
        let started = Instant::now();
        assert!(matches!(
            DirLock::acquire_within(dir.path(), patience),
            Err(StoreError::Locked { .. })
        ));
        assert!(
            started.elapsed() >= patience,
            "retried for the whole interval"
        );
    }
}
