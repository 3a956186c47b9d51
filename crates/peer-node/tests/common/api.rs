//! A node with its local API served, as the binary wires it, and a raw
//! HTTP/1.1 client for it: what the API tests against real nodes share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use peer_node::api::{self, ApiBackend, NodeApi, SHA256_HEADER};
use peer_node::node::NodeConfig;
use peer_node::testing::wait_for;
use piece_store::PieceStore;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use wire_format::PieceId;

use super::{SOON, TestNode};

pub const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Deadline for one whole request and its response.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(20);

/// A node with its API served on a port of its own.
pub struct ApiNode {
    pub node: TestNode,
    pub api: SocketAddr,
    /// Dropped with the test: the API stops.
    _stop: oneshot::Sender<()>,
}

impl ApiNode {
    pub async fn start(target_outbound: usize) -> Self {
        Self::start_with(|c| c.target_outbound = target_outbound).await
    }

    /// A node configured by `configure`, with its API served.
    pub async fn start_with(configure: impl FnOnce(&mut NodeConfig)) -> Self {
        Self::serve(TestNode::start(configure).await).await
    }

    /// A node that dials nobody, with pieces kept in `store`, and its API.
    pub async fn start_with_store(store: Arc<dyn PieceStore>) -> Self {
        Self::serve(TestNode::start_with_store(store, |_| {}).await).await
    }

    /// Serves `node`'s API on a port of its own.
    pub async fn serve(node: TestNode) -> Self {
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
    pub async fn connected_pair() -> (Self, Self) {
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

    pub async fn get_piece(&self, id: PieceId) -> Response {
        self.request("GET", &format!("/api/v1/pieces/{id}"), true, &[])
            .await
    }

    pub async fn post_piece(&self, body: &[u8]) -> Response {
        self.request("POST", "/api/v1/pieces", true, body).await
    }

    /// One request with our `Host`, the token if `authorized`, and `body`
    /// with its `Content-Length`; the response read until the server closes.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        authorized: bool,
        body: &[u8],
    ) -> Response {
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
pub async fn send_and_read(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
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
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a `Content-Length` body (the API sends no other).
    pub fn parse(raw: &[u8]) -> Self {
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

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|ct| ct.starts_with("application/json")),
            "{self:?}"
        );
        serde_json::from_slice(&self.body).unwrap()
    }

    /// Asserts `status` with an `{"error": "..."}` body (that one field).
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        let json = self.json();
        let fields = json.as_object().unwrap();
        assert_eq!(fields.keys().collect::<Vec<_>>(), ["error"], "{json}");
        assert!(!fields["error"].as_str().unwrap().is_empty(), "{json}");
    }

    /// Asserts a 200 carrying exactly `bytes`, named `id`.
    pub fn assert_piece(&self, id: PieceId, bytes: &[u8]) {
        assert_eq!(self.status, 200, "{:?}", self.headers);
        assert_eq!(self.header(SHA256_HEADER), Some(id.to_hex().as_str()));
        assert!(self.body == bytes, "the body differs from the piece");
    }
}
