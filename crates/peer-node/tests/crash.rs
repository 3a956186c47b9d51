//! Crash safety of a real `peer-node` process: killed with SIGKILL at
//! arbitrary moments while it stores files (`POST /api/v1/files`), loose
//! pieces one by one (`POST /api/v1/pieces`, each an append to a pack and a
//! commit of its own) or fetches one (a fetch job), then restarted on the
//! same data dir. Afterwards the store holds only pieces that hash to their
//! names, every file or piece whose upload was acknowledged is whole and
//! pinned, and a fetch job run again completes with the file byte for byte.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piece_store::file::{add_file, pieces_of, reassemble};
use piece_store::manifest::Layout;
use piece_store::{DiskStore, DiskStoreConfig, MemStore, PieceStore, Root};
use wire_format::PieceId;

use common::TestNode;

const BIN: &str = env!("CARGO_BIN_EXE_peer-node");

/// Times each test kills the node.
const KILLS: u64 = 20;
/// The latest moment after starting a fetch at which the node is killed;
/// the moment for each kill is drawn below it.
const KILL_WITHIN: Duration = Duration::from_millis(400);
/// Deadline for a node to start, a request to complete, a job to end.
const DEADLINE: Duration = Duration::from_secs(60);

/// A small deterministic generator: the kill moments and file contents.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next().to_le_bytes()[0]).collect()
    }

    fn moment(&mut self) -> Duration {
        let millis = u64::try_from(KILL_WITHIN.as_millis()).unwrap();
        Duration::from_millis(self.next() % millis)
    }
}

/// A `peer-node` process on a data dir, with its API address and token.
struct Node {
    child: Child,
    api: SocketAddr,
    token: String,
}

impl Node {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        // A killed node leaves its api-addr behind: wait for a fresh one.
        let _ = std::fs::remove_file(dir.join("api-addr"));
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir)
            .args(["--fsync", "batch"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        let api = loop {
            if let Ok(text) = std::fs::read_to_string(dir.join("api-addr"))
                && let Ok(addr) = text.trim().parse()
            {
                break addr;
            }
            assert!(child.try_wait().unwrap().is_none(), "peer-node exited");
            assert!(Instant::now() < deadline, "peer-node did not start");
            std::thread::sleep(Duration::from_millis(10));
        };
        let token = std::fs::read_to_string(dir.join("api-token"))
            .unwrap()
            .trim()
            .to_owned();
        Self { child, api, token }
    }

    /// Kills the node with SIGKILL: no shutdown, nothing flushed.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Stops the node with SIGTERM and waits for it.
    fn stop(mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        self.child.wait().unwrap();
    }
}

