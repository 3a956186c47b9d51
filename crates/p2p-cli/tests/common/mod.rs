//! What the CLI's integration tests share: real nodes in this process with
//! their API served as the `peer-node` binary serves it (data dir prepared,
//! lock held, `api-addr` and `api-token` written), and the real `p2p-cli`
//! binary run against them.
#![allow(dead_code, reason = "each test crate uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use peer_node::api::{self, ApiBackend, NodeApi};
use peer_node::datadir::DataDir;
use peer_node::files::{JobState, JobView};
use peer_node::node::{DEFAULT_MEMORY_STORE_BYTES, NodeConfig};
use peer_node::testing::{POLL_INTERVAL, RunningNode, wait_for};
use piece_store::{DirLock, DiskStore, DiskStoreConfig, MemStore, PieceStore};
use rustix::process::{Pid, Signal, kill_process};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wire_format::{Hello, Message, NodeId, PieceId, VerifiedPiece};

/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(10);

/// A node with its API and a data dir, as the binary runs it.
pub struct ApiNode {
    pub node: RunningNode,
    pub api: SocketAddr,
    pub token: String,
    pub dir: DataDir,
    /// Held here unless the node's store holds it (a disk store does).
    _lock: Option<DirLock>,
    stop_api: oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl ApiNode {
    /// A node that dials `target_outbound` peers at most (0: nobody).
    pub async fn start(target_outbound: usize) -> Self {
        Self::start_with(|c| c.target_outbound = target_outbound).await
    }

    /// A node with a memory store, configured by `configure`.
    pub async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        Self::start_with_store(
            Arc::new(MemStore::new(DEFAULT_MEMORY_STORE_BYTES)),
            configure,
        )
        .await
    }

    /// A node keeping its pieces in `store`, on a data dir of its own.
    pub async fn start_with_store(
        store: Arc<dyn PieceStore>,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::prepare(tmp.path().join("data")).unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let node = RunningNode::start_with_store(store, configure)
            .await
            .unwrap();
        Self::serve(node, dir, Some(lock), Some(tmp)).await
    }

