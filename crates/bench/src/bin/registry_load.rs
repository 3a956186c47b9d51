//! The bootstrap server's registry at a million peers, in-process (no
//! address is dialled): `scripts/scale.sh` reports its figures in
//! docs/SCALE.md.
//!
//! `p2p-registry-load [ENTRIES] [DIR]`
//!
//! With `--max-peers ENTRIES` (default 1,000,000) it registers ENTRIES
//! distinct (address, port) pairs through the announce path, marks each
//! verified as a passing dial-back probe would, then does what the server
//! does with them: samples answers, saves the registry file (its periodic
//! save, under DIR, default a temp dir), and restarts: loads the file into a
//! fresh registry whose every entry waits to be probed again, in a new
//! process as a restarted server would. Prints one JSON line with the
//! durations, the file size, the resident memory at each step and the
//! worst case the server's start-up log prints
//! ([`bootstrap_server::registry::worst_case_bytes`]); fails if either
//! process's peak, less what it held before the registry, is above it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Instant, SystemTime};

use bootstrap_server::registry::{
    AnnounceOutcome, Registry, load_json, save_json, worst_case_bytes,
};
use wire_format::{NodeId, PeerAddr};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory of this process, MiB: now (`VmRSS`) or at its peak
/// (`VmHWM`).
fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The `n`th distinct address: 11.0.0.0/8 (never dialled here), ports from
/// 1024 up, 64 ports per IP.
fn addr(n: usize) -> PeerAddr {
    let ip = u32::try_from(n / 64).unwrap_or(u32::MAX) | (11 << 24);
    let port = 1024 + u16::try_from(n % 64).unwrap_or(0);
    PeerAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
}

fn node_id(n: usize) -> NodeId {
    NodeId((n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes())
}

fn run(args: &[String]) -> Result<(), String> {
    let entries: usize = args.first().map_or(Ok(1_000_000), |s| {
        s.parse().map_err(|_| format!("not a number: {s}"))
    })?;
    let dir = match args.get(1) {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("p2p-registry-load-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let file = dir.join("registry.json");
    let rss_start = rss_mib();

    let t0 = Instant::now();
    let mut registry = Registry::new(entries);
    let now = Instant::now();
    for n in 0..entries {
        match registry.announce(addr(n), node_id(n), now) {
            AnnounceOutcome::Added { evicted: None } => {}
            other => return Err(format!("entry {n}: {other:?}")),
        }
        registry.probe_started(addr(n), now);
        registry.probe_succeeded(addr(n), node_id(n), now);
    }
    let register_secs = t0.elapsed().as_secs_f64();
    if registry.verified_len() != entries {
        return Err(format!("{} verified of {entries}", registry.verified_len()));
    }
    let rss_full = rss_mib();

    let t0 = Instant::now();
    let mut rng = rand::rng();
    let mut listed = 0;
    for _ in 0..1000 {
        listed += registry
            .sample(wire_format::limits::PEX_MAX_ENTRIES, &[], now, &mut rng)
            .len();
    }
    let sample_ms = t0.elapsed().as_secs_f64() * 1000.0 / 1000.0;

    let t0 = Instant::now();
    let saved = registry.to_saved(Instant::now(), SystemTime::now());
    save_json(&file, &saved).map_err(|e| e.to_string())?;
    let save_secs = t0.elapsed().as_secs_f64();
    let file_mib =
        std::fs::metadata(&file).map_err(|e| e.to_string())?.len() as f64 / f64::from(1 << 20);
    drop(saved);
    let peak_saving = status_mib("VmHWM:");
    drop(registry);

    // The restart, as the server does it: a new process loads the file.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let child = std::process::Command::new(exe)
        .arg("--reload")
        .arg(&file)
        .arg(entries.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&file);
    if args.get(1).is_none() {
        let _ = std::fs::remove_dir(&dir);
    }
    if !child.status.success() {
        return Err(String::from_utf8_lossy(&child.stderr).into_owned());
    }
    let reload = String::from_utf8_lossy(&child.stdout);
    let reload = reload.trim().trim_start_matches('{').trim_end_matches('}');
    let worst_case = worst_case_bytes(entries) as f64 / f64::from(1 << 20);
    println!(
        "{{\"figure\":\"registry_load\",\"entries\":{entries},\"register_secs\":{register_secs:.2},\
         \"sample_50_ms\":{sample_ms:.3},\"sampled_entries\":{listed},\"save_secs\":{save_secs:.2},\
         \"file_mib\":{file_mib:.1},\"rss_start_mib\":{rss_start:.1},\"rss_full_mib\":{rss_full:.1},\
         \"peak_rss_mib\":{peak_saving:.1},{reload},\"worst_case_mib\":{worst_case:.1}}}"
    );
    // The process itself (code, runtime) is not the registry's.
    if peak_saving - rss_start > worst_case {
        return Err(format!(
            "the registry's peak memory {:.1} MiB is above the worst case the server prints, {worst_case:.1} MiB",
            peak_saving - rss_start
        ));
    }
    Ok(())
}

/// The restart's half, in a process of its own: loads `file` into a fresh
/// registry of `entries`, whose entries all wait for a probe.
fn reload(file: &str, entries: &str) -> Result<(), String> {
    let entries: usize = entries
        .parse()
        .map_err(|_| format!("not a number: {entries}"))?;
    let rss_start = rss_mib();
    let t0 = Instant::now();
    let loaded = load_json(std::path::Path::new(file), entries).map_err(|e| e.to_string())?;
    let restarted = Registry::from_saved(entries, loaded, Instant::now(), SystemTime::now());
    let load_secs = t0.elapsed().as_secs_f64();
    let awaiting = restarted.awaiting_probe(Instant::now()).count();
    let peak = status_mib("VmHWM:");
    let worst_case = worst_case_bytes(entries) as f64 / f64::from(1 << 20);
    println!(
        "{{\"load_secs\":{load_secs:.2},\"restored\":{},\"awaiting_probe\":{awaiting},\
         \"reload_rss_mib\":{:.1},\"reload_peak_rss_mib\":{peak:.1}}}",
        restarted.len(),
        rss_mib(),
    );
    if peak - rss_start > worst_case {
        return Err(format!(
            "the reload's peak memory {:.1} MiB is above the worst case the server prints, {worst_case:.1} MiB",
            peak - rss_start
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [flag, file, entries] if flag == "--reload" => reload(file, entries),
        _ => run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2p-registry-load: {err}");
            ExitCode::FAILURE
        }
    }
}
