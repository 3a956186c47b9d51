//! Extents: pieces the store serves from byte ranges of files outside it,
//! so a fetched file is written once, into the user's file, rather than once
//! into the store and again into the output. The index is `extents.log`, a
//! small append-only log of text lines compacted through
//! [`state_file::write`], like the roots index.
//!
//! # Format
//! ```text
//! p2p-extents 1
//! file <n> <path, percent-encoded>
//! piece <n> <offset> <len> <piece hex>
//! move <n> <new path, percent-encoded>
//! forget <n>
//! drop <piece hex>
//! ```
//! `file` names a file by a number local to the log; `piece` says a piece
//! is the `len` bytes at `offset` of file `n`; `move` renames a file (a
//! fetch's temp file renamed over its output); `forget` drops a file and
//! every piece in it; `drop` drops one piece. A compacted log holds only
//! `file` and `piece` lines. Paths are bytes: everything but
//! `[A-Za-z0-9/._-]` is written as `%XX`.
//!
//! # Trust
//! The caller adds an extent only once its range is durable (under the
//! fsync policy) and hashed to its id. The file still belongs to its user,
//! who may change or truncate it at any time, so every read of an extent is
//! hashed; one that no longer matches (or is short, or whose file is gone)
//! is dropped from the index and reported missing. The file is never
//! moved, deleted or quarantined: a wrong piece is simply never served.
//!
//! # Bounds
//! At most [`EXTENTS_MAX`] pieces in at most [`EXTENT_FILES_MAX`] files,
//! paths of at most [`EXTENT_PATH_MAX_BYTES`]; an add past them fails with
//! [`StoreError::ExtentsFull`]. Before an append, once the lines appended
//! since the last compaction reach the larger of the compacted lines and
//! [`COMPACT_MIN_LINES`], the log is rewritten whole; one append adds at
//! most [`EXTENTS_APPEND_MAX`] piece lines and a file line, so the log never
//! exceeds [`EXTENTS_LOG_MAX_BYTES`], the bound it is read with.
//!
//! # Crashes
//! As for the roots index: a torn last line is ignored (that change never
//! returned), any other malformed line refuses to open the store
//! ([`StoreError::BadExtentsIndex`]), and every open compacts.
//!
//! Uses the store's errors and [`state_file`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::roots::{COMPACT_MIN_LINES, append_text, index_file_error};
use crate::state_file::{self, StateFileError};
use crate::store::{Extent, StoreError};

/// Name of the extents index in the store directory.
pub const EXTENTS_FILE: &str = "extents.log";
/// First line of the extents index: the format and its version.
const HEADER: &str = "p2p-extents 1\n";
/// Most pieces indexed as extents: 1 TiB of 1 MiB pieces, about 100 MiB of
/// memory at worst.
pub const EXTENTS_MAX: usize = 1 << 20;
/// Most files holding extents.
pub const EXTENT_FILES_MAX: usize = 1 << 12;
/// Longest path of a file holding extents (Linux's `PATH_MAX`).
pub const EXTENT_PATH_MAX_BYTES: usize = 4096;
/// Most extents one [`ExtentsLog::append`] may record.
pub const EXTENTS_APPEND_MAX: usize = 1 << 12;
/// Longest `piece` line: `piece`, a file number, an offset, a length and
/// an id, separated by spaces.
const PIECE_LINE_MAX_BYTES: usize = 6 + 11 + 21 + 8 + 64 + 1;
/// Longest `file` or `move` line: a path percent-encoded whole.
const FILE_LINE_MAX_BYTES: usize = 6 + 11 + 3 * EXTENT_PATH_MAX_BYTES + 1;
/// Most bytes of a compacted log.
const COMPACTED_MAX_BYTES: u64 =
    (EXTENTS_MAX * PIECE_LINE_MAX_BYTES + EXTENT_FILES_MAX * FILE_LINE_MAX_BYTES) as u64;
