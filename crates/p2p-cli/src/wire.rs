//! `--peer HOST:PORT ask|peers`: the wire protocol spoken directly to one
//! peer over a blocking socket, framed by wire-format's sans-IO [`Decoder`]
//! (which bounds every frame before its body is read).
//!
//! We send HELLO with the CLIENT flag first, so a node or bootstrap server
//! answers without recording us; a legacy peer (the original design's
//! node) reads that HELLO as an empty peer list and never sends one of its
//! own. A legacy peer is recognised by its first frame not being HELLO, or
//! by silence within [`HELLO_TIMEOUT`]. Every read has a deadline, and a
//! GIVE being received is always read to its end before the socket closes
//! (a legacy node dies when its reader leaves mid-write).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::json;
use wire_format::limits::{CONNECT_TIMEOUT, FETCH_TIMEOUT, HELLO_TIMEOUT, LEN_FIELD_BYTES};
use wire_format::{
    DecodeError, Decoder, Hello, Message, MessageType, NodeId, PieceId, VerifiedPiece,
};

use crate::error::{CliError, CliResult, Exit};
use crate::output;

/// Bytes asked of the socket per read when the frame's size is not known yet.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// How long a GIVE that had begun when the deadline passed may take to
/// arrive whole, so the peer is never left mid-write.
pub const GIVE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long, after the peer's HELLO, its peer list may take.
pub const PEERS_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one frame we send may take to leave.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why reading a frame stopped.
#[derive(Debug)]
enum ReadEnd {
    Deadline,
    Closed,
    Io(io::Error),
    Protocol(DecodeError),
}

/// One connection to a peer.
struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    buf: BytesMut,
    decoder: Decoder,
}

impl Conn {
    fn connect(addr: SocketAddr) -> CliResult<Self> {
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|err| {
            CliError::unreachable(format!(
                "cannot reach the peer {addr}: {err}; check the address and that the peer runs"
            ))
        })?;
        // Best effort: without it small frames only leave later.
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(|err| CliError::local(format!("cannot set a socket timeout: {err}")))?;
        Ok(Self {
            stream,
            addr,
            buf: BytesMut::new(),
            decoder: Decoder::new(),
        })
    }

    fn send(&mut self, message: &Message) -> CliResult {
        self.stream.write_all(&message.to_bytes()).map_err(|err| {
            CliError::unreachable(format!(
                "cannot send to the peer {}: {err}; it may have closed the connection",
                self.addr
            ))
        })
    }

    /// The next whole frame, unless `deadline` passes first.
    fn next(&mut self, deadline: Instant) -> Result<Message, ReadEnd> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(message)) => return Ok(message),
                Ok(None) => {}
                Err(err) => return Err(ReadEnd::Protocol(err)),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadEnd::Deadline);
            }
            self.read_some(left)?;
        }
    }

    /// Reads what the socket has within `left` (at most the rest of the
    /// frame at the head, whose size the decoder has checked).
    fn read_some(&mut self, left: Duration) -> Result<(), ReadEnd> {
        self.stream
            .set_read_timeout(Some(left))
            .map_err(ReadEnd::Io)?;
        let want = match self.decoder.frame_len(&self.buf) {
            Ok(Some(total)) => total.saturating_sub(self.buf.len()).max(1),
            Ok(None) => READ_CHUNK_BYTES,
            Err(err) => return Err(ReadEnd::Protocol(err)),
        };
        let start = self.buf.len();
        self.buf.resize(start + want, 0);
        let read = self.stream.read(&mut self.buf[start..]);
        let n = match read {
            Ok(n) => n,
            Err(err) => {
                self.buf.truncate(start);
                return Err(match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ReadEnd::Deadline,
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                        ReadEnd::Closed
                    }
                    _ => ReadEnd::Io(err),
                });
            }
        };
        self.buf.truncate(start + n);
        if n == 0 {
            return Err(ReadEnd::Closed);
        }
        Ok(())
    }

    /// If a GIVE has begun arriving, reads it to its end (within
    /// [`GIVE_DRAIN_TIMEOUT`]), so the peer finishes its write.
    fn drain_give(&mut self) {
        let deadline = Instant::now() + GIVE_DRAIN_TIMEOUT;
        while let Ok(Some(total)) = self.decoder.frame_len(&self.buf) {
            let is_give = self.buf.get(LEN_FIELD_BYTES) == Some(&(MessageType::Give as u8));
            if !is_give || self.buf.len() >= total {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.read_some(left).is_err() {
                return;
            }
        }
    }

    fn failure(&self, end: ReadEnd, doing: &str) -> CliError {
        let addr = self.addr;
        match end {
            ReadEnd::Closed => CliError::unreachable(format!(
                "the peer {addr} closed the connection while {doing}: it may be shutting down or refusing us; try another peer"
            )),
            ReadEnd::Io(err) => CliError::unreachable(format!(
                "reading from the peer {addr} failed while {doing}: {err}; try again or another peer"
            )),
            ReadEnd::Protocol(err) => CliError::unreachable(format!(
                "the peer {addr} broke the wire protocol ({}: {err}); it is not a compatible peer",
                err.kind()
            )),
            ReadEnd::Deadline => CliError::new(
                Exit::Deadline,
                format!("the peer {addr} did not answer in time while {doing}; try again"),
            ),
        }
    }
}

