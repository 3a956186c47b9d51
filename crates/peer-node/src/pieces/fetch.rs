//! Fetching for the node's own user: find holders with WANT_HAVE, ASK them,
//! hedge a stalled ASK to a second holder, widen to more peers when nobody
//! holds the piece, and end with the piece (verified), "not found" or
//! "deadline". Concurrent requests for one piece share one fetch.
//!
//! A fetch is a task of its own: requesters only wait for its result, so a
//! requester that gives up does not cancel the fetch for the others. The
//! sessions feed it [`FetchEvent`]s as answers arrive.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use piece_store::{Durability, Retention};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info_span};
use wire_format::limits::{ASK_PROGRESS_TIMEOUT, MAX_ASKS_IN_FLIGHT, PIECE_MAX};
use wire_format::{PeerAddr, PieceId, VerifiedPiece};

use super::events::{FETCH_EVENTS, FetchError, FetchEvent, FetchHandle, Fetched, PeerAccount};
use super::link::Link;
use super::serve::read_piece;
use super::state::{PIECE_UNITS, Pieces};
use crate::clock::now;
use crate::dht::LookupHandle;
use crate::metrics::Metric;
use crate::swarm::Widened;

/// How often a fetch checks for stalls, closed connections and deadlines.
const FETCH_TICK: Duration = Duration::from_millis(50);
/// The peer that gave the last piece is ASKed at once (no WANT_HAVE round
/// trip) only while it has fewer than this many of our ASKs sent or
/// waiting: past that, the pieces of a file fetched in parallel are spread
/// over every holder instead of queueing at one.
pub const OPTIMISTIC_MAX_LOAD: usize = MAX_ASKS_IN_FLIGHT / 4;
/// How long a fetch waits for more HAVEs before asking a busy holder that
/// answered first (a holder with at least [`OPTIMISTIC_MAX_LOAD`] of our
/// ASKs): long enough for the other peers' answers on a LAN, short against a
/// piece's transfer.
pub const HOLDER_CHOICE_WAIT: Duration = Duration::from_millis(20);
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
/// Longest a widening round waits for its dials to connect and answer.
const WIDEN_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    /// WANT_HAVE sent, no answer yet.
    Wanted,
    /// Said HAVE; not asked (yet).
    Holder,
    /// ASK outstanding since the instant given (progress clock).
    Asked,
    /// Said it does not have it, failed, or was given up on.
    Out,
}

struct Candidate {
    link: Arc<Link>,
    state: PeerState,
    /// Bytes received on the connection when we last saw progress, and when.
    progress: (u64, Instant),
    /// What happened with this peer, for `--explain`.
    account: Account,
}

/// How a peer's part in a fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
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

#[derive(Debug, Clone, Copy)]
struct Account {
    since: Instant,
    asked: bool,
    hedge: bool,
    outcome: Outcome,
    ended: Option<Instant>,
}

impl Candidate {
    /// Records how this peer's part ended (the first ending counts).
    fn end(&mut self, outcome: Outcome, at: Instant) {
        self.state = PeerState::Out;
        if self.account.outcome == Outcome::Pending {
            self.account.outcome = outcome;
            self.account.ended = Some(at);
        }
    }