/// Bound the extents index is read with: a compacted log, as many bytes
/// again of appends before a compaction is due, and one more append.
pub const EXTENTS_LOG_MAX_BYTES: u64 = HEADER.len() as u64
    + 2 * COMPACTED_MAX_BYTES
    + (COMPACT_MIN_LINES * FILE_LINE_MAX_BYTES) as u64
    + (EXTENTS_APPEND_MAX * PIECE_LINE_MAX_BYTES + FILE_LINE_MAX_BYTES) as u64;

/// Where an indexed piece lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Place {
    file: u32,
    pub(super) offset: u64,
    pub(super) len: u32,
}

/// The extents in memory, and their log on disk.
#[derive(Debug)]
pub(super) struct Extents {
    files: HashMap<u32, PathBuf>,
    numbers: HashMap<PathBuf, u32>,
    pieces: HashMap<PieceId, Place>,
    /// Pieces per file, so a `forget` needs no scan.
    counts: HashMap<u32, usize>,
    /// Pieces indexed in memory only ([`Self::offer`]): served now, not in
    /// the log until an [`Self::add`] records them.
    provisional: HashSet<PieceId>,
    next_file: u32,
    log: ExtentsLog,
}

impl Extents {
    /// Reads and replays the index at `path` (none yet: no extents).
    /// `sync`: fsync each append.
    pub(super) fn load(path: &Path, sync: bool) -> Result<Self, StoreError> {
        let mut extents = Self {
            files: HashMap::new(),
            numbers: HashMap::new(),
            pieces: HashMap::new(),
            counts: HashMap::new(),
            provisional: HashSet::new(),
            next_file: 0,
            log: ExtentsLog {
                path: path.to_path_buf(),
                sync,
                compacted_lines: 0,
                appended_lines: 0,
                dirty: true,
            },
        };
        let bytes = state_file::read(path, EXTENTS_LOG_MAX_BYTES)
            .map_err(|err| state_file_error(path, err))?;
        if let Some(bytes) = bytes {
            extents
                .replay(&bytes)
                .map_err(|reason| StoreError::BadExtentsIndex {
                    path: path.to_path_buf(),
                    reason,
                })?;
        }
        Ok(extents)
    }

    pub(super) fn contains(&self, id: &PieceId) -> bool {
        self.pieces.contains_key(id)
    }

    pub(super) fn len(&self) -> usize {
        self.pieces.len()
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = &PieceId> {
        self.pieces.keys()
    }

    /// Where `id` lives: its file, offset and length.
    pub(super) fn find(&self, id: &PieceId) -> Option<(PathBuf, Place)> {
        let place = *self.pieces.get(id)?;
        Some((self.files.get(&place.file)?.clone(), place))
    }

    /// The files holding extents.
    pub(super) fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.files.values().cloned().collect();
        files.sort();
        files
    }

    /// Records that `extents` are ranges of `file`, durably, then indexes
    /// them. An id indexed elsewhere moves to its new place. With no
    /// extents, records the file alone (its user means to add some).
    pub(super) fn add(&mut self, file: &Path, extents: &[Extent]) -> Result<(), StoreError> {
        if extents.len() > EXTENTS_APPEND_MAX {
            return Err(StoreError::BadExtent {
                reason: format!("at most {EXTENTS_APPEND_MAX} extents per call"),
            });
        }
        check_path(file)?;
        if let Some(bad) = extents.iter().find(|e| !is_piece_len(e.len)) {
            return Err(StoreError::BadExtent {
                reason: format!("an extent of {} bytes is no piece", bad.len),
            });
        }
        let known = self.numbers.get(file).copied();
        // The latest place wins (a re-run of a fetch writes pieces it read
        // from an earlier run's file into its own); a place already
        // recorded costs nothing.
        let new: Vec<&Extent> = {
            let mut seen = HashSet::new();
            extents
                .iter()
                .filter(|e| {
                    let same = known.is_some_and(|n| {
                        self.pieces.get(&e.id)
                            == Some(&Place {
                                file: n,
                                offset: e.offset,
                                len: e.len,
                            })
                    }) && !self.provisional.contains(&e.id);
                    !same && seen.insert(e.id)
                })
                .collect()
        };
        let added = new
            .iter()
            .filter(|e| !self.pieces.contains_key(&e.id))
            .count();
        if self.pieces.len() + added > EXTENTS_MAX {
            return Err(StoreError::ExtentsFull {
                reason: format!("at most {EXTENTS_MAX} pieces may be served from files"),
            });
        }
        if known.is_none() && self.files.len() >= EXTENT_FILES_MAX {
            return Err(StoreError::ExtentsFull {
                reason: format!("at most {EXTENT_FILES_MAX} files may hold pieces"),
            });
        }
        // Nothing new in a file already known: nothing to record. An empty
        // add to a new file records the file alone.
        if new.is_empty() && known.is_some() {
            return Ok(());
        }
        let number = known.unwrap_or(self.next_file);
        let mut lines = Vec::with_capacity(new.len() + 1);
        if known.is_none() {
            lines.push(file_line("file", number, file));
        }
        lines.extend(new.iter().map(|e| piece_line(number, e)));
        self.append(&lines)?;
        if known.is_none() {
            self.next_file += 1;
            self.files.insert(number, file.to_path_buf());
            self.numbers.insert(file.to_path_buf(), number);
        }
        for extent in new {
            self.insert(number, extent);
        }
        Ok(())
    }

