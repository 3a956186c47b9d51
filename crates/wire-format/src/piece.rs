//! Piece names and verified pieces.

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::limits::{DIGEST_BYTES, PIECE_MAX, PIECE_MIN};

/// The name of a piece: the SHA-256 of exactly its bytes.
///
/// Parsed from exactly 64 hex characters (either case), shown as lowercase hex,
/// the way `sha256sum` prints it. On the wire it is the 32 raw digest bytes in
/// that same order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PieceId([u8; DIGEST_BYTES]);

impl PieceId {
    /// The id from raw digest bytes, as carried on the wire.
    pub const fn from_bytes(bytes: [u8; DIGEST_BYTES]) -> Self {
        Self(bytes)
    }

    /// The SHA-256 of `data`. Costs about 0.5 ms per MiB: call it off async
    /// runtimes (a blocking pool or a dedicated thread) for large inputs.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; DIGEST_BYTES] {
        &self.0
    }

    /// The lowercase hex form (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first byte, used to shard stores.
    pub const fn first_byte(&self) -> u8 {
        self.0[0]
    }
}

impl fmt::Display for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; DIGEST_BYTES * 2];
        // Cannot fail: the buffer is exactly twice the input length.
        hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceId({self})")
    }
}

/// Why a string is not a [`PieceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceIdParseError {
    /// Not 64 characters long.
    #[error("a piece id is 64 hex characters, got {len}")]
    Length {
        /// Characters given.
        len: usize,
    },
    /// A character that is not a hex digit.
    #[error("a piece id is hex, got {found:?} at position {index}")]
    NotHex {
        /// Offending character.
        found: char,
        /// Its position.
        index: usize,
    },
}

impl FromStr for PieceId {
    type Err = PieceIdParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != DIGEST_BYTES * 2 {
            return Err(PieceIdParseError::Length {
                len: s.chars().count(),
            });
        }
        if let Some((index, found)) = s.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(PieceIdParseError::NotHex { found, index });
        }
        let mut out = [0u8; DIGEST_BYTES];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| PieceIdParseError::Length { len: s.len() })?;
        Ok(Self(out))
    }
}

/// Why bytes are not a valid piece.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PieceError {
    /// Pieces are 1 to [`PIECE_MAX`] bytes.
    #[error("a piece is {min} to {max} bytes, got {len}")]
    Size {
        /// Bytes given.
        len: usize,
        /// [`PIECE_MIN`].
        min: usize,
        /// [`PIECE_MAX`].
        max: usize,
    },
    /// The bytes do not hash to the expected name.
    #[error("piece does not match its name: expected {expected}, hashed to {actual}")]
    Mismatch {
        /// The name the piece was claimed to have.
        expected: PieceId,
        /// What its bytes hash to.
        actual: PieceId,
    },
}

fn check_size(len: usize) -> Result<(), PieceError> {
    if (PIECE_MIN..=PIECE_MAX).contains(&len) {
        Ok(())
    } else {
        Err(PieceError::Size {
            len,
            min: PIECE_MIN,
            max: PIECE_MAX,
        })
    }
}

/// A piece whose bytes are known to hash to its id.
///
/// The only constructors hash the bytes, so holding one is proof of
/// verification: stores accept only this type, and nothing unverified can be
/// stored, served or returned by mistake. Hashing costs about 0.5 ms per MiB;
/// call the constructors on a blocking thread, never on an async I/O task.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedPiece {
    id: PieceId,
    bytes: Bytes,
}

impl VerifiedPiece {
    /// Names `bytes` by hashing them.
    pub fn new(bytes: Bytes) -> Result<Self, PieceError> {
        check_size(bytes.len())?;
        Ok(Self {
            id: PieceId::of(&bytes),
            bytes,
        })
    }

    /// Checks that `bytes` hash to `expected`.
    pub fn verify(expected: PieceId, bytes: Bytes) -> Result<Self, PieceError> {
        let piece = Self::new(bytes)?;
        if piece.id == expected {
            Ok(piece)
        } else {
            Err(PieceError::Mismatch {
                expected,
                actual: piece.id,
            })
        }
    }

