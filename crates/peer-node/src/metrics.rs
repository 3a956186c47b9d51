//! The node's counters and gauges, rendered for `GET /metrics` (Prometheus
//! text format, names prefixed `p2p_`) and `GET /api/v1/stats` (a JSON map of
//! the same numbers, names without the prefix).
//!
//! Metrics are named by enums, so a misspelt name is a compile error and an
//! update is one atomic add at a fixed index: no map lookup, no lock. Add a
//! metric with one line in the `metric_list!` or `family_list!` invocation
//! below.
//!
//! Labelled families (protocol errors by kind, closes by reason) take
//! `&'static str` label values, so a value always comes from the program's
//! own text (e.g. `DecodeError::kind`) and never from peer input; each family
//! is still capped at [`MAX_LABELS_PER_FAMILY`] values, beyond which counts go
//! to [`OVERFLOW_LABEL`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Prefix of every metric name in the Prometheus exposition.
pub const PROMETHEUS_PREFIX: &str = "p2p_";

/// Most distinct label values one family tracks. Labels are program
/// constants, so this is never reached in practice; worst case a family holds
/// this many `(&'static str, u64)` entries.
pub const MAX_LABELS_PER_FAMILY: usize = 64;

/// Label value that counts everything past [`MAX_LABELS_PER_FAMILY`].
pub const OVERFLOW_LABEL: &str = "other";

/// Whether a metric only goes up or may go both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Monotonic; names end in `_total`.
    Counter,
    /// A current level that goes up and down.
    Gauge,
}

impl MetricKind {
    /// The Prometheus `# TYPE` word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
        }
    }
}

/// Declares [`Metric`]: one variant per unlabelled metric, with its name
/// (without the `p2p_` prefix), kind and help text.
macro_rules! metric_list {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)+) => {
        /// An unlabelled counter or gauge.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Metric {
            $(
                #[doc = $help]
                $variant,
            )+
        }

        impl Metric {
            /// Every metric, in declaration (and rendering) order.
            pub const ALL: &[Metric] = &[$(Metric::$variant,)+];

            /// Name without the `p2p_` prefix, as in `/api/v1/stats`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Metric::$variant => $name,)+
                }
            }

            /// Counter or gauge.
            pub const fn kind(self) -> MetricKind {
                match self {
                    $(Metric::$variant => MetricKind::$kind,)+
                }
            }

            /// One-line description, for `# HELP`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Metric::$variant => $help,)+
                }
            }
        }
    };
}

