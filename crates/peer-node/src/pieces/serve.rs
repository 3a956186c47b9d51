//! Serving: answering a peer's ASK and CANCEL from the store, and the one
//! answer to "can this node serve that piece now?" ([`Pieces::holds`]).
//!
//! Reading never stops for serving: an ASK only books the answer and starts
//! a task that waits for its share of the serving byte budget (a FIFO
//! semaphore, so connections are served in turn), reads the store on the
//! blocking pool and hands the answer to the connection's writer. An ASK for
//! a piece the node does not hold is answered at once, without a share.
//! Worst-case memory: [`SERVE_BUDGET_BYTES`] of pieces read for writing, plus
//! `MAX_ASKS_IN_FLIGHT` booked answers per connection.
//!
//! Uses the piece exchange's shared state ([`Pieces`]) and wire-format.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::debug;
use wire_format::limits::{
    LEGACY_ANSWER_INTERVAL, LEGACY_MAX_ASKS_IN_FLIGHT, LEGACY_PIECE_BYTES, MAX_ASKS_IN_FLIGHT,
};
use wire_format::{Give, Message, PieceId};

use super::state::{PIECE_UNITS, Pieces};
use crate::clock::now;
use crate::metrics::Metric;

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

/// A connection's serving side: the peer's ASKs not answered yet and the
/// queue of their answers to the connection's writer.
#[derive(Debug)]
pub(crate) struct ServeSide {
    /// Whether the peer is legacy (silence instead of DONT_HAVE; 128 KiB
    /// GIVEs only; repeats ignored).
    legacy: bool,
    book: Mutex<ServeBook>,
    /// Answers to the peer's ASKs (at most its in-flight cap at a time).
    pub(crate) answers: mpsc::Sender<Answer>,
}

impl ServeSide {
    /// A serving side, and the receiving end of its answer queue.
    pub(crate) fn new(legacy: bool) -> (Self, mpsc::Receiver<Answer>) {
        // Answers wait in their serving tasks for a slot (at most the peer's
        // in-flight ASKs); the reader never waits for them.
        let (answers, rx) = mpsc::channel(MAX_ASKS_IN_FLIGHT);
        let side = Self {
            legacy,
            book: Mutex::new(ServeBook::default()),
            answers,
        };
        (side, rx)
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, ServeBook> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A peer's ASK: book it, or close an extended peer over the cap; a legacy
/// peer's excess and repeats are dropped and counted.
pub(crate) fn on_ask(
    pieces: &Arc<Pieces>,
    side: &Arc<ServeSide>,
    id: PieceId,
) -> Result<(), &'static str> {
    {
        let mut book = side.book();
        if side.legacy {
            let repeat = book.is_queued(&id)
                || book
                    .legacy_answered
                    .get(&id)
                    .is_some_and(|at| now().duration_since(*at) < LEGACY_ANSWER_INTERVAL);
            if repeat || book.in_flight >= LEGACY_MAX_ASKS_IN_FLIGHT {
                pieces.metrics.incr(Metric::IgnoredFramesTotal);
                return Ok(());
            }
        } else if book.in_flight >= MAX_ASKS_IN_FLIGHT {
            return Err("too_many_asks");
        }
        book.queue(id);
    }
    // Nothing to read: say so at once (silence, to a legacy peer). A
    // DONT_HAVE takes no share of the serving budget, so a node busy
    // serving still says "no" without waiting behind GIVEs. The queue holds
    // every answer the peer may have booked, so it has room.
    if !pieces.holds(&id) {
        let answer = Answer {
            id,
            message: (!side.legacy).then_some(Message::DontHave(id)),
            permit: None,
        };
        if let Err(TrySendError::Full(answer)) = side.answers.try_send(answer) {
            let side = Arc::clone(side);
            tokio::spawn(async move { side.answers.send(answer).await });
        }
        return Ok(());
    }
    let pieces = Arc::clone(pieces);
    let side = Arc::clone(side);
    tokio::spawn(async move {
        pieces.metrics.incr(Metric::ServeAnswersWaiting);
        let permit = Arc::clone(&pieces.serve_budget)
            .acquire_many_owned(PIECE_UNITS)
            .await;
        pieces.metrics.decr(Metric::ServeAnswersWaiting);
        let Ok(permit) = permit else {
            return;
        };
        if !side.book().is_queued(&id) {
            return; // cancelled while waiting for its turn
        }
        let piece = read_piece(&pieces, id).await;
        let message = match piece {
            Some(bytes) if !side.legacy => Give::new(id, bytes).ok().map(Message::Give),
            Some(bytes) if bytes.len() == LEGACY_PIECE_BYTES => {
                Give::new(id, bytes).ok().map(Message::Give)
            }
            // A legacy peer reads only 128 KiB GIVEs and no DONT_HAVE: silence.
            _ if side.legacy => None,
            _ => Some(Message::DontHave(id)),
        };
        let answer = Answer {
            id,
            message,
            permit: Some(permit),
        };
        // Bounded queue: waits while the writer is busy, never blocks reading.
        let _ = side.answers.send(answer).await;
    });
    Ok(())
}

/// The piece from the store, read on the blocking pool; `None` if absent
/// or unreadable (a corrupt copy is removed by the store and not served).
pub(crate) async fn read_piece(pieces: &Arc<Pieces>, id: PieceId) -> Option<Bytes> {
    if let Some(bytes) = pieces.fetched(&id) {
        return Some(bytes);
    }
    let store = Arc::clone(&pieces.store);
    match tokio::task::spawn_blocking(move || store.get(&id)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(err)) => {
            debug!(%id, %err, "store read failed");
            None
        }
        Err(_) => None,
    }
}

