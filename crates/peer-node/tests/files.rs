//! Whole files through the local API against real nodes: a file added with
//! `POST /api/v1/files` on one node is fetched by a job on another
//! (`POST /api/v1/fetches`), written beside its output and renamed only once
//! its whole-file hash matches; `GET /api/v1/files/{manifest}` reads a
//! complete file back. Sizes at every piece boundary, a file spread over
//! three holders, resuming from pieces already held, cancelling, attaching
//! to a running job, and a manifest that lies about the whole file.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;

use peer_node::metrics::Metric;
use peer_node::node::NodeConfig;
use peer_node::testing::wait_for;
use piece_store::Root;
use wire_format::limits::PIECE_MAX;
use wire_format::{PieceId, VerifiedPiece};

use common::api::ApiNode;
use common::files::{content, split};
use common::{RawPeer, SOON};

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".part"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_of_every_boundary_size_cross_the_swarm_byte_identical() {
    let (a, b) = ApiNode::connected_pair().await;
    let out = tempfile::tempdir().unwrap();
    let sizes = [
        0,
        1,
        PIECE_MAX - 1,
        PIECE_MAX,
        PIECE_MAX + 1,
        20 * PIECE_MAX + 12_345,
    ];
    for (n, size) in sizes.into_iter().enumerate() {
        let bytes = content(n as u64, size);
        let stored = a.post_file(&format!("f{n}"), &bytes).await;
        assert_eq!(stored["size"], size as u64);
        assert_eq!(stored["pieces"], size.div_ceil(PIECE_MAX) as u64);
        let manifest = stored["manifest"].as_str().unwrap().to_owned();
        // The adding node reads it back whole.
        let back = a
            .request("GET", &format!("/api/v1/files/{manifest}"), true, &[])
            .await;
        assert_eq!(back.status, 200, "size {size}");
        assert!(back.body == bytes, "size {size}: read back differs");

        let path = out.path().join(format!("out{n}"));
        let started = b.start_fetch(&manifest, &path).await;
        assert_eq!(started["attached"], false);
        let job = b.wait_job(started["id"].as_str().unwrap()).await;
        assert_eq!(job["state"], "done", "size {size}: {job}");
        assert_eq!(job["bytes_done"], size as u64);
        assert_eq!(job["bytes_total"], size as u64);
        let written = std::fs::read(&path).unwrap();
        assert!(written == bytes, "size {size}: the output differs");
        assert!(temp_files(out.path()).is_empty(), "a temp file was left");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_spread_over_three_nodes_is_fetched_from_all_three() {
    let bytes = content(7, 9 * PIECE_MAX + 100);
    let (manifest, pieces) = split("spread", &bytes);
    let holders = [
        ApiNode::start(0).await,
        ApiNode::start(0).await,
        ApiNode::start(0).await,
    ];
    // Each holder holds a third of the pieces; the manifest is with the first.
    let mut held = [0u64; 3];
    for (n, piece) in pieces.iter().enumerate() {
        let holder = if piece.id() == manifest { 0 } else { n % 3 };
        holders[holder].node.hold(piece).unwrap();
        held[holder] += 1;
    }
    let leecher = ApiNode::start(3).await;
    for holder in &holders {
        leecher.node.shared.add_candidate(holder.node.addr.into());
    }
    assert!(wait_for(SOON, || leecher.node.shared.connected_node_ids().len() == 3).await);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("spread");
    let started = leecher.start_fetch(&manifest.to_string(), &path).await;
    let job = leecher.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["peers"], 3, "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes);
    // Each piece from the one holder that has it, once.
    for (holder, held) in holders.iter().zip(held) {
        assert_eq!(holder.node.metric(Metric::PiecesServedTotal), held);
    }
    // The job's account says the same, peer by peer.
    let explain = job["explain"].as_array().unwrap();
    assert_eq!(explain.len(), 3, "{job}");
    for (holder, held) in holders.iter().zip(held) {
        let addr = holder.node.addr.to_string();
        let row = explain
            .iter()
            .find(|r| r["peer"] == addr.as_str())
            .unwrap_or_else(|| panic!("no row for {addr}: {job}"));
        assert_eq!(row["gave"], held, "{row}");
        assert_eq!(row["banned"], 0, "{row}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumes_from_the_pieces_already_held_and_fetches_only_the_rest() {
    let bytes = content(11, 8 * PIECE_MAX);
    let (manifest, pieces) = split("resume", &bytes);
    let (a, b) = ApiNode::connected_pair().await;
    for piece in &pieces {
        a.node.hold(piece).unwrap();
    }
    // B already holds half the data pieces (a run that was interrupted).
    let data: Vec<_> = pieces.iter().filter(|p| p.id() != manifest).collect();
    for piece in data.iter().take(4) {
        b.node.hold(piece).unwrap();
    }
    let before = b.node.metric(Metric::PiecesFetchedTotal);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("resume");
    let started = b.start_fetch(&manifest.to_string(), &path).await;
    let job = b.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes);
    // The manifest and the 4 missing pieces, nothing more.
    assert_eq!(b.node.metric(Metric::PiecesFetchedTotal) - before, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_request_attaches_to_the_running_job_and_a_cancel_removes_its_temp_file() {
    let node = ApiNode::start(0).await;
    // A peer that never answers: the job waits on it.
    let _silent = RawPeer::extended(&node.node, 9).await;
    assert!(wait_for(SOON, || node.node.shared.connection_count() == 1).await);
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("never");
    let manifest = PieceId::of(b"a manifest nobody answers for").to_string();
    let first = node.start_fetch(&manifest, &path).await;
    let second = node.start_fetch(&manifest, &path).await;
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["attached"], true);
    let id = first["id"].as_str().unwrap();
    assert!(wait_for(SOON, || temp_files(out.path()).len() == 1).await);

    let response = node
        .request("DELETE", &format!("/api/v1/fetches/{id}"), true, &[])
        .await;
    assert_eq!(response.status, 200, "{response:?}");
    let job = node.wait_job(id).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"].as_str().unwrap().starts_with("cancelled:"),
        "{job}"
    );
    assert!(temp_files(out.path()).is_empty(), "the temp file was left");
    assert!(!path.exists());
    // Unknown jobs are 404.
    node.request("GET", "/api/v1/fetches/nosuchjob", true, &[])
        .await
        .assert_error(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_that_lies_about_the_whole_file_fails_the_job_and_writes_nothing() {
    let bytes = content(3, 2 * PIECE_MAX + 5);
    let (_, pieces) = split("lie", &bytes);
    let (a, b) = ApiNode::connected_pair().await;
    for piece in &pieces {
        a.node.hold(piece).unwrap();
    }
    let data: Vec<String> = bytes
        .chunks(PIECE_MAX)
        .map(|c| PieceId::of(c).to_string())
        .collect();
    // Every piece is real; the whole-file hash is not.
    let lie = format!(
        r#"{{"p2p_manifest":1,"name":"lie","size":{},"sha256":"{}","pieces":{}}}"#,
        bytes.len(),
        PieceId::of(b"not the file"),
        serde_json::to_string(&data).unwrap()
    );
    let manifest = VerifiedPiece::new(bytes::Bytes::from(lie)).unwrap();
    a.node.hold(&manifest).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("lie");
    let started = b.start_fetch(&manifest.id().to_string(), &path).await;
    let job = b.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "failed");
    assert!(
        job["error"].as_str().unwrap().starts_with("bad_manifest:"),
        "{job}"
    );
    assert!(!path.exists());
    assert!(temp_files(out.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fetch_requests_and_incomplete_files_are_refused() {
    let node = ApiNode::start(0).await;
    let refused = |body: &str| {
        let body = body.to_owned();
        let node = &node;
        async move {
            node.request("POST", "/api/v1/fetches", true, body.as_bytes())
                .await
        }
    };
    refused(r#"{"manifest": "xyz", "path": null}"#)
        .await
        .assert_error(400);
    let id = PieceId::of(b"m").to_string();
    refused(&format!(
        r#"{{"manifest": "{id}", "path": "relative/out"}}"#
    ))
    .await
    .assert_error(400);
    refused(&format!(
        r#"{{"manifest": "{id}", "path": "/no/such/dir/out"}}"#
    ))
    .await
    .assert_error(400);
    refused(&format!(r#"{{"manifest": "{id}", "extra": 1}}"#))
        .await
        .assert_error(400);
    // A file the node does not hold whole is not served.
    node.request("GET", &format!("/api/v1/files/{id}"), true, &[])
        .await
        .assert_error(404);
    // A file needs a name.
    node.request("POST", "/api/v1/files", true, b"abc")
        .await
        .assert_error(400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stops_cancels_its_jobs_removing_their_temp_files_and_pins() {
    let node = ApiNode::start(0).await;
    let _silent = RawPeer::extended(&node.node, 9).await;
    assert!(wait_for(SOON, || node.node.shared.connection_count() == 1).await);
    let out = tempfile::tempdir().unwrap();
    let manifest = PieceId::of(b"a manifest nobody answers for");
    let started = node
        .start_fetch(&manifest.to_string(), &out.path().join("never"))
        .await;
    assert_eq!(started["attached"], false);
    assert!(wait_for(SOON, || temp_files(out.path()).len() == 1).await);
    let store = Arc::clone(node.node.shared.store());
    assert_eq!(store.roots(), vec![Root::File(manifest)]);

    let ApiNode { node, .. } = node;
    node.0.stop().await.unwrap();
    assert!(temp_files(out.path()).is_empty(), "the temp file was left");
    assert!(store.roots().is_empty(), "the job's pin was left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_holders_one_at_a_tenth_of_the_others_rate_the_fast_one_gives_most() {
    let bytes = content(13, 96 * PIECE_MAX);
    let (manifest, pieces) = split("fast-slow", &bytes);
    let capped = |rate: u64| {
        move |c: &mut NodeConfig| {
            c.target_outbound = 0;
            c.max_upload_rate = Some(rate);
        }
    };
    let fast = ApiNode::start_with(capped(40 << 20)).await;
    let slow = ApiNode::start_with(capped(4 << 20)).await;
    for piece in &pieces {
        fast.node.hold(piece).unwrap();
        slow.node.hold(piece).unwrap();
    }
    let leecher = ApiNode::start(2).await;
    leecher.node.shared.add_candidate(fast.node.addr.into());
    leecher.node.shared.add_candidate(slow.node.addr.into());
    assert!(wait_for(SOON, || leecher.node.shared.connected_node_ids().len() == 2).await);
    let out = tempfile::tempdir().unwrap();
    let started = leecher
        .start_fetch(&manifest.to_string(), &out.path().join("f"))
        .await;
    let job = leecher.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    let from = |node: &ApiNode| {
        let addr = node.node.addr.to_string();
        job["explain"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["peer"] == addr.as_str())
            .map_or(0, |r| r["bytes"].as_u64().unwrap())
    };
    let (fast_bytes, slow_bytes) = (from(&fast), from(&slow));
    // Each new piece goes to the holder with the fewest of our ASKs waiting,
    // which is the one that drains them: the slow one gets what its burst
    // and its rate allow while the fast one serves the rest.
    assert!(
        fast_bytes * 10 >= (fast_bytes + slow_bytes) * 7,
        "fast {fast_bytes} B, slow {slow_bytes} B: {job}"
    );
}
