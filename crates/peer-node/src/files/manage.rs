//! Managing the store for its user: what is pinned (files by manifest,
//! loose pieces), pinning and unpinning roots, and dropping what no pinned
//! root reaches, and re-hashing everything it holds. The store is blocking: every call runs on the blocking
//! pool.

use std::sync::Arc;

use piece_store::manifest::{Layout, Level, Manifest};
use piece_store::{GcReport, PieceStore, Root, StoreError, StoreListing, VerifyReport};
use serde::Serialize;
use wire_format::PieceId;

/// Why a store request failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// Nothing by that id is held (to pin) or pinned (to unpin).
    #[error("{0}")]
    NotFound(String),
    /// The store refused: too many roots, or it failed.
    #[error("local store failed: {0}")]
    Store(#[from] StoreError),
    /// The blocking task died.
    #[error("local store task failed: {0}")]
    Task(String),
}

/// What a pin or unpin applied to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RootKind {
    /// A file, by its manifest: keeps every piece of its tree.
    File,
    /// A loose piece: keeps only itself.
    Piece,
}

/// The answer to a pin or an unpin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinChange {
    /// The root's id.
    pub sha256: String,
    /// File or piece.
    pub kind: RootKind,
    /// False if it was already so (pinned, or not pinned).
    pub changed: bool,
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ManageError> + Send + 'static,
) -> Result<T, ManageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ManageError::Task(e.to_string()))?
}

/// What the store keeps.
pub async fn listing(store: Arc<dyn PieceStore>) -> Result<StoreListing, ManageError> {
    blocking(move || Ok(store.listing()?)).await
}

/// Pins `id`: as a file if it is a file's root manifest held here, else as
/// a loose piece; a piece the store does not hold cannot be pinned.
pub async fn pin(store: Arc<dyn PieceStore>, id: PieceId) -> Result<PinChange, ManageError> {
    blocking(move || {
        let Some(bytes) = store.get(&id)? else {
            return Err(ManageError::NotFound(format!(
                "this node holds no piece {id}: add it (p2p-cli put) or fetch it (p2p-cli get) first"
            )));
        };
        let is_file = Manifest::parse(&bytes, &Layout::STANDARD, Level::ROOT).is_ok();
        let (root, kind) = if is_file {
            (Root::File(id), RootKind::File)
        } else {
            (Root::Piece(id), RootKind::Piece)
        };
        let changed = store.pin_root(root)?;
        Ok(PinChange {
            sha256: id.to_string(),
            kind,
            changed,
        })
    })
    .await
}

/// Unpins the root `id` (a file or a loose piece); its pieces stay until
/// evicted or collected, unless another pinned root reaches them.
pub async fn unpin(store: Arc<dyn PieceStore>, id: PieceId) -> Result<PinChange, ManageError> {
    blocking(move || {
        for (root, kind) in [
            (Root::File(id), RootKind::File),
            (Root::Piece(id), RootKind::Piece),
        ] {
            if store.unpin_root(root)? {
                return Ok(PinChange {
                    sha256: id.to_string(),
                    kind,
                    changed: true,
                });
            }
        }
        Err(ManageError::NotFound(format!(
            "{id} is not pinned here: `p2p-cli ls` lists what is"
        )))
    })
    .await
}

/// Drops every piece no pinned root reaches.
pub async fn gc(store: Arc<dyn PieceStore>) -> Result<GcReport, ManageError> {
    blocking(move || Ok(store.gc()?)).await
}

/// Re-hashes everything the store holds, in its own files and in the files
/// it serves pieces from ([`PieceStore::verify_all`]).
pub async fn verify(store: Arc<dyn PieceStore>) -> Result<VerifyReport, ManageError> {
    blocking(move || Ok(store.verify_all()?)).await
}
