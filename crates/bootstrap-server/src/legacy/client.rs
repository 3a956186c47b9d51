//! One legacy client's connection as the server keeps it: the address it
//! announces, and which legacy entries it has been told of and when.
//!
//! A legacy client repeats a PEERS naming itself every few seconds. The
//! server answers a repeat at most once per interval
//! ([`LEGACY_PEERS_ANSWER_INTERVAL`] outside tests), and only with verified
//! legacy entries it has not sent on this connection yet: a legacy client
//! makes a blocking connect to every entry it receives, so an entry sent
//! again would be a second connection to the same peer. An entry that was
//! unlisted and listed again (its client restarted) counts as new.
//!
//! Pure and synchronous; uses nothing of this crate.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use wire_format::limits::{MIN_PEER_PORT, PEX_MAX_ENTRIES};
use wire_format::{AddrClass, PeerAddr};

/// Least time between two answers to one legacy client's repeated PEERS
/// (its first answer included). At most one PEERS of up to
/// [`PEX_MAX_ENTRIES`] entries per connection per interval.
pub const LEGACY_PEERS_ANSWER_INTERVAL: Duration = Duration::from_secs(5);

/// One legacy client's connection.
#[derive(Debug)]
pub struct LegacyClient {
    observed: IpAddr,
    interval: Duration,
    me: Option<PeerAddr>,
    last_answer: Option<Instant>,
    /// Entries sent on this connection and still listed: at most
    /// [`MAX_LEGACY_ENTRIES`](super::MAX_LEGACY_ENTRIES), since those no
    /// longer listed are forgotten at each answer.
    sent: HashSet<PeerAddr>,
}

impl LegacyClient {
    /// A client seen at `observed`, answered at most once per `interval`.
    pub fn new(observed: IpAddr, interval: Duration) -> Self {
        Self {
            observed,
            interval,
            me: None,
            last_answer: None,
            sent: HashSet::new(),
        }
    }

    /// Its address, once a PEERS has named it.
    pub const fn me(&self) -> Option<PeerAddr> {
        self.me
    }

    /// Reads a PEERS it sent: the first entry on its own host (loopback, or
    /// the IP it is observed at) names its listening port, and it is at
    /// (observed IP, that port). The first such port is its address for the
    /// life of the connection. Returns its address if this PEERS names it.
    pub fn read_peers(&mut self, entries: &[PeerAddr]) -> Option<PeerAddr> {
        let named = entries
            .iter()
            .find(|e| {
                (e.class() == AddrClass::Loopback || e.ip() == self.observed)
                    && e.port() >= MIN_PEER_PORT
            })
            .map(|e| PeerAddr::new(self.observed, e.port()))?;
        let me = *self.me.get_or_insert(named);
        (me == named).then_some(me)
    }

    /// Whether a repeat at `now` may be answered.
    pub fn answer_due(&self, now: Instant) -> bool {
        self.last_answer
            .is_none_or(|at| now.saturating_duration_since(at) >= self.interval)
    }

    /// The entries of its first answer: the `listed` legacy entries other
    /// than itself, at most [`PEX_MAX_ENTRIES`].
    pub fn first_answer(&mut self, listed: &[PeerAddr], now: Instant) -> Vec<PeerAddr> {
        self.last_answer = Some(now);
        self.take_new(listed)
    }

    /// The answer to a repeat at `now`: the `listed` legacy entries other
    /// than itself not sent yet, at most [`PEX_MAX_ENTRIES`]; `None` if it
    /// is not due or there is nothing new.
    pub fn repeat_answer(&mut self, listed: &[PeerAddr], now: Instant) -> Option<Vec<PeerAddr>> {
        if !self.answer_due(now) {
            return None;
        }
        let new = self.take_new(listed);
        if new.is_empty() {
            return None;
        }
        self.last_answer = Some(now);
        Some(new)
    }

