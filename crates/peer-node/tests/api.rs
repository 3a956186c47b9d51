//! The local API over real sockets: raw HTTP/1.1 against `api::serve` on
//! port 0, with a backend double standing in for the node: a fixed peer list,
//! or an in-memory piece store with a few ids that answer with each error.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use peer_node::api::{
    self, ApiBackend, BanView, BoxFuture, Direction, FetchError, MAX_FETCH_TIMEOUT, PeerSource,
    PeerState, PeerView, PutError, SHA256_HEADER, TOKEN_ERROR,
};
use peer_node::metrics::{Family, Metric, Metrics};
use peer_node::testing::{RunningNode, wait_for};
use piece_store::{Durability, MemStore, PieceStore, Retention, StoreError};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire_format::limits::{FETCH_TIMEOUT, PIECE_MAX};
use wire_format::{NodeId, PieceId, VerifiedPiece};

/// Deadline for one whole request/response exchange.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct FixedBackend {
    peers: Vec<PeerView>,
    metrics: Metrics,
}

impl ApiBackend for FixedBackend {
    fn peers(&self) -> Vec<PeerView> {
        self.peers.clone()
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn fetch_piece(
        &self,
        _id: PieceId,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        Box::pin(std::future::ready(Err(FetchError::NotFound {
            asked: 0,
            known: 0,
        })))
    }
    fn put_piece(&self, _bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>> {
        Box::pin(std::future::ready(Err(PutError::Store(
            "the fixed backend stores nothing".into(),
        ))))
    }
}

/// Ids the piece backend answers with an error instead of a lookup.
fn deadline_id() -> PieceId {
    PieceId::of(b"answers Deadline")
}
fn broken_store_id() -> PieceId {
    PieceId::of(b"answers Store")
}
fn shutdown_id() -> PieceId {
    PieceId::of(b"answers Shutdown")
}

/// The node's piece side as a double: a memory store (the real contract:
/// verified puts, pins, a capacity), every fetch recorded.
struct PieceBackend {
    metrics: Metrics,
    store: Arc<MemStore>,
    /// Every fetch asked of it, in order.
    fetches: Mutex<Vec<(PieceId, Duration)>>,
    /// Uploads that reached it.
    puts: AtomicUsize,
    /// When set, every put fails with this.
    put_error: Mutex<Option<PutError>>,
}

impl PieceBackend {
    fn new(capacity: u64) -> Arc<Self> {
        Arc::new(Self {
            metrics: Metrics::new(),
            store: Arc::new(MemStore::new(capacity)),
            fetches: Mutex::new(Vec::new()),
            puts: AtomicUsize::new(0),
            put_error: Mutex::new(None),
        })
    }

    /// Stores a piece directly, as if added earlier.
    fn insert(&self, bytes: &[u8]) -> PieceId {
        let piece = VerifiedPiece::new(Bytes::copy_from_slice(bytes)).unwrap();
        let id = piece.id();
        self.store
            .put(piece, Retention::Pinned, Durability::Wait)
            .unwrap();
        id
    }

    fn fetches(&self) -> Vec<(PieceId, Duration)> {
        self.fetches.lock().unwrap().clone()
    }

    fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    fn fail_puts_with(&self, err: PutError) {
        *self.put_error.lock().unwrap() = Some(err);
    }
}

impl ApiBackend for PieceBackend {
    fn peers(&self) -> Vec<PeerView> {
        Vec::new()
    }
    fn metrics(&self) -> &Metrics {
        &self.metrics
    }
    fn fetch_piece(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>> {
        self.fetches.lock().unwrap().push((id, timeout));
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            if id == deadline_id() {
                return Err(FetchError::Deadline);
            }
            if id == broken_store_id() {
                return Err(FetchError::Store("read pieces/ab/cd: I/O error".into()));
            }
            if id == shutdown_id() {
                return Err(FetchError::Shutdown);
            }
            match tokio::task::spawn_blocking(move || store.get(&id))
                .await
                .unwrap()
            {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(FetchError::NotFound { asked: 0, known: 0 }),
                Err(err) => Err(FetchError::Store(err.to_string())),
            }
        })
    }
    fn put_piece(&self, bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        let forced = self.put_error.lock().unwrap().clone();
        let store = Arc::clone(&self.store);
        Box::pin(async move {
            if let Some(err) = forced {
                return Err(err);
            }
            tokio::task::spawn_blocking(move || {
                let piece =
                    VerifiedPiece::new(bytes).map_err(|err| PutError::Invalid(err.to_string()))?;
                let id = piece.id();
                store
                    .put(piece, Retention::Pinned, Durability::Wait)
                    .map_err(|err| match err {
                        StoreError::Full { .. } => PutError::Full(err.to_string()),
                        err => PutError::Store(err.to_string()),
                    })?;
                Ok(id)
            })
            .await
            .unwrap()
        })
    }
}

/// `len` bytes that are not all alike.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
}

