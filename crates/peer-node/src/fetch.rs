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
use wire_format::limits::{ASK_PROGRESS_TIMEOUT, PIECE_MAX};
use wire_format::{PieceId, VerifiedPiece};

use crate::api::FetchError;
use crate::link::Link;
use crate::metrics::Metric;
use crate::node::{Shared, now};
use crate::serve::{BUDGET_UNIT, PIECE_UNITS};

/// Bytes of pieces that may be asked for and not yet received, across all
/// fetches: reserved when an ASK is sent, so every GIVE that arrives can be
/// accepted.
pub const FETCH_BUDGET_BYTES: usize = 256 << 20;
/// Events a fetch may have queued; a session that finds the queue full
/// drops the event (the fetch then relies on its timers).
const FETCH_EVENTS: usize = 1024;
/// How often a fetch checks for stalls, closed connections and deadlines.
const FETCH_TICK: Duration = Duration::from_millis(50);
/// Candidates from the peer table dialled when no connected peer holds the piece.
pub const WIDEN_DIALS: usize = 8;
/// How long a widening waits for its dials to connect and answer.
const WIDEN_WAIT: Duration = Duration::from_secs(3);

/// What sessions tell a fetch.
#[derive(Debug)]
pub(crate) enum FetchEvent {
    /// The peer holds it (HAVE).
    Have(u64),
    /// The peer does not hold it (DONT_HAVE to our WANT_HAVE or ASK).
    DontHave(u64),
    /// The peer gave it, verified.
    Gave(u64, VerifiedPiece),
    /// The peer lied or its connection ended.
    Failed(u64),
    /// A new connection came up (while widening).
    Connected(Arc<Link>),
}

/// A fetch in progress, shared by every requester of the piece.
#[derive(Debug)]
pub(crate) struct FetchHandle {
    pub(crate) events: mpsc::Sender<FetchEvent>,
    result: watch::Receiver<Option<Result<Bytes, FetchError>>>,
}

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
}

