//! The node's own limits (docs/ARCHITECTURE.md §6: a connection manager that owns
//! the global, per-IP and inbound/outbound limits; bounded write queues; byte
//! budgets for pieces being served or verified), each against a real node:
//! at the limit the work is accepted, one past it is refused, closed or made
//! to wait, and the exact outcome is checked.
//!
//! Where a test shows that something waits, it waits for a fixed time and
//! then releases what holds it: a node that enforced nothing would have
//! answered at once, so the wait only has to be long against loopback.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use peer_node::metrics::Metric;
use peer_node::net::READ_CHUNK_BYTES;
use peer_node::node::{
    MAX_CONNECTIONS_PER_IP, SERVE_BUDGET_BYTES, VERIFY_QUEUE_PIECES, WRITE_QUEUE_FRAMES,
};
use peer_node::swarm::{REPLACE_INTERVAL, REPLACE_MAX_BYTES, REPLACE_MIN_AGE, REPLACED_CLOSE};
use peer_node::testing::wait_for;
use piece_store::testing::{FaultyStore, Op};
use piece_store::{MemStore, PieceStore};
use tokio::net::TcpListener;
use tokio::time::Instant;
use wire_format::limits::{
    DIAL_RATE_PER_SEC, DIGEST_MESSAGE_LEN, LEN_FIELD_BYTES, MAX_ASKS_IN_FLIGHT, PIECE_MAX,
};
use wire_format::{Give, Hello, Message, NodeId, PeerAddr, PieceId};

use common::{RawPeer, SOON, TestNode, digest, piece};

/// How long a test watches for something that must not happen (yet).
const WATCH: Duration = Duration::from_secs(1);

fn listener_addr(listener: &TcpListener) -> PeerAddr {
    PeerAddr::from(listener.local_addr().unwrap())
}

// ---------------------------------------------------------------------------
// Connections

#[tokio::test]
async fn one_ip_may_hold_max_connections_per_ip_and_the_next_is_refused() {
    // Loopback stands in for another host: on this machine it is exempt.
    let node = TestNode::start(|c| c.loopback_is_local = false).await;
    let mut held = Vec::new();
    for id in 1..=MAX_CONNECTIONS_PER_IP {
        held.push(RawPeer::extended(&node, u8::try_from(id).unwrap()).await);
        let registered = wait_for(SOON, || node.shared.connection_count() == id).await;
        assert!(
            registered,
            "{id} connections: {}",
            node.shared.connection_count()
        );
    }
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 0);

    // One more from the same IP: closed before any frame, and counted.
    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    assert_eq!(node.shared.connection_count(), MAX_CONNECTIONS_PER_IP);
    for (byte, peer) in (1..).zip(&mut held) {
        peer.assert_answers(byte).await;
    }

    // A freed slot is taken again.
    drop(held.pop());
    let freed = wait_for(SOON, || {
        node.shared.open_connections() == MAX_CONNECTIONS_PER_IP - 1
    })
    .await;
    assert!(freed);
    let mut again = RawPeer::extended(&node, 0x40).await;
    again.assert_answers(1).await;
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
}

#[tokio::test]
async fn loopback_is_exempt_from_the_per_ip_limit() {
    let node = TestNode::start(|_| {}).await;
    let mut held = Vec::new();
    for id in 0..=MAX_CONNECTIONS_PER_IP {
        held.push(RawPeer::extended(&node, u8::try_from(id).unwrap()).await);
    }
    let all = MAX_CONNECTIONS_PER_IP + 1;
    assert!(wait_for(SOON, || node.shared.connection_count() == all).await);
    held[MAX_CONNECTIONS_PER_IP].assert_answers(1).await;
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 0);
}

