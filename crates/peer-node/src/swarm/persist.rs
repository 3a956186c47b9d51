//! `peers.json`: the dialable peers the node knew at shutdown (and every
//! [`PEERS_SAVE_INTERVAL`]), so a restart rejoins without the bootstrap
//! server. Legacy peers are never saved: they announce themselves again.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use piece_store::state_file;
use tokio::sync::watch;
use tracing::warn;
use wire_format::PeerAddr;
use wire_format::limits::PEER_TABLE_MAX;

use super::state::Swarm;
use super::table::SavedPeer;

/// How often `peers.json` is saved.
pub const PEERS_SAVE_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The most bytes one saved peer takes in `peers.json`: the longest
/// address (`[` + 39 + `]:65535`), 16 hex digits, the keys and the JSON
/// around them, rounded up.
pub const SAVED_PEER_MAX_BYTES: u64 = 128;

/// The largest `peers.json` read: a full table's worth of entries. A larger
/// file was not written by a node and is ignored unread.
pub const PEERS_FILE_MAX_BYTES: u64 = PEER_TABLE_MAX as u64 * SAVED_PEER_MAX_BYTES + 2;

/// The dialable addresses saved in `path` (none if it is absent, too large
/// or malformed), at most the table's capacity.
pub(crate) fn load_peers(path: &Path) -> Vec<PeerAddr> {
    let saved = match state_file::read(path, PEERS_FILE_MAX_BYTES) {
        Ok(Some(bytes)) => serde_json::from_slice::<Vec<SavedPeer>>(&bytes).unwrap_or_else(|err| {
            warn!(path = %path.display(), %err, "ignoring malformed peers file");
            Vec::new()
        }),
        Ok(None) => Vec::new(),
        Err(err) => {
            warn!(%err, "ignoring peers file");
            Vec::new()
        }
    };
    saved
        .iter()
        .take(PEER_TABLE_MAX)
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
    // Atomic and private: a fresh 0600 temp file (never following a
    // planted link), fsynced, renamed over the old list, directory fsynced.
    let result = serde_json::to_vec(peers)
        .map_err(|e| e.to_string())
        .and_then(|bytes| state_file::write(path, &bytes).map_err(|e| e.to_string()));
    if let Err(err) = result {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_table_fits_the_peers_file_bound() {
        let longest = SavedPeer {
            addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into(),
            node_id: Some("0123456789abcdef".into()),
        };
        let full = vec![longest; PEER_TABLE_MAX];
        let bytes = serde_json::to_vec(&full).unwrap();
        assert!(bytes.len() as u64 <= PEERS_FILE_MAX_BYTES);
    }

    #[test]
    fn a_peers_file_over_the_bound_is_ignored_and_one_at_it_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        let entry = r#"{"addr":"127.0.0.1:7001","node_id":null}"#;
        let bound = usize::try_from(PEERS_FILE_MAX_BYTES).unwrap();
        // One entry, padded with spaces to exactly the bound.
        let at_bound = format!("[{entry}{}]", " ".repeat(bound - entry.len() - 2));
        std::fs::write(&path, &at_bound).unwrap();
        assert_eq!(load_peers(&path).len(), 1);
        std::fs::write(&path, format!("{at_bound} ")).unwrap();
        assert!(load_peers(&path).is_empty());
    }
}
