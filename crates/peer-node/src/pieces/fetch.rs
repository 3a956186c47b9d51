//! Fetching for the node's own user: find holders with WANT_HAVE, ASK them,
//! hedge a stalled ASK to a second holder, widen to more peers when nobody
//! holds the piece, and end with the piece (verified), "not found" or
//! "deadline". Concurrent requests for one piece share one fetch.
//!
//! A fetch is a task of its own: requesters only wait for its result, so a
//! requester that gives up does not cancel the fetch for the others. The
//! sessions feed it [`FetchEvent`]s as answers arrive.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use piece_store::{Durability, Retention};
use tokio::sync::{mpsc, watch};
use tracing::{Instrument, debug, info_span};
use wire_format::limits::{ASK_PROGRESS_TIMEOUT, MAX_ASKS_IN_FLIGHT, PIECE_MAX};
use wire_format::{PeerAddr, PieceId, VerifiedPiece};

use super::account::{Account, Candidate, EXPLAIN_MAX_PEERS, Outcome, PeerState};
use super::events::{FETCH_EVENTS, FetchError, FetchEvent, FetchHandle, Fetched, PeerAccount};
use super::link::Link;
use super::serve::read_piece;
use super::state::{PIECE_UNITS, Pieces};
use super::widen::{Search, WIDEN_DONE, linger};
use crate::clock::now;
use crate::metrics::Metric;

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
            search.widen(pieces, &topic, peers, unanswered, at)?;
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
                if search.started() || unanswered {
                    add(peers, link);
                }
            }
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
