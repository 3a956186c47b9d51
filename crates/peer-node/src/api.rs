//! The node's local HTTP API (ARCHITECTURE §4): JSON over HTTP/1.1 on a
//! listener the caller binds, loopback by default.
//!
//! Two guards run before every handler, in this order:
//! 1. **Host** — the `Host` header must name the API's own address (the
//!    bound address, or the local address of the connection) or a loopback
//!    name, with the API's port if it has one; anything else is 403. A web
//!    page that rebinds its DNS name to 127.0.0.1 still sends its own name,
//!    so it cannot reach the API (DNS-rebinding defence).
//! 2. **Token** — every path except `/` and `/metrics` needs
//!    `Authorization: Bearer <token>`, compared in constant time, else 401.
//!    The open paths are listed, not the closed ones, so a route added later
//!    (or a path spelt oddly) is closed unless it is deliberately opened.
//!
//! The node's state comes through [`ApiBackend`], so this module knows
//! nothing of the node's internals and tests can serve a fixed peer list.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::IncomingStream;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use wire_format::{NodeId, PieceId};

use crate::metrics::{Metric, Metrics};

/// Largest request body accepted: one piece plus room for framing. Handlers
/// that stream larger bodies (whole files) set their own limit.
pub const MAX_BODY_BYTES: usize = (1 << 20) + (64 << 10);

/// The 401 body's message.
pub const TOKEN_ERROR: &str = "missing or wrong API token: read it from DATA_DIR/api-token";

/// Paths served without the token; everything else needs it.
const OPEN_PATHS: &[&str] = &["/", "/metrics"];

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the API needs from the node. The node implements it; tests use a
/// fixed double.
pub trait ApiBackend: Send + Sync + 'static {
    /// Every peer the node knows, in the order to show them.
    fn peers(&self) -> Vec<PeerView>;
    /// The node's counters.
    fn metrics(&self) -> &Metrics;
}

/// One entry of `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's dialable listen address when known, else its source
    /// address; rendered `127.0.0.1:7001` or `[::1]:7001`.
    pub addr: SocketAddr,
    /// From its HELLO; `None` for legacy peers and peers never connected.
    #[serde(
        serialize_with = "serialize_node_id",
        deserialize_with = "deserialize_node_id"
    )]
    pub node_id: Option<NodeId>,
    /// Who opened the current connection; `None` when not connected.
    pub direction: Option<Direction>,
    /// Where the peer stands now.
    pub state: PeerState,
    /// Whether it is (or was last seen as) a legacy peer.
    pub legacy: bool,
    /// How the node learnt of it.
    pub source: PeerSource,
    /// When the current connection was established, unix seconds.
    pub connected_since: Option<u64>,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// The last thing that went wrong with it.
    pub last_error: Option<String>,
    /// Its ban, while it lasts.
    pub ban: Option<BanView>,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The peer connected to us.
    In,
    /// We connected to the peer.
    Out,
}

/// A peer's state in the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// A connection is open and past HELLO.
    Connected,
    /// A dial or HELLO is in progress.
    Connecting,
    /// A candidate, not connected.
    Known,
    /// Not dialled again until its backoff ends.
    Backoff,
    /// Banned for a lie (see [`PeerView::ban`]).
    Banned,
}

/// How the node learnt of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    /// From a bootstrap server's PEERS.
    Bootstrap,
    /// From another peer's PEERS.
    Pex,
    /// From `peers.json` of the previous run.
    Saved,
    /// It connected to us.
    Inbound,
    /// Named by the operator.
    Config,
}

/// A ban, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// What the peer did.
    pub reason: String,
    /// The piece it lied about, if the ban is for a piece.
    #[serde(
        serialize_with = "serialize_piece_id",
        deserialize_with = "deserialize_piece_id"
    )]
    pub digest: Option<PieceId>,
    /// When the ban ends, unix seconds.
    pub until: u64,
}

/// Body of `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// The peers.
    pub peers: Vec<PeerView>,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

fn serialize_node_id<S: Serializer>(id: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn deserialize_node_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| {
            <[u8; 8] as hex::FromHex>::from_hex(&s)
                .map(NodeId)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
}

fn serialize_piece_id<S: Serializer>(id: &Option<PieceId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn deserialize_piece_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PieceId>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}

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
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<LocalAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// What the guards need to know.
#[derive(Clone)]
struct Guard {
    token: Arc<[u8]>,
    bound: SocketAddr,
}

/// The local address of an accepted connection: the address the client
/// actually reached, which differs from the bound one when the API listens
/// on an unspecified address.
#[derive(Debug, Clone, Copy)]
struct LocalAddr(Option<SocketAddr>);

impl Connected<IncomingStream<'_, TcpListener>> for LocalAddr {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self(stream.io().local_addr().ok())
    }
}

