//! Benchmark client for two running nodes (see `scripts/bench-fetch.sh`
//! and `scripts/bench.sh`): stores distinct 1 MiB pieces in node A through
//! its API, then fetches them through node B's API — in bulk with
//! concurrent keep-alive connections, and one at a time over one
//! kept-alive connection for latency. Every piece B returns is checked
//! against its name.
//!
//! `p2p-bench [--json] API_A TOKEN_A API_B TOKEN_B [BULK_PIECES] [SINGLES] [CONCURRENCY]`
//!
//! `--json` prints each result as one JSON object per line on stdout (the
//! sentences go to stderr instead).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wire_format::PieceId;

const PIECE: usize = 1 << 20;
/// Bulk pieces whose bytes the client re-hashes itself (1 in this many):
/// the node verified every one already; re-hashing all of them would put
/// the client's own hashing on the same two cores as the nodes it measures.
const BULK_CHECK_EVERY: usize = 16;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One kept-alive HTTP/1.1 connection.
struct Client {
    stream: BufReader<TcpStream>,
    host: String,
    token: String,
}

impl Client {
    async fn connect(addr: SocketAddr, token: &str) -> Result<Self, String> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Self {
            stream: BufReader::with_capacity(256 << 10, stream),
            host: addr.to_string(),
            token: token.to_owned(),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), String> {
        let mut out = Vec::new();
        let status = self.request_into(method, path, body, &mut out).await?;
        Ok((status, out))
    }

    /// Sends a request and reads the response body into `out` (reused).
    async fn request_into(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<u16, String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.token,
            body.len()
        );
        let io = self.stream.get_mut();
        io.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        io.write_all(body).await.map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stream
            .read_line(&mut line)
            .await
            .map_err(|e| e.to_string())?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| "bad content-length".to_owned())?;
            }
        }
        out.resize(length, 0);
        self.stream
            .read_exact(out)
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

fn make_piece(seed: u64) -> Vec<u8> {
    let mut piece = vec![0u8; PIECE];
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in piece.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    piece
}

async fn store(
    addr: SocketAddr,
    token: &str,
    seeds: std::ops::Range<u64>,
) -> Result<Vec<PieceId>, String> {
    let mut client = Client::connect(addr, token).await?;
    let mut ids = Vec::new();
    for seed in seeds {
        let piece = make_piece(seed);
        let (status, body) = client.request("POST", "/api/v1/pieces", &piece).await?;
        if status != 201 {
            return Err(format!("POST: {status} {}", String::from_utf8_lossy(&body)));
        }
        ids.push(PieceId::of(&piece));
    }
    Ok(ids)
}

