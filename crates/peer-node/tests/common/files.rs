//! Whole files through a node's API: content to share, its pieces as
//! `add_file` makes them, and fetch jobs started and waited for.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;
use wire_format::{PieceId, VerifiedPiece};

use super::api::ApiNode;

/// How long a test waits for a job to end.
pub const JOB_DEADLINE: Duration = Duration::from_secs(60);

// Not every test binary uses it.
#[allow(unused_imports)]
pub use peer_node::testing::content;

/// The pieces and manifests of a file with `content`, as `add_file` makes them.
pub fn split(name: &str, bytes: &[u8]) -> (PieceId, Vec<VerifiedPiece>) {
    peer_node::testing::split_file(name, bytes).unwrap()
}

impl ApiNode {
    pub async fn post_file(&self, name: &str, body: &[u8]) -> Value {
        let response = self
            .request("POST", &format!("/api/v1/files?name={name}"), true, body)
            .await;
        assert_eq!(response.status, 201, "{response:?}");
        response.json()
    }

    pub async fn start_fetch(&self, manifest: &str, path: &Path) -> Value {
        let body = json!({"manifest": manifest, "path": path.to_str().unwrap()});
        let response = self
            .request("POST", "/api/v1/fetches", true, body.to_string().as_bytes())
            .await;
        assert_eq!(response.status, 202, "{response:?}");
        response.json()
    }

    pub async fn job(&self, id: &str) -> Value {
        let response = self
            .request("GET", &format!("/api/v1/fetches/{id}"), true, &[])
            .await;
        assert_eq!(response.status, 200, "{response:?}");
        response.json()
    }

    /// Fetches `manifest` into `path` with a job and waits for its end;
    /// returns its last view.
    pub async fn fetch_file(&self, manifest: &str, path: &Path) -> Value {
        let started = self.start_fetch(manifest, path).await;
        self.wait_job(started["id"].as_str().unwrap()).await
    }

    /// Polls the job until it is no longer running; returns its last view.
    pub async fn wait_job(&self, id: &str) -> Value {
        let deadline = Instant::now() + JOB_DEADLINE;
        loop {
            let job = self.job(id).await;
            if job["state"] != "running" {
                return job;
            }
            assert!(Instant::now() < deadline, "job still running: {job}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
