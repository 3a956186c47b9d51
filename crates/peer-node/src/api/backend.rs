//! What the API needs from the node ([`ApiBackend`]), and the constants
//! of the piece routes that a client or a backend must know.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use piece_store::PieceStore;
use wire_format::PieceId;
use wire_format::limits::FETCH_TIMEOUT;

use crate::files::Jobs;
use crate::metrics::Metrics;
use crate::pieces::{FetchError, PeerAccount};
use crate::swarm::PeerView;

/// Longest `timeout` a `GET /api/v1/pieces/{sha256}` may ask for.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long past a fetch's own timeout the API waits for the backend before
/// answering 504 itself. The backend ends its fetch at the timeout; this only
/// keeps a request from hanging on a backend that fails to.
pub const FETCH_GRACE: Duration = Duration::from_secs(1);

/// Response header of `GET /api/v1/pieces/{sha256}`: the piece's id, its
/// sha256 in lowercase hex, so a client can check the bytes it got (and see
/// the canonical spelling of an id it sent in upper case).
pub const SHA256_HEADER: &str = "x-sha256";

/// A boxed future that can move between threads: what [`ApiBackend`]'s
/// asynchronous methods return, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Response header of `GET /api/v1/pieces/{sha256}` carrying the fetch's
/// per-peer account: a JSON array of [`PeerAccount`]s.
pub const EXPLAIN_HEADER: &str = "x-explain";

/// A fetched piece and, when known, what each peer did to fetch it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainedPiece {
    /// The verified bytes.
    pub bytes: Bytes,
    /// The per-peer account; `None` if the backend keeps none.
    pub explain: Option<Vec<PeerAccount>>,
}

/// Who a node is, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Its node id, 16 hex digits (drawn at each start).
    pub node_id: String,
    /// The port it listens on for peers.
    pub listen_port: u16,
}

/// What the whole-file routes work on.
#[derive(Clone)]
pub struct FileAccess {
    /// The node's store.
    pub store: Arc<dyn PieceStore>,
    /// The node's fetch jobs.
    pub jobs: Arc<Jobs>,
}

impl std::fmt::Debug for FileAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAccess").finish_non_exhaustive()
    }
}

/// What the API needs from the node. The node implements it; tests use a
/// fixed double.
pub trait ApiBackend: Send + Sync + 'static {
    /// Every peer the node knows, in the order to show them.
    fn peers(&self) -> Vec<PeerView>;
    /// The node's counters.
    fn metrics(&self) -> &Metrics;
    /// The piece named `id`, from the store or else the swarm, verified: the
    /// bytes hash to `id` (the API sends them as they are). The fetch ends
    /// within `timeout`; the API gives up [`FETCH_GRACE`] after that.
    fn fetch_piece(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>>;
    /// Like [`fetch_piece`](Self::fetch_piece), with the per-peer account
    /// of the fetch when the backend keeps one.
    fn fetch_piece_explained(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<ExplainedPiece, FetchError>> {
        let fetch = self.fetch_piece(id, timeout);
        Box::pin(async move {
            fetch.await.map(|bytes| ExplainedPiece {
                bytes,
                explain: None,
            })
        })
    }

    /// Stores `bytes` as a pinned piece and returns its id. The API has
    /// already checked the length ([`PIECE_MIN`](wire_format::limits::PIECE_MIN) to
    /// [`PIECE_MAX`](wire_format::limits::PIECE_MAX)); hashing is
    /// the backend's, off the I/O task.
    fn put_piece(&self, bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>>;

    /// Who the node is, for the status page; `None` if the backend is no
    /// node.
    fn identity(&self) -> Option<Identity> {
        None
    }

    /// The store and fetch jobs behind the whole-file routes; `None` for a
    /// backend that serves pieces only (those routes then answer 404).
    fn files(&self) -> Option<FileAccess> {
        None
    }

    /// The fetch deadline when a request names none (the node's
    /// `--fetch-timeout`).
    fn default_fetch_timeout(&self) -> Duration {
        FETCH_TIMEOUT
    }
}

/// Why storing a piece failed; each variant is one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// Pinned data leaves no room for the piece. 507. The text is the
    /// store's own explanation, which gives the numbers and what to do
    /// (`StoreError::Full`'s).
    #[error("the piece was not stored: {0}")]
    Full(String),
    /// The bytes are not a valid piece; the text says why. 400.
    #[error("not a valid piece: {0}")]
    Invalid(String),
    /// The local store failed; the text says how. 500.
    #[error(
        "local store failed, the piece was not stored: {0}; check the data directory and its disk"
    )]
    Store(String),
}
