//! Library demo until the node exists: split a file into verified pieces in a
//! disk store, print its manifest, then reopen the store (re-verifying every
//! piece on first read) and reassemble the file.
//!
//! `cargo run --release -p piece-store --example share_file -- FILE [STORE_DIR] [OUT]`

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use piece_store::file::{add_file, reassemble};
use piece_store::manifest::Layout;
use piece_store::{DiskStore, DiskStoreConfig, PieceStore};

fn run() -> Result<(), String> {
    let mut args = std::env::args_os().skip(1);
    let input = PathBuf::from(
        args.next()
            .ok_or("usage: share_file FILE [STORE_DIR] [OUT]")?,
    );
    let store_dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("p2p-demo-store"));
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| store_dir.join("reassembled"));
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("the file name must be valid UTF-8")?
        .to_owned();
    let capacity = 64 << 30;

    let started = Instant::now();
    let summary = {
        let store = DiskStore::open(&store_dir, DiskStoreConfig::new(capacity))
            .map_err(|e| format!("opening the store: {e}"))?;
        let reader = File::open(&input).map_err(|e| format!("{}: {e}", input.display()))?;
        let summary = add_file(&store, BufReader::new(reader), &name, &Layout::STANDARD)
            .map_err(|e| format!("adding {}: {e}", input.display()))?;
        let manifest = store
            .get(&summary.manifest)
            .map_err(|e| e.to_string())?
            .ok_or("the manifest vanished")?;
        eprintln!(
            "added {} bytes as {} pieces in {:.0?} (store: {})",
            summary.size,
            summary.pieces,
            started.elapsed(),
            store_dir.display()
        );
        println!("manifest {}", summary.manifest);
        let json = String::from_utf8_lossy(&manifest);
        if json.len() > 400 {
            println!("{}…", &json[..json.floor_char_boundary(400)]);
        } else {
            println!("{json}");
        }
        summary
    };

    // A fresh open re-verifies each piece the first time it is read.
    let started = Instant::now();
    let store = DiskStore::open(&store_dir, DiskStoreConfig::new(capacity))
        .map_err(|e| format!("reopening the store: {e}"))?;
    let mut writer =
        BufWriter::new(File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?);
    let back = reassemble(&store, &summary.manifest, &Layout::STANDARD, &mut writer)
        .map_err(|e| format!("reassembling: {e}"))?;
    writer
        .flush()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "reassembled {} bytes, sha256 {} verified, in {:.0?} -> {}",
        back.size,
        back.sha256,
        started.elapsed(),
        out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}
