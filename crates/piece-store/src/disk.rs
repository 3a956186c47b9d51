//! The disk store: one file per piece under `pieces/<first byte hex>/<id>`.
//!
//! # Layout of the store directory
//! * `pieces/00` … `pieces/ff` — one file per piece, named by its id.
//! * `pins/00` … `pins/ff` — an empty marker file per pinned piece.
//! * `tmp/` — pieces being written; emptied at open.
//! * `quarantine/` — pinned pieces found corrupt, kept for the user.
//! * `lock` — held exclusively while the store is open.
//!
//! # Durability
//! A piece is written to a unique temp file (`create_new`) and renamed into
//! place only once durable under the [`FsyncPolicy`]. A pin marker is created
//! before its piece is renamed into place, so a crash never leaves a pinned
//! piece looking cached (a marker without a piece is dropped at open).
//!
//! # Verification
//! Only [`VerifiedPiece`]s are written. Each piece is hashed again the first
//! time it is read after open (or on every read with `verify_on_read`), and
//! [`DiskStore::scrub`] re-verifies slowly in the background. A cached piece
//! that fails is deleted; a pinned one is moved to `quarantine/` and reported.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

use crate::index::Index;
use crate::lock::DirLock;
use crate::store::{Durability, PieceStore, Retention, StoreError, StoreStats};

/// Longest time a background write waits for its group commit under the
/// `batch` policy.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of background writes allowed to wait for a group commit; past this a
/// background `put` commits at once like a waiting one. Worst case memory held
/// for pending pieces: this plus the pieces of concurrent waiting puts.
pub const BATCH_MAX_PENDING_BYTES: u64 = 64 << 20;

const PIECES_DIR: &str = "pieces";
const PINS_DIR: &str = "pins";
const TMP_DIR: &str = "tmp";
/// Directory holding pinned pieces that failed verification.
pub const QUARANTINE_DIR: &str = "quarantine";

/// When the store forces written data to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FsyncPolicy {
    /// fsync each piece and its directory before `put` returns.
    Always,
    /// Group pieces: fsync the group's files, rename them, fsync the
    /// directories; at most [`BATCH_INTERVAL`] after a background write and
    /// always before a waiting `put` returns.
    #[default]
    Batch,
    /// Never fsync: no crash promise, verification catches torn pieces.
    Never,
}

impl FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "always" => Ok(Self::Always),
            "batch" => Ok(Self::Batch),
            "never" => Ok(Self::Never),
            other => Err(format!(
                "unknown fsync policy {other:?}: use always, batch or never"
            )),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Always => "always",
            Self::Batch => "batch",
            Self::Never => "never",
        })
    }
}

/// How to open a [`DiskStore`].
#[derive(Debug, Clone)]
pub struct DiskStoreConfig {
    /// Largest number of piece bytes held; cached pieces are evicted to stay under it.
    pub capacity: u64,
    /// When data is forced to disk.
    pub fsync: FsyncPolicy,
    /// Hash every piece on every read, not only the first after open.
    pub verify_on_read: bool,
}

impl DiskStoreConfig {
    /// The defaults (`batch`, verify on first read) at `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            fsync: FsyncPolicy::Batch,
            verify_on_read: false,
        }
    }
}

/// What one scrub call checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubReport {
    /// Pieces hashed.
    pub checked: usize,
    /// Pieces found corrupt (deleted, or quarantined if pinned).
    pub corrupt: Vec<PieceId>,
    /// The scrub reached the last piece and starts over at the next call.
    pub wrapped: bool,
}

#[derive(Debug)]
struct State {
    index: Index,
    /// Pieces written but not yet renamed into place: served from memory.
    pending: HashMap<PieceId, Bytes>,
    pending_background_bytes: u64,
    quarantined: Vec<PieceId>,
    corrupt: u64,
    scrub_cursor: Option<PieceId>,
}

