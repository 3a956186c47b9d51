//! Pieces across a swarm of real nodes on loopback.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use peer_node::api::FetchError;
use peer_node::metrics::Metric;
use peer_node::testing::{RunningNode, wait_for};
use wire_format::{PieceId, VerifiedPiece};

/// A node bootstrapping from `bootstrap`, stopped when dropped.
async fn start(bootstrap: Option<SocketAddr>) -> RunningNode {
    RunningNode::start(|config| {
        config.bootstrap = bootstrap.iter().map(ToString::to_string).collect()
    })
    .await
    .unwrap()
}

fn piece(seed: u64, len: usize) -> VerifiedPiece {
    let mut bytes = vec![0u8; len];
    for (i, chunk) in bytes.chunks_mut(8).enumerate() {
        let v = (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    VerifiedPiece::new(Bytes::from(bytes)).unwrap()
}

/// Node `a`, and node `b` connected to it (`a` as its bootstrap).
async fn connected_pair() -> (RunningNode, RunningNode) {
    let a = start(None).await;
    let b = start(Some(a.addr)).await;
    assert!(
        wait_for(Duration::from_secs(10), || b
            .shared
            .connected_node_ids()
            .len()
            == 1)
        .await
    );
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_held_by_a_peer_is_fetched_verified() {
    let (a, b) = connected_pair().await;
    let p = piece(1, 1 << 20);
    a.hold(&p).unwrap();
    let got = b
        .shared
        .fetch(p.id(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(&got, p.bytes());
    assert_eq!(PieceId::of(&got), p.id());
    // Now cached at b: served from its store.
    assert!(wait_for(Duration::from_secs(5), || b.shared.store().has(&p.id())).await);
    assert_eq!(b.shared.metrics().value(Metric::PiecesFetchedTotal), 1);
    assert_eq!(a.shared.metrics().value(Metric::PiecesServedTotal), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_nobody_holds_is_not_found_at_once() {
    let a = start(None).await;
    let b = start(Some(a.addr)).await;
    let c = start(Some(a.addr)).await;
    assert!(
        wait_for(Duration::from_secs(10), || a
            .shared
            .connected_node_ids()
            .len()
            == 2)
        .await
    );
    let missing = PieceId::of(b"nobody has this");
    let started = Instant::now();
    let result = b.shared.fetch(missing, Duration::from_secs(10)).await;
    assert!(matches!(result, Err(FetchError::NotFound)), "{result:?}");
    // Every peer said DONT_HAVE: well under one ask deadline (2 s), even
    // counting the widening attempt.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_for_one_piece_share_one_fetch() {
    let (a, b) = connected_pair().await;
    let p = piece(7, 300_000);
    a.hold(&p).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let shared = Arc::clone(&b.shared);
        let id = p.id();
        tasks.push(tokio::spawn(async move {
            shared.fetch(id, Duration::from_secs(10)).await
        }));
    }
    for t in tasks {
        assert_eq!(&t.await.unwrap().unwrap(), p.bytes());
    }
    let m = b.shared.metrics();
    // Requests that found the piece already stored never started a fetch.
    assert_eq!(m.value(Metric::FetchesStartedTotal), 1);
    assert_eq!(a.shared.metrics().value(Metric::PiecesServedTotal), 1);
}
