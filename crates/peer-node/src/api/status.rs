//! The status page at `GET /`: who this node is, its peers with their state
//! and rates, store use, running fetch jobs, bans and the recent errors, as
//! plain HTML and CSS (no script). It needs no token, so it shows nothing
//! secret: no token, no data dir path, no file contents.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::backend::ApiBackend;
use crate::metrics::Metric;
use crate::swarm::{PeerState, PeerView};

/// Peer rows shown; past it the page says how many more there are.
pub const STATUS_MAX_PEERS: usize = 200;
/// Recent errors shown (peers' last errors and failed jobs).
pub const STATUS_MAX_ERRORS: usize = 20;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;max-width:72em}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;border-bottom:1px solid #eee}\
th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.connected{color:#060}.banned{color:#a00}.backoff{color:#a60}code{font-size:.95em}";

/// Escapes text for HTML element content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as a short human figure (`1.5 MiB`).
pub(super) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn state_name(state: PeerState) -> &'static str {
    match state {
        PeerState::Connected => "connected",
        PeerState::Connecting => "connecting",
        PeerState::Known => "known",
        PeerState::Backoff => "backoff",
        PeerState::Banned => "banned",
    }
}

fn peer_row(page: &mut String, peer: &PeerView, now: u64) {
    let age = peer.connected_since.map(|since| now.saturating_sub(since));
    let rate = |bytes: u64| match age {
        Some(secs) if secs > 0 => format!("{}/s", human_bytes(bytes / secs)),
        _ => "–".to_owned(),
    };
    let state = state_name(peer.state);
    let _ = write!(
        page,
        "<tr><td><code>{}</code></td><td class=\"{state}\">{state}{}</td><td>{}</td>\
         <td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td></tr>",
        escape(&peer.addr.to_string()),
        if peer.legacy { " (legacy)" } else { "" },
        peer.direction.map_or("–", |d| match d {
            crate::swarm::Direction::In => "in",
            crate::swarm::Direction::Out => "out",
        }),
        escape(&format!("{:?}", peer.source).to_lowercase()),
        human_bytes(peer.bytes_in),
        human_bytes(peer.bytes_out),
        rate(peer.bytes_in),
        rate(peer.bytes_out),
    );
}

/// The page, rendered from what the backend shows now.
pub(super) fn render(backend: &dyn ApiBackend) -> String {
    let now = unix_now();
    let metrics = backend.metrics();
    let peers = backend.peers();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>p2p peer-node</title><style>{STYLE}</style></head><body>\
         <h1>p2p peer-node {}</h1><table>",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(identity) = backend.identity() {
        let _ = write!(
            page,
            "<tr><th>node id</th><td><code>{}</code></td></tr>\
             <tr><th>listening for peers</th><td><code>port {}</code></td></tr>",
            escape(&identity.node_id),
            identity.listen_port
        );
    }
    let _ = write!(
        page,
        "<tr><th>connections open</th><td>{}</td></tr>\
         <tr><th>pieces served / fetched</th><td>{} / {}</td></tr>\
         <tr><th>bytes in / out</th><td>{} / {}</td></tr>",
        metrics.value(Metric::ConnectionsOpen),
        metrics.value(Metric::PiecesServedTotal),
        metrics.value(Metric::PiecesFetchedTotal),
        human_bytes(metrics.value(Metric::BytesInTotal)),
        human_bytes(metrics.value(Metric::BytesOutTotal)),
    );
    let files = backend.files();
    if let Some(files) = &files {
        let stats = files.store.stats();
        let _ = write!(
            page,
            "<tr><th>store</th><td>{} of {} ({} pinned, {} pieces)</td></tr>",
            human_bytes(stats.bytes),
            human_bytes(stats.capacity),
            human_bytes(stats.pinned_bytes),
            stats.pieces
        );
    }
    page.push_str("</table>");

    let _ = write!(
        page,
        "<h2>Peers ({})</h2><table><tr><th>address</th><th>state</th><th>dir</th>\
         <th>source</th><th>in</th><th>out</th><th>in rate</th><th>out rate</th></tr>",
        peers.len()
    );
    for peer in peers.iter().take(STATUS_MAX_PEERS) {
        peer_row(&mut page, peer, now);
    }
    page.push_str("</table>");
    if peers.len() > STATUS_MAX_PEERS {
        let _ = write!(
            page,
            "<p>and {} more: see <code>/api/v1/peers</code>.</p>",
            peers.len() - STATUS_MAX_PEERS
        );
    }

    if let Some(files) = &files {
        let jobs = files.jobs.running();
        let _ = write!(
            page,
            "<h2>Fetch jobs running ({})</h2><table><tr><th>manifest</th><th>done</th>\
             <th>of</th><th>rate</th><th>peers</th></tr>",
            jobs.len()
        );
        for job in &jobs {
            let _ = write!(
                page,
                "<tr><td><code>{}</code></td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}/s</td><td class=\"n\">{}</td></tr>",
                escape(&job.manifest),
                human_bytes(job.bytes_done),
                human_bytes(job.bytes_total),
                human_bytes(job.rate_bps),
                job.peers
            );
        }
        page.push_str("</table>");
    }

    let banned: Vec<&PeerView> = peers.iter().filter(|p| p.ban.is_some()).collect();
    let _ = write!(
        page,
        "<h2>Bans ({})</h2><table><tr><th>peer</th><th>reason</th><th>piece</th>\
         <th>ends in</th></tr>",
        banned.len()
    );
    for peer in &banned {
        if let Some(ban) = &peer.ban {
            let _ = write!(
                page,
                "<tr><td><code>{}</code></td><td class=\"banned\">{}</td><td><code>{}</code></td>\
                 <td class=\"n\">{} s</td></tr>",
                escape(&peer.addr.to_string()),
                escape(&ban.reason),
                ban.digest.map(|d| d.to_string()).unwrap_or_default(),
                ban.until.saturating_sub(now)
            );
        }
    }
    page.push_str("</table>");

    let mut errors: Vec<String> = peers
        .iter()
        .filter(|p| p.ban.is_none())
        .filter_map(|p| p.last_error.as_ref().map(|e| format!("{}: {e}", p.addr)))
        .collect();
    if let Some(files) = &files {
        errors.extend(files.jobs.recent_errors());
    }
    let _ = write!(page, "<h2>Recent errors ({})</h2><ul>", errors.len());
    for error in errors.iter().take(STATUS_MAX_ERRORS) {
        let _ = write!(page, "<li>{}</li>", escape(error));
    }
    page.push_str(
        "</ul><p>API (needs <code>Authorization: Bearer</code> with <code>DATA_DIR/api-token</code>): \
         <code>/api/v1/peers</code> <code>/api/v1/stats</code> <code>/api/v1/pieces</code> \
         <code>/api/v1/files</code> <code>/api/v1/fetches</code> <code>/api/v1/store</code> \
         <code>/api/v1/pins</code> <code>/api/v1/gc</code> <code>/api/v1/verify</code>. \
         Metrics (Prometheus): <a href=\"/metrics\"><code>/metrics</code></a>.</p></body></html>\n",
    );
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_sizes_are_human() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 20), "5.0 MiB");
    }
}