metric_list! {
    ConnectionsInboundTotal => "connections_inbound_total", Counter,
        "Inbound connections accepted.";
    ConnectionsOutboundTotal => "connections_outbound_total", Counter,
        "Outbound connections established.";
    ConnectionsOpen => "connections_open", Gauge,
        "Connections open now.";
    ServeAnswersWaiting => "serve_answers_waiting", Gauge,
        "Answers to peers' ASKs for pieces we hold, waiting for a share of the serving budget.";
    ConnectionsRejectedTotal => "connections_rejected_total", Counter,
        "Inbound connections refused by a connection limit or a ban.";
    HelloReceivedTotal => "hello_received_total", Counter,
        "Valid HELLO messages received.";
    LegacyPeersTotal => "legacy_peers_total", Counter,
        "Connections detected as legacy (reference implementation) peers.";
    PexFramesReceivedTotal => "pex_frames_received_total", Counter,
        "PEERS frames received.";
    PexFramesSentTotal => "pex_frames_sent_total", Counter,
        "PEERS frames sent.";
    PexEntriesAcceptedTotal => "pex_entries_accepted_total", Counter,
        "PEERS entries added to the peer table as candidates.";
    PexEntriesDroppedTotal => "pex_entries_dropped_total", Counter,
        "PEERS entries dropped (filtered, duplicate, banned or over quota).";
    DialAttemptsTotal => "dial_attempts_total", Counter,
        "Outbound connection attempts.";
    DialFailuresTotal => "dial_failures_total", Counter,
        "Outbound connection attempts that failed or timed out.";
    ProbesTotal => "probes_total", Counter,
        "Dial-back probes started.";
    ProbeFailuresTotal => "probe_failures_total", Counter,
        "Dial-back probes that failed.";
    BytesInTotal => "bytes_in_total", Counter,
        "Bytes received from peers.";
    BytesOutTotal => "bytes_out_total", Counter,
        "Bytes sent to peers.";
    IgnoredFramesTotal => "ignored_frames_total", Counter,
        "Frames ignored and counted (not handled by this version, or over a quota that does not close).";
    SelfConnectionsTotal => "self_connections_total", Counter,
        "Connections that reached this node itself (the address is never dialled again).";
    DuplicateConnectionsTotal => "duplicate_connections_total", Counter,
        "Second connections to an already connected node, closed by the node_id rule.";
    BootstrapAnnouncesTotal => "bootstrap_announces_total", Counter,
        "Announcements to a bootstrap server that got its answer.";
    UnsolicitedGivesTotal => "unsolicited_gives_total", Counter,
        "GIVE frames that answer no ASK of ours (dropped).";
    PiecesServedTotal => "pieces_served_total", Counter,
        "Pieces given to peers.";
    PieceBytesServedTotal => "piece_bytes_served_total", Counter,
        "Piece bytes given to peers.";
    PiecesFetchedTotal => "pieces_fetched_total", Counter,
        "Pieces received from peers and verified (duplicates included).";
    PieceBytesFetchedTotal => "piece_bytes_fetched_total", Counter,
        "Piece bytes received from peers and verified (duplicates included).";
    DuplicateBytesTotal => "duplicate_bytes_total", Counter,
        "Verified piece bytes that arrived late (after a hedge, CANCEL or deadline).";
    GivesStreamedTotal => "gives_streamed_total", Counter,
        "GIVEs whose piece was hashed while it arrived (the rest are hashed once whole).";
    FetchesStartedTotal => "fetches_started_total", Counter,
        "Swarm fetches started for the local user.";
    FetchesJoinedTotal => "fetches_joined_total", Counter,
        "Requests that joined a fetch already running for the same piece.";
    FetchesSucceededTotal => "fetches_succeeded_total", Counter,
        "Fetches that ended with the verified piece.";
    FetchesNotFoundTotal => "fetches_not_found_total", Counter,
        "Fetches that ended 'not found' (every peer asked said no).";
    FetchesDeadlineTotal => "fetches_deadline_total", Counter,
        "Fetches that ended at their deadline.";
    FetchWidensTotal => "fetch_widens_total", Counter,
        "Fetches that dialled more peers because no connected peer had the piece.";
    HedgesTotal => "hedges_total", Counter,
        "ASKs sent to a second holder because the first made no progress.";
    CancelsSentTotal => "cancels_sent_total", Counter,
        "CANCELs sent (hedge losers, deadlines).";
    CancelsReceivedTotal => "cancels_received_total", Counter,
        "CANCELs received that dropped a queued answer.";
    WantHaveSentTotal => "want_have_sent_total", Counter,
        "WANT_HAVE frames sent.";
    WantHaveReceivedTotal => "want_have_received_total", Counter,
        "WANT_HAVE frames received.";
    HaveReceivedTotal => "have_received_total", Counter,
        "HAVE frames received in answer to our WANT_HAVE.";
    HaveAnnouncementsReceivedTotal => "have_announcements_received_total", Counter,
        "HAVE frames received unasked: a peer announcing a piece it fetched.";
    HaveAnnouncedTotal => "have_announced_total", Counter,
        "HAVE frames sent unasked, announcing a piece of a file this node fetched.";
    DontHaveReceivedTotal => "dont_have_received_total", Counter,
        "DONT_HAVE frames received in answer to our WANT_HAVE or ASK.";
    DhtAnnouncesTotal => "dht_announces_total", Counter,
        "Pinned roots announced on the DHT (--dht).";
    DhtAnnounceFailuresTotal => "dht_announce_failures_total", Counter,
        "DHT announces that failed (retried later).";
    DhtLookupsTotal => "dht_lookups_total", Counter,
        "DHT lookups started by fetches that found no holder among their connections.";
    DhtPeersFoundTotal => "dht_peers_found_total", Counter,
        "Addresses DHT lookups returned and chose to dial (at most 16 per lookup).";
    DhtDialsTotal => "dht_dials_total", Counter,
        "Connections dialled to addresses a DHT lookup returned.";
    ConnectionsReplacedTotal => "connections_replaced_total", Counter,
        "Inbound connections that never carried data, closed by a full node to admit a newcomer.";
    BansTotal => "bans_total", Counter,
        "Peers banned for sending a piece that does not match its name.";
}