    /// Indexes `extents` of `file` (a file already recorded) in memory
    /// only: served at once, forgotten by a restart unless an
    /// [`add`](Self::add) records them first. For pieces written but not
    /// yet fsynced: every read is hashed, so serving them early is safe;
    /// only the index on disk must wait for the data to be durable. Returns
    /// how many were indexed (none if `file` is not recorded, or a bound
    /// would be passed).
    pub(super) fn offer(&mut self, file: &Path, extents: &[Extent]) -> usize {
        let Some(number) = self.numbers.get(file).copied() else {
            return 0;
        };
        let mut offered = 0;
        for extent in extents {
            let place = Place {
                file: number,
                offset: extent.offset,
                len: extent.len,
            };
            let fits = self.pieces.contains_key(&extent.id) || self.pieces.len() < EXTENTS_MAX;
            let valid = is_piece_len(extent.len);
            if !fits || !valid || self.pieces.get(&extent.id) == Some(&place) {
                continue;
            }
            // A durable place elsewhere is not given up for a provisional
            // one.
            if self.pieces.contains_key(&extent.id) && !self.provisional.contains(&extent.id) {
                continue;
            }
            self.insert(number, extent);
            self.provisional.insert(extent.id);
            offered += 1;
        }
        offered
    }

    /// Records that the file at `from` is now at `to`, durably. Returns
    /// false if no extent lives in `from`.
    pub(super) fn rename(&mut self, from: &Path, to: &Path) -> Result<bool, StoreError> {
        let Some(number) = self.numbers.get(from).copied() else {
            return Ok(false);
        };
        check_path(to)?;
        // A file already at `to` is replaced, as the rename replaced it.
        if self.numbers.contains_key(to) {
            self.forget(to)?;
        }
        self.append(&[file_line("move", number, to)])?;
        self.numbers.remove(from);
        self.numbers.insert(to.to_path_buf(), number);
        self.files.insert(number, to.to_path_buf());
        Ok(true)
    }

    /// Forgets `file` and every extent in it, durably. Returns the pieces
    /// forgotten.
    pub(super) fn forget(&mut self, file: &Path) -> Result<usize, StoreError> {
        let Some(number) = self.numbers.get(file).copied() else {
            return Ok(0);
        };
        self.append(&[format!("forget {number}\n")])?;
        self.numbers.remove(file);
        self.files.remove(&number);
        let count = self.counts.remove(&number).unwrap_or(0);
        if count > 0 {
            self.pieces.retain(|_, place| place.file != number);
            let pieces = &self.pieces;
            self.provisional.retain(|id| pieces.contains_key(id));
        }
        Ok(count)
    }

    /// Drops pieces (they no longer match, or nothing reaches them), one
    /// append per [`EXTENTS_APPEND_MAX`] of them (a line each is shorter
    /// than a `piece` line, so the log's bound holds); those only offered
    /// need no line.
    pub(super) fn drop_pieces(&mut self, ids: &[PieceId]) -> Result<(), StoreError> {
        for chunk in ids.chunks(EXTENTS_APPEND_MAX) {
            let lines: Vec<String> = chunk
                .iter()
                .filter(|id| self.pieces.contains_key(id) && !self.provisional.contains(id))
                .map(|id| format!("drop {}\n", id.to_hex()))
                .collect();
            if !lines.is_empty() {
                self.append(&lines)?;
            }
            for id in chunk {
                self.remove(id);
            }
        }
        Ok(())
    }