impl Shared {
    /// The piece `id`, verified, from the store or the swarm, within `timeout`.
    pub async fn fetch(
        self: &Arc<Self>,
        id: PieceId,
        timeout: Duration,
    ) -> Result<Bytes, FetchError> {
        // The in-memory index first: a miss costs no trip to the blocking pool.
        if self.store.has(&id)
            && let Some(bytes) = crate::serve::read_piece(self, id).await
        {
            return Ok(bytes);
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
                    None => Some(self.start_fetch(&mut fetches, id, timeout)),
                }
            };
            match joined {
                Some(result) => break result,
                None => {
                    from_store_once = false;
                    if let Some(bytes) = crate::serve::read_piece(self, id).await {
                        return Ok(bytes);
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
        timeout: Duration,
    ) -> watch::Receiver<Option<Result<Bytes, FetchError>>> {
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
        let shared = Arc::clone(self);
        let span = info_span!("fetch", piece = %id);
        tokio::spawn(
            async move {
                let outcome = run_fetch(&shared, id, timeout, events_rx).await;
                match outcome {
                    Ok(piece) => {
                        shared.metrics.incr(Metric::FetchesSucceededTotal);
                        // The requesters get the piece at once...
                        let _ = result_tx.send(Some(Ok(piece.bytes().clone())));
                        // ...and the fetch stays registered (answering
                        // newcomers from its result) until the cache
                        // copy is in the store, so nobody fetches the
                        // piece again in between.
                        let store = Arc::clone(&shared.store);
                        let _ = tokio::task::spawn_blocking(move || {
                            if !store.has(&piece.id()) {
                                let _ = store.put(piece, Retention::Cached, Durability::Background);
                            }
                        })
                        .await;
                        shared.fetches().remove(&id);
                    }
                    Err(err) => {
                        shared.fetches().remove(&id);
                        match &err {
                            FetchError::NotFound => {
                                shared.metrics.incr(Metric::FetchesNotFoundTotal)
                            }
                            FetchError::Deadline => {
                                shared.metrics.incr(Metric::FetchesDeadlineTotal)
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

    /// The piece, if a fetch for it has just finished and its cache copy is
    /// still being written: peers asking meanwhile are answered from it.
    pub(crate) fn fetched(&self, id: &PieceId) -> Option<Bytes> {
        let fetches = self.fetches();
        let handle = fetches.get(id)?;
        let result = handle.result.borrow();
        match result.as_ref() {
            Some(Ok(bytes)) => Some(bytes.clone()),
            _ => None,
        }
    }

    /// Whether the node can serve `id` now: in the store's index, or just
    /// fetched with its cache copy still being written. Memory only.
    pub(crate) fn holds(&self, id: &PieceId) -> bool {
        self.store.has(id) || self.fetched(id).is_some()
    }

    /// Delivers an event to the fetch of `id`, if one runs.
    pub(crate) fn fetch_event(&self, id: &PieceId, event: FetchEvent) -> bool {
        let sender = self.fetches().get(id).map(|h| h.events.clone());
        sender.is_some_and(|tx| tx.try_send(event).is_ok())
    }
}

/// Reserves a piece's share of the fetch budget, if available now.
fn reserve(shared: &Shared) -> Option<tokio::sync::OwnedSemaphorePermit> {
    Arc::clone(&shared.fetch_budget)
        .try_acquire_many_owned(PIECE_UNITS)
        .ok()
}

async fn run_fetch(
    shared: &Arc<Shared>,
    id: PieceId,
    timeout: Duration,
    mut events: mpsc::Receiver<FetchEvent>,
) -> Result<VerifiedPiece, FetchError> {
    let started = now();
    let deadline = started + timeout;
    let mut peers: HashMap<u64, Candidate> = HashMap::new();
    let mut widened: Option<Instant> = None;
    let mut hedged = false;
    // Whether some peer left without saying no (its connection closed, or
    // it could not be written to): then "not found" would be a guess, so
    // the fetch waits for other peers until its deadline instead.
    let mut unanswered = false;
    // The peer that gave us the last piece probably holds this one too (the
    // pieces of one file travel together): ASK it at once, saving the
    // WANT_HAVE round trip; everyone else gets a WANT_HAVE as usual. If it
    // says DONT_HAVE, the holders found meanwhile take over.
    let preferred = shared.last_giver.load(std::sync::atomic::Ordering::Relaxed);
    let add = |peers: &mut HashMap<u64, Candidate>, link: Arc<Link>| {
        if peers.contains_key(&link.id) || link.is_closed() {
            return;
        }
        let at = now();
        let optimistic = !link.legacy && link.id == preferred && peers.is_empty();
        let state = if link.legacy {
            // A legacy peer knows no WANT_HAVE: ask it directly.
            PeerState::Holder
        } else if optimistic
            && let Some(budget) = reserve(shared)
            && link.ask(id, Some(budget), at)
        {
            PeerState::Asked
        } else if link.want(id) {
            PeerState::Wanted
        } else {
            PeerState::Out
        };
        let progress = (link.bytes_received(), at);
        peers.insert(
            link.id,
            Candidate {
                link,
                state,
                progress,
            },
        );
    };
    let mut links = shared.links();
    // The preferred peer first, so it is asked before anyone is wanted.
    links.sort_by_key(|l| l.id != preferred);
    for link in links {
        add(&mut peers, link);
    }
    shared.metrics.add(
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
        if asked == 0 {
            let next = peers
                .values_mut()
                .filter(|c| c.state == PeerState::Holder)
                .min_by_key(|c| (c.link.legacy, c.link.id));
            if let Some(c) = next {
                shared.download.acquire(PIECE_MAX).await;
                if let Some(budget) = reserve(shared) {
                    c.state = PeerState::Asked;
                    c.progress = (c.link.bytes_received(), at);
                    if !c.link.ask(id, Some(budget), at) {
                        c.state = PeerState::Out;
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
            if stalled {
                let second = peers
                    .values_mut()
                    .filter(|c| c.state == PeerState::Holder)
                    .min_by_key(|c| (c.link.legacy, c.link.id));
                if let Some(c) = second
                    && let Some(budget) = reserve(shared)
                {
                    shared.download.acquire(PIECE_MAX).await;
                    hedged = true;
                    shared.metrics.incr(Metric::HedgesTotal);
                    c.state = PeerState::Asked;
                    c.progress = (c.link.bytes_received(), at);
                    if !c.link.ask(id, Some(budget), at) {
                        c.state = PeerState::Out;
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
                    c.state = PeerState::Out;
                }
            }
        }
        let mut pending = peers.values().any(|c| c.state != PeerState::Out);
        if !pending {
            // Connections that came up since the fetch started (the
            // survivor of a duplicate pair, say) are asked before anything
            // is concluded.
            for link in shared.links() {
                add(&mut peers, link);
            }
            pending = peers.values().any(|c| c.state != PeerState::Out);
        }
        if !pending {
            match widened {
                None => {
                    let dials = shared.widen(WIDEN_DIALS);
                    if dials == 0 && !unanswered {
                        return Err(FetchError::NotFound);
                    }
                    if dials > 0 {
                        shared.metrics.incr(Metric::FetchWidensTotal);
                    }
                    widened = Some(at);
                }
                Some(since) if at.duration_since(since) >= WIDEN_WAIT && !unanswered => {
                    return Err(FetchError::NotFound);
                }
                Some(_) => {}
            }
        }
        if at >= deadline {
            withdraw_all(&mut peers, &id, at);
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
                c.state = PeerState::Out;
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
                    c.state = PeerState::Out;
                }
            }
            FetchEvent::Failed(conn) => {
                if let Some(c) = peers.get_mut(&conn)
                    && c.state != PeerState::Out
                {
                    c.state = PeerState::Out;
                    unanswered = true;
                }
            }
            FetchEvent::Gave(conn, piece) => {
                debug!(from = conn, "piece received");
                if let Some(c) = peers.get_mut(&conn) {
                    c.state = PeerState::Out;
                }
                // The loser of a hedge gets a CANCEL; its late answer, if
                // any, is a counted duplicate.
                withdraw_all(&mut peers, &id, at);
                return Ok(piece);
            }
            FetchEvent::Connected(link) => {
                if widened.is_some() || unanswered {
                    add(&mut peers, link);
                }
            }
        }
    }
}

fn withdraw_all(peers: &mut HashMap<u64, Candidate>, id: &PieceId, at: Instant) {
    for c in peers.values_mut() {
        if c.state == PeerState::Asked {
            c.link.withdraw(id, at);
            c.state = PeerState::Out;
        }
    }
}

/// Budget units per piece must cover the largest piece.
const _: () = assert!(PIECE_UNITS as usize * BUDGET_UNIT >= PIECE_MAX);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{Node, NodeConfig};
    use wire_format::PeerAddr;

    async fn idle_node() -> Arc<Shared> {
        let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        config.target_outbound = 0;
        Node::bind(config).await.unwrap().shared()
    }

    #[tokio::test]
    async fn the_fetch_budget_admits_an_ask_only_while_a_whole_piece_fits() {
        let shared = idle_node().await;
        let total = u32::try_from(FETCH_BUDGET_BYTES / BUDGET_UNIT).unwrap();
        // Everything but exactly one piece is reserved elsewhere.
        let _taken = Arc::clone(&shared.fetch_budget)
            .try_acquire_many_owned(total - PIECE_UNITS)
            .unwrap();
        let last = reserve(&shared).expect("one piece still fits");
        assert!(reserve(&shared).is_none(), "no room for another piece");
        drop(last);
        assert!(
            reserve(&shared).is_some(),
            "an answered ASK frees its share"
        );
    }

    // One thread: the fetch task cannot drain its queue while the test runs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_fetch_queues_up_to_fetch_events_events_and_drops_the_next() {
        let shared = idle_node().await;
        let id = PieceId::of(b"nobody holds this");
        let mut fetch = Box::pin(shared.fetch(id, Duration::from_secs(10)));
        // One poll registers the fetch and spawns its task, which has not
        // run yet.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(fetch.as_mut().poll(&mut cx).is_pending());
        assert!(shared.fetches().contains_key(&id));
        // From a connection the fetch does not know: ignored once read.
        for n in 0..FETCH_EVENTS {
            assert!(
                shared.fetch_event(&id, FetchEvent::DontHave(u64::MAX)),
                "event {n} dropped"
            );
        }
        assert!(
            !shared.fetch_event(&id, FetchEvent::DontHave(u64::MAX)),
            "an event past the queue was taken"
        );
        // The fetch goes on, reading the queue, and ends as it would have.
        assert!(matches!(fetch.await, Err(FetchError::NotFound)));
    }

    #[tokio::test]
    async fn widening_dials_at_most_widen_dials_candidates_and_never_a_banned_one() {
        let shared = idle_node().await;
        // Ports nobody listens on, on loopback: the dials fail at once.
        // The listeners are all held until every port is known, so the
        // kernel cannot hand one port out twice.
        let listeners: Vec<_> = (0..WIDEN_DIALS + 5)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let candidates: Vec<PeerAddr> = listeners
            .iter()
            .map(|l| PeerAddr::new([127, 0, 0, 1].into(), l.local_addr().unwrap().port()))
            .collect();
        drop(listeners);
        for &addr in &candidates {
            shared.add_candidate(addr);
        }
        // One of them lied once.
        let liar = candidates[0];
        shared.bans().ban(
            crate::bans::BanTarget::new(liar.ip(), Some(liar.port()), None),
            "test".into(),
            None,
            now(),
            0,
        );
        assert_eq!(shared.widen(WIDEN_DIALS), WIDEN_DIALS);
        // The rest, less the banned one and those already dialled, as fast
        // as the dial rate (shared with the dialler) allows: never more than
        // the candidates left, and in the end every one but the liar has
        // been dialled (and failed).
        let rest = WIDEN_DIALS + 5 - 1 - WIDEN_DIALS;
        assert!(shared.widen(WIDEN_DIALS) <= rest);
        let failed = |addr: &PeerAddr| {
            shared
                .state()
                .table
                .get(addr)
                .is_some_and(|c| c.failures > 0)
        };
        let all_dialled = crate::testing::wait_for(Duration::from_secs(5), || {
            shared.widen(WIDEN_DIALS);
            candidates.iter().filter(|a| **a != liar).all(failed)
        })
        .await;
        assert!(all_dialled);
        assert!(!failed(&liar) && !shared.state().dialing.contains(&liar));
    }
}
