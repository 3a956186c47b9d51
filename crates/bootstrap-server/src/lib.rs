//! The bootstrap server: records peers that announce themselves, verifies
//! each with a dial-back probe, and hands out verified entries.
//!
//! # Layout
//! * [`registry`] — the bounded registry of announced and verified peers:
//!   its table, eviction and sampling; `registry::entry` holds the rules of
//!   one entry (expiry, when to probe, failure count).
//! * [`persist`] — the registry file: format, atomic write, bounded load and
//!   the checks of a restored entry.
//! * [`server`] — the network side: the bootstrap exchange and probes.
//!
//! Imports go one way: `server` uses `registry`, which uses `persist`
//! and `registry::entry`; those two use no module of this crate.

pub mod persist;
pub mod registry;
pub mod server;

pub use server::{Server, ServerConfig, ServerStats};
