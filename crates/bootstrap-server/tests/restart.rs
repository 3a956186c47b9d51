//! Restarts: the swarm outlives its bootstrap server, a node rejoins from
//! `peers.json`, and the bootstrap server comes back on its port at once and
//! re-verifies its saved registry.
// Test helpers: a failed unwrap or expect is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bootstrap_server::server::REGISTRY_FILE;
use bootstrap_server::{Server, ServerConfig};
use peer_node::net::{FrameReader, read_one, write_message};
use peer_node::node::NodeConfig;
use peer_node::testing::{RunningNode, wait_for};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use wire_format::{Hello, Message, NodeId};

mod common;

use common::{STOP_DEADLINE, TestServer};

/// Longest a swarm of a few loopback nodes may take to form.
const FORM_DEADLINE: Duration = Duration::from_secs(20);
/// How long the swarm is watched after its bootstrap server stops.
const WATCH_FOR: Duration = Duration::from_secs(2);
fn server_config(listen: SocketAddr, data_dir: Option<PathBuf>) -> ServerConfig {
    ServerConfig {
        data_dir,
        max_peers: 1000,
        ..ServerConfig::new(listen)
    }
}

async fn start_server(data_dir: Option<PathBuf>) -> TestServer {
    let config = server_config("127.0.0.1:0".parse().unwrap(), data_dir);
    TestServer::start(Server::bind(config).await.unwrap())
}

/// Starts a node that bootstraps from `bootstrap`, adjusted by `configure`.
async fn start_node(
    bootstrap: &[SocketAddr],
    configure: impl FnOnce(&mut NodeConfig),
) -> RunningNode {
    let node = RunningNode::start(|config| {
        config.bootstrap = bootstrap.iter().map(ToString::to_string).collect();
        configure(config);
    });
    node.await.unwrap()
}

/// Sends the shutdown and waits until `run` has returned (peers saved).
async fn stop_node(node: RunningNode) {
    tokio::time::timeout(STOP_DEADLINE, node.stop())
        .await
        .expect("the node stops in time")
        .unwrap();
}

async fn stop_all(nodes: Vec<RunningNode>) {
    for node in nodes {
        stop_node(node).await;
    }
}

fn peers(node: &RunningNode) -> usize {
    node.shared.connected_node_ids().len()
}

/// Waits until every node has at least `min` connected peers.
async fn wait_for_swarm(nodes: &[RunningNode], min: usize) {
    let formed = wait_for(FORM_DEADLINE, || nodes.iter().all(|n| peers(n) >= min)).await;
    let counts: Vec<usize> = nodes.iter().map(peers).collect();
    assert!(
        formed,
        "every node should reach {min} peers; counts: {counts:?}"
    );
}

