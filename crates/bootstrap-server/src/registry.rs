//! The bootstrap server's registry: peers that announced themselves, which of
//! them a dial-back probe has verified, and random samples of the verified ones.
//!
//! This is its own structure, sized by `--max-peers`, not the node's peer
//! table. It is pure and synchronous: no sockets, no runtime, no clock. Every
//! operation that depends on time takes `now` as an argument, so the server
//! passes `Instant::now()` and tests pass a base instant plus durations.
//!
//! # Lifecycle of an entry
//! * An entry is keyed by [`PeerAddr`]: the *observed* source IP of the
//!   announcing connection and the listen port of its HELLO, never an IP the
//!   client claims. It records the node_id of that HELLO.
//! * [`Registry::announce`] adds or refreshes it and says whether a dial-back
//!   probe should start now (see [`AnnounceOutcome`]). The server reports the
//!   probe with [`Registry::probe_started`], then [`Registry::probe_succeeded`]
//!   or [`Registry::probe_failed`].
//! * An entry is *verified* (listed by [`Registry::sample`]) only after a probe
//!   that saw the recorded node_id. A failed probe — a probe that saw another
//!   node_id included — unlists it; the [`REGISTRY_MAX_FAILED_PROBES`]th
//!   failure in a row removes it. A success resets the count.
//! * An entry expires [`REGISTRY_EXPIRY`] after its last announce. The boundary
//!   instant itself counts as expired: an entry announced at `t` is gone at
//!   `t + REGISTRY_EXPIRY` (see [`Entry::is_expired`]). Expired entries are
//!   never sampled, saved or refreshed (a late announce starts a new entry),
//!   and [`Registry::expire`] frees them.
//!
//! # Eviction rule
//! When the registry holds `max_peers` entries and a *new* address announces:
//! 1. expired entries are dropped first;
//! 2. if it is still full, the **unverified** entry with the oldest last
//!    announce is evicted to make room;
//! 3. if every entry is verified, the newcomer is refused
//!    ([`AnnounceOutcome::Full`]): a flood of new addresses must never push out
//!    peers that proved they are reachable.
//!
//! Evictions and refusals are counted in [`RegistryStats`].
//!
//! # Memory
//! [`worst_case_bytes`] is the bound the server prints at start-up, from the
//! structures' sizes: the hash map of entries ([`PeerAddr`] + [`Entry`],
//! 128 bytes a slot, plus a control byte), whose bucket count is the next
//! power of two above `max_peers × 8 / 7` and which holds its old table
//! beside the new one while it grows; one key per entry in an ordered set
//! by last announce (48 bytes, twice that with B-tree node slack); the
//! sampling vector of verified addresses (a power of two of [`PeerAddr`]s,
//! old and new during growth); and a save's copy ([`SavedEntry`] with its
//! strings, then the JSON text, at most [`persist::SAVED_ENTRY_MAX_BYTES`]
//! an entry), plus 8 MiB whatever the size. Measured at 1,000,000 verified
//! entries (`p2p-registry-load`, docs/SCALE.md): about 394 MiB once
//! registered, 640–710 MiB at the peak of a save, 610–665 MiB at the peak
//! of a restart's reload, within the 924 MiB this bound gives; the figure
//! printed before, 300 bytes an entry (286 MiB), missed the hash map's
//! power-of-two growth and the save. Compact entries (times as u32
//! seconds) would about halve the resident part: not done.
//! [`Registry::sample`] allocates `O(n)` per call whatever the registry's size.
//!
//! # Modules
//! The rules of one entry (expiry, when to probe, failure count) are in
//! `entry`; the registry file and the checks of a restored entry in
//! [`persist`], which this module uses and which uses neither.
//!
//! [`REGISTRY_EXPIRY`]: wire_format::limits::REGISTRY_EXPIRY
//! [`REGISTRY_MAX_FAILED_PROBES`]: wire_format::limits::REGISTRY_MAX_FAILED_PROBES

use std::collections::{BTreeSet, HashMap};
use std::time::{Instant, SystemTime};

use rand::{Rng, RngExt};
use wire_format::{NodeId, PeerAddr};

use self::entry::is_expired;
pub use self::entry::{Entry, PROBE_LOST_AFTER, REPROBE_INTERVAL};
use crate::persist;
// The registry's file, so that callers need only this module.
pub use crate::persist::{RegistryError, SavedEntry, load_json, save_json};

mod entry;

/// Default capacity of the registry (`--max-peers`).
pub const DEFAULT_MAX_PEERS: usize = 100_000;

/// Heap bytes of one [`SavedEntry`]'s two strings, at most (an IPv6
/// address with its port, 16 hex digits, and the allocator's rounding).
const SAVED_STRINGS_BYTES: usize = 96;
/// What a registry costs whatever its size: the allocator's arenas and the
/// buffers of a load or a save.
const FIXED_BYTES: usize = 8 << 20;

