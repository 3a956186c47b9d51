//! Serving: answering peers' ASK, WANT_HAVE and CANCEL from the store.
//!
//! Reading never stops for serving: an ASK only books the answer and starts
//! a task that waits for its share of the serving byte budget (a FIFO
//! semaphore, so connections are served in turn), reads the store on the
//! blocking pool and hands the answer to the connection's writer. An ASK for
//! a piece the index does not have is answered at once, without a share.
//! Worst-case memory: [`SERVE_BUDGET_BYTES`] of pieces read for writing, plus
//! `MAX_ASKS_IN_FLIGHT` booked answers per connection.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::error::TrySendError;
use tracing::debug;
use wire_format::limits::{
    LEGACY_ANSWER_INTERVAL, LEGACY_MAX_ASKS_IN_FLIGHT, LEGACY_PIECE_BYTES, MAX_ASKS_IN_FLIGHT,
    PIECE_MAX,
};
use wire_format::{Give, Message, PieceId};

use crate::conn::ConnError;
use crate::link::{Answer, Link};
use crate::metrics::Metric;
use crate::node::{Shared, now};

/// Bytes of pieces read from the store and waiting to be written, across
/// all connections.
pub const SERVE_BUDGET_BYTES: usize = 64 << 20;
/// Budget units are KiB (semaphore permits are counted in u32).
pub(crate) const BUDGET_UNIT: usize = 1 << 10;
/// Units one answer reserves: a whole piece, whatever its size.
#[allow(clippy::cast_possible_truncation)] // 1024: checked below
pub(crate) const PIECE_UNITS: u32 = (PIECE_MAX / BUDGET_UNIT) as u32;
const _: () = assert!(PIECE_MAX / BUDGET_UNIT <= u32::MAX as usize);

/// A peer's ASK: book it, or close an extended peer over the cap; a legacy
/// peer's excess and repeats are dropped and counted.
pub(crate) fn on_ask(shared: &Arc<Shared>, link: &Arc<Link>, id: PieceId) -> Result<(), ConnError> {
    {
        let mut book = link.serve_book();
        if link.legacy {
            let repeat = book.is_queued(&id)
                || book
                    .legacy_answered
                    .get(&id)
                    .is_some_and(|at| now().duration_since(*at) < LEGACY_ANSWER_INTERVAL);
            if repeat || book.in_flight >= LEGACY_MAX_ASKS_IN_FLIGHT {
                shared.metrics.incr(Metric::IgnoredFramesTotal);
                return Ok(());
            }
        } else if book.in_flight >= MAX_ASKS_IN_FLIGHT {
            return Err(ConnError::Rule("too_many_asks"));
        }
        book.queue(id);
    }
    // Nothing to read: say so at once (silence, to a legacy peer). A
    // DONT_HAVE takes no share of the serving budget, so a node busy
    // serving still says "no" without waiting behind GIVEs. The queue holds
    // every answer the peer may have booked, so it has room.
    if !shared.holds(&id) {
        let answer = Answer {
            id,
            message: (!link.legacy).then_some(Message::DontHave(id)),
            permit: None,
        };
        if let Err(TrySendError::Full(answer)) = link.answers.try_send(answer) {
            let link = Arc::clone(link);
            tokio::spawn(async move { link.answers.send(answer).await });
        }
        return Ok(());
    }
    let shared = Arc::clone(shared);
    let link = Arc::clone(link);
    tokio::spawn(async move {
        shared.metrics.incr(Metric::ServeAnswersWaiting);
        let permit = Arc::clone(&shared.serve_budget)
            .acquire_many_owned(PIECE_UNITS)
            .await;
        shared.metrics.decr(Metric::ServeAnswersWaiting);
        let Ok(permit) = permit else {
            return;
        };
        if !link.serve_book().is_queued(&id) {
            return; // cancelled while waiting for its turn
        }
        let piece = read_piece(&shared, id).await;
        let message = match piece {
            Some(bytes) if !link.legacy => Give::new(id, bytes).ok().map(Message::Give),
            Some(bytes) if bytes.len() == LEGACY_PIECE_BYTES => {
                Give::new(id, bytes).ok().map(Message::Give)
            }
            // A legacy peer reads only 128 KiB GIVEs and no DONT_HAVE: silence.
            _ if link.legacy => None,
            _ => Some(Message::DontHave(id)),
        };
        let answer = Answer {
            id,
            message,
            permit: Some(permit),
        };
        // Bounded queue: waits while the writer is busy, never blocks reading.
        let _ = link.answers.send(answer).await;
    });
    Ok(())
}

