//! The bootstrap server's network side: answers each connection with HELLO
//! and up to [`PEX_MAX_ENTRIES`] verified peers, records announcers and
//! verifies them with dial-back probes.
//!
//! A legacy client (docs/PROTOCOL.md §4, "Bootstrapping") goes through these
//! states on its connection:
//! 1. *unknown*: its first frame is not a HELLO (or nothing comes within the
//!    hello timeout) where a peer may be legacy;
//! 2. *answered*: it is sent HELLO and one PEERS (the verified legacy
//!    entries other than itself, then loopback verified peers); if its first
//!    frame was a PEERS naming its own port, it is *announced*;
//! 3. *announced*: each PEERS naming that port refreshes its legacy entry,
//!    which is probed silently ([`legacy::probe`]) when new, and again once
//!    [`legacy::LEGACY_REPROBE_INTERVAL`] old; each PEERS may be answered
//!    with the legacy entries it was not sent yet
//!    ([`legacy::LegacyClient`]);
//! 4. *gone*: its connection ends (it closed, a decode error, idle); a
//!    verified entry of it is probed at once, so a client that went away is
//!    unlisted as soon as the probe fails.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use peer_node::net::{
    self, Frame, FrameReader, OpenSockets, PeerKind, RefusalWarnings, SocketSlot, bind_listener,
};
use peer_node::process::wait_for_grace;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};
use wire_format::limits::{HELLO_TIMEOUT, IDLE_TIMEOUT, PEX_MAX_ENTRIES, REANNOUNCE_INTERVAL};
use wire_format::{AddrClass, Hello, Message, NodeId, PeerAddr, Peers};

use crate::legacy::{self, LEGACY_PEERS_ANSWER_INTERVAL, LegacyClient, LegacyEntries};
use crate::registry::{self, DEFAULT_MAX_PEERS, Registry};

/// File of verified entries in the data dir.
pub const REGISTRY_FILE: &str = "registry.json";
/// How often expired entries are dropped and the registry saved.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

/// Connections open at once, counted from accept until the connection ends
/// (sockets still waiting for HELLO, CLIENT probes and legacy clients that
/// keep their connection included); past it a new connection is closed at
/// once.
///
/// Sized for a public server with the default registry: its nodes announce
/// once per re-announce interval, each announce holding a connection for one
/// round trip, or for the whole hello timeout at worst. Even if every announce
/// took that long, the connections open at once would be a quarter of this
/// bound (checked below), leaving room for bursts: a swarm starting together,
/// hungry nodes asking again after half a second.
///
/// Worst case: this many file descriptors (plus dial-back probes), and
/// memory of about two read chunks per connection: the largest frame the
/// server keeps is a PEERS of 18 KiB, and a GIVE's piece is dropped as it is
/// read (`MAX_OPEN_CONNECTIONS × 2 × READ_CHUNK_BYTES`, 512 MiB) however
/// large the frames clients send.
///
/// Loopback counts too: past this bound even a legacy client is closed at
/// once, which may kill it, rather than the server running out of
/// descriptors.
pub const MAX_OPEN_CONNECTIONS: usize = 1 << 12;
const _: () = assert!(
    MAX_OPEN_CONNECTIONS as u64
        >= 4 * (DEFAULT_MAX_PEERS as u64) * HELLO_TIMEOUT.as_secs() / REANNOUNCE_INTERVAL.as_secs()
);

/// Dial-back probes in flight at once. Each takes a socket for at most the
/// connect and hello timeouts (10 s), so 256 verify at least 25 new peers a
/// second even when every probe times out. Re-announces of verified peers
/// need no probe; a restart re-probes every saved entry through this queue
/// instead of opening them all at once.
pub const MAX_CONCURRENT_PROBES: usize = 256;

