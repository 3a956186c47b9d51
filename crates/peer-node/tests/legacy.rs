//! Legacy candidates (docs/PROTOCOL.md "Legacy peers"): the entries of a legacy
//! peer's PEERS become candidates at (observed IP, port from its PEERS),
//! loopback ones are dialled, and none is ever relayed to an extended peer
//! or saved in `peers.json`.
//!
//! The legacy peers here are raw sockets on loopback that behave as the
//! reference does: no HELLO, a PEERS naming itself first.

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use peer_node::api::{Direction, PeerState};
use peer_node::metrics::Metric;
use peer_node::net::{FrameReader, read_one, write_message};
use peer_node::testing::wait_for;
use tokio::net::TcpListener;
use wire_format::{AddrClass, Message, PeerAddr, Peers};

use common::{RawPeer, SOON, TestNode};

#[tokio::test]
async fn a_loopback_legacy_peers_entries_are_dialled_as_legacy_and_never_relayed_or_saved() {
    let dir = tempfile::tempdir().unwrap();
    let peers_file = dir.path().join("peers.json");
    let node = TestNode::start(|c| {
        c.target_outbound = 2;
        c.peers_file = Some(peers_file.clone());
    })
    .await;

    // The listener of another reference program, known to the legacy peer.
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let (mut legacy, _) = RawPeer::legacy(&node).await;
    // It names the other at an address that is not where it lives: the
    // candidate is taken at the IP the legacy peer is observed at.
    let named = PeerAddr::new([10, 9, 8, 7].into(), other_port);
    legacy
        .send(&Message::Peers(Peers::new(vec![named]).unwrap()))
        .await;

    // The node dials 127.0.0.1:<other_port>: HELLO first (to the reference,
    // an empty peer list), then a PEERS of loopback entries only.
    let (stream, _) = tokio::time::timeout(SOON, other.accept())
        .await
        .expect("the node dials the legacy candidate")
        .unwrap();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let first = read_one(&mut reader, SOON).await.unwrap().unwrap();
    assert!(matches!(first, Message::Hello(_)), "{first:?}");
    match read_one(&mut reader, SOON).await.unwrap().unwrap() {
        Message::Peers(peers) => {
            for entry in peers.entries() {
                assert_eq!(entry.class(), AddrClass::Loopback, "sent {entry}");
            }
        }
        other => panic!("expected PEERS, got {other:?}"),
    }
    // It answers as the reference does: a PEERS naming itself, no HELLO.
    let itself = PeerAddr::new([127, 0, 0, 1].into(), other_port);
    write_message(&mut wr, &Message::Peers(Peers::new(vec![itself]).unwrap()))
        .await
        .unwrap();
    let legacy_out = |v: &peer_node::api::PeerView| {
        v.addr == itself.socket_addr()
            && v.legacy
            && v.state == PeerState::Connected
            && v.direction == Some(Direction::Out)
    };
    assert!(
        wait_for(SOON, || node.shared.peer_views().iter().any(legacy_out)).await,
        "{:?}",
        node.shared.peer_views()
    );

    // An extended peer arriving now hears of neither legacy peer.
    let mut extended = RawPeer::connect(node.addr).await;
    extended
        .send(&Message::Hello(wire_format::Hello::ours(
            Some(common::closed_port()),
            false,
            wire_format::NodeId([0x33; 8]),
        )))
        .await;
    assert!(matches!(extended.recv().await, Message::Hello(_)));
    match extended.recv().await {
        Message::Peers(peers) => {
            assert!(
                !peers.entries().iter().any(|e| e.port() == other_port),
                "relayed a legacy peer: {peers:?}"
            );
        }
        other => panic!("expected PEERS, got {other:?}"),
    }

    // Nor does peers.json name it.
    node.0.stop().await.unwrap();
    let saved = std::fs::read_to_string(&peers_file).unwrap_or_default();
    assert!(
        !saved.contains(&format!(":{other_port}\"")),
        "saved a legacy peer: {saved}"
    );
    drop((legacy, reader, wr));
}

#[tokio::test]
async fn a_legacy_peer_off_loopback_yields_no_candidates() {
    // With `--legacy`, a peer from another host may be legacy; its entries
    // are never dialled (the hook makes loopback count as another host).
    let node = TestNode::start(|c| {
        c.legacy = true;
        c.loopback_is_local = false;
        c.target_outbound = 2;
    })
    .await;
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_port = other.local_addr().unwrap().port();
    let mut legacy = RawPeer::connect(node.addr).await;
    let entries = vec![PeerAddr::new([127, 0, 0, 1].into(), other_port)];
    legacy
        .send(&Message::Peers(Peers::new(entries).unwrap()))
        .await;
    assert!(matches!(legacy.recv().await, Message::Hello(_)));
    assert!(
        wait_for(SOON, || node.metric(Metric::PexFramesReceivedTotal) >= 1).await,
        "the PEERS was read"
    );
    assert_eq!(node.metric(Metric::PexEntriesAcceptedTotal), 0);
    assert!(
        !node
            .shared
            .peer_views()
            .iter()
            .any(|v| v.addr.port() == other_port),
        "{:?}",
        node.shared.peer_views()
    );
}
