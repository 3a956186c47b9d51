//! The eight messages, each a type that cannot hold data the protocol forbids.

use std::fmt;
use std::num::NonZeroU8;

use bytes::Bytes;

use crate::addr::PeerAddr;
use crate::limits::{
    DIGEST_MESSAGE_LEN, FRAME_HEADER_BYTES, GIVE_HEADER_BYTES, HELLO_LEN, LEN_FIELD_BYTES,
    MAX_PEERS_PER_FRAME, NODE_ID_BYTES, PEER_INFO_BYTES, PIECE_MAX, PIECE_MIN, PROTOCOL_VERSION,
    TYPE_FIELD_BYTES,
};
use crate::piece::PieceId;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// "I want the piece with this hash."
    Ask = 0,
    /// "Here it is."
    Give = 1,
    /// "The addresses I know."
    Peers = 2,
    /// First frame of every connection between project programs.
    Hello = 3,
    /// "I don't have it" (answer to ASK or WANT_HAVE).
    DontHave = 4,
    /// "Do you hold this piece?"
    WantHave = 5,
    /// "Yes, ASK me for it."
    Have = 6,
    /// "Drop my ASK for it if you haven't sent it yet."
    Cancel = 7,
}

impl MessageType {
    /// The type for a type byte, if it is one we know.
    pub const fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            0 => Self::Ask,
            1 => Self::Give,
            2 => Self::Peers,
            3 => Self::Hello,
            4 => Self::DontHave,
            5 => Self::WantHave,
            6 => Self::Have,
            7 => Self::Cancel,
            _ => return None,
        })
    }

    /// True for the messages only extended peers may send (all but the seed's three).
    pub const fn is_extension(self) -> bool {
        !matches!(self, Self::Ask | Self::Give | Self::Peers)
    }

    /// Lower-case name, for logs and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ask => "ask",
            Self::Give => "give",
            Self::Peers => "peers",
            Self::Hello => "hello",
            Self::DontHave => "dont_have",
            Self::WantHave => "want_have",
            Self::Have => "have",
            Self::Cancel => "cancel",
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a message cannot be built or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A GIVE carries 1 to [`PIECE_MAX`] piece bytes.
    #[error("a GIVE carries {min} to {max} piece bytes, got {len}")]
    PieceSize {
        /// Piece bytes given.
        len: usize,
        /// [`PIECE_MIN`].
        min: usize,
        /// [`PIECE_MAX`].
        max: usize,
    },
    /// A PEERS carries at most [`MAX_PEERS_PER_FRAME`] entries.
    #[error("a PEERS carries at most {max} entries, got {count}")]
    TooManyPeers {
        /// Entries given.
        count: usize,
        /// [`MAX_PEERS_PER_FRAME`].
        max: usize,
    },
    /// HELLO version 0 does not exist.
    #[error("HELLO version 0 is invalid")]
    VersionZero,
    /// The LISTENING flag needs a listen port.
    #[error("HELLO with the LISTENING flag needs a non-zero listen port")]
    ListeningPortZero,
}

/// Checks a GIVE's piece length and returns its `len` field value.
pub(crate) fn give_len(piece_len: usize) -> Result<u32, EncodeError> {
    if !(PIECE_MIN..=PIECE_MAX).contains(&piece_len) {
        return Err(EncodeError::PieceSize {
            len: piece_len,
            min: PIECE_MIN,
            max: PIECE_MAX,
        });
    }
    // At most MAX_LEN, which fits in u32.
    u32::try_from(DIGEST_MESSAGE_LEN + piece_len).map_err(|_| EncodeError::PieceSize {
        len: piece_len,
        min: PIECE_MIN,
        max: PIECE_MAX,
    })
}

