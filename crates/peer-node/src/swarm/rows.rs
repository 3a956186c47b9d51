//! The swarm as the user sees it: one [`PeerView`] per peer, connected
//! ones by their connection, then known and backing-off candidates, then
//! bans with their reason, digest and end.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use wire_format::NodeId;

use super::state::Swarm;
use super::views::{Direction, PeerSource, PeerState, PeerView};
use crate::clock::now;

impl Swarm {
    /// The table as the API shows it.
    pub fn peer_views(&self) -> Vec<PeerView> {
        let state = self.state();
        let now = now();
        let mut views = Vec::new();
        let mut shown = HashSet::new();
        for c in state.conns.values() {
            let addr = c.dialable.unwrap_or(c.remote);
            shown.insert(addr);
            let source = state.table.get(&addr).map_or(
                if c.direction == Direction::In {
                    PeerSource::Inbound
                } else {
                    PeerSource::Config
                },
                |t| t.source,
            );
            views.push(PeerView {
                addr: addr.socket_addr(),
                node_id: c.node_id,
                direction: Some(c.direction),
                state: PeerState::Connected,
                legacy: c.legacy,
                source,
                connected_since: c.since.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs()),
                bytes_in: c.bytes_in.load(Ordering::Relaxed),
                bytes_out: c.bytes_out.load(Ordering::Relaxed),
                last_error: None,
                ban: None,
            });
        }
        let connected: HashSet<NodeId> = state.conns.values().filter_map(|c| c.node_id).collect();
        for (addr, c) in state.table.iter() {
            // One row per peer: a connected node is shown once, by its connection.
            if shown.contains(addr) || c.node_id.is_some_and(|id| connected.contains(&id)) {
                continue;
            }
            let st = if state.dialing.contains(addr) {
                PeerState::Connecting
            } else if c.next_attempt > now {
                PeerState::Backoff
            } else {
                PeerState::Known
            };
            views.push(PeerView {
                addr: addr.socket_addr(),
                node_id: c.node_id,
                direction: None,
                state: st,
                legacy: c.legacy,
                source: c.source,
                connected_since: None,
                bytes_in: 0,
                bytes_out: 0,
                last_error: c.last_error.clone(),
                ban: None,
            });
        }
        // Banned peers, with the reason, digest and end of the ban.
        for record in self.bans().records(now) {
            let Some(port) = record.target.listen_port else {
                continue;
            };
            views.push(PeerView {
                addr: SocketAddr::new(record.target.ip, port),
                node_id: record.target.node_id,
                direction: None,
                state: PeerState::Banned,
                legacy: false,
                source: PeerSource::Inbound,
                connected_since: None,
                bytes_in: 0,
                bytes_out: 0,
                last_error: Some(record.reason.clone()),
                ban: Some(record.view()),
            });
        }
        views
    }
}