    /// A node whose store is a disk store in the data dir `data`, which
    /// outlives the node: a node started again on it finds what the last
    /// one stored. Waits for a node stopped just before to let go of the
    /// data dir's lock (its last tasks may still be ending).
    pub async fn start_on_disk(data: &Path, configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let dir = DataDir::prepare(data).unwrap();
        let deadline = Instant::now() + SOON;
        let store = loop {
            match DiskStore::open(dir.path(), DiskStoreConfig::new(DEFAULT_MEMORY_STORE_BYTES)) {
                Ok(store) => break store,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL_INTERVAL).await,
                Err(err) => panic!("the disk store did not open: {err}"),
            }
        };
        let node = RunningNode::start_with_store(Arc::new(store), configure)
            .await
            .unwrap();
        Self::serve(node, dir, None, None).await
    }

    async fn serve(
        node: RunningNode,
        dir: DataDir,
        lock: Option<DirLock>,
        tmp: Option<tempfile::TempDir>,
    ) -> Self {
        let token = dir.load_or_create_token().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let backend = Arc::new(NodeApi(Arc::clone(&node.shared))) as Arc<dyn ApiBackend>;
        let (stop_api, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(api::serve(listener, token.clone(), backend, async {
            let _ = stopped.await;
        }));
        dir.write_api_addr(api).unwrap();
        Self {
            node,
            api,
            token,
            dir,
            _lock: lock,
            stop_api,
            served,
            _tmp: tmp,
        }
    }

    /// Stops the API, then the node, as the binary does at shutdown: a
    /// client following a job loses its node.
    pub async fn stop(self) {
        let _ = self.stop_api.send(());
        let served = tokio::time::timeout(SOON, self.served).await;
        assert!(served.is_ok(), "the API did not stop");
        let _ = self.dir.remove_api_addr();
        self.node.stop().await.unwrap();
    }

    /// Node `a` (holding nothing, dialling nobody) and node `b` connected to it.
    pub async fn connected_pair() -> (Self, Self) {
        let a = Self::start(0).await;
        let b = Self::start(1).await;
        b.connect_to(&[&a]).await;
        (a, b)
    }

    /// Dials `others` (this node's `target_outbound` must allow it) and
    /// waits until connected to each.
    pub async fn connect_to(&self, others: &[&Self]) {
        for other in others {
            self.node.shared.add_candidate(other.node.addr.into());
        }
        let wanted: Vec<NodeId> = others.iter().map(|o| o.node.shared.node_id()).collect();
        let connected = wait_for(SOON, || {
            let ids = self.node.shared.connected_node_ids();
            wanted.iter().all(|id| ids.contains(id))
        })
        .await;
        assert!(connected, "the nodes did not connect");
    }

    /// Puts every piece in `pieces` in this node's store, pinned.
    pub fn hold_all<'a>(&self, pieces: impl IntoIterator<Item = &'a VerifiedPiece>) {
        for piece in pieces {
            self.node.hold(piece).unwrap();
        }
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    fn args(&self, args: &[&str]) -> Vec<String> {
        let mut all = vec!["--data-dir".to_owned(), self.data().display().to_string()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        all
    }

    /// Runs the CLI with `--data-dir` of this node and `args`.
    pub async fn cli(&self, args: &[&str]) -> Run {
        cli(self.args(args)).await
    }

    /// Starts the CLI with `--data-dir` of this node and `args`, without
    /// waiting for it.
    pub fn spawn_cli(&self, args: &[&str]) -> CliProcess {
        let child = command(&self.args(args))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        CliProcess {
            child: Some(child),
            stderr: None,
        }
    }

    /// The fetch job `id` as the node shows it.
    pub fn job(&self, id: &str) -> JobView {
        self.node.shared.jobs().get(id).unwrap()
    }

    /// Waits for the one running job of `manifest` to satisfy `cond`;
    /// returns it.
    pub async fn wait_running_job(
        &self,
        manifest: PieceId,
        mut cond: impl FnMut(&JobView) -> bool,
    ) -> JobView {
        let manifest = manifest.to_string();
        let mut seen = None;
        let found = wait_for(JOB_DEADLINE, || {
            seen = self
                .node
                .shared
                .jobs()
                .running()
                .into_iter()
                .find(|j| j.manifest == manifest);
            seen.as_ref().is_some_and(&mut cond)
        })
        .await;
        assert!(found, "no running job of {manifest} as expected: {seen:?}");
        seen.unwrap()
    }

    /// Waits for the job `id` to end; returns its last view.
    pub async fn wait_job_ended(&self, id: &str) -> JobView {
        let ended = wait_for(JOB_DEADLINE, || self.job(id).state != JobState::Running).await;
        assert!(ended, "the job is still running: {:?}", self.job(id));
        self.job(id)
    }

    /// `name` of `p2p-cli --json stats`.
    pub async fn stat(&self, name: &str) -> u64 {
        let run = self.cli(&["--json", "stats"]).await;
        run.assert_code(0);
        let stats: Value = serde_json::from_str(run.stdout_text().trim()).unwrap();
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {stats}"))
    }
}

/// How long a test waits for a fetch job or a CLI run that should end.
pub const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// The CLI running as a child process.
pub struct CliProcess {
    child: Option<Child>,
    /// Its stderr once [`wait_stderr`](Self::wait_stderr) has taken it,
    /// and the text read from it so far.
    stderr: Option<(BufReader<ChildStderr>, String)>,
}

impl CliProcess {
    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().unwrap();
        kill_process(Pid::from_child(child), signal).unwrap();
    }

    /// Reads the process's stderr until a line contains `text`.
    pub async fn wait_stderr(&mut self, text: &str) {
        let child = self.child.as_mut().unwrap();
        let pid = Pid::from_child(child);
        let taken = match self.stderr.take() {
            Some(taken) => taken,
            None => (BufReader::new(child.stderr.take().unwrap()), String::new()),
        };
        let wanted = text.to_owned();
        let mut reading = tokio::task::spawn_blocking(move || {
            let (mut reader, mut seen) = taken;
            loop {
                let start = seen.len();
                if reader.read_line(&mut seen).unwrap() == 0 {
                    return (reader, seen, false);
                }
                if seen[start..].contains(&wanted) {
                    return (reader, seen, true);
                }
            }
        });
        let (reader, seen, found) = match tokio::time::timeout(JOB_DEADLINE, &mut reading).await {
            Ok(read) => read.unwrap(),
            Err(_) => {
                let _ = kill_process(pid, Signal::KILL);
                let (_, seen, _) = reading.await.unwrap();
                panic!("the CLI did not say {text:?} within {JOB_DEADLINE:?}: {seen}");
            }
        };
        assert!(found, "the CLI ended without saying {text:?}: {seen}");
        self.stderr = Some((reader, seen));
    }

    /// Waits for the process to exit (killing it past [`JOB_DEADLINE`]).
    pub async fn finish(mut self) -> Run {
        let child = self.child.take().unwrap();
        let pid = Pid::from_child(&child);
        let stderr = self.stderr.take();
        let mut waiting = tokio::task::spawn_blocking(move || {
            // The rest of a stderr already read from ends when the process
            // does; the little it writes never fills the stdout pipe.
            let seen = stderr.map(|(mut reader, mut seen)| {
                let _ = reader.read_to_string(&mut seen);
                seen
            });
            let mut output = child.wait_with_output().unwrap();
            if let Some(seen) = seen {
                output.stderr = seen.into_bytes();
            }
            output
        });
        let output = match tokio::time::timeout(JOB_DEADLINE, &mut waiting).await {
            Ok(output) => output.unwrap(),
            Err(_) => {
                let _ = kill_process(pid, Signal::KILL);
                let output = waiting.await.unwrap();
                panic!(
                    "the CLI did not exit within {JOB_DEADLINE:?}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        };
        Run::of(output)
    }
}

impl Drop for CliProcess {
    fn drop(&mut self) {
        // A test that failed half-way leaves no process behind.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A peer that says HELLO to a node and then never answers anything,
/// while reading (and dropping) what the node sends so its writes never
/// block. Gone when dropped.
pub struct SilentPeer {
    reader: JoinHandle<()>,
}

impl SilentPeer {
    /// Connects to `node` as the node id `[seed; 8]` and waits until the
    /// node counts the connection.
    pub async fn connect(node: &RunningNode, seed: u8) -> Self {
        let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
        let hello = Hello::ours(Some(closed_port()), false, NodeId([seed; 8]));
        stream
            .write_all(&Message::Hello(hello).to_bytes())
            .await
            .unwrap();
        let connected = wait_for(SOON, || {
            node.shared
                .connected_node_ids()
                .contains(&NodeId([seed; 8]))
        })
        .await;
        assert!(connected, "the silent peer did not connect");
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 << 10];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        });
        Self { reader }
    }
}

impl Drop for SilentPeer {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// Not every test binary uses it.
#[allow(unused_imports)]
pub use peer_node::testing::content;

/// The manifest and every piece (manifests included) of a file named
/// `name` with `bytes`, as `add_file` makes them.
pub fn split(name: &str, bytes: &[u8]) -> (PieceId, Vec<VerifiedPiece>) {
    peer_node::testing::split_file(name, bytes).unwrap()
}

/// The names of a fetch job's temp files in `dir`.
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

/// The one JSON object a `--json` run printed.
pub fn json_object(run: &Run) -> Value {
    let text = run.stdout_text();
    assert_eq!(text.lines().count(), 1, "not one line: {text:?}");
    let value: Value = serde_json::from_str(text.trim()).unwrap();
    assert!(value.is_object(), "{value}");
    value
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    fn of(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8(self.stdout.clone()).unwrap()
    }

    /// Asserts the exit code, showing stderr when it differs.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "stderr: {}", self.stderr);
        self
    }

    /// Asserts stderr contains `text`.
    pub fn assert_says(&self, text: &str) -> &Self {
        assert!(
            self.stderr.contains(text),
            "stderr lacks {text:?}: {}",
            self.stderr
        );
        self
    }
}

/// Runs the real binary with `args`, off the async runtime's threads. The
/// environment's data dir is removed so only `--data-dir` counts.
pub async fn cli(args: Vec<String>) -> Run {
    tokio::task::spawn_blocking(move || run_blocking(&args))
        .await
        .unwrap()
}

pub fn run_blocking(args: &[String]) -> Run {
    Run::of(command(args).output().unwrap())
}

fn command(args: &[String]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_p2p-cli"));
    command
        .args(args)
        .env_remove("P2P_DATA_DIR")
        .env("NO_COLOR", "1");
    command
}

/// A piece of `len` bytes, distinct for each `seed`.
pub fn piece(seed: u8, len: usize) -> VerifiedPiece {
    let mut bytes = vec![seed ^ 0x5a; len];
    bytes[0] = seed;
    VerifiedPiece::new(bytes::Bytes::from(bytes)).unwrap()
}

/// A loopback port nobody listens on.
pub fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A fresh data dir of our own with no node.
pub fn empty_data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::prepare(tmp.path().join("data")).unwrap();
    let path = dir.path().to_path_buf();
    (tmp, path)
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}
