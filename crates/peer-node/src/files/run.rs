//! One whole-file fetch job, from its manifest to the renamed output.
//!
//! Three parts run at once:
//! * a **planner** on a blocking thread walks the manifest tree in the store
//!   ([`piece_store::file::walk`]); a manifest it lacks is fetched from the
//!   swarm, stored, and the walk resumes, so memory never grows with the
//!   file;
//! * the job's task keeps up to [`PIECES_IN_FLIGHT`] piece fetches running
//!   (each a normal fetch: the store first, so a job re-run resumes, else a
//!   peer that announced the piece, else WANT_HAVE to every peer and ASK
//!   the least busy holder, which spreads a file over every peer that
//!   holds it), rarest first within blocks of [`FETCH_BLOCK_PIECES`], and
//!   hands each piece on as it arrives;
//! * a **writer** on a blocking thread writes them at their offsets in a
//!   temp file beside the output, announces each to the connected peers,
//!   and has a thread beside it hash the file's completed prefix as it
//!   grows.
//!
//! Only when the whole file hashes to its manifest's `sha256` is the temp
//! file fsynced, renamed over the output and its directory fsynced. The
//! file's root is pinned when the job starts, so its pieces are kept as they
//! arrive and the node goes on sharing the file; a job that fails or is
//! cancelled gives the pin back.
//!
//! **Each byte is written once.** A piece fetched for a job with an output
//! is not cached in the store: once it is in the temp file and that is
//! fsynced (every [`EXTENT_BATCH_PIECES`] pieces or
//! [`EXTENT_BATCH_INTERVAL`], and at the end), the
//! store indexes it as a range of the file ([`PieceStore::add_extents`]),
//! so the node serves it from there while the job runs and after, the
//! index following the rename. It is served from the file (every read is
//! hashed) the moment it is written ([`PieceStore::offer_extents`]), so
//! leechers of the same file share it at once; only the index on disk
//! waits for the fsync. A job without an output, or on a store
//! that keeps no extents, caches its pieces in the store.
//!
//! **Resuming.** A job that fails, or is stopped with its node (even
//! killed), leaves its temp file with its pieces indexed: the next job for
//! the same output reads them from it (hashing each, as every read of a
//! range is), so a re-run resumes, and once its own output is in place it
//! removes every temp file earlier runs left for that output. A user's
//! cancel removes the job's temp file and drops its pieces from the index
//! at once.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use piece_store::file::{FileError, WalkEvent, walk};
use piece_store::manifest::Layout;
use piece_store::{Durability, Extent, PieceStore, Retention, Root, StoreError};
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

use super::job::{Job, JobError};
use super::jobs::Jobs;
use crate::pieces::{FetchError, Fetched, Keep, Link, Pieces};

/// Piece fetches a job keeps running at once: enough to keep several peers
/// busy (each holder takes up to 16 ASKs); the pieces waiting for their
/// turn to be written are bounded by it too (worst case this many × 1 MiB).
pub const PIECES_IN_FLIGHT: usize = 32;
/// Pieces planned at once, and fetched in a random, rarest-first order
/// among themselves (see [`fetch_into`]): 128 MiB of 1 MiB pieces. The
/// whole-file hash can only follow the completed prefix, so at the end up
/// to this many pieces are hashed after the last one arrives.
pub const FETCH_BLOCK_PIECES: usize = 128;
/// How far past the oldest piece still being fetched a job may plan (two
/// blocks): the bound on what waits for the whole-file hash.
pub const LEAD_MAX_BYTES: u64 = 2 * FETCH_BLOCK_PIECES as u64 * PIECE_MAX as u64;
/// Pieces nobody announced that a job fetches at once after a connected
/// peer announced a piece of its file (other peers are fetching it too):
/// they come from the file's seeders, and a cap keeps the leechers from
/// all taking the same ones from them at once; the pieces the others
/// announced fill the rest of [`PIECES_IN_FLIGHT`]. A job that hears no
/// announcement (the only one fetching) is never capped.
pub const UNANNOUNCED_IN_FLIGHT_MAX: usize = 8;
/// Pieces of the block compared for rarity at each pick.
pub const RAREST_SAMPLE: usize = 8;
/// How long a job whose piece failed still takes the pieces its other
/// fetches bring, so a re-run finds them: they are usually a moment away.
pub const FAILED_JOB_DRAIN: Duration = Duration::from_secs(2);
/// Pieces queued for the writer thread.
const WRITE_QUEUE_PIECES: usize = 4;
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
/// Times one piece is tried before the job gives up on it: a deadline is
/// often one slow or vanished peer, and the next try asks the others.
pub const PIECE_ATTEMPTS: usize = 3;

