//! The node: accepts and dials connections, runs the HELLO exchange,
//! answers every new connection as a bootstrap server would, exchanges
//! peers, and keeps a target number of outbound connections.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use piece_store::{Durability, MemStore, PieceStore, Retention, StoreError};
use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use wire_format::limits::{DIAL_RATE_PER_SEC, HELLO_TIMEOUT, PEX_MAX_ENTRIES, REANNOUNCE_INTERVAL};
use wire_format::{AddrClass, NodeId, PeerAddr, PieceId, VerifiedPiece, host_key};

use crate::api::{Direction, PeerSource, PeerState, PeerView};
use crate::bans::{BanTarget, Bans};
use crate::conn::{self, OpenSockets};
pub use crate::fetch::FETCH_BUDGET_BYTES;
use crate::fetch::FetchHandle;
use crate::link::Link;
use crate::metrics::{Metric, Metrics};
use crate::ratelimit::RateLimiter;
use crate::serve::BUDGET_UNIT;
pub use crate::serve::SERVE_BUDGET_BYTES;
use crate::session::{self, Purpose};
pub use crate::session::{STREAM_CHUNK_BYTES, STREAM_GIVES_FROM};
use crate::table::{PeerTable, SavedPeer, Source};

/// Outbound connections the node keeps open when it knows enough peers.
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;
/// Default global connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Connections one non-loopback IP may hold (a public IPv6 /64 counts as
/// one IP: [`wire_format::host_key`]).
pub const MAX_CONNECTIONS_PER_IP: usize = 4;
/// Short control frames (37-byte ASK, WANT_HAVE, HAVE, DONT_HAVE, CANCEL)
/// queued for writing on one connection: room for the answers to every
/// WANT_HAVE one read can hold, so a peer that reads is never refused an
/// answer. Past it (a peer that sends WANT_HAVEs and does not read), a
/// WANT_HAVE is ignored and counted, as PROTOCOL.md's close table says of
/// anything it does not list. Worst case per connection: 2,048 × 37 bytes
/// on the wire, ≈ 150 KiB queued.
pub const WRITE_QUEUE_FRAMES: usize = 2048;
const _: () = assert!(
    WRITE_QUEUE_FRAMES
        * (wire_format::limits::LEN_FIELD_BYTES + wire_format::limits::DIGEST_MESSAGE_LEN)
        >= conn::READ_CHUNK_BYTES
);
/// How often the dialler looks for work.
const DIAL_TICK: Duration = Duration::from_millis(100);
/// First quick re-announce while the node knows too few peers; doubles
/// each time up to the re-announce interval.
pub const HUNGRY_ANNOUNCE_FIRST: Duration = Duration::from_millis(500);
/// Capacity of the memory store a node gets from [`Node::bind`].
pub const DEFAULT_MEMORY_STORE_BYTES: u64 = 1 << 30;
/// Pieces received and waiting for verification, node-wide; a reader that
/// finds them all taken waits (bounding unverified bytes in memory to this
/// many pieces).
pub const VERIFY_QUEUE_PIECES: usize = 32;
/// GIVEs hashed while they arrive, node-wide (see `STREAM_GIVES_FROM` in
/// the session). A GIVE that finds them all taken is read whole and verified
/// as before: peers trickling the pieces we asked them for can hold at most
/// these (and as many blocking threads), never a verify slot.
pub const STREAMING_GIVES_MAX: usize = 8;
/// How often `peers.json` is saved.
pub const PEERS_SAVE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Bootstrap servers (`host:port`), asked at start and every re-announce.
    pub bootstrap: Vec<String>,
    /// Where `peers.json` lives (none: nothing persisted).
    pub peers_file: Option<PathBuf>,
    /// Global connection limit.
    pub max_connections: usize,
    /// Outbound connections to keep.
    pub target_outbound: usize,
    /// Accept private addresses from public senders.
    pub allow_private: bool,
    /// Treat non-loopback peers that send no HELLO as legacy peers.
    pub legacy: bool,
    /// HELLO deadline.
    pub hello_timeout: Duration,
    /// Re-announce interval.
    pub reannounce: Duration,
    /// Whether loopback peers get the exemptions of peers on this machine
    /// (legacy detection without `--legacy`, no per-IP connection limit).
    /// Always true in the binary; tests set it false to see how a peer from
    /// another host is treated without needing a second host.
    pub loopback_is_local: bool,
    /// Global limit on piece bytes given to peers, per second (`None`: unlimited).
    pub max_upload_rate: Option<u64>,
    /// Global limit on piece bytes asked from peers, per second (`None`:
    /// unlimited). Charged when an ASK is sent, at the full piece size.
    pub max_download_rate: Option<u64>,
    /// Total deadline of one piece fetch when the requester names none.
    pub fetch_timeout: Duration,
}

