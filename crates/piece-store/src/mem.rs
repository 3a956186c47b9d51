//! The memory store: the same contract and capacity rule as the disk store,
//! with nothing persisted. For tests, short-lived tools and nodes run with no
//! disk.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use crate::index::Index;
use crate::store::{Durability, GcReport, PieceStore, Retention, Root, StoreError, StoreStats};

#[derive(Debug)]
struct State {
    index: Index,
    data: HashMap<PieceId, Bytes>,
}

/// A piece store in memory, bounded by a byte capacity.
#[derive(Debug)]
pub struct MemStore {
    state: Mutex<State>,
}

impl MemStore {
    /// An empty store holding at most `capacity` bytes of pieces.
    pub fn new(capacity: u64) -> Self {
        Self {
            state: Mutex::new(State {
                index: Index::new(capacity),
                data: HashMap::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way later calls would trip over, so keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Expands the manifests of pinned files that became ready.
    fn drive(&mut self) {
        while let Some(task) = self.index.take_ready() {
            let bytes = self.data.get(&task.manifest).cloned();
            self.index.expand(task, bytes.as_deref());
        }
    }
}

impl PieceStore for MemStore {
    fn has(&self, id: &PieceId) -> bool {
        self.state().index.contains(id)
    }

    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        let mut state = self.state();
        let bytes = state.data.get(id).cloned();
        if bytes.is_some() {
            state.index.touch(id);
        }
        Ok(bytes)
    }

    fn size(&self, id: &PieceId) -> Option<u64> {
        self.state().index.get(id).map(|e| e.size)
    }

    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        _durability: Durability,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let id = piece.id();
        let root = (retention == Retention::Pinned).then_some(Root::Piece(id));
        if let Some(root) = &root {
            state.index.check_pin(root)?;
        }
        if state.index.contains(&id) {
            state.index.touch(&id);
        } else {
            let size = piece.len() as u64;
            for victim in state.index.make_room(size)? {
                state.data.remove(&victim);
            }
            state.index.insert(id, size, true, true);
            state.data.insert(id, piece.into_bytes());
        }
        if let Some(root) = root {
            state.index.pin_root(root);
        }
        state.drive();
        Ok(())
    }

    fn pin_root(&self, root: Root) -> Result<bool, StoreError> {
        let mut state = self.state();
        if !state.index.check_pin(&root)? {
            return Ok(false);
        }
        state.index.pin_root(root);
        state.drive();
        Ok(true)
    }

    fn unpin_root(&self, root: Root) -> Result<bool, StoreError> {
        Ok(self.state().index.unpin_root(root))
    }

    fn roots(&self) -> Vec<Root> {
        self.state().index.roots()
    }

    fn hold(&self, id: &PieceId) {
        self.state().index.hold(*id);
    }

    fn release(&self, id: &PieceId) {
        self.state().index.release(id);
    }

    fn is_pinned(&self, id: &PieceId) -> bool {
        self.state().index.is_reached(id)
    }

    fn gc(&self) -> Result<GcReport, StoreError> {
        let mut state = self.state();
        let (victims, report) = state.index.gc();
        for victim in victims {
            state.data.remove(&victim);
        }
        Ok(report)
    }

    fn list(&self) -> Vec<PieceId> {
        self.state().index.ids()
    }

    fn stats(&self) -> StoreStats {
        let state = self.state();
        StoreStats {
            pieces: state.index.len() as u64,
            bytes: state.index.bytes(),
            pinned_bytes: state.index.pinned_bytes(),
            capacity: state.index.capacity(),
            evictions: state.index.evictions,
            corrupt: 0,
            // A memory store keeps no extents (`add_extents` is unsupported).
            extents: 0,
            dropped_extents: 0,
        }
    }
}
