//! Reading a file back: stream its pieces out of a store in order, checking
//! each piece's length and every part's and the whole file's hash.
//!
//! Uses the tree walk, the manifest format, the store contract and the file
//! errors.

use std::io::Write;

use sha2::{Digest, Sha256};
use wire_format::PieceId;

use super::error::{FileError, HashScope, digest};
use super::walk::{WalkEvent, walk};
use crate::manifest::{Layout, MANIFEST_MAX_DEPTH};
use crate::store::PieceStore;

/// What [`reassemble`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReassembleSummary {
    /// The file name from the root manifest.
    pub name: String,
    /// Bytes written.
    pub size: u64,
    /// Data pieces written.
    pub pieces: u64,
    /// SHA-256 of the bytes written, equal to the root manifest's.
    pub sha256: PieceId,
}

/// Streams the file named by `manifest` from `store` to `out`, in order.
///
/// Every piece comes from [`PieceStore::get`] (which verifies it) and must
/// have the length its manifest implies; each part's bytes and the whole
/// file are hashed and compared with their manifests. Bytes are written as
/// they are checked, so on error `out` holds a prefix: write to a temporary
/// file and rename it only on success. Fails with [`FileError::Missing`] on
/// the first piece or manifest not in the store.
pub fn reassemble<S: PieceStore + ?Sized, W: Write>(
    store: &S,
    manifest: &PieceId,
    layout: &Layout,
    mut out: W,
) -> Result<ReassembleSummary, FileError> {
    // The root's hasher is the whole file's; one per part level below it.
    let mut whole = Sha256::new();
    let mut parts: Vec<Sha256> = Vec::with_capacity(MANIFEST_MAX_DEPTH - 1);
    let mut size: u64 = 0;
    let mut pieces: u64 = 0;
    let mut sha256 = None;
    let mut tree = walk(store, manifest, layout);
    for event in tree.by_ref() {
        match event? {
            WalkEvent::Enter(node) => {
                if !node.level.is_root() {
                    parts.push(Sha256::new());
                }
            }
            WalkEvent::Piece(piece) => {
                let bytes = store
                    .get(&piece.id)?
                    .ok_or(FileError::Missing { id: piece.id })?;
                if bytes.len() != piece.len {
                    return Err(FileError::PieceLength {
                        id: piece.id,
                        expected: piece.len,
                        actual: bytes.len(),
                    });
                }
                out.write_all(&bytes)
                    .map_err(FileError::io("write the output"))?;
                whole.update(&bytes);
                for hasher in &mut parts {
                    hasher.update(&bytes);
                }
                size = size.saturating_add(bytes.len() as u64);
                pieces = pieces.saturating_add(1);
            }
            WalkEvent::Leave(node) => {
                let (actual, what) = if node.level.is_root() {
                    (digest(whole.clone()), HashScope::File)
                } else {
                    // Enter and Leave pair up, so a part's hasher is there.
                    let hasher = parts.pop().unwrap_or_default();
                    (digest(hasher), HashScope::Part { manifest: node.id })
                };
                if actual != node.sha256 {
                    return Err(FileError::HashMismatch {
                        expected: node.sha256,
                        actual,
                        what,
                    });
                }
                if node.level.is_root() {
                    sha256 = Some(actual);
                }
            }
        }
    }
    out.flush().map_err(FileError::io("flush the output"))?;
    Ok(ReassembleSummary {
        name: tree.name().unwrap_or_default().to_owned(),
        size,
        pieces,
        sha256: sha256.unwrap_or_else(|| digest(whole)),
    })
}
