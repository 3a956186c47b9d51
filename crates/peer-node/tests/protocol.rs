//! docs/PROTOCOL.md §3–§4 against a real node, byte by byte: legacy peers, the
//! close-or-count table, the PEERS entry filters, keepalive and idleness,
//! self-connections. Each test starts a node on port 0 and talks raw frames
//! over a `TcpStream`; long timeouts run on tokio's paused clock.
//!
//! On the paused clock the node's dialler tick (100 ms) bounds how far the
//! clock can jump while a frame crosses loopback, so boundaries are asserted
//! as "not before the deadline, and within a second after it".

// Test code: a failed unwrap is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use peer_node::metrics::Metric;
use peer_node::net::{ConnError, read_one, write_message};
use peer_node::node::NodeConfig;
use peer_node::swarm::table::{DropReason, PeerTable};
use peer_node::testing::wait_for;
use tokio::sync::mpsc;
use tokio::time::Instant;
use wire_format::limits::{
    HELLO_LEN, HELLO_MAGIC, HELLO_TIMEOUT, IDLE_TIMEOUT, KEEPALIVE_INTERVAL, MAX_LEN,
    MAX_PEERS_PER_FRAME, MAX_UNSOLICITED_GIVES_PER_MINUTE, PEER_INFO_BYTES, PEX_MAX_ENTRIES,
    PEX_MAX_FRAMES_PER_INTERVAL, PIECE_MAX,
};
use wire_format::{AddrClass, Give, Hello, HelloFlags, Message, NodeId, PeerAddr, Peers, PieceId};

use common::{RawPeer, SOON, TestNode, closed_port, digest};

/// How late after its deadline a timed event may be observed (a few
/// dialler ticks of paused-clock skew, see the module docs).
const SLACK: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> PeerAddr {
    s.parse().unwrap()
}

fn peers(entries: &[PeerAddr]) -> Message {
    Message::Peers(Peers::new(entries.to_vec()).unwrap())
}

/// A frame as raw bytes: `len` (LE), type, body; nothing checked.
fn frame(len: usize, ty: u8, body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(len).unwrap().to_le_bytes().to_vec();
    out.push(ty);
    out.extend_from_slice(body);
    out
}

/// A HELLO frame with every field chosen by the caller.
fn hello_frame(magic: [u8; 4], version: u8, flags: u8, port: u16) -> Vec<u8> {
    let mut body = magic.to_vec();
    body.extend([version, flags]);
    body.extend(port.to_le_bytes());
    body.extend([0x42; 8]);
    frame(HELLO_LEN, 3, &body)
}

fn assert_loopback_only(peers: &Peers) {
    for entry in peers.entries() {
        assert_eq!(entry.class(), AddrClass::Loopback, "sent {entry}");
    }
}

// ---------------------------------------------------------------------------
// Legacy peers

