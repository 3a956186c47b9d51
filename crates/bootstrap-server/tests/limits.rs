//! Connection limits of the bootstrap server: at each limit the connection
//! is served, one past it is closed before any frame, counted and never
//! recorded, and a slot freed by a close serves again. And the memory of a
//! connection: a GIVE's piece is dropped as it is read, never held whole.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bootstrap_server::server::MAX_CONNECTIONS_PER_IP;
use bytes::Bytes;
use peer_node::testing::wait_for;
use wire_format::limits::PIECE_MAX;
use wire_format::{Give, Hello, Message, NodeId, PieceId};

mod common;

use common::{Client, SOON, TestServer, start_server_with};

impl TestServer {
    fn open(&self) -> usize {
        (self.stats)().open_connections
    }

    fn refused(&self) -> u64 {
        (self.stats)().refused_connections
    }

    /// Asserts a connection over a limit was refused: closed before any
    /// frame, counted once more, never recorded, nothing else closed.
    async fn assert_refused(&self, over: &mut Client, open: usize, refused: u64) {
        assert!(over.expect_closed().await.is_empty());
        let stats = (self.stats)();
        assert_eq!(stats.refused_connections, refused);
        assert_eq!(stats.open_connections, open);
        assert_eq!(stats.registry_entries, 0, "a refused announce was recorded");
    }
}

/// A loopback port nobody listens on, for an announce that must never be
/// recorded (a dial-back probe to it would fail at once).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// One byte from a small index, for node ids.
fn id(i: usize) -> u8 {
    u8::try_from(i).unwrap()
}

#[tokio::test]
async fn the_connection_that_reaches_max_connections_is_served_and_the_next_refused() {
    const MAX: usize = 3;
    let server = start_server_with(|c| c.max_connections = MAX).await;
    // Everything open counts: a socket still waiting for HELLO, a legacy
    // client that keeps its connection, a CLIENT probe.
    let silent = Client::connect(server.addr).await;
    assert!(wait_for(SOON, || server.open() == 1).await);
    let _legacy = Client::legacy(server.addr, closed_port()).await;
    // At the limit: the probe is the last connection that fits, and served.
    let _probe = Client::probe(server.addr, 3).await;
    assert_eq!(server.open(), MAX);
    assert_eq!(server.refused(), 0);

    // One more: closed before anything is read or written.
    let mut over = Client::try_announce(server.addr, 4, closed_port()).await;
    server.assert_refused(&mut over, MAX, 1).await;

    // The silent socket goes away: its slot serves again.
    drop(silent);
    assert!(wait_for(SOON, || server.open() == MAX - 1).await);
    let _again = Client::probe(server.addr, 5).await;
    assert_eq!(server.open(), MAX);
    let mut over = Client::connect(server.addr).await;
    server.assert_refused(&mut over, MAX, 2).await;
}

#[tokio::test]
async fn one_ip_may_hold_max_connections_per_ip_and_the_next_is_refused() {
    // Loopback stands in for another host: on this machine it is exempt.
    let server = start_server_with(|c| c.loopback_is_local = false).await;
    let mut held = Vec::new();
    for i in 1..=MAX_CONNECTIONS_PER_IP {
        held.push(Client::probe(server.addr, id(i)).await);
    }
    assert_eq!(server.open(), MAX_CONNECTIONS_PER_IP);
    assert_eq!(server.refused(), 0);

    let mut over = Client::try_announce(server.addr, 0x40, closed_port()).await;
    server
        .assert_refused(&mut over, MAX_CONNECTIONS_PER_IP, 1)
        .await;

    // A freed slot of that IP serves again.
    drop(held.pop());
    assert!(wait_for(SOON, || server.open() == MAX_CONNECTIONS_PER_IP - 1).await);
    held.push(Client::probe(server.addr, 0x41).await);
    let mut over = Client::connect(server.addr).await;
    server
        .assert_refused(&mut over, MAX_CONNECTIONS_PER_IP, 2)
        .await;
}

// Needs a second loopback address, which Linux routes (all of 127.0.0.0/8).
#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_ip_at_its_limit_leaves_other_ips_served() {
    let server = start_server_with(|c| c.loopback_is_local = false).await;
    let mut held = Vec::new();
    for i in 1..=MAX_CONNECTIONS_PER_IP {
        held.push(Client::probe(server.addr, id(i)).await);
    }
    let other = Client::connect_from(server.addr, "127.0.0.2".parse().unwrap()).await;
    let _other = other.into_probe(0x40).await;
    assert_eq!(server.open(), MAX_CONNECTIONS_PER_IP + 1);
    assert_eq!(server.refused(), 0);
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_ip_limit() {
    let server = start_server_with(|_| {}).await;
    let mut held = Vec::new();
    for i in 0..=MAX_CONNECTIONS_PER_IP {
        // Legacy clients keep their connection: why loopback is exempt.
        held.push(if i % 2 == 0 {
            Client::legacy(server.addr, closed_port()).await
        } else {
            Client::probe(server.addr, id(i)).await
        });
    }
    assert_eq!(server.open(), MAX_CONNECTIONS_PER_IP + 1);
    assert_eq!(server.refused(), 0);
}