/// Connections one non-loopback IP may hold open at once. A node holds one
/// only for an announce's round trip, so several nodes behind one NAT
/// announcing at the same moment fit, while one host cannot take more than
/// this share of [`MAX_OPEN_CONNECTIONS`]. A public IPv6 /64 counts as one
/// IP ([`wire_format::host_key`]): one host usually holds a whole /64.
/// Loopback is exempt: the reference program lives there, and a legacy
/// client keeps its connection.
pub const MAX_CONNECTIONS_PER_IP: usize = 8;

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Where the registry is persisted (none: not persisted).
    pub data_dir: Option<PathBuf>,
    /// Registry capacity.
    pub max_peers: usize,
    /// Treat non-loopback clients without HELLO as legacy.
    pub legacy: bool,
    /// Connections open at once: [`MAX_OPEN_CONNECTIONS`], or fewer in tests.
    /// Not a flag, because the flags are part of the user contract.
    pub max_connections: usize,
    /// Whether loopback clients get the exemptions of clients on this machine
    /// (legacy detection without `--legacy`, no per-IP connection limit).
    /// Always true in the binary; tests set it false to see how a client from
    /// another host is treated without needing a second host.
    pub loopback_is_local: bool,
    /// Dial-back probes in flight at once: [`MAX_CONCURRENT_PROBES`], or
    /// fewer in tests.
    pub max_probes: usize,
    /// How long a probed legacy client must stay silent to be verified:
    /// [`HELLO_TIMEOUT`], or shorter in tests.
    pub legacy_silence: Duration,
    /// Least time between two answers to one legacy client:
    /// [`LEGACY_PEERS_ANSWER_INTERVAL`], or shorter in tests.
    pub legacy_answer_interval: Duration,
}

impl ServerConfig {
    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            data_dir: None,
            max_peers: DEFAULT_MAX_PEERS,
            legacy: false,
            max_connections: MAX_OPEN_CONNECTIONS,
            loopback_is_local: true,
            max_probes: MAX_CONCURRENT_PROBES,
            legacy_silence: HELLO_TIMEOUT,
            legacy_answer_interval: LEGACY_PEERS_ANSWER_INTERVAL,
        }
    }
}

/// The server's counts, read while it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections open now, from accept until their end.
    pub open_connections: usize,
    /// Connections closed at accept because a connection limit was reached.
    pub refused_connections: u64,
    /// Registry entries, verified or not.
    pub registry_entries: usize,
    /// Legacy entries, verified or not.
    pub legacy_entries: usize,
    /// Legacy entries verified now (listed to legacy clients if on loopback).
    pub legacy_verified: usize,
    /// Legacy probes that failed (no connect, it wrote, or it closed).
    pub legacy_probes_failed: u64,
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    node_id: NodeId,
    listen: PeerAddr,
    registry: Mutex<Registry>,
    /// Verified and announced legacy clients; never locked with `registry`.
    legacy: Mutex<LegacyEntries>,
    /// Set at shutdown: every connection closes.
    closing: watch::Sender<bool>,
    /// Connections being served now; a [`ConnectionSlot`] is one of them.
    open: OpenSockets,
    /// Connections closed at accept by a limit.
    refused: AtomicU64,
    /// Dial-back probes running at once (see [`MAX_CONCURRENT_PROBES`]).
    probes: Arc<tokio::sync::Semaphore>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn legacy(&self) -> MutexGuard<'_, LegacyEntries> {
        self.legacy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stats(&self) -> ServerStats {
        let open_connections = self.open.total();
        let (legacy_entries, legacy_verified, legacy_probes_failed) = {
            let legacy = self.legacy();
            (
                legacy.len(),
                legacy.verified_len(),
                legacy.stats().probes_failed,
            )
        };
        ServerStats {
            open_connections,
            refused_connections: self.refused.load(Ordering::Relaxed),
            registry_entries: self.registry().len(),
            legacy_entries,
            legacy_verified,
            legacy_probes_failed,
        }
    }

    /// Takes a place among the open connections for one from `remote`, or
    /// names the limit that leaves none. Checked and taken under one lock,
    /// so concurrent releases never let the counts pass a limit.
    fn admit(self: &Arc<Self>, remote: PeerAddr) -> Result<ConnectionSlot, Limit> {
        let local = remote.class() == AddrClass::Loopback && self.config.loopback_is_local;
        let socket = self.open.take(remote.ip(), |total, of_ip| {
            if total >= self.config.max_connections {
                Err(Limit::Global)
            } else if !local && of_ip >= MAX_CONNECTIONS_PER_IP {
                Err(Limit::PerIp)
            } else {
                Ok(())
            }
        })?;
        Ok(ConnectionSlot {
            shared: Arc::clone(self),
            _socket: socket,
        })
    }
}

