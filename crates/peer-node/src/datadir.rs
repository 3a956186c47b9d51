//! The node's data directory: where it is, who may own it, and the small
//! secret and state files in it (docs/ARCHITECTURE.md §3).
//!
//! The directory holds the API token, so it must belong to the user running
//! the node and be writable by nobody else: [`DataDir::prepare`] creates it
//! mode 0700 and refuses one that fails either rule. Secret and state files
//! are created with `create_new` + mode 0600 + `O_NOFOLLOW` and never
//! chmod-ed afterwards: a file planted before us (or a symlink to one) makes
//! creation fail instead of being written through. Files are read through an
//! `O_NOFOLLOW` descriptor whose own metadata is checked, so the checks and
//! the read are about the same file.

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::TryRng;

/// Name of the API token file inside the data directory.
pub const API_TOKEN_FILE: &str = "api-token";
/// Name of the file holding the API's `host:port` while the API listens.
pub const API_ADDR_FILE: &str = "api-addr";
/// Name of the file holding the peers known at shutdown.
pub const PEERS_FILE: &str = "peers.json";

/// Environment variable that overrides the default data directory.
pub const DATA_DIR_ENV: &str = "P2P_DATA_DIR";
/// Subdirectory of the platform data directory used by default.
const APP_DIR_NAME: &str = "p2p";

/// Random bytes in a fresh API token (rendered as twice as many hex chars).
pub const API_TOKEN_BYTES: usize = 32;
/// Length of an API token in hex chars.
pub const API_TOKEN_HEX_LEN: usize = API_TOKEN_BYTES * 2;

/// Largest state file we read (the token and the API address are far
/// smaller); a larger file is refused as malformed without reading it all.
const MAX_STATE_FILE_BYTES: u64 = 4 << 10;

/// Mode of a created data directory: owner only.
const DIR_MODE: u32 = 0o700;
/// Mode of every secret or state file, required exactly when reading.
const SECRET_MODE: u32 = 0o600;
/// Permission bits that let group or others write.
const GROUP_OTHER_WRITE: u32 = 0o022;
/// Every permission bit (incl. setuid/setgid/sticky), without the file type.
const PERMISSION_BITS: u32 = 0o7777;

/// Why the data directory or one of its files cannot be used. Each message
/// names the path and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// No data directory was given and none can be derived from the
    /// environment.
    #[error(
        "no data directory: neither {DATA_DIR_ENV}, XDG_DATA_HOME nor HOME is set; pass --data-dir DIR or set {DATA_DIR_ENV}"
    )]
    NoDefault,
    /// A filesystem operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "open", "read", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The data directory path exists but is not a directory.
    #[error(
        "data directory {} exists but is not a directory: remove it or choose another --data-dir",
        path.display()
    )]
    NotADirectory {
        /// The path.
        path: PathBuf,
    },
    /// The data directory or a file in it belongs to another user.
    #[error(
        "{} is owned by uid {owner}, but this process runs as uid {euid}: run the node as that user or choose another --data-dir",
        path.display()
    )]
    WrongOwner {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// The effective uid of this process.
        euid: u32,
    },
    /// The data directory is writable by group or others.
    #[error(
        "data directory {} has mode {mode:04o} and is writable by group or others: run `chmod go-w {}` or choose another --data-dir",
        path.display(),
        path.display()
    )]
    WritableByOthers {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret or state file is a symlink; it is never followed.
    #[error(
        "{} is a symbolic link, which is never followed for secret files: remove it and restart the node",
        path.display()
    )]
    Symlink {
        /// The path.
        path: PathBuf,
    },
    /// A secret or state file is not a regular file.
    #[error("{} is not a regular file: remove it and restart the node", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// A secret or state file has another mode than 0600.
    #[error(
        "{} has mode {mode:04o}, but secret files must be exactly 0600: remove it and restart the node (a new one is created)",
        path.display()
    )]
    SecretMode {
        /// The path.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A state file does not hold what it should.
    #[error("{} does not hold {expected}: remove it and restart the node", path.display())]
    Malformed {
        /// The path.
        path: PathBuf,
        /// What the file should hold.
        expected: &'static str,
    },
    /// The operating system's random number generator failed.
    #[error("cannot make a new API token for {}: the OS random source failed: {message}", path.display())]
    Random {
        /// The token file to be written.
        path: PathBuf,
        /// The generator's error.
        message: String,
    },
}

