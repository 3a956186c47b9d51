//! A model of content discovery in swarms of up to 10,000 nodes and more:
//! peer exchange and widening alone (what the peer node does), and with a
//! BitTorrent Mainline DHT beside them (what it is about to do).
//!
//! In process and in model time, over an in-memory transport — none of the
//! real network code runs. Nodes join through one bootstrap server, keep
//! their outbound target, accept inbound up to their cap and exchange
//! addresses as the peer node does ([`sim`]); a fetch asks its connected
//! peers, then widens within the dial rate and its deadline, and with the
//! DHT also runs an iterative `get_peers` lookup ([`dht`]). Every number of
//! the real code it uses is in [`params`]. docs/SCALE.md, "A model of
//! 10,000 nodes", says what it models, what it leaves out and how it
//! compares with the real runs of 100 and 300 processes.

pub mod dht;
pub mod params;
pub mod sim;

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::index;
use rand::{RngExt, SeedableRng};
use serde::Serialize;

use crate::dht::DhtParams;
use crate::params::{CONCURRENCY, FETCH_TIMEOUT, LATENCY, MILLI, SECOND};
use crate::sim::{FetchRecord, FetchSpec, Outcome, Shape, Swarm, SwarmConfig, Via};

/// How content is discovered in a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Connected peers, then widening (the peer node today).
    #[serde(rename = "pex")]
    Pex,
    /// The same, with a DHT lookup in parallel.
    #[serde(rename = "pex+dht")]
    PexDht,
}

impl Mode {
    /// The name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pex => "PEX",
            Self::PexDht => "PEX+DHT",
        }
    }
}

/// What one run covers.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Swarm sizes.
    pub nodes: Vec<usize>,
    /// Holders per fetched piece.
    pub holders: Vec<usize>,
    /// Fetches per cell.
    pub fetches: usize,
    /// Fetches under way at once.
    pub concurrency: usize,
    /// A fetch's deadline.
    pub timeout: u64,
    /// The DHT's parameters.
    pub dht: DhtParams,
    /// Mean one-way delay of a message.
    pub latency: u64,
    /// Seed of everything.
    pub seed: u64,
}

impl Default for Plan {
    fn default() -> Self {
        Self {
            nodes: vec![100, 300, 1_000, 3_000, 10_000],
            holders: vec![1, 10, 100],
            fetches: 200,
            concurrency: CONCURRENCY,
            timeout: FETCH_TIMEOUT,
            dht: DhtParams::MAINLINE,
            latency: LATENCY,
            seed: 1,
        }
    }
}

/// The figures of one cell: one swarm size, holder count and mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    /// Always "cell".
    pub figure: &'static str,
    /// Swarm size.
    pub nodes: usize,
    /// Holders of each fetched piece.
    pub holders: usize,
    /// Discovery.
    pub mode: Mode,
    /// Fetches.
    pub fetches: usize,
    /// Fetches that found a holder within the deadline.
    pub succeeded: usize,
    /// `succeeded / fetches`.
    pub success_rate: f64,
    /// Messages per fetch: median, p99.
    pub msgs_median: u64,
    /// Messages per fetch, 99th percentile.
    pub msgs_p99: u64,
    /// WANT_HAVE and answers per fetch, median.
    pub want_have_median: u64,
    /// HELLO and PEERS of dialled connections per fetch, median.
    pub hello_peers_median: u64,
    /// DHT messages per fetch, median.
    pub dht_median: u64,
    /// Connects per fetch, median and most.
    pub dials_median: u64,
    /// Connects per fetch, most.
    pub dials_max: u64,
    /// Holders a lookup dialled, most over the cell.
    pub dht_dials_max: usize,
    /// DHT nodes a lookup queried, median.
    pub dht_queried_median: usize,
    /// Milliseconds from a fetch's start to its first HAVE, median of the
    /// successful ones.
    pub find_ms_median: Option<f64>,
    /// Milliseconds to the first HAVE, 90th percentile of the successful ones.
    pub find_ms_p90: Option<f64>,
    /// Successes by where the holder came from: connected, widening, DHT.
    pub via: [usize; 3],
    /// Failures: "not found", deadline.
    pub failed: [usize; 2],
    /// Seconds the swarm took to form.
    pub formed_secs: f64,
    /// Peer-table entries per node when the fetches began, median.
    pub table_median: usize,
    /// Nodes refusing every dial (inbound slots full) when the fetches began.
    pub full_nodes: usize,
}

