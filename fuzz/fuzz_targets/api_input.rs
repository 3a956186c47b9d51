//! The local API's own input parsing: paths, queries and bodies, through
//! every guard and handler, but not the HTTP library's parser. Each input
//! becomes an `axum` `Request` driven through the API's router with
//! `tower::ServiceExt::oneshot`, against a backend whose pieces and pins
//! live in a fresh memory store per input; the `timeout` query parser and
//! the `POST /api/v1/fetches` body parser are also called directly.
//!
//! Checks: never a panic, never a 500 (the backend cannot fail, so a 500 can
//! only be malformed input mishandled), every request answered within a
//! deadline, and what `parse_timeout` accepts is exactly `DIGITS[.DIGITS]`
//! seconds within its bounds.
//!
//! Input: byte 0 is flags (bit 0: a valid `Host`, bit 1: the token, bits
//! 2..5: the method, bit 5: a JSON content type); then the path and query up
//! to the first newline; the rest is the body. A `POST` whose body names an
//! output path is not sent: it would start a job writing that path on this
//! machine (the body parser still runs on it).

#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use peer_node::api::fuzzing::{parse_fetch_request, parse_timeout, router};
use peer_node::api::{ApiBackend, BoxFuture, FetchError, FileAccess, MAX_FETCH_TIMEOUT, PutError};
use peer_node::files::Jobs;
use peer_node::metrics::Metrics;
use peer_node::node::{Node, NodeConfig};
use peer_node::swarm::PeerView;
use piece_store::{Durability, MemStore, PieceStore, Retention};
use tokio::runtime::Runtime;
use tower::ServiceExt;
use wire_format::{PieceId, VerifiedPiece};

const TOKEN: &str = "fuzz-token";
/// Longest a request may take; a fetch of a piece the store lacks fails at
/// once, so only a hang takes this long.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

struct Shared {
    runtime: Runtime,
    metrics: Metrics,
    jobs: Arc<Jobs>,
    bound: SocketAddr,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        // Fetch jobs need a node's exchange; this one never runs, so a job
        // finds no peer and ends.
        let jobs = runtime.block_on(async {
            let mut config = NodeConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
            config.target_outbound = 0;
            config.fetch_timeout = Duration::from_millis(100);
            let node = Node::bind(config).await.expect("a node on loopback");
            let jobs = Arc::clone(node.shared().jobs());
            // Keep the listener bound (and nothing accepted) for the process.
            std::mem::forget(node);
            jobs
        });
        Shared {
            runtime,
            metrics: Metrics::new(),
            jobs,
            bound: SocketAddr::from((Ipv4Addr::LOCALHOST, 7070)),
        }
    })
}

/// Pieces and pins in memory; fetches answer from the store or "not found".
struct Backend {
    store: Arc<MemStore>,
}

impl ApiBackend for Backend {
    fn peers(&self) -> Vec<PeerView> {
        Vec::new()
    }

    fn metrics(&self) -> &Metrics {
        &shared().metrics
    }

    fn fetch_piece(
        &self,
        id: PieceId,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        let held = self.store.get(&id);
        Box::pin(async move {
            match held {
                Ok(Some(bytes)) => Ok(bytes),
                _ => Err(FetchError::NotFound),
            }
        })
    }

    fn put_piece(&self, bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>> {
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            let piece = VerifiedPiece::new(bytes).map_err(|e| PutError::Invalid(e.to_string()))?;
            let id = piece.id();
            store
                .put(piece, Retention::Pinned, Durability::Wait)
                .map_err(|e| PutError::Full(e.to_string()))?;
            Ok(id)
        })
    }

    fn files(&self) -> Option<FileAccess> {
        Some(FileAccess {
            store: Arc::clone(&self.store) as Arc<dyn PieceStore>,
            jobs: Arc::clone(&shared().jobs),
        })
    }
}

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW",
];

fn check_timeout_parser(text: &str) {
    let Ok(timeout) = parse_timeout(text) else {
        return;
    };
    assert!(
        !timeout.is_zero() && timeout <= MAX_FETCH_TIMEOUT,
        "{text:?}"
    );
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    assert!(!whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()));
    assert!(fraction.len() <= 9 && fraction.bytes().all(|b| b.is_ascii_digit()));
    assert!(!text.ends_with('.'), "{text:?}");
    assert_eq!(whole.parse::<u64>().ok(), Some(timeout.as_secs()));
    let nanos = format!("{fraction:0<9}").parse::<u32>().unwrap_or(0);
    assert_eq!(timeout.subsec_nanos(), nanos, "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let target_text = String::from_utf8_lossy(target);
    check_timeout_parser(&target_text);
    if let Some((_, query)) = target_text.split_once("timeout=") {
        check_timeout_parser(query.split('&').next().unwrap_or(""));
    }
    let fetch = parse_fetch_request(body);
    let method = METHODS[usize::from((flags >> 2) & 7)];
    if method == "POST" && matches!(fetch, Ok((_, Some(_)))) {
        return;
    }
    let mut request =
        Request::builder().method(Method::from_bytes(method.as_bytes()).expect("a method"));
    request = request.uri(target);
    if flags & 1 != 0 {
        request = request.header("host", "127.0.0.1:7070");
    }
    if flags & 2 != 0 {
        request = request.header("authorization", format!("Bearer {TOKEN}"));
    }
    if flags & 0x20 != 0 {
        request = request.header("content-type", "application/json");
    }
    request = request.header("content-length", body.len());
    // A target the HTTP library would refuse never reaches our handlers.
    let Ok(request) = request.body(Body::from(body.to_vec())) else {
        return;
    };
    let shared = shared();
    let backend: Arc<dyn ApiBackend> = Arc::new(Backend {
        store: Arc::new(MemStore::new(64 << 20)),
    });
    let app = router(TOKEN.to_owned(), backend, shared.bound);
    let response = shared
        .runtime
        .block_on(async { tokio::time::timeout(REQUEST_DEADLINE, app.oneshot(request)).await });
    let response = response
        .unwrap_or_else(|_| {
            panic!("{method} {target_text:?} not answered within {REQUEST_DEADLINE:?}")
        })
        .unwrap_or_else(|never| match never {});
    assert_ne!(
        response.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "{method} {target_text:?}"
    );
});
