//! What the peer-node integration tests share: an in-process node that dials
//! nobody unless told to, and a raw socket speaking frames to it.
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code, reason = "each test crate uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod files;

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use peer_node::metrics::{Family, Metric};
use peer_node::net::{ConnError, FrameReader, read_one, write_message};
use peer_node::node::NodeConfig;
use peer_node::testing::{RunningNode, frames_until_closed, wait_for};
use piece_store::PieceStore;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use wire_format::{Hello, Message, NodeId, PeerAddr, Peers, PieceId, VerifiedPiece};

/// A piece of `len` bytes (at least 8), distinct for each `seed` (its first
/// 8 bytes), cheap to build even for hundreds of MiB in a debug build.
pub fn piece(seed: u64, len: usize) -> VerifiedPiece {
    let mut bytes = vec![seed.to_le_bytes()[0] ^ 0x5a; len];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    VerifiedPiece::new(bytes::Bytes::from(bytes)).unwrap()
}

/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(5);

/// A loopback port nobody listens on: a dial-back probe or a dial to it fails
/// at once, so a raw peer never becomes a dial candidate.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A digest made of one repeated byte.
pub fn digest(byte: u8) -> PieceId {
    PieceId::from_bytes([byte; 32])
}

/// A node running in this test's runtime until the test ends. It dials
/// nobody unless the test raises `target_outbound`, so nothing a test peer
/// names is dialled and a filter bug cannot send traffic off this machine.
pub struct TestNode(pub RunningNode);

impl Deref for TestNode {
    type Target = RunningNode;

    fn deref(&self) -> &RunningNode {
        &self.0
    }
}

impl TestNode {
    pub async fn start(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let node = RunningNode::start(|config| {
            config.target_outbound = 0;
            configure(config);
        });
        Self(node.await.unwrap())
    }

    /// Like [`start`](Self::start), with pieces kept in `store`.
    pub async fn start_with_store(
        store: Arc<dyn PieceStore>,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let node = RunningNode::start_with_store(store, |config| {
            config.target_outbound = 0;
            configure(config);
        });
        Self(node.await.unwrap())
    }

    pub fn id(&self) -> NodeId {
        self.shared.node_id()
    }

    pub fn metric(&self, metric: Metric) -> u64 {
        self.shared.metrics().value(metric)
    }

    /// `ConnectionsClosedTotal{reason}`.
    pub fn closed(&self, reason: &str) -> u64 {
        self.shared
            .metrics()
            .labelled_value(Family::ConnectionsClosedTotal, reason)
    }

    /// Connections closed, whatever the reason.
    pub fn closed_total(&self) -> u64 {
        self.shared
            .metrics()
            .to_json_map()
            .iter()
            .filter(|(name, _)| name.starts_with("connections_closed_total{"))
            .map(|(_, n)| n)
            .sum()
    }

    /// `PexEntriesDroppedByReasonTotal{reason}`.
    pub fn dropped(&self, reason: &str) -> u64 {
        self.shared
            .metrics()
            .labelled_value(Family::PexEntriesDroppedByReasonTotal, reason)
    }

    /// Waits until `ConnectionsClosedTotal{reason}` reaches `count`, and
    /// checks it did not pass it.
    pub async fn wait_closed(&self, reason: &str, count: u64) {
        let reached = wait_for(SOON, || self.closed(reason) >= count).await;
        assert!(reached, "closed{{{reason}}} = {}", self.closed(reason));
        assert_eq!(self.closed(reason), count, "closed{{{reason}}}");
    }
}

/// The test's end of one connection.
pub struct RawPeer {
    pub reader: FrameReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl RawPeer {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        // Small frames in a row: don't let Nagle wait for a delayed ACK.
        stream.set_nodelay(true).unwrap();
        let (rd, writer) = stream.into_split();
        Self {
            reader: FrameReader::new(rd),
            writer,
        }
    }

    /// An extended peer after the handshake: it sent a valid HELLO (listen
    /// port closed, so the dial-back probe fails) and read the node's HELLO
    /// and first PEERS.
    pub async fn extended(node: &TestNode, id: u8) -> Self {
        Self::extended_as(node, NodeId([id; 8]), closed_port()).await
    }