/// The median of `v` (0 when empty).
pub fn median(v: &[u64]) -> u64 {
    percentile(v, 50)
}

/// The `p`th percentile of `v`, nearest rank (0 when empty).
pub fn percentile(v: &[u64], p: usize) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    if s.is_empty() {
        return 0;
    }
    let rank = (p * s.len()).div_ceil(100);
    s[rank.clamp(1, s.len()) - 1]
}

/// Sums up `records` of one cell.
pub fn summarise(
    nodes: usize,
    holders: usize,
    mode: Mode,
    shape: &Shape,
    records: &[FetchRecord],
) -> Cell {
    let total: Vec<u64> = records.iter().map(|r| r.msgs.total()).collect();
    let found: Vec<u64> = records
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Found { after, .. } => Some(after),
            _ => None,
        })
        .collect();
    let mut via = [0; 3];
    let mut failed = [0; 2];
    for r in records {
        match r.outcome {
            Outcome::Found { via: v, .. } => {
                via[match v {
                    Via::Connected => 0,
                    Via::Widen => 1,
                    Via::Dht => 2,
                }] += 1;
            }
            Outcome::NotFound => failed[0] += 1,
            Outcome::Deadline => failed[1] += 1,
        }
    }
    let ms = |p: usize| {
        (!found.is_empty())
            .then(|| (percentile(&found, p) as f64 / MILLI as f64 * 10.0).round() / 10.0)
    };
    let field = |f: fn(&FetchRecord) -> u64| -> Vec<u64> { records.iter().map(f).collect() };
    let dials = field(|r| r.msgs.dials);
    let queried: Vec<u64> = records.iter().map(|r| r.dht_queried as u64).collect();
    Cell {
        figure: "cell",
        nodes,
        holders,
        mode,
        fetches: records.len(),
        succeeded: found.len(),
        success_rate: if records.is_empty() {
            0.0
        } else {
            found.len() as f64 / records.len() as f64
        },
        msgs_median: median(&total),
        msgs_p99: percentile(&total, 99),
        want_have_median: median(&field(|r| r.msgs.want_have)),
        hello_peers_median: median(&field(|r| r.msgs.hello + r.msgs.peers)),
        dht_median: median(&field(|r| r.msgs.dht)),
        dials_median: median(&dials),
        dials_max: dials.iter().copied().max().unwrap_or(0),
        dht_dials_max: records.iter().map(|r| r.dht_dials).max().unwrap_or(0),
        dht_queried_median: usize::try_from(median(&queried)).unwrap_or(usize::MAX),
        find_ms_median: ms(50),
        find_ms_p90: ms(90),
        via,
        failed,
        formed_secs: shape.formed_secs,
        table_median: shape.table.0,
        full_nodes: shape.full,
    }
}

/// A seed for one part of a run, from the run's seed and the part's numbers.
pub fn sub_seed(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
    for &p in parts {
        h = (h ^ p).wrapping_mul(0x0100_0000_01b3).rotate_left(29) ^ (h >> 17);
    }
    h
}

