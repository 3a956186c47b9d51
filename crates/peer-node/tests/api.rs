//! The local API over real sockets: raw HTTP/1.1 against `api::serve` on
//! port 0, with a fixed backend standing in for the node.

// Tests fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peer_node::api::{
    self, ApiBackend, BanView, Direction, PeerSource, PeerState, PeerView, TOKEN_ERROR,
};
use peer_node::metrics::{Family, Metric, Metrics};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire_format::{NodeId, PieceId};

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

/// Sends one request with `Connection: close` and reads the response until
/// the server closes, all within [`EXCHANGE_TIMEOUT`].
async fn exchange(addr: SocketAddr, method: &str, target: &str, headers: &[String]) -> Response {
    let mut request = format!("{method} {target} HTTP/1.1\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    let raw = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    })
    .await
    .expect("no complete response before the deadline");
    parse_response(&raw)
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
    assert!(response.text().contains("peer-node"));
    assert!(response.text().contains("connections open: 1"));
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
    assert_eq!(result.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_lists_its_connected_peer() {
    use peer_node::node::{Node, NodeConfig};
    let mut nodes = Vec::new();
    let mut first_addr = None;
    for _ in 0..2 {
        let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        config.bootstrap = first_addr
            .iter()
            .map(|a: &SocketAddr| a.to_string())
            .collect();
        let node = Node::bind(config).await.unwrap();
        first_addr.get_or_insert(node.local_addr());
        let shared = node.shared();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.run(async move {
            let _ = stopped.await;
        }));
        nodes.push((shared, stop, task));
    }
    let (a, b) = (Arc::clone(&nodes[0].0), Arc::clone(&nodes[1].0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while a.connected_node_ids() != vec![b.node_id()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let api = Api::start_for(Arc::clone(&a) as Arc<dyn ApiBackend>).await;
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
    for (_, stop, task) in nodes {
        let _ = stop.send(());
        task.await.unwrap();
    }
}
