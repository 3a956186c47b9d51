//! What a fetch and the connections say to each other: the events the
//! sessions feed a fetch, how a fetch ends ([`FetchError`]), and the handle
//! every requester of one piece shares.
//!
//! Plain types; uses [`super::link`] only.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use wire_format::{PeerAddr, VerifiedPiece};

use super::link::Link;

/// A fetched piece and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The piece's bytes, verified: they hash to the name asked for.
    pub bytes: Bytes,
    /// The peer that gave it (the address it connected from); `None` when
    /// it came from this node's own store.
    pub from: Option<PeerAddr>,
}

/// Events a fetch may have queued; a session that finds the queue full
/// drops the event (the fetch then relies on its timers).
pub(crate) const FETCH_EVENTS: usize = 1024;

/// Why a fetch failed; the API maps each variant to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Every peer asked said it does not have the piece, or there was no
    /// peer to ask. 404.
    #[error(
        "piece not found: every peer asked said it does not have it, or no peer was \
         connected; check the id, or connect to a peer that holds it and retry"
    )]
    NotFound,
    /// The deadline passed while some peers had not answered. 504.
    #[error(
        "deadline passed before any peer gave the piece (some had not answered); \
         retry with a longer timeout"
    )]
    Deadline,
    /// The local store failed; the text says how. 500.
    #[error("local store failed: {0}; check the data directory and its disk")]
    Store(String),
    /// The node is shutting down. 503.
    #[error("the node is shutting down; retry once it runs again")]
    Shutdown,
}

/// What sessions tell a fetch.
#[derive(Debug)]
pub(crate) enum FetchEvent {
    /// The peer holds it (HAVE).
    Have(u64),
    /// The peer does not hold it (DONT_HAVE to our WANT_HAVE or ASK).
    DontHave(u64),
    /// The peer gave it, verified.
    Gave(u64, VerifiedPiece),
    /// The peer lied or its connection ended.
    Failed(u64),
    /// A new connection came up (while widening).
    Connected(Arc<Link>),
}

/// A fetch in progress, shared by every requester of the piece.
#[derive(Debug)]
pub(crate) struct FetchHandle {
    pub(crate) events: mpsc::Sender<FetchEvent>,
    pub(crate) result: watch::Receiver<Option<Result<Fetched, FetchError>>>,
}
