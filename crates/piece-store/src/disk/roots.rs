//! The roots index on disk, `roots.log`: the pinned roots as a small
//! append-only log of text lines, compacted through [`state_file::write`].
//!
//! # Format
//! ```text
//! p2p-roots 1
//! pin file <manifest hex>
//! pin piece <piece hex>
//! unpin file <manifest hex>
//! ```
//! A header line, then one line per change, replayed in order. A compacted
//! log holds only `pin` lines, one per root. Each change appends its line
//! and (unless `--fsync never`) fsyncs the file before the change is applied
//! in memory or reported done; a pin costs one line, not an inode.
//!
//! # Bounds
//! At most [`ROOTS_MAX`] roots are pinned. Before an append, once the lines
//! appended since the last compaction reach the larger of the compacted
//! roots and [`COMPACT_MIN_LINES`], the log is rewritten whole
//! ([`state_file::write`]: temp file, fsync, rename, directory fsync). One
//! append adds at most [`ROOTS_MAX`] lines, so the file never exceeds
//! [`ROOTS_LOG_MAX_BYTES`], the bound it is read with.
//!
//! # Crashes
//! A crash mid-append leaves a last line without its newline: that change
//! was never reported done, and the line is ignored. Any other malformed
//! line makes opening fail ([`StoreError::BadRootsIndex`]): guessing could
//! forget a pin and let pinned pieces be evicted. Opening always compacts,
//! which drops a torn tail. A failed append may leave a partial line, so the
//! next change compacts first.
//!
//! Uses the store's root type and errors and [`state_file`].

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use wire_format::PieceId;

use crate::state_file::{self, StateFileError};
use crate::store::{ROOTS_MAX, Root, StoreError};

/// Name of the roots index in the store directory.
pub const ROOTS_FILE: &str = "roots.log";
/// First line of the roots index: the format and its version.
const HEADER: &str = "p2p-roots 1\n";
/// Longest line: `unpin piece <64 hex>\n` is 77 bytes.
const LINE_MAX_BYTES: usize = 80;
/// Lines appended before a compaction is due, at least (so a store with few
/// roots does not rewrite its index at every change).
pub const COMPACT_MIN_LINES: usize = 1 << 10;
/// Most lines the log can hold: a compaction's roots, the appends before
/// the next compaction is due, and one append of at most [`ROOTS_MAX`].
const ROOTS_LOG_MAX_LINES: u64 = (3 * ROOTS_MAX + COMPACT_MIN_LINES) as u64;
/// Bound the roots index is read with.
pub const ROOTS_LOG_MAX_BYTES: u64 =
    HEADER.len() as u64 + ROOTS_LOG_MAX_LINES * LINE_MAX_BYTES as u64;

/// A change to the pinned roots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Pin(Root),
    Unpin(Root),
}

/// The open roots index: where it is and how much was appended since it was
/// last compacted.
#[derive(Debug)]
pub(super) struct RootsLog {
    path: PathBuf,
    sync: bool,
    compacted_roots: usize,
    appended_lines: usize,
    /// An append failed part-way: compact before the next one.
    dirty: bool,
}

