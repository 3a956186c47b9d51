//! The disk store: pieces appended to pack files, an index in memory.
//!
//! # Layout of the store directory
//! * `packs/NNNNNNNN.pack` — the pieces the store holds itself, as records
//!   appended to packs of at most [`PACK_MAX_BYTES`] (format, liveness and
//!   compaction in `pack`).
//! * `roots.log` — the pinned roots (files by manifest, loose pieces), an
//!   append-only log compacted atomically (format in `roots`).
//! * `extents.log` — pieces that live as ranges of files outside the store,
//!   such as a fetched file's output (format in `extents`).
//! * `quarantine/` — copies of pinned pieces found corrupt, kept for the user.
//! * `lock` — held exclusively while the store is open.
//!
//! Older stores kept an empty marker file per pinned piece in
//! `pins/00` … `pins/ff`; opening turns them into roots and removes them.
//! Older stores kept one file per piece in `pieces/00` … `pieces/ff` (and
//! `tmp/` for pieces being written); opening moves them into packs, fsyncs
//! the packs, then removes the files.
//!
//! # Durability
//! A piece is appended to the active pack and enters the index as committed
//! only once durable under the [`FsyncPolicy`] (one fsync of the pack per
//! group commit); until then it is served from memory. A delete appends a
//! tombstone. A root change is appended to `roots.log` (and fsynced) before
//! it takes effect in memory.
//!
//! # Crashes between a piece and its root
//! A piece is stored before the root that keeps it is pinned: a loose piece
//! put [`Retention::Pinned`] is committed, then its root logged; a file's
//! pieces are committed, then its root. Until then they are held in memory
//! ([`PieceStore::hold`]), so nothing evicts them. A crash in between leaves
//! at worst pieces no root reaches: cached, evictable, and the upload was
//! never reported done. The other way round cannot happen: a logged root
//! is loaded and its tree reached before open evicts anything, and a root
//! logged before its pieces arrive (a fetch job's) keeps them as they come.
//!
//! # Verification
//! Only [`VerifiedPiece`]s are written. Each piece is hashed again the first
//! time it is read after open (or on every read with `verify_on_read`), and
//! [`DiskStore::scrub`] re-verifies slowly in the background. A cached piece
//! that fails is dropped; a pinned one is copied to `quarantine/`, dropped
//! and reported.
//!
//! # Modules, one job each
//! * `config` — what the user chooses: [`FsyncPolicy`], [`DiskStoreConfig`].
//! * `paths` — where things live under the root; shared file steps.
//! * `pack` — the pack files: record format, the table of where each piece
//!   is, the writer, the scan at open, the compaction policy.
//! * `shared` — the state every job shares, and the pack steps that are not
//!   a commit (append, tombstones, compaction).
//! * `commit` — the group commit and its background thread (which also does
//!   the packs' upkeep when idle).
//! * `verify` — reading back with verification, quarantine, [`DiskStore::scrub`].
//! * `roots` — the roots index on disk: format, appends, compaction.
//! * `extents` — pieces served from ranges of files outside the store
//!   (a fetched file's output), and their index on disk.
//! * `pins` — root changes (disk, then memory), expanding pinned files'
//!   manifests, migrating old pin markers.
//! * `scan` — opening: layout, lock, the packs, migrating older piece files,
//!   the index, the roots.
//! * this file — [`DiskStore`]: the [`PieceStore`] operations wired to the jobs.

mod commit;
mod config;
mod extents;
mod pack;
#[cfg(test)]
mod pack_tests;
mod paths;
mod pins;
mod roots;
mod scan;
mod shared;
mod verify;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use self::commit::{CommitResult, Committer, PendingWrite, commit_group, wait_done};
pub use self::config::{BATCH_INTERVAL, BATCH_MAX_PENDING_BYTES, DiskStoreConfig, FsyncPolicy};
pub use self::extents::{
    EXTENT_FILES_MAX, EXTENT_PATH_MAX_BYTES, EXTENTS_APPEND_MAX, EXTENTS_FILE,
    EXTENTS_LOG_MAX_BYTES, EXTENTS_MAX,
};
use self::pack::Loc;
pub use self::pack::{
    PACK_COMPACT_LIVE_PERCENT, PACK_MAX_BYTES, PACK_NUMBER_MAX, PACKS_DIR, RECORD_HEADER_LEN,
    locate_piece,
};
pub use self::paths::QUARANTINE_DIR;
pub use self::roots::{COMPACT_MIN_LINES, ROOTS_FILE, ROOTS_LOG_MAX_BYTES};
use self::shared::{Shared, State};
pub use self::verify::ScrubReport;
use crate::lock::DirLock;
use crate::store::{
    Durability, Extent, GcReport, PieceStore, Retention, Root, StoreError, StoreStats, VerifyReport,
};

