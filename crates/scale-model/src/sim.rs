//! The discrete-event model of a swarm: nodes joining through one bootstrap
//! server, dialling, peer exchange, and fetches that ask, widen and (with
//! the DHT) look up. One event queue, model time in microseconds; every
//! message between two nodes takes one draw of the one-way delay.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashSet};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::dht::{Dht, DhtParams, Lookup};
use crate::params::*;

mod connect;
mod fetch;

/// How a model swarm runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SwarmConfig {
    /// Nodes.
    pub nodes: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Nodes started per second.
    pub join_rate: u64,
    /// Mean one-way delay of a message.
    pub latency: u64,
    /// Time from formation to the first fetch.
    pub settle: u64,
}

impl SwarmConfig {
    /// The real runs' settings for `nodes` nodes.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            join_rate: JOIN_RATE_PER_SEC,
            latency: LATENCY,
            settle: SETTLE,
        }
    }
}

/// Why a dial was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Dialler,
    Widen(u32),
    Dht(u32),
}

#[derive(Debug, Clone)]
enum Ev {
    Join(u32),
    Announce(u32),
    AnnounceReply(u32),
    Verified(u32),
    DialTick(u32),
    DialArrive {
        from: u32,
        to: u32,
        why: Why,
    },
    DialDone {
        from: u32,
        to: u32,
        ok: bool,
        why: Why,
    },
    Peers {
        to: u32,
        from: u32,
        entries: Vec<u32>,
    },
    PexTick(u32),
    Answer {
        fetch: u32,
        peer: u32,
    },
    FetchTick(u32),
    DhtResponse {
        fetch: u32,
        from: u32,
    },
    Linger {
        node: u32,
        peer: u32,
    },
}

#[derive(Debug, Clone)]
struct Item {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Item {
    // Earliest first out of the max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: u32,
    out: bool,
    /// Dialled for a fetch and not (yet) needed for the outbound target.
    widen: bool,
}

#[derive(Debug, Clone, Copy)]
struct Cand {
    failures: u8,
    next: u64,
}

#[derive(Debug, Clone)]
struct Node {
    joined: bool,
    conns: Vec<Conn>,
    dialing: Vec<u32>,
    table: BTreeMap<u32, Cand>,
    credit: u64,
    credit_at: u64,
    dialler_armed: bool,
    hungry_delay: u64,
}

impl Node {
    fn new() -> Self {
        Self {
            joined: false,
            conns: Vec::new(),
            dialing: Vec::new(),
            table: BTreeMap::new(),
            credit: DIAL_BURST,
            credit_at: 0,
            dialler_armed: false,
            hungry_delay: HUNGRY_ANNOUNCE_FIRST,
        }
    }
    fn outbound(&self) -> usize {
        self.conns.iter().filter(|c| c.out).count()
    }
    fn inbound(&self) -> usize {
        self.conns.len() - self.outbound()
    }
    fn conn(&self, peer: u32) -> Option<usize> {
        self.conns.iter().position(|c| c.peer == peer)
    }
    /// Takes up to `want` connects from the dial budget.
    fn take_dials(&mut self, want: usize, now: u64) -> usize {
        self.credit = (self.credit + now.saturating_sub(self.credit_at)).min(DIAL_BURST);
        self.credit_at = now;
        let affordable = usize::try_from(self.credit / DIAL_COST).unwrap_or(usize::MAX);
        let granted = want.min(affordable);
        self.credit -= DIAL_COST * granted as u64;
        granted
    }
    fn needs_dials(&self) -> bool {
        self.outbound() + self.dialing.len() < TARGET_OUTBOUND && self.conns.len() < MAX_CONNECTIONS
    }
}

/// Messages one fetch caused, by kind (each counts both directions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Msgs {
    /// WANT_HAVE and their HAVE / DONT_HAVE answers.
    pub want_have: u64,
    /// HELLOs of the connections the fetch dialled (two per connection).
    pub hello: u64,
    /// PEERS of the connections the fetch dialled (two per connection).
    pub peers: u64,
    /// DHT queries and responses (and pings and their answers).
    pub dht: u64,
    /// Connects attempted (refused ones included; not messages).
    pub dials: u64,
}

impl Msgs {
    /// Every message of the fetch.
    pub fn total(&self) -> u64 {
        self.want_have + self.hello + self.peers + self.dht
    }
}

/// How a fetch found its holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A peer it was connected to.
    Connected,
    /// A peer it dialled while widening.
    Widen,
    /// A holder the DHT named.
    Dht,
}

/// How a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A holder said HAVE after this long.
    Found {
        /// Time from the fetch's start to the HAVE.
        after: u64,
        /// Where the holder came from.
        via: Via,
    },
    /// Every peer asked said no and none was left to ask.
    NotFound,
    /// The deadline passed.
    Deadline,
}

