//! Walking a manifest tree in file order, fetching and checking only the
//! manifests: which data piece goes where, without holding more than
//! [`MANIFEST_MAX_DEPTH`] parsed manifests.
//!
//! Uses the manifest format, the store contract and the file errors.

use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::error::FileError;
use crate::manifest::{
    Entries, Layout, Level, MANIFEST_MAX_DEPTH, Manifest, ManifestError, PIECE_MAX_BYTES,
};
use crate::store::PieceStore;

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