    fn take_new(&mut self, listed: &[PeerAddr]) -> Vec<PeerAddr> {
        let current: HashSet<PeerAddr> = listed.iter().copied().collect();
        self.sent.retain(|a| current.contains(a));
        let new: Vec<PeerAddr> = listed
            .iter()
            .filter(|a| Some(**a) != self.me && !self.sent.contains(a))
            .take(PEX_MAX_ENTRIES)
            .copied()
            .collect();
        self.sent.extend(new.iter().copied());
        new
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    const HOME: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn local(port: u16) -> PeerAddr {
        PeerAddr::new(HOME, port)
    }

    fn v6_loopback(port: u16) -> PeerAddr {
        PeerAddr::new("::1".parse().unwrap(), port)
    }

    #[test]
    fn its_address_is_the_observed_ip_and_the_first_port_it_names() {
        let mut client = LegacyClient::new(HOME, LEGACY_PEERS_ANSWER_INTERVAL);
        // The reference names itself as ::1: the observed IP is kept.
        assert_eq!(client.read_peers(&[v6_loopback(5000)]), Some(local(5000)));
        assert_eq!(client.me(), Some(local(5000)));
        // Repeats name it again; another port never replaces it.
        assert_eq!(client.read_peers(&[v6_loopback(5000)]), Some(local(5000)));
        assert_eq!(client.read_peers(&[v6_loopback(6000)]), None);
        assert_eq!(client.me(), Some(local(5000)));
        // Entries on other hosts, and ports below MIN_PEER_PORT, name nothing.
        let mut other = LegacyClient::new(HOME, LEGACY_PEERS_ANSWER_INTERVAL);
        let far = PeerAddr::new(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1)), 5000);
        assert_eq!(other.read_peers(&[far, local(MIN_PEER_PORT - 1)]), None);
        assert_eq!(other.read_peers(&[]), None);
        assert_eq!(
            other.read_peers(&[far, local(MIN_PEER_PORT)]),
            Some(local(MIN_PEER_PORT))
        );
    }

    #[test]
    fn repeats_are_answered_once_per_interval_with_what_is_new() {
        let t0 = Instant::now();
        let mut client = LegacyClient::new(HOME, LEGACY_PEERS_ANSWER_INTERVAL);
        client.read_peers(&[local(5000)]);
        // The first answer never names the client itself.
        assert_eq!(client.first_answer(&[local(5000)], t0), []);
        let listed = [local(5000), local(5001)];
        // Just before the interval: not answered; at it: answered.
        let before = t0 + LEGACY_PEERS_ANSWER_INTERVAL - Duration::from_nanos(1);
        assert!(!client.answer_due(before));
        assert_eq!(client.repeat_answer(&listed, before), None);
        let at = t0 + LEGACY_PEERS_ANSWER_INTERVAL;
        assert_eq!(client.repeat_answer(&listed, at), Some(vec![local(5001)]));
        // Nothing new: no answer, and the interval does not restart.
        let later = at + LEGACY_PEERS_ANSWER_INTERVAL;
        assert_eq!(client.repeat_answer(&listed, later), None);
        let more = [local(5000), local(5001), local(5002)];
        assert_eq!(
            client.repeat_answer(&more, later + Duration::from_nanos(1)),
            Some(vec![local(5002)])
        );
        // An entry unlisted and listed again is new again.
        let gone = [local(5000), local(5002)];
        let t = later + LEGACY_PEERS_ANSWER_INTERVAL * 2;
        assert_eq!(client.repeat_answer(&gone, t), None);
        let back = t + LEGACY_PEERS_ANSWER_INTERVAL;
        assert_eq!(client.repeat_answer(&more, back), Some(vec![local(5001)]));
    }

    #[test]
    fn an_answer_holds_at_most_pex_max_entries() {
        let t0 = Instant::now();
        let mut client = LegacyClient::new(HOME, LEGACY_PEERS_ANSWER_INTERVAL);
        let listed: Vec<PeerAddr> = (5000..).take(PEX_MAX_ENTRIES + 1).map(local).collect();
        assert_eq!(client.first_answer(&listed, t0).len(), PEX_MAX_ENTRIES);
        // The one left over comes with the next answer.
        let next = t0 + LEGACY_PEERS_ANSWER_INTERVAL;
        assert_eq!(
            client.repeat_answer(&listed, next),
            Some(vec![listed[PEX_MAX_ENTRIES]])
        );
    }
}