    /// The piece's name.
    pub const fn id(&self) -> PieceId {
        self.id
    }

    /// The piece's bytes (a cheap reference-counted handle).
    pub const fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: pieces are never empty. Present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes, giving up the proof.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Verifies a piece while its bytes arrive: each chunk is hashed as it is
/// handed over, and the chunks are joined back into one buffer. Chunks split
/// in order off one buffer (as a socket reader that reserved the whole frame
/// does) are joined without copying; others are copied.
///
/// The only way out is [`PieceHasher::finish`], which checks the size and the
/// name, so this is another constructor of [`VerifiedPiece`] that hashes every
/// byte it puts in the piece. Hashing costs about 0.5 ms per MiB: feed it on a
/// blocking thread, never on an async I/O task.
pub struct PieceHasher {
    expected: PieceId,
    hasher: Sha256,
    bytes: BytesMut,
    /// Bytes offered past [`PIECE_MAX`]: dropped, and the piece fails its size check.
    overflow: usize,
}

impl PieceHasher {
    /// A hasher for the piece named `expected`.
    pub fn new(expected: PieceId) -> Self {
        Self {
            expected,
            hasher: Sha256::new(),
            bytes: BytesMut::new(),
            overflow: 0,
        }
    }

    /// Hashes the next chunk of the piece and keeps it. Memory stays bounded
    /// by [`PIECE_MAX`]: bytes past it are counted, not kept.
    pub fn update(&mut self, chunk: BytesMut) {
        if self.overflow > 0 || self.bytes.len() + chunk.len() > PIECE_MAX {
            self.overflow += chunk.len();
            return;
        }
        self.hasher.update(&chunk);
        self.bytes.unsplit(chunk);
    }

    /// Bytes taken so far.
    pub fn len(&self) -> usize {
        self.bytes.len() + self.overflow
    }

    /// True until a byte has been taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The verified piece, or why the bytes are not the piece named.
    pub fn finish(self) -> Result<VerifiedPiece, PieceError> {
        check_size(self.len())?;
        let actual = PieceId(self.hasher.finalize().into());
        if actual != self.expected {
            return Err(PieceError::Mismatch {
                expected: self.expected,
                actual,
            });
        }
        Ok(VerifiedPiece {
            id: actual,
            bytes: self.bytes.freeze(),
        })
    }
}

impl fmt::Debug for PieceHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PieceHasher")
            .field("expected", &self.expected)
            .field("len", &self.len())
            .finish()
    }
}

