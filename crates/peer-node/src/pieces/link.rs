//! One live connection as a fetch sees it, shared by the connection's
//! reader, its writer and the fetches that use it: the queue of short
//! control frames, the ASKs and WANT_HAVEs we sent ([`AskBook`]), its
//! received-bytes counter and its close signal. (What the peer asks of us
//! is the connection's serving side, `serve::ServeSide`.)

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Pieces one peer announced (a HAVE that answers no WANT_HAVE of ours)
/// and has not denied since, remembered per connection; the oldest is
/// forgotten first. A fetch asks such a peer first and no one else. 1,024
/// covers a 1 GiB file being fetched; worst case ≈ 80 KiB per connection.
pub const ANNOUNCED_MAX: usize = 1024;

/// The pieces a peer announced, oldest first, at most [`ANNOUNCED_MAX`].
#[derive(Debug, Default)]
struct Announced {
    order: VecDeque<PieceId>,
    set: HashSet<PieceId>,
}

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
    /// What the peer announced it holds.
    announced: Mutex<Announced>,
    /// A watcher waits to close this connection once idle (one at most).
    lingering: AtomicBool,
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
            announced: Mutex::default(),
            lingering: AtomicBool::new(false),
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

    /// Claims the one watcher slot of this connection: true for the first
    /// caller, false while a watcher has it.
    pub(crate) fn start_lingering(&self) -> bool {
        !self.lingering.swap(true, Ordering::AcqRel)
    }

    /// The watcher is done (it closed the connection, or left it open).
    pub(crate) fn stop_lingering(&self) {
        self.lingering.store(false, Ordering::Release);
    }

    /// Remembers that the peer holds `id` (it said HAVE), forgetting the
    /// oldest announcement past [`ANNOUNCED_MAX`].
    pub(crate) fn note_announced(&self, id: PieceId) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !announced.set.insert(id) {
            return;
        }
        announced.order.push_back(id);
        if announced.order.len() > ANNOUNCED_MAX
            && let Some(oldest) = announced.order.pop_front()
        {
            announced.set.remove(&oldest);
        }
    }

    /// Whether the peer announced `id` and has not denied it since.
    pub(crate) fn announced(&self, id: &PieceId) -> bool {
        self.announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .contains(id)
    }

    /// The peer said it does not hold `id` (any more).
    pub(crate) fn forget_announced(&self, id: &PieceId) {
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if announced.set.remove(id) {
            announced.order.retain(|a| a != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Link {
        let closer = Arc::new(Closer::default());
        let now = Instant::now();
        Link::new(
            1,
            PeerAddr::new([127, 0, 0, 1].into(), 7001),
            None,
            Arc::default(),
            closer,
            now,
        )
        .0
    }

    #[test]
    fn a_link_remembers_announced_max_announcements_and_forgets_the_oldest_first() {
        let link = link();
        let id = |n: usize| PieceId::of(&n.to_le_bytes());
        for n in 0..ANNOUNCED_MAX {
            link.note_announced(id(n));
        }
        // Announcing one again changes nothing.
        link.note_announced(id(0));
        assert!((0..ANNOUNCED_MAX).all(|n| link.announced(&id(n))));
        link.note_announced(id(ANNOUNCED_MAX));
        assert!(
            !link.announced(&id(0)),
            "the oldest was kept past the bound"
        );
        assert!(link.announced(&id(1)) && link.announced(&id(ANNOUNCED_MAX)));
        link.forget_announced(&id(1));
        assert!(!link.announced(&id(1)));
        let announced = link.announced.lock().unwrap();
        assert_eq!(announced.order.len(), ANNOUNCED_MAX - 1);
        assert_eq!(announced.set.len(), ANNOUNCED_MAX - 1);
    }

    #[test]
    fn one_watcher_at_a_time_lingers_on_a_connection() {
        let link = link();
        assert!(link.start_lingering());
        assert!(!link.start_lingering(), "a second watcher was let in");
        link.stop_lingering();
        assert!(link.start_lingering());
    }
}
