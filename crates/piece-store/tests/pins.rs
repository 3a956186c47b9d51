//! Pins as roots on both stores: shared pieces survive unpinning one file,
//! `gc` removes exactly what no root reaches, a file root pinned before its
//! pieces arrive protects them, roots survive reopening and a crash, old pin
//! markers are migrated, the root bound holds, and the listing names files.
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

use bytes::Bytes;
use piece_store::disk::ROOTS_FILE;
use piece_store::file::{FileSummary, add_file, pieces_of, walk};
use piece_store::manifest::Layout;
use piece_store::{
    DiskStore, DiskStoreConfig, Durability, FsyncPolicy, GcReport, MemStore, PieceStore,
    PinnedFile, PinnedPiece, ROOTS_MAX, Retention, Root, StoreError,
};
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

const MIB: u64 = PIECE_MAX as u64;

fn piece(seed: u32, len: usize) -> VerifiedPiece {
    let mut bytes = vec![0x33u8; len];
    let seed = seed.to_le_bytes();
    let head = len.min(seed.len());
    bytes[..head].copy_from_slice(&seed[..head]);
    VerifiedPiece::new(Bytes::from(bytes)).unwrap()
}

fn open(dir: &Path, capacity: u64) -> DiskStore {
    let mut config = DiskStoreConfig::new(capacity);
    config.fsync = FsyncPolicy::Never;
    DiskStore::open(dir, config).unwrap()
}

/// A memory store and a disk store (in `dir`) of `capacity` bytes.
fn both(dir: &Path, capacity: u64) -> Vec<Box<dyn PieceStore>> {
    vec![
        Box::new(MemStore::new(capacity)),
        Box::new(open(dir, capacity)),
    ]
}

/// `first` full piece of 0xaa, then `tail` bytes of `fill`.
fn file_bytes(tail: usize, fill: u8) -> Vec<u8> {
    let mut bytes = vec![0xaa; PIECE_MAX];
    bytes.extend(std::iter::repeat_n(fill, tail));
    bytes
}

fn add(store: &dyn PieceStore, bytes: &[u8], name: &str, layout: &Layout) -> FileSummary {
    add_file(store, bytes, name, layout).unwrap()
}

/// Every piece of a file's tree (manifests and data), in walk order.
fn tree_pieces(store: &dyn PieceStore, root: &PieceId, layout: &Layout) -> Vec<PieceId> {
    let mut ids = Vec::new();
    for event in walk(store, root, layout) {
        match event.unwrap() {
            piece_store::file::WalkEvent::Enter(node) => ids.push(node.id),
            piece_store::file::WalkEvent::Piece(piece) => ids.push(piece.id),
            piece_store::file::WalkEvent::Leave(_) => {}
        }
    }
    ids
}

#[test]
fn a_piece_shared_by_two_pinned_files_survives_unpinning_one_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), 64 * MIB) {
        let store = store.as_ref();
        let layout = Layout::STANDARD;
        let a = add(store, &file_bytes(10, 1), "a.bin", &layout);
        let b = add(store, &file_bytes(20, 2), "b.bin", &layout);
        let shared = PieceId::of(&vec![0xaa; PIECE_MAX]);
        let only_a = PieceId::of(&[1; 10]);
        let cached = piece(7, 300);
        store
            .put(cached.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert_eq!(
            store.roots(),
            vec![Root::File(a.manifest), Root::File(b.manifest)]
        );
        assert_eq!(store.stats().pieces, 6);

        assert!(store.unpin_root(Root::File(a.manifest)).unwrap());
        let manifest_a = store.size(&a.manifest).unwrap();
        let report = store.gc().unwrap();
        assert_eq!(
            report,
            GcReport {
                pieces: 3,
                bytes: 10 + manifest_a + 300,
            }
        );
        for gone in [a.manifest, only_a, cached.id()] {
            assert!(!store.has(&gone), "{gone} should be collected");
        }
        for kept in [b.manifest, shared, PieceId::of(&[2; 20])] {
            assert!(store.has(&kept) && store.is_pinned(&kept), "{kept} kept");
        }
        assert_eq!(store.gc().unwrap(), GcReport::default(), "nothing more");

        assert!(store.unpin_root(Root::File(b.manifest)).unwrap());
        let report = store.gc().unwrap();
        assert_eq!(report.pieces, 3);
        assert_eq!(store.stats(), {
            let mut empty = store.stats();
            empty.pieces = 0;
            empty.bytes = 0;
            empty.pinned_bytes = 0;
            empty
        });
    }
}

