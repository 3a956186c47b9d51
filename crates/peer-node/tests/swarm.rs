//! Swarms of real nodes on loopback.
//!
//! Tests that check something does *not* happen (a redial, a second
//! connection) run on tokio's paused clock: every dial tick, backoff and
//! re-announce of the nodes is a timer, so sleeping through a stretch of
//! paused time runs each of them before the sleep ends, however slow the
//! machine. The nodes' loopback sockets answer within the same instant.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use peer_node::metrics::Metric;
use peer_node::testing::{RunningNode, wait_for};

/// How much paused time a test watches for something that must not happen:
/// hundreds of dial ticks, the first backoffs and the hungry re-announces.
const WATCH: Duration = Duration::from_secs(60);

/// A node bootstrapping from `bootstrap`, stopped when dropped.
async fn start(bootstrap: Vec<String>) -> RunningNode {
    RunningNode::start(|config| config.bootstrap = bootstrap)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_find_each_other_through_one_node_as_bootstrap() {
    let seed = start(Vec::new()).await;
    let mut nodes = vec![];
    for _ in 0..19 {
        nodes.push(start(vec![seed.addr.to_string()]).await);
    }
    let all: Vec<&RunningNode> = std::iter::once(&seed).chain(nodes.iter()).collect();
    let formed = wait_for(Duration::from_secs(60), || {
        all.iter().all(|n| n.shared.connected_node_ids().len() >= 4)
    })
    .await;
    let counts: Vec<usize> = all
        .iter()
        .map(|n| n.shared.connected_node_ids().len())
        .collect();
    assert!(formed, "peer counts: {counts:?}");
    for n in nodes.into_iter().chain(std::iter::once(seed)) {
        n.stop().await.unwrap();
    }
}

/// What a node has dialled so far: a redial, even one whose connection
/// lost the duplicate rule at once, changes it. (Duplicates are not in it:
/// a node's re-announces to a bootstrap node it is connected to count as
/// duplicates there, by design.)
fn dial_record(node: &RunningNode) -> [u64; 3] {
    let metrics = node.shared.metrics();
    [
        metrics.value(Metric::DialAttemptsTotal),
        metrics.value(Metric::ConnectionsOutboundTotal),
        metrics.value(Metric::SelfConnectionsTotal),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_node_and_its_bootstrap_node_end_with_one_connection() {
    let a = start(Vec::new()).await;
    let b = start(vec![a.addr.to_string()]).await;
    // b dials a, its bootstrap; a learns b's address from b's PEERS, which
    // names b: a candidate a must not dial while b is connected.
    assert!(
        wait_for(Duration::from_secs(20), || a.shared.connected_node_ids()
            == vec![b.shared.node_id()]
            && b.shared.connected_node_ids() == vec![a.shared.node_id()])
        .await
    );
    let before = (dial_record(&a), dial_record(&b));
    tokio::time::sleep(WATCH).await;
    assert_eq!((dial_record(&a), dial_record(&b)), before);
    assert_eq!(
        (a.shared.connection_count(), b.shared.connection_count()),
        (1, 1)
    );
    assert_eq!(a.shared.connected_node_ids(), vec![b.shared.node_id()]);
}

#[tokio::test(start_paused = true)]
async fn a_self_connection_is_detected_and_never_retried() {
    let node = start(Vec::new()).await;
    // The node learns its own address (as if a peer had told it).
    node.shared.add_candidate(node.addr.into());
    let metrics = node.shared.metrics();
    assert!(
        wait_for(Duration::from_secs(10), || metrics
            .value(Metric::SelfConnectionsTotal)
            == 1)
        .await
    );
    // A minute of dial ticks and backoffs later: never again, and the
    // address is not taken back when offered again.
    tokio::time::sleep(WATCH).await;
    assert_eq!(metrics.value(Metric::SelfConnectionsTotal), 1);
    assert_eq!(metrics.value(Metric::DialAttemptsTotal), 1);
    node.shared.add_candidate(node.addr.into());
    tokio::time::sleep(WATCH).await;
    assert_eq!(metrics.value(Metric::DialAttemptsTotal), 1);
    assert_eq!(metrics.value(Metric::SelfConnectionsTotal), 1);
    assert_eq!(node.shared.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn nodes_dialling_each_other_at_once_keep_exactly_one_connection() {
    for _ in 0..10 {
        let a = start(Vec::new()).await;
        let b = start(Vec::new()).await;
        // Both learn of each other in the same instant, so both dialers pick
        // the other up on the same tick: two connections race (their steps
        // interleave on the one thread of the paused runtime).
        a.shared.add_candidate(b.addr.into());
        b.shared.add_candidate(a.addr.into());
        assert!(
            wait_for(Duration::from_secs(20), || {
                a.shared.connected_node_ids() == vec![b.shared.node_id()]
                    && b.shared.connected_node_ids() == vec![a.shared.node_id()]
                    && a.shared.connection_count() == 1
                    && b.shared.connection_count() == 1
            })
            .await
        );
        // And it stays that way: neither side redials the survivor away.
        let before = (dial_record(&a), dial_record(&b));
        tokio::time::sleep(WATCH).await;
        assert_eq!((dial_record(&a), dial_record(&b)), before);
        assert_eq!(
            (a.shared.connection_count(), b.shared.connection_count()),
            (1, 1)
        );
        for n in [a, b] {
            n.stop().await.unwrap();
        }
    }
}
