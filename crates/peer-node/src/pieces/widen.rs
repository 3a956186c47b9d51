//! Looking beyond a fetch's connections: widening rounds of dials from
//! the peer table, the DHT lookup beside them (`--dht`), and closing the
//! connections dialled for them once idle (docs/PROTOCOL.md §4,
//! "Widening" and "Discovery on the Mainline DHT").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wire_format::{PeerAddr, PieceId};

use super::account::{Candidate, FOUND_CONNECTED, FOUND_DHT, FOUND_WIDENING};
use super::events::FetchError;
use super::link::Link;
use super::state::Pieces;
use crate::dht::LookupHandle;
use crate::metrics::Metric;
use crate::swarm::Widened;

/// Candidates from the peer table dialled per round when no connected
/// peer holds the piece; a fetch widens round after round (within the dial
/// rate) until one says HAVE, [`WIDEN_MAX_PEERS`] were dialled, or no
/// candidate is left.
pub const WIDEN_DIALS: usize = 8;
/// Peers one fetch dials at most while widening: past it, "not found".
/// At the dial rate (10 a second) that is about 13 s of dialling, longer
/// than a fetch's default deadline: a 100-node swarm is searched whole.
pub const WIDEN_MAX_PEERS: usize = 128;
/// How long after a round's dials have all connected (or failed) the next
/// round starts: their HELLOs and answers arrive first.
const WIDEN_SETTLE: Duration = Duration::from_millis(100);
/// How long a connection dialled for widening that outlived its fetch (it
/// gave the piece, or had not answered) may sit idle before it is closed:
/// a file job's next pieces keep it busy, while single fetches from every
/// corner of a swarm must not fill a popular holder's connection slots.
pub const WIDEN_LINGER: Duration = Duration::from_secs(3);
/// Why a connection dialled for widening was closed: its work was done.
pub const WIDEN_DONE: &str = "widen_done";
/// Longest a widening round waits for its dials to connect and answer.
const WIDEN_WAIT: Duration = Duration::from_secs(3);

/// How a fetch searched beyond its connections: when it began to, its
/// widening rounds, and the DHT lookup it started or joined.
#[derive(Default)]
pub(super) struct Search {
    /// When no connected peer held the piece any more.
    since: Option<Instant>,
    /// When the last widening round started.
    last_round: Option<Instant>,
    lookup: Option<LookupHandle>,
    /// Whether a lookup was tried (none is started twice).
    looked_up: bool,
    /// Addresses widening dialled: never dialled again by this fetch, even
    /// when the dial failed before the peer could be asked.
    dialled: HashSet<PeerAddr>,
}

impl Search {
    /// Whether the fetch has begun to look beyond its connections.
    pub(super) fn started(&self) -> bool {
        self.since.is_some()
    }

    /// Nobody connected holds the piece: starts the search (with `--dht`,
    /// a lookup of `topic` beside it) and, once the last round is over, a
    /// widening round of dials. "Not found" once no dial, announce or
    /// lookup is left that could bring a holder, and every peer asked
    /// (`peers`) answered.
    pub(super) fn widen(
        &mut self,
        pieces: &Arc<Pieces>,
        topic: &PieceId,
        peers: &HashMap<u64, Candidate>,
        unanswered: bool,
        at: Instant,
    ) -> Result<(), FetchError> {
        self.since.get_or_insert(at);
        if !self.looked_up {
            self.looked_up = true;
            self.lookup = start_lookup(pieces, topic);
        }
        // Announces and dials still connecting may bring a holder: a round
        // ends once they are done (or after WIDEN_WAIT).
        let connecting = pieces.swarm.attempts_in_progress();
        let round_over = self.last_round.is_none_or(|since| {
            let waited = at.duration_since(since);
            (connecting == 0 && waited >= WIDEN_SETTLE) || waited >= WIDEN_WAIT
        });
        if !round_over {
            return Ok(());
        }
        let mut skip: HashSet<PeerAddr> = peers.values().map(|c| c.link.peer_addr()).collect();
        skip.extend(&self.dialled);
        if let Some(lookup) = &self.lookup {
            skip.extend(lookup.found_all());
        }
        // Every address dialled is new (`skip`), so `dialled` counts them.
        let room = WIDEN_MAX_PEERS - self.dialled.len();
        let round = if room > 0 {
            pieces.swarm.widen(room.min(WIDEN_DIALS), &skip)
        } else {
            Widened::default()
        };
        if round.queued > 0 && self.dialled.is_empty() {
            pieces.metrics.incr(Metric::FetchWidensTotal);
        }
        let more = round.queued > 0 || (round.left > 0 && room > 0);
        self.dialled.extend(round.dialled);
        if !more && connecting == 0 && !unanswered && !self.looking() {
            return Err(FetchError::NotFound {
                asked: peers.len(),
                known: pieces.swarm.known_peers(),
            });
        }
        self.last_round = Some(at);
        Ok(())
    }

    /// How the fetch came to ask `c`, for `--explain`.
    pub(super) fn found(&self, c: &Candidate) -> &'static str {
        match self.since {
            Some(since) if c.account.since >= since => {
                if self
                    .lookup
                    .as_ref()
                    .is_some_and(|l| l.found(&c.link.peer_addr()))
                {
                    FOUND_DHT
                } else {
                    FOUND_WIDENING
                }
            }
            _ => FOUND_CONNECTED,
        }
    }

    /// Whether a lookup is still running (then "not found" must wait).
    fn looking(&self) -> bool {
        self.lookup.as_ref().is_some_and(|l| !l.is_done())
    }
}

/// Starts (or joins) a DHT lookup of `topic`, with `--dht`.
fn start_lookup(pieces: &Arc<Pieces>, topic: &PieceId) -> Option<LookupHandle> {
    let dht = pieces.dht.as_ref()?;
    let swarm = Arc::clone(&pieces.swarm);
    dht.lookup(topic, &pieces.metrics, move |addrs| swarm.dial_found(addrs))
}

/// Closes `link`, dialled for a widening, once it has been idle for
/// [`WIDEN_LINGER`] (nothing asked of it outstanding, nothing received),
/// unless the node needs it for its outbound target. One watcher per
/// connection: the fetches of a file job that all ended on it share it.
pub(super) fn linger(pieces: Arc<Pieces>, link: Arc<Link>) {
    if !link.start_lingering() {
        return;
    }
    tokio::spawn(async move {
        watch_idle(&pieces, &link).await;
        link.stop_lingering();
    });
}

async fn watch_idle(pieces: &Pieces, link: &Link) {
    let mut seen = link.bytes_received();
    loop {
        tokio::time::sleep(WIDEN_LINGER).await;
        if link.is_closed() {
            return;
        }
        let received = link.bytes_received();
        let idle = received == seen && link.ask_book().load() == 0;
        seen = received;
        if idle {
            if pieces.swarm.release_widen_dial(&link.remote) {
                link.close_with(WIDEN_DONE);
            }
            return;
        }
    }
}
