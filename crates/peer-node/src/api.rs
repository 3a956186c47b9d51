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
//!
//! # Pieces
//! * `GET /api/v1/pieces/{sha256}?timeout=SECS` — the piece's bytes, 200
//!   `application/octet-stream` with a `Content-Length` and
//!   [`SHA256_HEADER`] naming the piece. The backend fetches (store, else
//!   swarm) and verifies; the response starts only once it has returned, so
//!   unverified bytes are never sent. `timeout` is integer or decimal seconds,
//!   more than 0 and at most [`MAX_FETCH_TIMEOUT`]; without it the fetch
//!   gets the node's `--fetch-timeout` ([`FETCH_TIMEOUT`] by default).
//!   Failures map as [`FetchError`] documents.
//! * `POST /api/v1/pieces` — stores and pins one piece, 201
//!   `{"sha256": "<hex>", "size": N}` ([`PieceStored`]). The body is
//!   [`PIECE_MIN`] to [`PIECE_MAX`] bytes: an empty one is 400, a longer one
//!   413, refused from its `Content-Length` before any of it is read (and
//!   before a `100 Continue`), or from the bytes themselves when it is sent
//!   chunked. Failures map as [`PutError`] documents.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};
use wire_format::limits::{FETCH_TIMEOUT, PIECE_MAX, PIECE_MIN};
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

/// Longest `timeout` a `GET /api/v1/pieces/{sha256}` may ask for.
pub const MAX_FETCH_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long past a fetch's own timeout the API waits for the backend before
/// answering 504 itself. The backend ends its fetch at the timeout; this only
/// keeps a request from hanging on a backend that fails to.
pub const FETCH_GRACE: Duration = Duration::from_secs(1);

/// Response header of `GET /api/v1/pieces/{sha256}`: the piece's id, its
/// sha256 in lowercase hex, so a client can check the bytes it got (and see
/// the canonical spelling of an id it sent in upper case).
pub const SHA256_HEADER: &str = "x-sha256";

/// Most decimal places a `timeout` may have: nanoseconds.
const TIMEOUT_MAX_DECIMALS: usize = 9;

/// Characters of a rejected `timeout` value quoted back in the error.
const TIMEOUT_ECHO_CHARS: usize = 24;

/// A boxed future that can move between threads: what [`ApiBackend`]'s
/// asynchronous methods return, so the trait stays object safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the API needs from the node. The node implements it; tests use a
/// fixed double.
pub trait ApiBackend: Send + Sync + 'static {
    /// Every peer the node knows, in the order to show them.
    fn peers(&self) -> Vec<PeerView>;
    /// The node's counters.
    fn metrics(&self) -> &Metrics;
    /// The piece named `id`, from the store or else the swarm, verified: the
    /// bytes hash to `id` (the API sends them as they are). The fetch ends
    /// within `timeout`; the API gives up [`FETCH_GRACE`] after that.
    fn fetch_piece(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Bytes, FetchError>>;
    /// Stores `bytes` as a pinned piece and returns its id. The API has
    /// already checked the length ([`PIECE_MIN`] to [`PIECE_MAX`]); hashing is
    /// the backend's, off the I/O task.
    fn put_piece(&self, bytes: Bytes) -> BoxFuture<'static, Result<PieceId, PutError>>;

    /// The fetch deadline when a request names none (the node's
    /// `--fetch-timeout`).
    fn default_fetch_timeout(&self) -> Duration {
        FETCH_TIMEOUT
    }
}

/// Why a fetch through the node failed; each variant is one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Every peer asked said it does not have the piece, or there was no
    /// peer to ask. 404.
    #[error(
        "piece not found: every peer asked said it does not have it, or no peer was \
         connected; check the id, or connect to a peer that holds it and retry"
    )]
    NotFound,
    /// The deadline passed while some peers had not answered. 504.
    #[error(
        "deadline passed before any peer gave the piece (some had not answered); \
         retry with a longer timeout"
    )]
    Deadline,
    /// The local store failed; the text says how. 500.
    #[error("local store failed: {0}; check the data directory and its disk")]
    Store(String),
    /// The node is shutting down. 503.
    #[error("the node is shutting down; retry once it runs again")]
    Shutdown,
}

impl FetchError {
    fn status(&self) -> StatusCode {
        match self {
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Deadline => StatusCode::GATEWAY_TIMEOUT,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Shutdown => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Why storing a piece failed; each variant is one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// Pinned data leaves no room for the piece. 507. The text is the
    /// store's own explanation, which gives the numbers and what to do
    /// (`StoreError::Full`'s).
    #[error("the piece was not stored: {0}")]
    Full(String),
    /// The bytes are not a valid piece; the text says why. 400.
    #[error("not a valid piece: {0}")]
    Invalid(String),
    /// The local store failed; the text says how. 500.
    #[error(
        "local store failed, the piece was not stored: {0}; check the data directory and its disk"
    )]
    Store(String),
}

impl PutError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
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

/// Body of `POST /api/v1/pieces`'s 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceStored {
    /// The piece's id: the sha256 of its bytes, lowercase hex.
    #[serde(
        serialize_with = "serialize_required_piece_id",
        deserialize_with = "deserialize_required_piece_id"
    )]
    pub sha256: PieceId,
    /// Its length in bytes.
    pub size: u64,
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

fn serialize_required_piece_id<S: Serializer>(id: &PieceId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn deserialize_required_piece_id<'de, D: Deserializer<'de>>(d: D) -> Result<PieceId, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
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

/// The API's listener: a TCP listener whose connections have Nagle's
/// algorithm off.
struct NoDelayListener(TcpListener);

impl axum::serve::Listener for NoDelayListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Best effort: without it responses are only slower.
        let _ = stream.set_nodelay(true);
        (stream, addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, NoDelayListener>> for LocalAddr {
    fn connect_info(stream: IncomingStream<'_, NoDelayListener>) -> Self {
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
        .route(
            "/api/v1/pieces",
            // Chunked bodies carry no length to check up front; this limit
            // stops them while they are read.
            post(post_piece).layer(DefaultBodyLimit::max(PIECE_MAX)),
        )
        .route("/api/v1/pieces/{sha256}", get(get_piece))
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
         API (needs Authorization: Bearer <DATA_DIR/api-token>): /api/v1/peers /api/v1/stats \
         /api/v1/pieces\n\
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

/// Query of `GET /api/v1/pieces/{sha256}`. Unknown parameters are refused,
/// so a misspelt `timeout` does not silently fall back to the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FetchQuery {
    /// Seconds, parsed by [`parse_timeout`].
    timeout: Option<String>,
}

async fn get_piece(
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
        Ok(bytes) => piece_response(id, bytes),
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
async fn fetch_within(
    backend: &dyn ApiBackend,
    id: PieceId,
    timeout: Duration,
) -> Result<Bytes, FetchError> {
    let fetch = backend.fetch_piece(id, timeout);
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
fn piece_response(id: PieceId, bytes: Bytes) -> Response {
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
fn parse_timeout(text: &str) -> Result<Duration, String> {
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

fn piece_too_large() -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "body too large: a piece is {PIECE_MIN} to {PIECE_MAX} bytes; \
             add larger data as a file"
        ),
    )
}

fn piece_empty() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        format!("empty body: a piece is {PIECE_MIN} to {PIECE_MAX} bytes"),
    )
}

async fn post_piece(State(backend): State<Arc<dyn ApiBackend>>, req: Request) -> Response {
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
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {}; this node serves /api/v1/peers, /api/v1/stats \
             and /api/v1/pieces",
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
        assert_eq!(FetchError::NotFound.status(), StatusCode::NOT_FOUND);
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
