//! The HELLO exchange of a node's connection, in both directions: the
//! dialler speaks first (HELLO, then PEERS naming itself); the accepting
//! side answers after the first frame, like a bootstrap server. Then the
//! connection goes to [`super::conn`]; a bootstrap announce reads the
//! server's PEERS and closes instead.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tracing::{Instrument, debug, info_span};
use wire_format::{AddrClass, Hello, Message, PeerAddr, Peers};

use super::conn::{self, next_conn_id};
use super::error::{SessionError, count_close};
use crate::clock::now;
use crate::metrics::Metric;
use crate::net::{self, ConnError, FrameReader, PeerKind};
use crate::pieces::Pieces;
use crate::swarm::table::Source;
use crate::swarm::{self, Direction, Swarm};

/// Why the connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A peer connection, kept while it is useful.
    Peer,
    /// A bootstrap announce: read the answer and close (unless the server
    /// turns out to be a legacy peer, whose connection is kept).
    Announce,
}

/// Resolves `server`, announces to it, and learns its peers.
pub(crate) async fn announce(pieces: &Arc<Pieces>, server: &str) -> Result<(), SessionError> {
    let resolve = |reason: String| SessionError::Resolve {
        server: server.to_owned(),
        reason,
    };
    let addr: SocketAddr = tokio::net::lookup_host(server)
        .await
        .map_err(|e| resolve(e.to_string()))?
        .next()
        .ok_or_else(|| resolve("no address".to_owned()))?;
    let stream = net::connect(addr).await?;
    let span =
        info_span!("conn", peer = %addr, dir = "out", conn = next_conn_id(), purpose = "announce");
    run(
        Arc::clone(pieces),
        stream,
        Direction::Out,
        None,
        Purpose::Announce,
    )
    .instrument(span)
    .await
}

/// Runs one connection to its end.
pub(crate) async fn run(
    pieces: Arc<Pieces>,
    stream: TcpStream,
    direction: Direction,
    dialed: Option<PeerAddr>,
    purpose: Purpose,
) -> Result<(), SessionError> {
    let swarm = Arc::clone(&pieces.swarm);
    let remote = PeerAddr::from(stream.peer_addr().map_err(SessionError::Socket)?);
    let local = stream.local_addr().ok();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let config = &swarm.config;
    let legacy_allowed = net::legacy_allowed(remote, config.loopback_is_local, config.legacy);
    let our_hello = Message::Hello(Hello::ours(Some(swarm.listen_port), false, swarm.node_id));
    // Our own address as this peer sees it: the local IP of this connection.
    let me = local.map(|l| PeerAddr::new(l.ip(), swarm.listen_port));
    // That address is ours: a PEERS naming it (peers tell each other whom
    // they know, us included) is dropped, and it is never dialled or saved.
    if let Some(me) = me {
        swarm.state().table.mark_ours(me);
    }

    // The dialler speaks first (HELLO, then PEERS naming itself); the
    // accepting side answers after the first frame, like a bootstrap server.
    if direction == Direction::Out {
        let peers = match purpose {
            Purpose::Announce => {
                Message::Peers(Peers::new(me.into_iter().collect()).unwrap_or_default())
            }
            Purpose::Peer => {
                swarm::first_peers(&swarm, me, None, remote.class() == AddrClass::Loopback)
            }
        };
        for m in [&our_hello, &peers] {
            if let Err(err) = net::write_message(&mut wr, m).await {
                return Err(fail(&swarm, dialed, err));
            }
        }
    }
    let kind = net::read_first_frame(&mut reader, legacy_allowed, config.hello_timeout)
        .await
        .map_err(|err| fail(&swarm, dialed, err))?;
    let (hello, legacy_first) = match kind {
        PeerKind::Extended(hello) => (Some(hello), None),
        PeerKind::Legacy(first) => (None, first),
    };
    if let Some(hello) = &hello {
        swarm.metrics.incr(Metric::HelloReceivedTotal);
        if hello.node_id() == swarm.node_id {
            // Both ends of a self-connection see it; count it once, at the
            // dialler, and answer our HELLO so the dialler sees it too.
            if direction == Direction::Out {
                swarm.metrics.incr(Metric::SelfConnectionsTotal);
            } else {
                let _ = net::write_message(&mut wr, &our_hello).await;
            }
            if let Some(addr) = dialed {
                swarm.state().table.mark_ours(addr);
            }
            debug!("connected to ourselves; that address is never dialled again");
            return Err(SessionError::Ourselves);
        }
    } else {
        swarm.metrics.incr(Metric::LegacyPeersTotal);
    }
    if let Some(hello) = &hello
        && swarm.is_banned(remote.ip(), hello.listen_port(), Some(hello.node_id()))
    {
        swarm.metrics.incr(Metric::ConnectionsRejectedTotal);
        return Err(fail(&swarm, dialed, ConnError::Rule("banned")));
    }

    if direction == Direction::In {
        // Our own address comes first in the first PEERS on every connection;
        // a legacy peer gets only loopback entries (it makes a blocking
        // connect to each).
        let legacy = hello.is_none();
        let peers = swarm::first_peers(&swarm, me, hello.map(|h| h.node_id()), legacy);
        for m in [&our_hello, &peers] {
            if let Err(err) = net::write_message(&mut wr, m).await {
                count_close(&swarm.metrics, &err);
                return Err(err.into());
            }
        }
        swarm.metrics.incr(Metric::PexFramesSentTotal);
    }
    // Probes and tools (CLIENT) get the same answers as anyone but are never
    // recorded, listed, dialled back or deduplicated.
    let record = !hello.is_some_and(|h| h.flags().client());
    if purpose == Purpose::Announce && hello.is_some() {
        return read_bootstrap_answer(&swarm, &mut reader, remote).await;
    }
    let conn = conn::Handshaken {
        reader,
        wr,
        remote,
        direction,
        dialed,
        hello,
        legacy_first,
    };
    if purpose == Purpose::Announce {
        // A legacy bootstrap node keeps its connection (closing it while it
        // writes kills it); it lives on as a peer connection of its own.
        tokio::spawn(
            async move {
                let _ = conn::serve(pieces, conn, true).await;
            }
            .in_current_span(),
        );
        return Ok(());
    }
    conn::serve(pieces, conn, record).await
}

/// Records a failed handshake (against the address dialled, which then
/// backs off).
fn fail(swarm: &Swarm, dialed: Option<PeerAddr>, err: ConnError) -> SessionError {
    count_close(&swarm.metrics, &err);
    if let Some(addr) = dialed {
        swarm
            .state()
            .table
            .dial_failed(&addr, err.to_string(), now());
    }
    debug!(%err, "handshake failed");
    err.into()
}

async fn read_bootstrap_answer(
    swarm: &Swarm,
    reader: &mut FrameReader<OwnedReadHalf>,
    server: PeerAddr,
) -> Result<(), SessionError> {
    loop {
        match net::read_one(reader, swarm.config.hello_timeout).await? {
            Some(Message::Peers(peers)) => {
                swarm::offer(swarm, server.ip(), &peers, Source::Bootstrap, false);
                swarm.metrics.incr(Metric::BootstrapAnnouncesTotal);
                debug!(entries = peers.entries().len(), "bootstrap answered");
                return Ok(());
            }
            Some(_) => {}
            None => return Err(SessionError::NoBootstrapAnswer),
        }
    }
}
