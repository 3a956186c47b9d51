//! Files through the memory store: the exact manifests `add_file` writes,
//! round trips through `reassemble`, trees of parts with small fan-outs, and
//! the failures a reader must detect.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::Bytes;
use piece_store::file::{
    FileError, HashScope, PUT_BATCH_PIECES, PieceRef, WalkEvent, add_file, pieces_of, reassemble,
    walk,
};
use piece_store::manifest::{Entries, Layout, Level, Manifest, ManifestError, NameError, Part};
use piece_store::testing::{Call, FaultyStore};
use piece_store::{MemStore, PieceStore, Retention, Root};
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

const MIB: usize = PIECE_MAX;
const MIB_U64: u64 = PIECE_MAX as u64;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn store() -> MemStore {
    MemStore::new(1 << 30)
}

/// Deterministic bytes, different in every piece.
fn data(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    PieceId::of(bytes).to_hex()
}

fn len_u64(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// The manifest piece `id`, as text.
fn manifest_text(store: &MemStore, id: &PieceId) -> String {
    let bytes = store.get(id).ok().flatten().unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Adds `bytes`, reads them back, and checks both summaries.
fn round_trip(
    store: &MemStore,
    bytes: &[u8],
    name: &str,
    layout: &Layout,
) -> Result<PieceId, FileError> {
    let added = add_file(store, bytes, name, layout)?;
    assert_eq!(added.size, len_u64(bytes.len()));
    assert_eq!(added.pieces, len_u64(bytes.len().div_ceil(MIB)));
    assert_eq!(added.sha256, PieceId::of(bytes));
    let mut out = Vec::new();
    let read = reassemble(store, &added.manifest, layout, &mut out)?;
    assert!(out == bytes, "reassembled bytes differ");
    assert_eq!(read.name, name);
    assert_eq!(read.size, added.size);
    assert_eq!(read.pieces, added.pieces);
    assert_eq!(read.sha256, added.sha256);
    assert!(store.is_pinned(&added.manifest));
    Ok(added.manifest)
}

fn pieces_json(name: &str, bytes: &[u8]) -> String {
    let pieces: Vec<String> = bytes
        .chunks(MIB)
        .map(|piece| format!("\"{}\"", hex(piece)))
        .collect();
    format!(
        r#"{{"p2p_manifest":1,"name":"{name}","size":{},"sha256":"{}","pieces":[{}]}}"#,
        bytes.len(),
        hex(bytes),
        pieces.join(",")
    )
}

#[test]
fn empty_file() {
    let store = store();
    let root = round_trip(&store, &[], "empty", &Layout::STANDARD).unwrap();
    assert_eq!(
        manifest_text(&store, &root),
        format!(
            r#"{{"p2p_manifest":1,"name":"empty","size":0,"sha256":"{EMPTY_SHA256}","pieces":[]}}"#
        )
    );
    assert_eq!(store.stats().pieces, 1, "only the manifest");
}

#[test]
fn one_byte() {
    let store = store();
    let root = round_trip(&store, b"x", "a.bin", &Layout::STANDARD).unwrap();
    let x = hex(b"x");
    assert_eq!(
        manifest_text(&store, &root),
        format!(r#"{{"p2p_manifest":1,"name":"a.bin","size":1,"sha256":"{x}","pieces":["{x}"]}}"#)
    );
    assert!(store.is_pinned(&PieceId::of(b"x")));
}

#[test]
fn exactly_one_piece() {
    let store = store();
    let bytes = data(MIB);
    let root = round_trip(&store, &bytes, "one.bin", &Layout::STANDARD).unwrap();
    let h = hex(&bytes);
    assert_eq!(
        manifest_text(&store, &root),
        format!(
            r#"{{"p2p_manifest":1,"name":"one.bin","size":1048576,"sha256":"{h}","pieces":["{h}"]}}"#
        )
    );
}

#[test]
fn one_piece_and_one_byte() {
    let store = store();
    let bytes = data(MIB + 1);
    let root = round_trip(&store, &bytes, "two.bin", &Layout::STANDARD).unwrap();
    assert_eq!(
        manifest_text(&store, &root),
        format!(
            r#"{{"p2p_manifest":1,"name":"two.bin","size":1048577,"sha256":"{}","pieces":["{}","{}"]}}"#,
            hex(&bytes),
            hex(&bytes[..MIB]),
            hex(&bytes[MIB..])
        )
    );
    assert_eq!(manifest_text(&store, &root), pieces_json("two.bin", &bytes));
    for piece in bytes.chunks(MIB) {
        assert!(store.is_pinned(&PieceId::of(piece)));
    }
}

#[test]
fn names_are_escaped_and_checked() {
    let store = store();
    let root = round_trip(&store, b"q", "say \"hi\" é.txt", &Layout::STANDARD).unwrap();
    assert!(manifest_text(&store, &root).contains(r#""name":"say \"hi\" é.txt""#));
    for (name, expected) in [
        ("", NameError::Empty),
        ("..", NameError::DotName),
        (
            "a/b",
            NameError::ForbiddenChar {
                found: '/',
                index: 1,
            },
        ),
    ] {
        let result = add_file(&store, &b"never read"[..], name, &Layout::STANDARD);
        assert!(
            matches!(&result, Err(FileError::Name(e)) if *e == expected),
            "{name:?}: {result:?}"
        );
    }
}

#[test]
fn one_level_up_to_the_fan_out() {
    let layout = Layout::with_fan_out(4).unwrap();
    let store = store();
    let bytes = data(4 * MIB);
    let root = round_trip(&store, &bytes, "four.bin", &layout).unwrap();
    assert_eq!(
        manifest_text(&store, &root),
        pieces_json("four.bin", &bytes)
    );
}

/// Fan-out 4, 5 MiB + 3 bytes = 6 pieces: a root with two parts.
#[test]
fn two_levels_of_parts() {
    let layout = Layout::with_fan_out(4).unwrap();
    let store = store();
    let bytes = data(5 * MIB + 3);
    let root = round_trip(&store, &bytes, "big.bin", &layout).unwrap();

    let (first, second) = bytes.split_at(4 * MIB);
    let part_json = |range: &[u8]| {
        let pieces: Vec<String> = range
            .chunks(MIB)
            .map(|p| format!("\"{}\"", hex(p)))
            .collect();
        format!(
            r#"{{"p2p_manifest":1,"size":{},"sha256":"{}","pieces":[{}]}}"#,
            range.len(),
            hex(range),
            pieces.join(",")
        )
    };
    let first_id = PieceId::of(part_json(first).as_bytes());
    let second_id = PieceId::of(part_json(second).as_bytes());
    assert_eq!(manifest_text(&store, &first_id), part_json(first));
    assert_eq!(manifest_text(&store, &second_id), part_json(second));
    assert_eq!(
        manifest_text(&store, &root),
        format!(
            r#"{{"p2p_manifest":1,"name":"big.bin","size":5242883,"sha256":"{}","parts":[{{"manifest":"{first_id}","size":4194304}},{{"manifest":"{second_id}","size":1048579}}]}}"#,
            hex(&bytes)
        )
    );
    assert!(store.is_pinned(&first_id) && store.is_pinned(&second_id));
    // The standard layout keeps the same file in one manifest.
    let flat = round_trip(&store, &bytes, "big.bin", &Layout::STANDARD).unwrap();
    assert_eq!(manifest_text(&store, &flat), pieces_json("big.bin", &bytes));
}

/// Fan-out 2, 5 pieces: three levels, every leaf at the last level.
#[test]
fn three_levels_of_parts() {
    let layout = Layout::with_fan_out(2).unwrap();
    let store = store();
    let bytes = data(4 * MIB + 7);
    let root = round_trip(&store, &bytes, "deep.bin", &layout).unwrap();

    let mut shape = Vec::new();
    for event in walk(&store, &root, &layout) {
        match event.unwrap() {
            WalkEvent::Enter(node) => {
                let start = usize::try_from(node.offset).unwrap();
                let end = start + usize::try_from(node.size).unwrap();
                assert_eq!(node.sha256, PieceId::of(&bytes[start..end]), "{node:?}");
                let kind = match Manifest::parse(
                    &store.get(&node.id).unwrap().unwrap(),
                    &layout,
                    node.level,
                )
                .unwrap()
                .entries
                {
                    Entries::Pieces(p) => format!("pieces{}", p.len()),
                    Entries::Parts(p) => format!("parts{}", p.len()),
                };
                shape.push(format!(
                    "{}:{}@{}+{}",
                    node.level.get(),
                    kind,
                    start,
                    end - start
                ));
            }
            WalkEvent::Piece(piece) => {
                shape.push(format!("piece@{}+{}", piece.offset, piece.len));
            }
            WalkEvent::Leave(_) => shape.push("leave".into()),
        }
    }
    let m = MIB;
    let expected = vec![
        format!("1:parts2@0+{}", 4 * m + 7),
        format!("2:parts2@0+{}", 4 * m),
        format!("3:pieces2@0+{}", 2 * m),
        "piece@0+1048576".into(),
        "piece@1048576+1048576".into(),
        "leave".into(),
        format!("3:pieces2@{}+{}", 2 * m, 2 * m),
        format!("piece@{}+1048576", 2 * m),
        format!("piece@{}+1048576", 3 * m),
        "leave".into(),
        "leave".into(),
        format!("2:parts1@{}+7", 4 * m),
        format!("3:pieces1@{}+7", 4 * m),
        format!("piece@{}+7", 4 * m),
        "leave".into(),
        "leave".into(),
        "leave".into(),
    ];
    assert_eq!(shape, expected);
}

#[test]
fn largest_file_for_three_levels_and_one_byte_more() {
    let layout = Layout::with_fan_out(2).unwrap();
    assert_eq!(layout.max_size(Level::ROOT), 8 * MIB_U64);
    let store = store();
    let bytes = data(8 * MIB + 1);
    round_trip(&store, &bytes[..8 * MIB], "max.bin", &layout).unwrap();

    let store = self::store();
    let result = add_file(&store, &bytes[..], "over.bin", &layout);
    assert!(
        matches!(
            result,
            Err(FileError::TooLarge { size, max }) if size == 8 * MIB_U64 + 1 && max == 8 * MIB_U64
        ),
        "{result:?}"
    );
    assert!(
        !store.has(&PieceId::of(&bytes[8 * MIB..])),
        "the excess piece is not stored"
    );
}

/// Reads in odd sizes and is interrupted now and then.
struct Trickle<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(5) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = (self.calls % 7 * 40_000 + 1)
            .min(buf.len())
            .min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        buf[..n].copy_from_slice(head);
        self.data = tail;
        Ok(n)
    }
}

#[test]
fn short_and_interrupted_reads_give_the_same_file() {
    let layout = Layout::with_fan_out(2).unwrap();
    let bytes = data(3 * MIB + 5);
    let store = store();
    let expected = add_file(&store, &bytes[..], "t.bin", &layout).unwrap();
    let trickled = add_file(
        &store,
        Trickle {
            data: &bytes,
            calls: 0,
        },
        "t.bin",
        &layout,
    )
    .unwrap();
    assert_eq!(trickled, expected);
}

/// Yields `data`, then fails.
struct Failing<'a> {
    data: &'a [u8],
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.data.is_empty() {
            return Err(io::Error::other("disk on fire"));
        }
        self.data.read(buf)
    }
}

#[test]
fn read_errors_are_reported() {
    let store = store();
    let bytes = data(MIB + 10);
    let result = add_file(&store, Failing { data: &bytes }, "f", &Layout::STANDARD);
    assert!(
        matches!(&result, Err(FileError::Io { op: "read the input", source }) if source.to_string() == "disk on fire"),
        "{result:?}"
    );
}

#[test]
fn a_failed_add_pins_nothing_and_releases_its_holds() {
    // Fan-out 2: the third piece closes a leaf, storing two pieces and a
    // manifest before the input fails.
    let store = store();
    let bytes = data(3 * MIB + 10);
    let layout = Layout::with_fan_out(2).unwrap();
    let result = add_file(&store, Failing { data: &bytes }, "f", &layout);
    assert!(matches!(result, Err(FileError::Io { .. })), "{result:?}");
    assert!(store.roots().is_empty());
    assert_eq!(store.stats().pieces, 3);
    assert_eq!(store.stats().pinned_bytes, 0, "stored pieces are cached");
    let unstored = PieceId::of(&bytes[2 * MIB..3 * MIB]);
    assert!(
        !store.is_pinned(&unstored),
        "held but never stored: released"
    );
}

#[test]
fn adding_a_file_holds_each_piece_before_storing_it_and_pins_only_the_file_root() {
    // Fan-out 2: part manifests too; a repeated piece is held once.
    let layout = Layout::with_fan_out(2).unwrap();
    let mut bytes = tagged(2, 0);
    bytes.extend_from_within(..MIB);
    bytes.extend_from_slice(b"tail");
    let store = FaultyStore::new(Arc::new(store()));
    let added = add_file(&store, &bytes[..], "held.bin", &layout).unwrap();
    let calls = store.calls();
    let position = |wanted: &Call| calls.iter().position(|call| call == wanted);
    let mut held = Vec::new();
    for (at, call) in calls.iter().enumerate() {
        let stored = match call {
            Call::Put { id, retention, .. } => vec![(*id, *retention)],
            Call::PutMany { ids, retention } => ids.iter().map(|id| (*id, *retention)).collect(),
            Call::Hold(id) => {
                held.push(*id);
                continue;
            }
            _ => continue,
        };
        for (id, retention) in stored {
            assert_eq!(retention, Retention::Cached, "reached from the file root");
            let hold = position(&Call::Hold(id)).unwrap_or(usize::MAX);
            assert!(hold < at, "{id} stored at call {at} before its hold");
        }
    }
    let distinct: std::collections::HashSet<_> = held.iter().collect();
    assert_eq!(distinct.len(), held.len(), "each piece held once");
    assert_eq!(
        held.len(),
        3 + 3,
        "three distinct pieces and three manifests"
    );
    let pin = position(&Call::PinRoot(Root::File(added.manifest))).unwrap();
    let first_release = calls
        .iter()
        .position(|call| matches!(call, Call::Release(_)))
        .unwrap();
    assert!(
        pin < first_release,
        "released only once the root reaches them"
    );
    for id in &held {
        assert!(calls.contains(&Call::Release(*id)));
    }
    assert_eq!(store.roots(), vec![Root::File(added.manifest)]);
    assert!(store.unpin_root(Root::File(added.manifest)).unwrap());
    assert_eq!(store.stats().pinned_bytes, 0, "no hold left behind");
}

#[test]
fn pieces_of_lists_the_data_pieces_in_order() {
    let layout = Layout::with_fan_out(2).unwrap();
    let store = store();
    let bytes = data(5 * MIB + 2);
    let root = add_file(&store, &bytes[..], "p.bin", &layout)
        .unwrap()
        .manifest;
    let listed: Vec<PieceRef> = pieces_of(&store, &root, &layout)
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<PieceRef> = bytes
        .chunks(MIB)
        .enumerate()
        .map(|(i, piece)| PieceRef {
            id: PieceId::of(piece),
            offset: len_u64(i * MIB),
            len: piece.len(),
        })
        .collect();
    assert_eq!(listed, expected);
}

/// Stores `manifest` as a piece and returns its id.
fn put_manifest(store: &MemStore, manifest: &Manifest) -> PieceId {
    put_raw(store, manifest.to_json())
}

fn put_raw(store: &MemStore, bytes: Vec<u8>) -> PieceId {
    let piece = VerifiedPiece::new(Bytes::from(bytes)).unwrap_or_else(|e| unreachable!("{e}"));
    let id = piece.id();
    store
        .put(piece, Retention::Pinned, piece_store::Durability::Wait)
        .unwrap_or_else(|e| unreachable!("{e}"));
    id
}

fn parse_root(store: &MemStore, id: &PieceId, layout: &Layout) -> Manifest {
    let bytes = store.get(id).ok().flatten().unwrap_or_default();
    Manifest::parse(&bytes, layout, Level::ROOT).unwrap_or_else(|e| unreachable!("{e}"))
}

#[test]
fn a_part_whose_bytes_do_not_match_is_detected() {
    let layout = Layout::with_fan_out(4).unwrap();
    let store = store();
    let bytes = data(5 * MIB + 3);
    let root_id = add_file(&store, &bytes[..], "big.bin", &layout)
        .unwrap()
        .manifest;
    let mut root = parse_root(&store, &root_id, &layout);
    let Entries::Parts(parts) = &mut root.entries else {
        panic!("expected parts");
    };
    // Re-store the second part with a wrong sha256.
    let part_bytes = store.get(&parts[1].manifest).unwrap().unwrap();
    let mut part = Manifest::parse(&part_bytes, &layout, Level::new(2).unwrap()).unwrap();
    part.sha256 = PieceId::of(b"not these bytes");
    let bad_part = put_manifest(&store, &part);
    parts[1].manifest = bad_part;
    let bad_root = put_manifest(&store, &root);

    let mut out = Vec::new();
    let result = reassemble(&store, &bad_root, &layout, &mut out);
    assert!(
        matches!(
            &result,
            Err(FileError::HashMismatch { expected, actual, what: HashScope::Part { manifest } })
                if *expected == PieceId::of(b"not these bytes")
                    && *actual == PieceId::of(&bytes[4 * MIB..])
                    && *manifest == bad_part
        ),
        "{result:?}"
    );
    assert_eq!(
        out.len(),
        bytes.len(),
        "every byte was written before the check"
    );

    // A wrong whole-file hash on the root.
    let mut root = parse_root(&store, &root_id, &layout);
    root.sha256 = PieceId::of(b"other");
    let bad_root = put_manifest(&store, &root);
    let result = reassemble(&store, &bad_root, &layout, io::sink());
    assert!(
        matches!(
            &result,
            Err(FileError::HashMismatch { what: HashScope::File, actual, .. }) if *actual == PieceId::of(&bytes)
        ),
        "{result:?}"
    );
}

#[test]
fn a_missing_piece_is_reported() {
    let layout = Layout::with_fan_out(4).unwrap();
    let full = store();
    let bytes = data(5 * MIB + 3);
    let root = add_file(&full, &bytes[..], "big.bin", &layout)
        .unwrap()
        .manifest;

    // Only the manifests are copied.
    let partial = store();
    let mut manifests = Vec::new();
    let mut walker = walk(&full, &root, &layout);
    for event in &mut walker {
        if let WalkEvent::Enter(node) = event.unwrap() {
            manifests.push(node.id);
        }
    }
    for id in &manifests {
        put_raw(&partial, full.get(id).unwrap().unwrap().to_vec());
    }
    let result = reassemble(&partial, &root, &layout, io::sink());
    assert!(
        matches!(&result, Err(FileError::Missing { id }) if *id == PieceId::of(&bytes[..MIB])),
        "{result:?}"
    );

    // An unknown root.
    let unknown = PieceId::of(b"unknown");
    let result = reassemble(&full, &unknown, &layout, io::sink());
    assert!(matches!(&result, Err(FileError::Missing { id }) if *id == unknown));
}

#[test]
fn a_walk_resumes_after_a_missing_manifest() {
    let layout = Layout::with_fan_out(4).unwrap();
    let full = store();
    let bytes = data(5 * MIB + 3);
    let root = add_file(&full, &bytes[..], "big.bin", &layout)
        .unwrap()
        .manifest;
    let partial = store();
    put_raw(&partial, full.get(&root).unwrap().unwrap().to_vec());

    let mut walker = pieces_of(&partial, &root, &layout);
    let mut listed = Vec::new();
    let mut fetched = 0;
    loop {
        match walker.next() {
            None => break,
            Some(Ok(piece)) => listed.push(piece.id),
            Some(Err(FileError::Missing { id })) => {
                put_raw(&partial, full.get(&id).unwrap().unwrap().to_vec());
                fetched += 1;
            }
            Some(Err(e)) => panic!("{e}"),
        }
    }
    assert_eq!(fetched, 2, "both part manifests");
    let expected: Vec<PieceId> = bytes.chunks(MIB).map(PieceId::of).collect();
    assert_eq!(listed, expected);
}

#[test]
fn a_part_of_another_size_than_declared_is_rejected() {
    let layout = Layout::with_fan_out(4).unwrap();
    let store = store();
    let bytes = data(5 * MIB + 3);
    let root_id = add_file(&store, &bytes[..], "big.bin", &layout)
        .unwrap()
        .manifest;
    let mut root = parse_root(&store, &root_id, &layout);
    let Entries::Parts(parts) = &mut root.entries else {
        panic!("expected parts");
    };
    // The second part's manifest says MIB + 3; declare MIB + 2.
    parts[1].size -= 1;
    root.size -= 1;
    let second = parts[1].manifest;
    let bad_root = put_manifest(&store, &root);
    let result = reassemble(&store, &bad_root, &layout, io::sink());
    assert!(
        matches!(
            &result,
            Err(FileError::Manifest { id, source: ManifestError::PartSize { declared, found } })
                if *id == second && *declared == MIB_U64 + 2 && *found == MIB_U64 + 3
        ),
        "{result:?}"
    );
}

#[test]
fn a_short_piece_before_the_last_is_rejected() {
    let store = store();
    let small = put_raw(&store, b"tiny".to_vec());
    let full = data(MIB);
    let full_id = put_raw(&store, full.clone());
    // Two pieces for 2 MiB, but the first is 4 bytes.
    let root = put_manifest(
        &store,
        &Manifest {
            name: Some("liar".into()),
            size: 2 * MIB_U64,
            sha256: PieceId::of(b"whatever"),
            entries: Entries::Pieces(vec![small, full_id]),
        },
    );
    let result = reassemble(&store, &root, &Layout::STANDARD, io::sink());
    assert!(
        matches!(
            &result,
            Err(FileError::PieceLength { id, expected, actual: 4 }) if *id == small && *expected == MIB
        ),
        "{result:?}"
    );
}

#[test]
fn an_invalid_manifest_in_the_store_is_rejected() {
    let layout = Layout::with_fan_out(2).unwrap();
    let store = store();
    let leaf = put_raw(&store, b"x".to_vec());
    // A chain of parts four levels deep, each level one part of one byte.
    let mut id = put_manifest(
        &store,
        &Manifest {
            name: None,
            size: 1,
            sha256: PieceId::of(b"x"),
            entries: Entries::Pieces(vec![leaf]),
        },
    );
    let mut ids = vec![id];
    for _ in 0..3 {
        id = put_manifest(
            &store,
            &Manifest {
                name: None,
                size: 1,
                sha256: PieceId::of(b"x"),
                entries: Entries::Parts(vec![Part {
                    manifest: id,
                    size: 1,
                }]),
            },
        );
        ids.push(id);
    }
    let root = put_manifest(
        &store,
        &Manifest {
            name: Some("deep".into()),
            size: 1,
            sha256: PieceId::of(b"x"),
            entries: Entries::Parts(vec![Part {
                manifest: id,
                size: 1,
            }]),
        },
    );
    let result = reassemble(&store, &root, &layout, io::sink());
    // The root's part is at level 2, its part at level 3 lists parts.
    assert!(
        matches!(
            &result,
            Err(FileError::Manifest { id, source: ManifestError::TooDeep { max: 3 } }) if *id == ids[2]
        ),
        "{result:?}"
    );

    let garbage = put_raw(&store, b"{\"p2p_manifest\":1}".to_vec());
    let result = reassemble(&store, &garbage, &layout, io::sink());
    assert!(
        matches!(&result, Err(FileError::Manifest { id, source: ManifestError::Json(_) }) if *id == garbage),
        "{result:?}"
    );
}

/// `pieces` pieces (the last one `tail` bytes short of full), each distinct.
fn tagged(pieces: usize, tail: usize) -> Vec<u8> {
    let mut bytes = vec![0x5a; (pieces * MIB).saturating_sub(tail)];
    for (i, piece) in bytes.chunks_mut(MIB).enumerate() {
        let tag = len_u64(i).to_le_bytes();
        let n = tag.len().min(piece.len());
        piece[..n].copy_from_slice(&tag[..n]);
    }
    bytes
}

/// Every count of pieces around the level boundaries: the tree is the
/// shallowest that fits, all leaves at one depth, and every manifest but the
/// last of its parent full.
#[test]
fn trees_are_shallowest_and_filled_greedily() {
    for (fan_out, counts) in [
        (2, (0..=8).collect::<Vec<usize>>()),
        (3, vec![1, 3, 4, 9, 10, 27]),
    ] {
        let layout = Layout::with_fan_out(fan_out).unwrap();
        for pieces in counts {
            for tail in [0, MIB - 1] {
                if pieces == 0 && tail > 0 {
                    continue;
                }
                let bytes = tagged(pieces, tail);
                let store = store();
                let root = round_trip(&store, &bytes, "t", &layout).unwrap();
                let depth = (1..=3u32).find(|&d| pieces <= fan_out.pow(d)).unwrap();
                // Where each manifest being walked ends.
                let mut open: Vec<u64> = Vec::new();
                for event in walk(&store, &root, &layout) {
                    match event.unwrap() {
                        WalkEvent::Enter(node) => {
                            let manifest = Manifest::parse(
                                &store.get(&node.id).unwrap().unwrap(),
                                &layout,
                                node.level,
                            )
                            .unwrap();
                            let end = node.offset + node.size;
                            let is_last = open.last().is_none_or(|&parent_end| parent_end == end);
                            if !is_last {
                                assert_eq!(
                                    manifest.entries.len(),
                                    fan_out,
                                    "{fan_out} {pieces} {node:?}"
                                );
                            }
                            if let Entries::Pieces(_) = manifest.entries {
                                assert_eq!(
                                    node.level.get(),
                                    usize::try_from(depth).unwrap(),
                                    "fan-out {fan_out}, {pieces} pieces"
                                );
                            }
                            open.push(end);
                        }
                        WalkEvent::Piece(_) => {}
                        WalkEvent::Leave(_) => {
                            open.pop();
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn adding_a_file_hands_the_store_at_most_a_batch_of_pieces_at_a_time() {
    for (pieces, groups) in [
        (PUT_BATCH_PIECES, vec![PUT_BATCH_PIECES]),
        (PUT_BATCH_PIECES + 1, vec![PUT_BATCH_PIECES, 1]),
    ] {
        let store = FaultyStore::new(Arc::new(store()));
        let bytes = tagged(pieces, 0);
        let added = add_file(&store, &bytes[..], "batch.bin", &Layout::STANDARD).unwrap();
        assert_eq!(added.pieces, len_u64(pieces));
        assert_eq!(store.group_sizes(), groups, "{pieces} pieces");
        // Every data piece and the manifest are in the store.
        assert_eq!(store.list().len(), pieces + 1);
    }
}
