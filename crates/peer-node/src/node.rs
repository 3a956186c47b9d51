//! The node: accepts and dials connections, runs the HELLO exchange,
//! answers every new connection as a bootstrap server would, exchanges
//! peers, and keeps a target number of outbound connections.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::seq::SliceRandom;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};
use wire_format::limits::{
    DIAL_RATE_PER_SEC, HELLO_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_INTERVAL, PEX_INTERVAL,
    PEX_MAX_ENTRIES, PEX_MAX_FRAMES_PER_INTERVAL, REANNOUNCE_INTERVAL,
};
use wire_format::{AddrClass, Hello, Message, NodeId, PeerAddr, Peers};

use crate::api::{Direction, PeerSource, PeerState, PeerView};
use crate::conn::{self, ConnError, FrameReader, PeerKind};
use crate::metrics::{Family, Metric, Metrics};
use crate::table::{PeerTable, SavedPeer, Source};

/// Outbound connections the node keeps open when it knows enough peers.
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;
/// Default global connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Connections one non-loopback IP may hold.
pub const MAX_CONNECTIONS_PER_IP: usize = 4;
/// Frames queued for writing on one connection; a peer that lets more pile
/// up is not reading and is closed. Worst case per connection: this many
/// control frames (PEERS ≤ 18 KiB each).
pub const WRITE_QUEUE_FRAMES: usize = 64;
/// How often the dialler looks for work.
const DIAL_TICK: Duration = Duration::from_millis(100);
/// First quick re-announce while the node knows too few peers; doubles
/// each time up to the re-announce interval.
pub const HUNGRY_ANNOUNCE_FIRST: Duration = Duration::from_millis(500);
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
}

impl NodeConfig {
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
struct ConnEntry {
    node_id: Option<NodeId>,
    remote: PeerAddr,
    /// Where the peer accepts connections, once known.
    dialable: Option<PeerAddr>,
    direction: Direction,
    legacy: bool,
    /// Which node opened it (for the duplicate rule).
    opener: Option<NodeId>,
    since: SystemTime,
    close: watch::Sender<bool>,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
}

#[derive(Debug)]
struct State {
    conns: HashMap<u64, ConnEntry>,
    dialing: HashSet<PeerAddr>,
    table: PeerTable,
    next_conn: u64,
}

/// What the node shares between its tasks.
#[derive(Debug)]
pub struct Shared {
    config: NodeConfig,
    node_id: NodeId,
    listen_port: u16,
    metrics: Metrics,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Number of connections open now.
    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    /// Dialable addresses of connected HELLO peers, for PEERS.
    fn dialable_peers(&self, exclude: Option<NodeId>, loopback_only: bool) -> Vec<PeerAddr> {
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
        let now = Instant::now();
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
        for (addr, c) in state.table.iter() {
            if shown.contains(addr) {
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
                legacy: false,
                source: c.source,
                connected_since: None,
                bytes_in: 0,
                bytes_out: 0,
                last_error: c.last_error.clone(),
                ban: None,
            });
        }
        views
    }
}

