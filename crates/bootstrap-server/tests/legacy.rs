//! The reference implementation's behaviour, played by raw sockets on
//! loopback: it never sends HELLO, and dies if its connection is closed
//! while it still writes.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bootstrap_server::{Server, ServerConfig};
use peer_node::metrics::Metric;
use peer_node::net::{FrameReader, read_one, write_message};
use peer_node::testing::{RunningNode, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wire_format::{AddrClass, Message, PeerAddr, Peers};

/// Asserts every frame is HELLO (first only) or PEERS with loopback entries,
/// for `frames` frames or until `deadline`; returns the PEERS seen.
async fn only_core_frames<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    frames: usize,
    deadline: Duration,
) -> Vec<Peers> {
    let mut seen = Vec::new();
    for i in 0..frames {
        match read_one(reader, deadline).await {
            Ok(Some(Message::Hello(_))) if i == 0 => {}
            Ok(Some(Message::Peers(p))) => {
                assert!(
                    p.entries().iter().all(|e| e.class() == AddrClass::Loopback),
                    "{p:?}"
                );
                seen.push(p);
            }
            Ok(Some(other)) => panic!("a legacy peer received {:?}", other.kind()),
            Ok(None) => panic!("the connection was closed"),
            Err(_) => break, // nothing more within the deadline: fine
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn a_legacy_client_of_the_bootstrap_server_keeps_its_connection() {
    let server = Server::bind(ServerConfig {
        max_peers: 100,
        ..ServerConfig::new("127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let me = PeerAddr::new("::1".parse().unwrap(), 8100);
    write_message(&mut stream, &Message::Peers(Peers::new(vec![me]).unwrap()))
        .await
        .unwrap();
    let mut reader = FrameReader::new(&mut stream);
    // After the hello timeout the server answers: HELLO (harmless), then PEERS.
    let peers = only_core_frames(&mut reader, 2, Duration::from_secs(10)).await;
    assert_eq!(peers.len(), 1);
    // It keeps announcing itself, as the reference does, for a minute: the
    // server never closes first.
    for _ in 0..60 {
        write_message(
            reader_stream(&mut reader),
            &Message::Peers(Peers::new(vec![me]).unwrap()),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        read_one(&mut reader, Duration::from_millis(100))
            .await
            .is_err(),
        "still open, silent"
    );
}

fn reader_stream<'a>(reader: &'a mut FrameReader<&mut TcpStream>) -> &'a mut TcpStream {
    reader.get_mut()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_legacy_swarm_through_a_legacy_bootstrap_node() {
    // The "reference node": accepts, answers with PEERS naming itself, never HELLO.
    let legacy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let legacy_addr = legacy.local_addr().unwrap();
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut stream, _) = legacy.accept().await.unwrap();
        let me = PeerAddr::from(legacy_addr);
        write_message(&mut stream, &Message::Peers(Peers::new(vec![me]).unwrap()))
            .await
            .unwrap();
        let mut reader = FrameReader::new(stream);
        while let Ok(Some(message)) = reader.next().await {
            let _ = frames_tx.send(message.kind());
        }
        let _ = frames_tx.send(wire_format::MessageType::Cancel); // marks "closed"
    });
    let node = RunningNode::start(|config| config.bootstrap = vec![legacy_addr.to_string()])
        .await
        .unwrap();
    let shared = &node.shared;
    assert!(wait_for(Duration::from_secs(10), || shared.connection_count() == 1).await);
    assert_eq!(shared.metrics().value(Metric::LegacyPeersTotal), 1);
    // The node keeps the connection and sends only HELLO first, then PEERS.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shared.connection_count(), 1);
    let mut kinds = Vec::new();
    while let Ok(kind) = frames_rx.try_recv() {
        kinds.push(kind);
    }
    assert_eq!(kinds.first(), Some(&wire_format::MessageType::Hello));
    assert!(
        kinds[1..]
            .iter()
            .all(|k| *k == wire_format::MessageType::Peers),
        "{kinds:?}"
    );
    node.stop().await.unwrap();
}