    fn explain(&self, fetch_end: Instant, found: &'static str) -> PeerAccount {
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

impl Pieces {
    /// The piece `id`, verified, from the store or the swarm, within `timeout`.
    pub async fn fetch(
        self: &Arc<Self>,
        id: PieceId,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        self.fetch_from(id, timeout).await.map(|f| f.bytes)
    }

    /// Like [`fetch`](Self::fetch), saying which peer gave the piece.
    pub async fn fetch_from(
        self: &Arc<Self>,
        id: PieceId,
        timeout: Duration,
    ) -> Result<Fetched, FetchError> {
        self.fetch_keeping(id, timeout, Keep::Store).await
    }

    /// Like [`fetch_from`](Self::fetch_from), with who keeps a piece that
    /// came from a peer: the store's cache, or the requester (a file job
    /// that writes it into its output and indexes it there, so the piece is
    /// written once).
    pub async fn fetch_keeping(
        self: &Arc<Self>,
        id: PieceId,
        timeout: Duration,
        keep: Keep,
    ) -> Result<Fetched, FetchError> {
        self.fetch_for(id, id, timeout, keep).await
    }

    /// Like [`fetch_keeping`](Self::fetch_keeping), for a piece of the
    /// file whose root manifest is `topic` (the piece itself when loose):
    /// with `--dht`, a fetch that finds no holder looks `topic` up, as a
    /// file's holders announce its root, never its pieces.
    pub async fn fetch_for(
        self: &Arc<Self>,
        id: PieceId,
        topic: PieceId,
        timeout: Duration,
        keep: Keep,
    ) -> Result<Fetched, FetchError> {
        let local = |bytes| Fetched {
            bytes,
            from: None,
            explain: Vec::new(),
            unkept: None,
        };
        // The in-memory index first: a miss costs no trip to the blocking pool.
        if self.store.has(&id)
            && let Some(bytes) = read_piece(self, id).await
        {
            return Ok(local(bytes));
        }
        let mut from_store_once = true;
        let mut result = loop {
            let joined = {
                let mut fetches = self.fetches();
                match fetches.get(&id) {
                    Some(handle) => {
                        self.metrics.incr(Metric::FetchesJoinedTotal);
                        Some(handle.result.clone())
                    }
                    // A fetch that just ended leaves only once its cache copy
                    // is stored: checked under the lock, the piece is either
                    // still registered (above) or already in the store.
                    None if from_store_once && self.store.has(&id) => None,
                    None => Some(self.start_fetch(&mut fetches, id, topic, timeout, keep)),
                }
            };
            match joined {
                Some(result) => break result,
                None => {
                    from_store_once = false;
                    if let Some(bytes) = read_piece(self, id).await {
                        return Ok(local(bytes));
                    }
                }
            }
        };
        let wait = async {
            loop {
                if let Some(outcome) = result.borrow_and_update().clone() {
                    return outcome;
                }
                if result.changed().await.is_err() {
                    return Err(FetchError::Shutdown);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(FetchError::Deadline))
    }

    /// Registers and spawns the fetch of `id` (the caller holds the lock on
    /// the fetch registry); returns where its result will appear.
    fn start_fetch(
        self: &Arc<Self>,
        fetches: &mut HashMap<PieceId, FetchHandle>,
        id: PieceId,
        topic: PieceId,
        timeout: Duration,
        keep: Keep,
    ) -> watch::Receiver<Option<Result<Fetched, FetchError>>> {
        let (events_tx, events_rx) = mpsc::channel(FETCH_EVENTS);
        let (result_tx, result_rx) = watch::channel(None);
        fetches.insert(
            id,
            FetchHandle {
                events: events_tx,
                result: result_rx.clone(),
            },
        );
        self.metrics.incr(Metric::FetchesStartedTotal);
        let pieces = Arc::clone(self);
        let span = info_span!("fetch", piece = %id);
        tokio::spawn(
            async move {
                let (outcome, explain) = run_fetch(&pieces, id, topic, timeout, events_rx).await;
                match outcome {
                    Ok((piece, from)) => {
                        pieces.metrics.incr(Metric::FetchesSucceededTotal);
                        // The requesters get the piece at once...
                        let _ = result_tx.send(Some(Ok(Fetched {
                            bytes: piece.bytes().clone(),
                            from,
                            explain,
                            unkept: (keep == Keep::Requester).then(|| piece.clone()),
                        })));
                        // ...and, kept by the store, the fetch stays
                        // registered (answering newcomers from its result)
                        // until the cache copy is in the store, so nobody
                        // fetches the piece again in between.
                        if keep == Keep::Store {
                            let store = Arc::clone(&pieces.store);
                            let _ = tokio::task::spawn_blocking(move || {
                                if !store.has(&piece.id()) {
                                    let _ =
                                        store.put(piece, Retention::Cached, Durability::Background);
                                }
                            })
                            .await;
                        }
                        pieces.fetches().remove(&id);
                    }
                    Err(err) => {
                        pieces.fetches().remove(&id);
                        match &err {
                            FetchError::NotFound { .. } => {
                                pieces.metrics.incr(Metric::FetchesNotFoundTotal)
                            }
                            FetchError::Deadline => {
                                pieces.metrics.incr(Metric::FetchesDeadlineTotal)
                            }
                            _ => {}
                        }
                        let _ = result_tx.send(Some(Err(err)));
                    }
                }
            }
            .instrument(span),
        );
        result_rx
    }
}

/// Who keeps a piece a fetch brought from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The store, as a cached copy (it stays registered until the copy is
    /// stored, so nobody fetches it again meanwhile).
    Store,
    /// The requester, from [`Fetched::unkept`]; requesters that join the
    /// fetch get the bytes too, and nothing is cached.
    Requester,
}

/// Reserves a piece's share of the fetch budget, if available now.
fn reserve(pieces: &Pieces) -> Option<tokio::sync::OwnedSemaphorePermit> {
    Arc::clone(&pieces.fetch_budget)
        .try_acquire_many_owned(PIECE_UNITS)
        .ok()
}

/// How a fetch searched beyond its connections: when it began to, and the
/// DHT lookup it started or joined.
#[derive(Default)]
struct Search {
    since: Option<Instant>,
    lookup: Option<LookupHandle>,
    /// Whether a lookup was tried (none is started twice).
    looked_up: bool,
    /// Addresses widening dialled: never dialled again by this fetch, even
    /// when the dial failed before the peer could be asked.
    dialled: HashSet<PeerAddr>,
}

impl Search {
    /// How the fetch came to ask `c`, for `--explain`.
    fn found(&self, c: &Candidate) -> &'static str {
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

/// Runs one fetch; returns its outcome and the per-peer account of it.
async fn run_fetch(
    pieces: &Arc<Pieces>,
    id: PieceId,
    topic: PieceId,
    timeout: Duration,
    events: mpsc::Receiver<FetchEvent>,
) -> (
    Result<(VerifiedPiece, Option<PeerAddr>), FetchError>,
    Vec<PeerAccount>,
) {
    let mut peers: HashMap<u64, Candidate> = HashMap::new();
    let mut search = Search::default();
    let outcome = ask_peers(pieces, id, topic, timeout, events, &mut peers, &mut search).await;
    for c in peers.values() {
        if !c.link.is_closed() && pieces.swarm.is_widen_dial(&c.link.remote) {
            linger(Arc::clone(pieces), Arc::clone(&c.link));
        }
    }
    let end = now();
    let mut explain: Vec<PeerAccount> = peers
        .values()
        .map(|c| c.explain(end, search.found(c)))
        .collect();
    explain.sort_by(|a, b| b.gave.cmp(&a.gave).then(b.asked.cmp(&a.asked)));
    explain.truncate(EXPLAIN_MAX_PEERS);
    (outcome, explain)
}

async fn ask_peers(
    pieces: &Arc<Pieces>,
    id: PieceId,
    topic: PieceId,
    timeout: Duration,
    mut events: mpsc::Receiver<FetchEvent>,
    peers: &mut HashMap<u64, Candidate>,
    search: &mut Search,
) -> Result<(VerifiedPiece, Option<PeerAddr>), FetchError> {
    let started = now();
    let deadline = started + timeout;
    // When the last widening round started, and how many peers widening
    // dialled.
    let mut widened: Option<Instant> = None;
    let mut widen_dialled = 0;
    let mut hedged = false;
    // Whether some peer left without saying no (its connection closed, or
    // it could not be written to): then "not found" would be a guess, so
    // the fetch waits for other peers until its deadline instead.
    let mut unanswered = false;
    // The peer that gave us the last piece probably holds this one too (the
    // pieces of one file travel together): ASK it at once, saving the
    // WANT_HAVE round trip; everyone else gets a WANT_HAVE as usual. If it
    // says DONT_HAVE, the holders found meanwhile take over.
    let preferred = pieces.last_giver.load(std::sync::atomic::Ordering::Relaxed);
    let add = |peers: &mut HashMap<u64, Candidate>, link: Arc<Link>| {
        if peers.contains_key(&link.id) || link.is_closed() {
            return;
        }
        let at = now();
        let optimistic = !link.legacy
            && link.id == preferred
            && peers.is_empty()
            && link.ask_book().load() < OPTIMISTIC_MAX_LOAD;
        let state = if link.legacy || link.announced(&id) {
            // A legacy peer knows no WANT_HAVE: ask it directly. One that
            // announced the piece holds it.
            PeerState::Holder
        } else if optimistic
            && let Some(budget) = reserve(pieces)
            && link.ask(id, Some(budget), at)
        {
            PeerState::Asked
        } else if link.want(id) {
            PeerState::Wanted
        } else {
            PeerState::Out
        };
        let progress = (link.bytes_received(), at);
        let account = Account {
            since: at,
            asked: state == PeerState::Asked,
            hedge: false,
            outcome: if state == PeerState::Out {
                Outcome::Gone
            } else {
                Outcome::Pending
            },
            ended: None,
        };
        peers.insert(
            link.id,
            Candidate {
                link,
                state,
                progress,
                account,
            },
        );
    };
    let mut links = pieces.links();
    // Peers that announced the piece are fellow fetchers of its file: they
    // alone are asked (no WANT_HAVE round trip), which takes the load off
    // the file's seeders; the others only if they all fail or stall. An
    // announcer with OPTIMISTIC_MAX_LOAD of our ASKs waiting is slow or
    // busy: then everyone is asked as usual and the least busy holder
    // chosen, so one slow announcer never gets all of a file.
    let announced: Vec<Arc<Link>> = links
        .iter()
        .filter(|l| {
            !l.legacy
                && !l.is_closed()
                && l.announced(&id)
                && l.ask_book().load() < OPTIMISTIC_MAX_LOAD
        })
        .cloned()
        .collect();
    let mut everyone_added = announced.is_empty();
    if everyone_added {
        // The preferred peer first, so it is asked before anyone is wanted.
        links.sort_by_key(|l| l.id != preferred);
    } else {
        links = announced;
    }
    for link in links {
        add(peers, link);
    }
    pieces.metrics.add(
        Metric::WantHaveSentTotal,
        peers
            .values()
            .filter(|c| c.state == PeerState::Wanted)
            .count() as u64,
    );

    loop {
        let at = now();
        // Ask a holder when nothing is asked; prefer extended holders, which
        // answer DONT_HAVE instead of silence.
        let asked = peers
            .values()
            .filter(|c| c.state == PeerState::Asked)
            .count();
        // A busy holder that answered first is not taken at once while other
        // peers may still say HAVE: the least busy holder is chosen once
        // they have (or after HOLDER_CHOICE_WAIT), so the pieces of a file
        // go to the holders that drain their ASKs fastest.
        let others_pending = peers.values().any(|c| c.state == PeerState::Wanted);
        let may_wait = others_pending && at.duration_since(started) < HOLDER_CHOICE_WAIT;
        if asked == 0 {
            let next = peers
                .values_mut()
                .filter(|c| c.state == PeerState::Holder)
                .min_by_key(|c| (c.link.legacy, c.link.ask_book().load(), c.link.id))
                .filter(|c| !may_wait || c.link.ask_book().load() < OPTIMISTIC_MAX_LOAD);
            if let Some(c) = next {
                pieces.download.acquire(PIECE_MAX).await;
                if let Some(budget) = reserve(pieces) {
                    c.state = PeerState::Asked;
                    c.account.asked = true;
                    c.progress = (c.link.bytes_received(), at);
                    if !c.link.ask(id, Some(budget), at) {
                        c.end(Outcome::Gone, at);
                        unanswered = true;
                    }
                }
            }
        }
        // Hedge once: an ASK first in line with no bytes for the progress
        // timeout goes to a second holder too.
        if !hedged {
            let stalled = peers.values().any(|c| {
                c.state == PeerState::Asked
                    && c.link.ask_book().line_start(&id).is_some_and(|start| {
                        at.duration_since(start.max(c.progress.1)) >= ASK_PROGRESS_TIMEOUT
                    })
            });
            if stalled && !everyone_added {
                // Only announcers were asked: the others may hold it too.
                everyone_added = true;
                for link in pieces.links() {
                    add(peers, link);
                }
            }
            if stalled {
                let second = peers
                    .values_mut()
                    .filter(|c| c.state == PeerState::Holder)
                    .min_by_key(|c| (c.link.legacy, c.link.ask_book().load(), c.link.id));
                if let Some(c) = second
                    && let Some(budget) = reserve(pieces)
                {
                    pieces.download.acquire(PIECE_MAX).await;
                    hedged = true;
                    pieces.metrics.incr(Metric::HedgesTotal);
                    c.state = PeerState::Asked;
                    c.account.asked = true;
                    c.account.hedge = true;
                    c.progress = (c.link.bytes_received(), at);
                    if !c.link.ask(id, Some(budget), at) {
                        c.end(Outcome::Gone, at);
                        unanswered = true;
                    }
                }
            }
        }
        // Legacy peers never say no: an ASK to one that makes no progress
        // for the progress timeout counts as a no once another holder is
        // asked or nobody else is left.
        for c in peers.values_mut() {
            if c.state == PeerState::Asked && c.link.legacy {
                let start = c.link.ask_book().line_start(&id).unwrap_or(at);
                if at.duration_since(start.max(c.progress.1)) >= ASK_PROGRESS_TIMEOUT * 2 {
                    c.link.withdraw(&id, at);
                    c.end(Outcome::TimedOut, at);
                }
            }
        }
        let mut pending = peers.values().any(|c| c.state != PeerState::Out);
        if !pending {
            // Connections that came up since the fetch started (the
            // survivor of a duplicate pair, say), and everyone when only
            // announcers were asked, are asked before anything is concluded.
            everyone_added = true;
            for link in pieces.links() {
                add(peers, link);
            }
            pending = peers.values().any(|c| c.state != PeerState::Out);
        }
        if !pending {
            // Nobody connected holds it: widen, and with `--dht` look the
            // piece's topic up at the same time.
            search.since.get_or_insert(at);
            if !search.looked_up {
                search.looked_up = true;
                search.lookup = start_lookup(pieces, &topic);
            }
            // Announces and dials still connecting may bring a holder: a
            // round ends once they are done (or after WIDEN_WAIT).
            let connecting = pieces.swarm.attempts_in_progress();
            let round_over = widened.is_none_or(|since| {
                let waited = at.duration_since(since);
                (connecting == 0 && waited >= WIDEN_SETTLE) || waited >= WIDEN_WAIT
            });
            if round_over {
                let mut asked: HashSet<PeerAddr> =
                    peers.values().map(|c| c.link.peer_addr()).collect();
                asked.extend(&search.dialled);
                if let Some(lookup) = &search.lookup {
                    asked.extend(lookup.found_all());
                }
                let room = WIDEN_MAX_PEERS - widen_dialled;
                let round = if room > 0 {
                    pieces.swarm.widen(room.min(WIDEN_DIALS), &asked)
                } else {
                    Widened::default()
                };
                widen_dialled += round.queued;
                search.dialled.extend(round.dialled);
                if round.queued > 0 && widened.is_none() {
                    pieces.metrics.incr(Metric::FetchWidensTotal);
                }
                let more = round.queued > 0 || (round.left > 0 && room > 0);
                if !more && connecting == 0 && !unanswered && !search.looking() {
                    return Err(FetchError::NotFound {
                        asked: peers.len(),
                        known: pieces.swarm.known_peers(),
                    });
                }
                widened = Some(at);
            }
        }
        if at >= deadline {
            withdraw_all(peers, &id, at);
            return Err(FetchError::Deadline);
        }
        let event = tokio::select! {
            event = events.recv() => event,
            () = tokio::time::sleep(FETCH_TICK) => None,
        };
        let at = now();
        // Progress and liveness, on every wake-up.
        for c in peers.values_mut() {
            let bytes = c.link.bytes_received();
            if bytes != c.progress.0 {
                c.progress = (bytes, at);
            }
            if c.state != PeerState::Out && c.link.is_closed() {
                c.end(Outcome::Gone, at);
                unanswered = true;
            }
        }
        let Some(event) = event else { continue };
        match event {
            FetchEvent::Have(conn) => {
                if let Some(c) = peers.get_mut(&conn)
                    && c.state == PeerState::Wanted
                {
                    c.state = PeerState::Holder;
                }
            }
            FetchEvent::DontHave(conn) => {
                if let Some(c) = peers.get_mut(&conn) {
                    c.end(Outcome::DontHave, at);
                    // A peer dialled only to ask this does not stay.
                    if pieces.swarm.release_widen_dial(&c.link.remote) {
                        c.link.close_with(WIDEN_DONE);
                    }
                }
            }
            FetchEvent::Failed(conn) | FetchEvent::Lied(conn) => {
                let lied = matches!(event, FetchEvent::Lied(_));
                if let Some(c) = peers.get_mut(&conn)
                    && (c.state != PeerState::Out || lied)
                {
                    c.end(if lied { Outcome::Lied } else { Outcome::Gone }, at);
                    unanswered = true;
                }
            }
            FetchEvent::Gave(conn, piece) => {
                debug!(from = conn, "piece received");
                let mut giver = None;
                if let Some(c) = peers.get_mut(&conn) {
                    c.end(Outcome::Gave(piece.bytes().len() as u64), at);
                    giver = Some(c.link.peer_addr());
                }
                // The loser of a hedge gets a CANCEL; its late answer, if
                // any, is a counted duplicate.
                withdraw_all(peers, &id, at);
                return Ok((piece, giver));
            }
            FetchEvent::Connected(link) => {
                if widened.is_some() || unanswered {
                    add(peers, link);
                }
            }
        }
    }
}

/// Closes `link`, dialled for a widening, once it has been idle for
/// [`WIDEN_LINGER`] (nothing asked of it outstanding, nothing received),
/// unless the node needs it for its outbound target. One watcher per
/// connection: the fetches of a file job that all ended on it share it.
fn linger(pieces: Arc<Pieces>, link: Arc<Link>) {
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

fn withdraw_all(peers: &mut HashMap<u64, Candidate>, id: &PieceId, at: Instant) {
    for c in peers.values_mut() {
        if c.state == PeerState::Asked {
            c.link.withdraw(id, at);
            c.end(Outcome::TimedOut, at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::state::{BUDGET_UNIT, FETCH_BUDGET_BYTES};

    async fn idle_node() -> Arc<Pieces> {
        Pieces::for_tests()
    }

    #[tokio::test]
    async fn the_fetch_budget_admits_an_ask_only_while_a_whole_piece_fits() {
        let pieces = idle_node().await;
        let total = u32::try_from(FETCH_BUDGET_BYTES / BUDGET_UNIT).unwrap();
        // Everything but exactly one piece is reserved elsewhere.
        let _taken = Arc::clone(&pieces.fetch_budget)
            .try_acquire_many_owned(total - PIECE_UNITS)
            .unwrap();
        let last = reserve(&pieces).expect("one piece still fits");
        assert!(reserve(&pieces).is_none(), "no room for another piece");
        drop(last);
        assert!(
            reserve(&pieces).is_some(),
            "an answered ASK frees its share"
        );
    }

    // One thread: the fetch task cannot drain its queue while the test runs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_fetch_queues_up_to_fetch_events_events_and_drops_the_next() {
        let pieces = idle_node().await;
        let id = PieceId::of(b"nobody holds this");
        let mut fetch = Box::pin(pieces.fetch(id, Duration::from_secs(10)));
        // One poll registers the fetch and spawns its task, which has not
        // run yet.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fetch.as_mut().poll(&mut cx).is_pending());
        assert!(pieces.fetches().contains_key(&id));
        // From a connection the fetch does not know: ignored once read.
        for n in 0..FETCH_EVENTS {
            assert!(
                pieces.fetch_event(&id, FetchEvent::DontHave(u64::MAX)),
                "event {n} dropped"
            );
        }
        assert!(
            !pieces.fetch_event(&id, FetchEvent::DontHave(u64::MAX)),
            "an event past the queue was taken"
        );
        // The fetch goes on, reading the queue, and ends as it would have.
        assert!(matches!(fetch.await, Err(FetchError::NotFound { .. })));
    }
}