/// One fetch's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchRecord {
    /// The fetching node.
    pub node: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// What it sent and received.
    pub msgs: Msgs,
    /// Peers it dialled while widening.
    pub widen_dials: usize,
    /// Holders its DHT lookup dialled.
    pub dht_dials: usize,
    /// DHT nodes its lookup queried.
    pub dht_queried: usize,
}

/// What to fetch: who holds it and where the DHT stores its holders.
#[derive(Debug, Clone)]
pub struct FetchSpec {
    /// The fetching node.
    pub node: u32,
    /// Nodes holding the piece (sorted).
    pub holders: Vec<u32>,
    /// The DHT key, when the DHT is used.
    pub key: Option<u128>,
    /// Deadline after the start.
    pub timeout: u64,
}

#[derive(Debug, Clone)]
struct Fetch {
    spec: FetchSpec,
    storage: Vec<u32>,
    start: u64,
    running: bool,
    outcome: Option<Outcome>,
    asked: HashSet<u32>,
    wanted: usize,
    connecting: usize,
    widened: Option<u64>,
    widen_dialled: usize,
    msgs: Msgs,
    lookup: Option<Lookup>,
    dht_queue: Vec<u32>,
    dht_dialled: usize,
    /// Peers dialled for the fetch: by widening, by the DHT.
    widen_asked: Vec<u32>,
    dht_asked: Vec<u32>,
}

/// A model swarm.
#[derive(Debug, Clone)]
pub struct Swarm {
    now: u64,
    seq: u64,
    queue: BinaryHeap<Item>,
    rng: Xoshiro256PlusPlus,
    nodes: Vec<Node>,
    verified: Vec<u32>,
    is_verified: Vec<bool>,
    want_peers: usize,
    ready: usize,
    joined: usize,
    config: SwarmConfig,
    fetches: Vec<Fetch>,
    dht: Option<Dht>,
    /// When every node first had its peers (≥ 8, or all others).
    pub formed_at: Option<u64>,
}

/// What a formed swarm looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Seconds from the first start until every node had ≥ 8 peers.
    pub formed_secs: f64,
    /// Connected peers per node: median, max.
    pub peers: (usize, usize),
    /// Peer-table entries per node: median, max.
    pub table: (usize, usize),
    /// Nodes whose inbound slots are all taken (they refuse every dial).
    pub full: usize,
}

fn median_max(mut v: Vec<usize>) -> (usize, usize) {
    v.sort_unstable();
    (
        v.get(v.len() / 2).copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
    )
}