impl NodeConfig {
    /// Inbound connections accepted: the global limit less the outbound
    /// slots, so inbound floods never take the slots the node dials with.
    pub fn max_inbound(&self) -> usize {
        self.max_connections
            .saturating_sub(self.target_outbound)
            .max(1)
    }

    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            peers_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            target_outbound: DEFAULT_TARGET_OUTBOUND,
            allow_private: false,
            legacy: false,
            hello_timeout: HELLO_TIMEOUT,
            reannounce: REANNOUNCE_INTERVAL,
            loopback_is_local: true,
            max_upload_rate: None,
            max_download_rate: None,
            fetch_timeout: wire_format::limits::FETCH_TIMEOUT,
        }
    }
}

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
}

#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) node_id: Option<NodeId>,
    pub(crate) remote: PeerAddr,
    /// Where the peer accepts connections, once known.
    pub(crate) dialable: Option<PeerAddr>,
    pub(crate) direction: Direction,
    pub(crate) legacy: bool,
    /// Which node opened it (for the duplicate rule).
    pub(crate) opener: Option<NodeId>,
    pub(crate) since: SystemTime,
    /// The connection's shared context (write queue, books, close signal).
    pub(crate) link: Arc<Link>,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: Arc<AtomicU64>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) conns: HashMap<u64, ConnEntry>,
    pub(crate) dialing: HashSet<PeerAddr>,
    pub(crate) table: PeerTable,
    /// New connects allowed now (PROTOCOL.md §4: dialling is rate-limited),
    /// shared by the dialler and widening fetches.
    pub(crate) dial_budget: DialBudget,
}

/// A token bucket of new connects: [`DIAL_RATE_PER_SEC`] a second, and at
/// most a second's worth at once. Kept as time credit: each connect costs
/// `1 s / DIAL_RATE_PER_SEC`, and credit accrues with time up to 1 s.
#[derive(Debug)]
pub(crate) struct DialBudget {
    credit: Duration,
    at: Instant,
}

/// What one connect costs in [`DialBudget`] credit.
const DIAL_COST: Duration = Duration::from_nanos(1_000_000_000 / DIAL_RATE_PER_SEC as u64);
/// The most credit a [`DialBudget`] holds: a second's worth of connects.
const DIAL_BURST: Duration = Duration::from_secs(1);

impl DialBudget {
    fn new(now: Instant) -> Self {
        Self {
            credit: DIAL_BURST,
            at: now,
        }
    }

    /// Takes up to `want` connects; returns how many were granted.
    fn take(&mut self, want: usize, now: Instant) -> usize {
        self.credit = (self.credit + now.saturating_duration_since(self.at)).min(DIAL_BURST);
        self.at = now;
        let affordable =
            usize::try_from(self.credit.as_nanos() / DIAL_COST.as_nanos()).unwrap_or(usize::MAX);
        let granted = want.min(affordable);
        self.credit -= DIAL_COST * u32::try_from(granted).unwrap_or(u32::MAX);
        granted
    }

