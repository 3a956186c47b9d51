//! One live connection as a fetch sees it, shared by the connection's
//! reader, its writer and the fetches that use it: the queue of short
//! control frames, the ASKs and WANT_HAVEs we sent ([`AskBook`]), its
//! received-bytes counter and its close signal. (What the peer asks of us
//! is the connection's serving side, `serve::ServeSide`.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use wire_format::limits::{DIGEST_MESSAGE_LEN, LEN_FIELD_BYTES};
use wire_format::{Hello, Message, NodeId, PeerAddr, PieceId};

use super::asks::AskBook;
use crate::net::{Closer, READ_CHUNK_BYTES};

/// Short control frames (37-byte ASK, WANT_HAVE, HAVE, DONT_HAVE, CANCEL)
/// queued for writing on one connection: room for the answers to every
/// WANT_HAVE one read can hold, so a peer that reads is never refused an
/// answer. Past it (a peer that sends WANT_HAVEs and does not read), a
/// WANT_HAVE is ignored and counted, as docs/PROTOCOL.md's close table says
/// of anything it does not list. Worst case per connection: 2,048 × 37
/// bytes on the wire, ≈ 150 KiB queued.
pub const WRITE_QUEUE_FRAMES: usize = 2048;
const _: () =
    assert!(WRITE_QUEUE_FRAMES * (LEN_FIELD_BYTES + DIGEST_MESSAGE_LEN) >= READ_CHUNK_BYTES);

/// One live connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) remote: PeerAddr,
    pub(crate) node_id: Option<NodeId>,
    pub(crate) legacy: bool,
    /// Listen port from HELLO, for bans.
    pub(crate) listen_port: Option<u16>,
    /// Short control frames (ASK, WANT_HAVE, HAVE, DONT_HAVE, CANCEL), up
    /// to [`WRITE_QUEUE_FRAMES`].
    frames: mpsc::Sender<Message>,
    asks: Mutex<AskBook>,
    /// Bytes received, updated after every read.
    progress: Arc<AtomicU64>,
    pub(crate) closer: Arc<Closer>,
}

impl Link {
    /// A link for the connection to `remote` (`hello`: `None` for a legacy
    /// peer) whose received bytes are counted in `progress`, and the
    /// receiving end of its control-frame queue, for the writer.
    pub(crate) fn new(
        id: u64,
        remote: PeerAddr,
        hello: Option<Hello>,
        progress: Arc<AtomicU64>,
        closer: Arc<Closer>,
        now: Instant,
    ) -> (Self, mpsc::Receiver<Message>) {
        let legacy = hello.is_none();
        let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let link = Self {
            id,
            remote,
            node_id: hello.map(|h| h.node_id()),
            legacy,
            listen_port: hello.and_then(|h| h.listen_port()),
            frames,
            asks: Mutex::new(AskBook::new(legacy, now)),
            progress,
            closer,
        };
        (link, frames_rx)
    }

    /// The peer's address as the API shows it: where it listens when its
    /// HELLO said, else where it connected from.
    pub(crate) fn peer_addr(&self) -> PeerAddr {
        self.listen_port
            .map_or(self.remote, |port| PeerAddr::new(self.remote.ip(), port))
    }

    pub(crate) fn ask_book(&self) -> MutexGuard<'_, AskBook> {
        self.asks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn bytes_received(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Closes the connection from inside the node, recording why.
    pub(crate) fn close_with(&self, reason: &'static str) {
        self.closer.close_with(reason);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closer.is_closed() || self.frames.is_closed()
    }

    /// Queues a short control frame; false if the queue is full (the peer
    /// has not read [`WRITE_QUEUE_FRAMES`] of them) or closed.
    pub(crate) fn send(&self, message: Message) -> bool {
        self.frames.try_send(message).is_ok()
    }

    /// Asks for `id` on this connection (or queues the ASK for a slot).
    pub(crate) fn ask(
        &self,
        id: PieceId,
        budget: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> bool {
        let message = self.ask_book().ask(id, budget, now);
        message.is_none_or(|m| self.send(m))
    }

    /// Withdraws our ASK for `id`, sending CANCEL if it was outstanding.
    pub(crate) fn withdraw(&self, id: &PieceId, now: Instant) {
        let (cancel, next) = self.ask_book().cancel(id, now);
        if let Some(cancel) = cancel
            && !self.legacy
        {
            self.send(cancel);
        }
        if let Some(next) = next {
            self.send(next);
        }
    }

    /// Asks whether the peer holds `id`.
    pub(crate) fn want(&self, id: PieceId) -> bool {
        self.ask_book().wanted.insert(id);
        self.send(Message::WantHave(id))
    }
}
