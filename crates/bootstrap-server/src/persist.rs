//! The registry file: the format of a saved entry, writing the file
//! atomically, reading it back with bounded memory, and the checks a saved
//! entry passes before it is restored.
//!
//! Knows nothing of the [registry](crate::registry) itself: it turns
//! entries into [`SavedEntry`] values and back. Uses `wire_format`, `serde`,
//! `serde_json`, `hex` and the standard library, never another module of
//! this crate.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use piece_store::state_file::{self, StateFileError};
use serde::de::{DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use wire_format::limits::{NODE_ID_BYTES, REGISTRY_EXPIRY};
use wire_format::{NodeId, PeerAddr};

/// One verified entry as persisted in the server's data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEntry {
    /// The address, `ip:port` (`[ip]:port` for IPv6).
    pub addr: String,
    /// The node_id, 16 lowercase hex digits.
    pub node_id: String,
    /// Last announce, in seconds since the unix epoch.
    pub last_announce_unix_secs: u64,
}

impl SavedEntry {
    /// `addr`, last announced by `node_id` at `last_announce`, stamped in
    /// unix seconds. `now` and `now_system` are the same moment on the
    /// monotonic and the wall clock.
    pub fn new(
        addr: PeerAddr,
        node_id: NodeId,
        last_announce: Instant,
        now: Instant,
        now_system: SystemTime,
    ) -> Self {
        let age = now.saturating_duration_since(last_announce);
        let at = now_system.checked_sub(age).unwrap_or(UNIX_EPOCH);
        Self {
            addr: addr.to_string(),
            node_id: node_id.to_string(),
            last_announce_unix_secs: at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        }
    }

    /// The parsed entry, with its last announce on the monotonic clock, or
    /// `None` if it must be dropped.
    fn restore(&self, now: Instant, now_system: SystemTime) -> Option<RestoredEntry> {
        let addr: PeerAddr = self.addr.parse().ok()?;
        if addr.port() == 0 || addr.class().is_never_dialable() {
            return None;
        }
        let mut id = [0u8; NODE_ID_BYTES];
        hex::decode_to_slice(&self.node_id, &mut id).ok()?;
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(self.last_announce_unix_secs))?;
        let age = now_system.duration_since(at).unwrap_or(Duration::ZERO);
        if age >= REGISTRY_EXPIRY {
            return None;
        }
        Some(RestoredEntry {
            addr,
            node_id: NodeId(id),
            last_announce: now.checked_sub(age).unwrap_or(now),
        })
    }
}

/// A saved entry that passed the checks of [`restore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoredEntry {
    /// The address.
    pub addr: PeerAddr,
    /// The node_id it was last announced by.
    pub node_id: NodeId,
    /// Its last announce, on the monotonic clock.
    pub last_announce: Instant,
}

/// What [`restore`] kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// The entries to restore, freshest first, at most `max_entries`.
    pub entries: Vec<RestoredEntry>,
    /// Saved entries dropped.
    pub dropped: u64,
}

/// The entries of `saved` fit to restore, each keeping its age, so an entry
/// saved long ago expires on time; one already expired is dropped.
///
/// Also dropped (and counted in [`Restored::dropped`]): addresses that do
/// not parse, have port 0 or are never dialable
/// ([`wire_format::AddrClass::is_never_dialable`]), node_ids that are not
/// 16 hex digits, timestamps out of range, duplicates (the freshest is
/// kept) and entries beyond `max_entries` (the freshest are kept).
///
/// `now` and `now_system` are the same moment on both clocks. A timestamp
/// in the future counts as "now"; an age the monotonic clock cannot
/// represent (shortly after boot) counts as "now" too.
pub fn restore(
    saved: impl IntoIterator<Item = SavedEntry>,
    max_entries: usize,
    now: Instant,
    now_system: SystemTime,
) -> Restored {
    let mut dropped = 0u64;
    let mut freshest: HashMap<PeerAddr, RestoredEntry> = HashMap::new();
    for entry in saved {
        let Some(entry) = entry.restore(now, now_system) else {
            dropped += 1;
            continue;
        };
        match freshest.get_mut(&entry.addr) {
            Some(kept) => {
                dropped += 1;
                if entry.last_announce > kept.last_announce {
                    *kept = entry;
                }
            }
            None => {
                freshest.insert(entry.addr, entry);
            }
        }
    }
    let mut entries: Vec<_> = freshest.into_values().collect();
    // Freshest first; the address breaks ties so the result is deterministic.
    entries.sort_unstable_by(|a, b| {
        b.last_announce
            .cmp(&a.last_announce)
            .then(a.addr.cmp(&b.addr))
    });
    if entries.len() > max_entries {
        dropped += u64::try_from(entries.len() - max_entries).unwrap_or(u64::MAX);
        entries.truncate(max_entries);
    }
    Restored { entries, dropped }
}

