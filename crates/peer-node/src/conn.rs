//! One connection's framing, handshake and deadlines, shared by the node and
//! the bootstrap server.
//!
//! * [`FrameReader`] reads whole frames into one buffer (reserving a whole
//!   GIVE at once once its header is known) and never reads a body the
//!   decoder would reject.
//! * [`write_message`] writes a frame; a GIVE goes out as header + piece in
//!   one vectored write, with the progress deadline of a stuck reader.
//! * [`read_first_frame`] classifies a peer by its first frame (the HELLO exchange and
//!   legacy detection of PROTOCOL.md §3); the node and server sequence it.
//! * [`probe`] is the dial-back probe both programs use.
//! * [`OpenSockets`] counts accepted sockets, in total and per IP, for the
//!   connection limits of both programs.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use wire_format::limits::{
    CONNECT_TIMEOUT, FRAME_HEADER_BYTES, GIVE_WRITE_PROGRESS_TIMEOUT, HELLO_TIMEOUT,
};
use wire_format::{DecodeError, Decoder, Hello, Message, NodeId};

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
            if let Some(message) = self.decoder.decode(&mut self.buf)? {
                return Ok(Some(message));
            }
            let want = match self.decoder.frame_len(&self.buf)? {
                Some(total) => total.saturating_sub(self.buf.len()).max(FRAME_HEADER_BYTES),
                None => READ_CHUNK_BYTES,
            };
            self.buf.reserve(want);
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ConnError::Truncated {
                        buffered: self.buf.len(),
                    })
                };
            }
            self.bytes_in += n as u64;
            if let Some(progress) = &self.progress {
                progress.store(self.bytes_in, Ordering::Relaxed);
            }
        }
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

/// What the first frame said about the peer.
#[derive(Debug)]
pub enum PeerKind {
    /// Sent a valid HELLO first.
    Extended(Hello),
    /// Sent something else first (kept, to be handled as its first message),
    /// or nothing within the hello timeout.
    Legacy(Option<Message>),
}

/// Reads the first frame of a connection and classifies the peer.
///
/// `legacy_allowed`: whether this peer may be legacy (it is on loopback, or
/// the operator passed `--legacy`). Otherwise anything but a HELLO within
/// [`HELLO_TIMEOUT`] is a protocol error.
pub async fn read_first_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    legacy_allowed: bool,
    hello_timeout: Duration,
) -> Result<PeerKind, ConnError> {
    match timeout(hello_timeout, reader.next()).await {
        Ok(Ok(Some(Message::Hello(hello)))) => Ok(PeerKind::Extended(hello)),
        Ok(Ok(Some(other))) if legacy_allowed && !other.kind().is_extension() => {
            Ok(PeerKind::Legacy(Some(other)))
        }
        Ok(Ok(Some(_))) => Err(ConnError::Rule("first_frame_not_hello")),
        Ok(Ok(None)) => Err(ConnError::Io(io::ErrorKind::UnexpectedEof.into())),
        Ok(Err(err)) => Err(err),
        Err(_) if legacy_allowed => Ok(PeerKind::Legacy(None)),
        Err(_) => Err(ConnError::Timeout {
            what: "hello",
            after: hello_timeout,
        }),
    }
}

/// Connects with the [`CONNECT_TIMEOUT`] deadline.
pub async fn connect(addr: SocketAddr) -> Result<TcpStream, ConnError> {
    let stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnError::Timeout {
            what: "connect",
            after: CONNECT_TIMEOUT,
        })??;
    tune(&stream);
    Ok(stream)
}

/// Pause after a failed accept (out of descriptors, say) before the next.
pub const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Accepts connections on `listener`, handing each to `on_accept`, until
/// `shutdown` resolves. A failed accept is logged and retried after
/// [`ACCEPT_RETRY`], so a full descriptor table does not spin.
pub async fn accept_until(
    listener: &tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    let accept = async {
        loop {
            match listener.accept().await {
                Ok((stream, remote)) => on_accept(stream, remote),
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = accept => {}
    }
}

/// Accepted sockets still open, in total and per IP: connection limits
/// count a socket from accept until its task ends, whether or not it ever
/// sends a HELLO or is registered. Clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct OpenSockets(Arc<Mutex<SocketCounts>>);

#[derive(Debug, Default)]
struct SocketCounts {
    total: usize,
    /// Only IPs with an open socket: never more entries than `total`.
    per_ip: HashMap<IpAddr, usize>,
}

impl OpenSockets {
    fn counts(&self) -> MutexGuard<'_, SocketCounts> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sockets open now.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Distinct IPs with a socket open now.
    pub fn ips(&self) -> usize {
        self.counts().per_ip.len()
    }

    /// Takes a place for a socket from `ip` if `admit(total, of_ip)` allows
    /// it (the counts before this socket), or returns `admit`'s refusal.
    /// Checked and taken under one lock, so concurrent takes and releases
    /// never let the counts pass a limit.
    pub fn take<E>(
        &self,
        ip: IpAddr,
        admit: impl FnOnce(usize, usize) -> Result<(), E>,
    ) -> Result<SocketSlot, E> {
        let mut guard = self.counts();
        let counts = &mut *guard;
        admit(counts.total, counts.per_ip.get(&ip).copied().unwrap_or(0))?;
        counts.total += 1;
        *counts.per_ip.entry(ip).or_default() += 1;
        Ok(SocketSlot {
            sockets: self.clone(),
            ip,
        })
    }
}

/// One open socket's place in [`OpenSockets`], held by its task and given
/// back when dropped, however the task ends.
#[derive(Debug)]
pub struct SocketSlot {
    sockets: OpenSockets,
    ip: IpAddr,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut guard = self.sockets.counts();
        let counts = &mut *guard;
        // `take` counted this slot in both, so neither is zero.
        counts.total = counts.total.saturating_sub(1);
        if let Entry::Occupied(mut of_ip) = counts.per_ip.entry(self.ip) {
            *of_ip.get_mut() = of_ip.get().saturating_sub(1);
            if *of_ip.get() == 0 {
                of_ip.remove();
            }
        }
    }
}

/// Sets the options every peer connection gets: no Nagle delay (frames are
/// written whole). Socket buffers are left to the kernel's autotuning:
/// fixed 4 MiB buffers were measured and were no faster on loopback.
pub fn tune(stream: &TcpStream) {
    // Best effort: a failure only costs speed.
    let _ = stream.set_nodelay(true);
}

/// Result of a dial-back probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A project node answered with this node id.
    Node(NodeId),
}

