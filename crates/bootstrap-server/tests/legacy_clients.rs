//! Legacy clients introduced to each other by the bootstrap server, played
//! by a raw legacy peer written here from the behaviour of the reference
//! implementation: it never sends HELLO; it announces itself with a PEERS
//! naming `::1` and its listening port on the connection it opened; it
//! accepts connections, reads them and never writes on them; it reads only
//! frames of at most `LEGACY_MAX_FRAME_BYTES` and GIVEs of exactly
//! `LEGACY_PIECE_BYTES` piece bytes, and any other type as a PEERS list.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use peer_node::net::{FrameReader, read_one, write_message};
use peer_node::testing::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use wire_format::limits::{LEGACY_MAX_FRAME_BYTES, LEGACY_PIECE_BYTES, PEER_INFO_BYTES};
use wire_format::{Hello, Message, NodeId, PeerAddr, Peers};

mod common;

use common::{Client, SOON, TestServer, start_server_with};

/// Probe silence in these tests: the raw legacy peer never writes on a
/// connection it accepted, so any silence verifies it; a short one keeps
/// the tests fast.
const TEST_SILENCE: Duration = Duration::from_millis(100);

/// Type bytes of the three core messages.
const ASK: u8 = 0;
const GIVE: u8 = 1;
const PEERS: u8 = 2;

/// What the raw legacy peer read on the connection it opened to the server.
#[derive(Debug)]
enum Heard {
    /// A frame it reads as a PEERS list (HELLO included: an empty one).
    List {
        kind: u8,
        entries: Vec<PeerAddr>,
    },
    /// Something that would kill the reference implementation.
    Fatal(String),
    Closed,
}

/// The raw legacy peer.
struct LegacyPeer {
    port: u16,
    to_server: OwnedWriteHalf,
    heard: mpsc::UnboundedReceiver<Heard>,
    accepted: Arc<AtomicUsize>,
    /// Accepted connections, handed to the test to close as it likes.
    accepted_rx: mpsc::UnboundedReceiver<TcpStream>,
    tasks: Vec<JoinHandle<()>>,
}

impl LegacyPeer {
    /// Listens, connects to the server and announces itself once.
    async fn join(server: &TestServer) -> Self {
        Self::join_holding(server, false).await
    }

