//! What the node knows about one live connection, shared by its reader, its
//! writer and the fetches that use it: the write queue, the ASKs it owes
//! answers to (serving) and the ASKs and WANT_HAVEs it sent (asking).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use wire_format::limits::{
    ASK_HISTORY_MAX, ASK_HISTORY_TTL, LEGACY_MAX_ASKS_IN_FLIGHT, MAX_ASKS_IN_FLIGHT,
};
use wire_format::{Hello, Message, NodeId, PeerAddr, PieceId};

use crate::node::WRITE_QUEUE_FRAMES;

/// The answer to a peer's ASK, for the writer: written unless the ASK was
/// cancelled before it started; holds its share of the serving byte budget.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The ASK's digest.
    pub(crate) id: PieceId,
    /// GIVE or DONT_HAVE; `None` for a legacy peer we do not answer.
    pub(crate) message: Option<Message>,
    /// Serving budget, released when the answer is written.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}

/// ASKs a peer sent us that are not answered yet.
#[derive(Debug, Default)]
pub(crate) struct ServeBook {
    /// Queued answers per digest (a peer may ask twice).
    queued: HashMap<PieceId, usize>,
    /// ASKs not yet answered or cancelled.
    pub(crate) in_flight: usize,
    /// When each digest was last answered to a legacy peer (at most once per
    /// 30 s); pruned as it goes, so bounded by the answers of 30 s.
    pub(crate) legacy_answered: HashMap<PieceId, Instant>,
}

impl ServeBook {
    pub(crate) fn queue(&mut self, id: PieceId) {
        *self.queued.entry(id).or_default() += 1;
        self.in_flight += 1;
    }

    pub(crate) fn is_queued(&self, id: &PieceId) -> bool {
        self.queued.contains_key(id)
    }

    /// Takes one queued answer for `id` off the books; false if it was
    /// cancelled meanwhile. Whoever takes it ends the ASK's in-flight count.
    pub(crate) fn take(&mut self, id: &PieceId) -> bool {
        match self.queued.get_mut(id) {
            Some(n) => {
                *n -= 1;
                if *n == 0 {
                    self.queued.remove(id);
                }
                self.in_flight = self.in_flight.saturating_sub(1);
                true
            }
            None => false,
        }
    }
}

/// One ASK we sent and have not had answered.
#[derive(Debug)]
pub(crate) struct SentAsk {
    pub(crate) id: PieceId,
    pub(crate) sent: Instant,
    /// In-flight byte budget reserved for the answer.
    pub(crate) _budget: Option<OwnedSemaphorePermit>,
}

/// What a GIVE we received answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// An outstanding ASK of ours.
    Outstanding,
    /// An ASK of ours that was cancelled, hedged away or timed out: a late
    /// answer, verified and counted as duplicate.
    Late,
    /// Nothing we asked on this connection (within the history).
    Unsolicited,
}

/// ASKs and WANT_HAVEs we sent on this connection.
#[derive(Debug)]
pub(crate) struct AskBook {
    /// Digests asked within [`ASK_HISTORY_TTL`], at most [`ASK_HISTORY_MAX`].
    history: VecDeque<(PieceId, Instant)>,
    /// ASKs sent and unanswered, oldest first.
    pub(crate) outstanding: VecDeque<SentAsk>,
    /// ASKs waiting for a free slot (the pipe holds at most the cap).
    waiting: VecDeque<(PieceId, Option<OwnedSemaphorePermit>)>,
    /// WANT_HAVEs sent and unanswered.
    pub(crate) wanted: HashSet<PieceId>,
    /// When the last answer arrived: the next ASK is first in line from then.
    pub(crate) last_answer: Instant,
    cap: usize,
}

impl AskBook {
    pub(crate) fn new(legacy: bool, now: Instant) -> Self {
        Self {
            history: VecDeque::new(),
            outstanding: VecDeque::new(),
            waiting: VecDeque::new(),
            wanted: HashSet::new(),
            last_answer: now,
            cap: if legacy {
                LEGACY_MAX_ASKS_IN_FLIGHT
            } else {
                MAX_ASKS_IN_FLIGHT
            },
        }
    }

