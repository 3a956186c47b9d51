//! The Mainline DHT half of the model: node ids, Kademlia routing tables
//! and the iterative `get_peers` lookup, with the `mainline` crate's
//! parameters by default.
//!
//! Ids are the top 128 bits of the 160-bit ids: two ids of a few million
//! nodes never share 128 bits, so the XOR order of every pair, and with it
//! every lookup, is the one the full ids give.

use std::collections::HashSet;

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::index;

use crate::params::{DHT_DIAL_CAP, MAINLINE_K, MAINLINE_VALUES};

/// How the DHT runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhtParams {
    /// Bucket size, nodes per response, and the closest nodes a lookup
    /// must have queried before it ends (k).
    pub k: usize,
    /// Queries in flight at once; 0: every unqueried node among the k
    /// closest known is queried at once (what the `mainline` crate does).
    pub alpha: usize,
    /// Nodes a key's holders announce to (the k closest).
    pub storage: usize,
    /// Holders one response carries at most.
    pub values: usize,
    /// Whether each query goes with a liveness ping (the `mainline` crate
    /// pings every node it visits).
    pub ping: bool,
    /// Holders one fetch's lookup dials at most.
    pub dial_cap: usize,
    /// Whether the lookup starts with the fetch, beside the WANT_HAVEs to
    /// connected peers, rather than with widening (when they all said no).
    pub at_start: bool,
}

impl DhtParams {
    /// The `mainline` crate's parameters: k = 20, no alpha limit, 10 holders
    /// per response, a ping beside each query; 16 dials per lookup.
    pub const MAINLINE: Self = Self {
        k: MAINLINE_K,
        alpha: 0,
        storage: MAINLINE_K,
        values: MAINLINE_VALUES,
        ping: true,
        dial_cap: DHT_DIAL_CAP,
        at_start: false,
    };

    /// Textbook Kademlia as BEP 5 describes it: k = 8, alpha = 3, no pings.
    pub const BEP5: Self = Self {
        k: 8,
        alpha: 3,
        storage: 8,
        values: MAINLINE_VALUES,
        ping: false,
        dial_cap: DHT_DIAL_CAP,
        at_start: false,
    };

    /// Messages one visited node costs: query and response, and the ping
    /// and its answer when pinging.
    pub fn messages_per_visit(&self) -> u64 {
        if self.ping { 4 } else { 2 }
    }
}

/// XOR distance of two ids.
pub fn distance(a: u128, b: u128) -> u128 {
    a ^ b
}

/// Every node's id and routing table.
#[derive(Debug, Clone)]
pub struct Dht {
    /// Node ids, by node index.
    pub ids: Vec<u128>,
    /// Each node's routing table: up to k nodes of each bucket.
    pub tables: Vec<Vec<u32>>,
    /// The parameters the tables were built with.
    pub params: DhtParams,
}

impl Dht {
    /// Random ids for `n` nodes and full routing tables: for every prefix
    /// length a node shares with others, up to k of those nodes, drawn at
    /// random — what a node whose table has been filled by its bootstrap
    /// lookup and refreshes holds when nobody leaves.
    pub fn build(n: usize, params: DhtParams, rng: &mut Xoshiro256PlusPlus) -> Self {
        let ids: Vec<u128> = (0..n).map(|_| rng.random::<u128>()).collect();
        let mut order: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
        order.sort_by_key(|&i| ids[i as usize]);
        let sorted: Vec<u128> = order.iter().map(|&i| ids[i as usize]).collect();
        // The range of sorted positions whose ids share the first `bits`
        // bits of `id`.
        let range = |id: u128, bits: u32| -> (usize, usize) {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            let low = id & mask;
            let high = low | !mask;
            (
                sorted.partition_point(|&x| x < low),
                sorted.partition_point(|&x| x <= high),
            )
        };
        let mut tables = Vec::with_capacity(n);
        for &id in &ids {
            let mut table = Vec::new();
            for bits in 0..128 {
                let (lo, hi) = range(id, bits);
                if hi - lo <= 1 {
                    break;
                }
                let (in_lo, in_hi) = range(id, bits + 1);
                // Exactly `bits` shared: the outer range less the inner one.
                let first = in_lo - lo;
                let size = first + (hi - in_hi);
                let pick = |j: usize| {
                    if j < first {
                        lo + j
                    } else {
                        in_hi + (j - first)
                    }
                };
                if size <= params.k {
                    table.extend((0..size).map(|j| order[pick(j)]));
                } else {
                    table.extend(
                        index::sample(rng, size, params.k)
                            .into_iter()
                            .map(|j| order[pick(j)]),
                    );
                }
            }
            tables.push(table);
        }
        Self {
            ids,
            tables,
            params,
        }
    }

    /// The `count` nodes of `candidates` closest to `key`, closest first.
    pub fn closest_of(&self, candidates: &[u32], key: u128, count: usize) -> Vec<u32> {
        let mut by: Vec<(u128, u32)> = candidates
            .iter()
            .map(|&c| (distance(self.ids[c as usize], key), c))
            .collect();
        if by.len() > count {
            by.select_nth_unstable(count);
            by.truncate(count);
        }
        by.sort_unstable();
        by.into_iter().map(|(_, c)| c).collect()
    }

