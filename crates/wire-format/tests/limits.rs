//! Every hard limit of docs/PROTOCOL.md §1–§3: at the limit accepted, one past it
//! rejected with the exact `DecodeError` (or `EncodeError`) and its numbers,
//! and detected from as few bytes as the protocol says. Plus the decoder's
//! "need more bytes" contract on prefixes and back-to-back frames.

// Every function here is test code, but clippy's `allow-*-in-tests`
// settings only cover `#[test]` functions and `#[cfg(test)]` modules, not the
// helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};
use wire_format::limits::{
    DIGEST_MESSAGE_LEN, GIVE_HEADER_BYTES, HELLO_LEN, HELLO_MAGIC, MAX_FRAME_BYTES, MAX_LEN,
    MAX_PEERS_LEN, MAX_PEERS_PER_FRAME, PIECE_MAX,
};
use wire_format::{
    DecodeError, Decoder, EncodeError, Give, Hello, HelloFlags, Message, MessageType, NodeId,
    PeerAddr, Peers, PieceId, encode_give_header,
};

const ID: PieceId = PieceId::from_bytes([0xab; 32]);
const NODE: NodeId = NodeId([1, 2, 3, 4, 5, 6, 7, 8]);
const DIGEST_TYPES: [MessageType; 5] = [
    MessageType::Ask,
    MessageType::DontHave,
    MessageType::WantHave,
    MessageType::Have,
    MessageType::Cancel,
];

/// The 5 header bytes: `len` (LE) and type.
fn header(len: u32, ty: u8) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.push(ty);
    out
}

/// A frame with `len` and type, its body filled with `fill`.
fn frame(len: u32, ty: u8, fill: u8) -> Vec<u8> {
    let mut out = header(len, ty);
    out.resize(4 + len as usize, fill);
    out
}

/// Decodes `bytes`, asserting that an error leaves the buffer untouched.
fn decode(bytes: &[u8]) -> Result<Option<Message>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let result = Decoder::new().decode(&mut buf);
    match &result {
        Ok(Some(message)) => assert_eq!(bytes.len() - buf.len(), message.encoded_len()),
        Ok(None) | Err(_) => assert_eq!(buf.as_ref(), bytes, "buffer changed"),
    }
    result
}

/// Asserts that `bytes` (a header, possibly without body) is rejected with
/// `expected` both by `frame_len` and by `decode`.
fn assert_rejected(bytes: &[u8], expected: &DecodeError) {
    assert_eq!(
        Decoder::new().frame_len(bytes).as_ref(),
        Err(expected),
        "frame_len of {}",
        hex::encode(&bytes[..bytes.len().min(5)])
    );
    assert_eq!(decode(bytes).as_ref(), Err(expected));
}

/// A HELLO whose header is fine but whose contents are not: only the whole
/// frame can be judged, so `frame_len` passes it and `decode` rejects it.
fn assert_hello_rejected(bytes: &[u8], expected: &DecodeError) {
    assert_eq!(Decoder::new().frame_len(bytes), Ok(Some(4 + HELLO_LEN)));
    assert_eq!(decode(&bytes[..bytes.len() - 1]), Ok(None));
    assert_eq!(decode(bytes).as_ref(), Err(expected));
}

fn accepted(bytes: &[u8]) -> Message {
    decode(bytes).unwrap().expect("a whole valid frame")
}

fn hello_body(magic: [u8; 4], version: u8, flags: u8, port: u16) -> Vec<u8> {
    let mut out = header(u32::try_from(HELLO_LEN).unwrap(), MessageType::Hello as u8);
    out.extend_from_slice(&magic);
    out.push(version);
    out.push(flags);
    out.extend_from_slice(&port.to_le_bytes());
    out.extend_from_slice(&NODE.0);
    out
}

fn peers_frame(count: usize) -> Vec<u8> {
    let peers = (0..count)
        .map(|i| {
            let i = u16::try_from(i).unwrap();
            PeerAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2606, 0, 0, 0, 0, 0, 0, i)),
                1024 + i,
            )
        })
        .collect();
    Message::Peers(Peers::new(peers).unwrap())
        .to_bytes()
        .to_vec()
}

// ---- len field ----

