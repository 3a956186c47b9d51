//! The store routes: `GET /api/v1/store` (pinned files and loose pieces,
//! bytes used and the capacity), `PUT`/`DELETE /api/v1/pins/{sha256}` (pin
//! or unpin a file by its manifest, or a loose piece), `POST /api/v1/gc`
//! (drop what no pinned root reaches), `POST /api/v1/verify` (re-hash
//! everything held).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::backend::ApiBackend;
use super::files::parse_id;
use super::json::error;
use crate::files::{self, ManageError};

/// One pinned file of `GET /api/v1/store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// The file's name, from its manifest (`null` until the manifest is held).
    pub name: Option<String>,
    /// Its root manifest.
    pub manifest: String,
    /// Its size, from its manifest (`null` until the manifest is held).
    pub size: Option<u64>,
}

/// One pinned loose piece of `GET /api/v1/store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceEntry {
    /// The piece.
    pub sha256: String,
    /// Its size (`null` if the store does not hold it).
    pub size: Option<u64>,
}

/// Body of `GET /api/v1/store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreView {
    /// Pinned files.
    pub files: Vec<FileEntry>,
    /// Pinned loose pieces.
    pub pieces: Vec<PieceEntry>,
    /// Bytes of every piece held, pinned or cached.
    pub bytes_used: u64,
    /// The store's capacity (`--max-store`).
    pub bytes_max: u64,
}

/// Body of `POST /api/v1/gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcDone {
    /// Pieces dropped.
    pub pieces: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Body of `POST /api/v1/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyDone {
    /// Pieces hashed, in the store and in the files it serves from.
    pub checked: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Pieces of the store that did not match: deleted if cached,
    /// quarantined if pinned.
    pub corrupt: Vec<String>,
    /// Pieces served from files that no longer match (edited, truncated or
    /// gone): dropped from the index, the files left alone.
    pub dropped: Vec<String>,
}

fn failed(err: &ManageError) -> Response {
    let status = match err {
        ManageError::NotFound(_) => StatusCode::NOT_FOUND,
        ManageError::Store(piece_store::StoreError::TooManyRoots { .. }) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        ManageError::Store(_) | ManageError::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, err.to_string())
}

fn unsupported() -> Response {
    error(StatusCode::NOT_FOUND, "this node does not manage a store")
}

pub(super) async fn get_store(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    let Some(access) = backend.files() else {
        return unsupported();
    };
    match files::listing(access.store).await {
        Ok(listing) => Json(StoreView {
            files: listing
                .files
                .into_iter()
                .map(|f| FileEntry {
                    name: f.name,
                    manifest: f.manifest.to_string(),
                    size: f.size,
                })
                .collect(),
            pieces: listing
                .pieces
                .into_iter()
                .map(|p| PieceEntry {
                    sha256: p.id.to_string(),
                    size: p.size,
                })
                .collect(),
            bytes_used: listing.bytes_used,
            bytes_max: listing.capacity,
        })
        .into_response(),
        Err(err) => failed(&err),
    }
}

pub(super) async fn put_pin(
    State(backend): State<Arc<dyn ApiBackend>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    change_pin(backend.as_ref(), path, true).await
}

pub(super) async fn delete_pin(
    State(backend): State<Arc<dyn ApiBackend>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    change_pin(backend.as_ref(), path, false).await
}

/// Pins (`pin`) or unpins the root the path names.
async fn change_pin(
    backend: &dyn ApiBackend,
    path: Result<Path<String>, PathRejection>,
    pin: bool,
) -> Response {
    let Some(access) = backend.files() else {
        return unsupported();
    };
    let id = match parse_id(path) {
        Ok(id) => id,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    let change = if pin {
        files::pin(access.store, id).await
    } else {
        files::unpin(access.store, id).await
    };
    match change {
        Ok(change) => Json(change).into_response(),
        Err(err) => failed(&err),
    }
}

pub(super) async fn post_gc(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    let Some(access) = backend.files() else {
        return unsupported();
    };
    match files::gc(access.store).await {
        Ok(report) => Json(GcDone {
            pieces: report.pieces,
            bytes: report.bytes,
        })
        .into_response(),
        Err(err) => failed(&err),
    }
}

pub(super) async fn post_verify(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    let Some(access) = backend.files() else {
        return unsupported();
    };
    let hex = |ids: Vec<wire_format::PieceId>| ids.iter().map(ToString::to_string).collect();
    match files::verify(access.store).await {
        Ok(report) => Json(VerifyDone {
            checked: report.checked,
            bytes: report.bytes,
            corrupt: hex(report.corrupt),
            dropped: hex(report.dropped),
        })
        .into_response(),
        Err(err) => failed(&err),
    }
}
