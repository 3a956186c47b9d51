//! Whole files fetched over bad links. Nodes in-process on loopback, each
//! holder behind an [`ImpairedLink`] (`peer_node::testing::link`): a proxy
//! that delays, stalls on loss as TCP does, caps the rate or is cut. The
//! machines the tests run on have no `tc netem`, so the bad link is made in
//! process; `scripts/netns-swarm.sh` covers cuts and slow holders between
//! real network stacks where it can run.
//!
//! The fetcher reaches each holder only through its link. It dials the
//! links (they are its only candidates); the holders dial nobody. A holder
//! names its own address in its first PEERS, so the fetcher is told never
//! to dial the holders' own addresses ([`RunningNode::never_dial`]):
//! otherwise, once a link's connection is gone, it could fill its outbound
//! slot by dialling the holder directly, around the link. The one direct
//! connection left is a holder's dial-back probe of the fetcher (the
//! fetcher's connection reaches it as an inbound one), which carries no
//! pieces and closes at once.
//!
//! Nothing here asserts a duration: the links' delays and rates only shape
//! what the nodes' counters and the links' counters then say.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use peer_node::metrics::Metric;
use peer_node::testing::{Flow, ImpairedLink, Impairments, RunningNode, wait_for};
use serde_json::Value;
use wire_format::VerifiedPiece;
use wire_format::limits::PIECE_MAX;

use common::api::ApiNode;
use common::files::{content, split};
use common::{SOON, TestNode};

/// A holder of `pieces`, dialling nobody, behind a link with `impairments`.
async fn holder_behind(
    pieces: &[VerifiedPiece],
    impairments: Impairments,
) -> (TestNode, ImpairedLink) {
    let holder = TestNode::start(|_| {}).await;
    for piece in pieces {
        holder.hold(piece).unwrap();
    }
    let link = ImpairedLink::start(holder.addr, impairments).await.unwrap();
    (holder, link)
}

/// A node with its API, connected to each holder through its link only,
/// in the order given (so its connections' ids follow that order).
async fn fetcher_through(holders: &[(&TestNode, &ImpairedLink)]) -> ApiNode {
    let fetcher = ApiNode::start(holders.len()).await;
    for (holder, _) in holders {
        fetcher.node.never_dial(holder.addr);
    }
    for (n, (_, link)) in holders.iter().enumerate() {
        fetcher.node.shared.add_candidate(link.addr().into());
        let connected = wait_for(SOON, || fetcher.node.shared.connection_count() == n + 1).await;
        assert!(connected, "no connection through link {n}");
    }
    let ids = fetcher.node.shared.connected_node_ids();
    for (holder, _) in holders {
        assert!(ids.contains(&holder.id()), "{ids:?}");
    }
    fetcher
}

/// Every connection a node closed and every protocol error it counted, by
/// label.
fn closes(node: &RunningNode) -> BTreeMap<String, u64> {
    node.shared
        .metrics()
        .to_json_map()
        .into_iter()
        .filter(|(name, _)| {
            name.starts_with("connections_closed_total{")
                || name.starts_with("protocol_errors_total{")
        })
        .collect()
}

