//! The disk store on its packs: appends and reads across reopens, the pack
//! size limit, torn tails, deletes that stay deleted, compaction (whole and
//! cut short between its steps), and the upgrade of an older store's piece
//! files.
// Test code: a failed unwrap is the test failing; sizes are small constants.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::fs;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

use super::pack::{
    PACK_COMPACT_LIVE_PERCENT, PACK_MAX_BYTES, PACKS_DIR, RECORD_HEADER_LEN, list_packs,
    locate_piece, pack_path,
};
use super::{DiskStore, DiskStoreConfig, FsyncPolicy};
use crate::store::{Durability, PieceStore, Retention, Root};

const HEADER: u64 = RECORD_HEADER_LEN as u64;

/// A piece of `len` bytes, distinct for each `seed`.
fn piece(seed: u64, len: usize) -> VerifiedPiece {
    let mut bytes = vec![0xc3; len];
    let seed = seed.to_le_bytes();
    let head = len.min(seed.len());
    bytes[..head].copy_from_slice(&seed[..head]);
    VerifiedPiece::new(Bytes::from(bytes)).unwrap()
}

fn open_with(dir: &Path, capacity: u64, fsync: FsyncPolicy) -> DiskStore {
    let mut config = DiskStoreConfig::new(capacity);
    config.fsync = fsync;
    DiskStore::open(dir, config).unwrap()
}

fn open(dir: &Path, fsync: FsyncPolicy) -> DiskStore {
    open_with(dir, 1 << 40, fsync)
}

fn packs(dir: &Path) -> Vec<u32> {
    list_packs(&dir.join(PACKS_DIR)).unwrap()
}

fn pack_size(dir: &Path, number: u32) -> u64 {
    fs::metadata(pack_path(&dir.join(PACKS_DIR), number))
        .unwrap()
        .len()
}

fn sorted(mut ids: Vec<PieceId>) -> Vec<PieceId> {
    ids.sort();
    ids
}

fn assert_holds(store: &DiskStore, pieces: &[VerifiedPiece]) {
    for p in pieces {
        assert_eq!(
            store.get(&p.id()).unwrap().as_ref(),
            Some(p.bytes()),
            "piece {}",
            p.id()
        );
    }
}

#[test]
fn pieces_share_one_pack_and_are_read_back_verified_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..200).map(|i| piece(i, 1000 + i as usize)).collect();
    {
        let store = open(dir.path(), FsyncPolicy::Batch);
        store
            .put_many(pieces[..100].to_vec(), Retention::Cached)
            .unwrap();
        for p in &pieces[100..] {
            store
                .put(p.clone(), Retention::Pinned, Durability::Wait)
                .unwrap();
        }
        assert_holds(&store, &pieces);
    }
    // 200 pieces, one file.
    assert_eq!(packs(dir.path()), vec![0]);
    assert_eq!(fs::read_dir(dir.path().join(PACKS_DIR)).unwrap().count(), 1);
    let store = open(dir.path(), FsyncPolicy::Batch);
    let report = store.verify_all().unwrap();
    assert_eq!(report.checked, 200);
    assert!(report.corrupt.is_empty());
    assert_holds(&store, &pieces);
    assert_eq!(store.roots().len(), 100);
}

