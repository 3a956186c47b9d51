//! Files as pieces: splitting a byte stream into pinned pieces under a
//! manifest tree ([`add_file`]), walking a tree in file order ([`walk`],
//! [`pieces_of`]) and streaming a file back out of a store ([`reassemble`]).
//!
//! Everything here streams: memory never grows with the file's size. Adding a
//! file holds at most [`PUT_BATCH_PIECES`] pieces plus, per open manifest
//! level, at most one fan-out of ids; walking and reassembling hold at most
//! [`MANIFEST_MAX_DEPTH`] parsed manifests and one piece. Every function is
//! blocking (store I/O, hashing): call them off async I/O tasks.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceError, PieceId, VerifiedPiece};

use crate::manifest::{
    Entries, Layout, Level, MANIFEST_MAX_DEPTH, Manifest, ManifestError, NameError,
    PIECE_MAX_BYTES, Part, check_name,
};
use crate::store::{Durability, PieceStore, Retention, StoreError};

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
    /// The name given to [`add_file`] cannot be a manifest name.
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
        /// [`Layout::max_size`] at the root.
        max: u64,
    },
    /// A piece could not be formed. Input split by [`add_file`] and
    /// manifests of a valid layout always fit; this reports a broken bound
    /// instead of panicking.
    #[error("cannot form a piece: {0}")]
    Piece(#[from] PieceError),
}

impl FileError {
    fn io(op: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { op, source }
    }
}

/// Splits `reader` into pieces of [`PIECE_MAX`] bytes, stores them pinned
/// with a manifest tree naming the file `name`, and returns the root.
///
/// A file of at most [`Layout::fan_out`] pieces (the empty file included)
/// gets one `pieces` manifest; a larger one the shallowest tree that fits,
/// every leaf at the same depth and every part but the last at each level as
/// full as possible. Each manifest is stored only after the pieces it names.
/// A file needing more than [`MANIFEST_MAX_DEPTH`] levels is rejected with
/// [`FileError::TooLarge`] before its first excess piece is stored.
///
/// On error, pieces already stored stay pinned: a piece may be shared with
/// other files, so they are not unpinned blindly.
pub fn add_file<S: PieceStore + ?Sized, R: Read>(
    store: &S,
    mut reader: R,
    name: &str,
    layout: &Layout,
) -> Result<FileSummary, FileError> {
    check_name(name).map_err(FileError::Name)?;
    let max_pieces = layout.max_pieces(Level::ROOT);
    let mut tree = TreeBuilder::new(store, *layout);
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
struct TreeBuilder<'s, S: ?Sized> {
    store: &'s S,
    layout: Layout,
    whole: Sha256,
    leaf: OpenNode<PieceId>,
    /// At most `MANIFEST_MAX_DEPTH - 1` levels.
    upper: Vec<OpenNode<Part>>,
    /// Pieces not yet handed to the store, at most [`PUT_BATCH_PIECES`].
    batch: Vec<VerifiedPiece>,
    size: u64,
    pieces: u64,
}

impl<'s, S: PieceStore + ?Sized> TreeBuilder<'s, S> {
    fn new(store: &'s S, layout: Layout) -> Self {
        Self {
            store,
            layout,
            whole: Sha256::new(),
            leaf: OpenNode::top(Vec::with_capacity(layout.fan_out()), 0),
            upper: Vec::with_capacity(MANIFEST_MAX_DEPTH - 1),
            batch: Vec::with_capacity(PUT_BATCH_PIECES),
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
        Ok(FileSummary {
            manifest,
            size: self.size,
            pieces: self.pieces,
            sha256: whole,
        })
    }

    /// Hands the pending pieces to the store as one group.
    fn flush(&mut self) -> Result<(), FileError> {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(PUT_BATCH_PIECES));
            self.store.put_many(batch, Retention::Pinned)?;
        }
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
        self.store.put(piece, Retention::Pinned, Durability::Wait)?;
        Ok(id)
    }
}

fn digest(hasher: Sha256) -> PieceId {
    PieceId::from_bytes(hasher.finalize().into())
}

/// A manifest met by a [`Walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRef {
    /// The manifest piece.
    pub id: PieceId,
    /// Its level in the tree.
    pub level: Level,
    /// Offset in the file of its first byte.
    pub offset: u64,
    /// Bytes it covers.
    pub size: u64,
    /// Declared SHA-256 of those bytes.
    pub sha256: PieceId,
}

/// A data piece met by a [`Walk`], with where it goes in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PieceRef {
    /// The piece.
    pub id: PieceId,
    /// Offset in the file of its first byte.
    pub offset: u64,
    /// Its length as implied by the manifest: [`PIECE_MAX`] except for the
    /// file's last piece.
    pub len: usize,
}

/// One step of a [`Walk`], in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEvent {
    /// A manifest was fetched and parsed; its entries follow.
    Enter(NodeRef),
    /// A data piece (not fetched: only named).
    Piece(PieceRef),
    /// Every entry of the manifest has been walked.
    Leave(NodeRef),
}

/// A parsed manifest on the walk's stack and the next entry to visit.
struct Frame {
    node: NodeRef,
    entries: Entries,
    next: usize,
}

