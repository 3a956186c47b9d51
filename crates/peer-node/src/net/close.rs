//! A connection's close signal, shared by everyone who may end it: its own
//! tasks, the duplicate-connection rule, a ban, the node's shutdown.
//!
//! Uses nothing else of the crate.

use std::sync::OnceLock;

use tokio::sync::watch;

/// Closes a connection from inside the process and remembers why (the
/// first reason given wins), for the close metric.
#[derive(Debug)]
pub struct Closer {
    closed: watch::Sender<bool>,
    reason: OnceLock<&'static str>,
}

impl Default for Closer {
    fn default() -> Self {
        Self {
            closed: watch::Sender::new(false),
            reason: OnceLock::new(),
        }
    }
}

impl Closer {
    /// Closes the connection, recording `reason` unless one was recorded.
    pub fn close_with(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        // Stored even when nobody watches yet.
        self.closed.send_replace(true);
    }

    /// Marks the connection closed without a reason of its own (it ended).
    pub fn mark_closed(&self) {
        self.closed.send_replace(true);
    }

    /// Whether the connection was closed.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Why the process closed it, if it did.
    pub fn reason(&self) -> &'static str {
        self.reason.get().copied().unwrap_or("closed_by_node")
    }

    /// A receiver that sees the close (already closed: its current value).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_reason_wins_and_waiters_wake() {
        let closer = std::sync::Arc::new(Closer::default());
        assert!(!closer.is_closed());
        assert_eq!(closer.reason(), "closed_by_node");
        let waiter = tokio::spawn({
            let closer = std::sync::Arc::clone(&closer);
            async move { closer.closed().await }
        });
        closer.close_with("duplicate");
        closer.close_with("banned");
        waiter.await.unwrap();
        assert!(closer.is_closed());
        assert_eq!(closer.reason(), "duplicate");
    }
}
