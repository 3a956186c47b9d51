//! One registry entry and the rules of its life that need no other entry:
//! when it expires, when an announce should start a dial-back probe, and
//! what a probe result does to its failure count.
//!
//! Pure and synchronous like the [registry](super): every rule takes `now`.
//! Uses only `wire_format` and the standard library, never its parent. The
//! registry owns the entries and keeps its indices (the order by last
//! announce, the verified list) in step with them, so the setters here are
//! for it alone.

use std::time::{Duration, Instant};

use wire_format::NodeId;
use wire_format::limits::{
    CONNECT_TIMEOUT, HELLO_TIMEOUT, REANNOUNCE_INTERVAL, REGISTRY_EXPIRY,
    REGISTRY_MAX_FAILED_PROBES,
};

/// A verified entry is probed again when it announces and its last successful
/// probe is at least this old, so a peer that stopped being reachable while it
/// still announces is unlisted.
///
/// Equal to [`REANNOUNCE_INTERVAL`]: a success comes a probe's round trip after
/// the announce that asked for it, so the next announce finds it slightly
/// younger than this and the one after finds it older. A steadily announcing
/// peer is thus re-checked at about every second announce, well within
/// [`REGISTRY_EXPIRY`], at a cost of one connect per peer per two announce
/// periods.
pub const REPROBE_INTERVAL: Duration = REANNOUNCE_INTERVAL;

/// A probe reported started but never finished is assumed lost after this
/// long, and the next announce asks for a new one. Twice the longest a probe
/// can take (connect deadline, then HELLO deadline).
pub const PROBE_LOST_AFTER: Duration = CONNECT_TIMEOUT
    .saturating_add(HELLO_TIMEOUT)
    .saturating_mul(2);

/// One registered peer. Read through [`Registry::get`](super::Registry::get)
/// and [`Registry::iter_verified`](super::Registry::iter_verified); only the
/// registry changes it.
#[derive(Debug, Clone)]
pub struct Entry {
    node_id: NodeId,
    first_seen: Instant,
    last_announce: Instant,
    failed_probes: u32,
    last_probe: Option<Instant>,
    probe_started: Option<Instant>,
    /// Index in the registry's verified list when verified. Invariant:
    /// `verified[slot] == this entry's address`.
    verified_slot: Option<usize>,
}

impl Entry {
    /// A new, unverified entry with no probe yet.
    pub(super) const fn new(node_id: NodeId, first_seen: Instant, last_announce: Instant) -> Self {
        Self {
            node_id,
            first_seen,
            last_announce,
            failed_probes: 0,
            last_probe: None,
            probe_started: None,
            verified_slot: None,
        }
    }

    /// The node_id of the HELLO that announced this address last.
    pub const fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// When this address was first recorded (or restored from disk).
    pub const fn first_seen(&self) -> Instant {
        self.first_seen
    }

    /// When this address last announced itself.
    pub const fn last_announce(&self) -> Instant {
        self.last_announce
    }

    /// Whether the last finished dial-back probe succeeded with the recorded
    /// node_id (and the node_id has not changed since): only verified entries
    /// are handed out.
    pub const fn is_verified(&self) -> bool {
        self.verified_slot.is_some()
    }

    /// Failed probes since the last success (or since the node_id changed).
    pub const fn failed_probes(&self) -> u32 {
        self.failed_probes
    }

    /// When the last probe finished, successfully or not.
    pub const fn last_probe(&self) -> Option<Instant> {
        self.last_probe
    }

    /// Whether a probe was reported started and has not finished. A probe older
    /// than [`PROBE_LOST_AFTER`] still shows here but no longer blocks a new one.
    pub const fn probe_in_flight(&self) -> bool {
        self.probe_started.is_some()
    }

    /// Whether the entry is expired at `now`: its last announce is
    /// [`REGISTRY_EXPIRY`] or more before `now` (the boundary counts as expired).
    pub fn is_expired(&self, now: Instant) -> bool {
        is_expired(self.last_announce, now)
    }

    /// The entry's index in the registry's verified list, if verified.
    pub(super) const fn verified_slot(&self) -> Option<usize> {
        self.verified_slot
    }

    /// Sets the index in the verified list; `None` makes it unverified.
    pub(super) fn set_verified_slot(&mut self, slot: Option<usize>) {
        self.verified_slot = slot;
    }

    /// Sets the last announce; the registry moves the entry in its order by
    /// last announce at the same time.
    pub(super) fn set_last_announce(&mut self, at: Instant) {
        self.last_announce = at;
    }

    /// Whether a probe is running and not yet presumed lost.
    pub(super) fn probe_pending(&self, now: Instant) -> bool {
        self.probe_started
            .is_some_and(|started| now.saturating_duration_since(started) < PROBE_LOST_AFTER)
    }

    /// Records `node_id` as the announcer; returns whether it changed, in
    /// which case the failure count starts again (the registry unverifies it).
    pub(super) fn change_node_id(&mut self, node_id: NodeId) -> bool {
        if self.node_id == node_id {
            return false;
        }
        self.node_id = node_id;
        self.failed_probes = 0;
        true
    }

    /// Whether an announce at `now` by the recorded node_id should start a
    /// probe: not while one is pending; for a verified entry, only once its
    /// last probe is [`REPROBE_INTERVAL`] old; for an unverified one, always.
    pub(super) fn wants_probe(&self, now: Instant) -> bool {
        if self.probe_pending(now) {
            false
        } else if self.is_verified() {
            self.last_probe
                .is_none_or(|t| now.saturating_duration_since(t) >= REPROBE_INTERVAL)
        } else {
            true
        }
    }

    /// Notes that a probe started at `now`.
    pub(super) fn start_probe(&mut self, now: Instant) {
        self.probe_started = Some(now);
    }

    /// Notes a probe that saw the recorded node_id at `now`: failures reset.
    pub(super) fn probe_succeeded(&mut self, now: Instant) {
        self.probe_started = None;
        self.last_probe = Some(now);
        self.failed_probes = 0;
    }

    /// Notes a failed probe at `now`; returns whether the entry has reached
    /// [`REGISTRY_MAX_FAILED_PROBES`] failures in a row and must be removed.
    pub(super) fn probe_failed(&mut self, now: Instant) -> bool {
        self.probe_started = None;
        self.last_probe = Some(now);
        self.failed_probes = self.failed_probes.saturating_add(1);
        self.failed_probes >= REGISTRY_MAX_FAILED_PROBES
    }
}

/// Whether an entry last announced at `last_announce` is expired at `now`.
pub(super) fn is_expired(last_announce: Instant, now: Instant) -> bool {
    now.saturating_duration_since(last_announce) >= REGISTRY_EXPIRY
}

#[cfg(test)]
mod tests {
    use wire_format::PeerAddr;

    use super::*;

    #[test]
    fn entry_stays_small() {
        // The registry docs' memory figure depends on these sizes.
        assert!(size_of::<Entry>() <= 96, "{}", size_of::<Entry>());
        assert!(size_of::<PeerAddr>() <= 32);
    }
}