    /// Rewrites the log whole from memory (every open does).
    pub(super) fn compact(&mut self) -> Result<(), StoreError> {
        let mut text = String::with_capacity(HEADER.len() + self.pieces.len() * 100);
        text.push_str(HEADER);
        let mut numbers: Vec<(&u32, &PathBuf)> = self.files.iter().collect();
        numbers.sort();
        for (number, path) in &numbers {
            text.push_str(&file_line("file", **number, path));
        }
        let mut pieces: Vec<(&PieceId, &Place)> = self
            .pieces
            .iter()
            .filter(|(id, _)| !self.provisional.contains(*id))
            .collect();
        pieces.sort_by_key(|(id, place)| (place.file, place.offset, **id));
        for (id, place) in &pieces {
            text.push_str(&piece_line(
                place.file,
                &Extent {
                    id: **id,
                    offset: place.offset,
                    len: place.len,
                },
            ));
        }
        let path = &self.log.path;
        state_file::write(path, text.as_bytes()).map_err(|err| state_file_error(path, err))?;
        self.log.compacted_lines = numbers.len() + pieces.len();
        self.log.appended_lines = 0;
        self.log.dirty = false;
        Ok(())
    }

    fn append(&mut self, lines: &[String]) -> Result<(), StoreError> {
        let log = &self.log;
        if log.dirty || log.appended_lines >= log.compacted_lines.max(COMPACT_MIN_LINES) {
            self.compact()?;
        }
        let written = append_text(&self.log.path, &lines.concat(), self.log.sync);
        if written.is_err() {
            self.log.dirty = true;
        }
        written?;
        self.log.appended_lines += lines.len();
        Ok(())
    }

    fn insert(&mut self, number: u32, extent: &Extent) {
        self.provisional.remove(&extent.id);
        let place = Place {
            file: number,
            offset: extent.offset,
            len: extent.len,
        };
        if let Some(old) = self.pieces.insert(extent.id, place) {
            self.uncount(old.file);
        }
        *self.counts.entry(number).or_default() += 1;
    }

    fn remove(&mut self, id: &PieceId) {
        self.provisional.remove(id);
        if let Some(old) = self.pieces.remove(id) {
            self.uncount(old.file);
        }
    }