/// A data directory that exists, belongs to this user and is writable by
/// nobody else. Only [`DataDir::prepare`] and [`DataDir::open`] build one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    path: PathBuf,
}

impl DataDir {
    /// Creates `path` (and missing parents) mode 0700 if it is missing, then
    /// checks it as [`DataDir::open`] does.
    pub fn prepare(path: impl AsRef<Path>) -> Result<Self, DataDirError> {
        let path = path.as_ref();
        match DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(path)
        {
            Ok(()) => {}
            // `recursive` tolerates an existing directory; anything else
            // that already exists is reported by the checks below.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(DataDirError::Io {
                    op: "create directory",
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Self::open(path)
    }

    /// Checks an existing data directory without creating anything (for
    /// tools that read what a node left there). A symlink to a directory is
    /// followed: the rules apply to the directory itself.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DataDirError> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|source| DataDirError::Io {
            op: "inspect",
            path: path.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DataDirError::NotADirectory {
                path: path.to_path_buf(),
            });
        }
        check_owner(path, &meta)?;
        let mode = meta.mode() & PERMISSION_BITS;
        if mode & GROUP_OTHER_WRITE != 0 {
            return Err(DataDirError::WritableByOthers {
                path: path.to_path_buf(),
                mode,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the API token file.
    pub fn api_token_path(&self) -> PathBuf {
        self.path.join(API_TOKEN_FILE)
    }

    /// Path of the API address file.
    pub fn api_addr_path(&self) -> PathBuf {
        self.path.join(API_ADDR_FILE)
    }

    /// Path of the saved peer list.
    pub fn peers_path(&self) -> PathBuf {
        self.path.join(PEERS_FILE)
    }

    /// The API token: read from `api-token` if it exists (refused unless it
    /// is a regular file of ours, mode exactly 0600, holding 64 lowercase hex
    /// chars), else a new one from the OS random source written there with
    /// [`write_new_secret`].
    pub fn load_or_create_token(&self) -> Result<String, DataDirError> {
        let path = self.api_token_path();
        if let Some(token) = self.read_token()? {
            return Ok(token);
        }
        let mut bytes = [0u8; API_TOKEN_BYTES];
        rand::rngs::SysRng
            .try_fill_bytes(&mut bytes)
            .map_err(|err| DataDirError::Random {
                path: path.clone(),
                message: err.to_string(),
            })?;
        let token = hex::encode(bytes);
        match write_new_secret(&path, format!("{token}\n").as_bytes()) {
            Ok(()) => Ok(token),
            // Someone created it between our read and our create: theirs
            // wins, so every reader sees one token.
            Err(DataDirError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                self.read_token()?.ok_or(DataDirError::Malformed {
                    path,
                    expected: "an API token",
                })
            }
            Err(err) => Err(err),
        }
    }

    /// The API token if `api-token` exists, with the checks of
    /// [`DataDir::load_or_create_token`]; `None` if it does not exist.
    pub fn read_token(&self) -> Result<Option<String>, DataDirError> {
        let path = self.api_token_path();
        let Some(content) = read_state_file(&path)? else {
            return Ok(None);
        };
        parse_token(&content)
            .map(|token| Some(token.to_owned()))
            .ok_or(DataDirError::Malformed {
                path,
                expected: "an API token (64 lowercase hex chars)",
            })
    }

    /// Records the API's address in `api-addr`, replacing a stale file (a
    /// symlink planted there is removed, never followed).
    pub fn write_api_addr(&self, addr: SocketAddr) -> Result<(), DataDirError> {
        self.remove_api_addr()?;
        write_new_secret(&self.api_addr_path(), format!("{addr}\n").as_bytes())
    }

    /// The address in `api-addr`, with the checks of
    /// [`DataDir::load_or_create_token`]; `None` if the file does not exist.
    /// The file may be stale: trust it only while the node's lock on the
    /// directory is held.
    pub fn read_api_addr(&self) -> Result<Option<SocketAddr>, DataDirError> {
        let path = self.api_addr_path();
        let Some(content) = read_state_file(&path)? else {
            return Ok(None);
        };
        strip_newline(&content)
            .parse()
            .map(Some)
            .map_err(|_| DataDirError::Malformed {
                path,
                expected: "the API address (host:port)",
            })
    }

    /// Removes `api-addr` (at clean shutdown); a missing file is fine.
    pub fn remove_api_addr(&self) -> Result<(), DataDirError> {
        let path = self.api_addr_path();
        // unlink(2) removes a symlink itself, never its target.
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataDirError::Io {
                op: "remove",
                path,
                source,
            }),
        }
    }
}

