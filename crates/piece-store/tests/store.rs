//! The store contract on the disk and memory stores, and the disk store's
//! durability, verification, pinning and locking.
// Test helpers outside #[test] functions unwrap too (a failure is the test
// failing), and test data sizes are small constants.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation
)]

use std::fs;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use piece_store::disk::locate_piece;
use piece_store::{
    DiskStore, DiskStoreConfig, Durability, FsyncPolicy, MemStore, PieceStore, Retention, Root,
    StoreError,
};
use wire_format::{PieceId, VerifiedPiece};

const MIB: u64 = 1 << 20;

fn piece(seed: u32, len: usize) -> VerifiedPiece {
    let mut bytes = vec![0u8; len];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seed) as u8;
    }
    bytes[..4.min(len)].copy_from_slice(&seed.to_le_bytes()[..4.min(len)]);
    VerifiedPiece::new(Bytes::from(bytes)).unwrap()
}

fn open(dir: &Path, capacity: u64, fsync: FsyncPolicy) -> DiskStore {
    let mut config = DiskStoreConfig::new(capacity);
    config.fsync = fsync;
    DiskStore::open(dir, config).unwrap()
}

/// A piece file of a store from before the packs.
fn legacy_piece_file(dir: &Path, id: &PieceId) -> std::path::PathBuf {
    dir.join("pieces")
        .join(format!("{:02x}", id.first_byte()))
        .join(id.to_hex())
}

/// The bytes a (closed or open) store keeps for `id` in its packs.
fn stored_bytes(dir: &Path, id: &PieceId) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let (path, offset, len) = locate_piece(dir, id).unwrap()?;
    let mut bytes = vec![0u8; len as usize];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut bytes, offset)
        .unwrap();
    Some(bytes)
}

/// Overwrites the bytes the store keeps for `id` in its packs (same length).
fn overwrite_stored(dir: &Path, id: &PieceId, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let (path, offset, len) = locate_piece(dir, id).unwrap().unwrap();
    assert_eq!(bytes.len(), len as usize);
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

fn contract(store: &dyn PieceStore) {
    let a = piece(1, 1000);
    let b = piece(2, 1);
    assert!(!store.has(&a.id()));
    assert_eq!(store.get(&a.id()).unwrap(), None);
    store
        .put(a.clone(), Retention::Cached, Durability::Wait)
        .unwrap();
    store
        .put(b.clone(), Retention::Pinned, Durability::Wait)
        .unwrap();
    assert!(store.has(&a.id()) && store.has(&b.id()));
    assert_eq!(store.get(&a.id()).unwrap().as_ref(), Some(a.bytes()));
    assert_eq!(store.get(&b.id()).unwrap().as_ref(), Some(b.bytes()));
    let mut listed = store.list();
    listed.sort();
    let mut expected = vec![a.id(), b.id()];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(!store.is_pinned(&a.id()));
    assert!(store.is_pinned(&b.id()));
    assert_eq!(store.roots(), vec![Root::Piece(b.id())]);
    // Re-putting a held piece pinned makes it a loose root.
    store
        .put(a.clone(), Retention::Pinned, Durability::Wait)
        .unwrap();
    assert!(store.is_pinned(&a.id()));
    assert!(store.unpin_root(Root::Piece(a.id())).unwrap());
    assert!(
        !store.unpin_root(Root::Piece(a.id())).unwrap(),
        "not pinned"
    );
    assert!(!store.is_pinned(&a.id()));
    // A root may name a piece not held yet.
    let absent = piece(3, 5).id();
    assert!(store.pin_root(Root::Piece(absent)).unwrap());
    assert!(
        !store.pin_root(Root::Piece(absent)).unwrap(),
        "pinned already"
    );
    assert!(store.is_pinned(&absent) && !store.has(&absent));
    assert!(store.unpin_root(Root::Piece(absent)).unwrap());
    assert_eq!(store.size(&a.id()), Some(1000));
    assert_eq!(store.size(&absent), None);
    let stats = store.stats();
    assert_eq!(stats.pieces, 2);
    assert_eq!(stats.bytes, 1001);
    assert_eq!(stats.pinned_bytes, 1);
}

#[test]
fn memory_store_keeps_the_contract() {
    contract(&MemStore::new(10 * MIB));
}

#[test]
fn disk_store_keeps_the_contract_under_every_fsync_policy() {
    for policy in [FsyncPolicy::Always, FsyncPolicy::Batch, FsyncPolicy::Never] {
        let dir = tempfile::tempdir().unwrap();
        contract(&open(dir.path(), 10 * MIB, policy));
        // And everything is there after reopening.
        let store = open(dir.path(), 10 * MIB, policy);
        assert_eq!(store.list().len(), 2, "{policy}");
    }
}

#[test]
fn left_over_temp_files_of_an_older_store_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), MIB, FsyncPolicy::Batch));
    fs::create_dir(dir.path().join("tmp")).unwrap();
    let stale = dir.path().join("tmp").join("deadbeef.0000.tmp");
    fs::write(&stale, b"half a piece").unwrap();
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(!dir.path().join("tmp").exists());
    assert!(store.list().is_empty());
}

