//! The JSON bodies of the API that are not the swarm's own views, and
//! `error`, the one way a route says what went wrong.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use wire_format::PieceId;

use crate::swarm::PeerView;

/// Body of `GET /api/v1/peers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeersResponse {
    /// The peers.
    pub peers: Vec<PeerView>,
}

/// Body of `POST /api/v1/pieces`'s 201.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PieceStored {
    /// The piece's id: the sha256 of its bytes, lowercase hex.
    #[serde(
        serialize_with = "serialize_required_piece_id",
        deserialize_with = "deserialize_required_piece_id"
    )]
    pub sha256: PieceId,
    /// Its length in bytes.
    pub size: u64,
}

/// Body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

fn serialize_required_piece_id<S: Serializer>(id: &PieceId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn deserialize_required_piece_id<'de, D: Deserializer<'de>>(d: D) -> Result<PieceId, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// A JSON `{"error": ...}` response.
pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}