#[tokio::test]
async fn the_connection_that_reaches_max_connections_is_kept_and_the_next_refused() {
    // Two connections at most, both slots meant for dialling: the one
    // inbound slot never runs out below, so only the global limit refuses.
    let node = TestNode::start(|c| {
        c.max_connections = 2;
        c.target_outbound = 2;
    })
    .await;
    let (first, second) = (
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    node.shared.add_candidate(listener_addr(&first));
    let _out = RawPeer::accept(&node, &first, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);

    // At the limit: an inbound peer makes the second connection.
    let mut inbound = RawPeer::extended(&node, 3).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    inbound.assert_answers(1).await;
    // While the node is full, the dialler leaves a due candidate alone.
    node.shared.add_candidate(listener_addr(&second));
    let dialled = tokio::time::timeout(WATCH, second.accept()).await;
    assert!(dialled.is_err(), "dialled past the global limit");
    assert_eq!(node.metric(Metric::DialAttemptsTotal), 1);

    // A freed slot goes to the dialler...
    drop(inbound);
    let _out = RawPeer::accept(&node, &second, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    // ...and the next connection is one too many, though no inbound slot
    // is in use.
    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    assert_eq!(node.shared.connection_count(), 2);
}

#[tokio::test]
async fn a_full_node_replaces_an_inbound_connection_that_never_carried_data() {
    // Two inbound slots, connections count as old at once, and one
    // replacement per hour (the interval's boundary is checked below).
    let node = TestNode::start(|c| {
        c.max_connections = 2;
        c.replace_min_age = Duration::ZERO;
        c.replace_interval = Duration::from_secs(3600);
    })
    .await;
    let first = RawPeer::extended(&node, 1).await;
    let second = RawPeer::extended(&node, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    // The newcomer gets in: one of the two idle ones makes room.
    let mut newcomer = RawPeer::extended(&node, 3).await;
    newcomer.assert_answers(1).await;
    assert_eq!(node.metric(Metric::ConnectionsReplacedTotal), 1);
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 0);
    node.wait_closed(REPLACED_CLOSE, 1).await;
    let ids = node.shared.connected_node_ids();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&NodeId([3; 8])));
    let (mut gone, mut kept) = if ids.contains(&NodeId([1; 8])) {
        (second, first)
    } else {
        (first, second)
    };
    gone.expect_closed().await;
    kept.assert_answers(3).await;
    // A second newcomer within the interval is refused, as before.
    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    assert_eq!(node.metric(Metric::ConnectionsReplacedTotal), 1);

    // With the interval elapsed (none here), every newcomer replaces one.
    let churn = TestNode::start(|c| {
        c.max_connections = 1;
        c.replace_min_age = Duration::ZERO;
        c.replace_interval = Duration::ZERO;
    })
    .await;
    // Each newcomer stays connected; the one before it is replaced.
    let mut peers = vec![RawPeer::extended(&churn, 1).await];
    for id in 2..=4 {
        let mut next = RawPeer::extended(&churn, id).await;
        next.assert_answers(id).await;
        peers.last_mut().unwrap().expect_closed().await;
        peers.push(next);
    }
    assert_eq!(churn.metric(Metric::ConnectionsReplacedTotal), 3);
    assert_eq!(churn.metric(Metric::ConnectionsRejectedTotal), 0);
    assert_eq!(
        peer_node::node::NodeConfig::new(node.addr).replace_interval,
        REPLACE_INTERVAL,
        "the default is the named constant"
    );
}

