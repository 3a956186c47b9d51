//! Sans-IO framing: incremental decoding over a `BytesMut` read buffer and
//! encoding into a `BytesMut` write buffer.
//!
//! The caller owns the read loop: append what the socket gave to the buffer,
//! call [`Decoder::decode`] until it returns `Ok(None)` ("need more bytes"),
//! and read again. A bad `len` is rejected from the 4 header bytes alone and a
//! length that is wrong for its type as soon as the type byte is there, so a
//! hostile peer never makes the caller wait for, or allocate, a body it would
//! reject. [`Decoder::frame_len`] tells the caller how large the frame at the
//! head is, so it can reserve once for a whole GIVE, and [`Decoder::give_head`]
//! names a GIVE's digest and piece length as soon as its header is in, so the
//! caller can decide what to do with the piece before its bytes arrive.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::addr::PeerAddr;
use crate::limits::{
    DIGEST_BYTES, DIGEST_MESSAGE_LEN, FRAME_HEADER_BYTES, GIVE_HEADER_BYTES, HELLO_LEN,
    HELLO_MAGIC, LEN_FIELD_BYTES, MAX_LEN, MAX_PEERS_PER_FRAME, NODE_ID_BYTES, PEER_INFO_BYTES,
    TYPE_FIELD_BYTES,
};
use crate::message::{EncodeError, Give, Hello, HelloFlags, Message, MessageType, NodeId, Peers};
use crate::piece::PieceId;

/// Why bytes from a peer are not a valid frame. Each variant names the
/// violation and carries its numbers, for the log line that closes the
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// `len` is 0: a frame has at least a type byte.
    #[error("frame len is 0")]
    LenZero,
    /// `len` exceeds [`MAX_LEN`].
    #[error("frame len {len} exceeds the maximum {max}")]
    LenTooLarge {
        /// The `len` field.
        len: u32,
        /// [`MAX_LEN`].
        max: usize,
    },
    /// A type byte no version of the protocol defines.
    #[error("unknown message type {ty}")]
    UnknownType {
        /// The type byte.
        ty: u8,
    },
    /// A fixed-size message with another length.
    #[error("{ty} frame len {len}, expected exactly {expected}")]
    WrongLen {
        /// Message type.
        ty: MessageType,
        /// The `len` field.
        len: usize,
        /// The only valid `len` for this type.
        expected: usize,
    },
    /// A GIVE with no piece bytes.
    #[error("give frame len {len} carries no piece (min len {min})")]
    GiveEmpty {
        /// The `len` field.
        len: usize,
        /// Smallest valid GIVE `len`.
        min: usize,
    },
    /// A PEERS whose body is not a whole number of entries.
    #[error("peers frame len {len} is not 1 + {entry} * n")]
    PeersLen {
        /// The `len` field.
        len: usize,
        /// Bytes per entry.
        entry: usize,
    },
    /// A PEERS with too many entries.
    #[error("peers frame has {count} entries, max {max}")]
    TooManyPeers {
        /// Entries in the frame.
        count: usize,
        /// [`MAX_PEERS_PER_FRAME`].
        max: usize,
    },
    /// A HELLO without the `P2PN` magic.
    #[error("hello magic {found:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// The four bytes received.
        found: [u8; 4],
        /// [`HELLO_MAGIC`].
        expected: [u8; 4],
    },
    /// A HELLO with version 0.
    #[error("hello version 0")]
    VersionZero,
    /// A HELLO with LISTENING and port 0.
    #[error("hello has the LISTENING flag with listen port 0")]
    ListeningPortZero,
}

impl DecodeError {
    /// Short stable name of the violation, for metrics labels.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::LenZero => "len_zero",
            Self::LenTooLarge { .. } => "len_too_large",
            Self::UnknownType { .. } => "unknown_type",
            Self::WrongLen { .. } => "wrong_len",
            Self::GiveEmpty { .. } => "give_empty",
            Self::PeersLen { .. } => "peers_len",
            Self::TooManyPeers { .. } => "too_many_peers",
            Self::BadMagic { .. } => "bad_magic",
            Self::VersionZero => "version_zero",
            Self::ListeningPortZero => "listening_port_zero",
        }
    }
}