fn our_hello() -> Message {
    Message::Hello(Hello::ours(None, true, NodeId(rand::random())))
}

/// `--peer ADDR ask ID`: the piece, verified, written to `output` or stdout.
pub fn ask(
    addr: SocketAddr,
    id: PieceId,
    timeout: Option<Duration>,
    output: Option<&Path>,
    json: bool,
) -> CliResult {
    let timeout = timeout.unwrap_or(FETCH_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let mut conn = Conn::connect(addr)?;
    conn.send(&our_hello())?;
    conn.send(&Message::Ask(id))?;
    // None until the first frame: Some(true) for HELLO, Some(false) legacy.
    let mut extended: Option<bool> = None;
    loop {
        let message = match conn.next(deadline) {
            Ok(message) => message,
            Err(ReadEnd::Deadline) => {
                conn.drain_give();
                let why = if extended == Some(true) {
                    format!(
                        "the peer {addr} did not answer within {}s (neither the piece nor \"don't have\"): try again with a longer --timeout",
                        timeout.as_secs_f64()
                    )
                } else {
                    format!(
                        "the peer {addr} gave nothing within {}s and sent no HELLO: it is a legacy peer, and a legacy peer never answers \"don't have\", so it may simply not hold {id}; ask another peer or your node",
                        timeout.as_secs_f64()
                    )
                };
                return Err(CliError::new(Exit::Deadline, why));
            }
            Err(end) => return Err(conn.failure(end, "waiting for the piece")),
        };
        if extended.is_none() {
            extended = Some(matches!(message, Message::Hello(_)));
        }
        match message {
            Message::Give(give) if give.id() == id => {
                let (_, bytes) = give.into_parts();
                let piece = VerifiedPiece::verify(id, bytes).map_err(|err| {
                    CliError::new(
                        Exit::BadData,
                        format!("the peer {addr} sent bytes that are not {id}: {err}; it is faulty or hostile, ask another peer"),
                    )
                })?;
                output::deliver(&piece, output)?;
                if let Some(path) = output {
                    if json {
                        output::json_line(&json!({
                            "sha256": id.to_hex(), "size": piece.len(), "path": path.display().to_string(),
                        }))?;
                    }
                    eprintln!("wrote {} ({} bytes) to {}", id, piece.len(), path.display());
                }
                return Ok(());
            }
            Message::DontHave(other) if other == id => {
                return Err(CliError::new(
                    Exit::NotFound,
                    format!(
                        "the peer {addr} does not have {id}: ask another peer, or your node (without --peer) to search the swarm"
                    ),
                ));
            }
            // HELLO, PEERS and answers about other pieces: not ours to act on.
            _ => {}
        }
    }
}

/// `--peer ADDR peers`: the addresses in the peer's PEERS answer.
pub fn peers(addr: SocketAddr, json: bool) -> CliResult {
    let mut conn = Conn::connect(addr)?;
    conn.send(&our_hello())?;
    let legacy = |what: &str| {
        CliError::new(
            Exit::NotFound,
            format!(
                "the peer {addr} {what}: it is a legacy peer, and a legacy peer sends no peer list on connections it did not open; ask a node of this project or a bootstrap server"
            ),
        )
    };
    let first = match conn.next(Instant::now() + HELLO_TIMEOUT) {
        Ok(message) => message,
        Err(ReadEnd::Deadline) => {
            conn.drain_give();
            return Err(legacy(&format!(
                "sent no HELLO within {}s",
                HELLO_TIMEOUT.as_secs()
            )));
        }
        Err(end) => return Err(conn.failure(end, "waiting for its HELLO")),
    };
    let list = match first {
        Message::Hello(_) => {
            let deadline = Instant::now() + PEERS_TIMEOUT;
            loop {
                match conn.next(deadline) {
                    Ok(Message::Peers(peers)) => break peers,
                    Ok(_) => {}
                    Err(end) => return Err(conn.failure(end, "waiting for its peer list")),
                }
            }
        }
        // A legacy bootstrap server answers our HELLO (an empty list to
        // it) with its own list.
        Message::Peers(peers) => peers,
        _ => {
            conn.drain_give();
            return Err(legacy("answered without a HELLO"));
        }
    };
    let mut text = String::new();
    for entry in list.entries() {
        if json {
            output::json_line(&json!({ "addr": entry.to_string() }))?;
        } else {
            text.push_str(&format!("{entry}\n"));
        }
    }
    output::print(&text)?;
    eprintln!("{} peers from {addr}", list.entries().len());
    Ok(())
}
