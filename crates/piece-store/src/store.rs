//! The store contract shared by the disk and memory stores: pieces, the
//! pinned roots that keep them, `gc`, and the listing a user sees.
//!
//! Uses the manifest format (to name pinned files in [`PieceStore::listing`]).

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use crate::manifest::{Layout, Level, Manifest};

/// Most roots a store keeps pinned. Bounds the roots index on disk and the
/// reach of pinned files in memory (see `reach` for the worst case).
pub const ROOTS_MAX: usize = 1 << 16;

/// What a user pins: a piece is kept while a pinned root reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Root {
    /// A file, by its root manifest: reaches the manifest, every part
    /// manifest and every data piece of its tree, including those the store
    /// does not hold yet (they are protected the moment they arrive).
    File(PieceId),
    /// A loose piece: reaches only itself.
    Piece(PieceId),
}

impl Root {
    /// The piece the root is named by (the manifest of a file).
    pub fn id(&self) -> PieceId {
        match self {
            Root::File(id) | Root::Piece(id) => *id,
        }
    }
}

/// How a new piece is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retention {
    /// A loose root: the piece is pinned by itself ([`Root::Piece`]), as a
    /// piece the local user uploads alone. Kept until that root is unpinned
    /// (and no other root reaches it); the pin survives restarts. Pieces of a
    /// file are not put this way: they are reached from the file's root.
    Pinned,
    /// Kept only while some pinned root (or hold) reaches it; otherwise
    /// evicted least-recently-used when the store needs room, or by
    /// [`PieceStore::gc`]. For pieces fetched for one-off asks, and for the
    /// pieces of a file whose root is (or is about to be) pinned.
    Cached,
}

/// What [`PieceStore::gc`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Pieces removed.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A pinned file as [`PieceStore::listing`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    /// The file's root manifest.
    pub manifest: PieceId,
    /// Its name, read from the manifest; `None` while the manifest is not
    /// held (a fetch just started) or does not parse.
    pub name: Option<String>,
    /// Its size in bytes, read from the manifest, when known.
    pub size: Option<u64>,
}

/// A pinned loose piece as [`PieceStore::listing`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedPiece {
    /// The piece.
    pub id: PieceId,
    /// Its size, or `None` if the store does not hold it.
    pub size: Option<u64>,
}

/// What a store keeps for its user: pinned roots, bytes used and capacity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreListing {
    /// Pinned files, by manifest id.
    pub files: Vec<PinnedFile>,
    /// Pinned loose pieces, by id.
    pub pieces: Vec<PinnedPiece>,
    /// Bytes of every piece held (pinned, reached and cached).
    pub bytes_used: u64,
    /// The store's capacity.
    pub capacity: u64,
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
    /// Pinning one more root would exceed [`ROOTS_MAX`].
    #[error("too many pins: at most {max} files and loose pieces can be pinned; unpin some first")]
    TooManyRoots {
        /// The bound, [`ROOTS_MAX`].
        max: usize,
    },
    /// The store's roots index cannot be read: refusing to open rather than
    /// forget a pin (which could let pinned pieces be evicted).
    #[error("roots index {path} is unreadable: {reason}; fix or remove it to open the store")]
    BadRootsIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store's extents index cannot be read: refusing to open rather
    /// than guess.
    #[error("extents index {path} is unreadable: {reason}; fix or remove it to open the store")]
    BadExtentsIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Indexing more pieces as ranges of files would pass a bound of the
    /// extents index.
    #[error("cannot serve more pieces from files: {reason}")]
    ExtentsFull {
        /// Which bound, or what is wrong with the request.
        reason: String,
    },
    /// An extent the index cannot take: a relative or too long path, a
    /// length no piece has, too many in one call.
    #[error("extent refused: {reason}")]
    BadExtent {
        /// What is wrong with it.
        reason: String,
    },
    /// This store keeps no extents.
    #[error("this store cannot serve pieces from files")]
    Unsupported,
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
    /// Whether the store is out of room: its capacity is pinned ([`Full`]),
    /// or the disk (or the user's quota) has no space left. Both are the
    /// user's to fix by freeing space; neither damaged what is stored.
    ///
    /// [`Full`]: StoreError::Full
    pub fn is_out_of_space(&self) -> bool {
        match self {
            Self::Full { .. } => true,
            Self::Io { source, .. } => {
                source.kind() == io::ErrorKind::StorageFull
                    || source.kind() == io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

/// A piece that lives as `len` bytes at `offset` of a file outside the
/// store ([`PieceStore::add_extents`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The piece.
    pub id: PieceId,
    /// Where it starts in the file.
    pub offset: u64,
    /// Its length.
    pub len: u32,
}

/// What [`PieceStore::verify_all`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Pieces hashed (kept in the store and served from files).
    pub checked: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Pieces kept in the store that did not match: deleted if cached,
    /// quarantined if pinned.
    pub corrupt: Vec<PieceId>,
    /// Pieces served from files that no longer match (or whose file is
    /// short or gone): dropped from the index, the file left alone.
    pub dropped: Vec<PieceId>,
}

/// Counters and gauges of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Pieces held.
    pub pieces: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Bytes held that a pinned root (or a hold) reaches: never evicted.
    pub pinned_bytes: u64,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Cached pieces evicted since open.
    pub evictions: u64,
    /// Pieces found corrupt since open.
    pub corrupt: u64,
    /// Pieces served from ranges of files outside the store (not counted in
    /// `pieces` or `bytes`).
    pub extents: u64,
    /// Pieces dropped from the extents index since open: their file
    /// changed, shrank or went away.
    pub dropped_extents: u64,
}

