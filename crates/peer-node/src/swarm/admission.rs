//! Admission: whether an accepted socket may stay, under the global limit,
//! the inbound share of it, the per-host limit and the ban list. A socket
//! admitted holds a [`SocketSlot`] until its task ends, registered or not.
//!
//! A node whose connection slots are full replaces an inbound connection
//! that never carried data (at most ten a second) rather than refuse a
//! newcomer: the first nodes of a swarm collect inbound connections from
//! every node that dialled them while the swarm formed, and a holder full
//! of those would refuse the fetchers the DHT or widening sends it.

use std::time::Duration;

use wire_format::limits::PIECE_MAX;
use wire_format::{AddrClass, PeerAddr};

use super::state::Swarm;
use super::views::Direction;
use crate::clock::now;
use crate::metrics::Metric;
use crate::net::SocketSlot;

/// An inbound connection at least this old may be replaced by a newcomer
/// when the node is full (a younger one may not have asked yet); the
/// default of `NodeConfig::replace_min_age`.
pub const REPLACE_MIN_AGE: Duration = Duration::from_secs(60);
/// An inbound connection that moved this many bytes or more, both ways
/// together, is never replaced: it has carried data, not only PEERS.
pub const REPLACE_MAX_BYTES: u64 = PIECE_MAX as u64;
/// Least time between two replacements: a flood of newcomers cannot churn
/// the node's idle peers faster than ten a second (the rate a node dials
/// at), while a holder that fetchers come to in bursts (a DHT lookup each)
/// keeps up with them. Outbound connections are never replaced, so a flood
/// cannot cut the node off the peers it chose.
pub const REPLACE_INTERVAL: Duration = Duration::from_millis(100);
/// The close label of a connection replaced by a newcomer.
pub const REPLACED_CLOSE: &str = "replaced";

/// Connections one non-loopback IP may hold (a public IPv6 /64 counts as
/// one IP: [`wire_format::host_key`]).
pub const MAX_CONNECTIONS_PER_IP: usize = 4;

/// Which limit refused a socket.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// `--max-connections`, or the inbound share of it.
    Connections { inbound: usize, outbound: usize },
    /// [`MAX_CONNECTIONS_PER_IP`].
    PerIp,
    /// A banned host.
    Banned,
}

impl Swarm {
    /// Admits a socket accepted from `remote` if the connection limits
    /// allow it, or if they are full and an inbound connection that never
    /// carried data can make room ([`REPLACE_MIN_AGE`], [`REPLACE_MAX_BYTES`],
    /// [`REPLACE_INTERVAL`]; `busy` says which connections have ASKs of
    /// ours waiting: those stay); refused sockets are counted and should be
    /// closed at once.
    pub(crate) fn admit(&self, remote: PeerAddr, busy: impl Fn(u64) -> bool) -> Option<SocketSlot> {
        let local = remote.class() == AddrClass::Loopback && self.config.loopback_is_local;
        let banned = self.is_banned(remote.ip(), None, None);
        let slot = {
            // Lock order: the state, then the socket counts (a slot's release
            // takes only the counts).
            let state = self.state();
            let outbound = state.outbound(None);
            let outbound_to_ip = state.outbound(Some(remote.ip()));
            self.inbound.take(remote.ip(), |inbound, from_ip| {
                let over_global = inbound + outbound >= self.config.max_connections;
                // Outbound slots stay reserved, so inbound floods cannot take every slot.
                let over_inbound = inbound >= self.config.max_inbound();
                let over_ip = !local && from_ip + outbound_to_ip >= MAX_CONNECTIONS_PER_IP;
                if over_global || over_inbound || over_ip || banned {
                    tracing::debug!(peer = %remote, over_global, over_inbound, over_ip, banned, "connection refused by limit");
                    let limit = if over_global || over_inbound {
                        Refusal::Connections { inbound, outbound }
                    } else if over_ip {
                        Refusal::PerIp
                    } else {
                        Refusal::Banned
                    };
                    return Err(limit);
                }
                Ok(())
            })
        };
        let slot = match slot {
            Err(Refusal::Connections { .. }) if self.replace_idle_inbound(&busy) => {
                // The replaced connection gives its slot back once its task
                // ends: until then the node is one over its limit.
                self.inbound.take(remote.ip(), |_, _| Ok::<(), Refusal>(()))
            }
            other => other,
        };
        match slot {
            Ok(slot) => {
                self.metrics.incr(Metric::ConnectionsInboundTotal);
                Some(slot)
            }
            Err(refusal) => {
                self.metrics.incr(Metric::ConnectionsRejectedTotal);
                self.warn_refusal(refusal);
                None
            }
        }
    }

    /// Closes the inbound connection that moved the fewest bytes among those
    /// old enough, not busy and below [`REPLACE_MAX_BYTES`], at most once per
    /// [`REPLACE_INTERVAL`]; true if one was closed.
    fn replace_idle_inbound(&self, busy: &impl Fn(u64) -> bool) -> bool {
        let at = now();
        let mut last = self.last_replaced();
        if last.is_some_and(|t| at.duration_since(t) < self.config.replace_interval) {
            return false;
        }
        let state = self.state();
        let victim = state
            .conns
            .iter()
            .filter(|(_, c)| {
                // Never a legacy peer: closing on one mid-write kills it.
                c.direction == Direction::In
                    && !c.legacy
                    && !c.closer.is_closed()
                    && c.since
                        .elapsed()
                        .is_ok_and(|age| age >= self.config.replace_min_age)
            })
            .map(|(id, c)| {
                let moved = c.bytes_in.load(std::sync::atomic::Ordering::Relaxed)
                    + c.bytes_out.load(std::sync::atomic::Ordering::Relaxed);
                (moved, *id, c)
            })
            .filter(|(moved, id, _)| *moved < REPLACE_MAX_BYTES && !busy(*id))
            .min_by_key(|(moved, id, _)| (*moved, *id));
        let Some((_, _, conn)) = victim else {
            return false;
        };
        conn.closer.close_with(REPLACED_CLOSE);
        *last = Some(at);
        self.metrics.incr(Metric::ConnectionsReplacedTotal);
        true
    }

    /// Tells the operator, at most once a while per limit, that a limit
    /// refuses sockets and what to raise. Bans need no warning: they are
    /// logged when made.
    fn warn_refusal(&self, refusal: Refusal) {
        match refusal {
            Refusal::Connections { inbound, outbound } => {
                if self.refusals.due("max_connections") {
                    tracing::warn!(
                        inbound,
                        outbound,
                        max_connections = self.config.max_connections,
                        max_inbound = self.config.max_inbound(),
                        refused = self.metrics.value(Metric::ConnectionsRejectedTotal),
                        "refusing connections: --max-connections is reached; raise it (and the open-files limit with it) if these are real peers"
                    );
                }
            }
            Refusal::PerIp => {
                if self.refusals.due("max_connections_per_ip") {
                    tracing::warn!(
                        max_per_ip = MAX_CONNECTIONS_PER_IP,
                        refused = self.metrics.value(Metric::ConnectionsRejectedTotal),
                        "refusing connections from one address over its fixed per-address limit (a flood, or many peers behind one NAT); nothing to raise"
                    );
                }
            }
            Refusal::Banned => {}
        }
    }
}
