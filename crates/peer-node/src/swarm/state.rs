//! The swarm's shared state: the live connections as peers, the dials in
//! progress, the table and the dial budget under one lock; the bans; the
//! accepted-socket counts; the dial queue the node drains.
//!
//! Uses the table, the bans, the dial budget and the views' types.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use wire_format::{NodeId, PeerAddr, PieceId, host_key};

use super::bans::{BanTarget, Bans};
use super::budget::{DIAL_QUEUE, DialBudget};
use super::table::{PeerTable, Source};
use super::views::Direction;
use crate::clock::now;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::net::{Closer, OpenSockets, RefusalWarnings};

/// One registered connection, as a peer.
#[derive(Debug)]
pub(crate) struct ConnEntry {
    pub(crate) node_id: Option<NodeId>,
    pub(crate) remote: PeerAddr,
    /// Where the peer accepts connections, once known.
    pub(crate) dialable: Option<PeerAddr>,
    pub(crate) direction: Direction,
    pub(crate) legacy: bool,
    /// Which node opened it (for the duplicate rule).
    pub(crate) opener: Option<NodeId>,
    pub(crate) since: SystemTime,
    /// Closes it (the loser of the duplicate rule).
    pub(crate) closer: Arc<Closer>,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: Arc<AtomicU64>,
}

/// What the swarm guards with one lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) conns: HashMap<u64, ConnEntry>,
    pub(crate) dialing: HashSet<PeerAddr>,
    /// Of `dialing`, those a widening fetch chose: short-lived, closed once
    /// they said they do not hold what it looked for (while the node has
    /// more outbound connections than its target).
    pub(crate) widen_dials: HashSet<PeerAddr>,
    pub(crate) table: PeerTable,
    /// New connects allowed now (docs/PROTOCOL.md §4: dialling is
    /// rate-limited), shared by the dialler and widening fetches.
    pub(crate) dial_budget: DialBudget,
}

impl State {
    /// Outbound connections (registered) to the host of `ip` (its /64 for
    /// public IPv6, see [`host_key`]), or to anyone.
    pub(crate) fn outbound(&self, ip: Option<IpAddr>) -> usize {
        self.conns
            .values()
            .filter(|c| {
                c.direction == Direction::Out
                    && ip.is_none_or(|ip| host_key(c.remote.ip()) == host_key(ip))
            })
            .count()
    }
}

