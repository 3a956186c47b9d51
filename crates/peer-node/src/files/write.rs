//! A file job's writer: each piece at its offset in the output's temp
//! file, kept by the store as a range of it (or cached), announced to the
//! connected peers, and the whole file hashed as its completed prefix grows.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use piece_store::{Durability, Extent, PieceStore, Retention};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use wire_format::{PieceId, VerifiedPiece};

use super::job::{Job, JobError};
use super::order::Planned;
use super::output::Output;
use crate::pieces::Pieces;

/// Pieces queued in memory for the whole-file hashing thread; past them a
/// piece is read back from the output instead.
const HASH_QUEUE_PIECES: usize = 4;
/// Pieces written to the output between two registrations of their ranges
/// in the store, at most: each registration costs an fsync of the output
/// and one index append, and a piece is served from the output (and found
/// by a re-run after a crash) only once registered.
pub const EXTENT_BATCH_PIECES: usize = 64;
/// Longest a written piece waits for its registration, so a slow fetch
/// still shares (and can resume) what it has; the store's own group commit
/// interval ([`piece_store::disk::BATCH_INTERVAL`]).
pub const EXTENT_BATCH_INTERVAL: Duration = Duration::from_millis(100);

/// A piece for the writer, in any order.
pub(super) struct ToWrite {
    pub(super) id: PieceId,
    /// Where it goes in the file.
    pub(super) offset: u64,
    pub(super) bytes: Bytes,
    /// The piece when no store holds it yet ([`Fetched::unkept`]).
    pub(super) unkept: Option<VerifiedPiece>,
}

/// What the writer wrote.
pub(super) struct Written {
    pub(super) size: u64,
    pub(super) sha256: PieceId,
    pub(super) output: Option<Output>,
}

/// Where the writer keeps the pieces it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keeping {
    /// As ranges of the output, indexed by the store once durable.
    Extents,
    /// As cached copies in the store.
    Store,
}

/// The writer: writes the pieces it is handed at their offsets in the
/// output's temp file (if any), has the store keep them (as ranges of the
/// output where it can, else as cached copies), announces each to the
/// connected peers, and has the file hashed as one stream as its completed
/// prefix grows. Runs on a blocking thread.
pub(super) fn write(
    mut output: Option<Output>,
    mut pieces: mpsc::Receiver<ToWrite>,
    node: &Arc<Pieces>,
    runtime: &tokio::runtime::Handle,
    job: &Job,
) -> Result<Written, JobError> {
    let store = &*node.store;
    // An empty add records the file (so a job killed before its first
    // registration still leaves its temp file known) and tells whether the
    // store keeps extents at all.
    let mut keeping = match &output {
        Some(o) if store.add_extents(&o.tmp, &[]).is_ok() => Keeping::Extents,
        _ => Keeping::Store,
    };
    let mut batch: Vec<Extent> = Vec::with_capacity(EXTENT_BATCH_PIECES);
    let mut batch_due = tokio::time::Instant::now();
    let readback = match &output {
        Some(o) => ReadBack::File(o.file.try_clone().map_err(|e| o.error("reopen", e))?),
        None => ReadBack::Store(Arc::clone(&node.store)),
    };
    let mut hasher = PrefixHasher::start(readback)?;
    let mut size: u64 = 0;
    loop {
        // A batch waits for its registration at most EXTENT_BATCH_INTERVAL,
        // even when no further piece comes.
        let next = if batch.is_empty() {
            pieces.blocking_recv()
        } else {
            match runtime.block_on(tokio::time::timeout_at(batch_due, pieces.recv())) {
                Ok(next) => next,
                Err(_) => {
                    if let Some(output) = output.as_ref() {
                        keeping = register(store, output, &mut batch, job)?;
                    }
                    continue;
                }
            }
        };
        let Some(piece) = next else { break };
        if let Some(output) = output.as_mut() {
            use std::os::unix::fs::FileExt;
            output
                .file
                .write_all_at(&piece.bytes, piece.offset)
                .map_err(|e| output.error("write", e))?;
        }
        let len = piece.bytes.len();
        match (keeping, output.as_ref()) {
            (Keeping::Extents, Some(output)) => {
                if batch.is_empty() {
                    batch_due = tokio::time::Instant::now() + EXTENT_BATCH_INTERVAL;
                }
                let extent = Extent {
                    id: piece.id,
                    offset: piece.offset,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                };
                // Served from the file at once (other leechers of the same
                // file ask for it now); recorded durably with its batch.
                store.offer_extents(&output.tmp, &[extent]);
                batch.push(extent);
                if batch.len() == EXTENT_BATCH_PIECES {
                    keeping = register(store, output, &mut batch, job)?;
                }
            }
            _ => {
                if let Some(unkept) = piece.unkept.clone() {
                    // A cache copy: the swarm has it again if this fails.
                    let _ = store.put(unkept, Retention::Cached, Durability::Background);
                }
            }
        }
        if store.has(&piece.id) {
            node.announce(piece.id);
        }
        hasher.add(piece)?;
        size += len as u64;
    }
    if let Some(output) = output.as_mut() {
        output
            .file
            .sync_all()
            .map_err(|e| output.error("fsync", e))?;
        if keeping == Keeping::Extents && !batch.is_empty() {
            register(store, output, &mut batch, job)?;
        }
    }
    Ok(Written {
        size,
        sha256: hasher.finish()?,
        output,
    })
}

