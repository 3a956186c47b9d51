//! Content-addressed piece storage: a disk store and a memory store behind
//! one small trait, plus manifests and whole files.
//!
//! Every operation here is blocking (disk I/O, hashing). Async callers run
//! them on a blocking pool (`tokio::task::spawn_blocking`) or a dedicated
//! thread, never on an I/O task.
//!
//! # Layout
//! * [`store`] — the [`PieceStore`] trait, pinned roots, retention,
//!   durability, the listing, errors.
//! * [`disk`] — [`DiskStore`]: sharded files, fsync policies, verification,
//!   quarantine, scrub; one submodule per job (group commit, verify, scan).
//! * [`mem`] — [`MemStore`]: the same contract in memory.
//! * [`lock`] — [`DirLock`], the exclusive lock on a data directory.
//! * [`manifest`] — the manifest format: build, serialize, parse without trust.
//! * [`file`](mod@file) — split a byte stream into pieces and a manifest;
//!   walk a tree; reassemble (one submodule each).
//! * [`state_file`] — small state files written atomically and read with a
//!   bound; the one directory fsync.
//! * `testing` (feature `testing`) — a fault-injecting [`PieceStore`] for tests.
//! * `index` (private) — accounting shared by both stores: sizes, LRU, the
//!   capacity rule.
//! * `reach` (private) — which pieces the pinned roots and holds reach.

pub mod disk;
pub mod file;
mod index;
pub mod lock;
pub mod manifest;
pub mod mem;
mod reach;
pub mod state_file;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use disk::{DiskStore, DiskStoreConfig, FsyncPolicy, ScrubReport};
pub use lock::DirLock;
pub use mem::MemStore;
pub use store::{
    Durability, Extent, GcReport, PieceStore, PinnedFile, PinnedPiece, ROOTS_MAX, Retention, Root,
    StoreError, StoreListing, StoreStats, VerifyReport,
};