#[test]
fn len_zero_is_rejected_from_the_four_header_bytes() {
    assert_rejected(&[0, 0, 0, 0], &DecodeError::LenZero);
    assert_rejected(&[0, 0, 0, 0, 0], &DecodeError::LenZero);
}

#[test]
fn len_one_is_the_smallest_frame() {
    // An empty PEERS: the keepalive.
    assert_eq!(accepted(&header(1, 2)), Message::Peers(Peers::empty()));
}

#[test]
fn max_len_is_accepted_as_a_give_of_a_full_piece() {
    assert_eq!(MAX_LEN, 1 + 32 + PIECE_MAX);
    let piece = Bytes::from(vec![0x5a; PIECE_MAX]);
    let message = Message::Give(Give::new(ID, piece.clone()).unwrap());
    let wire = message.to_bytes();
    assert_eq!(wire.len(), MAX_FRAME_BYTES);
    assert_eq!(&wire[..4], &u32::try_from(MAX_LEN).unwrap().to_le_bytes());
    assert_eq!(
        Decoder::new().frame_len(&wire[..5]),
        Ok(Some(MAX_FRAME_BYTES))
    );
    let Message::Give(give) = accepted(&wire) else {
        panic!("not a GIVE");
    };
    assert_eq!((give.id(), give.piece()), (ID, &piece));
}

#[test]
fn max_len_plus_one_is_rejected_from_the_four_header_bytes() {
    let too_long = u32::try_from(MAX_LEN + 1).unwrap();
    let expected = DecodeError::LenTooLarge {
        len: 1_048_610,
        max: 1_048_609,
    };
    // Only the length field: no type, no body.
    assert_rejected(&too_long.to_le_bytes(), &expected);
    // Whatever type follows.
    for ty in [0, 1, 2, 3, 8, 255] {
        assert_rejected(&header(too_long, ty), &expected);
    }
    assert_rejected(
        &u32::MAX.to_le_bytes(),
        &DecodeError::LenTooLarge {
            len: u32::MAX,
            max: MAX_LEN,
        },
    );
    assert_eq!(
        expected.to_string(),
        "frame len 1048610 exceeds the maximum 1048609"
    );
    assert_eq!(expected.kind(), "len_too_large");
}

// ---- fixed-size messages ----

#[test]
fn digest_messages_need_len_exactly_33() {
    for ty in DIGEST_TYPES {
        let message = accepted(&frame(33, ty as u8, 7));
        assert_eq!(message.kind(), ty);
        for len in [1, 2, 32, 34, 1000, MAX_LEN] {
            let expected = DecodeError::WrongLen {
                ty,
                len,
                expected: DIGEST_MESSAGE_LEN,
            };
            let len = u32::try_from(len).unwrap();
            // Known from the 5 header bytes alone...
            assert_rejected(&header(len, ty as u8), &expected);
            // ...and of course with the body there.
            if len < 100 {
                assert_rejected(&frame(len, ty as u8, 7), &expected);
            }
        }
    }
}

#[test]
fn hello_needs_len_exactly_17() {
    accepted(&hello_body(HELLO_MAGIC, 1, 0, 0));
    for len in [1, 16, 18, 33] {
        let expected = DecodeError::WrongLen {
            ty: MessageType::Hello,
            len,
            expected: HELLO_LEN,
        };
        let len = u32::try_from(len).unwrap();
        assert_rejected(&header(len, 3), &expected);
        assert_rejected(&frame(len, 3, 0), &expected);
    }
    assert_eq!(
        DecodeError::WrongLen {
            ty: MessageType::Hello,
            len: 16,
            expected: 17
        }
        .to_string(),
        "hello frame len 16, expected exactly 17"
    );
}

// ---- GIVE ----

#[test]
fn give_without_piece_is_rejected_and_one_byte_is_accepted() {
    for len in [1, 2, 32, 33] {
        let expected = DecodeError::GiveEmpty { len, min: 34 };
        let len = u32::try_from(len).unwrap();
        assert_rejected(&header(len, 1), &expected);
        assert_rejected(&frame(len, 1, 9), &expected);
    }
    let Message::Give(give) = accepted(&frame(34, 1, 9)) else {
        panic!("not a GIVE");
    };
    assert_eq!(give.id(), PieceId::from_bytes([9; 32]));
    assert_eq!(give.piece().as_ref(), &[9]);
}

// ---- PEERS ----

