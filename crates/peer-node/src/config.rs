//! How to run a node: [`NodeConfig`] and its defaults. Every part of the
//! node reads its settings from here.
//!
//! Uses nothing else of the crate but the DHT's own settings and the
//! swarm's replacement defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::dht::DhtConfig;
use wire_format::limits::{FETCH_TIMEOUT, HELLO_TIMEOUT, REANNOUNCE_INTERVAL};

/// Outbound connections the node keeps open when it knows enough peers.
pub const DEFAULT_TARGET_OUTBOUND: usize = 8;
/// Default global connection limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// Bootstrap servers (`host:port`), asked at start and every re-announce.
    pub bootstrap: Vec<String>,
    /// Where `peers.json` lives (none: nothing persisted).
    pub peers_file: Option<PathBuf>,
    /// Global connection limit.
    pub max_connections: usize,
    /// Outbound connections to keep.
    pub target_outbound: usize,
    /// Accept private addresses from public senders.
    pub allow_private: bool,
    /// Treat non-loopback peers that send no HELLO as legacy peers.
    pub legacy: bool,
    /// HELLO deadline.
    pub hello_timeout: Duration,
    /// Re-announce interval.
    pub reannounce: Duration,
    /// Whether loopback peers get the exemptions of peers on this machine
    /// (legacy detection without `--legacy`, no per-IP connection limit).
    /// Always true in the binary; tests set it false to see how a peer from
    /// another host is treated without needing a second host.
    pub loopback_is_local: bool,
    /// Global limit on piece bytes given to peers, per second (`None`: unlimited).
    pub max_upload_rate: Option<u64>,
    /// Global limit on piece bytes asked from peers, per second (`None`:
    /// unlimited). Charged when an ASK is sent, at the full piece size.
    pub max_download_rate: Option<u64>,
    /// Total deadline of one piece fetch when the requester names none.
    pub fetch_timeout: Duration,
    /// `--dht`: run a Mainline DHT node (`None`: off, the default).
    pub dht: Option<DhtConfig>,
    /// How old an inbound connection that never carried data must be
    /// before a full node replaces it with a newcomer
    /// ([`REPLACE_MIN_AGE`](crate::swarm::REPLACE_MIN_AGE); tests shorten it).
    pub replace_min_age: Duration,
    /// Least time between two such replacements
    /// ([`REPLACE_INTERVAL`](crate::swarm::REPLACE_INTERVAL); tests change it).
    pub replace_interval: Duration,
}

impl NodeConfig {
    /// Inbound connections accepted: the global limit less the outbound
    /// slots, so inbound floods never take the slots the node dials with.
    pub fn max_inbound(&self) -> usize {
        self.max_connections
            .saturating_sub(self.target_outbound)
            .max(1)
    }

    /// Defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            peers_file: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            target_outbound: DEFAULT_TARGET_OUTBOUND,
            allow_private: false,
            legacy: false,
            hello_timeout: HELLO_TIMEOUT,
            reannounce: REANNOUNCE_INTERVAL,
            loopback_is_local: true,
            max_upload_rate: None,
            max_download_rate: None,
            fetch_timeout: FETCH_TIMEOUT,
            dht: None,
            replace_min_age: crate::swarm::REPLACE_MIN_AGE,
            replace_interval: crate::swarm::REPLACE_INTERVAL,
        }
    }
}