#[tokio::test(start_paused = true)]
async fn a_legacy_loopback_peer_gets_only_core_frames_and_is_kept_while_it_repeats_itself() {
    let node = TestNode::start(|_| {}).await;
    let itself = PeerAddr::new(ip("127.0.0.1"), closed_port());
    let mut peer = RawPeer::connect(node.addr).await;
    peer.send(&peers(&[itself])).await;
    // HELLO first: 17 bytes of len, an empty list to the reference.
    let hello = peer.recv().await;
    assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
    assert_eq!(hello.len_field(), HELLO_LEN);
    let Message::Peers(first) = peer.recv().await else {
        panic!("the second frame must be PEERS");
    };
    assert_loopback_only(&first);
    assert!(
        first.entries().contains(&PeerAddr::from(node.addr)),
        "the first PEERS names the node: {first:?}"
    );
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 1);

    // Everything the node sends from now on is collected by a reader task.
    let RawPeer {
        mut reader,
        mut writer,
    } = peer;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        loop {
            match read_one(&mut reader, Duration::from_secs(3600)).await {
                Ok(Some(message)) => {
                    let _ = tx.send(message);
                }
                other => return other.map(|_| ()),
            }
        }
    });

    // The reference's rhythm: PEERS naming itself every second, for a minute,
    // and repeated ASKs, which a node holding nothing never answers.
    let ignored_before = node.metric(Metric::IgnoredFramesTotal);
    let repeats: u8 = 60;
    for i in 0..repeats {
        write_message(&mut writer, &peers(&[itself])).await.unwrap();
        if i % 10 == 0 {
            write_message(&mut writer, &Message::Ask(digest(i)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(node.shared.connection_count(), 1, "after PEERS {i}");
        assert!(!reading.is_finished(), "closed after PEERS {i}");
    }
    let excess = u64::from(repeats) + 1 - PEX_MAX_FRAMES_PER_INTERVAL as u64;
    assert!(
        wait_for(SOON, || node.metric(Metric::IgnoredFramesTotal)
            - ignored_before
            >= excess)
        .await,
        "ignored {} frames, expected at least the {excess} over the limit",
        node.metric(Metric::IgnoredFramesTotal) - ignored_before
    );
    // One more ASK, then a whole keepalive interval of watching: an answer
    // would come at once, a keepalive only at the end.
    write_message(&mut writer, &Message::Ask(digest(0xaa)))
        .await
        .unwrap();
    tokio::time::sleep(KEEPALIVE_INTERVAL + SLACK).await;
    let mut frames = Vec::new();
    while let Ok(message) = rx.try_recv() {
        frames.push(message);
    }
    let keepalives = frames
        .iter()
        .filter(|m| **m == Message::Peers(Peers::empty()))
        .count();
    assert!(
        keepalives >= 2,
        "{keepalives} keepalives in over two minutes"
    );
    for message in &frames {
        let Message::Peers(list) = message else {
            panic!(
                "a legacy peer got a {:?} frame: {message:?}",
                message.kind()
            );
        };
        assert_loopback_only(list);
    }
    assert_eq!(node.shared.connection_count(), 1);
    assert!(!reading.is_finished());
    assert_eq!(node.metric(Metric::ConnectionsOpen), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_loopback_peer_is_legacy_after_the_hello_timeout() {
    let node = TestNode::start(|_| {}).await;
    let start = Instant::now();
    let mut peer = RawPeer::connect(node.addr).await;
    let hello = match read_one(&mut peer.reader, HELLO_TIMEOUT + SLACK).await {
        Ok(Some(message)) => message,
        other => panic!("expected the node's HELLO, got {other:?}"),
    };
    let waited = start.elapsed();
    assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
    assert!(waited >= HELLO_TIMEOUT, "answered after {waited:?}");
    let Message::Peers(first) = peer.recv().await else {
        panic!("the second frame must be PEERS");
    };
    assert!(first.entries().contains(&PeerAddr::from(node.addr)));
    assert_loopback_only(&first);
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 1);
    assert_eq!(node.shared.connection_count(), 1);
}

#[tokio::test]
async fn a_peer_from_another_host_whose_first_frame_is_not_hello_is_closed() {
    let node = TestNode::start(|c| c.loopback_is_local = false).await;
    for (n, first) in [
        Message::Ask(digest(1)),
        peers(&[PeerAddr::new(ip("127.0.0.1"), closed_port())]),
    ]
    .iter()
    .enumerate()
    {
        let mut peer = RawPeer::connect(node.addr).await;
        peer.send(first).await;
        let seen = peer.expect_closed().await;
        assert!(seen.is_empty(), "answered before closing: {seen:?}");
        node.wait_closed("first_frame_not_hello", n as u64 + 1)
            .await;
    }
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 0);
    assert_eq!(node.shared.connection_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_from_another_host_is_closed_at_the_hello_timeout() {
    let node = TestNode::start(|c| c.loopback_is_local = false).await;
    let start = Instant::now();
    let mut peer = RawPeer::connect(node.addr).await;
    let seen = peer.expect_closed_within(HELLO_TIMEOUT + SLACK).await;
    let waited = start.elapsed();
    assert!(seen.is_empty(), "answered before closing: {seen:?}");
    assert!(waited >= HELLO_TIMEOUT, "closed after {waited:?}");
    node.wait_closed("hello", 1).await;
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 0);
}

#[tokio::test(start_paused = true)]
async fn with_legacy_allowed_a_peer_from_another_host_without_hello_is_kept_as_legacy() {
    let node = TestNode::start(|c| {
        c.loopback_is_local = false;
        c.legacy = true;
    })
    .await;
    // One that asks first, one that says nothing.
    let mut asking = RawPeer::connect(node.addr).await;
    asking.send(&Message::Ask(digest(1))).await;
    assert!(matches!(asking.recv().await, Message::Hello(_)));
    let Message::Peers(first) = asking.recv().await else {
        panic!("the second frame must be PEERS");
    };
    assert!(first.entries().contains(&PeerAddr::from(node.addr)));
    let start = Instant::now();
    let mut silent = RawPeer::connect(node.addr).await;
    let hello = match read_one(&mut silent.reader, HELLO_TIMEOUT + SLACK).await {
        Ok(Some(message)) => message,
        other => panic!("expected the node's HELLO, got {other:?}"),
    };
    assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
    assert!(start.elapsed() >= HELLO_TIMEOUT);
    assert!(matches!(silent.recv().await, Message::Peers(_)));
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 2);
    assert_eq!(node.shared.connection_count(), 2);
    // The ASK is never answered: the next frame is the keepalive.
    let next = read_one(&mut asking.reader, KEEPALIVE_INTERVAL + SLACK)
        .await
        .unwrap();
    assert_eq!(next, Some(Message::Peers(Peers::empty())));
    assert_eq!(node.shared.connection_count(), 2);
}

/// An unsolicited GIVE of `len` bytes: a short one is read whole, a 1 MiB
/// one is read off and dropped as it arrives; the rules are the same.
fn unsolicited_give(len: usize) -> Message {
    let piece = Bytes::from(vec![0x5a; len]);
    Message::Give(Give::new(PieceId::of(&piece), piece).unwrap())
}

#[tokio::test]
async fn a_legacy_peer_is_not_closed_for_unsolicited_gives() {
    for len in [13, PIECE_MAX] {
        let node = TestNode::start(|_| {}).await;
        let (mut peer, _) = RawPeer::legacy(&node).await;
        let give = unsolicited_give(len);
        for _ in 0..=MAX_UNSOLICITED_GIVES_PER_MINUTE {
            peer.send(&give).await;
        }
        let over = MAX_UNSOLICITED_GIVES_PER_MINUTE as u64 + 1;
        assert!(wait_for(SOON, || node.metric(Metric::UnsolicitedGivesTotal) == over).await);
        // Still open and still read: a protocol error now closes it.
        peer.send(&Message::WantHave(digest(1))).await;
        assert!(peer.expect_closed().await.is_empty());
        node.wait_closed("extension_from_legacy", 1).await;
        assert_eq!(node.closed("too_many_unsolicited_gives"), 0);
        assert_eq!(node.metric(Metric::PiecesFetchedTotal), 0);
    }
}

// ---------------------------------------------------------------------------
// What closes a connection

/// What a test peer does before the frame under test.
#[derive(Debug, Clone, Copy)]
enum Opening {
    /// Nothing: the frame under test is the first one.
    Nothing,
    /// A valid HELLO: an extended peer.
    Hello,
    /// A PEERS naming itself: a legacy peer (on loopback).
    Legacy,
}

#[tokio::test]
async fn every_close_row_closes_the_connection_and_counts_its_reason() {
    let node = TestNode::start(|_| {}).await;
    let body = [7u8; 32];
    let listening = HelloFlags::LISTENING;
    let cases: Vec<(&str, Opening, Vec<u8>, &str)> = vec![
        ("len 0", Opening::Hello, vec![0, 0, 0, 0], "len_zero"),
        (
            "len over MAX_LEN (header only)",
            Opening::Hello,
            frame(MAX_LEN + 1, 1, &[]),
            "len_too_large",
        ),
        (
            "ASK with len 34",
            Opening::Hello,
            frame(34, 0, &[0; 33]),
            "wrong_len",
        ),
        (
            "PEERS len 2",
            Opening::Hello,
            frame(2, 2, &[0]),
            "peers_len",
        ),
        (
            "PEERS of 1,025 entries (header only)",
            Opening::Hello,
            frame(1 + PEER_INFO_BYTES * (MAX_PEERS_PER_FRAME + 1), 2, &[]),
            "too_many_peers",
        ),
        (
            "GIVE without a piece",
            Opening::Hello,
            frame(33, 1, &body),
            "give_empty",
        ),
        (
            "unknown type 8",
            Opening::Hello,
            frame(33, 8, &body),
            "unknown_type",
        ),
        (
            "a second HELLO",
            Opening::Hello,
            hello_frame(HELLO_MAGIC, 1, 0, 0),
            "hello_not_first",
        ),
        (
            "HELLO with bad magic first",
            Opening::Nothing,
            hello_frame(*b"P2PX", 1, listening, 7001),
            "bad_magic",
        ),
        (
            "HELLO version 0 first",
            Opening::Nothing,
            hello_frame(HELLO_MAGIC, 0, listening, 7001),
            "version_zero",
        ),
        (
            "HELLO with LISTENING and port 0 first",
            Opening::Nothing,
            hello_frame(HELLO_MAGIC, 1, listening, 0),
            "listening_port_zero",
        ),
        (
            "WANT_HAVE from a legacy peer",
            Opening::Legacy,
            frame(33, 5, &body),
            "extension_from_legacy",
        ),
        (
            "HELLO after a legacy peer's PEERS",
            Opening::Legacy,
            hello_frame(HELLO_MAGIC, 1, 0, 0),
            "hello_not_first",
        ),
        (
            "len 0 from a legacy peer",
            Opening::Legacy,
            vec![0, 0, 0, 0],
            "len_zero",
        ),
    ];
    for (what, opening, bytes, reason) in cases {
        let before = node.closed(reason);
        let mut peer = match opening {
            Opening::Nothing => RawPeer::connect(node.addr).await,
            Opening::Hello => RawPeer::extended(&node, 9).await,
            Opening::Legacy => RawPeer::legacy(&node).await.0,
        };
        peer.send_bytes(&bytes).await;
        let seen = peer.expect_closed().await;
        assert!(seen.is_empty(), "{what}: got {seen:?} before the close");
        let counted = wait_for(SOON, || node.closed(reason) == before + 1).await;
        assert!(
            counted,
            "{what}: closed{{{reason}}} = {}",
            node.closed(reason)
        );
        assert!(
            wait_for(SOON, || node.shared.connection_count() == 0).await,
            "{what}: still registered"
        );
    }
}

#[tokio::test]
async fn the_seventh_peers_frame_in_a_minute_closes_an_extended_peer() {
    let node = TestNode::start(|_| {}).await;
    let mut peer = RawPeer::extended(&node, 9).await;
    // Keepalives (empty PEERS) are not counted against the limit.
    for _ in 0..10 {
        peer.send(&Message::Peers(Peers::empty())).await;
    }
    let list = peers(&[addr("192.0.2.1:7001")]);
    for _ in 0..PEX_MAX_FRAMES_PER_INTERVAL {
        peer.send(&list).await;
    }
    peer.assert_answers(1).await; // at the limit: kept
    assert_eq!(node.shared.connection_count(), 1);
    assert_eq!(node.closed("too_many_peers_frames"), 0);
    peer.send(&list).await;
    assert!(peer.expect_closed().await.is_empty());
    node.wait_closed("too_many_peers_frames", 1).await;
    assert_eq!(node.shared.connection_count(), 0);
}

#[tokio::test]
async fn the_fourth_unsolicited_give_in_a_minute_closes_an_extended_peer() {
    for len in [12, PIECE_MAX] {
        let node = TestNode::start(|_| {}).await;
        let mut peer = RawPeer::extended(&node, 9).await;
        let give = unsolicited_give(len);
        for _ in 0..MAX_UNSOLICITED_GIVES_PER_MINUTE {
            peer.send(&give).await;
        }
        peer.assert_answers(1).await; // at the limit: ignored, counted, kept
        let at_limit = MAX_UNSOLICITED_GIVES_PER_MINUTE as u64;
        assert_eq!(node.metric(Metric::UnsolicitedGivesTotal), at_limit);
        assert_eq!(node.closed("too_many_unsolicited_gives"), 0);
        peer.send(&give).await;
        assert!(peer.expect_closed().await.is_empty());
        node.wait_closed("too_many_unsolicited_gives", 1).await;
        assert_eq!(node.metric(Metric::UnsolicitedGivesTotal), at_limit + 1);
    }
}

// ---------------------------------------------------------------------------
// What is only counted

#[tokio::test]
async fn ignored_frames_from_an_extended_peer_are_counted_and_the_connection_kept() {
    let node = TestNode::start(|_| {}).await;
    let mut peer = RawPeer::extended(&node, 9).await;
    peer.send(&Message::DontHave(digest(1))).await;
    peer.send(&Message::Have(digest(2))).await;
    peer.send(&Message::Cancel(digest(3))).await;
    let sixty: Vec<PeerAddr> = (0..60u8)
        .map(|i| PeerAddr::new(ip(&format!("192.0.2.{i}")), 7001))
        .collect();
    peer.send(&peers(&sixty)).await;
    peer.send(&Message::Peers(Peers::empty())).await;
    // Frames are handled in order, so each answer proves all of the above
    // were handled (and counted) without closing.
    peer.assert_answers(4).await;
    peer.send(&Message::WantHave(digest(5))).await;
    assert_eq!(peer.recv_answer().await, Message::DontHave(digest(5)));

    // A HAVE nobody asked for is an announcement, remembered, not ignored.
    assert_eq!(node.metric(Metric::IgnoredFramesTotal), 2);
    assert_eq!(node.metric(Metric::HaveAnnouncementsReceivedTotal), 1);
    assert_eq!(node.metric(Metric::PexFramesReceivedTotal), 2);
    let excess = (sixty.len() - PEX_MAX_ENTRIES) as u64;
    assert_eq!(node.dropped("over_50"), excess);
    assert_eq!(node.dropped("undialable"), PEX_MAX_ENTRIES as u64);
    assert_eq!(node.metric(Metric::PexEntriesDroppedTotal), 60);
    assert_eq!(node.shared.connection_count(), 1);
}

// ---------------------------------------------------------------------------
// PEERS entries a node drops

#[tokio::test]
async fn undialable_peers_entries_are_dropped_and_counted_by_reason() {
    // A peer from "another host" (no loopback exemptions for its HELLO). Its
    // real address is still 127.0.0.1, which the entry filter sees as
    // loopback: the loopback and private kinds are tested on the table below.
    let node = TestNode::start(|c| c.loopback_is_local = false).await;
    let kinds = [
        ("127.0.0.1:0", DropReason::Port),
        ("127.0.0.1:1023", DropReason::Port),
        ("0.0.0.0:7001", DropReason::Undialable),
        ("[::]:7001", DropReason::Undialable),
        ("224.0.0.1:7001", DropReason::Undialable),
        ("[ff02::1]:7001", DropReason::Undialable),
        ("255.255.255.255:7001", DropReason::Undialable),
        ("169.254.1.1:7001", DropReason::Undialable),
        ("[fe80::1]:7001", DropReason::Undialable),
        ("192.0.2.1:7001", DropReason::Undialable),
        ("[2001:db8::1]:7001", DropReason::Undialable),
        ("240.0.0.1:7001", DropReason::Undialable),
        ("[100::1]:7001", DropReason::Undialable),
    ];
    for (n, (entry, reason)) in kinds.iter().enumerate() {
        let before = node.dropped(reason.label());
        let mut peer = RawPeer::extended(&node, u8::try_from(n).unwrap()).await;
        peer.send(&peers(&[addr(entry)])).await;
        peer.assert_answers(1).await;
        assert_eq!(node.dropped(reason.label()), before + 1, "{entry}");
        assert_eq!(
            node.metric(Metric::PexEntriesDroppedTotal),
            n as u64 + 1,
            "{entry}: counted under another reason"
        );
        drop(peer);
        assert!(wait_for(SOON, || node.shared.connection_count() == 0).await);
    }
    assert_eq!(node.metric(Metric::PexEntriesAcceptedTotal), 0);
    for view in node.shared.peer_views() {
        let listed = kinds
            .iter()
            .any(|(e, _)| addr(e).socket_addr() == view.addr);
        assert!(!listed, "{:?} is listed", view.addr);
    }
}

#[test]
fn loopback_and_private_entries_from_a_public_sender_are_dropped() {
    let table = PeerTable::new(false);
    let public = ip("8.8.8.8");
    for (entry, reason) in [
        ("127.0.0.1:7001", DropReason::Loopback),
        ("[::ffff:127.0.0.1]:7001", DropReason::Loopback),
        ("10.1.2.3:7001", DropReason::Private),
        ("[::ffff:10.1.2.3]:7001", DropReason::Private),
    ] {
        assert_eq!(table.filter(public, &addr(entry)), Some(reason), "{entry}");
    }
    // The sender's class comes from its real address: on loopback, loopback
    // entries are fine (docs/PROTOCOL.md: "loopback unless the sender is on
    // loopback").
    assert_eq!(table.filter(ip("127.0.0.1"), &addr("127.0.0.1:7001")), None);
    assert_eq!(
        table.filter(ip("127.0.0.1"), &addr("[::ffff:127.0.0.1]:7001")),
        None
    );
}

// ---------------------------------------------------------------------------
// Keepalive and idleness

#[tokio::test(start_paused = true)]
async fn the_node_sends_an_empty_peers_after_a_keepalive_interval_of_silence() {
    let node = TestNode::start(|_| {}).await;
    let mut peer = RawPeer::extended(&node, 9).await;
    // The node's last send was the PEERS the handshake just read.
    let mut last = Instant::now();
    for _ in 0..2 {
        let next = read_one(&mut peer.reader, 2 * KEEPALIVE_INTERVAL)
            .await
            .unwrap();
        let waited = last.elapsed();
        assert_eq!(next, Some(Message::Peers(Peers::empty())));
        assert!(waited >= KEEPALIVE_INTERVAL, "keepalive after {waited:?}");
        assert!(
            waited < KEEPALIVE_INTERVAL + SLACK,
            "keepalive after {waited:?}"
        );
        last = Instant::now();
    }
    assert_eq!(node.shared.connection_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_extended_peer_is_closed_at_the_idle_timeout() {
    let node = TestNode::start(|_| {}).await;
    let start = Instant::now();
    let mut peer = RawPeer::extended(&node, 9).await;
    let seen = peer.expect_closed_within(IDLE_TIMEOUT + SLACK).await;
    let waited = start.elapsed();
    assert!(waited >= IDLE_TIMEOUT, "closed after {waited:?}");
    // Only keepalives came meanwhile.
    assert!(
        seen.iter().all(|m| *m == Message::Peers(Peers::empty())),
        "{seen:?}"
    );
    assert!(seen.len() >= 4, "{} keepalives in 5 minutes", seen.len());
    node.wait_closed("idle", 1).await;
}

#[tokio::test(start_paused = true)]
async fn a_peer_sending_a_keepalive_every_four_minutes_is_never_idle() {
    let node = TestNode::start(|_| {}).await;
    let mut peer = RawPeer::extended(&node, 9).await;
    let every = Duration::from_secs(4 * 60);
    for round in 0..3 {
        tokio::time::sleep(every).await;
        assert_eq!(node.shared.connection_count(), 1, "round {round}");
        peer.send(&Message::Peers(Peers::empty())).await;
    }
    // Twelve minutes: more than twice the idle timeout.
    assert!(every * 3 > 2 * IDLE_TIMEOUT);
    peer.assert_answers(1).await;
    assert_eq!(node.closed("idle"), 0);
}

// ---------------------------------------------------------------------------
// Peer exchange

#[tokio::test(start_paused = true)]
async fn a_node_told_its_own_address_drops_it_and_never_dials_itself() {
    // The node knows its own address on this connection (its local IP and
    // listen port), so a PEERS naming it is dropped as ours; the first
    // self-connection of a node that could not know it yet is covered in
    // swarm.rs.
    let node = TestNode::start(|c| c.target_outbound = 8).await;
    let mut peer = RawPeer::extended(&node, 9).await;
    peer.send(&peers(&[PeerAddr::from(node.addr)])).await;
    peer.assert_answers(1).await;
    assert_eq!(node.metric(Metric::PexEntriesAcceptedTotal), 0);
    assert_eq!(node.dropped("self"), 1);
    // Its own address would be its only candidate. The dialler ticks on the
    // paused clock, so a minute of it (hundreds of ticks, well over a
    // backoff) has run when this sleep ends, and it has dialled nothing.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(node.metric(Metric::DialAttemptsTotal), 0);
    assert_eq!(node.metric(Metric::SelfConnectionsTotal), 0);
    let own = node.addr;
    assert!(
        node.shared.peer_views().iter().all(|v| v.addr != own),
        "its own address is in the table: {:?}",
        node.shared.peer_views()
    );
}

#[tokio::test]
async fn a_client_hello_gets_the_same_answers_and_is_never_recorded() {
    let node = TestNode::start(|_| {}).await;
    let mut client = RawPeer::connect(node.addr).await;
    let hello = Hello::ours(Some(closed_port()), true, NodeId([9; 8]));
    client.send(&Message::Hello(hello)).await;
    assert!(matches!(client.recv().await, Message::Hello(_)));
    assert!(matches!(client.recv().await, Message::Peers(_)));
    client.assert_answers(1).await;
    assert_eq!(node.shared.connection_count(), 0);
    assert_eq!(node.metric(Metric::ProbesTotal), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dual_stack_listener_sees_ipv4_peers_in_canonical_form() {
    // Listening on [::] with IPV6_V6ONLY off: an IPv4 peer arrives as
    // ::ffff:127.0.0.1, and only its canonical form (127.0.0.1, loopback)
    // earns the loopback exemption that lets a silent peer be legacy.
    let node = TestNode::start(|config| config.listen = "[::]:0".parse().unwrap()).await;
    let v4 = SocketAddr::from(([127, 0, 0, 1], node.addr.port()));
    let start = Instant::now();
    let mut peer = RawPeer::connect(v4).await;
    match read_one(&mut peer.reader, HELLO_TIMEOUT + SLACK).await {
        Ok(Some(Message::Hello(_))) => {}
        other => panic!("expected the node's HELLO, got {other:?}"),
    }
    assert!(start.elapsed() >= HELLO_TIMEOUT);
    let Message::Peers(first) = peer.recv().await else {
        panic!("the second frame must be PEERS");
    };
    // Our own address as the peer sees it: IPv4, not the mapped form.
    assert!(
        first
            .entries()
            .iter()
            .any(|e| e.ip() == ip("127.0.0.1") && e.port() == node.addr.port()),
        "{first:?}"
    );
    assert_eq!(node.metric(Metric::LegacyPeersTotal), 1);
    assert_eq!(node.shared.connection_count(), 1);
}

#[tokio::test]
async fn inbound_connections_stop_at_the_global_limit_less_the_outbound_slots() {
    // max_connections 4 with 2 outbound slots reserved: 2 inbound accepted,
    // the third refused at once; loopback is exempt from the per-IP limit
    // but not from these.
    let node = TestNode::start(|config| {
        config.max_connections = 4;
        config.target_outbound = 2;
    })
    .await;
    assert_eq!(NodeConfig::new(node.addr).max_inbound(), 64 - 8);
    let first = RawPeer::extended(&node, 1).await;
    let second = RawPeer::extended(&node, 2).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    let mut third = RawPeer::connect(node.addr).await;
    // Refused before any frame: the socket just closes.
    assert!(matches!(
        read_one(&mut third.reader, SOON).await,
        Ok(None) | Err(ConnError::Io(_) | ConnError::Truncated { .. })
    ));
    assert_eq!(node.metric(Metric::ConnectionsRejectedTotal), 1);
    assert_eq!(node.shared.connection_count(), 2);
    // A freed slot is taken again.
    drop(first);
    assert!(wait_for(SOON, || node.shared.open_connections() == 1).await);
    let _again = RawPeer::extended(&node, 3).await;
    assert!(wait_for(SOON, || node.shared.connection_count() == 2).await);
    drop(second);
}
