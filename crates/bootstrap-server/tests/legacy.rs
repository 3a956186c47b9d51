//! The reference implementation's behaviour, played by raw sockets on
//! loopback: it never sends HELLO, and dies if its connection is closed
//! while it still writes.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use peer_node::metrics::Metric;
use peer_node::net::{FrameReader, write_message};
use peer_node::testing::{RunningNode, wait_for};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use wire_format::limits::LEGACY_PIECE_BYTES;
use wire_format::{AddrClass, Hello, Message, MessageType, NodeId, PeerAddr, Peers, VerifiedPiece};

mod common;

use common::{Client, SOON, start_server_with};

/// Longest a write of [`unread_capacity`] bytes to a server that reads may
/// take on a busy machine.
const BULK_WRITE_DEADLINE: Duration = Duration::from_secs(60);

/// More bytes than one loopback connection can hold unread: the largest send
/// buffer plus the largest receive buffer TCP may grow to (Linux), or a
/// generous guess elsewhere. A write of this many bytes can only finish if
/// the other side keeps reading.
fn unread_capacity() -> usize {
    fn largest(sysctl: &str) -> Option<usize> {
        let text = std::fs::read_to_string(sysctl).ok()?;
        text.split_whitespace().nth(2)?.parse().ok()
    }
    match (
        largest("/proc/sys/net/ipv4/tcp_wmem"),
        largest("/proc/sys/net/ipv4/tcp_rmem"),
    ) {
        (Some(send), Some(receive)) => send + receive + (1 << 20),
        _ => 64 << 20,
    }
}

/// Asserts `peers` names only loopback addresses: all a legacy peer may get.
fn assert_loopback_only(peers: &Peers) {
    assert!(
        peers
            .entries()
            .iter()
            .all(|e| e.class() == AddrClass::Loopback),
        "a legacy peer was sent a non-loopback entry: {peers:?}"
    );
}

#[tokio::test]
async fn a_legacy_client_of_the_bootstrap_server_keeps_its_connection() {
    let server = start_server_with(|c| c.max_peers = 100).await;
    // A port nobody listens on: the server's probe of it fails, so there is
    // never a legacy entry to tell the client of.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    // Its first frame is PEERS naming itself: a legacy client, answered at
    // once with HELLO (harmless to it), then PEERS.
    let mut client = Client::legacy(server.addr, port).await;
    assert_eq!((server.stats)().open_connections, 1);

    // It keeps announcing itself, as the reference does: more PEERS than the
    // connection's buffers hold, so the writes finish only if the server
    // keeps reading them, and fail if it closes.
    let me = PeerAddr::new("127.0.0.1".parse().unwrap(), port);
    let frame = Message::Peers(Peers::new(vec![me; 1024]).unwrap()).to_bytes();
    let repeats = unread_capacity().div_ceil(frame.len());
    let bulk: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(repeats * frame.len())
        .collect();
    let written = tokio::time::timeout(BULK_WRITE_DEADLINE, client.send_bytes(&bulk))
        .await
        .expect("the server stopped reading a legacy client's PEERS");
    if let Err(err) = written {
        panic!("the server closed a legacy client's connection while it wrote: {err}");
    }

    // A HELLO now is a protocol error from a legacy peer, and the server
    // closes: the close proves the connection was open and in step until
    // then, and nothing came before it: with no legacy entry to tell it
    // of, the repeats got no answer.
    let hello = Message::Hello(Hello::ours(Some(port), false, NodeId([0x11; 8])));
    client.send(&hello).await.unwrap();
    let before_close = client.expect_closed().await;
    assert!(
        before_close.is_empty(),
        "the server answered a legacy client's repeated PEERS: {} frames, the first a {:?}",
        before_close.len(),
        before_close[0].kind()
    );
    assert!(wait_for(SOON, || (server.stats)().open_connections == 0).await);
}

/// What the reference node saw on the node's connection.
#[derive(Debug)]
enum Seen {
    Frame(Message),
    Closed,
    Failed(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_legacy_swarm_through_a_legacy_bootstrap_node() {
    // The demo piece of the reference: u32 LE k, then zeros; the only size
    // a legacy peer reads.
    let mut bytes = vec![0u8; LEGACY_PIECE_BYTES];
    bytes[..4].copy_from_slice(&7u32.to_le_bytes());
    let piece = VerifiedPiece::new(Bytes::from(bytes)).unwrap();
    let digest = piece.id();

    // The "reference node": accepts, writes PEERS naming itself, never
    // HELLO; when told, ASKs for the piece. It reports every frame, and how
    // the reading ended.
    let legacy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = legacy.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let (ask_tx, ask_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (stream, _) = legacy.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let me = PeerAddr::from(legacy_addr);
        write_message(&mut wr, &Message::Peers(Peers::new(vec![me]).unwrap()))
            .await
            .unwrap();
        // The write half stays open to the end: dropping it would close.
        tokio::spawn(async move {
            if ask_rx.await.is_ok() {
                write_message(&mut wr, &Message::Ask(digest)).await.unwrap();
            }
            std::future::pending::<()>().await;
        });
        let mut reader = FrameReader::new(rd);
        loop {
            let seen = match reader.next().await {
                Ok(Some(message)) => Seen::Frame(message),
                Ok(None) => Seen::Closed,
                Err(err) => Seen::Failed(err.to_string()),
            };
            let last = !matches!(seen, Seen::Frame(_));
            if seen_tx.send(seen).is_err() || last {
                return;
            }
        }
    });

    let node = RunningNode::start(|config| config.bootstrap = vec![legacy_addr.to_string()])
        .await
        .unwrap();
    node.hold(&piece).unwrap();
    let shared = &node.shared;
    assert!(wait_for(SOON, || shared.connection_count() == 1).await);
    assert_eq!(shared.metrics().value(Metric::LegacyPeersTotal), 1);

    // The node's frames, up to its answer to the ASK: HELLO first, then
    // only core frames, and PEERS of loopback entries only. The GIVE proves
    // the node kept the connection and served it after the handshake.
    ask_tx.send(()).unwrap();
    let mut kinds = Vec::new();
    loop {
        let seen = tokio::time::timeout(SOON, seen_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no GIVE within {SOON:?}; frames so far: {kinds:?}"))
            .expect("the reference node's reader stopped without a word");
        let message = match seen {
            Seen::Frame(message) => message,
            Seen::Closed => panic!("the node closed the legacy connection after {kinds:?}"),
            Seen::Failed(err) => panic!("the node broke the protocol after {kinds:?}: {err}"),
        };
        kinds.push(message.kind());
        match message {
            Message::Hello(_) if kinds.len() == 1 => {}
            Message::Peers(peers) if kinds.len() > 1 => assert_loopback_only(&peers),
            Message::Give(give) => {
                assert_eq!(give.id(), digest);
                break;
            }
            other => panic!(
                "a legacy peer received {:?}; frames: {kinds:?}",
                other.kind()
            ),
        }
    }
    assert_eq!(kinds.first(), Some(&MessageType::Hello));
    assert_eq!(shared.connection_count(), 1);
    assert_eq!(shared.metrics().value(Metric::LegacyPeersTotal), 1);
    node.stop().await.unwrap();
}