fn router(token: String, backend: Arc<dyn ApiBackend>, bound: SocketAddr) -> Router {
    let guard = Guard {
        token: Arc::from(token.into_bytes()),
        bound,
    };
    Router::new()
        .route("/", get(index))
        .route("/metrics", get(prometheus))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/stats", get(stats))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend)
        // The last layer added runs first: body limit, Host, then token.
        .layer(from_fn_with_state(guard.clone(), require_token))
        .layer(from_fn_with_state(guard, check_host))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// A JSON `{"error": ...}` response.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn check_host(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let local = req
        .extensions()
        .get::<ConnectInfo<LocalAddr>>()
        .and_then(|info| info.0.0);
    let own: &[SocketAddr] = match local {
        Some(local) => &[guard.bound, local],
        None => &[guard.bound],
    };
    if !host_header_allowed(req.headers(), req.uri(), own) {
        tracing::debug!(bound = %guard.bound, "API request refused: Host is not this API");
        return error(
            StatusCode::FORBIDDEN,
            "the Host header must be this API's address or a loopback name (DNS-rebinding defence): connect to the address in DATA_DIR/api-addr",
        );
    }
    next.run(req).await
}

/// Whether the request names this API: exactly one `Host` header, allowed by
/// [`host_allowed`], and an absolute-form URI's authority allowed as well.
fn host_header_allowed(headers: &HeaderMap, uri: &Uri, own: &[SocketAddr]) -> bool {
    let mut hosts = headers.get_all(HOST).iter();
    let (Some(host), None) = (hosts.next(), hosts.next()) else {
        return false;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let authority_ok = uri
        .authority()
        .is_none_or(|authority| host_allowed(authority.as_str(), own));
    authority_ok && host_allowed(host, own)
}

/// The host part of a `Host` value.
#[derive(Debug, PartialEq, Eq)]
enum HostName<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// Splits `host[:port]` / `[v6][:port]`; `None` if malformed.
fn split_host(value: &str) -> Option<(HostName<'_>, Option<u16>)> {
    fn port(text: &str) -> Option<u16> {
        // `u16::from_str` would also take "+80".
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let ip: Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            after => Some(port(after.strip_prefix(':')?)?),
        };
        return Some((HostName::Ip(IpAddr::V6(ip)), port));
    }
    let (host, port) = match value.split_once(':') {
        Some((host, text)) => (host, Some(port(text)?)),
        None => (value, None),
    };
    let name = match host.parse::<Ipv4Addr>() {
        Ok(ip) => HostName::Ip(IpAddr::V4(ip)),
        Err(_) => HostName::Name(host),
    };
    Some((name, port))
}

/// Whether a `Host` value names this API: `localhost`, a loopback IP
/// (127.0.0.0/8, ::1) or one of `own`'s IPs, with one of `own`'s ports or
/// none. Only names matter against DNS rebinding; the port is checked too so
/// that a value meant for another local service is not taken as ours.
fn host_allowed(value: &str, own: &[SocketAddr]) -> bool {
    let Some((host, port)) = split_host(value) else {
        return false;
    };
    if let Some(port) = port
        && !own.iter().any(|addr| addr.port() == port)
    {
        return false;
    }
    match host {
        HostName::Name(name) => name.eq_ignore_ascii_case("localhost"),
        HostName::Ip(ip) => {
            let ip = ip.to_canonical();
            ip.is_loopback() || own.iter().any(|addr| addr.ip().to_canonical() == ip)
        }
    }
}

async fn require_token(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    if OPEN_PATHS.contains(&req.uri().path()) || bearer_matches(req.headers(), &guard.token) {
        return next.run(req).await;
    }
    let mut response = error(StatusCode::UNAUTHORIZED, TOKEN_ERROR);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether the request carries exactly one `Authorization: Bearer <token>`
/// with our token. The comparison takes the same time for every token of the
/// right length; a wrong length fails at once, which reveals only the length
/// (fixed and public: 64 hex chars).
fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    const SCHEME: &[u8] = b"Bearer ";
    let Some((scheme, given)) = value.split_at_checked(SCHEME.len()) else {
        return false;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return false;
    }
    let given = given.trim_ascii();
    given.len() == token.len() && bool::from(given.ct_eq(token))
}

async fn index(State(backend): State<Arc<dyn ApiBackend>>) -> Response {
    let metrics = backend.metrics();
    let body = format!(
        "p2p peer-node {}\n\
         connections open: {}\n\
         \n\
         API (needs Authorization: Bearer <DATA_DIR/api-token>): /api/v1/peers /api/v1/stats\n\
         Metrics (Prometheus): /metrics\n",
        env!("CARGO_PKG_VERSION"),
        metrics.value(Metric::ConnectionsOpen),
    );
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
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
            "no such endpoint: {method} {}; this node serves /api/v1/peers and /api/v1/stats",
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

    use super::*;

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