    /// Gives back connects granted and not used.
    fn refund(&mut self, unused: usize) {
        let back = DIAL_COST.saturating_mul(u32::try_from(unused).unwrap_or(u32::MAX));
        self.credit = (self.credit + back).min(DIAL_BURST);
    }
}

impl State {
    /// Outbound connections (registered) to the host of `ip` (its /64 for
    /// public IPv6, see [`host_key`]), or to anyone.
    fn outbound(&self, ip: Option<IpAddr>) -> usize {
        self.conns
            .values()
            .filter(|c| {
                c.direction == Direction::Out
                    && ip.is_none_or(|ip| host_key(c.remote.ip()) == host_key(ip))
            })
            .count()
    }
}

/// What the node shares between its tasks.
pub struct Shared {
    pub(crate) config: NodeConfig,
    pub(crate) node_id: NodeId,
    pub(crate) listen_port: u16,
    pub(crate) metrics: Metrics,
    pub(crate) state: Mutex<State>,
    /// Set once at shutdown: every connection closes.
    pub(crate) closing: watch::Sender<bool>,
    /// Where pieces live (blocking API: call through the blocking pool).
    pub(crate) store: Arc<dyn PieceStore>,
    /// Serving budget ([`crate::serve::SERVE_BUDGET_BYTES`], in KiB units).
    pub(crate) serve_budget: Arc<Semaphore>,
    /// In-flight fetch budget ([`crate::fetch::FETCH_BUDGET_BYTES`], in KiB units).
    pub(crate) fetch_budget: Arc<Semaphore>,
    /// Accepted sockets still open: counted from accept until their task
    /// ends, so sockets still waiting for a HELLO and CLIENT connections
    /// (never registered) count against the limits too.
    pub(crate) inbound: OpenSockets,
    /// Pieces received and waiting for (or in) verification, across all
    /// connections: bounds the memory of unverified bytes.
    pub(crate) verify_slots: Arc<Semaphore>,
    /// GIVEs being hashed while they arrive, at most [`STREAMING_GIVES_MAX`].
    pub(crate) stream_slots: Arc<Semaphore>,
    /// Fetches in progress, by piece.
    pub(crate) fetches: Mutex<HashMap<PieceId, FetchHandle>>,
    /// Peers that lied, for an hour.
    pub(crate) bans: Mutex<Bans>,
    /// `--max-upload-rate`: piece bytes we give.
    pub(crate) upload: Arc<RateLimiter>,
    /// `--max-download-rate`: piece bytes we ask for.
    pub(crate) download: Arc<RateLimiter>,
    /// The connection that gave us the last verified piece (0: none).
    pub(crate) last_giver: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("node_id", &self.node_id)
            .field("listen_port", &self.listen_port)
            .field("store", &self.store.stats())
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn fetches(&self) -> MutexGuard<'_, HashMap<PieceId, FetchHandle>> {
        self.fetches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn bans(&self) -> MutexGuard<'_, Bans> {
        self.bans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Bans the peer behind `link` for a lie (PROTOCOL.md "Bans"), and
    /// forgets its address as a dial candidate.
    pub(crate) fn ban(&self, link: &Link, reason: String, digest: Option<PieceId>) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = BanTarget::new(link.remote.ip(), link.listen_port, link.node_id);
        self.bans().ban(target, reason, digest, now(), unix);
        if let Some(port) = link.listen_port {
            let mut state = self.state();
            let addr = PeerAddr::new(link.remote.ip(), port);
            state.table.remove(&addr);
        }
    }

    /// Whether a peer is banned (an IP-only check bans only public peers).
    pub(crate) fn is_banned(
        &self,
        ip: IpAddr,
        listen_port: Option<u16>,
        node_id: Option<NodeId>,
    ) -> bool {
        self.bans()
            .is_banned(ip, listen_port, node_id, now())
            .is_some()
    }

    /// The live recorded connections.
    pub(crate) fn links(&self) -> Vec<Arc<Link>> {
        self.state()
            .conns
            .values()
            .map(|c| Arc::clone(&c.link))
            .collect()
    }

    /// The node's piece store.
    pub fn store(&self) -> &Arc<dyn PieceStore> {
        &self.store
    }

    /// Dials up to `max` table candidates that are neither connected nor
    /// being dialled (a fetch widening its search); returns how many.
    pub(crate) fn widen(self: &Arc<Self>, max: usize) -> usize {
        self.dial_due(max)
    }

    /// Starts dials to up to `max` table candidates that are due, not
    /// banned, and neither connected (by address or node id) nor being
    /// dialled, within the dial rate; returns how many. The dialler and a
    /// widening fetch both pick candidates, and share the rate, here.
    fn dial_due(self: &Arc<Self>, max: usize) -> usize {
        let todo = {
            let mut state = self.state();
            let mut skip: HashSet<PeerAddr> = state.dialing.clone();
            skip.extend(state.conns.values().filter_map(|c| c.dialable));
            let connected: HashSet<NodeId> =
                state.conns.values().filter_map(|c| c.node_id).collect();
            let at = now();
            let bans = self.bans();
            for (addr, c) in state.table.iter() {
                if c.node_id.is_some_and(|id| connected.contains(&id))
                    || bans.is_addr_banned(*addr, at)
                {
                    skip.insert(*addr);
                }
            }
            drop(bans);
            let granted = state.dial_budget.take(max, at);
            let due = state.table.due(at, &skip, granted);
            state.dial_budget.refund(granted - due.len());
            state.dialing.extend(due.iter().copied());
            due
        };
        for addr in &todo {
            tokio::spawn(dial(Arc::clone(self), *addr));
        }
        todo.len()
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Node ids of the extended peers connected now.
    pub fn connected_node_ids(&self) -> Vec<NodeId> {
        self.state()
            .conns
            .values()
            .filter_map(|c| c.node_id)
            .collect()
    }

    /// Adds an address to dial, as if named by the operator (`source:
    /// config`). Filters for never-dialable addresses and ourselves apply.
    pub fn add_candidate(&self, addr: PeerAddr) {
        self.state()
            .table
            .insert_trusted(addr, Source::Config, None, now());
    }

    /// Number of connections open now.
    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    /// Sockets that count against the connection limits now: every accepted
    /// socket until its task ends (registered or not: still waiting for a
    /// HELLO, or a CLIENT), and outbound connections.
    pub fn open_connections(&self) -> usize {
        let state = self.state();
        self.inbound.total() + state.outbound(None)
    }

    /// Dialable addresses of connected HELLO peers, for PEERS.
    pub(crate) fn dialable_peers(
        &self,
        exclude: Option<NodeId>,
        loopback_only: bool,
    ) -> Vec<PeerAddr> {
        let state = self.state();
        let mut out: Vec<PeerAddr> = state
            .conns
            .values()
            .filter(|c| !c.legacy && c.node_id.is_some() && c.node_id != exclude)
            .filter_map(|c| c.dialable)
            .filter(|a| !loopback_only || a.class() == AddrClass::Loopback)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        out.shuffle(&mut rand::rng());
        out.truncate(PEX_MAX_ENTRIES);
        out
    }

    /// The table as the API shows it.
    pub fn peer_views(&self) -> Vec<PeerView> {
        let state = self.state();
        let now = now();
        let mut views = Vec::new();
        let mut shown = HashSet::new();
        for c in state.conns.values() {
            let addr = c.dialable.unwrap_or(c.remote);
            shown.insert(addr);
            let source = state.table.get(&addr).map_or(
                if c.direction == Direction::In {
                    PeerSource::Inbound
                } else {
                    PeerSource::Config
                },
                |t| t.source,
            );
            views.push(PeerView {
                addr: addr.socket_addr(),
                node_id: c.node_id,
                direction: Some(c.direction),
                state: PeerState::Connected,
                legacy: c.legacy,
                source,
                connected_since: c.since.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()),
                bytes_in: c.bytes_in.load(Ordering::Relaxed),
                bytes_out: c.bytes_out.load(Ordering::Relaxed),
                last_error: None,
                ban: None,
            });
        }
        let connected: HashSet<NodeId> = state.conns.values().filter_map(|c| c.node_id).collect();
        for (addr, c) in state.table.iter() {
            // One row per peer: a connected node is shown once, by its connection.
            if shown.contains(addr) || c.node_id.is_some_and(|id| connected.contains(&id)) {
                continue;
            }
            let st = if state.dialing.contains(addr) {
                PeerState::Connecting
            } else if c.next_attempt > now {
                PeerState::Backoff
            } else {
                PeerState::Known
            };
            views.push(PeerView {
                addr: addr.socket_addr(),
                node_id: c.node_id,
                direction: None,
                state: st,
                legacy: c.legacy,
                source: c.source,
                connected_since: None,
                bytes_in: 0,
                bytes_out: 0,
                last_error: c.last_error.clone(),
                ban: None,
            });
        }
        // Banned peers, with the reason, digest and end of the ban.
        for record in self.bans().records(now) {
            let Some(port) = record.target.listen_port else {
                continue;
            };
            views.push(PeerView {
                addr: SocketAddr::new(record.target.ip, port),
                node_id: record.target.node_id,
                direction: None,
                state: PeerState::Banned,
                legacy: false,
                source: PeerSource::Inbound,
                connected_since: None,
                bytes_in: 0,
                bytes_out: 0,
                last_error: Some(record.reason.clone()),
                ban: Some(record.view()),
            });
        }
        views
    }
}