#[test]
fn a_file_root_pinned_before_its_pieces_arrive_protects_them_on_arrival() {
    // A three-level tree (fan-out 2) of five small-ish pieces, built in a
    // scratch store, arrives in a small store in fetch order (each manifest
    // before what it names) between cached pieces that force evictions.
    let layout = Layout::with_fan_out(2).unwrap();
    let bytes: Vec<u8> = (0..4 * PIECE_MAX + 5).map(|i| (i % 251) as u8).collect();
    let scratch = MemStore::new(1 << 30);
    let file = add(&scratch, bytes.as_slice(), "f.bin", &layout);
    let order = tree_pieces(&scratch, &file.manifest, &layout);
    let file_bytes: u64 = order.iter().map(|id| scratch.size(id).unwrap()).sum();
    assert!(order.len() > 6, "manifests at every level: {}", order.len());

    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), file_bytes + 2 * MIB) {
        let store = store.as_ref();
        assert!(store.pin_root(Root::File(file.manifest)).unwrap());
        for (n, id) in order.iter().enumerate() {
            let bytes = scratch.get(id).unwrap().unwrap();
            let arriving = VerifiedPiece::new(bytes).unwrap();
            store
                .put(arriving, Retention::Cached, Durability::Background)
                .unwrap();
            for k in 0..2 {
                let filler = piece(1000 + 2 * n as u32 + k, PIECE_MAX);
                store
                    .put(filler, Retention::Cached, Durability::Wait)
                    .unwrap();
            }
        }
        assert!(store.stats().evictions > 0, "the store had to evict");
        for id in &order {
            assert!(store.has(id), "{id} of the pinned file was evicted");
        }
        assert_eq!(store.stats().pinned_bytes, file_bytes);
        let pieces: Vec<_> = pieces_of(store, &file.manifest, &layout)
            .map(|p| p.unwrap().id)
            .collect();
        assert_eq!(pieces.len(), 5);
        // Unpinned, the file is cached like any other piece.
        assert!(store.unpin_root(Root::File(file.manifest)).unwrap());
        assert_eq!(store.stats().pinned_bytes, 0);
        // The file's pieces and the two fillers that fit beside them.
        assert_eq!(store.gc().unwrap().pieces, order.len() as u64 + 2);
    }
}

#[test]
fn eviction_takes_cached_pieces_and_spares_a_file_until_it_is_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), 4 * MIB) {
        let store = store.as_ref();
        let file = add(store, &file_bytes(0, 0), "one.bin", &Layout::STANDARD);
        let data = PieceId::of(&vec![0xaa; PIECE_MAX]);
        let (a, b, c) = (
            piece(1, PIECE_MAX),
            piece(2, PIECE_MAX),
            piece(3, PIECE_MAX),
        );
        for p in [&a, &b] {
            store
                .put(p.clone(), Retention::Cached, Durability::Wait)
                .unwrap();
        }
        // Full but for the manifest's bytes: c evicts a, the oldest cached.
        store
            .put(c.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert!(!store.has(&a.id()) && store.has(&b.id()) && store.has(&data));
        store.unpin_root(Root::File(file.manifest)).unwrap();
        // Now the file's pieces are the least recently used.
        store
            .put(a.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert!(!store.has(&data), "an unpinned file is evictable");
        assert!(store.has(&b.id()) && store.has(&c.id()));
    }
}

#[test]
fn holds_protect_until_released_and_put_pinned_is_a_loose_root() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), 2 * MIB) {
        let store = store.as_ref();
        let (a, b, c) = (
            piece(1, PIECE_MAX),
            piece(2, PIECE_MAX),
            piece(3, PIECE_MAX),
        );
        store.hold(&a.id());
        store.hold(&a.id());
        store
            .put(a.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        store
            .put(b.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
        assert!(matches!(
            store.put(c.clone(), Retention::Cached, Durability::Wait),
            Err(StoreError::Full { .. })
        ));
        store.release(&a.id());
        assert!(store.is_pinned(&a.id()), "held twice, released once");
        store.release(&a.id());
        assert!(!store.is_pinned(&a.id()));
        assert_eq!(store.roots(), vec![Root::Piece(b.id())]);
        store
            .put(c.clone(), Retention::Cached, Durability::Wait)
            .unwrap();
        assert!(!store.has(&a.id()) && store.has(&b.id()));
    }
}

#[test]
fn the_listing_names_pinned_files_and_sizes_loose_pieces() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), 16 * MIB) {
        let store = store.as_ref();
        let file = add(store, &file_bytes(5, 9), "named.bin", &Layout::STANDARD);
        let loose = piece(4, 123);
        store
            .put(loose.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
        let absent = piece(5, 10).id();
        store.pin_root(Root::File(absent)).unwrap();
        let listing = store.listing().unwrap();
        let mut files = listing.files.clone();
        files.sort_by_key(|f| f.manifest);
        let mut expected = vec![
            PinnedFile {
                manifest: file.manifest,
                name: Some("named.bin".into()),
                size: Some(MIB + 5),
            },
            PinnedFile {
                manifest: absent,
                name: None,
                size: None,
            },
        ];
        expected.sort_by_key(|f| f.manifest);
        assert_eq!(files, expected);
        assert_eq!(
            listing.pieces,
            vec![PinnedPiece {
                id: loose.id(),
                size: Some(123),
            }]
        );
        assert_eq!(listing.bytes_used, store.stats().bytes);
        assert_eq!(listing.capacity, 16 * MIB);
    }
}

