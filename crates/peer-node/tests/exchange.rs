//! Piece exchange between real nodes (docs/PROTOCOL.md §4 "Asking and giving",
//! "Bans", "Legacy peers"; docs/ARCHITECTURE.md §6): a 20-node swarm, two nodes
//! under load, lies and bans, "not found" and deadlines, hedging and CANCEL,
//! shared fetches, the ASK caps, stuck readers and the upload rate limit.
//!
//! Nodes run in-process on 127.0.0.1:0; where the protocol is the point, the
//! other side is a raw socket speaking frames. Swarms run on the real clock
//! (two worker threads). Tests that cross a long timeout, or that need a node
//! to handle a burst of frames from one read before any other task runs (the
//! ASK caps), run on tokio's paused clock, which is single-threaded.
//!
//! A fetch asks the holder whose HAVE it hears first. Tests that need one
//! holder asked before another connect the other one through a [`Relay`]
//! whose forward direction they hold shut until the order is settled.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peer_node::api::{FetchError, PeerState};
use peer_node::metrics::Metric;
use peer_node::net::{read_one, write_message};
use peer_node::node::{NodeConfig, Shared};
use peer_node::pieces::{
    OPTIMISTIC_MAX_LOAD, WIDEN_DIALS, WIDEN_DONE, WIDEN_LINGER, WIDEN_MAX_PEERS,
};
use peer_node::ratelimit::RateLimiter;
use peer_node::testing::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use wire_format::limits::{
    ASK_PROGRESS_TIMEOUT, BAN_DURATION, DIGEST_MESSAGE_LEN, FETCH_TIMEOUT,
    GIVE_WRITE_PROGRESS_TIMEOUT, LEGACY_ANSWER_INTERVAL, LEGACY_MAX_ASKS_IN_FLIGHT,
    LEGACY_PIECE_BYTES, LEN_FIELD_BYTES, MAX_ASKS_IN_FLIGHT,
};
use wire_format::{Give, Hello, Message, NodeId, PieceId, VerifiedPiece};

use common::{RawPeer, SOON, TestNode, closed_port, piece};

/// How late after its deadline a timed event may be observed on the paused
/// clock (the node's 100 ms dialler tick lets the clock jump while a frame
/// crosses loopback).
const SLACK: Duration = Duration::from_secs(1);
const MIB: usize = 1 << 20;

/// The least time `bytes` of GIVEs take to leave a node whose upload rate
/// is `rate` (its token bucket starts full).
fn paced(bytes: u64, rate: u64) -> Duration {
    let burst = RateLimiter::new(Some(rate)).burst_bytes().unwrap();
    Duration::from_secs_f64(bytes.saturating_sub(burst) as f64 / rate as f64)
}

/// What these tests ask of a node beyond the shared helpers.
impl TestNode {
    /// A node with one outbound connection, to `to` (its only candidate).
    async fn dialling(to: SocketAddr, configure: impl FnOnce(&mut NodeConfig)) -> Self {
        let node = Self::start(|c| {
            c.target_outbound = 1;
            configure(c);
        })
        .await;
        node.shared.add_candidate(to.into());
        node
    }

    /// Whether `addr` is a peer this node shows (connected or a candidate).
    fn shows(&self, addr: SocketAddr, state: Option<PeerState>) -> bool {
        self.shared
            .peer_views()
            .iter()
            .any(|v| v.addr == addr && state.is_none_or(|s| v.state == s))
    }

    async fn fetch(&self, id: PieceId, timeout: Duration) -> Result<Bytes, FetchError> {
        self.shared.fetch(id, timeout).await
    }

    /// Starts a fetch in its own task.
    fn spawn_fetch(
        &self,
        id: PieceId,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<Bytes, FetchError>> {
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move { shared.fetch(id, timeout).await })
    }
}

fn assert_piece(got: &Bytes, want: &VerifiedPiece) {
    assert_eq!(PieceId::of(got), want.id());
    assert!(got == want.bytes(), "bytes differ from the piece");
}

/// Runs `peer` in its own task: every WANT_HAVE is counted in `seen` and,
/// once `go` is true, answered DONT_HAVE.
fn answer_dont_have(mut peer: RawPeer, mut go: watch::Receiver<bool>, seen: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while let Ok(Some(message)) = read_one(&mut peer.reader, Duration::from_secs(3600)).await {
            if let Message::WantHave(id) = message {
                seen.fetch_add(1, Ordering::SeqCst);
                if go.wait_for(|go| *go).await.is_err()
                    || write_message(&mut peer.writer, &Message::DontHave(id))
                        .await
                        .is_err()
                {
                    return;
                }
            }
        }
    });
}

/// A TCP relay on loopback to `target`. Bytes from whoever connects to it
/// reach `target` only while it is open; bytes back always pass.
struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open, gate) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((dialler, _)) = listener.accept().await {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let _ = (dialler.set_nodelay(true), upstream.set_nodelay(true));
                let (mut from_dialler, mut to_dialler) = dialler.into_split();
                let (mut from_target, mut to_target) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_target, &mut to_dialler).await;
                });
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match from_dialler.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        if gate.wait_for(|open| *open).await.is_err()
                            || to_target.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self { addr, open }
    }

    /// Holds what the dialler sends from now on (bytes already passed are gone).
    fn hold(&self) {
        self.open.send_replace(false);
    }

    fn release(&self) {
        self.open.send_replace(true);
    }
}