    /// As [`join`](Self::join); `hand_over`: accepted connections are
    /// handed to the test instead of read by the peer.
    async fn join_holding(server: &TestServer, hand_over: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (accepted_tx, accepted_rx) = mpsc::unbounded_channel();
        let count = Arc::clone(&accepted);
        let accepting = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                if hand_over {
                    let _ = accepted_tx.send(stream);
                    continue;
                }
                // Reads everything, writes nothing.
                tokio::spawn(async move {
                    let mut sink = vec![0u8; 4096];
                    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        let stream = TcpStream::connect(server.addr).await.unwrap();
        let (mut rd, to_server) = stream.into_split();
        let (heard_tx, heard) = mpsc::unbounded_channel();
        let reading = tokio::spawn(async move {
            loop {
                let heard = read_raw(&mut rd).await;
                let last = !matches!(heard, Heard::List { .. });
                if heard_tx.send(heard).is_err() || last {
                    return;
                }
            }
        });
        let mut peer = Self {
            port,
            to_server,
            heard,
            accepted,
            accepted_rx,
            tasks: vec![accepting, reading],
        };
        peer.announce().await;
        peer
    }

    /// Where the server lists it: its observed IP and its port.
    fn entry(&self) -> PeerAddr {
        PeerAddr::new("127.0.0.1".parse().unwrap(), self.port)
    }

    /// A PEERS naming itself as the reference does: `::1` and its port.
    async fn announce(&mut self) {
        let me = PeerAddr::new("::1".parse().unwrap(), self.port);
        let frame = Message::Peers(Peers::new(vec![me]).unwrap()).to_bytes();
        self.to_server.write_all(&frame).await.unwrap();
    }

    /// The next PEERS list from the server, sorted; a HELLO may come first
    /// (the server's harmless greeting), anything else fails the test.
    async fn next_list(&mut self) -> Vec<PeerAddr> {
        loop {
            let heard = tokio::time::timeout(SOON, self.heard.recv())
                .await
                .unwrap_or_else(|_| panic!("no PEERS within {SOON:?}"))
                .expect("the legacy peer's reader stopped");
            match heard {
                Heard::List {
                    kind: PEERS,
                    mut entries,
                } => {
                    entries.sort();
                    return entries;
                }
                // The server's HELLO, shorter than one entry: an empty list.
                Heard::List { kind: 3, entries } if entries.is_empty() => {}
                Heard::Fatal(why) => panic!("a legacy peer was sent {why}"),
                other => panic!("a legacy peer was sent {other:?}"),
            }
        }
    }

    /// Goes away: its listener is closed first (the tasks are awaited, so
    /// nothing accepts any more), then its connection to the server.
    async fn vanish(self) {
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Reads one frame as the reference does, or says why it would die.
async fn read_raw(rd: &mut (impl AsyncReadExt + Unpin)) -> Heard {
    let mut len = [0u8; 4];
    if rd.read_exact(&mut len).await.is_err() {
        return Heard::Closed;
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len + 4 > LEGACY_MAX_FRAME_BYTES {
        return Heard::Fatal(format!("a frame of len {len}"));
    }
    let mut body = vec![0u8; len];
    if rd.read_exact(&mut body).await.is_err() {
        return Heard::Closed;
    }
    let (kind, rest) = (body[0], &body[1..]);
    match kind {
        ASK => Heard::Fatal("an ASK it holds no piece for".into()),
        GIVE if rest.len() != 32 + LEGACY_PIECE_BYTES => {
            Heard::Fatal(format!("a GIVE of {} piece bytes", rest.len() - 32))
        }
        GIVE => Heard::Fatal("a GIVE it never asked for".into()),
        _ => Heard::List {
            kind,
            entries: rest
                .chunks_exact(PEER_INFO_BYTES)
                .map(|c| PeerAddr::from_wire(c.try_into().unwrap()))
                .collect(),
        },
    }
}

fn sorted(mut entries: Vec<PeerAddr>) -> Vec<PeerAddr> {
    entries.sort();
    entries
}

async fn legacy_server() -> TestServer {
    start_server_with(|c| {
        c.legacy_silence = TEST_SILENCE;
        c.legacy_answer_interval = Duration::ZERO;
    })
    .await
}

/// Waits until the server holds `n` verified legacy entries.
async fn wait_verified(server: &TestServer, n: usize) {
    let stats = &server.stats;
    assert!(
        wait_for(SOON, || stats().legacy_verified == n).await,
        "{n} verified legacy entries expected, stats: {:?}",
        stats()
    );
}

/// An extended node's listener: answers every dial-back probe with HELLO.
async fn extended_node(id: u8) -> (u16, NodeId) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let node_id = NodeId([id; 8]);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let hello = Message::Hello(Hello::ours(Some(port), false, node_id));
                let _ = write_message(&mut stream, &hello).await;
                let mut sink = [0u8; 256];
                let _ = stream.read(&mut sink).await;
            });
        }
    });
    (port, node_id)
}