/// Checks `len` and the type against each other; returns the type.
fn check_type_len(ty_byte: u8, len: usize) -> Result<MessageType, DecodeError> {
    let ty = MessageType::from_byte(ty_byte).ok_or(DecodeError::UnknownType { ty: ty_byte })?;
    let fixed = |expected: usize| {
        if len == expected {
            Ok(ty)
        } else {
            Err(DecodeError::WrongLen { ty, len, expected })
        }
    };
    match ty {
        MessageType::Ask
        | MessageType::DontHave
        | MessageType::WantHave
        | MessageType::Have
        | MessageType::Cancel => fixed(DIGEST_MESSAGE_LEN),
        MessageType::Hello => fixed(HELLO_LEN),
        MessageType::Give => {
            if len <= DIGEST_MESSAGE_LEN {
                Err(DecodeError::GiveEmpty {
                    len,
                    min: DIGEST_MESSAGE_LEN + 1,
                })
            } else {
                Ok(ty)
            }
        }
        MessageType::Peers => {
            let body = len - TYPE_FIELD_BYTES;
            if !body.is_multiple_of(PEER_INFO_BYTES) {
                return Err(DecodeError::PeersLen {
                    len,
                    entry: PEER_INFO_BYTES,
                });
            }
            let count = body / PEER_INFO_BYTES;
            if count > MAX_PEERS_PER_FRAME {
                return Err(DecodeError::TooManyPeers {
                    count,
                    max: MAX_PEERS_PER_FRAME,
                });
            }
            Ok(ty)
        }
    }
}

/// What the first [`GIVE_HEADER_BYTES`] of a GIVE say: the digest the sender
/// claims and how many piece bytes follow. A claim, not a verified piece.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GiveHead {
    id: PieceId,
    piece_len: usize,
}

impl GiveHead {
    /// The digest the sender claims for the piece.
    pub const fn id(&self) -> PieceId {
        self.id
    }

    /// Piece bytes that follow the header: 1 to [`PIECE_MAX`](crate::limits::PIECE_MAX).
    pub const fn piece_len(&self) -> usize {
        self.piece_len
    }

    /// The whole frame in bytes, length field included: header plus piece.
    pub const fn frame_bytes(&self) -> usize {
        GIVE_HEADER_BYTES + self.piece_len
    }
}

/// Incremental frame decoder. Stateless: every check is re-done from the
/// buffer, which costs a few comparisons and keeps the decoder impossible to
/// desynchronise.
#[derive(Debug, Default, Clone, Copy)]
pub struct Decoder;

impl Decoder {
    /// A decoder.
    pub const fn new() -> Self {
        Self
    }

    /// Validates the header at the start of `buf` as far as it is there.
    ///
    /// `Ok(None)`: not enough bytes to know the frame's size yet. `Ok(Some(n))`:
    /// the frame at the head is `n` bytes long in total (length field included)
    /// and its `len` suits its type; reserve that much to read it in one piece.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(len_bytes) = buf.first_chunk::<LEN_FIELD_BYTES>() else {
            return Ok(None);
        };
        let raw_len = u32::from_le_bytes(*len_bytes);
        if raw_len == 0 {
            return Err(DecodeError::LenZero);
        }
        let len = usize::try_from(raw_len).unwrap_or(usize::MAX);
        if len > MAX_LEN {
            return Err(DecodeError::LenTooLarge {
                len: raw_len,
                max: MAX_LEN,
            });
        }
        let Some(&ty) = buf.get(LEN_FIELD_BYTES) else {
            return Ok(None);
        };
        check_type_len(ty, len)?;
        Ok(Some(LEN_FIELD_BYTES + len))
    }

    /// The head of the GIVE at the start of `buf`, once its first
    /// [`GIVE_HEADER_BYTES`] are there.
    ///
    /// The length field and type are checked exactly as [`Decoder::frame_len`]
    /// checks them, so an error here is the error `decode` would return.
    /// `Ok(None)`: the frame at the head is not a GIVE, or its header is not
    /// all buffered yet. `Ok(Some(_))` does not mean the piece is there (or
    /// not): compare [`GiveHead::frame_bytes`] with the bytes buffered. Nothing
    /// is consumed.
    pub fn give_head(&self, buf: &[u8]) -> Result<Option<GiveHead>, DecodeError> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.get(LEN_FIELD_BYTES) != Some(&(MessageType::Give as u8)) {
            return Ok(None);
        }
        let Some(digest) = buf
            .get(FRAME_HEADER_BYTES..)
            .and_then(|rest| rest.first_chunk::<DIGEST_BYTES>())
        else {
            return Ok(None);
        };
        // frame_len refused a GIVE with no piece byte, so this never fails.
        let Some(piece_len) = total.checked_sub(GIVE_HEADER_BYTES) else {
            return Ok(None);
        };
        Ok(Some(GiveHead {
            id: PieceId::from_bytes(*digest),
            piece_len,
        }))
    }

    /// Takes one frame off the front of `buf`.
    ///
    /// `Ok(None)` means "read more bytes and call again"; nothing is consumed.
    /// On `Ok(Some(_))` exactly that frame's bytes are consumed. A GIVE's piece
    /// is split off `buf` as [`Bytes`] without copying. After an error the
    /// connection must be closed: the buffer is left as it was.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let ty = MessageType::from_byte(buf[LEN_FIELD_BYTES]).ok_or(DecodeError::UnknownType {
            ty: buf[LEN_FIELD_BYTES],
        })?;
        // Parse the body before consuming, so an invalid HELLO leaves the buffer intact.
        let body = &buf[FRAME_HEADER_BYTES..total];
        let message = match ty {
            MessageType::Give => {
                let mut frame = buf.split_to(total);
                frame.advance(FRAME_HEADER_BYTES);
                let frame: Bytes = frame.freeze();
                let id = digest_at(&frame);
                let piece = frame.slice(DIGEST_BYTES..);
                return Give::new(id, piece)
                    .map(|give| Some(Message::Give(give)))
                    .map_err(|_| DecodeError::GiveEmpty {
                        len: total - LEN_FIELD_BYTES,
                        min: DIGEST_MESSAGE_LEN + 1,
                    });
            }
            MessageType::Ask => Message::Ask(digest_at(body)),
            MessageType::DontHave => Message::DontHave(digest_at(body)),
            MessageType::WantHave => Message::WantHave(digest_at(body)),
            MessageType::Have => Message::Have(digest_at(body)),
            MessageType::Cancel => Message::Cancel(digest_at(body)),
            MessageType::Hello => Message::Hello(decode_hello(body)?),
            MessageType::Peers => {
                let entries = body
                    .chunks_exact(PEER_INFO_BYTES)
                    .filter_map(|chunk| chunk.first_chunk::<PEER_INFO_BYTES>())
                    .map(PeerAddr::from_wire)
                    .collect();
                Message::Peers(Peers::new(entries).map_err(|_| DecodeError::TooManyPeers {
                    count: body.len() / PEER_INFO_BYTES,
                    max: MAX_PEERS_PER_FRAME,
                })?)
            }
        };
        buf.advance(total);
        Ok(Some(message))
    }
}

