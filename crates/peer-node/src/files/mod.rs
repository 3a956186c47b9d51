//! Whole files through the node: adding a file from a stream, reading a
//! complete one back, pins, gc, verification and the store listing (`manage`), and fetch jobs that bring a file from the swarm into
//! the store and an output file, checked against its whole-file hash.
//!
//! Uses the piece exchange (fetching pieces), the store's file and manifest
//! code, and nothing above it. Inside: `jobs` (the registry) → `run` (one job) → `job` (its
//! progress); `transfer` alone.

mod job;
mod jobs;
mod manage;
mod order;
mod output;
mod run;
mod transfer;
mod write;

pub use job::{JobError, JobState, JobView};
pub use jobs::{Jobs, MAX_FINISHED_JOBS, MAX_RUNNING_JOBS, StartError};
pub use manage::{ManageError, PinChange, RootKind, gc, listing, pin, unpin, verify};
pub use order::{FETCH_BLOCK_PIECES, LEAD_MAX_BYTES, RAREST_SAMPLE, UNANNOUNCED_IN_FLIGHT_MAX};
pub use run::{FAILED_JOB_DRAIN, PIECE_ATTEMPTS, PIECES_IN_FLIGHT};
pub use transfer::{
    AddError, DOWNLOAD_CHUNK_BYTES, DOWNLOAD_QUEUE_CHUNKS, FileStream, ReadError,
    UPLOAD_QUEUE_CHUNKS, add, add_in_place, read,
};
pub use write::{EXTENT_BATCH_INTERVAL, EXTENT_BATCH_PIECES};
