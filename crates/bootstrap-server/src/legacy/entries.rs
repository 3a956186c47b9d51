//! The *legacy entries*: clients of the reference implementation that named
//! their listening port in a PEERS and passed a silent dial-back probe
//! ([`super::probe`]). Kept apart from the [registry](crate::registry), so
//! that they can never be listed to an extended peer.
//!
//! Pure and synchronous like the registry: every rule takes `now`.
//!
//! # Lifecycle of an entry
//! * Keyed by (observed IP of the client's connection, port its PEERS
//!   names). [`LegacyEntries::announce`] adds or refreshes one and says
//!   whether to probe it now: a new entry at once; a known one when no probe
//!   is pending and its last probe is [`LEGACY_REPROBE_INTERVAL`] old (a
//!   legacy client repeats its PEERS every few seconds, so this bounds the
//!   probes per client).
//! * [`LegacyEntries::connection_ended`]: the client's connection to the
//!   server ended, so the client may be gone; a verified entry is probed
//!   again at once.
//! * Verified (listed) only after a probe succeeded; a failed probe unlists
//!   it, and the [`REGISTRY_MAX_FAILED_PROBES`]th failure in a row removes
//!   it. It expires [`REGISTRY_EXPIRY`] after its last announce, like a
//!   registry entry.
//! * At most [`MAX_LEGACY_ENTRIES`]: a newcomer finds room by dropping the
//!   expired entries, then the unverified one announced longest ago; when
//!   every entry is verified it is refused.
//!
//! Uses [`super::probe`] for the longest a probe can take.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use wire_format::limits::{REGISTRY_EXPIRY, REGISTRY_MAX_FAILED_PROBES};
use wire_format::{AddrClass, PeerAddr};

use super::probe::PROBE_LONGEST;

/// Legacy entries held at once, verified or not.
///
/// Legacy clients are programs on this machine (or, with `--legacy`, on
/// hosts the operator vouches for), each holding a connection to the
/// server, so a few hundred is far more than a real swarm of them. Worst
/// case: this many entries of about 100 bytes in the table, plus, in every
/// legacy client's connection, the set of entries already sent to it (at
/// most this many addresses of 32 bytes, about 16 KiB with the set's
/// overhead): `MAX_OPEN_CONNECTIONS × 16 KiB`, 64 MiB, if every connection
/// were a legacy client told of every entry.
pub const MAX_LEGACY_ENTRIES: usize = 1 << 8;

/// A known legacy entry is probed again when its client announces and its
/// last probe is at least this old: one connect per legacy client per
/// interval while it keeps announcing, and the retry delay of an entry whose
/// probe failed. A client that goes away is probed at once instead, when its
/// connection to the server ends.
pub const LEGACY_REPROBE_INTERVAL: Duration = Duration::from_secs(60);

/// A probe reported started but never finished is presumed lost after
/// this long, and the next announce may start another: twice the longest a
/// probe can take.
pub const LEGACY_PROBE_LOST_AFTER: Duration = PROBE_LONGEST.saturating_mul(2);

/// What [`LegacyEntries::announce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyAnnounce {
    /// A new entry was recorded, unverified: probe it now.
    Added,
    /// A known entry was refreshed; `probe`: probe it now.
    Refreshed {
        /// Whether to probe it now.
        probe: bool,
    },
    /// New, and no room: every entry is verified. Nothing changed.
    Full,
}

impl LegacyAnnounce {
    /// Whether the server should probe the address now.
    pub const fn should_probe(&self) -> bool {
        match self {
            Self::Added => true,
            Self::Refreshed { probe } => *probe,
            Self::Full => false,
        }
    }
}

/// Counters for the questions an operator asks about legacy clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegacyStats {
    /// PEERS naming a client's own port (first and repeated).
    pub announces: u64,
    /// New entries recorded.
    pub added: u64,
    /// Newcomers refused because every entry was verified.
    pub refused_full: u64,
    /// Unverified entries dropped to make room for a newcomer.
    pub evicted_unverified: u64,
    /// Probes that verified their entry.
    pub probes_succeeded: u64,
    /// Probes that failed (no connect, the client wrote, or it closed).
    pub probes_failed: u64,
    /// Entries removed at their last allowed failed probe.
    pub removed_failed_probes: u64,
    /// Entries removed because their last announce was too old.
    pub expired: u64,
}

