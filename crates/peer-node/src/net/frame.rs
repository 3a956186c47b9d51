//! Framing over a socket: [`FrameReader`] reads whole frames into one
//! buffer (reserving a whole GIVE at once once its header is known) and
//! never reads a body the decoder would reject; a large GIVE's piece can
//! instead be handed over in chunks while it arrives ([`Frame::GiveHead`]),
//! so it is hashed while the rest is still on the wire. [`write_message`]
//! writes a frame; a GIVE goes out as header + piece in one vectored write,
//! with the progress deadline of a stuck reader.
//!
//! Uses only wire-format and tokio's I/O traits.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use wire_format::limits::{
    FRAME_HEADER_BYTES, GIVE_HEADER_BYTES, GIVE_WRITE_PROGRESS_TIMEOUT, LEN_FIELD_BYTES,
};
use wire_format::{DecodeError, Decoder, Message, MessageType, PieceId};

/// Bytes reserved for a read when no frame header is pending. Small frames
/// (everything but GIVE and large PEERS) fit many to one read.
pub const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a connection ended or a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] DecodeError),
    /// The peer broke a connection-level rule (HELLO order, caps).
    #[error("protocol error: {0}")]
    Rule(&'static str),
    /// The peer closed in the middle of a frame.
    #[error("connection closed mid-frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// A deadline passed.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which deadline.
        what: &'static str,
        /// Its length.
        after: Duration,
    },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

impl ConnError {
    /// Short stable label for the close-reason metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Protocol(err) => err.kind(),
            Self::Rule(rule) => rule,
            Self::Truncated { .. } => "truncated",
            Self::Timeout { what, .. } => what,
            Self::Io(_) => "io",
        }
    }
}

/// What [`FrameReader::next_frame`] read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message.
    Message(Message),
    /// The header of a GIVE whose piece is still arriving. Call
    /// [`FrameReader::stream_piece`] to take the piece in chunks as it
    /// arrives, or `next_frame` again to read the GIVE whole.
    GiveHead {
        /// The digest the GIVE names.
        id: PieceId,
        /// Bytes of the piece that follow the header.
        piece_len: usize,
    },
    /// Every byte of the GIVE being streamed has been handed over.
    GiveEnd {
        /// The digest the GIVE named.
        id: PieceId,
        /// Bytes handed over.
        piece_len: usize,
    },
}

/// The GIVE whose piece is being handed over in chunks.
#[derive(Debug)]
struct PieceStream {
    id: PieceId,
    piece_len: usize,
    remaining: usize,
    min_chunk: usize,
    /// `None`: the piece is read off and dropped, a read chunk at a time.
    sink: Option<mpsc::Sender<BytesMut>>,
}

