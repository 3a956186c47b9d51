//! Small state files written atomically and read with a size bound (a node's
//! peer list, a bootstrap server's registry), and the one directory fsync
//! every durable rename in the workspace goes through.
//!
//! [`write()`] never leaves a torn file: the bytes go to a fresh temp file in
//! the same directory (unpredictable name, `create_new`, mode 0600,
//! `O_NOFOLLOW`), which is fsynced, renamed over the target and made durable
//! by fsyncing the directory. [`read()`] never follows a symlink and never
//! holds more than its caller's bound. Unix semantics; uses only std and libc.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Mode of every file [`write()`] creates: readable and writable by the owner only.
pub const STATE_FILE_MODE: u32 = 0o600;

/// The step of [`write()`] or [`read()`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Creating the temp file next to the target.
    CreateTemp,
    /// Writing the bytes to the temp file.
    Write,
    /// fsyncing the temp file.
    SyncFile,
    /// Renaming the temp file over the target.
    Rename,
    /// fsyncing the directory after the rename.
    SyncDir,
    /// Opening the file to read it.
    Open,
    /// Reading the file's metadata.
    Inspect,
    /// Reading the file's bytes.
    Read,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateTemp => "create temp file",
            Self::Write => "write",
            Self::SyncFile => "fsync",
            Self::Rename => "rename into place",
            Self::SyncDir => "fsync directory",
            Self::Open => "open",
            Self::Inspect => "inspect",
            Self::Read => "read",
        })
    }
}

/// Why writing or reading a state file failed. Every variant names the path;
/// all are local faults (disk, permissions, a file tampered with).
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    /// A filesystem step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// Which step.
        step: Step,
        /// On which path (the temp file for the steps before the rename).
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The path has no file name (`/`, `..`), so there is nothing to replace.
    #[error("{path} does not name a file")]
    NotAFileName {
        /// The path given.
        path: PathBuf,
    },
    /// The file is a symbolic link; it is never followed.
    #[error("{path} is a symbolic link, refusing to follow it")]
    Symlink {
        /// The link.
        path: PathBuf,
    },
    /// The file is not a regular file (a directory, a FIFO, a device).
    #[error("{path} is not a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than the caller's bound; it was not read whole.
    #[error("{path} is larger than {max_bytes} bytes")]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The bound given to [`read()`].
        max_bytes: u64,
    },
}

impl StateFileError {
    fn io(step: Step, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { step, path, source }
    }

    /// The step that failed, for the filesystem errors.
    pub fn step(&self) -> Option<Step> {
        match self {
            Self::Io { step, .. } => Some(*step),
            _ => None,
        }
    }
}

/// Replaces `path` with `bytes` atomically and durably: after a crash the
/// file holds either its old content or `bytes`, never a mix. A symlink at
/// `path` is replaced, not followed. On error no temp file is left behind
/// and `path` is unchanged (unless only the final directory fsync failed:
/// then the new content is in place but may not survive a crash).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let Some(name) = path.file_name() else {
        return Err(StateFileError::NotAFileName {
            path: path.to_path_buf(),
        });
    };
    // A dot file with a random suffix: unpredictable, so nobody can plant a
    // link there in advance, and `create_new` refuses one planted anyway.
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{:016x}.tmp", rand::random::<u64>()));
    write_via(path, &parent_dir(path).join(tmp_name), bytes)
}

/// [`write()`] through the temp file `tmp`, which must be in `path`'s directory.
fn write_via(path: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), StateFileError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(STATE_FILE_MODE).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options
        .open(tmp)
        .map_err(StateFileError::io(Step::CreateTemp, tmp))?;
    let placed = file
        .write_all(bytes)
        .map_err(StateFileError::io(Step::Write, tmp))
        .and_then(|()| {
            file.sync_all()
                .map_err(StateFileError::io(Step::SyncFile, tmp))
        })
        .and_then(|()| fs::rename(tmp, path).map_err(StateFileError::io(Step::Rename, path)));
    drop(file);
    if let Err(err) = placed {
        // Best effort: the step that failed is what the caller needs to see.
        let _ = fs::remove_file(tmp);
        return Err(err);
    }
    let dir = parent_dir(path);
    sync_dir(dir).map_err(StateFileError::io(Step::SyncDir, dir))
}