#[test]
fn a_pack_fills_to_exactly_its_limit_then_the_next_one_starts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), FsyncPolicy::Never);
    let full = PIECE_MAX as u64 + HEADER;
    let whole = PACK_MAX_BYTES / full;
    let mut pieces: Vec<_> = (0..whole).map(|i| piece(i, PIECE_MAX)).collect();
    // The last record ends exactly at the limit.
    let rest = PACK_MAX_BYTES - whole * full - HEADER;
    assert!(rest > 0 && rest <= PIECE_MAX as u64);
    pieces.push(piece(whole, rest as usize));
    for group in pieces.chunks(16) {
        store.put_many(group.to_vec(), Retention::Cached).unwrap();
    }
    assert_eq!(packs(dir.path()), vec![0]);
    assert_eq!(pack_size(dir.path(), 0), PACK_MAX_BYTES);
    // One byte more does not fit: a new pack.
    let one = piece(u64::MAX, 1);
    store
        .put(one.clone(), Retention::Cached, Durability::Wait)
        .unwrap();
    assert_eq!(packs(dir.path()), vec![0, 1]);
    assert_eq!(pack_size(dir.path(), 0), PACK_MAX_BYTES);
    assert_eq!(pack_size(dir.path(), 1), HEADER + 1);
    drop(store);
    let store = open(dir.path(), FsyncPolicy::Never);
    assert_eq!(store.list().len(), pieces.len() + 1);
    assert_holds(
        &store,
        &[pieces[0].clone(), pieces[whole as usize].clone(), one],
    );
}

#[test]
fn a_torn_append_is_cut_off_at_open_and_appends_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..3).map(|i| piece(i, 5000)).collect();
    {
        let store = open(dir.path(), FsyncPolicy::Always);
        for p in &pieces {
            store
                .put(p.clone(), Retention::Pinned, Durability::Wait)
                .unwrap();
        }
    }
    let pack = pack_path(&dir.path().join(PACKS_DIR), 0);
    let good = fs::metadata(&pack).unwrap().len();
    // A crash mid-append: a whole header, a tenth of the data it announces.
    let torn = piece(9, 5000);
    let header = super::pack::Header {
        kind: super::pack::Kind::Piece,
        id: torn.id(),
        len: 5000,
    };
    let mut file = fs::OpenOptions::new().append(true).open(&pack).unwrap();
    file.write_all(&header.encode()).unwrap();
    file.write_all(&torn.bytes()[..500]).unwrap();
    drop(file);

    let store = open(dir.path(), FsyncPolicy::Always);
    assert_eq!(fs::metadata(&pack).unwrap().len(), good, "torn tail kept");
    assert!(!store.has(&torn.id()));
    assert_eq!(store.list().len(), 3);
    let after = piece(10, 777);
    store
        .put(after.clone(), Retention::Pinned, Durability::Wait)
        .unwrap();
    drop(store);
    let store = open(dir.path(), FsyncPolicy::Always);
    assert_holds(&store, &pieces);
    assert_holds(&store, &[after]);
}

#[test]
fn deleted_pieces_stay_deleted_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..20).map(|i| piece(i, 1000)).collect();
    {
        // Room for ten: the first ten are evicted.
        let store = open_with(dir.path(), 10_000, FsyncPolicy::Batch);
        for p in &pieces {
            store
                .put(p.clone(), Retention::Cached, Durability::Wait)
                .unwrap();
        }
        assert_eq!(store.list().len(), 10);
    }
    // Reopened larger, the evicted ones do not come back.
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert_eq!(
        sorted(store.list()),
        sorted(pieces[10..].iter().map(VerifiedPiece::id).collect())
    );
    assert_eq!(locate_piece(dir.path(), &pieces[0].id()).unwrap(), None);
    // And one put again is held again.
    store
        .put(pieces[0].clone(), Retention::Cached, Durability::Wait)
        .unwrap();
    drop(store);
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert_holds(&store, &[pieces[0].clone()]);
}

/// A store whose first pack is full of 1 MiB cached pieces (the second
/// being appended to), the first `kept` pinned as loose roots.
fn two_packs(dir: &Path, kept: u64) -> (DiskStore, Vec<VerifiedPiece>) {
    let store = open(dir, FsyncPolicy::Batch);
    let per_pack = PACK_MAX_BYTES / (PIECE_MAX as u64 + HEADER);
    let pieces: Vec<_> = (0..=per_pack).map(|i| piece(i, PIECE_MAX)).collect();
    for group in pieces.chunks(16) {
        store.put_many(group.to_vec(), Retention::Cached).unwrap();
    }
    assert_eq!(packs(dir), vec![0, 1]);
    for p in &pieces[..kept as usize] {
        assert!(store.pin_root(Root::Piece(p.id())).unwrap());
    }
    (store, pieces)
}

