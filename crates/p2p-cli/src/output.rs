//! What the CLI prints and writes: aligned tables and human sizes for
//! stderr and stdout, JSON lines, and a verified piece delivered to stdout
//! or to a file (through a temporary name beside it, then a rename).

use std::io::{IsTerminal, Write};
use std::path::Path;

use serde_json::Value;
use wire_format::VerifiedPiece;

use crate::error::{CliError, CliResult};

/// Spaces between table columns.
const COLUMN_GAP: usize = 2;

/// Formats rows (the first is the header) as left-aligned columns.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + COLUMN_GAP;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    const STEP: u64 = 1 << 10;
    if bytes < STEP {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scaled = bytes;
    while scaled >= STEP * STEP && unit + 2 < UNITS.len() {
        scaled /= STEP;
        unit += 1;
    }
    // One decimal from integers: `scaled` is below STEP² here.
    let tenths = scaled * 10 / STEP;
    format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit + 1])
}

/// A duration in whole seconds, short: `42s`, `3m07s`, `5h02m`, `2d03h`.
pub fn human_age(secs: u64) -> String {
    const MIN: u64 = 60;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    match secs {
        s if s < MIN => format!("{s}s"),
        s if s < HOUR => format!("{}m{:02}s", s / MIN, s % MIN),
        s if s < DAY => format!("{}h{:02}m", s / HOUR, s % HOUR / MIN),
        s => format!("{}d{:02}h", s / DAY, s % DAY / HOUR),
    }
}

/// Prints `value` as one line of JSON on stdout.
pub fn json_line(value: &Value) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{value}")
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::local(format!("cannot write to stdout: {err}")))
}

/// Prints text on stdout.
pub fn print(text: &str) -> CliResult {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::local(format!("cannot write to stdout: {err}")))
}

/// Refuses to write binary data to a terminal unless the user named a file
/// or insisted.
pub fn refuse_terminal(stdout_is_terminal: bool, has_output: bool, force: bool) -> CliResult {
    if stdout_is_terminal && !has_output && !force {
        return Err(CliError::usage(
            "refusing to write binary data to the terminal: pass -o FILE, redirect stdout (> FILE), or pass --force",
        ));
    }
    Ok(())
}

/// [`refuse_terminal`] for this process's stdout.
pub fn check_stdout(has_output: bool, force: bool) -> CliResult {
    refuse_terminal(std::io::stdout().is_terminal(), has_output, force)
}

/// Writes a verified piece to `output` (a temporary file beside it, then a
/// rename, so the file is whole or absent) or to stdout.
pub fn deliver(piece: &VerifiedPiece, output: Option<&Path>) -> CliResult {
    match output {
        Some(path) => write_file(path, piece.bytes()),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(piece.bytes())
                .and_then(|()| stdout.flush())
                .map_err(|err| CliError::local(format!("cannot write to stdout: {err}")))
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> CliResult {
    let fail = |err: &dyn std::fmt::Display| {
        CliError::local(format!(
            "cannot write {}: {err}; check the directory exists and is writable, and the disk has room",
            path.display()
        ))
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".p2p-cli-")
        .tempfile_in(dir)
        .map_err(|err| fail(&err))?;
    temp.write_all(bytes)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(|err| fail(&err))?;
    temp.persist(path).map_err(|err| fail(&err.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn tables_align_columns() {
        let rows = vec![
            vec!["a".to_owned(), "bb".to_owned(), "c".to_owned()],
            vec!["long".to_owned(), "x".to_owned(), String::new()],
        ];
        assert_eq!(table(&rows), "a     bb  c\nlong  x\n");
    }

    #[test]
    fn sizes_and_ages() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(1 << 20), "1.0 MiB");
        assert_eq!(human_bytes(10 << 30), "10.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16383.9 PiB");
        assert_eq!(human_age(5), "5s");
        assert_eq!(human_age(187), "3m07s");
        assert_eq!(human_age(5 * 3600 + 120), "5h02m");
        assert_eq!(human_age(2 * 86_400 + 3 * 3600), "2d03h");
    }

    #[test]
    fn binary_goes_to_a_terminal_only_when_asked() {
        assert!(refuse_terminal(true, false, false).is_err());
        let err = refuse_terminal(true, false, false).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Usage);
        assert!(err.message.contains("-o FILE") && err.message.contains("--force"));
        assert!(refuse_terminal(true, true, false).is_ok());
        assert!(refuse_terminal(true, false, true).is_ok());
        assert!(refuse_terminal(false, false, false).is_ok());
    }

    #[test]
    fn a_file_is_written_whole_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let piece = VerifiedPiece::new(bytes::Bytes::from_static(b"hello")).unwrap();
        deliver(&piece, Some(&path)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no-such-dir").join("out.bin");
        let err = deliver(&piece, Some(&missing)).unwrap_err();
        assert_eq!(err.exit, crate::error::Exit::Local);
    }
}
