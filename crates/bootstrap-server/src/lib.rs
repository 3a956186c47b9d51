//! The bootstrap server: records peers that announce themselves, verifies
//! each with a dial-back probe, and hands out verified entries.
//!
//! # Layout
//! * [`registry`] — the bounded registry of announced and verified peers:
//!   its table, eviction and sampling; `registry::entry` holds the rules of
//!   one entry (expiry, when to probe, failure count).
//! * [`persist`] — the registry file: format, atomic write, bounded load and
//!   the checks of a restored entry.
//! * [`legacy`] — clients of the reference implementation: the table of
//!   legacy entries, one legacy client's connection, the silent probe.
//! * [`server`] — the network side: the bootstrap exchange and probes.
//!
//! Imports go one way: `server` uses `registry` and `legacy`; `registry`
//! uses `persist` and `registry::entry`; none of those uses `server`, and
//! `legacy` and `persist` use no other module of this crate.

pub mod legacy;
pub mod persist;
pub mod registry;
pub mod server;

pub use server::{Server, ServerConfig, ServerStats};