/// The digest at the start of `body`, whose length the caller checked.
fn digest_at(body: &[u8]) -> PieceId {
    let mut digest = [0u8; DIGEST_BYTES];
    if let Some(src) = body.first_chunk::<DIGEST_BYTES>() {
        digest = *src;
    }
    PieceId::from_bytes(digest)
}

fn decode_hello(body: &[u8]) -> Result<Hello, DecodeError> {
    // The caller checked the length, so every field is there.
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&body[..4]);
    if magic != HELLO_MAGIC {
        return Err(DecodeError::BadMagic {
            found: magic,
            expected: HELLO_MAGIC,
        });
    }
    let version = body[4];
    let flags = HelloFlags(body[5]);
    let port = u16::from_le_bytes([body[6], body[7]]);
    let mut node_id = [0u8; NODE_ID_BYTES];
    node_id.copy_from_slice(&body[8..8 + NODE_ID_BYTES]);
    Hello::new(version, flags, port, NodeId(node_id)).map_err(|err| match err {
        EncodeError::VersionZero => DecodeError::VersionZero,
        _ => DecodeError::ListeningPortZero,
    })
}

impl Message {
    /// Appends the whole frame to `dst`.
    ///
    /// Every `Message` is valid by construction, so this cannot fail. For a
    /// GIVE this copies the piece; a server writes [`Give::header`] and the
    /// piece with one vectored write instead.
    pub fn encode(&self, dst: &mut BytesMut) {
        let len = self.len_field();
        dst.reserve(LEN_FIELD_BYTES + len);
        // len ≤ MAX_LEN, which fits in u32 (checked by the constructors).
        dst.put_u32_le(u32::try_from(len).unwrap_or(u32::MAX));
        dst.put_u8(self.kind() as u8);
        match self {
            Self::Ask(id)
            | Self::DontHave(id)
            | Self::WantHave(id)
            | Self::Have(id)
            | Self::Cancel(id) => dst.put_slice(id.as_bytes()),
            Self::Give(give) => {
                dst.put_slice(give.id().as_bytes());
                dst.put_slice(give.piece());
            }
            Self::Peers(peers) => {
                for entry in peers.entries() {
                    dst.put_slice(&entry.to_wire());
                }
            }
            Self::Hello(hello) => {
                dst.put_slice(&HELLO_MAGIC);
                dst.put_u8(hello.version());
                dst.put_u8(hello.flags().0);
                dst.put_u16_le(hello.raw_listen_port());
                dst.put_slice(&hello.node_id().0);
            }
        }
    }

