//! `--explain`: the node's per-peer account of a fetch (who was asked, who
//! gave, who said "don't have", who timed out), shown on stderr as a table
//! or one JSON line. Only what the node reports is shown; when it reports
//! nothing, the user is told so.

use serde_json::Value;

use crate::output::table;

/// Response header of a piece fetch carrying its explanation: a JSON array
/// of per-peer objects.
pub const EXPLAIN_HEADER: &str = "x-explain";

/// The per-peer fields, in the order of the table's columns.
pub const FIELDS: [&str; 11] = [
    "peer",
    "found",
    "asked",
    "gave",
    "dont_have",
    "timed_out",
    "banned",
    "bytes",
    "ms",
    "hedges",
    "duplicate_bytes",
];

/// The text to print on stderr for `explain` (the node's array, or `None`
/// when it sent none).
pub fn render(explain: Option<&Value>, json: bool) -> String {
    let Some(value) = explain else {
        return "explain: the node sent no per-peer explanation of this fetch (it may be older than this client); nothing to show\n".to_owned();
    };
    let Some(rows) = value.as_array() else {
        return format!("explain: the node sent an explanation that is not a list: {value}\n");
    };
    if json {
        return format!("{}\n", serde_json::json!({ "explain": value }));
    }
    if rows.is_empty() {
        return "explain: no peer was asked\n".to_owned();
    }
    let mut lines = vec![FIELDS.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>()];
    for row in rows {
        lines.push(FIELDS.iter().map(|f| cell(row.get(*f))).collect());
    }
    table(&lines)
}

/// Parses the explain header's value.
pub fn parse_header(value: Option<&[u8]>) -> Option<Value> {
    value.map(|bytes| {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    })
}

fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use serde_json::json;

    use super::*;

    #[test]
    fn missing_explanations_are_said_not_invented() {
        let text = render(None, false);
        assert!(text.contains("sent no per-peer explanation"), "{text}");
        assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
    }

    #[test]
    fn rows_become_an_aligned_table() {
        let value = json!([
            {"peer": "127.0.0.1:7001", "asked": true, "gave": true, "dont_have": false,
             "timed_out": false, "banned": false, "bytes": 1048576, "ms": 12, "hedges": 0,
             "duplicate_bytes": 0},
            {"peer": "[::1]:7002", "asked": true, "gave": false, "dont_have": true}
        ]);
        let text = render(Some(&value), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("peer "));
        assert!(lines[1].contains("1048576"));
        assert!(lines[2].contains("[::1]:7002") && lines[2].ends_with('-'));
        let json_text = render(Some(&value), true);
        let parsed: Value = serde_json::from_str(json_text.trim()).unwrap();
        assert_eq!(parsed["explain"], value);
    }
}