/// The most memory a registry of `max_peers` entries takes, in bytes,
/// counting what growing its tables and saving it add for a moment (see
/// the [module docs](self#memory)); the server prints it at start-up.
pub fn worst_case_bytes(max_peers: usize) -> u64 {
    use std::mem::size_of;
    let n = max_peers.max(1);
    // hashbrown: buckets are a power of two with 1/8 left empty; while it
    // grows, the old table (half the size) lives beside the new one.
    let buckets = (n.saturating_mul(8) / 7).max(4).next_power_of_two();
    let slot = size_of::<(PeerAddr, Entry)>() + 1;
    let map = buckets.saturating_mul(slot).saturating_mul(3) / 2;
    // One ordered-set key per entry, nodes at least half full.
    let order = n.saturating_mul(2 * size_of::<(Instant, PeerAddr)>());
    // The sampling vector doubles: old and new while it does.
    let verified = n
        .next_power_of_two()
        .saturating_mul(size_of::<PeerAddr>())
        .saturating_mul(3)
        / 2;
    // A save: the entries to write, then their JSON.
    let save = n.saturating_mul(
        size_of::<SavedEntry>()
            + SAVED_STRINGS_BYTES
            + usize::try_from(persist::SAVED_ENTRY_MAX_BYTES).unwrap_or(usize::MAX),
    );
    let total = FIXED_BYTES
        .saturating_add(map)
        .saturating_add(order)
        .saturating_add(verified)
        .saturating_add(save);
    u64::try_from(total).unwrap_or(u64::MAX)
}
// A registry file saved at the default capacity always loads.
const _: () = assert!(persist::FILE_BOUND_MIN_ENTRIES == DEFAULT_MAX_PEERS);

/// What [`Registry::announce`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnounceOutcome {
    /// A new entry was recorded, unverified: start a dial-back probe now.
    Added {
        /// The unverified entry evicted to make room, if the registry was full.
        evicted: Option<PeerAddr>,
    },
    /// An existing entry was refreshed.
    Refreshed {
        /// Whether to start a dial-back probe now: the node_id changed, or the
        /// entry is unverified with no probe running, or it is verified and its
        /// last success is [`REPROBE_INTERVAL`] old.
        probe: bool,
    },
    /// The address is new, the registry is full and every entry is verified:
    /// the newcomer was refused and nothing changed.
    Full,
}

impl AnnounceOutcome {
    /// Whether the server should start a dial-back probe of the address now.
    pub const fn should_probe(&self) -> bool {
        match self {
            Self::Added { .. } => true,
            Self::Refreshed { probe } => *probe,
            Self::Full => false,
        }
    }
}

/// What a probe result did to its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The entry is verified and listed.
    Verified,
    /// The probe counted as failed; the entry is kept, unverified.
    Failed,
    /// The probe counted as failed and the entry reached
    /// [`REGISTRY_MAX_FAILED_PROBES`]: it was removed.
    ///
    /// [`REGISTRY_MAX_FAILED_PROBES`]: wire_format::limits::REGISTRY_MAX_FAILED_PROBES
    Removed,
    /// No entry for that address (expired, evicted or removed meanwhile): the
    /// result was ignored.
    Unknown,
}

/// Counters for the questions an operator asks about the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    /// Announces received.
    pub announces: u64,
    /// New entries recorded.
    pub added: u64,
    /// Announces that changed an entry's node_id (it needs a new probe).
    pub node_id_changes: u64,
    /// Unverified entries evicted to make room for a newcomer.
    pub evicted_unverified: u64,
    /// Newcomers refused because every entry was verified.
    pub refused_full: u64,
    /// Entries removed because their last announce was too old.
    pub expired: u64,
    /// Announces that asked for a probe.
    pub probes_requested: u64,
    /// Probes reported started.
    pub probes_started: u64,
    /// Probes that verified their entry.
    pub probes_succeeded: u64,
    /// Probes that failed, node_id mismatches included.
    pub probes_failed: u64,
    /// Probes that reached a node with another node_id than the announced one.
    pub node_id_mismatches: u64,
    /// Entries removed at their last allowed failed probe.
    pub removed_failed_probes: u64,
    /// Probe results for addresses no longer registered.
    pub probe_results_unknown: u64,
    /// Entries restored from a saved file.
    pub restored: u64,
    /// Saved entries dropped on restore: unparseable, never dialable, expired,
    /// duplicate, or beyond `max_peers`.
    pub restore_dropped: u64,
}

/// The registry of announced peers. See the [module docs](self) for the
/// lifecycle, the eviction rule and the memory bound.
#[derive(Debug)]
pub struct Registry {
    max_peers: usize,
    entries: HashMap<PeerAddr, Entry>,
    /// Verified addresses, for O(n) sampling; removal is a swap-remove that
    /// updates the moved entry's `verified_slot`.
    verified: Vec<PeerAddr>,
    /// Verified entries by (last announce, address), oldest first.
    verified_order: BTreeSet<(Instant, PeerAddr)>,
    /// Unverified entries by (last announce, address), oldest first: expiry
    /// and eviction pop from the front.
    unverified_order: BTreeSet<(Instant, PeerAddr)>,
    stats: RegistryStats,
}

impl Registry {
    /// An empty registry holding at most `max_peers` entries (verified or not).
    pub fn new(max_peers: usize) -> Self {
        Self {
            max_peers,
            entries: HashMap::new(),
            verified: Vec::new(),
            verified_order: BTreeSet::new(),
            unverified_order: BTreeSet::new(),
            stats: RegistryStats::default(),
        }
    }

    /// The capacity given to [`Registry::new`].
    pub const fn max_peers(&self) -> usize {
        self.max_peers
    }

    /// Entries held, verified or not, including expired ones that
    /// [`Registry::expire`] has not removed yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the registry holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Verified entries held, including expired ones not removed yet.
    pub fn verified_len(&self) -> usize {
        self.verified.len()
    }

    /// The entry for `addr`, which may be expired if [`Registry::expire`] has
    /// not run since.
    pub fn get(&self, addr: &PeerAddr) -> Option<&Entry> {
        self.entries.get(addr)
    }

