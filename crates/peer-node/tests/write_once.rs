//! A fetched file is written once: into its output, which the node's store
//! (on disk) then serves pieces from, with no copy of its own. Served only
//! while the bytes still match; a job that fails keeps what it fetched for
//! the next run, which resumes and clears the temp files up.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use peer_node::metrics::Metric;
use peer_node::testing::{content, wait_for};
use piece_store::testing::{FaultyStore, Op};
use piece_store::{DiskStore, DiskStoreConfig, FsyncPolicy, MemStore, PieceStore, StoreError};
use tempfile::TempDir;
use wire_format::limits::PIECE_MAX;
use wire_format::{Message, PieceId, VerifiedPiece};

use common::api::ApiNode;
use common::files::split;
use common::{RawPeer, SOON, TestNode};

/// A file to share: its manifest, every piece (manifests included), and
/// its data pieces' ids in file order.
struct File {
    bytes: Vec<u8>,
    manifest: PieceId,
    pieces: Vec<VerifiedPiece>,
    data: Vec<PieceId>,
}

impl File {
    fn new(name: &str, seed: u64, len: usize) -> Self {
        let bytes = content(seed, len);
        let (manifest, pieces) = split(name, &bytes);
        let data = bytes.chunks(PIECE_MAX).map(PieceId::of).collect();
        Self {
            bytes,
            manifest,
            pieces,
            data,
        }
    }

    /// A node holding the manifest and the data pieces `held` keeps.
    async fn seeder(&self, held: impl Fn(&PieceId) -> bool) -> ApiNode {
        let seeder = ApiNode::start(0).await;
        for piece in &self.pieces {
            if piece.id() == self.manifest || held(&piece.id()) {
                seeder.node.hold(piece).unwrap();
            }
        }
        seeder
    }
}

/// A node on a disk store, connected to a seeder, and the directory its
/// fetches write into.
struct Leecher {
    node: ApiNode,
    store: Arc<DiskStore>,
    out_dir: TempDir,
    _data: TempDir,
}

impl Leecher {
    async fn of(seeder: &ApiNode) -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut config = DiskStoreConfig::new(1 << 30);
        config.fsync = FsyncPolicy::Batch;
        let store = Arc::new(DiskStore::open(&data.path().join("store"), config).unwrap());
        Self {
            node: node_on(store.clone(), &[seeder]).await,
            store,
            out_dir: tempfile::tempdir().unwrap(),
            _data: data,
        }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.out_dir.path().join(name)
    }

    async fn fetch(&self, file: &File, path: &Path) -> serde_json::Value {
        self.node.fetch_file(&file.manifest.to_string(), path).await
    }
}