/// One HTTP/1.1 request with the token; the status and the body, or
/// `None` if the node went away first.
fn request(
    api: SocketAddr,
    token: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(api).ok()?;
    stream.set_read_timeout(Some(DEADLINE)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(raw.get(9..12)?).ok()?.parse().ok()?;
    Some((status, raw[split + 4..].to_vec()))
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

/// Opens the (stopped) node's store and reads every piece back: each must
/// hash to its name; none is quarantined.
fn assert_every_piece_verifies(dir: &Path) -> Arc<DiskStore> {
    let store = Arc::new(DiskStore::open(dir, DiskStoreConfig::new(1 << 40)).unwrap());
    for id in store.list() {
        let read = store.get(&id);
        assert!(
            matches!(read, Ok(Some(_))),
            "piece {id} does not verify after a crash: {read:?}"
        );
    }
    assert_eq!(store.stats().corrupt, 0);
    assert!(store.quarantined().is_empty());
    store
}

#[test]
fn a_node_killed_while_storing_files_keeps_every_acknowledged_file_and_only_verified_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x5eed_0001);
    let mut acknowledged: Vec<(PieceId, Vec<u8>)> = Vec::new();
    // Round 0 is never killed before its answer: it measures how long an
    // upload takes here, and the later kills fall within twice that time,
    // so some cut an upload short and some come after its answer.
    let mut upload_time = KILL_WITHIN;
    for round in 0..=KILLS {
        let node = Node::start(dir.path(), &[]);
        // A file of 3 to 8 MiB and a bit, stored while the node is killed.
        let len = (3 << 20) + usize::try_from(rng.next() % (5 << 20)).unwrap();
        let content = rng.bytes(len);
        let (api, token) = (node.api, node.token.clone());
        let upload = {
            let content = content.clone();
            std::thread::spawn(move || {
                request(
                    api,
                    &token,
                    "POST",
                    &format!("/api/v1/files?name=f{round}"),
                    &content,
                )
            })
        };
        let started = Instant::now();
        let answer = if round == 0 {
            let answer = upload.join().unwrap();
            upload_time = started.elapsed();
            node.kill();
            answer
        } else {
            let millis = u64::try_from(upload_time.as_millis()).unwrap().max(1);
            std::thread::sleep(Duration::from_millis(rng.next() % (2 * millis)));
            node.kill();
            upload.join().unwrap()
        };
        if let Some((201, body)) = answer {
            let manifest: PieceId = json(&body)["manifest"].as_str().unwrap().parse().unwrap();
            acknowledged.push((manifest, content));
        }
    }
    // The kills fell both before and after acknowledgements: some uploads
    // were cut short, some completed (else the test shows nothing).
    let kills_mid_upload = usize::try_from(KILLS).unwrap() + 1 - acknowledged.len();
    eprintln!(
        "{} uploads acknowledged, {kills_mid_upload} cut short",
        acknowledged.len()
    );
    assert!(!acknowledged.is_empty() && kills_mid_upload > 0);
    let store = assert_every_piece_verifies(dir.path());
    // Every upload the node acknowledged survived its crash, whole and pinned.
    let roots = store.roots();
    for (manifest, content) in &acknowledged {
        assert!(
            roots.contains(&Root::File(*manifest)),
            "{manifest} unpinned"
        );
        let mut out = Vec::new();
        reassemble(&*store, manifest, &Layout::STANDARD, &mut out).unwrap();
        assert!(out == *content, "{manifest} differs after the crash");
    }
    drop(store);
    // And the node starts on it and serves them.
    let node = Node::start(dir.path(), &[]);
    for (manifest, content) in &acknowledged {
        let (status, body) = request(
            node.api,
            &node.token,
            "GET",
            &format!("/api/v1/files/{manifest}"),
            &[],
        )
        .unwrap();
        assert_eq!(status, 200);
        assert!(body == *content);
    }
    node.stop();
}

/// Loose pieces one client uploads in a round at most (it is killed long
/// before).
const LOOSE_PUTS_MAX: usize = 10_000;
/// Pieces acknowledged before the first round's kill, so some are.
const LOOSE_ACKED_FIRST: usize = 3;