fn fixed_peers() -> Vec<PeerView> {
    vec![
        PeerView {
            addr: "[::1]:7001".parse().unwrap(),
            node_id: Some(NodeId([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])),
            direction: Some(Direction::Out),
            state: PeerState::Connected,
            legacy: false,
            source: PeerSource::Bootstrap,
            connected_since: Some(1_700_000_000),
            bytes_in: 1 << 20,
            bytes_out: 42,
            last_error: None,
            ban: None,
        },
        PeerView {
            addr: "127.0.0.1:7002".parse().unwrap(),
            node_id: None,
            direction: None,
            state: PeerState::Banned,
            legacy: true,
            source: PeerSource::Pex,
            connected_since: None,
            bytes_in: 0,
            bytes_out: 0,
            last_error: Some("gave a piece that does not hash to its name".into()),
            ban: Some(BanView {
                reason: "lie".into(),
                digest: Some(PieceId::of(b"piece")),
                until: 1_700_003_600,
            }),
        },
        PeerView {
            addr: "127.0.0.1:7003".parse().unwrap(),
            node_id: None,
            direction: None,
            state: PeerState::Backoff,
            legacy: false,
            source: PeerSource::Saved,
            connected_since: None,
            bytes_in: 0,
            bytes_out: 0,
            last_error: None,
            ban: Some(BanView {
                reason: "manual".into(),
                digest: None,
                until: 1,
            }),
        },
    ]
}

struct Api {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await.unwrap()
    }

    /// The API over a real node's state.
    async fn start_for(backend: Arc<dyn ApiBackend>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, TOKEN.to_owned(), backend, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn start_on(bind: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let metrics = Metrics::new();
        metrics.set(Metric::ConnectionsOpen, 1);
        metrics.add(Metric::BytesInTotal, 1 << 20);
        metrics.incr_labelled(Family::ProtocolErrorsTotal, "len_too_large");
        let backend = Arc::new(FixedBackend {
            peers: fixed_peers(),
            metrics,
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, TOKEN.to_owned(), backend, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// `Host` value naming the API by its bound address.
    fn host(&self) -> String {
        self.addr.to_string()
    }

    async fn get(&self, path: &str, host: Option<&str>, token: Option<&str>) -> Response {
        let mut headers = Vec::new();
        if let Some(host) = host {
            headers.push(format!("Host: {host}"));
        }
        if let Some(token) = token {
            headers.push(format!("Authorization: Bearer {token}"));
        }
        exchange(self.addr, "GET", path, &headers).await
    }

    /// A GET with our Host and the right token.
    async fn get_authorized(&self, path: &str) -> Response {
        self.get(path, Some(&self.host()), Some(TOKEN)).await
    }

    /// A request with our Host, the right token, `headers` and `body`
    /// (framed as `headers` say).
    async fn send(&self, method: &str, path: &str, headers: &[String], body: &[u8]) -> Response {
        let mut all = vec![
            format!("Host: {}", self.host()),
            format!("Authorization: Bearer {TOKEN}"),
        ];
        all.extend_from_slice(headers);
        exchange_with_body(self.addr, method, path, &all, body).await
    }

    /// `POST /api/v1/pieces` with `body` and its true `Content-Length`.
    async fn post_piece(&self, body: &[u8]) -> Response {
        self.send(
            "POST",
            "/api/v1/pieces",
            &[format!("Content-Length: {}", body.len())],
            body,
        )
        .await
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.task)
            .await
            .expect("serve did not stop after the shutdown signal")
            .unwrap()
            .unwrap();
    }
}

#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{self:?}"
        );
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }

    /// Asserts an `{"error": "..."}` body with exactly that one field.
    fn error_message(&self) -> String {
        let json = self.json();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["error"], "{json}");
        obj["error"].as_str().unwrap().to_owned()
    }
}

/// Sends one request with `Connection: close` and no body, and reads the
/// response until the server closes, all within [`EXCHANGE_TIMEOUT`].
async fn exchange(addr: SocketAddr, method: &str, target: &str, headers: &[String]) -> Response {
    exchange_with_body(addr, method, target, headers, &[]).await
}

/// [`exchange`] with `body` sent after the head. `headers` frame it (or lie
/// about it): nothing is added but `Connection: close`.
async fn exchange_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[String],
    body: &[u8],
) -> Response {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let raw = tokio::time::timeout(EXCHANGE_TIMEOUT, send_and_read(addr, request))
        .await
        .expect("no complete response before the deadline");
    parse_response(&raw)
}