/// The node as the local API sees it.
#[derive(Debug, Clone)]
pub struct NodeApi(pub Arc<Shared>);

impl crate::api::ApiBackend for NodeApi {
    fn peers(&self) -> Vec<PeerView> {
        self.0.peer_views()
    }

    fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    fn fetch_piece(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> crate::api::BoxFuture<'static, Result<bytes::Bytes, crate::api::FetchError>> {
        let shared = Arc::clone(&self.0);
        Box::pin(async move { shared.fetch(id, timeout).await })
    }

    fn default_fetch_timeout(&self) -> Duration {
        self.0.config.fetch_timeout
    }

    fn put_piece(
        &self,
        bytes: bytes::Bytes,
    ) -> crate::api::BoxFuture<'static, Result<PieceId, crate::api::PutError>> {
        let store = Arc::clone(&self.0.store);
        Box::pin(async move {
            let stored = tokio::task::spawn_blocking(move || {
                // Hashing 1 MiB takes about half a millisecond: blocking pool.
                let piece = VerifiedPiece::new(bytes)
                    .map_err(|e| crate::api::PutError::Invalid(e.to_string()))?;
                let id = piece.id();
                store
                    .put(piece, Retention::Pinned, Durability::Wait)
                    .map_err(|e| match e {
                        StoreError::Full { .. } => crate::api::PutError::Full(e.to_string()),
                        other => crate::api::PutError::Store(other.to_string()),
                    })?;
                Ok(id)
            })
            .await;
            stored.unwrap_or_else(|e| Err(crate::api::PutError::Store(e.to_string())))
        })
    }
}