    /// One piece fewer in file `number`; a file left with none is
    /// forgotten (in memory; the log replays to the same).
    fn uncount(&mut self, number: u32) {
        let Some(count) = self.counts.get_mut(&number) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.counts.remove(&number);
            if let Some(path) = self.files.remove(&number) {
                self.numbers.remove(&path);
            }
        }
    }

    /// Replays a log into memory. A last line without its newline (a torn
    /// append) is ignored.
    fn replay(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(body) = bytes.strip_prefix(HEADER.as_bytes()) else {
            return Err(format!("the first line is not {:?}", HEADER.trim_end()));
        };
        for (index, line) in body.split_inclusive(|b| *b == b'\n').enumerate() {
            let Some(line) = line.strip_suffix(b"\n") else {
                break; // torn: that change never completed
            };
            let number = index + 2;
            let line =
                std::str::from_utf8(line).map_err(|_| format!("line {number} is not UTF-8"))?;
            self.replay_line(line)
                .map_err(|reason| format!("line {number}: {reason}"))?;
        }
        Ok(())
    }

    fn replay_line(&mut self, line: &str) -> Result<(), String> {
        let words: Vec<&str> = line.split(' ').collect();
        let file_number = |word: &str| -> Result<u32, String> {
            word.parse()
                .map_err(|_| format!("bad file number {word:?}"))
        };
        match words.as_slice() {
            ["file", n, path] => {
                let (n, path) = (file_number(n)?, decode_path(path)?);
                if self.files.contains_key(&n) || self.numbers.contains_key(&path) {
                    return Err("a file named twice".into());
                }
                if self.files.len() >= EXTENT_FILES_MAX {
                    return Err(format!("more than {EXTENT_FILES_MAX} files"));
                }
                self.files.insert(n, path.clone());
                self.numbers.insert(path, n);
                self.next_file = self.next_file.max(n.saturating_add(1));
            }
            ["piece", n, offset, len, hex] => {
                let n = file_number(n)?;
                if !self.files.contains_key(&n) {
                    return Err(format!("piece in unknown file {n}"));
                }
                let offset: u64 = offset.parse().map_err(|_| "bad offset".to_owned())?;
                let len: u32 = len.parse().map_err(|_| "bad length".to_owned())?;
                if !is_piece_len(len) {
                    return Err(format!("a piece of {len} bytes"));
                }
                let id: PieceId = hex.parse().map_err(|_| "bad piece id".to_owned())?;
                if !self.pieces.contains_key(&id) && self.pieces.len() >= EXTENTS_MAX {
                    return Err(format!("more than {EXTENTS_MAX} pieces"));
                }
                self.insert(n, &Extent { id, offset, len });
            }
            ["move", n, path] => {
                let (n, path) = (file_number(n)?, decode_path(path)?);
                let Some(old) = self.files.insert(n, path.clone()) else {
                    return Err(format!("move of unknown file {n}"));
                };
                self.numbers.remove(&old);
                if let Some(replaced) = self.numbers.insert(path, n) {
                    self.files.remove(&replaced);
                    self.counts.remove(&replaced);
                    self.pieces.retain(|_, place| place.file != replaced);
                }
            }
            ["forget", n] => {
                let n = file_number(n)?;
                let Some(path) = self.files.remove(&n) else {
                    return Err(format!("forget of unknown file {n}"));
                };
                self.numbers.remove(&path);
                self.counts.remove(&n);
                self.pieces.retain(|_, place| place.file != n);
            }
            ["drop", hex] => {
                let id: PieceId = hex.parse().map_err(|_| "bad piece id".to_owned())?;
                self.remove(&id);
            }
            _ => return Err("malformed".into()),
        }
        Ok(())
    }
}

/// Where the log is and how much was appended since it was last compacted.
#[derive(Debug)]
struct ExtentsLog {
    path: PathBuf,
    sync: bool,
    compacted_lines: usize,
    appended_lines: usize,
    /// Not written whole since open, or an append failed part-way: compact
    /// before the next append.
    dirty: bool,
}

/// Refuses a path the index cannot hold: relative, or longer than
/// [`EXTENT_PATH_MAX_BYTES`].
fn check_path(path: &Path) -> Result<(), StoreError> {
    if path.as_os_str().len() > EXTENT_PATH_MAX_BYTES || !path.is_absolute() {
        return Err(StoreError::BadExtent {
            reason: format!(
                "{} is not an absolute path of at most {EXTENT_PATH_MAX_BYTES} bytes",
                path.display()
            ),
        });
    }
    Ok(())
}

/// Whether a piece can be `len` bytes long.
fn is_piece_len(len: u32) -> bool {
    len > 0 && len as usize <= PIECE_MAX
}

fn file_line(verb: &str, number: u32, path: &Path) -> String {
    format!("{verb} {number} {}\n", encode_path(path))
}

fn piece_line(number: u32, extent: &Extent) -> String {
    format!(
        "piece {number} {} {} {}\n",
        extent.offset,
        extent.len,
        extent.id.to_hex()
    )
}

fn encode_path(path: &Path) -> String {
    let mut out = String::with_capacity(path.as_os_str().len());
    for &byte in path.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'/' | b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn decode_path(text: &str) -> Result<PathBuf, String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let hex = tail
                .get(..2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad %-escape in a path")?;
            bytes.push(hex);
            rest = &tail[2..];
        } else {
            bytes.push(byte);
            rest = tail;
        }
    }
    if bytes.is_empty() || bytes.len() > EXTENT_PATH_MAX_BYTES || bytes[0] != b'/' {
        return Err("a path that is not absolute or too long".into());
    }
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

