//! Pieces served from ranges of files outside the store (a fetched file's
//! output): indexed durably, served only while they still hash to their
//! names, dropped (never moved or deleted) when the file changes, renamed
//! with the file, collected by `gc` when nothing reaches them, counted by
//! `verify_all`, and kept across a reopen.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use piece_store::{
    DiskStore, DiskStoreConfig, Extent, FsyncPolicy, MemStore, PieceStore, Root, StoreError,
};
use wire_format::{PieceId, VerifiedPiece};

const LEN: u32 = 64 << 10;

fn open(dir: &Path) -> DiskStore {
    let mut config = DiskStoreConfig::new(1 << 30);
    config.fsync = FsyncPolicy::Always;
    DiskStore::open(&dir.join("store"), config).unwrap()
}

/// Writes `count` distinct pieces (distinct for each `seed` too) one after another into `path`; returns
/// them as extents of it.
fn file_of_pieces(path: &Path, count: u8, seed: u8) -> Vec<(Extent, Bytes)> {
    let mut file = fs::File::create(path).unwrap();
    (0..count)
        .map(|n| {
            let bytes = Bytes::from(vec![n.wrapping_mul(37).wrapping_add(seed); LEN as usize]);
            file.write_all(&bytes).unwrap();
            let extent = Extent {
                id: VerifiedPiece::new(bytes.clone()).unwrap().id(),
                offset: u64::from(n) * u64::from(LEN),
                len: LEN,
            };
            (extent, bytes)
        })
        .collect()
}

#[test]
fn extents_are_served_renamed_and_kept_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join(".out.part");
    let out = dir.path().join("out");
    let pieces = file_of_pieces(&part, 3, 1);
    let extents: Vec<Extent> = pieces.iter().map(|(e, _)| *e).collect();
    {
        let store = open(dir.path());
        store.add_extents(&part, &extents).unwrap();
        for (extent, bytes) in &pieces {
            assert!(store.has(&extent.id));
            assert_eq!(store.size(&extent.id), Some(u64::from(LEN)));
            assert_eq!(store.get(&extent.id).unwrap().unwrap(), *bytes);
        }
        assert_eq!(store.list().len(), 3);
        let stats = store.stats();
        assert_eq!((stats.extents, stats.pieces, stats.bytes), (3, 0, 0));
        fs::rename(&part, &out).unwrap();
        assert!(store.move_extent_file(&part, &out).unwrap());
        assert_eq!(store.extent_files(), vec![out.clone()]);
    }
    let store = open(dir.path());
    assert_eq!(store.extent_files(), vec![out.clone()]);
    for (extent, bytes) in &pieces {
        assert_eq!(store.get(&extent.id).unwrap().unwrap(), *bytes);
    }
}

#[test]
fn a_changed_or_shortened_file_is_never_served_and_never_touched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared");
    let pieces = file_of_pieces(&path, 3, 1);
    let store = open(dir.path());
    let extents: Vec<Extent> = pieces.iter().map(|(e, _)| *e).collect();
    store.add_extents(&path, &extents).unwrap();

    // One byte of the second piece changes; the file is then cut inside
    // the third.
    let mut bytes = fs::read(&path).unwrap();
    bytes[LEN as usize + 7] ^= 1;
    bytes.truncate(2 * LEN as usize + 10);
    fs::write(&path, &bytes).unwrap();

    assert_eq!(store.get(&extents[0].id).unwrap().unwrap(), pieces[0].1);
    assert_eq!(store.get(&extents[1].id).unwrap(), None);
    assert!(!store.has(&extents[1].id), "dropped from the index");
    let report = store.verify_all().unwrap();
    assert_eq!(report.checked, 1);
    assert_eq!(report.dropped, vec![extents[2].id]);
    assert!(report.corrupt.is_empty());
    assert_eq!(store.stats().dropped_extents, 2);
    // The user's file is exactly as they left it.
    assert_eq!(fs::read(&path).unwrap(), bytes);

    // A file gone, or replaced by something that is not a regular file:
    // dropped, without blocking.
    fs::remove_file(&path).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap();
    assert!(made.success());
    assert_eq!(store.get(&extents[0].id).unwrap(), None);
    assert_eq!(store.stats().extents, 0);
}

