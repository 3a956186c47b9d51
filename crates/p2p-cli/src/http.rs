//! The HTTP client of the node's API, over `ureq`: one agent with bounded
//! connect and response times, no proxy (the token must go to the node and
//! nowhere else), no redirects, and bounded response bodies. Turns every
//! status and transport failure into a [`CliError`] that says what failed
//! and what to do.

use std::io::Read;
use std::time::Duration;

use serde_json::Value;
use ureq::http::Response;
use ureq::{Agent, Body};
use wire_format::limits::{CONNECT_TIMEOUT, PIECE_MAX};

use crate::error::{CliError, CliResult, Exit};
use crate::locate::Endpoint;

/// How long the node may take to answer a request, beyond any fetch
/// deadline the request itself names (which is added to it).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest JSON response read: a full peer table (2,000 peers of a few
/// hundred bytes) or a large store listing fits many times over.
pub const MAX_JSON_BYTES: u64 = 32 << 20;

/// Largest piece response read: one piece and room for framing. Anything
/// longer is refused before it is all in memory.
pub const MAX_PIECE_BODY_BYTES: u64 = (PIECE_MAX as u64) + (64 << 10);

/// Largest error body quoted back to the user.
const MAX_ERROR_BODY_BYTES: u64 = 64 << 10;

/// What the node's 404 says for a route it does not have; anything else is
/// a 404 about the thing asked for.
const UNKNOWN_ROUTE_PREFIX: &str = "no such endpoint";

/// The API of one node.
pub struct Api {
    agent: Agent,
    endpoint: Endpoint,
    base: String,
}

/// An HTTP method, for [`Api::call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT without a body.
    Put,
    /// POST without a body.
    Post,
    /// DELETE.
    Delete,
}

