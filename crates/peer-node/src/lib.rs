//! The peer node: connections, HELLO, peer table, peer exchange, serving,
//! fetching and the local API. Work in progress: today it holds the
//! connection layer that the node and the bootstrap server share.
//!
//! # Layout
//! * [`conn`] — framing over a socket, the HELLO exchange and legacy
//!   detection, deadlines, the dial-back probe.
//! * [`datadir`] — the data directory's ownership and mode rules, the API
//!   token and the `api-addr` file.
//! * [`metrics`] — counters and gauges, rendered for `/metrics` and
//!   `/api/v1/stats`.
//! * [`api`] — the local HTTP API: Host and token guards, routes.

pub mod api;
pub mod conn;
pub mod datadir;
pub mod metrics;
pub mod node;
mod session;
pub mod table;
