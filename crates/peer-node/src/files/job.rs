//! One fetch job's identity and progress, shared by its task and the API:
//! where it stands, the bytes and peers so far, why it failed.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::watch;
use wire_format::{PeerAddr, PieceId};

use crate::pieces::PeerAccount;

/// Distinct peers counted per job (its `peers` figure and its account).
const MAX_GIVERS_COUNTED: usize = 1024;

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Fetching, writing or checking.
    Running,
    /// The output is complete and its whole-file hash matches.
    Done,
    /// It ended with an error (see [`JobError`]), or was cancelled.
    Failed,
}

/// Why a job failed: a class a client maps to its exit code, and a text
/// that says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobError {
    /// `not_found`, `deadline`, `store_full`, `io`, `bad_manifest` or
    /// `cancelled`.
    pub class: &'static str,
    /// What happened.
    pub text: String,
}

impl JobError {
    pub(crate) fn new(class: &'static str, text: impl Into<String>) -> Self {
        Self {
            class,
            text: text.into(),
        }
    }
}

/// A job as `GET /api/v1/fetches/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// The file's manifest.
    pub manifest: String,
    /// Where the file is written (`None`: into the store only).
    pub path: Option<String>,
    /// Where it stands.
    pub state: JobState,
    /// `"<class>: <text>"` once failed.
    pub error: Option<String>,
    /// Bytes of the file fetched and written so far.
    pub bytes_done: u64,
    /// The file's size, once its manifest is known (0 before).
    pub bytes_total: u64,
    /// Average rate since the job started, bytes per second.
    pub rate_bps: u64,
    /// Distinct peers that gave pieces of the file.
    pub peers: u64,
    /// What each peer did over the job's pieces (`p2p-cli get --explain`),
    /// the largest givers first.
    pub explain: Vec<PeerAccount>,
}

#[derive(Debug)]
pub(crate) struct Progress {
    pub(crate) state: JobState,
    pub(crate) error: Option<JobError>,
    pub(crate) bytes_done: u64,
    pub(crate) bytes_total: u64,
    pub(crate) givers: HashSet<PeerAddr>,
    /// Per-peer account over the job's pieces, by peer address.
    pub(crate) explain: HashMap<String, PeerAccount>,
    pub(crate) ended: Option<Instant>,
}

/// One job, shared by its task and the API.
#[derive(Debug)]
pub struct Job {
    pub(crate) id: String,
    pub(crate) manifest: PieceId,
    pub(crate) path: Option<PathBuf>,
    pub(crate) started: Instant,
    pub(crate) progress: Mutex<Progress>,
    /// Set to stop the job, saying who stops it.
    pub(crate) cancel: watch::Sender<Option<Stop>>,
    /// Pieces the store indexed in the job's temp file so far: a temp file
    /// with none is worth nothing to a later run.
    pub(crate) registered: std::sync::atomic::AtomicU64,
}

/// Who stopped a job before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Its user cancelled it: its temp file and the pieces indexed in it go.
    User,
    /// The node is stopping: they stay for a later run to resume from, as
    /// when a job fails.
    Node,
}

impl Job {
    /// Whether its user cancelled it.
    pub(crate) fn cancelled_by_user(&self) -> bool {
        *self.cancel.borrow() == Some(Stop::User)
    }

    pub(crate) fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file's size is known.
    pub(crate) fn set_total(&self, bytes: u64) {
        self.progress().bytes_total = bytes;
    }

    /// A piece of `len` bytes is written, given by `from` (`None`: it was
    /// in the store already), with its fetch's per-peer account.
    pub(crate) fn add_piece(&self, len: u64, from: Option<PeerAddr>, explain: &[PeerAccount]) {
        self.add_explain(explain);
        let mut progress = self.progress();
        progress.bytes_done = progress.bytes_done.saturating_add(len);
        if let Some(from) = from
            && progress.givers.len() < MAX_GIVERS_COUNTED
        {
            progress.givers.insert(from);
        }
    }

    /// Adds one fetch's per-peer account (a data piece's or a manifest's).
    pub(crate) fn add_explain(&self, explain: &[PeerAccount]) {
        let mut progress = self.progress();
        for account in explain {
            if let Some(sum) = progress.explain.get_mut(&account.peer) {
                sum.add(account);
            } else if progress.explain.len() < MAX_GIVERS_COUNTED {
                progress
                    .explain
                    .insert(account.peer.clone(), account.clone());
            }
        }
    }

    /// The job ended.
    pub(crate) fn finish(&self, outcome: Result<(), JobError>) {
        let mut progress = self.progress();
        progress.ended = Some(Instant::now());
        match outcome {
            Ok(()) => progress.state = JobState::Done,
            Err(err) => {
                progress.state = JobState::Failed;
                progress.error = Some(err);
            }
        }
    }

    pub(crate) fn is_running(&self) -> bool {
        self.progress().state == JobState::Running
    }

    /// The job as the API shows it.
    pub fn view(&self) -> JobView {
        let progress = self.progress();
        let elapsed = progress
            .ended
            .unwrap_or_else(Instant::now)
            .duration_since(self.started)
            .as_secs_f64();
        let rate = if elapsed > 0.0 {
            progress.bytes_done as f64 / elapsed
        } else {
            0.0
        };
        JobView {
            id: self.id.clone(),
            manifest: self.manifest.to_string(),
            path: self.path.as_ref().map(|p| p.display().to_string()),
            state: progress.state,
            error: progress
                .error
                .as_ref()
                .map(|e| format!("{}: {}", e.class, e.text)),
            bytes_done: progress.bytes_done,
            bytes_total: progress.bytes_total,
            // Saturating float-to-int: a rate never exceeds u64.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            rate_bps: rate as u64,
            peers: progress.givers.len() as u64,
            explain: {
                let mut rows: Vec<PeerAccount> = progress.explain.values().cloned().collect();
                rows.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.peer.cmp(&b.peer)));
                rows
            },
        }
    }
}
