//! Live connections as peers: registering one past its HELLO under the
//! duplicate-connection rule (docs/PROTOCOL.md §3: the connection opened by
//! the lower node_id survives), removing it, and the dial-back probe that
//! makes an inbound peer dialable.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use tracing::debug;
use wire_format::{Hello, NodeId, PeerAddr};

use super::state::{ConnEntry, Swarm};
use super::table::Source;
use super::views::Direction;
use crate::clock::now;
use crate::metrics::Metric;
use crate::net::{self, Closer};

/// The close label of a connection the duplicate rule closed.
pub const DUPLICATE_CLOSE: &str = "duplicate";

/// Decides whether a new connection to a peer survives an existing one:
/// the connection opened by the lower node_id wins; between two opened by
/// the same node the older one stays.
pub fn keep_new(existing_opener: Option<NodeId>, new_opener: NodeId) -> bool {
    match existing_opener {
        Some(old) if old != new_opener => new_opener < old,
        _ => false,
    }
}

/// A connection past its HELLO, as the swarm records it.
#[derive(Debug)]
pub(crate) struct NewConn {
    pub(crate) id: u64,
    pub(crate) remote: PeerAddr,
    pub(crate) direction: Direction,
    /// The address we dialled, for outbound connections.
    pub(crate) dialed: Option<PeerAddr>,
    /// The peer's HELLO; `None` for a legacy peer.
    pub(crate) hello: Option<Hello>,
    pub(crate) closer: Arc<Closer>,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: Arc<AtomicU64>,
}

impl Swarm {
    /// Registers the connection, or returns false if it loses the
    /// duplicate rule (the caller closes it). A winner closes the loser.
    pub(crate) fn register(&self, conn: NewConn) -> bool {
        let node_id = conn.hello.map(|h| h.node_id());
        let opener = match conn.direction {
            Direction::Out => Some(self.node_id),
            Direction::In => node_id,
        };
        let mut state = self.state();
        if let Some(addr) = conn.dialed {
            state.table.dial_succeeded(&addr, node_id);
        }
        if let (Some(peer), Some(opener)) = (node_id, opener) {
            let existing = state
                .conns
                .iter()
                .find(|(_, c)| c.node_id == Some(peer))
                .map(|(id, c)| (*id, c.opener, Arc::clone(&c.closer)));
            if let Some((old_id, old_opener, old_closer)) = existing {
                self.metrics.incr(Metric::DuplicateConnectionsTotal);
                if !keep_new(old_opener, opener) {
                    return false;
                }
                old_closer.close_with(DUPLICATE_CLOSE);
                if state.conns.remove(&old_id).is_some() {
                    self.metrics.decr(Metric::ConnectionsOpen);
                }
            }
        }
        if let Some(addr) = conn.dialed {
            // Its entry counts it as outbound from now on; left in `dialing`
            // too, it would count twice against the outbound target.
            state.dialing.remove(&addr);
        }
        state.conns.insert(
            conn.id,
            ConnEntry {
                node_id,
                remote: conn.remote,
                // What we dialled is dialable, legacy or not; an inbound peer
                // becomes dialable once its dial-back probe succeeds.
                dialable: conn.dialed,
                direction: conn.direction,
                legacy: conn.hello.is_none(),
                opener,
                since: SystemTime::now(),
                closer: conn.closer,
                bytes_in: conn.bytes_in,
                bytes_out: conn.bytes_out,
            },
        );
        drop(state);
        self.metrics.incr(Metric::ConnectionsOpen);
        true
    }

    /// Forgets a registered connection that ended.
    pub(crate) fn remove(&self, id: u64) {
        if self.state().conns.remove(&id).is_some() {
            self.metrics.decr(Metric::ConnectionsOpen);
        }
    }

    /// Starts the dial-back probe that makes an inbound peer dialable.
    pub(crate) fn probe_inbound(self: &Arc<Self>, conn_id: u64, remote: PeerAddr, hello: Hello) {
        let Some(port) = hello.listen_port() else {
            return;
        };
        let addr = PeerAddr::new(remote.ip(), port);
        let swarm = Arc::clone(self);
        tokio::spawn(async move {
            swarm.metrics.incr(Metric::ProbesTotal);
            match net::probe(addr.socket_addr(), swarm.node_id, Some(hello.node_id())).await {
                Ok(_) => {
                    let mut state = swarm.state();
                    if let Some(c) = state.conns.get_mut(&conn_id) {
                        c.dialable = Some(addr);
                    }
                    state
                        .table
                        .insert_trusted(addr, Source::Inbound, Some(hello.node_id()), now());
                }
                Err(err) => {
                    swarm.metrics.incr(Metric::ProbeFailuresTotal);
                    debug!(%addr, %err, "dial-back probe failed");
                }
            }
        });
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
