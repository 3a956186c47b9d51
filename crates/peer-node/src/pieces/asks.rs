//! The ASKs and WANT_HAVEs this node sent on one connection: at most the
//! peer's in-flight cap outstanding (the rest wait for a slot), when each
//! became first in line (ask deadlines measure progress, not queueing), and
//! a bounded history that tells a late answer from an unsolicited GIVE.
//!
//! Plain data; uses only wire-format.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;
use wire_format::limits::{
    ASK_HISTORY_MAX, ASK_HISTORY_TTL, LEGACY_MAX_ASKS_IN_FLIGHT, MAX_ASKS_IN_FLIGHT,
};
use wire_format::{Message, PieceId};

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

    /// Our ASKs on this connection, sent or waiting for a slot: how busy
    /// the peer is with us (holders are chosen least busy first).
    pub(crate) fn load(&self) -> usize {
        self.outstanding.len() + self.waiting.len()
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
}