/// A bound, not yet running node.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    listener: TcpListener,
}

/// A dual-stack listener (`IPV6_V6ONLY` off) when `addr` is IPv6.
pub fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => {
            let socket = TcpSocket::new_v6()?;
            rustix::net::sockopt::set_ipv6_v6only(&socket, false)?;
            socket
        }
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The current instant on the runtime's clock: the real clock in
/// production, and tokio's paused clock in tests, so every window, backoff
/// and deadline of the node moves on one clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn random_node_id() -> NodeId {
    NodeId(rand::random())
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
        let listener = bind_listener(config.listen).map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| NodeError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut table = PeerTable::new(config.allow_private);
        if let Some(path) = &config.peers_file {
            for saved in load_peers(path) {
                if let Ok(addr) = saved.addr.parse::<PeerAddr>() {
                    table.insert_trusted(addr, Source::Saved, None, now());
                }
            }
        }
        let shared = Arc::new(Shared {
            node_id: random_node_id(),
            listen_port: local.port(),
            metrics: Metrics::new(),
            state: Mutex::new(State {
                conns: HashMap::new(),
                dialing: HashSet::new(),
                table,
                dial_budget: DialBudget::new(now()),
            }),
            closing: watch::Sender::new(false),
            store,
            serve_budget: Arc::new(Semaphore::new(SERVE_BUDGET_BYTES / BUDGET_UNIT)),
            fetch_budget: Arc::new(Semaphore::new(FETCH_BUDGET_BYTES / BUDGET_UNIT)),
            inbound: OpenSockets::default(),
            verify_slots: Arc::new(Semaphore::new(VERIFY_QUEUE_PIECES)),
            stream_slots: Arc::new(Semaphore::new(STREAMING_GIVES_MAX)),
            fetches: Mutex::new(HashMap::new()),
            bans: Mutex::new(Bans::new()),
            upload: Arc::new(RateLimiter::new(config.max_upload_rate)),
            download: Arc::new(RateLimiter::new(config.max_download_rate)),
            last_giver: AtomicU64::new(0),
            config,
        });
        Ok(Self { shared, listener })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.shared.config.listen)
    }

    /// The shared state (for the API and tests).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Runs until `shutdown` resolves, then closes every connection and
    /// saves `peers.json`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let (stop_tx, stop_rx) = watch::channel(false);
        let dialler = tokio::spawn(run_dialler(Arc::clone(&shared), stop_rx.clone()));
        let announcer = tokio::spawn(run_announcer(Arc::clone(&shared), stop_rx.clone()));
        let saver = tokio::spawn(run_saver(Arc::clone(&shared), stop_rx.clone()));
        let listener = self.listener;
        conn::accept_until(&listener, shutdown, |stream, remote| {
            accept_connection(&shared, stream, remote);
        })
        .await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        drop(listener);
        for task in [dialler, announcer, saver] {
            // None of them holds state that needs finishing; an announce in
            // flight is simply dropped.
            task.abort();
            let _ = task.await;
        }
        // Who we know, taken while connections are still up.
        let peers = known_peers(&shared);
        shared.closing.send_replace(true);
        let deadline = now() + wire_format::limits::SHUTDOWN_GRACE;
        while shared.connection_count() > 0 && now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        write_peers(&shared, &peers);
    }
}

