//! `bootstrap-server`: runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bootstrap_server::registry::DEFAULT_MAX_PEERS;
use bootstrap_server::server::{
    MAX_CONCURRENT_PROBES, MAX_CONNECTIONS_PER_IP, MAX_OPEN_CONNECTIONS,
};
use bootstrap_server::{Server, ServerConfig};
use clap::Parser;
use peer_node::process::{RESERVED_FDS, connections_within_open_files, open_files_limit};
use tracing::{info, warn};

/// Connections the server may hold: [`MAX_OPEN_CONNECTIONS`], or fewer when
/// the open-files limit would run out first.
fn connection_limit(open_files: Option<usize>) -> usize {
    connections_within_open_files(MAX_OPEN_CONNECTIONS, MAX_CONCURRENT_PROBES, open_files)
}

/// Bootstrap server of the p2p piece exchange.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Listen address.
    #[arg(long, env = "P2P_LISTEN", default_value = "[::]:7000")]
    listen: SocketAddr,
    /// Where verified entries are kept across restarts.
    #[arg(long, env = "P2P_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Registry capacity.
    #[arg(long, env = "P2P_MAX_PEERS", default_value_t = DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Treat non-loopback clients that never send HELLO as legacy.
    #[arg(long, env = "P2P_LEGACY")]
    legacy: bool,
    /// Also run a Mainline DHT node, on UDP at the listen port's number:
    /// the entry point of a private DHT that nodes join with
    /// `--dht-bootstrap` this host and port.
    #[arg(long, env = "P2P_DHT")]
    dht: bool,
    /// DHT node `host:port` the server's DHT node joins through (repeatable;
    /// default none: it is the root of its swarm's private DHT).
    #[arg(
        long,
        env = "P2P_DHT_BOOTSTRAP",
        value_delimiter = ',',
        requires = "dht"
    )]
    dht_bootstrap: Vec<String>,
}

async fn run(args: Args) -> Result<(), String> {
    // Installed before anything else, so an early signal is a clean stop.
    let shutdown = peer_node::process::shutdown_signal();
    // The same rules as a node's data dir: created 0700, refused when
    // another user owns it or others may write it.
    let dir = match &args.data_dir {
        Some(path) => Some(peer_node::datadir::DataDir::prepare(path).map_err(|e| e.to_string())?),
        None => None,
    };
    let _lock = match &dir {
        Some(dir) => Some(piece_store::DirLock::acquire(dir.path()).map_err(|e| e.to_string())?),
        None => None,
    };
    let max_connections = connection_limit(open_files_limit());
    if max_connections < MAX_OPEN_CONNECTIONS {
        warn!(
            max_connections,
            "the open-files limit allows only {max_connections} connections (of {MAX_OPEN_CONNECTIONS}); raise it (ulimit -n {}) for a public server",
            MAX_OPEN_CONNECTIONS + MAX_CONCURRENT_PROBES + RESERVED_FDS
        );
    }
    let server = Server::bind(ServerConfig {
        data_dir: args.data_dir.clone(),
        max_peers: args.max_peers,
        legacy: args.legacy,
        max_connections,
        ..ServerConfig::new(args.listen)
    })
    .await
    .map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    info!(
        listen = %addr,
        max_peers = args.max_peers,
        max_connections,
        max_connections_per_ip = MAX_CONNECTIONS_PER_IP,
        "bootstrap-server started; worst-case registry memory for max_peers {}: {} MiB",
        args.max_peers,
        bootstrap_server::registry::worst_case_bytes(args.max_peers) >> 20
    );
    // Kept until the server stops: dropping it stops the DHT node.
    let _dht = if args.dht {
        let bind = match addr.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Some(ip),
            _ => None,
        };
        let dht = if args.dht_bootstrap.is_empty() {
            peer_node::dht::DhtNode::start_root(bind, addr.port()).await
        } else {
            let config = peer_node::dht::DhtConfig {
                bootstrap: args.dht_bootstrap.clone(),
                port: Some(addr.port()),
                bind,
            };
            peer_node::dht::DhtNode::start(&config, addr.port()).await
        }
        .map_err(|e| e.to_string())?;
        info!(
            udp_port = dht.port(),
            joined_through = %if args.dht_bootstrap.is_empty() { "nobody (the root of a private DHT)".to_owned() } else { args.dht_bootstrap.join(", ") },
            "DHT node started (server mode, IPv4 only); nodes join it with --dht --dht-bootstrap HOST:{}",
            dht.port()
        );
        Some(dht)
    } else {
        None
    };
    server.run(shutdown).await;
    Ok(())
}

fn main() -> ExitCode {
    peer_node::process::init_logging();
    let args = Args::parse();
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("bootstrap-server: cannot start the async runtime");
        return ExitCode::from(1);
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bootstrap-server: {err}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_room_for_probes_under_the_open_files_limit() {
        assert_eq!(connection_limit(None), MAX_OPEN_CONNECTIONS);
        let enough = MAX_OPEN_CONNECTIONS + MAX_CONCURRENT_PROBES + RESERVED_FDS;
        assert_eq!(connection_limit(Some(enough)), MAX_OPEN_CONNECTIONS);
        assert_eq!(connection_limit(Some(enough - 1)), MAX_OPEN_CONNECTIONS - 1);
        assert_eq!(
            connection_limit(Some(1024)),
            1024 - MAX_CONCURRENT_PROBES - RESERVED_FDS
        );
        assert_eq!(connection_limit(Some(10)), 1, "never zero");
        // This process's limit, where it can be read, is parsed.
        if std::path::Path::new("/proc/self/limits").exists() {
            assert!(open_files_limit().is_some_and(|n| n > 0));
        }
    }
}
