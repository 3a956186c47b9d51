//! The local API's piece routes end to end: real in-process nodes, each with
//! `api::serve` over its `NodeApi` as the binary wires it, on 127.0.0.1:0,
//! and raw HTTP/1.1 requests over a `TcpStream`. `tests/api.rs` covers the
//! routes' every status against a backend double; these check the same
//! routes reach the node's store and the swarm.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use peer_node::metrics::Metric;
use tokio::time::Instant;
use wire_format::PieceId;
use wire_format::limits::{ASK_PROGRESS_TIMEOUT, PIECE_MAX};

use common::api::ApiNode;
use common::piece;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_piece_is_stored_served_by_its_node_and_fetched_through_the_swarm_by_another() {
    let (a, b) = ApiNode::connected_pair().await;
    let p = piece(1, PIECE_MAX);
    let bytes = p.bytes().to_vec();

    let posted = a.post_piece(&bytes).await;
    assert_eq!(posted.status, 201, "{posted:?}");
    let json = posted.json();
    assert_eq!(
        json,
        serde_json::json!({"sha256": p.id().to_hex(), "size": 1_048_576})
    );
    let store = a.node.shared.store();
    assert!(store.has(&p.id()) && store.is_pinned(&p.id()));

    // From a's own store: no fetch, and nobody in its account.
    let own = a.get_piece(p.id()).await;
    own.assert_piece(p.id(), &bytes);
    assert_eq!(own.header("x-explain"), Some("[]"));
    assert_eq!(a.node.metric(Metric::FetchesStartedTotal), 0);

    // b has it only from a, through the swarm; its account says so.
    assert!(!b.node.shared.store().has(&p.id()));
    let fetched = b.get_piece(p.id()).await;
    fetched.assert_piece(p.id(), &bytes);
    assert_eq!(b.node.metric(Metric::FetchesSucceededTotal), 1);
    assert_eq!(a.node.metric(Metric::PiecesServedTotal), 1);
    // Counted as it arrived, though the connection is still open.
    assert!(b.node.metric(Metric::BytesInTotal) > PIECE_MAX as u64);
    let explain: serde_json::Value =
        serde_json::from_str(fetched.header("x-explain").unwrap()).unwrap();
    let rows = explain.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{explain}");
    let row = &rows[0];
    assert_eq!(row["peer"], a.node.addr.to_string().as_str(), "{row}");
    assert_eq!(
        (
            &row["asked"],
            &row["gave"],
            &row["dont_have"],
            &row["timed_out"]
        ),
        (&1.into(), &1.into(), &0.into(), &0.into()),
        "{row}"
    );
    assert_eq!(row["bytes"], PIECE_MAX, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_nobody_has_is_404_at_once_not_at_the_deadline() {
    let (a, b) = ApiNode::connected_pair().await;
    let missing = PieceId::of(b"nobody has this");
    let asked = Instant::now();
    // Without a `timeout` the fetch gets the node's (FETCH_TIMEOUT).
    let response = b.get_piece(missing).await;
    let took = asked.elapsed();
    response.assert_error(404);
    // a was asked and said DONT_HAVE, so there was nobody left to wait for:
    // not even one ask deadline passed.
    assert_eq!(b.node.metric(Metric::DontHaveReceivedTotal), 1);
    assert!(took < ASK_PROGRESS_TIMEOUT, "404 after {took:?}");
    assert_eq!(b.node.metric(Metric::FetchesNotFoundTotal), 1);
    assert!(!a.node.shared.store().has(&missing));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_oversized_upload_and_a_request_without_the_token_are_refused() {
    let node = ApiNode::start(0).await;
    let p = piece(2, 64 << 10);

    node.post_piece(b"").await.assert_error(400);
    node.post_piece(&vec![0x5a; PIECE_MAX + 1])
        .await
        .assert_error(413);
    node.request("POST", "/api/v1/pieces", false, p.bytes())
        .await
        .assert_error(401);
    assert!(node.node.shared.store().list().is_empty());

    // The same piece, held: still 401 without the token, 200 with it.
    node.node.hold(&p).unwrap();
    let path = format!("/api/v1/pieces/{}", p.id());
    node.request("GET", &path, false, &[])
        .await
        .assert_error(401);
    node.get_piece(p.id()).await.assert_piece(p.id(), p.bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_node_its_peers_store_and_jobs_without_the_token() {
    let (a, b) = ApiNode::connected_pair().await;
    let page = a.request("GET", "/", false, &[]).await;
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{page:?}"
    );
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(
        html.contains(&a.node.id().to_string()),
        "no node id: {html}"
    );
    assert!(
        html.contains(&format!("port {}", a.node.addr.port())),
        "no listen port: {html}"
    );
    // b is connected to a, so it has a row of its own.
    assert!(html.contains("Peers (1)"), "{html}");
    assert!(html.contains("class=\"connected\">connected"), "{html}");
    assert!(html.contains("<th>store</th>"), "{html}");
    assert!(html.contains("Fetch jobs running (0)"), "{html}");
    assert!(html.contains("Bans (0)"), "{html}");
    assert!(
        !html.contains(common::api::TOKEN),
        "the token is on the page"
    );
    assert!(!html.contains("<script"), "the page runs a script");
    drop(b);
}
