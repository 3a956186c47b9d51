//! Whole files in and out of the node's store as byte streams: adding a
//! file from a stream (the API's `POST /api/v1/files`) and reading a
//! complete file back in order (`GET /api/v1/files/{manifest}`).
//!
//! The store and its hashing are blocking, so each transfer runs on a
//! blocking thread, joined to the async side by a bounded channel of
//! chunks: neither side ever holds the whole file.

use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::{Stream, StreamExt};
use piece_store::file::{
    FileError, FileSummary, add_file, add_file_in_place, pieces_of, reassemble,
};
use piece_store::manifest::{Layout, Level, Manifest};
use piece_store::{PieceStore, StoreError};
use tokio::sync::mpsc;
use wire_format::PieceId;

/// Chunks of a request body queued for the thread adding the file.
pub const UPLOAD_QUEUE_CHUNKS: usize = 16;
/// Chunks of a file queued for the response while it is read back.
pub const DOWNLOAD_QUEUE_CHUNKS: usize = 16;
/// Bytes read back per chunk of a download.
pub const DOWNLOAD_CHUNK_BYTES: usize = 256 << 10;

/// Why adding a file failed, by whose fault.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    /// The name is not usable as a file name (the client's).
    #[error("bad file name: {0}")]
    Name(String),
    /// The upload ended early or could not be read (the client's).
    #[error("the upload was interrupted: {0}")]
    Interrupted(String),
    /// The file is larger than a manifest tree can describe.
    #[error("{0}")]
    TooLarge(String),
    /// Pinned data leaves no room.
    #[error("{0}")]
    Full(String),
    /// The file to share in place cannot be (the client's): not an
    /// absolute path, not a readable regular file, or a store that cannot
    /// serve from files.
    #[error("cannot share in place: {0}")]
    InPlace(String),
    /// The store failed.
    #[error("local store failed: {0}; check the data directory and its disk")]
    Store(String),
}

/// Adds the file streamed by `body` to `store` under `name`, pinned; the
/// stream's chunks may be any size.
pub async fn add<S, E>(
    store: Arc<dyn PieceStore>,
    name: String,
    mut body: S,
) -> Result<FileSummary, AddError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, String>>(UPLOAD_QUEUE_CHUNKS);
    let adding = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            chunks: rx,
            current: Bytes::new(),
        };
        add_file(&*store, reader, &name, &Layout::STANDARD)
    });
    while let Some(chunk) = body.next().await {
        let failed = chunk.is_err();
        let sent = tx.send(chunk.map_err(|e| e.to_string())).await;
        if failed || sent.is_err() {
            break;
        }
    }
    drop(tx);
    let added = adding.await.map_err(|e| AddError::Store(e.to_string()))?;
    added.map_err(|err| match err {
        FileError::Name(e) => AddError::Name(e.to_string()),
        FileError::Io { .. } => AddError::Interrupted(err.to_string()),
        FileError::TooLarge { .. } => AddError::TooLarge(err.to_string()),
        FileError::Store(ref e) if e.is_out_of_space() => AddError::Full(err.to_string()),
        other => AddError::Store(other.to_string()),
    })
}

/// Shares the file at `path` (absolute) where it is, under `name`, pinned:
/// only its manifests are stored; its data pieces are served from the file
/// (`piece_store::file::add_file_in_place`).
pub async fn add_in_place(
    store: Arc<dyn PieceStore>,
    name: String,
    path: std::path::PathBuf,
) -> Result<FileSummary, AddError> {
    if !path.is_absolute() {
        return Err(AddError::InPlace(format!(
            "{} is not an absolute path",
            path.display()
        )));
    }
    let added = tokio::task::spawn_blocking(move || {
        add_file_in_place(&*store, &path, &name, &Layout::STANDARD)
    })
    .await
    .map_err(|e| AddError::Store(e.to_string()))?;
    added.map_err(|err| match err {
        FileError::Name(e) => AddError::Name(e.to_string()),
        FileError::Io { .. }
        | FileError::Store(StoreError::Unsupported | StoreError::BadExtent { .. }) => {
            AddError::InPlace(err.to_string())
        }
        FileError::Store(StoreError::ExtentsFull { .. }) => AddError::Full(err.to_string()),
        FileError::TooLarge { .. } => AddError::TooLarge(err.to_string()),
        FileError::Store(ref e) if e.is_out_of_space() => AddError::Full(err.to_string()),
        other => AddError::Store(other.to_string()),
    })
}

