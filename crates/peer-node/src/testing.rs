//! Helpers for tests of programs built on the node: polling a condition
//! with a deadline, nodes running in-process on loopback, files to share
//! ([`content`], [`split_file`]), and [`link`], a proxy that puts a bad
//! link (delay, loss, a rate cap, a cut) between two of them.
//!
//! All go by tokio's clock, so they work the same on the real clock and on
//! the paused clock of `#[tokio::test(start_paused = true)]`. Call them
//! within a tokio runtime.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use piece_store::{Durability, PieceStore, Retention, StoreError};
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use wire_format::VerifiedPiece;

use crate::net::{ConnError, FrameReader, read_one};
use crate::node::{Node, NodeConfig, NodeError, Shared};

pub mod link;

pub use link::{Flow, ImpairedLink, Impairments, Traffic};

/// `len` bytes that differ from piece to piece and from file to file
/// (`seed`), cheaply: test files of many MiB.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// The manifest and every piece (manifests included) of a file named
/// `name` with `bytes`, as `add_file` makes them, for a test to hand to the
/// nodes that should hold it.
pub fn split_file(
    name: &str,
    bytes: &[u8],
) -> Result<(wire_format::PieceId, Vec<VerifiedPiece>), piece_store::file::FileError> {
    let store = piece_store::MemStore::new(u64::MAX);
    let summary = piece_store::file::add_file(
        &store,
        bytes,
        name,
        &piece_store::manifest::Layout::STANDARD,
    )?;
    let mut pieces = Vec::new();
    for id in store.list() {
        // What the store holds was verified as it went in.
        if let Some(piece) = store.get(&id)?.and_then(|b| VerifiedPiece::new(b).ok()) {
            pieces.push(piece);
        }
    }
    Ok((summary.manifest, pieces))
}

/// How often [`wait_for`] checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Checks `cond` every [`POLL_INTERVAL`] until it holds or `deadline` has
/// passed, and once more after that; returns whether it held.
pub async fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    cond()
}

/// Reads frames until the other side closes (end of stream, a reset or
/// broken pipe, or a frame cut off by the close) within `deadline`; returns
/// the frames that came first, or what went wrong instead of a close.
pub async fn frames_until_closed<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
    deadline: Duration,
) -> Result<Vec<wire_format::Message>, String> {
    let end = Instant::now() + deadline;
    let mut seen = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match read_one(reader, left).await {
            Ok(Some(message)) => seen.push(message),
            Ok(None) | Err(ConnError::Truncated { .. }) => return Ok(seen),
            Err(ConnError::Io(err))
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                return Ok(seen);
            }
            Err(err) => {
                return Err(format!(
                    "expected a close within {deadline:?}: {err}; got {seen:?}"
                ));
            }
        }
    }
}

/// A [`Node`] listening on `127.0.0.1:0` (unless configured otherwise) and
/// running in a spawned task until [`stop`](Self::stop) is called, this
/// handle is dropped (which stops it without waiting), or the runtime ends.
#[derive(Debug)]
pub struct RunningNode {
    /// The node's shared state: its metrics, peers, store and fetches.
    pub shared: Arc<Shared>,
    /// The address the node's listener is bound to.
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl RunningNode {
    /// Binds a node with the defaults of [`NodeConfig::new`] on
    /// `127.0.0.1:0`, as adjusted by `configure`, and runs it.
    pub async fn start(configure: impl FnOnce(&mut NodeConfig)) -> Result<Self, NodeError> {
        let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        configure(&mut config);
        Ok(Self::spawn(Node::bind(config).await?))
    }

    /// Puts `piece` in the node's store, pinned and durable: from now on the
    /// node holds it and serves it.
    pub fn hold(&self, piece: &VerifiedPiece) -> Result<(), StoreError> {
        self.shared
            .store()
            .put(piece.clone(), Retention::Pinned, Durability::Wait)
    }

    /// Never dials `addr`, and drops it from every PEERS the node takes:
    /// the test's firewall in front of a peer it reaches only through an
    /// [`ImpairedLink`]. A peer names its own address in its first PEERS,
    /// so without this the node could dial the peer there directly, around
    /// the link (the dialler filling its outbound slots, or a fetch
    /// widening, once the link's connection is gone). Call it before the
    /// node connects. It reuses the rule for the node's own address: such
    /// entries count as dropped with the reason `self`.
    pub fn never_dial(&self, addr: SocketAddr) {
        self.shared.swarm().state().table.mark_ours(addr.into());
    }

    /// Like [`start`](Self::start), with pieces kept in `store`.
    pub async fn start_with_store(
        store: Arc<dyn PieceStore>,
        configure: impl FnOnce(&mut NodeConfig),
    ) -> Result<Self, NodeError> {
        let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        configure(&mut config);
        Ok(Self::spawn(Node::bind_with_store(config, store).await?))
    }

    fn spawn(node: Node) -> Self {
        let addr = node.local_addr();
        let shared = node.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async move {
            // A dropped sender stops the node too.
            let _ = stopped.await;
        }));
        Self {
            shared,
            addr,
            stop,
            task,
        }
    }

    /// Signals the shutdown and waits until [`Node::run`] has returned (its
    /// connections closed and `peers.json` saved). An error is the node's
    /// task having panicked or been cancelled.
    pub async fn stop(self) -> Result<(), JoinError> {
        // A failed send means the task has ended already; its result says how.
        let _ = self.stop.send(());
        self.task.await
    }
}
