//! Pack files: the pieces the store holds itself, appended as records to
//! `packs/NNNNNNNN.pack`, so a piece costs no inode.
//!
//! # Record format
//! Every record is a [`RECORD_HEADER_LEN`]-byte header, then its data:
//! * `P2PK` (magic), a kind byte (`1` piece, `2` tombstone), three zero
//!   bytes, the data length (u32, little endian), the piece id (32 bytes),
//!   and the first 8 bytes of the SHA-256 of the 44 bytes before them;
//! * a piece record's data is the piece (1 to `PIECE_MAX` bytes), verified
//!   against its id when read, like a piece file was; a tombstone has none.
//!
//! # What is live
//! Records are ordered by (pack number, offset). For each id the last record
//! decides: a piece record is the piece's place, a tombstone means the store
//! no longer holds it. Every other record is dead. So a crash that leaves a
//! piece twice (a compaction cut short, a migration run again) resolves to
//! the same place at every open, and a delete needs only a tombstone
//! appended after the piece's last record.
//!
//! # Torn and hostile records
//! Opening scans each pack's headers (not its data) from the start. The
//! first header that is short, fails its checksum, names an unknown kind,
//! claims a length no piece can have, or whose data runs past the end of
//! the file ends the pack: the rest is a torn append (a crash mid-write) or
//! damage, and the pack is truncated there. Nothing past it is served.
//!
//! # Compaction
//! A pack other than the one being appended to whose live bytes fall below
//! [`PACK_COMPACT_LIVE_PERCENT`] of its size is rewritten: its live records
//! are appended again to the active pack (with the tombstones still
//! needed: those whose id has a dead record in another pack and is not held
//! now), the active pack is fsynced, and only then is the old pack removed.
//! One pack per step, so a step copies at most half of [`PACK_MAX_BYTES`].
//! A crash between the copy and the removal leaves each piece twice; the
//! later copy wins and the old pack, all dead now, is compacted again.
//!
//! Uses the store's error type and paths; knows nothing of the index.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::paths::sync_dir;
use crate::store::StoreError;

/// Directory of the pack files, under the store's root.
pub const PACKS_DIR: &str = "packs";
/// A pack takes records until the next one would make it larger than this;
/// then a new pack is started. A record always fits in an empty pack.
pub const PACK_MAX_BYTES: u64 = 64 << 20;
/// A pack (not the active one) is compacted once its live bytes are below
/// this percentage of its size.
pub const PACK_COMPACT_LIVE_PERCENT: u64 = 50;
/// Highest pack number (eight decimal digits in the file name); a store
/// that reached it refuses new records rather than reuse a number.
pub const PACK_NUMBER_MAX: u32 = 99_999_999;
/// Bytes of a record's header.
pub const RECORD_HEADER_LEN: usize = 52;

const MAGIC: [u8; 4] = *b"P2PK";
const KIND_PIECE: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
/// Bytes of the header covered by its checksum.
const CHECKED_LEN: usize = 44;
const PACK_SUFFIX: &str = ".pack";

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Piece,
    Tombstone,
}

/// A record's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) kind: Kind,
    pub(super) id: PieceId,
    pub(super) len: u32,
}

/// Why a header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BadHeader {
    Magic,
    Checksum,
    Kind,
    Length,
}