    /// Every verified entry, in no particular order, including expired ones not
    /// removed yet (check [`Entry::is_expired`]).
    pub fn iter_verified(&self) -> impl Iterator<Item = (PeerAddr, &Entry)> + '_ {
        self.verified
            .iter()
            .filter_map(|addr| self.entries.get(addr).map(|entry| (*addr, entry)))
    }

    /// Unverified, unexpired entries with no probe pending, oldest announce
    /// first: the probes to start, e.g. after [`Registry::from_saved`].
    pub fn awaiting_probe(&self, now: Instant) -> impl Iterator<Item = PeerAddr> + '_ {
        self.unverified_order.iter().filter_map(move |&(_, addr)| {
            let entry = self.entries.get(&addr)?;
            (!entry.is_expired(now) && !entry.probe_pending(now)).then_some(addr)
        })
    }

    /// The counters.
    pub const fn stats(&self) -> RegistryStats {
        self.stats
    }

    /// Records an announce of `addr` (observed source IP + HELLO listen port)
    /// by `node_id`, and says whether to probe it now.
    ///
    /// A known address is refreshed: its last announce becomes `now` (never
    /// moving backwards), and a changed node_id makes it unverified again with
    /// its failure count reset. A new address, or one whose entry expired, is
    /// recorded unverified; when the registry is full the
    /// [eviction rule](self#eviction-rule) applies.
    pub fn announce(&mut self, addr: PeerAddr, node_id: NodeId, now: Instant) -> AnnounceOutcome {
        self.stats.announces += 1;
        if self.entries.get(&addr).is_some_and(|e| e.is_expired(now)) {
            self.remove_entry(addr);
            self.stats.expired += 1;
        }

        if let Some(entry) = self.entries.get_mut(&addr) {
            let id_changed = entry.change_node_id(node_id);
            let probe = id_changed || entry.wants_probe(now);
            self.touch(addr, now);
            if id_changed {
                self.stats.node_id_changes += 1;
                self.set_verified(addr, false);
            }
            if probe {
                self.stats.probes_requested += 1;
            }
            return AnnounceOutcome::Refreshed { probe };
        }

        let mut evicted = None;
        if self.entries.len() >= self.max_peers {
            self.expire(now);
        }
        if self.entries.len() >= self.max_peers {
            match self.unverified_order.first().map(|&(_, oldest)| oldest) {
                Some(oldest) => {
                    self.remove_entry(oldest);
                    self.stats.evicted_unverified += 1;
                    evicted = Some(oldest);
                }
                None => {
                    self.stats.refused_full += 1;
                    return AnnounceOutcome::Full;
                }
            }
            // Still full only if max_peers is 0, or eviction failed to free a
            // slot (a broken invariant): refuse rather than exceed the bound.
            if self.entries.len() >= self.max_peers {
                self.stats.refused_full += 1;
                return AnnounceOutcome::Full;
            }
        }
        self.insert_unverified(addr, node_id, now, now);
        self.stats.added += 1;
        self.stats.probes_requested += 1;
        AnnounceOutcome::Added { evicted }
    }

    /// Notes that a dial-back probe of `addr` started at `now`, so announces do
    /// not ask for another until it finishes or is presumed lost. Returns
    /// whether `addr` is registered.
    pub fn probe_started(&mut self, addr: PeerAddr, now: Instant) -> bool {
        match self.entries.get_mut(&addr) {
            Some(entry) => {
                entry.start_probe(now);
                self.stats.probes_started += 1;
                true
            }
            None => false,
        }
    }

    /// A probe of `addr` completed a HELLO exchange and saw `node_id_seen`.
    /// It verifies the entry only if that is the recorded node_id; otherwise
    /// someone else listens there, and the probe counts as failed.
    pub fn probe_succeeded(
        &mut self,
        addr: PeerAddr,
        node_id_seen: NodeId,
        now: Instant,
    ) -> ProbeOutcome {
        let Some(entry) = self.entries.get_mut(&addr) else {
            self.stats.probe_results_unknown += 1;
            return ProbeOutcome::Unknown;
        };
        if entry.node_id() != node_id_seen {
            self.stats.node_id_mismatches += 1;
            return self.record_failure(addr, now);
        }
        entry.probe_succeeded(now);
        self.set_verified(addr, true);
        self.stats.probes_succeeded += 1;
        ProbeOutcome::Verified
    }

    /// A probe of `addr` failed (no connect, no HELLO, or a bad one). The entry
    /// is unlisted, and removed at its [`REGISTRY_MAX_FAILED_PROBES`]th
    /// failure in a row.
    ///
    /// [`REGISTRY_MAX_FAILED_PROBES`]: wire_format::limits::REGISTRY_MAX_FAILED_PROBES
    pub fn probe_failed(&mut self, addr: PeerAddr, now: Instant) -> ProbeOutcome {
        if !self.entries.contains_key(&addr) {
            self.stats.probe_results_unknown += 1;
            return ProbeOutcome::Unknown;
        }
        self.record_failure(addr, now)
    }

    /// Removes every entry expired at `now` (see [`Entry::is_expired`]) and
    /// returns how many. Costs `O(k log n)` for `k` expired entries.
    pub fn expire(&mut self, now: Instant) -> usize {
        let mut removed = 0;
        for verified in [false, true] {
            loop {
                let order = if verified {
                    &mut self.verified_order
                } else {
                    &mut self.unverified_order
                };
                match order.first() {
                    Some(&(last_announce, _)) if is_expired(last_announce, now) => {}
                    _ => break,
                }
                // Popped before `remove_entry`, so the loop ends even if the
                // entry map disagreed with the order.
                let Some((_, addr)) = order.pop_first() else {
                    break;
                };
                self.remove_entry(addr);
                self.stats.expired += 1;
                removed += 1;
            }
        }
        removed
    }

    /// Up to `n` verified, unexpired addresses chosen uniformly at random
    /// without repetition, none of them in `exclude` (the asker, the server
    /// itself). The PEERS answer uses `n =`
    /// [`PEX_MAX_ENTRIES`](wire_format::limits::PEX_MAX_ENTRIES).
    ///
    /// Walks a lazy Fisher–Yates shuffle of the verified list, so the cost is
    /// `O(n + skipped)` time and memory, never a scan of the registry unless
    /// nearly every verified entry is excluded or expired (which
    /// [`Registry::expire`], run periodically, prevents).
    pub fn sample<R: Rng + ?Sized>(
        &self,
        n: usize,
        exclude: &[PeerAddr],
        now: Instant,
        rng: &mut R,
    ) -> Vec<PeerAddr> {
        let len = self.verified.len();
        let mut out = Vec::with_capacity(n.min(len));
        // Positions of the virtual shuffle that no longer hold their own index.
        let mut moved: HashMap<usize, usize> = HashMap::new();
        for i in 0..len {
            if out.len() >= n {
                break;
            }
            let j = rng.random_range(i..len);
            let picked = moved.get(&j).copied().unwrap_or(j);
            let displaced = moved.get(&i).copied().unwrap_or(i);
            moved.insert(j, displaced);
            moved.remove(&i);
            let Some(&addr) = self.verified.get(picked) else {
                continue;
            };
            if exclude.contains(&addr) || self.entries.get(&addr).is_none_or(|e| e.is_expired(now))
            {
                continue;
            }
            out.push(addr);
        }
        out
    }

    /// The verified, unexpired entries to persist, freshest first (so a capped
    /// load keeps the freshest). `now` and `now_system` are the same moment on
    /// the monotonic and the wall clock, to turn instants into unix seconds.
    pub fn to_saved(&self, now: Instant, now_system: SystemTime) -> Vec<SavedEntry> {
        self.verified_order
            .iter()
            .rev()
            .filter(|&&(last_announce, _)| !is_expired(last_announce, now))
            .filter_map(|&(last_announce, addr)| {
                let entry = self.entries.get(&addr)?;
                Some(SavedEntry::new(
                    addr,
                    entry.node_id(),
                    last_announce,
                    now,
                    now_system,
                ))
            })
            .collect()
    }

    /// A registry holding `saved` as **unverified** entries, to be probed again
    /// at start ([`Registry::awaiting_probe`]). Each keeps its age, so an
    /// entry saved long ago expires on time; what [`persist::restore`] drops
    /// (bad, never dialable, expired, duplicate, beyond `max_peers`) is
    /// counted in [`RegistryStats::restore_dropped`].
    ///
    /// `now` and `now_system` are the same moment on both clocks.
    pub fn from_saved(
        max_peers: usize,
        saved: impl IntoIterator<Item = SavedEntry>,
        now: Instant,
        now_system: SystemTime,
    ) -> Self {
        let restored = persist::restore(saved, max_peers, now, now_system);
        let mut registry = Self::new(max_peers);
        for entry in restored.entries {
            registry.insert_unverified(
                entry.addr,
                entry.node_id,
                entry.last_announce,
                entry.last_announce,
            );
            registry.stats.restored += 1;
        }
        registry.stats.restore_dropped = restored.dropped;
        registry
    }

    fn insert_unverified(
        &mut self,
        addr: PeerAddr,
        node_id: NodeId,
        last_announce: Instant,
        first_seen: Instant,
    ) {
        self.entries
            .insert(addr, Entry::new(node_id, first_seen, last_announce));
        self.unverified_order.insert((last_announce, addr));
    }

    /// Removes `addr` from the map, its order set and the verified list.
    fn remove_entry(&mut self, addr: PeerAddr) -> Option<Entry> {
        let entry = self.entries.remove(&addr)?;
        let key = (entry.last_announce(), addr);
        match entry.verified_slot() {
            Some(slot) => {
                self.verified_order.remove(&key);
                self.unlist(slot);
            }
            None => {
                self.unverified_order.remove(&key);
            }
        }
        Some(entry)
    }

    /// Swap-removes `verified[slot]` and fixes the slot of the address moved
    /// into its place.
    fn unlist(&mut self, slot: usize) {
        if slot >= self.verified.len() {
            return;
        }
        self.verified.swap_remove(slot);
        if let Some(moved) = self.verified.get(slot).copied()
            && let Some(entry) = self.entries.get_mut(&moved)
        {
            entry.set_verified_slot(Some(slot));
        }
    }

    /// Moves `addr` between the verified and unverified structures.
    fn set_verified(&mut self, addr: PeerAddr, verified: bool) {
        let Some(entry) = self.entries.get_mut(&addr) else {
            return;
        };
        let key = (entry.last_announce(), addr);
        match (entry.verified_slot(), verified) {
            (None, true) => {
                entry.set_verified_slot(Some(self.verified.len()));
                self.verified.push(addr);
                self.unverified_order.remove(&key);
                self.verified_order.insert(key);
            }
            (Some(slot), false) => {
                entry.set_verified_slot(None);
                self.verified_order.remove(&key);
                self.unverified_order.insert(key);
                self.unlist(slot);
            }
            _ => {}
        }
    }

    /// Moves `addr`'s last announce forward to `now` (never backwards: the
    /// server's tasks may report slightly out of order).
    fn touch(&mut self, addr: PeerAddr, now: Instant) {
        let Some(entry) = self.entries.get_mut(&addr) else {
            return;
        };
        if now <= entry.last_announce() {
            return;
        }
        let order = if entry.is_verified() {
            &mut self.verified_order
        } else {
            &mut self.unverified_order
        };
        order.remove(&(entry.last_announce(), addr));
        order.insert((now, addr));
        entry.set_last_announce(now);
    }

    fn record_failure(&mut self, addr: PeerAddr, now: Instant) -> ProbeOutcome {
        let Some(entry) = self.entries.get_mut(&addr) else {
            self.stats.probe_results_unknown += 1;
            return ProbeOutcome::Unknown;
        };
        let remove = entry.probe_failed(now);
        self.stats.probes_failed += 1;
        if remove {
            self.remove_entry(addr);
            self.stats.removed_failed_probes += 1;
            ProbeOutcome::Removed
        } else {
            self.set_verified(addr, false);
            ProbeOutcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use std::fs;
    use std::time::{Duration, UNIX_EPOCH};

    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use wire_format::limits::{
        CONNECT_TIMEOUT, HELLO_TIMEOUT, NODE_ID_BYTES, PEX_MAX_ENTRIES, REGISTRY_EXPIRY,
    };

    use super::*;

    fn addr(i: u32) -> PeerAddr {
        // 11.0.0.0/8 is public; one address per i, all on one port.
        let [_, b, c, d] = i.to_be_bytes();
        PeerAddr::new(IpAddr::V4(Ipv4Addr::new(11, b, c, d)), 7000)
    }

    fn id(i: u32) -> NodeId {
        let mut bytes = [0u8; NODE_ID_BYTES];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        NodeId(bytes)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// Announces `addr(i)` and verifies it with a matching probe.
    fn add_verified(reg: &mut Registry, i: u32, now: Instant) {
        assert!(reg.announce(addr(i), id(i), now).should_probe());
        assert!(reg.probe_started(addr(i), now));
        assert_eq!(
            reg.probe_succeeded(addr(i), id(i), now),
            ProbeOutcome::Verified
        );
    }

    /// The internal structures agree with each other.
    fn check_invariants(reg: &Registry) {
        assert_eq!(
            reg.verified_order.len() + reg.unverified_order.len(),
            reg.entries.len()
        );
        assert_eq!(reg.verified.len(), reg.verified_order.len());
        assert!(reg.entries.len() <= reg.max_peers);
        for (slot, a) in reg.verified.iter().enumerate() {
            let e = &reg.entries[a];
            assert_eq!(e.verified_slot(), Some(slot));
            assert!(reg.verified_order.contains(&(e.last_announce(), *a)));
        }
        for (a, e) in &reg.entries {
            let order = if e.is_verified() {
                &reg.verified_order
            } else {
                &reg.unverified_order
            };
            assert!(order.contains(&(e.last_announce(), *a)));
        }
    }

    #[test]
    fn announce_of_a_new_address_requests_a_probe() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        let outcome = reg.announce(addr(1), id(1), t0);
        assert_eq!(outcome, AnnounceOutcome::Added { evicted: None });
        assert!(outcome.should_probe());
        let entry = reg.get(&addr(1)).unwrap();
        assert!(!entry.is_verified());
        assert_eq!(entry.node_id(), id(1));
        assert_eq!(entry.first_seen(), t0);
        assert_eq!(reg.awaiting_probe(t0).collect::<Vec<_>>(), [addr(1)]);

        // While the probe runs, announces do not ask for another.
        reg.probe_started(addr(1), t0);
        assert!(reg.get(&addr(1)).unwrap().probe_in_flight());
        let again = reg.announce(addr(1), id(1), t0 + secs(1));
        assert_eq!(again, AnnounceOutcome::Refreshed { probe: false });
        assert_eq!(reg.get(&addr(1)).unwrap().last_announce(), t0 + secs(1));
        assert_eq!(reg.awaiting_probe(t0 + secs(1)).count(), 0);
        check_invariants(&reg);
    }

    #[test]
    fn verified_only_after_a_matching_probe() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        reg.announce(addr(1), id(1), t0);
        reg.probe_started(addr(1), t0);
        assert!(reg.sample(50, &[], t0, &mut rng()).is_empty());
        assert_eq!(reg.verified_len(), 0);

        let outcome = reg.probe_succeeded(addr(1), id(1), t0 + secs(1));
        assert_eq!(outcome, ProbeOutcome::Verified);
        let entry = reg.get(&addr(1)).unwrap();
        assert!(entry.is_verified());
        assert!(!entry.probe_in_flight());
        assert_eq!(entry.last_probe(), Some(t0 + secs(1)));
        assert_eq!(reg.sample(50, &[], t0, &mut rng()), [addr(1)]);
        assert_eq!(reg.stats().probes_succeeded, 1);
        check_invariants(&reg);
    }

    #[test]
    fn probe_seeing_another_node_id_is_a_failure() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        reg.announce(addr(1), id(1), t0);
        reg.probe_started(addr(1), t0);
        assert_eq!(
            reg.probe_succeeded(addr(1), id(99), t0),
            ProbeOutcome::Failed
        );
        let entry = reg.get(&addr(1)).unwrap();
        assert!(!entry.is_verified());
        assert_eq!(entry.failed_probes(), 1);
        assert!(reg.sample(50, &[], t0, &mut rng()).is_empty());
        assert_eq!(reg.stats().node_id_mismatches, 1);
        assert_eq!(reg.stats().probes_failed, 1);

        // The second mismatch removes it, like any second failure.
        reg.announce(addr(1), id(1), t0 + secs(1));
        assert_eq!(
            reg.probe_succeeded(addr(1), id(99), t0 + secs(2)),
            ProbeOutcome::Removed
        );
        assert!(reg.get(&addr(1)).is_none());
        check_invariants(&reg);
    }

    #[test]
    fn entry_is_removed_at_the_second_failed_probe_not_the_first() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        reg.announce(addr(1), id(1), t0);
        reg.probe_started(addr(1), t0);
        assert_eq!(
            reg.probe_failed(addr(1), t0 + secs(5)),
            ProbeOutcome::Failed
        );
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.get(&addr(1)).unwrap().failed_probes(), 1);

        // The next announce asks for another probe.
        assert_eq!(
            reg.announce(addr(1), id(1), t0 + secs(10)),
            AnnounceOutcome::Refreshed { probe: true }
        );
        reg.probe_started(addr(1), t0 + secs(10));
        assert_eq!(
            reg.probe_failed(addr(1), t0 + secs(15)),
            ProbeOutcome::Removed
        );
        assert!(reg.is_empty());
        assert_eq!(reg.stats().removed_failed_probes, 1);
        assert_eq!(
            reg.probe_failed(addr(1), t0 + secs(16)),
            ProbeOutcome::Unknown
        );
        assert_eq!(reg.stats().probe_results_unknown, 1);
        check_invariants(&reg);
    }

    #[test]
    fn success_resets_failures_and_a_failure_unlists_a_verified_entry() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        reg.announce(addr(1), id(1), t0);
        reg.probe_failed(addr(1), t0);
        reg.probe_succeeded(addr(1), id(1), t0 + secs(1));
        assert_eq!(reg.get(&addr(1)).unwrap().failed_probes(), 0);
        assert_eq!(reg.verified_len(), 1);

        // One failure of a verified entry unlists it but keeps it.
        assert_eq!(
            reg.probe_failed(addr(1), t0 + secs(2)),
            ProbeOutcome::Failed
        );
        assert_eq!(reg.verified_len(), 0);
        assert_eq!(reg.len(), 1);
        check_invariants(&reg);
    }

    #[test]
    fn node_id_change_unverifies_and_requests_a_probe() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        add_verified(&mut reg, 1, t0);
        assert_eq!(
            reg.announce(addr(1), id(1), t0 + secs(1)),
            AnnounceOutcome::Refreshed { probe: false }
        );
        assert_eq!(
            reg.announce(addr(1), id(2), t0 + secs(2)),
            AnnounceOutcome::Refreshed { probe: true }
        );
        let entry = reg.get(&addr(1)).unwrap();
        assert!(!entry.is_verified());
        assert_eq!(entry.node_id(), id(2));
        assert!(reg.sample(50, &[], t0 + secs(2), &mut rng()).is_empty());
        // The old node_id no longer verifies it; the new one does.
        assert_eq!(
            reg.probe_succeeded(addr(1), id(2), t0 + secs(3)),
            ProbeOutcome::Verified
        );
        assert_eq!(reg.stats().node_id_changes, 1);
        check_invariants(&reg);
    }

    #[test]
    fn verified_entry_is_reprobed_after_the_interval() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        add_verified(&mut reg, 1, t0);
        let just_before = t0 + REPROBE_INTERVAL - secs(1);
        assert!(!reg.announce(addr(1), id(1), just_before).should_probe());
        assert!(
            reg.announce(addr(1), id(1), t0 + REPROBE_INTERVAL)
                .should_probe()
        );
        // It stays listed while the re-probe runs.
        assert_eq!(reg.verified_len(), 1);
    }

    #[test]
    fn a_lost_probe_does_not_block_the_next_one() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        reg.announce(addr(1), id(1), t0);
        reg.probe_started(addr(1), t0);
        let before = t0 + PROBE_LOST_AFTER - secs(1);
        assert!(!reg.announce(addr(1), id(1), before).should_probe());
        assert!(
            reg.announce(addr(1), id(1), t0 + PROBE_LOST_AFTER)
                .should_probe()
        );
        assert!(PROBE_LOST_AFTER > CONNECT_TIMEOUT + HELLO_TIMEOUT);
    }

    #[test]
    fn sample_excludes_unverified_the_asker_and_the_server() {
        let t0 = Instant::now();
        let mut reg = Registry::new(100);
        for i in 0..10 {
            add_verified(&mut reg, i, t0);
        }
        for i in 10..20 {
            reg.announce(addr(i), id(i), t0);
        }
        let asker = addr(3);
        let server = addr(7);
        for seed in 0..20 {
            let got = reg.sample(50, &[asker, server], t0, &mut StdRng::seed_from_u64(seed));
            let mut sorted = got.clone();
            sorted.sort();
            let expected: Vec<_> = (0..10).filter(|&i| i != 3 && i != 7).map(addr).collect();
            assert_eq!(sorted, expected);
        }
        assert!(reg.sample(0, &[], t0, &mut rng()).is_empty());
    }

    #[test]
    fn sample_50_of_1000_verified_is_distinct_and_never_excluded() {
        let t0 = Instant::now();
        let mut reg = Registry::new(DEFAULT_MAX_PEERS);
        for i in 0..1000 {
            add_verified(&mut reg, i, t0);
        }
        let exclude: Vec<_> = (0..500).map(addr).collect();
        let mut r = rng();
        for _ in 0..50 {
            let got = reg.sample(PEX_MAX_ENTRIES, &exclude, t0, &mut r);
            assert_eq!(got.len(), PEX_MAX_ENTRIES);
            let distinct: BTreeSet<_> = got.iter().collect();
            assert_eq!(distinct.len(), PEX_MAX_ENTRIES);
            assert!(got.iter().all(|a| !exclude.contains(a)));
            assert!(got.iter().all(|a| reg.get(a).unwrap().is_verified()));
        }
    }

    #[test]
    fn sample_is_roughly_uniform() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        for i in 0..4 {
            add_verified(&mut reg, i, t0);
        }
        let mut counts = [0u32; 4];
        let mut r = rng();
        for _ in 0..4000 {
            let got = reg.sample(1, &[], t0, &mut r);
            let [one] = got.as_slice() else {
                panic!("expected one entry, got {got:?}");
            };
            let i = (0..4).find(|&i| addr(i) == *one).unwrap();
            counts[i as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn sample_skips_expired_entries_not_yet_removed() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        add_verified(&mut reg, 1, t0);
        add_verified(&mut reg, 2, t0 + secs(60));
        let at = t0 + REGISTRY_EXPIRY;
        assert_eq!(reg.sample(50, &[], at, &mut rng()), [addr(2)]);
        assert_eq!(reg.verified_len(), 2);
    }

    #[test]
    fn expiry_boundary() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        add_verified(&mut reg, 1, t0);
        reg.announce(addr(2), id(2), t0);

        assert_eq!(reg.expire(t0 + REGISTRY_EXPIRY - secs(1)), 0);
        assert_eq!(reg.len(), 2);
        assert!(
            !reg.get(&addr(1))
                .unwrap()
                .is_expired(t0 + REGISTRY_EXPIRY - secs(1))
        );
        // The boundary instant itself counts as expired.
        assert!(reg.get(&addr(1)).unwrap().is_expired(t0 + REGISTRY_EXPIRY));
        assert!(
            reg.get(&addr(1))
                .unwrap()
                .is_expired(t0 + REGISTRY_EXPIRY + secs(1))
        );
        assert_eq!(reg.expire(t0 + REGISTRY_EXPIRY), 2);
        assert!(reg.is_empty());
        assert_eq!(reg.stats().expired, 2);
        check_invariants(&reg);

        // A refresh moves the deadline.
        reg.announce(addr(3), id(3), t0);
        reg.announce(addr(3), id(3), t0 + secs(600));
        assert_eq!(reg.expire(t0 + REGISTRY_EXPIRY + secs(1)), 0);
        assert_eq!(reg.expire(t0 + secs(600) + REGISTRY_EXPIRY + secs(1)), 1);
    }

    #[test]
    fn announce_after_expiry_starts_a_new_unverified_entry() {
        let t0 = Instant::now();
        let mut reg = Registry::new(10);
        add_verified(&mut reg, 1, t0);
        let late = t0 + REGISTRY_EXPIRY + secs(1);
        assert_eq!(
            reg.announce(addr(1), id(1), late),
            AnnounceOutcome::Added { evicted: None }
        );
        let entry = reg.get(&addr(1)).unwrap();
        assert!(!entry.is_verified());
        assert_eq!(entry.first_seen(), late);
        check_invariants(&reg);
    }

    #[test]
    fn full_registry_evicts_the_oldest_unverified() {
        let t0 = Instant::now();
        let mut reg = Registry::new(4);
        add_verified(&mut reg, 0, t0);
        reg.announce(addr(1), id(1), t0 + secs(1));
        reg.announce(addr(2), id(2), t0 + secs(2));
        add_verified(&mut reg, 3, t0 + secs(3));
        // addr(1) is refreshed, so addr(2) is now the oldest unverified.
        reg.announce(addr(1), id(1), t0 + secs(4));

        let outcome = reg.announce(addr(9), id(9), t0 + secs(5));
        assert_eq!(
            outcome,
            AnnounceOutcome::Added {
                evicted: Some(addr(2))
            }
        );
        assert!(outcome.should_probe());
        assert_eq!(reg.len(), 4);
        assert!(reg.get(&addr(2)).is_none());
        assert!(reg.get(&addr(9)).is_some());
        assert_eq!(reg.stats().evicted_unverified, 1);
        check_invariants(&reg);
    }

    #[test]
    fn full_registry_of_verified_entries_refuses_newcomers() {
        let t0 = Instant::now();
        let mut reg = Registry::new(3);
        for i in 0..3 {
            add_verified(&mut reg, i, t0);
        }
        for i in 10..20 {
            assert_eq!(
                reg.announce(addr(i), id(i), t0 + secs(1)),
                AnnounceOutcome::Full
            );
        }
        assert_eq!(reg.len(), 3);
        assert_eq!(reg.verified_len(), 3);
        assert_eq!(reg.stats().refused_full, 10);
        // Known addresses still refresh.
        assert!(matches!(
            reg.announce(addr(0), id(0), t0 + secs(2)),
            AnnounceOutcome::Refreshed { .. }
        ));
        check_invariants(&reg);
    }

    #[test]
    fn full_registry_drops_expired_entries_before_evicting() {
        let t0 = Instant::now();
        let mut reg = Registry::new(2);
        add_verified(&mut reg, 0, t0);
        add_verified(&mut reg, 1, t0 + secs(60));
        let later = t0 + REGISTRY_EXPIRY;
        assert_eq!(
            reg.announce(addr(2), id(2), later),
            AnnounceOutcome::Added { evicted: None }
        );
        assert!(reg.get(&addr(0)).is_none());
        assert!(reg.get(&addr(1)).unwrap().is_verified());
        assert_eq!(reg.stats().expired, 1);
        check_invariants(&reg);
    }

    #[test]
    fn zero_capacity_refuses_everything() {
        let t0 = Instant::now();
        let mut reg = Registry::new(0);
        assert_eq!(reg.announce(addr(1), id(1), t0), AnnounceOutcome::Full);
        assert!(reg.is_empty());
    }

    #[test]
    fn random_operations_keep_the_structures_consistent() {
        let t0 = Instant::now();
        let mut reg = Registry::new(50);
        let mut r = rng();
        for step in 0..20_000u64 {
            let now = t0 + secs(step / 4);
            let i = r.random_range(0..120);
            match r.random_range(0..6) {
                0 | 1 => {
                    let node = if r.random_range(0..10) == 0 {
                        i + 1000
                    } else {
                        i
                    };
                    reg.announce(addr(i), id(node), now);
                }
                2 => {
                    reg.probe_started(addr(i), now);
                }
                3 => {
                    reg.probe_succeeded(addr(i), id(i), now);
                }
                4 => {
                    reg.probe_failed(addr(i), now);
                }
                _ => {
                    if step % 100 == 0 {
                        reg.expire(now);
                    }
                    let got = reg.sample(5, &[addr(i)], now, &mut r);
                    assert!(!got.contains(&addr(i)));
                }
            }
            if step % 97 == 0 {
                check_invariants(&reg);
            }
        }
        check_invariants(&reg);
    }

    #[test]
    fn save_load_restore_round_trip_gives_unverified_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut reg = Registry::new(100);
        for i in 0..5 {
            add_verified(&mut reg, i, t0 + secs(u64::from(i)));
        }
        reg.announce(addr(50), id(50), t0); // unverified: not saved
        let v6: PeerAddr = "[2606:4700::1111]:7001".parse().unwrap();
        reg.announce(v6, id(6), t0);
        reg.probe_succeeded(v6, id(6), t0);

        let now = t0 + secs(10);
        let saved = reg.to_saved(now, wall);
        assert_eq!(saved.len(), 6);
        assert_eq!(saved[0].addr, addr(4).to_string());
        assert_eq!(saved[0].node_id, "0000000400000000");
        save_json(&path, &saved).unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");

        let loaded = load_json(&path, 100).unwrap();
        assert_eq!(loaded, saved);
        // Restart 60 s later, on a fresh monotonic base.
        let t1 = Instant::now() + secs(3600);
        let restored = Registry::from_saved(100, loaded, t1, wall + secs(60));
        assert_eq!(restored.len(), 6);
        assert_eq!(restored.verified_len(), 0);
        assert_eq!(restored.stats().restored, 6);
        let mut expected: Vec<_> = (0..5).map(addr).chain([v6]).collect();
        expected.sort();
        let mut pending: Vec<_> = restored.awaiting_probe(t1).collect();
        pending.sort();
        assert_eq!(pending, expected);
        let entry = restored.get(&addr(4)).unwrap();
        assert_eq!(entry.node_id(), id(4));
        assert!(!entry.is_verified());
        // Age is preserved (to the second, rounded towards older): saved 6 s
        // after its announce, restored 60 s later.
        let age = t1.duration_since(entry.last_announce());
        assert!((secs(66)..=secs(67)).contains(&age), "{age:?}");
        check_invariants(&restored);
    }

    #[test]
    fn restored_entries_keep_their_age_and_expire_on_time() {
        let t0 = Instant::now() + secs(REGISTRY_EXPIRY.as_secs());
        let wall = UNIX_EPOCH + secs(1_700_000_000);
        let stamp = |age: Duration| SavedEntry {
            addr: addr(1).to_string(),
            node_id: id(1).to_string(),
            last_announce_unix_secs: (wall - age).duration_since(UNIX_EPOCH).unwrap().as_secs(),
        };
        let reg = Registry::from_saved(10, [stamp(secs(25 * 60))], t0, wall);
        let entry = reg.get(&addr(1)).unwrap();
        assert!(!entry.is_expired(t0 + secs(5 * 60) - secs(1)));
        assert!(entry.is_expired(t0 + secs(5 * 60)));

        let stale = Registry::from_saved(10, [stamp(REGISTRY_EXPIRY)], t0, wall);
        assert!(stale.is_empty());
        assert_eq!(stale.stats().restore_dropped, 1);
    }

    #[test]
    fn more_saved_entries_than_max_peers_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let mut reg = Registry::new(100);
        for i in 0..20 {
            add_verified(&mut reg, i, t0 + secs(u64::from(i)));
        }
        let now = t0 + secs(30);
        save_json(&path, &reg.to_saved(now, wall)).unwrap();

        // Loading keeps the first (freshest) entries only.
        let loaded = load_json(&path, 5).unwrap();
        assert_eq!(loaded.len(), 5);
        assert_eq!(loaded[0].addr, addr(19).to_string());

        // Restoring caps too, keeping the freshest.
        let all = load_json(&path, usize::MAX).unwrap();
        assert_eq!(all.len(), 20);
        let restored = Registry::from_saved(5, all, now, wall);
        assert_eq!(restored.len(), 5);
        assert!((15..20).all(|i| restored.get(&addr(i)).is_some()));
        assert_eq!(restored.stats().restore_dropped, 15);
    }
}
