//! `--peer`: the real binary speaking the wire protocol to a real node, a
//! real bootstrap server, and a raw legacy peer written here.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use bootstrap_server::{Server, ServerConfig};
use bytes::BytesMut;
use peer_node::testing::{RunningNode, wait_for};
use serde_json::Value;
use wire_format::limits::LEGACY_PIECE_BYTES;
use wire_format::{Decoder, Give, Message, VerifiedPiece};

use common::{SOON, cli, piece, strings};

async fn peer_cli(peer: SocketAddr, args: &[&str]) -> common::Run {
    let mut all = strings(&["--peer", &peer.to_string()]);
    all.extend(strings(args));
    cli(all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_a_real_node_directly() {
    let node = RunningNode::start(|c| c.target_outbound = 0).await.unwrap();
    let held = piece(7, 200_000);
    node.hold(&held).unwrap();
    let run = peer_cli(node.addr, &["ask", &held.id().to_string()]).await;
    run.assert_code(0);
    assert_eq!(run.stdout, held.bytes().as_ref());
    // Not held: the node says DONT_HAVE, exit 1 at once.
    peer_cli(node.addr, &["ask", &"ab".repeat(32), "--timeout", "30"])
        .await
        .assert_code(1)
        .assert_says("does not have");
    // Its peer list after its HELLO: it knows nobody, and names itself.
    let run = peer_cli(node.addr, &["peers"]).await;
    run.assert_code(0).assert_says("1 peers");
    assert_eq!(run.stdout_text(), format!("{}\n", node.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_a_real_bootstrap_server() {
    let server = Server::bind(ServerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let verified = server.verified_counter();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let node = RunningNode::start(|c| c.bootstrap = vec![addr.to_string()])
        .await
        .unwrap();
    assert!(
        wait_for(SOON, || verified() == 1).await,
        "the node was not verified"
    );
    let run = peer_cli(addr, &["--json", "peers"]).await;
    run.assert_code(0);
    let lines: Vec<Value> = run
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![serde_json::json!({"addr": node.addr.to_string()})]
    );
}

/// A peer of the original design: no HELLO, answers an ASK for its one
/// piece with a GIVE, stays silent otherwise, sends no PEERS. Serves
/// `connections` connections, then returns how many GIVEs it wrote whole.
fn legacy_peer(held: VerifiedPiece, connections: usize) -> (SocketAddr, JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let mut gives = 0;
        for _ in 0..connections {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = BytesMut::new();
            let mut decoder = Decoder::new();
            let mut chunk = vec![0u8; 4096];
            loop {
                let n = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // The reference reads a HELLO as a (short) PEERS list;
                // our decoder knows it as a HELLO: both are ignored.
                while let Ok(Some(message)) = decoder.decode(&mut buf) {
                    if message == Message::Ask(held.id()) {
                        let give = Give::new(held.id(), held.bytes().clone()).unwrap();
                        // A reader leaving mid-write would fail this.
                        if stream.write_all(&Message::Give(give).to_bytes()).is_ok() {
                            gives += 1;
                        }
                    }
                }
            }
        }
        gives
    });
    (addr, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_peer_gives_its_piece_and_is_recognised_otherwise() {
    let held = piece(9, LEGACY_PIECE_BYTES);
    let (addr, peer) = legacy_peer(held.clone(), 3);

    let run = peer_cli(addr, &["ask", &held.id().to_string()]).await;
    run.assert_code(0);
    assert_eq!(run.stdout, held.bytes().as_ref());

    // Another piece: a legacy peer never says "don't have": the deadline.
    peer_cli(addr, &["ask", &"ab".repeat(32), "--timeout", "1"])
        .await
        .assert_code(3)
        .assert_says("legacy peer never answers \"don't have\"");

    // It sends no peer list on a connection it did not open.
    peer_cli(addr, &["peers"])
        .await
        .assert_code(1)
        .assert_says("sends no peer list on connections it did not open");

    let gives = tokio::task::spawn_blocking(move || peer.join().unwrap())
        .await
        .unwrap();
    assert_eq!(gives, 1, "the GIVE was not read to its end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_exits_4() {
    let closed = format!("127.0.0.1:{}", common::closed_port());
    cli(strings(&["--peer", &closed, "peers"]))
        .await
        .assert_code(4)
        .assert_says("cannot reach the peer");
}
