//! Verification of committed pieces: reading a piece back (hashing it when
//! required), removing a corrupt one from service (deleted if cached, moved to
//! quarantine if a pinned root reaches it), and the slow background scrub.
//!
//! Uses the store's shared state and paths.

use std::fs::{self, File};
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

/// What reading a committed piece's record found.
enum Stored {
    Bytes(Vec<u8>),
    /// Not in the packs (evicted meanwhile).
    Missing,
    /// The record is shorter on disk than indexed, or its pack is gone.
    Short,
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

    /// Reads the first `want` bytes (all with `None`) of a committed
    /// piece's record. Its pack is opened for the read; one compacted away
    /// meanwhile is looked up again.
    fn read_stored(&self, id: &PieceId, want: Option<usize>) -> Result<Stored, StoreError> {
        for _ in 0..2 {
            let Some(loc) = self.state().packs.find(id) else {
                return Ok(Stored::Missing);
            };
            let len = loc.len as usize;
            let want = match want {
                Some(want) if want > len => return Ok(Stored::Short),
                Some(want) => want,
                None => len,
            };
            let path = pack_path(&self.paths.packs_dir(), loc.pack);
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(StoreError::io("open", &path)(err)),
            };
            // Bounded: a record's length passed the piece limit.
            let mut bytes = vec![0u8; want];
            return match file.read_exact_at(&mut bytes, loc.offset) {
                Ok(()) => Ok(Stored::Bytes(bytes)),
                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(Stored::Short),
                Err(err) => Err(StoreError::io("read", &path)(err)),
            };
        }
        // Its pack is gone and it was not moved: removed behind our back.
        Ok(Stored::Short)
    }

    /// Reads a committed piece from its pack, verifying it when required.
    /// A record cut short on disk is corrupt like one whose bytes changed.
    pub(super) fn read_committed(
        &self,
        id: &PieceId,
        verify: bool,
    ) -> Result<Option<Bytes>, StoreError> {
        let bytes = match self.read_stored(id, None)? {
            Stored::Bytes(bytes) => Bytes::from(bytes),
            Stored::Short => return Err(self.handle_corrupt(id, &[])),
            Stored::Missing => {
                // Evicted meanwhile.
                let mut state = self.state();
                if !state.pending.contains_key(id) && state.index.get(id).is_some() {
                    state.index.remove(id);
                }
                return Ok(None);
            }
        };
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
        match self.read_stored(id, Some(buf.len()))? {
            Stored::Bytes(bytes) => {
                buf.copy_from_slice(&bytes);
                Ok(true)
            }
            Stored::Short | Stored::Missing => Ok(false),
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