/// Errors of saving and loading the registry file; the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Reading or writing the file failed (the error names the step and
    /// the path), or it is too large, a link, or not a regular file.
    #[error("registry file: {0}")]
    File(#[from] StateFileError),
    /// The file is not a JSON array of saved entries.
    #[error("malformed registry file {path}: {source}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        #[source]
        source: serde_json::Error,
    },
}

/// Writes `entries` to `path` as JSON, atomically, through the shared
/// state-file writer ([`state_file::write`]: a fresh temp file created
/// with `create_new`, mode 0600 and no-follow, fsynced, renamed over
/// `path`, then the directory fsynced), so a crash leaves either the old
/// file or the new one.
pub fn save_json(path: &Path, entries: &[SavedEntry]) -> Result<(), RegistryError> {
    // SavedEntry holds only strings and integers: serialising cannot fail.
    let bytes = serde_json::to_vec(entries).map_err(|source| RegistryError::Malformed {
        path: path.to_owned(),
        source,
    })?;
    state_file::write(path, &bytes)?;
    Ok(())
}

/// The most bytes one saved entry takes in the file: the longest address
/// (`[` + 39 + `]:65535`), 16 hex digits, the largest u64, the keys and the
/// JSON around them, rounded up.
pub const SAVED_ENTRY_MAX_BYTES: u64 = 256;

/// A registry file is read whole only up to the bytes this many entries may
/// take (the default `--max-peers`; a larger `--max-peers` raises it), so a
/// file saved before `--max-peers` was lowered still loads.
pub const FILE_BOUND_MIN_ENTRIES: usize = 100_000;

/// The largest registry file read for `max_entries` entries: what
/// [`save_json`] may have written for them, and never less than for
/// [`FILE_BOUND_MIN_ENTRIES`].
pub fn file_bound(max_entries: usize) -> u64 {
    let entries = u64::try_from(max_entries.max(FILE_BOUND_MIN_ENTRIES)).unwrap_or(u64::MAX);
    entries
        .saturating_mul(SAVED_ENTRY_MAX_BYTES)
        .saturating_add(2)
}

/// Reads the entries [`save_json`] wrote. A missing file is an empty list;
/// content that is not a JSON array of entries is [`RegistryError::Malformed`];
/// a file larger than [`file_bound`] is refused unread
/// ([`StateFileError::TooLarge`]), and a symbolic link is never followed.
///
/// Keeps at most `max_entries` (the first ones, which
/// [`Registry::to_saved`](crate::registry::Registry::to_saved) makes the
/// freshest); later elements are skipped without being kept. Entries are
/// not validated here: [`restore`] drops the bad ones.
pub fn load_json(path: &Path, max_entries: usize) -> Result<Vec<SavedEntry>, RegistryError> {
    let Some(bytes) = state_file::read(path, file_bound(max_entries))? else {
        return Ok(Vec::new());
    };
    let to_error = |source| RegistryError::Malformed {
        path: path.to_owned(),
        source,
    };
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    let entries = CappedEntries(max_entries)
        .deserialize(&mut de)
        .map_err(to_error)?;
    de.end().map_err(to_error)?;
    Ok(entries)
}

/// Deserialises a JSON array of [`SavedEntry`], keeping at most `.0`.
struct CappedEntries(usize);