/// The default data directory: `$P2P_DATA_DIR`, else `$XDG_DATA_HOME/p2p`,
/// else `$HOME/.local/share/p2p`.
pub fn default_path() -> Result<PathBuf, DataDirError> {
    default_path_from(
        std::env::var_os(DATA_DIR_ENV),
        std::env::var_os("XDG_DATA_HOME"),
        std::env::var_os("HOME"),
    )
    .ok_or(DataDirError::NoDefault)
}

/// [`default_path`] over given variable values. Empty values count as unset,
/// and a relative `XDG_DATA_HOME` is ignored, as the XDG spec says.
fn default_path_from(
    p2p_data_dir: Option<OsString>,
    xdg_data_home: Option<OsString>,
    home: Option<OsString>,
) -> Option<PathBuf> {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(p2p_data_dir) {
        return Some(dir);
    }
    if let Some(xdg) = set(xdg_data_home).filter(|p| p.is_absolute()) {
        return Some(xdg.join(APP_DIR_NAME));
    }
    set(home).map(|home| home.join(".local").join("share").join(APP_DIR_NAME))
}

/// Creates `path` holding `bytes`: `create_new` (fails if anything, even a
/// dangling symlink, is there), mode 0600 from the start, `O_NOFOLLOW`, and
/// synced before returning. Never chmod-ed afterwards. A partly written file
/// is removed.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let io_err = |op, source| DataDirError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(SECRET_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| io_err("create", source))?;
    if let Err(source) = file.write_all(bytes).and_then(|()| file.sync_all()) {
        drop(file);
        // Best effort: the write error is what the user needs to see.
        let _ = std::fs::remove_file(path);
        return Err(io_err("write", source));
    }
    Ok(())
}