/// Reads frames from one connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    io: R,
    buf: BytesMut,
    decoder: Decoder,
    bytes_in: u64,
    /// Shared copy of `bytes_in`, updated after every read (not only after
    /// whole frames), so others can see a large frame making progress.
    progress: Option<Arc<AtomicU64>>,
    /// The GIVE at the head of the buffer was offered as [`Frame::GiveHead`].
    offered: bool,
    streaming: Option<PieceStream>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `io`.
    pub fn new(io: R) -> Self {
        Self {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            decoder: Decoder::new(),
            bytes_in: 0,
            progress: None,
            offered: false,
            streaming: None,
        }
    }

    /// Publishes the bytes received into `counter` after every read.
    pub fn set_progress_counter(&mut self, counter: Arc<AtomicU64>) {
        self.progress = Some(counter);
    }

    /// A reader that starts with bytes already read from `io`.
    pub fn with_buffered(io: R, buffered: BytesMut) -> Self {
        let mut reader = Self::new(io);
        reader.buf = buffered;
        reader
    }

    /// Bytes received so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// The next message; `Ok(None)` on a clean close between frames.
    ///
    /// Cancel-safe: bytes read before a cancellation stay buffered.
    /// Memory: the buffer never grows past one frame plus one read chunk.
    pub async fn next(&mut self) -> Result<Option<Message>, ConnError> {
        loop {
            match self.next_frame(0).await? {
                None => return Ok(None),
                Some(Frame::Message(message)) => return Ok(Some(message)),
                // Not offered with a threshold of 0, and nothing streams.
                Some(Frame::GiveHead { .. } | Frame::GiveEnd { .. }) => {}
            }
        }
    }

    /// The next frame; `Ok(None)` on a clean close between frames.
    ///
    /// A GIVE whose piece is at least `stream_from` bytes (`0`: never) is
    /// offered as [`Frame::GiveHead`] once its digest has arrived and before
    /// its piece has; while a piece streams, its bytes go to the sink given
    /// to [`stream_piece`](Self::stream_piece) and this returns
    /// [`Frame::GiveEnd`] after the last one.
    ///
    /// Cancel-safe: bytes read before a cancellation stay buffered, and a
    /// chunk leaves the buffer only once its sink has room for it.
    pub async fn next_frame(&mut self, stream_from: usize) -> Result<Option<Frame>, ConnError> {
        loop {
            if let Some(stream) = &self.streaming {
                let take = self.buf.len().min(stream.remaining);
                if take > 0 && (take >= stream.min_chunk || take == stream.remaining) {
                    match stream.sink.as_ref().map(mpsc::Sender::reserve) {
                        Some(reserve) => match reserve.await {
                            Ok(permit) => permit.send(self.buf.split_to(take)),
                            // Nobody wants the piece any more: read it off and drop it.
                            Err(_) => self.buf.advance(take),
                        },
                        None => self.buf.advance(take),
                    }
                    let Some(stream) = self.streaming.as_mut() else {
                        continue;
                    };
                    stream.remaining -= take;
                    if stream.remaining == 0 {
                        let (id, piece_len) = (stream.id, stream.piece_len);
                        self.streaming = None;
                        return Ok(Some(Frame::GiveEnd { id, piece_len }));
                    }
                    continue;
                }
                // A streamed piece was reserved whole by `stream_piece`.
                let limit = if stream.sink.is_some() {
                    // Up to one chunk at a time, so each is handed over while
                    // it is still in the CPU's cache (hashing bytes that have
                    // left it runs at about 60 % of the speed on this kind of VM).
                    stream.min_chunk.saturating_sub(self.buf.len()).max(1)
                } else {
                    // Dropped as read: one read chunk of memory at most.
                    self.buf.reserve(READ_CHUNK_BYTES);
                    READ_CHUNK_BYTES
                };
                if !self.read_more(limit).await? {
                    return Err(ConnError::Truncated {
                        buffered: self.buf.len(),
                    });
                }
                continue;
            }
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                self.offered = false;
                return Ok(Some(Frame::Message(message)));
            }
            let want = match self.decoder.frame_len(&self.buf)? {
                Some(total) => {
                    if let Some(head) = self.give_head(stream_from) {
                        return Ok(Some(head));
                    }
                    let may_be_offered = stream_from > 0
                        && !self.offered
                        && self.buf.get(LEN_FIELD_BYTES) == Some(&(MessageType::Give as u8))
                        && total.saturating_sub(GIVE_HEADER_BYTES) >= stream_from;
                    if may_be_offered {
                        // Only as far as its head: whoever takes it up decides
                        // whether the whole piece is ever held.
                        GIVE_HEADER_BYTES.saturating_sub(self.buf.len()).max(1)
                    } else {
                        total.saturating_sub(self.buf.len()).max(FRAME_HEADER_BYTES)
                    }
                }
                None => READ_CHUNK_BYTES,
            };
            self.buf.reserve(want);
            if !self.read_more(usize::MAX).await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
        }
    }

    /// The GIVE at the head of the buffer (not all here) as a
    /// [`Frame::GiveHead`], if it qualifies and was not offered already.
    fn give_head(&mut self, stream_from: usize) -> Option<Frame> {
        if stream_from == 0 || self.offered {
            return None;
        }
        let (id, piece_len) = self.partial_give()?;
        if piece_len < stream_from {
            return None;
        }
        self.offered = true;
        Some(Frame::GiveHead { id, piece_len })
    }

    /// The digest and piece length of the GIVE at the head of the buffer,
    /// if its header is here and its piece is not all here.
    fn partial_give(&self) -> Option<(PieceId, usize)> {
        let head = self.decoder.give_head(&self.buf).ok()??;
        (self.buf.len() < head.frame_bytes()).then(|| (head.id(), head.piece_len()))
    }

    /// Streams the piece of the GIVE just offered as [`Frame::GiveHead`]:
    /// from now on its bytes go to `sink` in chunks of at least `min_chunk`
    /// bytes (the last one may be shorter) as they arrive, and `next_frame`
    /// returns [`Frame::GiveEnd`] after the last. The chunks are split in
    /// order off one buffer that holds the whole piece, so the receiver can
    /// join them without copying ([`wire_format::PieceHasher`]). If the sink
    /// is dropped, the rest of the piece is read and discarded.
    ///
    /// Returns false, and changes nothing, if no GIVE head was just offered.
    pub fn stream_piece(&mut self, sink: mpsc::Sender<BytesMut>, min_chunk: usize) -> bool {
        self.start_piece(Some(sink), min_chunk)
    }

    /// Reads off the piece of the GIVE just offered as [`Frame::GiveHead`]
    /// and drops it, holding at most [`READ_CHUNK_BYTES`] of it in memory;
    /// `next_frame` returns [`Frame::GiveEnd`] after its last byte.
    ///
    /// Returns false, and changes nothing, if no GIVE head was just offered.
    pub fn discard_piece(&mut self) -> bool {
        self.start_piece(None, 1)
    }

    fn start_piece(&mut self, sink: Option<mpsc::Sender<BytesMut>>, min_chunk: usize) -> bool {
        if !self.offered || self.streaming.is_some() {
            return false;
        }
        let Some((id, piece_len)) = self.partial_give() else {
            return false;
        };
        self.offered = false;
        self.buf.advance(GIVE_HEADER_BYTES);
        if sink.is_some() {
            // The whole piece in one buffer, so the chunks are contiguous.
            self.buf.reserve(piece_len.saturating_sub(self.buf.len()));
        }
        self.streaming = Some(PieceStream {
            id,
            piece_len,
            remaining: piece_len,
            min_chunk: min_chunk.max(1),
            sink,
        });
        true
    }

    /// One read of at most `limit` bytes into the buffer's spare capacity;
    /// false at end of stream.
    async fn read_more(&mut self, limit: usize) -> Result<bool, ConnError> {
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        let n = (&mut self.io).take(limit).read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(false);
        }
        self.bytes_in += n as u64;
        if let Some(progress) = &self.progress {
            progress.store(self.bytes_in, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// The socket, to write on it between reads (a duplex socket read
    /// through `&mut` elsewhere).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.io
    }

    /// Gives back the socket and any bytes read but not yet decoded.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.io, self.buf)
    }
}

