//! What the CLI's integration tests share: real nodes in this process with
//! their API served as the `peer-node` binary serves it (data dir prepared,
//! lock held, `api-addr` and `api-token` written), and the real `p2p-cli`
//! binary run against them.
#![allow(dead_code, reason = "each test crate uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use peer_node::api::{self, ApiBackend, NodeApi};
use peer_node::datadir::DataDir;
use peer_node::testing::{RunningNode, wait_for};
use piece_store::DirLock;
use tokio::sync::oneshot;
use wire_format::VerifiedPiece;

/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(10);

/// A node with its API and a data dir, as the binary runs it.
pub struct ApiNode {
    pub node: RunningNode,
    pub api: SocketAddr,
    pub token: String,
    pub dir: DataDir,
    _lock: DirLock,
    _stop: oneshot::Sender<()>,
    _tmp: tempfile::TempDir,
}

impl ApiNode {
    /// A node that dials `target_outbound` peers at most (0: nobody).
    pub async fn start(target_outbound: usize) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::prepare(tmp.path().join("data")).unwrap();
        let lock = DirLock::acquire(dir.path()).unwrap();
        let token = dir.load_or_create_token().unwrap();
        let node = RunningNode::start(|c| c.target_outbound = target_outbound)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let backend = Arc::new(NodeApi(Arc::clone(&node.shared))) as Arc<dyn ApiBackend>;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(api::serve(listener, token.clone(), backend, async {
            let _ = stopped.await;
        }));
        dir.write_api_addr(api).unwrap();
        Self {
            node,
            api,
            token,
            dir,
            _lock: lock,
            _stop: stop,
            _tmp: tmp,
        }
    }

    /// Node `a` (holding nothing, dialling nobody) and node `b` connected to it.
    pub async fn connected_pair() -> (Self, Self) {
        let a = Self::start(0).await;
        let b = Self::start(1).await;
        b.node.shared.add_candidate(a.node.addr.into());
        let connected = wait_for(SOON, || {
            b.node.shared.connected_node_ids() == vec![a.node.shared.node_id()]
        })
        .await;
        assert!(connected, "the nodes did not connect");
        (a, b)
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the CLI with `--data-dir` of this node and `args`.
    pub async fn cli(&self, args: &[&str]) -> Run {
        let mut all = vec!["--data-dir".to_owned(), self.data().display().to_string()];
        all.extend(args.iter().map(|s| (*s).to_owned()));
        cli(all).await
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
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
    let output: Output = Command::new(env!("CARGO_BIN_EXE_p2p-cli"))
        .args(args)
        .env_remove("P2P_DATA_DIR")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
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
