//! Property tests of the codec: every valid message round-trips, and nothing a
//! peer sends — random bytes, bit-flipped or truncated frames, delivered in
//! any chunking — makes the decoder panic or break its contract.
//!
//! Runs use a fixed seed so the suite is deterministic; set
//! `PROPTEST_RNG_SEED=<u64>` to explore other inputs.

// Every function here is test code, but clippy's `allow-*-in-tests`
// settings only cover `#[test]` functions and `#[cfg(test)]` modules, not the
// helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::RngSeed;
use wire_format::limits::{HELLO_LEN, MAX_PEERS_PER_FRAME, PIECE_MAX};
use wire_format::{
    DecodeError, Decoder, Give, Hello, HelloFlags, Message, NodeId, PeerAddr, Peers, PieceId,
};

/// Seed used unless `PROPTEST_RNG_SEED` is set.
const SEED: u64 = 0x7032_706e_7769_7265;

fn config(cases: u32) -> ProptestConfig {
    let mut config = ProptestConfig::with_cases(cases);
    if matches!(config.rng_seed, RngSeed::Random) {
        config.rng_seed = RngSeed::Fixed(SEED);
    }
    config
}

// ---- strategies ----

fn piece_id() -> impl Strategy<Value = PieceId> {
    any::<[u8; 32]>().prop_map(PieceId::from_bytes)
}

/// Piece bytes of `len`, cheap to build even at 1 MiB: a pattern from a seed
/// rather than a million generated values.
fn patterned_piece(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: fast, and every byte value occurs.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Piece sizes: mostly small, sometimes anywhere up to `max`, sometimes `max`.
fn piece_len(max: usize) -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 1..=64usize,
        3 => 1..=max.min(4096),
        1 => 1..=max,
        1 => Just(max),
    ]
}

fn give(max_piece: usize) -> impl Strategy<Value = Give> {
    (piece_id(), piece_len(max_piece), any::<u64>())
        .prop_map(|(id, len, seed)| Give::new(id, patterned_piece(len, seed)).unwrap())
}

/// Any address, including IPv4-mapped IPv6 ones, canonicalised by `PeerAddr::new`.
fn peer_addr() -> impl Strategy<Value = PeerAddr> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        Just(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    (ip, any::<u16>()).prop_map(|(ip, port)| PeerAddr::new(ip, port))
}

fn peers(max_entries: usize) -> impl Strategy<Value = Peers> {
    prop_oneof![
        8 => prop::collection::vec(peer_addr(), 0..=8),
        1 => prop::collection::vec(peer_addr(), 0..=max_entries),
        1 => prop::collection::vec(peer_addr(), max_entries),
    ]
    .prop_map(|entries| Peers::new(entries).unwrap())
}

fn hello() -> impl Strategy<Value = Hello> {
    (1..=u8::MAX, any::<u8>(), any::<u16>(), any::<[u8; 8]>()).prop_map(
        |(version, flags, port, node_id)| {
            // LISTENING needs a port; keep every other combination, unknown bits included.
            let port = if flags & HelloFlags::LISTENING != 0 && port == 0 {
                1
            } else {
                port
            };
            Hello::new(version, HelloFlags(flags), port, NodeId(node_id)).unwrap()
        },
    )
}

/// Any valid message of all eight types, GIVE pieces up to `max_piece` bytes
/// and PEERS lists up to `max_entries`.
fn message(max_piece: usize, max_entries: usize) -> impl Strategy<Value = Message> {
    prop_oneof![
        piece_id().prop_map(Message::Ask),
        give(max_piece).prop_map(Message::Give),
        peers(max_entries).prop_map(Message::Peers),
        hello().prop_map(Message::Hello),
        piece_id().prop_map(Message::DontHave),
        piece_id().prop_map(Message::WantHave),
        piece_id().prop_map(Message::Have),
        piece_id().prop_map(Message::Cancel),
    ]
}

/// Small messages, for the mutation tests that decode many times per case.
fn small_message() -> impl Strategy<Value = Message> {
    message(2048, 40)
}

fn encode_all(messages: &[Message]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    for message in messages {
        message.encode(&mut buf);
    }
    buf.to_vec()
}

/// Chunk sizes a socket might deliver: mostly small, some large.
fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(
        prop_oneof![4 => 1..=8usize, 2 => 1..=64usize, 1 => 1..=4096usize],
        1..=16,
    )
}

// ---- the read loop ----

/// What feeding a byte stream to the decoder produced.
#[derive(Debug, Default)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<DecodeError>,
    /// Bytes the decoder took off the buffer, in total.
    consumed: usize,
    /// Bytes left in the buffer at the end: after an error, the bad frame as
    /// far as it was fed; otherwise the unfinished frame at the end of the input.
    leftover: Vec<u8>,
}

