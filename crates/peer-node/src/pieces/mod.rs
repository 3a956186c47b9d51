//! The piece exchange: serving the pieces peers ASK for, fetching the
//! pieces the node's user asks for, and receiving GIVEs (hashing, verifying,
//! banning liars, caching), within the node's byte budgets.
//!
//! Uses the swarm (the live connections to ask, widening dials, bans),
//! [`crate::net`], the store, the rate limits and the metrics; never the
//! sessions or the API. Inside, dependencies point one way, down this list:
//!
//! * `fetch` — one fetch per wanted piece: find holders, ask, hedge.
//! * `widen` — looking beyond the connections: widening rounds, the DHT
//!   lookup beside them, closing their connections once idle.
//! * `account` — one peer's part in one fetch, and its `--explain` row.
//! * `receive` — a GIVE's bytes: streamed hashing, verification, bans, cache.
//! * `serve` — a connection's serving side: ASK and CANCEL; "can we serve
//!   this now?".
//! * `state` — [`Pieces`]: the store, budgets, fetches and live connections.
//! * `events` — what connections tell a fetch; how a fetch ends.
//! * `link` — one connection as a fetch sees it: its control queue.
//! * `asks` — the ASKs and WANT_HAVEs we sent on a connection.

mod account;
mod asks;
mod events;
mod fetch;
mod link;
mod receive;
mod serve;
mod state;
mod widen;

pub use account::EXPLAIN_MAX_PEERS;
pub(crate) use asks::Answered;
pub(crate) use events::FetchEvent;
pub use events::{FetchError, Fetched, PeerAccount};
pub use fetch::{Keep, OPTIMISTIC_MAX_LOAD};
pub(crate) use link::Link;
pub use link::{ANNOUNCED_MAX, WRITE_QUEUE_FRAMES};
pub(crate) use receive::{GiveIntake, receive_give};
pub use receive::{STREAM_CHUNK_BYTES, STREAM_GIVES_FROM};
pub(crate) use serve::{Answer, ServeSide, on_ask, on_cancel, start_answer};
pub use state::{
    FETCH_BUDGET_BYTES, Pieces, SERVE_BUDGET_BYTES, STREAMING_GIVES_MAX, VERIFY_QUEUE_PIECES,
};
pub use widen::{WIDEN_DIALS, WIDEN_DONE, WIDEN_LINGER, WIDEN_MAX_PEERS};