/// Where the whole-file hasher reads a piece that arrived ahead of the
/// completed prefix, once the prefix reaches it.
pub(super) enum ReadBack {
    /// The output's temp file (the page cache, usually).
    File(File),
    /// The store, for a job without an output.
    Store(Arc<dyn PieceStore>),
}

/// What the hashing thread is handed, in file order.
pub(super) enum ToHash {
    /// The next bytes of the file.
    Bytes(Bytes),
    /// The next piece, to be read back first.
    Piece(Planned),
}

/// The whole-file SHA-256 over the completed prefix, on a thread of its
/// own beside the writes (on two cores it would otherwise add its time to
/// the writer's). A piece that completes the prefix is hashed from memory
/// (at most [`HASH_QUEUE_PIECES`] of them queued); one that arrives ahead
/// of it, or finds that queue full, is queued as an offset only and read
/// back. So the writer never waits for the hash: when a block's last
/// pieces complete a long prefix at once, the hash catches up while the
/// next block is fetched. What is queued is bounded by the pieces a job
/// may have ahead of its oldest unfinished one (`order::LEAD_MAX_BYTES`).
pub(super) struct PrefixHasher {
    queue: Option<std::sync::mpsc::Sender<ToHash>>,
    /// [`ToHash::Bytes`] queued and not yet hashed.
    in_memory: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<std::thread::JoinHandle<Result<PieceId, JobError>>>,
    /// Bytes of the file handed to the thread, from its start.
    prefix: u64,
    /// Pieces past the prefix, by offset.
    ahead: std::collections::BTreeMap<u64, Planned>,
}

impl PrefixHasher {
    fn start(readback: ReadBack) -> Result<Self, JobError> {
        let (queue, parts) = std::sync::mpsc::channel::<ToHash>();
        let in_memory = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let hashed = Arc::clone(&in_memory);
        let thread = std::thread::Builder::new()
            .name("file-hash".into())
            .spawn(move || {
                let mut hasher = Sha256::new();
                let mut buf = Vec::new();
                for part in parts {
                    match part {
                        ToHash::Bytes(bytes) => {
                            hasher.update(&bytes);
                            hashed.fetch_sub(1, Ordering::Relaxed);
                        }
                        ToHash::Piece(p) => match &readback {
                            ReadBack::File(file) => {
                                use std::os::unix::fs::FileExt;
                                buf.resize(p.len, 0);
                                file.read_exact_at(&mut buf, p.offset).map_err(|e| {
                                    JobError::new(
                                        "io",
                                        format!("reading back at {}: {e}", p.offset),
                                    )
                                })?;
                                hasher.update(&buf);
                            }
                            ReadBack::Store(store) => {
                                let bytes = store
                                    .get(&p.id)
                                    .map_err(|e| JobError::new("io", e.to_string()))?
                                    .ok_or_else(|| {
                                        JobError::new(
                                            "io",
                                            format!("piece {} left the store", p.id),
                                        )
                                    })?;
                                hasher.update(&bytes);
                            }
                        },
                    }
                }
                Ok(PieceId::from_bytes(hasher.finalize().into()))
            })
            .map_err(|e| JobError::new("io", format!("cannot start a hashing thread: {e}")))?;
        Ok(Self {
            queue: Some(queue),
            in_memory,
            thread: Some(thread),
            prefix: 0,
            ahead: std::collections::BTreeMap::new(),
        })
    }