/// Feeds `input` in chunks (cycling through `chunks`) as a read loop does:
/// append a chunk, decode until `Ok(None)` or an error, stop at the first
/// error. Checks the decoder's contract on every call:
/// * `Ok(Some(m))` consumed exactly the size `frame_len` reported for the
///   head of the buffer, that is `m.encoded_len()` bytes, and they are exactly
///   `m`'s encoding (decoding loses nothing); a GIVE's head, as
///   `give_head` names it, is its digest and piece length;
/// * `Ok(None)` leaves the buffer as it was, and the frame at its head is
///   really unfinished;
/// * `Err(_)` leaves the buffer as it was.
fn feed(input: &[u8], chunks: &[usize]) -> Outcome {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut outcome = Outcome::default();
    let mut rest = input;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone().freeze();
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    let used = before.len() - buf.len();
                    assert_eq!(decoder.frame_len(&before), Ok(Some(used)), "{message:?}");
                    assert_eq!(used, message.encoded_len(), "{message:?}");
                    assert_eq!(message.to_bytes(), before.slice(..used), "{message:?}");
                    assert_eq!(buf.as_ref(), &before[used..]);
                    let head = decoder.give_head(&before).unwrap();
                    match &message {
                        Message::Give(give) => {
                            let head = head.expect("a GIVE has a head");
                            assert_eq!(head.id(), give.id());
                            assert_eq!(head.piece_len(), give.piece().len());
                            assert_eq!(head.frame_bytes(), used);
                        }
                        _ => assert_eq!(head, None, "{message:?}"),
                    }
                    outcome.consumed += used;
                    outcome.messages.push(message);
                }
                Ok(None) => {
                    assert_eq!(buf.as_ref(), before.as_ref(), "Ok(None) consumed bytes");
                    match decoder.frame_len(&buf) {
                        Ok(None) => {}
                        Ok(Some(total)) => assert!(
                            total > buf.len(),
                            "Ok(None) with the whole {total}-byte frame buffered"
                        ),
                        Err(error) => {
                            panic!("Ok(None) for a frame that frame_len rejects: {error}")
                        }
                    }
                    break;
                }
                Err(error) => {
                    assert_eq!(buf.as_ref(), before.as_ref(), "{error} consumed bytes");
                    // Only a HELLO's contents need its body to be judged;
                    // every other error is known from the header alone.
                    let from_header = decoder.frame_len(&buf);
                    match error {
                        DecodeError::BadMagic { .. }
                        | DecodeError::VersionZero
                        | DecodeError::ListeningPortZero => {
                            assert_eq!(from_header, Ok(Some(4 + HELLO_LEN)));
                        }
                        _ => assert_eq!(from_header, Err(error.clone())),
                    }
                    outcome.error = Some(error);
                    outcome.leftover = buf.to_vec();
                    return outcome;
                }
            }
        }
    }
    outcome.leftover = buf.to_vec();
    outcome
}

/// What holds for any input, valid or not, once `feed` has run on it:
/// * the bytes consumed are exactly the decoded messages' encodings, in order;
/// * after an error, the rest of the input, decoded at once, fails the same
///   way; otherwise the leftover is exactly the rest of the input, and it is
///   an unfinished frame;
/// * the chunking changes nothing: the input in one piece gives the same
///   messages, the same error and the same bytes consumed.
fn check_outcome(input: &[u8], outcome: &Outcome) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        encode_all(&outcome.messages),
        &input[..outcome.consumed],
        "consumed bytes are not the messages' encodings"
    );
    let rest = &input[outcome.consumed..];
    match &outcome.error {
        Some(error) => {
            prop_assert!(rest.starts_with(&outcome.leftover));
            let mut buf = BytesMut::from(rest);
            prop_assert_eq!(&Decoder::new().decode(&mut buf), &Err(error.clone()));
        }
        None => {
            prop_assert_eq!(outcome.leftover.as_slice(), rest);
            match Decoder::new().frame_len(rest) {
                Ok(None) => {}
                Ok(Some(total)) => prop_assert!(total > rest.len(), "a whole frame left over"),
                Err(error) => prop_assert!(false, "an unreported error left over: {}", error),
            }
        }
    }
    let whole = feed(input, &[input.len().max(1)]);
    prop_assert_eq!(&whole.messages, &outcome.messages);
    prop_assert_eq!(&whole.error, &outcome.error);
    prop_assert_eq!(whole.consumed, outcome.consumed);
    Ok(())
}

// ---- round trips ----

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn round_trip_of_any_message(
        message in message(PIECE_MAX, MAX_PEERS_PER_FRAME),
        trailer in prop::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut buf = BytesMut::new();
        message.encode(&mut buf);
        prop_assert_eq!(buf.len(), message.encoded_len());
        prop_assert_eq!(&message.to_bytes()[..], &buf[..]);
        if let Message::Give(give) = &message {
            let header = give.header();
            prop_assert_eq!(&buf[..37], &header[..]);
            prop_assert_eq!(&buf[37..], give.piece().as_ref());
        }
        // Bytes of a next frame after it must be left alone (fewer than a
        // header, so they never form a frame of their own).
        buf.extend_from_slice(&trailer);
        let decoded = Decoder::new().decode(&mut buf).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&message));
        prop_assert_eq!(&buf[..], trailer.as_slice());
    }

    #[test]
    fn a_stream_in_random_chunks_decodes_to_the_same_messages(
        messages in prop::collection::vec(small_message(), 1..=5),
        chunks in chunk_sizes(),
    ) {
        let wire = encode_all(&messages);
        let outcome = feed(&wire, &chunks);
        prop_assert_eq!(outcome.error, None);
        prop_assert_eq!(outcome.consumed, wire.len());
        prop_assert!(outcome.leftover.is_empty());
        prop_assert_eq!(outcome.messages, messages);
    }
}