#[test]
fn a_node_killed_while_storing_loose_pieces_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = XorShift(0x5eed_0003);
    let mut acknowledged: Vec<(PieceId, Vec<u8>)> = Vec::new();
    for round in 0..KILLS {
        let node = Node::start(dir.path(), &[]);
        let (api, token) = (node.api, node.token.clone());
        let acked = Arc::new(Mutex::new(Vec::new()));
        // Uploads pieces (a full one now and then) until the node is gone.
        let uploader = {
            let acked = Arc::clone(&acked);
            let mut rng = XorShift(rng.next() | 1);
            std::thread::spawn(move || {
                for i in 0..LOOSE_PUTS_MAX {
                    let len = if i % 8 == 7 {
                        wire_format::limits::PIECE_MAX
                    } else {
                        1 + usize::try_from(rng.next() % (64 << 10)).unwrap()
                    };
                    let bytes = rng.bytes(len);
                    match request(api, &token, "POST", "/api/v1/pieces", &bytes) {
                        Some((201, body)) => {
                            let id: PieceId =
                                json(&body)["sha256"].as_str().unwrap().parse().unwrap();
                            assert_eq!(id, PieceId::of(&bytes));
                            acked.lock().unwrap().push((id, bytes));
                        }
                        _ => return,
                    }
                }
            })
        };
        if round == 0 {
            let deadline = Instant::now() + DEADLINE;
            while acked.lock().unwrap().len() < LOOSE_ACKED_FIRST {
                assert!(Instant::now() < deadline, "no piece was acknowledged");
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            std::thread::sleep(rng.moment());
        }
        node.kill();
        uploader.join().unwrap();
        acknowledged.append(&mut acked.lock().unwrap());
    }
    eprintln!("{} loose pieces acknowledged", acknowledged.len());
    assert!(acknowledged.len() >= LOOSE_ACKED_FIRST);
    let store = assert_every_piece_verifies(dir.path());
    for (id, bytes) in &acknowledged {
        assert!(store.is_pinned(id), "{id} unpinned after the crash");
        assert_eq!(store.get(id).unwrap().as_deref(), Some(&bytes[..]), "{id}");
    }
    // Held in packs, not a file each.
    assert!(!dir.path().join("pieces").exists());
    drop(store);
    // And the node starts on it and serves them.
    let node = Node::start(dir.path(), &[]);
    for (id, bytes) in acknowledged.iter().rev().take(4) {
        let (status, body) = request(
            node.api,
            &node.token,
            "GET",
            &format!("/api/v1/pieces/{id}"),
            &[],
        )
        .unwrap();
        assert_eq!(status, 200);
        assert!(body == *bytes);
    }
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_fetching_resumes_and_completes_the_file() {
    // The seeder: an in-process node holding a 24 MiB file, slowed to
    // 16 MiB/s so each fetch runs long enough to be killed mid-way.
    let mut rng = XorShift(0x5eed_0002);
    let content = rng.bytes((24 << 20) + 4321);
    let pieces_store = MemStore::new(1 << 30);
    let summary = add_file(&pieces_store, &content[..], "big", &Layout::STANDARD).unwrap();
    let seeder = TestNode::start(|c| {
        c.target_outbound = 0;
        c.max_upload_rate = Some(16 << 20);
    })
    .await;
    for id in pieces_store.list() {
        let bytes = pieces_store.get(&id).unwrap().unwrap();
        seeder
            .hold(&wire_format::VerifiedPiece::verify(id, bytes).unwrap())
            .unwrap();
    }
    let manifest = summary.manifest.to_string();
    let seeder_addr = seeder.addr.to_string();

    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out: PathBuf = out_dir.path().join("big");
    let fetch_body = serde_json::json!({"manifest": manifest, "path": out.to_str().unwrap()})
        .to_string()
        .into_bytes();
    let start_leecher = |dir: PathBuf, addr: String| {
        // The seeder answers an announce as a bootstrap server does.
        tokio::task::spawn_blocking(move || Node::start(&dir, &["--bootstrap", &addr]))
    };
    let mut fetched_before_kill = Vec::new();
    for _ in 0..KILLS {
        let node = start_leecher(dir.path().to_owned(), seeder_addr.clone())
            .await
            .unwrap();
        let (api, token, body) = (node.api, node.token.clone(), fetch_body.clone());
        let moment = rng.moment();
        let done = tokio::task::spawn_blocking(move || {
            let started = request(api, &token, "POST", "/api/v1/fetches", &body);
            assert!(matches!(started, Some((202, _))), "{started:?}");
            std::thread::sleep(moment);
            let id = json(&started.unwrap().1)["id"].as_str().unwrap().to_owned();
            let view = request(api, &token, "GET", &format!("/api/v1/fetches/{id}"), &[]);
            node.kill();
            view.map(|(_, body)| json(&body)["bytes_done"].as_u64().unwrap())
        })
        .await
        .unwrap();
        fetched_before_kill.push(done.unwrap_or(0));
    }
    // Kills fell mid-fetch, after some pieces had arrived.
    eprintln!("bytes fetched when killed: {fetched_before_kill:?}");
    let total = content.len() as u64;
    assert!(fetched_before_kill.iter().any(|b| *b > 0 && *b < total));
    // The last run completes, from where the killed ones left the store.
    let node = start_leecher(dir.path().to_owned(), seeder_addr.clone())
        .await
        .unwrap();
    let (api, token) = (node.api, node.token.clone());
    let job = tokio::task::spawn_blocking(move || {
        let (status, body) = request(api, &token, "POST", "/api/v1/fetches", &fetch_body).unwrap();
        assert_eq!(status, 202);
        let id = json(&body)["id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, body) =
                request(api, &token, "GET", &format!("/api/v1/fetches/{id}"), &[]).unwrap();
            let job = json(&body);
            if job["state"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "the job never ended: {job}");
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(job["state"], "done", "{job}");
    assert!(
        std::fs::read(&out).unwrap() == content,
        "the output differs"
    );
    tokio::task::spawn_blocking(move || node.stop())
        .await
        .unwrap();
    let store = assert_every_piece_verifies(dir.path());
    assert!(store.roots().contains(&Root::File(summary.manifest)));
    // Written once: the file's data pieces are served from the output
    // itself, and the temp files the killed runs left are gone.
    let names: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big")]);
    assert_eq!(store.extent_files(), vec![out.clone()]);
    let data: Vec<_> = pieces_of(&*store, &summary.manifest, &Layout::STANDARD)
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(data.iter().all(|p| store.has(&p.id)));
    assert_eq!(store.stats().extents, data.len() as u64);
}
