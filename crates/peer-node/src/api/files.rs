//! The whole-file routes: `POST /api/v1/files?name=NAME` (a file streamed
//! in, stored and pinned), `GET /api/v1/files/{manifest}` (a complete file
//! streamed out in order), and the fetch jobs `POST /api/v1/fetches`,
//! `GET` and `DELETE /api/v1/fetches/{id}`.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wire_format::PieceId;

use super::backend::ApiBackend;
use super::json::error;
use crate::files::{self, AddError, ReadError, StartError};

/// Body of `POST /api/v1/files`'s 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStored {
    /// The root manifest: the file's name in the swarm.
    pub manifest: String,
    /// Bytes of the file.
    pub size: u64,
    /// Data pieces.
    pub pieces: u64,
    /// SHA-256 of the whole file.
    pub sha256: String,
}

/// Body of `POST /api/v1/fetches`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchRequest {
    manifest: String,
    path: Option<String>,
}

/// Body of `POST /api/v1/fetches`'s 202.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStarted {
    /// The job's id.
    pub id: String,
    /// True if a job fetching the same file to the same path was running
    /// already: this is that job, and nothing new started.
    pub attached: bool,
}

/// Query of `POST /api/v1/files`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileQuery {
    name: String,
    /// Share this file (absolute path) where it is instead of reading the
    /// body; the body must then be empty.
    in_place: Option<PathBuf>,
}

/// The 404 of a backend that serves pieces only.
fn no_files() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "this node does not serve whole files",
    )
}

/// The sha256 in the path, or why it is not one (a 400's text).
pub(super) fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<PieceId, String> {
    let Path(text) = path.map_err(|e| e.body_text())?;
    text.parse()
        .map_err(|e| format!("bad sha256 {text:?}: {e}; give the 64 hex digits"))
}

pub(super) async fn post_file(
    State(backend): State<Arc<dyn ApiBackend>>,
    query: Result<Query<FileQuery>, QueryRejection>,
    req: Request,
) -> Response {
    let Some(files) = backend.files() else {
        return no_files();
    };
    let Query(FileQuery { name, in_place }) = match query {
        Ok(query) => query,
        Err(e) => {
            let text = format!(
                "{}; name the file: ?name=NAME (and ?in_place=/ABS/PATH to share a file where it is)",
                e.body_text()
            );
            return error(StatusCode::BAD_REQUEST, text);
        }
    };
    let added = match in_place {
        Some(path) => {
            // Nothing may come with it: a body would be a second file.
            let mut body = req.into_body().into_data_stream();
            if let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await
                && !chunk.is_empty()
            {
                return error(
                    StatusCode::BAD_REQUEST,
                    "a file shared in place is read by the node: send no body with ?in_place",
                );
            }
            files::add_in_place(files.store, name, path).await
        }
        None => files::add(files.store, name, req.into_body().into_data_stream()).await,
    };
    match added {
        Ok(summary) => (
            StatusCode::CREATED,
            Json(FileStored {
                manifest: summary.manifest.to_string(),
                size: summary.size,
                pieces: summary.pieces,
                sha256: summary.sha256.to_string(),
            }),
        )
            .into_response(),
        Err(err) => {
            let status = match err {
                AddError::Name(_) | AddError::Interrupted(_) | AddError::InPlace(_) => {
                    StatusCode::BAD_REQUEST
                }
                AddError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                AddError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
                AddError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, err.to_string())
        }
    }
}

pub(super) async fn get_file(
    State(backend): State<Arc<dyn ApiBackend>>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(files) = backend.files() else {
        return no_files();
    };
    let id = match parse_id(path) {
        Ok(id) => id,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    let stream = match files::read(files.store, id).await {
        Ok(stream) => stream,
        Err(err) => {
            let status = match err {
                ReadError::Incomplete(_) => StatusCode::NOT_FOUND,
                ReadError::BadManifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ReadError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(status, err.to_string());
        }
    };
    let chunks = futures_util::stream::unfold(stream.chunks, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut response = Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(stream.size));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    // Manifest names exclude quotes' troublemakers (control characters, `/`,
    // `\`); a name that still does not fit a header is left out.
    if let Ok(value) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        stream.name.replace('"', "_")
    )) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    response
}

/// The manifest and output path a `POST /api/v1/fetches` body names, or
/// why it names none (a 400's text). Whether the path can be written is the
/// job's check, not this one's.
pub(super) fn parse_fetch_request(body: &[u8]) -> Result<(PieceId, Option<PathBuf>), String> {
    let request: FetchRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "bad request body: {e}; send {{\"manifest\": \"<64 hex>\", \"path\": \"/absolute/output\" or null}}"
        )
    })?;
    let manifest: PieceId = request
        .manifest
        .parse()
        .map_err(|e| format!("bad manifest {:?}: {e}", request.manifest))?;
    Ok((manifest, request.path.map(PathBuf::from)))
}