#[derive(Debug, Clone)]
struct LegacyEntry {
    last_announce: Instant,
    verified: bool,
    failed_probes: u32,
    last_probe: Option<Instant>,
    probe_started: Option<Instant>,
}

impl LegacyEntry {
    fn is_expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_announce) >= REGISTRY_EXPIRY
    }

    fn probe_pending(&self, now: Instant) -> bool {
        self.probe_started
            .is_some_and(|at| now.saturating_duration_since(at) < LEGACY_PROBE_LOST_AFTER)
    }

    fn wants_probe(&self, now: Instant) -> bool {
        !self.probe_pending(now)
            && self
                .last_probe
                .is_none_or(|at| now.saturating_duration_since(at) >= LEGACY_REPROBE_INTERVAL)
    }
}

/// The legacy entries. See the [module docs](self) for their lifecycle.
#[derive(Debug)]
pub struct LegacyEntries {
    max: usize,
    entries: HashMap<PeerAddr, LegacyEntry>,
    stats: LegacyStats,
}

impl Default for LegacyEntries {
    fn default() -> Self {
        Self::new(MAX_LEGACY_ENTRIES)
    }
}

impl LegacyEntries {
    /// An empty table holding at most `max` entries ([`MAX_LEGACY_ENTRIES`]
    /// outside tests).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            entries: HashMap::new(),
            stats: LegacyStats::default(),
        }
    }

    /// Entries held, verified or not.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Verified entries held (expired ones not removed yet included).
    pub fn verified_len(&self) -> usize {
        self.entries.values().filter(|e| e.verified).count()
    }

    /// The counters.
    pub const fn stats(&self) -> LegacyStats {
        self.stats
    }

    /// A legacy client's PEERS named `addr` (observed IP, named port) as its
    /// own at `now`: records or refreshes it, and says whether to probe it.
    pub fn announce(&mut self, addr: PeerAddr, now: Instant) -> LegacyAnnounce {
        self.stats.announces += 1;
        if self.entries.get(&addr).is_some_and(|e| e.is_expired(now)) {
            self.entries.remove(&addr);
            self.stats.expired += 1;
        }
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.last_announce = entry.last_announce.max(now);
            return LegacyAnnounce::Refreshed {
                probe: entry.wants_probe(now),
            };
        }
        if self.entries.len() >= self.max {
            self.expire(now);
        }
        if self.entries.len() >= self.max {
            let oldest_unverified = self
                .entries
                .iter()
                .filter(|(_, e)| !e.verified)
                .min_by_key(|(a, e)| (e.last_announce, **a))
                .map(|(a, _)| *a);
            match oldest_unverified {
                Some(oldest) => {
                    self.entries.remove(&oldest);
                    self.stats.evicted_unverified += 1;
                }
                None => {
                    self.stats.refused_full += 1;
                    return LegacyAnnounce::Full;
                }
            }
        }
        // Still full only if `max` is 0: refuse rather than pass the bound.
        if self.entries.len() >= self.max {
            self.stats.refused_full += 1;
            return LegacyAnnounce::Full;
        }
        self.entries.insert(
            addr,
            LegacyEntry {
                last_announce: now,
                verified: false,
                failed_probes: 0,
                last_probe: None,
                probe_started: None,
            },
        );
        self.stats.added += 1;
        LegacyAnnounce::Added
    }

    /// The connection of the client at `addr` ended at `now`: whether to
    /// probe it now (it is verified and no probe is pending), to unlist it
    /// soon if it is gone.
    pub fn connection_ended(&self, addr: PeerAddr, now: Instant) -> bool {
        self.entries
            .get(&addr)
            .is_some_and(|e| e.verified && !e.probe_pending(now))
    }

    /// Notes that a probe of `addr` started; false if `addr` is not held.
    pub fn probe_started(&mut self, addr: PeerAddr, now: Instant) -> bool {
        match self.entries.get_mut(&addr) {
            Some(entry) => {
                entry.probe_started = Some(now);
                true
            }
            None => false,
        }
    }

    /// A probe of `addr` found a silent listener: the entry is listed.
    pub fn probe_succeeded(&mut self, addr: PeerAddr, now: Instant) {
        if let Some(entry) = self.entries.get_mut(&addr) {
            entry.probe_started = None;
            entry.last_probe = Some(now);
            entry.failed_probes = 0;
            entry.verified = true;
            self.stats.probes_succeeded += 1;
        }
    }

    /// A probe of `addr` failed: the entry is unlisted, and removed at the
    /// [`REGISTRY_MAX_FAILED_PROBES`]th failure in a row. Returns whether it
    /// was removed.
    pub fn probe_failed(&mut self, addr: PeerAddr, now: Instant) -> bool {
        let Some(entry) = self.entries.get_mut(&addr) else {
            return false;
        };
        self.stats.probes_failed += 1;
        entry.probe_started = None;
        entry.last_probe = Some(now);
        entry.verified = false;
        entry.failed_probes = entry.failed_probes.saturating_add(1);
        if entry.failed_probes >= REGISTRY_MAX_FAILED_PROBES {
            self.entries.remove(&addr);
            self.stats.removed_failed_probes += 1;
            return true;
        }
        false
    }

    /// Removes the entries expired at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| !e.is_expired(now));
        let removed = before - self.entries.len();
        self.stats.expired += removed as u64;
        removed
    }

    /// The entries a legacy client may be told of at `now`: verified,
    /// unexpired and on loopback (a legacy client makes a blocking connect
    /// to every entry it is sent). At most [`MAX_LEGACY_ENTRIES`].
    pub fn listed(&self, now: Instant) -> Vec<PeerAddr> {
        self.entries
            .iter()
            .filter(|(a, e)| e.verified && !e.is_expired(now) && a.class() == AddrClass::Loopback)
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn local(port: u16) -> PeerAddr {
        PeerAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn add_verified(table: &mut LegacyEntries, port: u16, now: Instant) {
        assert!(table.announce(local(port), now).should_probe());
        assert!(table.probe_started(local(port), now));
        table.probe_succeeded(local(port), now);
    }

    #[test]
    fn listed_only_after_a_probe_and_unlisted_by_a_failed_one() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        assert_eq!(table.announce(local(5000), t0), LegacyAnnounce::Added);
        table.probe_started(local(5000), t0);
        assert!(table.listed(t0).is_empty());
        // Repeats while the probe runs ask for no other.
        assert_eq!(
            table.announce(local(5000), t0 + secs(1)),
            LegacyAnnounce::Refreshed { probe: false }
        );
        table.probe_succeeded(local(5000), t0 + secs(5));
        assert_eq!(table.listed(t0 + secs(5)), [local(5000)]);

        // Its connection ends: probe it at once, and a failure unlists it.
        assert!(table.connection_ended(local(5000), t0 + secs(6)));
        table.probe_started(local(5000), t0 + secs(6));
        assert!(!table.connection_ended(local(5000), t0 + secs(6)));
        assert!(!table.probe_failed(local(5000), t0 + secs(7)));
        assert!(table.listed(t0 + secs(7)).is_empty());
        assert_eq!(table.len(), 1);
        // The next failure in a row removes it.
        assert!(table.probe_failed(local(5000), t0 + secs(8)));
        assert!(table.is_empty());
        assert_eq!(table.stats().removed_failed_probes, 1);
    }

    #[test]
    fn a_repeat_asks_for_a_probe_once_the_last_is_the_interval_old() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        add_verified(&mut table, 5000, t0);
        let just_before = t0 + LEGACY_REPROBE_INTERVAL - Duration::from_nanos(1);
        assert!(!table.announce(local(5000), just_before).should_probe());
        assert!(
            table
                .announce(local(5000), t0 + LEGACY_REPROBE_INTERVAL)
                .should_probe()
        );
        // A failed entry is retried at the same pace, not at every repeat.
        table.probe_started(local(5000), t0 + LEGACY_REPROBE_INTERVAL);
        let failed_at = t0 + LEGACY_REPROBE_INTERVAL + secs(1);
        table.probe_failed(local(5000), failed_at);
        assert!(
            !table
                .announce(local(5000), failed_at + secs(10))
                .should_probe()
        );
        assert!(
            table
                .announce(local(5000), failed_at + LEGACY_REPROBE_INTERVAL)
                .should_probe()
        );
    }

    #[test]
    fn a_lost_probe_does_not_block_the_next_one() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        table.announce(local(5000), t0);
        table.probe_started(local(5000), t0);
        let before = t0 + LEGACY_PROBE_LOST_AFTER - secs(1);
        assert!(!table.announce(local(5000), before).should_probe());
        assert!(
            table
                .announce(local(5000), t0 + LEGACY_PROBE_LOST_AFTER)
                .should_probe()
        );
    }

    #[test]
    fn only_loopback_entries_are_listed() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        let remote = PeerAddr::new(IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1)), 5000);
        table.announce(remote, t0);
        table.probe_started(remote, t0);
        table.probe_succeeded(remote, t0);
        add_verified(&mut table, 5001, t0);
        assert_eq!(table.verified_len(), 2);
        assert_eq!(table.listed(t0), [local(5001)]);
    }

    #[test]
    fn entries_expire_at_the_registry_expiry() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        add_verified(&mut table, 5000, t0);
        assert_eq!(table.expire(t0 + REGISTRY_EXPIRY - secs(1)), 0);
        assert_eq!(table.listed(t0 + REGISTRY_EXPIRY - secs(1)), [local(5000)]);
        assert!(table.listed(t0 + REGISTRY_EXPIRY).is_empty());
        assert_eq!(table.expire(t0 + REGISTRY_EXPIRY), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn at_the_limit_a_newcomer_takes_an_unverified_place_or_is_refused() {
        let t0 = Instant::now();
        let mut table = LegacyEntries::default();
        let first_port = 5000;
        let ports = (first_port..).take(MAX_LEGACY_ENTRIES);
        for (i, port) in ports.clone().enumerate() {
            // The oldest one stays unverified.
            if i == 0 {
                assert_eq!(table.announce(local(port), t0), LegacyAnnounce::Added);
            } else {
                add_verified(&mut table, port, t0 + secs(1));
            }
        }
        // At the limit: every one accepted.
        assert_eq!(table.len(), MAX_LEGACY_ENTRIES);
        let next = first_port + u16::try_from(MAX_LEGACY_ENTRIES).unwrap();
        // One more: the unverified entry makes room.
        assert_eq!(
            table.announce(local(next), t0 + secs(2)),
            LegacyAnnounce::Added
        );
        assert_eq!(table.len(), MAX_LEGACY_ENTRIES);
        assert_eq!(table.stats().evicted_unverified, 1);
        table.probe_started(local(next), t0 + secs(2));
        table.probe_succeeded(local(next), t0 + secs(2));
        // Every entry verified: the next newcomer is refused, nothing changes.
        assert_eq!(
            table.announce(local(next + 1), t0 + secs(3)),
            LegacyAnnounce::Full
        );
        assert_eq!(table.len(), MAX_LEGACY_ENTRIES);
        assert_eq!(table.verified_len(), MAX_LEGACY_ENTRIES);
        assert_eq!(table.stats().refused_full, 1);
        // Known entries still refresh.
        assert!(matches!(
            table.announce(local(next), t0 + secs(4)),
            LegacyAnnounce::Refreshed { .. }
        ));
        // Expired entries make room first.
        let later = t0 + secs(2) + REGISTRY_EXPIRY;
        assert_eq!(
            table.announce(local(next + 1), later),
            LegacyAnnounce::Added
        );
        assert_eq!(
            table.len(),
            2,
            "the expired entries went, not the fresh one"
        );
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let mut table = LegacyEntries::new(0);
        assert_eq!(
            table.announce(local(5000), Instant::now()),
            LegacyAnnounce::Full
        );
        assert!(table.is_empty());
    }
}