    fn remember(&mut self, id: PieceId, now: Instant) {
        while self
            .history
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= ASK_HISTORY_TTL)
            || self.history.len() >= ASK_HISTORY_MAX
        {
            self.history.pop_front();
        }
        self.history.push_back((id, now));
    }

    /// Asks for `id`: returns the ASK to send now, or queues it until a slot
    /// frees (then [`AskBook::on_answer`] returns it).
    pub(crate) fn ask(
        &mut self,
        id: PieceId,
        budget: Option<OwnedSemaphorePermit>,
        now: Instant,
    ) -> Option<Message> {
        if self.is_asked(&id) {
            return None;
        }
        if self.outstanding.len() < self.cap {
            if self.outstanding.is_empty() {
                self.last_answer = now;
            }
            self.remember(id, now);
            self.outstanding.push_back(SentAsk {
                id,
                sent: now,
                _budget: budget,
            });
            Some(Message::Ask(id))
        } else {
            self.waiting.push_back((id, budget));
            None
        }
    }

    /// Whether `id` is asked (sent or waiting).
    pub(crate) fn is_asked(&self, id: &PieceId) -> bool {
        self.outstanding.iter().any(|a| a.id == *id) || self.waiting.iter().any(|(w, _)| w == id)
    }

    /// When the outstanding ASK for `id` became first in line, if it is
    /// outstanding: the later of its sending and the previous answer.
    pub(crate) fn line_start(&self, id: &PieceId) -> Option<Instant> {
        self.outstanding
            .iter()
            .find(|a| a.id == *id)
            .map(|a| a.sent.max(self.last_answer))
    }

    /// Whether a GIVE for `id` would answer an ASK of ours, outstanding or
    /// late ([`on_answer`](Self::on_answer) without its effects).
    pub(crate) fn expects(&self, id: &PieceId, now: Instant) -> bool {
        self.outstanding.iter().any(|a| a.id == *id)
            || self
                .history
                .iter()
                .any(|(h, at)| h == id && now.duration_since(*at) < ASK_HISTORY_TTL)
    }

    /// Records an answer (GIVE or DONT_HAVE) for `id`; returns what it
    /// answers and the next waiting ASK to send, if a slot freed.
    pub(crate) fn on_answer(&mut self, id: &PieceId, now: Instant) -> (Answered, Option<Message>) {
        if let Some(pos) = self.outstanding.iter().position(|a| a.id == *id) {
            self.outstanding.remove(pos);
            self.last_answer = now;
            let next = self.next_waiting(now);
            return (Answered::Outstanding, next);
        }
        let late = self
            .history
            .iter()
            .any(|(h, at)| h == id && now.duration_since(*at) < ASK_HISTORY_TTL);
        (
            if late {
                Answered::Late
            } else {
                Answered::Unsolicited
            },
            None,
        )
    }

    fn next_waiting(&mut self, now: Instant) -> Option<Message> {
        let (id, budget) = self.waiting.pop_front()?;
        self.ask(id, budget, now)
    }

    /// Drops our ASK for `id` (hedge lost, deadline): returns the CANCEL to
    /// send if it was outstanding, and the next waiting ASK.
    pub(crate) fn cancel(
        &mut self,
        id: &PieceId,
        now: Instant,
    ) -> (Option<Message>, Option<Message>) {
        self.waiting.retain(|(w, _)| w != id);
        if let Some(pos) = self.outstanding.iter().position(|a| a.id == *id) {
            self.outstanding.remove(pos);
            // A CANCEL ends the ASK on both sides: the slot is free now.
            let next = self.next_waiting(now);
            (Some(Message::Cancel(*id)), next)
        } else {
            (None, None)
        }
    }
}

/// One live connection.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) id: u64,
    pub(crate) remote: PeerAddr,
    pub(crate) node_id: Option<NodeId>,
    pub(crate) legacy: bool,
    /// Answers to the peer's ASKs (at most its in-flight cap at a time).
    pub(crate) answers: mpsc::Sender<Answer>,
    /// Short control frames (ASK, WANT_HAVE, HAVE, DONT_HAVE, CANCEL), up
    /// to [`WRITE_QUEUE_FRAMES`](crate::node::WRITE_QUEUE_FRAMES).
    pub(crate) frames: mpsc::Sender<Message>,
    pub(crate) close: watch::Sender<bool>,
    /// Bytes received, updated after every read.
    pub(crate) progress: Arc<AtomicU64>,
    pub(crate) serve: Mutex<ServeBook>,
    pub(crate) asks: Mutex<AskBook>,
    /// Listen port from HELLO, for bans.
    pub(crate) listen_port: Option<u16>,
    /// Why the node closed it (the first reason wins), for the close metric.
    pub(crate) close_reason: std::sync::OnceLock<&'static str>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer's ends of a link's two queues.
pub(crate) type Queues = (mpsc::Receiver<Answer>, mpsc::Receiver<Message>);

