//! The peer node: connections, HELLO, peer table, peer exchange, serving,
//! fetching and the local API. Work in progress: today it holds the
//! connection layer that the node and the bootstrap server share.
//!
//! # Layout
//! * [`conn`] — framing over a socket, the HELLO exchange and legacy
//!   detection, deadlines, the dial-back probe.

pub mod conn;
