//! Adding a file: split a byte stream into pieces, handed to the store in
//! groups, build its manifest tree bottom-up as they arrive, and pin the
//! file's root once its manifest is stored.
//!
//! Uses the manifest format, the store contract and the file errors.

use std::collections::HashSet;
use std::io::{self, Read};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

use super::error::{FileError, digest};
use crate::manifest::{Entries, Layout, Level, MANIFEST_MAX_DEPTH, Manifest, Part, check_name};
use crate::store::{Durability, Extent, PieceStore, Retention, Root};

/// Pieces [`add_file`] hands to [`PieceStore::put_many`] as one group (one
/// group commit under the `batch` fsync policy). Worst case this many pieces
/// of [`PIECE_MAX`] bytes (64 MiB) are held per file being added.
pub const PUT_BATCH_PIECES: usize = 64;

/// What [`add_file`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSummary {
    /// The root manifest: the file's name in the swarm.
    pub manifest: PieceId,
    /// Bytes of the file.
    pub size: u64,
    /// Data pieces (manifests not counted).
    pub pieces: u64,
    /// SHA-256 of the whole file.
    pub sha256: PieceId,
}

/// Splits `reader` into pieces of [`PIECE_MAX`] bytes, stores them with a
/// manifest tree naming the file `name`, pins the file's root
/// ([`Root::File`]) and returns it.
///
/// The root manifest's id is known only at the end, so until then every
/// piece stored is held ([`PieceStore::hold`], in memory): no eviction can
/// take one before the root reaches it. Pinning the root reaches the whole
/// tree, then the holds are released. A crash before the root is pinned
/// leaves the pieces cached (evictable); the file was never reported added.
///
/// A file of at most [`Layout::fan_out`] pieces (the empty file included)
/// gets one `pieces` manifest; a larger one the shallowest tree that fits,
/// every leaf at the same depth and every part but the last at each level as
/// full as possible. Each manifest is stored only after the pieces it names.
/// A file needing more than [`MANIFEST_MAX_DEPTH`] levels is rejected with
/// [`FileError::TooLarge`] before its first excess piece is stored.
///
/// On error the holds are released: the pieces already stored stay as
/// cached pieces (or kept by other roots that reach them) and no root is
/// pinned.
pub fn add_file<S: PieceStore + ?Sized, R: Read>(
    store: &S,
    reader: R,
    name: &str,
    layout: &Layout,
) -> Result<FileSummary, FileError> {
    check_name(name).map_err(FileError::Name)?;
    split_into(TreeBuilder::new(store, *layout), reader, name)
}

/// Like [`add_file`], for the file at `path` shared where it is: only its
/// manifests go into the store; each data piece is hashed as it is read
/// and indexed as a range of the file ([`PieceStore::add_extents`]), so
/// the file is never copied. `path` is made canonical first (the store
/// reads extents without following links), and must be a regular file.
///
/// The file stays its user's: a piece that no longer matches when it is
/// read to be served is dropped from the index, never sent, and the file
/// never touched. Fails with [`crate::StoreError::Unsupported`] on a store
/// without extents.
pub fn add_file_in_place<S: PieceStore + ?Sized>(
    store: &S,
    path: &std::path::Path,
    name: &str,
    layout: &Layout,
) -> Result<FileSummary, FileError> {
    check_name(name).map_err(FileError::Name)?;
    let open = |op| move |e| FileError::io(op)(e);
    let path = std::fs::canonicalize(path).map_err(open("find the file to share"))?;
    let file = std::fs::File::open(&path).map_err(open("open the file to share"))?;
    if !file
        .metadata()
        .map_err(open("inspect the file to share"))?
        .is_file()
    {
        return Err(FileError::Io {
            op: "share in place",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    // Its bytes are the user's to make durable; what is cached but not yet
    // written goes to disk now, before any range of it is indexed.
    file.sync_data().map_err(open("fsync the file to share"))?;
    let mut tree = TreeBuilder::new(store, *layout);
    tree.in_place = Some(path);
    split_into(tree, file, name)
}

/// Reads `reader` to its end in pieces of [`PIECE_MAX`] bytes into `tree`,
/// then names the file `name`.
fn split_into<S: PieceStore + ?Sized, R: Read>(
    mut tree: TreeBuilder<'_, S>,
    mut reader: R,
    name: &str,
) -> Result<FileSummary, FileError> {
    let layout = tree.layout;
    let max_pieces = layout.max_pieces(Level::ROOT);
    loop {
        let mut buf = vec![0u8; PIECE_MAX];
        let len = fill(&mut reader, &mut buf)?;
        if len == 0 {
            break;
        }
        if tree.pieces >= max_pieces {
            return Err(FileError::TooLarge {
                size: tree.size.saturating_add(len as u64),
                max: layout.max_size(Level::ROOT),
            });
        }
        buf.truncate(len);
        tree.add(VerifiedPiece::new(Bytes::from(buf))?)?;
        if len < PIECE_MAX {
            // `fill` stops short only at end of input: do not read past it.
            break;
        }
    }
    tree.finish(name)
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, FileError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) if n <= buf.len() - filled => filled += n,
            Ok(_) => {
                return Err(FileError::Io {
                    op: "read the input",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "reader returned more bytes than asked for",
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FileError::io("read the input")(e)),
        }
    }
    Ok(filled)
}

/// The pieces a file being added holds in the store until its root is
/// pinned; released when dropped (at the end, or on any error). Holds each
/// distinct piece once: at most as many ids as pieces the store can keep.
struct Holds<'s, S: PieceStore + ?Sized> {
    store: &'s S,
    ids: HashSet<PieceId>,
}

impl<S: PieceStore + ?Sized> Holds<'_, S> {
    fn hold(&mut self, id: PieceId) {
        if self.ids.insert(id) {
            self.store.hold(&id);
        }
    }
}