// ---- never panics ----

/// Random bytes; random bytes behind a plausible header (a small `len` and a
/// type byte around the known range), which reach the per-type checks far
/// more often than uniform noise; and frames whose body is exactly as long as
/// their `len` says, with lengths some types accept, so that whole frames with
/// random contents end the input or are followed by more.
fn noise() -> impl Strategy<Value = Vec<u8>> {
    let plausible = (
        0..=300u32,
        0..=9u8,
        prop::collection::vec(any::<u8>(), 0..=320),
    )
        .prop_map(|(len, ty, body)| {
            let mut out = len.to_le_bytes().to_vec();
            out.push(ty);
            out.extend_from_slice(&body);
            out
        });
    let sized = (
        prop_oneof![Just(1u32), Just(17), Just(19), Just(33), 34..=300u32],
        0..=9u8,
        any::<u64>(),
    )
        .prop_map(|(len, ty, seed)| {
            let mut out = len.to_le_bytes().to_vec();
            out.push(ty);
            out.extend_from_slice(&patterned_piece(len as usize - 1, seed));
            out
        });
    let part = prop_oneof![plausible, sized];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..=512),
        part.clone(),
        // Several in a row.
        prop::collection::vec(part, 1..=4).prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_bytes_never_panic(input in noise(), chunks in chunk_sizes()) {
        let outcome = feed(&input, &chunks);
        check_outcome(&input, &outcome)?;
    }

    #[test]
    fn bit_flipped_frames_never_panic(
        messages in prop::collection::vec(small_message(), 1..=3),
        flips in prop::collection::vec((any::<Index>(), 0..8u8), 1..=8),
        chunks in chunk_sizes(),
    ) {
        let mut wire = encode_all(&messages);
        for (index, bit) in &flips {
            let at = index.index(wire.len());
            wire[at] ^= 1 << bit;
        }
        let outcome = feed(&wire, &chunks);
        check_outcome(&wire, &outcome)?;
        // The frames before the first flipped byte are intact: they decode
        // to the messages that were sent.
        let clean = wire
            .iter()
            .zip(encode_all(&messages))
            .take_while(|(got, sent)| *got == sent)
            .count();
        let mut end = 0;
        let intact = messages
            .iter()
            .take_while(|message| {
                end += message.encoded_len();
                end <= clean
            })
            .count();
        prop_assert!(outcome.messages.len() >= intact);
        prop_assert_eq!(&outcome.messages[..intact], &messages[..intact]);
    }

    #[test]
    fn truncated_frames_never_panic_and_yield_the_whole_frames(
        messages in prop::collection::vec(small_message(), 1..=4),
        cut in any::<Index>(),
        chunks in chunk_sizes(),
    ) {
        let wire = encode_all(&messages);
        let cut = cut.index(wire.len());
        let outcome = feed(&wire[..cut], &chunks);
        check_outcome(&wire[..cut], &outcome)?;
        // A prefix of a valid stream is never an error: it is the frames that
        // fit, then "need more bytes".
        prop_assert_eq!(outcome.error, None);
        let mut fit = 0;
        let mut whole = 0;
        for message in &messages {
            if fit + message.encoded_len() > cut {
                break;
            }
            fit += message.encoded_len();
            whole += 1;
        }
        prop_assert_eq!(outcome.consumed, fit);
        prop_assert_eq!(outcome.leftover.as_slice(), &wire[fit..cut]);
        prop_assert_eq!(outcome.messages.as_slice(), &messages[..whole]);
    }
}

// ---- byte-at-a-time GIVE ----

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn give_fed_one_byte_at_a_time_equals_give_decoded_whole(give in give(PIECE_MAX)) {
        let wire = Message::Give(give).to_bytes();

        let mut whole = BytesMut::from(wire.as_ref());
        let expected = Decoder::new().decode(&mut whole).unwrap().unwrap();
        prop_assert!(whole.is_empty());

        let mut decoder = Decoder::new();
        let mut buf = BytesMut::new();
        let (last, head) = wire.split_last().unwrap();
        for &byte in head {
            buf.extend_from_slice(&[byte]);
            prop_assert_eq!(decoder.decode(&mut buf), Ok(None));
        }
        prop_assert_eq!(buf.len(), wire.len() - 1);
        buf.extend_from_slice(&[*last]);
        let decoded = decoder.decode(&mut buf).unwrap();
        prop_assert_eq!(decoded, Some(expected));
        prop_assert!(buf.is_empty());
    }
}
