//! `p2p-cli`: the command-line client of the p2p piece exchange.
//!
//! It talks to a node through the node's local HTTP API (found through
//! `DATA_DIR/api-addr`, trusted only while the node holds its data-dir
//! lock), or, with `--peer`, speaks the wire protocol directly to one peer.
//! stdout carries data, stderr messages and progress; the exit code says
//! which kind of failure happened (docs/ARCHITECTURE.md §3).
//!
//! # Layout (dependencies point down this list)
//! * [`app`] — parsed arguments to an exit code: dispatch and error printing.
//! * [`commands`] — one file per group of commands: `ask`, `peers`/`stats`,
//!   `put`/`get`, `ls`/`pin`/`unpin`/`gc`.
//! * [`wire`] — `--peer`: HELLO, ASK and PEERS over a blocking socket.
//! * [`http`] — the API client: bounded times and bodies, status to exit code.
//! * [`locate`] — finding the node: `api-addr`, the lock probe, the token.
//! * [`explain`] — `--explain`'s per-peer table.
//! * [`output`] — tables, sizes, JSON lines, writing a verified piece.
//! * [`cli`] — the flags and commands, with their help.
//! * [`error`] — [`CliError`](error::CliError) and the exit codes.

pub mod app;
pub mod cli;
pub mod commands;
pub mod error;
pub mod explain;
pub mod http;
pub mod locate;
pub mod output;
pub mod wire;