#[derive(Debug)]
struct Inner {
    shared: Shared,
    committer: Committer,
    _lock: DirLock,
}

/// A piece store on disk. See the [module docs](self).
#[derive(Debug)]
pub struct DiskStore {
    inner: Arc<Inner>,
    committer: Option<JoinHandle<()>>,
}

impl DiskStore {
    /// Opens (creating if needed) the store in `root`, takes its lock, reads
    /// the packs (cutting off a torn tail), moves an older store's piece
    /// files into packs, indexes the pieces present and loads the pinned
    /// roots (migrating the pin markers of an older store).
    ///
    /// Blocking: reads every record header and the manifests of pinned
    /// files (and copies an older store's piece files once). Fails with [`StoreError::Locked`] if another process has the
    /// store open, and with [`StoreError::BadRootsIndex`] rather than forget
    /// a pin.
    pub fn open(root: &Path, config: DiskStoreConfig) -> Result<Self, StoreError> {
        let (shared, dir_lock) = scan::open(root, config)?;
        let inner = Arc::new(Inner {
            shared,
            committer: Committer::default(),
            _lock: dir_lock,
        });
        let committer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("piece-store-commit".into())
                .spawn(move || inner.committer.run(&inner.shared))
                .map_err(StoreError::io("spawn committer thread", root))?
        };
        Ok(Self {
            inner,
            committer: Some(committer),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        self.inner.shared.paths.root()
    }

    /// Pinned pieces moved to quarantine since open.
    pub fn quarantined(&self) -> Vec<PieceId> {
        self.shared().state().quarantined.clone()
    }

    /// Re-verifies up to `max_pieces` pieces, continuing where the last call
    /// stopped. Meant to be called slowly from a background thread (e.g. a
    /// few pieces a second) so a bit rot is found before a peer asks.
    pub fn scrub(&self, max_pieces: usize) -> ScrubReport {
        self.shared().scrub(max_pieces)
    }

    /// Waits until every queued write is committed.
    pub fn flush(&self) {
        self.inner.committer.flush(&self.inner.shared);
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    fn put_one(
        &self,
        piece: VerifiedPiece,
        durability: Durability,
    ) -> Result<Option<Receiver<CommitResult>>, StoreError> {
        let shared = self.shared();
        let id = piece.id();
        let size = piece.len() as u64;
        let background =
            durability == Durability::Background && shared.config.fsync == FsyncPolicy::Batch;
        let wait_bytes = |state: &mut State| {
            if background && state.pending_background_bytes + size <= BATCH_MAX_PENDING_BYTES {
                state.pending_background_bytes += size;
                size
            } else {
                0
            }
        };
        let Some((loc, file)) = self.prepare(&piece)? else {
            return Ok(None);
        };
        match shared.config.fsync {
            FsyncPolicy::Always | FsyncPolicy::Never => {
                let (tx, rx) = mpsc::sync_channel(1);
                commit_group(
                    shared,
                    vec![PendingWrite {
                        id,
                        loc,
                        file,
                        background_bytes: 0,
                        done: Some(tx),
                    }],
                );
                Ok(Some(rx))
            }
            FsyncPolicy::Batch => {
                let background_bytes = wait_bytes(&mut shared.state());
                let (done, rx) = if background_bytes > 0 {
                    (None, None)
                } else {
                    let (tx, rx) = mpsc::sync_channel(1);
                    (Some(tx), Some(rx))
                };
                let write = PendingWrite {
                    id,
                    loc,
                    file,
                    background_bytes,
                    done,
                };
                if background_bytes > 0 {
                    self.inner.committer.push_background(write);
                    Ok(None)
                } else {
                    self.inner.committer.enqueue(shared, write);
                    Ok(rx)
                }
            }
        }
    }

    /// The first half of every put: marks a held piece used (returns
    /// `None`), or reserves room, indexes the piece as pending and appends
    /// it to the active pack.
    fn prepare(&self, piece: &VerifiedPiece) -> Result<Option<(Loc, Arc<File>)>, StoreError> {
        let shared = self.shared();
        let id = piece.id();
        let size = piece.len() as u64;
        {
            let mut state = shared.state();
            if state.index.contains(&id) {
                state.index.touch(&id);
                return Ok(None);
            }
            let victims = state.index.make_room(size)?;
            state.delete_victims(&victims);
            // In the index before the data is in place, so concurrent puts
            // count its bytes; uncommitted entries are never evicted.
            state.index.insert(id, size, false, true);
            state.pending.insert(id, piece.bytes().clone());
        }
        match shared.append_piece(piece) {
            Ok(ok) => Ok(Some(ok)),
            Err(err) => {
                shared.abandon(&id, 0);
                Err(err)
            }
        }
    }

    /// Like `put_one` under `batch`, but queues without leading a commit:
    /// the caller commits the whole group.
    fn put_one_deferred(
        &self,
        piece: VerifiedPiece,
    ) -> Result<Option<Receiver<CommitResult>>, StoreError> {
        let id = piece.id();
        let Some((loc, file)) = self.prepare(&piece)? else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::sync_channel(1);
        self.inner.committer.push(PendingWrite {
            id,
            loc,
            file,
            background_bytes: 0,
            done: Some(tx),
        });
        Ok(Some(rx))
    }

    /// Stores a group of pieces, sharing one group commit under `batch`.
    fn put_group(&self, pieces: Vec<VerifiedPiece>) -> Result<(), StoreError> {
        if self.shared().config.fsync != FsyncPolicy::Batch {
            for piece in pieces {
                wait_done(self.put_one(piece, Durability::Wait)?)?;
            }
            return Ok(());
        }
        // Write every temp file first, then commit them as one group.
        let mut receivers = Vec::with_capacity(pieces.len());
        let mut first_error = None;
        let was_committing = self.inner.committer.hold();
        for piece in pieces {
            match self.put_one_deferred(piece) {
                Ok(Some(rx)) => receivers.push(rx),
                Ok(None) => {}
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        self.inner.committer.release(self.shared(), was_committing);
        for rx in receivers {
            if let Err(err) = wait_done(Some(rx)) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Stores `pieces` with `store`, then, for [`Retention::Pinned`], pins
    /// each as a loose root; held in memory in between (see the module docs
    /// on crashes).
    fn put_then_pin(
        &self,
        ids: Vec<PieceId>,
        retention: Retention,
        store: impl FnOnce() -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let shared = self.shared();
        if retention == Retention::Cached {
            let stored = store();
            shared.settle();
            return stored;
        }
        let roots: Vec<Root> = ids.iter().map(|id| Root::Piece(*id)).collect();
        {
            // Fail early, before storing, when the roots cannot fit.
            let state = shared.state();
            let new = roots.iter().filter(|r| !state.index.has_root(r)).count();
            state.index.check_room(new)?;
        }
        for id in &ids {
            shared.state().index.hold(*id);
        }
        let result = store().and_then(|()| shared.pin_roots(&roots).map(|_| ()));
        for id in &ids {
            shared.state().index.release(id);
        }
        shared.settle();
        result
    }
}

impl PieceStore for DiskStore {
    fn has(&self, id: &PieceId) -> bool {
        let state = self.shared().state();
        state.index.contains(id) || state.extents.contains(id)
    }

    fn size(&self, id: &PieceId) -> Option<u64> {
        let state = self.shared().state();
        match state.index.get(id) {
            Some(entry) => Some(entry.size),
            None => state
                .extents
                .find(id)
                .map(|(_, place)| u64::from(place.len)),
        }
    }

    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        self.shared().get(id)
    }

    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        durability: Durability,
    ) -> Result<(), StoreError> {
        self.put_then_pin(vec![piece.id()], retention, || {
            wait_done(self.put_one(piece, durability)?)
        })
    }

    fn put_many(&self, pieces: Vec<VerifiedPiece>, retention: Retention) -> Result<(), StoreError> {
        let ids = pieces.iter().map(VerifiedPiece::id).collect();
        self.put_then_pin(ids, retention, || self.put_group(pieces))
    }

    fn pin_root(&self, root: Root) -> Result<bool, StoreError> {
        Ok(self.shared().pin_roots(&[root])? == 1)
    }

    fn unpin_root(&self, root: Root) -> Result<bool, StoreError> {
        self.shared().unpin_root(root)
    }

    fn roots(&self) -> Vec<Root> {
        self.shared().state().index.roots()
    }

    fn hold(&self, id: &PieceId) {
        self.shared().state().index.hold(*id);
    }

    fn release(&self, id: &PieceId) {
        self.shared().state().index.release(id);
    }

    fn is_pinned(&self, id: &PieceId) -> bool {
        self.shared().state().index.is_reached(id)
    }

    fn gc(&self) -> Result<GcReport, StoreError> {
        let shared = self.shared();
        let mut state = shared.state();
        let (victims, report) = state.index.gc();
        state.delete_victims(&victims);
        // Extents nothing reaches leave the index (their files stay: they
        // are their users'). They free no store bytes, so the report does
        // not count them.
        let unreached: Vec<PieceId> = state
            .extents
            .ids()
            .filter(|id| !state.index.is_reached(id))
            .copied()
            .collect();
        state.extents.drop_pieces(&unreached)?;
        drop(state);
        // The deletes recorded, then the space they freed given back.
        shared.flush_tombstones()?;
        while shared.compact_step()? {}
        Ok(report)
    }

    fn list(&self) -> Vec<PieceId> {
        let state = self.shared().state();
        let mut ids = state.index.ids();
        ids.extend(
            state
                .extents
                .ids()
                .filter(|id| !state.index.contains(id))
                .copied(),
        );
        ids
    }

    fn add_extents(&self, file: &Path, extents: &[Extent]) -> Result<(), StoreError> {
        let mut state = self.shared().state();
        let new = not_kept(&state, extents);
        state.extents.add(file, &new)
    }

    fn offer_extents(&self, file: &Path, extents: &[Extent]) -> usize {
        let mut state = self.shared().state();
        let new = not_kept(&state, extents);
        state.extents.offer(file, &new)
    }

    fn move_extent_file(&self, from: &Path, to: &Path) -> Result<bool, StoreError> {
        self.shared().state().extents.rename(from, to)
    }

    fn forget_extent_file(&self, file: &Path) -> Result<usize, StoreError> {
        self.shared().state().extents.forget(file)
    }

    fn extent_files(&self) -> Vec<PathBuf> {
        self.shared().state().extents.files()
    }

    fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        self.shared().verify_all()
    }

    fn stats(&self) -> StoreStats {
        let state = self.shared().state();
        StoreStats {
            pieces: state.index.len() as u64,
            extents: state.extents.len() as u64,
            dropped_extents: state.dropped_extents,
            bytes: state.index.bytes(),
            pinned_bytes: state.index.pinned_bytes(),
            capacity: state.index.capacity(),
            evictions: state.index.evictions,
            corrupt: state.corrupt,
        }
    }
}

/// The extents whose pieces the store does not keep itself: a piece with
/// a file of its own needs no second place.
fn not_kept(state: &State, extents: &[Extent]) -> Vec<Extent> {
    extents
        .iter()
        .filter(|e| !state.index.contains(&e.id))
        .copied()
        .collect()
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.inner.committer.close();
        self.flush();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
        // Lost, a tombstone only brings a deleted piece back as cached.
        let _ = self.shared().flush_tombstones();
    }
}

#[cfg(test)]
mod tests {
    use wire_format::limits::PIECE_MAX;

    use super::shared::lock;
    use super::*;

    /// A piece of `len` bytes, distinct for each `seed`.
    fn piece(seed: u64, len: usize) -> VerifiedPiece {
        let mut bytes = vec![0x5a; len];
        let seed = seed.to_le_bytes();
        let head = len.min(seed.len());
        bytes[..head].copy_from_slice(&seed[..head]);
        VerifiedPiece::new(Bytes::from(bytes)).unwrap()
    }

    fn pending_background_bytes(store: &DiskStore) -> u64 {
        store.shared().state().pending_background_bytes
    }

    /// Holds off group commits, as a `put_many` in progress does, until
    /// dropped; then commits what is queued. Dropped before the store even
    /// when a test fails, so closing the store does not wait forever.
    struct HoldCommits<'a>(&'a DiskStore);

    impl<'a> HoldCommits<'a> {
        fn new(store: &'a DiskStore) -> Self {
            lock(&store.inner.committer.queue).committing = true;
            Self(store)
        }
    }

    impl Drop for HoldCommits<'_> {
        fn drop(&mut self) {
            let inner = &self.0.inner;
            let mut queue = lock(&inner.committer.queue);
            queue.committing = false;
            inner.committer.lead_commits(&inner.shared, queue);
        }
    }