/// `count` fetches of pieces held by `holders` random nodes each, from a
/// random node that does not hold it, each with its own DHT key.
pub fn random_specs(
    nodes: usize,
    holders: usize,
    count: usize,
    timeout: u64,
    seed: u64,
) -> Vec<FetchSpec> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let holders = holders.min(nodes.saturating_sub(1)).max(1);
    (0..count)
        .map(|_| {
            let mut held: Vec<u32> = index::sample(&mut rng, nodes, holders)
                .into_iter()
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                .collect();
            held.sort_unstable();
            let node = loop {
                let n = u32::try_from(rng.random_range(0..nodes)).unwrap_or(0);
                if held.binary_search(&n).is_err() {
                    break n;
                }
            };
            FetchSpec {
                node,
                holders: held,
                key: Some(rng.random::<u128>()),
                timeout,
            }
        })
        .collect()
}

/// Forms a swarm of `nodes` nodes for `plan` (with its DHT built).
pub fn formed_swarm(nodes: usize, plan: &Plan) -> Swarm {
    let mut config = SwarmConfig::new(nodes, sub_seed(plan.seed, &[nodes as u64]));
    config.latency = plan.latency;
    let mut swarm = Swarm::form(config);
    swarm.reseed(sub_seed(plan.seed, &[nodes as u64, 1]));
    swarm.with_dht(plan.dht);
    swarm
}

/// Runs one cell on a copy of `base` (a formed swarm with its DHT).
pub fn run_cell(base: &Swarm, holders: usize, mode: Mode, plan: &Plan) -> Cell {
    let n = base.len();
    let specs = random_specs(
        n,
        holders,
        plan.fetches,
        plan.timeout,
        sub_seed(plan.seed, &[n as u64, holders as u64, 2]),
    );
    let mut swarm = base.clone();
    let shape = swarm.shape();
    swarm.reseed(sub_seed(
        plan.seed,
        &[n as u64, holders as u64, mode as u64, 3],
    ));
    if mode == Mode::Pex {
        swarm.without_dht();
    }
    let records = swarm.run_fetches(specs, plan.concurrency);
    summarise(n, holders, mode, &shape, &records)
}

/// The real runs of docs/SCALE.md replayed in the model: node 1 (the first
/// to start) holds a piece for every other node, which fetch them in order,
/// 10 at a time, each with the deadline given (`scripts/scale.sh` gives 30 s).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Always "calibration".
    pub figure: &'static str,
    /// Swarm size.
    pub nodes: usize,
    /// The deadline, seconds.
    pub timeout_secs: f64,
    /// Fetches (N − 1).
    pub fetches: usize,
    /// Fetches that got their piece.
    pub succeeded: usize,
    /// Seconds until every node had ≥ 8 peers.
    pub formed_secs: f64,
    /// Connected peers per node when the fetches began: median, max.
    pub peers: (usize, usize),
    /// Peer-table entries per node when the fetches began: median, max.
    pub table: (usize, usize),
    /// Peers of node 1, the holder, when the fetches began.
    pub holder_peers: usize,
    /// Nodes refusing every dial (inbound slots full) when the fetches began.
    pub full_nodes: usize,
    /// Seconds to the first HAVE: median, max.
    pub find_secs: (f64, f64),
    /// Failures: "not found", deadline.
    pub failed: [usize; 2],
}

/// Replays the real run of `nodes` nodes (see [`Calibration`]).
pub fn calibrate(nodes: usize, timeout: u64, latency: u64, seed: u64) -> Calibration {
    let mut config = SwarmConfig::new(nodes, sub_seed(seed, &[nodes as u64, 7]));
    config.latency = latency;
    let mut swarm = Swarm::form(config);
    let shape = swarm.shape();
    let holder_peers = swarm.peers_of(0).len();
    let specs: Vec<FetchSpec> = (1..nodes)
        .map(|k| FetchSpec {
            node: u32::try_from(k).unwrap_or(u32::MAX),
            holders: vec![0],
            key: None,
            timeout,
        })
        .collect();
    let records = swarm.run_fetches(specs, CONCURRENCY);
    let found: Vec<u64> = records
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Found { after, .. } => Some(after),
            _ => None,
        })
        .collect();
    let secs = |t: u64| (t as f64 / SECOND as f64 * 100.0).round() / 100.0;
    Calibration {
        figure: "calibration",
        nodes,
        timeout_secs: timeout as f64 / SECOND as f64,
        fetches: records.len(),
        succeeded: found.len(),
        formed_secs: (shape.formed_secs * 100.0).round() / 100.0,
        peers: shape.peers,
        table: shape.table,
        holder_peers,
        full_nodes: shape.full,
        find_secs: (
            secs(median(&found)),
            secs(found.iter().copied().max().unwrap_or(0)),
        ),
        failed: [
            records
                .iter()
                .filter(|r| r.outcome == Outcome::NotFound)
                .count(),
            records
                .iter()
                .filter(|r| r.outcome == Outcome::Deadline)
                .count(),
        ],
    }
}