impl Header {
    pub(super) fn encode(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut raw = [0u8; RECORD_HEADER_LEN];
        raw[..4].copy_from_slice(&MAGIC);
        raw[4] = match self.kind {
            Kind::Piece => KIND_PIECE,
            Kind::Tombstone => KIND_TOMBSTONE,
        };
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..CHECKED_LEN].copy_from_slice(self.id.as_bytes());
        let sum = Sha256::digest(&raw[..CHECKED_LEN]);
        raw[CHECKED_LEN..].copy_from_slice(&sum[..RECORD_HEADER_LEN - CHECKED_LEN]);
        raw
    }

    pub(super) fn decode(raw: &[u8; RECORD_HEADER_LEN]) -> Result<Self, BadHeader> {
        if raw[..4] != MAGIC {
            return Err(BadHeader::Magic);
        }
        let sum = Sha256::digest(&raw[..CHECKED_LEN]);
        if raw[CHECKED_LEN..] != sum[..RECORD_HEADER_LEN - CHECKED_LEN] {
            return Err(BadHeader::Checksum);
        }
        if raw[5..8] != [0, 0, 0] {
            return Err(BadHeader::Kind);
        }
        let mut len = [0u8; 4];
        len.copy_from_slice(&raw[8..12]);
        let len = u32::from_le_bytes(len);
        let mut id = [0u8; 32];
        id.copy_from_slice(&raw[12..CHECKED_LEN]);
        let kind = match raw[4] {
            KIND_PIECE => Kind::Piece,
            KIND_TOMBSTONE => Kind::Tombstone,
            _ => return Err(BadHeader::Kind),
        };
        let fits = match kind {
            Kind::Piece => (1..=PIECE_MAX as u64).contains(&u64::from(len)),
            Kind::Tombstone => len == 0,
        };
        if !fits {
            return Err(BadHeader::Length);
        }
        Ok(Self {
            kind,
            id: PieceId::from_bytes(id),
            len,
        })
    }

    /// Bytes of the whole record.
    pub(super) fn record_len(&self) -> u64 {
        record_len(self.len)
    }
}

fn record_len(data_len: u32) -> u64 {
    RECORD_HEADER_LEN as u64 + u64::from(data_len)
}

/// Where a piece's bytes are: `len` bytes at `offset` of pack `pack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Loc {
    pub(super) pack: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// One pack read at open: its records in order, and where the valid part
/// ends (the size it is truncated to).
#[derive(Debug)]
pub(super) struct Scanned {
    /// (header, offset of the record)
    pub(super) records: Vec<(Header, u64)>,
    pub(super) valid_end: u64,
}

/// Reads the headers of a pack of `size` bytes, stopping at the first
/// record that is torn or refused (see the module docs).
pub(super) fn scan(file: &File, size: u64) -> io::Result<Scanned> {
    let mut records = Vec::new();
    let mut offset = 0u64;
    let mut raw = [0u8; RECORD_HEADER_LEN];
    while size - offset >= RECORD_HEADER_LEN as u64 {
        file.read_exact_at(&mut raw, offset)?;
        let Ok(header) = Header::decode(&raw) else {
            break;
        };
        let end = offset + header.record_len();
        if end > size {
            break;
        }
        records.push((header, offset));
        offset = end;
    }
    Ok(Scanned {
        records,
        valid_end: offset,
    })
}

/// `packs/NNNNNNNN.pack`.
pub(super) fn pack_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("{number:08}{PACK_SUFFIX}"))
}

fn parse_pack_name(name: &str) -> Option<u32> {
    let digits = name.strip_suffix(PACK_SUFFIX)?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|n| *n <= PACK_NUMBER_MAX)
}

