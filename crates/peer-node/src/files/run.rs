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
//!   holds it), rarest first within blocks of `order::FETCH_BLOCK_PIECES`, and
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
//! fsynced (every `write::EXTENT_BATCH_PIECES` pieces or
//! `write::EXTENT_BATCH_INTERVAL`, and at the end), the
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

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use piece_store::file::{FileError, WalkEvent, walk};
use piece_store::manifest::Layout;
use piece_store::{Durability, PieceStore, Retention, Root, StoreError};
use rand::SeedableRng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use wire_format::{PieceId, VerifiedPiece};

use super::job::{Job, JobError};
use super::jobs::Jobs;
use super::order::{FETCH_BLOCK_PIECES, LEAD_MAX_BYTES, Planned, UNANNOUNCED_IN_FLIGHT_MAX, pick};
use super::output::Output;
use super::write::{ToWrite, Written, write};
use crate::pieces::{FetchError, Fetched, Keep, Pieces};

/// Piece fetches a job keeps running at once: enough to keep several peers
/// busy (each holder takes up to 16 ASKs); the pieces waiting for their
/// turn to be written are bounded by it too (worst case this many × 1 MiB).
pub const PIECES_IN_FLIGHT: usize = 32;
/// How long a job whose piece failed still takes the pieces its other
/// fetches bring, so a re-run finds them: they are usually a moment away.
pub const FAILED_JOB_DRAIN: Duration = Duration::from_secs(2);
/// Pieces queued for the writer thread.
const WRITE_QUEUE_PIECES: usize = 4;
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
/// `order::FETCH_BLOCK_PIECES`; within a block the next piece fetched is the
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
                    let fetched =
                        fetch_piece(&pieces, next.id, root, timeout, Keep::Requester).await;
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

/// One piece of the file whose root manifest is `root` (what the DHT is
/// asked about), tried up to [`PIECE_ATTEMPTS`] times past deadlines.
async fn fetch_piece(
    pieces: &Arc<Pieces>,
    id: PieceId,
    root: PieceId,
    timeout: Duration,
    keep: Keep,
) -> Result<Fetched, FetchError> {
    let mut attempt = 1;
    loop {
        match pieces.fetch_for(id, root, timeout, keep).await {
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
    let fetched = fetch_piece(pieces, id, job.manifest, timeout, Keep::Store)
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
