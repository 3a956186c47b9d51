//! Whole files with the real `p2p-cli` binary against real in-process
//! nodes.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::ApiNode;

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
