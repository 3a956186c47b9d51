//! Which way to send a stored piece to a peer: read it into memory and
//! write it to the socket (what the node does), or `sendfile(2)` it from
//! the page cache. `scripts/bench-serve-path.sh` runs it; the result is in
//! docs/BENCHMARKS.md.
//!
//! `p2p-serve-path DIR [PIECES] [ROUNDS]`
//!
//! Writes PIECES files of 1 MiB (default 512) in DIR, reads them once so
//! they are in the page cache, then sends all of them over one loopback TCP
//! connection to a reader thread, each behind a 37-byte header as a GIVE
//! is, ROUNDS times each way (default 5), alternating. Prints one JSON line
//! per round: the way, the wall time, the rate and the sending thread's
//! CPU time (user + system) per GiB sent.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

// The node's allocator, so a read buffer costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PIECE: usize = 1 << 20;
/// A GIVE's length, type and digest before its piece.
const HEADER: usize = 4 + 1 + 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// `std::fs::read` into a fresh buffer, then `write_all` (the node's way).
    ReadWrite,
    /// `sendfile(2)` from the open file.
    Sendfile,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Self::ReadWrite => "read_write",
            Self::Sendfile => "sendfile",
        }
    }
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Sends the whole of `file` on `socket` with `sendfile(2)`.
fn send_file(socket: &TcpStream, file: &File, len: usize) -> std::io::Result<()> {
    let mut offset: u64 = 0;
    let mut left = len;
    while left > 0 {
        match rustix::fs::sendfile(socket, file, Some(&mut offset), left) {
            Ok(0) => return Err(std::io::Error::other("sendfile sent nothing")),
            Ok(n) => left -= n.min(left),
            Err(rustix::io::Errno::INTR) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// One round: every file sent `way`; returns (wall, sender CPU).
fn round(files: &[PathBuf], way: Way) -> Result<(Duration, Duration), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let total = files.len() * (HEADER + PIECE);
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut socket, _) = listener.accept()?;
        let mut buf = vec![0u8; PIECE];
        let mut got = 0;
        while got < total {
            let n = socket.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    });
    let mut socket = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    socket.set_nodelay(true).map_err(|e| e.to_string())?;
    let header = [0u8; HEADER];
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    for path in files {
        socket.write_all(&header).map_err(|e| e.to_string())?;
        match way {
            Way::ReadWrite => {
                let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
                socket.write_all(&bytes).map_err(|e| e.to_string())?;
            }
            Way::Sendfile => {
                let file = File::open(path).map_err(|e| e.to_string())?;
                send_file(&socket, &file, PIECE).map_err(|e| e.to_string())?;
            }
        }
    }
    let cpu = thread_cpu() - cpu0;
    drop(socket);
    let got = reader
        .join()
        .map_err(|_| "the reader panicked".to_owned())?
        .map_err(|e| e.to_string())?;
    let wall = t0.elapsed();
    if got != total {
        return Err(format!("the reader got {got} of {total} bytes"));
    }
    Ok((wall, cpu))
}

fn run(args: &[String]) -> Result<(), String> {
    let dir = Path::new(
        args.first()
            .ok_or("usage: p2p-serve-path DIR [PIECES] [ROUNDS]")?,
    );
    let number = |i: usize, default: usize| -> Result<usize, String> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse().map_err(|_| format!("not a number: {s}"))
        })
    };
    let pieces = number(1, 512)?.max(1);
    let rounds = number(2, 5)?.max(1);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let mut files = Vec::with_capacity(pieces);
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..pieces {
        let path = dir.join(format!("piece-{n:05}"));
        let mut bytes = vec![0u8; PIECE];
        for chunk in bytes.chunks_mut(8) {
            // xorshift: distinct, incompressible-looking bytes.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        std::fs::write(&path, &bytes).map_err(|e| e.to_string())?;
        files.push(path);
    }
    // Into the page cache, as a seeder's pieces are.
    for path in &files {
        std::fs::read(path).map_err(|e| e.to_string())?;
    }
    let gib = (pieces * (HEADER + PIECE)) as f64 / f64::from(1u32 << 30);
    for r in 0..rounds {
        for way in [Way::ReadWrite, Way::Sendfile] {
            let (wall, cpu) = round(&files, way)?;
            println!(
                "{{\"way\":\"{}\",\"round\":{},\"pieces\":{pieces},\"secs\":{:.4},\"mib_s\":{:.1},\"sender_cpu_s_per_gib\":{:.4}}}",
                way.name(),
                r + 1,
                wall.as_secs_f64(),
                gib * 1024.0 / wall.as_secs_f64(),
                cpu.as_secs_f64() / gib,
            );
        }
    }
    for path in &files {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("p2p-serve-path: {err}");
            ExitCode::FAILURE
        }
    }
}