fn load_peers(path: &std::path::Path) -> Vec<SavedPeer> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Vec<SavedPeer>>(&bytes)
            .map(|mut v| {
                v.truncate(wire_format::limits::PEER_TABLE_MAX);
                v
            })
            .unwrap_or_else(|err| {
                warn!(path = %path.display(), %err, "ignoring malformed peers file");
                Vec::new()
            }),
        Err(_) => Vec::new(),
    }
}

/// Dialable addresses worth saving: connected peers, and candidates whose
/// last dial did not fail.
fn known_peers(shared: &Shared) -> Vec<SavedPeer> {
    let state = shared.state();
    // Legacy peers are not saved: they announce themselves again.
    let mut addrs: HashSet<PeerAddr> = state
        .conns
        .values()
        .filter(|c| !c.legacy)
        .filter_map(|c| c.dialable)
        .collect();
    addrs.extend(
        state
            .table
            .iter()
            .filter(|(_, c)| c.failures == 0 && !c.legacy)
            .map(|(a, _)| *a),
    );
    addrs
        .into_iter()
        .map(|a| SavedPeer {
            addr: a.to_string(),
            node_id: None,
        })
        .collect()
}

fn save_peers(shared: &Shared) {
    write_peers(shared, &known_peers(shared));
}

fn write_peers(shared: &Shared, peers: &[SavedPeer]) {
    let Some(path) = &shared.config.peers_file else {
        return;
    };
    // A unique temp file created like a secret (create_new, 0600, no-follow),
    // then renamed over the old list: a planted link is never followed.
    let tmp = path.with_extension(format!("json.{:016x}.tmp", rand::random::<u64>()));
    let result = serde_json::to_vec(peers)
        .map_err(|e| e.to_string())
        .and_then(|bytes| crate::datadir::write_new_secret(&tmp, &bytes).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        warn!(path = %path.display(), %err, "cannot save peers");
    }
}