/// The limit that refused a connection.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Global,
    PerIp,
}

impl Limit {
    fn name(self) -> &'static str {
        match self {
            Self::Global => "max_connections",
            Self::PerIp => "max_connections_per_ip",
        }
    }

    /// What an operator can do about it, for the log.
    fn advice(self, max_connections: usize) -> &'static str {
        match self {
            // The start-up log already said by how much.
            Self::Global if max_connections < MAX_OPEN_CONNECTIONS => {
                "refusing connections: the connection limit is reached; it is below MAX_OPEN_CONNECTIONS for want of file descriptors: raise the open-files limit (ulimit -n)"
            }
            Self::Global => {
                "refusing connections: MAX_OPEN_CONNECTIONS is reached; each announce holds a connection for one round trip, so this is a flood or more clients than one server should take: add bootstrap servers"
            }
            Self::PerIp => {
                "refusing connections from one address over its fixed per-address limit (a flood, or many clients behind one NAT); nothing to raise"
            }
        }
    }
}

/// One open connection's place in the counts, held by its task.
#[derive(Debug)]
struct ConnectionSlot {
    shared: Arc<Shared>,
    _socket: SocketSlot,
}

/// A bound bootstrap server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    listener: TcpListener,
}

impl Server {
    /// Binds (address reuse on, so a restart rebinds at once) and loads
    /// the saved registry; its entries are re-probed before being listed.
    pub async fn bind(config: ServerConfig) -> std::io::Result<Self> {
        let listener = bind_listener(config.listen).map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let local = listener.local_addr()?;
        let registry = match &config.data_dir {
            Some(dir) => {
                let saved = registry::load_json(&dir.join(REGISTRY_FILE), config.max_peers)
                    .map_err(std::io::Error::other)?;
                Registry::from_saved(config.max_peers, saved, Instant::now(), SystemTime::now())
            }
            None => Registry::new(config.max_peers),
        };
        let shared = Arc::new(Shared {
            listen: PeerAddr::from(local),
            node_id: net::new_node_id(),
            registry: Mutex::new(registry),
            legacy: Mutex::new(LegacyEntries::default()),
            closing: watch::Sender::new(false),
            open: OpenSockets::default(),
            refused: AtomicU64::new(0),
            probes: Arc::new(tokio::sync::Semaphore::new(config.max_probes)),
            config,
        });
        Ok(Self { shared, listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Verified entries now (for tests and status).
    pub fn verified_len(&self) -> usize {
        self.shared.registry().verified_len()
    }

    /// A handle to count verified entries while the server runs.
    pub fn verified_counter(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.registry().verified_len()
    }

    /// A handle to read the server's counts while it runs.
    pub fn stats_handle(&self) -> impl Fn() -> ServerStats + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.stats()
    }

    /// Runs until `shutdown` resolves; saves the registry on the way out.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let restored: Vec<PeerAddr> = shared.registry().awaiting_probe(Instant::now()).collect();
        for addr in restored {
            spawn_probe(Arc::clone(&shared), addr, None);
        }
        let listener = self.listener;
        let maintenance = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(MAINTENANCE_INTERVAL).await;
                    shared.registry().expire(Instant::now());
                    shared.legacy().expire(Instant::now());
                    save(&shared);
                }
            })
        };
        // Each refusal is counted and logged at debug level; a warning at
        // most once a while per limit.
        let warnings = RefusalWarnings::default();
        net::accept_until(&listener, shutdown, |stream, remote| {
            match shared.admit(PeerAddr::from(remote)) {
                Ok(slot) => {
                    let span = info_span!("conn", peer = %remote, dir = "in");
                    tokio::spawn(serve(slot, stream, remote).instrument(span));
                }
                Err(limit) => {
                    // Closed before anything is read or written.
                    drop(stream);
                    let refused = shared.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    debug!(peer = %remote, limit = limit.name(), "connection refused by limit");
                    if warnings.due(limit.name()) {
                        warn!(
                            refused,
                            limit = limit.name(),
                            max_connections = shared.config.max_connections,
                            max_per_ip = MAX_CONNECTIONS_PER_IP,
                            "{}",
                            limit.advice(shared.config.max_connections)
                        );
                    }
                }
            }
        })
        .await;
        maintenance.abort();
        drop(listener);
        // Close every connection, give them the grace period, then save.
        shared.closing.send_replace(true);
        wait_for_grace(|| shared.open.total() == 0).await;
        save(&shared);
        info!("stopped");
    }
}