/// Depth-first walk of a manifest tree, iteratively: the stack holds at most
/// [`MANIFEST_MAX_DEPTH`] manifests, so memory does not grow with the file.
///
/// Manifests are fetched from the store and parsed with [`Manifest::parse`]
/// at their level; a part's manifest must declare the size its parent gives
/// it. Data pieces are only named, never fetched. Work is proportional to
/// the size the root declares, not to what the manifests could repeat: every
/// part but a file's last covers whole pieces, so each manifest parsed
/// (at most one piece of JSON) stands for at least one piece of the file.
///
/// After [`FileError::Missing`] (a manifest not in the store) the walk has
/// not advanced: put the piece in the store and call `next` again to resume.
/// Any other error ends the walk.
pub struct Walk<'a, S: ?Sized> {
    store: &'a S,
    layout: Layout,
    root: PieceId,
    name: Option<String>,
    stack: Vec<Frame>,
    offset: u64,
    started: bool,
    done: bool,
}

/// Walks the manifest tree rooted at `manifest`, in file order.
pub fn walk<'a, S: PieceStore + ?Sized>(
    store: &'a S,
    manifest: &PieceId,
    layout: &Layout,
) -> Walk<'a, S> {
    Walk {
        store,
        layout: *layout,
        root: *manifest,
        name: None,
        stack: Vec::with_capacity(MANIFEST_MAX_DEPTH),
        offset: 0,
        started: false,
        done: false,
    }
}

/// The data pieces of the file named by `manifest`, in file order, with
/// their offsets and lengths. Fetches only manifests; see [`Walk`] for the
/// bounds and for resuming after [`FileError::Missing`].
pub fn pieces_of<'a, S: PieceStore + ?Sized>(
    store: &'a S,
    manifest: &PieceId,
    layout: &Layout,
) -> impl Iterator<Item = Result<PieceRef, FileError>> + use<'a, S> {
    walk(store, manifest, layout).filter_map(|event| match event {
        Ok(WalkEvent::Piece(piece)) => Some(Ok(piece)),
        Ok(WalkEvent::Enter(_) | WalkEvent::Leave(_)) => None,
        Err(e) => Some(Err(e)),
    })
}

impl<S: PieceStore + ?Sized> Walk<'_, S> {
    /// The file name from the root manifest, once it has been entered.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Fetches and parses the manifest `id` at `level`. Changes nothing on
    /// failure, so a `Missing` piece can be supplied and the call retried.
    fn open(
        &self,
        id: PieceId,
        level: Level,
        declared: Option<u64>,
    ) -> Result<(Frame, Option<String>), FileError> {
        let bytes = self.store.get(&id)?.ok_or(FileError::Missing { id })?;
        let manifest = Manifest::parse(&bytes, &self.layout, level)
            .map_err(|source| FileError::Manifest { id, source })?;
        if let Some(declared) = declared
            && manifest.size != declared
        {
            return Err(FileError::Manifest {
                id,
                source: ManifestError::PartSize {
                    declared,
                    found: manifest.size,
                },
            });
        }
        let node = NodeRef {
            id,
            level,
            offset: self.offset,
            size: manifest.size,
            sha256: manifest.sha256,
        };
        let frame = Frame {
            node,
            entries: manifest.entries,
            next: 0,
        };
        Ok((frame, manifest.name))
    }

    fn advance(&mut self) -> Result<Option<WalkEvent>, FileError> {
        if !self.started {
            let (frame, name) = self.open(self.root, Level::ROOT, None)?;
            let node = frame.node;
            self.stack.push(frame);
            self.name = name;
            self.started = true;
            return Ok(Some(WalkEvent::Enter(node)));
        }
        let Some(frame) = self.stack.last() else {
            return Ok(None);
        };
        match &frame.entries {
            Entries::Pieces(ids) => {
                if let Some(&id) = ids.get(frame.next) {
                    // Parsing checked that the pieces cover exactly `size`
                    // bytes with all but the last full.
                    let before = (frame.next as u64).saturating_mul(PIECE_MAX_BYTES);
                    let rest = frame.node.size.saturating_sub(before);
                    let len = usize::try_from(rest.min(PIECE_MAX_BYTES)).unwrap_or(PIECE_MAX);
                    let piece = PieceRef {
                        id,
                        offset: self.offset,
                        len,
                    };
                    self.offset = self.offset.saturating_add(len as u64);
                    if let Some(frame) = self.stack.last_mut() {
                        frame.next += 1;
                    }
                    return Ok(Some(WalkEvent::Piece(piece)));
                }
            }
            Entries::Parts(parts) => {
                if let Some(&part) = parts.get(frame.next) {
                    // Parsing allows parts only above the last level.
                    let level = frame.node.level.below().ok_or(FileError::Manifest {
                        id: frame.node.id,
                        source: ManifestError::TooDeep {
                            max: MANIFEST_MAX_DEPTH,
                        },
                    })?;
                    let (child, _) = self.open(part.manifest, level, Some(part.size))?;
                    let node = child.node;
                    if let Some(frame) = self.stack.last_mut() {
                        frame.next += 1;
                    }
                    self.stack.push(child);
                    return Ok(Some(WalkEvent::Enter(node)));
                }
            }
        }
        Ok(self.stack.pop().map(|frame| WalkEvent::Leave(frame.node)))
    }
}

impl<S: PieceStore + ?Sized> Iterator for Walk<'_, S> {
    type Item = Result<WalkEvent, FileError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(event)) => Some(Ok(event)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                if !matches!(e, FileError::Missing { .. }) {
                    self.done = true;
                }
                Some(Err(e))
            }
        }
    }
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