/// A blocking reader over the chunks of an upload.
struct ChannelReader {
    chunks: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(io::Error::other(err)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

/// Why a file cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store does not hold every piece of the file.
    #[error(
        "this node does not hold the whole file ({0}); fetch it first (p2p-cli get, or POST /api/v1/fetches)"
    )]
    Incomplete(String),
    /// The manifest does not parse.
    #[error("{0}")]
    BadManifest(String),
    /// The store failed.
    #[error("local store failed: {0}")]
    Store(String),
}

/// A complete file, ready to stream.
pub struct FileStream {
    /// The file's name, from its manifest.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its bytes in order; an error ends it early (a piece found corrupt
    /// while being read: the response must be cut short, not completed).
    pub chunks: mpsc::Receiver<io::Result<Bytes>>,
}

impl std::fmt::Debug for FileStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStream")
            .field("name", &self.name)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// The file named by `manifest`, if the store holds all of it: checked
/// first (every manifest and piece present), then read back in order on a
/// blocking thread, each piece verified and the whole file hashed.
pub async fn read(store: Arc<dyn PieceStore>, manifest: PieceId) -> Result<FileStream, ReadError> {
    let check = Arc::clone(&store);
    let (name, size) = tokio::task::spawn_blocking(move || complete(&*check, &manifest))
        .await
        .map_err(|e| ReadError::Store(e.to_string()))??;
    let (tx, rx) = mpsc::channel(DOWNLOAD_QUEUE_CHUNKS);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            chunks: tx.clone(),
            buf: Vec::with_capacity(DOWNLOAD_CHUNK_BYTES),
        };
        if let Err(err) = reassemble(&*store, &manifest, &Layout::STANDARD, out) {
            let _ = tx.blocking_send(Err(io::Error::other(err.to_string())));
        }
    });
    Ok(FileStream {
        name,
        size,
        chunks: rx,
    })
}

/// The name and size of the file `manifest` if every manifest and piece
/// of it is in `store`.
fn complete(store: &dyn PieceStore, manifest: &PieceId) -> Result<(String, u64), ReadError> {
    let bytes = store
        .get(manifest)
        .map_err(|e| ReadError::Store(e.to_string()))?
        .ok_or_else(|| ReadError::Incomplete(format!("its manifest {manifest} is missing")))?;
    let root = Manifest::parse(&bytes, &Layout::STANDARD, Level::ROOT)
        .map_err(|e| ReadError::BadManifest(format!("manifest {manifest}: {e}")))?;
    let mut missing: u64 = 0;
    for piece in pieces_of(store, manifest, &Layout::STANDARD) {
        match piece {
            Ok(piece) if store.has(&piece.id) => {}
            Ok(_) => missing += 1,
            Err(FileError::Missing { id }) => {
                return Err(ReadError::Incomplete(format!(
                    "part manifest {id} is missing"
                )));
            }
            Err(err) => return Err(ReadError::BadManifest(err.to_string())),
        }
    }
    if missing > 0 {
        return Err(ReadError::Incomplete(format!(
            "{missing} pieces are missing"
        )));
    }
    Ok((root.name.unwrap_or_default(), root.size))
}

/// A blocking writer that hands what it is given to a channel in chunks of
/// [`DOWNLOAD_CHUNK_BYTES`].
struct ChannelWriter {
    chunks: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(DOWNLOAD_CHUNK_BYTES),
        ));
        self.chunks
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(DOWNLOAD_CHUNK_BYTES - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == DOWNLOAD_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        // The last partial chunk; a client that left does not care.
        let _ = self.send();
    }
}