/// The bytes `holder` gave, by the job's account (which names a peer by
/// the address it listens at, not the link's).
fn bytes_from(job: &Value, holder: &TestNode) -> u64 {
    let addr = holder.addr.to_string();
    job["explain"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["peer"] == addr.as_str())
        .map_or(0, |row| row["bytes"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_crosses_a_link_with_delay_and_loss_intact_and_no_connection_closes() {
    let bytes = content(31, 6 * PIECE_MAX + 4_321);
    let impairments = Impairments {
        delay: Duration::from_millis(50),
        loss: 0.05,
        ..Impairments::none()
    };
    let (manifest, pieces) = split("lossy", &bytes);
    let (holder, link) = holder_behind(&pieces, impairments).await;
    let fetcher = fetcher_through(&[(&holder, &link)]).await;
    // The holder's dial-back probe of the fetcher is a connection of its
    // own, which the fetcher counts as closed once the holder has its answer.
    let probed = wait_for(SOON, || {
        fetcher.node.closed_total() == 1 && holder.metric(Metric::ProbesTotal) == 1
    })
    .await;
    assert!(probed, "{:?}", closes(&fetcher.node));
    let before = (closes(&fetcher.node), closes(&holder));

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("lossy");
    let started = fetcher.start_fetch(&manifest.to_string(), &path).await;
    let job = fetcher.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes, "the output differs");

    // Every byte crossed the link, some of it after a stall...
    let back = link.traffic(Flow::FromTarget);
    assert!(back.forwarded >= bytes.len() as u64, "{back:?}");
    assert!(back.lost > 0, "no chunk was lost: {back:?}");
    assert_eq!(link.connections(), 1);
    assert_eq!(holder.metric(Metric::ConnectionsInboundTotal), 1);
    // ...on the one connection, which nothing closed.
    assert_eq!((closes(&fetcher.node), closes(&holder)), before);
    assert_eq!(fetcher.node.shared.connected_node_ids(), vec![holder.id()]);
    assert_eq!(fetcher.node.metric(Metric::BansTotal), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_whose_holder_is_cut_off_mid_transfer_completes_from_the_other() {
    let bytes = content(32, 16 * PIECE_MAX);
    // The first holder's link is slow enough to be cut mid-piece. The
    // second one's delay makes the first answer first: it gives the
    // manifest, and then the first pieces too (a fetch asks the last
    // giver at once), so it is mid-transfer when its link is cut.
    let slow = Impairments {
        rate: Some(2 << 20),
        ..Impairments::none()
    };
    let far = Impairments {
        delay: Duration::from_millis(30),
        ..Impairments::none()
    };
    let (manifest, pieces) = split("cut", &bytes);
    let (cut_off, cut_link) = holder_behind(&pieces, slow).await;
    let (other, other_link) = holder_behind(&pieces, far).await;
    let fetcher = fetcher_through(&[(&cut_off, &cut_link), (&other, &other_link)]).await;

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("cut");
    let started = fetcher.start_fetch(&manifest.to_string(), &path).await;
    let id = started["id"].as_str().unwrap();
    // Half a piece has crossed: one is on its way.
    let midway = wait_for(Duration::from_secs(20), || {
        cut_link.traffic(Flow::FromTarget).forwarded >= (PIECE_MAX / 2) as u64
    })
    .await;
    assert!(midway, "{:?}", cut_link.traffic(Flow::FromTarget));
    cut_link.cut().await;
    let at_cut = cut_link.traffic(Flow::FromTarget);
    assert_eq!(fetcher.job(id).await["state"], "running");

    let job = fetcher.wait_job(id).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes, "the output differs");
    // Nothing more crossed the cut link, and the fetcher never reached its
    // holder another way: its one inbound connection was the link's.
    assert_eq!(cut_link.traffic(Flow::FromTarget), at_cut);
    assert_eq!(cut_link.connections(), 1);
    assert_eq!(cut_link.open_connections(), 0);
    assert_eq!(cut_off.metric(Metric::ConnectionsInboundTotal), 1);
    assert!(wait_for(SOON, || cut_off.shared.connection_count() == 0).await);
    assert_eq!(fetcher.node.shared.connected_node_ids(), vec![other.id()]);
    // What the cut-off holder gave had crossed before the cut; the rest of
    // the file came from the other one.
    let (gave_cut, gave_other) = (bytes_from(&job, &cut_off), bytes_from(&job, &other));
    assert!(gave_cut <= at_cut.forwarded, "{job}");
    assert!(gave_cut + gave_other >= bytes.len() as u64, "{job}");
    assert!(
        gave_other >= (bytes.len() as u64).saturating_sub(at_cut.forwarded),
        "{job}"
    );
}

/// The slow holder's link. A job keeps 32 piece fetches running, and the
/// first ones are spread over both holders by how many ASKs each has
/// waiting, so the slow holder gets up to 16 at once: at this rate it sends
/// them well within a fetch's 10 s deadline. (Below about 1.6 MiB/s it
/// cannot, and the job fails: the retries of the fetches that reached the
/// deadline go back to the slow holder, the last to give a piece.)
const SLOW_LINK_RATE: u64 = 4 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_holders_one_behind_a_slow_link_the_fast_one_gives_most() {
    let bytes = content(33, 64 * PIECE_MAX);
    let capped = Impairments {
        rate: Some(SLOW_LINK_RATE),
        ..Impairments::none()
    };
    let (manifest, pieces) = split("slow", &bytes);
    let (slow, slow_link) = holder_behind(&pieces, capped).await;
    let (fast, fast_link) = holder_behind(&pieces, Impairments::none()).await;
    let fetcher = fetcher_through(&[(&fast, &fast_link), (&slow, &slow_link)]).await;

    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("slow");
    let started = fetcher.start_fetch(&manifest.to_string(), &path).await;
    let job = fetcher.wait_job(started["id"].as_str().unwrap()).await;
    assert_eq!(job["state"], "done", "{job}");
    assert!(std::fs::read(&path).unwrap() == bytes, "the output differs");
    let (from_slow, from_fast) = (
        slow_link.traffic(Flow::FromTarget),
        fast_link.traffic(Flow::FromTarget),
    );
    let (gave_slow, gave_fast) = (bytes_from(&job, &slow), bytes_from(&job, &fast));
    // The slow holder gets a share of the first pieces asked; every later
    // piece goes to the holder with the fewest ASKs waiting, the one that
    // drains them. The links carried what the job's account says.
    assert!(gave_fast + gave_slow >= bytes.len() as u64, "{job}");
    assert!(
        gave_fast > gave_slow,
        "fast {gave_fast} B, slow {gave_slow} B: {job}"
    );
    assert!(from_fast.forwarded >= gave_fast, "{from_fast:?}");
    assert!(from_slow.forwarded >= gave_slow, "{from_slow:?}");
    eprintln!(
        "fast gave {gave_fast} B, slow {gave_slow} B; links forwarded {} B and {} B",
        from_fast.forwarded, from_slow.forwarded
    );
    assert_eq!(fetcher.node.metric(Metric::BansTotal), 0);
}