/// Dial-back probe: connect, send HELLO with the CLIENT flag, read the
/// peer's HELLO, close. `expected`: the node id the peer announced, if
/// known; a different one fails the probe.
pub async fn probe(
    addr: SocketAddr,
    our_id: NodeId,
    expected: Option<NodeId>,
) -> Result<ProbeOutcome, ConnError> {
    let mut stream = connect(addr).await?;
    let hello = Message::Hello(Hello::ours(None, true, our_id));
    write_message(&mut stream, &hello).await?;
    let mut reader = FrameReader::new(&mut stream);
    match read_first_frame(&mut reader, false, HELLO_TIMEOUT).await? {
        PeerKind::Extended(theirs) => {
            if expected.is_some_and(|id| id != theirs.node_id()) {
                return Err(ConnError::Rule("probe_node_id_mismatch"));
            }
            if theirs.node_id() == our_id {
                return Err(ConnError::Rule("probe_reached_self"));
            }
            Ok(ProbeOutcome::Node(theirs.node_id()))
        }
        PeerKind::Legacy(_) => Err(ConnError::Rule("probe_no_hello")),
    }
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
mod tests {
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

    #[tokio::test(start_paused = true)]
    async fn hello_deadline_makes_a_silent_peer_legacy_or_an_error() {
        let (_a, b) = tokio::io::duplex(1024);
        let mut reader = FrameReader::new(b);
        let start = tokio::time::Instant::now();
        assert!(matches!(
            read_first_frame(&mut reader, true, HELLO_TIMEOUT).await,
            Ok(PeerKind::Legacy(None))
        ));
        assert_eq!(start.elapsed(), HELLO_TIMEOUT);
        assert!(matches!(
            read_first_frame(&mut reader, false, HELLO_TIMEOUT).await,
            Err(ConnError::Timeout { what: "hello", .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn connect_gives_up_at_the_connect_deadline() {
        // A listener whose accept queue is full: the kernel drops further
        // SYNs, so a connect there hangs (all on loopback).
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        let mut timed_out = false;
        // Fill the queue; the first connect that does not complete in time
        // must fail with the connect deadline, measured on the paused clock.
        for _ in 0..16 {
            let start = tokio::time::Instant::now();
            match connect(addr).await {
                Ok(stream) => held.push(stream),
                Err(ConnError::Timeout {
                    what: "connect",
                    after,
                }) => {
                    assert_eq!(after, CONNECT_TIMEOUT);
                    assert_eq!(start.elapsed(), CONNECT_TIMEOUT);
                    timed_out = true;
                    break;
                }
                Err(other) => panic!("unexpected {other}"),
            }
        }
        assert!(timed_out, "the accept queue never filled");
        drop(listener);
    }

    #[tokio::test]
    async fn first_frame_other_than_hello_is_legacy_only_where_allowed() {
        for allowed in [true, false] {
            let (mut a, b) = tokio::io::duplex(1024);
            write_message(&mut a, &Message::Ask(PieceId::from_bytes([2; 32])))
                .await
                .unwrap();
            let mut reader = FrameReader::new(b);
            let kind = read_first_frame(&mut reader, allowed, HELLO_TIMEOUT).await;
            if allowed {
                assert!(matches!(kind, Ok(PeerKind::Legacy(Some(Message::Ask(_))))));
            } else {
                assert!(matches!(
                    kind,
                    Err(ConnError::Rule("first_frame_not_hello"))
                ));
            }
        }
        // An extension frame first is never legacy.
        let (mut a, b) = tokio::io::duplex(1024);
        write_message(&mut a, &Message::WantHave(PieceId::from_bytes([2; 32])))
            .await
            .unwrap();
        let mut reader = FrameReader::new(b);
        assert!(
            read_first_frame(&mut reader, true, HELLO_TIMEOUT)
                .await
                .is_err()
        );
    }
}
