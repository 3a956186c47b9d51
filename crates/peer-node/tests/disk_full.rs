//! A node whose disk fills up: its data dir on a small tmpfs. Uploads are
//! refused with 507 and a message that says what to do, and nothing stored
//! before is lost: every file acknowledged earlier reads back whole, then
//! and after the store is opened again.
//!
//! Mounting needs root; elsewhere the test says it is skipped and passes.
// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;

use piece_store::file::reassemble;
use piece_store::manifest::Layout;
use piece_store::{DiskStore, DiskStoreConfig, PieceStore};
use wire_format::PieceId;

use common::api::ApiNode;

/// The disk: small enough to fill with a few uploads.
const DISK_MIB: usize = 24;
/// Each upload.
const FILE_BYTES: usize = 5 << 20;

/// A tmpfs of `DISK_MIB` mounted on a temp dir, unmounted when dropped.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={DISK_MIB}m,mode=700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .status()
            .ok()?
            .success();
        mounted.then_some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_uploads_with_507_and_loses_nothing_stored() {
    let Some(disk) = SmallDisk::mount() else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let data = disk.0.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The store's own capacity is far larger: the disk fills first.
    let store = Arc::new(DiskStore::open(&data, DiskStoreConfig::new(1 << 40)).unwrap());
    let node = ApiNode::start_with_store(Arc::clone(&store) as Arc<dyn PieceStore>).await;
    let mut stored: Vec<(PieceId, Vec<u8>)> = Vec::new();
    let mut refused = None;
    for n in 0..(DISK_MIB * 2 / 5) {
        // Bytes that never repeat a piece, within a file or across files.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ (n as u64 + 1);
        let content: Vec<u8> = (0..FILE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let response = node
            .request("POST", &format!("/api/v1/files?name=f{n}"), true, &content)
            .await;
        match response.status {
            201 => {
                let manifest = response.json()["manifest"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                stored.push((manifest, content));
            }
            _ => {
                refused = Some(response);
                break;
            }
        }
    }
    let refused = refused.expect("the disk never filled");
    refused.assert_error(507);
    let message = refused.json()["error"].as_str().unwrap().to_owned();
    assert!(
        message.contains("space") || message.contains("full"),
        "{message}"
    );
    assert!(!stored.is_empty(), "nothing fit before the disk filled");
    // Everything acknowledged reads back whole, now...
    for (manifest, content) in &stored {
        let back = node
            .request("GET", &format!("/api/v1/files/{manifest}"), true, &[])
            .await;
        assert_eq!(back.status, 200, "{manifest}");
        assert!(back.body == *content, "{manifest} differs");
    }
    // ...and after the store is opened again.
    drop(node);
    drop(store);
    let reopened = DiskStore::open(&data, DiskStoreConfig::new(1 << 40)).unwrap();
    for (manifest, content) in &stored {
        let mut out = Vec::new();
        reassemble(&reopened, manifest, &Layout::STANDARD, &mut out).unwrap();
        assert!(out == *content, "{manifest} differs after reopening");
    }
    drop(reopened);
    drop(disk);
}