/// The piece from the store, read on the blocking pool; `None` if absent
/// or unreadable (a corrupt copy is removed by the store and not served).
pub(crate) async fn read_piece(shared: &Arc<Shared>, id: PieceId) -> Option<Bytes> {
    if let Some(bytes) = shared.fetched(&id) {
        return Some(bytes);
    }
    let store = Arc::clone(&shared.store);
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
pub(crate) fn on_cancel(shared: &Shared, link: &Link, id: PieceId) {
    if link.serve_book().take(&id) {
        shared.metrics.incr(Metric::CancelsReceivedTotal);
    } else {
        shared.metrics.incr(Metric::IgnoredFramesTotal);
    }
}

/// A peer's WANT_HAVE: HAVE or DONT_HAVE, from the in-memory index. With
/// [`WRITE_QUEUE_FRAMES`](crate::node::WRITE_QUEUE_FRAMES) answers already
/// waiting for a peer that does not read them, it is ignored and counted
/// (PROTOCOL.md has no close row for it; the reader never waits).
pub(crate) fn on_want_have(shared: &Shared, link: &Link, id: PieceId) {
    let message = if shared.holds(&id) {
        Message::Have(id)
    } else {
        Message::DontHave(id)
    };
    if !link.send(message) {
        shared.metrics.incr(Metric::IgnoredFramesTotal);
    }
}

/// Called by the writer before an answer goes out: false if the ASK was
/// cancelled meanwhile (the answer is dropped).
pub(crate) fn start_answer(
    shared: &Shared,
    link: &Link,
    id: &PieceId,
    message: Option<&Message>,
) -> bool {
    let mut book = link.serve_book();
    if !book.take(id) {
        return false;
    }
    if let Some(Message::Give(give)) = message {
        if link.legacy {
            let at = now();
            book.legacy_answered
                .retain(|_, answered| at.duration_since(*answered) < LEGACY_ANSWER_INTERVAL);
            book.legacy_answered.insert(*id, at);
        }
        shared.metrics.incr(Metric::PiecesServedTotal);
        shared
            .metrics
            .add(Metric::PieceBytesServedTotal, give.piece().len() as u64);
    }
    message.is_some()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::link::Queues;
    use crate::node::{Node, NodeConfig, WRITE_QUEUE_FRAMES, now};

    /// A node that dials nobody, and a link to a peer whose writer never
    /// runs (`hello`: `None` for a legacy peer), with the link's queues.
    async fn node_and_link(hello: Option<wire_format::Hello>) -> (Arc<Shared>, Arc<Link>, Queues) {
        let mut config = NodeConfig::new("127.0.0.1:0".parse().unwrap());
        config.target_outbound = 0;
        let shared = Node::bind(config).await.unwrap().shared();
        let remote = "127.0.0.1:40000".parse().unwrap();
        let (link, queues) = Link::new(1, remote, hello, Arc::new(AtomicU64::new(0)), now());
        (shared, Arc::new(link), queues)
    }

    #[tokio::test]
    async fn a_dont_have_waits_for_room_in_a_full_answer_queue_and_is_never_lost() {
        let hello = wire_format::Hello::ours(Some(40000), false, wire_format::NodeId([3; 8]));
        let (shared, link, (mut answers, _frames)) = node_and_link(Some(hello)).await;
        // The queue full of answers the writer has not taken yet.
        let queued = |n: usize| PieceId::of(&n.to_le_bytes());
        for n in 0..MAX_ASKS_IN_FLIGHT {
            let answer = Answer {
                id: queued(n),
                message: None,
                permit: None,
            };
            assert!(link.answers.try_send(answer).is_ok());
        }
        let absent = PieceId::of(b"nobody has this");
        on_ask(&shared, &link, absent).unwrap();
        for n in 0..MAX_ASKS_IN_FLIGHT {
            assert_eq!(answers.recv().await.unwrap().id, queued(n));
        }
        let wait = std::time::Duration::from_secs(5);
        let answer = tokio::time::timeout(wait, answers.recv()).await;
        let answer = answer.expect("the DONT_HAVE was lost").unwrap();
        assert_eq!(answer.id, absent);
        assert_eq!(answer.message, Some(Message::DontHave(absent)));
    }

    #[tokio::test]
    async fn want_haves_past_the_unread_write_queue_are_ignored_and_counted_not_closed() {
        // A peer that does not read.
        let (shared, link, (_answers, mut frames)) = node_and_link(None).await;
        let id = |n: usize| PieceId::of(&n.to_le_bytes());
        for n in 0..WRITE_QUEUE_FRAMES {
            on_want_have(&shared, &link, id(n));
        }
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES);
        assert_eq!(shared.metrics.value(Metric::IgnoredFramesTotal), 0);

        on_want_have(&shared, &link, id(WRITE_QUEUE_FRAMES));
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES, "nothing more is queued");
        assert_eq!(shared.metrics.value(Metric::IgnoredFramesTotal), 1);
        assert!(!link.is_closed(), "ignored, not closed");

        // Once the peer reads one answer, the next WANT_HAVE is answered.
        assert_eq!(frames.recv().await, Some(Message::DontHave(id(0))));
        on_want_have(&shared, &link, id(WRITE_QUEUE_FRAMES + 1));
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES);
        assert_eq!(shared.metrics.value(Metric::IgnoredFramesTotal), 1);
    }
}
