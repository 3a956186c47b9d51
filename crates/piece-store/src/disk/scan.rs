//! Opening a store directory: create its layout, take its lock, read the
//! packs (truncating torn tails), move the piece files of an older store
//! into packs, rebuild the index (sizes, recency) from the packs, load the
//! pinned roots (migrating older pin markers) and reach their trees, then
//! evict down to the capacity.
//!
//! Uses the store's paths, packs, shared state, configuration, roots index
//! and pins, the crate's index and the directory lock.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::config::{DiskStoreConfig, FsyncPolicy};
use super::extents::{EXTENTS_FILE, Extents};
use super::pack::{self, Kind, PackTable, Writer};
use super::paths::{Paths, create_dir, remove_if_exists, sync_dir};
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
    for sub in [paths.quarantine_dir(), paths.packs_dir()] {
        create_dir(&sub)?;
    }
    let sync = config.fsync != FsyncPolicy::Never;
    let (mut packs, mut writer) = pack::open(&paths.packs_dir(), sync)?;
    let table = Mutex::new(MigrationTable(packs));
    migrate_piece_files(&paths, &table, &mut writer)?;
    packs = table
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .0;
    let tmp = paths.tmp_dir();
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(StoreError::io("remove", &tmp))?;
    }
    let mut index = Index::new(config.capacity);
    // Record order is write order: recency survives a restart approximately.
    for (id, loc) in packs.in_order() {
        index.insert(id, u64::from(loc.len), true, false);
    }
    let roots_path = paths.roots_log();
    for root in RootsLog::load(&roots_path)? {
        // The log never holds more than the bound (checked as it replays).
        index.check_room(1)?;
        index.pin_root(root);
    }
    let marked = legacy_pin_markers(&paths)?;
    let extents = Extents::load(&paths.root().join(EXTENTS_FILE), sync)?;
    let shared = Shared {
        paths,
        config,
        state: Mutex::new(State::new(
            index,
            packs,
            RootsLog::new(&roots_path, sync),
            extents,
        )),
        writer: Mutex::new(writer),
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
        state.delete_victims(&victims);
    }
    Ok((shared, dir_lock))
}

/// The pack table alone, for the writer while opening (before the state
/// exists).
#[derive(Debug)]
struct MigrationTable(PackTable);

impl AsMut<PackTable> for MigrationTable {
    fn as_mut(&mut self) -> &mut PackTable {
        &mut self.0
    }
}

/// Moves the piece files of a store from before the packs
/// (`pieces/<shard>/<id>`) into packs, oldest first: every file is appended,
/// the packs are fsynced (whatever the policy: these are the user's pieces),
/// and only then are the files removed. A crash in between leaves a piece
/// both in a file and in a pack; the next open appends it again and the
/// later record wins. The bytes are copied unverified, as the files were
/// indexed: the first read after open verifies them.
fn migrate_piece_files(
    paths: &Paths,
    table: &Mutex<MigrationTable>,
    writer: &mut Writer,
) -> Result<(), StoreError> {
    let legacy = paths.legacy_pieces_dir();
    if !legacy.is_dir() {
        return Ok(());
    }
    let mut found = scan_pieces(paths)?;
    found.sort_by_key(|(_, _, mtime)| *mtime);
    let mut moved = Vec::with_capacity(found.len());
    for (id, size, _) in found {
        let path = paths.legacy_piece(&id);
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(PIECE_MAX));
        // Bounded by the piece limit whatever the file grew to meanwhile.
        File::open(&path)
            .and_then(|file| file.take(PIECE_MAX as u64 + 1).read_to_end(&mut bytes))
            .map_err(StoreError::io("read", &path))?;
        if !(1..=PIECE_MAX).contains(&bytes.len()) {
            remove_if_exists(&path)?;
            continue;
        }
        let loc = writer.append(table, Kind::Piece, id, &bytes)?;
        moved.push((id, loc, path));
    }
    {
        let mut guard = super::shared::lock(table);
        let mut synced = std::collections::BTreeSet::new();
        for (id, loc, _) in &moved {
            // Every pack written to, whatever the policy.
            if synced.insert(loc.pack) {
                let path = pack::pack_path(&paths.packs_dir(), loc.pack);
                File::open(&path)
                    .and_then(|file| file.sync_data())
                    .map_err(StoreError::io("fsync", &path))?;
            }
            guard.0.set_live(*id, *loc);
        }
    }
    for (_, _, path) in &moved {
        remove_if_exists(path)?;
    }
    fs::remove_dir_all(&legacy).map_err(StoreError::io("remove", &legacy))?;
    sync_dir(paths.root())?;
    Ok(())
}

/// Lists every piece file: (id, size, mtime). Files with names that are not
/// ids of their shard, or sizes no piece can have, are removed.
fn scan_pieces(paths: &Paths) -> Result<Vec<(PieceId, u64, SystemTime)>, StoreError> {
    let mut found = Vec::new();
    for byte in 0..=255u8 {
        let dir = paths.piece_shard(byte);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(StoreError::io("list", &dir)(err)),
        };
        for entry in entries {
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
