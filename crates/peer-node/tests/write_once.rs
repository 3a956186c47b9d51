//! A fetched file is written once: into its output, which the node's store
//! (on disk) then serves pieces from, with no copy of its own. Served only
//! while the bytes still match; a job that fails keeps what it fetched for
//! the next run, which resumes and clears the temp files up.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use peer_node::metrics::Metric;
use peer_node::testing::{content, split_file, wait_for};
use piece_store::{DiskStore, DiskStoreConfig, FsyncPolicy, MemStore, PieceStore};
use serde_json::{Value, json};
use tokio::time::Instant;
use wire_format::limits::PIECE_MAX;
use wire_format::{Message, PieceId, VerifiedPiece};

use common::api::ApiNode;
use common::{RawPeer, SOON, TestNode};

const JOB_DEADLINE: Duration = Duration::from_secs(60);

/// The file's manifest, its manifests and data pieces, and its data pieces'
/// ids in file order.
fn split(name: &str, bytes: &[u8]) -> (PieceId, Vec<VerifiedPiece>, Vec<PieceId>) {
    let (manifest, pieces) = split_file(name, bytes).unwrap();
    let data = bytes.chunks(PIECE_MAX).map(PieceId::of).collect();
    (manifest, pieces, data)
}

fn disk_store(dir: &Path) -> Arc<DiskStore> {
    let mut config = DiskStoreConfig::new(1 << 30);
    config.fsync = FsyncPolicy::Batch;
    Arc::new(DiskStore::open(dir, config).unwrap())
}

/// A node on `store` that dials `peers` (and nobody else), with its API.
async fn node_on(store: Arc<dyn PieceStore>, peers: &[&ApiNode]) -> ApiNode {
    let node = ApiNode::serve(
        TestNode::start_with_store(store, |c| c.target_outbound = peers.len()).await,
    )
    .await;
    for peer in peers {
        node.node.shared.add_candidate(peer.node.addr.into());
    }
    let ids: Vec<_> = peers.iter().map(|p| p.node.id()).collect();
    let connected = wait_for(SOON, || {
        let mut connected = node.node.shared.connected_node_ids();
        connected.retain(|id| ids.contains(id));
        connected.len() == ids.len()
    })
    .await;
    assert!(connected, "the nodes did not connect");
    node
}

async fn fetch(node: &ApiNode, manifest: PieceId, path: &Path) -> Value {
    let body = json!({"manifest": manifest.to_string(), "path": path.to_str().unwrap()});
    let response = node
        .request("POST", "/api/v1/fetches", true, body.to_string().as_bytes())
        .await;
    assert_eq!(response.status, 202, "{response:?}");
    let id = response.json()["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let job = node
            .request("GET", &format!("/api/v1/fetches/{id}"), true, &[])
            .await
            .json();
        if job["state"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job still running: {job}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetched_file_is_written_once_and_its_pieces_served_from_the_output() {
    let bytes = content(1, 12 * PIECE_MAX + 777);
    let (manifest, pieces, data) = split("once", &bytes);
    let seeder = ApiNode::start(0).await;
    for piece in &pieces {
        seeder.node.hold(piece).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("once");
    let store = disk_store(&dir.path().join("store"));
    let leecher = node_on(store.clone(), &[&seeder]).await;
    let job = fetch(&leecher, manifest, &out).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&out).unwrap() == bytes);
    assert_eq!(names_in(out_dir.path()), vec!["once".to_owned()]);

    // The store holds the manifest itself and serves the data pieces from
    // the output: none of them has a copy in the store.
    let stats = store.stats();
    assert_eq!(stats.extents, data.len() as u64);
    assert_eq!(stats.pieces, 1, "only the manifest is a piece file");
    assert_eq!(store.extent_files(), vec![out.clone()]);
    assert!(data.iter().all(|id| store.has(id)));

    // With the seeder gone, a third node gets the whole file from the
    // leecher's output.
    seeder.node.0.stop().await.unwrap();
    let third = node_on(Arc::new(MemStore::new(1 << 30)), &[&leecher]).await;
    let other = out_dir.path().join("again");
    let job = fetch(&third, manifest, &other).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&other).unwrap() == bytes);
    assert!(leecher.node.metric(Metric::PiecesServedTotal) >= data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_whose_output_changed_is_never_sent_and_the_file_is_left_alone() {
    let bytes = content(2, 4 * PIECE_MAX);
    let (manifest, pieces, data) = split("changed", &bytes);
    let seeder = ApiNode::start(0).await;
    for piece in &pieces {
        seeder.node.hold(piece).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("changed");
    let store = disk_store(&dir.path().join("store"));
    let leecher = node_on(store.clone(), &[&seeder]).await;
    assert_eq!(fetch(&leecher, manifest, &out).await["state"], "done");
    seeder.node.0.stop().await.unwrap();

    // The user edits one byte of the third piece.
    let mut edited = bytes.clone();
    edited[2 * PIECE_MAX + 10] ^= 0xff;
    std::fs::write(&out, &edited).unwrap();

    // A peer asking for it hears DONT_HAVE, never wrong bytes; the other
    // pieces are still served.
    let mut peer = RawPeer::extended(&leecher.node, 7).await;
    peer.send(&Message::Ask(data[2])).await;
    assert_eq!(peer.recv_answer().await, Message::DontHave(data[2]));
    peer.send(&Message::Ask(data[1])).await;
    match peer.recv_answer().await {
        Message::Give(give) => assert_eq!(give.id(), data[1]),
        other => panic!("expected the GIVE, got {other:?}"),
    }
    assert!(!store.has(&data[2]), "dropped from the index");
    assert_eq!(store.stats().dropped_extents, 1);
    assert!(
        std::fs::read(&out).unwrap() == edited,
        "the file was touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_fails_keeps_what_it_fetched_and_the_rerun_resumes_and_cleans_up() {
    let bytes = content(3, 10 * PIECE_MAX);
    let (manifest, pieces, data) = split("resumed", &bytes);
    let seeder = ApiNode::start(0).await;
    // The seeder holds the manifest and only the first six data pieces.
    let held: Vec<_> = data[..6].to_vec();
    for piece in &pieces {
        if piece.id() == manifest || held.contains(&piece.id()) {
            seeder.node.hold(piece).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("resumed");
    let store = disk_store(&dir.path().join("store"));
    let leecher = node_on(store.clone(), &[&seeder]).await;
    let job = fetch(&leecher, manifest, &out).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().starts_with("not_found"),
        "{job}"
    );
    // Its temp file stays, the pieces it wrote still indexed in it.
    let left = names_in(out_dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".part"), "{left:?}");
    assert!(!out.exists());
    let written = data.iter().filter(|id| store.has(id)).count();
    assert!(written > 0, "nothing was kept");

    // The seeder gets the rest; the re-run fetches only what was missing.
    for piece in &pieces {
        seeder.node.hold(piece).unwrap();
    }
    let before = leecher.node.metric(Metric::PiecesFetchedTotal);
    let job = fetch(&leecher, manifest, &out).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&out).unwrap() == bytes);
    let fetched = leecher.node.metric(Metric::PiecesFetchedTotal) - before;
    assert_eq!(fetched, (data.len() - written) as u64);
    // The earlier run's temp file is gone, and everything is served from
    // the output.
    assert_eq!(names_in(out_dir.path()), vec!["resumed".to_owned()]);
    assert_eq!(store.extent_files(), vec![out.clone()]);
    assert!(data.iter().all(|id| store.has(id)));
}
