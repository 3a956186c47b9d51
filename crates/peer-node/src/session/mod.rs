//! One connection of the node, from its first byte to its close: the HELLO
//! exchange in both directions and the bootstrap announce
//! (`handshake`), then the connection task (`conn`): the read loop with the
//! close-or-count rules and the writer; `error` says how it ended.
//!
//! Uses the swarm (registration, PEX, bans), the piece exchange (serving,
//! fetch events, receiving GIVEs) and [`crate::net`]; never the node's
//! wiring or the API. Inside: handshake → conn → error.

mod conn;
mod error;
mod handshake;

pub(crate) use conn::next_conn_id;
pub(crate) use handshake::{Purpose, announce, run};
