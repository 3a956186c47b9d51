//! What both programs (`peer-node`, `bootstrap-server`) do the same way
//! around their server: logging to stderr and waiting for SIGINT/SIGTERM.

/// Logs to stderr with `RUST_LOG`-style filtering (default `info`), in
/// colour only on a terminal.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// A future that resolves at the first SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed when this function is called, not when the
/// future is first polled: call it first thing, so a signal that arrives
/// while the program is still starting up shuts it down cleanly instead of
/// killing it. Call it within a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without handlers, wait for Ctrl-C the portable way.
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
