//! Crash safety of a real `bootstrap-server` process: killed with SIGKILL
//! at arbitrary moments while it saves its registry (a SIGTERM makes it
//! save on the way out; the SIGKILL follows at a drawn moment), then
//! restarted on the same data dir: the registry file always loads, and the
//! server starts on it.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bootstrap_server::registry::{DEFAULT_MAX_PEERS, load_json};
use bootstrap_server::server::REGISTRY_FILE;
use peer_node::testing::{RunningNode, wait_for};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-server");

/// Times the server is killed.
const KILLS: u64 = 20;
/// Nodes registered before the kills.
const NODES: usize = 5;
/// Deadline for the server to start and for the nodes to be verified.
const DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(dir: &Path) -> Self {
        let log = dir.join("server.log");
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = text
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .and_then(|a| a.parse().ok())
            {
                break addr;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "bootstrap-server exited: {text}"
            );
            assert!(Instant::now() < deadline, "bootstrap-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        Self { child, addr }
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_while_saving_its_registry_always_restarts_on_a_loadable_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let path = dir.path().to_owned();
    // Round 0: nodes announce and are verified; a clean stop saves them.
    let server = tokio::task::spawn_blocking(move || Server::start(&path))
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let addr = server.addr.to_string();
        nodes.push(
            RunningNode::start(|c| {
                c.bootstrap = vec![addr];
                c.target_outbound = NODES;
            })
            .await
            .unwrap(),
        );
    }
    // Each node learns of the others only from the server's verified
    // entries (then by PEX): once all are connected, the server holds
    // verified entries to save.
    let meshed = wait_for(DEADLINE, || {
        nodes
            .iter()
            .all(|n| n.shared.connected_node_ids().len() == NODES - 1)
    })
    .await;
    assert!(meshed, "the nodes did not find each other");
    let file = dir.path().join("data").join(REGISTRY_FILE);
    let mut server = server;
    server.signal(rustix::process::Signal::TERM);
    tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    let saved = load_json(&file, DEFAULT_MAX_PEERS).unwrap();
    assert!(!saved.is_empty(), "the clean stop saved no entry");
    for node in nodes {
        node.stop().await.unwrap();
    }

    // Then kills at drawn moments after the SIGTERM that starts the save.
    let mut x: u64 = 0x5eed_0003;
    for _ in 0..KILLS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let moment = Duration::from_micros(x % 20_000);
        let path = dir.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let mut server = Server::start(&path);
            server.signal(rustix::process::Signal::TERM);
            std::thread::sleep(moment);
            let _ = server.child.kill();
            server.child.wait().unwrap();
        })
        .await
        .unwrap();
        let loaded = load_json(
            &dir.path().join("data").join(REGISTRY_FILE),
            DEFAULT_MAX_PEERS,
        );
        assert!(loaded.is_ok(), "the registry does not load: {loaded:?}");
    }
    // The server starts on what is left, and answers.
    let path = dir.path().to_owned();
    tokio::task::spawn_blocking(move || {
        let mut server = Server::start(&path);
        assert!(std::net::TcpStream::connect(server.addr).is_ok());
        let _ = server.child.kill();
        server.child.wait().unwrap();
    })
    .await
    .unwrap();
}
