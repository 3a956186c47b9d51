//! The bootstrap sequence against a real server, with raw clients and with
//! real nodes.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use peer_node::net::{FrameReader, read_one, write_message};
use peer_node::testing::{RunningNode, wait_for};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wire_format::{Hello, Message, NodeId, PeerAddr, Peers};

mod common;

async fn start_server() -> (
    SocketAddr,
    Box<dyn Fn() -> usize + Send + Sync>,
    oneshot::Sender<()>,
) {
    let server = common::start_server_with(|c| c.max_peers = 1000).await;
    (server.addr, server.verified, server.shutdown)
}

/// A raw client: a listener answering dial-back probes with HELLO.
async fn raw_client(id: u8) -> (TcpListener, NodeId) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    (listener, NodeId([id; 8]))
}

fn answer_probes(listener: TcpListener, node_id: NodeId) {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                let hello = Message::Hello(Hello::ours(Some(port), false, node_id));
                let _ = write_message(&mut stream, &hello).await;
                let mut sink = [0u8; 256];
                let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await;
            });
        }
    });
}

/// Announces and returns the raw PEERS frame bytes the server answered.
async fn announce(server: SocketAddr, port: u16, node_id: NodeId) -> Vec<u8> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let me = PeerAddr::new(stream.local_addr().unwrap().ip(), port);
    write_message(
        &mut stream,
        &Message::Hello(Hello::ours(Some(port), false, node_id)),
    )
    .await
    .unwrap();
    write_message(&mut stream, &Message::Peers(Peers::new(vec![me]).unwrap()))
        .await
        .unwrap();
    let mut reader = FrameReader::new(&mut stream);
    match read_one(&mut reader, Duration::from_secs(10))
        .await
        .unwrap()
    {
        Some(Message::Hello(_)) => {}
        other => panic!("expected HELLO first, got {other:?}"),
    }
    let peers = read_one(&mut reader, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    peers.to_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_three_client_scenario() {
    let (server, verified, _stop) = start_server().await;
    let (la, ida) = raw_client(0xa).await;
    let (lb, idb) = raw_client(0xb).await;
    let (lc, idc) = raw_client(0xc).await;
    let (pa, pb, pc) = (
        la.local_addr().unwrap().port(),
        lb.local_addr().unwrap().port(),
        lc.local_addr().unwrap().port(),
    );
    for (l, id) in [(la, ida), (lb, idb), (lc, idc)] {
        answer_probes(l, id);
    }
    let entry = |port: u16| PeerAddr::new("127.0.0.1".parse().unwrap(), port).to_wire();

    // A: the first node gets an empty list: 01000000 02.
    assert_eq!(announce(server, pa, ida).await, vec![1, 0, 0, 0, 2]);
    assert!(wait_for(Duration::from_secs(10), || verified() == 1).await);
    // B gets {A}.
    let mut expected = vec![19, 0, 0, 0, 2];
    expected.extend_from_slice(&entry(pa));
    assert_eq!(announce(server, pb, idb).await, expected);
    assert!(wait_for(Duration::from_secs(10), || verified() == 2).await);
    // C gets {A, B} in some order.
    let got = announce(server, pc, idc).await;
    assert_eq!(&got[..5], &[37, 0, 0, 0, 2]);
    let mut entries: Vec<&[u8]> = got[5..].chunks(18).collect();
    entries.sort();
    let (ea, eb) = (entry(pa), entry(pb));
    let mut want: Vec<&[u8]> = vec![&ea, &eb];
    want.sort();
    assert_eq!(entries, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_configured_with_only_the_bootstrap_address_each_reach_four_peers() {
    let (server, _verified, _stop) = start_server().await;
    let mut nodes = Vec::new();
    for _ in 0..20 {
        let node = RunningNode::start(|config| config.bootstrap = vec![server.to_string()]);
        nodes.push(node.await.unwrap());
    }
    let formed = wait_for(Duration::from_secs(60), || {
        nodes
            .iter()
            .all(|n| n.shared.connected_node_ids().len() >= 4)
    })
    .await;
    let counts: Vec<usize> = nodes
        .iter()
        .map(|n| n.shared.connected_node_ids().len())
        .collect();
    assert!(formed, "peer counts: {counts:?}");
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_full_of_verified_peers_refuses_the_next_announcer() {
    const MAX_PEERS: usize = 2;
    let server = common::start_server_with(|c| c.max_peers = MAX_PEERS).await;
    let verified = &server.verified;
    let mut ports = Vec::new();
    for id in 1..=MAX_PEERS {
        let (listener, node_id) = raw_client(u8::try_from(id).unwrap()).await;
        let port = listener.local_addr().unwrap().port();
        answer_probes(listener, node_id);
        announce(server.addr, port, node_id).await;
        // At the limit: recorded, probed and listed.
        assert!(wait_for(Duration::from_secs(10), || verified() == id).await);
        ports.push(port);
    }

    // One more: answered like anyone, but not recorded, so never probed (the
    // server probes only what it records).
    let (listener, node_id) = raw_client(0xc).await;
    let port = listener.local_addr().unwrap().port();
    let answer = announce(server.addr, port, node_id).await;
    assert_eq!(answer.len(), 5 + 18 * MAX_PEERS, "{answer:?}");
    // The server records an announce after its answer and before it reads
    // on; `announce` has closed, so once the connection has ended the
    // announce has been handled.
    assert!(
        wait_for(Duration::from_secs(10), || (server.stats)()
            .open_connections
            == 0)
        .await
    );
    assert_eq!(
        (server.stats)().registry_entries,
        MAX_PEERS,
        "an announcer the registry has no room for was recorded"
    );
    assert_eq!(verified(), MAX_PEERS);
    // Whoever asks next is told of the verified ones only.
    let (listener, asker) = raw_client(0xd).await;
    let port = listener.local_addr().unwrap().port();
    let answer = announce(server.addr, port, asker).await;
    let entry = |port: u16| PeerAddr::new("127.0.0.1".parse().unwrap(), port).to_wire();
    let mut listed: Vec<Vec<u8>> = answer[5..].chunks(18).map(<[u8]>::to_vec).collect();
    listed.sort();
    let mut wanted: Vec<Vec<u8>> = ports.iter().map(|&p| entry(p).to_vec()).collect();
    wanted.sort();
    assert_eq!(listed, wanted);
}