// ---------------------------------------------------------------------------
// A swarm

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_a_twenty_node_swarm_fetches_a_piece_one_holds_widening_when_not_connected() {
    // A star: the hub dials nobody, and every leaf's one outbound slot goes
    // to the hub (its only candidate), so no two leaves are connected. A leaf
    // keeps the leaves the hub listed when it joined as table candidates.
    let hub = TestNode::start(|_| {}).await;
    let holder = TestNode::dialling(hub.addr, |_| {}).await;
    // The hub lists the holder once its dial-back probe passed...
    assert!(wait_for(SOON, || hub.shows(holder.addr, Some(PeerState::Connected))).await);
    // ...so the fetcher, joining next, knows it from the hub's first PEERS.
    let fetcher = TestNode::dialling(hub.addr, |_| {}).await;
    assert!(wait_for(SOON, || fetcher.shows(holder.addr, None)).await);
    let mut others = Vec::new();
    for _ in 0..17 {
        others.push(TestNode::dialling(hub.addr, |_| {}).await);
    }
    let leaves: Vec<&TestNode> = [&holder, &fetcher].into_iter().chain(&others).collect();
    assert_eq!(1 + leaves.len(), 20);
    let formed = wait_for(Duration::from_secs(30), || {
        hub.shared.connected_node_ids().len() == leaves.len()
            && leaves
                .iter()
                .all(|l| l.shared.connected_node_ids() == vec![hub.id()])
    })
    .await;
    assert!(formed, "hub has {:?}", hub.shared.connected_node_ids());
    assert!(!fetcher.shared.connected_node_ids().contains(&holder.id()));

    let p = piece(1, MIB);
    holder.hold(&p).unwrap();
    // The hub says DONT_HAVE, so the fetch dials table candidates: the holder.
    let got = fetcher.fetch(p.id(), FETCH_TIMEOUT).await.unwrap();
    assert_piece(&got, &p);
    assert_eq!(fetcher.metric(Metric::FetchWidensTotal), 1);
    assert!(fetcher.shared.connected_node_ids().contains(&holder.id()));

    // The hub is connected to the holder; every other leaf then gets it from the hub.
    assert_piece(&hub.fetch(p.id(), FETCH_TIMEOUT).await.unwrap(), &p);
    assert_eq!(hub.metric(Metric::FetchWidensTotal), 0);
    let fetches: Vec<_> = others
        .iter()
        .map(|o| o.spawn_fetch(p.id(), FETCH_TIMEOUT))
        .collect();
    for fetch in fetches {
        assert_piece(&fetch.await.unwrap().unwrap(), &p);
    }
    let fetched = std::iter::once(&hub)
        .chain(leaves.iter().copied())
        .filter(|n| n.metric(Metric::FetchesSucceededTotal) == 1)
        .count();
    assert_eq!(fetched, 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_widens_round_after_round_through_its_whole_table_and_closes_the_ones_that_said_no()
{
    // Twenty nodes nobody is connected to, known only from the fetcher's
    // table; the fetcher dials nobody of its own accord. More than a
    // widening round's WIDEN_DIALS.
    let fetcher = TestNode::start(|c| c.target_outbound = 0).await;
    let mut nodes = Vec::new();
    for _ in 0..20 {
        nodes.push(TestNode::start(|c| c.target_outbound = 0).await);
    }
    assert!(nodes.len() > 2 * WIDEN_DIALS);
    for node in &nodes {
        fetcher.shared.add_candidate(node.addr.into());
    }

    // Nobody holds it: every peer is asked, and the error says so.
    let missing = PieceId::of(b"nobody holds this");
    match fetcher.fetch(missing, FETCH_TIMEOUT).await {
        Err(FetchError::NotFound { asked, known }) => assert_eq!((asked, known), (20, 20)),
        other => panic!("expected not found, got {other:?}"),
    }

    // Any one of them holds it: found in whichever round dials it.
    let holder = &nodes[13];
    let p = piece(23, 64 << 10);
    holder.hold(&p).unwrap();
    assert_piece(&fetcher.fetch(p.id(), FETCH_TIMEOUT).await.unwrap(), &p);
    assert_eq!(fetcher.metric(Metric::FetchWidensTotal), 2);
    // The connections dialled only to ask are closed once they said no,
    // and the holder's once idle for WIDEN_LINGER: the fetcher's outbound
    // target is 0, so it keeps none of them.
    let all_closed = wait_for(SOON + WIDEN_LINGER * 2, || {
        fetcher.shared.connected_node_ids().is_empty()
    })
    .await;
    assert!(
        all_closed,
        "connected to {:?}",
        fetcher.shared.connected_node_ids()
    );
    // All 20 after the first fetch, then the holder (and those the second
    // fetch asked before it) after the second.
    assert!(
        fetcher.closed(WIDEN_DONE) > 20,
        "{}",
        fetcher.closed(WIDEN_DONE)
    );
}

#[tokio::test(start_paused = true)]
async fn a_widening_fetch_dials_at_most_widen_max_peers_then_says_not_found() {
    let fetcher = TestNode::start(|c| c.target_outbound = 0).await;
    let mut ports = HashSet::new();
    while ports.len() < WIDEN_MAX_PEERS + 2 {
        ports.insert(closed_port());
    }
    for &port in &ports {
        fetcher
            .shared
            .add_candidate(format!("127.0.0.1:{port}").parse().unwrap());
    }
    let missing = PieceId::of(b"nobody holds this");
    match fetcher.fetch(missing, Duration::from_secs(600)).await {
        Err(FetchError::NotFound { asked, known }) => {
            assert_eq!((asked, known), (0, WIDEN_MAX_PEERS + 2));
        }
        other => panic!("expected not found, got {other:?}"),
    }
    assert_eq!(
        fetcher.metric(Metric::DialAttemptsTotal),
        WIDEN_MAX_PEERS as u64
    );
}

// ---------------------------------------------------------------------------
// Load

const LOAD_PIECES: u64 = 256;
const LOAD_CONCURRENCY: usize = 32;
const LOAD_DEADLINE: Duration = Duration::from_secs(120);

/// Fetches every piece of `ids` through `node`, `LOAD_CONCURRENCY` at a
/// time; returns the pieces that failed or came back wrong.
async fn fetch_all(node: Arc<Shared>, ids: Vec<PieceId>) -> Vec<(PieceId, String)> {
    let permits = Arc::new(Semaphore::new(LOAD_CONCURRENCY));
    let mut tasks = Vec::new();
    for id in ids {
        let permit = Arc::clone(&permits).acquire_owned().await.unwrap();
        let node = Arc::clone(&node);
        tasks.push(tokio::spawn(async move {
            let got = node.fetch(id, LOAD_DEADLINE).await;
            drop(permit);
            match got {
                Ok(bytes) if PieceId::of(&bytes) == id => None,
                Ok(_) => Some((id, "wrong bytes".to_owned())),
                Err(err) => Some((id, err.to_string())),
            }
        }));
    }
    let mut failed = Vec::new();
    for task in tasks {
        failed.extend(task.await.unwrap());
    }
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fetching_all_of_each_others_pieces_at_once_finish_on_one_connection() {
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::dialling(a.addr, |_| {}).await;
    let made = Instant::now();
    let a_pieces: Vec<PieceId> = (0..LOAD_PIECES)
        .map(|i| {
            let p = piece(i, MIB);
            a.hold(&p).unwrap();
            p.id()
        })
        .collect();
    let b_pieces: Vec<PieceId> = (0..LOAD_PIECES)
        .map(|i| {
            let p = piece(1_000 + i, MIB);
            b.hold(&p).unwrap();
            p.id()
        })
        .collect();
    eprintln!(
        "built and stored 2 x {LOAD_PIECES} MiB in {:?}",
        made.elapsed()
    );
    // One connection; a's dial-back probe of b is a connection of its own,
    // which b counts as closed once a has its answer.
    assert!(
        wait_for(SOON, || a.shows(b.addr, Some(PeerState::Connected))
            && b.closed_total() == 1)
        .await
    );
    assert_eq!(
        (a.shared.connection_count(), b.shared.connection_count()),
        (1, 1)
    );
    let closed_before = (a.closed_total(), b.closed_total());

    let (stop, mut stopped) = watch::channel(false);
    let odd_samples = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (a, b) = (Arc::clone(&a.shared), Arc::clone(&b.shared));
        let odd = Arc::clone(&odd_samples);
        tokio::spawn(async move {
            while !*stopped.borrow_and_update() {
                if (a.connection_count(), b.connection_count()) != (1, 1) {
                    odd.fetch_add(1, Ordering::SeqCst);
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), stopped.changed()).await;
            }
        })
    };
    let started = Instant::now();
    let both = async {
        let a_gets = tokio::spawn(fetch_all(Arc::clone(&a.shared), b_pieces));
        let b_gets = tokio::spawn(fetch_all(Arc::clone(&b.shared), a_pieces));
        (a_gets.await.unwrap(), b_gets.await.unwrap())
    };
    let (a_failed, b_failed) = tokio::time::timeout(LOAD_DEADLINE, both)
        .await
        .unwrap_or_else(|_| panic!("not done within {LOAD_DEADLINE:?}: a deadlock?"));
    let took = started.elapsed();
    eprintln!("2 x {LOAD_PIECES} MiB exchanged in {took:?}");
    stop.send_replace(true);
    sampler.await.unwrap();
    assert!(
        a_failed.is_empty(),
        "a failed {}: {:?}",
        a_failed.len(),
        &a_failed[..a_failed.len().min(5)]
    );
    assert!(
        b_failed.is_empty(),
        "b failed {}: {:?}",
        b_failed.len(),
        &b_failed[..b_failed.len().min(5)]
    );
    for node in [&a, &b] {
        assert_eq!(node.metric(Metric::FetchesSucceededTotal), LOAD_PIECES);
        assert_eq!(
            node.metric(Metric::PieceBytesFetchedTotal),
            LOAD_PIECES * MIB as u64
        );
    }
    assert_eq!(
        odd_samples.load(Ordering::SeqCst),
        0,
        "a connection count left 1"
    );
    assert_eq!((a.closed_total(), b.closed_total()), closed_before);
    assert_eq!(
        (a.shared.connection_count(), b.shared.connection_count()),
        (1, 1)
    );
}

// ---------------------------------------------------------------------------
// Lies

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_giving_bytes_that_do_not_match_is_banned_and_the_piece_comes_from_an_honest_node() {
    let honest = TestNode::start(|_| {}).await;
    let p = piece(3, 256 << 10);
    honest.hold(&p).unwrap();
    // The fetcher knows the honest node only as a table candidate: the liar,
    // its one connection, is asked first, and the honest node is reached by
    // widening once the liar is out.
    let fetcher = TestNode::start(|_| {}).await;
    fetcher.shared.add_candidate(honest.addr.into());
    let liar_id = NodeId([0x66; 8]);
    let liar_port = closed_port();
    let mut liar = RawPeer::extended_as(&fetcher, liar_id, liar_port).await;
    assert!(wait_for(SOON, || fetcher.shared.connection_count() == 1).await);

    let fetch = fetcher.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(liar.recv_answer().await, Message::WantHave(p.id()));
    liar.send(&Message::Have(p.id())).await;
    assert_eq!(liar.recv_answer().await, Message::Ask(p.id()));
    let mut forged = p.bytes().to_vec();
    forged[1000] ^= 1;
    liar.send(&Message::Give(
        Give::new(p.id(), Bytes::from(forged)).unwrap(),
    ))
    .await;
    liar.expect_closed_within(SOON).await;

    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    assert_eq!(fetcher.metric(Metric::BansTotal), 1);
    assert_eq!(fetcher.metric(Metric::FetchWidensTotal), 1);
    assert_eq!(fetcher.shared.connected_node_ids(), vec![honest.id()]);
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let views = fetcher.shared.peer_views();
    let banned: Vec<_> = views
        .iter()
        .filter(|v| v.state == PeerState::Banned)
        .collect();
    assert_eq!(banned.len(), 1, "{views:?}");
    assert_eq!(
        banned[0].addr,
        SocketAddr::from(([127, 0, 0, 1], liar_port))
    );
    assert_eq!(banned[0].node_id, Some(liar_id));
    let ban = banned[0].ban.as_ref().unwrap();
    assert!(ban.reason.contains("does not match"), "{}", ban.reason);
    assert_eq!(ban.digest, Some(p.id()));
    let until = now_unix + BAN_DURATION.as_secs();
    assert!(
        ban.until.abs_diff(until) <= 5,
        "until {} not ~{until}",
        ban.until
    );

    // Back with the same node id and listen port: refused before any answer.
    let rejected = fetcher.metric(Metric::ConnectionsRejectedTotal);
    let mut again = RawPeer::connect(fetcher.addr).await;
    again
        .send(&Message::Hello(Hello::ours(
            Some(liar_port),
            false,
            liar_id,
        )))
        .await;
    let seen = again.expect_closed_within(SOON).await;
    assert!(seen.is_empty(), "answered a banned peer: {seen:?}");
    assert!(
        wait_for(SOON, || fetcher.metric(Metric::ConnectionsRejectedTotal)
            == rejected + 1)
        .await
    );
    // Someone else on the same IP is still welcome: the refusal is the ban's.
    let _stranger = RawPeer::extended(&fetcher, 0x77).await;
}

// ---------------------------------------------------------------------------
// Not found and deadlines

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_every_peer_answers_dont_have_is_not_found_well_within_an_ask_deadline() {
    let node = TestNode::start(|_| {}).await;
    let (_go, gate) = watch::channel(true);
    let seen = Arc::new(AtomicUsize::new(0));
    for id in 1..=3 {
        answer_dont_have(
            RawPeer::extended(&node, id).await,
            gate.clone(),
            Arc::clone(&seen),
        );
    }
    assert!(wait_for(SOON, || node.shared.connection_count() == 3).await);
    let missing = PieceId::of(b"nobody holds this");
    let started = Instant::now();
    let result = node.fetch(missing, FETCH_TIMEOUT).await;
    let took = started.elapsed();
    assert!(
        matches!(result, Err(FetchError::NotFound { .. })),
        "{result:?}"
    );
    assert!(took < ASK_PROGRESS_TIMEOUT / 2, "not found after {took:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    assert_eq!(node.metric(Metric::DontHaveReceivedTotal), 3);
    assert_eq!(node.metric(Metric::FetchesNotFoundTotal), 1);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_with_a_peer_that_never_answers_ends_at_its_deadline_not_as_not_found() {
    let node = TestNode::start(|_| {}).await;
    let (_go, gate) = watch::channel(true);
    let seen = Arc::new(AtomicUsize::new(0));
    answer_dont_have(RawPeer::extended(&node, 1).await, gate, Arc::clone(&seen));
    let mut silent = RawPeer::extended(&node, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    let missing = PieceId::of(b"nobody holds this");
    let started = Instant::now();
    let result = node.fetch(missing, FETCH_TIMEOUT).await;
    let took = started.elapsed();
    assert!(matches!(result, Err(FetchError::Deadline)), "{result:?}");
    assert!(took >= FETCH_TIMEOUT, "deadline after {took:?}");
    assert!(took < FETCH_TIMEOUT + SLACK, "deadline after {took:?}");
    assert_eq!(silent.recv_answer().await, Message::WantHave(missing));
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(wait_for(SOON, || node.metric(Metric::FetchesDeadlineTotal) == 1).await);
    assert_eq!(node.metric(Metric::FetchesNotFoundTotal), 0);
}

// ---------------------------------------------------------------------------
// Hedging

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_holder_is_hedged_then_cancelled_and_its_late_give_counted_as_duplicate() {
    let fetcher = TestNode::start(|_| {}).await;
    let p = piece(5, MIB);
    let relay = Relay::start(fetcher.addr).await;
    let honest = TestNode::dialling(relay.addr, |_| {}).await;
    honest.hold(&p).unwrap();
    let mut slow = RawPeer::extended(&fetcher, 0x51).await;
    assert!(
        wait_for(SOON, || fetcher.shared.connection_count() == 2
            && fetcher.shared.connected_node_ids().contains(&honest.id()))
        .await
    );
    // The honest node's HAVE reaches the fetcher only once the slow peer is asked.
    relay.hold();
    let fetch = fetcher.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(slow.recv_answer().await, Message::WantHave(p.id()));
    slow.send(&Message::Have(p.id())).await;
    assert_eq!(slow.recv_answer().await, Message::Ask(p.id()));
    let asked = Instant::now();
    relay.release();

    // Not a byte from the slow peer: after the progress timeout the honest
    // node is asked too, and once it gave, the slow peer gets a CANCEL.
    let cancel = slow.recv_answer_within(FETCH_TIMEOUT).await;
    let waited = asked.elapsed();
    assert_eq!(cancel, Some(Message::Cancel(p.id())));
    assert!(
        waited >= ASK_PROGRESS_TIMEOUT - Duration::from_millis(100),
        "hedged after {waited:?}"
    );
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    assert_eq!(fetcher.metric(Metric::HedgesTotal), 1);
    assert_eq!(honest.metric(Metric::PiecesServedTotal), 1);

    // The slow peer's GIVE comes after all: verified, a duplicate, not
    // unsolicited, and the connection stays.
    let unsolicited = fetcher.metric(Metric::UnsolicitedGivesTotal);
    let duplicate = fetcher.metric(Metric::DuplicateBytesTotal);
    slow.send(&Message::Give(
        Give::new(p.id(), p.bytes().clone()).unwrap(),
    ))
    .await;
    assert!(
        wait_for(SOON, || fetcher.metric(Metric::DuplicateBytesTotal)
            == duplicate + MIB as u64)
        .await,
        "duplicate bytes {}",
        fetcher.metric(Metric::DuplicateBytesTotal)
    );
    assert_eq!(fetcher.metric(Metric::UnsolicitedGivesTotal), unsolicited);
    let other = PieceId::of(b"something else");
    slow.send(&Message::WantHave(other)).await;
    assert_eq!(slow.recv_answer().await, Message::DontHave(other));
    assert_eq!(fetcher.shared.connection_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_asks_queued_behind_a_rate_limited_holder_are_never_hedged() {
    // Four pieces a second: the sixteenth answer comes about 4 s after its
    // ASK (twice the hedge timeout), while bytes arrive every quarter second
    // (an eighth of it), so a loaded machine does not fake a stall.
    const RATE: u64 = 4 << 20;
    let fetcher = TestNode::start(|_| {}).await;
    let pieces: Vec<VerifiedPiece> = (0..MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| piece(100 + i, MIB))
        .collect();
    // Each piece takes a quarter second to leave the pipelined holder, so
    // its sixteenth answer comes seconds after the ASK was sent...
    let pipelined = TestNode::dialling(fetcher.addr, |c| c.max_upload_rate = Some(RATE)).await;
    // ...and a second holder is there for any hedge to go to.
    let relay = Relay::start(fetcher.addr).await;
    let spare = TestNode::dialling(relay.addr, |_| {}).await;
    for p in &pieces {
        pipelined.hold(p).unwrap();
        spare.hold(p).unwrap();
    }
    assert!(
        wait_for(SOON, || {
            let ids = fetcher.shared.connected_node_ids();
            ids.len() == 2 && ids.contains(&pipelined.id()) && ids.contains(&spare.id())
        })
        .await
    );
    relay.hold();
    // Bytes the fetcher has sent the pipelined holder.
    let sent_to_pipelined = || {
        fetcher
            .shared
            .peer_views()
            .iter()
            .find(|v| v.node_id == Some(pipelined.id()))
            .map_or(0, |v| v.bytes_out)
    };
    let sent_before = sent_to_pipelined();
    let started = Instant::now();
    let fetches: Vec<_> = pieces
        .iter()
        .map(|p| fetcher.spawn_fetch(p.id(), Duration::from_secs(60)))
        .collect();
    // Every fetch heard only the pipelined holder (the spare's answers are
    // held back), so asked it: 16 WANT_HAVEs and 16 ASKs went out. (Other
    // tests of this binary load both cores for seconds: the wait is long.)
    let frame = (LEN_FIELD_BYTES + DIGEST_MESSAGE_LEN) as u64;
    let asked = wait_for(Duration::from_secs(20), || {
        sent_to_pipelined() - sent_before >= 32 * frame
    })
    .await;
    assert!(
        asked,
        "HAVEs received: {}; bytes sent to the holder: {}",
        fetcher.metric(Metric::HaveReceivedTotal),
        sent_to_pipelined() - sent_before
    );
    relay.release();
    for (fetch, p) in fetches.into_iter().zip(&pieces) {
        assert_piece(&fetch.await.unwrap().unwrap(), p);
    }
    let took = started.elapsed();
    assert_eq!(fetcher.metric(Metric::HedgesTotal), 0, "took {took:?}");
    assert_eq!(pipelined.metric(Metric::PiecesServedTotal), 16);
    assert_eq!(spare.metric(Metric::PiecesServedTotal), 0);
    // They did queue: the pieces beyond the burst left at the rate.
    let queued = paced(16 * MIB as u64, RATE);
    assert!(took >= queued, "took {took:?}");
}

// ---------------------------------------------------------------------------
// Shared fetches

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_for_one_missing_piece_make_one_fetch() {
    let node = TestNode::start(|_| {}).await;
    // The peer holds its DONT_HAVE until every request has joined.
    let (go, gate) = watch::channel(false);
    let seen = Arc::new(AtomicUsize::new(0));
    answer_dont_have(RawPeer::extended(&node, 1).await, gate, Arc::clone(&seen));
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    let missing = PieceId::of(b"wanted by a hundred");
    let requests: Vec<_> = (0..100)
        .map(|_| node.spawn_fetch(missing, FETCH_TIMEOUT))
        .collect();
    let all_in = wait_for(SOON, || {
        node.metric(Metric::FetchesStartedTotal) + node.metric(Metric::FetchesJoinedTotal) == 100
    })
    .await;
    assert!(all_in);
    go.send_replace(true);
    for request in requests {
        let result = request.await.unwrap();
        assert!(
            matches!(result, Err(FetchError::NotFound { .. })),
            "{result:?}"
        );
    }
    assert_eq!(node.metric(Metric::FetchesStartedTotal), 1);
    assert_eq!(node.metric(Metric::FetchesJoinedTotal), 99);
    assert_eq!(node.metric(Metric::FetchesNotFoundTotal), 1);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_requests_for_one_held_piece_make_one_fetch_and_all_get_its_bytes() {
    let node = TestNode::start(|_| {}).await;
    let p = piece(11, 300_000);
    let mut holder = RawPeer::extended(&node, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    let requests: Vec<_> = (0..100)
        .map(|_| node.spawn_fetch(p.id(), FETCH_TIMEOUT))
        .collect();
    assert_eq!(holder.recv_answer().await, Message::WantHave(p.id()));
    // The holder answers only once every request has joined the one fetch.
    let all_in = wait_for(SOON, || {
        node.metric(Metric::FetchesStartedTotal) + node.metric(Metric::FetchesJoinedTotal) == 100
    })
    .await;
    assert!(all_in);
    holder.send(&Message::Have(p.id())).await;
    assert_eq!(holder.recv_answer().await, Message::Ask(p.id()));
    holder
        .send(&Message::Give(
            Give::new(p.id(), p.bytes().clone()).unwrap(),
        ))
        .await;
    for request in requests {
        assert_piece(&request.await.unwrap().unwrap(), &p);
    }
    assert_eq!(node.metric(Metric::FetchesStartedTotal), 1);
    assert_eq!(node.metric(Metric::FetchesJoinedTotal), 99);
    assert_eq!(node.metric(Metric::PiecesFetchedTotal), 1);
    // The fetched piece is kept: a later request is answered from the
    // store, with no fetch started or joined.
    assert!(wait_for(SOON, || node.shared.store().has(&p.id())).await);
    assert_piece(&node.fetch(p.id(), FETCH_TIMEOUT).await.unwrap(), &p);
    assert_eq!(node.metric(Metric::FetchesStartedTotal), 1);
    assert_eq!(node.metric(Metric::FetchesJoinedTotal), 99);
}

// ---------------------------------------------------------------------------
// ASK caps and legacy peers (paused clock: one thread, so the node handles
// every frame of one read before its serving tasks run)

/// An upload rate so low that every GIVE after the burst waits many seconds.
const CRAWL: u64 = 64 << 10;

#[tokio::test(start_paused = true)]
async fn an_extended_peer_may_have_sixteen_asks_unanswered_and_the_seventeenth_closes_it() {
    let node = TestNode::start(|c| c.max_upload_rate = Some(CRAWL)).await;
    let pieces: Vec<VerifiedPiece> = (0..=MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| piece(200 + i, MIB))
        .collect();
    for p in &pieces {
        node.hold(p).unwrap();
    }
    let asks: Vec<Message> = pieces.iter().map(|p| Message::Ask(p.id())).collect();
    let (first, last) = asks.split_at(MAX_ASKS_IN_FLIGHT);

    // At the cap: booked, answered at the crawl, and the connection is read.
    let mut at_cap = RawPeer::extended(&node, 1).await;
    at_cap.send_batch(first).await;
    let probe = pieces[MAX_ASKS_IN_FLIGHT].id();
    at_cap.send(&Message::WantHave(probe)).await;
    loop {
        match at_cap.recv_answer().await {
            Message::Give(give) => assert!(first.contains(&Message::Ask(give.id()))),
            Message::Have(id) if id == probe => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(node.closed("too_many_asks"), 0);
    assert_eq!(node.shared.connection_count(), 1);
    drop(at_cap);
    assert!(wait_for(SOON, || node.shared.connection_count() == 0).await);

    // Over it: the seventeenth ASK closes the connection.
    let mut over = RawPeer::extended(&node, 2).await;
    over.send_batch(&[first, last].concat()).await;
    over.expect_closed_within(SOON).await;
    assert!(wait_for(SOON, || node.closed("too_many_asks") == 1).await);
    assert_eq!(node.shared.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn asks_over_the_cap_while_gives_wait_for_the_upload_rate_close_the_connection() {
    let node = TestNode::start(|c| c.max_upload_rate = Some(CRAWL)).await;
    let pieces: Vec<VerifiedPiece> = (0..MAX_ASKS_IN_FLIGHT as u64 + 3)
        .map(|i| piece(250 + i, MIB))
        .collect();
    for p in &pieces {
        node.hold(p).unwrap();
    }
    let asks: Vec<Message> = pieces.iter().map(|p| Message::Ask(p.id())).collect();
    let mut peer = RawPeer::extended(&node, 1).await;
    peer.send_batch(&asks[..MAX_ASKS_IN_FLIGHT]).await;
    // The burst lets one GIVE out at once: 15 unanswered.
    assert!(matches!(peer.recv_answer().await, Message::Give(_)));
    // The node takes the other answers into its GIVE line (the clock is
    // paused: the next GIVE is many seconds away).
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A sixteenth unanswered ASK: at the cap, kept.
    let probe = pieces[MAX_ASKS_IN_FLIGHT + 2].id();
    peer.send_batch(&[asks[MAX_ASKS_IN_FLIGHT].clone(), Message::WantHave(probe)])
        .await;
    assert_eq!(peer.recv_answer().await, Message::Have(probe));
    // A seventeenth: over it.
    peer.send(&asks[MAX_ASKS_IN_FLIGHT + 1]).await;
    peer.expect_closed_within(SOON).await;
    assert!(
        wait_for(SOON, || node.closed("too_many_asks") == 1).await,
        "a peer with 17 ASKs unanswered is still connected: {}",
        node.shared.connection_count()
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_drops_a_give_still_waiting_for_the_upload_rate() {
    let node = TestNode::start(|c| c.max_upload_rate = Some(CRAWL)).await;
    let (first, second) = (piece(270, MIB), piece(271, MIB));
    node.hold(&first).unwrap();
    node.hold(&second).unwrap();
    let mut peer = RawPeer::extended(&node, 1).await;
    peer.send_batch(&[Message::Ask(first.id()), Message::Ask(second.id())])
        .await;
    // The burst lets one out (answers come in any order); the other waits
    // for tokens, not started.
    let waiting = match peer.recv_answer().await {
        Message::Give(give) if give.id() == first.id() => second.id(),
        Message::Give(give) if give.id() == second.id() => first.id(),
        other => panic!("expected one of the two GIVEs, got {other:?}"),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    peer.send(&Message::Cancel(waiting)).await;
    let tokens_for_one = Duration::from_secs(MIB as u64 / CRAWL);
    let next = peer.recv_answer_within(tokens_for_one + SLACK).await;
    assert_eq!(next, None, "the cancelled piece was sent");
    assert_eq!(node.metric(Metric::CancelsReceivedTotal), 1);
}

#[tokio::test(start_paused = true)]
async fn a_legacy_peers_asks_over_ten_are_dropped_and_counted_and_it_keeps_its_connection() {
    let node = TestNode::start(|_| {}).await;
    let pieces: Vec<VerifiedPiece> = (0..=LEGACY_MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| piece(300 + i, LEGACY_PIECE_BYTES))
        .collect();
    for p in &pieces {
        node.hold(p).unwrap();
    }
    let mut peer = RawPeer::legacy(&node).await.0;
    let ignored = node.metric(Metric::IgnoredFramesTotal);
    let asks: Vec<Message> = pieces.iter().map(|p| Message::Ask(p.id())).collect();
    peer.send_batch(&asks).await;
    // Ten GIVEs, for the first ten...
    let mut given = HashSet::new();
    while given.len() < LEGACY_MAX_ASKS_IN_FLIGHT {
        match peer.recv_answer().await {
            Message::Give(give) => {
                assert_eq!(give.piece().len(), LEGACY_PIECE_BYTES);
                assert!(given.insert(give.id()), "given twice");
            }
            other => panic!("a legacy peer got {other:?}"),
        }
    }
    let first_ten: HashSet<PieceId> = pieces[..LEGACY_MAX_ASKS_IN_FLIGHT]
        .iter()
        .map(VerifiedPiece::id)
        .collect();
    assert_eq!(given, first_ten);
    // ...nothing for the eleventh, which was dropped and counted.
    assert_eq!(peer.recv_within(Duration::from_secs(20)).await, None);
    assert_eq!(node.metric(Metric::IgnoredFramesTotal), ignored + 1);
    assert_eq!(node.shared.connection_count(), 1);
    // It repeats the ASK, as the reference does, and now gets its answer.
    let eleventh = pieces[LEGACY_MAX_ASKS_IN_FLIGHT].id();
    peer.send(&Message::Ask(eleventh)).await;
    match peer.recv_answer().await {
        Message::Give(give) => assert_eq!(give.id(), eleventh),
        other => panic!("a legacy peer got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_legacy_peer_holding_a_128_kib_piece_is_asked_directly_and_serves_the_node() {
    let node = TestNode::start(|_| {}).await;
    let p = piece(400, LEGACY_PIECE_BYTES);
    let mut legacy = RawPeer::legacy(&node).await.0;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    let fetch = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    // No WANT_HAVE (the reference would read it as a PEERS list): an ASK.
    assert_eq!(legacy.recv_answer().await, Message::Ask(p.id()));
    let give = Message::Give(Give::new(p.id(), p.bytes().clone()).unwrap());
    assert_eq!(give.encoded_len(), 4 + 1 + 32 + 131_072);
    legacy.send(&give).await;
    let got = fetch.await.unwrap().unwrap();
    assert_eq!(got.len(), 131_072);
    assert_piece(&got, &p);
    assert_eq!(node.metric(Metric::WantHaveSentTotal), 0);
}

#[tokio::test(start_paused = true)]
async fn a_legacy_peer_gets_only_gives_it_can_read_and_each_at_most_once_per_30_s() {
    let node = TestNode::start(|_| {}).await;
    let big = piece(500, MIB);
    let small = piece(501, LEGACY_PIECE_BYTES);
    node.hold(&big).unwrap();
    node.hold(&small).unwrap();
    let mut peer = RawPeer::legacy(&node).await.0;
    let small_give = |m: Message| match m {
        Message::Give(give) if give.id() == small.id() => {
            assert_eq!(give.piece().len(), 131_072);
        }
        other => panic!("a legacy peer got {other:?}"),
    };
    // The 1 MiB piece gets no answer at all (no GIVE, no DONT_HAVE): the
    // first frame back answers the ASK after it.
    peer.send_batch(&[Message::Ask(big.id()), Message::Ask(small.id())])
        .await;
    small_give(peer.recv_answer().await);
    let answered = Instant::now();
    // Repeats within 30 s are not answered again.
    peer.send_batch(&[Message::Ask(small.id()), Message::Ask(big.id())])
        .await;
    assert_eq!(peer.recv_within(Duration::from_secs(20)).await, None);
    tokio::time::sleep_until(answered + LEGACY_ANSWER_INTERVAL).await;
    // Once they are over, the small piece is served again; the big one never.
    peer.send_batch(&[Message::Ask(big.id()), Message::Ask(small.id())])
        .await;
    small_give(peer.recv_answer().await);
    assert_eq!(peer.recv_within(Duration::from_secs(20)).await, None);
    assert_eq!(node.metric(Metric::PiecesServedTotal), 2);
    assert_eq!(node.shared.connection_count(), 1);
}

// ---------------------------------------------------------------------------
// Peers that never read

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_reads_its_gives_is_closed_at_the_write_progress_deadline() {
    let node = TestNode::start(|_| {}).await;
    let pieces: Vec<VerifiedPiece> = (0..MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| piece(600 + i, MIB))
        .collect();
    for p in &pieces {
        node.hold(p).unwrap();
    }
    let asks: Vec<Message> = pieces.iter().map(|p| Message::Ask(p.id())).collect();
    let mut stuck = RawPeer::extended(&node, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    // Within the cap, and never read: 16 MiB is more than the socket buffers
    // take, so a GIVE write stops making progress.
    let asked = Instant::now();
    stuck.send_batch(&asks).await;

    // Meanwhile another peer is served as usual.
    let mut other = RawPeer::extended(&node, 2).await;
    other.send(&asks[0]).await;
    match other.recv_answer().await {
        Message::Give(give) => assert_eq!(give.id(), pieces[0].id()),
        m => panic!("expected the GIVE, got {m:?}"),
    }
    assert!(asked.elapsed() < GIVE_WRITE_PROGRESS_TIMEOUT);
    drop(other);

    let closed = wait_for(GIVE_WRITE_PROGRESS_TIMEOUT + 2 * SLACK, || {
        node.shared.connection_count() == 0
    })
    .await;
    let after = asked.elapsed();
    assert!(closed, "still open after {after:?}");
    assert!(
        after >= GIVE_WRITE_PROGRESS_TIMEOUT,
        "closed after {after:?}"
    );
    assert!(
        after < GIVE_WRITE_PROGRESS_TIMEOUT + SLACK,
        "closed after {after:?}"
    );
    stuck.expect_closed_within(SOON).await;

    // Its queued answers went with it, and their serving budget: every piece
    // is served again.
    let mut fresh = RawPeer::extended(&node, 3).await;
    fresh.send_batch(&asks).await;
    let mut given = HashSet::new();
    while given.len() < pieces.len() {
        match fresh.recv_answer().await {
            Message::Give(give) => assert!(given.insert(give.id())),
            m => panic!("expected GIVEs, got {m:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_reader_is_counted_under_write_progress() {
    let node = TestNode::start(|_| {}).await;
    let asks: Vec<Message> = (0..MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| {
            let p = piece(700 + i, MIB);
            node.hold(&p).unwrap();
            Message::Ask(p.id())
        })
        .collect();
    let mut stuck = RawPeer::extended(&node, 1).await;
    stuck.send_batch(&asks).await;
    let closed = wait_for(GIVE_WRITE_PROGRESS_TIMEOUT + 2 * SLACK, || {
        node.shared.connection_count() == 0
    })
    .await;
    assert!(closed);
    assert_eq!(
        node.closed("write_progress"),
        1,
        "{:?}",
        node.shared.metrics().to_json_map()
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_sending_thousands_of_asks_without_reading_is_closed_at_the_cap() {
    let node = TestNode::start(|_| {}).await;
    let ids: Vec<PieceId> = (0..MAX_ASKS_IN_FLIGHT as u64)
        .map(|i| {
            let p = piece(800 + i, MIB);
            node.hold(&p).unwrap();
            p.id()
        })
        .collect();
    let asks: Vec<Message> = ids
        .iter()
        .cycle()
        .take(2_000)
        .map(|id| Message::Ask(*id))
        .collect();
    let mut peer = RawPeer::extended(&node, 1).await;
    peer.send_batch(&asks).await;
    assert!(wait_for(SOON, || node.closed("too_many_asks") == 1).await);
    assert!(wait_for(SOON, || node.shared.connection_count() == 0).await);
    // At most the cap's answers were ever taken up.
    assert!(node.metric(Metric::PiecesServedTotal) <= MAX_ASKS_IN_FLIGHT as u64);
    drop(peer);
}

#[tokio::test(start_paused = true)]
async fn a_peer_flooding_want_haves_at_full_speed_without_reading_is_bounded_and_closed_while_others_are_served()
 {
    // Between bursts the flooder waits this long: on the paused clock the
    // node has read and answered each burst before time moves, so the
    // flood is as fast as the node can read, for as long as it lasts.
    const PAUSE: Duration = Duration::from_millis(50);
    const BURST: usize = 1_000;
    let node = TestNode::start(|_| {}).await;
    let held = piece(900, MIB);
    node.hold(&held).unwrap();
    let flooder = RawPeer::extended(&node, 1).await;
    let burst: Bytes = (0..BURST as u64)
        .flat_map(|i| Message::WantHave(PieceId::of(&i.to_le_bytes())).to_bytes())
        .collect::<Vec<u8>>()
        .into();
    let RawPeer {
        reader: unread,
        mut writer,
    } = flooder;
    let flood = tokio::spawn(async move {
        let mut sent = 0u64;
        // Never reads: `unread` is held until the node closes.
        while writer.write_all(&burst).await.is_ok() {
            sent += 1;
            tokio::time::sleep(PAUSE).await;
        }
        drop(unread);
        sent
    });
    let started = Instant::now();

    // While the flood runs, another peer is served.
    let mut other = RawPeer::extended(&node, 2).await;
    other.send(&Message::Ask(held.id())).await;
    match other.recv_answer().await {
        Message::Give(give) => assert_eq!(give.id(), held.id()),
        m => panic!("expected the GIVE, got {m:?}"),
    }
    assert!(started.elapsed() < GIVE_WRITE_PROGRESS_TIMEOUT);

    // Its answers stop fitting in the socket buffers and the write queue:
    // the rest are ignored and counted, and its connection closes at the
    // write-progress deadline.
    assert!(
        wait_for(GIVE_WRITE_PROGRESS_TIMEOUT * 4, || node
            .closed("write_progress")
            == 1)
        .await,
        "{:?}",
        node.shared.metrics().to_json_map()
    );
    assert!(node.metric(Metric::IgnoredFramesTotal) > 0);
    let bursts = flood.await.unwrap();
    assert!(
        bursts as u128 * PAUSE.as_millis() >= GIVE_WRITE_PROGRESS_TIMEOUT.as_millis(),
        "the flood lasted {bursts} bursts"
    );
    // The other peer is still served.
    other.send(&Message::Ask(held.id())).await;
    assert!(matches!(other.recv_answer().await, Message::Give(_)));
    assert_eq!(node.shared.connection_count(), 1);
}

// ---------------------------------------------------------------------------
// Rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upload_rate_paces_gives_but_never_delays_control_frames() {
    const RATE: u64 = 2 << 20;
    let holder = TestNode::start(|c| c.max_upload_rate = Some(RATE)).await;
    let pieces: Vec<VerifiedPiece> = (0..8).map(|i| piece(900 + i, MIB)).collect();
    let extra = piece(999, MIB);
    for p in pieces.iter().chain([&extra]) {
        holder.hold(p).unwrap();
    }
    let fetcher = TestNode::dialling(holder.addr, |_| {}).await;
    let mut watcher = RawPeer::extended(&holder, 1).await;
    assert!(wait_for(SOON, || holder.shared.connection_count() == 2).await);

    let started = Instant::now();
    let fetches: Vec<_> = pieces
        .iter()
        .map(|p| fetcher.spawn_fetch(p.id(), Duration::from_secs(30)))
        .collect();
    // The burst is gone once two pieces arrived; the rest wait for tokens.
    assert!(wait_for(SOON, || fetcher.metric(Metric::PiecesFetchedTotal) >= 2).await);
    assert!(fetcher.metric(Metric::PiecesFetchedTotal) < 8);
    // The watcher's own GIVE queues behind them; its WANT_HAVE does not.
    let asked = Instant::now();
    watcher
        .send_batch(&[Message::Ask(extra.id()), Message::WantHave(extra.id())])
        .await;
    assert_eq!(watcher.recv_answer().await, Message::Have(extra.id()));
    let answered = asked.elapsed();
    assert!(
        answered < Duration::from_millis(200),
        "HAVE after {answered:?}"
    );

    for (fetch, p) in fetches.into_iter().zip(&pieces) {
        assert_piece(&fetch.await.unwrap().unwrap(), p);
    }
    let took = started.elapsed();
    let paced = paced(8 * MIB as u64, RATE);
    assert!(took >= paced, "8 MiB in {took:?}");
    assert!(took < Duration::from_secs(20), "8 MiB in {took:?}");
    match watcher.recv_answer().await {
        Message::Give(give) => assert_eq!(give.id(), extra.id()),
        other => panic!("expected the GIVE, got {other:?}"),
    }
}

#[tokio::test]
async fn a_fetch_whose_only_peer_leaves_asks_a_peer_that_connected_meanwhile() {
    // The race behind a rare 404 in the benchmark: a fetch starts while its
    // one peer is a connection about to close (the loser of a duplicate
    // pair), and the surviving connection came up after the fetch started.
    let node = TestNode::start(|_| {}).await;
    let p = piece(9, 64 << 10);
    let mut leaving = RawPeer::extended(&node, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    let fetch = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(leaving.recv_answer().await, Message::WantHave(p.id()));

    let mut holder = RawPeer::extended(&node, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    drop(leaving);

    assert_eq!(holder.recv_answer().await, Message::WantHave(p.id()));
    holder.send(&Message::Have(p.id())).await;
    assert_eq!(holder.recv_answer().await, Message::Ask(p.id()));
    holder
        .send(&Message::Give(
            Give::new(p.id(), p.bytes().clone()).unwrap(),
        ))
        .await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
}

#[tokio::test]
async fn a_fetch_whose_peer_leaves_without_an_answer_ends_at_its_deadline_not_as_not_found() {
    // Nobody said "I don't have it": "not found" would be a guess.
    let node = TestNode::start(|_| {}).await;
    let id = PieceId::of(b"held by a peer that hung up");
    let mut leaving = RawPeer::extended(&node, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);
    let deadline = Duration::from_secs(1);
    let fetch = node.spawn_fetch(id, deadline);
    assert_eq!(leaving.recv_answer().await, Message::WantHave(id));
    drop(leaving);
    assert!(matches!(fetch.await.unwrap(), Err(FetchError::Deadline)));
}

// ---------------------------------------------------------------------------
// Pieces hashed while they arrive

/// A raw extended peer the node asks for `p`: connected (the node's
/// `connections`-th), its HAVE sent, the node's ASK read. Returns the peer
/// and the node's fetch.
async fn asked_raw_peer(
    fetcher: &TestNode,
    id: u8,
    connections: usize,
    p: &VerifiedPiece,
    timeout: Duration,
) -> (RawPeer, tokio::task::JoinHandle<Result<Bytes, FetchError>>) {
    let mut peer = RawPeer::extended(fetcher, id).await;
    assert!(wait_for(SOON, || fetcher.shared.connection_count() == connections).await);
    let fetch = fetcher.spawn_fetch(p.id(), timeout);
    // Fetches still running for earlier peers ask this one too: it has none.
    let expect = async |peer: &mut RawPeer, want: Message| loop {
        match peer.recv_answer().await {
            m if m == want => return,
            Message::WantHave(other) if other != p.id() => {
                peer.send(&Message::DontHave(other)).await;
            }
            m => panic!("expected {want:?}, got {m:?}"),
        }
    };
    expect(&mut peer, Message::WantHave(p.id())).await;
    peer.send(&Message::Have(p.id())).await;
    expect(&mut peer, Message::Ask(p.id())).await;
    (peer, fetch)
}

/// The GIVE frame of `bytes` under `p`'s name, and where its second half starts.
fn give_frame(p: &VerifiedPiece, bytes: Bytes) -> (Bytes, usize) {
    let frame = Message::Give(Give::new(p.id(), bytes).unwrap()).to_bytes();
    let half = frame.len() / 2;
    (frame, half)
}

/// Waits until the node has read at least `bytes` from the connection of
/// the peer with node id `id`.
async fn wait_read(node: &TestNode, id: NodeId, bytes: usize) {
    assert!(
        wait_for(SOON, || node
            .shared
            .peer_views()
            .iter()
            .any(|v| v.node_id == Some(id) && v.bytes_in >= bytes as u64))
        .await,
        "the node did not read {bytes} bytes from {id}"
    );
}

/// A raw peer (node id `[id; 8]`, the node's `connections`-th) asked for
/// `p`, that has sent the first half of `bytes` as `p`'s GIVE and seen the
/// node read it. Returns the peer, the rest of the frame, and the fetch.
async fn half_given(
    fetcher: &TestNode,
    id: u8,
    connections: usize,
    p: &VerifiedPiece,
    bytes: Bytes,
    timeout: Duration,
) -> (
    RawPeer,
    Bytes,
    tokio::task::JoinHandle<Result<Bytes, FetchError>>,
) {
    let (mut peer, fetch) = asked_raw_peer(fetcher, id, connections, p, timeout).await;
    let (frame, half) = give_frame(p, bytes);
    peer.send_bytes(&frame[..half]).await;
    wait_read(fetcher, NodeId([id; 8]), half).await;
    (peer, frame.slice(half..), fetch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_arriving_in_parts_is_hashed_as_it_comes_and_delivered_only_once_whole() {
    let fetcher = TestNode::start(|_| {}).await;
    let p = piece(21, MIB);
    let (mut holder, rest, fetch) =
        half_given(&fetcher, 0x21, 1, &p, p.bytes().clone(), FETCH_TIMEOUT).await;
    assert!(!fetch.is_finished(), "a fetch ended on half a piece");
    assert_eq!(fetcher.metric(Metric::PiecesFetchedTotal), 0);
    assert_eq!(fetcher.metric(Metric::GivesStreamedTotal), 1);
    holder.send_bytes(&rest).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    assert_eq!(fetcher.metric(Metric::PiecesFetchedTotal), 1);
    assert_eq!(fetcher.metric(Metric::PieceBytesFetchedTotal), MIB as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_whose_second_half_lies_is_banned_once_whole_and_returns_nothing() {
    let fetcher = TestNode::start(|_| {}).await;
    let p = piece(22, MIB);
    let mut forged = p.bytes().to_vec();
    forged[MIB - 1] ^= 1;
    let timeout = Duration::from_secs(2);
    let (mut liar, rest, fetch) =
        half_given(&fetcher, 0x22, 1, &p, Bytes::from(forged), timeout).await;
    liar.send_bytes(&rest).await;
    liar.expect_closed_within(SOON).await;
    assert_eq!(fetcher.metric(Metric::BansTotal), 1);
    assert_eq!(fetcher.metric(Metric::PiecesFetchedTotal), 0);
    assert!(fetch.await.unwrap().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_hanging_up_mid_give_deliver_nothing_and_keep_no_verify_slot() {
    let fetcher = TestNode::start(|_| {}).await;
    // One more hang-up than there are verify slots: a slot kept by any of
    // them would leave the last whole piece waiting for one.
    let mut fetches = Vec::new();
    for i in 0..=peer_node::node::VERIFY_QUEUE_PIECES {
        let seed = 100 + i as u64;
        let p = piece(seed, MIB);
        let timeout = Duration::from_secs(1);
        let id = seed.to_le_bytes()[0];
        let (peer, _, fetch) = half_given(&fetcher, id, 1, &p, p.bytes().clone(), timeout).await;
        drop(peer);
        assert!(wait_for(SOON, || fetcher.shared.connection_count() == 0).await);
        fetches.push(fetch);
    }
    for fetch in fetches {
        assert_eq!(fetch.await.unwrap(), Err(FetchError::Deadline));
    }
    assert_eq!(fetcher.metric(Metric::PiecesFetchedTotal), 0);
    let p = piece(99, MIB);
    let (mut holder, rest, fetch) =
        half_given(&fetcher, 0x99, 1, &p, p.bytes().clone(), FETCH_TIMEOUT).await;
    holder.send_bytes(&rest).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_trickling_from_more_peers_than_there_are_verify_slots_hold_up_no_other_give() {
    let fetcher = TestNode::start(|_| {}).await;
    // Each peer is asked for its piece and sends half of it, then nothing:
    // the first STREAMING_GIVES_MAX stream, the rest are being read whole.
    let mut trickling = Vec::new();
    for i in 0..=peer_node::node::VERIFY_QUEUE_PIECES {
        let seed = 200 + i as u64;
        let p = piece(seed, MIB);
        let id = seed.to_le_bytes()[0];
        let bytes = p.bytes().clone();
        trickling.push(half_given(&fetcher, id, i + 1, &p, bytes, FETCH_TIMEOUT).await);
    }
    assert_eq!(
        fetcher.metric(Metric::GivesStreamedTotal),
        peer_node::node::STREAMING_GIVES_MAX as u64
    );
    // A whole GIVE from one more peer is still verified and delivered.
    let p = piece(199, MIB);
    let connections = trickling.len() + 1;
    let (mut holder, fetch) = asked_raw_peer(&fetcher, 199, connections, &p, FETCH_TIMEOUT).await;
    holder
        .send(&Message::Give(
            Give::new(p.id(), p.bytes().clone()).unwrap(),
        ))
        .await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    for (_, _, fetch) in &trickling {
        assert!(!fetch.is_finished());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_streaming_gives_max_gives_stream_at_once() {
    let fetcher = TestNode::start(|_| {}).await;
    let max = peer_node::node::STREAMING_GIVES_MAX;
    let mut peers = Vec::new();
    for i in 0..=max {
        let seed = 300 + i as u64;
        let p = piece(seed, MIB);
        let id = seed.to_le_bytes()[0];
        let bytes = p.bytes().clone();
        peers.push((
            half_given(&fetcher, id, i + 1, &p, bytes, FETCH_TIMEOUT).await,
            p,
        ));
        let streamed = fetcher.metric(Metric::GivesStreamedTotal);
        assert_eq!(streamed, (i + 1).min(max) as u64, "after {} peers", i + 1);
    }
    // The one over the limit is read whole, and verified all the same.
    let ((mut over, rest, fetch), p) = peers.pop().unwrap();
    over.send_bytes(&rest).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    // One streaming GIVE ends: its slot streams the next.
    let ((mut first, rest, fetch), p) = peers.remove(0);
    first.send_bytes(&rest).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    let p = piece(399, MIB);
    let (mut next, rest, fetch) = half_given(
        &fetcher,
        0x99,
        max + 2,
        &p,
        p.bytes().clone(),
        FETCH_TIMEOUT,
    )
    .await;
    assert_eq!(fetcher.metric(Metric::GivesStreamedTotal), max as u64 + 1);
    next.send_bytes(&rest).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_streams_from_stream_gives_from_bytes_and_one_byte_less_is_read_whole() {
    use peer_node::node::STREAM_GIVES_FROM;
    for (seed, len, streamed) in [(31, STREAM_GIVES_FROM - 1, 0), (32, STREAM_GIVES_FROM, 1)] {
        let fetcher = TestNode::start(|_| {}).await;
        let p = piece(seed, len);
        let (mut holder, rest, fetch) =
            half_given(&fetcher, 0x31, 1, &p, p.bytes().clone(), FETCH_TIMEOUT).await;
        holder.send_bytes(&rest).await;
        assert_piece(&fetch.await.unwrap().unwrap(), &p);
        assert_eq!(
            fetcher.metric(Metric::GivesStreamedTotal),
            streamed,
            "a piece of {len} bytes"
        );
    }
}

// ---------------------------------------------------------------------------
// Announced pieces (an unasked HAVE)

/// A node with two raw extended peers connected, the first of which has
/// announced `p` (an unasked HAVE) and the node has taken it.
async fn announced(p: &VerifiedPiece) -> (TestNode, RawPeer, RawPeer) {
    let node = TestNode::start(|_| {}).await;
    let mut announcer = RawPeer::extended(&node, 1).await;
    let other = RawPeer::extended(&node, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    announcer.send(&Message::Have(p.id())).await;
    let taken = wait_for(SOON, || {
        node.metric(Metric::HaveAnnouncementsReceivedTotal) == 1
    })
    .await;
    assert!(taken, "the announcement was not taken");
    (node, announcer, other)
}

/// `peer` gives `p`.
async fn give(peer: &mut RawPeer, p: &VerifiedPiece) {
    let give = Give::new(p.id(), p.bytes().clone()).unwrap();
    peer.send(&Message::Give(give)).await;
}

#[tokio::test]
async fn a_fetch_asks_the_peer_that_announced_the_piece_at_once_and_sends_no_want_have() {
    let p = piece(21, 64 << 10);
    let (node, mut announcer, _other) = announced(&p).await;
    assert_eq!(node.metric(Metric::IgnoredFramesTotal), 0);

    let fetch = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(announcer.recv_answer().await, Message::Ask(p.id()));
    give(&mut announcer, &p).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
    assert_eq!(
        node.metric(Metric::WantHaveSentTotal),
        0,
        "a peer that had not announced the piece was asked about it"
    );
}

#[tokio::test]
async fn a_peer_that_announced_a_piece_and_then_denies_it_is_believed_and_the_others_are_asked() {
    let p = piece(22, 64 << 10);
    let (node, mut announcer, mut holder) = announced(&p).await;

    let fetch = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(announcer.recv_answer().await, Message::Ask(p.id()));
    announcer.send(&Message::DontHave(p.id())).await;
    // Only now is anyone else asked about it.
    assert_eq!(holder.recv_answer().await, Message::WantHave(p.id()));
    holder.send(&Message::Have(p.id())).await;
    assert_eq!(holder.recv_answer().await, Message::Ask(p.id()));
    give(&mut holder, &p).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);

    // What each said is remembered: the next fetch of it asks the peer
    // that said HAVE at once, and nobody asks the one that denied it.
    assert!(wait_for(SOON, || node.shared.fetches_in_progress() == 0).await);
    node.shared.store().gc().unwrap();
    assert!(!node.shared.store().has(&p.id()));
    let wants = node.metric(Metric::WantHaveSentTotal);
    let again = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    assert_eq!(holder.recv_answer().await, Message::Ask(p.id()));
    give(&mut holder, &p).await;
    assert_piece(&again.await.unwrap().unwrap(), &p);
    assert_eq!(node.metric(Metric::WantHaveSentTotal), wants);
}

#[tokio::test]
async fn an_announcer_with_many_asks_waiting_is_not_asked_alone() {
    // A slow announcer must not get every piece of a file: once it has
    // OPTIMISTIC_MAX_LOAD of our ASKs waiting, the others are asked too.
    let p = piece(24, 64 << 10);
    let (node, mut announcer, mut other) = announced(&p).await;
    let busy: Vec<VerifiedPiece> = (0..OPTIMISTIC_MAX_LOAD as u64)
        .map(|n| piece(100 + n, 1024))
        .collect();
    for q in &busy {
        announcer.send(&Message::Have(q.id())).await;
    }
    let taken = wait_for(SOON, || {
        node.metric(Metric::HaveAnnouncementsReceivedTotal) == 1 + busy.len() as u64
    })
    .await;
    assert!(taken);
    // The announcer is asked for them and answers nothing.
    let _waiting: Vec<_> = busy
        .iter()
        .map(|q| node.spawn_fetch(q.id(), FETCH_TIMEOUT))
        .collect();
    for _ in &busy {
        assert!(matches!(announcer.recv_answer().await, Message::Ask(_)));
    }
    let fetch = node.spawn_fetch(p.id(), FETCH_TIMEOUT);
    // The other peer hears a WANT_HAVE for it (after those for the pieces
    // the announcer sits on, which it denies), says HAVE, and gives it.
    loop {
        match other.recv_answer().await {
            Message::WantHave(id) if id == p.id() => break,
            Message::WantHave(id) => other.send(&Message::DontHave(id)).await,
            m => panic!("unexpected {m:?}"),
        }
    }
    other.send(&Message::Have(p.id())).await;
    loop {
        match other.recv_answer().await {
            Message::Ask(id) if id == p.id() => break,
            Message::WantHave(id) => other.send(&Message::DontHave(id)).await,
            m => panic!("unexpected {m:?}"),
        }
    }
    give(&mut other, &p).await;
    assert_piece(&fetch.await.unwrap().unwrap(), &p);
}
