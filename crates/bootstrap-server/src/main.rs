//! `bootstrap-server`: runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bootstrap_server::registry::DEFAULT_MAX_PEERS;
use bootstrap_server::{Server, ServerConfig};
use clap::Parser;
use tracing::info;

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
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(args: Args) -> Result<(), String> {
    if let Some(dir) = &args.data_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create data dir {}: {e}", dir.display()))?;
    }
    let _lock = match &args.data_dir {
        Some(dir) => Some(piece_store::DirLock::acquire(dir).map_err(|e| e.to_string())?),
        None => None,
    };
    let server = Server::bind(ServerConfig {
        listen: args.listen,
        data_dir: args.data_dir.clone(),
        max_peers: args.max_peers,
        legacy: args.legacy,
    })
    .await
    .map_err(|e| e.to_string())?;
    let addr = server.local_addr().map_err(|e| e.to_string())?;
    info!(
        listen = %addr,
        max_peers = args.max_peers,
        "bootstrap-server started; worst-case registry memory ≈ max_peers {} x 300 B = {} MiB",
        args.max_peers,
        (args.max_peers * 300) >> 20
    );
    server.run(shutdown_signal()).await;
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