/// Reads a small secret or state file through an `O_NOFOLLOW` descriptor,
/// refusing anything but a regular file of ours with mode exactly 0600.
/// `None` if it does not exist.
fn read_state_file(path: &Path) -> Result<Option<String>, DataDirError> {
    let file = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO planted here must not hang the node;
        // it is refused below as not a regular file.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(DataDirError::Symlink {
                path: path.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(DataDirError::Io {
                op: "open",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let meta = file.metadata().map_err(|source| DataDirError::Io {
        op: "inspect",
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(DataDirError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    check_owner(path, &meta)?;
    let mode = meta.mode() & PERMISSION_BITS;
    if mode != SECRET_MODE {
        return Err(DataDirError::SecretMode {
            path: path.to_path_buf(),
            mode,
        });
    }
    let malformed = || DataDirError::Malformed {
        path: path.to_path_buf(),
        expected: "a short UTF-8 text",
    };
    if meta.len() > MAX_STATE_FILE_BYTES {
        return Err(malformed());
    }
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| DataDirError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
    String::from_utf8(bytes).map(Some).map_err(|_| malformed())
}

/// Refuses metadata of a file or directory not owned by our effective uid.
fn check_owner(path: &Path, meta: &std::fs::Metadata) -> Result<(), DataDirError> {
    let euid = rustix::process::geteuid().as_raw();
    if meta.uid() == euid {
        Ok(())
    } else {
        Err(DataDirError::WrongOwner {
            path: path.to_path_buf(),
            owner: meta.uid(),
            euid,
        })
    }
}

/// The content without one trailing newline.
fn strip_newline(content: &str) -> &str {
    content.strip_suffix('\n').unwrap_or(content)
}

/// The token in a token file's content: exactly 64 lowercase hex chars and
/// an optional trailing newline.
fn parse_token(content: &str) -> Option<&str> {
    let token = strip_newline(content);
    let well_formed = token.len() == API_TOKEN_HEX_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    well_formed.then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & PERMISSION_BITS
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn prepared() -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::prepare(tmp.path().join("data")).unwrap();
        (tmp, dir)
    }

    #[test]
    fn prepare_creates_missing_dir_and_parents_mode_0700() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a").join("b").join("data");
        let dir = DataDir::prepare(&path).unwrap();
        assert_eq!(dir.path(), path);
        assert_eq!(mode_of(&path), 0o700);
        assert_eq!(mode_of(&tmp.path().join("a")), 0o700);
    }

    #[test]
    fn prepare_accepts_existing_private_dir() {
        let (_tmp, dir) = prepared();
        let again = DataDir::prepare(dir.path()).unwrap();
        assert_eq!(again, dir);
    }

    #[test]
    fn prepare_refuses_dir_writable_by_others() {
        let (_tmp, dir) = prepared();
        set_mode(dir.path(), 0o777);
        let err = DataDir::prepare(dir.path()).unwrap_err();
        assert!(
            matches!(err, DataDirError::WritableByOthers { mode: 0o777, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
        assert!(msg.contains("chmod go-w"), "{msg}");
    }

    #[test]
    fn prepare_refuses_group_writable_dir() {
        let (_tmp, dir) = prepared();
        set_mode(dir.path(), 0o720);
        assert!(matches!(
            DataDir::prepare(dir.path()),
            Err(DataDirError::WritableByOthers { .. })
        ));
    }

    #[test]
    fn prepare_accepts_dir_readable_by_others() {
        let (_tmp, dir) = prepared();
        set_mode(dir.path(), 0o755);
        DataDir::prepare(dir.path()).unwrap();
    }

    #[test]
    fn prepare_refuses_a_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("file");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            DataDir::prepare(&path),
            Err(DataDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn prepare_refuses_dir_owned_by_another_user() {
        let (_tmp, dir) = prepared();
        const NOBODY: u32 = 65534;
        if std::os::unix::fs::chown(dir.path(), Some(NOBODY), None).is_err() {
            // Not root: cannot give the directory away, so nothing to test.
            return;
        }
        let err = DataDir::prepare(dir.path()).unwrap_err();
        assert!(
            matches!(err, DataDirError::WrongOwner { owner: NOBODY, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn token_is_created_0600_and_reused() {
        let (_tmp, dir) = prepared();
        let token = dir.load_or_create_token().unwrap();
        assert_eq!(parse_token(&token), Some(token.as_str()));
        assert_eq!(mode_of(&dir.api_token_path()), 0o600);
        assert_eq!(dir.load_or_create_token().unwrap(), token);
        assert_eq!(dir.read_token().unwrap(), Some(token));
    }

    #[test]
    fn tokens_differ_between_dirs() {
        let (_tmp1, a) = prepared();
        let (_tmp2, b) = prepared();
        assert_ne!(
            a.load_or_create_token().unwrap(),
            b.load_or_create_token().unwrap()
        );
    }

    #[test]
    fn token_symlink_is_refused_and_target_untouched() {
        let (tmp, dir) = prepared();
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, "0".repeat(API_TOKEN_HEX_LEN)).unwrap();
        set_mode(&target, 0o600);
        symlink(&target, dir.api_token_path()).unwrap();
        let err = dir.load_or_create_token().unwrap_err();
        assert!(matches!(err, DataDirError::Symlink { .. }), "{err:?}");
        assert_eq!(
            std::fs::read_to_string(&target).unwrap(),
            "0".repeat(API_TOKEN_HEX_LEN)
        );
    }

    #[test]
    fn dangling_token_symlink_is_refused_not_created_through() {
        let (tmp, dir) = prepared();
        let target = tmp.path().join("created-through-link");
        symlink(&target, dir.api_token_path()).unwrap();
        assert!(dir.load_or_create_token().is_err());
        assert!(!target.exists());
    }

    #[test]
    fn token_with_mode_0644_is_refused() {
        let (_tmp, dir) = prepared();
        let token = dir.load_or_create_token().unwrap();
        set_mode(&dir.api_token_path(), 0o644);
        let err = dir.load_or_create_token().unwrap_err();
        assert!(
            matches!(err, DataDirError::SecretMode { mode: 0o644, .. }),
            "{err:?}"
        );
        // Not silently replaced either.
        set_mode(&dir.api_token_path(), 0o600);
        assert_eq!(dir.load_or_create_token().unwrap(), token);
    }

    #[test]
    fn token_with_mode_0400_is_refused() {
        let (_tmp, dir) = prepared();
        dir.load_or_create_token().unwrap();
        set_mode(&dir.api_token_path(), 0o400);
        assert!(matches!(
            dir.load_or_create_token(),
            Err(DataDirError::SecretMode { mode: 0o400, .. })
        ));
    }

    #[test]
    fn token_directory_is_refused() {
        let (_tmp, dir) = prepared();
        std::fs::create_dir(dir.api_token_path()).unwrap();
        assert!(matches!(
            dir.load_or_create_token(),
            Err(DataDirError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn token_fifo_is_refused_without_hanging() {
        let (_tmp, dir) = prepared();
        rustix::fs::mkfifoat(
            rustix::fs::CWD,
            dir.api_token_path(),
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            dir.load_or_create_token(),
            Err(DataDirError::NotRegularFile { .. })
        ));
    }

    #[test]
    fn token_owned_by_another_user_is_refused() {
        let (_tmp, dir) = prepared();
        dir.load_or_create_token().unwrap();
        if std::os::unix::fs::chown(dir.api_token_path(), Some(65534), None).is_err() {
            return;
        }
        assert!(matches!(
            dir.load_or_create_token(),
            Err(DataDirError::WrongOwner { owner: 65534, .. })
        ));
    }

    #[test]
    fn malformed_token_is_refused() {
        for content in [
            String::new(),
            "abc".to_owned(),
            "A".repeat(API_TOKEN_HEX_LEN),
            "g".repeat(API_TOKEN_HEX_LEN),
            "0".repeat(API_TOKEN_HEX_LEN + 1),
            format!("{}\n\n", "0".repeat(API_TOKEN_HEX_LEN)),
            format!(" {}", "0".repeat(API_TOKEN_HEX_LEN - 1)),
        ] {
            let (_tmp, dir) = prepared();
            write_new_secret(&dir.api_token_path(), content.as_bytes()).unwrap();
            assert!(
                matches!(
                    dir.load_or_create_token(),
                    Err(DataDirError::Malformed { .. })
                ),
                "{content:?}"
            );
        }
    }

    #[test]
    fn token_without_newline_is_accepted() {
        let (_tmp, dir) = prepared();
        let token = "ab".repeat(API_TOKEN_BYTES);
        write_new_secret(&dir.api_token_path(), token.as_bytes()).unwrap();
        assert_eq!(dir.load_or_create_token().unwrap(), token);
    }

    #[test]
    fn write_new_secret_is_0600_and_never_overwrites() {
        let (_tmp, dir) = prepared();
        let path = dir.path().join("secret");
        write_new_secret(&path, b"one").unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let err = write_new_secret(&path, b"two").unwrap_err();
        assert!(
            matches!(&err, DataDirError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{err:?}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
    }

    #[test]
    fn api_addr_round_trips_and_is_removed() {
        let (_tmp, dir) = prepared();
        assert_eq!(dir.read_api_addr().unwrap(), None);
        let v4: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        let v6: SocketAddr = "[::1]:7071".parse().unwrap();
        dir.write_api_addr(v4).unwrap();
        assert_eq!(mode_of(&dir.api_addr_path()), 0o600);
        assert_eq!(dir.read_api_addr().unwrap(), Some(v4));
        // A stale file from a crash is replaced.
        dir.write_api_addr(v6).unwrap();
        assert_eq!(dir.read_api_addr().unwrap(), Some(v6));
        assert_eq!(
            std::fs::read_to_string(dir.api_addr_path()).unwrap(),
            "[::1]:7071\n"
        );
        dir.remove_api_addr().unwrap();
        assert!(!dir.api_addr_path().exists());
        dir.remove_api_addr().unwrap();
    }

    #[test]
    fn api_addr_symlink_is_removed_not_followed() {
        let (tmp, dir) = prepared();
        let target = tmp.path().join("victim");
        std::fs::write(&target, b"precious").unwrap();
        symlink(&target, dir.api_addr_path()).unwrap();
        let addr: SocketAddr = "127.0.0.1:7070".parse().unwrap();
        dir.write_api_addr(addr).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(dir.api_addr_path()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(dir.read_api_addr().unwrap(), Some(addr));

        symlink(&target, dir.path().join("link2")).unwrap();
        std::fs::rename(dir.path().join("link2"), dir.api_addr_path()).unwrap();
        dir.remove_api_addr().unwrap();
        assert!(target.exists());
    }

    #[test]
    fn api_addr_symlink_is_refused_when_read() {
        let (tmp, dir) = prepared();
        let target = tmp.path().join("victim");
        std::fs::write(&target, b"127.0.0.1:1").unwrap();
        set_mode(&target, 0o600);
        symlink(&target, dir.api_addr_path()).unwrap();
        assert!(matches!(
            dir.read_api_addr(),
            Err(DataDirError::Symlink { .. })
        ));
    }

    #[test]
    fn malformed_api_addr_is_refused() {
        let (_tmp, dir) = prepared();
        write_new_secret(&dir.api_addr_path(), b"localhost:7070\n").unwrap();
        assert!(matches!(
            dir.read_api_addr(),
            Err(DataDirError::Malformed { .. })
        ));
    }

    #[test]
    fn oversized_state_file_is_refused() {
        let (_tmp, dir) = prepared();
        let big = vec![b'0'; usize::try_from(MAX_STATE_FILE_BYTES).unwrap() + 1];
        write_new_secret(&dir.api_token_path(), &big).unwrap();
        assert!(matches!(
            dir.read_token(),
            Err(DataDirError::Malformed { .. })
        ));
    }

    #[test]
    fn a_state_file_is_read_up_to_the_size_limit_and_refused_one_byte_over() {
        let (_tmp, dir) = prepared();
        let limit = usize::try_from(MAX_STATE_FILE_BYTES).unwrap();
        let at_limit = dir.path().join("at-limit");
        write_new_secret(&at_limit, "a".repeat(limit).as_bytes()).unwrap();
        let read = read_state_file(&at_limit).unwrap().unwrap();
        assert_eq!(read.len(), limit, "read whole");
        let over = dir.path().join("over");
        write_new_secret(&over, "a".repeat(limit + 1).as_bytes()).unwrap();
        let err = read_state_file(&over).unwrap_err();
        assert!(
            matches!(&err, DataDirError::Malformed { path, .. } if *path == over),
            "{err:?}"
        );
    }

    #[test]
    fn file_paths_use_the_named_files() {
        let (_tmp, dir) = prepared();
        assert_eq!(dir.api_token_path(), dir.path().join("api-token"));
        assert_eq!(dir.api_addr_path(), dir.path().join("api-addr"));
        assert_eq!(dir.peers_path(), dir.path().join("peers.json"));
    }

    #[test]
    fn default_path_order() {
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            default_path_from(os("/d"), os("/x"), os("/h")),
            Some(PathBuf::from("/d"))
        );
        assert_eq!(
            default_path_from(None, os("/x"), os("/h")),
            Some(PathBuf::from("/x/p2p"))
        );
        assert_eq!(
            default_path_from(os(""), os(""), os("/h")),
            Some(PathBuf::from("/h/.local/share/p2p"))
        );
        // A relative XDG_DATA_HOME is invalid per the XDG spec.
        assert_eq!(
            default_path_from(None, os("rel"), os("/h")),
            Some(PathBuf::from("/h/.local/share/p2p"))
        );
        assert_eq!(default_path_from(None, None, None), None);
    }

    #[test]
    fn errors_name_the_path_and_a_remedy() {
        let path = PathBuf::from("/some/where/api-token");
        let errors = [
            DataDirError::Symlink { path: path.clone() },
            DataDirError::NotRegularFile { path: path.clone() },
            DataDirError::SecretMode {
                path: path.clone(),
                mode: 0o644,
            },
            DataDirError::Malformed {
                path: path.clone(),
                expected: "an API token",
            },
        ];
        for err in errors {
            let msg = err.to_string();
            assert!(msg.contains("/some/where/api-token"), "{msg}");
            assert!(msg.contains("remove it"), "{msg}");
        }
        assert!(DataDirError::NoDefault.to_string().contains("--data-dir"));
    }
}