#[test]
fn roots_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let fetched = piece(9, 50).id();
    let (file, loose) = {
        let store = open(dir.path(), 16 * MIB);
        let file = add(&store, &file_bytes(3, 3), "kept.bin", &Layout::STANDARD);
        let loose = piece(1, 100);
        store
            .put(loose.clone(), Retention::Pinned, Durability::Wait)
            .unwrap();
        store.pin_root(Root::File(fetched)).unwrap();
        store
            .put(piece(2, 100), Retention::Cached, Durability::Wait)
            .unwrap();
        (file, loose.id())
    };
    let store = open(dir.path(), 16 * MIB);
    let mut roots = vec![
        Root::File(file.manifest),
        Root::File(fetched),
        Root::Piece(loose),
    ];
    roots.sort();
    assert_eq!(store.roots(), roots);
    assert!(
        store.is_pinned(&PieceId::of(&[3; 3])),
        "the file's tree is reached again"
    );
    assert!(!store.is_pinned(&piece(2, 100).id()));
    assert_eq!(store.gc().unwrap().pieces, 1);
    assert!(store.unpin_root(Root::Piece(loose)).unwrap());
    drop(store);
    let store = open(dir.path(), 16 * MIB);
    roots.retain(|r| *r != Root::Piece(loose));
    assert_eq!(store.roots(), roots);
}