/// What the planner tells the job.
#[derive(Debug)]
enum Plan {
    /// The root manifest: the file's size and hash.
    Root { size: u64, sha256: PieceId },
    /// The next data piece, in file order, and its length.
    Piece(PieceId, usize),
    /// A manifest the store lacks: fetch and store it, then answer.
    Need(PieceId, oneshot::Sender<bool>),
    /// The tree cannot be walked.
    Failed(JobError),
}

/// Checks an output path before a job starts: absolute, naming a file, in
/// an existing directory.
pub(crate) fn check_output_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
        return Err(format!("{} does not name a file", path.display()));
    };
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    if path.is_dir() {
        return Err(format!("{} is a directory", path.display()));
    }
    Ok(())
}

/// Runs `job` to its end (or its cancellation).
pub(crate) async fn run(
    pieces: &Arc<Pieces>,
    job: &Arc<Job>,
    registry: &Weak<Jobs>,
) -> Result<(), JobError> {
    let mut cancel = job.cancel.subscribe();
    // The file's root is pinned first: every piece of its tree is kept the
    // moment it arrives, so a small store never evicts the file it fetches.
    let root = Root::File(job.manifest);
    let store = Arc::clone(&pieces.store);
    let pinned_here = tokio::task::spawn_blocking(move || store.pin_root(root))
        .await
        .map_err(|e| JobError::new("io", e.to_string()))?
        .map_err(store_error)?;
    let output = match job.path.clone() {
        Some(path) => {
            let id = job.id.clone();
            let created = tokio::task::spawn_blocking(move || Output::create(&path, &id))
                .await
                .map_err(|e| JobError::new("io", e.to_string()))
                .and_then(|created| created);
            match created {
                Ok(output) => Some(output),
                Err(err) => {
                    // Nothing was fetched: the pin goes back as it came.
                    if pinned_here {
                        let store = Arc::clone(&pieces.store);
                        let _ = tokio::task::spawn_blocking(move || store.unpin_root(root)).await;
                    }
                    return Err(err);
                }
            }
        }
        None => None,
    };
    let tmp = output.as_ref().map(|o| o.tmp.clone());
    let (write_tx, write_rx) = mpsc::channel::<ToWrite>(WRITE_QUEUE_PIECES);
    let writer = {
        let pieces = Arc::clone(pieces);
        let runtime = tokio::runtime::Handle::current();
        let job = Arc::clone(job);
        tokio::task::spawn_blocking(move || write(output, write_rx, &pieces, &runtime, &job))
    };
    let work = fetch_into(pieces, job, write_tx);
    let fed = tokio::select! {
        fed = work => fed,
        _ = cancel.wait_for(Option::is_some) => Err(JobError::new("cancelled", "the job was cancelled")),
    };
    // The feeder is gone (and its end of the writer's queue with it): the
    // writer finishes what it was handed, so the pieces it registered are
    // known before anything is kept or removed.
    let written = writer
        .await
        .map_err(|e| JobError::new("io", format!("the writer stopped: {e}")));
    let result = match (fed, written) {
        (Err(err), _) => Err(err),
        (Ok(_), Err(err)) | (Ok(_), Ok(Err(err))) => Err(err),
        (Ok(declared), Ok(Ok(written))) => finish(pieces, declared, written, registry).await,
    };
    if result.is_err() {
        // A failed job keeps its temp file and the pieces indexed in it, so
        // the next run for the same output resumes (like a browser's
        // partial download), unless it holds none or the manifest lied; a
        // user's cancel removes them. The ranges leave the index before the
        // file goes (the writer may still hold it open; removing the name
        // is enough).
        let cancelled = job.cancelled_by_user();
        let resumable = result.as_ref().is_err_and(|e| e.class != "bad_manifest")
            && job.registered.load(Ordering::Relaxed) > 0;
        if let Some(tmp) = tmp.filter(|_| cancelled || !resumable) {
            let store = Arc::clone(&pieces.store);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = store.forget_extent_file(&tmp);
                let _ = std::fs::remove_file(&tmp);
            })
            .await;
        }
        // Fetched pieces stay, cached; the pin was this job's to give back
        // (a file the user had pinned stays pinned).
        if pinned_here {
            let store = Arc::clone(&pieces.store);
            let _ = tokio::task::spawn_blocking(move || store.unpin_root(root)).await;
        }
    }
    result
}