#[test]
fn peers_len_must_be_one_plus_a_multiple_of_18() {
    // Lengths whose body is not a whole number of entries.
    for len in [2, 18, 20, 36, 1 + 18 * 1024 + 1, MAX_LEN - 1] {
        let expected = DecodeError::PeersLen { len, entry: 18 };
        let len = u32::try_from(len).unwrap();
        assert_rejected(&header(len, 2), &expected);
        if len < 100 {
            assert_rejected(&frame(len, 2, 0), &expected);
        }
    }
    for count in [0, 1, 2, 50] {
        let wire = peers_frame(count);
        assert_eq!(wire.len(), 5 + 18 * count);
        let Message::Peers(peers) = accepted(&wire) else {
            panic!("not a PEERS");
        };
        assert_eq!(peers.entries().len(), count);
    }
}

#[test]
fn peers_with_1024_entries_is_accepted() {
    let wire = peers_frame(MAX_PEERS_PER_FRAME);
    assert_eq!(wire.len(), 4 + MAX_PEERS_LEN);
    let Message::Peers(peers) = accepted(&wire) else {
        panic!("not a PEERS");
    };
    assert_eq!(peers.entries().len(), 1024);
    assert_eq!(peers.entries()[1023].port(), 1024 + 1023);
}

#[test]
fn peers_with_1025_entries_is_rejected_from_the_five_header_bytes() {
    let len = u32::try_from(1 + 18 * 1025).unwrap();
    let expected = DecodeError::TooManyPeers {
        count: 1025,
        max: 1024,
    };
    assert_rejected(&header(len, 2), &expected);
    assert_rejected(&frame(len, 2, 0), &expected);
    // The largest multiple that fits in MAX_LEN: still judged by its header.
    let count = (MAX_LEN - 1) / 18;
    let len = u32::try_from(1 + 18 * count).unwrap();
    assert_rejected(
        &header(len, 2),
        &DecodeError::TooManyPeers { count, max: 1024 },
    );
}

// ---- types ----

#[test]
fn unknown_types_are_rejected_from_the_five_header_bytes() {
    for ty in [8u8, 9, 100, 255] {
        for len in [1, 17, 33, 34, 1000] {
            let expected = DecodeError::UnknownType { ty };
            assert_rejected(&header(len, ty), &expected);
            assert_rejected(&frame(len, ty, 0), &expected);
        }
    }
    assert_eq!(
        DecodeError::UnknownType { ty: 255 }.to_string(),
        "unknown message type 255"
    );
}

#[test]
fn every_known_type_byte_maps_to_its_type() {
    for byte in 0..=255u8 {
        match MessageType::from_byte(byte) {
            Some(ty) => {
                assert!(byte <= 7);
                assert_eq!(ty as u8, byte);
                assert_eq!(ty.is_extension(), byte >= 3);
            }
            None => assert!(byte >= 8),
        }
    }
}

// ---- HELLO contents ----

#[test]
fn hello_with_bad_magic_is_rejected() {
    for magic in [*b"P2PM", *b"p2pn", [0; 4], *b"NP2P"] {
        assert_hello_rejected(
            &hello_body(magic, 1, HelloFlags::LISTENING, 7001),
            &DecodeError::BadMagic {
                found: magic,
                expected: *b"P2PN",
            },
        );
    }
}

#[test]
fn hello_version_zero_is_rejected_and_any_other_accepted() {
    assert_hello_rejected(
        &hello_body(HELLO_MAGIC, 0, HelloFlags::LISTENING, 7001),
        &DecodeError::VersionZero,
    );
    for version in [1, 2, 255] {
        let Message::Hello(hello) = accepted(&hello_body(HELLO_MAGIC, version, 0, 0)) else {
            panic!("not a HELLO");
        };
        assert_eq!(hello.version(), version);
        assert_eq!(hello.negotiated_version(), 1);
    }
}

#[test]
fn hello_listening_with_port_zero_is_rejected() {
    for flags in [
        HelloFlags::LISTENING,
        HelloFlags::LISTENING | HelloFlags::CLIENT,
        0xff,
    ] {
        assert_hello_rejected(
            &hello_body(HELLO_MAGIC, 1, flags, 0),
            &DecodeError::ListeningPortZero,
        );
    }
    let Message::Hello(hello) = accepted(&hello_body(HELLO_MAGIC, 1, HelloFlags::LISTENING, 1))
    else {
        panic!("not a HELLO");
    };
    assert_eq!(hello.listen_port(), Some(1));
}