/// Writes `request` while reading the response until the server closes. The
/// two run side by side because a server may answer (413) before it has read
/// the whole body; then the rest of the write may fail, and the close may
/// come as a reset once the response is in, which both are fine.
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
            Err(err) if err.kind() == ErrorKind::ConnectionReset && !raw.is_empty() => break,
            Err(err) => panic!("reading the response: {err}"),
        }
    }
    write.abort();
    raw
}

fn parse_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_owned(), value.trim().to_owned())
        })
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    if let Some((_, len)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        assert_eq!(body.len(), len.parse::<usize>().unwrap(), "truncated body");
    }
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn assert_unauthorized(response: &Response) {
    assert_eq!(response.status, 401, "{response:?}");
    assert_eq!(response.header("www-authenticate"), Some("Bearer"));
    assert_eq!(response.error_message(), TOKEN_ERROR);
}

fn assert_forbidden(response: &Response) {
    assert_eq!(response.status, 403, "{response:?}");
    assert!(response.error_message().contains("Host"));
}

#[tokio::test]
async fn missing_token_is_401() {
    let api = Api::start().await;
    for path in ["/api/v1/peers", "/api/v1/stats", "/api/v1/nope", "/api"] {
        assert_unauthorized(&api.get(path, Some(&api.host()), None).await);
    }
    api.shutdown().await;
}

#[tokio::test]
async fn wrong_token_is_401() {
    let api = Api::start().await;
    let mut same_len = TOKEN.to_owned().into_bytes();
    same_len[63] = b'0';
    let same_len = String::from_utf8(same_len).unwrap();
    let wrong = [
        same_len.as_str(),
        &TOKEN[..63],
        &format!("{TOKEN}0"),
        "x",
        &TOKEN.to_uppercase(),
    ];
    for token in wrong {
        assert_unauthorized(
            &api.get("/api/v1/peers", Some(&api.host()), Some(token))
                .await,
        );
    }
    let host = format!("Host: {}", api.host());
    for auth in [
        format!("Authorization: Basic {TOKEN}"),
        format!("Authorization: {TOKEN}"),
        "Authorization: Bearer".to_owned(),
    ] {
        let response = exchange(api.addr, "GET", "/api/v1/peers", &[host.clone(), auth]).await;
        assert_unauthorized(&response);
    }
    // Two Authorization headers are refused even if one is right.
    let response = exchange(
        api.addr,
        "GET",
        "/api/v1/peers",
        &[
            host.clone(),
            format!("Authorization: Bearer {TOKEN}"),
            format!("Authorization: Bearer {same_len}"),
        ],
    )
    .await;
    assert_unauthorized(&response);
    api.shutdown().await;
}

/// Every documented field with its JSON type: "string", "number", "bool",
/// "object", optionally "|null".
const PEER_FIELDS: &[(&str, &str)] = &[
    ("addr", "string"),
    ("node_id", "string|null"),
    ("direction", "string|null"),
    ("state", "string"),
    ("legacy", "bool"),
    ("source", "string"),
    ("connected_since", "number|null"),
    ("bytes_in", "number"),
    ("bytes_out", "number"),
    ("last_error", "string|null"),
    ("ban", "object|null"),
];

