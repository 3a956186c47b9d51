//! Times storing loose pieces in a fresh disk store, for comparing store
//! layouts on the same disk: `COUNT` pieces of `SIZE` bytes, each put on
//! its own and waited for (as `POST /api/v1/pieces` does), or in groups of
//! 64 (`put_many`, as a file upload does).
//!
//! `cargo run --release -p piece-store --example put_loose -- DIR COUNT SIZE one|many [always|batch|never]`
//!
//! `DIR` must not exist yet (it is created, then removed); put it on the
//! disk to measure. Prints one JSON line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use bytes::Bytes;
use piece_store::{DiskStore, DiskStoreConfig, Durability, FsyncPolicy, PieceStore, Retention};
use wire_format::VerifiedPiece;

/// Pieces per `put_many` call in `many` mode.
const GROUP: usize = 64;

fn run() -> Result<(), String> {
    let usage = "usage: put_loose DIR COUNT SIZE one|many [always|batch|never]";
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let count: usize = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("COUNT: {e}"))?;
    let size: usize = args
        .next()
        .ok_or(usage)?
        .parse()
        .map_err(|e| format!("SIZE: {e}"))?;
    let mode = args.next().ok_or(usage)?;
    let fsync: FsyncPolicy = args.next().as_deref().unwrap_or("batch").parse()?;
    if dir.exists() {
        return Err(format!("{} exists", dir.display()));
    }
    // Hashed before the clock starts: the store takes verified pieces.
    let pieces: Vec<VerifiedPiece> = (0..count)
        .map(|i| {
            let mut bytes = vec![0xa5u8; size.max(8)];
            bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
            VerifiedPiece::new(Bytes::from(bytes)).map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    let mut config = DiskStoreConfig::new(u64::MAX);
    config.fsync = fsync;
    let store = DiskStore::open(&dir, config).map_err(|e| e.to_string())?;
    let start = Instant::now();
    match mode.as_str() {
        "one" => {
            for piece in pieces {
                store
                    .put(piece, Retention::Pinned, Durability::Wait)
                    .map_err(|e| e.to_string())?;
            }
        }
        "many" => {
            let mut pieces = pieces.into_iter().peekable();
            while pieces.peek().is_some() {
                let group: Vec<_> = pieces.by_ref().take(GROUP).collect();
                store
                    .put_many(group, Retention::Pinned)
                    .map_err(|e| e.to_string())?;
            }
        }
        other => return Err(format!("unknown mode {other:?}: {usage}")),
    }
    let secs = start.elapsed().as_secs_f64();
    drop(store);
    let reopen = Instant::now();
    let store = DiskStore::open(&dir, DiskStoreConfig::new(u64::MAX)).map_err(|e| e.to_string())?;
    let open_secs = reopen.elapsed().as_secs_f64();
    let held = store.list().len();
    drop(store);
    std::fs::remove_dir_all(&dir).map_err(|e| format!("remove {}: {e}", dir.display()))?;
    println!(
        r#"{{"mode":"{mode}","fsync":"{fsync}","count":{count},"size":{size},"secs":{secs:.3},"pieces_per_s":{:.1},"mib_s":{:.1},"reopen_secs":{open_secs:.3},"held":{held}}}"#,
        count as f64 / secs,
        (count * size) as f64 / secs / f64::from(1 << 20),
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("put_loose: {err}");
            ExitCode::FAILURE
        }
    }
}