impl<'de> DeserializeSeed<'de> for CappedEntries {
    type Value = Vec<SavedEntry>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CappedEntries {
    type Value = Vec<SavedEntry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of registry entries")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Grows as entries arrive: never sized from the file's claim alone.
        let mut out = Vec::new();
        while out.len() < self.0 {
            match seq.next_element::<SavedEntry>()? {
                Some(entry) => out.push(entry),
                None => return Ok(out),
            }
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use piece_store::state_file::Step;

    use super::*;

    #[test]
    fn restore_drops_bad_and_never_dialable_entries() {
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let secs_now = wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
        let entry = |addr: &str, node_id: &str| SavedEntry {
            addr: addr.to_owned(),
            node_id: node_id.to_owned(),
            last_announce_unix_secs: secs_now,
        };
        let good = "0123456789abcdef";
        let saved = vec![
            entry("8.8.8.8:7000", good),
            entry("127.0.0.1:7001", good),
            entry("10.1.2.3:7002", good),
            entry("not an address", good),
            entry("8.8.8.8:0", good),
            entry("192.0.2.1:7000", good),
            entry("0.0.0.0:7000", good),
            entry("224.0.0.1:7000", good),
            entry("[fe80::1]:7000", good),
            entry("8.8.4.4:7000", "0123"),
            entry("8.8.4.4:7000", "zz23456789abcdef"),
            entry("8.8.8.8:7000", good), // duplicate
            SavedEntry {
                last_announce_unix_secs: u64::MAX,
                ..entry("9.9.9.9:7000", good)
            },
        ];
        let restored = restore(saved, 100, t0, wall);
        let mut kept: Vec<_> = restored
            .entries
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        kept.sort();
        assert_eq!(kept, ["10.1.2.3:7002", "127.0.0.1:7001", "8.8.8.8:7000"]);
        assert_eq!(restored.dropped, 10);
    }

    #[test]
    fn a_file_over_the_bound_is_refused_unread_and_one_at_it_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let bound = usize::try_from(file_bound(1)).unwrap();
        // "[" + spaces + "]": valid JSON of exactly `bound` bytes.
        let at_bound = format!("[{}]", " ".repeat(bound - 2));
        fs::write(&path, &at_bound).unwrap();
        assert_eq!(load_json(&path, 1).unwrap(), Vec::new());
        fs::write(&path, format!("{at_bound} ")).unwrap();
        let err = load_json(&path, 1).unwrap_err();
        assert!(
            matches!(err, RegistryError::File(StateFileError::TooLarge { .. })),
            "{err}"
        );
        // The bound grows with the capacity asked for.
        assert!(file_bound(FILE_BOUND_MIN_ENTRIES * 2) > file_bound(1));
    }

    #[test]
    fn a_saved_file_is_private_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        save_json(&path, &[]).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn missing_file_loads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load_json(&dir.path().join("absent.json"), 10).unwrap();
        assert!(loaded.is_empty());
    }

    #[test]
    fn malformed_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        for content in [
            "",
            "{",
            "not json",
            "{\"addr\": \"1.2.3.4:5\"}",
            "[{\"addr\": 5, \"node_id\": \"00\", \"last_announce_unix_secs\": 1}]",
            "[{\"addr\": \"1.2.3.4:5\"}]",
            "[] trailing",
        ] {
            fs::write(&path, content).unwrap();
            let err = load_json(&path, 10).unwrap_err();
            assert!(
                matches!(err, RegistryError::Malformed { .. }),
                "{content:?}: {err}"
            );
            assert!(err.to_string().contains("registry.json"), "{err}");
        }
    }

    #[test]
    fn unreadable_path_is_an_io_error_naming_the_operation() {
        let dir = tempfile::tempdir().unwrap();
        // A directory cannot be read as a file.
        let err = load_json(dir.path(), 10).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::File(StateFileError::NotRegularFile { .. })
            ),
            "{err}"
        );
        let missing_dir = dir.path().join("no/such/dir/registry.json");
        let err = save_json(&missing_dir, &[]).unwrap_err();
        assert!(
            matches!(&err, RegistryError::File(e) if e.step() == Some(Step::CreateTemp)),
            "{err}"
        );
    }
}