async fn run_saver(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(PEERS_SAVE_INTERVAL) => save_peers(&shared),
        }
    }
}

/// Accepts `stream` if the connection limits allow it. Every accepted
/// socket counts from now until its task ends, registered or not.
fn accept_connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let remote = PeerAddr::from(remote);
    let local = remote.class() == AddrClass::Loopback && shared.config.loopback_is_local;
    let banned = shared.is_banned(remote.ip(), None, None);
    let slot = {
        // Lock order: the state, then the socket counts (a slot's release
        // takes only the counts).
        let state = shared.state();
        let outbound = state.outbound(None);
        let outbound_to_ip = state.outbound(Some(remote.ip()));
        shared.inbound.take(remote.ip(), |inbound, from_ip| {
            let over_global = inbound + outbound >= shared.config.max_connections;
            // Outbound slots stay reserved, so inbound floods cannot take every slot.
            let over_inbound = inbound >= shared.config.max_inbound();
            let over_ip = !local && from_ip + outbound_to_ip >= MAX_CONNECTIONS_PER_IP;
            if over_global || over_inbound || over_ip || banned {
                debug!(peer = %remote, over_global, over_inbound, over_ip, banned, "connection refused by limit");
                return Err(());
            }
            Ok(())
        })
    };
    let Ok(slot) = slot else {
        shared.metrics.incr(Metric::ConnectionsRejectedTotal);
        return;
    };
    conn::tune(&stream);
    shared.metrics.incr(Metric::ConnectionsInboundTotal);
    let span = info_span!("conn", peer = %remote, dir = "in", conn = session::next_span_id());
    let shared = Arc::clone(shared);
    tokio::spawn(
        async move {
            let _slot = slot;
            let _ = session::run(shared, stream, Direction::In, None, Purpose::Peer).await;
        }
        .instrument(span),
    );
}

/// Dials `addr` and runs the connection.
async fn dial(shared: Arc<Shared>, addr: PeerAddr) {
    shared.metrics.incr(Metric::DialAttemptsTotal);
    match conn::connect(addr.socket_addr()).await {
        Ok(stream) => {
            shared.metrics.incr(Metric::ConnectionsOutboundTotal);
            let span =
                info_span!("conn", peer = %addr, dir = "out", conn = session::next_span_id());
            let _ = session::run(
                Arc::clone(&shared),
                stream,
                Direction::Out,
                Some(addr),
                Purpose::Peer,
            )
            .instrument(span)
            .await;
        }
        Err(err) => {
            shared.metrics.incr(Metric::DialFailuresTotal);
            shared
                .state()
                .table
                .dial_failed(&addr, err.to_string(), now());
        }
    }
    shared.state().dialing.remove(&addr);
}

async fn run_dialler(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let per_tick = (DIAL_RATE_PER_SEC as usize * DIAL_TICK.as_millis() as usize / 1000).max(1);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(DIAL_TICK) => {}
        }
        let want = {
            let state = shared.state();
            let outbound = state.outbound(None) + state.dialing.len();
            if shared.inbound.total() + state.outbound(None) >= shared.config.max_connections {
                0
            } else {
                shared
                    .config
                    .target_outbound
                    .saturating_sub(outbound)
                    .min(per_tick)
            }
        };
        if want > 0 {
            shared.dial_due(want);
        }
    }
}

