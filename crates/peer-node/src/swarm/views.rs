//! The shapes of `GET /api/v1/peers`: one row per peer (connected, known,
//! backing off or banned).
//!
//! Plain types; uses only wire-format.

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wire_format::{NodeId, PieceId};

/// One entry of `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// The peer's dialable listen address when known, else its source
    /// address; rendered `127.0.0.1:7001` or `[::1]:7001`.
    pub addr: SocketAddr,
    /// From its HELLO; `None` for legacy peers and peers never connected.
    #[serde(
        serialize_with = "serialize_node_id",
        deserialize_with = "deserialize_node_id"
    )]
    pub node_id: Option<NodeId>,
    /// Who opened the current connection; `None` when not connected.
    pub direction: Option<Direction>,
    /// Where the peer stands now.
    pub state: PeerState,
    /// Whether it is (or was last seen as) a legacy peer.
    pub legacy: bool,
    /// How the node learnt of it.
    pub source: PeerSource,
    /// When the current connection was established, unix seconds.
    pub connected_since: Option<u64>,
    /// Bytes received from it.
    pub bytes_in: u64,
    /// Bytes sent to it.
    pub bytes_out: u64,
    /// The last thing that went wrong with it.
    pub last_error: Option<String>,
    /// Its ban, while it lasts.
    pub ban: Option<BanView>,
}

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The peer connected to us.
    In,
    /// We connected to the peer.
    Out,
}

/// A peer's state in the peer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// A connection is open and past HELLO.
    Connected,
    /// A dial or HELLO is in progress.
    Connecting,
    /// A candidate, not connected.
    Known,
    /// Not dialled again until its backoff ends.
    Backoff,
    /// Banned for a lie (see [`PeerView::ban`]).
    Banned,
}

/// How the node learnt of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    /// From a bootstrap server's PEERS.
    Bootstrap,
    /// From another peer's PEERS.
    Pex,
    /// From `peers.json` of the previous run.
    Saved,
    /// It connected to us.
    Inbound,
    /// Named by the operator.
    Config,
}

/// A ban, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanView {
    /// What the peer did.
    pub reason: String,
    /// The piece it lied about, if the ban is for a piece.
    #[serde(
        serialize_with = "serialize_piece_id",
        deserialize_with = "deserialize_piece_id"
    )]
    pub digest: Option<PieceId>,
    /// When the ban ends, unix seconds.
    pub until: u64,
}
fn serialize_node_id<S: Serializer>(id: &Option<NodeId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn deserialize_node_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NodeId>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| {
            <[u8; 8] as hex::FromHex>::from_hex(&s)
                .map(NodeId)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
}

fn serialize_piece_id<S: Serializer>(id: &Option<PieceId>, s: S) -> Result<S::Ok, S::Error> {
    match id {
        Some(id) => s.collect_str(id),
        None => s.serialize_none(),
    }
}

fn deserialize_piece_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PieceId>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .transpose()
}