/// The pack numbers in `dir`, ascending. Other files are left alone.
pub(super) fn list_packs(dir: &Path) -> Result<Vec<u32>, StoreError> {
    let mut numbers = Vec::new();
    for entry in fs::read_dir(dir).map_err(StoreError::io("list", dir))? {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        if let Some(n) = entry.file_name().to_str().and_then(parse_pack_name) {
            numbers.push(n);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn open_pack(path: &Path, create: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// One pack as the table sees it. Packs other than the active one are
/// opened per read (as a piece file was), so a large store holds no
/// descriptor per pack.
#[derive(Debug)]
pub(super) struct PackFile {
    pub(super) size: u64,
    /// Bytes of the live records (headers included).
    pub(super) live: u64,
    /// Ids of the tombstones it holds.
    tombstones: Vec<PieceId>,
}

/// Where every piece the store holds is, and what each pack holds. Kept
/// under the store's state lock.
#[derive(Debug)]
pub(super) struct PackTable {
    packs: BTreeMap<u32, PackFile>,
    places: HashMap<PieceId, Loc>,
    /// Packs holding dead records of an id: the tombstones compaction must
    /// carry.
    graves: HashMap<PieceId, Vec<u32>>,
    /// Ids deleted whose tombstone is not written yet.
    doomed: Vec<PieceId>,
    /// The pack appended to; never compacted.
    active: u32,
}

/// A compaction step's plan: what to copy out of which pack.
#[derive(Debug)]
pub(super) struct CompactPlan {
    pub(super) pack: u32,
    pub(super) live: Vec<(PieceId, Loc)>,
    pub(super) tombstones: Vec<PieceId>,
}

impl PackTable {
    fn new() -> Self {
        Self {
            packs: BTreeMap::new(),
            places: HashMap::new(),
            graves: HashMap::new(),
            doomed: Vec::new(),
            active: 0,
        }
    }

    /// Where `id` is.
    pub(super) fn find(&self, id: &PieceId) -> Option<Loc> {
        self.places.get(id).copied()
    }

    pub(super) fn contains(&self, id: &PieceId) -> bool {
        self.places.contains_key(id)
    }

    /// Every piece held, in record order (oldest first).
    pub(super) fn in_order(&self) -> Vec<(PieceId, Loc)> {
        let mut all: Vec<_> = self.places.iter().map(|(id, loc)| (*id, *loc)).collect();
        all.sort_by_key(|(_, loc)| *loc);
        all
    }

    /// Makes `loc` the place of `id`; its previous record becomes dead.
    pub(super) fn set_live(&mut self, id: PieceId, loc: Loc) {
        if let Some(pack) = self.packs.get_mut(&loc.pack) {
            pack.live += record_len(loc.len);
        }
        if let Some(old) = self.places.insert(id, loc) {
            self.bury(id, old);
        }
    }

    fn bury(&mut self, id: PieceId, loc: Loc) {
        if let Some(pack) = self.packs.get_mut(&loc.pack) {
            pack.live = pack.live.saturating_sub(record_len(loc.len));
        }
        self.grave(id, loc.pack);
    }

    fn grave(&mut self, id: PieceId, pack: u32) {
        let graves = self.graves.entry(id).or_default();
        if !graves.contains(&pack) {
            graves.push(pack);
        }
    }

    /// Drops `id` from the table; a tombstone is written later (returns
    /// whether it was held).
    pub(super) fn kill(&mut self, id: &PieceId) -> bool {
        let Some(loc) = self.places.remove(id) else {
            return false;
        };
        self.bury(*id, loc);
        self.doomed.push(*id);
        true
    }

    /// A record written for `id` that never became live (its commit
    /// failed, or it was deleted while being copied): dead, and a
    /// tombstone is written later.
    pub(super) fn dead_record(&mut self, id: PieceId, pack: u32) {
        self.grave(id, pack);
        self.doomed.push(id);
    }

    pub(super) fn has_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }

    pub(super) fn take_doomed(&mut self) -> Vec<PieceId> {
        std::mem::take(&mut self.doomed)
    }

    /// Gives back tombstones that could not be written.
    pub(super) fn return_doomed(&mut self, ids: Vec<PieceId>) {
        self.doomed.extend(ids);
    }

    fn add_pack(&mut self, number: u32, size: u64) {
        self.packs.insert(
            number,
            PackFile {
                size,
                live: 0,
                tombstones: Vec::new(),
            },
        );
    }

    fn grow(&mut self, number: u32, size: u64) {
        if let Some(pack) = self.packs.get_mut(&number) {
            pack.size = size;
        }
    }

    fn note_tombstone(&mut self, number: u32, id: PieceId) {
        if let Some(pack) = self.packs.get_mut(&number) {
            pack.tombstones.push(id);
        }
    }

    /// The pack compaction should rewrite next: not the active one, live
    /// bytes below [`PACK_COMPACT_LIVE_PERCENT`] of its size; the emptiest
    /// first.
    pub(super) fn compaction_candidate(&self) -> Option<u32> {
        self.packs
            .iter()
            .filter(|(n, pack)| **n != self.active && below_live_ratio(pack.live, pack.size))
            .min_by_key(|(n, pack)| (pack.live * 100 / pack.size.max(1), **n))
            .map(|(n, _)| *n)
    }

    /// What compacting `number` copies. `held` tells whether an id is held
    /// now (live or being written): its tombstone is not needed then.
    pub(super) fn plan(&self, number: u32, held: impl Fn(&PieceId) -> bool) -> Option<CompactPlan> {
        let pack = self.packs.get(&number)?;
        let mut live: Vec<(PieceId, Loc)> = self
            .places
            .iter()
            .filter(|(_, loc)| loc.pack == number)
            .map(|(id, loc)| (*id, *loc))
            .collect();
        live.sort_by_key(|(_, loc)| loc.offset);
        let mut tombstones: Vec<PieceId> = pack
            .tombstones
            .iter()
            .filter(|id| {
                !held(id)
                    && self
                        .graves
                        .get(id)
                        .is_some_and(|packs| packs.iter().any(|p| *p != number))
            })
            .copied()
            .collect();
        tombstones.sort_unstable();
        tombstones.dedup();
        Some(CompactPlan {
            pack: number,
            live,
            tombstones,
        })
    }

    /// Forgets a pack about to be removed.
    pub(super) fn forget_pack(&mut self, number: u32) {
        self.packs.remove(&number);
        self.graves.retain(|_, packs| {
            packs.retain(|p| *p != number);
            !packs.is_empty()
        });
    }
}

/// Whether `live` bytes of a pack of `size` bytes call for compaction.
pub(super) fn below_live_ratio(live: u64, size: u64) -> bool {
    size > 0 && live.saturating_mul(100) < PACK_COMPACT_LIVE_PERCENT.saturating_mul(size)
}

/// The pack being appended to. Kept under its own lock, taken before the
/// state lock when both are needed.
#[derive(Debug)]
pub(super) struct Writer {
    number: u32,
    file: Arc<File>,
    end: u64,
    /// An append failed and could not be undone: start a new pack.
    broken: bool,
    /// fsync a new pack's directory entry.
    sync: bool,
    dir: PathBuf,
}

impl Writer {
    /// The active pack, for fsyncing a commit's records.
    pub(super) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    /// fsyncs the active pack.
    pub(super) fn sync(&self) -> Result<(), StoreError> {
        self.file
            .sync_data()
            .map_err(StoreError::io("fsync", pack_path(&self.dir, self.number)))
    }

    /// Appends one record; the table learns the pack's new size (a piece
    /// becomes live only when its caller says so).
    pub(super) fn append(
        &mut self,
        table: &std::sync::Mutex<impl AsMut<PackTable>>,
        kind: Kind,
        id: PieceId,
        data: &[u8],
    ) -> Result<Loc, StoreError> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|len| match kind {
                Kind::Piece => (1..=PIECE_MAX as u64).contains(&u64::from(*len)),
                Kind::Tombstone => *len == 0,
            })
            .ok_or_else(|| StoreError::Io {
                op: "append",
                path: pack_path(&self.dir, self.number),
                source: io::Error::other("record length out of bounds"),
            })?;
        let header = Header { kind, id, len };
        if self.broken || (self.end > 0 && self.end + header.record_len() > PACK_MAX_BYTES) {
            self.roll(table)?;
        }
        let start = self.end;
        let written = self
            .file
            .write_all_at(&header.encode(), start)
            .and_then(|()| {
                self.file
                    .write_all_at(data, start + RECORD_HEADER_LEN as u64)
            });
        if let Err(err) = written {
            // Undo the partial record, or the next append would follow it.
            if self.file.set_len(start).is_err() {
                self.broken = true;
            }
            return Err(StoreError::io("append", pack_path(&self.dir, self.number))(
                err,
            ));
        }
        self.end = start + header.record_len();
        let mut guard = crate::disk::shared::lock(table);
        let packs = guard.as_mut();
        packs.grow(self.number, self.end);
        if kind == Kind::Tombstone {
            packs.note_tombstone(self.number, id);
        }
        Ok(Loc {
            pack: self.number,
            offset: start + RECORD_HEADER_LEN as u64,
            len,
        })
    }

    /// Starts the next pack, the current one fsynced first (unless the
    /// policy never fsyncs) so that nothing in it waits for a later fsync.
    fn roll(&mut self, table: &std::sync::Mutex<impl AsMut<PackTable>>) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        if self.sync {
            self.sync()?;
        }
        let next = self
            .number
            .checked_add(1)
            .filter(|n| *n <= PACK_NUMBER_MAX)
            .ok_or_else(|| StoreError::Io {
                op: "start pack",
                path: dir.clone(),
                source: io::Error::other("pack numbers exhausted"),
            })?;
        let path = pack_path(&dir, next);
        let file = Arc::new(open_pack(&path, true).map_err(StoreError::io("create", &path))?);
        if self.sync {
            sync_dir(&dir)?;
        }
        let mut guard = crate::disk::shared::lock(table);
        let packs = guard.as_mut();
        packs.add_pack(next, 0);
        packs.active = next;
        *self = Self {
            number: next,
            file,
            end: 0,
            broken: false,
            sync: self.sync,
            dir,
        };
        Ok(())
    }
}