#[tokio::test]
async fn a_connection_that_carried_a_piece_or_is_young_is_never_replaced() {
    // One inbound slot, taken by a peer that fetched a whole piece
    // (REPLACE_MAX_BYTES moved).
    let node = TestNode::start(|c| {
        c.max_connections = 1;
        c.replace_min_age = Duration::ZERO;
    })
    .await;
    let held = piece(9, PIECE_MAX);
    node.hold(&held).unwrap();
    let mut busy = RawPeer::extended(&node, 1).await;
    busy.send(&Message::Ask(held.id())).await;
    match busy.recv_answer().await {
        Message::Give(give) => {
            assert_eq!(give.into_parts().1.len() as u64, REPLACE_MAX_BYTES);
        }
        other => panic!("expected GIVE, got {other:?}"),
    }
    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    assert_eq!(node.metric(Metric::ConnectionsReplacedTotal), 0);
    busy.assert_answers(1).await;

    // A young idle connection stays too (the default age).
    let young = TestNode::start(|c| c.max_connections = 1).await;
    let mut idle = RawPeer::extended(&young, 1).await;
    let mut over = RawPeer::connect(young.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert!(REPLACE_MIN_AGE > SOON, "the test would outlive the age");
    assert_eq!(young.metric(Metric::ConnectionsReplacedTotal), 0);
    idle.assert_answers(1).await;
}

// Regression: a connection the dialler opened used to count twice (as a
// connection and as a dial in progress), so the node kept half its target.
#[tokio::test]
async fn the_dialler_keeps_target_outbound_connections_and_dials_no_more() {
    let node = TestNode::start(|c| c.target_outbound = 2).await;
    let listeners = [
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    ];
    for listener in &listeners {
        node.shared.add_candidate(listener_addr(listener));
    }
    // Whichever two it picks, it dials them and keeps them; the third is
    // watched as long as the others.
    let (a, b, c) = tokio::join!(
        tokio::time::timeout(WATCH, RawPeer::accept(&node, &listeners[0], 1)),
        tokio::time::timeout(WATCH, RawPeer::accept(&node, &listeners[1], 2)),
        tokio::time::timeout(WATCH, RawPeer::accept(&node, &listeners[2], 3)),
    );
    let accepted: Vec<RawPeer> = [a, b, c].into_iter().filter_map(Result::ok).collect();
    assert_eq!(accepted.len(), 2, "outbound connections");
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    assert_eq!(node.metric(Metric::DialAttemptsTotal), 2);
}

// The paused clock moves only with the node's timers, so the dialler's ticks
// are counted exactly.
#[tokio::test(start_paused = true)]
async fn the_dialler_starts_dial_rate_per_sec_dials_a_second() {
    let rate = usize::try_from(DIAL_RATE_PER_SEC).unwrap();
    let node = TestNode::start(|c| c.target_outbound = 4 * rate).await;
    let start = Instant::now();
    // More candidates than a second's worth; none of them listens. The
    // listeners are all held until every port is known, so no port comes
    // twice.
    let listeners: Vec<_> = (0..2 * rate)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    for listener in listeners {
        let port = listener.local_addr().unwrap().port();
        node.shared
            .add_candidate(PeerAddr::new([127, 0, 0, 1].into(), port));
    }
    let half_tick = Duration::from_millis(50);
    tokio::time::sleep_until(start + Duration::from_secs(1) + half_tick).await;
    assert_eq!(node.metric(Metric::DialAttemptsTotal), rate as u64);
    // The next one waits for the first tick of the next second.
    let tick = Duration::from_secs(1) / DIAL_RATE_PER_SEC;
    tokio::time::sleep_until(start + Duration::from_secs(1) + tick + half_tick).await;
    assert_eq!(node.metric(Metric::DialAttemptsTotal), rate as u64 + 1);
}

// ---------------------------------------------------------------------------
// The write queue

/// `count` digests nobody holds.
fn unheld(count: usize) -> Vec<PieceId> {
    (0..count).map(|n| PieceId::of(&n.to_le_bytes())).collect()
}

fn want_haves(ids: &[PieceId]) -> Vec<Message> {
    ids.iter().map(|id| Message::WantHave(*id)).collect()
}

// One thread: the node handles every frame of one read before its writer
// runs, so each answer stays queued until the batch is handled.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_reads_gets_an_answer_to_every_want_have_of_a_full_read() {
    // The write queue holds the answers to a whole read of WANT_HAVEs (a
    // peer that reads is never refused one); its boundary, a peer that does
    // not read, is the unit test next to `on_want_have`.
    let frame = LEN_FIELD_BYTES + DIGEST_MESSAGE_LEN;
    let burst = READ_CHUNK_BYTES / frame + 1;
    assert!(burst <= WRITE_QUEUE_FRAMES);
    let node = TestNode::start(|_| {}).await;
    let mut peer = RawPeer::extended(&node, 1).await;
    let ids = unheld(burst);
    peer.send_batch(&want_haves(&ids)).await;
    for id in ids {
        assert_eq!(peer.recv_answer().await, Message::DontHave(id));
    }
    peer.assert_answers(0xaa).await;
    assert_eq!(node.metric(Metric::IgnoredFramesTotal), 0);
    assert_eq!(node.shared.connection_count(), 1);
}

// ---------------------------------------------------------------------------
// The serving budget

