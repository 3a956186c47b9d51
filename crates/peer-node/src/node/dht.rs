//! The DHT announcer (`--dht`): every pinned root the node holds goes out
//! on the DHT as [`AnnounceSchedule`] says.

use std::sync::Arc;
use std::time::Instant;

use piece_store::Root;
use tokio::sync::watch;
use tracing::debug;

#[cfg(doc)]
use crate::dht::AnnounceSchedule;
use crate::dht::{DHT_ANNOUNCE_TICK, DhtNode};
use crate::metrics::Metric;
use crate::pieces::Pieces;

/// Announces the node's pinned roots until `stop`.
pub(crate) async fn run_announcer(
    pieces: Arc<Pieces>,
    dht: Arc<DhtNode>,
    mut stop: watch::Receiver<bool>,
) {
    // Announcing into a routing table still empty would fail every root.
    tokio::select! {
        _ = stop.changed() => return,
        joined = dht.bootstrapped() => debug!(joined, "DHT bootstrapped"),
    }
    let listen_port = pieces.swarm.listen_port;
    loop {
        let store = Arc::clone(&pieces.store);
        let held = tokio::task::spawn_blocking(move || {
            store
                .roots()
                .into_iter()
                .map(|root| match root {
                    Root::File(id) | Root::Piece(id) => id,
                })
                .filter(|id| store.has(id))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let due = dht.schedule().due(&held, Instant::now());
        for id in due {
            let dht = Arc::clone(&dht);
            let pieces = Arc::clone(&pieces);
            tokio::spawn(async move {
                if dht.announce(&id, listen_port).await {
                    pieces.metrics.incr(Metric::DhtAnnouncesTotal);
                    debug!(%id, "announced on the DHT");
                } else {
                    pieces.metrics.incr(Metric::DhtAnnounceFailuresTotal);
                    dht.schedule().failed(&id, Instant::now());
                    debug!(%id, "DHT announce failed; retrying later");
                }
            });
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(DHT_ANNOUNCE_TICK) => {}
        }
    }
}
