//! Opening a store directory: create its layout, take its lock, remove stale
//! temp files and stray files, rebuild the index (sizes, recency) from what
//! is on disk, load the pinned roots (migrating older pin markers) and reach
//! their trees, then evict down to the capacity.
//!
//! Uses the store's paths, shared state, configuration, roots index and
//! pins, the crate's index and the directory lock.

use std::fs;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::config::{DiskStoreConfig, FsyncPolicy};
use super::extents::{EXTENTS_FILE, Extents};
use super::paths::{Paths, create_dir, remove_if_exists};
use super::pins::legacy_pin_markers;
use super::roots::RootsLog;
use super::shared::{Shared, State};
use crate::index::Index;
use crate::lock::DirLock;
use crate::store::StoreError;

/// Creates (if needed) and locks the store in `root`, removes stale temp
/// files, indexes the pieces present, pins the roots and reaches their
/// trees, and only then evicts down to the capacity (so nothing a root
/// reaches is evicted).
pub(super) fn open(root: &Path, config: DiskStoreConfig) -> Result<(Shared, DirLock), StoreError> {
    let paths = Paths::new(root);
    create_dir(root)?;
    let dir_lock = DirLock::acquire(root)?;
    for sub in [paths.tmp_dir(), paths.quarantine_dir()] {
        create_dir(&sub)?;
    }
    for byte in 0..=255u8 {
        create_dir(&paths.piece_shard(byte))?;
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
    for (id, size, _) in &found {
        index.insert(*id, *size, true, false);
    }
    let roots_path = paths.roots_log();
    for root in RootsLog::load(&roots_path)? {
        // The log never holds more than the bound (checked as it replays).
        index.check_room(1)?;
        index.pin_root(root);
    }
    let marked = legacy_pin_markers(&paths)?;
    let sync = config.fsync != FsyncPolicy::Never;
    let extents = Extents::load(&paths.root().join(EXTENTS_FILE), sync)?;
    let shared = Shared {
        paths,
        config,
        state: Mutex::new(State::new(index, RootsLog::new(&roots_path, sync), extents)),
    };
    shared.migrate_pin_markers(&marked)?;
    shared.settle();
    {
        let mut guard = shared.state();
        let state = &mut *guard;
        // Written whole at every open: drops a torn last line, and records
        // migrated markers before they are removed.
        state.roots_log.compact(&state.index.roots())?;
        state.extents.compact()?;
        let legacy = shared.paths.legacy_pins_dir();
        if legacy.exists() {
            fs::remove_dir_all(&legacy).map_err(StoreError::io("remove", &legacy))?;
        }
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