    /// A piece has been written (and stored).
    fn add(&mut self, piece: ToWrite) -> Result<(), JobError> {
        let planned = Planned {
            id: piece.id,
            len: piece.bytes.len(),
            offset: piece.offset,
        };
        if planned.offset != self.prefix {
            self.ahead.insert(planned.offset, planned);
            return Ok(());
        }
        if self.in_memory.load(Ordering::Relaxed) < HASH_QUEUE_PIECES {
            self.in_memory.fetch_add(1, Ordering::Relaxed);
            self.send(ToHash::Bytes(piece.bytes))?;
        } else {
            self.send(ToHash::Piece(planned))?;
        }
        self.prefix += planned.len as u64;
        while let Some(next) = self.ahead.remove(&self.prefix) {
            self.send(ToHash::Piece(next))?;
            self.prefix += next.len as u64;
        }
        Ok(())
    }

    /// Hands `part` to the thread; if it stopped, its error.
    fn send(&mut self, part: ToHash) -> Result<(), JobError> {
        if self.queue.as_ref().is_some_and(|q| q.send(part).is_ok()) {
            return Ok(());
        }
        Err(self
            .stop()
            .err()
            .unwrap_or_else(|| JobError::new("io", "the hashing thread stopped")))
    }

    /// Ends the thread's input and waits for its hash (or its error).
    fn stop(&mut self) -> Result<PieceId, JobError> {
        self.queue = None;
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| JobError::new("io", "the hashing thread failed"))?,
            None => Err(JobError::new("io", "the hashing thread stopped")),
        }
    }

    /// The hash of the whole file, once every piece is in.
    fn finish(mut self) -> Result<PieceId, JobError> {
        let hashed = self.stop();
        if let Some(gap) = self.ahead.keys().next() {
            return Err(JobError::new(
                "io",
                format!(
                    "the file has a hole: bytes {} to {gap} were never written",
                    self.prefix
                ),
            ));
        }
        hashed
    }
}

/// Makes `batch` durable in the output (an error there fails the job),
/// then has the store index it as ranges of the output. If the store
/// cannot (its extents index is full, say), those pieces are only in the
/// output, and the job caches the rest in the store instead.
pub(super) fn register(
    store: &dyn PieceStore,
    output: &Output,
    batch: &mut Vec<Extent>,
    job: &Job,
) -> Result<Keeping, JobError> {
    output
        .file
        .sync_data()
        .map_err(|e| output.error("fsync", e))?;
    // A user's cancel removes the file: nothing more is indexed in it.
    if job.cancelled_by_user() {
        batch.clear();
        return Ok(Keeping::Extents);
    }
    let added = store.add_extents(&output.tmp, batch);
    let count = batch.len() as u64;
    batch.clear();
    Ok(match added {
        Ok(()) => {
            job.registered.fetch_add(count, Ordering::Relaxed);
            Keeping::Extents
        }
        Err(err) => {
            tracing::warn!(file = %output.tmp.display(), %err, "cannot serve a fetched file's pieces from it; caching the rest in the store");
            Keeping::Store
        }
    })
}