/// Plans the file and fetches its data pieces, handing each to the writer
/// as it arrives; returns the size and hash the root manifest declares.
///
/// **Order.** The planner's pieces are taken in blocks of
/// [`FETCH_BLOCK_PIECES`]; within a block the next piece fetched is the
/// rarest of [`RAREST_SAMPLE`] drawn at random (rarity: how many connected
/// peers announced it), so the leechers of one file fetch different pieces
/// at first and then each other's, as in a BitTorrent swarm, while the
/// whole-file hash never trails the arrivals by much more than a block.
async fn fetch_into(
    pieces: &Arc<Pieces>,
    job: &Arc<Job>,
    write_tx: mpsc::Sender<ToWrite>,
) -> Result<(u64, PieceId), JobError> {
    let timeout = pieces.swarm.config.fetch_timeout;
    let (plan_tx, mut plans) = mpsc::channel(PIECES_IN_FLIGHT);
    let store = Arc::clone(&pieces.store);
    let root = job.manifest;
    let planner = tokio::task::spawn_blocking(move || plan(&*store, root, &plan_tx));

    let mut declared = None;
    // On a failure the pieces already handed over are still written and
    // kept (a re-run resumes from them).
    let fed: Result<(), JobError> = async {
        let mut rng = rand::rngs::StdRng::seed_from_u64(rand::random());
        let mut block: Vec<Planned> = Vec::with_capacity(FETCH_BLOCK_PIECES);
        let mut in_flight: JoinSet<(Planned, bool, Result<Fetched, FetchError>)> = JoinSet::new();
        // Whether a connected peer announced a piece of this file, and the
        // fetches running for pieces nobody had announced.
        let (mut shared, mut unannounced) = (false, 0usize);
        let mut offset: u64 = 0;
        // Where the pieces being fetched start.
        let mut fetching = std::collections::BTreeSet::new();
        let mut planned_all = false;
        // The first failure, and until when the fetches still running may
        // bring their pieces in (to be written and kept for a re-run).
        let mut failed: Option<(JobError, tokio::time::Instant)> = None;
        loop {
            // The next block only while the oldest piece still fetching
            // starts less than LEAD_MAX_BYTES before it: what the whole-file
            // hash waits for stays bounded even when one piece is slow.
            let lagging = fetching
                .first()
                .is_some_and(|oldest| offset - oldest >= LEAD_MAX_BYTES);
            while failed.is_none() && block.is_empty() && !planned_all && !lagging {
                // The next block, whole: the planner waits for us meanwhile.
                while !planned_all && block.len() < FETCH_BLOCK_PIECES {
                    match plans.recv().await {
                        Some(Plan::Root { size, sha256 }) => {
                            job.set_total(size);
                            declared = Some((size, sha256));
                        }
                        Some(Plan::Piece(id, len)) => {
                            block.push(Planned { id, len, offset });
                            offset += len as u64;
                        }
                        Some(Plan::Need(id, stored)) => {
                            let ok = fetch_manifest(pieces, job, id, timeout).await?;
                            let _ = stored.send(ok);
                        }
                        Some(Plan::Failed(err)) => return Err(err),
                        None => planned_all = true,
                    }
                }
            }
            while failed.is_none() && in_flight.len() < PIECES_IN_FLIGHT && !block.is_empty() {
                // Never refused with nothing in flight: then `unannounced` is 0.
                let unannounced_ok = !shared || unannounced < UNANNOUNCED_IN_FLIGHT_MAX;
                let Some(next) = pick(&mut block, &pieces.links(), &mut rng, unannounced_ok) else {
                    break;
                };
                shared |= next.saw_announced;
                let fresh = next.holders == 0;
                unannounced += usize::from(fresh);
                let next = next.piece;
                fetching.insert(next.offset);
                let pieces = Arc::clone(pieces);
                in_flight.spawn(async move {
                    let fetched = fetch_piece(&pieces, next.id, timeout, Keep::Requester).await;
                    (next, fresh, fetched)
                });
            }
            let done = match &failed {
                None => in_flight.join_next().await,
                Some((_, until)) => tokio::time::timeout_at(*until, in_flight.join_next())
                    .await
                    .ok()
                    .flatten(),
            };
            let Some(done) = done else {
                break;
            };
            let (planned, fresh, fetched) =
                done.map_err(|e| JobError::new("io", format!("a piece fetch failed: {e}")))?;
            fetching.remove(&planned.offset);
            unannounced -= usize::from(fresh);
            let fetched = match fetched {
                Ok(fetched) if fetched.bytes.len() == planned.len => fetched,
                Ok(fetched) => {
                    return Err(JobError::new(
                        "bad_manifest",
                        format!(
                            "a piece is {} bytes where its manifest implies {}",
                            fetched.bytes.len(),
                            planned.len
                        ),
                    ));
                }
                Err(err) => {
                    if failed.is_none() {
                        let until = tokio::time::Instant::now() + FAILED_JOB_DRAIN;
                        failed = Some((fetch_error(err), until));
                    }
                    continue;
                }
            };
            job.add_piece(planned.len as u64, fetched.from, &fetched.explain);
            let piece = ToWrite {
                id: planned.id,
                offset: planned.offset,
                bytes: fetched.bytes,
                unkept: fetched.unkept,
            };
            if write_tx.send(piece).await.is_err() {
                break; // the writer failed: its error is reported below
            }
        }
        if let Some((err, _)) = failed {
            return Err(err);
        }
        Ok(())
    }
    .await;
    drop(write_tx);
    // A planner still walking stops at its next send.
    drop(plans);
    let _ = planner.await;
    fed?;
    declared.ok_or_else(|| JobError::new("bad_manifest", "the manifest tree named no file"))
}

