//! One peer's part in one fetch: where it stands ([`PeerState`]), how its
//! part ended ([`Outcome`]), and the account `--explain` shows of it.
//!
//! Plain types over [`super::link`] and [`super::events`].

use std::sync::Arc;
use std::time::Instant;

use super::events::PeerAccount;
use super::link::Link;

/// Peers listed in one fetch's account (those that gave or were asked
/// first): it travels in a response header.
pub const EXPLAIN_MAX_PEERS: usize = 32;
/// `--explain`'s `found`: the peer was connected when the fetch began to
/// look further (or came up by itself).
pub const FOUND_CONNECTED: &str = "connected";
/// `--explain`'s `found`: dialled from the peer table while widening.
pub const FOUND_WIDENING: &str = "widening";
/// `--explain`'s `found`: an address a DHT lookup returned.
pub const FOUND_DHT: &str = "dht";
/// Where a peer stands in one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerState {
    /// WANT_HAVE sent, no answer yet.
    Wanted,
    /// Said HAVE; not asked (yet).
    Holder,
    /// ASK outstanding since the instant given (progress clock).
    Asked,
    /// Said it does not have it, failed, or was given up on.
    Out,
}

/// A peer one fetch involves: its connection, where it stands, and its
/// account.
pub(super) struct Candidate {
    pub(super) link: Arc<Link>,
    pub(super) state: PeerState,
    /// Bytes received on the connection when we last saw progress, and when.
    pub(super) progress: (u64, Instant),
    /// What happened with this peer, for `--explain`.
    pub(super) account: Account,
}

/// How a peer's part in a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Still asked or wanted (the fetch ended first).
    Pending,
    /// Gave the piece, this many bytes.
    Gave(u64),
    /// Said it does not have it.
    DontHave,
    /// Asked, and withdrawn: stalled, lost the hedge, or the deadline.
    TimedOut,
    /// Gave bytes that do not hash to the name: banned.
    Lied,
    /// Its connection ended, or could not be written to.
    Gone,
}

/// What happened with one peer in one fetch, for `--explain`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Account {
    pub(super) since: Instant,
    pub(super) asked: bool,
    pub(super) hedge: bool,
    pub(super) outcome: Outcome,
    pub(super) ended: Option<Instant>,
}

impl Candidate {
    /// Records how this peer's part ended (the first ending counts).
    pub(super) fn end(&mut self, outcome: Outcome, at: Instant) {
        self.state = PeerState::Out;
        if self.account.outcome == Outcome::Pending {
            self.account.outcome = outcome;
            self.account.ended = Some(at);
        }
    }

    pub(super) fn explain(&self, fetch_end: Instant, found: &'static str) -> PeerAccount {
        let a = &self.account;
        let flag = |on: bool| u64::from(on);
        let ms = a
            .ended
            .unwrap_or(fetch_end)
            .saturating_duration_since(a.since);
        PeerAccount {
            peer: self.link.peer_addr().to_string(),
            asked: flag(a.asked),
            gave: flag(matches!(a.outcome, Outcome::Gave(_))),
            dont_have: flag(a.outcome == Outcome::DontHave),
            timed_out: flag(a.outcome == Outcome::TimedOut),
            banned: flag(a.outcome == Outcome::Lied),
            bytes: match a.outcome {
                Outcome::Gave(bytes) => bytes,
                _ => 0,
            },
            ms: u64::try_from(ms.as_millis()).unwrap_or(u64::MAX),
            hedges: flag(a.hedge),
            found,
        }
    }
}
