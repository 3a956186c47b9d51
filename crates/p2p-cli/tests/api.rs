//! The real `p2p-cli` binary against real in-process nodes and their API:
//! every exit code the API can produce today, `--json`, the token and
//! `api-addr` rules.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

use peer_node::datadir::{DataDir, write_new_secret};
use piece_store::DirLock;
use serde_json::Value;
use wire_format::PieceId;

use common::{ApiNode, SilentPeer, cli, closed_port, empty_data_dir, piece, strings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_fetches_a_piece_a_peer_holds_and_writes_exactly_its_bytes() {
    let (a, b) = ApiNode::connected_pair().await;
    let held = piece(1, 300_000);
    a.node.hold(&held).unwrap();
    let id = held.id().to_string();

    let run = b.cli(&["ask", &id]).await;
    run.assert_code(0);
    assert_eq!(run.stdout, held.bytes().as_ref());

    // -o writes the file (nothing else beside it) and --json says so.
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("piece.bin");
    let run = b
        .cli(&["--json", "ask", &id, "-o", out.to_str().unwrap()])
        .await;
    run.assert_code(0);
    assert_eq!(std::fs::read(&out).unwrap(), held.bytes().as_ref());
    assert_eq!(std::fs::read_dir(out_dir.path()).unwrap().count(), 1);
    let line: Value = serde_json::from_str(run.stdout_text().trim()).unwrap();
    assert_eq!(line["sha256"], id);
    assert_eq!(line["size"], 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_of_a_piece_nobody_has_exits_1_at_once() {
    let node = ApiNode::start(0).await;
    let run = node
        .cli(&["ask", &"ab".repeat(32), "--timeout", "30"])
        .await;
    run.assert_code(1).assert_says("not found");
    assert!(run.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_when_the_node_sends_no_explanation() {
    let node = ApiNode::start(0).await;
    let held = piece(2, 1000);
    node.node.hold(&held).unwrap();
    let run = node
        .cli(&["ask", &held.id().to_string(), "--explain"])
        .await;
    run.assert_code(0);
    // Either the node's table or the plain statement that it sent none.
    assert!(
        run.stderr.contains("peer") || run.stderr.contains("sent no per-peer explanation"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_with_a_silent_peer_exits_3() {
    let node = ApiNode::start(0).await;
    let _silent = SilentPeer::connect(&node.node, 9).await;
    let run = node.cli(&["ask", &"cd".repeat(32), "--timeout", "1"]).await;
    run.assert_code(3).assert_says("deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_file_that_cannot_be_written_exits_5_and_writes_nothing() {
    let node = ApiNode::start(0).await;
    let held = piece(3, 1000);
    node.node.hold(&held).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("missing-dir").join("piece.bin");
    let run = node
        .cli(&["ask", &held.id().to_string(), "-o", out.to_str().unwrap()])
        .await;
    run.assert_code(5).assert_says("cannot write");
    assert!(!out.exists());
    assert!(run.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_2() {
    let node = ApiNode::start(0).await;
    node.cli(&["ask", "not-a-sha256"])
        .await
        .assert_code(2)
        .assert_says("64 hex");
    node.cli(&["ask"]).await.assert_code(2);
    node.cli(&["--no-such-flag", "peers"]).await.assert_code(2);
    node.cli(&["ask", &"ab".repeat(32), "--timeout", "0"])
        .await
        .assert_code(2);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    std::fs::write(&file, b"data").unwrap();
    // An in-memory store cannot serve from files.
    node.cli(&["put", file.to_str().unwrap(), "--in-place"])
        .await
        .assert_code(2)
        .assert_says("cannot share in place");
    node.cli(&["put", "-", "--in-place", "--name", "x"])
        .await
        .assert_code(2)
        .assert_says("give its path");
    node.cli(&["put", "-"])
        .await
        .assert_code(2)
        .assert_says("--name");
    node.cli(&["--peer", "127.0.0.1:1", "ls"])
        .await
        .assert_code(2)
        .assert_says("--peer works with `ask` and `peers` only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_with_exit_2() {
    let node = ApiNode::start(0).await;
    let run = node.cli(&["--token", &"0".repeat(64), "peers"]).await;
    run.assert_code(2).assert_says("the API token was refused");
    // The right one, given explicitly, works.
    node.cli(&["--token", &node.token, "peers"])
        .await
        .assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_goes_only_to_loopback_and_names_work() {
    let node = ApiNode::start(0).await;
    // A documentation address: refused before any connection is tried.
    node.cli(&["--api", "192.0.2.1:7070", "peers"])
        .await
        .assert_code(2)
        .assert_says("not a loopback address");
    // A loopback name resolves; the Host header is the address, accepted.
    let by_name = format!("localhost:{}", node.api.port());
    node.cli(&["--api", &by_name, "peers"]).await.assert_code(0);
    let by_ip = node.api.to_string();
    node.cli(&["--api", &by_ip, "stats"]).await.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_api_addr_is_not_trusted_and_nothing_connects() {
    let (_tmp, data) = empty_data_dir();
    // Whoever took the port since: a listener of ours.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let dir = DataDir::open(&data).unwrap();
    dir.write_api_addr(listener.local_addr().unwrap()).unwrap();
    dir.load_or_create_token().unwrap();
    // A lock file left by a node that is gone: present, but held by nobody.
    drop(DirLock::acquire(&data).unwrap());
    let run = cli(strings(&["--data-dir", data.to_str().unwrap(), "peers"])).await;
    run.assert_code(4).assert_says("stale");
    match listener.accept() {
        Err(err) if err.kind() == ErrorKind::WouldBlock => {}
        other => panic!("the CLI connected to a stale api-addr: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_node_exits_4_with_what_to_do() {
    let (_tmp, data) = empty_data_dir();
    let data = data.to_str().unwrap();
    cli(strings(&["--data-dir", data, "peers"]))
        .await
        .assert_code(4)
        .assert_says("start one with `peer-node --data-dir");
    let closed = format!("127.0.0.1:{}", closed_port());
    cli(strings(&[
        "--token",
        &"0".repeat(64),
        "--api",
        &closed,
        "peers",
    ]))
    .await
    .assert_code(4)
    .assert_says(&format!("no node answers at {closed}"));
    // A malformed api-addr is a configuration error.
    let (_tmp2, data2) = empty_data_dir();
    write_new_secret(&data2.join("api-addr"), b"not an address\n").unwrap();
    cli(strings(&["--data-dir", data2.to_str().unwrap(), "peers"]))
        .await
        .assert_code(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_stats_print_tables_and_json_lines() {
    let (a, b) = ApiNode::connected_pair().await;
    let run = b.cli(&["peers"]).await;
    run.assert_code(0);
    let text = run.stdout_text();
    assert!(text.starts_with("ADDRESS"), "{text}");
    assert!(text.contains(&a.node.addr.to_string()), "{text}");

    let run = b.cli(&["--json", "peers"]).await;
    run.assert_code(0);
    let lines: Vec<Value> = run
        .stdout_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["addr"].is_string() && l["state"].is_string())
    );

    let run = b.cli(&["stats"]).await;
    run.assert_code(0);
    let names: Vec<String> = run
        .stdout_text()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(!names.is_empty());
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);

    let run = b.cli(&["--json", "stats"]).await;
    run.assert_code(0);
    let text = run.stdout_text();
    assert_eq!(text.lines().count(), 1);
    assert!(serde_json::from_str::<Value>(&text).unwrap().is_object());
}

/// The whole-file commands: once the node serves them, a put/get round
/// trip; until then, the node's "no such route" is exit 2 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_commands_work_or_say_the_node_lacks_them() {
    let node = ApiNode::start(0).await;
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("input.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let run = node.cli(&["put", file.to_str().unwrap()]).await;
    if run.code == 2 {
        run.assert_says("does not support `put` yet");
        for args in [
            vec!["ls"],
            vec!["gc"],
            vec!["get", &"ab".repeat(32), "-o", "/dev/null"],
        ] {
            node.cli(&args)
                .await
                .assert_code(2)
                .assert_says("does not support");
        }
        return;
    }
    run.assert_code(0);
    let manifest = run.stdout_text().trim().to_owned();
    manifest.parse::<PieceId>().unwrap();
    let out = tmp.path().join("output.bin");
    node.cli(&["get", &manifest, "-o", out.to_str().unwrap()])
        .await
        .assert_code(0);
    assert_eq!(std::fs::read(&out).unwrap(), content);
    node.cli(&["ls"]).await.assert_code(0);
    node.cli(&["unpin", &manifest]).await.assert_code(0);
    node.cli(&["gc"]).await.assert_code(0);
    node.cli(&["pin", &"ef".repeat(32)]).await.assert_code(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_help() {
    for shell in ["bash", "zsh", "fish"] {
        let run = cli(strings(&["completions", shell])).await;
        run.assert_code(0);
        assert!(run.stdout_text().contains("p2p-cli"));
    }
    let run = cli(strings(&["ask", "--help"])).await;
    run.assert_code(0);
    assert!(run.stdout_text().contains("Examples"));
}
