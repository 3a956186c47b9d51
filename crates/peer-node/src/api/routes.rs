//! The router: every route and its guards, the small read-only routes
//! (`/`, `/metrics`, peers, stats), the fallbacks, and [`serve`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use wire_format::limits::PIECE_MAX;

use super::backend::ApiBackend;
use super::files::{delete_fetch, get_fetch, get_file, post_fetch, post_file};
use super::guard::{Guard, LocalAddr, NoDelayListener, check_host, require_token};
use super::json::{PeersResponse, error};
use super::pieces::{get_piece, post_piece};
use super::status;
use super::store::{delete_pin, get_store, post_gc, post_verify, put_pin};

/// Largest request body accepted: one piece plus room for framing. Handlers
/// that stream larger bodies (whole files) set their own limit.
pub const MAX_BODY_BYTES: usize = (1 << 20) + (64 << 10);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves the API on `listener` until `shutdown` completes, then stops
/// accepting and waits for requests in progress (the caller bounds that wait
/// with its own grace period). `token` is the value clients must present; an
/// empty token is refused, since it would let every request in.
pub async fn serve(
    listener: TcpListener,
    token: String,
    backend: Arc<dyn ApiBackend>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if token.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the API token is empty",
        ));
    }
    let bound = listener.local_addr()?;
    let app = router(token, backend, bound);
    tracing::info!(addr = %bound, "local API listening");
    // Responses are written as they are produced: no Nagle delay on a
    // piece's last segment.
    let listener = NoDelayListener(listener);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<LocalAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

pub(super) fn router(token: String, backend: Arc<dyn ApiBackend>, bound: SocketAddr) -> Router {
    let guard = Guard {
        token: Arc::from(token.into_bytes()),
        bound,
    };
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(prometheus))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/stats", get(stats))
        .route(
            "/api/v1/pieces",
            // Chunked bodies carry no length to check up front; this limit
            // stops them while they are read.
            post(post_piece).layer(DefaultBodyLimit::max(PIECE_MAX)),
        )
        .route("/api/v1/pieces/{sha256}", get(get_piece))
        .route(
            "/api/v1/files",
            // A file of any size, streamed: never held whole.
            post(post_file).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/files/{manifest}", get(get_file))
        .route("/api/v1/fetches", post(post_fetch))
        .route("/api/v1/fetches/{id}", get(get_fetch).delete(delete_fetch))
        .route("/api/v1/store", get(get_store))
        .route("/api/v1/pins/{sha256}", put(put_pin).delete(delete_pin))
        .route("/api/v1/gc", post(post_gc))
        .route("/api/v1/verify", post(post_verify))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend)
        // The last layer added runs first: body limit, Host, then token.
        .layer(from_fn_with_state(guard.clone(), require_token))
        .layer(from_fn_with_state(guard, check_host))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn index(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        status::render(&*backend),
    )
        .into_response()
}

async fn prometheus(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
        )],
        backend.metrics().render_prometheus(),
    )
        .into_response()
}

async fn peers(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    axum::Json(PeersResponse {
        peers: backend.peers(),
    })
    .into_response()
}