/// A content-addressed piece store.
///
/// Pins are roots ([`Root`]): a piece is kept while any pinned root reaches
/// it, or while a caller holds it ([`PieceStore::hold`]); eviction and
/// [`PieceStore::gc`] remove only pieces nothing reaches.
///
/// Every method is blocking (disk I/O and hashing): from async code call it
/// through `tokio::task::spawn_blocking` or a dedicated thread, never on an
/// I/O task. Implementations are shared between threads.
pub trait PieceStore: Send + Sync {
    /// Whether the piece is held (a cheap in-memory lookup).
    fn has(&self, id: &PieceId) -> bool;

    /// The size of a held piece (a cheap in-memory lookup).
    fn size(&self, id: &PieceId) -> Option<u64>;

    /// The piece's bytes, guaranteed to hash to `id`, or `None` if not held.
    ///
    /// A piece found corrupt is removed from service and reported as
    /// [`StoreError::Corrupt`].
    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError>;

    /// Adds a piece (verified by its type). Adding a held piece updates its
    /// recency, and pins it with [`Retention::Pinned`].
    ///
    /// With [`Retention::Pinned`] the piece is stored first and its root
    /// pinned after (it is held in memory in between, so nothing evicts it):
    /// a crash in between leaves at worst a cached piece, never a pin.
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

    /// Pins `root`, durably before returning. Returns false if it was pinned
    /// already. A root may name pieces the store does not hold yet: they are
    /// kept as they arrive. Fails with [`StoreError::TooManyRoots`] past
    /// [`ROOTS_MAX`].
    fn pin_root(&self, root: Root) -> Result<bool, StoreError>;

    /// Unpins `root`, durably before returning: the pieces only it reached
    /// become evictable. Returns false if it was not pinned.
    fn unpin_root(&self, root: Root) -> Result<bool, StoreError>;

    /// The pinned roots, in order (files first, each kind by id).
    fn roots(&self) -> Vec<Root>;

    /// Keeps `id` (held now or arriving later) from eviction and `gc` until
    /// a matching [`PieceStore::release`], in memory only: a restart drops
    /// every hold. Holds are counted, so each needs its own release. For a
    /// file being added, until its root is pinned.
    fn hold(&self, id: &PieceId);

    /// Ends one [`PieceStore::hold`] of `id`.
    fn release(&self, id: &PieceId);

    /// Whether a pinned root or a hold reaches `id` (held or not).
    fn is_pinned(&self, id: &PieceId) -> bool;