impl<S: PieceStore + ?Sized> Drop for Holds<'_, S> {
    fn drop(&mut self) {
        for id in &self.ids {
            self.store.release(id);
        }
    }
}

/// One manifest being filled while the file streams in.
struct OpenNode<T> {
    entries: Vec<T>,
    /// Bytes of the file in this node's range so far.
    size: u64,
    /// Hash of the node's range, or `None` for the topmost node: it covers the
    /// file from its first byte, so its digest is the whole-file hasher's
    /// (one pass over the data saved per file).
    hasher: Option<Sha256>,
}

impl<T> OpenNode<T> {
    fn top(entries: Vec<T>, size: u64) -> Self {
        Self {
            entries,
            size,
            hasher: None,
        }
    }

    fn fresh(fan_out: usize) -> Self {
        Self {
            entries: Vec::with_capacity(fan_out),
            size: 0,
            hasher: Some(Sha256::new()),
        }
    }
}

/// Builds the manifest tree bottom-up as pieces arrive.
///
/// `leaf` collects piece ids; `upper[i]` collects the parts of level `i + 1`
/// above the leaves. A node closes lazily, when it is full and more data
/// arrives, so at end of input the nodes still open are exactly the last
/// node of each level and the topmost one is the root. The topmost node
/// always covers the file from byte 0; every other open node starts where the
/// previous one at its level ended.
struct TreeBuilder<'s, S: PieceStore + ?Sized> {
    store: &'s S,
    holds: Holds<'s, S>,
    layout: Layout,
    whole: Sha256,
    leaf: OpenNode<PieceId>,
    /// At most `MANIFEST_MAX_DEPTH - 1` levels.
    upper: Vec<OpenNode<Part>>,
    /// Pieces not yet handed to the store, at most [`PUT_BATCH_PIECES`].
    batch: Vec<VerifiedPiece>,
    /// Where the data pieces go: `None` into the store, `Some(file)` as
    /// ranges of that file ([`add_file_in_place`]).
    in_place: Option<std::path::PathBuf>,
    /// Offset in the file of the first piece of `batch`.
    batch_offset: u64,
    size: u64,
    pieces: u64,
}

impl<'s, S: PieceStore + ?Sized> TreeBuilder<'s, S> {
    fn new(store: &'s S, layout: Layout) -> Self {
        Self {
            store,
            holds: Holds {
                store,
                ids: HashSet::new(),
            },
            layout,
            whole: Sha256::new(),
            leaf: OpenNode::top(Vec::with_capacity(layout.fan_out()), 0),
            upper: Vec::with_capacity(MANIFEST_MAX_DEPTH - 1),
            batch: Vec::with_capacity(PUT_BATCH_PIECES),
            in_place: None,
            batch_offset: 0,
            size: 0,
            pieces: 0,
        }
    }

    fn add(&mut self, piece: VerifiedPiece) -> Result<(), FileError> {
        if self.leaf.entries.len() >= self.layout.fan_out() {
            self.split()?;
        }
        let bytes = piece.bytes();
        let len = bytes.len() as u64;
        self.whole.update(bytes);
        if let Some(hasher) = &mut self.leaf.hasher {
            hasher.update(bytes);
        }
        self.leaf.size = self.leaf.size.saturating_add(len);
        for node in &mut self.upper {
            if let Some(hasher) = &mut node.hasher {
                hasher.update(bytes);
            }
            node.size = node.size.saturating_add(len);
        }
        self.leaf.entries.push(piece.id());
        self.size = self.size.saturating_add(len);
        self.pieces = self.pieces.saturating_add(1);
        self.holds.hold(piece.id());
        self.batch.push(piece);
        if self.batch.len() >= PUT_BATCH_PIECES {
            self.flush()?;
        }
        Ok(())
    }

