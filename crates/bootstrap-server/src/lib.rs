//! The bootstrap server: records peers that announce themselves, verifies
//! each with a dial-back probe, and hands out verified entries.
//!
//! # Layout
//! * [`registry`] — the bounded registry of announced and verified peers.
//! * [`server`] — the network side: the bootstrap exchange and probes.

pub mod registry;
pub mod server;

pub use server::{Server, ServerConfig, ServerStats};