#[test]
fn gc_drops_extents_nothing_reaches_and_forget_drops_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let in_a = file_of_pieces(&a, 2, 1);
    let in_b = file_of_pieces(&b, 1, 100);
    store
        .add_extents(&a, &in_a.iter().map(|(e, _)| *e).collect::<Vec<_>>())
        .unwrap();
    store.add_extents(&b, &[in_b[0].0]).unwrap();
    store.pin_root(Root::Piece(in_a[0].0.id)).unwrap();
    let report = store.gc().unwrap();
    assert_eq!(
        (report.pieces, report.bytes),
        (0, 0),
        "no store bytes freed"
    );
    assert!(store.has(&in_a[0].0.id));
    assert!(!store.has(&in_a[1].0.id));
    assert!(!store.has(&in_b[0].0.id));
    assert!(a.exists() && b.exists(), "files are their users'");

    assert_eq!(store.forget_extent_file(&a).unwrap(), 1);
    assert!(!store.has(&in_a[0].0.id));
    assert!(store.extent_files().is_empty());
    drop(store);
    assert_eq!(open(dir.path()).stats().extents, 0);
}

#[test]
fn a_memory_store_refuses_extents() {
    let store = MemStore::new(1 << 20);
    let extent = Extent {
        id: PieceId::of(b"x"),
        offset: 0,
        len: 1,
    };
    assert!(matches!(
        store.add_extents(Path::new("/x"), &[extent]),
        Err(StoreError::Unsupported)
    ));
}

#[test]
fn a_piece_added_again_from_another_file_moves_there_and_outlives_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let stale = dir.path().join(".out.p2p-1.part");
    let fresh = dir.path().join(".out.p2p-2.part");
    let pieces = file_of_pieces(&stale, 2, 7);
    fs::copy(&stale, &fresh).unwrap();
    let extents: Vec<Extent> = pieces.iter().map(|(e, _)| *e).collect();
    store.add_extents(&stale, &extents).unwrap();
    store.add_extents(&fresh, &extents[..1]).unwrap();
    // The stale file goes: only the piece that did not move goes with it.
    assert_eq!(store.forget_extent_file(&stale).unwrap(), 1);
    fs::remove_file(&stale).unwrap();
    assert_eq!(store.get(&extents[0].id).unwrap().unwrap(), pieces[0].1);
    assert!(!store.has(&extents[1].id));
    assert_eq!(store.extent_files(), vec![fresh]);
}

#[test]
fn a_file_shared_in_place_puts_only_its_manifests_in_the_store() {
    use piece_store::file::{add_file, add_file_in_place, reassemble};
    use piece_store::manifest::Layout;

    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes: Vec<u8> = (0..(3 << 20) + 4321).map(|i| (i % 251) as u8).collect();
    let real = dir.path().join("big.iso");
    fs::write(&real, &bytes).unwrap();
    // Named through a link: the store keeps the real path.
    let link = dir.path().join("link.iso");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let summary = add_file_in_place(&store, &link, "big.iso", &Layout::STANDARD).unwrap();
    assert_eq!(summary.pieces, 4);
    assert_eq!(store.extent_files(), vec![fs::canonicalize(&real).unwrap()]);
    let stats = store.stats();
    assert_eq!(
        (stats.pieces, stats.extents),
        (1, 4),
        "only the manifest is copied"
    );
    assert!(store.roots().contains(&Root::File(summary.manifest)));
    // The same manifest as a copying put makes, and the same bytes back.
    let copied = MemStore::new(1 << 30);
    let same = add_file(&copied, &bytes[..], "big.iso", &Layout::STANDARD).unwrap();
    assert_eq!(same.manifest, summary.manifest);
    let mut out = Vec::new();
    reassemble(&store, &summary.manifest, &Layout::STANDARD, &mut out).unwrap();
    assert!(out == bytes);

    // Not a regular file, or a store without extents: refused.
    assert!(add_file_in_place(&store, dir.path(), "d", &Layout::STANDARD).is_err());
    let err = add_file_in_place(&copied, &real, "big.iso", &Layout::STANDARD).unwrap_err();
    assert!(
        err.to_string().contains("cannot serve pieces from files"),
        "{err}"
    );
}