    /// The leaf is full and a piece follows: close the leaf and every level
    /// above it that is now full, opening fresh nodes in their place.
    fn split(&mut self) -> Result<(), FileError> {
        let fan_out = self.layout.fan_out();
        let leaf = std::mem::replace(&mut self.leaf, OpenNode::fresh(fan_out));
        let mut carry = self.close(leaf, Entries::Pieces, 0)?;
        for index in 0..MANIFEST_MAX_DEPTH - 1 {
            let Some(node) = self.upper.get_mut(index) else {
                // The closed node was the topmost: a new top covers the file
                // from byte 0, exactly the closed node's range.
                self.upper.push(OpenNode::top(vec![carry], carry.size));
                return Ok(());
            };
            node.entries.push(carry);
            if node.entries.len() < fan_out {
                return Ok(());
            }
            if index + 2 >= MANIFEST_MAX_DEPTH {
                // The full node is the root of the deepest tree allowed.
                break;
            }
            let full = std::mem::replace(node, OpenNode::fresh(fan_out));
            carry = self.close(full, Entries::Parts, index + 1)?;
        }
        // Not reached while `add_file` bounds the piece count first.
        Err(FileError::TooLarge {
            size: self.size,
            max: self.layout.max_size(Level::ROOT),
        })
    }

    /// Stores a closed non-root node's manifest and returns its part entry.
    /// `height` is the node's distance from the leaves (0 for a leaf).
    fn close<T>(
        &mut self,
        node: OpenNode<T>,
        entries: fn(Vec<T>) -> Entries,
        height: usize,
    ) -> Result<Part, FileError> {
        let sha256 = digest(node.hasher.unwrap_or_else(|| self.whole.clone()));
        let manifest = Manifest {
            name: None,
            size: node.size,
            sha256,
            entries: entries(node.entries),
        };
        // Checked at the deepest level the node can end up at: the strictest
        // bounds, which imply those of any level above it.
        let level = MANIFEST_MAX_DEPTH.saturating_sub(height).max(1);
        let level = Level::new(level).unwrap_or(Level::LAST);
        let id = self.store_manifest(&manifest, level)?;
        Ok(Part {
            manifest: id,
            size: node.size,
        })
    }

    /// End of input: close every open node below the top into its parent;
    /// the top becomes the root, named `name`.
    fn finish(mut self, name: &str) -> Result<FileSummary, FileError> {
        let whole = digest(self.whole.clone());
        let leaf = std::mem::replace(&mut self.leaf, OpenNode::fresh(0));
        let mut upper = std::mem::take(&mut self.upper);
        let entries = match upper.pop() {
            None => Entries::Pieces(leaf.entries),
            Some(mut top) => {
                let mut carry = self.close(leaf, Entries::Pieces, 0)?;
                for (index, mut node) in upper.into_iter().enumerate() {
                    node.entries.push(carry);
                    carry = self.close(node, Entries::Parts, index + 1)?;
                }
                top.entries.push(carry);
                Entries::Parts(top.entries)
            }
        };
        let root = Manifest {
            name: Some(name.to_owned()),
            size: self.size,
            sha256: whole,
            entries,
        };
        let manifest = self.store_manifest(&root, Level::ROOT)?;
        self.store.pin_root(Root::File(manifest))?;
        Ok(FileSummary {
            manifest,
            size: self.size,
            pieces: self.pieces,
            sha256: whole,
        })
    }

    /// Hands the pending pieces to the store as one group: their bytes, or
    /// where they are in the file shared in place.
    fn flush(&mut self) -> Result<(), FileError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(PUT_BATCH_PIECES));
        match &self.in_place {
            None => self.store.put_many(batch, Retention::Cached)?,
            Some(file) => {
                let mut offset = self.batch_offset;
                let extents: Vec<Extent> = batch
                    .iter()
                    .map(|piece| {
                        let extent = Extent {
                            id: piece.id(),
                            offset,
                            len: u32::try_from(piece.len()).unwrap_or(u32::MAX),
                        };
                        offset += piece.len() as u64;
                        extent
                    })
                    .collect();
                self.store.add_extents(file, &extents)?;
            }
        }
        self.batch_offset = self.size;
        Ok(())
    }

    /// Checks and stores a manifest, after every piece it may name.
    fn store_manifest(&mut self, manifest: &Manifest, level: Level) -> Result<PieceId, FileError> {
        self.flush()?;
        let piece = VerifiedPiece::new(Bytes::from(manifest.to_json()))?;
        let id = piece.id();
        // Never store what our own reader would reject.
        manifest
            .check(&self.layout, level)
            .map_err(|source| FileError::Manifest { id, source })?;
        self.holds.hold(id);
        self.store.put(piece, Retention::Cached, Durability::Wait)?;
        Ok(id)
    }
}