#[tokio::test]
async fn at_most_max_probes_dial_back_probes_run_at_once() {
    use bootstrap_server::registry::{SavedEntry, save_json};
    use bootstrap_server::server::REGISTRY_FILE;
    use std::time::{SystemTime, UNIX_EPOCH};
    use tokio::net::TcpListener;

    const MAX: usize = 2;
    // Three saved peers that accept a probe and then say nothing: each probe
    // holds its place until its hello timeout, or until the peer closes.
    let peers = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let saved: Vec<SavedEntry> = peers
        .iter()
        .enumerate()
        .map(|(i, l)| SavedEntry {
            addr: l.local_addr().unwrap().to_string(),
            node_id: format!("{:016x}", i + 1),
            last_announce_unix_secs: now,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    save_json(&dir.path().join(REGISTRY_FILE), &saved).unwrap();
    let _server = start_server_with(|c| {
        c.data_dir = Some(dir.path().to_owned());
        c.max_probes = MAX;
    })
    .await;

    // The restart re-probes all three; two run, the third waits.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, listener) in peers.into_iter().enumerate() {
        let tx = tx.clone();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tx.send((i, socket)).unwrap();
        });
    }
    let mut probed = Vec::new();
    for _ in 0..MAX {
        probed.push(
            tokio::time::timeout(SOON, rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let third = tokio::time::timeout(std::time::Duration::from_secs(1), rx.recv()).await;
    assert!(third.is_err(), "a probe past the limit ran");

    // One probed peer hangs up: its probe ends and the third one runs.
    drop(probed.remove(0));
    let (i, _socket) = tokio::time::timeout(SOON, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(probed.iter().all(|(j, _)| *j != i));
}

// ---------------------------------------------------------------------------
// Memory per connection: a GIVE's piece is read off and dropped, never held

/// A whole GIVE frame with a piece of the largest size.
fn give_frame() -> Bytes {
    let piece = Bytes::from(vec![7u8; PIECE_MAX]);
    Message::Give(Give::new(PieceId::of(&piece), piece).unwrap()).to_bytes()
}

#[tokio::test]
async fn gives_sent_to_the_server_are_read_off_and_the_connection_stays_in_step() {
    let server = start_server_with(|_| {}).await;
    let frame = give_frame();
    // A legacy client whose first frame is a GIVE is answered like any other.
    let mut legacy = Client::connect(server.addr).await;
    legacy.send_bytes(&frame).await.unwrap();
    legacy.expect_answer().await;
    // GIVEs after a HELLO are read off; a second HELLO after them still
    // closes the connection, so the framing stayed in step.
    let mut client = Client::probe(server.addr, 0x50).await;
    client.send_bytes(&frame).await.unwrap();
    client.send_bytes(&frame).await.unwrap();
    let hello = Message::Hello(Hello::ours(None, true, NodeId([0x50; 8])));
    client.send(&hello).await.unwrap();
    assert!(client.expect_closed().await.is_empty());
    assert_eq!(server.open(), 1, "the legacy client keeps its connection");
}

#[tokio::test]
async fn a_give_first_from_a_client_that_may_not_be_legacy_is_closed_at_its_head() {
    let server = start_server_with(|c| c.loopback_is_local = false).await;
    let mut client = Client::connect(server.addr).await;
    // The head and a little of the piece, never the rest: closed all the
    // same, at once rather than at the hello timeout.
    let sent = std::time::Instant::now();
    client.send_bytes(&give_frame()[..1000]).await.unwrap();
    assert!(client.expect_closed().await.is_empty());
    assert!(sent.elapsed() < wire_format::limits::HELLO_TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_at_full_speed_without_reading_leaves_others_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let server = start_server_with(|_| {}).await;
    let frame = give_frame();
    // Answered once, then it writes the largest frames as fast as the
    // server reads them and never reads again.
    let mut flooder = Client::probe(server.addr, 0x60).await;
    // The flood is in full swing (64 MiB written) before others announce.
    const FLOOD_FRAMES: u64 = 64;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flood = tokio::spawn({
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        async move {
            while !stop.load(Ordering::Relaxed) {
                if flooder.send_bytes(&frame).await.is_err() {
                    return None;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(flooder)
        }
    });
    assert!(wait_for(SOON, || sent.load(Ordering::Relaxed) >= FLOOD_FRAMES).await);
    for id in 0..10 {
        let mut client = Client::try_announce(server.addr, id, closed_port()).await;
        client.expect_answer().await;
    }
    stop.store(true, Ordering::Relaxed);
    let flooder = flood.await.unwrap();
    assert!(flooder.is_some(), "the flooder was closed");
    assert!(
        wait_for(SOON, || server.open() == 1).await,
        "only the flooder stays connected: {} open",
        server.open()
    );
}

// ---------------------------------------------------------------------------
// What the operator reads

#[test]
fn at_its_connection_limit_under_a_flood_the_server_says_what_to_raise_once_and_keeps_serving() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const BIN: &str = env!("CARGO_BIN_EXE_bootstrap-server");
    // 352 descriptors leave 32 connections after the probes' and the
    // reserved share.
    const OPEN_FILES: usize = 352;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -n {OPEN_FILES} && exec \"$0\" \"$@\""))
        .arg(BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for_log = |child: &mut std::process::Child, needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(child.try_wait().unwrap().is_none(), "exited: {text}");
            assert!(Instant::now() < deadline, "no {needle:?} in: {text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let text = wait_for_log(&mut child, "listen=");
    let listen: std::net::SocketAddr = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap();
    let flood: Vec<_> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect(listen).ok())
        .collect();
    let text = wait_for_log(&mut child, "refusing connections");
    assert!(
        text.contains("raise the open-files limit (ulimit -n)"),
        "{text}"
    );
    assert_eq!(text.matches("refusing connections").count(), 1, "{text}");
    // Once the flood leaves, an announce is answered again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = std::net::TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let hello = Message::Hello(Hello::ours(None, true, NodeId([9; 8])));
        std::io::Write::write_all(&mut stream, &hello.to_bytes()).unwrap();
        let mut head = [0u8; 5];
        if stream.read_exact(&mut head).is_ok() {
            assert_eq!(head[4], wire_format::MessageType::Hello as u8);
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(child.try_wait().unwrap().is_none(), "the server died");
    let _ = child.kill();
    let _ = child.wait();
}
