//! The local API's piece routes end to end: real in-process nodes, each with
//! `api::serve` over its `NodeApi` as the binary wires it, on 127.0.0.1:0,
//! and raw HTTP/1.1 requests over a `TcpStream`. `tests/api.rs` covers the
//! routes' every status against a backend double; these check the same
//! routes reach the node's store and the swarm.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peer_node::api::NodeApi;
use peer_node::api::{self, ApiBackend, SHA256_HEADER};
use peer_node::metrics::Metric;
use peer_node::testing::wait_for;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use wire_format::PieceId;
use wire_format::limits::{ASK_PROGRESS_TIMEOUT, PIECE_MAX};

use common::{SOON, TestNode, piece};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Deadline for one whole request and its response.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A node with its API served on a port of its own.
struct ApiNode {
    node: TestNode,
    api: SocketAddr,
    /// Dropped with the test: the API stops.
    _stop: oneshot::Sender<()>,
}

impl ApiNode {
    async fn start(target_outbound: usize) -> Self {
        let node = TestNode::start(|c| c.target_outbound = target_outbound).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = listener.local_addr().unwrap();
        let backend = Arc::new(NodeApi(Arc::clone(&node.shared))) as Arc<dyn ApiBackend>;
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(api::serve(listener, TOKEN.to_owned(), backend, async {
            let _ = stopped.await;
        }));
        Self {
            node,
            api,
            _stop: stop,
        }
    }

    /// Node `a`, and node `b` with one outbound connection, to `a`.
    async fn connected_pair() -> (Self, Self) {
        let a = Self::start(0).await;
        let b = Self::start(1).await;
        b.node.shared.add_candidate(a.node.addr.into());
        let connected = wait_for(SOON, || {
            b.node.shared.connected_node_ids() == vec![a.node.id()]
                && a.node.shared.connected_node_ids() == vec![b.node.id()]
        })
        .await;
        assert!(connected, "the nodes did not connect");
        (a, b)
    }

    async fn get_piece(&self, id: PieceId) -> Response {
        self.request("GET", &format!("/api/v1/pieces/{id}"), true, &[])
            .await
    }

    async fn post_piece(&self, body: &[u8]) -> Response {
        self.request("POST", "/api/v1/pieces", true, body).await
    }

    /// One request with our `Host`, the token if `authorized`, and `body`
    /// with its `Content-Length`; the response read until the server closes.
    async fn request(&self, method: &str, path: &str, authorized: bool, body: &[u8]) -> Response {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.api,
            body.len()
        );
        if authorized {
            head.push_str(&format!("Authorization: Bearer {TOKEN}\r\n"));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        let raw = tokio::time::timeout(EXCHANGE_TIMEOUT, send_and_read(self.api, request))
            .await
            .expect("no complete response before the deadline");
        Response::parse(&raw)
    }
}

/// Writes `request` while reading the response until the server closes: a
/// server may answer (413) before it has read the whole body, and then
/// close with a reset once the response is out.
async fn send_and_read(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        // Handed back, not dropped: dropping it would half-close the
        // connection before the response.
        writer
    });
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => {
                break;
            }
            Err(err) => panic!("reading the response: {err}"),
        }
    }
    write.abort();
    raw
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A response with a `Content-Length` body (the API sends no other).
    fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
        let head = std::str::from_utf8(&raw[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .unwrap_or_else(|| panic!("status line {status_line:?}"))
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_ascii_lowercase(), value.trim().to_owned())
            })
            .collect();
        let response = Self {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        };
        let len = response
            .header("content-length")
            .unwrap_or_else(|| panic!("no content-length: {response:?}"));
        assert_eq!(
            response.body.len(),
            len.parse::<usize>().unwrap(),
            "body cut"
        );
        response
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Asserts `status` with an `{"error": "..."}` body (that one field).
    fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        let json = self.json();
        let fields = json.as_object().unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["error"], "{json}");
        assert!(!fields["error"].as_str().unwrap().is_empty(), "{json}");
    }

    /// Asserts a 200 carrying exactly `bytes`, named `id`.
    fn assert_piece(&self, id: PieceId, bytes: &[u8]) {
        assert_eq!(self.status, 200, "{:?}", self.headers);
        assert_eq!(self.header(SHA256_HEADER), Some(id.to_hex().as_str()));
        assert!(self.body == bytes, "the body differs from the piece");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_piece_is_stored_served_by_its_node_and_fetched_through_the_swarm_by_another() {
    let (a, b) = ApiNode::connected_pair().await;
    let p = piece(1, PIECE_MAX);
    let bytes = p.bytes().to_vec();

    let posted = a.post_piece(&bytes).await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let json = posted.json();
    assert_eq!(
        json,
        serde_json::json!({"sha256": p.id().to_hex(), "size": 1_048_576})
    );
    let store = a.node.shared.store();
    assert!(store.has(&p.id()) && store.is_pinned(&p.id()));

    // From a's own store: no fetch.
    a.get_piece(p.id()).await.assert_piece(p.id(), &bytes);
    assert_eq!(a.node.metric(Metric::FetchesStartedTotal), 0);

    // b has it only from a, through the swarm.
    assert!(!b.node.shared.store().has(&p.id()));
    b.get_piece(p.id()).await.assert_piece(p.id(), &bytes);
    assert_eq!(b.node.metric(Metric::FetchesSucceededTotal), 1);
    assert_eq!(a.node.metric(Metric::PiecesServedTotal), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_nobody_has_is_404_at_once_not_at_the_deadline() {
    let (a, b) = ApiNode::connected_pair().await;
    let missing = PieceId::of(b"nobody has this");
    let asked = Instant::now();
    // Without a `timeout` the fetch gets the node's (FETCH_TIMEOUT).
    let response = b.get_piece(missing).await;
    let took = asked.elapsed();
    response.assert_error(404);
    // a was asked and said DONT_HAVE, so there was nobody left to wait for:
    // not even one ask deadline passed.
    assert_eq!(b.node.metric(Metric::DontHaveReceivedTotal), 1);
    assert!(took < ASK_PROGRESS_TIMEOUT, "404 after {took:?}");
    assert_eq!(b.node.metric(Metric::FetchesNotFoundTotal), 1);
    assert!(!a.node.shared.store().has(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_oversized_upload_and_a_request_without_the_token_are_refused() {
    let node = ApiNode::start(0).await;
    let p = piece(2, 64 << 10);

    node.post_piece(b"").await.assert_error(400);
    node.post_piece(&vec![0x5a; PIECE_MAX + 1])
        .await
        .assert_error(413);
    node.request("POST", "/api/v1/pieces", false, p.bytes())
        .await
        .assert_error(401);
    assert!(node.node.shared.store().list().is_empty());

    // The same piece, held: still 401 without the token, 200 with it.
    node.node.hold(&p).unwrap();
    let path = format!("/api/v1/pieces/{}", p.id());
    node.request("GET", &path, false, &[])
        .await
        .assert_error(401);
    node.get_piece(p.id()).await.assert_piece(p.id(), p.bytes());
}
