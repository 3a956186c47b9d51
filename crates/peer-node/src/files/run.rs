//! One whole-file fetch job, from its manifest to the renamed output.
//!
//! Three parts run at once:
//! * a **planner** on a blocking thread walks the manifest tree in the store
//!   ([`piece_store::file::walk`]); a manifest it lacks is fetched from the
//!   swarm, stored, and the walk resumes, so memory never grows with the
//!   file;
//! * the job's task keeps up to [`PIECES_IN_FLIGHT`] piece fetches running
//!   (each a normal fetch: the store first, so a job re-run resumes, else
//!   WANT_HAVE to every peer and ASK the least busy holder, which spreads a
//!   file over every peer that holds it) and hands the pieces on in file
//!   order;
//! * a **writer** on a blocking thread writes them to a temp file beside the
//!   output and hashes them as one stream.
//!
//! Only when the whole file hashes to its manifest's `sha256` is the temp
//! file fsynced, renamed over the output and its directory fsynced. The
//! file's root is pinned when the job starts, so its pieces are kept as they
//! arrive and the node goes on sharing the file; a job that fails or is
//! cancelled gives the pin back (its pieces stay, cached).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use piece_store::file::{FileError, WalkEvent, walk};
use piece_store::manifest::Layout;
use piece_store::{Durability, PieceStore, Retention, Root, StoreError};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use wire_format::{PieceId, VerifiedPiece};

use super::job::{Job, JobError};
use crate::pieces::{FetchError, Fetched, Pieces};

/// Piece fetches a job keeps running at once: enough to keep several peers
/// busy (each holder takes up to 16 ASKs); the pieces waiting for their
/// turn to be written are bounded by it too (worst case this many × 1 MiB).
pub const PIECES_IN_FLIGHT: usize = 32;
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
pub(crate) async fn run(pieces: &Arc<Pieces>, job: &Arc<Job>) -> Result<(), JobError> {
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
            let created = tokio::task::spawn_blocking(move || Output::create(&path, &id)).await;
            Some(created.map_err(|e| JobError::new("io", e.to_string()))??)
        }
        None => None,
    };
    let tmp = output.as_ref().map(|o| o.tmp.clone());
    let work = fetch_into(pieces, job, output);
    let result = tokio::select! {
        result = work => result,
        _ = cancel.wait_for(|c| *c) => Err(JobError::new("cancelled", "the job was cancelled")),
    };
    if result.is_err() {
        if let Some(tmp) = tmp {
            // The writer may still hold it open; removing the name is enough.
            let _ = std::fs::remove_file(tmp);
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

async fn fetch_into(
    pieces: &Arc<Pieces>,
    job: &Arc<Job>,
    output: Option<Output>,
) -> Result<(), JobError> {
    let timeout = pieces.swarm.config.fetch_timeout;
    let (plan_tx, mut plans) = mpsc::channel(PIECES_IN_FLIGHT);
    let store = Arc::clone(&pieces.store);
    let root = job.manifest;
    let planner = tokio::task::spawn_blocking(move || plan(&*store, root, &plan_tx));
    let (write_tx, write_rx) = mpsc::channel::<Bytes>(WRITE_QUEUE_PIECES);
    let writer = tokio::task::spawn_blocking(move || write(output, write_rx));

    let mut declared = None;
    let mut window: VecDeque<(usize, JoinHandle<Result<Fetched, FetchError>>)> = VecDeque::new();
    let mut planned_all = false;
    loop {
        while !planned_all && window.len() < PIECES_IN_FLIGHT {
            match plans.recv().await {
                Some(Plan::Root { size, sha256 }) => {
                    job.set_total(size);
                    declared = Some((size, sha256));
                }
                Some(Plan::Piece(id, len)) => {
                    let pieces = Arc::clone(pieces);
                    let fetch =
                        tokio::spawn(async move { fetch_piece(&pieces, id, timeout).await });
                    window.push_back((len, fetch));
                }
                Some(Plan::Need(id, stored)) => {
                    let ok = fetch_manifest(pieces, job, id, timeout).await?;
                    let _ = stored.send(ok);
                }
                Some(Plan::Failed(err)) => return Err(err),
                None => planned_all = true,
            }
        }
        let Some((len, fetch)) = window.pop_front() else {
            break;
        };
        let fetched = fetch
            .await
            .map_err(|e| JobError::new("io", format!("a piece fetch failed: {e}")))?
            .map_err(fetch_error)?;
        if fetched.bytes.len() != len {
            return Err(JobError::new(
                "bad_manifest",
                format!(
                    "a piece is {} bytes where its manifest implies {len}",
                    fetched.bytes.len()
                ),
            ));
        }
        job.add_piece(len as u64, fetched.from, &fetched.explain);
        if write_tx.send(fetched.bytes).await.is_err() {
            break; // the writer failed: its error is reported below
        }
    }
    drop(write_tx);
    let _ = planner.await;
    let written = writer
        .await
        .map_err(|e| JobError::new("io", format!("the writer stopped: {e}")))??;
    let Some((size, sha256)) = declared else {
        return Err(JobError::new(
            "bad_manifest",
            "the manifest tree named no file",
        ));
    };
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
        tokio::task::spawn_blocking(move || output.commit())
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
) -> Result<Fetched, FetchError> {
    let mut attempt = 1;
    loop {
        match pieces.fetch_from(id, timeout).await {
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
    let fetched = fetch_piece(pieces, id, timeout)
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
        FetchError::NotFound => "not_found",
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

/// What the writer wrote.
struct Written {
    size: u64,
    sha256: PieceId,
    output: Option<Output>,
}

/// The writer: appends the pieces it is handed to the output's temp file
/// (if any) and hashes them. Runs on a blocking thread.
fn write(
    mut output: Option<Output>,
    mut pieces: mpsc::Receiver<Bytes>,
) -> Result<Written, JobError> {
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    while let Some(bytes) = pieces.blocking_recv() {
        if let Some(output) = output.as_mut() {
            output
                .file
                .write_all(&bytes)
                .map_err(|e| output.error("write", e))?;
        }
        hasher.update(&bytes);
        size += bytes.len() as u64;
    }
    if let Some(output) = output.as_mut() {
        output
            .file
            .sync_all()
            .map_err(|e| output.error("fsync", e))?;
    }
    Ok(Written {
        size,
        sha256: PieceId::from_bytes(hasher.finalize().into()),
        output,
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
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.p2p-{job}.part"));
        let file = OpenOptions::new()
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

    /// Renames the complete, fsynced temp file over the output and fsyncs
    /// the directory.
    fn commit(self) -> Result<(), JobError> {
        std::fs::rename(&self.tmp, &self.path).map_err(|e| self.error("rename", e))?;
        if let Some(dir) = self.path.parent() {
            piece_store::state_file::sync_dir(dir)
                .map_err(|e| JobError::new("io", format!("fsync {}: {e}", dir.display())))?;
        }
        Ok(())
    }
}
