//! Clients of the reference implementation (legacy clients): the entries
//! verified by a silent dial-back probe, each client's connection state, and
//! the probe itself. See docs/PROTOCOL.md §4, "Bootstrapping".
//!
//! * [`entries`] — [`LegacyEntries`], the bounded table of legacy entries.
//! * [`client`] — [`LegacyClient`], one legacy client's connection: its
//!   address and what it has been told.
//! * [`probe`] — the silent dial-back probe.
//!
//! `entries` uses `probe` (for the longest a probe takes); `client` and
//! `probe` use no file of this crate.

pub mod client;
pub mod entries;
pub mod probe;

pub use client::{LEGACY_PEERS_ANSWER_INTERVAL, LegacyClient};
pub use entries::{
    LEGACY_PROBE_LOST_AFTER, LEGACY_REPROBE_INTERVAL, LegacyAnnounce, LegacyEntries, LegacyStats,
    MAX_LEGACY_ENTRIES,
};
pub use probe::{LegacyProbeError, PROBE_DRAIN_MAX, PROBE_LONGEST, PROBE_QUIET, probe};
