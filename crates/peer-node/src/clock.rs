//! The node's one clock.
//!
//! Uses nothing else of the crate.

use std::time::Instant;

/// The current instant on the runtime's clock: the real clock in
/// production, and tokio's paused clock in tests, so every window, backoff
/// and deadline of the node moves on one clock.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
