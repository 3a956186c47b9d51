//! `peer-node`: runs one node until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

/// Freed piece buffers are reused instead of returned to the kernel and
/// faulted in (and zeroed) again for the next piece.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use peer_node::datadir::{DataDir, default_path};
use peer_node::node::{DEFAULT_MAX_CONNECTIONS, Node, NodeConfig};
use piece_store::{DiskStore, DiskStoreConfig, FsyncPolicy};
use tracing::{error, info, warn};

/// Descriptors the node may hold besides its peer connections: pieces being
/// read for serving (the serving budget's 64), verified or streamed (40),
/// group-committed (64), and API connections (24).
const STORE_AND_API_FDS: usize = 192;

/// A peer of the p2p piece exchange.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to accept peers on.
    #[arg(long, env = "P2P_LISTEN", default_value = "[::]:7001")]
    listen: SocketAddr,
    /// Bootstrap server `host:port` (repeatable).
    #[arg(long, env = "P2P_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Data directory (default: $P2P_DATA_DIR, else the platform data dir).
    #[arg(long, env = "P2P_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Local API address (loopback only unless told otherwise).
    #[arg(long, env = "P2P_API", default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// Global connection limit.
    #[arg(long, env = "P2P_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Accept private addresses from public senders.
    #[arg(long, env = "P2P_ALLOW_PRIVATE")]
    allow_private: bool,
    /// Treat non-loopback peers that never send HELLO as legacy peers.
    #[arg(long, env = "P2P_LEGACY")]
    legacy: bool,
    /// Largest size of the piece store (e.g. 10GiB); cached pieces are
    /// evicted least-recently-used to stay under it.
    #[arg(long, env = "P2P_MAX_STORE", default_value = "10GiB", value_parser = parse_size)]
    max_store: u64,
    /// When stored pieces are forced to disk: always, batch or never.
    #[arg(long, env = "P2P_FSYNC", default_value = "batch")]
    fsync: FsyncPolicy,
    /// Hash every piece on every read, not only the first after a start.
    #[arg(long, env = "P2P_VERIFY_ON_READ")]
    verify_on_read: bool,
    /// Global limit on piece bytes given to peers (e.g. 50MiB/s; default unlimited).
    #[arg(long, env = "P2P_MAX_UPLOAD_RATE", default_value = "unlimited", value_parser = parse_rate)]
    max_upload_rate: Rate,
    /// Global limit on piece bytes fetched from peers (default unlimited).
    #[arg(long, env = "P2P_MAX_DOWNLOAD_RATE", default_value = "unlimited", value_parser = parse_rate)]
    max_download_rate: Rate,
    /// Total deadline of one piece fetch, in seconds.
    #[arg(long, env = "P2P_FETCH_TIMEOUT", default_value_t = wire_format::limits::FETCH_TIMEOUT.as_secs_f64())]
    fetch_timeout: f64,
    /// Run a BitTorrent Mainline DHT node and use it to find holders; it
    /// publishes which files and loose pieces this node holds (off by
    /// default).
    #[arg(long, env = "P2P_DHT")]
    dht: bool,
    /// DHT node `host:port` to join through (repeatable; replaces the
    /// public Mainline routers, so a private swarm stays private).
    #[arg(
        long,
        env = "P2P_DHT_BOOTSTRAP",
        value_delimiter = ',',
        requires = "dht"
    )]
    dht_bootstrap: Vec<String>,
    /// UDP port of the DHT node (default: the listen port's number).
    #[arg(long, env = "P2P_DHT_PORT", requires = "dht")]
    dht_port: Option<u16>,
}

/// A rate flag's value: bytes per second, `None` for unlimited.
#[derive(Debug, Clone, Copy)]
struct Rate(Option<u64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    peer_node::ratelimit::parse_rate(s)
        .map(Rate)
        .map_err(|e| e.to_string())
}

fn parse_size(s: &str) -> Result<u64, String> {
    peer_node::ratelimit::parse_size(s).map_err(|e| e.to_string())
}