impl Link {
    /// A link for the connection to `remote` (`hello`: `None` for a legacy
    /// peer) whose received bytes are counted in `progress`, and the
    /// receiving ends of its queues for the writer.
    pub(crate) fn new(
        id: u64,
        remote: PeerAddr,
        hello: Option<Hello>,
        progress: Arc<AtomicU64>,
        now: Instant,
    ) -> (Self, Queues) {
        // Answers wait in their serving tasks for a slot (at most the peer's
        // in-flight ASKs); short control frames are never waited for.
        let (answers, answers_rx) = mpsc::channel(MAX_ASKS_IN_FLIGHT);
        let (frames, frames_rx) = mpsc::channel(WRITE_QUEUE_FRAMES);
        let legacy = hello.is_none();
        let link = Self {
            id,
            remote,
            node_id: hello.map(|h| h.node_id()),
            legacy,
            answers,
            frames,
            close: watch::channel(false).0,
            progress,
            serve: Mutex::new(ServeBook::default()),
            asks: Mutex::new(AskBook::new(legacy, now)),
            listen_port: hello.and_then(|h| h.listen_port()),
            close_reason: std::sync::OnceLock::new(),
        };
        (link, (answers_rx, frames_rx))
    }

    pub(crate) fn serve_book(&self) -> MutexGuard<'_, ServeBook> {
        lock(&self.serve)
    }

    pub(crate) fn ask_book(&self) -> MutexGuard<'_, AskBook> {
        lock(&self.asks)
    }

    pub(crate) fn bytes_received(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Closes the connection from inside the node, recording why.
    pub(crate) fn close_with(&self, reason: &'static str) {
        let _ = self.close_reason.set(reason);
        // Stored even when nobody watches yet.
        self.close.send_replace(true);
    }

    /// Why the node closed it, if it did.
    pub(crate) fn closed_because(&self) -> &'static str {
        self.close_reason.get().copied().unwrap_or("closed_by_node")
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.close.borrow() || self.frames.is_closed()
    }

    /// Queues a short control frame; false if the queue is full (the peer
    /// has not read [`WRITE_QUEUE_FRAMES`](crate::node::WRITE_QUEUE_FRAMES)
    /// of them) or closed.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    #[test]
    fn at_most_the_cap_is_outstanding_and_answers_free_slots() {
        let now = Instant::now();
        let mut book = AskBook::new(false, now);
        for n in 0..u8::try_from(MAX_ASKS_IN_FLIGHT).unwrap() {
            assert_eq!(book.ask(id(n), None, now), Some(Message::Ask(id(n))));
        }
        assert_eq!(book.ask(id(200), None, now), None, "17th waits");
        assert_eq!(book.outstanding.len(), MAX_ASKS_IN_FLIGHT);
        let (answered, next) = book.on_answer(&id(0), now);
        assert_eq!(answered, Answered::Outstanding);
        assert_eq!(next, Some(Message::Ask(id(200))));
        // Answered twice: the second is late, not unsolicited.
        assert_eq!(book.on_answer(&id(0), now).0, Answered::Late);
        assert_eq!(book.on_answer(&id(99), now).0, Answered::Unsolicited);
    }

    #[test]
    fn a_cancelled_ask_frees_its_slot_and_its_answer_is_late() {
        let now = Instant::now();
        let mut book = AskBook::new(true, now);
        for n in 0..u8::try_from(LEGACY_MAX_ASKS_IN_FLIGHT).unwrap() {
            book.ask(id(n), None, now);
        }
        assert_eq!(book.ask(id(50), None, now), None);
        let (cancel, next) = book.cancel(&id(3), now);
        assert_eq!(cancel, Some(Message::Cancel(id(3))));
        assert_eq!(next, Some(Message::Ask(id(50))));
        assert_eq!(book.on_answer(&id(3), now).0, Answered::Late);
    }

    #[test]
    fn history_is_bounded_and_expires() {
        let now = Instant::now();
        let mut book = AskBook::new(false, now);
        for n in 0..(ASK_HISTORY_MAX + 10) {
            let digest = PieceId::of(&n.to_le_bytes());
            book.ask(digest, None, now);
            book.on_answer(&digest, now);
        }
        assert_eq!(book.history.len(), ASK_HISTORY_MAX);
        let old = PieceId::of(&0usize.to_le_bytes());
        assert_eq!(
            book.on_answer(&old, now).0,
            Answered::Unsolicited,
            "pushed out"
        );
        let recent = PieceId::of(&(ASK_HISTORY_MAX + 9).to_le_bytes());
        assert_eq!(book.on_answer(&recent, now).0, Answered::Late);
        assert_eq!(
            book.on_answer(&recent, now + ASK_HISTORY_TTL).0,
            Answered::Unsolicited,
            "expired"
        );
    }

    #[test]
    fn serve_book_counts_each_ask_once_whoever_ends_it() {
        let mut book = ServeBook::default();
        book.queue(id(1));
        book.queue(id(1));
        assert_eq!(book.in_flight, 2);
        assert!(book.take(&id(1)));
        assert!(book.take(&id(1)));
        assert!(
            !book.take(&id(1)),
            "nothing left: a cancelled answer is not sent"
        );
        assert_eq!(book.in_flight, 0);
    }
}
