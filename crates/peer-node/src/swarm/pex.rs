//! Peer exchange as the swarm sees it: the PEERS we send (our own address
//! first, then dialable peers connected now, at most [`PEX_MAX_ENTRIES`])
//! and the PEERS we take (filtered, banned entries dropped, a legacy
//! sender's entries as legacy candidates), with their counters.

use std::collections::HashSet;
use std::net::IpAddr;

use rand::seq::SliceRandom;
use wire_format::limits::PEX_MAX_ENTRIES;
use wire_format::{AddrClass, Message, NodeId, PeerAddr, Peers};

use super::state::Swarm;
use super::table::{DropReason, Source};
use crate::clock::now;
use crate::metrics::{Family, Metric};

pub(crate) fn first_peers(
    swarm: &Swarm,
    me: Option<PeerAddr>,
    exclude: Option<NodeId>,
    legacy: bool,
) -> Message {
    let mut entries: Vec<PeerAddr> = me.into_iter().collect();
    entries.extend(swarm.dialable_peers(exclude, legacy));
    entries.dedup();
    entries.truncate(PEX_MAX_ENTRIES);
    Message::Peers(Peers::new(entries).unwrap_or_default())
}
/// Offers a PEERS list to the table: the first [`PEX_MAX_ENTRIES`] are
/// considered, the rest dropped and counted. A legacy sender's entries go
/// through [`PeerTable::offer_legacy`](super::table::PeerTable::offer_legacy).
pub(crate) fn offer(swarm: &Swarm, sender: IpAddr, peers: &Peers, source: Source, legacy: bool) {
    let entries = peers.entries();
    let considered = &entries[..entries.len().min(PEX_MAX_ENTRIES)];
    let excess = entries.len() - considered.len();
    let mapped;
    let considered = if legacy {
        // Only a legacy peer on this host: `loopback_is_local` off makes
        // loopback stand for another host in tests.
        let local = AddrClass::of(sender) == AddrClass::Loopback && swarm.config.loopback_is_local;
        mapped = if local {
            super::table::legacy_candidates(sender, considered)
        } else {
            Vec::new()
        };
        if mapped.is_empty() {
            return;
        }
        &mapped[..]
    } else {
        considered
    };
    let (allowed, banned): (Vec<PeerAddr>, Vec<PeerAddr>) = {
        let bans = swarm.bans();
        considered
            .iter()
            .partition(|entry| !bans.is_addr_banned(**entry, now()))
    };
    let (accepted, mut dropped) = if legacy {
        swarm.state().table.offer_legacy(sender, &allowed, now())
    } else {
        swarm.state().table.offer(sender, &allowed, source, now())
    };
    dropped.extend(banned.iter().map(|_| DropReason::Banned));
    swarm
        .metrics
        .add(Metric::PexEntriesAcceptedTotal, accepted as u64);
    swarm.metrics.add(
        Metric::PexEntriesDroppedTotal,
        (dropped.len() + excess) as u64,
    );
    for reason in dropped {
        swarm
            .metrics
            .incr_labelled(Family::PexEntriesDroppedByReasonTotal, reason.label());
    }
    if excess > 0 {
        swarm.metrics.add_labelled(
            Family::PexEntriesDroppedByReasonTotal,
            "over_50",
            excess as u64,
        );
    }
}

impl Swarm {
    /// Dialable addresses of connected HELLO peers, for PEERS.
    pub(crate) fn dialable_peers(
        &self,
        exclude: Option<NodeId>,
        loopback_only: bool,
    ) -> Vec<PeerAddr> {
        let state = self.state();
        let mut out: Vec<PeerAddr> = state
            .conns
            .values()
            .filter(|c| !c.legacy && c.node_id.is_some() && c.node_id != exclude)
            .filter_map(|c| c.dialable)
            .filter(|a| !loopback_only || a.class() == AddrClass::Loopback)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        out.shuffle(&mut rand::rng());
        out.truncate(PEX_MAX_ENTRIES);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use wire_format::Hello;

    use super::*;
    use crate::config::NodeConfig;
    use crate::swarm::Direction;
    use crate::swarm::state::ConnEntry;

    /// Registers `n` extended peers, each dialable at its own port.
    fn connect_extended(swarm: &Swarm, n: u16) {
        let mut state = swarm.state();
        for i in 0..n {
            let addr = PeerAddr::new([127, 0, 0, 1].into(), 20_000 + i);
            let id = u64::from(i) + 1;
            let hello = Hello::ours(Some(addr.port()), false, NodeId(id.to_le_bytes()));
            state.conns.insert(
                id,
                ConnEntry {
                    node_id: Some(hello.node_id()),
                    remote: addr,
                    dialable: Some(addr),
                    direction: Direction::In,
                    legacy: false,
                    opener: Some(hello.node_id()),
                    since: SystemTime::now(),
                    closer: Arc::default(),
                    bytes_in: Arc::default(),
                    bytes_out: Arc::default(),
                },
            );
        }
    }
    #[tokio::test]
    async fn a_peers_frame_we_send_names_at_most_pex_max_entries_peers() {
        let swarm = || {
            Swarm::new(
                NodeConfig::new("127.0.0.1:0".parse().unwrap()),
                NodeId([9; 8]),
                7001,
                Arc::default(),
                &[],
            )
            .0
        };
        let at_limit = swarm();
        connect_extended(&at_limit, u16::try_from(PEX_MAX_ENTRIES).unwrap());
        assert_eq!(at_limit.dialable_peers(None, false).len(), PEX_MAX_ENTRIES);

        let over = swarm();
        connect_extended(&over, u16::try_from(PEX_MAX_ENTRIES + 1).unwrap());
        let sent = over.dialable_peers(None, false);
        assert_eq!(sent.len(), PEX_MAX_ENTRIES);
        assert_eq!(
            sent.iter().collect::<HashSet<_>>().len(),
            PEX_MAX_ENTRIES,
            "no repeats"
        );
    }
}
