//! The node's wiring: bind the listener, build the swarm and the piece
//! exchange over one store, run the tasks that open connections and keep
//! the swarm, and shut down in order. [`Shared`] is the handle the API and
//! tests hold.
//!
//! Uses everything below it: the sessions, the swarm, the piece exchange,
//! [`crate::net`]; never the API.

mod connect;
mod dht;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use piece_store::{MemStore, PieceStore};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;
use wire_format::{NodeId, PeerAddr, PieceId};

pub use crate::config::{DEFAULT_MAX_CONNECTIONS, DEFAULT_TARGET_OUTBOUND, NodeConfig};
use crate::dht::DhtNode;
use crate::files::Jobs;
use crate::metrics::Metrics;
use crate::net;
pub use crate::net::bind_listener;
pub use crate::pieces::{
    FETCH_BUDGET_BYTES, FetchError, Fetched, Pieces, SERVE_BUDGET_BYTES, STREAM_CHUNK_BYTES,
    STREAM_GIVES_FROM, STREAMING_GIVES_MAX, VERIFY_QUEUE_PIECES, WRITE_QUEUE_FRAMES,
};
use crate::process::wait_for_grace;
pub use crate::swarm::{MAX_CONNECTIONS_PER_IP, PEERS_SAVE_INTERVAL, PeerView, Swarm};
pub use connect::HUNGRY_ANNOUNCE_FIRST;

/// Capacity of the memory store a node gets from [`Node::bind`].
pub const DEFAULT_MEMORY_STORE_BYTES: u64 = 1 << 30;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another program using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `--dht` was given and the DHT node could not start.
    #[error(transparent)]
    Dht(#[from] crate::dht::DhtError),
}

/// A running node as the API and tests see it: its swarm and its piece
/// exchange.
#[derive(Debug, Clone)]
pub struct Shared {
    swarm: Arc<Swarm>,
    pieces: Arc<Pieces>,
    jobs: Arc<Jobs>,
}

impl Shared {
    /// The piece `id`, verified, from the store or the swarm, within `timeout`.
    pub async fn fetch(&self, id: PieceId, timeout: Duration) -> Result<Bytes, FetchError> {
        self.pieces.fetch(id, timeout).await
    }

    /// Like [`fetch`](Self::fetch), with who gave it and the per-peer account.
    pub async fn fetch_from(&self, id: PieceId, timeout: Duration) -> Result<Fetched, FetchError> {
        self.pieces.fetch_from(id, timeout).await
    }

    /// Piece fetches registered now (running, or storing their result).
    pub fn fetches_in_progress(&self) -> usize {
        self.pieces.fetches().len()
    }

    /// The total deadline of a fetch whose requester names none.
    pub fn fetch_timeout(&self) -> Duration {
        self.swarm.config.fetch_timeout
    }

    /// The node's piece store.
    pub fn store(&self) -> &Arc<dyn PieceStore> {
        self.pieces.store()
    }

    /// The node's whole-file fetch jobs.
    pub fn jobs(&self) -> &Arc<Jobs> {
        &self.jobs
    }

    /// The address the node listens on for peers.
    pub fn listen_port(&self) -> u16 {
        self.swarm.listen_port
    }

    /// The UDP port of the node's DHT node (`None` without `--dht`).
    pub fn dht_port(&self) -> Option<u16> {
        self.pieces.dht.as_ref().map(|d| d.port())
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.swarm.node_id()
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.swarm.metrics
    }

    /// Node ids of the extended peers connected now.
    pub fn connected_node_ids(&self) -> Vec<NodeId> {
        self.swarm.connected_node_ids()
    }

    /// Adds an address to dial, as if named by the operator.
    pub fn add_candidate(&self, addr: PeerAddr) {
        self.swarm.add_candidate(addr);
    }

    /// Number of connections open now.
    pub fn connection_count(&self) -> usize {
        self.swarm.connection_count()
    }

    /// Sockets that count against the connection limits now.
    pub fn open_connections(&self) -> usize {
        self.swarm.open_connections()
    }

    /// Every peer the node knows, as the API shows them.
    pub fn peer_views(&self) -> Vec<PeerView> {
        self.swarm.peer_views()
    }

    /// The swarm, for the test helpers' hooks ([`crate::testing`]).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn swarm(&self) -> &Arc<Swarm> {
        &self.swarm
    }
}

