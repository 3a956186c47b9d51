//! Whole files with the real `p2p-cli` binary against real in-process
//! nodes: `put` on one node and `get` on another at every piece boundary, a
//! file spread over three holders, a `get` resumed after its node went
//! away, the exit code of each way a `get` fails, pins shared by two files
//! through `unpin` and `gc`, and Ctrl-C (cancel, `--detach`, attaching to
//! the job left running).

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use peer_node::files::JobState;
use piece_store::MemStore;
use rustix::process::Signal;
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use common::{ApiNode, SilentPeer, content, json_object, split, temp_files};

/// `get` of `manifest` on `node` into `path`, with `--json`.
async fn get_json(node: &ApiNode, manifest: &str, path: &std::path::Path) -> common::Run {
    node.cli(&["--json", "get", manifest, "-o", path.to_str().unwrap()])
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_get_cross_the_swarm_byte_identical_at_every_piece_boundary() {
    let (a, b) = ApiNode::connected_pair().await;
    let dir = tempfile::tempdir().unwrap();
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
        let input = dir.path().join(format!("in{n}"));
        std::fs::write(&input, &bytes).unwrap();
        let put = a.cli(&["put", input.to_str().unwrap()]).await;
        put.assert_code(0);
        let manifest = put.stdout_text().trim().to_owned();
        assert_eq!(manifest, split(&format!("in{n}"), &bytes).0.to_string());

        let output = dir.path().join(format!("out{n}"));
        let run = get_json(&b, &manifest, &output).await;
        run.assert_code(0);
        let job = json_object(&run);
        assert_eq!(job["state"], "done", "size {size}: {job}");
        assert_eq!(job["bytes_total"], size as u64, "{job}");
        let written = std::fs::read(&output).unwrap();
        assert!(written == bytes, "size {size}: the output differs");
        assert!(temp_files(dir.path()).is_empty(), "a temp file was left");
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
    // Each holds a third of the data pieces; the manifest is with the first.
    for (n, piece) in pieces.iter().enumerate() {
        let holder = if piece.id() == manifest { 0 } else { n % 3 };
        holders[holder].node.hold(piece).unwrap();
    }
    let leecher = ApiNode::start(3).await;
    leecher.connect_to(&holders.each_ref()).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("spread");
    let run = get_json(&leecher, &manifest.to_string(), &output).await;
    run.assert_code(0);
    let job = json_object(&run);
    assert_eq!(job["peers"], 3, "{job}");
    assert!(std::fs::read(&output).unwrap() == bytes);
}

/// The node under a running `get` goes away (the CLI says so, exit 4);
/// started again on the same data dir, a second `get` fetches only the
/// pieces the first did not store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_node_went_away_resumes_and_fetches_only_the_missing_pieces() {
    const DATA_PIECES: usize = 8;
    const FIRST_RUN_PIECES: usize = 3;
    let bytes = content(5, DATA_PIECES * PIECE_MAX);
    let (manifest, pieces) = split("resume", &bytes);
    let first_ids: HashSet<PieceId> = bytes
        .chunks(PIECE_MAX)
        .take(FIRST_RUN_PIECES)
        .map(PieceId::of)
        .collect();
    // The first run finds the manifest and the file's first pieces; for the
    // rest it waits on a peer that never answers, so it is stopped with
    // exactly those pieces fetched.
    let partial = ApiNode::start(0).await;
    partial.hold_all(
        pieces
            .iter()
            .filter(|p| p.id() == manifest || first_ids.contains(&p.id())),
    );
    let data = tempfile::tempdir().unwrap();
    let data = data.path().join("data");
    let leecher = ApiNode::start_on_disk(&data, |c| c.target_outbound = 1).await;
    leecher.connect_to(&[&partial]).await;
    let _silent = SilentPeer::connect(&leecher.node, 9).await;
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("resume");

    let first = leecher.spawn_cli(&["get", &manifest.to_string(), "-o", output.to_str().unwrap()]);
    leecher
        .wait_running_job(manifest, |j| {
            j.bytes_done == (FIRST_RUN_PIECES * PIECE_MAX) as u64
        })
        .await;
    leecher.stop().await;
    first
        .finish()
        .await
        .assert_code(4)
        .assert_says("no node answers");
    assert!(!output.exists());

    // What the first run stored is kept.
    let whole = ApiNode::start(0).await;
    whole.hold_all(&pieces);
    let leecher = ApiNode::start_on_disk(&data, |c| c.target_outbound = 1).await;
    let held = pieces
        .iter()
        .filter(|p| leecher.node.shared.store().has(&p.id()))
        .count();
    assert_eq!(
        held,
        1 + FIRST_RUN_PIECES,
        "the manifest and the first pieces"
    );
    leecher.connect_to(&[&whole]).await;
    let run = get_json(&leecher, &manifest.to_string(), &output).await;
    run.assert_code(0);
    assert!(std::fs::read(&output).unwrap() == bytes);
    assert_eq!(
        leecher.stat("pieces_fetched_total").await,
        (DATA_PIECES - FIRST_RUN_PIECES) as u64,
        "only the missing pieces are fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_a_manifest_nobody_has_exits_1() {
    let (_a, b) = ApiNode::connected_pair().await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("nothing");
    let manifest = PieceId::of(b"a manifest nobody has").to_string();
    let run = get_json(&b, &manifest, &output).await;
    run.assert_code(1).assert_says("not_found");
    assert_eq!(json_object(&run)["state"], "failed");
    assert!(!output.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_past_the_deadline_with_a_silent_peer_exits_3() {
    let node = ApiNode::start_with(|c| {
        c.target_outbound = 0;
        c.fetch_timeout = Duration::from_millis(300);
    })
    .await;
    let _silent = SilentPeer::connect(&node.node, 9).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("never");
    let manifest = PieceId::of(b"a manifest nobody answers for").to_string();
    node.cli(&["get", &manifest, "-o", output.to_str().unwrap()])
        .await
        .assert_code(3)
        .assert_says("deadline");
    assert!(!output.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_into_a_directory_that_does_not_exist_exits_5() {
    let node = ApiNode::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input");
    std::fs::write(&input, b"some bytes").unwrap();
    let put = node.cli(&["put", input.to_str().unwrap()]).await;
    put.assert_code(0);
    let manifest = put.stdout_text().trim().to_owned();
    let output = dir.path().join("missing-dir").join("out");
    node.cli(&["get", &manifest, "-o", output.to_str().unwrap()])
        .await
        .assert_code(5)
        .assert_says("missing-dir");
    assert!(!output.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_into_a_full_store_exits_5() {
    let bytes = content(9, 2 * PIECE_MAX);
    let (manifest, pieces) = split("big", &bytes);
    let holder = ApiNode::start(0).await;
    holder.hold_all(&pieces);
    // Room for no piece at all, not even the manifest.
    let leecher = ApiNode::start_with_store(Arc::new(MemStore::new(16)), |c| {
        c.target_outbound = 1;
    })
    .await;
    leecher.connect_to(&[&holder]).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("big");
    let run = get_json(&leecher, &manifest.to_string(), &output).await;
    run.assert_code(5).assert_says("store_full");
    assert!(!output.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_of_a_manifest_that_lies_about_the_whole_file_exits_6() {
    let bytes = content(3, 2 * PIECE_MAX + 5);
    let (_, pieces) = split("lie", &bytes);
    let (a, b) = ApiNode::connected_pair().await;
    a.hold_all(&pieces);
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
    let manifest = wire_format::VerifiedPiece::new(bytes::Bytes::from(lie)).unwrap();
    a.node.hold(&manifest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("lie");
    b.cli(&[
        "get",
        &manifest.id().to_string(),
        "-o",
        output.to_str().unwrap(),
    ])
    .await
    .assert_code(6)
    .assert_says("bad_manifest");
    assert!(!output.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpin_and_gc_drop_only_the_pieces_no_other_pinned_file_shares() {
    let shared_part = content(20, PIECE_MAX);
    let x = [shared_part.clone(), content(21, PIECE_MAX)].concat();
    let y = [shared_part, content(22, PIECE_MAX + 7)].concat();
    let node = ApiNode::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let mut manifests = Vec::new();
    for (name, bytes) in [("x", &x), ("y", &y)] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let put = node.cli(&["put", path.to_str().unwrap()]).await;
        put.assert_code(0);
        manifests.push(put.stdout_text().trim().to_owned());
    }
    // What only x has: its manifest and its second piece.
    let (_, x_pieces) = split("x", &x);
    let (_, y_pieces) = split("y", &y);
    let y_ids: HashSet<PieceId> = y_pieces.iter().map(|p| p.id()).collect();
    let only_x: Vec<_> = x_pieces
        .iter()
        .filter(|p| !y_ids.contains(&p.id()))
        .collect();
    assert_eq!(only_x.len(), 2);
    let only_x_bytes: usize = only_x.iter().map(|p| p.bytes().len()).sum();

    node.cli(&["unpin", &manifests[0]]).await.assert_code(0);
    let run = node.cli(&["--json", "gc"]).await;
    run.assert_code(0);
    let gc = json_object(&run);
    assert_eq!(gc["pieces"], only_x.len() as u64, "{gc}");
    assert_eq!(gc["bytes"], only_x_bytes as u64, "{gc}");

    let output = dir.path().join("y-again");
    node.cli(&["get", &manifests[1], "-o", output.to_str().unwrap()])
        .await
        .assert_code(0);
    assert!(std::fs::read(&output).unwrap() == y);
    let run = node.cli(&["--json", "ls"]).await;
    run.assert_code(0);
    let files = json_object(&run)["files"].clone();
    assert_eq!(files.as_array().unwrap().len(), 1, "{files}");
    assert_eq!(files[0]["manifest"], manifests[1], "{files}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_the_job_and_with_detach_leaves_it_for_the_next_get() {
    let node = ApiNode::start(0).await;
    // The only peer never answers: every job waits on it.
    let _silent = SilentPeer::connect(&node.node, 9).await;
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("never");
    let output = output.to_str().unwrap();
    let manifest = PieceId::of(b"a manifest nobody answers for");
    let m = manifest.to_string();

    // Ctrl-C: the CLI cancels its job, whose temp file goes.
    let get = node.spawn_cli(&["get", &m, "-o", output]);
    let job = node.wait_running_job(manifest, |_| true).await;
    assert_eq!(temp_files(dir.path()).len(), 1);
    get.signal(Signal::INT);
    get.finish()
        .await
        .assert_code(130)
        .assert_says("the fetch was cancelled");
    let ended = node.wait_job_ended(&job.id).await;
    assert_eq!(ended.state, JobState::Failed);
    let error = ended.error.unwrap();
    assert!(error.starts_with("cancelled:"), "{error}");
    assert!(temp_files(dir.path()).is_empty(), "the temp file was left");

    // Ctrl-C with --detach: the job goes on, and the next `get` of the
    // same file and output follows it.
    let detached = node.spawn_cli(&["get", &m, "-o", output, "--detach"]);
    let job = node.wait_running_job(manifest, |_| true).await;
    detached.signal(Signal::INT);
    detached
        .finish()
        .await
        .assert_code(130)
        .assert_says(&format!("the node goes on with the fetch (job {})", job.id));
    let mut attached = node.spawn_cli(&["--json", "get", &m, "-o", output]);
    attached.wait_stderr("already fetching this file").await;
    assert_eq!(node.job(&job.id).state, JobState::Running);
    assert_eq!(temp_files(dir.path()).len(), 1);
    // Ended from elsewhere, the job ends the CLI that follows it.
    node.node.shared.jobs().cancel(&job.id).unwrap();
    let run = attached.finish().await;
    let view = json_object(&run);
    assert_eq!(view["id"], job.id.as_str(), "{view}");
    assert!(
        view["error"].as_str().unwrap().starts_with("cancelled:"),
        "{view}"
    );
    run.assert_code(5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rehashes_the_store_and_the_fetched_files_and_exits_5_only_for_store_damage() {
    let bytes = content(30, 3 * PIECE_MAX + 11);
    let (manifest, pieces) = split("checked", &bytes);
    let seeder = ApiNode::start(0).await;
    seeder.hold_all(&pieces);
    let data = tempfile::tempdir().unwrap();
    let data = data.path().join("data");
    let node = ApiNode::start_on_disk(&data, |c| c.target_outbound = 1).await;
    node.connect_to(&[&seeder]).await;
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("checked");
    get_json(&node, &manifest.to_string(), &output)
        .await
        .assert_code(0);
    // A file of its own in the store, too.
    let own = out.path().join("own");
    std::fs::write(&own, content(31, PIECE_MAX / 2)).unwrap();
    node.cli(&["put", own.to_str().unwrap()])
        .await
        .assert_code(0);

    let run = node.cli(&["--json", "verify"]).await;
    run.assert_code(0);
    let report = json_object(&run);
    // The fetched file's 4 data pieces and its manifest, the own file's
    // piece and manifest.
    assert_eq!(report["checked"], 7, "{report}");
    assert_eq!(report["corrupt"], serde_json::json!([]), "{report}");
    assert_eq!(report["dropped"], serde_json::json!([]), "{report}");

    // The user edits the fetched file: that piece is dropped, not a failure.
    let mut edited = bytes.clone();
    edited[PIECE_MAX + 1] ^= 1;
    std::fs::write(&output, &edited).unwrap();
    let second = PieceId::of(&bytes[PIECE_MAX..2 * PIECE_MAX]);
    let run = node.cli(&["verify"]).await;
    run.assert_code(0)
        .assert_says("no longer matches the file it was served from");
    assert!(
        run.stdout_text().contains("6 pieces"),
        "{}",
        run.stdout_text()
    );
    assert!(!node.node.shared.store().has(&second));

    // A piece file of the store itself rots: exit 5, and it is named.
    let own_piece = PieceId::of(&content(31, PIECE_MAX / 2));
    let hex = own_piece.to_hex();
    let (pack, offset, _) = piece_store::disk::locate_piece(&data, &own_piece)
        .unwrap()
        .unwrap();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pack)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 1;
    file.write_all_at(&byte, offset).unwrap();
    let run = node.cli(&["verify"]).await;
    run.assert_code(5).assert_says(&hex);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_in_place_shares_a_file_without_copying_it_and_stops_sharing_what_changes() {
    let bytes = content(40, 3 * PIECE_MAX + 5);
    let data = tempfile::tempdir().unwrap();
    let data = data.path().join("data");
    let sharer = ApiNode::start_on_disk(&data, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.bin");
    std::fs::write(&file, &bytes).unwrap();
    let put = sharer
        .cli(&["put", "--in-place", file.to_str().unwrap()])
        .await;
    put.assert_code(0).assert_says("shared in place");
    let manifest = put.stdout_text().trim().to_owned();
    assert_eq!(manifest, split("shared.bin", &bytes).0.to_string());
    // Only the manifest was copied into the store.
    let stats = sharer.node.shared.store().stats();
    assert_eq!((stats.pieces, stats.extents), (1, 4));

    let fetcher = ApiNode::start(1).await;
    fetcher.connect_to(&[&sharer]).await;
    let output = dir.path().join("fetched.bin");
    get_json(&fetcher, &manifest, &output).await.assert_code(0);
    assert!(std::fs::read(&output).unwrap() == bytes);

    // The user changes the last piece: it is no longer shared, and a fetch
    // of the file ends "not found" rather than with wrong bytes (the first
    // fetcher, which holds the file too, is gone).
    fetcher.stop().await;
    let mut edited = bytes.clone();
    *edited.last_mut().unwrap() ^= 1;
    std::fs::write(&file, &edited).unwrap();
    let late = ApiNode::start(1).await;
    late.connect_to(&[&sharer]).await;
    let run = get_json(&late, &manifest, &dir.path().join("late.bin")).await;
    run.assert_code(1);
    assert!(!dir.path().join("late.bin").exists());
    assert_eq!(sharer.node.shared.store().stats().dropped_extents, 1);
}