/// Writes one message. A GIVE is written as header + piece with vectored
/// writes (the piece is not copied); each write must make progress within
/// [`GIVE_WRITE_PROGRESS_TIMEOUT`] or the reader is considered stuck.
/// Returns the bytes written.
pub async fn write_message<W: AsyncWrite + Unpin>(
    io: &mut W,
    message: &Message,
) -> Result<usize, ConnError> {
    let mut buf: Box<dyn Buf + Send> = match message {
        Message::Give(give) => {
            Box::new(Bytes::copy_from_slice(&give.header()).chain(give.piece().clone()))
        }
        other => Box::new(other.to_bytes()),
    };
    let total = buf.remaining();
    while buf.has_remaining() {
        let n = timeout(GIVE_WRITE_PROGRESS_TIMEOUT, io.write_buf(&mut buf))
            .await
            .map_err(|_| ConnError::Timeout {
                what: "write_progress",
                after: GIVE_WRITE_PROGRESS_TIMEOUT,
            })??;
        if n == 0 {
            return Err(ConnError::Io(io::ErrorKind::WriteZero.into()));
        }
    }
    io.flush().await?;
    Ok(total)
}

/// Reads exactly one frame with a deadline (for tests and tools).
pub async fn read_one<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    deadline: Duration,
) -> Result<Option<Message>, ConnError> {
    timeout(deadline, reader.next())
        .await
        .map_err(|_| ConnError::Timeout {
            what: "read",
            after: deadline,
        })?
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use wire_format::{Give, PieceId};
    #[tokio::test]
    async fn reads_frames_split_anywhere_and_reports_truncation() {
        let piece = Bytes::from(vec![7u8; 100_000]);
        let give = Message::Give(Give::new(PieceId::of(&piece), piece).unwrap());
        let ask = Message::Ask(PieceId::from_bytes([1; 32]));
        let (mut a, b) = tokio::io::duplex(1 << 10);
        let writer = tokio::spawn(async move {
            write_message(&mut a, &give).await.unwrap();
            write_message(&mut a, &ask).await.unwrap();
            a.write_all(&[5, 0, 0]).await.unwrap();
            give
        });
        let mut reader = FrameReader::new(b);
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(
            reader.next().await.unwrap(),
            Some(Message::Ask(PieceId::from_bytes([1; 32])))
        );
        assert!(matches!(
            reader.next().await,
            Err(ConnError::Truncated { buffered: 3 })
        ));
        assert_eq!(first, writer.await.unwrap());
    }

    /// A GIVE of `len` distinct bytes, and its piece.
    pub(crate) fn give_of(len: usize) -> (Message, Bytes) {
        let piece: Bytes = (0..len).map(|i| u8::try_from(i % 253).unwrap()).collect();
        let give = Message::Give(Give::new(PieceId::of(&piece), piece.clone()).unwrap());
        (give, piece)
    }

    /// `messages` written one after another into a pipe that holds 16 KiB,
    /// so the reader sees every large frame arrive in many reads.
    pub(crate) fn feed(
        messages: Vec<Message>,
    ) -> (tokio::io::DuplexStream, tokio::task::JoinHandle<()>) {
        let (mut a, b) = tokio::io::duplex(16 << 10);
        let writer = tokio::spawn(async move {
            for message in &messages {
                if write_message(&mut a, message).await.is_err() {
                    return;
                }
            }
        });
        (b, writer)
    }

    #[tokio::test]
    async fn a_large_give_is_offered_by_its_head_then_streamed_in_contiguous_chunks() {
        let (give, piece) = give_of(300_000);
        let id = PieceId::of(&piece);
        let ask = Message::Ask(PieceId::from_bytes([1; 32]));
        let (io, writer) = feed(vec![give, ask.clone()]);
        let mut reader = FrameReader::new(io);
        assert_eq!(
            reader.next_frame(300_000).await.unwrap(),
            Some(Frame::GiveHead {
                id,
                piece_len: 300_000
            })
        );
        let (sink, mut chunks) = mpsc::channel(64);
        assert!(reader.stream_piece(sink, 64 << 10));
        let (again, _) = mpsc::channel(1);
        assert!(!reader.stream_piece(again, 1), "streamed twice");
        assert_eq!(
            reader.next_frame(300_000).await.unwrap(),
            Some(Frame::GiveEnd {
                id,
                piece_len: 300_000
            })
        );
        let mut received = Vec::new();
        while let Ok(chunk) = chunks.try_recv() {
            received.push(chunk);
        }
        let (last, rest) = received.split_last().unwrap();
        assert!(!rest.is_empty());
        assert!(rest.iter().all(|c| c.len() >= 64 << 10));
        assert!(!last.is_empty());
        for pair in received.windows(2) {
            assert_eq!(
                pair[0].as_ptr().wrapping_add(pair[0].len()),
                pair[1].as_ptr(),
                "chunks not split in order off one buffer"
            );
        }
        let mut hasher = wire_format::PieceHasher::new(id);
        for chunk in received {
            hasher.update(chunk);
        }
        assert_eq!(hasher.finish().unwrap().bytes(), &piece);
        // The frame after the piece is read as usual.
        assert_eq!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::Message(ask))
        );
        assert_eq!(reader.next_frame(1).await.unwrap(), None);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_give_head_not_taken_up_is_read_whole_and_small_gives_are_never_offered() {
        let (big, big_piece) = give_of(200_000);
        let (small, _) = give_of(100_000);
        let (io, writer) = feed(vec![big.clone(), small.clone(), big.clone()]);
        let mut reader = FrameReader::new(io);
        // Declined: offered once, then read whole.
        assert_eq!(
            reader.next_frame(150_000).await.unwrap(),
            Some(Frame::GiveHead {
                id: PieceId::of(&big_piece),
                piece_len: 200_000
            })
        );
        assert_eq!(
            reader.next_frame(150_000).await.unwrap(),
            Some(Frame::Message(big))
        );
        // One byte under the threshold: never offered.
        assert_eq!(
            reader.next_frame(100_001).await.unwrap(),
            Some(Frame::Message(small))
        );
        // A threshold of 0 never offers.
        assert!(matches!(
            reader.next_frame(0).await.unwrap(),
            Some(Frame::Message(Message::Give(_)))
        ));
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_piece_nobody_takes_any_more_is_read_off_and_the_stream_goes_on() {
        let (give, piece) = give_of(200_000);
        let ask = Message::Ask(PieceId::from_bytes([2; 32]));
        let (io, writer) = feed(vec![give, ask.clone()]);
        let mut reader = FrameReader::new(io);
        assert!(matches!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::GiveHead { .. })
        ));
        let (sink, chunks) = mpsc::channel(1);
        assert!(reader.stream_piece(sink, 64 << 10));
        drop(chunks);
        assert_eq!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::GiveEnd {
                id: PieceId::of(&piece),
                piece_len: 200_000
            })
        );
        assert_eq!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::Message(ask))
        );
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn a_peer_closing_mid_piece_is_truncation_not_a_piece() {
        let (give, _) = give_of(200_000);
        let frame = give.to_bytes();
        let (mut a, b) = tokio::io::duplex(16 << 10);
        let writer = tokio::spawn(async move {
            a.write_all(&frame[..100_000]).await.unwrap();
        });
        let mut reader = FrameReader::new(b);
        assert!(matches!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::GiveHead { .. })
        ));
        let (sink, mut chunks) = mpsc::channel(64);
        assert!(reader.stream_piece(sink, 64 << 10));
        assert!(matches!(
            reader.next_frame(1).await,
            Err(ConnError::Truncated { .. })
        ));
        writer.await.unwrap();
        drop(reader);
        let mut streamed = 0;
        while let Some(chunk) = chunks.recv().await {
            streamed += chunk.len();
        }
        assert!(streamed < 200_000, "the whole piece was handed over");
    }

    #[tokio::test]
    async fn a_discarded_piece_is_read_off_a_chunk_at_a_time_and_never_held_whole() {
        let (give, piece) = give_of(wire_format::limits::PIECE_MAX);
        let ask = Message::Ask(PieceId::from_bytes([3; 32]));
        let (io, writer) = feed(vec![give, ask.clone()]);
        let mut reader = FrameReader::new(io);
        assert!(matches!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::GiveHead { .. })
        ));
        assert!(reader.buf.capacity() <= READ_CHUNK_BYTES);
        assert!(reader.discard_piece());
        let mut most = 0;
        let end = loop {
            // Poll one step at a time, watching what the reader holds.
            let step = timeout(Duration::from_millis(1), reader.next_frame(1)).await;
            most = most.max(reader.buf.capacity());
            if let Ok(frame) = step {
                break frame.unwrap();
            }
        };
        assert_eq!(
            end,
            Some(Frame::GiveEnd {
                id: PieceId::of(&piece),
                piece_len: wire_format::limits::PIECE_MAX
            })
        );
        assert!(most <= 2 * READ_CHUNK_BYTES, "held {most} bytes");
        assert_eq!(
            reader.next_frame(1).await.unwrap(),
            Some(Frame::Message(ask))
        );
        writer.await.unwrap();
    }

    /// A small deterministic generator for the randomised test below.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).unwrap()
        }
    }

    #[tokio::test]
    async fn streamed_discarded_and_declined_gives_keep_every_frame_in_step() {
        // How often each answer to a GIVE head was taken: declined, streamed, discarded.
        let mut taken = [0usize; 3];
        for seed in 1..=20u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let messages: Vec<Message> = (0..30)
                .map(|_| match rng.below(4) {
                    0 => Message::Ask(PieceId::from_bytes(
                        [u8::try_from(rng.below(256)).unwrap(); 32],
                    )),
                    1 => Message::WantHave(PieceId::from_bytes([7; 32])),
                    _ => give_of(1 + rng.below(300_000)).0,
                })
                .collect();
            // The frames back to back, written in pieces of random sizes
            // through a pipe of random capacity.
            let wire: Vec<u8> = messages.iter().flat_map(|m| m.to_bytes()).collect();
            let mut writes = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let n = (1 + rng.below(100_000)).min(wire.len() - at);
                writes.push(wire[at..at + n].to_vec());
                at += n;
            }
            let (mut a, b) = tokio::io::duplex(1 + rng.below(64 << 10));
            let writer = tokio::spawn(async move {
                for bytes in writes {
                    a.write_all(&bytes).await.unwrap();
                }
            });
            let stream_from = [1, 1000, 64 << 10, 200_000][rng.below(4)];
            let mut reader = FrameReader::new(b);
            let mut expected = messages.into_iter();
            while let Some(frame) = reader.next_frame(stream_from).await.unwrap() {
                let Frame::GiveHead { id, piece_len } = frame else {
                    assert_eq!(
                        Some(frame),
                        expected.next().map(Frame::Message),
                        "seed {seed}"
                    );
                    continue;
                };
                let Some(Message::Give(give)) = expected.next() else {
                    panic!("seed {seed}: a GIVE head where no GIVE was sent");
                };
                assert_eq!((id, piece_len), (give.id(), give.piece().len()));
                let end = Some(Frame::GiveEnd { id, piece_len });
                let choice = rng.below(3);
                taken[choice] += 1;
                match choice {
                    0 => {
                        let whole = reader.next_frame(stream_from).await.unwrap();
                        assert_eq!(whole, Some(Frame::Message(Message::Give(give))));
                    }
                    1 => {
                        let (sink, mut chunks) = mpsc::channel(4);
                        assert!(reader.stream_piece(sink, 1 + rng.below(200_000)));
                        let hashing = tokio::spawn(async move {
                            let mut hasher = wire_format::PieceHasher::new(id);
                            while let Some(chunk) = chunks.recv().await {
                                hasher.update(chunk);
                            }
                            hasher.finish()
                        });
                        assert_eq!(reader.next_frame(stream_from).await.unwrap(), end);
                        let piece = hashing.await.unwrap().unwrap();
                        assert_eq!(piece.bytes(), give.piece(), "seed {seed}");
                    }
                    _ => {
                        assert!(reader.discard_piece());
                        assert_eq!(reader.next_frame(stream_from).await.unwrap(), end);
                    }
                }
            }
            assert_eq!(expected.next(), None, "seed {seed}: frames left unread");
            writer.await.unwrap();
        }
        assert!(taken.iter().all(|&n| n >= 10), "too few of each: {taken:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_reader_fails_the_give_write_at_the_progress_deadline() {
        let piece = Bytes::from(vec![1u8; 1 << 20]);
        let give = Message::Give(Give::new(PieceId::of(&piece), piece).unwrap());
        // The other end never reads: the pipe fills and the write stalls.
        let (mut a, _b) = tokio::io::duplex(64 << 10);
        let start = tokio::time::Instant::now();
        let err = write_message(&mut a, &give).await.unwrap_err();
        assert!(matches!(
            err,
            ConnError::Timeout {
                what: "write_progress",
                ..
            }
        ));
        assert_eq!(start.elapsed(), GIVE_WRITE_PROGRESS_TIMEOUT);
    }
}
