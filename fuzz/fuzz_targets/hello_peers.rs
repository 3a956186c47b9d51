//! The HELLO and PEERS handling of a node, fed arbitrary bytes.
//!
//! * The first frames a connection reads: `peer_node::net::read_first_frame`
//!   over a `tokio::io::duplex` on the paused clock (so the hello deadline
//!   costs nothing), with `legacy_allowed` from an input bit. Its verdict
//!   must be the one the decoder's reading of the same bytes implies.
//! * PEERS entries offered to a `PeerTable` (`offer` and, through
//!   `legacy_candidates`, `offer_legacy`) from arbitrary sender addresses,
//!   with the clock moved between offers: never panics; the table never holds
//!   more than `PEER_TABLE_MAX` entries, nor an entry a filter drops, nor
//!   more than its share from one sender or one network; one offer never
//!   takes more than `PEX_MAX_NEW_PER_SOURCE` new entries from a sender off
//!   loopback.
//!
//! Input: byte 0 is flags (bit 0: legacy allowed), bytes 1..3 the length
//! `L` (u16 LE) of the connection's bytes that follow; the rest is offers:
//! per offer a control byte (bit 0: legacy, bit 1: IPv6 sender, bits 2..4:
//! how far the clock moves first), the sender's 4 or 16 address bytes, a
//! count, and that many 18-byte PEERS entries.

#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use peer_node::net::{ConnError, FrameReader, PeerKind, read_first_frame};
use peer_node::swarm::table::{PeerTable, Source, legacy_candidates};
use tokio::io::AsyncWriteExt;
use tokio::runtime::Runtime;
use wire_format::addr::canonical_ip;
use wire_format::limits::{
    GIVE_HEADER_BYTES, HELLO_TIMEOUT, MIN_PEER_PORT, PEER_INFO_BYTES, PEER_TABLE_MAX,
    PEER_TABLE_MAX_SHARE_PERCENT, PEX_MAX_NEW_PER_SOURCE,
};
use wire_format::{AddrClass, DecodeError, Decoder, Message, MessageType, PeerAddr};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime")
    })
}

/// What the decoder says the first frame of `bytes` is.
enum Expected {
    Message(Message),
    Error(DecodeError),
    /// A GIVE whose header is all there and whose piece is not.
    GiveHead,
    /// End of stream before a whole frame.
    Eof,
}

fn expected(bytes: &[u8]) -> Expected {
    let decoder = Decoder::new();
    let mut buf = BytesMut::from(bytes);
    match Decoder::new().decode(&mut buf) {
        Ok(Some(message)) => Expected::Message(message),
        Err(error) => Expected::Error(error),
        Ok(None) => match decoder.give_head(bytes) {
            Ok(Some(_)) if bytes.len() >= GIVE_HEADER_BYTES => Expected::GiveHead,
            _ => Expected::Eof,
        },
    }
}

fn check_first_frame(bytes: &[u8], legacy_allowed: bool) {
    let outcome = runtime().block_on(async {
        let (mut tx, rx) = tokio::io::duplex(4096);
        let owned = bytes.to_vec();
        let writer = tokio::spawn(async move {
            // The reader may stop early (an error, a GIVE's head): a failed
            // write is that, not a fault.
            let _ = tx.write_all(&owned).await;
            let _ = tx.shutdown().await;
        });
        let mut reader = FrameReader::new(rx);
        let outcome = read_first_frame(&mut reader, legacy_allowed, HELLO_TIMEOUT).await;
        drop(reader);
        let _ = writer.await;
        outcome
    });
    match (expected(bytes), outcome) {
        (Expected::Message(Message::Hello(sent)), Ok(PeerKind::Extended(read))) => {
            assert_eq!(sent, read)
        }
        (Expected::Message(message), Ok(PeerKind::Legacy(Some(read)))) => {
            assert!(legacy_allowed && !message.kind().is_extension());
            assert_eq!(message, read);
        }
        (Expected::Message(message), Err(ConnError::Rule("first_frame_not_hello"))) => {
            assert!(message.kind() != MessageType::Hello);
            assert!(!legacy_allowed || message.kind().is_extension());
        }
        (Expected::Error(sent), Err(ConnError::Protocol(read))) => assert_eq!(sent, read),
        (Expected::GiveHead, Ok(PeerKind::Legacy(None))) => assert!(legacy_allowed),
        (Expected::GiveHead, Err(ConnError::Rule("first_frame_not_hello"))) => {
            assert!(!legacy_allowed)
        }
        (Expected::Eof, Err(ConnError::Truncated { .. })) => assert!(!bytes.is_empty()),
        (Expected::Eof, Err(ConnError::Io(_))) => assert!(bytes.is_empty()),
        (_, outcome) => panic!("read_first_frame disagrees with the decoder: {outcome:?}"),
    }
}