impl crate::api::ApiBackend for Shared {
    fn peers(&self) -> Vec<PeerView> {
        self.peer_views()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
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

fn random_node_id() -> NodeId {
    NodeId(rand::random())
}

impl Node {
    /// Binds the listener and loads `peers.json`.
    pub async fn bind(config: NodeConfig) -> Result<Self, NodeError> {
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
                    table.insert_trusted(addr, Source::Saved, None, Instant::now());
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
                next_conn: 0,
            }),
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
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => accept_connection(&shared, stream, remote),
                    Err(err) => {
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown => {}
            () = accept => {}
        }
        info!("shutting down");
        let _ = stop_tx.send(true);
        drop(listener);
        for task in [dialler, announcer, saver] {
            let _ = task.await;
        }
        let closers: Vec<_> = shared
            .state()
            .conns
            .values()
            .map(|c| c.close.clone())
            .collect();
        for close in closers {
            let _ = close.send(true);
        }
        let deadline = Instant::now() + wire_format::limits::SHUTDOWN_GRACE;
        while shared.connection_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        save_peers(&shared);
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

fn save_peers(shared: &Shared) {
    let Some(path) = &shared.config.peers_file else {
        return;
    };
    let peers: Vec<SavedPeer> = {
        let state = shared.state();
        let mut addrs: HashSet<PeerAddr> =
            state.conns.values().filter_map(|c| c.dialable).collect();
        addrs.extend(
            state
                .table
                .iter()
                .filter(|(_, c)| c.failures == 0)
                .map(|(a, _)| *a),
        );
        addrs
            .into_iter()
            .map(|a| SavedPeer {
                addr: a.to_string(),
                node_id: None,
            })
            .collect()
    };
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(&peers)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(err) = result {
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

fn per_ip_count(state: &State, ip: IpAddr) -> usize {
    state.conns.values().filter(|c| c.remote.ip() == ip).count()
}

fn accept_connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let remote = PeerAddr::from(remote);
    {
        let state = shared.state();
        let over_global = state.conns.len() >= shared.config.max_connections;
        let over_ip = remote.class() != AddrClass::Loopback
            && per_ip_count(&state, remote.ip()) >= MAX_CONNECTIONS_PER_IP;
        if over_global || over_ip {
            shared.metrics.incr(Metric::ConnectionsRejectedTotal);
            debug!(peer = %remote, over_global, over_ip, "connection refused by limit");
            return;
        }
    }
    let _ = stream.set_nodelay(true);
    shared.metrics.incr(Metric::ConnectionsInboundTotal);
    let span = info_span!("conn", peer = %remote, dir = "in");
    tokio::spawn(run_connection(Arc::clone(shared), stream, Direction::In, None).instrument(span));
}

/// Dials `addr` and runs the connection.
async fn dial(shared: Arc<Shared>, addr: PeerAddr) {
    shared.metrics.incr(Metric::DialAttemptsTotal);
    match conn::connect(addr.socket_addr()).await {
        Ok(stream) => {
            shared.metrics.incr(Metric::ConnectionsOutboundTotal);
            let span = info_span!("conn", peer = %addr, dir = "out");
            run_connection(Arc::clone(&shared), stream, Direction::Out, Some(addr))
                .instrument(span)
                .await;
        }
        Err(err) => {
            shared.metrics.incr(Metric::DialFailuresTotal);
            shared
                .state()
                .table
                .dial_failed(&addr, err.to_string(), Instant::now());
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
        let todo = {
            let mut state = shared.state();
            let outbound = state
                .conns
                .values()
                .filter(|c| c.direction == Direction::Out)
                .count()
                + state.dialing.len();
            let want = shared
                .config
                .target_outbound
                .saturating_sub(outbound)
                .min(per_tick);
            if want == 0 || state.conns.len() >= shared.config.max_connections {
                continue;
            }
            let mut skip: HashSet<PeerAddr> = state.dialing.clone();
            let connected_ids: HashSet<NodeId> =
                state.conns.values().filter_map(|c| c.node_id).collect();
            skip.extend(state.conns.values().filter_map(|c| c.dialable));
            for (addr, c) in state.table.iter() {
                if c.node_id.is_some_and(|id| connected_ids.contains(&id)) {
                    skip.insert(*addr);
                }
            }
            let due = state.table.due(Instant::now(), &skip, want);
            state.dialing.extend(due.iter().copied());
            due
        };
        for addr in todo {
            tokio::spawn(dial(Arc::clone(&shared), addr));
        }
    }
}

/// Announces to every bootstrap server now and every re-announce interval.
async fn run_announcer(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    if shared.config.bootstrap.is_empty() {
        return;
    }
    let mut hungry_delay = HUNGRY_ANNOUNCE_FIRST;
    loop {
        for server in &shared.config.bootstrap {
            if let Err(err) = announce(&shared, server).await {
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

/// One bootstrap exchange: HELLO + PEERS{self}, read HELLO + PEERS, close.
async fn announce(shared: &Arc<Shared>, server: &str) -> Result<(), String> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{server} resolves to nothing"))?;
    let mut stream = conn::connect(addr).await.map_err(|e| e.to_string())?;
    let local = stream.local_addr().map_err(|e| e.to_string())?;
    let me = PeerAddr::new(local.ip(), shared.listen_port);
    for message in [
        Message::Hello(Hello::ours(Some(shared.listen_port), false, shared.node_id)),
        Message::Peers(Peers::new(vec![me]).map_err(|e| e.to_string())?),
    ] {
        conn::write_message(&mut stream, &message)
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut reader = FrameReader::new(&mut stream);
    let theirs = match conn::read_first_frame(&mut reader, false, shared.config.hello_timeout)
        .await
        .map_err(|e| e.to_string())?
    {
        PeerKind::Extended(hello) => hello,
        PeerKind::Legacy(_) => return Err("bootstrap server sent no HELLO".into()),
    };
    if theirs.node_id() == shared.node_id {
        return Err("bootstrap address is this node".into());
    }
    let deadline = shared.config.hello_timeout;
    loop {
        match conn::read_one(&mut reader, deadline)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(Message::Peers(peers)) => {
                let server_ip = PeerAddr::from(addr).ip();
                let (accepted, dropped) = shared.state().table.offer(
                    server_ip,
                    peers.entries(),
                    Source::Bootstrap,
                    Instant::now(),
                );
                shared
                    .metrics
                    .add(Metric::PexEntriesAcceptedTotal, accepted as u64);
                shared
                    .metrics
                    .add(Metric::PexEntriesDroppedTotal, dropped.len() as u64);
                shared.metrics.incr(Metric::BootstrapAnnouncesTotal);
                debug!(%server, entries = peers.entries().len(), accepted, "bootstrap answered");
                return Ok(());
            }
            Some(_) => continue,
            None => return Err("bootstrap server closed before PEERS".into()),
        }
    }
}

/// Decides whether a new connection to `peer` survives an existing one:
/// the connection opened by the lower node_id wins; between two opened by
/// the same node the older one stays.
fn keep_new(existing_opener: Option<NodeId>, new_opener: NodeId) -> bool {
    match existing_opener {
        Some(old) if old != new_opener => new_opener < old,
        _ => false,
    }
}

fn remove_conn(shared: &Shared, id: u64) {
    if shared.state().conns.remove(&id).is_some() {
        shared.metrics.decr(Metric::ConnectionsOpen);
    }
}

async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    direction: Direction,
    dialed: Option<PeerAddr>,
) {
    let remote = match stream.peer_addr() {
        Ok(addr) => PeerAddr::from(addr),
        Err(_) => return,
    };
    let local = stream.local_addr().ok();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let legacy_allowed = remote.class() == AddrClass::Loopback || shared.config.legacy;
    let our_hello = Message::Hello(Hello::ours(Some(shared.listen_port), false, shared.node_id));

    // HELLO exchange. The dialler speaks first (HELLO + PEERS naming itself);
    // the accepting side answers after reading the first frame, like a
    // bootstrap server.
    let kind = if direction == Direction::Out {
        let me = local.map(|l| PeerAddr::new(l.ip(), shared.listen_port));
        let mut first = vec![our_hello.clone()];
        if let Some(me) = me {
            first.push(Message::Peers(Peers::new(vec![me]).unwrap_or_default()));
        }
        for m in &first {
            if conn::write_message(&mut wr, m).await.is_err() {
                if let Some(addr) = dialed {
                    shared
                        .state()
                        .table
                        .dial_failed(&addr, "write failed".into(), Instant::now());
                }
                return;
            }
        }
        conn::read_first_frame(&mut reader, false, shared.config.hello_timeout).await
    } else {
        conn::read_first_frame(&mut reader, legacy_allowed, shared.config.hello_timeout).await
    };
    let kind = match kind {
        Ok(kind) => kind,
        Err(err) => {
            shared
                .metrics
                .incr_labelled(Family::ConnectionsClosedTotal, err.reason());
            if let ConnError::Protocol(e) = &err {
                shared
                    .metrics
                    .incr_labelled(Family::ProtocolErrorsTotal, e.kind());
            }
            if let Some(addr) = dialed {
                shared
                    .state()
                    .table
                    .dial_failed(&addr, err.to_string(), Instant::now());
            }
            debug!(%err, "handshake failed");
            return;
        }
    };
    let (hello, legacy_first) = match kind {
        PeerKind::Extended(hello) => (Some(hello), None),
        PeerKind::Legacy(first) => (None, first),
    };
    if let Some(hello) = &hello {
        shared.metrics.incr(Metric::HelloReceivedTotal);
        if hello.node_id() == shared.node_id {
            shared.metrics.incr(Metric::SelfConnectionsTotal);
            if let Some(addr) = dialed {
                shared.state().table.mark_ours(addr);
            }
            debug!("connected to ourselves; address never dialled again");
            return;
        }
    } else {
        shared.metrics.incr(Metric::LegacyPeersTotal);
    }
    let client = hello.is_some_and(|h| h.flags().client());

    if direction == Direction::In {
        // Answer as a bootstrap server: HELLO, then the peers we are connected to.
        let exclude = hello.map(|h| h.node_id());
        let entries = shared.dialable_peers(exclude, hello.is_none());
        let answer = [
            our_hello.clone(),
            Message::Peers(Peers::new(entries).unwrap_or_default()),
        ];
        for m in &answer {
            if conn::write_message(&mut wr, m).await.is_err() {
                return;
            }
        }
        shared.metrics.incr(Metric::PexFramesSentTotal);
    }
    if client {
        // Probes and tools: same answers, never recorded or deduplicated.
        let mut sink = reader.into_parts().0;
        let _ = conn::drain(&mut sink, IDLE_TIMEOUT).await;
        return;
    }

    let (tx, rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
    let (close_tx, mut close_rx) = watch::channel(false);
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    let node_id = hello.map(|h| h.node_id());
    let opener = match direction {
        Direction::Out => Some(shared.node_id),
        Direction::In => node_id,
    };
    let conn_id = {
        let mut state = shared.state();
        if let (Some(peer), Some(opener)) = (node_id, opener) {
            let existing = state
                .conns
                .iter()
                .find(|(_, c)| c.node_id == Some(peer))
                .map(|(id, c)| (*id, c.opener, c.close.clone()));
            if let Some((old_id, old_opener, old_close)) = existing {
                shared.metrics.incr(Metric::DuplicateConnectionsTotal);
                if keep_new(old_opener, opener) {
                    let _ = old_close.send(true);
                    state.conns.remove(&old_id);
                    shared.metrics.decr(Metric::ConnectionsOpen);
                } else {
                    debug!("duplicate connection closed");
                    if let Some(addr) = dialed {
                        state.table.dial_succeeded(&addr, peer);
                    }
                    return;
                }
            }
        }
        if let (Some(addr), Some(peer)) = (dialed, node_id) {
            state.table.dial_succeeded(&addr, peer);
        }
        state.next_conn += 1;
        let id = state.next_conn;
        state.conns.insert(
            id,
            ConnEntry {
                node_id,
                remote,
                dialable: if hello.is_some() { dialed } else { None },
                direction,
                legacy: hello.is_none(),
                opener,
                since: SystemTime::now(),
                close: close_tx,
                bytes_in: Arc::clone(&bytes_in),
                bytes_out: Arc::clone(&bytes_out),
            },
        );
        id
    };
    shared.metrics.incr(Metric::ConnectionsOpen);
    info!(node = ?node_id, legacy = hello.is_none(), "connected");

    // An inbound peer that listens becomes dialable once a probe reaches it.
    if direction == Direction::In
        && let Some(hello) = hello
        && let Some(port) = hello.listen_port()
    {
        let addr = PeerAddr::new(remote.ip(), port);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            shared.metrics.incr(Metric::ProbesTotal);
            match conn::probe(addr.socket_addr(), shared.node_id, Some(hello.node_id())).await {
                Ok(_) => {
                    let mut state = shared.state();
                    if let Some(c) = state.conns.get_mut(&conn_id) {
                        c.dialable = Some(addr);
                    }
                    state.table.insert_trusted(
                        addr,
                        Source::Inbound,
                        Some(hello.node_id()),
                        Instant::now(),
                    );
                }
                Err(err) => {
                    shared.metrics.incr(Metric::ProbeFailuresTotal);
                    debug!(%addr, %err, "dial-back probe failed");
                }
            }
        });
    }

    let writer = tokio::spawn(run_writer(
        Arc::clone(&shared),
        wr,
        rx,
        node_id,
        hello.is_none(),
        Arc::clone(&bytes_out),
    ));
    let result = async {
        if let Some(first) = legacy_first {
            handle_message(
                &shared,
                conn_id,
                remote,
                hello.is_none(),
                first,
                &mut PexWindow::default(),
            )?;
        }
        let mut window = PexWindow::default();
        loop {
            let message = tokio::select! {
                read = timeout(IDLE_TIMEOUT, reader.next()) => match read {
                    Err(_) => return Err(ConnError::Timeout { what: "idle", after: IDLE_TIMEOUT }),
                    Ok(result) => result?,
                },
                _ = close_rx.changed() => return Err(ConnError::Rule("closed_by_node")),
            };
            bytes_in.store(reader.bytes_in(), Ordering::Relaxed);
            let Some(message) = message else {
                return Ok(());
            };
            handle_message(
                &shared,
                conn_id,
                remote,
                hello.is_none(),
                message,
                &mut window,
            )?;
        }
    }
    .await;
    shared.metrics.add(Metric::BytesInTotal, reader.bytes_in());
    match &result {
        Ok(()) => shared
            .metrics
            .incr_labelled(Family::ConnectionsClosedTotal, "peer_closed"),
        Err(err) => {
            shared
                .metrics
                .incr_labelled(Family::ConnectionsClosedTotal, err.reason());
            if let ConnError::Protocol(e) = err {
                shared
                    .metrics
                    .incr_labelled(Family::ProtocolErrorsTotal, e.kind());
                warn!(%err, "closing on protocol error");
            } else {
                debug!(%err, "connection ended");
            }
        }
    }
    remove_conn(&shared, conn_id);
    drop(tx);
    writer.abort();
}

/// PEERS frames received in the current window, for the > 6 per 60 s rule.
#[derive(Debug, Default)]
struct PexWindow {
    start: Option<Instant>,
    frames: usize,
}

fn handle_message(
    shared: &Arc<Shared>,
    _conn_id: u64,
    remote: PeerAddr,
    legacy: bool,
    message: Message,
    window: &mut PexWindow,
) -> Result<(), ConnError> {
    match message {
        Message::Hello(_) => return Err(ConnError::Rule("hello_not_first")),
        m if legacy && m.kind().is_extension() => {
            return Err(ConnError::Rule("extension_from_legacy"));
        }
        Message::Peers(peers) => {
            shared.metrics.incr(Metric::PexFramesReceivedTotal);
            if peers.entries().is_empty() {
                return Ok(()); // keepalive
            }
            let now = Instant::now();
            if window
                .start
                .is_none_or(|s| now.duration_since(s) >= PEX_INTERVAL)
            {
                *window = PexWindow {
                    start: Some(now),
                    frames: 0,
                };
            }
            window.frames += 1;
            if window.frames > PEX_MAX_FRAMES_PER_INTERVAL {
                if legacy {
                    // The reference repeats itself every few seconds: ignore, don't punish.
                    shared.metrics.incr(Metric::IgnoredFramesTotal);
                    return Ok(());
                }
                return Err(ConnError::Rule("too_many_peers_frames"));
            }
            if legacy {
                // A legacy peer is only a candidate at (observed IP, port from its PEERS),
                // and never relayed to extended peers; this version does not dial it.
                shared.metrics.incr(Metric::IgnoredFramesTotal);
                return Ok(());
            }
            let (accepted, dropped) =
                shared
                    .state()
                    .table
                    .offer(remote.ip(), peers.entries(), Source::Pex, now);
            shared
                .metrics
                .add(Metric::PexEntriesAcceptedTotal, accepted as u64);
            shared
                .metrics
                .add(Metric::PexEntriesDroppedTotal, dropped.len() as u64);
        }
        _ => {
            // Pieces are served and fetched by a later version of the node.
            shared.metrics.incr(Metric::IgnoredFramesTotal);
        }
    }
    Ok(())
}

async fn run_writer(
    shared: Arc<Shared>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Message>,
    peer: Option<NodeId>,
    legacy: bool,
    bytes_out: Arc<AtomicU64>,
) {
    let mut last_sent = tokio::time::Instant::now();
    let mut next_pex = tokio::time::Instant::now() + PEX_INTERVAL;
    loop {
        let keepalive_at = last_sent + KEEPALIVE_INTERVAL;
        let message = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            () = tokio::time::sleep_until(next_pex) => {
                next_pex += PEX_INTERVAL;
                let entries = shared.dialable_peers(peer, legacy);
                if entries.is_empty() { continue; }
                shared.metrics.incr(Metric::PexFramesSentTotal);
                Message::Peers(Peers::new(entries).unwrap_or_default())
            }
            () = tokio::time::sleep_until(keepalive_at) => Message::Peers(Peers::empty()),
        };
        match conn::write_message(&mut wr, &message).await {
            Ok(n) => {
                bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                shared.metrics.add(Metric::BytesOutTotal, n as u64);
                last_sent = tokio::time::Instant::now();
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_opened_by_the_lower_node_id_survives() {
        let low = NodeId([1; 8]);
        let high = NodeId([2; 8]);
        assert!(keep_new(Some(high), low));
        assert!(!keep_new(Some(low), high));
        assert!(
            !keep_new(Some(low), low),
            "same opener: the older one stays"
        );
    }
}
