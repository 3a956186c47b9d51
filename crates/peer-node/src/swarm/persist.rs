//! `peers.json`: the dialable peers the node knew at shutdown (and every
//! [`PEERS_SAVE_INTERVAL`]), so a restart rejoins without the bootstrap
//! server. Legacy peers are never saved: they announce themselves again.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;
use wire_format::PeerAddr;

use super::state::Swarm;
use super::table::SavedPeer;

/// How often `peers.json` is saved.
pub const PEERS_SAVE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The dialable addresses saved in `path` (none if it is absent or
/// malformed), at most the table's capacity.
pub(crate) fn load_peers(path: &Path) -> Vec<PeerAddr> {
    let saved = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<Vec<SavedPeer>>(&bytes).unwrap_or_else(|err| {
            warn!(path = %path.display(), %err, "ignoring malformed peers file");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    };
    saved
        .iter()
        .take(wire_format::limits::PEER_TABLE_MAX)
        .filter_map(|s| s.addr.parse().ok())
        .collect()
}

/// Dialable addresses worth saving: connected peers, and candidates whose
/// last dial did not fail.
pub(crate) fn known_peers(swarm: &Swarm) -> Vec<SavedPeer> {
    let state = swarm.state();
    // Legacy peers are not saved: they announce themselves again.
    let mut addrs: HashSet<PeerAddr> = state
        .conns
        .values()
        .filter(|c| !c.legacy)
        .filter_map(|c| c.dialable)
        .collect();
    addrs.extend(
        state
            .table
            .iter()
            .filter(|(_, c)| c.failures == 0 && !c.legacy)
            .map(|(a, _)| *a),
    );
    addrs
        .into_iter()
        .map(|a| SavedPeer {
            addr: a.to_string(),
            node_id: None,
        })
        .collect()
}

pub(crate) fn save_known_peers(swarm: &Swarm) {
    write_peers(swarm, &known_peers(swarm));
}

pub(crate) fn write_peers(swarm: &Swarm, peers: &[SavedPeer]) {
    let Some(path) = &swarm.config.peers_file else {
        return;
    };
    // A unique temp file created like a secret (create_new, 0600, no-follow),
    // then renamed over the old list: a planted link is never followed.
    let tmp = path.with_extension(format!("json.{:016x}.tmp", rand::random::<u64>()));
    let result = serde_json::to_vec(peers)
        .map_err(|e| e.to_string())
        .and_then(|bytes| crate::datadir::write_new_secret(&tmp, &bytes).map_err(|e| e.to_string()))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
    if let Err(err) = result {
        let _ = std::fs::remove_file(&tmp);
        warn!(path = %path.display(), %err, "cannot save peers");
    }
}

pub(crate) async fn run_saver(swarm: Arc<Swarm>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(PEERS_SAVE_INTERVAL) => save_known_peers(&swarm),
        }
    }
}
