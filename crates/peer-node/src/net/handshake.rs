//! The HELLO exchange seen from one side: [`read_first_frame`] classifies
//! a peer by its first frame (extended, legacy, or a protocol error; see
//! docs/PROTOCOL.md §3 and "Legacy peers"), [`probe`] is the dial-back probe
//! both programs use, [`legacy_allowed`] says where a peer may be legacy,
//! and [`new_node_id`] draws a node id. The node and the bootstrap server
//! sequence these steps themselves.
//!
//! Uses [`super::frame`] and [`super::socket`].

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::time::timeout;
use wire_format::limits::HELLO_TIMEOUT;
use wire_format::{AddrClass, Hello, Message, NodeId, PeerAddr};

use super::frame::{ConnError, Frame, FrameReader, write_message};
use super::socket::connect;

/// What the first frame said about the peer.
#[derive(Debug)]
pub enum PeerKind {
    /// Sent a valid HELLO first.
    Extended(Hello),
    /// Sent something else first (kept, to be handled as its first message),
    /// or nothing within the hello timeout.
    Legacy(Option<Message>),
}

/// What a connection sent first.
enum First {
    Message(Message),
    /// A GIVE, its head offered and its piece not read yet.
    Give,
}

/// Reads the first frame of a connection and classifies the peer.
///
/// `legacy_allowed`: whether this peer may be legacy (it is on loopback, or
/// the operator passed `--legacy`). Otherwise anything but a HELLO within
/// [`HELLO_TIMEOUT`] is a protocol error; a GIVE is one as soon as its head
/// is in, before its piece is read.
///
/// A legacy peer whose first frame is a GIVE is `Legacy(None)`, with that
/// GIVE next in the reader and its head offered: `next_frame` reads it
/// whole, [`FrameReader::discard_piece`] drops it unread.
pub async fn read_first_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    legacy_allowed: bool,
    hello_timeout: Duration,
) -> Result<PeerKind, ConnError> {
    let first = async {
        loop {
            match reader.next_frame(1).await? {
                Some(Frame::Message(message)) => return Ok(Some(First::Message(message))),
                Some(Frame::GiveHead { .. }) => return Ok(Some(First::Give)),
                // Nothing streams before the caller asks for it.
                Some(Frame::GiveEnd { .. }) => {}
                None => return Ok(None),
            }
        }
    };
    match timeout(hello_timeout, first).await {
        Ok(Ok(Some(First::Message(Message::Hello(hello))))) => Ok(PeerKind::Extended(hello)),
        Ok(Ok(Some(First::Message(other)))) if legacy_allowed && !other.kind().is_extension() => {
            Ok(PeerKind::Legacy(Some(other)))
        }
        Ok(Ok(Some(First::Give))) if legacy_allowed => Ok(PeerKind::Legacy(None)),
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

/// Whether a peer at `remote` may be legacy (send no HELLO): peers on this
/// machine always may (`loopback_is_local`: loopback stands for this
/// machine, as it does outside tests), anyone with `--legacy`
/// (docs/PROTOCOL.md "Legacy peers"). Both programs decide it here.
pub fn legacy_allowed(remote: PeerAddr, loopback_is_local: bool, legacy_flag: bool) -> bool {
    (remote.class() == AddrClass::Loopback && loopback_is_local) || legacy_flag
}

/// A fresh random node id, drawn at each start (docs/PROTOCOL.md §3).
pub fn new_node_id() -> NodeId {
    NodeId(rand::random())
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use wire_format::PieceId;

    use super::super::frame::tests::{feed, give_of};
    use super::*;

    #[tokio::test]
    async fn a_give_sent_first_is_an_error_at_its_head_or_left_to_the_caller_of_a_legacy_peer() {
        let (give, _) = give_of(200_000);
        let frame = give.to_bytes();
        // Not allowed to be legacy: an error once the head is in, though the
        // piece never comes.
        let (mut a, b) = tokio::io::duplex(16 << 10);
        a.write_all(&frame[..1000]).await.unwrap();
        let mut reader = FrameReader::new(b);
        assert!(matches!(
            read_first_frame(&mut reader, false, HELLO_TIMEOUT).await,
            Err(ConnError::Rule("first_frame_not_hello"))
        ));
        // A legacy peer: the GIVE is next in the reader, read whole.
        let (io, writer) = feed(vec![give.clone()]);
        let mut reader = FrameReader::new(io);
        assert!(matches!(
            read_first_frame(&mut reader, true, HELLO_TIMEOUT).await,
            Ok(PeerKind::Legacy(None))
        ));
        assert_eq!(reader.next().await.unwrap(), Some(give));
        writer.await.unwrap();
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