/// The body is JSON whatever its `Content-Type` says (`curl -d` sends a
/// form type by default).
pub(super) async fn post_fetch(
    State(backend): State<Arc<dyn ApiBackend>>,
    body: Bytes,
) -> Response {
    let Some(files) = backend.files() else {
        return no_files();
    };
    let (manifest, path) = match parse_fetch_request(&body) {
        Ok(request) => request,
        Err(text) => return error(StatusCode::BAD_REQUEST, text),
    };
    match files.jobs.start(manifest, path) {
        Ok((id, attached)) => {
            (StatusCode::ACCEPTED, Json(FetchStarted { id, attached })).into_response()
        }
        Err(err @ StartError::Busy { .. }) => error(StatusCode::TOO_MANY_REQUESTS, err.to_string()),
        Err(err @ StartError::Path(_)) => error(StatusCode::BAD_REQUEST, err.to_string()),
    }
}

fn job_response(view: Option<files::JobView>, id: &str) -> Response {
    match view {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no fetch job {id:?} (finished jobs are kept only for a while)"),
        ),
    }
}

pub(super) async fn get_fetch(
    State(backend): State<Arc<dyn ApiBackend>>,
    Path(id): Path<String>,
) -> Response {
    match backend.files() {
        Some(files) => job_response(files.jobs.get(&id), &id),
        None => no_files(),
    }
}

pub(super) async fn delete_fetch(
    State(backend): State<Arc<dyn ApiBackend>>,
    Path(id): Path<String>,
) -> Response {
    match backend.files() {
        Some(files) => job_response(files.jobs.cancel(&id), &id),
        None => no_files(),
    }
}

/// Property tests of [`parse_fetch_request`], the proptest equivalent of the
/// `api_input` fuzz target's body checks (fuzz/). A fixed seed keeps them
/// deterministic; set `PROPTEST_RNG_SEED=<u64>` to explore other inputs.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::RngSeed;

    use super::*;

    const SEED: u64 = 0x6665_7463_6862_6f64;

    fn config() -> ProptestConfig {
        let mut config = ProptestConfig::with_cases(512);
        if matches!(config.rng_seed, RngSeed::Random) {
            config.rng_seed = RngSeed::Fixed(SEED);
        }
        config
    }

    fn body() -> impl Strategy<Value = (PieceId, Option<String>, bool, String)> {
        (
            any::<[u8; 32]>().prop_map(PieceId::from_bytes),
            prop::option::of(any::<String>()),
            any::<bool>(),
            "[ \t\n]{0,2}",
        )
            .prop_map(|(id, path, upper, space)| (id, path, upper, space))
    }

    fn encode(id: PieceId, path: &Option<String>, upper: bool, space: &str) -> String {
        let hex = if upper {
            id.to_hex().to_uppercase()
        } else {
            id.to_hex()
        };
        let path = serde_json::to_string(path).unwrap();
        format!("{{{space}\"manifest\":{space}\"{hex}\",\"path\":{space}{path}}}")
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn a_valid_body_parses_to_what_it_names((id, path, upper, space) in body()) {
            let json = encode(id, &path, upper, &space);
            let parsed = parse_fetch_request(json.as_bytes());
            prop_assert_eq!(parsed, Ok((id, path.map(PathBuf::from))));
        }

        #[test]
        fn bodies_never_panic_and_only_valid_ids_pass(
            (id, path, upper, space) in body(),
            flips in prop::collection::vec((any::<Index>(), 0..8u8), 0..=3),
            cut in any::<Index>(),
            noise in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = encode(id, &path, upper, &space).into_bytes();
            for (index, bit) in &flips {
                let at = index.index(bytes.len());
                bytes[at] ^= 1 << bit;
            }
            for candidate in [&bytes[..], &bytes[..cut.index(bytes.len())], &noise[..]] {
                if let Ok((manifest, _)) = parse_fetch_request(candidate) {
                    // Whatever passes names a real id, spelt in the body.
                    let text = String::from_utf8_lossy(candidate).to_lowercase();
                    prop_assert!(text.contains(&manifest.to_hex()));
                }
            }
        }

        #[test]
        fn unknown_fields_are_refused(
            (id, path, upper, space) in body(),
            key in "[a-z_]{1,12}",
        ) {
            prop_assume!(key != "manifest" && key != "path");
            let json = encode(id, &path, upper, &space);
            let extended = json.replacen('{', &format!("{{\"{key}\":1,"), 1);
            prop_assert!(parse_fetch_request(extended.as_bytes()).is_err());
        }
    }
}
