//! Where a disk store keeps things under its root, and the small filesystem
//! steps every job of the store shares: create a private directory, remove a
//! file that may already be gone, fsync a directory.
//!
//! Uses the store's error type, the roots index's file name and
//! [`crate::state_file::sync_dir`].

use std::fs::{self, DirBuilder};
use std::io;
use std::path::{Path, PathBuf};

use wire_format::PieceId;

use crate::store::StoreError;

use super::roots::ROOTS_FILE;

const PIECES_DIR: &str = "pieces";
/// Where stores before the roots index kept a marker file per pinned piece;
/// migrated and removed at open.
const LEGACY_PINS_DIR: &str = "pins";
const TMP_DIR: &str = "tmp";
/// Directory holding pinned pieces that failed verification.
pub const QUARANTINE_DIR: &str = "quarantine";

/// The paths of one store directory.
#[derive(Debug)]
pub(super) struct Paths {
    root: PathBuf,
}

impl Paths {
    pub(super) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    pub(super) fn root(&self) -> &Path {
        &self.root
    }

    /// `pieces/<shard>`: the directory of the pieces whose id starts with `byte`.
    pub(super) fn piece_shard(&self, byte: u8) -> PathBuf {
        self.root.join(PIECES_DIR).join(shard_name(byte))
    }

    /// `packs/`: the pack files.
    pub(super) fn packs_dir(&self) -> PathBuf {
        self.root.join(super::pack::PACKS_DIR)
    }

    /// `pieces/`: one file per piece in stores before the packs; migrated
    /// into packs and removed at open.
    pub(super) fn legacy_pieces_dir(&self) -> PathBuf {
        self.root.join(PIECES_DIR)
    }

    /// `pins/`: the per-piece pin markers of older stores.
    pub(super) fn legacy_pins_dir(&self) -> PathBuf {
        self.root.join(LEGACY_PINS_DIR)
    }

    /// The roots index.
    pub(super) fn roots_log(&self) -> PathBuf {
        self.root.join(ROOTS_FILE)
    }

    /// A piece's file in a store before the packs.
    pub(super) fn legacy_piece(&self, id: &PieceId) -> PathBuf {
        self.piece_shard(id.first_byte()).join(id.to_hex())
    }

    /// `tmp/`: where stores before the packs wrote pieces; emptied and
    /// removed at open.
    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP_DIR)
    }

    pub(super) fn quarantine_dir(&self) -> PathBuf {
        self.root.join(QUARANTINE_DIR)
    }
}

fn shard_name(byte: u8) -> String {
    format!("{byte:02x}")
}

/// Creates `path` and its parents, private to the owner.
pub(super) fn create_dir(path: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(StoreError::io("create directory", path))
}

pub(super) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    crate::state_file::sync_dir(path).map_err(StoreError::io("fsync directory", path))
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path)(err))
        }
        _ => Ok(()),
    }
}
