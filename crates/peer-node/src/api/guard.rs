//! The two guards that run before every handler, in this order: the
//! `Host` check (DNS-rebinding defence) and the bearer token (compared in
//! constant time; only [`OPEN_PATHS`] go without it). Also the API's
//! listener, whose connections have Nagle's algorithm off.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::Response;
use axum::serve::IncomingStream;
use subtle::ConstantTimeEq;
use tokio::net::{TcpListener, TcpStream};

use super::json::error;

/// The 401 body's message.
pub const TOKEN_ERROR: &str = "missing or wrong API token: read it from DATA_DIR/api-token";

/// Paths served without the token; everything else needs it.
pub(super) const OPEN_PATHS: &[&str] = &["/", "/metrics"];

/// What the guards need to know.
#[derive(Clone)]
pub(super) struct Guard {
    pub(super) token: Arc<[u8]>,
    pub(super) bound: SocketAddr,
}

/// The local address of an accepted connection: the address the client
/// actually reached, which differs from the bound one when the API listens
/// on an unspecified address.
#[derive(Debug, Clone, Copy)]
pub(super) struct LocalAddr(Option<SocketAddr>);

/// The API's listener: a TCP listener whose connections have Nagle's
/// algorithm off.
pub(super) struct NoDelayListener(pub(super) TcpListener);

impl axum::serve::Listener for NoDelayListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // Best effort: without it responses are only slower.
        crate::net::tune(&stream);
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

pub(super) async fn check_host(State(guard): State<Guard>, req: Request, next: Next) -> Response {
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
pub(super) fn host_header_allowed(headers: &HeaderMap, uri: &Uri, own: &[SocketAddr]) -> bool {
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
pub(super) enum HostName<'a> {
    Ip(IpAddr),
    Name(&'a str),
}

/// Splits `host[:port]` / `[v6][:port]`; `None` if malformed.
pub(super) fn split_host(value: &str) -> Option<(HostName<'_>, Option<u16>)> {
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
pub(super) fn host_allowed(value: &str, own: &[SocketAddr]) -> bool {
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

pub(super) async fn require_token(
    State(guard): State<Guard>,
    req: Request,
    next: Next,
) -> Response {
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
pub(super) fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
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
