//! Reachability: which pieces the pinned roots (and the in-memory holds)
//! reach, as a count per piece id. A piece is kept while its count is above
//! zero; eviction and `gc` consider only pieces at zero.
//!
//! A count is the number of references to the id: one per root or hold
//! naming it, plus one per time an expanded manifest of a pinned file lists
//! it. Increments and decrements are symmetric (unpinning a file takes back
//! exactly what its expansions added), so an id listed twice by one file
//! (a file of repeated blocks) is simply counted twice. Ids the store does
//! not hold count too: a fetch job pins its file's root before any piece
//! arrives, and each piece is reached the moment it does.
//!
//! A file root is expanded as far as the store holds its tree: its manifest
//! is parsed at [`Level::ROOT`] with [`Manifest::parse`] (bounded by the
//! manifest limits), every entry is counted, and each part manifest is
//! queued for expansion at the level below: *ready* if held, else *awaited*
//! until it arrives. The store drives the queue (reading manifests without
//! its lock): no recursion, at most
//! [`MANIFEST_MAX_DEPTH`](crate::manifest::MANIFEST_MAX_DEPTH) levels, each
//! manifest listing at most
//! [`MANIFEST_MAX_ENTRIES`](crate::manifest::MANIFEST_MAX_ENTRIES) entries.
//!
//! # Memory
//! Per pinned file, 32 bytes per entry of each of its manifests expanded
//! (about one per data piece: 32 MB for a 1 TiB file), and one count (about
//! 50 bytes) per distinct id reached. Only manifests the store holds are
//! expanded, each lists at most `MANIFEST_MAX_ENTRIES` entries, and at most
//! [`ROOTS_MAX`](crate::store::ROOTS_MAX) roots are pinned: worst case
//! `ROOTS_MAX` × the entries of the manifests held (roots × pieces per tree).
//!
//! Uses the store's root type and error, and the manifest format.

use std::collections::{BTreeSet, HashMap, VecDeque};

use wire_format::PieceId;

use crate::manifest::{Entries, Layout, Level, Manifest};
use crate::store::{ROOTS_MAX, Root, StoreError};

/// Pieces whose reached state changed: (id, reached now).
pub(crate) type Flips = Vec<(PieceId, bool)>;

/// A manifest of a pinned file's tree waiting to be expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Task {
    /// The file root (its manifest id).
    root: PieceId,
    /// Which pin of that root queued the task (a stale task is ignored).
    generation: u64,
    /// The manifest to expand.
    pub(crate) manifest: PieceId,
    level: Level,
}

#[derive(Debug)]
struct FileReach {
    generation: u64,
    /// The entries counted for each manifest expanded so far.
    expanded: Vec<Vec<PieceId>>,
}

/// Pinned roots, holds, and the count of references per piece id.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    roots: BTreeSet<Root>,
    files: HashMap<PieceId, FileReach>,
    counts: HashMap<PieceId, u64>,
    /// Part manifests (and file roots) a pinned file reaches that the store
    /// does not hold: expanded when they arrive.
    awaited: HashMap<PieceId, Vec<Task>>,
    /// Held manifests waiting for the store to read and expand them.
    ready: VecDeque<Task>,
    next_generation: u64,
}

impl Reach {
    /// Whether a root or hold reaches `id`.
    pub(crate) fn is_reached(&self, id: &PieceId) -> bool {
        self.counts.contains_key(id)
    }

    pub(crate) fn roots(&self) -> Vec<Root> {
        self.roots.iter().copied().collect()
    }

    pub(crate) fn has_root(&self, root: &Root) -> bool {
        self.roots.contains(root)
    }

    /// Whether `more` new roots fit under [`ROOTS_MAX`].
    pub(crate) fn check_room(&self, more: usize) -> Result<(), StoreError> {
        match self.roots.len().checked_add(more) {
            Some(total) if total <= ROOTS_MAX => Ok(()),
            _ => Err(StoreError::TooManyRoots { max: ROOTS_MAX }),
        }
    }

    /// Whether pinning `root` adds it (`Ok(true)`), finds it pinned
    /// (`Ok(false)`), or would exceed [`ROOTS_MAX`].
    pub(crate) fn check_pin(&self, root: &Root) -> Result<bool, StoreError> {
        if self.roots.contains(root) {
            return Ok(false);
        }
        self.check_room(1)?;
        Ok(true)
    }