    #[test]
    fn background_writes_wait_for_a_group_commit_up_to_the_pending_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), DiskStoreConfig::new(1 << 30)).unwrap();
        // No pending byte is committed (and freed) while the test fills up.
        let hold = HoldCommits::new(&store);
        let full = BATCH_MAX_PENDING_BYTES / PIECE_MAX as u64;
        assert_eq!(full * PIECE_MAX as u64, BATCH_MAX_PENDING_BYTES);
        for seed in 0..full {
            let waiter = store
                .put_one(piece(seed, PIECE_MAX), Durability::Background)
                .unwrap();
            assert!(waiter.is_none(), "piece {seed} waits for its commit");
        }
        assert_eq!(pending_background_bytes(&store), BATCH_MAX_PENDING_BYTES);

        // One byte more: this put commits before it returns, like a waiting one.
        let over = piece(full, 1);
        let waiter = store.put_one(over.clone(), Durability::Background).unwrap();
        assert!(waiter.is_some(), "a put past the limit returned at once");
        assert_eq!(pending_background_bytes(&store), BATCH_MAX_PENDING_BYTES);

        drop(hold);
        wait_done(waiter).unwrap();
        assert_eq!(pending_background_bytes(&store), 0);
        assert!(store.shared().state().packs.contains(&over.id()));
        assert_eq!(store.stats().pieces, full + 1);
    }
}
