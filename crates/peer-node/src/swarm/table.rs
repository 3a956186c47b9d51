//! The node's peer table: candidates learned from the bootstrap server, peer
//! exchange, `peers.json`, inbound peers and configuration, with the drop
//! rules and caps of docs/PROTOCOL.md §4 and per-address dial backoff.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use wire_format::limits::{
    MIN_PEER_PORT, PEER_TABLE_MAX, PEER_TABLE_MAX_SHARE_PERCENT, PEX_INTERVAL,
    PEX_MAX_NEW_PER_SOURCE,
};
use wire_format::{AddrClass, NodeId, PeerAddr};

/// First retry delay after a failed dial; doubles per failure.
pub const DIAL_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(10 * 60);
/// Senders whose PEX quota window is kept at once. Past it, windows that
/// have ended are forgotten (they would start again at zero anyway), then
/// the oldest. Senders are peers connected within the window, which the
/// connection limits keep far below this; worst case ≈ 4,096 × 48 bytes.
pub const QUOTA_SENDERS_MAX: usize = 4096;

pub use super::views::PeerSource as Source;

/// Why a received entry was dropped (metrics labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Port 0 or below 1024.
    Port,
    /// Unspecified, multicast, broadcast, link-local, documentation, reserved.
    Undialable,
    /// Loopback from a sender not on loopback.
    Loopback,
    /// Private from a public sender without `--allow-private`.
    Private,
    /// Ourselves.
    OurSelf,
    /// Banned.
    Banned,
    /// Over the per-source quota for this minute.
    SourceQuota,
    /// The table, or this source's or network's share of it, is full.
    TableFull,
    /// Already known.
    Duplicate,
}

impl DropReason {
    /// Metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Port => "port",
            Self::Undialable => "undialable",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::OurSelf => "self",
            Self::Banned => "banned",
            Self::SourceQuota => "source_quota",
            Self::TableFull => "table_full",
            Self::Duplicate => "duplicate",
        }
    }
}

/// One known address.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Where it came from.
    pub source: Source,
    /// The IP that told us (for per-source caps).
    pub via: Option<IpAddr>,
    /// Node id, once a HELLO from it was seen.
    pub node_id: Option<NodeId>,
    /// Failed dials in a row.
    pub failures: u32,
    /// Not dialled before this instant.
    pub next_attempt: Instant,
    /// Last dial or connection error.
    pub last_error: Option<String>,
    /// A legacy peer's address (docs/PROTOCOL.md "Legacy peers"): dialled only
    /// on loopback, never relayed, never saved.
    pub legacy: bool,
}

