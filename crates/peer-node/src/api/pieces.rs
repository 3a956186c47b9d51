//! The piece routes: `GET /api/v1/pieces/{sha256}?timeout=SECS` (the
//! piece, from the store or the swarm, sent only once verified) and `POST
//! /api/v1/pieces` (one piece, stored and pinned), with their errors.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use wire_format::PieceId;
use wire_format::limits::{PIECE_MAX, PIECE_MIN};

use super::backend::{
    ApiBackend, EXPLAIN_HEADER, ExplainedPiece, FETCH_GRACE, MAX_FETCH_TIMEOUT, PutError,
    SHA256_HEADER,
};
use super::json::{PieceStored, error};
use crate::pieces::FetchError;

/// Most decimal places a `timeout` may have: nanoseconds.
const TIMEOUT_MAX_DECIMALS: usize = 9;

/// Characters of a rejected `timeout` value quoted back in the error.
pub(super) const TIMEOUT_ECHO_CHARS: usize = 24;

impl FetchError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl PutError {
    pub(super) fn status(&self) -> StatusCode {
        match self {
            Self::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Query of `GET /api/v1/pieces/{sha256}`. Unknown parameters are refused,
/// so a misspelt `timeout` does not silently fall back to the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FetchQuery {
    /// Seconds, parsed by [`parse_timeout`].
    timeout: Option<String>,
}

pub(super) async fn get_piece(
    State(backend): State<Arc<dyn ApiBackend>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<FetchQuery>, QueryRejection>,
) -> Response {
    let id = match path {
        Ok(Path(text)) => match text.parse::<PieceId>() {
            Ok(id) => id,
            Err(err) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("bad piece id in the path: {err}"),
                );
            }
        },
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("bad piece id in the path: {}", rejection.body_text()),
            );
        }
    };
    let timeout = match query {
        Ok(Query(FetchQuery { timeout: None })) => backend.default_fetch_timeout(),
        Ok(Query(FetchQuery {
            timeout: Some(text),
        })) => match parse_timeout(&text) {
            Ok(timeout) => timeout,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "bad query: {}; the only parameter is timeout=SECS",
                    rejection.body_text()
                ),
            );
        }
    };
    match fetch_within(backend.as_ref(), id, timeout).await {
        Ok(fetched) => {
            let mut response = piece_response(id, fetched.bytes);
            // The per-peer account of the fetch (`p2p-cli ask --explain`):
            // JSON of at most EXPLAIN_MAX_PEERS short rows, always ASCII.
            if let Some(explain) = fetched.explain
                && let Ok(json) = serde_json::to_string(&explain)
                && let Ok(value) = HeaderValue::try_from(json)
            {
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(EXPLAIN_HEADER), value);
            }
            response
        }
        Err(err) => {
            tracing::debug!(piece = %id, ?timeout, %err, "API piece request failed");
            let message = match err {
                FetchError::Deadline => format!("{err} (timeout was {}s)", timeout.as_secs_f64()),
                _ => err.to_string(),
            };
            error(err.status(), message)
        }
    }
}

/// Asks the backend for `id`, giving up [`FETCH_GRACE`] after `timeout` if
/// it has not answered by then (dropping its future).
pub(super) async fn fetch_within(
    backend: &dyn ApiBackend,
    id: PieceId,
    timeout: Duration,
) -> Result<ExplainedPiece, FetchError> {
    let fetch = backend.fetch_piece_explained(id, timeout);
    match tokio::time::timeout(timeout.saturating_add(FETCH_GRACE), fetch).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(piece = %id, ?timeout, "backend did not end a fetch at its deadline");
            Err(FetchError::Deadline)
        }
    }
}

/// The 200 of `GET /api/v1/pieces/{sha256}`. The body is a single known-size
/// buffer, so hyper sends it with a `Content-Length`.
pub(super) fn piece_response(id: PieceId, bytes: Bytes) -> Response {
    let Ok(sha256) = HeaderValue::try_from(id.to_hex()) else {
        // Hex is always a valid header value; never reached.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not render the piece id as a header",
        );
    };
    (
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (HeaderName::from_static(SHA256_HEADER), sha256),
        ],
        bytes,
    )
        .into_response()
}

