//! What every job of the disk store shares: its paths and configuration, the
//! in-memory state behind one mutex (index, pieces awaiting their commit,
//! counters, the roots index), and the file steps of a put that precede the
//! commit (the temp file) or undo it.
//!
//! Uses the store's paths, configuration and roots index, and the crate's
//! index.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use super::config::{DiskStoreConfig, FsyncPolicy};
use super::extents::Extents;
use super::paths::Paths;
use super::roots::RootsLog;
use crate::index::Index;
use crate::store::StoreError;

/// The in-memory state of a disk store.
#[derive(Debug)]
pub(super) struct State {
    pub(super) index: Index,
    /// Pieces written but not yet renamed into place: served from memory.
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
    pub(super) fn new(index: Index, roots_log: RootsLog, extents: Extents) -> Self {
        Self {
            index,
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

/// Paths, configuration and state of an open store.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) paths: Paths,
    pub(super) config: DiskStoreConfig,
    pub(super) state: Mutex<State>,
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

    pub(super) fn write_temp(
        &self,
        piece: &VerifiedPiece,
    ) -> Result<(File, std::path::PathBuf), StoreError> {
        let tmp = self.paths.temp_for(piece);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io("create", &tmp))?;
        if let Err(err) = file.write_all(piece.bytes()) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp)(err));
        }
        Ok((file, tmp))
    }

    /// Deletes evicted pieces' files. Called with the state lock held, so a
    /// concurrent re-put of the same id cannot be deleted by mistake.
    pub(super) fn delete_victims(&self, victims: &[PieceId]) {
        for victim in victims {
            // A failure leaves an orphan file that the next open re-indexes
            // and evicts again; nothing is lost.
            let _ = fs::remove_file(self.paths.piece(victim));
        }
    }

    /// Forgets a piece whose write failed.
    pub(super) fn abandon(&self, id: &PieceId, background_bytes: u64) {
        let mut state = self.state();
        state.pending.remove(id);
        state.pending_background_bytes -= background_bytes;
        state.index.remove(id);
    }
}