async fn run_announcer(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if shared.config.bootstrap.is_empty() {
        return;
    }
    let mut hungry_delay = HUNGRY_ANNOUNCE_FIRST;
    loop {
        for server in &shared.config.bootstrap {
            if let Err(err) = session::announce(&shared, server).await {
                warn!(%server, %err, "bootstrap announce failed");
            }
        }
        // While the node knows fewer peers than it wants to dial, ask again
        // soon (the server lists newcomers once it has probed them), backing
        // off to the re-announce interval.
        let known = {
            let state = shared.state();
            state.table.len() + state.conns.len()
        };
        let delay = if known < shared.config.target_outbound {
            let delay = hungry_delay;
            hungry_delay = (hungry_delay * 2).min(shared.config.reannounce);
            delay
        } else {
            shared.config.reannounce
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire_format::Hello;

    /// Registers `n` extended peers, each dialable at its own port.
    fn connect_extended(shared: &Shared, n: u16) {
        let mut state = shared.state();
        for i in 0..n {
            let addr = PeerAddr::new([127, 0, 0, 1].into(), 20_000 + i);
            let id = u64::from(i) + 1;
            let hello = Hello::ours(Some(addr.port()), false, NodeId(id.to_le_bytes()));
            let (link, _queues) = Link::new(id, addr, Some(hello), Arc::default(), now());
            state.conns.insert(
                id,
                ConnEntry {
                    node_id: Some(hello.node_id()),
                    remote: addr,
                    dialable: Some(addr),
                    direction: Direction::In,
                    legacy: false,
                    opener: Some(hello.node_id()),
                    since: SystemTime::now(),
                    link: Arc::new(link),
                    bytes_in: Arc::default(),
                    bytes_out: Arc::default(),
                },
            );
        }
    }

    #[tokio::test]
    async fn a_peers_frame_we_send_names_at_most_pex_max_entries_peers() {
        let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        config.target_outbound = 0;
        let at_limit = Node::bind(config.clone()).await.unwrap().shared();
        connect_extended(&at_limit, u16::try_from(PEX_MAX_ENTRIES).unwrap());
        assert_eq!(at_limit.dialable_peers(None, false).len(), PEX_MAX_ENTRIES);

        let over = Node::bind(config).await.unwrap().shared();
        connect_extended(&over, u16::try_from(PEX_MAX_ENTRIES + 1).unwrap());
        let sent = over.dialable_peers(None, false);
        assert_eq!(sent.len(), PEX_MAX_ENTRIES);
        assert_eq!(
            sent.iter().collect::<HashSet<_>>().len(),
            PEX_MAX_ENTRIES,
            "no repeats"
        );
    }

    #[test]
    fn the_dial_budget_grants_a_seconds_worth_at_once_then_the_rate() {
        let rate = DIAL_RATE_PER_SEC as usize;
        let t0 = Instant::now();
        let mut budget = DialBudget::new(t0);
        assert_eq!(budget.take(rate + 1, t0), rate, "a full bucket, no more");
        assert_eq!(budget.take(1, t0), 0, "empty");
        let one = Duration::from_secs(1) / DIAL_RATE_PER_SEC;
        assert_eq!(budget.take(5, t0 + one / 2), 0, "half a token is none");
        assert_eq!(budget.take(5, t0 + one), 1, "one token per 1/rate s");
        // A long pause refills a second's worth, never more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(budget.take(10 * rate, later), rate);
        // Unused grants come back, up to the cap.
        budget.refund(3);
        assert_eq!(budget.take(10 * rate, later), 3);
        budget.refund(10 * rate);
        assert_eq!(budget.take(10 * rate, later), rate);
    }
}
