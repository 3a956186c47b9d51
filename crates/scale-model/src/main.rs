//! `p2p-scale-model`: runs the model of content discovery over swarm sizes,
//! holder counts and PEX alone or with the DHT, after replaying the real
//! runs of 100 and 300 nodes; prints a Markdown table on stdout and writes
//! one JSON line per figure with `--out`.
//!
//! `p2p-scale-model [--seed S] [--fetches F] [--concurrency C]
//!   [--nodes 100,300,...] [--holders 1,10,100] [--timeout SECS]
//!   [--dht mainline|bep5] [--dht-dial-cap D] [--dht-at-start] [--latency-ms MS] [--no-calibration] [--lookups N,N,...] [--out FILE]`

use std::fs::File;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use scale_model::dht::DhtParams;
use scale_model::params::{FETCH_TIMEOUT, MILLI, SECOND};
use scale_model::{
    Calibration, Mode, Plan, calibrate, formed_swarm, lookup_scaling, markdown, run_cell,
};

/// Seeds each real run is replayed with (the real runs were repeated 3 times).
const CALIBRATION_SEEDS: u64 = 3;

const USAGE: &str = "usage: p2p-scale-model [--seed S] [--fetches F] [--concurrency C] \
[--nodes 100,300,1000,3000,10000] [--holders 1,10,100] [--timeout SECS] \
[--dht mainline|bep5] [--dht-dial-cap D] [--dht-at-start] [--latency-ms MS] [--no-calibration] [--lookups N,N,...] [--out FILE]";

struct Args {
    plan: Plan,
    lookups: Option<Vec<usize>>,
    calibration: bool,
    out: Option<String>,
}

fn list(v: &str) -> Result<Vec<usize>, String> {
    v.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| format!("'{x}': {e}")))
        .collect()
}

/// Whole microseconds of `us`, which must be finite and not negative.
fn micros(us: f64, what: &str) -> Result<u64, String> {
    if !us.is_finite() || us < 0.0 {
        return Err(format!("{what}: not a duration"));
    }
    Duration::try_from_secs_f64(us / 1e6)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
        .ok_or(format!("{what}: too long"))
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        plan: Plan::default(),
        calibration: true,
        lookups: None,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => args.plan.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--fetches" => {
                args.plan.fetches = value()?.parse().map_err(|e| format!("--fetches: {e}"))?;
            }
            "--concurrency" => {
                args.plan.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?;
            }
            "--nodes" => args.plan.nodes = list(&value()?)?,
            "--holders" => args.plan.holders = list(&value()?)?,
            "--timeout" => {
                let secs: f64 = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
                args.plan.timeout = micros(secs * SECOND as f64, "--timeout")?;
            }
            "--dht" => {
                let cap = args.plan.dht.dial_cap;
                args.plan.dht = match value()?.as_str() {
                    "mainline" => DhtParams::MAINLINE,
                    "bep5" => DhtParams::BEP5,
                    other => return Err(format!("--dht: unknown '{other}'")),
                };
                args.plan.dht.dial_cap = cap;
            }
            "--dht-dial-cap" => {
                args.plan.dht.dial_cap = value()?
                    .parse()
                    .map_err(|e| format!("--dht-dial-cap: {e}"))?;
            }
            "--latency-ms" => {
                let ms: f64 = value()?.parse().map_err(|e| format!("--latency-ms: {e}"))?;
                args.plan.latency = micros(ms * MILLI as f64, "--latency-ms")?;
            }
            "--dht-at-start" => args.plan.dht.at_start = true,
            "--lookups" => args.lookups = Some(list(&value()?)?),
            "--no-calibration" => args.calibration = false,
            "--out" => args.out = Some(value()?),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument '{other}'\n{USAGE}")),
        }
    }
    if args.plan.nodes.iter().any(|&n| n < 2) || args.plan.holders.contains(&0) {
        return Err("--nodes must be at least 2 and --holders at least 1".to_string());
    }
    Ok(args)
}

fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let mut out = match &args.out {
        Some(path) => Some(BufWriter::new(
            File::create(path).map_err(|e| format!("{path}: {e}"))?,
        )),
        None => None,
    };
    let mut emit = |line: String| -> Result<(), String> {
        if let Some(out) = out.as_mut() {
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let plan = &args.plan;
    if let Some(sizes) = &args.lookups {
        // DHT lookups alone, as the DHT grows past what the swarm model runs.
        println!(
            "## DHT lookups alone: {} lookups per size, one holder each, run to their end; seed {}\n",
            plan.fetches, plan.seed
        );
        println!(
            "| DHT nodes | k, alpha | routing-table entries (median) | found | nodes queried (median, p99) | round trips (median, p99) |"
        );
        println!("|---|---|---|---|---|---|");
        for &n in sizes {
            for params in [DhtParams::MAINLINE, DhtParams::BEP5] {
                let t = Instant::now();
                let l = lookup_scaling(n, params, plan.fetches, plan.seed);
                eprintln!(
                    "scale-model: lookups in {n} DHT nodes (k = {}) took {:.1} s",
                    params.k,
                    t.elapsed().as_secs_f64()
                );
                let alpha = if l.alpha == 0 {
                    "all".to_string()
                } else {
                    l.alpha.to_string()
                };
                println!(
                    "| {} | {}, {} | {} | {} of {} | {}, {} | {}, {} |",
                    l.nodes,
                    l.k,
                    alpha,
                    l.table_median,
                    l.found,
                    l.lookups,
                    l.queried.0,
                    l.queried.1,
                    l.rounds.0,
                    l.rounds.1
                );
                emit(serde_json::to_string(&l).map_err(|e| e.to_string())?)?;
            }
        }
        if let Some(mut out) = out {
            out.flush().map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    if args.calibration {
        println!(
            "## The real runs replayed: PEX alone, node 1 (the first to start) holds, every other node fetches, 10 at a time; seeds {}..={}\n",
            plan.seed,
            plan.seed + CALIBRATION_SEEDS - 1
        );
        println!(
            "| N | deadline | formed | peers per node (median, max) | holder's peers | nodes with full inbound | table (median, max) | fetches that found the holder | not found / deadline | time to the holder (median, max) |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|");
        for n in [100, 300] {
            for timeout in [30 * SECOND, FETCH_TIMEOUT] {
                let runs: Vec<Calibration> = (0..CALIBRATION_SEEDS)
                    .map(|i| calibrate(n, timeout, plan.latency, plan.seed + i))
                    .collect();
                for c in &runs {
                    emit(serde_json::to_string(c).map_err(|e| e.to_string())?)?;
                }
                let range = |f: &dyn Fn(&Calibration) -> f64, digits: usize| {
                    let lo = runs.iter().map(f).fold(f64::INFINITY, f64::min);
                    let hi = runs.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
                    if (hi - lo).abs() < 1e-9 {
                        format!("{lo:.digits$}")
                    } else {
                        format!("{lo:.digits$}–{hi:.digits$}")
                    }
                };
                println!(
                    "| {} | {} s | {} s | {}, {} | {} | {} | {}, {} | **{} of {}** | {} / {} | {} s, {} s |",
                    n,
                    timeout / SECOND,
                    range(&|c| c.formed_secs, 1),
                    range(&|c| c.peers.0 as f64, 0),
                    range(&|c| c.peers.1 as f64, 0),
                    range(&|c| c.holder_peers as f64, 0),
                    range(&|c| c.full_nodes as f64, 0),
                    range(&|c| c.table.0 as f64, 0),
                    range(&|c| c.table.1 as f64, 0),
                    range(&|c| c.succeeded as f64, 0),
                    n - 1,
                    range(&|c| c.failed[0] as f64, 0),
                    range(&|c| c.failed[1] as f64, 0),
                    range(&|c| c.find_secs.0, 1),
                    range(&|c| c.find_secs.1, 1),
                );
            }
        }
        println!();
    }
    let mut cells = Vec::new();
    for &n in &plan.nodes {
        let t = Instant::now();
        let base = formed_swarm(n, plan);
        eprintln!(
            "scale-model: {n} nodes formed in {:.1} s of model time ({:.1} s to compute), {} with full inbound slots",
            base.shape().formed_secs,
            t.elapsed().as_secs_f64(),
            base.shape().full
        );
        for &h in &plan.holders {
            for mode in [Mode::Pex, Mode::PexDht] {
                let cell = run_cell(&base, h, mode, plan);
                emit(serde_json::to_string(&cell).map_err(|e| e.to_string())?)?;
                cells.push(cell);
            }
        }
        eprintln!(
            "scale-model: {n} nodes done after {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let start = if plan.dht.at_start {
        "the lookup starts with the fetch"
    } else {
        "the lookup starts with widening"
    };
    let dht = if plan.dht.alpha == 0 {
        format!(
            "k = {}, every unqueried node of the k closest at once, a ping with each query, {} holders per response",
            plan.dht.k, plan.dht.values
        )
    } else {
        format!(
            "k = {}, alpha = {}, {} holders per response",
            plan.dht.k, plan.dht.alpha, plan.dht.values
        )
    };
    println!(
        "## {} fetches per cell, {} at a time, deadline {} s; DHT: {dht}; at most {} DHT dials per fetch, {start}; seed {}\n",
        plan.fetches,
        plan.concurrency,
        plan.timeout as f64 / SECOND as f64,
        plan.dht.dial_cap,
        plan.seed
    );
    print!("{}", markdown(&cells));
    if let Some(mut out) = out {
        out.flush().map_err(|e| e.to_string())?;
    }
    eprintln!(
        "scale-model: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    match parse().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("p2p-scale-model: {e}");
            ExitCode::FAILURE
        }
    }
}
