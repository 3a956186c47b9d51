//! Opening a store directory: create its layout, take its lock, remove stale
//! temp files and stray files, and rebuild the index (sizes, pins, recency)
//! from what is on disk.
//!
//! Uses the store's paths, shared state and configuration, the crate's index
//! and the directory lock.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::config::DiskStoreConfig;
use super::paths::{Paths, create_dir, remove_if_exists};
use super::shared::{Shared, State};
use crate::index::Index;
use crate::lock::DirLock;
use crate::store::StoreError;

/// Creates (if needed) and locks the store in `root`, removes stale temp
/// files, indexes the pieces present and evicts down to the capacity.
pub(super) fn open(root: &Path, config: DiskStoreConfig) -> Result<(Shared, DirLock), StoreError> {
    let paths = Paths::new(root);
    create_dir(root)?;
    let dir_lock = DirLock::acquire(root)?;
    for sub in [paths.tmp_dir(), paths.quarantine_dir()] {
        create_dir(&sub)?;
    }
    for byte in 0..=255u8 {
        create_dir(&paths.piece_shard(byte))?;
        create_dir(&paths.pin_shard(byte))?;
    }
    let tmp = paths.tmp_dir();
    for entry in fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
        let path = entry.map_err(StoreError::io("list", &tmp))?.path();
        remove_if_exists(&path)?;
    }
    let mut index = Index::new(config.capacity);
    let mut found = scan_pieces(&paths)?;
    // Oldest first, so recency survives a restart approximately.
    found.sort_by_key(|(_, _, mtime)| *mtime);
    let pins = scan_pins(&paths)?;
    for (id, size, _) in &found {
        index.insert(*id, *size, pins.contains(id), true, false);
    }
    for pin in &pins {
        if !index.contains(pin) {
            remove_if_exists(&paths.pin(pin))?;
        }
    }
    let shared = Shared {
        paths,
        config,
        state: Mutex::new(State::new(index)),
    };
    {
        let mut state = shared.state();
        let victims = state.index.shrink_to_capacity();
        shared.delete_victims(&victims);
    }
    Ok((shared, dir_lock))
}

/// Lists every piece file: (id, size, mtime). Files with names that are not
/// ids of their shard, or sizes no piece can have, are removed.
fn scan_pieces(paths: &Paths) -> Result<Vec<(PieceId, u64, SystemTime)>, StoreError> {
    let mut found = Vec::new();
    for byte in 0..=255u8 {
        let dir = paths.piece_shard(byte);
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(StoreError::io("stat", &path))?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<PieceId>().ok())
                .filter(|id| id.first_byte() == byte);
            match id {
                Some(id) if meta.is_file() && (1..=PIECE_MAX as u64).contains(&meta.len()) => {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((id, meta.len(), mtime));
                }
                // Not a piece this store wrote: leave directories alone,
                // remove stray files (a size no piece has is corrupt).
                _ if meta.is_file() => remove_if_exists(&path)?,
                _ => {}
            }
        }
    }
    Ok(found)
}

fn scan_pins(paths: &Paths) -> Result<BTreeSet<PieceId>, StoreError> {
    let mut pins = BTreeSet::new();
    for byte in 0..=255u8 {
        let dir = paths.pin_shard(byte);
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                pins.insert(id);
            }
        }
    }
    Ok(pins)
}
