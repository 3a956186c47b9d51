//! Choosing whom to dial: the dial rate (a token bucket of connects the
//! dialler and widening fetches share) and the dialler's tick, which keeps
//! the outbound target filled from the table.
//!
//! The swarm only chooses: a chosen address is reserved in `dialing` and
//! sent on the dial queue, and whoever runs it reports back through
//! [`Swarm::dial_ended`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wire_format::limits::DIAL_RATE_PER_SEC;
use wire_format::{NodeId, PeerAddr};

use super::state::Swarm;
use crate::clock::now;
use crate::metrics::Metric;

/// How often the dialler looks for work.
const DIAL_TICK: Duration = Duration::from_millis(100);

impl Swarm {
    /// Chooses up to `max` table candidates that are due, not banned, and
    /// neither connected (by address or node id) nor being dialled, within
    /// the dial rate, and queues them for dialling; returns how many. The
    /// dialler and a widening fetch both pick candidates, and share the
    /// rate, here.
    pub(crate) fn dial_due(&self, max: usize) -> usize {
        self.dial_candidates(max, &HashSet::new(), false).queued
    }

    /// Dials up to `max` more candidates for a fetch widening its search,
    /// never one of `asked` (peers it asked already).
    pub(crate) fn widen(&self, max: usize, asked: &HashSet<PeerAddr>) -> Widened {
        self.dial_candidates(max, asked, true)
    }

    fn dial_candidates(&self, max: usize, exclude: &HashSet<PeerAddr>, widen: bool) -> Widened {
        let mut state = self.state();
        let mut skip: HashSet<PeerAddr> = state.dialing.clone();
        skip.extend(exclude);
        skip.extend(state.conns.values().filter_map(|c| c.dialable));
        let connected: HashSet<NodeId> = state.conns.values().filter_map(|c| c.node_id).collect();
        let at = now();
        {
            let bans = self.bans();
            for (addr, c) in state.table.iter() {
                if c.node_id.is_some_and(|id| connected.contains(&id))
                    || bans.is_addr_banned(*addr, at)
                {
                    skip.insert(*addr);
                }
            }
        }
        // A widening also learns how many candidates are left for its
        // next rounds; the dialler only needs its share.
        let due = if widen {
            state.table.widening(at, &skip)
        } else {
            state.table.due(at, &skip, max)
        };
        let granted = state.dial_budget.take(max.min(due.len()), at);
        let mut dialled = Vec::new();
        for &addr in due.iter().take(granted) {
            if self.dials.try_send(addr).is_ok() {
                state.dialing.insert(addr);
                if widen {
                    state.widen_dials.insert(addr);
                }
                dialled.push(addr);
            }
        }
        let queued = dialled.len();
        state.dial_budget.refund(granted - queued);
        Widened {
            queued,
            left: due.len() - queued,
            dialled,
        }
    }

    /// Dials addresses a DHT lookup returned, in order, as a widening's
    /// (they close once they said no, or idle). They do not enter the peer
    /// table: the DHT vouches for none of them, and a connection that comes
    /// up spreads its address by PEX anyway. Skips those banned, this
    /// node's own, connected or being dialled; stops at the dial rate or the
    /// connection limit. Returns how many of the first addresses it handled
    /// (dialled or skipped): the caller offers the rest again later.
    pub(crate) fn dial_found(&self, addrs: &[PeerAddr]) -> usize {
        let mut state = self.state();
        let at = now();
        let mut handled = 0;
        for addr in addrs {
            let connected = state.conns.values().any(|c| c.dialable == Some(*addr));
            if connected
                || state.dialing.contains(addr)
                || state.table.is_ours(addr)
                || self.bans().is_addr_banned(*addr, at)
            {
                handled += 1;
                continue;
            }
            let open = self.inbound.total() + state.outbound(None) + state.dialing.len();
            if open >= self.config.max_connections || state.dial_budget.take(1, at) == 0 {
                break;
            }
            if self.dials.try_send(*addr).is_err() {
                state.dial_budget.refund(1);
                break;
            }
            state.dialing.insert(*addr);
            state.widen_dials.insert(*addr);
            self.metrics.incr(Metric::DhtDialsTotal);
            handled += 1;
        }
        handled
    }

    /// A peer dialled for a widening said it does not hold what was looked
    /// for: true if its connection should close now (it was dialled only
    /// for that, and the node has more outbound connections than its
    /// target), and then it is no longer counted as a widening's.
    pub(crate) fn release_widen_dial(&self, addr: &PeerAddr) -> bool {
        let mut state = self.state();
        if !state.widen_dials.contains(addr) || state.outbound(None) <= self.config.target_outbound
        {
            return false;
        }
        state.widen_dials.remove(addr);
        true
    }

    /// Whether `addr` was dialled for a widening and is still counted so.
    pub(crate) fn is_widen_dial(&self, addr: &PeerAddr) -> bool {
        self.state().widen_dials.contains(addr)
    }

    /// Peers in the table.
    pub(crate) fn known_peers(&self) -> usize {
        self.state().table.len()
    }