fn assert_type(value: &Value, expected: &str, what: &str) {
    let ok = expected.split('|').any(|ty| match ty {
        "string" => value.is_string(),
        "number" => value.is_u64(),
        "bool" => value.is_boolean(),
        "object" => value.is_object(),
        "null" => value.is_null(),
        other => panic!("unknown type {other}"),
    });
    assert!(ok, "{what} = {value}, expected {expected}");
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

#[tokio::test]
async fn right_token_gets_peers_in_the_documented_shape() {
    let api = Api::start().await;
    let response = api.get_authorized("/api/v1/peers").await;
    assert_eq!(response.status, 200, "{response:?}");
    let json = response.json();
    assert_eq!(keys(&json), BTreeSet::from(["peers"]));
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 3);

    let documented: BTreeSet<&str> = PEER_FIELDS.iter().map(|(name, _)| *name).collect();
    for peer in peers {
        assert_eq!(keys(peer), documented, "{peer}");
        for (name, ty) in PEER_FIELDS {
            assert_type(&peer[name], ty, name);
        }
        assert!(
            ["connected", "connecting", "known", "backoff", "banned"]
                .contains(&peer["state"].as_str().unwrap())
        );
        assert!(
            ["bootstrap", "pex", "saved", "inbound", "config"]
                .contains(&peer["source"].as_str().unwrap())
        );
        if let Some(direction) = peer["direction"].as_str() {
            assert!(["in", "out"].contains(&direction));
        }
        if let Some(node_id) = peer["node_id"].as_str() {
            assert_eq!(node_id.len(), 16);
            assert!(node_id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        let ban = &peer["ban"];
        if !ban.is_null() {
            assert_eq!(keys(ban), BTreeSet::from(["reason", "digest", "until"]));
            assert_type(&ban["reason"], "string", "ban.reason");
            assert_type(&ban["digest"], "string|null", "ban.digest");
            assert_type(&ban["until"], "number", "ban.until");
        }
    }

    let first = &peers[0];
    assert_eq!(first["addr"], "[::1]:7001");
    assert_eq!(first["node_id"], "0123456789abcdef");
    assert_eq!(first["direction"], "out");
    assert_eq!(first["state"], "connected");
    assert_eq!(first["legacy"], false);
    assert_eq!(first["source"], "bootstrap");
    assert_eq!(first["connected_since"], 1_700_000_000);
    assert_eq!(first["bytes_in"], 1 << 20);
    assert_eq!(first["bytes_out"], 42);
    assert!(first["last_error"].is_null());
    assert!(first["ban"].is_null());

    let banned = &peers[1];
    assert_eq!(banned["addr"], "127.0.0.1:7002");
    assert!(banned["node_id"].is_null());
    assert!(banned["direction"].is_null());
    assert_eq!(banned["state"], "banned");
    assert_eq!(banned["legacy"], true);
    assert_eq!(banned["ban"]["reason"], "lie");
    assert_eq!(
        banned["ban"]["digest"],
        PieceId::of(b"piece").to_string().as_str()
    );
    assert_eq!(banned["ban"]["until"], 1_700_003_600);
    assert!(peers[2]["ban"]["digest"].is_null());

    // The typed view reads back what was served.
    let parsed: api::PeersResponse = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(parsed.peers, fixed_peers());
    api.shutdown().await;
}

#[tokio::test]
async fn foreign_host_is_403_even_with_the_right_token() {
    let api = Api::start().await;
    let port = api.addr.port();
    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        // Our IP, another service's port.
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
        String::new(),
    ] {
        for path in ["/api/v1/peers", "/metrics", "/"] {
            assert_forbidden(&api.get(path, Some(&host), Some(TOKEN)).await);
        }
    }
    api.shutdown().await;
}

#[tokio::test]
async fn missing_or_duplicate_host_is_403() {
    let api = Api::start().await;
    assert_forbidden(&api.get("/api/v1/peers", None, Some(TOKEN)).await);
    assert_forbidden(&api.get("/metrics", None, None).await);
    let auth = format!("Authorization: Bearer {TOKEN}");
    let response = exchange(
        api.addr,
        "GET",
        "/api/v1/peers",
        &[
            format!("Host: {}", api.host()),
            format!("Host: evil.example:{}", api.addr.port()),
            auth.clone(),
        ],
    )
    .await;
    assert_forbidden(&response);
    // An absolute-form target naming another host is refused too.
    let response = exchange(
        api.addr,
        "GET",
        "http://evil.example/api/v1/peers",
        &[format!("Host: {}", api.host()), auth],
    )
    .await;
    assert_forbidden(&response);
    api.shutdown().await;
}

#[tokio::test]
async fn loopback_names_are_accepted() {
    let api = Api::start().await;
    let port = api.addr.port();
    for host in [
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("LOCALHOST:{port}"),
        format!("127.0.0.1:{port}"),
        format!("127.45.6.7:{port}"),
        format!("[::1]:{port}"),
    ] {
        let response = api.get("/api/v1/peers", Some(&host), Some(TOKEN)).await;
        assert_eq!(response.status, 200, "{host}: {response:?}");
    }
    api.shutdown().await;
}

#[tokio::test]
async fn ipv6_api_accepts_its_own_address() {
    let Ok(api) = Api::start_on("[::1]:0").await else {
        // No IPv6 loopback in this environment.
        return;
    };
    assert_eq!(api.host(), format!("[::1]:{}", api.addr.port()));
    let response = api.get_authorized("/api/v1/peers").await;
    assert_eq!(response.status, 200, "{response:?}");
    let response = api
        .get(
            "/api/v1/peers",
            Some(&format!("evil.example:{}", api.addr.port())),
            Some(TOKEN),
        )
        .await;
    assert_forbidden(&response);
    api.shutdown().await;
}

#[tokio::test]
async fn metrics_is_open_and_in_prometheus_format() {
    let api = Api::start().await;
    let response = api.get("/metrics", Some(&api.host()), None).await;
    assert_eq!(response.status, 200, "{response:?}");
    assert!(
        response
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain"))
    );
    let text = response.text();
    assert!(
        text.contains("# TYPE p2p_connections_open gauge\n"),
        "{text}"
    );
    assert!(text.contains("# HELP p2p_connections_open "), "{text}");
    assert!(text.contains("\np2p_connections_open 1\n"), "{text}");
    assert!(text.contains("\np2p_bytes_in_total 1048576\n"), "{text}");
    assert!(
        text.contains("p2p_protocol_errors_total{kind=\"len_too_large\"} 1\n"),
        "{text}"
    );
    api.shutdown().await;
}

#[tokio::test]
async fn status_page_is_open() {
    let api = Api::start().await;
    let response = api.get("/", Some(&api.host()), None).await;
    assert_eq!(response.status, 200, "{response:?}");
    let page = response.text();
    assert!(page.starts_with("<!doctype html>"), "{page}");
    assert!(page.contains("peer-node"));
    assert!(
        page.contains("<th>connections open</th><td>1</td>"),
        "{page}"
    );
    // The fixed peers are listed, their ban shown, and nothing secret.
    assert!(page.contains("Peers ("), "{page}");
    assert!(!page.contains(TOKEN), "the token is on the open page");
    api.shutdown().await;
}

#[tokio::test]
async fn stats_are_numbers_named_without_prefix() {
    let api = Api::start().await;
    assert_unauthorized(&api.get("/api/v1/stats", Some(&api.host()), None).await);
    let response = api.get_authorized("/api/v1/stats").await;
    assert_eq!(response.status, 200, "{response:?}");
    let json = response.json();
    let stats = json.as_object().unwrap();
    for (name, value) in stats {
        assert!(!name.starts_with("p2p_"), "{name}");
        assert!(value.is_u64(), "{name} = {value}");
    }
    for metric in Metric::ALL {
        assert!(stats.contains_key(metric.name()), "{}", metric.name());
    }
    assert_eq!(stats["connections_open"], 1);
    assert_eq!(stats["bytes_in_total"], 1 << 20);
    assert_eq!(stats["protocol_errors_total{kind=\"len_too_large\"}"], 1);
    api.shutdown().await;
}

#[tokio::test]
async fn unknown_api_path_is_404_json_and_wrong_method_405_json() {
    let api = Api::start().await;
    for path in [
        "/api/v1/nope",
        "/api/v2/peers",
        "/api/v1/peers/x",
        "/elsewhere",
    ] {
        let response = api.get_authorized(path).await;
        assert_eq!(response.status, 404, "{path}: {response:?}");
        assert!(response.error_message().contains("no such endpoint"));
    }
    let response = exchange(
        api.addr,
        "DELETE",
        "/api/v1/peers",
        &[
            format!("Host: {}", api.host()),
            format!("Authorization: Bearer {TOKEN}"),
        ],
    )
    .await;
    assert_eq!(response.status, 405, "{response:?}");
    response.error_message();
    api.shutdown().await;
}

#[tokio::test]
async fn paths_outside_the_open_list_need_the_token() {
    let api = Api::start().await;
    // Odd spellings of API paths never slip past the token check.
    for path in [
        "/elsewhere",
        "//api/v1/peers",
        "/%61pi/v1/peers",
        "/metrics/",
    ] {
        assert_unauthorized(&api.get(path, Some(&api.host()), None).await);
    }
    api.shutdown().await;
}

#[tokio::test]
async fn empty_token_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Arc::new(FixedBackend {
        peers: Vec::new(),
        metrics: Metrics::new(),
    });
    let result = api::serve(listener, String::new(), backend, std::future::pending()).await;
    assert_eq!(result.unwrap_err().kind(), ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_lists_its_connected_peer() {
    let mut nodes = Vec::new();
    let mut first_addr = None;
    for _ in 0..2 {
        let node = RunningNode::start(|config| {
            config.bootstrap = first_addr
                .iter()
                .map(|a: &SocketAddr| a.to_string())
                .collect();
        })
        .await
        .unwrap();
        first_addr.get_or_insert(node.addr);
        nodes.push(node);
    }
    let (a, b) = (Arc::clone(&nodes[0].shared), Arc::clone(&nodes[1].shared));
    assert!(
        wait_for(Duration::from_secs(20), || a.connected_node_ids()
            == vec![b.node_id()])
        .await,
        "nodes never connected"
    );
    let api = Api::start_for(Arc::new(api::NodeApi(Arc::clone(&a)))).await;
    let response = api.get_authorized("/api/v1/peers").await;
    assert_eq!(response.status, 200);
    let json = response.json();
    let peers = json["peers"].as_array().unwrap();
    let b_id = b.node_id().to_string();
    let row = peers
        .iter()
        .find(|p| p["node_id"] == b_id.as_str())
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(row["state"], "connected");
    assert!(
        row["direction"] == "in" || row["direction"] == "out",
        "{row}"
    );
    assert_eq!(row["legacy"], false);
    assert!(row["connected_since"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(row["ban"], Value::Null);
    // One row per connected node.
    assert_eq!(
        peers
            .iter()
            .filter(|p| p["node_id"] == b_id.as_str())
            .count(),
        1
    );
    let stats = api.get_authorized("/api/v1/stats").await.json();
    assert!(
        stats["hello_received_total"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    api.shutdown().await;
    for node in nodes {
        node.stop().await.unwrap();
    }
}

// ---- Pieces ----

/// Capacity of the piece backend's store: room for a few full pieces.
const STORE_CAPACITY: u64 = 4 << 20;

async fn start_pieces() -> (Arc<PieceBackend>, Api) {
    let backend = PieceBackend::new(STORE_CAPACITY);
    let api = Api::start_for(Arc::clone(&backend) as Arc<dyn ApiBackend>).await;
    (backend, api)
}

/// Asserts a 200 carrying exactly `bytes` as the piece `id`.
fn assert_piece(response: &Response, id: PieceId, bytes: &[u8]) {
    assert_eq!(response.status, 200, "{:?}", response.headers);
    assert_eq!(
        response.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(
        response.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert_eq!(response.header("transfer-encoding"), None);
    assert_eq!(response.header(SHA256_HEADER), Some(id.to_hex().as_str()));
    assert!(response.body == bytes, "body differs from the piece");
}

#[tokio::test]
async fn get_known_piece_is_200_with_exact_bytes_and_headers() {
    let (backend, api) = start_pieces().await;
    let small = b"hello piece";
    let small_id = backend.insert(small);
    let full = pattern(PIECE_MAX);
    let full_id = backend.insert(&full);

    let response = api
        .get_authorized(&format!("/api/v1/pieces/{small_id}"))
        .await;
    assert_piece(&response, small_id, small);
    let response = api
        .get_authorized(&format!("/api/v1/pieces/{full_id}"))
        .await;
    assert_piece(&response, full_id, &full);
    // An id in upper case names the same piece; the header gives it in
    // lower case.
    let upper = small_id.to_hex().to_uppercase();
    let response = api.get_authorized(&format!("/api/v1/pieces/{upper}")).await;
    assert_piece(&response, small_id, small);

    // Without `timeout` the backend gets the default.
    assert_eq!(
        backend.fetches(),
        [
            (small_id, FETCH_TIMEOUT),
            (full_id, FETCH_TIMEOUT),
            (small_id, FETCH_TIMEOUT)
        ]
    );
    api.shutdown().await;
}

#[tokio::test]
async fn fetch_errors_map_to_their_statuses() {
    let (backend, api) = start_pieces().await;
    let unknown = PieceId::of(b"nobody has this");
    for (id, status, expected) in [
        (
            unknown,
            404,
            FetchError::NotFound { asked: 0, known: 0 }.to_string(),
        ),
        (deadline_id(), 504, FetchError::Deadline.to_string()),
        (
            broken_store_id(),
            500,
            FetchError::Store("read pieces/ab/cd: I/O error".into()).to_string(),
        ),
        (shutdown_id(), 503, FetchError::Shutdown.to_string()),
    ] {
        let response = api
            .get_authorized(&format!("/api/v1/pieces/{id}?timeout=3"))
            .await;
        assert_eq!(response.status, status, "{response:?}");
        let message = response.error_message();
        assert!(message.starts_with(&expected), "{message}");
    }
    // The 504 says which timeout passed.
    let response = api
        .get_authorized(&format!("/api/v1/pieces/{}?timeout=2.5", deadline_id()))
        .await;
    assert!(response.error_message().contains("2.5s"), "{response:?}");
    assert_eq!(backend.fetches().len(), 5);
    api.shutdown().await;
}

#[tokio::test]
async fn malformed_piece_id_is_400_and_never_reaches_the_backend() {
    let (backend, api) = start_pieces().await;
    let hex = PieceId::of(b"x").to_hex();
    for (id, says) in [
        (hex[..63].to_owned(), "64 hex characters, got 63"),
        (format!("{hex}0"), "64 hex characters, got 65"),
        (format!("g{}", &hex[1..]), "hex"),
        (format!("{}z", &hex[..63]), "position 63"),
        ("x".to_owned(), "got 1"),
        ("é".repeat(32), "hex"),
        // Percent-encoded bytes that are not UTF-8.
        ("%ff".repeat(64), "piece id"),
    ] {
        let response = api.get_authorized(&format!("/api/v1/pieces/{id}")).await;
        assert_eq!(response.status, 400, "{id}: {response:?}");
        let message = response.error_message();
        assert!(message.contains("piece id"), "{id}: {message}");
        assert!(message.contains(says), "{id}: {message}");
    }
    assert!(backend.fetches().is_empty());
    api.shutdown().await;
}

#[tokio::test]
async fn timeout_is_seconds_up_to_the_maximum_and_reaches_the_backend() {
    let (backend, api) = start_pieces().await;
    let id = backend.insert(b"timed");
    let ms = Duration::from_millis;
    for (query, expected) in [
        ("timeout=2.5", ms(2500)),
        ("timeout=10", Duration::from_secs(10)),
        ("timeout=0.001", ms(1)),
        ("timeout=2%2E5", ms(2500)),
        (
            &format!("timeout={}", MAX_FETCH_TIMEOUT.as_secs()),
            MAX_FETCH_TIMEOUT,
        ),
    ] {
        let response = api
            .get_authorized(&format!("/api/v1/pieces/{id}?{query}"))
            .await;
        assert_piece(&response, id, b"timed");
        assert_eq!(backend.fetches().last(), Some(&(id, expected)), "{query}");
    }
    let asked = backend.fetches().len();
    let above = format!("timeout={}", MAX_FETCH_TIMEOUT.as_secs() + 1);
    let just_above = format!("timeout={}.000000001", MAX_FETCH_TIMEOUT.as_secs());
    for query in [
        "timeout=0",
        "timeout=0.0",
        "timeout=-1",
        "timeout=abc",
        &above,
        &just_above,
        "timeout=",
        "timeout=1e3",
        "timeout=inf",
        "timeout=%2B5",
        "timeout=.5",
        "timeout=1.0000000001",
        "timeout=99999999999999999999999",
        // A misspelt or repeated parameter is refused, not ignored.
        "timout=5",
        "timeout=1&timeout=2",
    ] {
        let response = api
            .get_authorized(&format!("/api/v1/pieces/{id}?{query}"))
            .await;
        assert_eq!(response.status, 400, "{query}: {response:?}");
        let message = response.error_message();
        assert!(message.contains("timeout"), "{query}: {message}");
    }
    assert_eq!(backend.fetches().len(), asked);
    api.shutdown().await;
}

#[tokio::test]
async fn post_piece_is_201_with_its_sha256_and_size() {
    let (backend, api) = start_pieces().await;
    for body in [b"x".to_vec(), pattern(PIECE_MAX)] {
        let response = api.post_piece(&body).await;
        assert_eq!(response.status, 201, "{response:?}");
        let json = response.json();
        assert_eq!(keys(&json), BTreeSet::from(["sha256", "size"]), "{json}");
        let id = PieceId::of(&body);
        assert_eq!(json["sha256"], id.to_hex().as_str());
        assert_eq!(json["size"], body.len());
        let typed: api::PieceStored = serde_json::from_value(json).unwrap();
        assert_eq!(typed.sha256, id);
        // Stored: it can be read back.
        let response = api.get_authorized(&format!("/api/v1/pieces/{id}")).await;
        assert_piece(&response, id, &body);
        assert!(backend.store.is_pinned(&id));
    }
    assert_eq!(backend.puts(), 2);
    api.shutdown().await;
}

#[tokio::test]
async fn post_body_limits_at_the_boundary() {
    let (backend, api) = start_pieces().await;
    // One byte over, declared honestly: refused from the header.
    let response = api.post_piece(&pattern(PIECE_MAX + 1)).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert!(response.error_message().contains("too large"));
    // Empty, with and without a Content-Length.
    let response = api.post_piece(b"").await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.error_message().contains("empty"));
    let response = api.send("POST", "/api/v1/pieces", &[], b"").await;
    assert_eq!(response.status, 400, "{response:?}");
    assert!(response.error_message().contains("empty"));

    // Chunked bodies have no length up front: the limit stops them as read.
    let chunked = |body: &[u8]| {
        let mut framed = format!("{:x}\r\n", body.len()).into_bytes();
        framed.extend_from_slice(body);
        framed.extend_from_slice(b"\r\n0\r\n\r\n");
        framed
    };
    let te = ["Transfer-Encoding: chunked".to_owned()];
    let response = api
        .send(
            "POST",
            "/api/v1/pieces",
            &te,
            &chunked(&pattern(PIECE_MAX + 1)),
        )
        .await;
    assert_eq!(response.status, 413, "{response:?}");
    assert!(response.error_message().contains("too large"));
    let at_limit = pattern(PIECE_MAX);
    let response = api
        .send("POST", "/api/v1/pieces", &te, &chunked(&at_limit))
        .await;
    assert_eq!(response.status, 201, "{response:?}");
    assert_eq!(response.json()["size"], PIECE_MAX);
    let response = api.send("POST", "/api/v1/pieces", &te, &chunked(b"")).await;
    assert_eq!(response.status, 400, "{response:?}");

    // Only the accepted chunked upload reached the backend.
    assert_eq!(backend.puts(), 1);
    api.shutdown().await;
}

#[tokio::test]
async fn huge_content_length_is_413_before_the_body_is_read() {
    let (backend, api) = start_pieces().await;
    // Only a few bytes follow: a server that waited for the body would
    // hang until the exchange deadline.
    // (hyper itself refuses `u64::MAX`, which it reserves, with a 431.)
    for declared in [(PIECE_MAX + 1) as u64, 1 << 40, u64::MAX >> 1] {
        let response = api
            .send(
                "POST",
                "/api/v1/pieces",
                &[format!("Content-Length: {declared}")],
                b"abc",
            )
            .await;
        assert_eq!(response.status, 413, "{declared}: {response:?}");
        assert!(response.error_message().contains("too large"));
    }
    // A client waiting for `100 Continue` gets the 413 instead.
    let response = api
        .send(
            "POST",
            "/api/v1/pieces",
            &[
                format!("Content-Length: {}", 1u64 << 40),
                "Expect: 100-continue".to_owned(),
            ],
            b"",
        )
        .await;
    assert_eq!(response.status, 413, "{response:?}");
    assert_eq!(backend.puts(), 0);
    api.shutdown().await;
}

#[tokio::test]
async fn put_errors_map_to_their_statuses() {
    // A store too small for the piece: the real `StoreError::Full` path.
    let backend = PieceBackend::new(16);
    let api = Api::start_for(Arc::clone(&backend) as Arc<dyn ApiBackend>).await;
    let response = api.post_piece(&pattern(17)).await;
    assert_eq!(response.status, 507, "{response:?}");
    let message = response.error_message();
    assert!(message.contains("store full"), "{message}");
    // The store's advice, said once.
    assert_eq!(message.matches("unpin").count(), 1, "{message}");
    // What fits is still stored.
    assert_eq!(api.post_piece(&pattern(16)).await.status, 201);

    for (err, status) in [
        (
            PutError::Invalid("a piece is 1 to 1048576 bytes".into()),
            400,
        ),
        (
            PutError::Store("write pieces/ab/cd: disk quota".into()),
            500,
        ),
        (
            PutError::Full("store full: 10 bytes needed; unpin data".into()),
            507,
        ),
    ] {
        backend.fail_puts_with(err.clone());
        let response = api.post_piece(b"some piece").await;
        assert_eq!(response.status, status, "{err:?}: {response:?}");
        assert_eq!(response.error_message(), err.to_string());
    }
    api.shutdown().await;
}

#[tokio::test]
async fn pieces_routes_keep_the_host_and_token_guards() {
    let (backend, api) = start_pieces().await;
    let id = backend.insert(b"guarded");
    let path = format!("/api/v1/pieces/{id}");
    let host = format!("Host: {}", api.host());
    let evil = format!("Host: evil.example:{}", api.addr.port());
    let auth = format!("Authorization: Bearer {TOKEN}");
    let length = "Content-Length: 5".to_owned();

    assert_unauthorized(&api.get(&path, Some(&api.host()), None).await);
    assert_unauthorized(&api.get(&path, Some(&api.host()), Some(&TOKEN[1..])).await);
    let response = exchange_with_body(
        api.addr,
        "POST",
        "/api/v1/pieces",
        &[host.clone(), length.clone()],
        b"hello",
    )
    .await;
    assert_unauthorized(&response);
    // The token is checked before the body's length.
    let response = exchange_with_body(
        api.addr,
        "POST",
        "/api/v1/pieces",
        &[host, format!("Content-Length: {}", 1u64 << 40)],
        b"abc",
    )
    .await;
    assert_unauthorized(&response);

    let evil_host = evil.trim_start_matches("Host: ").to_owned();
    assert_forbidden(&api.get(&path, Some(&evil_host), Some(TOKEN)).await);
    let response = exchange_with_body(
        api.addr,
        "POST",
        "/api/v1/pieces",
        &[evil, auth, length],
        b"hello",
    )
    .await;
    assert_forbidden(&response);

    assert!(backend.fetches().is_empty());
    assert_eq!(backend.puts(), 0);
    api.shutdown().await;
}

#[tokio::test]
async fn pieces_routes_refuse_other_methods_with_json() {
    let (backend, api) = start_pieces().await;
    let id = PieceId::of(b"x");
    for (method, path) in [
        ("GET", "/api/v1/pieces".to_owned()),
        ("DELETE", "/api/v1/pieces".to_owned()),
        ("POST", format!("/api/v1/pieces/{id}")),
        ("PUT", format!("/api/v1/pieces/{id}")),
    ] {
        let response = api
            .send(method, &path, &["Content-Length: 0".to_owned()], b"")
            .await;
        assert_eq!(response.status, 405, "{method} {path}: {response:?}");
        response.error_message();
    }
    // A trailing slash names no piece.
    let response = api.get_authorized("/api/v1/pieces/").await;
    assert_eq!(response.status, 404, "{response:?}");
    assert!(response.error_message().contains("no such endpoint"));
    assert!(backend.fetches().is_empty());
    assert_eq!(backend.puts(), 0);
    api.shutdown().await;
}