// Paused clock: one thread, so the node's serving tasks take their share of
// the budget in the order the ASKs were read.
#[tokio::test(start_paused = true)]
async fn answers_holding_the_whole_serving_budget_make_the_next_give_wait_but_not_a_dont_have() {
    // After the rate limiter's first burst no GIVE leaves: each answer
    // waiting for upload tokens holds a whole piece's share of the budget.
    let node = TestNode::start(|c| c.max_upload_rate = Some(1)).await;
    let big = piece(1, PIECE_MAX);
    node.hold(&big).unwrap();
    let ask = Message::Ask(big.id());
    let mut burst = RawPeer::extended(&node, 1).await;
    burst.send(&ask).await;
    assert!(matches!(burst.recv_answer().await, Message::Give(_)));

    // Every share but one, MAX_ASKS_IN_FLIGHT answers per connection; the
    // WANT_HAVE after each batch of ASKs says they were all booked.
    let shares = SERVE_BUDGET_BYTES / PIECE_MAX;
    let mut holders: Vec<RawPeer> = Vec::new();
    let mut last_batch = 0;
    for (id, held) in (0x10..).zip((0..shares - 1).step_by(MAX_ASKS_IN_FLIGHT)) {
        last_batch = (shares - 1 - held).min(MAX_ASKS_IN_FLIGHT);
        let mut holder = RawPeer::extended(&node, id).await;
        let mut batch = vec![ask.clone(); last_batch];
        batch.push(Message::WantHave(big.id()));
        holder.send_batch(&batch).await;
        assert_eq!(holder.recv_answer().await, Message::Have(big.id()));
        holders.push(holder);
    }
    assert!(last_batch < MAX_ASKS_IN_FLIGHT, "no room for one more ASK");

    // The last share: one more ASK (within the cap) takes it.
    let last = holders.last_mut().unwrap();
    last.send_batch(&[ask.clone(), Message::WantHave(big.id())])
        .await;
    assert_eq!(last.recv_answer().await, Message::Have(big.id()));
    // (The paused clock runs every task that can run before it moves.)
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(node.metric(Metric::ServeAnswersWaiting), 0);
    // The next answer for a piece the node holds waits for a share...
    let mut probe = RawPeer::extended(&node, 2).await;
    probe.send(&ask).await;
    assert!(wait_for(SOON, || node.metric(Metric::ServeAnswersWaiting) == 1).await);
    // ...while an ASK for a piece it lacks is answered at once: a DONT_HAVE
    // takes no share.
    probe.assert_answers(0xa2).await;
    assert_eq!(node.metric(Metric::ServeAnswersWaiting), 1);
    // The waiting answer takes a share as soon as a connection's are released.
    drop(holders.swap_remove(0));
    assert!(wait_for(SOON, || node.metric(Metric::ServeAnswersWaiting) == 0).await);
    assert_eq!(node.metric(Metric::PiecesServedTotal), 1);
}

