//! The test vectors of docs/PROTOCOL.md §2 and §3, byte for byte, in both
//! directions: the captured bytes decode to exactly the expected message, and
//! that message encodes to exactly the captured bytes.

// Every function here is test code, but clippy's `allow-*-in-tests`
// settings only cover `#[test]` functions and `#[cfg(test)]` modules, not the
// helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use wire_format::limits::{GIVE_HEADER_BYTES, LEGACY_PIECE_BYTES};
use wire_format::{
    Decoder, Give, Hello, HelloFlags, Message, MessageType, NodeId, PeerAddr, Peers, PieceId,
    VerifiedPiece, encode_give_header,
};

/// sha256 of the reference implementation's demo piece 23.
const DIGEST_23: &str = "46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021";
/// sha256 of the reference implementation's demo piece 7.
const DIGEST_7: &str = "db8ad69092f7465e9180b648ab79da84275838f9906ef7f02adedf6fa0752cbd";
/// `::1` as 16 bytes in network order (the doc's `00…01`).
const LOOPBACK_V6: &str = "00000000000000000000000000000001";

/// Hex with the spaces the document puts between fields.
fn unhex(spaced: &str) -> Vec<u8> {
    let compact: String = spaced.split_whitespace().collect();
    hex::decode(compact).unwrap()
}

fn digest_23() -> PieceId {
    DIGEST_23.parse().unwrap()
}

/// The reference's demo piece `k`: `u32 LE k`, then 131,068 zero bytes.
fn reference_demo_piece(k: u32) -> Vec<u8> {
    let mut piece = vec![0u8; LEGACY_PIECE_BYTES];
    piece[..4].copy_from_slice(&k.to_le_bytes());
    piece
}

/// Decodes `wire` as one whole frame: exactly one message, every byte consumed.
fn decode_one(wire: &[u8]) -> Message {
    let mut buf = BytesMut::from(wire);
    let message = Decoder::new()
        .decode(&mut buf)
        .unwrap()
        .expect("a whole frame decodes");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    message
}

/// Both directions for one vector.
fn assert_vector(wire: &[u8], expected: &Message) {
    assert_eq!(
        &decode_one(wire),
        expected,
        "decoding {}",
        hex::encode(wire)
    );
    assert_eq!(expected.encoded_len(), wire.len());
    assert_eq!(expected.len_field() + 4, wire.len());
    let mut out = BytesMut::new();
    expected.encode(&mut out);
    assert_eq!(
        hex::encode(&out),
        hex::encode(wire),
        "encoding {expected:?}"
    );
    assert_eq!(expected.to_bytes(), Bytes::copy_from_slice(wire));
}

fn loopback(port: u16) -> PeerAddr {
    format!("[::1]:{port}").parse().unwrap()
}

#[test]
fn demo_piece_digests_match_the_document() {
    assert_eq!(PieceId::of(&reference_demo_piece(23)), digest_23());
    assert_eq!(PieceId::of(&reference_demo_piece(7)).to_string(), DIGEST_7);
}

#[test]
fn ask_vector() {
    let wire = unhex(&format!("21000000 00 {DIGEST_23}"));
    assert_eq!(wire.len(), 37);
    assert_vector(&wire, &Message::Ask(digest_23()));
}

#[test]
fn peers_vector_one_entry() {
    let wire = unhex(&format!("13000000 02 {LOOPBACK_V6} fbdd"));
    assert_eq!(wire.len(), 23);
    let expected = Message::Peers(Peers::new(vec![loopback(56827)]).unwrap());
    assert_vector(&wire, &expected);
    let Message::Peers(peers) = decode_one(&wire) else {
        panic!("not a PEERS");
    };
    assert_eq!(peers.entries()[0].to_string(), "[::1]:56827");
    assert_eq!(peers.entries()[0].port(), 56827);
}

#[test]
fn peers_vector_four_entries() {
    let wire = unhex(&format!(
        "49000000 02 {LOOPBACK_V6} a41f {LOOPBACK_V6} 3f84 {LOOPBACK_V6} 07cc {LOOPBACK_V6} fbdd"
    ));
    assert_eq!(wire.len(), 77);
    let entries = [8100, 33855, 52231, 56827].map(loopback).to_vec();
    let expected = Message::Peers(Peers::new(entries.clone()).unwrap());
    assert_vector(&wire, &expected);
    let Message::Peers(peers) = decode_one(&wire) else {
        panic!("not a PEERS");
    };
    assert_eq!(peers.entries(), entries.as_slice(), "order is kept");
}

#[test]
fn empty_peers_is_the_five_byte_keepalive() {
    assert_vector(&unhex("01000000 02"), &Message::Peers(Peers::empty()));
}

#[test]
fn give_header_vector() {
    let header = unhex(&format!("21000200 01 {DIGEST_23}"));
    assert_eq!(header.len(), GIVE_HEADER_BYTES);
    let encoded = encode_give_header(&digest_23(), LEGACY_PIECE_BYTES).unwrap();
    assert_eq!(hex::encode(encoded), hex::encode(&header));

    let piece = Bytes::from(reference_demo_piece(23));
    let give = Give::new(digest_23(), piece).unwrap();
    assert_eq!(give.header().as_slice(), header.as_slice());
}

