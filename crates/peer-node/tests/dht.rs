//! Content discovery on the Mainline DHT (`--dht`), on a private DHT of
//! nodes on loopback (the `mainline` crate's testnet; no internet): nodes
//! that know nobody and share no bootstrap server find a file's holder
//! through the DHT alone, and a lookup fed many addresses dials no more
//! than its cap.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use mainline::Testnet;
use peer_node::dht::{DHT_LOOKUP_DIALS_MAX, DhtConfig, dht_key};
use peer_node::metrics::Metric;
use peer_node::node::NodeConfig;
use peer_node::testing::wait_for;
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use common::api::ApiNode;
use common::closed_port;
use common::files::content;

/// How long the DHT may take to bootstrap and announce on loopback.
const DHT_SETTLE: Duration = Duration::from_secs(30);

/// A private DHT of `n` nodes on loopback (built off the runtime: it blocks
/// until every node is seeded).
async fn testnet(n: usize) -> Testnet {
    tokio::task::spawn_blocking(move || Testnet::builder(n).build().unwrap())
        .await
        .unwrap()
}

/// A node with `--dht` joining through `bootstrap`, and no bootstrap server.
async fn dht_node(bootstrap: &[String]) -> ApiNode {
    let bootstrap = bootstrap.to_vec();
    ApiNode::start_with(move |c: &mut NodeConfig| {
        c.dht = Some(DhtConfig {
            bootstrap,
            port: None,
            bind: None,
        });
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_found_and_fetched_through_the_dht_alone() {
    let net = testnet(4).await;
    let holder = dht_node(&net.bootstrap).await;
    let bystander = dht_node(&net.bootstrap).await;
    let fetcher = dht_node(&net.bootstrap).await;
    // The DHT runs on the TCP port's number.
    assert_eq!(holder.node.shared.dht_port(), Some(holder.node.addr.port()));
    let bytes = content(11, 3 * PIECE_MAX + 77);
    let stored = holder.post_file("shared.bin", &bytes).await;
    let manifest = stored["manifest"].as_str().unwrap().to_owned();
    assert!(
        wait_for(DHT_SETTLE, || holder.node.metric(Metric::DhtAnnouncesTotal)
            >= 1)
        .await,
        "the holder never announced its file"
    );
    // Nobody knows anybody: no bootstrap server, no candidates.
    for node in [&holder, &bystander, &fetcher] {
        assert!(node.node.shared.connected_node_ids().is_empty());
    }
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("got.bin");
    let job = fetcher.fetch_file(&manifest, &path).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes, "the file differs");
    assert!(fetcher.node.metric(Metric::DhtLookupsTotal) >= 1);
    // `--explain` names the DHT as how the holder was found.
    let explain = job["explain"].as_array().unwrap();
    let row = explain
        .iter()
        .find(|r| r["gave"].as_u64() > Some(0))
        .unwrap_or_else(|| panic!("nobody gave: {job}"));
    assert_eq!(row["found"], "dht", "{job}");
    assert_eq!(row["peer"], holder.node.addr.to_string(), "{job}");
    assert_eq!(
        row["gave"].as_u64(),
        Some(4 + 1),
        "every piece and the manifest: {job}"
    );
    // The bystander was never needed.
    assert!(
        !fetcher
            .node
            .shared
            .connected_node_ids()
            .contains(&bystander.node.id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_dials_at_most_its_cap_however_many_addresses_the_dht_returns() {
    // More announcers than the cap, each naming a port nobody listens on
    // (a DHT node keeps one address per announcing node).
    let announcers = DHT_LOOKUP_DIALS_MAX + 8;
    let net = testnet(announcers).await;
    let name = PieceId::of(b"a piece nobody has");
    let key = dht_key(&name);
    let dhts: Vec<_> = net.nodes.iter().map(|n| n.clone().as_async()).collect();
    let mut announces = Vec::new();
    for dht in &dhts {
        let dht = dht.clone();
        // Distinct ports: each announcer is a distinct address.
        let port = closed_port();
        announces.push(tokio::spawn(async move {
            dht.announce_peer(key, Some(port)).await.is_ok()
        }));
    }
    let mut ok = 0;
    for a in announces {
        ok += usize::from(a.await.unwrap());
    }
    assert!(ok > DHT_LOOKUP_DIALS_MAX, "only {ok} announces landed");
    let fetcher = dht_node(&net.bootstrap).await;
    let response = fetcher.get_piece(name).await;
    response.assert_error(404);
    let found = fetcher.node.metric(Metric::DhtPeersFoundTotal);
    let dialled = fetcher.node.metric(Metric::DhtDialsTotal);
    assert!(found > 0, "the lookup found none of the announcers");
    assert!(
        found <= DHT_LOOKUP_DIALS_MAX as u64 && dialled <= DHT_LOOKUP_DIALS_MAX as u64,
        "found {found}, dialled {dialled}"
    );
    assert!(
        String::from_utf8_lossy(&response.body).contains("peers asked"),
        "{response:?}"
    );
}