/// A peer's CANCEL: drop its queued answer if it has not started.
pub(crate) fn on_cancel(pieces: &Pieces, side: &ServeSide, id: PieceId) {
    if side.book().take(&id) {
        pieces.metrics.incr(Metric::CancelsReceivedTotal);
    } else {
        pieces.metrics.incr(Metric::IgnoredFramesTotal);
    }
}

/// Called by the writer before an answer goes out: false if the ASK was
/// cancelled meanwhile (the answer is dropped) or there is nothing to send
/// (a legacy peer we do not answer). Whoever takes the answer off the books
/// ends the ASK's in-flight count.
pub(crate) fn start_answer(
    pieces: &Pieces,
    side: &ServeSide,
    id: &PieceId,
    message: Option<&Message>,
) -> bool {
    let mut book = side.book();
    if !book.take(id) {
        return false;
    }
    if let Some(Message::Give(give)) = message {
        if side.legacy {
            let at = now();
            book.legacy_answered
                .retain(|_, answered| at.duration_since(*answered) < LEGACY_ANSWER_INTERVAL);
            book.legacy_answered.insert(*id, at);
        }
        pieces.metrics.incr(Metric::PiecesServedTotal);
        pieces
            .metrics
            .add(Metric::PieceBytesServedTotal, give.piece().len() as u64);
    }
    message.is_some()
}

impl Pieces {
    /// Whether the node can serve `id` now: in the store's index, or just
    /// fetched with its cache copy still being written. Memory only.
    pub(crate) fn holds(&self, id: &PieceId) -> bool {
        self.store.has(id) || self.fetched(id).is_some()
    }

    /// The piece, if a fetch for it has just finished and its cache copy is
    /// still being written: peers asking meanwhile are answered from it.
    pub(crate) fn fetched(&self, id: &PieceId) -> Option<Bytes> {
        let fetches = self.fetches.lock().unwrap_or_else(PoisonError::into_inner);
        let result = fetches.get(id)?.result.borrow();
        match result.as_ref() {
            Some(Ok(fetched)) => Some(fetched.bytes.clone()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> PieceId {
        PieceId::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn a_dont_have_waits_for_room_in_a_full_answer_queue_and_is_never_lost() {
        let pieces = Pieces::for_tests();
        let (side, mut answers) = ServeSide::new(false);
        let side = Arc::new(side);
        // The queue full of answers the writer has not taken yet.
        let queued = |n: usize| PieceId::of(&n.to_le_bytes());
        for n in 0..MAX_ASKS_IN_FLIGHT {
            let answer = Answer {
                id: queued(n),
                message: None,
                permit: None,
            };
            assert!(side.answers.try_send(answer).is_ok());
        }
        let absent = PieceId::of(b"nobody has this");
        on_ask(&pieces, &side, absent).unwrap();
        for n in 0..MAX_ASKS_IN_FLIGHT {
            assert_eq!(answers.recv().await.unwrap().id, queued(n));
        }
        let wait = std::time::Duration::from_secs(5);
        let answer = tokio::time::timeout(wait, answers.recv()).await;
        let answer = answer.expect("the DONT_HAVE was lost").unwrap();
        assert_eq!(answer.id, absent);
        assert_eq!(answer.message, Some(Message::DontHave(absent)));
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