/// A data piece of the file, planned and not yet fetched.
#[derive(Debug, Clone, Copy)]
struct Planned {
    id: PieceId,
    len: usize,
    /// Where it starts in the file.
    offset: u64,
}

/// The piece [`pick`] chose.
#[derive(Debug, Clone, Copy)]
struct Pick {
    piece: Planned,
    /// How many connected peers announced it.
    holders: usize,
    /// Whether any piece of the sample was announced: other peers are
    /// fetching this file.
    saw_announced: bool,
}

/// Takes from `block` (not empty) the piece to fetch next: of
/// [`RAREST_SAMPLE`] neighbours from a random place in it (the whole block
/// when smaller), the one the fewest of `links` announced, the first
/// among equals; with `unannounced_ok` false, only a piece somebody
/// announced (`None` if the sample has none).
fn pick(
    block: &mut Vec<Planned>,
    links: &[Arc<Link>],
    rng: &mut impl RngExt,
    unannounced_ok: bool,
) -> Option<Pick> {
    let holders = |p: &Planned| links.iter().filter(|l| l.announced(&p.id)).count();
    let start = rng.random_range(0..block.len());
    let mut best: Option<(usize, usize)> = None;
    let mut saw_announced = false;
    for i in (0..RAREST_SAMPLE.min(block.len())).map(|k| (start + k) % block.len()) {
        let n = holders(&block[i]);
        saw_announced |= n > 0;
        if (unannounced_ok || n > 0) && best.is_none_or(|(_, fewest)| n < fewest) {
            best = Some((i, n));
        }
    }
    let (i, holders) = best?;
    Some(Pick {
        piece: block.swap_remove(i),
        holders,
        saw_announced,
    })
}

