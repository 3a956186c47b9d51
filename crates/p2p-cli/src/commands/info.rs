//! `peers` and `stats`: what the node knows, as tables or JSON lines.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::cli::Global;
use crate::error::{CliError, CliResult, Exit};
use crate::http::{Api, Method};
use crate::locate::{locate, resolve};
use crate::output::{human_age, human_bytes, json_line, print, table};
use crate::wire;

/// `peers`.
pub fn peers(global: &Global) -> CliResult {
    if let Some(peer) = &global.peer {
        return wire::peers(resolve(peer, "--peer")?, global.json);
    }
    let api = Api::new(locate(global)?, Duration::ZERO);
    let response = api.call(Method::Get, "/api/v1/peers", &[])?;
    let body = api.json(api.check(response, "peers")?)?;
    let Some(peers) = body.get("peers").and_then(Value::as_array) else {
        return Err(malformed(&api, "`peers` is not a list"));
    };
    if global.json {
        for peer in peers {
            json_line(peer)?;
        }
        return Ok(());
    }
    print(&peers_table(peers, unix_now()))?;
    eprintln!("{} peers", peers.len());
    Ok(())
}

/// The peer table: one row per peer, the API's fields made readable.
pub fn peers_table(peers: &[Value], now: u64) -> String {
    let mut rows = vec![
        [
            "ADDRESS", "DIR", "STATE", "SOURCE", "AGE", "IN", "OUT", "BAN",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for peer in peers {
        let text = |key: &str| {
            peer.get(key)
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_owned()
        };
        let bytes = |key: &str| {
            peer.get(key)
                .and_then(Value::as_u64)
                .map_or_else(|| "-".to_owned(), human_bytes)
        };
        let age = peer
            .get("connected_since")
            .and_then(Value::as_u64)
            .map_or_else(
                || "-".to_owned(),
                |since| human_age(now.saturating_sub(since)),
            );
        let mut state = text("state");
        if peer.get("legacy").and_then(Value::as_bool) == Some(true) {
            state.push_str(" (legacy)");
        }
        let ban = peer
            .get("ban")
            .and_then(|b| b.get("reason"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        rows.push(vec![
            text("addr"),
            text("direction"),
            state,
            text("source"),
            age,
            bytes("bytes_in"),
            bytes("bytes_out"),
            ban,
        ]);
    }
    table(&rows)
}

/// `stats`.
pub fn stats(global: &Global) -> CliResult {
    let api = Api::new(locate(global)?, Duration::ZERO);
    let response = api.call(Method::Get, "/api/v1/stats", &[])?;
    let body = api.json(api.check(response, "stats")?)?;
    let Some(map) = body.as_object() else {
        return Err(malformed(&api, "the counters are not an object"));
    };
    if global.json {
        return json_line(&body);
    }
    let sorted: BTreeMap<&String, &Value> = map.iter().collect();
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|(name, value)| vec![name.clone(), value.to_string()])
        .collect();
    print(&table(&rows))
}

fn malformed(api: &Api, what: &str) -> CliError {
    CliError::new(
        Exit::BadData,
        format!(
            "the node at {} answered with JSON this client cannot read ({what}): is it a peer-node API of a matching version?",
            api.endpoint().addr
        ),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_peer_table_shows_every_column() {
        let peers = [
            json!({"addr": "127.0.0.1:7001", "direction": "out", "state": "connected",
                   "legacy": false, "source": "bootstrap", "connected_since": 1000,
                   "bytes_in": 2048, "bytes_out": 5, "ban": null}),
            json!({"addr": "[::1]:7002", "direction": null, "state": "banned", "legacy": true,
                   "source": "pex", "connected_since": null, "bytes_in": 0, "bytes_out": 0,
                   "ban": {"reason": "sent a bad piece", "digest": null, "until": 5000}}),
        ];
        let text = peers_table(&peers, 1000 + 187);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ADDRESS"));
        for want in [
            "127.0.0.1:7001",
            "out",
            "connected",
            "bootstrap",
            "3m07s",
            "2.0 KiB",
            "5 B",
        ] {
            assert!(lines[1].contains(want), "{want}: {text}");
        }
        for want in ["[::1]:7002", "banned (legacy)", "pex", "sent a bad piece"] {
            assert!(lines[2].contains(want), "{want}: {text}");
        }
        // Columns line up: the state column starts at the same offset.
        assert_eq!(lines[1].find("connected"), lines[2].find("banned"));
    }
}
