//! What the bootstrap-server integration tests share: a server running in
//! the test's runtime, and a raw client speaking frames to it.
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code, reason = "each test crate uses a different part")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bootstrap_server::{Server, ServerConfig, ServerStats};
use peer_node::net::{ConnError, FrameReader, read_one, write_message};
use peer_node::testing::frames_until_closed;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wire_format::{Hello, Message, NodeId, PeerAddr, Peers};

/// How long a test waits for something that should happen at once.
pub const SOON: Duration = Duration::from_secs(5);

/// Longest a clean stop may take (the server's grace period is 5 s).
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// A bootstrap server running in the test's runtime until
/// [`stop`](Self::stop) is called, or `shutdown` is sent or dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub verified: Box<dyn Fn() -> usize + Send + Sync>,
    pub stats: Box<dyn Fn() -> ServerStats + Send + Sync>,
    pub shutdown: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Runs a bound server.
    pub fn start(server: Server) -> Self {
        let addr = server.local_addr().unwrap();
        let verified = Box::new(server.verified_counter());
        let stats = Box::new(server.stats_handle());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            verified,
            stats,
            shutdown,
            task,
        }
    }

    /// Sends the shutdown and waits until `run` has returned (registry saved).
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        tokio::time::timeout(STOP_DEADLINE, self.task)
            .await
            .expect("the bootstrap server stops in time")
            .unwrap();
    }
}

/// A server on `127.0.0.1:0` with the defaults, adjusted by `configure`.
pub async fn start_server_with(configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
    let mut config = ServerConfig::new("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    TestServer::start(Server::bind(config).await.unwrap())
}

/// A raw client socket.
pub struct Client {
    reader: FrameReader<TcpStream>,
}

impl Client {
    /// Connects and sends nothing: a socket the server waits on for HELLO.
    pub async fn connect(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).await.unwrap();
        Self {
            reader: FrameReader::new(stream),
        }
    }

    /// Connects from `local` (an IP of this host) and sends nothing.
    pub async fn connect_from(server: SocketAddr, local: IpAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        Self {
            reader: FrameReader::new(socket.connect(server).await.unwrap()),
        }
    }

    /// A tool or a probe: HELLO with the CLIENT flag, answered like anyone
    /// and never recorded. Returns once the answer has arrived.
    pub async fn probe(server: SocketAddr, id: u8) -> Self {
        Self::connect(server).await.into_probe(id).await
    }

    /// [`probe`](Self::probe) on a socket already connected.
    pub async fn into_probe(mut self, id: u8) -> Self {
        self.send(&Message::Hello(Hello::ours(None, true, NodeId([id; 8]))))
            .await
            .unwrap();
        self.expect_answer().await;
        self
    }

    /// The reference program: PEERS naming itself, never HELLO, and it
    /// keeps its connection. Returns once the answer has arrived.
    pub async fn legacy(server: SocketAddr, port: u16) -> Self {
        let mut client = Self::connect(server).await;
        let me = PeerAddr::new("127.0.0.1".parse().unwrap(), port);
        client
            .send(&Message::Peers(Peers::new(vec![me]).unwrap()))
            .await
            .unwrap();
        client.expect_answer().await;
        client
    }

    /// An announce (HELLO with `port`, then PEERS naming itself) that may
    /// meet a closed socket: a write error is left for the reads to see.
    pub async fn try_announce(server: SocketAddr, id: u8, port: u16) -> Self {
        let mut client = Self::connect(server).await;
        let me = PeerAddr::new("127.0.0.1".parse().unwrap(), port);
        let hello = Message::Hello(Hello::ours(Some(port), false, NodeId([id; 8])));
        if client.send(&hello).await.is_ok() {
            let _ = client
                .send(&Message::Peers(Peers::new(vec![me]).unwrap()))
                .await;
        }
        client
    }

    pub async fn send(&mut self, message: &Message) -> Result<usize, ConnError> {
        write_message(self.reader.get_mut(), message).await
    }

    /// Writes raw bytes (part of a frame, say); the server may close first.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::io::AsyncWriteExt::write_all(self.reader.get_mut(), bytes).await
    }

    /// The server's answer: its HELLO, then one PEERS.
    pub async fn expect_answer(&mut self) -> Peers {
        match read_one(&mut self.reader, SOON).await {
            Ok(Some(Message::Hello(_))) => {}
            other => panic!("expected the server's HELLO, got {other:?}"),
        }
        match read_one(&mut self.reader, SOON).await {
            Ok(Some(Message::Peers(peers))) => peers,
            other => panic!("expected the server's PEERS, got {other:?}"),
        }
    }

    /// Reads until the server closes (EOF or reset) within [`SOON`];
    /// returns the frames that came before the close.
    pub async fn expect_closed(&mut self) -> Vec<Message> {
        frames_until_closed(&mut self.reader, SOON)
            .await
            .unwrap_or_else(|err| panic!("{err}"))
    }
}