// ---------------------------------------------------------------------------
// The verification queue

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_past_the_verify_queue_wait_and_their_reader_with_them() {
    // A disk that stalls every `put` until the test opens the gate. The
    // guard opens it if the test fails, so no thread is left stalled (the
    // runtime would wait for it forever).
    let store = Arc::new(FaultyStore::new(Arc::new(MemStore::new(1 << 30))));
    let gate = store.stall(Op::Put);
    let _open = gate.open_on_drop();
    let node = TestNode::start_with_store(Arc::clone(&store) as Arc<dyn PieceStore>, |_| {}).await;
    let p = piece(7, 1 << 10);
    let give = Message::Give(Give::new(p.id(), p.bytes().clone()).unwrap());
    let mut peer = RawPeer::extended(&node, 1).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 1).await);

    // The node fetches the piece from the peer...
    let fetch = {
        let shared = Arc::clone(&node.shared);
        let id = p.id();
        tokio::spawn(async move { shared.fetch(id, SOON).await })
    };
    assert_eq!(peer.recv_answer().await, Message::WantHave(p.id()));
    peer.send(&Message::Have(p.id())).await;
    assert_eq!(peer.recv_answer().await, Message::Ask(p.id()));
    peer.send(&give).await;
    assert_eq!(fetch.await.unwrap().unwrap(), *p.bytes());
    // ...and its cache copy stalls in the store.
    assert!(wait_for(SOON, || store.count(Op::Put) == 1).await);

    // Late copies of the answer: each is verified in a slot of the queue,
    // then stalls in the store, holding its slot. The queue takes them all
    // and the reader goes on.
    let len = p.len() as u64;
    let mut batch = vec![give.clone(); VERIFY_QUEUE_PIECES];
    batch.push(Message::WantHave(digest(1)));
    peer.send_batch(&batch).await;
    assert_eq!(peer.recv_answer().await, Message::DontHave(digest(1)));
    let queued = VERIFY_QUEUE_PIECES as u64;
    let verified = wait_for(SOON, || {
        node.metric(Metric::DuplicateBytesTotal) == queued * len
    })
    .await;
    assert!(
        verified,
        "{} bytes",
        node.metric(Metric::DuplicateBytesTotal)
    );
    assert!(wait_for(SOON, || store.count(Op::Put) == 1 + VERIFY_QUEUE_PIECES).await);

    // One more: no slot, so the connection's reader waits for one.
    peer.send_batch(&[give.clone(), Message::WantHave(digest(2))])
        .await;
    assert_eq!(peer.recv_answer_within(WATCH).await, None);
    assert_eq!(node.metric(Metric::DuplicateBytesTotal), queued * len);
    assert_eq!(store.count(Op::Put), 1 + VERIFY_QUEUE_PIECES);

    // The store catches up: the slots free, the last copy is verified and
    // the reader answers again.
    gate.open();
    assert_eq!(peer.recv_answer().await, Message::DontHave(digest(2)));
    let all = wait_for(SOON, || {
        node.metric(Metric::DuplicateBytesTotal) == (queued + 1) * len
    })
    .await;
    assert!(all);
    assert_eq!(node.shared.connection_count(), 1);
}

/// Joins `node` as an extended peer once fewer than `limit` sockets are
/// open (a closed socket's slot comes back once the node has seen the close).
async fn join_below(node: &TestNode, limit: usize, id: u8) -> RawPeer {
    let room = wait_for(SOON, || node.shared.open_connections() < limit).await;
    assert!(room, "open: {}", node.shared.open_connections());
    RawPeer::extended(node, id).await
}

#[tokio::test]
async fn sockets_still_waiting_for_hello_count_against_the_connection_limit() {
    // Two inbound slots; the two silent sockets take both.
    let node = TestNode::start(|c| c.max_connections = 2).await;
    let silent = [
        tokio::net::TcpStream::connect(node.addr).await.unwrap(),
        tokio::net::TcpStream::connect(node.addr).await.unwrap(),
    ];
    assert!(wait_for(SOON, || node.shared.open_connections() == 2).await);
    assert_eq!(node.shared.connection_count(), 0, "none registered yet");

    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);

    // One silent socket goes away: its slot serves a peer again.
    let [first, _second] = silent;
    drop(first);
    let mut again = join_below(&node, 2, 7).await;
    again.assert_answers(1).await;
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
}

#[tokio::test]
async fn client_connections_count_against_the_per_ip_limit() {
    // CLIENT connections (tools, probes) are never registered, yet each is
    // an open socket of that IP.
    let node = TestNode::start(|c| c.loopback_is_local = false).await;
    let mut clients = Vec::new();
    for id in 1..=MAX_CONNECTIONS_PER_IP {
        let mut client = RawPeer::connect(node.addr).await;
        let hello = Hello::ours(None, true, NodeId([u8::try_from(id).unwrap(); 8]));
        client.send(&Message::Hello(hello)).await;
        assert!(matches!(client.recv().await, Message::Hello(_)));
        clients.push(client);
    }
    assert!(
        wait_for(SOON, || node.shared.open_connections()
            == MAX_CONNECTIONS_PER_IP)
        .await
    );
    assert_eq!(
        node.shared.connection_count(),
        0,
        "CLIENTs are not registered"
    );

    let mut over = RawPeer::connect(node.addr).await;
    assert!(over.expect_closed().await.is_empty());
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    for (byte, client) in (1..).zip(&mut clients) {
        client.assert_answers(byte).await;
    }
}
