//! The peer node: connections, HELLO, the peer table and peer exchange,
//! serving and fetching verified pieces, and the local API. Its network
//! layer ([`net`]) is shared with the bootstrap server.
//!
//! # Layout
//! Dependencies point one way, from the top of this list down; a module
//! never uses one above it.
//! * [`api`] — the local HTTP API: guards, routes, JSON views, [`api::NodeApi`].
//! * [`node`] — wiring: bind, start the tasks, run, shut down; [`node::Shared`].
//! * [`files`] — whole files: adding, reading back, fetch jobs.
//! * `session` — one connection from HELLO to close: handshake, the read
//!   loop with the close-or-count rules, the writer.
//! * [`pieces`] — the piece exchange: serving, fetching, receiving GIVEs.
//! * [`swarm`] — peers: table, PEX, connections as peers, bans, admission,
//!   dialling, `peers.json`, the API's peer rows.
//! * [`net`] — framing, the HELLO exchange, probes, sockets and their counts.
//! * [`config`], `clock`, [`metrics`], [`ratelimit`], [`datadir`],
//!   [`process`] — settings, the one clock, counters, token buckets, the data
//!   directory's rules, logging and signals.
//! * `testing` (feature `testing`) — helpers for tests of programs built
//!   on the node: nodes in-process, and `testing::link`, a proxy that is a
//!   bad link (delay, loss, a rate cap, a cut) between them.

pub mod api;
mod clock;
pub mod config;
pub mod datadir;
pub mod dht;
pub mod files;
pub mod metrics;
pub mod net;
pub mod node;
pub mod pieces;
pub mod process;
pub mod ratelimit;
mod session;
pub mod swarm;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
