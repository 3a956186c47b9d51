//! Pinned roots on a disk store: every change goes to the roots index on
//! disk before the in-memory reach, under the state lock; the manifests of
//! pinned files are read (without the lock) and expanded as they become
//! available; and the per-piece pin markers of older stores are migrated.
//!
//! Uses the store's shared state, paths and roots index, the crate's
//! manifest format and the store's types.

use std::collections::BTreeSet;
use std::fs;
use std::io;

use wire_format::PieceId;

use super::paths::Paths;
use super::roots::Change;
use super::shared::{Shared, State};
use crate::manifest::{Layout, Level, Manifest};
use crate::store::{Root, StoreError};

/// How every root manifest starts (the canonical key order): a pinned piece
/// without this prefix is not read whole when migrating old pin markers.
const ROOT_MANIFEST_PREFIX: &[u8] = br#"{"p2p_manifest":1,"name":"#;

impl Shared {
    /// Pins the roots of `roots` not pinned yet: recorded in the roots index
    /// (durable under the fsync policy), then reached in memory. Returns how
    /// many were added. All or none: past [`crate::store::ROOTS_MAX`] none is
    /// pinned.
    pub(super) fn pin_roots(&self, roots: &[Root]) -> Result<usize, StoreError> {
        let added = {
            let mut guard = self.state();
            let state = &mut *guard;
            let mut new = Vec::new();
            let mut seen = BTreeSet::new();
            for root in roots {
                if seen.insert(*root) && !state.index.has_root(root) {
                    new.push(*root);
                }
            }
            state.index.check_room(new.len())?;
            let changes: Vec<Change> = new.iter().map(|root| Change::Pin(*root)).collect();
            let index = &state.index;
            state.roots_log.append(&changes, || index.roots())?;
            for root in &new {
                state.index.pin_root(*root);
            }
            new.len()
        };
        self.settle();
        Ok(added)
    }

    /// Unpins `root`: recorded in the roots index, then taken back in
    /// memory. Returns false if it was not pinned.
    pub(super) fn unpin_root(&self, root: Root) -> Result<bool, StoreError> {
        let mut guard = self.state();
        let state: &mut State = &mut guard;
        if !state.index.has_root(&root) {
            return Ok(false);
        }
        let index = &state.index;
        state
            .roots_log
            .append(&[Change::Unpin(root)], || index.roots())?;
        Ok(state.index.unpin_root(root))
    }

    /// Expands the manifests of pinned files that are held, until none is
    /// ready. A manifest that cannot be read now (an I/O error) is retried
    /// by the next call; one found corrupt (quarantined) is awaited again.
    pub(super) fn settle(&self) {
        loop {
            let Some(task) = self.state().index.take_ready() else {
                return;
            };
            match self.get(&task.manifest) {
                Ok(bytes) => self.state().index.expand(task, bytes.as_deref()),
                Err(StoreError::Corrupt { .. }) => self.state().index.expand(task, None),
                Err(_) => {
                    self.state().index.retry_later(task);
                    return;
                }
            }
        }
    }

    /// Turns the pin markers of an older store (`pins/xx/<id>`, one per
    /// pinned piece) into roots, so an upgrade loses no pin: a marked piece
    /// that is a file's root manifest becomes a file root (its old markers
    /// pinned its whole tree piece by piece, and it now reaches that tree),
    /// every marked piece no such root reaches becomes a loose root. Markers
    /// of pieces not held are dropped, as older stores did at open. The
    /// caller writes the roots index, then removes the markers.
    pub(super) fn migrate_pin_markers(&self, marked: &BTreeSet<PieceId>) -> Result<(), StoreError> {
        for id in marked {
            // The state lock is not held while the piece is read.
            let held = self.state().index.contains(id);
            if held && self.is_root_manifest(id)? {
                self.pin_in_memory(Root::File(*id))?;
            }
        }
        self.settle();
        for id in marked {
            let loose = {
                let state = self.state();
                state.index.contains(id) && !state.index.is_reached(id)
            };
            if loose {
                self.pin_in_memory(Root::Piece(*id))?;
            }
        }
        Ok(())
    }

    /// Pins in memory only (while opening, before the index is written).
    fn pin_in_memory(&self, root: Root) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.index.check_pin(&root)? {
            state.index.pin_root(root);
        }
        Ok(())
    }

    /// Whether a held piece parses as a file's root manifest; reads the
    /// whole piece only if it starts like one.
    fn is_root_manifest(&self, id: &PieceId) -> Result<bool, StoreError> {
        let mut prefix = [0u8; ROOT_MANIFEST_PREFIX.len()];
        if !self.read_prefix(id, &mut prefix)? || prefix != ROOT_MANIFEST_PREFIX {
            return Ok(false);
        }
        let bytes = match self.get(id) {
            Ok(bytes) => bytes,
            // Quarantined: nothing to reach through it.
            Err(StoreError::Corrupt { .. }) => None,
            Err(err) => return Err(err),
        };
        Ok(bytes
            .is_some_and(|bytes| Manifest::parse(&bytes, &Layout::STANDARD, Level::ROOT).is_ok()))
    }
}

/// The ids with a pin marker in an older store's `pins/` (none if absent).
pub(super) fn legacy_pin_markers(paths: &Paths) -> Result<BTreeSet<PieceId>, StoreError> {
    let mut marked = BTreeSet::new();
    let pins = paths.legacy_pins_dir();
    let shards = match fs::read_dir(&pins) {
        Ok(shards) => shards,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(marked),
        Err(err) => return Err(StoreError::io("list", &pins)(err)),
    };
    for shard in shards {
        let shard = shard.map_err(StoreError::io("list", &pins))?.path();
        if !shard.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&shard).map_err(StoreError::io("list", &shard))? {
            let entry = entry.map_err(StoreError::io("list", &shard))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                marked.insert(id);
            }
        }
    }
    Ok(marked)
}
