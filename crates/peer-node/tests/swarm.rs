//! Swarms of real nodes on loopback.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use peer_node::metrics::Metric;
use peer_node::testing::{RunningNode, wait_for};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_its_bootstrap_node_end_with_one_connection() {
    let a = start(Vec::new()).await;
    let b = start(vec![a.addr.to_string()]).await;
    // Make a dial b as well: its PEERS from b names b.
    assert!(
        wait_for(Duration::from_secs(20), || a
            .shared
            .connected_node_ids()
            .len()
            == 1
            && b.shared.connected_node_ids().len() == 1)
        .await
    );
    // Both keep exactly one connection to the other for a while.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(a.shared.connection_count() <= 1 && b.shared.connection_count() <= 1);
    }
    assert_eq!(a.shared.connected_node_ids(), vec![b.shared.node_id()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
    // Many dial ticks and more than the first backoff later: never again,
    // and the address is not offered back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(metrics.value(Metric::SelfConnectionsTotal), 1);
    assert_eq!(metrics.value(Metric::DialAttemptsTotal), 1);
    node.shared.add_candidate(node.addr.into());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics.value(Metric::DialAttemptsTotal), 1);
    assert_eq!(node.shared.connection_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_dialling_each_other_at_once_keep_exactly_one_connection() {
    for _ in 0..10 {
        let a = start(Vec::new()).await;
        let b = start(Vec::new()).await;
        // Both learn of each other in the same instant, so both dialers pick
        // the other up on their next tick: two connections race.
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
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(
                (a.shared.connection_count(), b.shared.connection_count()),
                (1, 1)
            );
        }
        for n in [a, b] {
            n.stop().await.unwrap();
        }
    }
}
