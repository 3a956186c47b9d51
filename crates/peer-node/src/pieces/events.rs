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
    /// What each peer the fetch involved did (empty from the store).
    pub explain: Vec<PeerAccount>,
    /// The piece, when it came from a peer through a fetch that left it to
    /// its requester to keep ([`Keep::Requester`](super::Keep)): it is in
    /// no store yet.
    pub unkept: Option<VerifiedPiece>,
}

/// One peer's part in a fetch, for `--explain`: counts are per piece (0 or
/// 1 for one fetch; summed over the pieces of a file job).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerAccount {
    /// The peer's address (as it connected).
    pub peer: String,
    /// ASKs sent to it (a WANT_HAVE alone is not an ASK).
    pub asked: u64,
    /// Pieces it gave.
    pub gave: u64,
    /// Times it said it does not have the piece.
    pub dont_have: u64,
    /// ASKs withdrawn from it: stalled, lost a hedge, or past the deadline.
    pub timed_out: u64,
    /// Pieces it lied about (it was banned).
    pub banned: u64,
    /// Bytes it gave.
    pub bytes: u64,
    /// Milliseconds from first asking it to its answer (or to the end).
    pub ms: u64,
    /// Times it was asked as a hedge for a stalled ASK elsewhere.
    pub hedges: u64,
    /// How the fetch came to ask it: `connected` (a connection it had),
    /// `widening` (dialled from the peer table) or `dht` (an address a DHT
    /// lookup returned).
    pub found: &'static str,
}

impl PeerAccount {
    /// Adds `other` (the same peer, another piece) to this account.
    pub fn add(&mut self, other: &PeerAccount) {
        self.asked += other.asked;
        self.gave += other.gave;
        self.dont_have += other.dont_have;
        self.timed_out += other.timed_out;
        self.banned += other.banned;
        self.bytes += other.bytes;
        self.ms += other.ms;
        self.hedges += other.hedges;
        // Summed over a file's pieces: the farthest search that found it.
        let rank = |f: &str| {
            ["", "connected", "widening", "dht"]
                .iter()
                .position(|r| *r == f)
        };
        if rank(other.found) > rank(self.found) {
            self.found = other.found;
        }
    }
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
        "piece not found: the {asked} peers asked said they do not have it ({known} peers \
         known); check the id, or connect to a peer that holds it and retry"
    )]
    NotFound {
        /// Peers asked (connected, and dialled while widening).
        asked: usize,
        /// Peers in the node's table.
        known: usize,
    },
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
    /// The peer's connection ended.
    Failed(u64),
    /// The peer gave bytes that do not hash to the name (it is banned).
    Lied(u64),
    /// A new connection came up (while widening).
    Connected(Arc<Link>),
}

/// A fetch in progress, shared by every requester of the piece.
#[derive(Debug)]
pub(crate) struct FetchHandle {
    pub(crate) events: mpsc::Sender<FetchEvent>,
    pub(crate) result: watch::Receiver<Option<Result<Fetched, FetchError>>>,
}