#[test]
fn stray_and_impossible_legacy_files_are_not_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let p = piece(1, 10);
    // Right name in the wrong shard, and a zero-length "piece".
    let wrong_shard = dir
        .path()
        .join("pieces")
        .join(format!("{:02x}", p.id().first_byte().wrapping_add(1)))
        .join(p.id().to_hex());
    fs::create_dir_all(wrong_shard.parent().unwrap()).unwrap();
    fs::write(&wrong_shard, p.bytes()).unwrap();
    let empty = legacy_piece_file(dir.path(), &piece(2, 10).id());
    fs::create_dir_all(empty.parent().unwrap()).unwrap();
    fs::write(&empty, b"").unwrap();
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(store.list().is_empty());
    assert!(!dir.path().join("pieces").exists());
}

#[test]
fn a_cached_piece_altered_on_disk_is_deleted_and_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let p = piece(7, 4096);
    {
        let store = open(dir.path(), MIB, FsyncPolicy::Batch);
        store
            .put(p.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
    }
    let mut bytes = stored_bytes(dir.path(), &p.id()).unwrap();
    bytes[100] ^= 1;
    overwrite_stored(dir.path(), &p.id(), &bytes);
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(store.has(&p.id()));
    match store.get(&p.id()) {
        Err(StoreError::Corrupt { id, quarantined }) => {
            assert_eq!(id, p.id());
            assert!(!quarantined);
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
    assert!(!store.has(&p.id()));
    assert_eq!(store.get(&p.id()).unwrap(), None);
    assert_eq!(store.stats().corrupt, 1);
    // Dropped for good: not back after a restart.
    drop(store);
    assert_eq!(locate_piece(dir.path(), &p.id()).unwrap(), None);
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(!store.has(&p.id()));
    // The swarm can provide it again.
    store
        .put(p.clone(), Retention::Cached, Durability::Wait)
        .unwrap();
    assert_eq!(store.get(&p.id()).unwrap().as_ref(), Some(p.bytes()));
}

#[test]
fn a_pinned_piece_altered_on_disk_is_quarantined_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let p = piece(8, 4096);
    {
        let store = open(dir.path(), MIB, FsyncPolicy::Batch);
        store
            .put(p.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
    }
    let rotten = vec![0x42u8; 4096];
    overwrite_stored(dir.path(), &p.id(), &rotten);
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(matches!(
        store.get(&p.id()),
        Err(StoreError::Corrupt {
            quarantined: true,
            ..
        })
    ));
    let kept = dir.path().join("quarantine").join(p.id().to_hex());
    assert_eq!(fs::read(kept).unwrap(), rotten);
    assert_eq!(store.quarantined(), vec![p.id()]);
    assert!(!store.has(&p.id()));
}

#[test]
fn pieces_are_verified_once_per_open_unless_verify_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = piece(9, 4096);
    {
        let store = open(dir.path(), MIB, FsyncPolicy::Batch);
        store
            .put(p.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        // Written this run: known good, so not re-hashed on read.
        overwrite_stored(dir.path(), &p.id(), &[0u8; 4096]);
        assert!(store.get(&p.id()).unwrap().is_some());
    }
    // A new run re-verifies on the first read.
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(matches!(
        store.get(&p.id()),
        Err(StoreError::Corrupt { .. })
    ));

    let mut config = DiskStoreConfig::new(MIB);
    config.verify_on_read = true;
    drop(store);
    let store = DiskStore::open(dir.path(), config).unwrap();
    store
        .put(p.clone(), Retention::Cached, Durability::Wait)
        .unwrap();
    assert!(store.get(&p.id()).unwrap().is_some());
    overwrite_stored(dir.path(), &p.id(), &[0u8; 4096]);
    assert!(matches!(
        store.get(&p.id()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn scrub_finds_corruption_and_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..5).map(|i| piece(100 + i, 2048)).collect();
    {
        let store = open(dir.path(), MIB, FsyncPolicy::Batch);
        store.put_many(pieces.clone(), Retention::Cached).unwrap();
    }
    overwrite_stored(dir.path(), &pieces[3].id(), &[1u8; 2048]);
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    let first = store.scrub(3);
    let second = store.scrub(3);
    assert_eq!(first.checked + second.checked, 5);
    assert!(!first.wrapped && second.wrapped);
    let corrupt: Vec<_> = first
        .corrupt
        .iter()
        .chain(&second.corrupt)
        .copied()
        .collect();
    assert_eq!(corrupt, vec![pieces[3].id()]);
    assert_eq!(store.list().len(), 4);
}

#[test]
fn pins_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = piece(1, 100);
    let cached = piece(2, 100);
    let later = piece(3, 100);
    {
        let store = open(dir.path(), MIB, FsyncPolicy::Batch);
        store
            .put(pinned.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
        store
            .put(cached.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        store
            .put(later.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert!(store.pin_root(Root::Piece(later.id())).unwrap());
    }
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(store.is_pinned(&pinned.id()));
    assert!(store.is_pinned(&later.id()));
    assert!(!store.is_pinned(&cached.id()));
    assert!(store.unpin_root(Root::Piece(later.id())).unwrap());
    drop(store);
    let store = open(dir.path(), MIB, FsyncPolicy::Batch);
    assert!(!store.is_pinned(&later.id()));
    assert_eq!(store.stats().pinned_bytes, 100);
}

#[test]
fn eviction_is_least_recently_used_and_spares_pinned_pieces() {
    let dir = tempfile::tempdir().unwrap();
    for store in [
        Box::new(MemStore::new(3 * MIB)) as Box<dyn PieceStore>,
        Box::new(open(dir.path(), 3 * MIB, FsyncPolicy::Never)),
    ] {
        let full = |seed| piece(seed, MIB as usize);
        let (p, a, b, c) = (full(1), full(2), full(3), full(4));
        store
            .put(p.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
        store
            .put(a.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        store
            .put(b.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        // Reading a makes b the least recently used.
        store.get(&a.id()).unwrap();
        store
            .put(c.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert!(store.has(&p.id()) && store.has(&a.id()) && store.has(&c.id()));
        assert!(!store.has(&b.id()));
        assert_eq!(store.stats().evictions, 1);
        assert_eq!(store.stats().bytes, 3 * MIB);
    }
}

#[test]
fn store_full_when_pinned_data_alone_exceeds_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 2 * MIB, FsyncPolicy::Batch);
    let full = |seed| piece(seed, MIB as usize);
    store
        .put(full(1), Retention::Pinned, Durability::Wait)
        .unwrap();
    // Exactly at capacity is accepted.
    store
        .put(full(2), Retention::Pinned, Durability::Wait)
        .unwrap();
    // One byte more is refused, whatever its retention, and nothing changes.
    for retention in [Retention::Pinned, Retention::Cached] {
        match store.put(piece(3, 1), retention, Durability::Wait) {
            Err(err @ StoreError::Full { .. }) => {
                assert!(err.to_string().contains("store full"), "{err}");
            }
            other => panic!("expected store full, got {other:?}"),
        }
    }
    assert_eq!(store.stats().pieces, 2);
}

#[test]
fn a_lowered_capacity_evicts_cached_pieces_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 4 * MIB, FsyncPolicy::Batch);
        for seed in 0..4 {
            store
                .put(
                    piece(seed, MIB as usize),
                    Retention::Cached,
                    Durability::Wait,
                )
                .unwrap();
        }
    }
    let store = open(dir.path(), 2 * MIB, FsyncPolicy::Batch);
    assert_eq!(store.stats().bytes, 2 * MIB);
    assert_eq!(store.list().len(), 2);
}

#[test]
fn a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path(), MIB, FsyncPolicy::Batch);
    match DiskStore::open(dir.path(), DiskStoreConfig::new(MIB)) {
        Err(err @ StoreError::Locked { .. }) => {
            assert!(
                err.to_string().contains("in use by another process"),
                "{err}"
            )
        }
        other => panic!("expected locked, got {other:?}"),
    }
}

#[test]
fn background_puts_are_readable_at_once_and_durable_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let pieces: Vec<_> = (0..20).map(|i| piece(i, 10_000)).collect();
    {
        let store = open(dir.path(), 10 * MIB, FsyncPolicy::Batch);
        for p in &pieces {
            store
                .put(p.clone(), Retention::Cached, Durability::Background)
                .unwrap();
            assert_eq!(store.get(&p.id()).unwrap().as_ref(), Some(p.bytes()));
        }
    }
    for p in &pieces {
        assert_eq!(
            stored_bytes(dir.path(), &p.id()).unwrap(),
            p.bytes().as_ref()
        );
    }
}

#[test]
fn concurrent_waiting_puts_share_group_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), 64 * MIB, FsyncPolicy::Batch));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..25 {
                    let p = piece(t * 1000 + i, 50_000);
                    store
                        .put(p.clone(), Retention::Pinned, Durability::Wait)
                        .unwrap();
                    // Durable, so in a pack, when put returns.
                    assert!(locate_piece(store.root(), &p.id()).unwrap().is_some());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.list().len(), 100);
}