/// The /24 or /48 of an address, as the table's network share counts it.
fn network_of(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (true, u128::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => (false, u128::from(v6) >> 80),
    }
}

fn check_table(table: &PeerTable) {
    assert!(table.len() <= PEER_TABLE_MAX, "{} entries", table.len());
    let share = PEER_TABLE_MAX * PEER_TABLE_MAX_SHARE_PERCENT / 100;
    let mut per_sender: HashMap<IpAddr, usize> = HashMap::new();
    let mut per_net: HashMap<(bool, u128), usize> = HashMap::new();
    for (addr, candidate) in table.iter() {
        assert!(addr.port() >= MIN_PEER_PORT, "{addr}");
        assert!(!addr.class().is_never_dialable(), "{addr}");
        assert_eq!(
            *addr,
            PeerAddr::new(addr.ip(), addr.port()),
            "not canonical"
        );
        let from_loopback = candidate
            .via
            .is_none_or(|via| AddrClass::of(via) == AddrClass::Loopback);
        if addr.class() == AddrClass::Loopback {
            assert!(from_loopback, "{addr} from {:?}", candidate.via);
            continue;
        }
        if let Some(via) = candidate.via
            && !from_loopback
        {
            *per_sender.entry(via).or_default() += 1;
        }
        *per_net.entry(network_of(addr.ip())).or_default() += 1;
    }
    for (sender, count) in per_sender {
        assert!(count <= share, "{count} entries from {sender}");
    }
    for (net, count) in per_net {
        assert!(count <= share, "{count} entries in {net:?}");
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if rest.len() < n {
        return None;
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let Some(&[flags, l0, l1]) = take(&mut rest, 3) else {
        return;
    };
    let first_len = usize::from(u16::from_le_bytes([l0, l1])).min(rest.len());
    let Some(first) = take(&mut rest, first_len) else {
        return;
    };
    check_first_frame(first, flags & 1 != 0);

    let mut table = PeerTable::new(flags & 2 != 0);
    let mut now = Instant::now();
    while let Some(&[control]) = take(&mut rest, 1) {
        now += match (control >> 2) & 7 {
            0..=2 => Duration::ZERO,
            3 => Duration::from_secs(1),
            4 => Duration::from_secs(59),
            5 => Duration::from_secs(60),
            6 => Duration::from_secs(61),
            _ => Duration::from_secs(3600),
        };
        let sender = if control & 2 == 0 {
            let Some(octets) = take(&mut rest, 4) else {
                return;
            };
            let octets: [u8; 4] = octets.try_into().expect("four bytes");
            IpAddr::V4(Ipv4Addr::from(octets))
        } else {
            let Some(octets) = take(&mut rest, 16) else {
                return;
            };
            let octets: [u8; 16] = octets.try_into().expect("sixteen bytes");
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let Some(&[count]) = take(&mut rest, 1) else {
            return;
        };
        let mut entries = Vec::new();
        for _ in 0..count {
            let Some(entry) = take(&mut rest, PEER_INFO_BYTES) else {
                break;
            };
            let entry: &[u8; PEER_INFO_BYTES] = entry.try_into().expect("one entry");
            entries.push(PeerAddr::from_wire(entry));
        }
        let offered = if control & 1 == 0 {
            entries.clone()
        } else {
            legacy_candidates(sender, &entries)
        };
        let (accepted, dropped) = if control & 1 == 0 {
            table.offer(sender, &offered, Source::Pex, now)
        } else {
            table.offer_legacy(sender, &offered, now)
        };
        assert_eq!(accepted + dropped.len(), offered.len());
        if AddrClass::of(canonical_ip(sender)) != AddrClass::Loopback {
            assert!(
                accepted <= PEX_MAX_NEW_PER_SOURCE,
                "{accepted} new from {sender}"
            );
        }
        check_table(&table);
    }
});