/// The 37 bytes that precede a GIVE's piece on the wire.
///
/// Write them and the piece with one vectored write; the piece itself is never
/// copied. Refuses a piece length outside 1..=[`PIECE_MAX`].
pub fn encode_give_header(
    id: &PieceId,
    piece_len: usize,
) -> Result<[u8; GIVE_HEADER_BYTES], EncodeError> {
    let len = give_len(piece_len)?;
    let mut out = [0u8; GIVE_HEADER_BYTES];
    out[..LEN_FIELD_BYTES].copy_from_slice(&len.to_le_bytes());
    out[LEN_FIELD_BYTES] = MessageType::Give as u8;
    out[FRAME_HEADER_BYTES..].copy_from_slice(id.as_bytes());
    Ok(out)
}

/// A GIVE: a digest and 1 to [`PIECE_MAX`] piece bytes.
///
/// The piece is *not* verified by this type: a GIVE from the network is a
/// claim until its bytes are hashed (see `VerifiedPiece`).
#[derive(Clone, PartialEq, Eq)]
pub struct Give {
    id: PieceId,
    piece: Bytes,
}

impl Give {
    /// A GIVE of `piece` under the name `id`; refuses an empty or over-long piece.
    pub fn new(id: PieceId, piece: Bytes) -> Result<Self, EncodeError> {
        give_len(piece.len())?;
        Ok(Self { id, piece })
    }

    /// The digest the sender claims.
    pub const fn id(&self) -> PieceId {
        self.id
    }

    /// The piece bytes (a handle into the read buffer: no copy was made).
    pub const fn piece(&self) -> &Bytes {
        &self.piece
    }

    /// Splits into digest and bytes.
    pub fn into_parts(self) -> (PieceId, Bytes) {
        (self.id, self.piece)
    }

    /// The header to write before [`Give::piece`].
    pub fn header(&self) -> [u8; GIVE_HEADER_BYTES] {
        let mut out = [0u8; GIVE_HEADER_BYTES];
        // The length was checked at construction, so the header always exists.
        if let Ok(header) = encode_give_header(&self.id, self.piece.len()) {
            out = header;
        }
        out
    }
}

impl fmt::Debug for Give {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Give")
            .field("id", &self.id)
            .field("len", &self.piece.len())
            .finish()
    }
}

/// A PEERS list of at most [`MAX_PEERS_PER_FRAME`] canonical addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers(Vec<PeerAddr>);

impl Peers {
    /// A list; refuses more than [`MAX_PEERS_PER_FRAME`] entries.
    pub fn new(entries: Vec<PeerAddr>) -> Result<Self, EncodeError> {
        if entries.len() > MAX_PEERS_PER_FRAME {
            return Err(EncodeError::TooManyPeers {
                count: entries.len(),
                max: MAX_PEERS_PER_FRAME,
            });
        }
        Ok(Self(entries))
    }

    /// The empty list, which is also the keepalive.
    pub const fn empty() -> Self {
        Self(Vec::new())
    }

    /// The entries, as received (unfiltered).
    pub fn entries(&self) -> &[PeerAddr] {
        &self.0
    }

    /// The entries, owned.
    pub fn into_entries(self) -> Vec<PeerAddr> {
        self.0
    }
}

/// Eight random bytes a node picks at each start.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; NODE_ID_BYTES]);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

/// HELLO flag bits. Unknown bits are kept (and ignored) so a frame re-encodes
/// to the bytes it came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct HelloFlags(pub u8);

impl HelloFlags {
    /// `listen_port` accepts connections at the IP this connection comes from.
    pub const LISTENING: u8 = 1 << 0;
    /// A short-lived tool or a dial-back probe: never recorded, listed,
    /// dialled back or deduplicated.
    pub const CLIENT: u8 = 1 << 1;

    /// Whether LISTENING is set.
    pub const fn listening(self) -> bool {
        self.0 & Self::LISTENING != 0
    }

    /// Whether CLIENT is set.
    pub const fn client(self) -> bool {
        self.0 & Self::CLIENT != 0
    }
}

impl fmt::Debug for HelloFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HelloFlags({:#04x}{}{})",
            self.0,
            if self.listening() { " LISTENING" } else { "" },
            if self.client() { " CLIENT" } else { "" }
        )
    }
}

/// A HELLO: magic (implied), version ≥ 1, flags, listen port, node id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    version: NonZeroU8,
    flags: HelloFlags,
    listen_port: u16,
    node_id: NodeId,
}