/// Declares [`Family`]: one variant per labelled counter family, with its
/// name, label name and help text.
macro_rules! family_list {
    ($($variant:ident => $name:literal, $label:literal, $help:literal;)+) => {
        /// A counter family with one label, e.g. protocol errors by kind.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Family {
            $(
                #[doc = $help]
                $variant,
            )+
        }

        impl Family {
            /// Every family, in declaration (and rendering) order.
            pub const ALL: &[Family] = &[$(Family::$variant,)+];

            /// Name without the `p2p_` prefix.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Family::$variant => $name,)+
                }
            }

            /// The label's name (`kind`, `reason`, ...).
            pub const fn label(self) -> &'static str {
                match self {
                    $(Family::$variant => $label,)+
                }
            }

            /// One-line description, for `# HELP`.
            pub const fn help(self) -> &'static str {
                match self {
                    $(Family::$variant => $help,)+
                }
            }
        }
    };
}

family_list! {
    ProtocolErrorsTotal => "protocol_errors_total", "kind",
        "Connections closed for a protocol error, by kind.";
    PexEntriesDroppedByReasonTotal => "pex_entries_dropped_by_reason_total", "reason",
        "PEERS entries dropped, by reason.";
    ConnectionsClosedTotal => "connections_closed_total", "reason",
        "Connections closed, by reason.";
}

