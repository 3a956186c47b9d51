//! Every number of the wire protocol (`docs/PROTOCOL.md`), as named constants.
//!
//! Sizes are in bytes unless the name says otherwise. Durations are
//! `std::time::Duration` values: this crate has no clock, it only names them
//! so every program of the project uses the same defaults.

use std::time::Duration;

/// Bytes of the little-endian `len` field that opens every frame.
pub const LEN_FIELD_BYTES: usize = 4;
/// Bytes of the type field that follows `len`.
pub const TYPE_FIELD_BYTES: usize = 1;
/// Bytes of a frame header: `len` + type.
pub const FRAME_HEADER_BYTES: usize = LEN_FIELD_BYTES + TYPE_FIELD_BYTES;
/// Bytes of a SHA-256 digest on the wire.
pub const DIGEST_BYTES: usize = 32;
/// Largest piece: 1 MiB.
pub const PIECE_MAX: usize = 1 << 20;
/// Smallest piece: pieces are never empty.
pub const PIECE_MIN: usize = 1;
/// Largest `len` value: a GIVE of a full piece (type + digest + piece).
pub const MAX_LEN: usize = TYPE_FIELD_BYTES + DIGEST_BYTES + PIECE_MAX;
/// Largest whole frame, `len` field included.
pub const MAX_FRAME_BYTES: usize = LEN_FIELD_BYTES + MAX_LEN;
/// `len` of every message whose body is exactly one digest
/// (ASK, DONT_HAVE, WANT_HAVE, HAVE, CANCEL).
pub const DIGEST_MESSAGE_LEN: usize = TYPE_FIELD_BYTES + DIGEST_BYTES;
/// Bytes a GIVE puts before its piece: `len`, type and digest.
pub const GIVE_HEADER_BYTES: usize = FRAME_HEADER_BYTES + DIGEST_BYTES;
/// Bytes of one `peer_info`: IPv6 address + u16 port.
pub const PEER_INFO_BYTES: usize = 18;
/// Most entries one PEERS frame may carry.
pub const MAX_PEERS_PER_FRAME: usize = 1024;
/// Largest PEERS `len`.
pub const MAX_PEERS_LEN: usize = TYPE_FIELD_BYTES + PEER_INFO_BYTES * MAX_PEERS_PER_FRAME;
/// HELLO magic.
pub const HELLO_MAGIC: [u8; 4] = *b"P2PN";
/// Bytes of a node id.
pub const NODE_ID_BYTES: usize = 8;
/// HELLO body: magic, version, flags, listen port, node id.
pub const HELLO_BODY_BYTES: usize = HELLO_MAGIC.len() + 1 + 1 + 2 + NODE_ID_BYTES;
/// `len` of a HELLO.
pub const HELLO_LEN: usize = TYPE_FIELD_BYTES + HELLO_BODY_BYTES;
/// Highest protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// Unanswered ASKs an asker may keep on one connection to an extended peer;
/// one more is a protocol error.
pub const MAX_ASKS_IN_FLIGHT: usize = 16;
/// Unanswered ASKs we keep in flight to a legacy peer (its excess ASKs to us
/// are dropped, not punished).
pub const LEGACY_MAX_ASKS_IN_FLIGHT: usize = 10;
/// Digests remembered per connection to match GIVEs against our ASKs.
pub const ASK_HISTORY_MAX: usize = 1024;
/// How long an ASK stays in that history.
pub const ASK_HISTORY_TTL: Duration = Duration::from_secs(10 * 60);
/// The only piece size a legacy peer can read in a GIVE.
pub const LEGACY_PIECE_BYTES: usize = 128 << 10;
/// Largest frame a legacy peer reads.
pub const LEGACY_MAX_FRAME_BYTES: usize = 256 << 10;
/// A legacy peer's repeated ASK for one digest is answered at most once per
/// this interval on one connection.
pub const LEGACY_ANSWER_INTERVAL: Duration = Duration::from_secs(30);

/// Most entries in one PEERS we send, and in the bootstrap answer.
pub const PEX_MAX_ENTRIES: usize = 50;
/// After the first PEERS on a connection, at most one per this interval.
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// Most new candidates accepted from one source per [`PEX_INTERVAL`].
pub const PEX_MAX_NEW_PER_SOURCE: usize = 50;
/// An extended peer sending more PEERS than this within [`PEX_INTERVAL`] is closed.
pub const PEX_MAX_FRAMES_PER_INTERVAL: usize = 6;
/// Cap of a node's peer table.
pub const PEER_TABLE_MAX: usize = 2000;
/// Largest share of the peer table one source, or one /24 (/48 for IPv6),
/// may fill, in percent (loopback exempt).
pub const PEER_TABLE_MAX_SHARE_PERCENT: usize = 10;
/// Lowest port accepted in a received PEERS entry.
pub const MIN_PEER_PORT: u16 = 1024;
/// An extended peer sending more unsolicited GIVEs than this within a minute is closed.
pub const MAX_UNSOLICITED_GIVES_PER_MINUTE: usize = 3;
/// Default number of new outbound connects per second.
pub const DIAL_RATE_PER_SEC: u32 = 10;

/// Deadline of a TCP connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a peer to send its HELLO before it is treated as legacy (or closed).
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// An ASK with no progress for this long is hedged to a second holder.
pub const ASK_PROGRESS_TIMEOUT: Duration = Duration::from_secs(2);
/// Total deadline of one piece fetch, from dispatch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long with nothing sent, send an empty PEERS.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// A connection with nothing received for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// A GIVE being written with no progress for this long marks a stuck reader.
pub const GIVE_WRITE_PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Nodes re-announce themselves to the bootstrap server this often.
pub const REANNOUNCE_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// A bootstrap registry entry expires this long after its last announce.
pub const REGISTRY_EXPIRY: Duration = Duration::from_secs(30 * 60);
/// A registry entry is dropped at this many failed dial-back probes.
pub const REGISTRY_MAX_FAILED_PROBES: u32 = 2;
/// How long a lie bans the liar.
pub const BAN_DURATION: Duration = Duration::from_secs(60 * 60);
/// Grace period of a graceful shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sizes_match_the_protocol_text() {
        assert_eq!(MAX_LEN, 1_048_609);
        assert_eq!(DIGEST_MESSAGE_LEN, 33);
        assert_eq!(HELLO_LEN, 17);
        assert_eq!(GIVE_HEADER_BYTES, 37);
        assert_eq!(MAX_PEERS_LEN, 1 + 18 * 1024);
    }
}