/// Opens the packs in `dir`: truncates torn tails, rebuilds the table, and
/// picks (or starts) the pack to append to. `sync`: fsync what opening
/// changes.
pub(super) fn open(dir: &Path, sync: bool) -> Result<(PackTable, Writer), StoreError> {
    let mut table = PackTable::new();
    let numbers = list_packs(dir)?;
    let mut last: Option<(u32, File, u64)> = None;
    for number in numbers {
        let path = pack_path(dir, number);
        let file = open_pack(&path, false).map_err(StoreError::io("open", &path))?;
        let size = file
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        let scanned = scan(&file, size).map_err(StoreError::io("read", &path))?;
        if scanned.valid_end < size {
            file.set_len(scanned.valid_end)
                .map_err(StoreError::io("truncate", &path))?;
            if sync {
                file.sync_all().map_err(StoreError::io("fsync", &path))?;
            }
        }
        table.add_pack(number, scanned.valid_end);
        for (header, offset) in scanned.records {
            match header.kind {
                Kind::Piece => table.set_live(
                    header.id,
                    Loc {
                        pack: number,
                        offset: offset + RECORD_HEADER_LEN as u64,
                        len: header.len,
                    },
                ),
                Kind::Tombstone => {
                    if let Some(old) = table.places.remove(&header.id) {
                        table.bury(header.id, old);
                    }
                    table.note_tombstone(number, header.id);
                }
            }
        }
        // Only the last pack stays open: it is appended to.
        last = Some((number, file, scanned.valid_end));
    }
    let writer = match last {
        Some((number, file, end)) if end < PACK_MAX_BYTES => Writer {
            number,
            file: Arc::new(file),
            end,
            broken: false,
            sync,
            dir: dir.to_path_buf(),
        },
        other => {
            let number = match other {
                Some((n, _, _)) => n
                    .checked_add(1)
                    .filter(|n| *n <= PACK_NUMBER_MAX)
                    .ok_or_else(|| StoreError::Io {
                        op: "start pack",
                        path: dir.to_path_buf(),
                        source: io::Error::other("pack numbers exhausted"),
                    })?,
                None => 0,
            };
            let path = pack_path(dir, number);
            let file = Arc::new(open_pack(&path, true).map_err(StoreError::io("create", &path))?);
            if sync {
                sync_dir(dir)?;
            }
            table.add_pack(number, 0);
            Writer {
                number,
                file,
                end: 0,
                broken: false,
                sync,
                dir: dir.to_path_buf(),
            }
        }
    };
    table.active = writer.number;
    Ok((table, writer))
}

