//! The store contract shared by the disk and memory stores.

use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

/// Whether a piece may be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retention {
    /// Added by the local user, or part of a file the user fetched: kept until
    /// unpinned, never evicted. Pins survive restarts.
    Pinned,
    /// Fetched for a one-off ask: evicted least-recently-used when the store
    /// needs room.
    Cached,
}

/// How long `put` waits for the piece to be durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Return only once the piece is durable under the store's fsync policy.
    Wait,
    /// Return at once; the piece is readable now and made durable by the next
    /// group commit (within [`crate::disk::BATCH_INTERVAL`]). For cache copies
    /// of fetched pieces, which the swarm can provide again.
    Background,
}

/// Why a store operation failed. Local faults (disk, configuration) are the
/// user's to fix; corrupt data is reported and contained.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Pinned data alone would exceed the store's capacity.
    #[error(
        "store full: {needed} bytes needed, {pinned} of {capacity} bytes are pinned; \
         raise --max-store or unpin data"
    )]
    Full {
        /// Bytes of the piece being added.
        needed: u64,
        /// Bytes pinned now.
        pinned: u64,
        /// The store's capacity.
        capacity: u64,
    },
    /// A stored piece no longer hashes to its name. A cached copy was
    /// deleted; a pinned one was moved to quarantine.
    #[error("stored piece {id} is corrupt ({})", if *quarantined { "moved to quarantine" } else { "deleted" })]
    Corrupt {
        /// The piece.
        id: PieceId,
        /// Whether the file was kept in quarantine (pinned) rather than deleted.
        quarantined: bool,
    },
    /// Another process holds the data directory's lock.
    #[error("data directory {path} is in use by another process (lock held on {lock})")]
    Locked {
        /// The directory.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pieces held.
    pub pieces: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Pinned bytes held.
    pub pinned_bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Cached pieces evicted since open.
    pub evictions: u64,
    /// Pieces found corrupt since open.
    pub corrupt: u64,
}

/// A content-addressed piece store.
///
/// Every method is blocking (disk I/O and hashing): from async code call it
/// through `tokio::task::spawn_blocking` or a dedicated thread, never on an
/// I/O task. Implementations are shared between threads.
pub trait PieceStore: Send + Sync {
    /// Whether the piece is held (a cheap in-memory lookup).
    fn has(&self, id: &PieceId) -> bool;

    /// The piece's bytes, guaranteed to hash to `id`, or `None` if not held.
    ///
    /// A piece found corrupt is removed from service and reported as
    /// [`StoreError::Corrupt`].
    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError>;

    /// Adds a piece (verified by its type). Adding a held piece updates its
    /// retention (a pin wins) and recency.
    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        durability: Durability,
    ) -> Result<(), StoreError>;

    /// Adds several pieces as one group: with the `batch` fsync policy they
    /// share one group commit.
    fn put_many(&self, pieces: Vec<VerifiedPiece>, retention: Retention) -> Result<(), StoreError> {
        for piece in pieces {
            self.put(piece, retention, Durability::Wait)?;
        }
        Ok(())
    }

    /// Pins a held piece. Returns false if it is not held.
    fn pin(&self, id: &PieceId) -> Result<bool, StoreError>;

    /// Unpins a held piece, making it evictable. Returns false if it is not held.
    fn unpin(&self, id: &PieceId) -> Result<bool, StoreError>;

    /// Whether a held piece is pinned.
    fn is_pinned(&self, id: &PieceId) -> bool;

    /// Every piece held, in no particular order.
    fn list(&self) -> Vec<PieceId>;

    /// Counters and gauges.
    fn stats(&self) -> StoreStats;
}