fn state_file_error(path: &Path, err: StateFileError) -> StoreError {
    index_file_error(err, |reason| StoreError::BadExtentsIndex {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    fn extent(n: u8, offset: u64) -> Extent {
        Extent {
            id: id(n),
            offset,
            len: 1 << 20,
        }
    }

    fn open(dir: &Path) -> Extents {
        let mut extents = Extents::load(&dir.join(EXTENTS_FILE), false).unwrap();
        extents.compact().unwrap();
        extents
    }

    #[test]
    fn adds_moves_forgets_and_drops_replay_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join(".out.part");
        let b = dir.path().join("out file %1");
        let c = dir.path().join("other");
        let mut extents = open(dir.path());
        extents
            .add(&a, &[extent(1, 0), extent(2, 1 << 20)])
            .unwrap();
        extents.add(&c, &[extent(3, 0)]).unwrap();
        assert!(extents.rename(&a, &b).unwrap());
        extents.drop_pieces(&[id(2)]).unwrap();
        assert_eq!(extents.forget(&c).unwrap(), 1);

        let check = |extents: &Extents| {
            assert_eq!(extents.len(), 1);
            let (path, place) = extents.find(&id(1)).unwrap();
            assert_eq!(path, b);
            assert_eq!((place.offset, place.len), (0, 1 << 20));
            assert!(!extents.contains(&id(2)) && !extents.contains(&id(3)));
            assert_eq!(extents.files(), vec![b.clone()]);
        };
        check(&extents);
        // Replayed from the appended lines, then from the compacted log.
        let reopened = open(dir.path());
        check(&reopened);
        check(&open(dir.path()));
        let text = std::fs::read_to_string(dir.path().join(EXTENTS_FILE)).unwrap();
        assert!(text.contains("out%20file%20%251"), "{text}");
    }

    #[test]
    fn a_torn_last_line_is_ignored_and_a_malformed_one_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXTENTS_FILE);
        let file = dir.path().join("f");
        let mut extents = open(dir.path());
        extents.add(&file, &[extent(1, 0)]).unwrap();
        let mut log = OpenOptions::new().append(true).open(&path).unwrap();
        log.write_all(b"piece 0 1048576 1048576 0202").unwrap();
        assert_eq!(Extents::load(&path, true).unwrap().len(), 1);
        log.write_all(b"\n").unwrap();
        let err = Extents::load(&path, true).unwrap_err();
        assert!(matches!(err, StoreError::BadExtentsIndex { .. }), "{err}");
    }

    #[test]
    fn adds_past_the_bounds_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut extents = open(dir.path());
        let file = dir.path().join("f");
        let too_many: Vec<Extent> = (0..=EXTENTS_APPEND_MAX)
            .map(|i| Extent {
                id: PieceId::of(&i.to_le_bytes()),
                offset: i as u64,
                len: 1,
            })
            .collect();
        let err = extents.add(&file, &too_many).unwrap_err();
        assert!(matches!(err, StoreError::BadExtent { .. }), "{err}");
        extents.add(&file, &too_many[..EXTENTS_APPEND_MAX]).unwrap();
        assert_eq!(extents.len(), EXTENTS_APPEND_MAX);

        let bad = |err: StoreError| matches!(err, StoreError::BadExtent { .. });
        // A path of the longest length is taken; one byte more is refused.
        let longest = PathBuf::from(format!("/{}", "a".repeat(EXTENT_PATH_MAX_BYTES - 1)));
        extents.add(&longest, &[extent(8, 0)]).unwrap();
        let long = PathBuf::from(format!("/{}", "a".repeat(EXTENT_PATH_MAX_BYTES)));
        assert!(bad(extents.add(&long, &[extent(9, 0)]).unwrap_err()));
        assert!(bad(extents.rename(&longest, &long).unwrap_err()));
        assert!(bad(extents
            .add(Path::new("relative"), &[extent(9, 0)])
            .unwrap_err()));
        let oversized = Extent {
            len: u32::try_from(PIECE_MAX).unwrap() + 1,
            ..extent(9, 0)
        };
        assert!(bad(extents.add(&file, &[oversized]).unwrap_err()));
        assert!(!extents.contains(&id(9)));
        assert_eq!(extents.forget(&longest).unwrap(), 1);

        // The file bound: the next new file is refused.
        for n in 1..EXTENT_FILES_MAX {
            let other = dir.path().join(format!("f{n}"));
            let e = Extent {
                id: PieceId::of(&(n as u64 + 1_000_000).to_le_bytes()),
                offset: 0,
                len: 1,
            };
            extents.add(&other, &[e]).unwrap();
        }
        let err = extents
            .add(&dir.path().join("one-more"), &[extent(9, 0)])
            .unwrap_err();
        assert!(matches!(err, StoreError::ExtentsFull { .. }), "{err}");
        // The log read back holds exactly what was accepted.
        let reopened = open(dir.path());
        assert_eq!(reopened.len(), EXTENTS_APPEND_MAX + EXTENT_FILES_MAX - 1);
        assert_eq!(reopened.files().len(), EXTENT_FILES_MAX);
    }

    #[test]
    fn offered_extents_are_indexed_at_once_but_logged_only_when_added() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".f.part");
        let mut extents = open(dir.path());
        // Not recorded yet: nothing to offer into.
        assert_eq!(extents.offer(&file, &[extent(1, 0)]), 0);
        extents.add(&file, &[]).unwrap();
        assert_eq!(extents.offer(&file, &[extent(1, 0), extent(2, 1 << 20)]), 2);
        assert!(extents.contains(&id(1)) && extents.contains(&id(2)));
        // Neither a reopen nor a compaction keeps what was only offered.
        extents.compact().unwrap();
        assert_eq!(open(dir.path()).len(), 0);
        // Added: now durable; the other one is still only offered.
        extents.add(&file, &[extent(1, 0)]).unwrap();
        let reopened = open(dir.path());
        assert!(reopened.contains(&id(1)) && !reopened.contains(&id(2)));
        // A durable place is not given up for an offered one.
        let other = dir.path().join("other");
        extents.add(&other, &[]).unwrap();
        assert_eq!(extents.offer(&other, &[extent(1, 5)]), 0);
        assert_eq!(extents.find(&id(1)).unwrap().0, file);
        // Dropping an offered piece needs no line.
        extents.drop_pieces(&[id(2)]).unwrap();
        assert!(!extents.contains(&id(2)));
    }

    #[test]
    fn the_index_takes_extents_max_pieces_and_refuses_one_more() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let mut extents = Extents::load(&dir.path().join(EXTENTS_FILE), false).unwrap();
        extents.add(&file, &[]).unwrap();
        let nth = |n: u64| Extent {
            id: PieceId::of(&n.to_le_bytes()),
            offset: n,
            len: 1,
        };
        // Offered (in memory, no log) up to one short of the bound...
        let offered: Vec<Extent> = (0..EXTENTS_MAX as u64 - 1).map(nth).collect();
        assert_eq!(extents.offer(&file, &offered), EXTENTS_MAX - 1);
        // ...the last one fits, durably...
        extents.add(&file, &[nth(u64::MAX)]).unwrap();
        assert_eq!(extents.len(), EXTENTS_MAX);
        // ...and one more is refused, either way.
        let over = nth(u64::MAX - 1);
        let err = extents.add(&file, &[over]).unwrap_err();
        assert!(matches!(err, StoreError::ExtentsFull { .. }), "{err}");
        assert_eq!(extents.offer(&file, &[over]), 0);
        assert_eq!(extents.len(), EXTENTS_MAX);
    }

    #[test]
    fn paths_of_any_bytes_round_trip() {
        let raw: Vec<u8> = (1..=255u8).filter(|b| *b != b'/').collect();
        let mut path = b"/dir/".to_vec();
        path.extend_from_slice(&raw);
        let path = PathBuf::from(OsStr::from_bytes(&path));
        let encoded = encode_path(&path);
        assert!(!encoded.contains(' ') && !encoded.contains('\n'));
        assert_eq!(decode_path(&encoded).unwrap(), path);
        assert!(decode_path("relative").is_err());
        assert!(decode_path("/bad%2").is_err());
    }
}
