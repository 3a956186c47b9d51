//! The bootstrap server's network side: answers each connection with HELLO
//! and up to [`PEX_MAX_ENTRIES`] verified peers, records announcers and
//! verifies them with dial-back probes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use peer_node::conn::{self, FrameReader, PeerKind};
use peer_node::node::bind_listener;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};
use wire_format::limits::{HELLO_TIMEOUT, IDLE_TIMEOUT, PEX_MAX_ENTRIES, SHUTDOWN_GRACE};
use wire_format::{AddrClass, Hello, Message, NodeId, PeerAddr, Peers};

use crate::registry::{self, Registry};

/// File of verified entries in the data dir.
pub const REGISTRY_FILE: &str = "registry.json";
/// How often expired entries are dropped and the registry saved.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);

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
}

#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    node_id: NodeId,
    listen: PeerAddr,
    registry: Mutex<Registry>,
    /// Set at shutdown: every connection closes.
    closing: watch::Sender<bool>,
    /// Connections being served now.
    open: AtomicUsize,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
            node_id: NodeId(rand::random()),
            registry: Mutex::new(registry),
            closing: watch::Sender::new(false),
            open: AtomicUsize::new(0),
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
                    save(&shared);
                }
            })
        };
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let span = info_span!("conn", peer = %remote, dir = "in");
                        tokio::spawn(serve(Arc::clone(&shared), stream, remote).instrument(span));
                    }
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
        maintenance.abort();
        drop(listener);
        // Close every connection, give them the grace period, then save.
        shared.closing.send_replace(true);
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        while shared.open.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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
        let outcome = conn::probe(addr.socket_addr(), shared.node_id, expected).await;
        let mut registry = shared.registry();
        match outcome {
            Ok(conn::ProbeOutcome::Node(seen)) => {
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

async fn serve(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    shared.open.fetch_add(1, Ordering::AcqRel);
    let mut closing = shared.closing.subscribe();
    tokio::select! {
        () = serve_one(&shared, stream, remote) => {}
        _ = closing.wait_for(|closing| *closing) => {}
    }
    shared.open.fetch_sub(1, Ordering::AcqRel);
}

async fn serve_one(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let remote = PeerAddr::from(remote);
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let legacy_allowed = remote.class() == AddrClass::Loopback || shared.config.legacy;
    let kind = match conn::read_first_frame(&mut reader, legacy_allowed, HELLO_TIMEOUT).await {
        Ok(kind) => kind,
        Err(err) => {
            debug!(%err, "handshake failed");
            return;
        }
    };
    let hello = match &kind {
        PeerKind::Extended(hello) => Some(*hello),
        PeerKind::Legacy(_) => None,
    };
    // Record (observed IP, HELLO listen port), never a claimed address.
    let asker = hello
        .and_then(|h| h.listen_port())
        .map(|port| PeerAddr::new(remote.ip(), port));
    let exclude: Vec<PeerAddr> = asker.into_iter().chain([shared.listen]).collect();
    let entries = {
        let registry = shared.registry();
        let mut entries =
            registry.sample(PEX_MAX_ENTRIES, &exclude, Instant::now(), &mut rand::rng());
        if hello.is_none() {
            // A legacy client dials every entry with a blocking connect: loopback only.
            entries.retain(|a| a.class() == AddrClass::Loopback);
        }
        entries
    };
    let answer = [
        Message::Hello(Hello::ours(
            Some(shared.listen.port()),
            false,
            shared.node_id,
        )),
        Message::Peers(Peers::new(entries).unwrap_or_default()),
    ];
    for message in &answer {
        if conn::write_message(&mut wr, message).await.is_err() {
            return;
        }
    }
    if let (Some(hello), Some(addr)) = (hello, asker)
        && !hello.flags().client()
    {
        let outcome = shared
            .registry()
            .announce(addr, hello.node_id(), Instant::now());
        if outcome.should_probe() {
            spawn_probe(Arc::clone(shared), addr, Some(hello.node_id()));
        }
    }
    // The server never closes first except on idle: read until the client
    // closes (a legacy client keeps its connection and writes more later).
    loop {
        match timeout(IDLE_TIMEOUT, reader.next()).await {
            Ok(Ok(Some(Message::Hello(_)))) => {
                debug!("second HELLO: closing");
                return;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
        }
    }
}