fn save(shared: &Shared) {
    let Some(dir) = &shared.config.data_dir else {
        return;
    };
    let saved = shared
        .registry()
        .to_saved(Instant::now(), SystemTime::now());
    if let Err(err) = registry::save_json(&dir.join(REGISTRY_FILE), &saved) {
        warn!(%err, "cannot save the registry");
    }
}

fn spawn_probe(shared: Arc<Shared>, addr: PeerAddr, expected: Option<NodeId>) {
    if !shared.registry().probe_started(addr, Instant::now()) {
        return;
    }
    tokio::spawn(async move {
        // A restart re-probes every saved entry: a queue, not a burst of
        // 100,000 connects.
        let Ok(_permit) = Arc::clone(&shared.probes).acquire_owned().await else {
            return;
        };
        let outcome = net::probe(addr.socket_addr(), shared.node_id, expected).await;
        let mut registry = shared.registry();
        match outcome {
            Ok(net::ProbeOutcome::Node(seen)) => {
                registry.probe_succeeded(addr, seen, Instant::now());
                debug!(%addr, "dial-back probe verified");
            }
            Err(err) => {
                registry.probe_failed(addr, Instant::now());
                debug!(%addr, %err, "dial-back probe failed");
            }
        }
    });
}

/// Serves one connection; its slot is given back when this ends.
async fn serve(slot: ConnectionSlot, stream: TcpStream, remote: SocketAddr) {
    let shared = &slot.shared;
    let mut closing = shared.closing.subscribe();
    tokio::select! {
        () = serve_one(shared, stream, remote) => {}
        _ = closing.wait_for(|closing| *closing) => {}
    }
}

