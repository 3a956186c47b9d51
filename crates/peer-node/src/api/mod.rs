//! The node's local HTTP API (docs/ARCHITECTURE.md §4): JSON over HTTP/1.1 on a
//! listener the caller binds, loopback by default.
//!
//! Two guards run before every handler, in this order:
//! 1. **Host** — the `Host` header must name the API's own address (the
//!    bound address, or the local address of the connection) or a loopback
//!    name, with the API's port if it has one; anything else is 403. A web
//!    page that rebinds its DNS name to 127.0.0.1 still sends its own name,
//!    so it cannot reach the API (DNS-rebinding defence).
//! 2. **Token** — every path except `/` and `/metrics` needs
//!    `Authorization: Bearer <token>`, compared in constant time, else 401.
//!    The open paths are listed, not the closed ones, so a route added later
//!    (or a path spelt oddly) is closed unless it is deliberately opened.
//!
//! The node's state comes through [`ApiBackend`], so the routes know
//! nothing of the node's internals and tests can serve a fixed peer list;
//! [`NodeApi`] is the node's implementation.
//!
//! Uses the node's [`Shared`](crate::node::Shared) handle, the swarm's
//! peer rows and the exchange's errors; nothing in the crate uses it.
//!
//! # Layout (dependencies point down this list)
//! * `routes` — the router, the small routes, [`serve`].
//! * `status` — the HTML status page at `/`.
//! * `store` — the store listing, pins and gc.
//! * `node` — [`NodeApi`], the [`ApiBackend`] of a running node.
//! * `files` — the whole-file routes and fetch jobs.
//! * `pieces` — the piece routes and their errors.
//! * `guard` — the Host and token guards, the API's listener.
//! * `backend` — [`ApiBackend`] and the piece routes' constants.
//! * [`json`] — response bodies and the error response.
//! * `fuzzing` (feature `fuzzing`) — the router and the request parsers,
//!   for the fuzz targets.
//!
//! # Pieces
//! * `GET /api/v1/pieces/{sha256}?timeout=SECS` — the piece's bytes, 200
//!   `application/octet-stream` with a `Content-Length` and
//!   [`SHA256_HEADER`] naming the piece. The backend fetches (store, else
//!   swarm) and verifies; the response starts only once it has returned, so
//!   unverified bytes are never sent. `timeout` is integer or decimal seconds,
//!   more than 0 and at most [`MAX_FETCH_TIMEOUT`]; without it the fetch
//!   gets the node's `--fetch-timeout` ([`FETCH_TIMEOUT`](wire_format::limits::FETCH_TIMEOUT) by default).
//!   Failures map as [`FetchError`] documents.
//! * `POST /api/v1/pieces` — stores and pins one piece, 201
//!   `{"sha256": "<hex>", "size": N}` ([`PieceStored`]). The body is
//!   [`PIECE_MIN`](wire_format::limits::PIECE_MIN) to [`PIECE_MAX`](wire_format::limits::PIECE_MAX) bytes: an empty one is 400, a longer one
//!   413, refused from its `Content-Length` before any of it is read (and
//!   before a `100 Continue`), or from the bytes themselves when it is sent
//!   chunked. Failures map as [`PutError`] documents.

mod backend;
mod files;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod guard;
pub mod json;
mod node;
mod pieces;
mod routes;
mod status;
mod store;

pub use backend::{
    ApiBackend, BoxFuture, EXPLAIN_HEADER, ExplainedPiece, FETCH_GRACE, FileAccess, Identity,
    MAX_FETCH_TIMEOUT, PutError, SHA256_HEADER,
};
pub use files::{FetchStarted, FileStored};
pub use guard::TOKEN_ERROR;
pub use json::{ErrorBody, PeersResponse, PieceStored};
pub use node::NodeApi;
pub use routes::{MAX_BODY_BYTES, serve};
pub use status::{STATUS_MAX_ERRORS, STATUS_MAX_PEERS};
pub use store::{FileEntry, GcDone, PieceEntry, StoreView};

pub use crate::pieces::FetchError;
pub use crate::swarm::{BanView, Direction, PeerSource, PeerState, PeerView};