impl Hello {
    /// A HELLO; refuses version 0 and LISTENING with port 0.
    pub fn new(
        version: u8,
        flags: HelloFlags,
        listen_port: u16,
        node_id: NodeId,
    ) -> Result<Self, EncodeError> {
        let version = NonZeroU8::new(version).ok_or(EncodeError::VersionZero)?;
        if flags.listening() && listen_port == 0 {
            return Err(EncodeError::ListeningPortZero);
        }
        Ok(Self {
            version,
            flags,
            listen_port,
            node_id,
        })
    }

    /// Our HELLO at [`PROTOCOL_VERSION`]: LISTENING on `listen_port` if given.
    pub fn ours(listen_port: Option<u16>, client: bool, node_id: NodeId) -> Self {
        let mut flags = if client { HelloFlags::CLIENT } else { 0 };
        let port = match listen_port {
            Some(port) if port != 0 => {
                flags |= HelloFlags::LISTENING;
                port
            }
            _ => 0,
        };
        Self {
            version: NonZeroU8::new(PROTOCOL_VERSION).unwrap_or(NonZeroU8::MIN),
            flags: HelloFlags(flags),
            listen_port: port,
            node_id,
        }
    }

    /// Highest version the sender speaks.
    pub const fn version(&self) -> u8 {
        self.version.get()
    }

    /// The version both sides use: the smaller one.
    pub fn negotiated_version(&self) -> u8 {
        self.version.get().min(PROTOCOL_VERSION)
    }

    /// Flag bits.
    pub const fn flags(&self) -> HelloFlags {
        self.flags
    }

    /// Port the sender accepts connections on, if it set LISTENING.
    pub const fn listen_port(&self) -> Option<u16> {
        if self.flags.listening() {
            Some(self.listen_port)
        } else {
            None
        }
    }

    /// The port field as sent, whatever the flags say.
    pub const fn raw_listen_port(&self) -> u16 {
        self.listen_port
    }

    /// The sender's node id.
    pub const fn node_id(&self) -> NodeId {
        self.node_id
    }
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// ASK: "I want the piece with this hash."
    Ask(PieceId),
    /// GIVE: "here it is."
    Give(Give),
    /// PEERS: "the addresses I know." Empty doubles as the keepalive.
    Peers(Peers),
    /// HELLO: first frame between project programs.
    Hello(Hello),
    /// DONT_HAVE: answer to ASK or WANT_HAVE.
    DontHave(PieceId),
    /// WANT_HAVE: "do you hold this piece?"
    WantHave(PieceId),
    /// HAVE: "yes, ASK me for it."
    Have(PieceId),
    /// CANCEL: "drop my ASK for it if you haven't sent it yet."
    Cancel(PieceId),
}

impl Message {
    /// The frame's type.
    pub const fn kind(&self) -> MessageType {
        match self {
            Self::Ask(_) => MessageType::Ask,
            Self::Give(_) => MessageType::Give,
            Self::Peers(_) => MessageType::Peers,
            Self::Hello(_) => MessageType::Hello,
            Self::DontHave(_) => MessageType::DontHave,
            Self::WantHave(_) => MessageType::WantHave,
            Self::Have(_) => MessageType::Have,
            Self::Cancel(_) => MessageType::Cancel,
        }
    }

    /// The `len` field: bytes after the length field.
    pub fn len_field(&self) -> usize {
        match self {
            Self::Ask(_)
            | Self::DontHave(_)
            | Self::WantHave(_)
            | Self::Have(_)
            | Self::Cancel(_) => DIGEST_MESSAGE_LEN,
            Self::Give(give) => DIGEST_MESSAGE_LEN + give.piece.len(),
            Self::Peers(peers) => TYPE_FIELD_BYTES + PEER_INFO_BYTES * peers.0.len(),
            Self::Hello(_) => HELLO_LEN,
        }
    }

    /// Bytes of the whole frame.
    pub fn encoded_len(&self) -> usize {
        LEN_FIELD_BYTES + self.len_field()
    }
}