    /// Removes every held piece that no pinned root or hold reaches. Pieces
    /// still being written are left for a later call.
    fn gc(&self) -> Result<GcReport, StoreError>;

    /// Every piece held, in no particular order.
    fn list(&self) -> Vec<PieceId>;

    /// Counters and gauges.
    fn stats(&self) -> StoreStats;

    /// Indexes pieces that live as byte ranges of `file` (an absolute
    /// path), durably before returning, so the store serves them without a
    /// copy of its own. The caller has made the ranges durable and hashed
    /// them to their ids; the store still hashes each as it reads it, and
    /// drops one that no longer matches without touching the file. A piece
    /// the store keeps itself is skipped; one indexed in another file moves
    /// to its new place. With no extents it records `file` alone, so a
    /// writer killed before its first add still leaves its file known
    /// ([`PieceStore::extent_files`]). Extents cost no store capacity and
    /// are never evicted; [`PieceStore::gc`] drops those nothing reaches.
    fn add_extents(&self, file: &Path, extents: &[Extent]) -> Result<(), StoreError> {
        let _ = (file, extents);
        Err(StoreError::Unsupported)
    }

    /// Indexes pieces of `file` (recorded by an earlier
    /// [`add_extents`](PieceStore::add_extents)) in memory only: served at
    /// once (every read is hashed), forgotten by a restart unless a later
    /// `add_extents` records them. For pieces written but not yet durable,
    /// so a file being fetched is shared as it arrives. Returns how many
    /// were indexed.
    fn offer_extents(&self, file: &Path, extents: &[Extent]) -> usize {
        let _ = (file, extents);
        0
    }

    /// Records that the file holding extents at `from` was renamed to
    /// `to`, durably. Returns false if no extent lives in `from`.
    fn move_extent_file(&self, from: &Path, to: &Path) -> Result<bool, StoreError> {
        let _ = (from, to);
        Ok(false)
    }

    /// Forgets every extent in `file` (about to be removed), durably;
    /// returns how many.
    fn forget_extent_file(&self, file: &Path) -> Result<usize, StoreError> {
        let _ = file;
        Ok(0)
    }

    /// The files holding extents.
    fn extent_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }

    /// Re-hashes every piece held, in the store and in files: a piece of
    /// the store that fails is handled as on any read (deleted if cached,
    /// quarantined if pinned); one in a file that fails is dropped from the
    /// index. Blocking, and as long as reading everything.
    fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        for id in self.list() {
            match self.get(&id) {
                Ok(Some(bytes)) => {
                    report.checked += 1;
                    report.bytes += bytes.len() as u64;
                    if VerifiedPiece::verify(id, bytes).is_err() {
                        report.corrupt.push(id);
                    }
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { id, .. }) => report.corrupt.push(id),
                Err(err) => return Err(err),
            }
        }
        Ok(report)
    }

    /// The pinned files (named from their manifests when held), the pinned
    /// loose pieces, the bytes used and the capacity. Reads each pinned
    /// file's root manifest: at most [`ROOTS_MAX`] pieces.
    fn listing(&self) -> Result<StoreListing, StoreError> {
        let mut listing = StoreListing::default();
        for root in self.roots() {
            match root {
                Root::File(manifest) => {
                    // A manifest that does not parse is listed unnamed: the
                    // user can still unpin it.
                    let parsed = self.get(&manifest)?.and_then(|bytes| {
                        Manifest::parse(&bytes, &Layout::STANDARD, Level::ROOT).ok()
                    });
                    listing.files.push(PinnedFile {
                        manifest,
                        name: parsed.as_ref().and_then(|m| m.name.clone()),
                        size: parsed.map(|m| m.size),
                    });
                }
                Root::Piece(id) => listing.pieces.push(PinnedPiece {
                    id,
                    size: self.size(&id),
                }),
            }
        }
        let stats = self.stats();
        listing.bytes_used = stats.bytes;
        listing.capacity = stats.capacity;
        Ok(listing)
    }
}