    /// The `count` nodes of the whole swarm closest to `key`: where its
    /// holders' announcements are stored.
    pub fn storage_nodes(&self, key: u128, count: usize) -> Vec<u32> {
        let all: Vec<u32> = (0..u32::try_from(self.ids.len()).unwrap_or(u32::MAX)).collect();
        self.closest_of(&all, key, count)
    }
}

/// One iterative `get_peers` lookup, as the `mainline` crate's
/// `IterativeQuery` runs it: seeded with the asker's closest known nodes,
/// it queries the unqueried among the k closest it knows (all of them, or
/// up to alpha in flight), adds the nodes each response names, and ends
/// when every one of the k closest known has answered.
#[derive(Debug, Clone)]
pub struct Lookup {
    key: u128,
    asker: u32,
    /// Known nodes, closest first.
    known: Vec<(u128, u32)>,
    seen: HashSet<u32>,
    visited: HashSet<u32>,
    in_flight: usize,
    /// Nodes queried so far.
    pub queried: usize,
}

impl Lookup {
    /// A lookup of `key` by `asker`, seeded from its routing table.
    pub fn new(dht: &Dht, asker: u32, key: u128) -> Self {
        let mut lookup = Self {
            key,
            asker,
            known: Vec::new(),
            seen: HashSet::from([asker]),
            visited: HashSet::new(),
            in_flight: 0,
            queried: 0,
        };
        let seeds = dht.closest_of(&dht.tables[asker as usize], key, dht.params.k);
        lookup.add(dht, &seeds);
        lookup
    }

    fn add(&mut self, dht: &Dht, nodes: &[u32]) {
        for &n in nodes {
            if self.seen.insert(n) {
                self.known
                    .push((distance(dht.ids[n as usize], self.key), n));
            }
        }
        self.known.sort_unstable();
    }

    /// The nodes to query now; each is counted as queried and in flight.
    pub fn next_queries(&mut self, params: &DhtParams) -> Vec<u32> {
        let room = if params.alpha == 0 {
            usize::MAX
        } else {
            params.alpha.saturating_sub(self.in_flight)
        };
        let next: Vec<u32> = self
            .known
            .iter()
            .take(params.k)
            .map(|&(_, n)| n)
            .filter(|n| !self.visited.contains(n))
            .take(room)
            .collect();
        for &n in &next {
            self.visited.insert(n);
        }
        self.in_flight += next.len();
        self.queried += next.len();
        next
    }

    /// `responder` answered: the nodes it names join the known ones; the
    /// holders it stores (if it is one of `storage`) come back, at most
    /// `values` of them, at random.
    pub fn on_response(
        &mut self,
        dht: &Dht,
        responder: u32,
        storage: &[u32],
        holders: &[u32],
        rng: &mut Xoshiro256PlusPlus,
    ) -> Vec<u32> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let named = dht.closest_of(&dht.tables[responder as usize], self.key, dht.params.k);
        let named: Vec<u32> = named.into_iter().filter(|&n| n != self.asker).collect();
        self.add(dht, &named);
        if !storage.contains(&responder) || holders.is_empty() {
            return Vec::new();
        }
        if holders.len() <= dht.params.values {
            return holders.to_vec();
        }
        index::sample(rng, holders.len(), dht.params.values)
            .into_iter()
            .map(|j| holders[j])
            .collect()
    }

    /// Whether the lookup is over: nothing in flight and nothing left to query.
    pub fn done(&self, params: &DhtParams) -> bool {
        self.in_flight == 0
            && self
                .known
                .iter()
                .take(params.k)
                .all(|(_, n)| self.visited.contains(n))
    }
}

/// What a lookup run alone (every response in turn, no network) found:
/// the holders it learned and how many nodes it queried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupResult {
    /// Holders returned, in the order they came, without repeats.
    pub holders: Vec<u32>,
    /// Nodes queried.
    pub queried: usize,
    /// Rounds of queries (the longest chain of round trips).
    pub rounds: usize,
}

/// Runs a lookup of `key` by `asker` to its end, answering queries round by
/// round (each round is one round trip).
pub fn lookup_alone(
    dht: &Dht,
    asker: u32,
    key: u128,
    storage: &[u32],
    holders: &[u32],
    rng: &mut Xoshiro256PlusPlus,
) -> LookupResult {
    let mut lookup = Lookup::new(dht, asker, key);
    let mut result = LookupResult::default();
    let mut wave = lookup.next_queries(&dht.params);
    while !wave.is_empty() {
        result.rounds += 1;
        let mut next = Vec::new();
        for responder in wave {
            for h in lookup.on_response(dht, responder, storage, holders, rng) {
                if !result.holders.contains(&h) {
                    result.holders.push(h);
                }
            }
            next.extend(lookup.next_queries(&dht.params));
        }
        wave = next;
    }
    result.queried = lookup.queried;
    result
}