/// Reads `path` whole if it holds at most `max_bytes`; `Ok(None)` if it does
/// not exist. Refuses a symlink (never followed), anything but a regular
/// file, and a file over the bound, without reading more than
/// `max_bytes + 1` bytes even if the file grows meanwhile.
pub fn read(path: &Path, max_bytes: u64) -> Result<Option<Vec<u8>>, StateFileError> {
    let mut options = OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // O_NONBLOCK: opening a FIFO planted here must not hang; it is
        // refused below as not a regular file.
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = match options.open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        #[cfg(unix)]
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StateFileError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Err(err) => return Err(StateFileError::io(Step::Open, path)(err)),
    };
    let meta = file
        .metadata()
        .map_err(StateFileError::io(Step::Inspect, path))?;
    if !meta.is_file() {
        return Err(StateFileError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = || StateFileError::TooLarge {
        path: path.to_path_buf(),
        max_bytes,
    };
    if meta.len() > max_bytes {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(StateFileError::io(Step::Read, path))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large());
    }
    Ok(Some(bytes))
}

/// fsyncs the directory `dir`, making the renames and creations in it
/// durable. The one copy for the workspace: map the error to your own type.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir).and_then(|dir| dir.sync_all())
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    /// Files in `dir` other than `keep`.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| !keep.contains(&name.as_str()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_written_file_reads_back_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        assert_eq!(read(&path, 100).unwrap(), None);
        write(&path, b"first").unwrap();
        assert_eq!(read(&path, 100).unwrap().as_deref(), Some(&b"first"[..]));
        write(&path, b"second, longer").unwrap();
        assert_eq!(
            read(&path, 100).unwrap().as_deref(),
            Some(&b"second, longer"[..])
        );
        write(&path, b"").unwrap();
        assert_eq!(read(&path, 100).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(others(dir.path(), &["peers.json"]), Vec::<String>::new());
    }

    #[test]
    fn a_written_file_has_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, b"x").unwrap();
        let mode = fs::symlink_metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, STATE_FILE_MODE);
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"precious").unwrap();
        let path = dir.path().join("state");
        symlink(&target, &path).unwrap();

        assert!(matches!(
            read(&path, 100),
            Err(StateFileError::Symlink { .. })
        ));
        write(&path, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert!(fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(read(&path, 100).unwrap().as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn a_symlink_planted_at_the_temp_name_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"precious").unwrap();
        let dangling = dir.path().join("nowhere");
        let path = dir.path().join("state");
        for (tmp, points_to) in [(".state.a.tmp", &target), (".state.b.tmp", &dangling)] {
            let tmp = dir.path().join(tmp);
            symlink(points_to, &tmp).unwrap();
            let err = write_via(&path, &tmp, b"new").unwrap_err();
            assert_eq!(err.step(), Some(Step::CreateTemp), "{err}");
            // Neither the link nor what it points to was touched or removed.
            assert!(fs::symlink_metadata(&tmp).unwrap().is_symlink());
        }
        assert_eq!(fs::read(&target).unwrap(), b"precious");
        assert!(!dangling.exists());
        assert!(!path.exists());
    }

    #[test]
    fn a_file_of_exactly_the_bound_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let max = 64;
        let at_max = vec![7u8; 64];
        write(&path, &at_max).unwrap();
        assert_eq!(read(&path, max).unwrap(), Some(at_max));
        write(&path, &[7u8; 65]).unwrap();
        assert!(matches!(
            read(&path, max),
            Err(StateFileError::TooLarge { max_bytes: 64, .. })
        ));
    }

    #[test]
    fn a_directory_is_not_read_as_a_state_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read(dir.path(), 100),
            Err(StateFileError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_names_its_step() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory at the target: the rename over it fails.
        let path = dir.path().join("state");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        let err = write(&path, b"new").unwrap_err();
        assert_eq!(err.step(), Some(Step::Rename), "{err}");
        assert_eq!(others(dir.path(), &["state"]), Vec::<String>::new());
        assert_eq!(others(&path, &[]), vec!["inside".to_owned()]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        assert!(matches!(
            write(Path::new("/"), b"x"),
            Err(StateFileError::NotAFileName { .. })
        ));
    }

    #[test]
    fn sync_dir_syncs_a_directory_and_reports_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        sync_dir(dir.path()).unwrap();
        let missing = sync_dir(&dir.path().join("missing")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
