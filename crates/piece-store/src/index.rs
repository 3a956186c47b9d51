//! In-memory accounting shared by both stores: which pieces are held, their
//! sizes, whether a pinned root reaches them, recency, and the capacity rule.
//!
//! Memory: one entry (about 100 bytes) per piece held, so a full 10 GiB store
//! of 1 MiB pieces costs about 1 MB; plus the reach of the pinned roots (see
//! `reach` for its worst case).
//!
//! Uses the reachability counts and the store's types.

use std::collections::BTreeMap;

use wire_format::PieceId;

use crate::reach::{Flips, Reach, Task};
use crate::store::{GcReport, Root, StoreError};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) size: u64,
    /// A pinned root or a hold reaches it: never evicted.
    pub(crate) pinned: bool,
    /// Recency stamp; the key of this entry in `lru` while it is evictable.
    tick: u64,
    /// Not evictable until its write is committed.
    committed: bool,
    /// Hashed since this process opened the store.
    pub(crate) verified: bool,
}

/// Pieces held, with least-recently-used order over the evictable ones.
#[derive(Debug)]
pub(crate) struct Index {
    entries: BTreeMap<PieceId, Entry>,
    /// Evictable (cached and committed) pieces by recency, oldest first.
    lru: BTreeMap<u64, PieceId>,
    next_tick: u64,
    /// Bytes of the pieces in `lru`.
    lru_bytes: u64,
    bytes: u64,
    pinned_bytes: u64,
    capacity: u64,
    pub(crate) evictions: u64,
    reach: Reach,
}