#[test]
fn gc_compacts_a_pack_whose_live_bytes_fell_below_the_ratio() {
    let dir = tempfile::tempdir().unwrap();
    let kept = 10;
    let (store, pieces) = two_packs(dir.path(), kept);
    let report = store.gc().unwrap();
    assert_eq!(report.pieces, pieces.len() as u64 - kept);
    // Pack 0 held 10 live pieces of 63: rewritten into pack 1, removed.
    assert_eq!(packs(dir.path()), vec![1]);
    let kept = &pieces[..kept as usize];
    assert_holds(&store, kept);
    drop(store);
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert_eq!(
        sorted(store.list()),
        sorted(kept.iter().map(VerifiedPiece::id).collect())
    );
    assert_holds(&store, kept);
    assert_eq!(store.verify_all().unwrap().checked, kept.len() as u64);
}

#[test]
fn a_pack_at_the_live_ratio_is_kept_and_one_below_it_is_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let per_pack = PACK_MAX_BYTES / (PIECE_MAX as u64 + HEADER);
    // Live bytes are whole records here: the largest count still below
    // the ratio, and one more.
    let size = per_pack * (PIECE_MAX as u64 + HEADER);
    let record = PIECE_MAX as u64 + HEADER;
    let below = (PACK_COMPACT_LIVE_PERCENT * size).div_ceil(100 * record) - 1;
    assert!(super::pack::below_live_ratio(below * record, size));
    assert!(!super::pack::below_live_ratio((below + 1) * record, size));
    let (store, _) = two_packs(dir.path(), below + 1);
    store.gc().unwrap();
    assert_eq!(packs(dir.path()), vec![0, 1], "a pack at the ratio is kept");
    drop(store);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = two_packs(dir.path(), below);
    store.gc().unwrap();
    assert_eq!(packs(dir.path()), vec![1]);
}

#[test]
fn a_compaction_cut_short_before_the_old_pack_is_removed_resolves_to_the_later_copy() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let kept = 10;
    let (store, pieces) = two_packs(dir.path(), kept);
    let old = pack_path(&dir.path().join(PACKS_DIR), 0);
    // The old pack as it was when the copy had been fsynced but the old
    // pack not yet removed (compaction never changes it).
    let image = saved.path().join("00000000.pack");
    fs::copy(&old, &image).unwrap();
    store.gc().unwrap();
    drop(store);
    assert!(!old.exists());
    fs::copy(&image, &old).unwrap();

    let store = open(dir.path(), FsyncPolicy::Batch);
    let kept = &pieces[..kept as usize];
    // Deleted pieces stay deleted (their tombstones come later), the kept
    // ones are read from their later copies.
    assert_eq!(
        sorted(store.list()),
        sorted(kept.iter().map(VerifiedPiece::id).collect())
    );
    for p in kept {
        let (path, _, _) = locate_piece(dir.path(), &p.id()).unwrap().unwrap();
        assert!(path.ends_with("00000001.pack"), "{}", path.display());
    }
    assert_holds(&store, kept);
    // The old pack, all dead now, is compacted away again.
    store.gc().unwrap();
    assert_eq!(packs(dir.path()), vec![1]);
    drop(store);
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert_holds(&store, kept);
}