impl Swarm {
    /// Starts `config.nodes` nodes at the join rate and runs until the swarm
    /// has formed and settled.
    pub fn form(config: SwarmConfig) -> Self {
        let n = config.nodes;
        let mut swarm = Self {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            nodes: (0..n).map(|_| Node::new()).collect(),
            verified: Vec::new(),
            is_verified: vec![false; n],
            want_peers: TARGET_OUTBOUND.min(n.saturating_sub(1)),
            ready: 0,
            joined: 0,
            config,
            fetches: Vec::new(),
            dht: None,
            formed_at: None,
        };
        for (i, id) in (0..u32::try_from(n).unwrap_or(u32::MAX)).enumerate() {
            let at = i as u64 * SECOND / config.join_rate.max(1);
            swarm.push(at, Ev::Join(id));
        }
        while swarm.formed_at.is_none() {
            if !swarm.step() {
                break;
            }
        }
        let until = swarm.now + config.settle;
        swarm.run_until(until);
        swarm
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the swarm has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The swarm's shape now.
    pub fn shape(&self) -> Shape {
        Shape {
            formed_secs: self.formed_at.unwrap_or(self.now) as f64 / SECOND as f64,
            peers: median_max(self.nodes.iter().map(|n| n.conns.len()).collect()),
            table: median_max(self.nodes.iter().map(|n| n.table.len()).collect()),
            full: self
                .nodes
                .iter()
                .filter(|n| n.inbound() >= MAX_INBOUND || n.conns.len() >= MAX_CONNECTIONS)
                .count(),
        }
    }

    /// Connected peers of `node`.
    pub fn peers_of(&self, node: u32) -> Vec<u32> {
        self.nodes[node as usize]
            .conns
            .iter()
            .map(|c| c.peer)
            .collect()
    }

    /// Gives the swarm a DHT (routing tables built now).
    pub fn with_dht(&mut self, params: DhtParams) {
        self.dht = Some(Dht::build(self.nodes.len(), params, &mut self.rng));
    }

    /// Drops the DHT: fetches use peer exchange and widening alone.
    pub fn without_dht(&mut self) {
        self.dht = None;
    }

    /// The DHT, if any.
    pub fn dht(&self) -> Option<&Dht> {
        self.dht.as_ref()
    }

    /// Reseeds the swarm's random choices (each cell of a table its own).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    }

    /// The swarm's random source.
    pub fn rng(&mut self) -> &mut Xoshiro256PlusPlus {
        &mut self.rng
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn delay(&mut self) -> u64 {
        let l = self.config.latency;
        self.rng.random_range(l / 2..=l + l / 2)
    }

    fn step(&mut self) -> bool {
        let Some(item) = self.queue.pop() else {
            return false;
        };
        self.now = item.at;
        self.handle(item.ev);
        true
    }

    fn run_until(&mut self, until: u64) {
        while self.queue.peek().is_some_and(|i| i.at <= until) {
            self.step();
        }
        self.now = self.now.max(until);
    }

    /// Runs `specs` as fetches, `concurrency` at a time (each starts when an
    /// earlier one ends), and returns their records in order.
    pub fn run_fetches(&mut self, specs: Vec<FetchSpec>, concurrency: usize) -> Vec<FetchRecord> {
        let first = self.fetches.len();
        let total = specs.len();
        let mut pending = specs.into_iter();
        let mut running = 0;
        for spec in pending.by_ref().take(concurrency.max(1)) {
            self.start_fetch(spec);
            running += 1;
        }
        while running > 0 {
            let ended_before = self.ended(first);
            if !self.step() {
                break;
            }
            let ended = self.ended(first);
            for _ in ended_before..ended {
                running -= 1;
                if let Some(spec) = pending.next() {
                    self.start_fetch(spec);
                    running += 1;
                }
            }
        }
        self.fetches[first..first + total.min(self.fetches.len() - first)]
            .iter()
            .map(|f| FetchRecord {
                node: f.spec.node,
                outcome: f.outcome.unwrap_or(Outcome::Deadline),
                msgs: f.msgs,
                widen_dials: f.widen_dialled,
                dht_dials: f.dht_dialled,
                dht_queried: f.lookup.as_ref().map_or(0, |l| l.queried),
            })
            .collect()
    }

    fn ended(&self, first: usize) -> usize {
        self.fetches[first..]
            .iter()
            .filter(|f| f.outcome.is_some())
            .count()
    }

    // --- joining and the bootstrap server ---

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Join(n) => {
                self.nodes[n as usize].joined = true;
                self.joined += 1;
                self.announce(n);
                self.arm_dialler(n);
                let phase = self.rng.random_range(0..PEX_INTERVAL);
                self.push(self.now + phase, Ev::PexTick(n));
                self.check_formed();
            }
            Ev::Announce(n) => self.announce(n),
            Ev::Verified(n) => {
                if !self.is_verified[n as usize] {
                    self.is_verified[n as usize] = true;
                    self.verified.push(n);
                }
            }
            Ev::AnnounceReply(n) => self.announce_reply(n),
            Ev::DialTick(n) => self.dial_tick(n),
            Ev::DialArrive { from, to, why } => self.dial_arrive(from, to, why),
            Ev::DialDone { from, to, ok, why } => self.dial_done(from, to, ok, why),
            Ev::Peers { to, from, entries } => self.offer(to, from, &entries),
            Ev::PexTick(n) => {
                let peers: Vec<u32> = self.peers_of(n);
                for p in peers {
                    self.send_peers(n, p);
                }
                self.push(self.now + PEX_INTERVAL, Ev::PexTick(n));
            }
            Ev::Answer { fetch, peer } => self.answer(fetch, peer),
            Ev::FetchTick(f) => {
                if self.fetches[f as usize].running {
                    self.fetch_step(f);
                    if self.fetches[f as usize].running {
                        self.push(self.now + FETCH_TICK, Ev::FetchTick(f));
                    }
                }
            }
            Ev::DhtResponse { fetch, from } => self.dht_response(fetch, from),
            Ev::Linger { node, peer } => self.release_widen(node, peer),
        }
    }

    fn announce(&mut self, n: u32) {
        // The server answers after one round trip and lists the node once
        // its dial-back probe (one more round trip) has passed.
        let rtt = self.delay() + self.delay();
        self.push(self.now + rtt, Ev::AnnounceReply(n));
        let probe = self.delay() + self.delay();
        self.push(self.now + rtt + probe, Ev::Verified(n));
    }

    fn announce_reply(&mut self, n: u32) {
        let pool: Vec<u32> = self.verified.iter().copied().filter(|&v| v != n).collect();
        let answer: Vec<u32> = if pool.len() <= PEX_MAX_ENTRIES {
            pool
        } else {
            rand::seq::index::sample(&mut self.rng, pool.len(), PEX_MAX_ENTRIES)
                .into_iter()
                .map(|j| pool[j])
                .collect()
        };
        self.offer_entries(n, &answer);
        let node = &mut self.nodes[n as usize];
        let next = if node.table.len() + node.conns.len() < TARGET_OUTBOUND {
            let d = node.hungry_delay;
            node.hungry_delay = (d * 2).min(REANNOUNCE_INTERVAL);
            d
        } else {
            REANNOUNCE_INTERVAL
        };
        self.push(self.now + next, Ev::Announce(n));
        self.arm_dialler(n);
    }

    fn check_formed(&mut self) {
        if self.formed_at.is_none()
            && self.joined == self.nodes.len()
            && self.ready == self.nodes.len()
        {
            self.formed_at = Some(self.now);
        }
    }
}