async fn stats(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    axum::Json(backend.metrics().to_json_map()).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {}; this node serves /api/v1/peers, /api/v1/stats, \
             /api/v1/pieces, /api/v1/files, /api/v1/fetches, /api/v1/store, /api/v1/pins, \
             /api/v1/gc and /api/v1/verify",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use axum::http::HeaderMap;
    use axum::http::header::AUTHORIZATION;
    use wire_format::NodeId;

    use std::time::Duration;

    use bytes::Bytes;
    use wire_format::PieceId;

    use super::super::backend::*;
    use super::super::guard::*;
    use super::super::json::*;
    use super::super::pieces::*;
    use super::*;
    use crate::metrics::Metrics;
    use crate::pieces::FetchError;
    use crate::swarm::{BanView, Direction, PeerSource, PeerState, PeerView};

    fn own() -> Vec<SocketAddr> {
        vec!["127.0.0.1:7070".parse().unwrap()]
    }

    #[test]
    fn host_values() {
        let own = own();
        for ok in [
            "127.0.0.1:7070",
            "127.0.0.1",
            "127.1.2.3:7070",
            "localhost",
            "localhost:7070",
            "LocalHost:7070",
            "[::1]:7070",
            "[::1]",
            "[::ffff:127.0.0.1]:7070",
        ] {
            assert!(host_allowed(ok, &own), "{ok}");
        }
        for bad in [
            "",
            "evil.example:7070",
            "evil.example",
            "localhost.:7070",
            "x.localhost:7070",
            "localhost:7071",
            "127.0.0.1:7071",
            "127.0.0.1:+7070",
            "127.0.0.1:",
            "127.0.0.1:7070:1",
            "[::1]:7071",
            "[::1]x",
            "::1",
            "[::1%lo]:7070",
            "10.0.0.1:7070",
            "0x7f.0.0.1:7070",
            "2130706433:7070",
            "127.0.0.1 :7070",
        ] {
            assert!(!host_allowed(bad, &own), "{bad}");
        }
    }

    #[test]
    fn own_non_loopback_address_is_allowed() {
        let own: Vec<SocketAddr> = vec![
            "0.0.0.0:7070".parse().unwrap(),
            "192.0.2.5:7070".parse().unwrap(),
        ];
        assert!(host_allowed("192.0.2.5:7070", &own));
        assert!(host_allowed("localhost:7070", &own));
        assert!(!host_allowed("192.0.2.6:7070", &own));
        let v6: Vec<SocketAddr> = vec!["[2001:db8::1]:7070".parse().unwrap()];
        assert!(host_allowed("[2001:db8::1]:7070", &v6));
        assert!(!host_allowed("[2001:db8::2]:7070", &v6));
    }

    #[test]
    fn bearer_parsing() {
        let token = b"abcd";
        let headers = |values: &[&str]| {
            let mut map = HeaderMap::new();
            for v in values {
                map.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert!(bearer_matches(&headers(&["Bearer abcd"]), token));
        assert!(bearer_matches(&headers(&["bearer abcd"]), token));
        assert!(!bearer_matches(&headers(&[]), token));
        assert!(!bearer_matches(&headers(&["Bearer abce"]), token));
        assert!(!bearer_matches(&headers(&["Bearer abc"]), token));
        assert!(!bearer_matches(&headers(&["Bearer abcde"]), token));
        assert!(!bearer_matches(&headers(&["Bearer "]), token));
        assert!(!bearer_matches(&headers(&["Basic abcd"]), token));
        assert!(!bearer_matches(&headers(&["abcd"]), token));
        assert!(!bearer_matches(
            &headers(&["Bearer abcd", "Bearer abcd"]),
            token
        ));
    }

    #[test]
    fn timeout_values() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("10", Duration::from_secs(10)),
            ("2.5", ms(2500)),
            ("0.001", ms(1)),
            ("0.000000001", Duration::from_nanos(1)),
            ("007", Duration::from_secs(7)),
            ("1.50", ms(1500)),
            ("600", MAX_FETCH_TIMEOUT),
            ("600.000000000", MAX_FETCH_TIMEOUT),
        ] {
            assert_eq!(parse_timeout(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "0",
            "0.0",
            "0.000000000",
            "-1",
            "+5",
            "abc",
            "1e3",
            "inf",
            "NaN",
            ".5",
            "5.",
            "1.2.3",
            " 1",
            "1 ",
            "1,5",
            "0x10",
            "600.000000001",
            "601",
            "1.0000000001",
            "99999999999999999999999",
            "٣",
        ] {
            let err = parse_timeout(bad).unwrap_err();
            assert!(err.starts_with("bad timeout "), "{bad}: {err}");
            assert!(err.contains("at most 600"), "{bad}: {err}");
        }
        // A long value is quoted only in part.
        let err = parse_timeout(&"9".repeat(10_000)).unwrap_err();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn a_refused_timeout_is_quoted_whole_up_to_the_echo_limit_and_cut_past_it() {
        // Characters, not bytes: a multi-byte digit is never cut in half.
        for unit in ["9", "٣"] {
            let at_limit = unit.repeat(TIMEOUT_ECHO_CHARS);
            let err = parse_timeout(&at_limit).unwrap_err();
            assert!(
                err.starts_with(&format!("bad timeout {at_limit:?}:")),
                "{err}"
            );
            let over = unit.repeat(TIMEOUT_ECHO_CHARS + 1);
            let err = parse_timeout(&over).unwrap_err();
            assert!(
                err.starts_with(&format!("bad timeout {at_limit:?}:")),
                "{err}"
            );
        }
    }

    /// A backend whose fetches never end, and whose stores always fail.
    struct Stuck(Metrics);

    impl ApiBackend for Stuck {
        fn peers(&self) -> Vec<PeerView> {
            Vec::new()
        }
        fn metrics(&self) -> &Metrics {
            &self.0
        }
        fn fetch_piece(
            &self,
            _id: PieceId,
            _timeout: Duration,
        ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
            Box::pin(std::future::pending())
        }
        fn put_piece(&self, _bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>> {
            Box::pin(std::future::ready(Err(PutError::Store("stuck".into()))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_fetch_the_backend_never_ends_is_a_deadline_after_the_grace() {
        let backend = Stuck(Metrics::new());
        let timeout = Duration::from_millis(2500);
        let start = tokio::time::Instant::now();
        let mut fetch = std::pin::pin!(fetch_within(&backend, PieceId::of(b"x"), timeout));
        // Still waiting one tick before the boundary...
        let before = timeout + FETCH_GRACE - Duration::from_millis(1);
        assert!(
            tokio::time::timeout(before, fetch.as_mut()).await.is_err(),
            "gave up before timeout + grace"
        );
        // ...and gives up exactly at it.
        assert_eq!(fetch.await, Err(FetchError::Deadline));
        assert_eq!(start.elapsed(), timeout + FETCH_GRACE);
    }

    #[test]
    fn error_statuses() {
        assert_eq!(
            FetchError::NotFound { asked: 0, known: 0 }.status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(FetchError::Deadline.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            FetchError::Store("x".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            FetchError::Shutdown.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            PutError::Full("x".into()).status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        assert_eq!(
            PutError::Invalid("x".into()).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            PutError::Store("x".into()).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn piece_stored_shape() {
        let stored = PieceStored {
            sha256: PieceId::of(b"a"),
            size: 1,
        };
        let json = serde_json::to_value(&stored).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"sha256": PieceId::of(b"a").to_hex(), "size": 1})
        );
        assert_eq!(serde_json::from_value::<PieceStored>(json).unwrap(), stored);
    }

    #[test]
    fn peer_view_round_trips() {
        let view = PeerView {
            addr: "[::1]:7001".parse().unwrap(),
            node_id: Some(NodeId([0xab; 8])),
            direction: Some(Direction::In),
            state: PeerState::Banned,
            legacy: false,
            source: PeerSource::Pex,
            connected_since: Some(1_700_000_000),
            bytes_in: 1,
            bytes_out: 2,
            last_error: Some("x".into()),
            ban: Some(BanView {
                reason: "lied".into(),
                digest: Some(PieceId::from_bytes([7u8; 32])),
                until: 1_700_003_600,
            }),
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["addr"], "[::1]:7001");
        assert_eq!(json["node_id"], "abababababababab");
        assert_eq!(json["direction"], "in");
        assert_eq!(json["state"], "banned");
        assert_eq!(json["source"], "pex");
        assert_eq!(json["ban"]["digest"], "07".repeat(32));
        let back: PeerView = serde_json::from_value(json).unwrap();
        assert_eq!(back, view);
    }
}
