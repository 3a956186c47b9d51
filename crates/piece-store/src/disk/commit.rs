//! The group commit: pieces appended to a pack wait in a queue; one thread
//! at a time (a waiting `put`, `put_many`, or the background committer
//! thread) takes the whole queue, fsyncs the packs the group was appended
//! to (one fsync per pack, not per piece), and only then tells the waiters
//! and makes the pieces live in the index and the pack table. The committer
//! thread also does the packs' upkeep when idle (tombstones, compaction).
//!
//! Uses the store's shared state and packs; knows nothing of `DiskStore`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use wire_format::PieceId;

use super::config::BATCH_INTERVAL;
use super::pack::{Loc, pack_path};
use super::shared::{Shared, lock};
use crate::store::StoreError;

/// The outcome of one piece's commit, as its waiter receives it.
pub(super) type CommitResult = Result<(), String>;

/// A piece appended to a pack that waits for its group commit.
#[derive(Debug)]
pub(super) struct PendingWrite {
    pub(super) id: PieceId,
    pub(super) loc: Loc,
    /// The pack it was appended to.
    pub(super) file: Arc<File>,
    /// Bytes counted against the background budget, freed at commit.
    pub(super) background_bytes: u64,
    pub(super) done: Option<SyncSender<CommitResult>>,
}

#[derive(Debug, Default)]
pub(super) struct CommitQueue {
    pub(super) writes: Vec<PendingWrite>,
    /// A thread is committing (or holding commits off while it queues a group).
    pub(super) committing: bool,
    pub(super) closed: bool,
}

/// The queue of pending writes and who commits them.
#[derive(Debug, Default)]
pub(super) struct Committer {
    pub(super) queue: Mutex<CommitQueue>,
    /// Wakes the background committer and threads waiting in `flush`.
    pub(super) queue_changed: Condvar,
}

impl Committer {
    /// Queues a written piece for the group commit. If nobody is committing,
    /// this thread commits everything queued until the queue is empty.
    pub(super) fn enqueue(&self, shared: &Shared, write: PendingWrite) {
        let mut queue = lock(&self.queue);
        queue.writes.push(write);
        self.lead_commits(shared, queue);
    }

    /// Queues a background write for the committer thread.
    pub(super) fn push_background(&self, write: PendingWrite) {
        let mut queue = lock(&self.queue);
        queue.writes.push(write);
        self.queue_changed.notify_all();
    }

    /// Queues a write of a group its caller commits (see [`Self::hold`]).
    pub(super) fn push(&self, write: PendingWrite) {
        lock(&self.queue).writes.push(write);
    }

    /// Holds off other committers while a group is queued, so it is
    /// committed whole (one fsync round) rather than piecemeal. Returns
    /// whether someone was committing already; pass it to [`Self::release`].
    pub(super) fn hold(&self) -> bool {
        std::mem::replace(&mut lock(&self.queue).committing, true)
    }

    /// Ends a [`Self::hold`] and commits what is queued.
    pub(super) fn release(&self, shared: &Shared, was_committing: bool) {
        let mut queue = lock(&self.queue);
        if !was_committing {
            // The flag was ours: release it and lead.
            queue.committing = false;
        }
        // If another thread leads, its loop picks the group up.
        self.lead_commits(shared, queue);
    }

    pub(super) fn lead_commits<'a>(
        &'a self,
        shared: &Shared,
        mut queue: MutexGuard<'a, CommitQueue>,
    ) {
        if queue.committing {
            return;
        }
        queue.committing = true;
        loop {
            let group = std::mem::take(&mut queue.writes);
            if group.is_empty() {
                break;
            }
            drop(queue);
            commit_group(shared, group);
            queue = lock(&self.queue);
        }
        queue.committing = false;
        self.queue_changed.notify_all();
    }

    /// The background committer: commits background writes within
    /// [`BATCH_INTERVAL`] of their arrival, until closed and drained.
    pub(super) fn run(&self, shared: &Shared) {
        let mut queue = lock(&self.queue);
        loop {
            if queue.closed && queue.writes.is_empty() && !queue.committing {
                return;
            }
            if !queue.writes.is_empty() && !queue.committing {
                drop(queue);
                // Let more writes join the group, up to the promised latency.
                std::thread::sleep(BATCH_INTERVAL / 2);
                queue = lock(&self.queue);
                self.lead_commits(shared, queue);
                queue = lock(&self.queue);
                continue;
            }
            if !queue.committing && shared.needs_maintenance() {
                drop(queue);
                // One bounded step per wake; a failure is tried again at
                // the next (a pack not compacted only costs space).
                let _ = shared.maintain();
                queue = lock(&self.queue);
            }
            queue = self
                .queue_changed
                .wait_timeout(queue, BATCH_INTERVAL)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Waits until every queued write is committed.
    pub(super) fn flush(&self, shared: &Shared) {
        let mut queue = lock(&self.queue);
        while queue.committing || !queue.writes.is_empty() {
            if !queue.committing {
                self.lead_commits(shared, queue);
                queue = lock(&self.queue);
                continue;
            }
            queue = self
                .queue_changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Tells the background committer to finish once the queue is drained.
    pub(super) fn close(&self) {
        let mut queue = lock(&self.queue);
        queue.closed = true;
        self.queue_changed.notify_all();
    }
}

/// Makes a group of appended pieces durable: one fsync per pack touched
/// (none under `never`), then each piece is live.
pub(super) fn commit_group(shared: &Shared, group: Vec<PendingWrite>) {
    let mut packs: BTreeMap<u32, Result<(), String>> = BTreeMap::new();
    for write in &group {
        packs.entry(write.loc.pack).or_insert_with(|| {
            if !shared.fsyncs() {
                return Ok(());
            }
            write.file.sync_data().map_err(|err| {
                StoreError::io(
                    "fsync",
                    pack_path(&shared.paths.packs_dir(), write.loc.pack),
                )(err)
                .to_string()
            })
        });
    }
    for write in group {
        let result = packs.get(&write.loc.pack).cloned().unwrap_or(Ok(()));
        {
            let mut state = shared.state();
            state.pending.remove(&write.id);
            state.pending_background_bytes -= write.background_bytes;
            match &result {
                Ok(()) => {
                    state.index.mark_committed(&write.id);
                    state.packs.set_live(write.id, write.loc);
                }
                Err(_) => {
                    state.index.remove(&write.id);
                    state.packs.dead_record(write.id, write.loc.pack);
                }
            }
        }
        if let Some(done) = write.done {
            // The waiter may have gone away; nothing to do then.
            let _ = done.send(result);
        }
    }
}

/// Waits for a queued write's commit (`None`: nothing to wait for).
pub(super) fn wait_done(rx: Option<Receiver<CommitResult>>) -> Result<(), StoreError> {
    let Some(rx) = rx else { return Ok(()) };
    match rx.recv() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(msg)) => Err(StoreError::Io {
            op: "commit",
            path: PathBuf::new(),
            source: io::Error::other(msg),
        }),
        Err(_) => Err(StoreError::Closed),
    }
}
