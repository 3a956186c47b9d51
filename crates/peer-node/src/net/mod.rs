//! The network layer both programs share: framing over a socket, the HELLO
//! exchange and legacy detection, dial-back probes, sockets and their
//! limits. It knows nothing of peers, pieces or the node's state.
//!
//! Uses wire-format, tokio and nothing else of the crate.
//!
//! * [`frame`] — [`FrameReader`], [`write_message`], [`ConnError`].
//! * [`handshake`] — the first frame, HELLO rules, the dial-back probe, node ids.
//! * [`socket`] — connect, tune, listen, accept, [`OpenSockets`].
//! * [`close`] — [`Closer`], a connection's close signal.
//! * [`refusals`] — [`RefusalWarnings`], rate-limited warnings that a limit refuses sockets.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod refusals;
pub mod socket;

pub use close::Closer;
pub use frame::{ConnError, Frame, FrameReader, READ_CHUNK_BYTES, read_one, write_message};
pub use handshake::{PeerKind, ProbeOutcome, legacy_allowed, new_node_id, probe, read_first_frame};
pub use refusals::{REFUSAL_WARNING_INTERVAL, RefusalWarnings};
pub use socket::{
    ACCEPT_RETRY, OpenSockets, SocketSlot, accept_until, bind_listener, connect, tune,
};