/// Parses a `timeout` value: `DIGITS` or `DIGITS.DIGITS` seconds (at most
/// [`TIMEOUT_MAX_DECIMALS`] decimals), more than zero and at most
/// [`MAX_FETCH_TIMEOUT`]. Signs, exponents, `inf` and `NaN` are refused, so
/// the value means exactly what it reads as. The error is the 400 message.
pub(super) fn parse_timeout(text: &str) -> Result<Duration, String> {
    let max = MAX_FETCH_TIMEOUT.as_secs();
    let refuse = |why: &str| {
        let shown: String = text.chars().take(TIMEOUT_ECHO_CHARS).collect();
        format!(
            "bad timeout {shown:?}: {why}; give seconds such as 10 or 2.5, \
             more than 0 and at most {max}"
        )
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !all_digits(whole) || (text.contains('.') && !all_digits(fraction)) {
        return Err(refuse("not a number of seconds"));
    }
    if fraction.len() > TIMEOUT_MAX_DECIMALS {
        return Err(refuse(&format!(
            "more than {TIMEOUT_MAX_DECIMALS} decimal places"
        )));
    }
    // Only digits remain, so a parse error is an overflow.
    let Ok(secs) = whole.parse::<u64>() else {
        return Err(refuse("above the maximum"));
    };
    let nanos = (0..TIMEOUT_MAX_DECIMALS).fold(0u32, |nanos, i| {
        let digit = fraction
            .as_bytes()
            .get(i)
            .map_or(0, |b| u32::from(b - b'0'));
        nanos * 10 + digit
    });
    // `nanos` < 1e9, so `Duration::new` cannot carry into (and overflow) the
    // seconds.
    let timeout = Duration::new(secs, nanos);
    if timeout.is_zero() {
        return Err(refuse("zero"));
    }
    if timeout > MAX_FETCH_TIMEOUT {
        return Err(refuse("above the maximum"));
    }
    Ok(timeout)
}

pub(super) fn piece_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "body too large: a piece is {PIECE_MIN} to {PIECE_MAX} bytes; \
             add larger data as a file"
        ),
    )
}

pub(super) fn piece_empty() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("empty body: a piece is {PIECE_MIN} to {PIECE_MAX} bytes"),
    )
}

pub(super) async fn post_piece(
    State(backend): State<Arc<dyn ApiBackend>>,
    req: Request,
) -> Response {
    // Refuse an over-long declared body before reading any of it: the client
    // may be waiting for `100 Continue`, or may never send that much.
    match declared_length(req.headers()) {
        Some(len) if usize::try_from(len).map_or(true, |len| len > PIECE_MAX) => {
            return piece_too_large();
        }
        Some(0) => return piece_empty(),
        _ => {}
    }
    // Reads at most the route's body limit (`PIECE_MAX`).
    let bytes = match Bytes::from_request(req, &()).await {
        Ok(bytes) => bytes,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return piece_too_large();
        }
        Err(rejection) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("could not read the body: {}", rejection.body_text()),
            );
        }
    };
    if bytes.is_empty() {
        return piece_empty();
    }
    if bytes.len() > PIECE_MAX {
        return piece_too_large();
    }
    let size = bytes.len() as u64;
    match backend.put_piece(bytes).await {
        Ok(sha256) => (
            StatusCode::CREATED,
            axum::Json(PieceStored { sha256, size }),
        )
            .into_response(),
        Err(err) => {
            tracing::debug!(size, %err, "API piece upload failed");
            error(err.status(), err.to_string())
        }
    }
}

/// The request's `Content-Length`, if it has one (hyper has already refused
/// malformed or conflicting values).
pub(super) fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Property tests of [`parse_timeout`], the proptest equivalent of the
/// `api_input` fuzz target's checks (fuzz/). A fixed seed keeps them
/// deterministic; set `PROPTEST_RNG_SEED=<u64>` to explore other inputs.
#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::test_runner::RngSeed;

    use super::*;

    const SEED: u64 = 0x7469_6d65_6f75_7431;

    fn config() -> ProptestConfig {
        let mut config = ProptestConfig::with_cases(512);
        if matches!(config.rng_seed, RngSeed::Random) {
            config.rng_seed = RngSeed::Fixed(SEED);
        }
        config
    }

    /// The value `text` reads as, in nanoseconds, computed independently of
    /// the parser: `None` unless it is `DIGITS` or `DIGITS.DIGITS`.
    fn reading(text: &str) -> Option<u128> {
        let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) {
            return None;
        }
        if text.contains('.') && fraction.is_empty() {
            return None;
        }
        let whole: u128 = whole.parse().ok()?;
        let fraction = format!("{fraction:0<9}");
        let nanos: u128 = fraction.get(..9)?.parse().ok()?;
        Some(whole * 1_000_000_000 + nanos)
    }

    /// Text made of the characters a timeout is written with, and the ones
    /// it is most often written wrongly with.
    fn timeout_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,4}(\\.[0-9]{0,11})?",
            "[0-9.+eE_ -]{0,16}",
            "(0|00|600|599|601|18446744073709551616)(\\.[0-9]{1,10})?",
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn parse_timeout_accepts_exactly_the_positive_decimals_up_to_the_maximum(
            text in timeout_text(),
        ) {
            let max = MAX_FETCH_TIMEOUT.as_nanos();
            let decimals = text.split_once('.').map_or(0, |(_, f)| f.len());
            let expected = reading(&text)
                .filter(|&nanos| nanos > 0 && nanos <= max && decimals <= TIMEOUT_MAX_DECIMALS);
            match parse_timeout(&text) {
                Ok(timeout) => prop_assert_eq!(Some(timeout.as_nanos()), expected, "{:?}", text),
                Err(message) => {
                    prop_assert_eq!(expected, None, "{:?} refused: {}", text, message);
                    prop_assert!(message.starts_with("bad timeout "));
                    // The echo is bounded whatever the input's length.
                    prop_assert!(message.len() < 200 + 4 * TIMEOUT_ECHO_CHARS);
                }
            }
        }
    }
}