impl RootsLog {
    /// Reads the index at `path` (none yet: no roots) and replays it.
    pub(super) fn load(path: &Path) -> Result<BTreeSet<Root>, StoreError> {
        let bytes = state_file::read(path, ROOTS_LOG_MAX_BYTES)
            .map_err(|err| state_file_error(path, err))?;
        let Some(bytes) = bytes else {
            return Ok(BTreeSet::new());
        };
        replay(&bytes).map_err(|reason| StoreError::BadRootsIndex {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// The index at `path`, to be written whole ([`Self::compact`]) before
    /// anything is appended. `sync`: fsync each append.
    pub(super) fn new(path: &Path, sync: bool) -> Self {
        Self {
            path: path.to_path_buf(),
            sync,
            compacted_roots: 0,
            appended_lines: 0,
            dirty: true,
        }
    }

    /// Records `changes` durably (under the fsync policy). `live` gives the
    /// roots before the changes, written whole first if a compaction is due.
    pub(super) fn append(
        &mut self,
        changes: &[Change],
        live: impl FnOnce() -> Vec<Root>,
    ) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        if self.dirty || self.appended_lines >= self.compacted_roots.max(COMPACT_MIN_LINES) {
            self.compact(&live())?;
        }
        let mut text = String::with_capacity(changes.len() * LINE_MAX_BYTES);
        for change in changes {
            let (verb, root) = match change {
                Change::Pin(root) => ("pin", root),
                Change::Unpin(root) => ("unpin", root),
            };
            text.push_str(&line(verb, root));
        }
        let written = append_text(&self.path, &text, self.sync);
        if written.is_err() {
            self.dirty = true;
        }
        written?;
        self.appended_lines += changes.len();
        Ok(())
    }

    /// Rewrites the index whole as `roots`.
    pub(super) fn compact(&mut self, roots: &[Root]) -> Result<(), StoreError> {
        let mut text = String::with_capacity(HEADER.len() + roots.len() * LINE_MAX_BYTES);
        text.push_str(HEADER);
        for root in roots {
            text.push_str(&line("pin", root));
        }
        state_file::write(&self.path, text.as_bytes())
            .map_err(|err| state_file_error(&self.path, err))?;
        self.compacted_roots = roots.len();
        self.appended_lines = 0;
        self.dirty = false;
        Ok(())
    }
}

/// Appends `text` to the index at `path` (never through a link), fsynced
/// if `sync`. A failure may leave part of it: the caller compacts next.
pub(super) fn append_text(path: &Path, text: &str, sync: bool) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = options.open(path).map_err(StoreError::io("open", path))?;
    file.write_all(text.as_bytes())
        .map_err(StoreError::io("append to", path))?;
    if sync {
        file.sync_data().map_err(StoreError::io("fsync", path))?;
    }
    Ok(())
}

fn line(verb: &str, root: &Root) -> String {
    let (kind, id) = match root {
        Root::File(id) => ("file", id),
        Root::Piece(id) => ("piece", id),
    };
    format!("{verb} {kind} {}\n", id.to_hex())
}

/// Replays a log: the roots pinned at its end. A last line without its
/// newline (a torn append) is ignored.
fn replay(bytes: &[u8]) -> Result<BTreeSet<Root>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let Some(body) = text.strip_prefix(HEADER) else {
        return Err(format!("the first line is not {:?}", HEADER.trim_end()));
    };
    let mut roots = BTreeSet::new();
    let mut lines = body.split_inclusive('\n').enumerate();
    for (index, line) in &mut lines {
        let Some(line) = line.strip_suffix('\n') else {
            break; // torn: that change never completed
        };
        let number = index + 2;
        let mut words = line.split(' ');
        let (Some(verb), Some(kind), Some(hex), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return Err(format!("line {number} is malformed"));
        };
        let id: PieceId = hex
            .parse()
            .map_err(|_| format!("line {number} has no valid piece id"))?;
        let root = match kind {
            "file" => Root::File(id),
            "piece" => Root::Piece(id),
            _ => return Err(format!("line {number}: unknown root kind {kind:?}")),
        };
        match verb {
            "pin" => {
                roots.insert(root);
            }
            "unpin" => {
                roots.remove(&root);
            }
            _ => return Err(format!("line {number}: unknown change {verb:?}")),
        }
        if roots.len() > ROOTS_MAX {
            return Err(format!("more than {ROOTS_MAX} roots at line {number}"));
        }
    }
    Ok(roots)
}

fn state_file_error(path: &Path, err: StateFileError) -> StoreError {
    index_file_error(err, |reason| StoreError::BadRootsIndex {
        path: path.to_path_buf(),
        reason,
    })
}