async fn run(args: Args) -> Result<(), String> {
    // Installed before anything else, so an early signal is a clean stop.
    let shutdown = peer_node::process::shutdown_signal();
    let dir_path = match args.data_dir {
        Some(path) => path,
        None => default_path().map_err(|e| e.to_string())?,
    };
    let dir = DataDir::prepare(&dir_path).map_err(|e| e.to_string())?;
    // The store lives in the data dir and holds its lock (`DATA/lock`):
    // two nodes on one data dir is a clear error, and tools trust
    // `api-addr` only while that lock is held.
    let mut store_config = DiskStoreConfig::new(args.max_store);
    store_config.fsync = args.fsync;
    store_config.verify_on_read = args.verify_on_read;
    let store = DiskStore::open(dir.path(), store_config).map_err(|e| e.to_string())?;
    let token = dir.load_or_create_token().map_err(|e| e.to_string())?;
    let mut config = NodeConfig::new(args.listen);
    config.bootstrap = args.bootstrap;
    config.peers_file = Some(dir.peers_path());
    // Under a low open-files limit, fewer connections: a node out of
    // descriptors fails its accepts and its store's reads instead.
    let open_files = peer_node::process::open_files_limit();
    config.max_connections = peer_node::process::connections_within_open_files(
        args.max_connections,
        STORE_AND_API_FDS,
        open_files,
    );
    if config.max_connections < args.max_connections {
        warn!(
            max_connections = config.max_connections,
            "the open-files limit ({}) allows only {} connections of --max-connections {}; raise it (ulimit -n {})",
            open_files.unwrap_or_default(),
            config.max_connections,
            args.max_connections,
            args.max_connections + STORE_AND_API_FDS + peer_node::process::RESERVED_FDS
        );
    }
    config.allow_private = args.allow_private;
    config.legacy = args.legacy;
    config.max_upload_rate = args.max_upload_rate.0;
    config.max_download_rate = args.max_download_rate.0;
    if !(args.fetch_timeout.is_finite() && args.fetch_timeout > 0.0) {
        return Err(format!(
            "--fetch-timeout must be a positive number of seconds, got {}",
            args.fetch_timeout
        ));
    }
    config.fetch_timeout = std::time::Duration::from_secs_f64(args.fetch_timeout);
    if args.dht {
        config.dht = Some(peer_node::dht::DhtConfig {
            bootstrap: args.dht_bootstrap,
            port: args.dht_port,
            bind: None,
        });
    }
    for server in &config.bootstrap {
        if tokio::net::lookup_host(server.as_str()).await.is_err() {
            return Err(format!(
                "bootstrap address {server} does not resolve: check the host name and port"
            ));
        }
    }
    let config_max_connections = config.max_connections;
    let node = Node::bind_with_store(config, Arc::new(store))
        .await
        .map_err(|e| e.to_string())?;
    let api_listener = tokio::net::TcpListener::bind(args.api).await.map_err(|e| {
        format!(
            "cannot listen for the API on {}: {e} (use --api to pick another)",
            args.api
        )
    })?;
    let api_addr = api_listener.local_addr().map_err(|e| e.to_string())?;
    dir.write_api_addr(api_addr).map_err(|e| e.to_string())?;
    // Per connection: one frame being read, and its queue of short control
    // frames (PEERS are written directly, never queued). Node-wide: pieces
    // being served, asked for, and verified or written.
    let per_conn = wire_format::limits::MAX_FRAME_BYTES
        + peer_node::node::WRITE_QUEUE_FRAMES * size_of::<wire_format::Message>();
    let node_wide = peer_node::node::SERVE_BUDGET_BYTES
        + peer_node::node::FETCH_BUDGET_BYTES
        + (peer_node::node::VERIFY_QUEUE_PIECES + peer_node::node::STREAMING_GIVES_MAX)
            * wire_format::limits::PIECE_MAX;
    info!(
        listen = %node.local_addr(),
        api = %api_addr,
        data_dir = %dir.path().display(),
        node_id = %node.shared().node_id(),
        "peer-node started; worst-case memory = max_connections {} x (one frame {} + write queue {} x {}) + serving {} MiB + fetching {} MiB + verifying ({} + {} streamed) x 1 MiB = {} MiB; fds ≈ max_connections + {}",
        config_max_connections,
        wire_format::limits::MAX_FRAME_BYTES,
        peer_node::node::WRITE_QUEUE_FRAMES,
        size_of::<wire_format::Message>(),
        peer_node::node::SERVE_BUDGET_BYTES >> 20,
        peer_node::node::FETCH_BUDGET_BYTES >> 20,
        peer_node::node::VERIFY_QUEUE_PIECES,
        peer_node::node::STREAMING_GIVES_MAX,
        (config_max_connections * per_conn + node_wide) >> 20,
        STORE_AND_API_FDS + peer_node::process::RESERVED_FDS,
    );
    let shared = node.shared();
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(peer_node::api::serve(
        api_listener,
        token,
        Arc::new(peer_node::api::NodeApi(Arc::clone(&shared)))
            as Arc<dyn peer_node::api::ApiBackend>,
        async move {
            let _ = api_stopped.await;
        },
    ));
    node.run(shutdown).await;
    let _ = stop_api.send(());
    let _ = api.await;
    let _ = dir.remove_api_addr();
    info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    peer_node::process::init_logging();
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(err) => {
            error!(%err, "cannot start the async runtime");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err}");
            eprintln!("peer-node: {err}");
            ExitCode::from(2)
        }
    }
}