/// A bound, not yet running node.
#[derive(Debug)]
pub struct Node {
    shared: Shared,
    listener: TcpListener,
    dials: tokio::sync::mpsc::Receiver<PeerAddr>,
}

impl Node {
    /// Binds the listener and loads `peers.json`, with pieces kept in
    /// memory (at most [`DEFAULT_MEMORY_STORE_BYTES`]).
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
        Self::bind_with_store(config, Arc::new(MemStore::new(DEFAULT_MEMORY_STORE_BYTES))).await
    }

    /// Binds the listener and loads `peers.json`; pieces live in `store`.
    pub async fn bind_with_store(
        config: NodeConfig,
        store: Arc<dyn PieceStore>,
    ) -> Result<Self, NodeError> {
        let bind_error = |source| NodeError::Bind {
            addr: config.listen,
            source,
        };
        let listener = bind_listener(config.listen).map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        // The DHT on UDP at the TCP port's number (the crate speaks IPv4:
        // an IPv6 or wildcard listener gets a DHT on every IPv4 interface).
        let dht = match &config.dht {
            Some(dht) => {
                let mut dht = dht.clone();
                if dht.bind.is_none()
                    && let std::net::IpAddr::V4(ip) = local.ip()
                    && !ip.is_unspecified()
                {
                    dht.bind = Some(ip);
                }
                let node = DhtNode::start(&dht, dht.port.unwrap_or(local.port())).await?;
                info!(
                    udp_port = node.port(),
                    bootstrap = %if dht.bootstrap.is_empty() { "the public Mainline routers".to_owned() } else { dht.bootstrap.join(", ") },
                    "DHT node started (server mode, IPv4 only); it announces every pinned file and loose piece this node holds"
                );
                Some(node)
            }
            None => None,
        };
        let saved = config
            .peers_file
            .as_deref()
            .map(crate::swarm::load_peers)
            .unwrap_or_default();
        let (swarm, dials) = Swarm::new(
            config,
            net::new_node_id(),
            local.port(),
            Arc::new(Metrics::new()),
            &saved,
        );
        let swarm = Arc::new(swarm);
        let mut pieces = Pieces::new(Arc::clone(&swarm), store);
        pieces.dht = dht;
        let pieces = Arc::new(pieces);
        let jobs = Arc::new(Jobs::new(Arc::clone(&pieces)));
        Ok(Self {
            shared: Shared {
                swarm,
                pieces,
                jobs,
            },
            listener,
            dials,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.swarm.config.listen)
    }

    /// The handle to the node (for the API and tests).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::new(self.shared.clone())
    }

    /// Runs until `shutdown` resolves, then closes every connection and
    /// saves `peers.json`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Shared {
            swarm,
            pieces,
            jobs,
        } = self.shared;
        let (stop_tx, stop_rx) = watch::channel(false);
        let tasks = [
            tokio::spawn(crate::swarm::run_dialler(
                Arc::clone(&swarm),
                stop_rx.clone(),
            )),
            tokio::spawn(connect::run_dials(
                Arc::clone(&pieces),
                self.dials,
                stop_rx.clone(),
            )),
            tokio::spawn(connect::run_announcer(Arc::clone(&pieces), stop_rx.clone())),
            tokio::spawn(crate::swarm::run_saver(Arc::clone(&swarm), stop_rx.clone())),
            tokio::spawn(match pieces.dht.clone() {
                Some(dht) => futures_util::future::Either::Left(dht::run_announcer(
                    Arc::clone(&pieces),
                    dht,
                    stop_rx,
                )),
                None => futures_util::future::Either::Right(std::future::ready(())),
            }),
        ];
        let listener = self.listener;
        net::accept_until(&listener, shutdown, |stream, remote| {
            connect::accept(&pieces, stream, remote);
        })
        .await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        drop(listener);
        for task in tasks {
            // None of them holds state that needs finishing; an announce in
            // flight is simply dropped.
            task.abort();
            let _ = task.await;
        }
        // Who we know, taken while connections are still up.
        let peers = crate::swarm::known_peers(&swarm);
        // Fetch jobs end first: each removes its temp file and gives back
        // the pin it took, rather than leave them to a stopped node.
        jobs.cancel_all();
        wait_for_grace(|| !jobs.any_running()).await;
        swarm.closing.send_replace(true);
        wait_for_grace(|| swarm.connection_count() == 0).await;
        crate::swarm::write_peers(&swarm, &peers);
    }
}