impl Api {
    /// A client of `endpoint` whose requests may take `extra` longer than
    /// [`RESPONSE_TIMEOUT`] (a fetch deadline the request names).
    pub fn new(endpoint: Endpoint, extra: Duration) -> Self {
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RESPONSE_TIMEOUT + extra))
            .timeout_recv_body(Some(RESPONSE_TIMEOUT + extra))
            .timeout_per_read(Some(RESPONSE_TIMEOUT + extra))
            .timeout_per_write(Some(RESPONSE_TIMEOUT))
            .user_agent(concat!("p2p-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        // Built from the socket address, so `Host` is the address the API
        // bound (or a loopback IP), which it accepts.
        let base = format!("http://{}", endpoint.addr);
        Self {
            agent,
            endpoint,
            base,
        }
    }

    /// Where the API is.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn auth(&self) -> Option<String> {
        self.endpoint.token.as_ref().map(|t| format!("Bearer {t}"))
    }

    /// A request without a body; query pairs are percent-encoded.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> CliResult<Response<Body>> {
        let url = self.url(path);
        let auth = self.auth();
        let result = match method {
            Method::Get => with_auth(self.agent.get(&url), auth)
                .query_pairs(query.iter().copied())
                .call(),
            Method::Delete => with_auth(self.agent.delete(&url), auth)
                .query_pairs(query.iter().copied())
                .call(),
            Method::Put => with_auth(self.agent.put(&url), auth)
                .query_pairs(query.iter().copied())
                .send_empty(),
            Method::Post => with_auth(self.agent.post(&url), auth)
                .query_pairs(query.iter().copied())
                .send_empty(),
        };
        result.map_err(|err| self.transport(err))
    }

    /// A POST of a JSON body.
    pub fn post_json(&self, path: &str, body: &Value) -> CliResult<Response<Body>> {
        let bytes = serde_json::to_vec(body)
            .map_err(|err| CliError::local(format!("cannot encode the request: {err}")))?;
        with_auth(self.agent.post(self.url(path)), self.auth())
            .content_type("application/json")
            .send(&bytes[..])
            .map_err(|err| self.transport(err))
    }

    /// A POST whose body is streamed from `body` (never read whole into
    /// memory): a file is sent with its length, a pipe chunked. The body
    /// waits for the node's `100 Continue`, so a refusal (no such route, a
    /// bad token, too large) arrives as an answer instead of a broken pipe
    /// in the middle of the upload.
    pub fn post_stream(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: impl ureq::AsSendBody,
    ) -> CliResult<Response<Body>> {
        with_auth(self.agent.post(self.url(path)), self.auth())
            .query_pairs(query.iter().copied())
            .content_type("application/octet-stream")
            .header("expect", "100-continue")
            .send(body)
            .map_err(|err| self.transport(err))
    }

    /// `response` if its status is a success, else the error its status and
    /// body say. `what` names the command for "does not support" messages.
    pub fn check(&self, mut response: Response<Body>, what: &str) -> CliResult<Response<Body>> {
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(response);
        }
        let text = error_text(&mut response);
        let addr = self.endpoint.addr;
        let unknown_route = matches!(status, 404 | 405)
            && (status == 405 || text.starts_with(UNKNOWN_ROUTE_PREFIX));
        let err = if unknown_route {
            CliError::usage(format!(
                "the node at {addr} does not support `{what}` yet (it answered {status}: {text}): update peer-node"
            ))
        } else {
            match status {
                400 => CliError::usage(format!("the node refused the request: {text}")),
                401 => CliError::usage(format!(
                    "the API token was refused by the node at {addr} ({}): read the token from the node's DATA/api-token, or pass --token",
                    self.endpoint.token_origin
                )),
                403 => CliError::usage(format!("the node at {addr} refused the request: {text}")),
                404 => CliError::new(Exit::NotFound, format!("not found: {text}")),
                413 => CliError::local(format!("the node refused the data as too large: {text}")),
                429 => CliError::local(format!(
                    "the node at {addr} is busy: {text}; wait for one of its fetches to end (p2p-cli ls shows the files), then retry"
                )),
                503 => CliError::unreachable(format!(
                    "the node at {addr} is shutting down: {text}; start it again and retry"
                )),
                504 => CliError::new(
                    Exit::Deadline,
                    format!(
                        "the deadline passed while some peers had not answered: {text}; try again, or pass a longer --timeout"
                    ),
                ),
                507 => CliError::local(format!(
                    "the node's store is full: {text}; unpin files, run `p2p-cli gc`, or give the node a larger --max-store"
                )),
                _ => CliError::local(format!("the node at {addr} failed ({status}): {text}")),
            }
        };
        Err(err)
    }

    /// The JSON body of a checked response, read up to [`MAX_JSON_BYTES`].
    pub fn json(&self, mut response: Response<Body>) -> CliResult<Value> {
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_JSON_BYTES)
            .read_to_vec()
            .map_err(|err| self.transport(err))?;
        serde_json::from_slice(&bytes).map_err(|err| {
            CliError::new(
                Exit::BadData,
                format!(
                    "the node at {} answered with JSON this client cannot read: {err}; is it a peer-node API of a matching version?",
                    self.endpoint.addr
                ),
            )
        })
    }

    /// The body of a checked response, read up to `limit` bytes.
    pub fn bytes(&self, mut response: Response<Body>, limit: u64) -> CliResult<Vec<u8>> {
        response
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|err| self.transport(err))
    }

    /// What a failed exchange means for the user.
    pub fn transport(&self, err: ureq::Error) -> CliError {
        let addr = self.endpoint.addr;
        let origin = &self.endpoint.origin;
        match err {
            ureq::Error::ConnectionFailed | ureq::Error::Timeout(ureq::Timeout::Connect) => {
                no_node(addr, origin)
            }
            ureq::Error::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::AddrNotAvailable
                ) =>
            {
                no_node(addr, origin)
            }
            ureq::Error::Timeout(which) => CliError::unreachable(format!(
                "the node at {addr} did not answer in time ({which}): it may be stuck or overloaded; check its log and try again"
            )),
            ureq::Error::BodyExceedsLimit(limit) => CliError::new(
                Exit::BadData,
                format!(
                    "the node at {addr} sent more than {limit} bytes, more than this request can answer; is it a peer-node API?"
                ),
            ),
            other => CliError::unreachable(format!(
                "talking to the node at {addr} ({origin}) failed: {other}; check that a peer-node API listens there"
            )),
        }
    }
}

fn with_auth<B>(request: ureq::RequestBuilder<B>, auth: Option<String>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => request.header("authorization", value),
        None => request,
    }
}

/// The message no node answering gives.
pub fn no_node(addr: std::net::SocketAddr, origin: &str) -> CliError {
    CliError::unreachable(format!(
        "no node answers at {addr} ({origin}): start one with peer-node, or pass --api"
    ))
}

/// The `error` of an error body, else the body as text, bounded.
fn error_text(response: &mut Response<Body>) -> String {
    let mut bytes = Vec::new();
    let read = response
        .body_mut()
        .as_reader()
        .take(MAX_ERROR_BODY_BYTES)
        .read_to_end(&mut bytes);
    if read.is_err() && bytes.is_empty() {
        return "(no readable body)".to_owned();
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => match value.get("error").and_then(Value::as_str) {
            Some(text) => text.to_owned(),
            None => value.to_string(),
        },
        Err(_) => String::from_utf8_lossy(&bytes).trim().to_owned(),
    }
}
