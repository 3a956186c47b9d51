//! What can go wrong with a file as pieces, for whoever is to blame: the
//! input or output, the store, a manifest's author, or bytes that do not
//! hash to what a manifest declares; and the digest every check compares.
//!
//! Uses the manifest format and the store contract.

use std::fmt;
use std::io;

use sha2::{Digest, Sha256};
use wire_format::{PieceError, PieceId};

use crate::manifest::{ManifestError, NameError};
use crate::store::StoreError;

/// Which byte range a hash check covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashScope {
    /// The whole file (the root manifest's `sha256`).
    File,
    /// The range of one part.
    Part {
        /// The part's manifest.
        manifest: PieceId,
    },
}

impl fmt::Display for HashScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashScope::File => f.write_str("the whole file"),
            HashScope::Part { manifest } => write!(f, "part {manifest}"),
        }
    }
}

/// Why adding, walking or reassembling a file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading the input or writing the output failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The store failed (full, corrupt piece, disk error).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The name given to [`add_file`](crate::file::add_file) cannot be a manifest name.
    #[error("bad file name: {0}")]
    Name(#[source] NameError),
    /// A manifest of the tree is invalid: whoever wrote it is at fault.
    #[error("manifest {id}: {source}")]
    Manifest {
        /// The invalid manifest piece.
        id: PieceId,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// A manifest or data piece is not in the store.
    #[error("piece {id} is not in the store")]
    Missing {
        /// The missing piece.
        id: PieceId,
    },
    /// A piece is not the length its manifest implies (every piece but a
    /// file's last is full).
    #[error("piece {id} is {actual} bytes, its manifest implies {expected}")]
    PieceLength {
        /// The piece.
        id: PieceId,
        /// Length implied by the manifest.
        expected: usize,
        /// Length held.
        actual: usize,
    },
    /// The bytes of a part or of the whole file do not hash to what the
    /// manifest declares.
    #[error("{what} hashes to {actual}, its manifest declares {expected}")]
    HashMismatch {
        /// Declared digest.
        expected: PieceId,
        /// Digest of the bytes.
        actual: PieceId,
        /// Which range.
        what: HashScope,
    },
    /// The input is larger than a manifest tree of the layout can describe.
    #[error("file larger than the {max} bytes a manifest tree can describe (read {size} so far)")]
    TooLarge {
        /// Bytes read when the limit was passed; the input was not read further.
        size: u64,
        /// [`Layout::max_size`](crate::manifest::Layout::max_size) at the root.
        max: u64,
    },
    /// A piece could not be formed. Input split by [`add_file`](crate::file::add_file) and
    /// manifests of a valid layout always fit; this reports a broken bound
    /// instead of panicking.
    #[error("cannot form a piece: {0}")]
    Piece(#[from] PieceError),
}

impl FileError {
    pub(super) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { op, source }
    }
}

/// The SHA-256 a hasher has computed, as a manifest writes it.
pub(super) fn digest(hasher: Sha256) -> PieceId {
    PieceId::from_bytes(hasher.finalize().into())
}