/// A piece whose temp file is written and waits for its group commit.
#[derive(Debug)]
struct PendingWrite {
    id: PieceId,
    file: File,
    tmp: PathBuf,
    background_bytes: u64,
    pin_marker: bool,
    done: Option<SyncSender<Result<(), String>>>,
}

#[derive(Debug, Default)]
struct CommitQueue {
    writes: Vec<PendingWrite>,
    committing: bool,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    config: DiskStoreConfig,
    state: Mutex<State>,
    queue: Mutex<CommitQueue>,
    /// Wakes the background committer.
    queue_changed: Condvar,
    _lock: DirLock,
}

/// A piece store on disk. See the [module docs](self).
#[derive(Debug)]
pub struct DiskStore {
    inner: Arc<Inner>,
    committer: Option<JoinHandle<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays consistent across a panic in another thread
    // (each critical section finishes its updates before anything can fail).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shard(id: &PieceId) -> String {
    format!("{:02x}", id.first_byte())
}

fn create_dir(path: &Path) -> Result<(), StoreError> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(path)
        .map_err(StoreError::io("create directory", path))
}

fn sync_dir(path: &Path) -> Result<(), StoreError> {
    File::open(path)
        .and_then(|dir| dir.sync_all())
        .map_err(StoreError::io("fsync directory", path))
}

fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => {
            Err(StoreError::io("remove", path)(err))
        }
        _ => Ok(()),
    }
}

impl Inner {
    fn piece_path(&self, id: &PieceId) -> PathBuf {
        self.root.join(PIECES_DIR).join(shard(id)).join(id.to_hex())
    }

    fn pin_path(&self, id: &PieceId) -> PathBuf {
        self.root.join(PINS_DIR).join(shard(id)).join(id.to_hex())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn fsyncs(&self) -> bool {
        self.config.fsync != FsyncPolicy::Never
    }

    /// Creates a pin marker; durable (directory fsynced) unless `never`.
    fn write_pin_marker(&self, id: &PieceId, sync: bool) -> Result<(), StoreError> {
        let path = self.pin_path(id);
        File::create(&path).map_err(StoreError::io("create pin", &path))?;
        if sync && self.fsyncs() {
            sync_dir(path.parent().unwrap_or(&self.root))?;
        }
        Ok(())
    }

    fn remove_pin_marker(&self, id: &PieceId) -> Result<(), StoreError> {
        let path = self.pin_path(id);
        remove_if_exists(&path)?;
        if self.fsyncs() {
            sync_dir(path.parent().unwrap_or(&self.root))?;
        }
        Ok(())
    }

    fn write_temp(&self, piece: &VerifiedPiece) -> Result<(File, PathBuf), StoreError> {
        let tmp = self.root.join(TMP_DIR).join(format!(
            "{}.{:016x}.tmp",
            piece.id().to_hex(),
            rand::random::<u64>()
        ));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(StoreError::io("create", &tmp))?;
        if let Err(err) = file.write_all(piece.bytes()) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", &tmp)(err));
        }
        Ok((file, tmp))
    }

    /// Deletes evicted pieces' files. Called with the state lock held, so a
    /// concurrent re-put of the same id cannot be deleted by mistake.
    fn delete_victims(&self, victims: &[PieceId]) {
        for victim in victims {
            // A failure leaves an orphan file that the next open re-indexes
            // and evicts again; nothing is lost.
            let _ = fs::remove_file(self.piece_path(victim));
        }
    }

    /// Forgets a piece whose write failed.
    fn abandon(&self, id: &PieceId, background_bytes: u64) {
        let mut state = self.state();
        state.pending.remove(id);
        state.pending_background_bytes -= background_bytes;
        state.index.remove(id);
    }

