//! `bootstrap-server --dht`: a real server process runs a Mainline DHT node
//! on UDP at its listen port's number, which a DHT node outside it joins
//! through, as nodes of a private swarm do with `--dht-bootstrap`.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-server");
const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn a_dht_node_joins_a_private_dht_through_the_bootstrap_server() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--dht"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let (listen, udp) = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_owned)
        };
        if let (Some(listen), Some(udp)) = (field("listen="), field("udp_port=")) {
            break (listen, udp);
        }
        assert!(child.try_wait().unwrap().is_none(), "exited: {text}");
        assert!(Instant::now() < deadline, "no DHT node started: {text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let listen: std::net::SocketAddr = listen.parse().unwrap();
    assert_eq!(
        udp,
        listen.port().to_string(),
        "UDP at the TCP port's number"
    );
    // A DHT node that knows only the server's address joins through it.
    let contact = format!("127.0.0.1:{udp}");
    let dht = mainline::Dht::builder()
        .bootstrap(&[contact.as_str()])
        .bind_address(std::net::Ipv4Addr::LOCALHOST)
        .build()
        .unwrap()
        .as_async();
    let joined = block_on(dht.bootstrapped());
    assert!(joined, "the server's DHT node did not answer");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Runs `f` to completion on a small runtime of its own.
fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
