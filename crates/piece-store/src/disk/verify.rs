//! Verification of committed pieces: reading a piece back (hashing it when
//! required), removing a corrupt one from service (deleted if cached, moved to
//! quarantine if a pinned root reaches it), and the slow background scrub.
//!
//! Uses the store's shared state and paths.

use std::fs;
use std::io;

use bytes::Bytes;
use wire_format::{PieceId, VerifiedPiece};

use std::os::unix::fs::FileExt;

use super::pack::pack_path;
use super::shared::Shared;
use crate::store::{StoreError, VerifyReport};

/// Reads `len` bytes at `offset` of the file at `path`, refusing anything
/// but a regular file (a FIFO put in its place must not block the reader)
/// and a link.
fn read_range(path: &std::path::Path, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = vec![0; len as usize];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
}

/// What one scrub call checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Pieces hashed.
    pub checked: usize,
    /// Pieces found corrupt (dropped, or copied to quarantine if pinned).
    pub corrupt: Vec<PieceId>,
    /// The scrub reached the last piece and starts over at the next call.
    pub wrapped: bool,
}

impl Shared {
    /// Handles a piece whose bytes do not match its name: dropped from the
    /// packs; if a pinned root reaches it, its bytes are first copied to
    /// `quarantine/` for the user.
    fn handle_corrupt(&self, id: &PieceId, bytes: &[u8]) -> StoreError {
        let mut state = self.state();
        let pinned = state.index.get(id).is_some_and(|e| e.pinned);
        state.index.remove(id);
        state.packs.kill(id);
        state.corrupt += 1;
        let quarantined = if pinned {
            let dest = self.paths.quarantine_dir().join(id.to_hex());
            state.quarantined.push(*id);
            fs::write(&dest, bytes).is_ok()
        } else {
            false
        };
        StoreError::Corrupt {
            id: *id,
            quarantined,
        }
    }

    /// A held piece's bytes: from memory while its write awaits its commit,
    /// else read back and verified if not yet since open (or always with
    /// `verify_on_read`). Marks it used.
    pub(super) fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        let verify = {
            let mut state = self.state();
            if let Some(bytes) = state.pending.get(id).cloned() {
                state.index.touch(id);
                return Ok(Some(bytes));
            }
            let Some(entry) = state.index.get(id).copied() else {
                drop(state);
                return self.read_extent(id);
            };
            state.index.touch(id);
            self.config.verify_on_read || !entry.verified
        };
        self.read_committed(id, verify)
    }

    /// Reads a committed piece from its pack, verifying it when required.
    /// A record cut short on disk is corrupt like one whose bytes changed.
    pub(super) fn read_committed(
        &self,
        id: &PieceId,
        verify: bool,
    ) -> Result<Option<Bytes>, StoreError> {
        let Some((loc, file)) = self.state().packs.find(id) else {
            // Evicted meanwhile.
            let mut state = self.state();
            if !state.pending.contains_key(id) && state.index.get(id).is_some() {
                state.index.remove(id);
            }
            return Ok(None);
        };
        // Bounded: a record's length passed the piece limit.
        let mut bytes = vec![0u8; loc.len as usize];
        match file.read_exact_at(&mut bytes, loc.offset) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.handle_corrupt(id, &[]));
            }
            Err(err) => {
                return Err(StoreError::io(
                    "read",
                    pack_path(&self.paths.packs_dir(), loc.pack),
                )(err));
            }
        }
        let bytes = Bytes::from(bytes);
        if verify {
            if VerifiedPiece::verify(*id, bytes.clone()).is_err() {
                return Err(self.handle_corrupt(id, &bytes));
            }
            self.state().index.mark_verified(id);
        }
        Ok(Some(bytes))
    }

    /// The first `buf.len()` bytes of a committed piece, unverified;
    /// `false` if the piece is shorter or not in the packs.
    pub(super) fn read_prefix(&self, id: &PieceId, buf: &mut [u8]) -> Result<bool, StoreError> {
        let Some((loc, file)) = self.state().packs.find(id) else {
            return Ok(false);
        };
        if (loc.len as usize) < buf.len() {
            return Ok(false);
        }
        match file.read_exact_at(buf, loc.offset) {
            Ok(()) => Ok(true),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(err) => Err(StoreError::io(
                "read",
                pack_path(&self.paths.packs_dir(), loc.pack),
            )(err)),
        }
    }

    /// Reads a piece served from a range of a file, always hashed: the file
    /// is its user's, who may have changed it. One that no longer matches
    /// (changed, short, gone, not a regular file) is dropped from the index
    /// and reported missing; the file is left alone.
    pub(super) fn read_extent(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        let Some((path, place)) = self.state().extents.find(id) else {
            return Ok(None);
        };
        let verified = read_range(&path, place.offset, place.len)
            .ok()
            .and_then(|bytes| VerifiedPiece::verify(*id, Bytes::from(bytes)).ok());
        if let Some(piece) = verified {
            return Ok(Some(piece.bytes().clone()));
        }
        let mut state = self.state();
        // Unless it moved meanwhile (a rename recorded, a new add).
        if state.extents.find(id) == Some((path, place)) {
            state.extents.drop_pieces(&[*id])?;
            state.dropped_extents += 1;
        }
        Ok(None)
    }

    /// Re-hashes every piece held, in the store and in files.
    pub(super) fn verify_all(&self) -> Result<VerifyReport, StoreError> {
        let mut report = VerifyReport::default();
        let (own, extents): (Vec<PieceId>, Vec<PieceId>) = {
            let state = self.state();
            (state.index.ids(), state.extents.ids().copied().collect())
        };
        for id in own {
            if self.state().pending.contains_key(&id) {
                continue; // just written from verified bytes
            }
            match self.read_committed(&id, true) {
                Ok(Some(bytes)) => {
                    report.checked += 1;
                    report.bytes += bytes.len() as u64;
                }
                Ok(None) => {}
                Err(StoreError::Corrupt { id, .. }) => report.corrupt.push(id),
                Err(err) => return Err(err),
            }
        }
        // What was dropped stays dropped across a restart.
        self.flush_tombstones()?;
        for id in extents {
            if self.state().index.contains(&id) {
                continue; // served from the store's own copy
            }
            match self.read_extent(&id)? {
                Some(bytes) => {
                    report.checked += 1;
                    report.bytes += bytes.len() as u64;
                }
                None => {
                    if !self.state().extents.contains(&id) {
                        report.dropped.push(id);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Re-verifies up to `max_pieces` committed pieces, continuing where the
    /// last call stopped.
    pub(super) fn scrub(&self, max_pieces: usize) -> ScrubReport {
        let mut report = ScrubReport::default();
        for _ in 0..max_pieces {
            let next = {
                let mut state = self.state();
                let next = state.index.next_after(state.scrub_cursor);
                state.scrub_cursor = next;
                next
            };
            let Some(id) = next else {
                report.wrapped = true;
                break;
            };
            if self.state().pending.contains_key(&id) {
                continue;
            }
            report.checked += 1;
            if let Err(StoreError::Corrupt { id, .. }) = self.read_committed(&id, true) {
                report.corrupt.push(id);
            }
        }
        report
    }
}