/// The swarm: shared by every task of the node.
#[derive(Debug)]
pub struct Swarm {
    pub(crate) config: NodeConfig,
    pub(crate) node_id: NodeId,
    pub(crate) listen_port: u16,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) state: Mutex<State>,
    /// Peers that lied, for an hour.
    bans: Mutex<Bans>,
    /// Accepted sockets still open: counted from accept until their task
    /// ends, so sockets still waiting for a HELLO and CLIENT connections
    /// (never registered) count against the limits too.
    pub(crate) inbound: OpenSockets,
    /// When each connection limit last warned that it refuses sockets.
    pub(super) refusals: RefusalWarnings,
    /// When a full node last replaced an inbound connection by a newcomer.
    last_replaced: Mutex<Option<Instant>>,
    /// Announces under way (dials are known from `dialing`): a fetch that
    /// finds nobody to ask waits for them rather than concluding "not
    /// found" (a node asked for a file the moment it starts is still
    /// meeting its peers).
    announces: AtomicUsize,
    /// Set once at shutdown: every connection closes.
    pub(crate) closing: watch::Sender<bool>,
    /// Dials chosen and reserved in `dialing`, for the node to run.
    pub(super) dials: mpsc::Sender<PeerAddr>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Swarm {
    /// Counts an announce under way until the guard drops.
    pub(crate) fn announcing(&self) -> AnnounceGuard<'_> {
        self.announces.fetch_add(1, Ordering::Relaxed);
        AnnounceGuard(&self.announces)
    }

    /// Announces and dials still connecting: announces under way, and dials
    /// chosen whose connection is not registered yet (queued, connecting or
    /// exchanging HELLOs: an address stays in `dialing` until its
    /// connection ends).
    pub(crate) fn attempts_in_progress(&self) -> usize {
        let dials = {
            let state = self.state();
            state.dialing.len().saturating_sub(state.outbound(None))
        };
        self.announces.load(Ordering::Relaxed) + dials
    }

    /// A swarm for a node with `node_id` listening on `listen_port`, its
    /// table seeded with `saved` peers; the receiver gets every dial the
    /// swarm chooses, which the caller must run (and then report with
    /// [`Swarm::dial_ended`]).
    pub(crate) fn new(
        config: NodeConfig,
        node_id: NodeId,
        listen_port: u16,
        metrics: Arc<Metrics>,
        saved: &[PeerAddr],
    ) -> (Self, mpsc::Receiver<PeerAddr>) {
        let mut table = PeerTable::new(config.allow_private);
        for addr in saved {
            table.insert_trusted(*addr, Source::Saved, None, now());
        }
        let (dials, dial_rx) = mpsc::channel(DIAL_QUEUE);
        let swarm = Self {
            config,
            node_id,
            listen_port,
            metrics,
            state: Mutex::new(State {
                conns: HashMap::new(),
                dialing: HashSet::new(),
                widen_dials: HashSet::new(),
                table,
                dial_budget: DialBudget::new(now()),
            }),
            bans: Mutex::new(Bans::new()),
            inbound: OpenSockets::default(),
            refusals: RefusalWarnings::default(),
            last_replaced: Mutex::new(None),
            announces: AtomicUsize::new(0),
            closing: watch::Sender::new(false),
            dials,
        };
        (swarm, dial_rx)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// When an inbound connection was last replaced (lock it before the
    /// state when taking both).
    pub(super) fn last_replaced(&self) -> MutexGuard<'_, Option<Instant>> {
        lock(&self.last_replaced)
    }

    pub(crate) fn bans(&self) -> MutexGuard<'_, Bans> {
        lock(&self.bans)
    }

    /// Bans a peer for a lie (docs/PROTOCOL.md "Bans"): the peer seen at
    /// `ip`, with the listen port and node id its HELLO named, if any; and
    /// forgets its address as a dial candidate.
    pub(crate) fn ban(
        &self,
        ip: IpAddr,
        listen_port: Option<u16>,
        node_id: Option<NodeId>,
        reason: String,
        digest: Option<PieceId>,
    ) {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let target = BanTarget::new(ip, listen_port, node_id);
        self.bans().ban(target, reason, digest, now(), unix);
        if let Some(port) = listen_port {
            self.state().table.remove(&PeerAddr::new(ip, port));
        }
    }

    /// Whether a peer is banned (an IP-only check bans only public peers).
    pub(crate) fn is_banned(
        &self,
        ip: IpAddr,
        listen_port: Option<u16>,
        node_id: Option<NodeId>,
    ) -> bool {
        self.bans()
            .is_banned(ip, listen_port, node_id, now())
            .is_some()
    }

    /// The node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Node ids of the extended peers connected now.
    pub fn connected_node_ids(&self) -> Vec<NodeId> {
        self.state()
            .conns
            .values()
            .filter_map(|c| c.node_id)
            .collect()
    }

    /// Adds an address to dial, as if named by the operator (`source:
    /// config`). Filters for never-dialable addresses and ourselves apply.
    pub fn add_candidate(&self, addr: PeerAddr) {
        self.state()
            .table
            .insert_trusted(addr, Source::Config, None, now());
    }

    /// Number of connections open now.
    pub fn connection_count(&self) -> usize {
        self.state().conns.len()
    }

    /// Sockets that count against the connection limits now: every accepted
    /// socket until its task ends (registered or not: still waiting for a
    /// HELLO, or a CLIENT), and outbound connections.
    pub fn open_connections(&self) -> usize {
        let state = self.state();
        self.inbound.total() + state.outbound(None)
    }

    /// Whether the node knows fewer peers than it wants to dial (then it
    /// asks its bootstrap servers again soon).
    pub(crate) fn is_hungry(&self) -> bool {
        let state = self.state();
        state.table.len() + state.conns.len() < self.config.target_outbound
    }
}

/// One announce under way ([`Swarm::announcing`]).
pub(crate) struct AnnounceGuard<'a>(&'a AtomicUsize);

impl Drop for AnnounceGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