/// A state-file failure of one of the store's indexes: I/O as I/O (read or
/// write), anything else (too large, not a regular file) as `bad(reason)`.
pub(super) fn index_file_error(
    err: StateFileError,
    bad: impl FnOnce(String) -> StoreError,
) -> StoreError {
    match err {
        StateFileError::Io { step, path, source } => StoreError::Io {
            op: match step {
                state_file::Step::Open | state_file::Step::Inspect | state_file::Step::Read => {
                    "read"
                }
                _ => "write",
            },
            path,
            source,
        },
        other => bad(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    #[test]
    fn changes_replay_and_a_torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOTS_FILE);
        let mut log = RootsLog::new(&path, true);
        log.compact(&[Root::Piece(id(1))]).unwrap();
        log.append(
            &[
                Change::Pin(Root::File(id(2))),
                Change::Unpin(Root::Piece(id(1))),
            ],
            Vec::new,
        )
        .unwrap();
        let expected = BTreeSet::from([Root::File(id(2))]);
        assert_eq!(RootsLog::load(&path).unwrap(), expected);

        // A crash mid-append: part of a line, no newline.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"pin piece 0303").unwrap();
        assert_eq!(RootsLog::load(&path).unwrap(), expected);
        // Compacting (as every open does) drops the torn tail.
        log.compact(&[Root::File(id(2))]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}pin file {}\n", id(2).to_hex())
        );
    }

    #[test]
    fn a_malformed_complete_line_refuses_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOTS_FILE);
        for bad in [
            format!("{HEADER}pin pieces {}\n", id(1).to_hex()),
            format!("{HEADER}keep piece {}\n", id(1).to_hex()),
            format!("{HEADER}pin piece 00\n"),
            format!("{HEADER}pin piece {} extra\n", id(1).to_hex()),
            format!("p2p-roots 2\npin piece {}\n", id(1).to_hex()),
        ] {
            std::fs::write(&path, &bad).unwrap();
            assert!(
                matches!(RootsLog::load(&path), Err(StoreError::BadRootsIndex { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn appends_compact_once_due() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOTS_FILE);
        let mut log = RootsLog::new(&path, false);
        log.compact(&[]).unwrap();
        let root = Root::Piece(id(1));
        for n in 0..COMPACT_MIN_LINES {
            let change = if n % 2 == 0 {
                Change::Pin(root)
            } else {
                Change::Unpin(root)
            };
            log.append(&[change], Vec::new).unwrap();
        }
        assert_eq!(log.appended_lines, COMPACT_MIN_LINES);
        let long = std::fs::metadata(&path).unwrap().len();
        // Due: the next append rewrites the log as the live roots first.
        log.append(&[Change::Pin(root)], Vec::new).unwrap();
        assert_eq!(log.appended_lines, 1);
        let short = std::fs::metadata(&path).unwrap().len();
        assert!(short < long, "{short} < {long}");
        assert_eq!(RootsLog::load(&path).unwrap(), BTreeSet::from([root]));
    }

    #[test]
    fn a_log_at_the_byte_bound_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ROOTS_FILE);
        let unpin = line("unpin", &Root::Piece(id(1)));
        assert!(unpin.len() <= LINE_MAX_BYTES, "the longest line fits");
        let full = usize::try_from(ROOTS_LOG_MAX_BYTES).unwrap();
        let mut text = String::with_capacity(full + 1);
        text.push_str(HEADER);
        while text.len() + unpin.len() <= full {
            text.push_str(&unpin);
        }
        // The rest as a torn last line.
        text.push_str(&"u".repeat(full - text.len()));
        std::fs::write(&path, &text).unwrap();
        assert_eq!(RootsLog::load(&path).unwrap(), BTreeSet::new());
        text.push('u');
        std::fs::write(&path, &text).unwrap();
        assert!(matches!(
            RootsLog::load(&path),
            Err(StoreError::BadRootsIndex { .. })
        ));
    }
}