#[test]
fn give_vector_with_reference_demo_piece_23() {
    let piece = reference_demo_piece(23);
    let mut wire = unhex(&format!("21000200 01 {DIGEST_23}"));
    wire.extend_from_slice(&piece);
    assert_eq!(wire.len(), GIVE_HEADER_BYTES + LEGACY_PIECE_BYTES);

    // Decode: exact message, exact piece bytes, and the piece hashes to its name.
    let decoded = decode_one(&wire);
    let Message::Give(give) = &decoded else {
        panic!("not a GIVE: {decoded:?}");
    };
    assert_eq!(give.id(), digest_23());
    assert_eq!(give.piece().len(), LEGACY_PIECE_BYTES);
    assert_eq!(give.piece().as_ref(), piece.as_slice());
    assert_eq!(&give.piece()[..4], &[23, 0, 0, 0]);
    assert_eq!(PieceId::of(give.piece()), digest_23());
    let verified = VerifiedPiece::verify(give.id(), give.piece().clone()).unwrap();
    assert_eq!(verified.id(), digest_23());

    // Encode: the whole frame, and the header + piece a server writes.
    let expected = Message::Give(Give::new(digest_23(), Bytes::from(piece.clone())).unwrap());
    assert_vector(&wire, &expected);
    let Message::Give(give) = expected else {
        unreachable!()
    };
    let mut vectored = give.header().to_vec();
    vectored.extend_from_slice(give.piece());
    assert_eq!(vectored, wire);
    let (id, bytes) = give.into_parts();
    assert_eq!((id, bytes.as_ref()), (digest_23(), piece.as_slice()));
}

#[test]
fn give_decoded_from_bytes_mut_is_zero_copy() {
    let piece = reference_demo_piece(23);
    let mut buf = BytesMut::with_capacity(GIVE_HEADER_BYTES + piece.len() + 37);
    buf.extend_from_slice(&encode_give_header(&digest_23(), piece.len()).unwrap());
    buf.extend_from_slice(&piece);
    // A second frame right behind it, as a read may deliver.
    buf.extend_from_slice(&Message::Ask(digest_23()).to_bytes());
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();

    let mut decoder = Decoder::new();
    let Some(Message::Give(give)) = decoder.decode(&mut buf).unwrap() else {
        panic!("not a GIVE");
    };
    let piece_start = give.piece().as_ptr() as usize;
    let piece_end = piece_start + give.piece().len();
    assert!(
        start <= piece_start && piece_end <= end,
        "piece {piece_start:#x}..{piece_end:#x} outside the read buffer {start:#x}..{end:#x}"
    );
    assert_eq!(
        piece_start,
        start + GIVE_HEADER_BYTES,
        "the piece is the buffer's bytes after the header"
    );
    // Nor was the rest of the buffer moved to close the gap.
    assert_eq!(buf.as_ptr() as usize, piece_end);
    assert_eq!(
        decoder.decode(&mut buf).unwrap(),
        Some(Message::Ask(digest_23()))
    );
    assert!(buf.is_empty());
    assert_eq!(give.piece().as_ref(), piece.as_slice());
}

#[test]
fn hello_vector() {
    let wire = unhex("11000000 03 5032504e 01 01 591b 0102030405060708");
    assert_eq!(wire.len(), 21);
    let node_id = NodeId([1, 2, 3, 4, 5, 6, 7, 8]);
    let hello = Hello::new(1, HelloFlags(HelloFlags::LISTENING), 7001, node_id).unwrap();
    assert_vector(&wire, &Message::Hello(hello));
    assert_vector(
        &wire,
        &Message::Hello(Hello::ours(Some(7001), false, node_id)),
    );

    let Message::Hello(decoded) = decode_one(&wire) else {
        panic!("not a HELLO");
    };
    assert_eq!(decoded.version(), 1);
    assert_eq!(decoded.negotiated_version(), 1);
    assert!(decoded.flags().listening());
    assert!(!decoded.flags().client());
    assert_eq!(decoded.listen_port(), Some(7001));
    assert_eq!(decoded.raw_listen_port(), 7001);
    assert_eq!(decoded.node_id(), node_id);
    assert_eq!(decoded.node_id().to_string(), "0102030405060708");
}

#[test]
fn digest_message_vectors() {
    type Build = fn(PieceId) -> Message;
    let cases: [(&str, Build, MessageType); 4] = [
        ("04", Message::DontHave, MessageType::DontHave),
        ("05", Message::WantHave, MessageType::WantHave),
        ("06", Message::Have, MessageType::Have),
        ("07", Message::Cancel, MessageType::Cancel),
    ];
    for (ty, build, kind) in cases {
        let wire = unhex(&format!("21000000 {ty} {DIGEST_23}"));
        assert_eq!(wire.len(), 37);
        let expected = build(digest_23());
        assert_eq!(expected.kind(), kind);
        assert!(kind.is_extension());
        assert_vector(&wire, &expected);
    }
}