    /// A dial chosen by [`dial_due`](Self::dial_due) has ended: its
    /// connection closed, or it failed with `error` (then the address backs
    /// off).
    pub(crate) fn dial_ended(&self, addr: &PeerAddr, error: Option<String>) {
        let mut state = self.state();
        if let Some(error) = error {
            state.table.dial_failed(addr, error, now());
        }
        state.dialing.remove(addr);
        state.widen_dials.remove(addr);
    }
}

/// What one widening round dialled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Widened {
    /// Dials queued now.
    pub(crate) queued: usize,
    /// Candidates due and not asked that were not dialled this time (the
    /// round's share or the dial rate held them back).
    pub(crate) left: usize,
    /// The addresses queued: a fetch never dials one twice, even if its
    /// dial failed before it could be asked.
    pub(crate) dialled: Vec<PeerAddr>,
}

pub(crate) async fn run_dialler(swarm: Arc<Swarm>, mut stop: watch::Receiver<bool>) {
    let per_tick = (DIAL_RATE_PER_SEC as usize * DIAL_TICK.as_millis() as usize / 1000).max(1);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(DIAL_TICK) => {}
        }
        let want = {
            let state = swarm.state();
            let outbound = state.outbound(None) + state.dialing.len();
            if swarm.inbound.total() + state.outbound(None) >= swarm.config.max_connections {
                0
            } else {
                swarm
                    .config
                    .target_outbound
                    .saturating_sub(outbound)
                    .min(per_tick)
            }
        };
        if want > 0 {
            swarm.dial_due(want);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::budget::{DIAL_QUEUE, DialBudget};
    use super::*;

    // On the paused clock: the dial rate refills and backoffs end only as
    // the test's own sleeps advance time.
    #[tokio::test(start_paused = true)]
    async fn widening_queues_at_most_max_candidates_and_never_a_banned_one() {
        const MAX: usize = 8;
        let mut config = crate::config::NodeConfig::new(([127, 0, 0, 1], 0).into());
        config.target_outbound = 0;
        let (swarm, mut dials) = Swarm::new(config, NodeId([7; 8]), 7001, Arc::default(), &[]);
        let candidates: Vec<PeerAddr> = (0..MAX + 5)
            .map(|n| PeerAddr::new([127, 0, 0, 1].into(), 20_000 + u16::try_from(n).unwrap()))
            .collect();
        for &addr in &candidates {
            swarm.add_candidate(addr);
        }
        // One of them lied once.
        let liar = candidates[0];
        swarm.ban(liar.ip(), Some(liar.port()), None, "test".into(), None);
        let none = HashSet::new();
        assert_eq!(swarm.widen(MAX, &none).queued, MAX);
        let mut queued = Vec::new();
        while let Ok(addr) = dials.try_recv() {
            queued.push(addr);
        }
        assert_eq!(queued.len(), MAX, "every dial granted is queued once");
        assert!(!queued.contains(&liar));
        assert!(queued.iter().all(|a| swarm.state().dialing.contains(a)));
        // The rest, less the banned one and those being dialled, as fast as
        // the dial rate (shared with the dialler) allows; each dial that
        // fails backs its address off, so none is queued twice.
        for addr in &queued {
            swarm.dial_ended(addr, Some("refused".into()));
        }
        let rest = candidates.len() - 1 - MAX;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while queued.len() < MAX + rest && tokio::time::Instant::now() < deadline {
            swarm.widen(MAX, &none);
            while let Ok(addr) = dials.try_recv() {
                swarm.dial_ended(&addr, Some("refused".into()));
                queued.push(addr);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let distinct: HashSet<_> = queued.iter().collect();
        assert_eq!(distinct.len(), queued.len(), "a candidate queued twice");
        assert_eq!(
            queued.len(),
            candidates.len() - 1,
            "every candidate but the liar"
        );
        assert!(!queued.contains(&liar) && !swarm.state().dialing.contains(&liar));
        assert!(swarm.state().dialing.is_empty());
    }

    #[test]
    fn a_full_dial_queue_refunds_the_dial_and_leaves_the_address_free() {
        let mut config = crate::config::NodeConfig::new(([127, 0, 0, 1], 0).into());
        config.target_outbound = 0;
        let (swarm, _dials) = Swarm::new(config, NodeId([7; 8]), 7001, Arc::default(), &[]);
        let port = |n: usize| 20_000 + u16::try_from(n).unwrap();
        for n in 0..=DIAL_QUEUE {
            swarm.add_candidate(PeerAddr::new([127, 0, 0, 1].into(), port(n)));
        }
        // The bucket holds a second's worth, as many as the queue: all queued.
        assert_eq!(swarm.dial_due(DIAL_QUEUE + 1), DIAL_QUEUE);
        assert_eq!(swarm.state().dialing.len(), DIAL_QUEUE);
        // Queue full: a dial chosen now is not queued, not marked dialling.
        let mut state = swarm.state();
        state.dial_budget = DialBudget::new(now());
        drop(state);
        assert_eq!(swarm.dial_due(1), 0);
        assert_eq!(swarm.state().dialing.len(), DIAL_QUEUE);
    }
}
