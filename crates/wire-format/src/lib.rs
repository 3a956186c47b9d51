//! The wire protocol of the p2p piece exchange: frames, messages, limits and
//! a sans-IO, zero-copy codec.
//!
//! This crate has no networking, no async runtime and no clock. It turns
//! bytes into [`Message`]s and back, and names every number the protocol
//! fixes, so every program of the project (and its tests) share one
//! definition. The protocol is described in the repository's `docs/PROTOCOL.md`.
//!
//! # Layout
//! * [`limits`] — every size, count and timing constant of the protocol.
//! * [`piece`] — [`PieceId`] (a SHA-256 name) and [`VerifiedPiece`] (bytes
//!   proven to match their name).
//! * [`addr`] — [`PeerAddr`] in canonical form with its 18-byte wire form,
//!   and [`AddrClass`], the address classification every filter uses.
//! * [`message`] — the eight messages as types that cannot hold invalid data.
//! * [`codec`] — incremental [`Decoder`] and encoding, with [`DecodeError`]
//!   naming each violation and its numbers.

pub mod addr;
pub mod codec;
pub mod limits;
pub mod message;
pub mod piece;

pub use addr::{AddrClass, PeerAddr, host_key};
pub use codec::{DecodeError, Decoder, GiveHead};
pub use message::{
    EncodeError, Give, Hello, HelloFlags, Message, MessageType, NodeId, Peers, encode_give_header,
};
pub use piece::{PieceError, PieceHasher, PieceId, PieceIdParseError, VerifiedPiece};