/// The addresses a `peers.json` lists.
fn saved_addrs(path: &Path) -> Vec<SocketAddr> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|err| panic!("{} should exist: {err}", path.display()));
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    json.as_array()
        .unwrap_or_else(|| panic!("peers.json should be a list: {json}"))
        .iter()
        .map(|entry| entry["addr"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// A TCP relay to `target`: nodes announce through it, and stopping it cuts
/// their way to the bootstrap server while they keep running.
async fn start_relay(target: SocketAddr) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = &mut stopped => return,
                accepted = listener.accept() => accepted,
            };
            let Ok((mut inbound, _)) = accepted else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_server_stopped_the_swarm_stays_connected_and_any_node_bootstraps_a_newcomer() {
    let server = start_server(None).await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        nodes.push(start_node(&[server.addr], |_| {}).await);
    }
    wait_for_swarm(&nodes, 2).await;

    server.stop().await;
    // Sample for a while: no node may drop below two peers at any moment.
    let end = tokio::time::Instant::now() + WATCH_FOR;
    while tokio::time::Instant::now() < end {
        let counts: Vec<usize> = nodes.iter().map(peers).collect();
        assert!(
            counts.iter().all(|&c| c >= 2),
            "a node lost its peers after the bootstrap server stopped: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every node answers as a bootstrap server does.
    let newcomer = start_node(&[nodes[0].addr], |_| {}).await;
    let joined = wait_for(FORM_DEADLINE, || peers(&newcomer) >= 1).await;
    assert!(
        joined,
        "a node bootstrapping from a node's address gets no peer"
    );
    let swarm: HashSet<NodeId> = nodes.iter().map(|n| n.shared.node_id()).collect();
    assert!(
        newcomer
            .shared
            .connected_node_ids()
            .iter()
            .all(|id| swarm.contains(id)),
        "the newcomer is connected to nodes of the swarm only"
    );

    stop_node(newcomer).await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_from_peers_json_without_the_bootstrap_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(None).await;
    let mut nodes = Vec::new();
    for k in 0..4 {
        let peers_file = dir.path().join(format!("node{k}-peers.json"));
        nodes.push(start_node(&[server.addr], |c| c.peers_file = Some(peers_file)).await);
    }
    wait_for_swarm(&nodes, 2).await;

    let restarting = nodes.remove(0);
    let listen = restarting.addr;
    let peers_file = dir.path().join("node0-peers.json");
    assert!(
        !peers_file.exists(),
        "peers.json is written at shutdown, not before"
    );
    stop_node(restarting).await;
    let saved = saved_addrs(&peers_file);
    let running: HashSet<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    assert!(
        saved.iter().any(|a| running.contains(a)),
        "peers.json should list a running node; saved {saved:?}, running {running:?}"
    );
    assert!(!saved.contains(&listen), "peers.json lists the node itself");
    server.stop().await;

    // Same port and peers file, no bootstrap server: as after a reboot.
    let restarted = start_node(&[], |c| {
        c.listen = listen;
        c.peers_file = Some(peers_file);
    })
    .await;
    let rejoined = wait_for(FORM_DEADLINE, || peers(&restarted) >= 1).await;
    assert!(rejoined, "the restarted node found no peer from {saved:?}");
    let swarm: HashSet<NodeId> = nodes.iter().map(|n| n.shared.node_id()).collect();
    assert!(
        restarted
            .shared
            .connected_node_ids()
            .iter()
            .all(|id| swarm.contains(id))
    );

    stop_node(restarted).await;
    stop_all(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_server_restarts_on_its_port_at_once_and_reverifies_its_registry() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(Some(dir.path().to_path_buf())).await;
    let port_addr = server.addr;
    // The nodes announce through a relay, cut before the restart: whatever
    // the restarted server verifies, it verifies by its own re-probes.
    let (relay, stop_relay) = start_relay(server.addr).await;
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(start_node(&[relay], |_| {}).await);
    }
    assert!(
        wait_for(FORM_DEADLINE, || (server.verified)() == 3).await,
        "the three nodes should be verified; verified = {}",
        (server.verified)()
    );

    // A client still connected when the server stops keeps a socket on the
    // port: rebinding works only with address reuse.
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    write_message(
        &mut held,
        &Message::Hello(Hello::ours(None, true, NodeId([0xee; 8]))),
    )
    .await
    .unwrap();
    let mut reader = FrameReader::new(&mut held);
    let answer = read_one(&mut reader, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(answer, Some(Message::Hello(_))), "{answer:?}");
    let answer = read_one(&mut reader, Duration::from_secs(5)).await.unwrap();
    assert!(matches!(answer, Some(Message::Peers(_))), "{answer:?}");

    let _ = stop_relay.send(());
    server.stop().await;
    let registry_file = dir.path().join(REGISTRY_FILE);
    assert!(
        registry_file.exists(),
        "{REGISTRY_FILE} is saved at shutdown"
    );
    let saved = std::fs::read_to_string(&registry_file).unwrap();
    for node in &nodes {
        assert!(
            // Quoted: 127.0.0.1:4000 must not match inside 127.0.0.1:40001.
            saved.contains(&format!("\"{}\"", node.addr)),
            "{REGISTRY_FILE} should list {}: {saved}",
            node.addr
        );
    }

    let plain = TcpSocket::new_v4().unwrap();
    let busy = plain.bind(port_addr).map_err(|err| err.kind());
    assert_eq!(
        busy,
        Err(std::io::ErrorKind::AddrInUse),
        "the held connection should keep the port busy for a bind without address reuse"
    );
    drop(plain);
    let restarted = Server::bind(server_config(port_addr, Some(dir.path().to_path_buf())))
        .await
        .expect("the port is free again at once (SO_REUSEADDR)");
    assert_eq!(
        restarted.verified_len(),
        0,
        "restored entries are re-probed before they are listed"
    );
    let restarted = TestServer::start(restarted);
    assert_eq!(restarted.addr, port_addr);
    let reverified = wait_for(FORM_DEADLINE, || (restarted.verified)() == 3).await;
    assert!(
        reverified,
        "the restarted server should re-verify the three saved nodes; verified = {}",
        (restarted.verified)()
    );

    drop(held);
    restarted.stop().await;
    stop_all(nodes).await;
}