    /// Renames written pieces into place and makes them durable as one group:
    /// fsync every file, rename, fsync every directory touched.
    fn commit_group(&self, group: Vec<PendingWrite>) {
        let fsync = self.fsyncs();
        let mut results: Vec<Result<(), String>> = Vec::with_capacity(group.len());
        let mut dirs = BTreeSet::new();
        for write in &group {
            let result = (|| {
                if fsync {
                    write
                        .file
                        .sync_data()
                        .map_err(StoreError::io("fsync", &write.tmp))?;
                }
                let dest = self.piece_path(&write.id);
                fs::rename(&write.tmp, &dest).map_err(StoreError::io("rename", &dest))?;
                if let Some(parent) = dest.parent() {
                    dirs.insert(parent.to_path_buf());
                }
                if write.pin_marker
                    && let Some(parent) = self.pin_path(&write.id).parent()
                {
                    dirs.insert(parent.to_path_buf());
                }
                Ok::<(), StoreError>(())
            })();
            results.push(result.map_err(|e| e.to_string()));
        }
        if fsync {
            for dir in &dirs {
                if let Err(err) = sync_dir(dir) {
                    let msg = err.to_string();
                    for result in &mut results {
                        if result.is_ok() {
                            *result = Err(msg.clone());
                        }
                    }
                }
            }
        }
        for (write, result) in group.into_iter().zip(results) {
            match &result {
                Ok(()) => {
                    let mut state = self.state();
                    state.pending.remove(&write.id);
                    state.pending_background_bytes -= write.background_bytes;
                    state.index.mark_committed(&write.id);
                }
                Err(_) => {
                    let _ = fs::remove_file(&write.tmp);
                    let _ = fs::remove_file(self.piece_path(&write.id));
                    self.abandon(&write.id, write.background_bytes);
                }
            }
            if let Some(done) = write.done {
                // The waiter may have gone away; nothing to do then.
                let _ = done.send(result);
            }
        }
    }

    /// Queues a written piece for the group commit. If nobody is committing,
    /// this thread commits everything queued until the queue is empty.
    fn enqueue(&self, write: PendingWrite) {
        let mut queue = lock(&self.queue);
        queue.writes.push(write);
        self.lead_commits(queue);
    }

    fn lead_commits<'a>(&'a self, mut queue: MutexGuard<'a, CommitQueue>) {
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
            self.commit_group(group);
            queue = lock(&self.queue);
        }
        queue.committing = false;
        self.queue_changed.notify_all();
    }

    /// The background committer: commits background writes within
    /// [`BATCH_INTERVAL`] of their arrival.
    fn run_committer(&self) {
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
                self.lead_commits(queue);
                queue = lock(&self.queue);
                continue;
            }
            queue = self
                .queue_changed
                .wait_timeout(queue, BATCH_INTERVAL)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// Handles a piece whose bytes do not match its name.
    fn handle_corrupt(&self, id: &PieceId) -> StoreError {
        let mut state = self.state();
        let pinned = state.index.get(id).is_some_and(|e| e.pinned);
        state.index.remove(id);
        state.corrupt += 1;
        let path = self.piece_path(id);
        let quarantined = if pinned {
            let dest = self.root.join(QUARANTINE_DIR).join(id.to_hex());
            let moved = fs::rename(&path, &dest).is_ok();
            if !moved {
                let _ = fs::remove_file(&path);
            }
            let _ = fs::remove_file(self.pin_path(id));
            state.quarantined.push(*id);
            moved
        } else {
            let _ = fs::remove_file(&path);
            false
        };
        StoreError::Corrupt {
            id: *id,
            quarantined,
        }
    }

    /// Reads a committed piece, verifying it when required.
    fn read_committed(&self, id: &PieceId, verify: bool) -> Result<Option<Bytes>, StoreError> {
        let path = self.piece_path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // Evicted meanwhile, or removed behind our back.
                let mut state = self.state();
                if !state.pending.contains_key(id) && state.index.get(id).is_some() {
                    state.index.remove(id);
                }
                return Ok(None);
            }
            Err(err) => return Err(StoreError::io("read", &path)(err)),
        };
        if verify {
            if VerifiedPiece::verify(*id, bytes.clone()).is_err() {
                return Err(self.handle_corrupt(id));
            }
            self.state().index.mark_verified(id);
        }
        Ok(Some(bytes))
    }
}

