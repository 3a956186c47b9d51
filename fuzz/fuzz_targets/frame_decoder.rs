//! Arbitrary bytes fed to `wire_format::Decoder` as a read loop feeds it,
//! in chunks whose sizes the input's first bytes choose. Checks, on every
//! call: a decoded message re-encodes to exactly the bytes it consumed (and
//! `frame_len` and `give_head` agree with it); `Ok(None)` and an error leave
//! the buffer as it was; and the chunking changes nothing (the same input in
//! one piece decodes to the same messages and the same error).
//!
//! Input: byte 0 is the number of chunk sizes `k` (mod 8), the next `k`
//! bytes are the sizes (each byte + 1), used in turn, cycling; the rest is
//! the stream.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wire_format::{DecodeError, Decoder, Message};

/// What a read loop got from a stream.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<DecodeError>,
    consumed: usize,
}

fn feed(stream: &[u8], sizes: &[usize]) -> Outcome {
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut outcome = Outcome {
        messages: Vec::new(),
        error: None,
        consumed: 0,
    };
    let mut rest = stream;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = sizes
            .next()
            .copied()
            .unwrap_or(rest.len())
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.clone().freeze();
            match decoder.decode(&mut buf) {
                Ok(Some(message)) => {
                    let used = before.len() - buf.len();
                    assert_eq!(message.to_bytes(), before.slice(..used), "{message:?}");
                    assert_eq!(message.encoded_len(), used);
                    assert_eq!(decoder.frame_len(&before), Ok(Some(used)));
                    assert_eq!(buf.as_ref(), &before[used..]);
                    let head = decoder
                        .give_head(&before)
                        .expect("a decoded frame has a valid head");
                    match &message {
                        Message::Give(give) => {
                            let head = head.expect("a GIVE has a head");
                            assert_eq!(head.id(), give.id());
                            assert_eq!(head.piece_len(), give.piece().len());
                            assert_eq!(head.frame_bytes(), used);
                        }
                        _ => assert_eq!(head, None),
                    }
                    outcome.consumed += used;
                    outcome.messages.push(message);
                }
                Ok(None) => {
                    assert_eq!(buf.as_ref(), before.as_ref(), "Ok(None) consumed bytes");
                    if let Ok(Some(total)) = decoder.frame_len(&buf) {
                        assert!(total > buf.len(), "Ok(None) with a whole frame buffered");
                    }
                    break;
                }
                Err(error) => {
                    assert_eq!(buf.as_ref(), before.as_ref(), "{error} consumed bytes");
                    outcome.error = Some(error);
                    return outcome;
                }
            }
        }
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 8).min(rest.len());
    let (size_bytes, stream) = rest.split_at(k);
    let sizes: Vec<usize> = size_bytes.iter().map(|&b| usize::from(b) + 1).collect();
    let chunked = feed(stream, &sizes);
    let whole = feed(stream, &[stream.len().max(1)]);
    assert_eq!(chunked, whole, "the chunking changed the outcome");
    let mut encoded = BytesMut::new();
    for message in &chunked.messages {
        message.encode(&mut encoded);
    }
    assert_eq!(&encoded[..], &stream[..chunked.consumed]);
});