/// Where a piece is held in the packs of the store at `root`, read from
/// disk (the store may be closed): the pack file, the offset of its bytes
/// and their length. For tools and tests that inspect a store; the last
/// record of the id decides, as at open.
pub fn locate_piece(root: &Path, id: &PieceId) -> io::Result<Option<(PathBuf, u64, u32)>> {
    let dir = root.join(PACKS_DIR);
    let numbers = list_packs(&dir).map_err(io::Error::other)?;
    let mut found = None;
    for number in numbers {
        let path = pack_path(&dir, number);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Compacted away meanwhile by an open store.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let size = file.metadata()?.len();
        for (header, offset) in scan(&file, size)?.records {
            if header.id != *id {
                continue;
            }
            found = match header.kind {
                Kind::Piece => Some((path.clone(), offset + RECORD_HEADER_LEN as u64, header.len)),
                Kind::Tombstone => None,
            };
        }
    }
    Ok(found)
}

#[cfg(test)]
// Test sizes are small constants.
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn header(kind: Kind, len: u32) -> Header {
        Header {
            kind,
            id: PieceId::of(b"x"),
            len,
        }
    }

    /// A header with a valid checksum over whatever fields it was given.
    fn forged(kind_byte: u8, len: u32) -> [u8; RECORD_HEADER_LEN] {
        let mut raw = header(Kind::Piece, 1).encode();
        raw[4] = kind_byte;
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        let sum = Sha256::digest(&raw[..CHECKED_LEN]);
        raw[CHECKED_LEN..].copy_from_slice(&sum[..RECORD_HEADER_LEN - CHECKED_LEN]);
        raw
    }

    #[test]
    fn a_header_round_trips_and_any_flipped_bit_is_refused() {
        for h in [
            header(Kind::Piece, 1),
            header(Kind::Piece, PIECE_MAX as u32),
            header(Kind::Tombstone, 0),
        ] {
            let raw = h.encode();
            assert_eq!(Header::decode(&raw), Ok(h));
            for bit in 0..RECORD_HEADER_LEN * 8 {
                let mut bad = raw;
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(Header::decode(&bad).is_err(), "bit {bit} flipped passed");
            }
        }
    }

    #[test]
    fn lengths_are_bounded_by_the_piece_limit_even_with_a_valid_checksum() {
        assert!(Header::decode(&forged(KIND_PIECE, PIECE_MAX as u32)).is_ok());
        for len in [PIECE_MAX as u32 + 1, u32::MAX, 0] {
            assert_eq!(
                Header::decode(&forged(KIND_PIECE, len)),
                Err(BadHeader::Length)
            );
        }
        assert_eq!(
            Header::decode(&forged(KIND_TOMBSTONE, 1)),
            Err(BadHeader::Length)
        );
        assert_eq!(Header::decode(&forged(3, 1)), Err(BadHeader::Kind));
        let mut magic = forged(KIND_PIECE, 1);
        magic[0] = b'X';
        assert_eq!(Header::decode(&magic), Err(BadHeader::Magic));
    }

    fn write_pack(records: &[(Header, Vec<u8>)], tail: &[u8]) -> (tempfile::TempDir, File, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000.pack");
        let mut bytes = Vec::new();
        for (h, data) in records {
            bytes.extend_from_slice(&h.encode());
            bytes.extend_from_slice(data);
        }
        bytes.extend_from_slice(tail);
        fs::write(&path, &bytes).unwrap();
        (dir, File::open(&path).unwrap(), bytes.len() as u64)
    }

    #[test]
    fn a_scan_stops_at_a_torn_or_hostile_record() {
        let a = (header(Kind::Piece, 3), b"abc".to_vec());
        let t = (header(Kind::Tombstone, 0), Vec::new());
        let good = 2 * RECORD_HEADER_LEN as u64 + 3;
        let torn_header = header(Kind::Piece, 10).encode();
        let tails: Vec<Vec<u8>> = vec![
            Vec::new(),
            // Half a header.
            torn_header[..RECORD_HEADER_LEN / 2].to_vec(),
            // A whole header, part of its data.
            [&torn_header[..], b"12345"].concat(),
            // A header claiming 4 GiB: refused, nothing allocated.
            forged(KIND_PIECE, u32::MAX).to_vec(),
            // Garbage.
            vec![0xff; 200],
        ];
        for tail in tails {
            let (_dir, file, size) = write_pack(&[a.clone(), t.clone()], &tail);
            let scanned = scan(&file, size).unwrap();
            assert_eq!(scanned.valid_end, good, "tail {tail:?}");
            assert_eq!(scanned.records.len(), 2);
            assert_eq!(scanned.records[1], (t.0, RECORD_HEADER_LEN as u64 + 3));
        }
        // A record after damage is not served either.
        let (_dir, file, size) = write_pack(
            std::slice::from_ref(&a),
            &[&[0u8; 7][..], &t.0.encode()].concat(),
        );
        assert_eq!(scan(&file, size).unwrap().records.len(), 1);
    }

    #[test]
    fn the_compaction_ratio_boundary() {
        let size = 1000;
        let at = PACK_COMPACT_LIVE_PERCENT * size / 100;
        assert!(!below_live_ratio(at, size), "exactly at the ratio is kept");
        assert!(below_live_ratio(at - 1, size));
        assert!(!below_live_ratio(0, 0), "an empty pack has nothing to gain");
    }

    #[test]
    fn pack_names_and_the_number_limit() {
        assert_eq!(parse_pack_name("00000000.pack"), Some(0));
        assert_eq!(
            parse_pack_name(&format!("{PACK_NUMBER_MAX:08}.pack")),
            Some(PACK_NUMBER_MAX)
        );
        for bad in [
            "100000000.pack",
            "0000000.pack",
            "0000000a.pack",
            "00000001.tmp",
            "+0000001.pack",
        ] {
            assert_eq!(parse_pack_name(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            pack_path(dir.path(), 7).file_name().unwrap(),
            "00000007.pack"
        );
    }

    #[test]
    fn no_pack_is_started_past_the_number_limit() {
        let dir = tempfile::tempdir().unwrap();
        let last = pack_path(dir.path(), PACK_NUMBER_MAX);
        fs::write(&last, b"").unwrap();
        let (_table, writer) = open(dir.path(), false).unwrap();
        assert_eq!(writer.number, PACK_NUMBER_MAX, "the last number is used");
        // Full: the next pack would need a number past the limit.
        fs::write(&last, vec![0u8; 0]).unwrap();
        let file = OpenOptions::new().write(true).open(&last).unwrap();
        file.set_len(PACK_MAX_BYTES).unwrap();
        // Zeros are no record: opening truncates them and appends there.
        let (_table, writer) = open(dir.path(), false).unwrap();
        assert_eq!((writer.number, writer.end), (PACK_NUMBER_MAX, 0));
        let mut writer = writer;
        writer.end = PACK_MAX_BYTES;
        let table = std::sync::Mutex::new(Table(PackTable::new()));
        let err = writer
            .append(&table, Kind::Tombstone, PieceId::of(b"y"), &[])
            .unwrap_err();
        assert!(err.to_string().contains("pack numbers exhausted"), "{err}");
    }

    proptest::proptest! {
        /// Any bytes after a valid record: the scan never panics, keeps the
        /// valid record, and every record it keeps lies within the file.
        #[test]
        fn a_scan_of_arbitrary_bytes_stays_within_the_file(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096),
            len in 1u32..64,
        ) {
            let first = (header(Kind::Piece, len), vec![7u8; len as usize]);
            let (_dir, file, size) = write_pack(&[first], &tail);
            let scanned = scan(&file, size).unwrap();
            proptest::prop_assert!(!scanned.records.is_empty());
            proptest::prop_assert!(scanned.valid_end <= size);
            for (h, offset) in &scanned.records {
                proptest::prop_assert!(offset + h.record_len() <= scanned.valid_end);
            }
        }
    }

    #[derive(Debug)]
    struct Table(PackTable);

    impl AsMut<PackTable> for Table {
        fn as_mut(&mut self) -> &mut PackTable {
            &mut self.0
        }
    }
}
