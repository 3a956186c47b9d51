//! `ls`, `pin`, `unpin`, `gc` and `verify`: what the node's store holds,
//! keeping or releasing it, and checking it.

use std::time::Duration;

use serde_json::{Value, json};
use wire_format::PieceId;

use crate::cli::Global;
use crate::error::{CliError, CliResult};
use crate::http::{Api, Method};
use crate::locate::locate;
use crate::output::{human_bytes, json_line, print, table};

/// `ls`: files, then loose pieces; with `--json` the node's object as one line.
pub fn ls(global: &Global) -> CliResult {
    let api = Api::new(locate(global)?, Duration::ZERO);
    let response = api.call(Method::Get, "/api/v1/store", &[])?;
    let body = api.json(api.check(response, "ls")?)?;
    if global.json {
        return json_line(&body);
    }
    print(&listing(&body))?;
    let number = |key: &str| body.get(key).and_then(Value::as_u64).unwrap_or(0);
    eprintln!(
        "{} used of {}",
        human_bytes(number("bytes_used")),
        human_bytes(number("bytes_max"))
    );
    Ok(())
}

/// The store listing as text: a table of files and one of loose pieces.
pub fn listing(body: &Value) -> String {
    let list = |key: &str| {
        body.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("-").to_owned();
    let size = |v: &Value| {
        v.get("size")
            .and_then(Value::as_u64)
            .map_or_else(|| "-".to_owned(), human_bytes)
    };
    let mut out = String::new();
    let files = list("files");
    if !files.is_empty() {
        let mut rows = vec![vec![
            "NAME".to_owned(),
            "SIZE".to_owned(),
            "MANIFEST".to_owned(),
        ]];
        rows.extend(
            files
                .iter()
                .map(|f| vec![text(f, "name"), size(f), text(f, "manifest")]),
        );
        out.push_str(&table(&rows));
    }
    let pieces = list("pieces");
    if !pieces.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        let mut rows = vec![vec!["PIECE".to_owned(), "SIZE".to_owned()]];
        rows.extend(pieces.iter().map(|p| vec![text(p, "sha256"), size(p)]));
        out.push_str(&table(&rows));
    }
    out
}

/// `pin` (`pinned`) or `unpin`.
pub fn pin(global: &Global, id: PieceId, pinned: bool) -> CliResult {
    let api = Api::new(locate(global)?, Duration::ZERO);
    let (method, what) = if pinned {
        (Method::Put, "pin")
    } else {
        (Method::Delete, "unpin")
    };
    let response = api.call(method, &format!("/api/v1/pins/{id}"), &[])?;
    api.check(response, what)?;
    if global.json {
        json_line(&json!({ "sha256": id.to_hex(), "pinned": pinned }))?;
    }
    if pinned {
        eprintln!("pinned {id}: gc keeps it");
    } else {
        eprintln!("unpinned {id}: gc may drop it");
    }
    Ok(())
}

/// `gc`.
pub fn gc(global: &Global) -> CliResult {
    let api = Api::new(locate(global)?, Duration::ZERO);
    let response = api.call(Method::Post, "/api/v1/gc", &[])?;
    let body = api.json(api.check(response, "gc")?)?;
    if global.json {
        return json_line(&body);
    }
    let number = |key: &str| body.get(key).and_then(Value::as_u64).unwrap_or(0);
    print(&format!(
        "dropped {} pieces, {}\n",
        number("pieces"),
        human_bytes(number("bytes"))
    ))
}

/// How long `verify` waits for the node: it reads and hashes everything
/// the store holds (about 2 GB/s on one core, so a day is tens of TB).
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// `verify`: the node re-hashes every piece it holds. Exit 0 when the
/// store's own pieces all match (pieces dropped because a fetched file was
/// edited are reported, not a failure: the file is its user's); exit 5
/// when some did not (the disk is damaging data: cached ones were deleted,
/// pinned ones quarantined).
pub fn verify(global: &Global) -> CliResult {
    let api = Api::new(locate(global)?, VERIFY_TIMEOUT);
    let response = api.call(Method::Post, "/api/v1/verify", &[])?;
    let body = api.json(api.check(response, "verify")?)?;
    let ids = |key: &str| -> Vec<String> {
        body.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (corrupt, dropped) = (ids("corrupt"), ids("dropped"));
    if global.json {
        json_line(&body)?;
    } else {
        let number = |key: &str| body.get(key).and_then(Value::as_u64).unwrap_or(0);
        for id in &corrupt {
            eprintln!("corrupt in the store (deleted if cached, quarantined if pinned): {id}");
        }
        for id in &dropped {
            eprintln!("no longer matches the file it was served from (no longer shared): {id}");
        }
        print(&format!(
            "verified {} pieces, {}: {} corrupt, {} dropped\n",
            number("checked"),
            human_bytes(number("bytes")),
            corrupt.len(),
            dropped.len()
        ))?;
    }
    if corrupt.is_empty() {
        Ok(())
    } else {
        Err(CliError::local(format!(
            "{} stored pieces did not match their names: check the disk (pinned ones are in the data dir's quarantine/)",
            corrupt.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn the_listing_has_files_then_pieces() {
        let body = json!({
            "files": [{"name": "a.txt", "manifest": "ab".repeat(32), "size": 2048}],
            "pieces": [{"sha256": "cd".repeat(32), "size": 5}],
            "bytes_used": 2053, "bytes_max": 1 << 30,
        });
        let text = listing(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("a.txt") && lines[1].contains("2.0 KiB"));
        assert_eq!(lines[2], "");
        assert!(lines[3].starts_with("PIECE"));
        assert!(lines[4].contains(&"cd".repeat(32)) && lines[4].ends_with("5 B"));
    }
}