    /// The whole frame as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MAX_FRAME_BYTES, PIECE_MAX};

    const ID: PieceId = PieceId::from_bytes([0xab; DIGEST_BYTES]);

    /// A whole GIVE frame of `piece_len` bytes of `0x5a`.
    fn give_frame(piece_len: usize) -> Vec<u8> {
        let piece = Bytes::from(vec![0x5a; piece_len]);
        let give = Give::new(ID, piece).unwrap();
        Message::Give(give).to_bytes().to_vec()
    }

    fn header(len: u32, ty: u8) -> Vec<u8> {
        let mut out = len.to_le_bytes().to_vec();
        out.push(ty);
        out
    }

    #[test]
    fn give_head_needs_exactly_the_header_bytes() {
        let wire = give_frame(1000);
        let decoder = Decoder::new();
        for cut in 0..GIVE_HEADER_BYTES {
            assert_eq!(decoder.give_head(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let head = decoder
            .give_head(&wire[..GIVE_HEADER_BYTES])
            .unwrap()
            .unwrap();
        assert_eq!(head.id(), ID);
        assert_eq!(head.piece_len(), 1000);
        assert_eq!(head.frame_bytes(), wire.len());
        // One byte more, the whole frame, or the whole frame and more: the same head.
        let mut longer = wire.clone();
        longer.extend_from_slice(&Message::Ask(ID).to_bytes());
        for cut in [GIVE_HEADER_BYTES + 1, wire.len(), longer.len()] {
            assert_eq!(decoder.give_head(&longer[..cut]), Ok(Some(head)));
        }
    }

    #[test]
    fn give_head_at_the_smallest_and_largest_piece() {
        let decoder = Decoder::new();
        for piece_len in [1, PIECE_MAX] {
            let wire = give_frame(piece_len);
            let head = decoder
                .give_head(&wire[..GIVE_HEADER_BYTES])
                .unwrap()
                .unwrap();
            assert_eq!(head.piece_len(), piece_len);
            assert_eq!(Some(head.frame_bytes()), decoder.frame_len(&wire).unwrap());
        }
        assert_eq!(give_frame(PIECE_MAX).len(), MAX_FRAME_BYTES);
    }

    #[test]
    fn give_head_is_none_for_every_other_type() {
        let decoder = Decoder::new();
        let peers = Peers::new(vec!["[::1]:8100".parse().unwrap(); 4]).unwrap();
        let hello = Hello::new(1, HelloFlags(HelloFlags::LISTENING), 7001, NodeId([1; 8]));
        let others = [
            Message::Ask(ID),
            Message::Peers(Peers::empty()),
            Message::Peers(peers),
            Message::Hello(hello.unwrap()),
            Message::DontHave(ID),
            Message::WantHave(ID),
            Message::Have(ID),
            Message::Cancel(ID),
        ];
        for message in others {
            let mut wire = message.to_bytes().to_vec();
            // Past GIVE_HEADER_BYTES even for the short ones.
            wire.extend_from_slice(&give_frame(5));
            assert!(wire.len() > GIVE_HEADER_BYTES);
            assert_eq!(decoder.give_head(&wire), Ok(None), "{message:?}");
        }
    }

    #[test]
    fn give_head_rejects_a_bad_length_as_frame_len_does() {
        let decoder = Decoder::new();
        let too_long = u32::try_from(MAX_LEN + 1).unwrap();
        let cases = [
            (header(0, 1), DecodeError::LenZero),
            (
                header(too_long, 1),
                DecodeError::LenTooLarge {
                    len: too_long,
                    max: MAX_LEN,
                },
            ),
            (
                header(u32::try_from(DIGEST_MESSAGE_LEN).unwrap(), 1),
                DecodeError::GiveEmpty {
                    len: DIGEST_MESSAGE_LEN,
                    min: DIGEST_MESSAGE_LEN + 1,
                },
            ),
            (header(34, 8), DecodeError::UnknownType { ty: 8 }),
        ];
        for (head, expected) in cases {
            // From the header bytes alone, and with a whole header's worth behind them.
            let mut padded = head.clone();
            padded.resize(GIVE_HEADER_BYTES, 0);
            for bytes in [&head, &padded] {
                assert_eq!(decoder.give_head(bytes), Err(expected.clone()));
                assert_eq!(decoder.frame_len(bytes), Err(expected.clone()));
            }
        }
        // The length alone is enough to refuse it.
        assert_eq!(
            decoder.give_head(&too_long.to_le_bytes()),
            Err(DecodeError::LenTooLarge {
                len: too_long,
                max: MAX_LEN
            })
        );
    }
}
