//! Announcing: the node tells the DHT it holds each pinned root (a file's
//! manifest or a loose piece) whose root piece it holds, never the pieces
//! inside a file (a DHT node keeps about 2,000 keys; a file of a GiB has a
//! thousand pieces), within [`DHT_ANNOUNCE_RATE_PER_SEC`], again every
//! [`DHT_REANNOUNCE_INTERVAL`] before the records expire.

//!
//! The schedule is here; the node's task that runs it is `node::dht`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use wire_format::PieceId;

/// How often a root is announced again: Mainline DHT nodes forget an
/// announcement after about 30 minutes (BEP 5 leaves it to them; common
/// implementations use 30 min), so 20 min keeps it alive with room for a
/// slow round.
pub const DHT_REANNOUNCE_INTERVAL: Duration = Duration::from_secs(20 * 60);
/// Announces started per second at most, on average: each is a query of
/// a few dozen UDP packets. With [`DHT_REANNOUNCE_INTERVAL`] it keeps up to
/// 4,800 roots announced; past that, the longest-unannounced go first and
/// each waits its turn.
pub const DHT_ANNOUNCE_RATE_PER_SEC: u32 = 4;
/// Announces that may start at once after a quiet spell (a newly pinned
/// file goes out at once).
pub const DHT_ANNOUNCE_BURST: u32 = 16;
/// How soon a failed announce is tried again.
pub const DHT_ANNOUNCE_RETRY: Duration = Duration::from_secs(15);
/// How often the announcer looks at the pinned roots.
pub const DHT_ANNOUNCE_TICK: Duration = Duration::from_secs(1);

/// Which roots are due for an announce, and the announce rate.
#[derive(Debug)]
pub struct AnnounceSchedule {
    /// When each root is due again (absent: never announced).
    next: HashMap<PieceId, Instant>,
    /// Announces allowed now, in thousandths (a token bucket of
    /// [`DHT_ANNOUNCE_BURST`]).
    milli_tokens: u64,
    refilled: Instant,
}

impl AnnounceSchedule {
    /// Nothing announced yet, a full burst available at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            next: HashMap::new(),
            milli_tokens: u64::from(DHT_ANNOUNCE_BURST) * 1000,
            refilled: now,
        }
    }

    /// The roots of `held` to announce now, within the rate: those never
    /// announced first, then those due longest; each is then due again in
    /// [`DHT_REANNOUNCE_INTERVAL`]. Roots no longer held are forgotten.
    pub fn due(&mut self, held: &[PieceId], now: Instant) -> Vec<PieceId> {
        let elapsed_ms = now.saturating_duration_since(self.refilled).as_millis();
        let earned = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(u64::from(DHT_ANNOUNCE_RATE_PER_SEC));
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(earned)
            .min(u64::from(DHT_ANNOUNCE_BURST) * 1000);
        self.refilled = now;
        let keep: HashSet<&PieceId> = held.iter().collect();
        self.next.retain(|id, _| keep.contains(id));
        let mut due: Vec<(Option<Instant>, PieceId)> = held
            .iter()
            .map(|id| (self.next.get(id).copied(), *id))
            .filter(|(next, _)| next.is_none_or(|t| t <= now))
            .collect();
        due.sort();
        due.dedup();
        // Whole tokens only; the fraction waits for the next tick.
        let allowed = usize::try_from(self.milli_tokens / 1000).unwrap_or(usize::MAX);
        due.truncate(allowed);
        self.milli_tokens -= due.len() as u64 * 1000;
        due.into_iter()
            .map(|(_, id)| {
                self.next.insert(id, now + DHT_REANNOUNCE_INTERVAL);
                id
            })
            .collect()
    }

    /// An announce of `id` failed: try again in [`DHT_ANNOUNCE_RETRY`].
    pub fn failed(&mut self, id: &PieceId, now: Instant) {
        if let Some(next) = self.next.get_mut(id) {
            *next = now + DHT_ANNOUNCE_RETRY;
        }
    }

    /// Roots announced at least once and still held.
    pub fn announced(&self) -> usize {
        self.next.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<PieceId> {
        (0..n).map(|i| PieceId::of(&i.to_le_bytes())).collect()
    }

    #[test]
    fn a_burst_goes_out_at_once_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(t0);
        let roots = ids(100);
        assert_eq!(s.due(&roots, t0).len(), DHT_ANNOUNCE_BURST as usize);
        assert!(s.due(&roots, t0).is_empty(), "the burst is spent");
        // One second later: exactly the rate.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(s.due(&roots, t1).len(), DHT_ANNOUNCE_RATE_PER_SEC as usize);
        // Idle long enough: never more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(s.due(&roots, t2).len(), DHT_ANNOUNCE_BURST as usize);
    }

    #[test]
    fn a_root_is_announced_again_only_after_the_interval() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(t0);
        let root = ids(1);
        assert_eq!(s.due(&root, t0), root);
        let just_before = t0 + DHT_REANNOUNCE_INTERVAL - Duration::from_millis(1);
        assert!(s.due(&root, just_before).is_empty());
        assert_eq!(s.due(&root, t0 + DHT_REANNOUNCE_INTERVAL), root);
    }

    #[test]
    fn roots_never_announced_go_before_those_due_again() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(t0);
        let old = ids(1);
        assert_eq!(s.due(&old, t0), old);
        let later = t0 + DHT_REANNOUNCE_INTERVAL;
        let mut roots = ids(DHT_ANNOUNCE_BURST as usize + 1);
        roots.rotate_left(1); // the old root last in the list
        let due = s.due(&roots, later);
        assert_eq!(due.len(), DHT_ANNOUNCE_BURST as usize);
        assert!(!due.contains(&old[0]), "the new roots went first");
    }

    #[test]
    fn a_failed_announce_is_retried_after_the_retry_delay() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(t0);
        let root = ids(1);
        assert_eq!(s.due(&root, t0), root);
        s.failed(&root[0], t0);
        assert!(
            s.due(&root, t0 + DHT_ANNOUNCE_RETRY - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(s.due(&root, t0 + DHT_ANNOUNCE_RETRY), root);
    }

    #[test]
    fn unpinned_roots_are_forgotten() {
        let t0 = Instant::now();
        let mut s = AnnounceSchedule::new(t0);
        let roots = ids(3);
        s.due(&roots, t0);
        assert_eq!(s.announced(), 3);
        s.due(&roots[..1], t0);
        assert_eq!(s.announced(), 1);
    }
}