#[test]
fn the_committer_compacts_in_the_background_after_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let (store, pieces) = two_packs(dir.path(), 0);
    drop(store);
    // Reopened smaller: open evicts most of pack 0, and the committer
    // thread compacts it without a gc.
    let store = open_with(dir.path(), 8 * PIECE_MAX as u64, FsyncPolicy::Batch);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while packs(dir.path()).contains(&0) {
        assert!(
            std::time::Instant::now() < deadline,
            "pack 0 never compacted"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let held = store.list();
    assert_eq!(held.len(), 8);
    let last: Vec<_> = pieces[pieces.len() - 8..].to_vec();
    assert_holds(&store, &last);
}

/// Turns a store's packs into an older store's piece files.
fn to_legacy(dir: &Path, ids: &[PieceId]) {
    use std::os::unix::fs::FileExt;
    for id in ids {
        let (path, offset, len) = locate_piece(dir, id).unwrap().unwrap();
        let mut bytes = vec![0u8; len as usize];
        fs::File::open(path)
            .unwrap()
            .read_exact_at(&mut bytes, offset)
            .unwrap();
        let shard = dir.join("pieces").join(format!("{:02x}", id.first_byte()));
        fs::create_dir_all(&shard).unwrap();
        fs::write(shard.join(id.to_hex()), bytes).unwrap();
    }
    fs::remove_dir_all(dir.join(PACKS_DIR)).unwrap();
}

#[test]
fn an_older_store_s_piece_files_are_moved_into_packs_with_their_pins() {
    let dir = tempfile::tempdir().unwrap();
    let pinned: Vec<_> = (0..5).map(|i| piece(i, 3000)).collect();
    let cached: Vec<_> = (5..30).map(|i| piece(i, PIECE_MAX / 4)).collect();
    {
        let store = open(dir.path(), FsyncPolicy::Batch);
        store.put_many(pinned.clone(), Retention::Pinned).unwrap();
        store.put_many(cached.clone(), Retention::Cached).unwrap();
        to_legacy(dir.path(), &store.list());
    }
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert!(!dir.path().join("pieces").exists());
    assert_eq!(packs(dir.path()), vec![0]);
    assert_eq!(store.list().len(), 30);
    assert_holds(&store, &pinned);
    assert_holds(&store, &cached);
    assert!(pinned.iter().all(|p| store.is_pinned(&p.id())));
    assert!(!cached.iter().any(|p| store.is_pinned(&p.id())));
}

#[test]
fn a_migration_cut_short_before_the_files_are_removed_runs_again_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let saved = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..12).map(|i| piece(i, 10_000)).collect();
    {
        let store = open(dir.path(), FsyncPolicy::Batch);
        store.put_many(pieces.clone(), Retention::Pinned).unwrap();
        to_legacy(dir.path(), &store.list());
    }
    let legacy = dir.path().join("pieces");
    copy_tree(&legacy, &saved.path().join("pieces"));
    // Migrated once, then the files put back: as if the crash came after
    // the packs were fsynced and before the files were removed.
    drop(open(dir.path(), FsyncPolicy::Batch));
    copy_tree(&saved.path().join("pieces"), &legacy);
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert!(!legacy.exists());
    assert_eq!(store.list().len(), pieces.len());
    assert_eq!(store.stats().bytes, 12 * 10_000);
    assert_holds(&store, &pieces);
    // A file an older store left half-written is refused, not migrated.
    drop(store);
    let id = piece(99, 10).id();
    let shard = legacy.join(format!("{:02x}", id.first_byte()));
    fs::create_dir_all(&shard).unwrap();
    fs::write(shard.join(id.to_hex()), b"").unwrap();
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert!(!store.has(&id));
    assert_eq!(store.list().len(), pieces.len());
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// Descriptors this process holds open on files under `dir`.
fn open_files_under(dir: &Path) -> usize {
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|fd| fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

#[test]
fn only_the_active_pack_is_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let (store, pieces) = two_packs(dir.path(), 0);
    drop(store);
    let packs_dir = dir.path().join(PACKS_DIR);
    let store = open(dir.path(), FsyncPolicy::Batch);
    assert_eq!(packs(dir.path()), vec![0, 1]);
    // Pack 0 is opened per read, not held: a store of many packs costs
    // no descriptor per pack.
    assert_holds(&store, &pieces[..2]);
    assert_eq!(open_files_under(&packs_dir), 1);
}
