//! The memory store: the same contract and capacity rule as the disk store,
//! with nothing persisted. For tests, short-lived tools and nodes run with no
//! disk.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use crate::index::Index;
use crate::store::{Durability, PieceStore, Retention, StoreError, StoreStats};

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

    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        _durability: Durability,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        let id = piece.id();
        let pinned = retention == Retention::Pinned;
        if state.index.contains(&id) {
            if pinned {
                state.index.set_pinned(&id, true);
            }
            state.index.touch(&id);
            return Ok(());
        }
        let size = piece.len() as u64;
        for victim in state.index.make_room(size)? {
            state.data.remove(&victim);
        }
        state.index.insert(id, size, pinned, true, true);
        state.data.insert(id, piece.into_bytes());
        Ok(())
    }

    fn pin(&self, id: &PieceId) -> Result<bool, StoreError> {
        Ok(self.state().index.set_pinned(id, true).is_some())
    }

    fn unpin(&self, id: &PieceId) -> Result<bool, StoreError> {
        Ok(self.state().index.set_pinned(id, false).is_some())
    }

    fn is_pinned(&self, id: &PieceId) -> bool {
        self.state().index.get(id).is_some_and(|e| e.pinned)
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
        }
    }
}