    pub async fn extended_as(node: &TestNode, id: NodeId, listen_port: u16) -> Self {
        let mut peer = Self::connect(node.addr).await;
        peer.send(&Message::Hello(Hello::ours(Some(listen_port), false, id)))
            .await;
        match peer.recv().await {
            Message::Hello(theirs) => assert_eq!(theirs.node_id(), node.id()),
            other => panic!("expected HELLO, got {other:?}"),
        }
        assert!(matches!(peer.recv().await, Message::Peers(_)));
        peer
    }

    /// The test's end of a connection the node dialled to `listener`: it
    /// reads the node's HELLO and first PEERS and answers with a HELLO (not
    /// listening), so the node keeps it as an outbound extended peer.
    pub async fn accept(node: &TestNode, listener: &TcpListener, id: u8) -> Self {
        let (stream, _) = tokio::time::timeout(SOON, listener.accept())
            .await
            .unwrap_or_else(|_| panic!("the node did not dial within {SOON:?}"))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (rd, writer) = stream.into_split();
        let mut peer = Self {
            reader: FrameReader::new(rd),
            writer,
        };
        match peer.recv().await {
            Message::Hello(theirs) => assert_eq!(theirs.node_id(), node.id()),
            other => panic!("expected HELLO, got {other:?}"),
        }
        assert!(matches!(peer.recv().await, Message::Peers(_)));
        peer.send(&Message::Hello(Hello::ours(None, false, NodeId([id; 8]))))
            .await;
        peer
    }

    /// A legacy peer as the reference is: its first frame is a PEERS naming
    /// itself. Returns the node's first PEERS after checking its HELLO.
    pub async fn legacy(node: &TestNode) -> (Self, Peers) {
        let mut peer = Self::connect(node.addr).await;
        let itself = PeerAddr::new([127, 0, 0, 1].into(), closed_port());
        peer.send(&Message::Peers(Peers::new(vec![itself]).unwrap()))
            .await;
        let hello = peer.recv().await;
        assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
        match peer.recv().await {
            Message::Peers(first) => (peer, first),
            other => panic!("expected PEERS, got {other:?}"),
        }
    }

    pub async fn send(&mut self, message: &Message) {
        write_message(&mut self.writer, message).await.unwrap();
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends `messages` in one write, so the node reads them in one go.
    pub async fn send_batch(&mut self, messages: &[Message]) {
        let bytes: Vec<u8> = messages.iter().flat_map(|m| m.to_bytes()).collect();
        self.send_bytes(&bytes).await;
    }

    pub async fn recv(&mut self) -> Message {
        self.recv_within(SOON)
            .await
            .unwrap_or_else(|| panic!("no frame within {SOON:?}"))
    }

    /// The next frame, or `None` if none comes within `deadline`.
    pub async fn recv_within(&mut self, deadline: Duration) -> Option<Message> {
        match read_one(&mut self.reader, deadline).await {
            Ok(Some(message)) => Some(message),
            Err(ConnError::Timeout { .. }) => None,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame that is not a PEERS (keepalives may come first).
    pub async fn recv_answer(&mut self) -> Message {
        self.recv_answer_within(SOON)
            .await
            .unwrap_or_else(|| panic!("no answer within {SOON:?}"))
    }

    pub async fn recv_answer_within(&mut self, deadline: Duration) -> Option<Message> {
        let end = Instant::now() + deadline;
        loop {
            match self
                .recv_within(end.saturating_duration_since(Instant::now()))
                .await
            {
                Some(Message::Peers(_)) => {}
                other => return other,
            }
        }
    }

    /// Proves the connection is open and read: an ASK gets its DONT_HAVE.
    pub async fn assert_answers(&mut self, byte: u8) {
        self.send(&Message::Ask(digest(byte))).await;
        assert_eq!(self.recv_answer().await, Message::DontHave(digest(byte)));
    }

    /// Reads until the node closes (EOF or reset) within `deadline`; returns
    /// the frames that came before the close.
    pub async fn expect_closed_within(&mut self, deadline: Duration) -> Vec<Message> {
        frames_until_closed(&mut self.reader, deadline)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }

    pub async fn expect_closed(&mut self) -> Vec<Message> {
        self.expect_closed_within(SOON).await
    }
}