/// A disk store behind a fault-injecting wrapper, and its directory.
fn faulty_disk_store() -> (Arc<FaultyStore>, TempDir) {
    let data = tempfile::tempdir().unwrap();
    let store = DiskStore::open(&data.path().join("store"), DiskStoreConfig::new(1 << 30)).unwrap();
    (Arc::new(FaultyStore::new(Arc::new(store))), data)
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
    let file = File::new("once", 1, 12 * PIECE_MAX + 777);
    let seeder = file.seeder(|_| true).await;
    let leecher = Leecher::of(&seeder).await;
    let (store, out) = (&leecher.store, leecher.out("once"));
    let job = leecher.fetch(&file, &out).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&out).unwrap() == file.bytes);
    assert_eq!(names_in(leecher.out_dir.path()), vec!["once".to_owned()]);

    // The store holds the manifest itself and serves the data pieces from
    // the output: none of them has a copy in the store.
    let stats = store.stats();
    assert_eq!(stats.extents, file.data.len() as u64);
    assert_eq!(stats.pieces, 1, "only the manifest is a piece file");
    assert_eq!(store.extent_files(), vec![out.clone()]);
    assert!(file.data.iter().all(|id| store.has(id)));

    // With the seeder gone, a third node gets the whole file from the
    // leecher's output.
    seeder.node.0.stop().await.unwrap();
    let third = node_on(Arc::new(MemStore::new(1 << 30)), &[&leecher.node]).await;
    let other = leecher.out("again");
    let job = third.fetch_file(&file.manifest.to_string(), &other).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&other).unwrap() == file.bytes);
    assert!(leecher.node.node.metric(Metric::PiecesServedTotal) >= file.data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piece_whose_output_changed_is_never_sent_and_the_file_is_left_alone() {
    let file = File::new("changed", 2, 4 * PIECE_MAX);
    let seeder = file.seeder(|_| true).await;
    let leecher = Leecher::of(&seeder).await;
    let (store, out, data) = (&leecher.store, leecher.out("changed"), &file.data);
    assert_eq!(leecher.fetch(&file, &out).await["state"], "done");
    seeder.node.0.stop().await.unwrap();

    // The user edits one byte of the third piece.
    let mut edited = file.bytes.clone();
    edited[2 * PIECE_MAX + 10] ^= 0xff;
    std::fs::write(&out, &edited).unwrap();

    // A peer asking for it hears DONT_HAVE, never wrong bytes; the other
    // pieces are still served.
    let mut peer = RawPeer::extended(&leecher.node.node, 7).await;
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
    let file = File::new("resumed", 3, 10 * PIECE_MAX);
    // The seeder holds the manifest and only the first six data pieces.
    let seeder = file.seeder(|id| file.data[..6].contains(id)).await;
    let leecher = Leecher::of(&seeder).await;
    let (store, out, data) = (&leecher.store, leecher.out("resumed"), &file.data);
    let job = leecher.fetch(&file, &out).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap().starts_with("not_found"),
        "{job}"
    );
    // Its temp file stays, the pieces it wrote still indexed in it.
    let left = names_in(leecher.out_dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].ends_with(".part"), "{left:?}");
    assert!(!out.exists());
    let written = data.iter().filter(|id| store.has(id)).count();
    assert!(written > 0, "nothing was kept");

    // The seeder gets the rest; the re-run fetches only what was missing.
    for piece in &file.pieces {
        seeder.node.hold(piece).unwrap();
    }
    let before = leecher.node.node.metric(Metric::PiecesFetchedTotal);
    let job = leecher.fetch(&file, &out).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&out).unwrap() == file.bytes);
    let fetched = leecher.node.node.metric(Metric::PiecesFetchedTotal) - before;
    assert_eq!(fetched, (data.len() - written) as u64);
    // The earlier run's temp file is gone, and everything is served from
    // the output.
    assert_eq!(names_in(leecher.out_dir.path()), vec!["resumed".to_owned()]);
    assert_eq!(store.extent_files(), vec![out.clone()]);
    assert!(data.iter().all(|id| store.has(id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_taking_extents_mid_file_gets_the_rest_as_cached_pieces() {
    let file = File::new("fallback", 4, 12 * PIECE_MAX);
    // Slow enough that the job is still early when the store stops.
    let seeder = ApiNode::start_with(|c| c.max_upload_rate = Some(4 << 20)).await;
    for piece in &file.pieces {
        seeder.node.hold(piece).unwrap();
    }
    let (store, _data) = faulty_disk_store();
    let node = node_on(store.clone(), &[&seeder]).await;
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("fallback");
    let started = node.start_fetch(&file.manifest.to_string(), &out).await;
    // The writer's first (empty) add says the store keeps extents; from
    // then on every add fails, as a full extents index would.
    assert!(wait_for(SOON, || store.count(Op::AddExtents) >= 1).await);
    store.fail(Op::AddExtents, || StoreError::ExtentsFull {
        reason: "injected".into(),
    });
    let job = node.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&out).unwrap() == file.bytes);
    // Every data piece is still held: those not indexed in the output were
    // cached in the store instead.
    assert!(file.data.iter().all(|id| store.has(id)));
    let stats = store.stats();
    assert!(stats.pieces > 1, "nothing was cached: {stats:?}");
    assert_eq!(stats.pieces - 1 + stats.extents, file.data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leecher_announces_every_piece_it_fetches_to_its_connected_peers() {
    let file = File::new("told", 5, 6 * PIECE_MAX + 5);
    let seeder = file.seeder(|_| true).await;
    let leecher = Leecher::of(&seeder).await;
    let mut watcher = RawPeer::extended(&leecher.node.node, 9).await;
    let watching = wait_for(SOON, || leecher.node.node.shared.connection_count() == 2).await;
    assert!(watching, "the watcher did not connect");

    let job = leecher
        .node
        .start_fetch(&file.manifest.to_string(), &leecher.out("told"))
        .await;
    // The leecher also asks the watcher, which holds nothing; it hears a
    // HAVE for each data piece as that piece is written.
    let mut announced = std::collections::HashSet::new();
    while announced.len() < file.data.len() {
        match watcher.recv_answer().await {
            Message::WantHave(id) => watcher.send(&Message::DontHave(id)).await,
            Message::Have(id) => {
                assert!(file.data.contains(&id), "announced {id}, not a data piece");
                announced.insert(id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let done = leecher.node.wait_job(job["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(
        leecher.node.node.metric(Metric::HaveAnnouncedTotal),
        2 * file.data.len() as u64,
        "one HAVE per data piece to each of its two peers"
    );
}