impl DiskStore {
    /// Opens (creating if needed) the store in `root`, takes its lock, removes
    /// stale temp files and indexes the pieces present.
    ///
    /// Blocking: lists every piece file. Fails with [`StoreError::Locked`] if
    /// another process has the store open.
    pub fn open(root: &Path, config: DiskStoreConfig) -> Result<Self, StoreError> {
        create_dir(root)?;
        let dir_lock = DirLock::acquire(root)?;
        for sub in [TMP_DIR, QUARANTINE_DIR] {
            create_dir(&root.join(sub))?;
        }
        for byte in 0..=255u8 {
            let name = format!("{byte:02x}");
            create_dir(&root.join(PIECES_DIR).join(&name))?;
            create_dir(&root.join(PINS_DIR).join(&name))?;
        }
        let tmp = root.join(TMP_DIR);
        for entry in fs::read_dir(&tmp).map_err(StoreError::io("list", &tmp))? {
            let path = entry.map_err(StoreError::io("list", &tmp))?.path();
            remove_if_exists(&path)?;
        }
        let mut index = Index::new(config.capacity);
        let mut found = scan_pieces(root)?;
        // Oldest first, so recency survives a restart approximately.
        found.sort_by_key(|(_, _, mtime)| *mtime);
        let pins = scan_pins(root)?;
        for (id, size, _) in &found {
            index.insert(*id, *size, pins.contains(id), true, false);
        }
        for pin in &pins {
            if !index.contains(pin) {
                remove_if_exists(&root.join(PINS_DIR).join(shard(pin)).join(pin.to_hex()))?;
            }
        }
        let inner = Arc::new(Inner {
            root: root.to_path_buf(),
            config,
            state: Mutex::new(State {
                index,
                pending: HashMap::new(),
                pending_background_bytes: 0,
                quarantined: Vec::new(),
                corrupt: 0,
                scrub_cursor: None,
            }),
            queue: Mutex::new(CommitQueue::default()),
            queue_changed: Condvar::new(),
            _lock: dir_lock,
        });
        {
            let mut state = inner.state();
            let victims = state.index.shrink_to_capacity();
            inner.delete_victims(&victims);
        }
        let committer = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("piece-store-commit".into())
                .spawn(move || inner.run_committer())
                .map_err(StoreError::io("spawn committer thread", root))?
        };
        Ok(Self {
            inner,
            committer: Some(committer),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Pinned pieces moved to quarantine since open.
    pub fn quarantined(&self) -> Vec<PieceId> {
        self.inner.state().quarantined.clone()
    }

    /// Re-verifies up to `max_pieces` pieces, continuing where the last call
    /// stopped. Meant to be called slowly from a background thread (e.g. a
    /// few pieces a second) so a bit rot is found before a peer asks.
    pub fn scrub(&self, max_pieces: usize) -> ScrubReport {
        let mut report = ScrubReport::default();
        for _ in 0..max_pieces {
            let next = {
                let mut state = self.inner.state();
                let next = state.index.next_after(state.scrub_cursor);
                state.scrub_cursor = next;
                next
            };
            let Some(id) = next else {
                report.wrapped = true;
                break;
            };
            if self.inner.state().pending.contains_key(&id) {
                continue;
            }
            report.checked += 1;
            if let Err(StoreError::Corrupt { id, .. }) = self.inner.read_committed(&id, true) {
                report.corrupt.push(id);
            }
        }
        report
    }

    /// Waits until every queued write is committed.
    pub fn flush(&self) {
        let mut queue = lock(&self.inner.queue);
        while queue.committing || !queue.writes.is_empty() {
            if !queue.committing {
                self.inner.lead_commits(queue);
                queue = lock(&self.inner.queue);
                continue;
            }
            queue = self
                .inner
                .queue_changed
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn put_one(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        durability: Durability,
    ) -> Result<Option<Receiver<Result<(), String>>>, StoreError> {
        let inner = &self.inner;
        let id = piece.id();
        let pinned = retention == Retention::Pinned;
        let size = piece.len() as u64;
        let background =
            durability == Durability::Background && inner.config.fsync == FsyncPolicy::Batch;
        let wait_bytes = |state: &mut State| {
            if background && state.pending_background_bytes + size <= BATCH_MAX_PENDING_BYTES {
                state.pending_background_bytes += size;
                size
            } else {
                0
            }
        };
        let Some((file, tmp)) =
            self.prepare(&piece, retention, inner.config.fsync == FsyncPolicy::Always)?
        else {
            return Ok(None);
        };
        match inner.config.fsync {
            FsyncPolicy::Always | FsyncPolicy::Never => {
                let write = PendingWrite {
                    id,
                    file,
                    tmp,
                    background_bytes: 0,
                    pin_marker: pinned,
                    done: None,
                };
                let (tx, rx) = mpsc::sync_channel(1);
                inner.commit_group(vec![PendingWrite {
                    done: Some(tx),
                    ..write
                }]);
                Ok(Some(rx))
            }
            FsyncPolicy::Batch => {
                let background_bytes = wait_bytes(&mut inner.state());
                let (done, rx) = if background_bytes > 0 {
                    (None, None)
                } else {
                    let (tx, rx) = mpsc::sync_channel(1);
                    (Some(tx), Some(rx))
                };
                let write = PendingWrite {
                    id,
                    file,
                    tmp,
                    background_bytes,
                    pin_marker: pinned,
                    done,
                };
                if background_bytes > 0 {
                    let mut queue = lock(&inner.queue);
                    queue.writes.push(write);
                    inner.queue_changed.notify_all();
                    Ok(None)
                } else {
                    inner.enqueue(write);
                    Ok(rx)
                }
            }
        }
    }
}

fn wait_done(rx: Option<Receiver<Result<(), String>>>) -> Result<(), StoreError> {
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

impl PieceStore for DiskStore {
    fn has(&self, id: &PieceId) -> bool {
        self.inner.state().index.contains(id)
    }

    fn get(&self, id: &PieceId) -> Result<Option<Bytes>, StoreError> {
        let verify = {
            let mut state = self.inner.state();
            if let Some(bytes) = state.pending.get(id).cloned() {
                state.index.touch(id);
                return Ok(Some(bytes));
            }
            let Some(entry) = state.index.get(id).copied() else {
                return Ok(None);
            };
            state.index.touch(id);
            self.inner.config.verify_on_read || !entry.verified
        };
        self.inner.read_committed(id, verify)
    }

    fn put(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let rx = self.put_one(piece, retention, durability)?;
        wait_done(rx)
    }

    fn put_many(&self, pieces: Vec<VerifiedPiece>, retention: Retention) -> Result<(), StoreError> {
        if self.inner.config.fsync != FsyncPolicy::Batch {
            for piece in pieces {
                self.put(piece, retention, Durability::Wait)?;
            }
            return Ok(());
        }
        // Write every temp file first, then commit them as one group.
        let mut receivers = Vec::with_capacity(pieces.len());
        let mut first_error = None;
        {
            let mut queue = lock(&self.inner.queue);
            // Hold off the committer while this group is queued, so it is
            // committed whole (one fsync round) rather than piecemeal.
            let was_committing = std::mem::replace(&mut queue.committing, true);
            drop(queue);
            for piece in pieces {
                match self.put_one_deferred(piece, retention) {
                    Ok(Some(rx)) => receivers.push(rx),
                    Ok(None) => {}
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            }
            queue = lock(&self.inner.queue);
            if !was_committing {
                // The flag was ours: release it and lead.
                queue.committing = false;
            }
            // If another thread leads, its loop picks the group up.
            self.inner.lead_commits(queue);
        }
        for rx in receivers {
            if let Err(err) = wait_done(Some(rx)) {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn pin(&self, id: &PieceId) -> Result<bool, StoreError> {
        let mut state = self.inner.state();
        match state.index.get(id).map(|e| e.pinned) {
            None => Ok(false),
            Some(true) => Ok(true),
            Some(false) => {
                self.inner.write_pin_marker(id, true)?;
                state.index.set_pinned(id, true);
                Ok(true)
            }
        }
    }

    fn unpin(&self, id: &PieceId) -> Result<bool, StoreError> {
        let mut state = self.inner.state();
        match state.index.get(id).map(|e| e.pinned) {
            None => Ok(false),
            Some(false) => Ok(true),
            Some(true) => {
                self.inner.remove_pin_marker(id)?;
                state.index.set_pinned(id, false);
                Ok(true)
            }
        }
    }

    fn is_pinned(&self, id: &PieceId) -> bool {
        self.inner.state().index.get(id).is_some_and(|e| e.pinned)
    }

    fn list(&self) -> Vec<PieceId> {
        self.inner.state().index.ids()
    }

    fn stats(&self) -> StoreStats {
        let state = self.inner.state();
        StoreStats {
            pieces: state.index.len() as u64,
            bytes: state.index.bytes(),
            pinned_bytes: state.index.pinned_bytes(),
            capacity: state.index.capacity(),
            evictions: state.index.evictions,
            corrupt: state.corrupt,
        }
    }
}

impl DiskStore {
    /// The first half of every put: updates a held piece (returns `None`),
    /// or reserves room, indexes the piece as pending, writes its pin marker
    /// (durable at once if `sync_marker`) and its temp file.
    fn prepare(
        &self,
        piece: &VerifiedPiece,
        retention: Retention,
        sync_marker: bool,
    ) -> Result<Option<(File, PathBuf)>, StoreError> {
        let inner = &self.inner;
        let id = piece.id();
        let pinned = retention == Retention::Pinned;
        let size = piece.len() as u64;
        {
            let mut state = inner.state();
            if let Some(entry) = state.index.get(&id).copied() {
                if pinned && !entry.pinned {
                    inner.write_pin_marker(&id, true)?;
                    state.index.set_pinned(&id, true);
                }
                state.index.touch(&id);
                return Ok(None);
            }
            let victims = state.index.make_room(size)?;
            inner.delete_victims(&victims);
            // In the index before the data is in place, so concurrent puts
            // count its bytes; uncommitted entries are never evicted.
            state.index.insert(id, size, pinned, false, true);
            state.pending.insert(id, piece.bytes().clone());
        }
        let prepared = (|| {
            if pinned {
                // Marker first: a crash then leaves a marker without a piece
                // (dropped at open), never a pinned piece that looks cached.
                inner.write_pin_marker(&id, sync_marker)?;
            }
            inner.write_temp(piece)
        })();
        match prepared {
            Ok(ok) => Ok(Some(ok)),
            Err(err) => {
                inner.abandon(&id, 0);
                Err(err)
            }
        }
    }

    /// Like `put_one` under `batch`, but queues without leading a commit:
    /// the caller commits the whole group.
    fn put_one_deferred(
        &self,
        piece: VerifiedPiece,
        retention: Retention,
    ) -> Result<Option<Receiver<Result<(), String>>>, StoreError> {
        let inner = &self.inner;
        let id = piece.id();
        let pinned = retention == Retention::Pinned;
        let Some((file, tmp)) = self.prepare(&piece, retention, false)? else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::sync_channel(1);
        lock(&inner.queue).writes.push(PendingWrite {
            id,
            file,
            tmp,
            background_bytes: 0,
            pin_marker: pinned,
            done: Some(tx),
        });
        Ok(Some(rx))
    }
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        {
            let mut queue = lock(&self.inner.queue);
            queue.closed = true;
            self.inner.queue_changed.notify_all();
        }
        self.flush();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

/// Lists every piece file: (id, size, mtime). Files with names that are not
/// ids of their shard, or sizes no piece can have, are removed.
fn scan_pieces(root: &Path) -> Result<Vec<(PieceId, u64, SystemTime)>, StoreError> {
    let mut found = Vec::new();
    for byte in 0..=255u8 {
        let dir = root.join(PIECES_DIR).join(format!("{byte:02x}"));
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            let path = entry.path();
            let meta = entry.metadata().map_err(StoreError::io("stat", &path))?;
            let id = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<PieceId>().ok())
                .filter(|id| id.first_byte() == byte);
            match id {
                Some(id) if meta.is_file() && (1..=PIECE_MAX as u64).contains(&meta.len()) => {
                    let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((id, meta.len(), mtime));
                }
                // Not a piece this store wrote: leave directories alone,
                // remove stray files (a size no piece has is corrupt).
                _ if meta.is_file() => remove_if_exists(&path)?,
                _ => {}
            }
        }
    }
    Ok(found)
}

fn scan_pins(root: &Path) -> Result<BTreeSet<PieceId>, StoreError> {
    let mut pins = BTreeSet::new();
    for byte in 0..=255u8 {
        let dir = root.join(PINS_DIR).join(format!("{byte:02x}"));
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let entry = entry.map_err(StoreError::io("list", &dir))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                pins.insert(id);
            }
        }
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A piece of `len` bytes, distinct for each `seed`.
    fn piece(seed: u64, len: usize) -> VerifiedPiece {
        let mut bytes = vec![0x5a; len];
        let seed = seed.to_le_bytes();
        let head = len.min(seed.len());
        bytes[..head].copy_from_slice(&seed[..head]);
        VerifiedPiece::new(Bytes::from(bytes)).unwrap()
    }

    fn pending_background_bytes(store: &DiskStore) -> u64 {
        store.inner.state().pending_background_bytes
    }

    /// Holds off group commits, as a `put_many` in progress does, until
    /// dropped; then commits what is queued. Dropped before the store even
    /// when a test fails, so closing the store does not wait forever.
    struct HoldCommits<'a>(&'a DiskStore);

    impl<'a> HoldCommits<'a> {
        fn new(store: &'a DiskStore) -> Self {
            lock(&store.inner.queue).committing = true;
            Self(store)
        }
    }

    impl Drop for HoldCommits<'_> {
        fn drop(&mut self) {
            let mut queue = lock(&self.0.inner.queue);
            queue.committing = false;
            self.0.inner.lead_commits(queue);
        }
    }

    #[test]
    fn background_writes_wait_for_a_group_commit_up_to_the_pending_byte_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = DiskStore::open(dir.path(), DiskStoreConfig::new(1 << 30)).unwrap();
        // No pending byte is committed (and freed) while the test fills up.
        let hold = HoldCommits::new(&store);
        let full = BATCH_MAX_PENDING_BYTES / PIECE_MAX as u64;
        assert_eq!(full * PIECE_MAX as u64, BATCH_MAX_PENDING_BYTES);
        for seed in 0..full {
            let waiter = store
                .put_one(
                    piece(seed, PIECE_MAX),
                    Retention::Cached,
                    Durability::Background,
                )
                .unwrap();
            assert!(waiter.is_none(), "piece {seed} waits for its commit");
        }
        assert_eq!(pending_background_bytes(&store), BATCH_MAX_PENDING_BYTES);

        // One byte more: this put commits before it returns, like a waiting one.
        let over = piece(full, 1);
        let waiter = store
            .put_one(over.clone(), Retention::Cached, Durability::Background)
            .unwrap();
        assert!(waiter.is_some(), "a put past the limit returned at once");
        assert_eq!(pending_background_bytes(&store), BATCH_MAX_PENDING_BYTES);

        drop(hold);
        wait_done(waiter).unwrap();
        assert_eq!(pending_background_bytes(&store), 0);
        assert!(store.inner.piece_path(&over.id()).is_file());
        assert_eq!(store.stats().pieces, full + 1);
    }
}