    /// Pins `root` (the caller checked [`Self::check_pin`]); a file root's
    /// manifest is queued for expansion. Returns false if already pinned.
    pub(crate) fn pin(
        &mut self,
        root: Root,
        held: impl Fn(&PieceId) -> bool,
        flips: &mut Flips,
    ) -> bool {
        if !self.roots.insert(root) {
            return false;
        }
        let id = root.id();
        self.inc(id, flips);
        if let Root::File(_) = root {
            self.next_generation += 1;
            let generation = self.next_generation;
            self.files.insert(
                id,
                FileReach {
                    generation,
                    expanded: Vec::new(),
                },
            );
            self.queue(
                Task {
                    root: id,
                    generation,
                    manifest: id,
                    level: Level::ROOT,
                },
                &held,
            );
        }
        true
    }

    /// Unpins `root`, taking back every reference it added. Returns false if
    /// it was not pinned.
    pub(crate) fn unpin(&mut self, root: Root, flips: &mut Flips) -> bool {
        if !self.roots.remove(&root) {
            return false;
        }
        let id = root.id();
        self.dec(&id, flips);
        if let Root::File(_) = root
            && let Some(file) = self.files.remove(&id)
        {
            for listed in &file.expanded {
                for child in listed {
                    self.dec(child, flips);
                }
            }
            self.ready.retain(|task| task.root != id);
            self.awaited.retain(|_, tasks| {
                tasks.retain(|task| task.root != id);
                !tasks.is_empty()
            });
        }
        true
    }

    pub(crate) fn hold(&mut self, id: PieceId, flips: &mut Flips) {
        self.inc(id, flips);
    }

    pub(crate) fn release(&mut self, id: &PieceId, flips: &mut Flips) {
        self.dec(id, flips);
    }

    /// A piece arrived in the store: if a pinned file awaits it as a
    /// manifest, it is ready to expand.
    pub(crate) fn arrived(&mut self, id: &PieceId) {
        if let Some(tasks) = self.awaited.remove(id) {
            self.ready.extend(tasks);
        }
    }

    /// The next held manifest to read and [`Self::expand`].
    pub(crate) fn take_ready(&mut self) -> Option<Task> {
        self.ready.pop_front()
    }

    /// Puts back a task whose manifest could not be read now (an I/O
    /// error): retried by the next drive of the queue.
    pub(crate) fn retry_later(&mut self, task: Task) {
        self.ready.push_back(task);
    }

    /// Counts the entries of a task's manifest, read as `bytes` (`None`: the
    /// store no longer holds it, so it is awaited again). A manifest that
    /// does not parse at its level reaches nothing more.
    pub(crate) fn expand(
        &mut self,
        task: Task,
        bytes: Option<&[u8]>,
        held: impl Fn(&PieceId) -> bool,
        flips: &mut Flips,
    ) {
        if self
            .files
            .get(&task.root)
            .is_none_or(|file| file.generation != task.generation)
        {
            return;
        }
        let Some(bytes) = bytes else {
            self.awaited.entry(task.manifest).or_default().push(task);
            return;
        };
        let Ok(manifest) = Manifest::parse(bytes, &Layout::STANDARD, task.level) else {
            return;
        };
        let listed: Vec<PieceId> = match &manifest.entries {
            Entries::Pieces(ids) => ids.clone(),
            Entries::Parts(parts) => parts.iter().map(|part| part.manifest).collect(),
        };
        for id in &listed {
            self.inc(*id, flips);
        }
        if let (Entries::Parts(_), Some(below)) = (&manifest.entries, task.level.below()) {
            for id in &listed {
                self.queue(
                    Task {
                        manifest: *id,
                        level: below,
                        ..task
                    },
                    &held,
                );
            }
        }
        if let Some(file) = self.files.get_mut(&task.root) {
            file.expanded.push(listed);
        }
    }

    fn queue(&mut self, task: Task, held: &impl Fn(&PieceId) -> bool) {
        if held(&task.manifest) {
            self.ready.push_back(task);
        } else {
            self.awaited.entry(task.manifest).or_default().push(task);
        }
    }

    fn inc(&mut self, id: PieceId, flips: &mut Flips) {
        let count = self.counts.entry(id).or_insert(0);
        *count += 1;
        if *count == 1 {
            flips.push((id, true));
        }
    }