/// The Markdown table of `cells`.
pub fn markdown(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| N | holders | discovery | success | messages per fetch (median, p99) | DHT messages (median) | dials (median, max) | time to a holder (median, p90) | found via connected / widening / DHT |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let time = match (c.find_ms_median, c.find_ms_p90) {
            (Some(m), Some(p)) => format!("{} ms, {} ms", fmt_ms(m), fmt_ms(p)),
            _ => "—".to_string(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {}, {} | {} | {}, {} | {} | {} / {} / {} |\n",
            c.nodes,
            c.holders,
            c.mode.name(),
            c.success_rate * 100.0,
            c.msgs_median,
            c.msgs_p99,
            c.dht_median,
            c.dials_median,
            c.dials_max,
            time,
            c.via[0],
            c.via[1],
            c.via[2],
        ));
    }
    out
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else {
        format!("{ms:.1}")
    }
}

/// DHT lookups alone (no swarm, no PEX) in a DHT of `nodes` nodes: how
/// many nodes a lookup queries and how many round trips it takes as the
/// DHT grows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LookupScaling {
    /// Always "lookup".
    pub figure: &'static str,
    /// DHT size.
    pub nodes: usize,
    /// Bucket size.
    pub k: usize,
    /// Queries in flight at once (0: all of the k closest).
    pub alpha: usize,
    /// Lookups run.
    pub lookups: usize,
    /// Lookups that found the one holder.
    pub found: usize,
    /// Nodes queried by a lookup run to its end: median, p99.
    pub queried: (u64, u64),
    /// Round trips of a lookup run to its end: median, p99.
    pub rounds: (u64, u64),
    /// Routing-table entries per node, median.
    pub table_median: u64,
}

/// Runs `lookups` lookups of a random key held by one random node, each
/// from another random node, in a DHT of `nodes` nodes.
pub fn lookup_scaling(nodes: usize, params: DhtParams, lookups: usize, seed: u64) -> LookupScaling {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(sub_seed(seed, &[nodes as u64, 9]));
    let dht = dht::Dht::build(nodes, params, &mut rng);
    let mut queried = Vec::new();
    let mut rounds = Vec::new();
    let mut found = 0;
    for _ in 0..lookups {
        let picked = index::sample(&mut rng, nodes, 2).into_vec();
        let [asker, holder] = [picked[0], picked[1]].map(|i| u32::try_from(i).unwrap_or(0));
        let key: u128 = rng.random();
        let storage = dht.storage_nodes(key, params.storage);
        let r = dht::lookup_alone(&dht, asker, key, &storage, &[holder], &mut rng);
        found += usize::from(r.holders == [holder]);
        queried.push(r.queried as u64);
        rounds.push(r.rounds as u64);
    }
    let sizes: Vec<u64> = dht.tables.iter().map(|t| t.len() as u64).collect();
    LookupScaling {
        figure: "lookup",
        nodes,
        k: params.k,
        alpha: params.alpha,
        lookups,
        found,
        queried: (median(&queried), percentile(&queried, 99)),
        rounds: (median(&rounds), percentile(&rounds, 99)),
        table_median: median(&sizes),
    }
}
