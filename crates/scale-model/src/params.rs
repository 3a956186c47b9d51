//! The numbers the model runs with. Those of the peer node and the
//! bootstrap server are copied from the real code (named beside each); the
//! DHT's are those of the `mainline` crate (8.0.1, the same in 6.2.0); the
//! rest are the model's own, set from the real runs of docs/SCALE.md.
//!
//! Times are microseconds of model time.

/// One second of model time.
pub const SECOND: u64 = 1_000_000;
/// One millisecond of model time.
pub const MILLI: u64 = 1_000;

/// Outbound connections a node keeps (`peer_node::config::DEFAULT_TARGET_OUTBOUND`).
pub const TARGET_OUTBOUND: usize = 8;
/// Connections a node holds at most (`peer_node::config::DEFAULT_MAX_CONNECTIONS`).
pub const MAX_CONNECTIONS: usize = 64;
/// Inbound connections a node accepts: the limit less the outbound target
/// (`NodeConfig::max_inbound`).
pub const MAX_INBOUND: usize = MAX_CONNECTIONS - TARGET_OUTBOUND;
/// New connects a node makes per second, its dialler and its fetches
/// together (`wire_format::limits::DIAL_RATE_PER_SEC`).
pub const DIAL_RATE_PER_SEC: u64 = 10;
/// Dial-budget credit one connect costs (`peer_node::swarm::budget`).
pub const DIAL_COST: u64 = SECOND / DIAL_RATE_PER_SEC;
/// Most dial-budget credit held: a second's worth of connects.
pub const DIAL_BURST: u64 = SECOND;
/// How often the dialler looks for work (`peer_node::swarm::dial::DIAL_TICK`);
/// it dials at most one peer per tick.
pub const DIAL_TICK: u64 = 100 * MILLI;
/// First retry delay after a failed dial, doubling
/// (`peer_node::swarm::table::DIAL_BACKOFF_BASE`).
pub const DIAL_BACKOFF_BASE: u64 = SECOND;
/// Longest retry delay after failed dials (`DIAL_BACKOFF_MAX`).
pub const DIAL_BACKOFF_MAX: u64 = 600 * SECOND;
/// Entries of one PEERS frame, and of a bootstrap server's answer
/// (`wire_format::limits::PEX_MAX_ENTRIES`).
pub const PEX_MAX_ENTRIES: usize = 50;
/// A connection's PEERS after the first, once per interval
/// (`wire_format::limits::PEX_INTERVAL`).
pub const PEX_INTERVAL: u64 = 60 * SECOND;
/// Addresses a node's peer table holds at most (`wire_format::limits::PEER_TABLE_MAX`).
pub const PEER_TABLE_MAX: usize = 2_000;
/// First quick re-announce of a node that knows too few peers, doubling
/// (`peer_node::node::HUNGRY_ANNOUNCE_FIRST`).
pub const HUNGRY_ANNOUNCE_FIRST: u64 = 500 * MILLI;
/// Re-announce interval (`wire_format::limits::REANNOUNCE_INTERVAL`).
pub const REANNOUNCE_INTERVAL: u64 = 600 * SECOND;

/// Peers dialled per widening round (`peer_node::pieces::WIDEN_DIALS`).
pub const WIDEN_DIALS: usize = 8;
/// Peers one fetch dials at most while widening (`peer_node::pieces::WIDEN_MAX_PEERS`).
pub const WIDEN_MAX_PEERS: usize = 128;
/// A widening round ends this long after it started once its dials are
/// done (`WIDEN_SETTLE` in `peer_node::pieces::fetch`).
pub const WIDEN_SETTLE: u64 = 100 * MILLI;
/// A widening round ends after this however its dials fare (`WIDEN_WAIT`).
pub const WIDEN_WAIT: u64 = 3 * SECOND;
/// A connection dialled for a fetch that outlived it closes once idle this
/// long (`peer_node::pieces::WIDEN_LINGER`).
pub const WIDEN_LINGER: u64 = 3 * SECOND;
/// How often a fetch wakes without news (`FETCH_TICK` in `peer_node::pieces::fetch`).
pub const FETCH_TICK: u64 = 50 * MILLI;
/// A fetch's default deadline (`wire_format::limits::FETCH_TIMEOUT`).
pub const FETCH_TIMEOUT: u64 = 10 * SECOND;

/// Bucket size, nodes per response and storage nodes per key of the
/// `mainline` crate (`MAX_BUCKET_SIZE_K`).
pub const MAINLINE_K: usize = 20;
/// Holders one `get_peers` response carries at most: the `mainline`
/// crate's `PeersStore::get_random_peers` returns 10 at random.
pub const MAINLINE_VALUES: usize = 10;
/// Holders a DHT lookup of one fetch dials at most (the design's cap).
pub const DHT_DIAL_CAP: usize = 16;

/// Nodes started per second in the real runs (`scripts/scale.sh` starts
/// them in a loop on 2 cores): 100 formed in 3.9 s and 300 in 10.7 s, each
/// shortly after its last node started.
pub const JOIN_RATE_PER_SEC: u64 = 28;
/// One-way delay of a message between two processes on the real runs'
/// loopback, loaded by hundreds of processes on 2 cores (mean; each message
/// draws from half to one and a half of it).
pub const LATENCY: u64 = 2 * MILLI;
/// Time from formation to the first fetch: the real runs wait 2 s, measure
/// memory and store N−1 pieces in node 1 first.
pub const SETTLE: u64 = 10 * SECOND;
/// Fetches under way at once (`scripts/scale.sh` runs 10 at a time).
pub const CONCURRENCY: usize = 10;