/// The candidates a legacy peer's PEERS names (docs/PROTOCOL.md "Legacy peers"):
/// each entry becomes (observed IP, port from its PEERS), so a legacy peer
/// can point us only at its own host. Only loopback legacy candidates are
/// dialled, so a legacy peer anywhere else yields none.
pub fn legacy_candidates(observed: IpAddr, entries: &[PeerAddr]) -> Vec<PeerAddr> {
    if AddrClass::of(observed) != AddrClass::Loopback {
        return Vec::new();
    }
    let mut out: Vec<PeerAddr> = Vec::with_capacity(entries.len());
    for entry in entries {
        let candidate = PeerAddr::new(observed, entry.port());
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    out
}

/// The /24 (IPv4) or /48 (IPv6) an address is in.
fn network_of(ip: IpAddr) -> (bool, u64) {
    match ip {
        IpAddr::V4(v4) => (true, u64::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => (false, (u128::from(v6) >> 80) as u64),
    }
}

/// The peer table.
#[derive(Debug)]
pub struct PeerTable {
    entries: HashMap<PeerAddr, Candidate>,
    /// Addresses that turned out to be this node: never dialled again.
    ours: HashSet<PeerAddr>,
    /// New entries accepted per source IP in the current window, for at
    /// most [`QUOTA_SENDERS_MAX`] senders.
    quota: HashMap<IpAddr, (Instant, usize)>,
    allow_private: bool,
    capacity: usize,
}

impl PeerTable {
    /// An empty table of at most [`PEER_TABLE_MAX`] entries.
    pub fn new(allow_private: bool) -> Self {
        Self {
            entries: HashMap::new(),
            ours: HashSet::new(),
            quota: HashMap::new(),
            allow_private,
            capacity: PEER_TABLE_MAX,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The candidate at `addr`.
    pub fn get(&self, addr: &PeerAddr) -> Option<&Candidate> {
        self.entries.get(addr)
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerAddr, &Candidate)> {
        self.entries.iter()
    }

    /// Forgets a candidate (banned, say).
    pub fn remove(&mut self, addr: &PeerAddr) -> Option<Candidate> {
        self.entries.remove(addr)
    }

    /// Marks an address as this node (a self-connection was detected).
    pub fn mark_ours(&mut self, addr: PeerAddr) {
        self.entries.remove(&addr);
        self.ours.insert(addr);
    }

    /// Whether `addr` is this node.
    pub fn is_ours(&self, addr: &PeerAddr) -> bool {
        self.ours.contains(addr)
    }

    /// Why an entry named by `sender` would be dropped, if it would.
    pub fn filter(&self, sender: IpAddr, entry: &PeerAddr) -> Option<DropReason> {
        let sender_class = AddrClass::of(sender);
        if entry.port() < MIN_PEER_PORT {
            return Some(DropReason::Port);
        }
        let class = entry.class();
        if class.is_never_dialable() {
            return Some(DropReason::Undialable);
        }
        if class == AddrClass::Loopback && sender_class != AddrClass::Loopback {
            return Some(DropReason::Loopback);
        }
        if class == AddrClass::Private && !self.allow_private && sender_class != AddrClass::Private
        {
            return Some(DropReason::Private);
        }
        if self.ours.contains(entry) {
            return Some(DropReason::OurSelf);
        }
        None
    }

    fn share_cap(&self) -> usize {
        self.capacity * PEER_TABLE_MAX_SHARE_PERCENT / 100
    }

    /// Offers entries a peer sent; returns (accepted, dropped with reasons).
    pub fn offer(
        &mut self,
        sender: IpAddr,
        entries: &[PeerAddr],
        source: Source,
        now: Instant,
    ) -> (usize, Vec<DropReason>) {
        self.offer_as(sender, entries, source, false, now)
    }

    /// Offers legacy candidates (from [`legacy_candidates`]): like
    /// [`offer`](Self::offer), but the entries are marked legacy.
    pub fn offer_legacy(
        &mut self,
        sender: IpAddr,
        candidates: &[PeerAddr],
        now: Instant,
    ) -> (usize, Vec<DropReason>) {
        self.offer_as(sender, candidates, Source::Pex, true, now)
    }

    fn offer_as(
        &mut self,
        sender: IpAddr,
        entries: &[PeerAddr],
        source: Source,
        legacy: bool,
        now: Instant,
    ) -> (usize, Vec<DropReason>) {
        let mut accepted = 0;
        let mut dropped = Vec::new();
        let sender_loopback = AddrClass::of(sender) == AddrClass::Loopback;
        if !self.quota.contains_key(&sender) {
            self.make_quota_room(now);
        }
        for entry in entries {
            if let Some(reason) = self.filter(sender, entry) {
                dropped.push(reason);
                continue;
            }
            if self.entries.contains_key(entry) {
                dropped.push(DropReason::Duplicate);
                continue;
            }
            let window = self.quota.entry(sender).or_insert((now, 0));
            if now.duration_since(window.0) >= PEX_INTERVAL {
                *window = (now, 0);
            }
            if window.1 >= PEX_MAX_NEW_PER_SOURCE && !sender_loopback {
                dropped.push(DropReason::SourceQuota);
                continue;
            }
            if !self.has_room(sender, entry) {
                dropped.push(DropReason::TableFull);
                continue;
            }
            if let Some(window) = self.quota.get_mut(&sender) {
                window.1 += 1;
            }
            self.entries.insert(
                *entry,
                Candidate {
                    source,
                    via: Some(sender),
                    node_id: None,
                    failures: 0,
                    next_attempt: now,
                    last_error: None,
                    legacy,
                },
            );
            accepted += 1;
        }
        (accepted, dropped)
    }

    /// Keeps the quota windows under [`QUOTA_SENDERS_MAX`] before a new
    /// sender's window is added.
    fn make_quota_room(&mut self, now: Instant) {
        if self.quota.len() < QUOTA_SENDERS_MAX {
            return;
        }
        self.quota
            .retain(|_, (start, _)| now.duration_since(*start) < PEX_INTERVAL);
        if self.quota.len() >= QUOTA_SENDERS_MAX
            && let Some(oldest) = self
                .quota
                .iter()
                .min_by_key(|(_, (start, _))| *start)
                .map(|(ip, _)| *ip)
        {
            self.quota.remove(&oldest);
        }
    }

    fn has_room(&self, sender: IpAddr, entry: &PeerAddr) -> bool {
        if self.entries.len() >= self.capacity {
            return false;
        }
        if entry.class() == AddrClass::Loopback {
            return true;
        }
        let cap = self.share_cap();
        let from_sender = self
            .entries
            .values()
            .filter(|c| c.via == Some(sender))
            .count();
        if AddrClass::of(sender) != AddrClass::Loopback && from_sender >= cap {
            return false;
        }
        let net = network_of(entry.ip());
        let same_net = self
            .entries
            .keys()
            .filter(|a| network_of(a.ip()) == net)
            .count();
        same_net < cap
    }

    /// Adds an address we trust (configuration, a dialable inbound peer,
    /// `peers.json`): no quota, but the caps and filters still apply.
    pub fn insert_trusted(
        &mut self,
        addr: PeerAddr,
        source: Source,
        node_id: Option<NodeId>,
        now: Instant,
    ) {
        if self.ours.contains(&addr) || addr.class().is_never_dialable() || addr.port() == 0 {
            return;
        }
        if let Some(existing) = self.entries.get_mut(&addr) {
            if node_id.is_some() {
                existing.node_id = node_id;
            }
            return;
        }
        if self.entries.len() >= self.capacity {
            return;
        }
        self.entries.insert(
            addr,
            Candidate {
                source,
                via: None,
                node_id,
                failures: 0,
                next_attempt: now,
                last_error: None,
                legacy: false,
            },
        );
    }

    /// Records a failed dial: backoff doubles up to [`DIAL_BACKOFF_MAX`].
    pub fn dial_failed(&mut self, addr: &PeerAddr, error: String, now: Instant) {
        if let Some(c) = self.entries.get_mut(addr) {
            c.failures = c.failures.saturating_add(1);
            let factor = 1u32 << c.failures.min(16).saturating_sub(1);
            c.next_attempt = now + (DIAL_BACKOFF_BASE * factor).min(DIAL_BACKOFF_MAX);
            c.last_error = Some(error);
        }
    }

    /// Records a connection that worked; `node_id` is `None` for a legacy
    /// peer (which sends no HELLO).
    pub fn dial_succeeded(&mut self, addr: &PeerAddr, node_id: Option<NodeId>) {
        if let Some(c) = self.entries.get_mut(addr) {
            c.failures = 0;
            if node_id.is_some() {
                // It answered with a HELLO: whatever named it, it is not legacy.
                c.node_id = node_id;
                c.legacy = false;
            }
            c.last_error = None;
        }
    }

    /// Candidates for a fetch widening its search, excluding `skip`: those
    /// due first (as [`due`](Self::due) orders them), then those backing
    /// off after failed dials, soonest due first (random among equals). A fetch dials each at
    /// most once, so a peer that failed to connect a while ago (busy, or a
    /// duplicate connection closed) is still worth one try when it may be
    /// the only holder.
    pub fn widening(&self, now: Instant, skip: &HashSet<PeerAddr>) -> Vec<PeerAddr> {
        let mut all: Vec<_> = self
            .entries
            .iter()
            .filter(|(addr, _)| !skip.contains(addr))
            .map(|(addr, c)| {
                let waiting = c.next_attempt > now;
                (
                    (
                        waiting,
                        if waiting { c.next_attempt } else { now },
                        c.failures,
                    ),
                    *addr,
                )
            })
            .collect();
        all.shuffle(&mut rand::rng());
        all.sort_by_key(|&(key, _)| key);
        all.into_iter().map(|(_, addr)| addr).collect()
    }

    /// Candidates due for a dial, fewest failures first and in random order
    /// among equals, excluding `skip`. Random, not by address: every node
    /// taking the same candidates first would pile its connections (and
    /// its fetches' widening dials) onto the same few peers until their
    /// connection limits refuse everyone else.
    pub fn due(&self, now: Instant, skip: &HashSet<PeerAddr>, max: usize) -> Vec<PeerAddr> {
        let mut due: Vec<_> = self
            .entries
            .iter()
            .filter(|(addr, c)| c.next_attempt <= now && !skip.contains(addr))
            .map(|(addr, c)| (c.failures, *addr))
            .collect();
        due.shuffle(&mut rand::rng());
        due.sort_by_key(|&(failures, _)| failures);
        due.into_iter().take(max).map(|(_, addr)| addr).collect()
    }
}

/// One line of `peers.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedPeer {
    /// `ip:port`.
    pub addr: String,
    /// 16 hex, if known.
    pub node_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PeerAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_widening_takes_due_candidates_first_then_those_backing_off_soonest_first() {
        let mut table = PeerTable::new(true);
        let t0 = Instant::now();
        let [a, b, c, d] = [
            "1.2.3.4:7001",
            "1.2.3.5:7001",
            "1.2.3.6:7001",
            "1.2.3.7:7001",
        ]
        .map(addr);
        for x in [a, b, c, d] {
            table.insert_trusted(x, Source::Saved, None, t0);
        }
        // c failed twice (backs off longer), a once; b and d never.
        table.dial_failed(&c, "refused".into(), t0);
        table.dial_failed(&c, "refused".into(), t0);
        table.dial_failed(&a, "refused".into(), t0);
        let none = HashSet::new();
        let set = |v: Vec<PeerAddr>| v.into_iter().collect::<HashSet<_>>();
        assert_eq!(set(table.due(t0, &none, 10)), HashSet::from([b, d]));
        let widening = table.widening(t0, &none);
        assert_eq!(set(widening[..2].to_vec()), HashSet::from([b, d]));
        assert_eq!(widening[2..], [a, c]);
        assert_eq!(table.widening(t0, &HashSet::from([d, a])), vec![b, c]);
    }

    #[test]
    fn quota_windows_are_kept_for_at_most_quota_senders_max_senders() {
        let mut table = PeerTable::new(false);
        let t0 = Instant::now();
        let octets = |n: usize| {
            let [_, b, c, d] = u32::try_from(n).unwrap().to_be_bytes();
            (b, c, d)
        };
        let sender = |n: usize| -> IpAddr {
            let (b, c, d) = octets(n);
            IpAddr::from([11, b, c, d])
        };
        // A new entry each time, so every offer opens its sender's window.
        let entry = |n: usize| {
            let (b, c, d) = octets(n);
            [PeerAddr::new(IpAddr::from([12, d, c, b]), 7001)]
        };
        // One entry from each of QUOTA_SENDERS_MAX senders: all kept.
        for n in 0..QUOTA_SENDERS_MAX {
            table.offer(sender(n), &entry(n), Source::Pex, t0);
        }
        assert_eq!(table.quota.len(), QUOTA_SENDERS_MAX);
        // One more, in the same window: the oldest window makes room.
        let n = QUOTA_SENDERS_MAX;
        table.offer(sender(n), &entry(n), Source::Pex, t0);
        assert_eq!(table.quota.len(), QUOTA_SENDERS_MAX);
        assert!(table.quota.contains_key(&sender(n)));
        // A minute later every old window has ended: they all go at once.
        let later = t0 + PEX_INTERVAL;
        table.offer(sender(n + 1), &entry(n + 1), Source::Pex, later);
        assert_eq!(table.quota.len(), 1);
    }

    #[test]
    fn drop_rules_for_received_entries() {
        let table = PeerTable::new(false);
        let public: IpAddr = "8.8.8.8".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let cases = [
            ("1.2.3.4:0", Some(DropReason::Port)),
            ("1.2.3.4:1023", Some(DropReason::Port)),
            ("1.2.3.4:1024", None),
            ("0.0.0.0:7001", Some(DropReason::Undialable)),
            ("224.0.0.1:7001", Some(DropReason::Undialable)),
            ("255.255.255.255:7001", Some(DropReason::Undialable)),
            ("169.254.1.1:7001", Some(DropReason::Undialable)),
            ("192.0.2.1:7001", Some(DropReason::Undialable)),
            ("[2001:db8::1]:7001", Some(DropReason::Undialable)),
            ("240.0.0.1:7001", Some(DropReason::Undialable)),
            ("127.0.0.1:7001", Some(DropReason::Loopback)),
            ("[::ffff:127.0.0.1]:7001", Some(DropReason::Loopback)),
            ("10.1.2.3:7001", Some(DropReason::Private)),
            ("[::ffff:10.1.2.3]:7001", Some(DropReason::Private)),
            ("[fd00::1]:7001", Some(DropReason::Private)),
        ];
        for (entry, expected) in cases {
            assert_eq!(table.filter(public, &addr(entry)), expected, "{entry}");
        }
        assert_eq!(table.filter(lo, &addr("127.0.0.1:7001")), None);
        assert_eq!(
            table.filter("10.0.0.9".parse().unwrap(), &addr("10.1.2.3:7001")),
            None
        );
        assert_eq!(
            PeerTable::new(true).filter(public, &addr("10.1.2.3:7001")),
            None
        );
    }

    #[test]
    fn at_most_50_new_entries_per_source_per_minute() {
        let mut table = PeerTable::new(false);
        let now = Instant::now();
        let sender: IpAddr = "8.8.8.8".parse().unwrap();
        let entries: Vec<PeerAddr> = (0..60u8)
            .map(|i| addr(&format!("1.2.{i}.4:7001")))
            .collect();
        let (accepted, dropped) = table.offer(sender, &entries, Source::Pex, now);
        assert_eq!(accepted, 50);
        assert_eq!(dropped, vec![DropReason::SourceQuota; 10]);
        let (accepted, _) = table.offer(sender, &entries[50..], Source::Pex, now + PEX_INTERVAL);
        assert_eq!(accepted, 10);
    }

    #[test]
    fn one_network_fills_at_most_a_tenth_of_the_table_except_loopback() {
        let mut table = PeerTable::new(false);
        let mut now = Instant::now();
        let cap = PEER_TABLE_MAX * PEER_TABLE_MAX_SHARE_PERCENT / 100;
        let mut accepted = 0;
        for chunk in 0..10u16 {
            // Different senders, so the per-source quota is not what stops it.
            let sender: IpAddr = format!("9.9.{chunk}.1").parse().unwrap();
            let entries: Vec<PeerAddr> = (0..50u16)
                .map(|i| addr(&format!("5.6.7.8:{}", 2000 + chunk * 50 + i)))
                .collect();
            accepted += table.offer(sender, &entries, Source::Pex, now).0;
            now += PEX_INTERVAL;
        }
        assert_eq!(accepted, cap);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let entries: Vec<PeerAddr> = (0..300u16)
            .map(|i| addr(&format!("127.0.0.1:{}", 3000 + i)))
            .collect();
        assert_eq!(table.offer(lo, &entries, Source::Pex, now).0, 300);
    }

    #[test]
    fn backoff_doubles_and_self_is_never_dialled() {
        let mut table = PeerTable::new(false);
        let now = Instant::now();
        let a = addr("127.0.0.1:7001");
        table.insert_trusted(a, Source::Config, None, now);
        assert_eq!(table.due(now, &HashSet::new(), 10), vec![a]);
        table.dial_failed(&a, "refused".into(), now);
        assert!(table.due(now, &HashSet::new(), 10).is_empty());
        assert_eq!(
            table.due(now + DIAL_BACKOFF_BASE, &HashSet::new(), 10),
            vec![a]
        );
        table.dial_failed(&a, "refused".into(), now);
        assert!(
            table
                .due(now + DIAL_BACKOFF_BASE, &HashSet::new(), 10)
                .is_empty()
        );
        table.mark_ours(a);
        table.insert_trusted(a, Source::Pex, None, now);
        assert!(table.is_empty());
        assert_eq!(
            table.filter("127.0.0.1".parse().unwrap(), &a),
            Some(DropReason::OurSelf)
        );
    }

    #[test]
    fn a_legacy_peers_entries_become_candidates_at_its_observed_ip_only_on_loopback() {
        let entries = [
            addr("10.9.8.7:7001"),
            addr("127.0.0.1:7001"),
            addr("0.0.0.0:7002"),
        ];
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            legacy_candidates(loopback, &entries),
            vec![addr("127.0.0.1:7001"), addr("127.0.0.1:7002")],
            "mapped to the observed IP, duplicates once"
        );
        for elsewhere in ["192.168.1.5", "8.8.8.8", "::1"] {
            let ip: IpAddr = elsewhere.parse().unwrap();
            let expect_some = AddrClass::of(ip) == AddrClass::Loopback;
            assert_eq!(
                !legacy_candidates(ip, &entries).is_empty(),
                expect_some,
                "{elsewhere}"
            );
        }

        let mut table = PeerTable::new(false);
        let t0 = Instant::now();
        let candidates = legacy_candidates(loopback, &entries);
        let (accepted, dropped) = table.offer_legacy(loopback, &candidates, t0);
        assert_eq!((accepted, dropped.len()), (2, 0));
        assert!(table.get(&addr("127.0.0.1:7001")).unwrap().legacy);
        // An extended peer's PEERS naming a known address changes nothing.
        table.offer(loopback, &[addr("127.0.0.1:7002")], Source::Pex, t0);
        assert!(table.get(&addr("127.0.0.1:7002")).unwrap().legacy);
        // Dialled, it answered with a HELLO: an extended node after all.
        table.dial_succeeded(&addr("127.0.0.1:7002"), Some(NodeId([7; 8])));
        assert!(!table.get(&addr("127.0.0.1:7002")).unwrap().legacy);
        // Dialled, and legacy indeed: it stays legacy, its backoff reset.
        table.dial_failed(&addr("127.0.0.1:7001"), "refused".into(), t0);
        table.dial_succeeded(&addr("127.0.0.1:7001"), None);
        let c = table.get(&addr("127.0.0.1:7001")).unwrap();
        assert!(c.legacy && c.failures == 0 && c.node_id.is_none());
    }

    #[test]
    fn backoff_doubles_up_to_dial_backoff_max_and_never_past_it() {
        let mut table = PeerTable::new(false);
        let now = Instant::now();
        let a = addr("127.0.0.1:7001");
        table.insert_trusted(a, Source::Config, None, now);
        let none = HashSet::new();
        let mut capped = 0;
        for failures in 1..=40u32 {
            table.dial_failed(&a, "refused".into(), now);
            let doubled = 1u32
                .checked_shl(failures - 1)
                .and_then(|factor| DIAL_BACKOFF_BASE.checked_mul(factor));
            let expected = doubled.map_or(DIAL_BACKOFF_MAX, |d| d.min(DIAL_BACKOFF_MAX));
            if doubled.is_none_or(|d| d > DIAL_BACKOFF_MAX) {
                capped += 1;
            }
            let just_before = now + expected - Duration::from_nanos(1);
            assert!(table.due(just_before, &none, 1).is_empty(), "{failures}");
            assert_eq!(table.due(now + expected, &none, 1), vec![a], "{failures}");
        }
        assert!(capped > 20, "the doubling never reached the maximum");
    }

    #[test]
    fn the_table_holds_peer_table_max_entries_and_drops_the_next() {
        let mut table = PeerTable::new(false);
        let now = Instant::now();
        // Loopback entries from a loopback sender: no quota or share applies.
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let entry = |i: usize| PeerAddr::new(lo, MIN_PEER_PORT + u16::try_from(i).unwrap());
        let entries: Vec<PeerAddr> = (0..PEER_TABLE_MAX).map(entry).collect();
        let (accepted, dropped) = table.offer(lo, &entries, Source::Pex, now);
        assert_eq!((accepted, dropped), (PEER_TABLE_MAX, Vec::new()));
        assert_eq!(table.len(), PEER_TABLE_MAX);
        let next = entry(PEER_TABLE_MAX);
        assert_eq!(
            table.offer(lo, &[next], Source::Pex, now),
            (0, vec![DropReason::TableFull])
        );
        // Trusted additions (configuration, peers.json, inbound) are capped too.
        table.insert_trusted(next, Source::Config, None, now);
        assert_eq!(table.len(), PEER_TABLE_MAX);
        assert!(table.get(&next).is_none());
    }
}
