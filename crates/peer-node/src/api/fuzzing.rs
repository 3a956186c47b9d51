//! Entry points for the fuzz targets (feature `fuzzing`, not part of the
//! production API): the router without a listener, so a request can be
//! driven through every guard and handler with `tower::ServiceExt::oneshot`,
//! and the parsers of request input that the handlers use.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wire_format::PieceId;

use super::backend::ApiBackend;

/// The API's router over `backend`, as [`serve`](super::serve) runs it, for
/// an API bound at `bound` that requires `token`.
pub fn router(token: String, backend: Arc<dyn ApiBackend>, bound: SocketAddr) -> axum::Router {
    super::routes::router(token, backend, bound)
}

/// The `timeout` query value of `GET /api/v1/pieces/{sha256}`; the error is
/// the 400's text.
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    super::pieces::parse_timeout(text)
}

/// The body of `POST /api/v1/fetches`: the manifest and the output path;
/// the error is the 400's text.
pub fn parse_fetch_request(body: &[u8]) -> Result<(PieceId, Option<PathBuf>), String> {
    super::files::parse_fetch_request(body)
}
