//! Whole-file fetch jobs: the registry of running and recent jobs, their
//! progress, starting one (or attaching to the one already writing the same
//! file), cancelling one.
//!
//! A `get` is a job, not one long HTTP response: a status sent before the
//! last piece arrives could not report "not found" or a whole-file hash
//! mismatch. The job itself runs in [`super::run`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::watch;
use wire_format::PieceId;

use super::job::{Job, JobState, JobView, Progress, Stop};
use super::{output, run};
use crate::pieces::Pieces;

/// Jobs running at once, node-wide. Each holds at most
/// [`run::PIECES_IN_FLIGHT`] pieces in memory and one blocking thread, so
/// the worst case is this many × that window (32 MiB each: 256 MiB).
pub const MAX_RUNNING_JOBS: usize = 8;
/// Failed jobs' errors [`Jobs::recent_errors`] returns.
pub const MAX_RECENT_ERRORS: usize = 20;
/// Finished jobs kept for their requesters to read; past it the oldest
/// finished job is forgotten.
pub const MAX_FINISHED_JOBS: usize = 256;

/// Why a job could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// [`MAX_RUNNING_JOBS`] are running.
    #[error("{running} fetch jobs are running, the most at once; retry when one ends")]
    Busy {
        /// Jobs running.
        running: usize,
    },
    /// The output path is not usable.
    #[error("bad output path: {0}")]
    Path(String),
}

/// The node's fetch jobs.
#[derive(Debug)]
pub struct Jobs {
    pieces: Arc<Pieces>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// The jobs of a node whose exchange is `pieces`.
    pub fn new(pieces: Arc<Pieces>) -> Self {
        Self {
            pieces,
            jobs: Mutex::new(HashMap::new()),
        }
    }

    fn jobs(&self) -> MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts fetching the file `manifest` into `path` (absolute; `None`:
    /// into the store only); returns the job's id and whether it is a job
    /// already running for the same file and path (then nothing new starts).
    pub fn start(
        self: &Arc<Self>,
        manifest: PieceId,
        path: Option<PathBuf>,
    ) -> Result<(String, bool), StartError> {
        if let Some(path) = &path {
            output::check_output_path(path).map_err(StartError::Path)?;
        }
        let mut jobs = self.jobs();
        if let Some(job) = jobs
            .values()
            .find(|j| j.manifest == manifest && j.path == path && j.is_running())
        {
            return Ok((job.id.clone(), true));
        }
        let running = jobs.values().filter(|j| j.is_running()).count();
        if running >= MAX_RUNNING_JOBS {
            return Err(StartError::Busy { running });
        }
        forget_oldest_finished(&mut jobs);
        let id = format!(
            "{:0width$x}",
            rand::random::<u64>(),
            width = output::JOB_ID_HEX
        );

        let job = Arc::new(Job {
            id: id.clone(),
            manifest,
            path,
            started: Instant::now(),
            progress: Mutex::new(Progress {
                state: JobState::Running,
                error: None,
                bytes_done: 0,
                bytes_total: 0,
                givers: HashSet::new(),
                explain: HashMap::new(),
                ended: None,
            }),
            cancel: watch::Sender::new(None),
            registered: std::sync::atomic::AtomicU64::new(0),
        });
        jobs.insert(id.clone(), Arc::clone(&job));
        drop(jobs);
        let pieces = Arc::clone(&self.pieces);
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let outcome = run::run(&pieces, &job, &registry).await;
            job.finish(outcome);
        });
        Ok((id, false))
    }

    /// The job `id`, if it is running or recent.
    pub fn get(&self, id: &str) -> Option<JobView> {
        self.jobs().get(id).map(|j| j.view())
    }

    /// Cancels the job `id` (its temp file is removed with the pieces
    /// indexed in it; pieces cached in the store stay); `None` if there is
    /// no such job. A finished job is
    /// left as it is.
    pub fn cancel(&self, id: &str) -> Option<JobView> {
        let job = self.jobs().get(id).map(Arc::clone)?;
        job.cancel.send_replace(Some(Stop::User));
        Some(job.view())
    }

    /// The errors of the jobs that failed most recently, newest first, at
    /// most [`MAX_RECENT_ERRORS`].
    pub fn recent_errors(&self) -> Vec<String> {
        let mut failed: Vec<(Instant, String)> = self
            .jobs()
            .values()
            .filter_map(|j| {
                let progress = j.progress();
                let error = progress.error.as_ref()?;
                let at = progress.ended?;
                Some((
                    at,
                    format!("fetch of {}: {}: {}", j.manifest, error.class, error.text),
                ))
            })
            .collect();
        failed.sort_by_key(|e| std::cmp::Reverse(e.0));
        failed.truncate(MAX_RECENT_ERRORS);
        failed.into_iter().map(|(_, e)| e).collect()
    }

    /// Cancels every running job (the node is stopping): each gives back
    /// the pin it took and keeps its temp file, if it holds pieces, for a
    /// later run to resume.
    pub fn cancel_all(&self) {
        for job in self.jobs().values() {
            job.cancel.send_replace(Some(Stop::Node));
        }
    }

    /// The temp files of the jobs running now.
    pub(crate) fn running_parts(&self) -> Vec<PathBuf> {
        self.jobs()
            .values()
            .filter(|j| j.is_running())
            .filter_map(|j| Some(output::part_path(j.path.as_ref()?, &j.id)))
            .collect()
    }

    /// Whether any job is still running.
    pub fn any_running(&self) -> bool {
        self.jobs().values().any(|j| j.is_running())
    }

    /// The jobs running now, for the status page.
    pub fn running(&self) -> Vec<JobView> {
        self.jobs()
            .values()
            .filter(|j| j.is_running())
            .map(|j| j.view())
            .collect()
    }
}

/// Makes room for one more job under [`MAX_FINISHED_JOBS`].
fn forget_oldest_finished(jobs: &mut HashMap<String, Arc<Job>>) {
    let finished: Vec<(Instant, String)> = jobs
        .values()
        .filter_map(|j| j.progress().ended.map(|at| (at, j.id.clone())))
        .collect();
    if finished.len() < MAX_FINISHED_JOBS {
        return;
    }
    if let Some((_, oldest)) = finished.iter().min() {
        jobs.remove(oldest);
    }
}