/// Checks what the writer wrote against what the manifest declares, then
/// puts the output in place.
async fn finish(
    pieces: &Arc<Pieces>,
    (size, sha256): (u64, PieceId),
    written: Written,
    registry: &Weak<Jobs>,
) -> Result<(), JobError> {
    if written.size != size || written.sha256 != sha256 {
        return Err(JobError::new(
            "bad_manifest",
            format!(
                "the file's {} bytes hash to {}, its manifest declares {size} bytes hashing to {sha256}; \
                 every piece matched its own name, so the manifest lies",
                written.size, written.sha256
            ),
        ));
    }
    if let Some(output) = written.output {
        let store = Arc::clone(&pieces.store);
        let running = registry
            .upgrade()
            .map(|jobs| jobs.running_parts())
            .unwrap_or_default();
        tokio::task::spawn_blocking(move || output.commit(&*store, &running))
            .await
            .map_err(|e| JobError::new("io", e.to_string()))??;
    }
    Ok(())
}

/// One data piece, tried up to [`PIECE_ATTEMPTS`] times past deadlines.
async fn fetch_piece(
    pieces: &Arc<Pieces>,
    id: PieceId,
    timeout: Duration,
    keep: Keep,
) -> Result<Fetched, FetchError> {
    let mut attempt = 1;
    loop {
        match pieces.fetch_keeping(id, timeout, keep).await {
            Err(FetchError::Deadline) if attempt < PIECE_ATTEMPTS => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// Fetches the manifest `id` and stores it, so the planner can walk it.
async fn fetch_manifest(
    pieces: &Arc<Pieces>,
    job: &Job,
    id: PieceId,
    timeout: Duration,
) -> Result<bool, JobError> {
    let fetched = fetch_piece(pieces, id, timeout, Keep::Store)
        .await
        .map_err(fetch_error)?;
    job.add_explain(&fetched.explain);
    let store = Arc::clone(&pieces.store);
    tokio::task::spawn_blocking(move || {
        let piece = VerifiedPiece::verify(id, fetched.bytes)
            .map_err(|e| JobError::new("io", format!("manifest {id}: {e}")))?;
        store
            .put(piece, Retention::Cached, Durability::Wait)
            .map_err(store_error)?;
        Ok(true)
    })
    .await
    .map_err(|e| JobError::new("io", format!("storing manifest {id}: {e}")))?
}

fn fetch_error(err: FetchError) -> JobError {
    let class = match err {
        FetchError::NotFound { .. } => "not_found",
        FetchError::Deadline => "deadline",
        FetchError::Store(_) | FetchError::Shutdown => "io",
    };
    JobError::new(class, err.to_string())
}

fn store_error(err: StoreError) -> JobError {
    if err.is_out_of_space() {
        JobError::new("store_full", err.to_string())
    } else {
        JobError::new("io", err.to_string())
    }
}

/// The planner: walks the tree rooted at `root`, asking for each manifest
/// the store lacks. Runs on a blocking thread (the store is blocking).
fn plan(store: &dyn PieceStore, root: PieceId, plans: &mpsc::Sender<Plan>) {
    let layout = Layout::STANDARD;
    let mut tree = walk(store, &root, &layout);
    loop {
        let plan = match tree.next() {
            None => return,
            Some(Ok(WalkEvent::Enter(node))) if node.level.is_root() => Plan::Root {
                size: node.size,
                sha256: node.sha256,
            },
            Some(Ok(WalkEvent::Enter(_) | WalkEvent::Leave(_))) => continue,
            Some(Ok(WalkEvent::Piece(piece))) => Plan::Piece(piece.id, piece.len),
            Some(Err(FileError::Missing { id })) => {
                let (stored, answer) = oneshot::channel();
                if plans.blocking_send(Plan::Need(id, stored)).is_err() {
                    return;
                }
                match answer.blocking_recv() {
                    // Stored: the walk has not advanced; it retries.
                    Ok(true) => continue,
                    _ => return,
                }
            }
            Some(Err(err)) => {
                let class = match &err {
                    FileError::Store(e) if e.is_out_of_space() => "store_full",
                    FileError::Store(_) | FileError::Io { .. } => "io",
                    _ => "bad_manifest",
                };
                Plan::Failed(JobError::new(class, err.to_string()))
            }
        };
        let failed = matches!(plan, Plan::Failed(_));
        if plans.blocking_send(plan).is_err() || failed {
            return;
        }
    }
}

/// A piece for the writer, in any order.
struct ToWrite {
    id: PieceId,
    /// Where it goes in the file.
    offset: u64,
    bytes: Bytes,
    /// The piece when no store holds it yet ([`Fetched::unkept`]).
    unkept: Option<VerifiedPiece>,
}

/// What the writer wrote.
struct Written {
    size: u64,
    sha256: PieceId,
    output: Option<Output>,
}

/// Where the writer keeps the pieces it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keeping {
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
fn write(
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
enum ReadBack {
    /// The output's temp file (the page cache, usually).
    File(File),
    /// The store, for a job without an output.
    Store(Arc<dyn PieceStore>),
}

/// What the hashing thread is handed, in file order.
enum ToHash {
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
/// may have ahead of its oldest unfinished one ([`LEAD_MAX_BYTES`]).
struct PrefixHasher {
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
fn register(
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

/// The temp file a job writes, beside its output.
struct Output {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
}

impl Output {
    fn create(path: &Path, job: &str) -> Result<Self, JobError> {
        check_output_path(path).map_err(|e| JobError::new("io", e))?;
        let tmp = part_path(path, job);
        // Readable too: the whole-file hash reads back the pieces that
        // arrived ahead of the completed prefix.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| JobError::new("io", format!("cannot create {}: {e}", tmp.display())))?;
        Ok(Self {
            file,
            tmp,
            path: path.to_owned(),
        })
    }

    fn error(&self, what: &str, err: std::io::Error) -> JobError {
        JobError::new("io", format!("{what} {}: {err}", self.tmp.display()))
    }

    /// Renames the complete, fsynced temp file over the output, has the
    /// store's index follow, fsyncs the directory, then removes the temp
    /// files earlier runs left for the same output (their pieces were read
    /// from them), except those of the jobs `running`.
    fn commit(self, store: &dyn PieceStore, running: &[PathBuf]) -> Result<(), JobError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.error("rename", e))?;
        if let Err(err) = store.move_extent_file(&self.tmp, &self.path) {
            // The file is whole; its pieces will not be served from it.
            tracing::warn!(file = %self.path.display(), %err, "cannot record the rename in the store's index");
            let _ = store.forget_extent_file(&self.tmp);
        }
        if let Some(dir) = self.path.parent() {
            piece_store::state_file::sync_dir(dir)
                .map_err(|e| JobError::new("io", format!("fsync {}: {e}", dir.display())))?;
        }
        for part in self.stale_parts(running) {
            let _ = store.forget_extent_file(&part);
            let _ = std::fs::remove_file(&part);
        }
        Ok(())
    }

    /// The temp files beside the output that earlier runs wrote for it.
    fn stale_parts(&self, running: &[PathBuf]) -> Vec<PathBuf> {
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|part| {
                output_of_part(part).as_deref() == Some(&*self.path)
                    && *part != self.tmp
                    && !running.contains(part)
            })
            .collect()
    }
}

/// The temp file a job `job` writes for `output`: hidden, beside it.
pub(crate) fn part_path(output: &Path, job: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(output.file_name().unwrap_or_default());
    name.push(format!(".p2p-{job}.part"));
    output.with_file_name(name)
}

/// The output a job's temp file `part` was written for, if `part` is
/// named as [`part_path`] names them.
pub(crate) fn output_of_part(part: &Path) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let name = part.file_name()?.as_bytes();
    let inner = name.strip_prefix(b".")?.strip_suffix(b".part")?;
    let (output, job) = inner.split_at(inner.len().checked_sub(JOB_ID_HEX + 5)?);
    let job = job.strip_prefix(b".p2p-")?;
    if output.is_empty() || !job.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(part.with_file_name(std::ffi::OsStr::from_bytes(output)))
}

/// Hex digits of a job id.
pub(crate) const JOB_ID_HEX: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(n: usize) -> Planned {
        Planned {
            id: PieceId::of(&n.to_le_bytes()),
            len: 1,
            offset: n as u64,
        }
    }

    fn link(id: u64) -> Arc<Link> {
        let closer = Arc::new(crate::net::Closer::default());
        let addr = wire_format::PeerAddr::new([127, 0, 0, 1].into(), 7001);
        let (link, _frames) = Link::new(
            id,
            addr,
            None,
            Arc::default(),
            closer,
            std::time::Instant::now(),
        );
        Arc::new(link)
    }

    fn rarest(block: &mut Vec<Planned>, links: &[Arc<Link>], rng: &mut impl RngExt) -> u64 {
        pick(block, links, rng, true).unwrap().piece.offset
    }

    #[test]
    fn the_piece_picked_next_is_the_rarest_of_a_random_sample_and_each_is_picked_once() {
        let links = [link(1), link(2)];
        // Piece 0 is announced by both peers, 1 by one, 2 by nobody.
        links[0].note_announced(planned(0).id);
        links[1].note_announced(planned(0).id);
        links[0].note_announced(planned(1).id);
        for seed in 0..16 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut block: Vec<Planned> = (0..3).map(planned).collect();
            let order: Vec<u64> = (0..3)
                .map(|_| rarest(&mut block, &links, &mut rng))
                .collect();
            assert_eq!(order, [2, 1, 0], "seed {seed}");
            assert!(block.is_empty());
        }
        // In a block larger than the sample, the pick is the rarest of the
        // sample: one piece in 16 unannounced is found as often as the
        // sample's share of the block says (8 neighbours of 16: half).
        let block: Vec<Planned> = (100..116).map(planned).collect();
        for p in &block[1..] {
            links[0].note_announced(p.id);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let unannounced = (0..64)
            .filter(|_| rarest(&mut block.clone(), &links, &mut rng) == 100)
            .count();
        assert!((24..=40).contains(&unannounced), "{unannounced} of 64");
    }

    #[test]
    fn a_pick_limited_to_announced_pieces_takes_the_rarest_of_those_or_none() {
        let links = [link(1), link(2)];
        links[0].note_announced(planned(0).id);
        links[1].note_announced(planned(0).id);
        links[0].note_announced(planned(1).id);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut block: Vec<Planned> = (0..3).map(planned).collect();
        let first = pick(&mut block, &links, &mut rng, false).unwrap();
        assert_eq!((first.piece.offset, first.holders), (1, 1));
        assert!(first.saw_announced);
        let second = pick(&mut block, &links, &mut rng, false).unwrap();
        assert_eq!((second.piece.offset, second.holders), (0, 2));
        assert!(pick(&mut block, &links, &mut rng, false).is_none());
        assert_eq!(block.len(), 1, "a refused pick takes nothing");
        let last = pick(&mut block, &links, &mut rng, true).unwrap();
        assert_eq!((last.piece.offset, last.holders), (2, 0));
        assert!(!last.saw_announced);
    }

    #[test]
    fn nodes_with_different_seeds_start_a_block_at_different_pieces() {
        let firsts: std::collections::HashSet<u64> = (0..8)
            .map(|seed| {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut block: Vec<Planned> = (0..FETCH_BLOCK_PIECES).map(planned).collect();
                rarest(&mut block, &[], &mut rng)
            })
            .collect();
        assert!(firsts.len() >= 6, "8 nodes start at only {firsts:?}");
    }

    #[test]
    fn a_part_names_its_output_and_nothing_else_does() {
        let output = Path::new("/data/my file.iso");
        let part = part_path(output, "00112233aabbccdd");
        assert_eq!(
            part,
            Path::new("/data/.my file.iso.p2p-00112233aabbccdd.part")
        );
        assert_eq!(output_of_part(&part).as_deref(), Some(output));
        for other in [
            "/data/my file.iso",
            "/data/.my file.iso.p2p-0011.part",
            "/data/.my file.iso.p2p-00112233aabbccdg.part",
            "/data/..p2p-00112233aabbccdd.part",
            "/data/.x.p2p-00112233aabbccdd.parts",
        ] {
            assert_eq!(output_of_part(Path::new(other)), None, "{other}");
        }
    }
}