#[test]
fn hello_without_listening_may_have_port_zero() {
    for flags in [0, HelloFlags::CLIENT] {
        let wire = hello_body(HELLO_MAGIC, 1, flags, 0);
        let Message::Hello(hello) = accepted(&wire) else {
            panic!("not a HELLO");
        };
        assert_eq!(hello.listen_port(), None);
        assert_eq!(hello.raw_listen_port(), 0);
        assert_eq!(hello.flags().client(), flags == HelloFlags::CLIENT);
        assert_eq!(Message::Hello(hello).to_bytes().as_ref(), wire.as_slice());
    }
}

#[test]
fn unknown_hello_flag_bits_are_kept_and_reencoded() {
    for (flags, port) in [(0xfc, 0), (0xfd, 7001), (0x80, 4242), (0xfe, 9)] {
        let wire = hello_body(HELLO_MAGIC, 7, flags, port);
        let Message::Hello(hello) = accepted(&wire) else {
            panic!("not a HELLO");
        };
        assert_eq!(hello.flags(), HelloFlags(flags));
        assert_eq!(hello.flags().listening(), flags & 1 == 1);
        // The port field is kept as sent even without LISTENING.
        assert_eq!(hello.raw_listen_port(), port);
        assert_eq!(Message::Hello(hello).to_bytes().as_ref(), wire.as_slice());
    }
}

// ---- encoding side ----

#[test]
fn give_new_refuses_empty_and_oversized_pieces() {
    assert_eq!(
        Give::new(ID, Bytes::new()),
        Err(EncodeError::PieceSize {
            len: 0,
            min: 1,
            max: PIECE_MAX
        })
    );
    assert_eq!(
        Give::new(ID, Bytes::from(vec![0; PIECE_MAX + 1])),
        Err(EncodeError::PieceSize {
            len: PIECE_MAX + 1,
            min: 1,
            max: PIECE_MAX
        })
    );
    assert!(Give::new(ID, Bytes::from_static(b"x")).is_ok());
    assert!(Give::new(ID, Bytes::from(vec![0; PIECE_MAX])).is_ok());
}

#[test]
fn encode_give_header_refuses_zero_and_oversized_lengths() {
    for len in [0, PIECE_MAX + 1, usize::MAX] {
        assert_eq!(
            encode_give_header(&ID, len),
            Err(EncodeError::PieceSize {
                len,
                min: 1,
                max: PIECE_MAX
            })
        );
    }
    let header = encode_give_header(&ID, PIECE_MAX).unwrap();
    assert_eq!(header.len(), GIVE_HEADER_BYTES);
    assert_eq!(&header[..4], &u32::try_from(MAX_LEN).unwrap().to_le_bytes());
    assert_eq!(header[4], 1);
    assert_eq!(&header[5..], ID.as_bytes());
    assert_eq!(Decoder::new().frame_len(&header), Ok(Some(MAX_FRAME_BYTES)));
    let one = encode_give_header(&ID, 1).unwrap();
    assert_eq!(&one[..4], &[34, 0, 0, 0]);
}

#[test]
fn peers_new_refuses_1025_entries_and_accepts_1024() {
    let addr = PeerAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), 7001);
    assert_eq!(
        Peers::new(vec![addr; 1025]),
        Err(EncodeError::TooManyPeers {
            count: 1025,
            max: 1024
        })
    );
    let peers = Peers::new(vec![addr; 1024]).unwrap();
    assert_eq!(peers.entries().len(), 1024);
    assert_eq!(Message::Peers(peers).encoded_len(), 4 + MAX_PEERS_LEN);
}

#[test]
fn hello_new_refuses_version_zero_and_listening_with_port_zero() {
    assert_eq!(
        Hello::new(0, HelloFlags(0), 7001, NODE),
        Err(EncodeError::VersionZero)
    );
    assert_eq!(
        Hello::new(1, HelloFlags(HelloFlags::LISTENING), 0, NODE),
        Err(EncodeError::ListeningPortZero)
    );
    assert!(Hello::new(1, HelloFlags(0), 0, NODE).is_ok());
    assert!(Hello::new(1, HelloFlags(HelloFlags::LISTENING), 1, NODE).is_ok());
    assert!(Hello::new(255, HelloFlags(0xff), 65535, NODE).is_ok());
    // Our own HELLO never claims LISTENING without a port.
    let ours = Hello::ours(Some(0), true, NODE);
    assert_eq!(ours.listen_port(), None);
    assert!(ours.flags().client());
}

