//! Where connections come from: sockets accepted (and admitted by the
//! swarm's limits), dials the swarm chose, and announces to the bootstrap
//! servers. Each becomes a session task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, info_span, warn};
use wire_format::PeerAddr;

use crate::metrics::Metric;
use crate::net;
use crate::pieces::Pieces;
use crate::session::{self, Purpose, next_conn_id};
use crate::swarm::Direction;

/// First quick re-announce while the node knows too few peers; doubles
/// each time up to the re-announce interval.
pub const HUNGRY_ANNOUNCE_FIRST: Duration = Duration::from_millis(500);

/// Runs `stream` as a session if the swarm's connection limits admit it;
/// otherwise it is closed at once (dropped).
pub(super) fn accept(pieces: &Arc<Pieces>, stream: TcpStream, remote: SocketAddr) {
    let remote = PeerAddr::from(remote);
    // Every admitted socket counts from now until its task ends.
    // A full node may replace an inbound connection that never carried
    // data, but never one with ASKs of ours waiting.
    let busy = |conn: u64| pieces.link(conn).is_some_and(|l| l.ask_book().load() > 0);
    let Some(slot) = pieces.swarm.admit(remote, busy) else {
        return;
    };
    net::tune(&stream);
    let span = info_span!("conn", peer = %remote, dir = "in", conn = next_conn_id());
    let pieces = Arc::clone(pieces);
    tokio::spawn(
        async move {
            let _slot = slot;
            let _ = session::run(pieces, stream, Direction::In, None, Purpose::Peer).await;
        }
        .instrument(span),
    );
}

/// Runs every dial the swarm chooses, each in its own task, until `stop`.
pub(super) async fn run_dials(
    pieces: Arc<Pieces>,
    mut dials: mpsc::Receiver<PeerAddr>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let addr = tokio::select! {
            _ = stop.changed() => return,
            addr = dials.recv() => match addr {
                Some(addr) => addr,
                None => return,
            },
        };
        tokio::spawn(dial(Arc::clone(&pieces), addr));
    }
}

/// Dials `addr` and runs the connection.
async fn dial(pieces: Arc<Pieces>, addr: PeerAddr) {
    let swarm = Arc::clone(&pieces.swarm);
    swarm.metrics.incr(Metric::DialAttemptsTotal);
    let error = match net::connect(addr.socket_addr()).await {
        Ok(stream) => {
            swarm.metrics.incr(Metric::ConnectionsOutboundTotal);
            let span = info_span!("conn", peer = %addr, dir = "out", conn = next_conn_id());
            // A handshake that fails is recorded against the address by the
            // session itself.
            let _ = session::run(pieces, stream, Direction::Out, Some(addr), Purpose::Peer)
                .instrument(span)
                .await;
            None
        }
        Err(err) => {
            swarm.metrics.incr(Metric::DialFailuresTotal);
            Some(err.to_string())
        }
    };
    swarm.dial_ended(&addr, error);
}

/// Announces to every bootstrap server at start, then every re-announce
/// interval, or sooner while the node knows too few peers.
pub(super) async fn run_announcer(pieces: Arc<Pieces>, mut stop: watch::Receiver<bool>) {
    let config = &pieces.swarm.config;
    if config.bootstrap.is_empty() {
        return;
    }
    let mut hungry_delay = HUNGRY_ANNOUNCE_FIRST;
    loop {
        for server in &config.bootstrap {
            let announced = {
                let _announcing = pieces.swarm.announcing();
                session::announce(&pieces, server).await
            };
            if let Err(err) = announced {
                warn!(%server, %err, "bootstrap announce failed");
            }
        }
        // While the node knows fewer peers than it wants to dial, ask again
        // soon (the server lists newcomers once it has probed them), backing
        // off to the re-announce interval.
        let delay = if pieces.swarm.is_hungry() {
            let delay = hungry_delay;
            hungry_delay = (hungry_delay * 2).min(config.reannounce);
            delay
        } else {
            config.reannounce
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