impl fmt::Debug for VerifiedPiece {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedPiece")
            .field("id", &self.id)
            .field("len", &self.bytes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEROS_1MIB: &str = "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58";

    fn reference_demo_piece(k: u32) -> Vec<u8> {
        let mut piece = vec![0u8; 131_072];
        piece[..4].copy_from_slice(&k.to_le_bytes());
        piece
    }

    #[test]
    fn hashes_match_protocol_vectors() {
        assert_eq!(PieceId::of(&vec![0u8; PIECE_MAX]).to_string(), ZEROS_1MIB);
        assert_eq!(
            PieceId::of(&reference_demo_piece(7)).to_string(),
            "db8ad69092f7465e9180b648ab79da84275838f9906ef7f02adedf6fa0752cbd"
        );
        assert_eq!(
            PieceId::of(&reference_demo_piece(23)).to_string(),
            "46eb387bfeb67f0e88af3383ededcd52af3e8e9321ce660402904b6287b2f021"
        );
    }

    #[test]
    fn parses_exactly_64_hex_either_case_and_prints_lowercase() {
        let id: PieceId = ZEROS_1MIB.to_uppercase().parse().unwrap();
        assert_eq!(id.to_string(), ZEROS_1MIB);
        assert_eq!(id.to_hex(), ZEROS_1MIB);
        assert_eq!(
            ZEROS_1MIB[..63].parse::<PieceId>(),
            Err(PieceIdParseError::Length { len: 63 })
        );
        assert_eq!(
            format!("{ZEROS_1MIB}0").parse::<PieceId>(),
            Err(PieceIdParseError::Length { len: 65 })
        );
        let bad = format!("{}g", &ZEROS_1MIB[..63]);
        assert_eq!(
            bad.parse::<PieceId>(),
            Err(PieceIdParseError::NotHex {
                found: 'g',
                index: 63
            })
        );
        // 64 bytes but not 64 characters.
        let multibyte = format!("é{}", &ZEROS_1MIB[..62]);
        assert!(multibyte.parse::<PieceId>().is_err());
    }

    #[test]
    fn piece_hasher_joins_chunks_split_off_one_buffer_without_copying() {
        let data: Vec<u8> = (0..PIECE_MAX)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let id = PieceId::of(&data);
        let mut buf = BytesMut::with_capacity(PIECE_MAX);
        buf.extend_from_slice(&data);
        let start = buf.as_ptr();
        let mut hasher = PieceHasher::new(id);
        for size in [1, 4096, 65_536, 300_000] {
            hasher.update(buf.split_to(size));
        }
        hasher.update(buf.split());
        assert_eq!(hasher.len(), PIECE_MAX);
        let piece = hasher.finish().unwrap();
        assert_eq!(piece.id(), id);
        assert_eq!(piece.bytes().as_ref(), &data[..]);
        assert_eq!(piece.bytes().as_ptr(), start, "the chunks were copied");
    }

    #[test]
    fn piece_hasher_copies_chunks_from_elsewhere_and_checks_name_and_size() {
        let id = PieceId::of(b"hello world");
        let mut hasher = PieceHasher::new(id);
        hasher.update(BytesMut::from(&b"hello "[..]));
        hasher.update(BytesMut::from(&b"world"[..]));
        assert_eq!(hasher.finish().unwrap().bytes().as_ref(), b"hello world");

        let mut wrong = PieceHasher::new(id);
        wrong.update(BytesMut::from(&b"hello there"[..]));
        assert!(matches!(wrong.finish(), Err(PieceError::Mismatch { .. })));

        assert!(matches!(
            PieceHasher::new(id).finish(),
            Err(PieceError::Size { len: 0, .. })
        ));
        // At PIECE_MAX it is a piece; one byte more is not, and is not kept.
        let zeros: PieceId = ZEROS_1MIB.parse().unwrap();
        let mut max = PieceHasher::new(zeros);
        max.update(BytesMut::zeroed(PIECE_MAX));
        assert_eq!(max.finish().unwrap().len(), PIECE_MAX);
        let mut over = PieceHasher::new(zeros);
        over.update(BytesMut::zeroed(PIECE_MAX));
        over.update(BytesMut::zeroed(1));
        assert_eq!(over.len(), PIECE_MAX + 1);
        assert_eq!(
            over.finish(),
            Err(PieceError::Size {
                len: PIECE_MAX + 1,
                min: 1,
                max: PIECE_MAX
            })
        );
    }

    #[test]
    fn verified_piece_checks_size_and_name() {
        let zeros = Bytes::from(vec![0u8; PIECE_MAX]);
        let id: PieceId = ZEROS_1MIB.parse().unwrap();
        assert_eq!(VerifiedPiece::verify(id, zeros.clone()).unwrap().id(), id);
        let other = PieceId::from_bytes([1; 32]);
        assert!(matches!(
            VerifiedPiece::verify(other, zeros),
            Err(PieceError::Mismatch { .. })
        ));
        assert!(VerifiedPiece::new(Bytes::from(vec![0u8; PIECE_MAX])).is_ok());
        assert_eq!(
            VerifiedPiece::new(Bytes::from(vec![0u8; PIECE_MAX + 1])),
            Err(PieceError::Size {
                len: PIECE_MAX + 1,
                min: 1,
                max: PIECE_MAX
            })
        );
        assert!(VerifiedPiece::new(Bytes::from_static(b"x")).is_ok());
        assert!(matches!(
            VerifiedPiece::new(Bytes::new()),
            Err(PieceError::Size { len: 0, .. })
        ));
    }
}