    fn dec(&mut self, id: &PieceId, flips: &mut Flips) {
        match self.counts.get_mut(id) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                self.counts.remove(id);
                flips.push((*id, false));
            }
            // Not counted: a release without its hold. Nothing to undo.
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use wire_format::VerifiedPiece;

    use super::*;
    use crate::manifest::{PIECE_MAX_BYTES, Part};

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    fn manifest(name: Option<&str>, entries: Entries) -> (PieceId, Vec<u8>) {
        let size = match &entries {
            Entries::Pieces(ids) => ids.len() as u64 * PIECE_MAX_BYTES,
            Entries::Parts(parts) => parts.iter().map(|p| p.size).sum(),
        };
        let json = Manifest {
            name: name.map(str::to_owned),
            size,
            sha256: id(0),
            entries,
        }
        .to_json();
        let piece = VerifiedPiece::new(Bytes::from(json.clone())).unwrap();
        (piece.id(), json)
    }

    /// Drives the queue with `store` as the pieces held.
    fn drive(reach: &mut Reach, store: &HashMap<PieceId, Vec<u8>>, flips: &mut Flips) {
        while let Some(task) = reach.take_ready() {
            let bytes = store.get(&task.manifest).map(Vec::as_slice);
            reach.expand(task, bytes, |id| store.contains_key(id), flips);
        }
    }

    #[test]
    fn a_file_root_reaches_its_tree_as_far_as_held_and_the_rest_on_arrival() {
        let (part, part_json) = manifest(None, Entries::Pieces(vec![id(1), id(2)]));
        let (root, root_json) = manifest(
            Some("f"),
            Entries::Parts(vec![Part {
                manifest: part,
                size: 2 * PIECE_MAX_BYTES,
            }]),
        );
        let mut store = HashMap::new();
        store.insert(root, root_json);
        let mut reach = Reach::default();
        let mut flips = Flips::new();
        assert!(reach.pin(Root::File(root), |id| store.contains_key(id), &mut flips));
        drive(&mut reach, &store, &mut flips);
        assert!(reach.is_reached(&root) && reach.is_reached(&part));
        assert!(!reach.is_reached(&id(1)), "the part is not held yet");

        store.insert(part, part_json);
        reach.arrived(&part);
        drive(&mut reach, &store, &mut flips);
        assert!(reach.is_reached(&id(1)) && reach.is_reached(&id(2)));

        flips.clear();
        assert!(reach.unpin(Root::File(root), &mut flips));
        assert!(reach.counts.is_empty(), "{:?}", reach.counts);
        assert_eq!(flips.len(), 4);
        assert!(flips.iter().all(|(_, reached)| !reached));
    }

    #[test]
    fn repeated_entries_and_holds_are_counted_symmetrically() {
        let (root, root_json) = manifest(Some("f"), Entries::Pieces(vec![id(1), id(1)]));
        let store = HashMap::from([(root, root_json)]);
        let mut reach = Reach::default();
        let mut flips = Flips::new();
        reach.hold(id(1), &mut flips);
        reach.pin(Root::File(root), |id| store.contains_key(id), &mut flips);
        drive(&mut reach, &store, &mut flips);
        assert_eq!(reach.counts[&id(1)], 3);
        reach.release(&id(1), &mut flips);
        assert!(reach.is_reached(&id(1)));
        reach.unpin(Root::File(root), &mut flips);
        assert!(!reach.is_reached(&id(1)));
        // A release without its hold takes nothing from anyone.
        reach.release(&id(1), &mut flips);
        assert!(reach.counts.is_empty());
    }

    #[test]
    fn a_stale_task_of_an_unpinned_root_is_ignored() {
        let (root, root_json) = manifest(Some("f"), Entries::Pieces(vec![id(1)]));
        let store = HashMap::from([(root, root_json.clone())]);
        let mut reach = Reach::default();
        let mut flips = Flips::new();
        reach.pin(Root::File(root), |id| store.contains_key(id), &mut flips);
        let stale = reach.take_ready().unwrap();
        reach.unpin(Root::File(root), &mut flips);
        reach.pin(Root::File(root), |id| store.contains_key(id), &mut flips);
        reach.expand(stale, Some(&root_json), |_| true, &mut flips);
        drive(&mut reach, &store, &mut flips);
        assert_eq!(reach.counts[&id(1)], 1, "expanded once, by the live pin");
    }
}