async fn fetch(client: &mut Client, id: &PieceId) -> Result<Vec<u8>, String> {
    let (status, body) = client
        .request("GET", &format!("/api/v1/pieces/{id}?timeout=30"), &[])
        .await?;
    if status != 200 {
        return Err(format!(
            "GET {id}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(body)
}

/// Checks the bytes the node returned, after the clock has stopped (the
/// node verified them already; this proves it, without charging the
/// client's own hashing to the node).
fn check(id: &PieceId, body: &[u8]) -> Result<(), String> {
    if PieceId::of(body) == *id {
        Ok(())
    } else {
        Err(format!("GET {id}: the bytes do not hash to the name"))
    }
}

async fn run(args: Vec<String>) -> Result<(), String> {
    let usage = "usage: p2p-bench [--json] API_A TOKEN_A API_B TOKEN_B [BULK_PIECES] [SINGLES] [CONCURRENCY]";
    let json = args.iter().any(|a| a == "--json");
    let args: Vec<String> = args.into_iter().filter(|a| a != "--json").collect();
    // Sentences for people; with --json they give way to JSON on stdout.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    let [api_a, token_a, api_b, token_b, rest @ ..] = args.as_slice() else {
        return Err(usage.into());
    };
    let num = |i: usize, default: u64| -> Result<u64, String> {
        rest.get(i)
            .map_or(Ok(default), |s| s.parse().map_err(|_| usage.to_owned()))
    };
    let (bulk, singles, concurrency) = (num(0, 1024)?, num(1, 500)?, num(2, 16)?);
    let api_a: SocketAddr = api_a.parse().map_err(|_| usage.to_owned())?;
    let api_b: SocketAddr = api_b.parse().map_err(|_| usage.to_owned())?;

    eprintln!("storing {bulk} + {singles} distinct 1 MiB pieces in node A ...");
    let started = Instant::now();
    let writers = 4u64;
    let mut tasks = Vec::new();
    let total = bulk + singles;
    for w in 0..writers {
        let token = token_a.clone();
        let lo = total * w / writers;
        let hi = total * (w + 1) / writers;
        tasks.push(tokio::spawn(
            async move { store(api_a, &token, lo..hi).await },
        ));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.map_err(|e| e.to_string())??);
    }
    eprintln!("  stored in {:.1?}", started.elapsed());
    let (bulk_ids, single_ids) = ids.split_at(usize::try_from(bulk).map_err(|_| usage.to_owned())?);

    // Bulk: CONCURRENCY keep-alive connections pull from a shared list.
    let queue = Arc::new(std::sync::Mutex::new(
        bulk_ids.iter().copied().enumerate().collect::<Vec<_>>(),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let queue = Arc::clone(&queue);
        let token = token_b.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(api_b, &token).await?;
            let mut body = Vec::with_capacity(PIECE);
            let mut received = 0usize;
            loop {
                let next = queue.lock().map_err(|_| "poisoned")?.pop();
                let Some((index, id)) = next else {
                    return Ok::<_, String>(received);
                };
                let status = client
                    .request_into(
                        "GET",
                        &format!("/api/v1/pieces/{id}?timeout=30"),
                        &[],
                        &mut body,
                    )
                    .await?;
                if status != 200 || body.len() != PIECE {
                    return Err(format!("GET {id}: {status}, {} bytes", body.len()));
                }
                if index % BULK_CHECK_EVERY == 0 {
                    check(&id, &body)?;
                }
                received += 1;
            }
        }));
    }
    let mut received = 0;
    for t in tasks {
        received += t.await.map_err(|e| e.to_string())??;
    }
    let secs = started.elapsed().as_secs_f64();
    if received != bulk_ids.len() {
        return Err(format!("{received} of {} pieces received", bulk_ids.len()));
    }
    let bytes = bulk as f64 * PIECE as f64;
    if bulk > 0 {
        let mib_s = bytes / secs / (1 << 20) as f64;
        say(format!(
            "bulk: {bulk} x 1 MiB fetched A->B through B's API, verified and stored, in {secs:.2} s = {:.2} GB/s ({mib_s:.0} MiB/s), {concurrency} connections",
            bytes / secs / 1e9,
        ));
        if json {
            println!(
                r#"{{"bench":"bulk","pieces":{bulk},"connections":{concurrency},"secs":{secs:.4},"mib_s":{mib_s:.2}}}"#
            );
        }
    }

    // Latency: one at a time over one kept-alive connection; then the same
    // pieces again, now in B's store, to show the API's own share.
    let mut client = Client::connect(api_b, token_b).await?;
    let mut times: Vec<Duration> = Vec::with_capacity(single_ids.len());
    for id in single_ids {
        let t = Instant::now();
        let body = fetch(&mut client, id).await?;
        times.push(t.elapsed());
        check(id, &body)?;
    }
    let mut hits: Vec<Duration> = Vec::with_capacity(single_ids.len());
    for id in single_ids {
        let t = Instant::now();
        let body = fetch(&mut client, id).await?;
        hits.push(t.elapsed());
        check(id, &body)?;
    }
    hits.sort();
    let hit_p50_ms = hits
        .get(hits.len().saturating_sub(1) / 2)
        .map(|p50| p50.as_secs_f64() * 1e3);
    if let Some(p50) = hit_p50_ms {
        say(format!(
            "store hit: the same pieces again, now in B's store: p50 {p50:.2} ms"
        ));
    }
    times.sort();
    // Nearest-rank percentile: index = ceil(p * n) - 1.
    let pct = |p: f64| {
        let n = times.len();
        let rank = (1..=n).find(|r| *r as f64 >= p * n as f64).unwrap_or(n);
        times[rank - 1]
    };
    if !times.is_empty() {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let (p50, p90, p99) = (ms(pct(0.5)), ms(pct(0.9)), ms(pct(0.99)));
        let max = ms(times[times.len() - 1]);
        say(format!(
            "single: {} pieces one at a time over one kept-alive connection: p50 {p50:.2} ms, p90 {p90:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
            times.len(),
        ));
        if json {
            let hit = hit_p50_ms.map_or("null".to_owned(), |v| format!("{v:.3}"));
            println!(
                r#"{{"bench":"single","pieces":{},"p50_ms":{p50:.3},"p90_ms":{p90:.3},"p99_ms":{p99:.3},"max_ms":{max:.3},"store_hit_p50_ms":{hit}}}"#,
                times.len()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(1);
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2p-bench: {err}");
            ExitCode::from(1)
        }
    }
}