/// The registry: every [`Metric`] and [`Family`], shared by reference
/// (typically in an `Arc`) between the node's tasks and the API.
#[derive(Debug)]
pub struct Metrics {
    /// Indexed by `Metric as usize`; `Metric::ALL` has exactly these slots.
    values: Box<[AtomicU64]>,
    /// Indexed by `Family as usize`. A `std` mutex held only for one map
    /// update or a copy, never across an await.
    families: Box<[Mutex<BTreeMap<&'static str, u64>>]>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero and every family empty.
    pub fn new() -> Self {
        Self {
            values: Metric::ALL.iter().map(|_| AtomicU64::new(0)).collect(),
            families: Family::ALL.iter().map(|_| Mutex::default()).collect(),
        }
    }

    fn slot(&self, metric: Metric) -> &AtomicU64 {
        // In bounds: `values` has one slot per variant of `Metric`, whose
        // discriminants are 0..ALL.len() in order.
        &self.values[metric as usize]
    }

    /// Adds one.
    pub fn incr(&self, metric: Metric) {
        self.add(metric, 1);
    }

    /// Adds `n` (wrapping at `u64::MAX`, which a byte counter cannot reach).
    pub fn add(&self, metric: Metric, n: u64) {
        self.slot(metric).fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts one from a gauge, stopping at zero.
    pub fn decr(&self, metric: Metric) {
        self.sub(metric, 1);
    }

    /// Subtracts `n` from a gauge, stopping at zero (an unbalanced decrement
    /// is a bug, but must not show 2^64 connections).
    pub fn sub(&self, metric: Metric, n: u64) {
        // The closure always returns Some, so this cannot fail.
        let _ = self
            .slot(metric)
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Sets a gauge.
    pub fn set(&self, metric: Metric, value: u64) {
        self.slot(metric).store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn value(&self, metric: Metric) -> u64 {
        self.slot(metric).load(Ordering::Relaxed)
    }

    fn family(&self, family: Family) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, u64>> {
        // In bounds as for `slot`. A panic elsewhere while holding the lock
        // cannot leave a counter map inconsistent, so poisoning is ignored.
        self.families[family as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds one to `family{label}`.
    pub fn incr_labelled(&self, family: Family, label: &'static str) {
        self.add_labelled(family, label, 1);
    }

    /// Adds `n` to `family{label}`. Past [`MAX_LABELS_PER_FAMILY`] distinct
    /// values, a new value is counted as [`OVERFLOW_LABEL`].
    pub fn add_labelled(&self, family: Family, label: &'static str, n: u64) {
        let mut map = self.family(family);
        let key = if map.contains_key(label) || map.len() < MAX_LABELS_PER_FAMILY {
            label
        } else {
            OVERFLOW_LABEL
        };
        let count = map.entry(key).or_insert(0);
        *count = count.wrapping_add(n);
    }

    /// The current value of `family{label}` (0 if never counted).
    pub fn labelled_value(&self, family: Family, label: &str) -> u64 {
        self.family(family).get(label).copied().unwrap_or(0)
    }

    /// Every labelled series of `family`, sorted by label value.
    fn family_snapshot(&self, family: Family) -> Vec<(&'static str, u64)> {
        self.family(family).iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// The Prometheus text exposition (format 0.0.4): `# HELP`, `# TYPE` and
    /// `p2p_<name> <value>` for each metric, then each family with one line
    /// per label value it has seen.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        for &metric in Metric::ALL {
            let name = metric.name();
            // Writing to a String cannot fail.
            let _ = writeln!(
                out,
                "# HELP {PROMETHEUS_PREFIX}{name} {}",
                escape_help(metric.help())
            );
            let _ = writeln!(
                out,
                "# TYPE {PROMETHEUS_PREFIX}{name} {}",
                metric.kind().as_str()
            );
            let _ = writeln!(out, "{PROMETHEUS_PREFIX}{name} {}", self.value(metric));
        }
        for &family in Family::ALL {
            let name = family.name();
            let _ = writeln!(
                out,
                "# HELP {PROMETHEUS_PREFIX}{name} {}",
                escape_help(family.help())
            );
            let _ = writeln!(out, "# TYPE {PROMETHEUS_PREFIX}{name} counter");
            for (label, value) in self.family_snapshot(family) {
                let _ = writeln!(
                    out,
                    "{PROMETHEUS_PREFIX}{}",
                    series_name(family, label, value)
                );
            }
        }
        out
    }

    /// The same numbers as [`Metrics::render_prometheus`], keyed by series
    /// name without the `p2p_` prefix: `"bytes_in_total"` for a metric,
    /// `"protocol_errors_total{kind=\"len_too_large\"}"` for a family member.
    /// Every value is a number.
    pub fn to_json_map(&self) -> BTreeMap<String, u64> {
        let mut map: BTreeMap<String, u64> = Metric::ALL
            .iter()
            .map(|&m| (m.name().to_owned(), self.value(m)))
            .collect();
        for &family in Family::ALL {
            for (label, value) in self.family_snapshot(family) {
                map.insert(
                    format!(
                        "{}{{{}=\"{}\"}}",
                        family.name(),
                        family.label(),
                        escape_label(label)
                    ),
                    value,
                );
            }
        }
        map
    }
}

/// `name{label="value"} n` for one family member.
fn series_name(family: Family, label: &str, value: u64) -> String {
    format!(
        "{}{{{}=\"{}\"}} {value}",
        family.name(),
        family.label(),
        escape_label(label)
    )
}

/// Escapes a `# HELP` text: backslash and newline.
fn escape_help(text: &str) -> String {
    text.replace('\\', r"\\").replace('\n', r"\n")
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(text: &str) -> String {
    text.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        let mut seen = std::collections::BTreeSet::new();
        let names = Metric::ALL
            .iter()
            .map(|m| m.name())
            .chain(Family::ALL.iter().map(|f| f.name()));
        for name in names {
            assert!(seen.insert(name), "duplicate {name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(!name.starts_with(PROMETHEUS_PREFIX), "{name}");
        }
        for &m in Metric::ALL {
            assert_eq!(
                m.name().ends_with("_total"),
                m.kind() == MetricKind::Counter,
                "{m:?}"
            );
        }
        for (i, &m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m as usize, i);
        }
        for (i, &f) in Family::ALL.iter().enumerate() {
            assert_eq!(f as usize, i);
        }
    }

    #[test]
    fn updates() {
        let m = Metrics::new();
        m.incr(Metric::DialAttemptsTotal);
        m.add(Metric::DialAttemptsTotal, 4);
        assert_eq!(m.value(Metric::DialAttemptsTotal), 5);
        m.set(Metric::ConnectionsOpen, 3);
        m.decr(Metric::ConnectionsOpen);
        assert_eq!(m.value(Metric::ConnectionsOpen), 2);
        m.sub(Metric::ConnectionsOpen, 10);
        assert_eq!(m.value(Metric::ConnectionsOpen), 0);
        assert_eq!(m.value(Metric::BytesInTotal), 0);
    }

    #[test]
    fn prometheus_text() {
        let m = Metrics::new();
        m.set(Metric::ConnectionsOpen, 7);
        m.add(Metric::BytesOutTotal, 1 << 40);
        m.incr_labelled(Family::ProtocolErrorsTotal, "len_too_large");
        m.incr_labelled(Family::ProtocolErrorsTotal, "len_too_large");
        m.incr_labelled(Family::ConnectionsClosedTotal, "idle");
        let text = m.render_prometheus();
        assert!(text.contains("# HELP p2p_connections_open Connections open now.\n"));
        assert!(text.contains("# TYPE p2p_connections_open gauge\np2p_connections_open 7\n"));
        assert!(
            text.contains(
                "# TYPE p2p_bytes_out_total counter\np2p_bytes_out_total 1099511627776\n"
            )
        );
        assert!(text.contains("# TYPE p2p_protocol_errors_total counter\n"));
        assert!(text.contains("p2p_protocol_errors_total{kind=\"len_too_large\"} 2\n"));
        assert!(text.contains("p2p_connections_closed_total{reason=\"idle\"} 1\n"));
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP p2p_")
                    || line.starts_with("# TYPE p2p_")
                    || line.starts_with("p2p_"),
                "{line}"
            );
        }
    }

    #[test]
    fn json_map_has_the_same_numbers_without_prefix() {
        let m = Metrics::new();
        m.add(Metric::BytesInTotal, 9);
        m.incr_labelled(Family::ConnectionsClosedTotal, "idle");
        let map = m.to_json_map();
        assert_eq!(map.get("bytes_in_total"), Some(&9));
        assert_eq!(map.get("connections_open"), Some(&0));
        assert_eq!(
            map.get("connections_closed_total{reason=\"idle\"}"),
            Some(&1)
        );
        assert!(map.keys().all(|k| !k.starts_with(PROMETHEUS_PREFIX)));
        assert_eq!(map.len(), Metric::ALL.len() + 1);
    }

    #[test]
    fn family_labels_are_capped() {
        let m = Metrics::new();
        let labels: Vec<&'static str> = (0..MAX_LABELS_PER_FAMILY + 3)
            .map(|i| &*Box::leak(format!("l{i}").into_boxed_str()))
            .collect();
        for label in &labels {
            m.incr_labelled(Family::ProtocolErrorsTotal, label);
        }
        // A known label still counts under its own name.
        m.incr_labelled(Family::ProtocolErrorsTotal, labels[0]);
        assert_eq!(m.labelled_value(Family::ProtocolErrorsTotal, "l0"), 2);
        assert_eq!(
            m.labelled_value(Family::ProtocolErrorsTotal, OVERFLOW_LABEL),
            3
        );
        assert_eq!(
            m.family_snapshot(Family::ProtocolErrorsTotal).len(),
            MAX_LABELS_PER_FAMILY + 1
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.incr_labelled(Family::ConnectionsClosedTotal, "a\"b\\c\nd");
        assert!(
            m.render_prometheus()
                .contains(r#"p2p_connections_closed_total{reason="a\"b\\c\nd"} 1"#)
        );
    }
}
