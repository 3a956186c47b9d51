//! Files as pieces: splitting a byte stream into pieces under a manifest
//! tree and pinning the file's root ([`add_file`]), walking a tree in file order ([`walk`],
//! [`pieces_of`]) and streaming a file back out of a store ([`reassemble`]).
//!
//! Everything here streams: the bytes held never grow with the file's size.
//! Adding a file holds at most [`PUT_BATCH_PIECES`] pieces plus, per open
//! manifest level, at most one fan-out of ids, and the id of each distinct
//! piece stored until the root is pinned (bounded by what the store can
//! keep); walking and reassembling hold at most
//! [`MANIFEST_MAX_DEPTH`](crate::manifest::MANIFEST_MAX_DEPTH) parsed manifests and one piece. Every function is
//! blocking (store I/O, hashing): call them off async I/O tasks.
//!
//! # Modules, one job each
//! * `add` — [`add_file`]: split a stream into pieces and a manifest tree;
//!   [`add_file_in_place`]: the same for a file shared where it is.
//! * `walk` — [`walk`], [`pieces_of`]: a tree in file order, manifests only.
//! * `reassemble` — [`reassemble`]: stream a file back out, checking hashes.
//! * `error` — [`FileError`], [`HashScope`]: what can go wrong, and who is to blame.

mod add;
mod error;
mod reassemble;
mod walk;

pub use self::add::{FileSummary, PUT_BATCH_PIECES, add_file, add_file_in_place};
pub use self::error::{FileError, HashScope};
pub use self::reassemble::{ReassembleSummary, reassemble};
pub use self::walk::{NodeRef, PieceRef, Walk, WalkEvent, pieces_of, walk};