#[test]
fn put_many_commits_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 64 * MIB, FsyncPolicy::Batch);
    let pieces: Vec<_> = (0..32).map(|i| piece(i, 100_000)).collect();
    store.put_many(pieces.clone(), Retention::Pinned).unwrap();
    for p in &pieces {
        assert_eq!(
            stored_bytes(dir.path(), &p.id()).unwrap(),
            p.bytes().as_ref()
        );
        assert!(store.is_pinned(&p.id()));
    }
}

#[test]
fn the_faulty_store_records_stalls_and_fails_what_it_is_told_and_forwards_the_rest() {
    use piece_store::testing::{Call, FaultyStore, Op};

    let store = Arc::new(FaultyStore::new(Arc::new(MemStore::new(MIB))));
    let a = piece(1, 100);
    store.fail(Op::Put, || StoreError::Full {
        needed: 100,
        pinned: 0,
        capacity: 0,
    });
    let err = store
        .put(a.clone(), Retention::Pinned, Durability::Background)
        .unwrap_err();
    assert!(matches!(err, StoreError::Full { needed: 100, .. }), "{err}");
    assert!(
        !store.inner().has(&a.id()),
        "a failed put reached the store"
    );

    store.heal(Op::Put);
    let gate = store.stall(Op::Put);
    let _open = gate.open_on_drop();
    let putter = {
        let store = Arc::clone(&store);
        let a = a.clone();
        std::thread::spawn(move || store.put(a, Retention::Cached, Durability::Wait))
    };
    // The stalled put is counted at once but does not reach the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.count(Op::Put) < 2 {
        assert!(std::time::Instant::now() < deadline, "the put never came");
        std::thread::yield_now();
    }
    assert!(!store.has(&a.id()));
    gate.open();
    putter.join().unwrap().unwrap();
    assert!(store.has(&a.id()));

    assert_eq!(
        store.calls(),
        vec![
            Call::Put {
                id: a.id(),
                retention: Retention::Pinned,
                durability: Durability::Background,
            },
            Call::Put {
                id: a.id(),
                retention: Retention::Cached,
                durability: Durability::Wait,
            },
            Call::Has(a.id()),
            Call::Has(a.id()),
        ]
    );
    assert_eq!(store.count(Op::Has), 2);
}
