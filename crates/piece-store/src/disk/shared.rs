//! What every job of the disk store shares: its paths and configuration, the
//! in-memory state behind one mutex (index, pack table, pieces awaiting
//! their commit, counters, the roots index), the pack writer behind its own
//! mutex (taken before the state's when both are), and the pack steps that
//! are not a commit: appending a piece, writing tombstones, compacting.
//!
//! Uses the store's paths, configuration, packs and roots index, and the
//! crate's index.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use super::config::{DiskStoreConfig, FsyncPolicy};
use super::extents::Extents;
use super::pack::{Kind, Loc, PackTable, Writer, pack_path};
use super::paths::{Paths, remove_if_exists, sync_dir};
use super::roots::RootsLog;
use crate::index::Index;
use crate::store::StoreError;

/// The in-memory state of a disk store.
#[derive(Debug)]
pub(super) struct State {
    pub(super) index: Index,
    /// Where each committed piece is in the packs.
    pub(super) packs: PackTable,
    /// Pieces appended but not yet committed: served from memory.
    pub(super) pending: HashMap<PieceId, Bytes>,
    pub(super) pending_background_bytes: u64,
    pub(super) quarantined: Vec<PieceId>,
    pub(super) corrupt: u64,
    pub(super) scrub_cursor: Option<PieceId>,
    /// The pinned roots on disk; changed before the index, under this lock.
    pub(super) roots_log: RootsLog,
    /// Pieces served from ranges of files outside the store.
    pub(super) extents: Extents,
    /// Pieces dropped from the extents index since open: their file
    /// changed.
    pub(super) dropped_extents: u64,
}

impl State {
    pub(super) fn new(
        index: Index,
        packs: PackTable,
        roots_log: RootsLog,
        extents: Extents,
    ) -> Self {
        Self {
            index,
            packs,
            roots_log,
            extents,
            dropped_extents: 0,
            pending: HashMap::new(),
            pending_background_bytes: 0,
            quarantined: Vec::new(),
            corrupt: 0,
            scrub_cursor: None,
        }
    }
}

impl State {
    /// Drops evicted pieces from the packs (their tombstones are written
    /// with the next append or upkeep).
    pub(super) fn delete_victims(&mut self, victims: &[PieceId]) {
        for victim in victims {
            self.packs.kill(victim);
        }
    }
}

impl AsMut<PackTable> for State {
    fn as_mut(&mut self) -> &mut PackTable {
        &mut self.packs
    }
}

/// Paths, configuration and state of an open store.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) paths: Paths,
    pub(super) config: DiskStoreConfig,
    pub(super) state: Mutex<State>,
    /// The pack appended to; lock it before `state` when taking both.
    pub(super) writer: Mutex<Writer>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic in another thread
    // (each critical section finishes its updates before anything can fail).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) fn fsyncs(&self) -> bool {
        self.config.fsync != FsyncPolicy::Never
    }

    /// Appends `piece` to the active pack (after the tombstones waiting),
    /// not yet fsynced nor live: the commit does both.
    pub(super) fn append_piece(
        &self,
        piece: &VerifiedPiece,
    ) -> Result<(Loc, Arc<File>), StoreError> {
        let mut writer = lock(&self.writer);
        // A tombstone that cannot be written now is tried again later.
        let _ = self.write_tombstones(&mut writer);
        let loc = writer.append(&self.state, Kind::Piece, piece.id(), piece.bytes())?;
        Ok((loc, writer.file()))
    }

    /// Writes the tombstones of the pieces deleted since the last call,
    /// but not of those held again meanwhile (their new record is later).
    fn write_tombstones(&self, writer: &mut Writer) -> Result<bool, StoreError> {
        let doomed = {
            let mut state = self.state();
            let doomed = state.packs.take_doomed();
            let (held, doomed): (Vec<_>, Vec<_>) = doomed
                .into_iter()
                .partition(|id| state.packs.contains(id) || state.pending.contains_key(id));
            drop(held);
            doomed
        };
        let mut written = false;
        for (i, id) in doomed.iter().enumerate() {
            if let Err(err) = writer.append(&self.state, Kind::Tombstone, *id, &[]) {
                self.state().packs.return_doomed(doomed[i..].to_vec());
                return Err(err);
            }
            written = true;
        }
        Ok(written)
    }

    /// Writes the tombstones waiting and fsyncs them under the policy.
    pub(super) fn flush_tombstones(&self) -> Result<(), StoreError> {
        let mut writer = lock(&self.writer);
        if self.write_tombstones(&mut writer)? && self.fsyncs() {
            writer.sync()?;
        }
        Ok(())
    }

    /// Whether there are tombstones to write or a pack to compact.
    pub(super) fn needs_maintenance(&self) -> bool {
        let state = self.state();
        state.packs.has_doomed() || state.packs.compaction_candidate().is_some()
    }

    /// One step of upkeep: the tombstones waiting, then one pack compacted.
    pub(super) fn maintain(&self) -> Result<(), StoreError> {
        self.flush_tombstones()?;
        self.compact_step().map(|_| ())
    }

    /// Compacts one pack whose live bytes fell below the ratio (see
    /// `pack`): its live pieces and needed tombstones appended to the
    /// active pack, that fsynced, then the old pack removed. Returns
    /// whether a pack was compacted.
    pub(super) fn compact_step(&self) -> Result<bool, StoreError> {
        // Appends wait meanwhile, so nothing new is written between the
        // plan and the removal.
        let mut writer = lock(&self.writer);
        let plan = {
            let state = self.state();
            let Some(number) = state.packs.compaction_candidate() else {
                return Ok(false);
            };
            state.packs.plan(number, |id| {
                state.packs.contains(id) || state.pending.contains_key(id)
            })
        };
        let Some(plan) = plan else { return Ok(false) };
        let old_path = pack_path(&self.paths.packs_dir(), plan.pack);
        let old = File::open(&old_path).map_err(StoreError::io("open", &old_path))?;
        let mut moved = Vec::with_capacity(plan.live.len());
        for (id, loc) in &plan.live {
            // Bounded: a live record's length passed the piece limit.
            let mut bytes = vec![0u8; loc.len as usize];
            old.read_exact_at(&mut bytes, loc.offset)
                .map_err(StoreError::io("read", &old_path))?;
            let new = writer.append(&self.state, Kind::Piece, *id, &bytes)?;
            moved.push((*id, *loc, new));
        }
        for id in &plan.tombstones {
            writer.append(&self.state, Kind::Tombstone, *id, &[])?;
        }
        if self.fsyncs() {
            writer.sync()?;
        }
        {
            let mut state = self.state();
            for (id, was, new) in moved {
                if state.packs.find(&id) == Some(was) {
                    state.packs.set_live(id, new);
                } else {
                    // Deleted while being copied: the copy is dead too.
                    state.packs.dead_record(id, new.pack);
                }
            }
            state.packs.forget_pack(plan.pack);
        }
        remove_if_exists(&old_path)?;
        if self.fsyncs() {
            sync_dir(&self.paths.packs_dir())?;
        }
        Ok(true)
    }

    /// Forgets a piece whose write failed.
    pub(super) fn abandon(&self, id: &PieceId, background_bytes: u64) {
        let mut state = self.state();
        state.pending.remove(id);
        state.pending_background_bytes -= background_bytes;
        state.index.remove(id);
    }
}
