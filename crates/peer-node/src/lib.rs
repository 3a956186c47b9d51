//! The peer node: connections, HELLO, peer table, peer exchange and the
//! local API (serving and fetching pieces come next). Its connection layer
//! is shared with the bootstrap server.
//!
//! # Layout
//! * [`conn`] — framing over a socket, the HELLO exchange and legacy
//!   detection, deadlines, the dial-back probe.
//! * [`datadir`] — the data directory's ownership and mode rules, the API
//!   token and the `api-addr` file.
//! * [`metrics`] — counters and gauges, rendered for `/metrics` and
//!   `/api/v1/stats`.
//! * [`api`] — the local HTTP API: Host and token guards, routes.
//! * [`table`] — the peer table: PEX drop rules, quotas, caps, backoff.
//! * [`bans`] — the ban list: scope by address class, expiry, a bounded size.
//! * [`ratelimit`] — the global upload/download token bucket and the parsers
//!   of rate and size flags.
//! * [`node`] — the node: listener, limits, dialler, announcer, persistence.
//! * `session` (private) — one connection from HELLO to close: handshake,
//!   duplicate rule, close-or-count rules, writer.
//! * [`process`] — logging and signal handling shared by both programs.
//! * [`testing`] — helpers for tests of programs built on the node: polling
//!   with a deadline, in-process nodes.

pub mod api;
pub mod bans;
pub mod conn;
pub mod datadir;
mod fetch;
mod link;
pub mod metrics;
pub mod node;
pub mod process;
pub mod ratelimit;
mod serve;
mod session;
pub mod table;
pub mod testing;