// ---- decoder contract ----

fn sample_frames() -> Vec<Message> {
    vec![
        Message::Ask(ID),
        Message::Give(Give::new(ID, Bytes::from_static(b"p")).unwrap()),
        Message::Give(Give::new(ID, Bytes::from(vec![3; 1000])).unwrap()),
        Message::Peers(Peers::empty()),
        Message::Peers(Peers::new(vec!["[::1]:8100".parse().unwrap(); 3]).unwrap()),
        Message::Hello(Hello::ours(Some(7001), false, NODE)),
        Message::DontHave(ID),
        Message::WantHave(ID),
        Message::Have(ID),
        Message::Cancel(ID),
    ]
}

#[test]
fn every_strict_prefix_needs_more_bytes_and_consumes_nothing() {
    let mut decoder = Decoder::new();
    for message in sample_frames() {
        let wire = message.to_bytes();
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(
                decoder.decode(&mut buf),
                Ok(None),
                "{message:?} cut at {cut}"
            );
            assert_eq!(buf.as_ref(), &wire[..cut], "{message:?} cut at {cut}");
            let size = decoder.frame_len(&wire[..cut]).unwrap();
            assert_eq!(size, (cut >= 5).then_some(wire.len()));
        }
        let mut buf = BytesMut::from(wire.as_ref());
        assert_eq!(decoder.decode(&mut buf), Ok(Some(message)));
        assert!(buf.is_empty());
    }
}

#[test]
fn prefixes_of_a_full_size_give_need_more_bytes() {
    let message = Message::Give(Give::new(ID, Bytes::from(vec![1; PIECE_MAX])).unwrap());
    let wire = message.to_bytes();
    let mut decoder = Decoder::new();
    for cut in [0, 1, 4, 5, 36, 37, 38, PIECE_MAX, wire.len() - 1] {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(decoder.decode(&mut buf), Ok(None), "cut at {cut}");
        assert_eq!(buf.len(), cut);
    }
    // Grown in place, as a read loop does.
    let mut buf = BytesMut::with_capacity(wire.len());
    buf.put_slice(&wire[..wire.len() - 1]);
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.put_slice(&wire[wire.len() - 1..]);
    assert_eq!(decoder.decode(&mut buf), Ok(Some(message)));
    assert!(buf.is_empty());
}

#[test]
fn frames_back_to_back_decode_one_after_the_other() {
    let frames = sample_frames();
    let mut buf = BytesMut::new();
    for message in &frames {
        message.encode(&mut buf);
    }
    let mut decoder = Decoder::new();
    for message in &frames {
        let before = buf.len();
        assert_eq!(decoder.decode(&mut buf), Ok(Some(message.clone())));
        assert_eq!(before - buf.len(), message.encoded_len());
    }
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert!(buf.is_empty());
}

#[test]
fn a_frame_followed_by_a_partial_one_leaves_the_partial_one() {
    let mut buf = BytesMut::new();
    Message::Ask(ID).encode(&mut buf);
    let give = Message::Give(Give::new(ID, Bytes::from_static(b"abc")).unwrap()).to_bytes();
    buf.put_slice(&give[..10]);
    let mut decoder = Decoder::new();
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Message::Ask(ID))));
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    assert_eq!(buf.as_ref(), &give[..10]);
    buf.put_slice(&give[10..]);
    assert_eq!(
        decoder.decode(&mut buf).unwrap().map(|m| m.to_bytes()),
        Some(give)
    );
}

#[test]
fn a_valid_frame_followed_by_a_bad_one_yields_the_valid_one_then_the_error() {
    let mut buf = BytesMut::new();
    Message::Have(ID).encode(&mut buf);
    buf.put_slice(&header(0, 0));
    let mut decoder = Decoder::new();
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Message::Have(ID))));
    assert_eq!(decoder.decode(&mut buf), Err(DecodeError::LenZero));
}