impl Index {
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            lru: BTreeMap::new(),
            next_tick: 0,
            lru_bytes: 0,
            bytes: 0,
            pinned_bytes: 0,
            capacity,
            evictions: 0,
            reach: Reach::default(),
        }
    }

    pub(crate) fn get(&self, id: &PieceId) -> Option<&Entry> {
        self.entries.get(id)
    }

    pub(crate) fn contains(&self, id: &PieceId) -> bool {
        self.entries.contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn pinned_bytes(&self) -> u64 {
        self.pinned_bytes
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) fn ids(&self) -> Vec<PieceId> {
        self.entries.keys().copied().collect()
    }

    /// The first held id after `cursor` (or the first of all), in id order.
    pub(crate) fn next_after(&self, cursor: Option<PieceId>) -> Option<PieceId> {
        match cursor {
            None => self.entries.keys().next().copied(),
            Some(c) => self
                .entries
                .range((std::ops::Bound::Excluded(c), std::ops::Bound::Unbounded))
                .next()
                .map(|(id, _)| *id),
        }
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    /// Marks a piece as just used.
    pub(crate) fn touch(&mut self, id: &PieceId) {
        let tick = self.tick();
        if let Some(entry) = self.entries.get_mut(id) {
            if entry.committed && !entry.pinned {
                self.lru.remove(&entry.tick);
                self.lru.insert(tick, *id);
            }
            entry.tick = tick;
        }
    }

    /// Makes room for `size` new bytes by evicting least-recently-used cached
    /// pieces; returns the evicted ids (their data is the caller's to delete).
    ///
    /// Fails with [`StoreError::Full`] when pinned data plus the new piece
    /// would not fit even with every cached piece evicted; nothing is evicted
    /// then.
    pub(crate) fn make_room(&mut self, size: u64) -> Result<Vec<PieceId>, StoreError> {
        let full = || StoreError::Full {
            needed: size,
            pinned: self.pinned_bytes,
            capacity: self.capacity,
        };
        let unevictable = self.bytes.saturating_sub(self.lru_bytes);
        if unevictable
            .checked_add(size)
            .is_none_or(|need| need > self.capacity)
        {
            return Err(full());
        }
        Ok(self.evict_until_free(size))
    }

    /// Evicts least-recently-used cached pieces until `free` bytes fit under
    /// the capacity, or nothing evictable is left; returns the victims.
    fn evict_until_free(&mut self, free: u64) -> Vec<PieceId> {
        let mut victims = Vec::new();
        while self.bytes.saturating_add(free) > self.capacity {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= entry.size;
                self.lru_bytes -= entry.size;
                self.evictions += 1;
                victims.push(id);
            }
        }
        victims
    }

    /// Adds a piece the caller made room for. `committed` says whether its
    /// data is in place (evictable if nothing reaches it) or still being
    /// written. If a pinned file awaits it as a manifest, it becomes ready to
    /// expand ([`Self::take_ready`]).
    pub(crate) fn insert(&mut self, id: PieceId, size: u64, committed: bool, verified: bool) {
        if self.contains(&id) {
            return;
        }
        self.reach.arrived(&id);
        let pinned = self.reach.is_reached(&id);
        let tick = self.tick();
        self.bytes += size;
        if pinned {
            self.pinned_bytes += size;
        } else if committed {
            self.lru.insert(tick, id);
            self.lru_bytes += size;
        }
        self.entries.insert(
            id,
            Entry {
                size,
                pinned,
                tick,
                committed,
                verified,
            },
        );
    }

    /// The piece's data is now in place: a cached piece becomes evictable.
    pub(crate) fn mark_committed(&mut self, id: &PieceId) {
        if let Some(entry) = self.entries.get_mut(id)
            && !entry.committed
        {
            entry.committed = true;
            if !entry.pinned {
                self.lru.insert(entry.tick, *id);
                self.lru_bytes += entry.size;
            }
        }
    }

    pub(crate) fn mark_verified(&mut self, id: &PieceId) {
        if let Some(entry) = self.entries.get_mut(id) {
            entry.verified = true;
        }
    }

    /// Whether a pinned root or a hold reaches `id` (held or not).
    pub(crate) fn is_reached(&self, id: &PieceId) -> bool {
        self.reach.is_reached(id)
    }

    pub(crate) fn roots(&self) -> Vec<Root> {
        self.reach.roots()
    }

    pub(crate) fn has_root(&self, root: &Root) -> bool {
        self.reach.has_root(root)
    }

    /// See [`Reach::check_room`].
    pub(crate) fn check_room(&self, more: usize) -> Result<(), StoreError> {
        self.reach.check_room(more)
    }

    /// See [`Reach::check_pin`].
    pub(crate) fn check_pin(&self, root: &Root) -> Result<bool, StoreError> {
        self.reach.check_pin(root)
    }

    /// Pins `root` (checked with [`Self::check_pin`]); returns false if it
    /// was pinned already. Queues a file root's manifest for expansion.
    pub(crate) fn pin_root(&mut self, root: Root) -> bool {
        let mut flips = Flips::new();
        let entries = &self.entries;
        let added = self
            .reach
            .pin(root, |id| entries.contains_key(id), &mut flips);
        self.apply(flips);
        added
    }

    /// Unpins `root`; returns false if it was not pinned.
    pub(crate) fn unpin_root(&mut self, root: Root) -> bool {
        let mut flips = Flips::new();
        let removed = self.reach.unpin(root, &mut flips);
        self.apply(flips);
        removed
    }

    pub(crate) fn hold(&mut self, id: PieceId) {
        let mut flips = Flips::new();
        self.reach.hold(id, &mut flips);
        self.apply(flips);
    }

    pub(crate) fn release(&mut self, id: &PieceId) {
        let mut flips = Flips::new();
        self.reach.release(id, &mut flips);
        self.apply(flips);
    }

    /// The next manifest of a pinned file to read and [`Self::expand`].
    pub(crate) fn take_ready(&mut self) -> Option<Task> {
        self.reach.take_ready()
    }

    /// See [`Reach::retry_later`].
    pub(crate) fn retry_later(&mut self, task: Task) {
        self.reach.retry_later(task);
    }

    /// Counts what the task's manifest (read as `bytes`, `None` if no
    /// longer held) lists; see [`Reach::expand`].
    pub(crate) fn expand(&mut self, task: Task, bytes: Option<&[u8]>) {
        let mut flips = Flips::new();
        let entries = &self.entries;
        self.reach
            .expand(task, bytes, |id| entries.contains_key(id), &mut flips);
        self.apply(flips);
    }

    /// Removes every committed piece nothing reaches; returns them (their
    /// data is the caller's to delete) and what they add up to.
    pub(crate) fn gc(&mut self) -> (Vec<PieceId>, GcReport) {
        let mut report = GcReport::default();
        let mut victims = Vec::with_capacity(self.lru.len());
        while let Some((_, id)) = self.lru.pop_first() {
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= entry.size;
                self.lru_bytes -= entry.size;
                report.pieces += 1;
                report.bytes += entry.size;
                victims.push(id);
            }
        }
        (victims, report)
    }

    fn apply(&mut self, flips: Flips) {
        for (id, reached) in flips {
            self.set_pinned(&id, reached);
        }
    }

    /// Sets whether a held piece is reached (nothing if not held).
    fn set_pinned(&mut self, id: &PieceId, pinned: bool) {
        let Some(entry) = self.entries.get_mut(id) else {
            return;
        };
        let was = entry.pinned;
        if was != pinned {
            entry.pinned = pinned;
            if pinned {
                self.pinned_bytes += entry.size;
                if self.lru.remove(&entry.tick).is_some() {
                    self.lru_bytes -= entry.size;
                }
            } else {
                self.pinned_bytes -= entry.size;
                if entry.committed {
                    self.lru.insert(entry.tick, *id);
                    self.lru_bytes += entry.size;
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &PieceId) -> Option<Entry> {
        let entry = self.entries.remove(id)?;
        self.bytes -= entry.size;
        if entry.pinned {
            self.pinned_bytes -= entry.size;
        } else if self.lru.remove(&entry.tick).is_some() {
            self.lru_bytes -= entry.size;
        }
        Some(entry)
    }

    /// Evicts cached pieces until the held bytes fit the capacity (after the
    /// capacity was lowered between runs).
    pub(crate) fn shrink_to_capacity(&mut self) -> Vec<PieceId> {
        self.evict_until_free(0)
    }

    /// Iterates entries (for tests and scans).
    #[cfg(test)]
    pub(crate) fn iter(&self) -> std::collections::btree_map::Iter<'_, PieceId, Entry> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    #[test]
    fn evicts_least_recently_used_cached_first_and_never_pinned() {
        let mut index = Index::new(30);
        index.hold(id(1));
        for n in 1..=3 {
            assert!(index.make_room(10).unwrap().is_empty());
            index.insert(id(n), 10, true, true);
        }
        index.touch(&id(2)); // 3 is now the oldest cached piece
        assert_eq!(index.make_room(10).unwrap(), vec![id(3)]);
        index.insert(id(4), 10, true, true);
        assert_eq!(index.make_room(20).unwrap(), vec![id(2), id(4)]);
        assert!(index.contains(&id(1)));
        assert_eq!(index.evictions, 3);
    }

    #[test]
    fn full_when_pinned_data_alone_exceeds_capacity() {
        let mut index = Index::new(25);
        assert!(index.pin_root(Root::Piece(id(1))));
        index.insert(id(1), 10, true, true);
        index.insert(id(2), 10, true, true);
        // 10 pinned + 15 fits exactly at the limit; 16 does not.
        assert!(matches!(
            index.make_room(16),
            Err(StoreError::Full {
                needed: 16,
                pinned: 10,
                capacity: 25
            })
        ));
        assert!(
            index.contains(&id(2)),
            "a failed reservation evicts nothing"
        );
        assert_eq!(index.make_room(15).unwrap(), vec![id(2)]);
    }

    #[test]
    fn uncommitted_pieces_are_not_evictable() {
        let mut index = Index::new(20);
        index.insert(id(1), 10, false, true);
        assert!(index.make_room(11).is_err());
        index.mark_committed(&id(1));
        assert_eq!(index.make_room(11).unwrap(), vec![id(1)]);
    }

    #[test]
    fn pin_and_unpin_move_pieces_out_of_and_into_eviction() {
        let mut index = Index::new(20);
        index.insert(id(1), 10, true, true);
        assert!(index.pin_root(Root::Piece(id(1))));
        assert!(!index.pin_root(Root::Piece(id(1))), "pinned already");
        assert_eq!(index.pinned_bytes(), 10);
        assert!(index.make_room(11).is_err());
        assert!(index.unpin_root(Root::Piece(id(1))));
        assert!(!index.unpin_root(Root::Piece(id(1))), "not pinned");
        assert_eq!(index.pinned_bytes(), 0);
        assert_eq!(index.make_room(11).unwrap(), vec![id(1)]);
        assert_eq!(index.iter().count(), 0);
    }

    #[test]
    fn a_piece_reached_before_it_arrives_is_never_evictable() {
        let mut index = Index::new(20);
        index.hold(id(1));
        index.insert(id(1), 10, true, true);
        index.insert(id(2), 10, true, true);
        assert_eq!(index.pinned_bytes(), 10);
        assert_eq!(index.make_room(10).unwrap(), vec![id(2)]);
        assert!(index.make_room(11).is_err());
    }

    #[test]
    fn gc_removes_exactly_the_unreached_committed_pieces() {
        let mut index = Index::new(100);
        index.pin_root(Root::Piece(id(1)));
        for n in 1..=4 {
            index.insert(id(n), u64::from(n), n != 4, true);
        }
        let (mut victims, report) = index.gc();
        victims.sort();
        assert_eq!(victims, vec![id(2), id(3)], "pinned and uncommitted stay");
        assert_eq!(
            report,
            GcReport {
                pieces: 2,
                bytes: 5
            }
        );
        assert_eq!(index.bytes(), 5);
        assert_eq!(index.evictions, 0, "gc is not eviction");
    }
}
