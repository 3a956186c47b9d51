//! What both programs (`peer-node`, `bootstrap-server`) do the same way
//! around their server: logging to stderr, waiting for SIGINT/SIGTERM, and
//! the bounded wait for connections to close at shutdown.
//!
//! Uses nothing else of the crate.

use std::time::Duration;

use wire_format::limits::SHUTDOWN_GRACE;

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

/// How often [`wait_for_grace`] looks again.
const GRACE_POLL: Duration = Duration::from_millis(10);

/// Waits, after a shutdown has told every connection to close, until
/// `all_closed` holds or [`SHUTDOWN_GRACE`] has passed (on the runtime's
/// clock); returns whether everything closed in time.
pub async fn wait_for_grace(mut all_closed: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    loop {
        if all_closed() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(GRACE_POLL).await;
    }
}

/// Descriptors a program keeps free besides its connections: the listener,
/// the data dir's lock and files, the API, the runtime's own.
pub const RESERVED_FDS: usize = 64;

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None`
/// where it cannot be read or is unlimited.
pub fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The connections a program may hold under the open-files limit: `wanted`,
/// or fewer when the limit would run out first (accept would then fail in a
/// loop instead of refusing cleanly), never less than 1. `other` is what
/// else it keeps open besides [`RESERVED_FDS`].
pub fn connections_within_open_files(wanted: usize, other: usize, limit: Option<usize>) -> usize {
    match limit {
        Some(limit) => limit
            .saturating_sub(other + RESERVED_FDS)
            .clamp(1, wanted.max(1)),
        None => wanted,
    }
}