/// An extended node's announce: HELLO, PEERS naming itself; returns the
/// server's PEERS.
async fn announce_extended(server: &TestServer, port: u16, node_id: NodeId) -> Vec<PeerAddr> {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let me = PeerAddr::new("127.0.0.1".parse().unwrap(), port);
    let hello = Message::Hello(Hello::ours(Some(port), false, node_id));
    write_message(&mut stream, &hello).await.unwrap();
    let peers = Message::Peers(Peers::new(vec![me]).unwrap());
    write_message(&mut stream, &peers).await.unwrap();
    let mut reader = FrameReader::new(&mut stream);
    assert!(matches!(
        read_one(&mut reader, SOON).await,
        Ok(Some(Message::Hello(_)))
    ));
    match read_one(&mut reader, SOON).await {
        Ok(Some(Message::Peers(peers))) => sorted(peers.entries().to_vec()),
        other => panic!("expected PEERS, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_legacy_clients_get_nothing_then_the_first_then_both() {
    let server = legacy_server().await;
    // A gets {}.
    let mut a = LegacyPeer::join(&server).await;
    assert_eq!(a.next_list().await, []);
    wait_verified(&server, 1).await;
    // B gets {A}.
    let mut b = LegacyPeer::join(&server).await;
    assert_eq!(b.next_list().await, [a.entry()]);
    wait_verified(&server, 2).await;
    // C gets {A, B}.
    let mut c = LegacyPeer::join(&server).await;
    assert_eq!(c.next_list().await, sorted(vec![a.entry(), b.entry()]));
    wait_verified(&server, 3).await;

    // A arrived before the others were verified: its next repeat tells it
    // of both, and B's of C. Each was verified by one silent probe.
    a.announce().await;
    assert_eq!(a.next_list().await, sorted(vec![b.entry(), c.entry()]));
    b.announce().await;
    assert_eq!(b.next_list().await, [c.entry()]);
    for peer in [&a, &b, &c] {
        assert_eq!(peer.accepted.load(Ordering::SeqCst), 1);
    }
    // Repeats never close a legacy client: all three still connected.
    assert_eq!((server.stats)().open_connections, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_node_never_receives_a_legacy_entry() {
    let server = legacy_server().await;
    let mut a = LegacyPeer::join(&server).await;
    assert_eq!(a.next_list().await, []);
    wait_verified(&server, 1).await;

    // The first extended node is told of nobody, the second of the first
    // only: the legacy entry is listed to neither.
    let (pe, ide) = extended_node(0xe).await;
    assert_eq!(announce_extended(&server, pe, ide).await, []);
    let verified = &server.verified;
    assert!(wait_for(SOON, || verified() == 1).await);
    let e = PeerAddr::new("127.0.0.1".parse().unwrap(), pe);
    let (pf, idf) = extended_node(0xf).await;
    assert_eq!(announce_extended(&server, pf, idf).await, [e]);
    assert!(wait_for(SOON, || verified() == 2).await);
    let f = PeerAddr::new("127.0.0.1".parse().unwrap(), pf);
    // A tool's CLIENT HELLO: both extended nodes, and still not the legacy one.
    let mut tool = Client::connect(server.addr).await;
    let hello = Message::Hello(Hello::ours(None, true, NodeId([0x70; 8])));
    tool.send(&hello).await.unwrap();
    let told = sorted(tool.expect_answer().await.entries().to_vec());
    assert_eq!(told, sorted(vec![e, f]));

    // A legacy client is told of both kinds.
    let mut b = LegacyPeer::join(&server).await;
    assert_eq!(b.next_list().await, sorted(vec![a.entry(), e, f]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_that_goes_away_is_unlisted_when_its_reprobe_fails() {
    let server = legacy_server().await;
    let mut a = LegacyPeer::join(&server).await;
    assert_eq!(a.next_list().await, []);
    wait_verified(&server, 1).await;

    // It goes away: its connection to the server ends, the server probes
    // it at once, the connect is refused, and it is unlisted.
    a.vanish().await;
    let stats = &server.stats;
    assert!(wait_for(SOON, || stats().legacy_probes_failed == 1).await);
    assert_eq!(stats().legacy_verified, 0);
    let mut b = LegacyPeer::join(&server).await;
    assert_eq!(b.next_list().await, []);
    wait_verified(&server, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_legacy_clients_that_vanish_mid_probe() {
    // A long silence, so each probe is surely still listening when the
    // client vanishes under it.
    let server = start_server_with(|c| {
        c.legacy_silence = Duration::from_secs(600);
        c.legacy_answer_interval = Duration::ZERO;
    })
    .await;
    let stats = &server.stats;
    for (failed, reset) in [(1, false), (2, true)] {
        let mut a = LegacyPeer::join_holding(&server, true).await;
        assert_eq!(a.next_list().await, []);
        let probe = tokio::time::timeout(SOON, a.accepted_rx.recv())
            .await
            .expect("the server probes a legacy client at once")
            .unwrap();
        if reset {
            // An abortive close: the probe reads a reset.
            probe.set_zero_linger().unwrap();
        }
        drop(probe);
        a.vanish().await;
        assert!(wait_for(SOON, || stats().legacy_probes_failed == failed).await);
        assert_eq!(stats().legacy_verified, 0);
    }
    // Still serving: a legacy client and a tool are answered.
    let mut b = LegacyPeer::join(&server).await;
    assert_eq!(b.next_list().await, []);
    let _tool = Client::probe(server.addr, 0x70).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probed_port_that_writes_is_read_until_it_stops_and_not_listed() {
    let server = legacy_server().await;
    let mut a = LegacyPeer::join_holding(&server, true).await;
    assert_eq!(a.next_list().await, []);
    let mut probe = tokio::time::timeout(SOON, a.accepted_rx.recv())
        .await
        .expect("the server probes a legacy client at once")
        .unwrap();
    // More than the connection can hold unread: the write finishes only if
    // the probe keeps reading, and fails if it closes while we write.
    let bulk = vec![0x5a; 32 << 20];
    tokio::time::timeout(Duration::from_secs(60), probe.write_all(&bulk))
        .await
        .expect("the probe stopped reading a port that writes")
        .expect("the probe closed a port while it wrote");
    // Having stopped writing, it sees the probe close.
    let mut rest = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), probe.read(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "{read:?}");
    let stats = &server.stats;
    assert!(wait_for(SOON, || stats().legacy_probes_failed == 1).await);
    assert_eq!(stats().legacy_verified, 0);
}
