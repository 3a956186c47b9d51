//! What the user chooses when opening a disk store: the fsync policy, the
//! capacity, read verification, and the group-commit bounds.
//!
//! Uses nothing else of the crate.

use std::str::FromStr;
use std::time::Duration;

/// Longest time a background write waits for its group commit under the
/// `batch` policy.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of background writes allowed to wait for a group commit; past this a
/// background `put` commits at once like a waiting one. Worst case memory held
/// for pending pieces: this plus the pieces of concurrent waiting puts.
pub const BATCH_MAX_PENDING_BYTES: u64 = 64 << 20;

/// When the store forces written data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FsyncPolicy {
    /// fsync each piece and its directory before `put` returns.
    Always,
    /// Group pieces: fsync the group's files, rename them, fsync the
    /// directories; at most [`BATCH_INTERVAL`] after a background write and
    /// always before a waiting `put` returns.
    #[default]
    Batch,
    /// Never fsync: no crash promise, verification catches torn pieces.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown fsync policy {other:?}: use always, batch or never"
            )),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Batch => "batch",
            Self::Never => "never",
        })
    }
}

/// How to open a [`DiskStore`](crate::disk::DiskStore).
#[derive(Debug, Clone)]
pub struct DiskStoreConfig {
    /// Largest number of piece bytes held; cached pieces are evicted to stay under it.
    pub capacity: u64,
    /// When data is forced to disk.
    pub fsync: FsyncPolicy,
    /// Hash every piece on every read, not only the first after open.
    pub verify_on_read: bool,
}

impl DiskStoreConfig {
    /// The defaults (`batch`, verify on first read) at `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            fsync: FsyncPolicy::Batch,
            verify_on_read: false,
        }
    }
}
