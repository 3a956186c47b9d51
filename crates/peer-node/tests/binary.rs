//! The `peer-node` program: start-up errors a user sees, and graceful
//! shutdown on SIGTERM and SIGINT.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_peer-node");

fn node(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(data_dir)
    .args(extra)
    .env("RUST_LOG", "info")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd
}

/// Runs a command that must fail fast; returns its output.
fn run_to_end(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "peer-node did not exit: {:?}",
                child.wait_with_output().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_file(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "peer-node exited early"
        );
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    dir
}

#[test]
fn a_taken_port_is_one_clear_error_with_exit_code_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = private_dir();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--api",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir.path().join("d"))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = run_to_end(cmd);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
}

#[test]
fn a_bootstrap_address_that_does_not_resolve_is_a_clear_error() {
    // An invalid port fails resolution without asking any name server.
    let dir = private_dir();
    let out = run_to_end(node(
        &dir.path().join("d"),
        &["--bootstrap", "localhost:99999"],
    ));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not resolve"), "{stderr}");
}

#[test]
fn a_data_dir_writable_by_others_is_refused() {
    let dir = private_dir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let out = run_to_end(node(&open, &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("writable"),
        "{out:?}"
    );
}

#[test]
fn a_locked_data_dir_is_refused_and_sigterm_shuts_down_in_order() {
    let dir = private_dir();
    let data = dir.path().join("d");
    let mut first = node(&data, &[]).spawn().unwrap();
    let api_addr = data.join("api-addr");
    wait_for_file(&api_addr, &mut first);
    // A second node on the same data dir: one clear error.
    let out = run_to_end(node(&data, &[]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another process"),
        "{out:?}"
    );
    // The token file is private.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(data.join("api-token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    for signal in ["TERM", "INT"] {
        if signal == "INT" {
            first = node(&data, &[]).spawn().unwrap();
            wait_for_file(&api_addr, &mut first);
        }
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &first.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = run_to_end_child(first);
        assert_eq!(out.status.code(), Some(0), "{signal}: {out:?}");
        assert!(!api_addr.exists(), "api-addr removed at clean shutdown");
        assert!(data.join("peers.json").exists(), "peers saved at shutdown");
        first = Command::new("true").spawn().unwrap();
    }
    let _ = first.wait();
}

fn run_to_end_child(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "no exit after the signal");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn an_unusable_data_dir_path_is_one_clear_error() {
    // Root may write anywhere, so "unwritable" is shown with a path whose
    // parent is a regular file: nobody can create a directory there.
    let dir = private_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = run_to_end(node(&file.join("data"), &[]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a-file/data"),
        "the message names the path: {stderr}"
    );
}

#[test]
fn at_its_open_files_limit_the_node_says_what_to_raise_and_keeps_serving() {
    use std::io::{Read, Write};

    let dir = private_dir();
    let data = dir.path().join("d");
    let log = dir.path().join("node.log");
    // The node started under `ulimit -n 64`.
    let mut child = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for_file(&data.join("api-addr"), &mut child);
    // The start-up line naming the listen address comes just after
    // `api-addr` is written: wait for it rather than read the log once.
    let text = wait_for_log(&log, "listen=", &mut child);
    assert!(text.contains("ulimit -n"), "no advice in the log: {text}");
    let listen = listen_addr_in(&text);
    // A flood of connections, many more than it has descriptors for.
    let flood: Vec<_> = (0..200)
        .filter_map(|_| std::net::TcpStream::connect(listen).ok())
        .collect();
    // It stays up and its API still answers.
    let api: std::net::SocketAddr = std::fs::read_to_string(data.join("api-addr"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut answered = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answered && Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(api) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {api}\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_to_string(&mut reply).is_ok()
            {
                answered = reply.starts_with("HTTP/1.1 200");
            }
        }
        if !answered {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(flood);
    assert!(child.try_wait().unwrap().is_none(), "the node died");
    assert!(answered, "the API did not answer under the flood");
    let _ = child.kill();
    let _ = child.wait();
}

/// The listen address the node's start-up line names.
fn listen_addr_in(log: &str) -> std::net::SocketAddr {
    log.split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap()
        .parse()
        .unwrap()
}

/// Polls `log` until it contains `needle`, within a deadline.
fn wait_for_log(log: &Path, needle: &str, child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "peer-node exited: {text}"
        );
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn at_its_connection_limit_the_node_says_what_to_raise_once_and_keeps_serving() {
    let dir = private_dir();
    let data = dir.path().join("d");
    let log = dir.path().join("node.log");
    let mut child = node(&data, &["--max-connections", "8"])
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let text = wait_for_log(&log, "listen=", &mut child);
    let listen = listen_addr_in(&text);
    // Loopback is exempt from the per-address limit, so this flood meets
    // `--max-connections`.
    let flood: Vec<_> = (0..64)
        .filter_map(|_| std::net::TcpStream::connect(listen).ok())
        .collect();
    let text = wait_for_log(&log, "raise it", &mut child);
    assert!(text.contains("--max-connections is reached"), "{text}");
    // One warning for the whole flood, not a line per socket.
    assert_eq!(text.matches("refusing connections").count(), 1, "{text}");
    // Once the flood leaves, a connection is served again.
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let mut stream = std::net::TcpStream::connect(listen).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        std::io::Write::write_all(
            &mut stream,
            &wire_format::Message::Hello(wire_format::Hello::ours(
                None,
                true,
                peer_node::net::new_node_id(),
            ))
            .to_bytes(),
        )
        .unwrap();
        let mut head = [0u8; 5];
        if std::io::Read::read_exact(&mut stream, &mut head).is_ok() {
            break head[4] == wire_format::MessageType::Hello as u8;
        }
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(served);
    let _ = child.kill();
    let _ = child.wait();
}
