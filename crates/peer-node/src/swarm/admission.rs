//! Admission: whether an accepted socket may stay, under the global limit,
//! the inbound share of it, the per-host limit and the ban list. A socket
//! admitted holds a [`SocketSlot`] until its task ends, registered or not.

use wire_format::{AddrClass, PeerAddr};

use super::state::Swarm;
use crate::metrics::Metric;
use crate::net::SocketSlot;

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
    /// allow it; refused sockets are counted and should be closed at once.
    pub(crate) fn admit(&self, remote: PeerAddr) -> Option<SocketSlot> {
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