/// Copies a store directory as a crash would leave it on disk: everything
/// written so far, no clean shutdown (the copy is never closed).
fn crash_image(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&dest).unwrap();
            crash_image(&entry.path(), &dest);
        } else if entry.file_name() != "lock" {
            fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

#[test]
fn roots_survive_a_crash_with_a_torn_pack_and_a_torn_index() {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let store = DiskStore::open(dir.path(), DiskStoreConfig::new(16 * MIB)).unwrap();
    let file = add(&store, &file_bytes(4, 4), "crash.bin", &Layout::STANDARD);
    let loose = piece(1, 100);
    store
        .put(loose.clone(), Retention::Pinned, Durability::Wait)
        .unwrap();
    // The image is taken while the store is open: no clean shutdown.
    crash_image(dir.path(), image.path());
    drop(store);
    // A put that was appending to its pack, and a pin that was appending.
    let pack = image.path().join("packs").join("00000000.pack");
    let mut torn = fs::OpenOptions::new().append(true).open(&pack).unwrap();
    std::io::Write::write_all(&mut torn, b"P2PK\x01half").unwrap();
    let before = fs::metadata(&pack).unwrap().len();
    let mut log = fs::OpenOptions::new()
        .append(true)
        .open(image.path().join(ROOTS_FILE))
        .unwrap();
    std::io::Write::write_all(&mut log, b"unpin file 00").unwrap();

    let store = DiskStore::open(image.path(), DiskStoreConfig::new(16 * MIB)).unwrap();
    assert_eq!(
        store.roots(),
        vec![Root::File(file.manifest), Root::Piece(loose.id())]
    );
    assert!(store.is_pinned(&PieceId::of(&[4; 4])));
    // The torn record is cut off.
    assert_eq!(fs::metadata(&pack).unwrap().len(), before - 9);
    assert_eq!(
        store.gc().unwrap(),
        GcReport::default(),
        "everything is pinned"
    );
    // Opening compacted the index: the torn line is gone.
    let text = fs::read_to_string(image.path().join(ROOTS_FILE)).unwrap();
    assert!(text.ends_with('\n') && !text.contains("unpin"), "{text:?}");
}

#[test]
fn old_pin_markers_become_roots_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (file, loose, cached, tree) = {
        let scratch = MemStore::new(1 << 30);
        let file = add(&scratch, &file_bytes(6, 6), "old.bin", &Layout::STANDARD);
        let tree = tree_pieces(&scratch, &file.manifest, &Layout::STANDARD);
        let store = open(dir.path(), 16 * MIB);
        for id in &tree {
            let bytes = scratch.get(id).unwrap().unwrap();
            store
                .put(
                    VerifiedPiece::new(bytes).unwrap(),
                    Retention::Cached,
                    Durability::Wait,
                )
                .unwrap();
        }
        let (loose, cached) = (piece(1, 100), piece(2, 100));
        for p in [&loose, &cached] {
            store
                .put(p.clone(), Retention::Cached, Durability::Wait)
                .unwrap();
        }
        (file, loose.id(), cached.id(), tree)
    };
    // The older layout: a marker per pinned piece, as the old add_file left
    // them (every piece of the file), one loose piece, and a marker whose
    // piece is gone.
    let gone = piece(3, 10).id();
    for id in tree.iter().chain([&loose, &gone]) {
        let shard = dir
            .path()
            .join("pins")
            .join(format!("{:02x}", id.first_byte()));
        fs::create_dir_all(&shard).unwrap();
        fs::write(shard.join(id.to_hex()), b"").unwrap();
    }
    fs::remove_file(dir.path().join(ROOTS_FILE)).unwrap();

    let store = open(dir.path(), 16 * MIB);
    assert_eq!(
        store.roots(),
        vec![Root::File(file.manifest), Root::Piece(loose)]
    );
    assert!(!dir.path().join("pins").exists(), "markers removed");
    for id in &tree {
        assert!(store.is_pinned(id));
    }
    assert_eq!(store.gc().unwrap().pieces, 1);
    assert!(!store.has(&cached));
    drop(store);
    let store = open(dir.path(), 16 * MIB);
    assert_eq!(store.roots().len(), 2, "migrated once, kept");
}

#[test]
fn the_root_bound_holds_at_the_limit_and_refuses_one_more() {
    let dir = tempfile::tempdir().unwrap();
    for store in both(dir.path(), 16 * MIB) {
        let store = store.as_ref();
        for n in 0..ROOTS_MAX {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(n as u64).to_le_bytes());
            assert!(
                store
                    .pin_root(Root::Piece(PieceId::from_bytes(bytes)))
                    .unwrap()
            );
        }
        assert_eq!(store.roots().len(), ROOTS_MAX);
        let one_more = piece(1, 10);
        assert!(matches!(
            store.pin_root(Root::File(one_more.id())),
            Err(StoreError::TooManyRoots { max: ROOTS_MAX })
        ));
        assert!(matches!(
            store.put(one_more.clone(), Retention::Pinned, Durability::Wait),
            Err(StoreError::TooManyRoots { .. })
        ));
        assert!(!store.has(&one_more.id()), "refused before storing");
        assert!(!store.is_pinned(&one_more.id()));
        // Pinning what is pinned already needs no room.
        let first = store.roots()[0];
        assert!(!store.pin_root(first).unwrap());
        assert!(store.unpin_root(first).unwrap());
        assert!(store.pin_root(Root::File(one_more.id())).unwrap());
    }
    // And the full index reads back within its bound.
    let store = open(dir.path(), 16 * MIB);
    assert_eq!(store.roots().len(), ROOTS_MAX);
}

#[test]
fn an_unreadable_roots_index_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path(), MIB));
    fs::write(dir.path().join(ROOTS_FILE), b"p2p-roots 1\npin loose 00\n").unwrap();
    let err = DiskStore::open(dir.path(), DiskStoreConfig::new(MIB)).unwrap_err();
    assert!(matches!(err, StoreError::BadRootsIndex { .. }), "{err}");
}
