//! Codec benchmarks: a full-size (1 MiB) GIVE the way a node handles it, and
//! a small message.
//!
//! Run with `cargo bench -p wire-format --bench codec`.
//!
//! * `give_1mib/decode_give_1mib`: decode a GIVE from a read buffer that
//!   already holds the whole frame (the buffer is filled in untimed setup).
//!   The piece is split off without a copy, so the cost does not grow with
//!   the piece and the throughput figure is nominal.
//! * `give_1mib/encode_give_header_1mib`: the 37-byte header a node writes
//!   before the piece (one vectored write; the piece is never copied).
//! * `give_1mib/roundtrip_give_1mib`: header, written into a prepared read
//!   buffer that holds the piece, then decode.
//! * `give_1mib/read_and_decode_give_1mib`: for scale, the same plus the
//!   1 MiB copy a socket read makes into the read buffer.
//! * `give_1mib/encode_give_full_1mib`: for scale, `Message::encode`, which
//!   copies the piece (the path a node avoids).
//! * `ask/encode_decode_ask`: a 37-byte ASK encoded and decoded.

// A benchmark whose fixed input fails to build or decode must stop loudly
// rather than measure something else; this code never runs in a node.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use wire_format::limits::{GIVE_HEADER_BYTES, MAX_FRAME_BYTES, PIECE_MAX};
use wire_format::{Decoder, Give, Message, PieceId, encode_give_header};

/// The piece every GIVE bench carries: 1 MiB, the largest a GIVE holds.
fn piece() -> Bytes {
    (0..PIECE_MAX)
        .map(|i| i.to_le_bytes()[0] ^ i.to_le_bytes()[1])
        .collect()
}

/// A read buffer holding exactly one GIVE frame of `piece`.
fn give_frame(id: &PieceId, piece: &[u8]) -> BytesMut {
    let header = encode_give_header(id, piece.len()).expect("a 1 MiB piece fits a GIVE");
    let mut buf = BytesMut::with_capacity(MAX_FRAME_BYTES);
    buf.put_slice(&header);
    buf.put_slice(piece);
    buf
}

/// An empty buffer with room for the largest frame, its pages already
/// touched, like a read buffer a connection reuses: the copy into it is then
/// measured without the page faults of a fresh allocation.
fn empty_read_buffer() -> BytesMut {
    let mut buf = BytesMut::with_capacity(MAX_FRAME_BYTES);
    buf.put_bytes(0xff, MAX_FRAME_BYTES);
    buf.clear();
    buf
}

fn give_1mib(c: &mut Criterion) {
    let piece = piece();
    let id = PieceId::of(&piece);
    let frame = give_frame(&id, &piece);

    // Check once, untimed, that the input decodes to the expected GIVE.
    let mut check = frame.clone();
    let decoded = Decoder::new().decode(&mut check);
    let is_our_give = matches!(
        &decoded,
        Ok(Some(Message::Give(give))) if give.id() == id && give.piece() == &piece
    );
    assert!(is_our_give, "the bench frame decoded to {decoded:?}");

    let mut group = c.benchmark_group("give_1mib");
    group.throughput(Throughput::Bytes(PIECE_MAX as u64));
    // Batches of 16 inputs: enough to amortise the timer around a sub-µs
    // decode, few enough (16 MiB) to keep memory small. Criterion's time
    // budget includes the untimed setup, so a run stays within it.
    let batch = BatchSize::NumIterations(16);

    group.bench_function("decode_give_1mib", |b| {
        let mut decoder = Decoder::new();
        b.iter_batched(
            || frame.clone(),
            |mut buf| {
                let message = decoder.decode(black_box(&mut buf));
                // Returned, so buffer and piece are freed outside the timing.
                (buf, message)
            },
            batch,
        );
    });

    group.bench_function("roundtrip_give_1mib", |b| {
        let mut decoder = Decoder::new();
        // The read buffer as the network presents it: room for the header,
        // then the piece bytes.
        let mut template = BytesMut::with_capacity(MAX_FRAME_BYTES);
        template.put_bytes(0, GIVE_HEADER_BYTES);
        template.put_slice(&piece);
        b.iter_batched(
            || template.clone(),
            |mut buf| {
                let header = encode_give_header(black_box(&id), black_box(piece.len()))
                    .expect("a 1 MiB piece fits a GIVE");
                buf[..GIVE_HEADER_BYTES].copy_from_slice(&header);
                let message = decoder.decode(&mut buf);
                (buf, message)
            },
            batch,
        );
    });

    group.bench_function("encode_give_header_1mib", |b| {
        b.iter(|| encode_give_header(black_box(&id), black_box(piece.len())));
    });

    group.bench_function("read_and_decode_give_1mib", |b| {
        let mut decoder = Decoder::new();
        b.iter_batched(
            empty_read_buffer,
            |mut buf| {
                let header = encode_give_header(black_box(&id), black_box(piece.len()))
                    .expect("a 1 MiB piece fits a GIVE");
                buf.put_slice(&header);
                buf.put_slice(black_box(&piece));
                let message = decoder.decode(&mut buf);
                (buf, message)
            },
            batch,
        );
    });

    let give = Message::Give(Give::new(id, piece.clone()).expect("a 1 MiB piece fits a GIVE"));
    group.bench_function("encode_give_full_1mib", |b| {
        b.iter_batched(
            empty_read_buffer,
            |mut buf| {
                black_box(&give).encode(&mut buf);
                buf
            },
            batch,
        );
    });
    group.finish();
}

fn ask(c: &mut Criterion) {
    let ask = Message::Ask(PieceId::of(b"ask"));
    let mut group = c.benchmark_group("ask");
    group.throughput(Throughput::Bytes(ask.encoded_len() as u64));
    group.bench_function("encode_decode_ask", |b| {
        let mut decoder = Decoder::new();
        let mut buf = BytesMut::with_capacity(64);
        b.iter(|| {
            black_box(&ask).encode(&mut buf);
            decoder.decode(black_box(&mut buf))
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = give_1mib, ask
}
criterion_main!(benches);