async fn serve_one(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let remote = PeerAddr::from(remote);
    net::tune(&stream);
    let (rd, wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let legacy_allowed = net::legacy_allowed(
        remote,
        shared.config.loopback_is_local,
        shared.config.legacy,
    );
    let kind = match net::read_first_frame(&mut reader, legacy_allowed, HELLO_TIMEOUT).await {
        Ok(kind) => kind,
        Err(err) => {
            debug!(%err, "handshake failed");
            return;
        }
    };
    // A legacy client that sent a GIVE first: its piece is dropped unread.
    reader.discard_piece();
    match kind {
        PeerKind::Extended(hello) => serve_extended(shared, reader, wr, remote, hello).await,
        PeerKind::Legacy(first) => serve_legacy(shared, reader, wr, remote, first).await,
    }
}

/// A client that sent HELLO: answered, recorded if it listens, then read
/// until it closes.
async fn serve_extended(
    shared: &Arc<Shared>,
    mut reader: FrameReader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    remote: PeerAddr,
    hello: Hello,
) {
    // Record (observed IP, HELLO listen port), never a claimed address.
    let asker = hello
        .listen_port()
        .map(|port| PeerAddr::new(remote.ip(), port));
    let exclude: Vec<PeerAddr> = asker.into_iter().chain([shared.listen]).collect();
    let entries =
        shared
            .registry()
            .sample(PEX_MAX_ENTRIES, &exclude, Instant::now(), &mut rand::rng());
    if !answer(shared, &mut wr, entries).await {
        return;
    }
    if let Some(addr) = asker
        && !hello.flags().client()
    {
        let outcome = shared
            .registry()
            .announce(addr, hello.node_id(), Instant::now());
        if outcome.should_probe() {
            spawn_probe(Arc::clone(shared), addr, Some(hello.node_id()));
        }
    }
    // The server never closes first except on idle; what the client sends
    // after its announce is ignored.
    while next_message(&mut reader).await.is_some() {}
}

/// A legacy client: answered, announced and probed once a PEERS names its
/// port, its repeats answered with what is new; see the module docs for its
/// states.
async fn serve_legacy(
    shared: &Arc<Shared>,
    mut reader: FrameReader<OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    remote: PeerAddr,
    first: Option<Message>,
) {
    let mut client = LegacyClient::new(remote.ip(), shared.config.legacy_answer_interval);
    if let Some(Message::Peers(peers)) = &first {
        client.read_peers(peers.entries());
    }
    let now = Instant::now();
    let mut entries = {
        let listed = shared.legacy().listed(now);
        client.first_answer(&listed, now)
    };
    // Then verified peers, loopback only: it dials every entry with a
    // blocking connect.
    let exclude: Vec<PeerAddr> = client.me().into_iter().chain([shared.listen]).collect();
    let extended = shared
        .registry()
        .sample(PEX_MAX_ENTRIES, &exclude, now, &mut rand::rng());
    let room = PEX_MAX_ENTRIES.saturating_sub(entries.len());
    entries.extend(
        extended
            .into_iter()
            .filter(|a| a.class() == AddrClass::Loopback)
            .take(room),
    );
    if !answer(shared, &mut wr, entries).await {
        return;
    }
    if let Some(me) = client.me() {
        announce_legacy(shared, me);
    }
    // It repeats its PEERS every few seconds for as long as it runs: never
    // closed for it, and never closed first except on idle.
    while let Some(message) = next_message(&mut reader).await {
        let Message::Peers(peers) = message else {
            continue;
        };
        if let Some(me) = client.read_peers(peers.entries()) {
            announce_legacy(shared, me);
        }
        let now = Instant::now();
        if !client.answer_due(now) {
            continue;
        }
        let listed = shared.legacy().listed(now);
        if let Some(new) = client.repeat_answer(&listed, now) {
            debug!(
                entries = new.len(),
                "telling a legacy client of new legacy entries"
            );
            let peers = Message::Peers(Peers::new(new).unwrap_or_default());
            if net::write_message(&mut wr, &peers).await.is_err() {
                break;
            }
        }
    }
    // It may be gone: a verified entry of it is probed now, not at its
    // next announce, which may never come.
    if let Some(me) = client.me()
        && shared.legacy().connection_ended(me, Instant::now())
    {
        spawn_legacy_probe(Arc::clone(shared), me);
    }
}

/// Sends the answer every client gets: our HELLO (harmless to a legacy
/// client), then one PEERS. False if the connection failed.
async fn answer(shared: &Shared, wr: &mut OwnedWriteHalf, entries: Vec<PeerAddr>) -> bool {
    let answer = [
        Message::Hello(Hello::ours(
            Some(shared.listen.port()),
            false,
            shared.node_id,
        )),
        Message::Peers(Peers::new(entries).unwrap_or_default()),
    ];
    for message in &answer {
        if net::write_message(wr, message).await.is_err() {
            return false;
        }
    }
    true
}

/// The client's next message; `None` when the connection is to end: it
/// closed, a decode error, idle, or a second HELLO. A GIVE's piece is read
/// off and dropped as it comes, never held whole.
async fn next_message(reader: &mut FrameReader<OwnedReadHalf>) -> Option<Message> {
    loop {
        match timeout(IDLE_TIMEOUT, reader.next_frame(1)).await {
            Ok(Ok(Some(Frame::Message(Message::Hello(_))))) => {
                debug!("second HELLO: closing");
                return None;
            }
            Ok(Ok(Some(Frame::Message(message)))) => return Some(message),
            Ok(Ok(Some(Frame::GiveHead { .. }))) => {
                reader.discard_piece();
            }
            Ok(Ok(Some(Frame::GiveEnd { .. }))) => {}
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return None,
        }
    }
}

/// A legacy client at `addr` named its port: record it, and probe it if
/// due. An address that is the server itself is never recorded.
fn announce_legacy(shared: &Arc<Shared>, addr: PeerAddr) {
    let listen = shared.listen;
    let ourselves = addr.port() == listen.port()
        && (addr.ip() == listen.ip()
            || listen.ip().is_unspecified()
            || (addr.class() == AddrClass::Loopback && listen.class() == AddrClass::Loopback));
    if ourselves {
        return;
    }
    let outcome = shared.legacy().announce(addr, Instant::now());
    if outcome.should_probe() {
        spawn_legacy_probe(Arc::clone(shared), addr);
    }
}

fn spawn_legacy_probe(shared: Arc<Shared>, addr: PeerAddr) {
    if !shared.legacy().probe_started(addr, Instant::now()) {
        return;
    }
    let silence = shared.config.legacy_silence;
    let probe = async move {
        // Shares the probe queue with the extended probes.
        let Ok(_permit) = Arc::clone(&shared.probes).acquire_owned().await else {
            return;
        };
        let outcome = legacy::probe(addr.socket_addr(), silence).await;
        let mut table = shared.legacy();
        match outcome {
            Ok(()) => {
                table.probe_succeeded(addr, Instant::now());
                info!("legacy client verified");
            }
            Err(err) => {
                let removed = table.probe_failed(addr, Instant::now());
                info!(%err, removed, "legacy client probe failed: unlisted");
            }
        }
    };
    tokio::spawn(probe.instrument(info_span!("legacy_probe", peer = %addr)));
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn shared(max_connections: usize) -> Arc<Shared> {
        let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
        config.max_connections = max_connections;
        Arc::new(Shared {
            listen: PeerAddr::from(config.listen),
            node_id: NodeId([1; 8]),
            registry: Mutex::new(Registry::new(config.max_peers)),
            legacy: Mutex::new(LegacyEntries::default()),
            closing: watch::Sender::new(false),
            open: OpenSockets::default(),
            refused: AtomicU64::new(0),
            probes: Arc::new(tokio::sync::Semaphore::new(config.max_probes)),
            config,
        })
    }

    fn public(last: u8, port: u16) -> PeerAddr {
        PeerAddr::new(IpAddr::from([203, 0, 113, last]), port)
    }

    #[test]
    fn a_public_ipv6_64_counts_as_one_host_and_a_private_one_does_not() {
        let shared = shared(4 * MAX_CONNECTIONS_PER_IP);
        let v6 = |ip: &str, port: u16| PeerAddr::new(ip.parse().unwrap(), port);
        // Every address of one public /64 draws on the same per-IP limit.
        let held: Vec<_> = (1..=MAX_CONNECTIONS_PER_IP)
            .map(|i| shared.admit(v6(&format!("2606:4700:10::{i:x}"), 7000)))
            .collect();
        assert!(held.iter().all(Result::is_ok));
        assert!(matches!(
            shared.admit(v6("2606:4700:10::ffff:1", 7000)),
            Err(Limit::PerIp)
        ));
        // The next /64 is another host.
        assert!(shared.admit(v6("2606:4700:11::1", 7000)).is_ok());
        // A LAN's hosts share a private /64: each address is its own host.
        let lan: Vec<_> = (1..=MAX_CONNECTIONS_PER_IP + 1)
            .map(|i| shared.admit(v6(&format!("fd00::{i:x}"), 7000)))
            .collect();
        assert!(lan.iter().all(Result::is_ok));
    }

    #[test]
    fn slots_come_back_when_dropped_and_ips_without_one_are_forgotten() {
        let shared = shared(MAX_CONNECTIONS_PER_IP + 1);
        let held: Vec<_> = (5000..)
            .take(MAX_CONNECTIONS_PER_IP)
            .map(|port| shared.admit(public(1, port)))
            .collect();
        assert!(held.iter().all(Result::is_ok));
        assert!(matches!(shared.admit(public(1, 6000)), Err(Limit::PerIp)));
        let other = shared.admit(public(2, 5000));
        assert!(other.is_ok());
        assert!(matches!(shared.admit(public(3, 5000)), Err(Limit::Global)));
        assert_eq!(shared.open.total(), MAX_CONNECTIONS_PER_IP + 1);
        assert_eq!(shared.open.ips(), 2, "refusals leave no entry");

        drop(other);
        assert_eq!(shared.open.ips(), 1);
        drop(held);
        assert_eq!(shared.open.total(), 0);
        assert_eq!(shared.open.ips(), 0);
    }

    #[test]
    fn concurrent_admits_and_drops_never_pass_the_limit() {
        const LIMIT: usize = 3;
        let shared = shared(LIMIT);
        std::thread::scope(|scope| {
            for thread in 0..4u8 {
                let shared = &shared;
                scope.spawn(move || {
                    for round in 0..2000u16 {
                        let slot = shared.admit(public(thread, round));
                        assert!(shared.open.total() <= LIMIT);
                        drop(slot);
                    }
                });
            }
        });
        assert_eq!(shared.open.total(), 0);
        assert_eq!(shared.open.ips(), 0);
    }
}
