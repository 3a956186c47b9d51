//! The connection task once past HELLO: registration, the read loop with
//! the close-or-count rules of docs/PROTOCOL.md §4 (every frame a peer
//! sends is dispatched from here: PEERS to the swarm; ASK, CANCEL and
//! WANT_HAVE to serving; GIVE, HAVE and DONT_HAVE to fetching), and the
//! writer that drains the connection's queues.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::io::AsyncRead;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::timeout;
use tracing::{Instrument, debug, info, warn};
use wire_format::limits::{
    IDLE_TIMEOUT, KEEPALIVE_INTERVAL, MAX_UNSOLICITED_GIVES_PER_MINUTE, PEX_INTERVAL,
    PEX_MAX_FRAMES_PER_INTERVAL, SHUTDOWN_GRACE,
};
use wire_format::{Hello, Message, PeerAddr, Peers, PieceId};

use super::error::{SessionError, count_close};
use crate::clock::now;
use crate::metrics::{Family, Metric};
use crate::net::{self, Closer, ConnError, Frame, FrameReader};
use crate::pieces::{
    self, Answer, Answered, FetchEvent, GiveIntake, Link, Pieces, STREAM_GIVES_FROM, ServeSide,
    WIDEN_DONE,
};
use crate::swarm::table::Source;
use crate::swarm::{self, DUPLICATE_CLOSE, Direction, NewConn, REPLACED_CLOSE};

/// A process-wide number for each connection (its id and its tracing span).
pub(crate) fn next_conn_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The close label of a connection ended by the node's shutdown.
const NODE_SHUTDOWN: &str = "node_shutdown";

/// A connection past the HELLO exchange, ready to be served.
pub(super) struct Handshaken {
    pub(super) reader: FrameReader<OwnedReadHalf>,
    pub(super) wr: OwnedWriteHalf,
    pub(super) remote: PeerAddr,
    pub(super) direction: Direction,
    /// The address we dialled, for outbound connections.
    pub(super) dialed: Option<PeerAddr>,
    /// The peer's HELLO; `None` for a legacy peer.
    pub(super) hello: Option<Hello>,
    /// A legacy peer's first frame, already read.
    pub(super) legacy_first: Option<Message>,
}

/// Runs a connection to its end. `record`: whether it is registered (a
/// CLIENT connection gets the same answers but is never recorded).
pub(super) async fn serve(
    pieces: Arc<Pieces>,
    conn: Handshaken,
    record: bool,
) -> Result<(), SessionError> {
    let Handshaken {
        mut reader,
        wr,
        remote,
        direction,
        dialed,
        hello,
        legacy_first,
    } = conn;
    let swarm = Arc::clone(&pieces.swarm);
    let mut node_closing = swarm.closing.subscribe();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    reader.set_progress_counter(Arc::clone(&bytes_in));
    let legacy = hello.is_none();
    let closer = Arc::new(Closer::default());
    let conn_id = next_conn_id();
    let (serving, answers) = ServeSide::new(legacy);
    let serving = Arc::new(serving);
    let (link, frames) = Link::new(
        conn_id,
        remote,
        hello,
        Arc::clone(&bytes_in),
        Arc::clone(&closer),
        now(),
    );
    let link = Arc::new(link);
    let mut close_rx = closer.subscribe();
    if record {
        let registered = swarm.register(NewConn {
            id: conn_id,
            remote,
            direction,
            dialed,
            hello,
            closer: Arc::clone(&closer),
            bytes_in: Arc::clone(&bytes_in),
            bytes_out: Arc::clone(&bytes_out),
        });
        if !registered {
            debug!("duplicate connection closed by the node_id rule");
            swarm
                .metrics
                .incr_labelled(Family::ConnectionsClosedTotal, DUPLICATE_CLOSE);
            return Ok(());
        }
        pieces.add_link(&link);
    }
    info!(
        conn = conn_id,
        node = %hello.map_or_else(|| "legacy".to_owned(), |h| h.node_id().to_string()),
        version = hello.map_or(0, |h| h.negotiated_version()),
        legacy,
        "connected"
    );
    if record
        && direction == Direction::In
        && let Some(hello) = hello
    {
        swarm.probe_inbound(conn_id, remote, hello);
    }
    let writer = tokio::spawn(
        run_writer(
            Arc::clone(&pieces),
            Arc::clone(&link),
            Arc::clone(&serving),
            wr,
            (answers, frames),
            Arc::clone(&bytes_out),
        )
        .in_current_span(),
    );
    let mut rules = Rules::new(serving);
    // Bytes read so far that the node-wide counter has: it grows as frames
    // arrive, not only when the connection ends.
    let mut counted: u64 = 0;
    let result = async {
        if let Some(first) = legacy_first {
            rules.handle(&pieces, &link, first).await?;
        }
        loop {
            let frame = tokio::select! {
                read = timeout(IDLE_TIMEOUT, reader.next_frame(STREAM_GIVES_FROM)) => match read {
                    Err(_) => return Err(ConnError::Timeout { what: "idle", after: IDLE_TIMEOUT }),
                    Ok(result) => result?,
                },
                _ = close_rx.wait_for(|closed| *closed) => return Err(ConnError::Rule(closer.reason())),
                _ = node_closing.wait_for(|closing| *closing) => {
                    return Err(ConnError::Rule(NODE_SHUTDOWN));
                }
            };
            let read = reader.bytes_in();
            swarm.metrics.add(Metric::BytesInTotal, read - counted);
            counted = read;
            match frame {
                None => return Ok(()),
                Some(Frame::Message(message)) => rules.handle(&pieces, &link, message).await?,
                Some(Frame::GiveHead { id, .. }) => {
                    rules.start_give(&pieces, &link, &mut reader, id);
                }
                Some(Frame::GiveEnd { id, .. }) => rules.end_give(&pieces, &link, &id)?,
            }
        }
    }
    .await;
    closer.mark_closed();
    swarm
        .metrics
        .add(Metric::BytesInTotal, reader.bytes_in() - counted);
    if record {
        swarm.remove(conn_id);
    }
    // Fetches using this connection look elsewhere.
    pieces.remove_link(&link);
    drop(link);
    // Let queued answers go out before the socket closes, within bounds.
    let _ = timeout(SHUTDOWN_GRACE, writer).await;
    match result {
        Ok(()) => {
            swarm
                .metrics
                .incr_labelled(Family::ConnectionsClosedTotal, "peer_closed");
            debug!("peer closed");
            Ok(())
        }
        Err(err) => {
            count_close(&swarm.metrics, &err);
            match &err {
                ConnError::Rule(NODE_SHUTDOWN) => return Err(SessionError::Shutdown),
                // Two nodes dialling each other at once: the rule closed the
                // spare connection; nobody did wrong.
                ConnError::Rule(DUPLICATE_CLOSE) => debug!("duplicate connection closed"),
                // A connection dialled only to ask for a piece, done with.
                ConnError::Rule(WIDEN_DONE) => debug!("widening connection closed"),
                // A full node made room for a newcomer: nothing went wrong.
                ConnError::Rule(REPLACED_CLOSE) => debug!("idle connection replaced by a newcomer"),
                ConnError::Protocol(_) | ConnError::Rule(_) => warn!(%err, "closing"),
                _ => debug!(%err, "connection ended"),
            }
            Err(err.into())
        }
    }
}

/// Per-connection state of the close-or-count rules, and the serving side
/// the peer's ASKs and CANCELs go to.
#[derive(Debug)]
struct Rules {
    serving: Arc<ServeSide>,
    pex_window: Option<Instant>,
    pex_frames: usize,
    give_window: Option<Instant>,
    unsolicited_gives: usize,
    /// The large GIVE between its header and its last byte.
    intake: GiveIntake,
}

impl Rules {
    fn new(serving: Arc<ServeSide>) -> Self {
        Self {
            serving,
            pex_window: None,
            pex_frames: 0,
            give_window: None,
            unsolicited_gives: 0,
            intake: GiveIntake::default(),
        }
    }
}

/// Counts an event in a one-minute window; returns the count in the window.
fn count_in_window(window: &mut Option<Instant>, count: &mut usize, now: Instant) -> usize {
    if window.is_none_or(|start| now.duration_since(start) >= PEX_INTERVAL) {
        *window = Some(now);
        *count = 0;
    }
    *count += 1;
    *count
}

impl Rules {
    async fn handle(
        &mut self,
        pieces: &Arc<Pieces>,
        link: &Arc<Link>,
        message: Message,
    ) -> Result<(), ConnError> {
        let at = now();
        let legacy = link.legacy;
        match message {
            Message::Hello(_) => return Err(ConnError::Rule("hello_not_first")),
            m if legacy && m.kind().is_extension() => {
                return Err(ConnError::Rule("extension_from_legacy"));
            }
            Message::Peers(peers) => {
                pieces.metrics.incr(Metric::PexFramesReceivedTotal);
                if peers.entries().is_empty() {
                    return Ok(()); // keepalive
                }
                let frames = count_in_window(&mut self.pex_window, &mut self.pex_frames, at);
                if frames > PEX_MAX_FRAMES_PER_INTERVAL {
                    if legacy {
                        // The reference repeats itself every few seconds: ignore, don't punish.
                        pieces.metrics.incr(Metric::IgnoredFramesTotal);
                        return Ok(());
                    }
                    return Err(ConnError::Rule("too_many_peers_frames"));
                }
                // A legacy peer's entries become legacy candidates (observed
                // IP, port from its PEERS), taken only on loopback.
                swarm::offer(&pieces.swarm, link.remote.ip(), &peers, Source::Pex, legacy);
            }
            Message::Give(give) => {
                if let Some(late) = self.answer_give(pieces, link, &give.id(), at)? {
                    pieces::receive_give(pieces, link, give, late).await;
                }
            }
            Message::Ask(id) => {
                pieces::on_ask(pieces, &self.serving, id).map_err(ConnError::Rule)?
            }
            Message::WantHave(id) => {
                pieces.metrics.incr(Metric::WantHaveReceivedTotal);
                answer_want_have(pieces, link, id);
            }
            Message::Cancel(id) => pieces::on_cancel(pieces, &self.serving, id),
            Message::Have(id) => {
                // An answer or an announcement: either way the peer holds
                // it, and a fetch of it that runs may ask.
                link.note_announced(id);
                if link.ask_book().wanted.remove(&id) {
                    pieces.metrics.incr(Metric::HaveReceivedTotal);
                } else {
                    pieces.metrics.incr(Metric::HaveAnnouncementsReceivedTotal);
                }
                pieces.fetch_event(&id, FetchEvent::Have(link.id));
            }
            Message::DontHave(id) => {
                link.forget_announced(&id);
                let wanted = link.ask_book().wanted.remove(&id);
                let (answered, next) = if wanted {
                    (Answered::Outstanding, None)
                } else {
                    link.ask_book().on_answer(&id, at)
                };
                if let Some(next) = next {
                    link.send(next);
                }
                if answered == Answered::Outstanding {
                    pieces.metrics.incr(Metric::DontHaveReceivedTotal);
                    pieces.fetch_event(&id, FetchEvent::DontHave(link.id));
                } else {
                    // For a digest we did not ask (or no longer wait for): count.
                    pieces.metrics.incr(Metric::IgnoredFramesTotal);
                }
            }
        }
        Ok(())
    }
}

impl Rules {
    /// A GIVE has arrived whole: marks its ASK answered. `Some(late)` if it
    /// answers one of ours; `None` if unsolicited (counted, and past the
    /// per-minute cap an extended peer is closed).
    fn answer_give(
        &mut self,
        pieces: &Pieces,
        link: &Link,
        id: &PieceId,
        at: Instant,
    ) -> Result<Option<bool>, ConnError> {
        let (answered, next) = link.ask_book().on_answer(id, at);
        if let Some(next) = next {
            link.send(next);
        }
        if answered == Answered::Unsolicited {
            self.unsolicited(pieces, link, at)?;
            return Ok(None);
        }
        Ok(Some(answered == Answered::Late))
    }

    /// An unsolicited GIVE: counted, and past the per-minute cap an
    /// extended peer is closed.
    fn unsolicited(&mut self, pieces: &Pieces, link: &Link, at: Instant) -> Result<(), ConnError> {
        pieces.metrics.incr(Metric::UnsolicitedGivesTotal);
        let n = count_in_window(&mut self.give_window, &mut self.unsolicited_gives, at);
        if !link.legacy && n > MAX_UNSOLICITED_GIVES_PER_MINUTE {
            return Err(ConnError::Rule("too_many_unsolicited_gives"));
        }
        Ok(())
    }

    /// The header of a large GIVE has arrived: stream it, drop it, or leave
    /// it to be read whole ([`GiveIntake::start`]).
    fn start_give<R: AsyncRead + Unpin>(
        &mut self,
        pieces: &Arc<Pieces>,
        link: &Arc<Link>,
        reader: &mut FrameReader<R>,
        id: PieceId,
    ) {
        self.intake.start(pieces, link, reader, id);
    }

    /// The last byte of a streamed GIVE has gone to its hashing thread, or
    /// that of a dropped one has been read off.
    fn end_give(&mut self, pieces: &Pieces, link: &Link, id: &PieceId) -> Result<(), ConnError> {
        if self.intake.was_dropped() {
            return self.unsolicited(pieces, link, now());
        }
        let answers = self.answer_give(pieces, link, id, now())?;
        self.intake.deliver(id, answers);
        Ok(())
    }
}

/// A peer's WANT_HAVE: HAVE or DONT_HAVE, from the in-memory index. With
/// [`WRITE_QUEUE_FRAMES`](pieces::WRITE_QUEUE_FRAMES) answers already waiting for a peer that does not
/// read them, it is ignored and counted (docs/PROTOCOL.md has no close row
/// for it; the reader never waits).
fn answer_want_have(pieces: &Pieces, link: &Link, id: PieceId) {
    let message = if pieces.holds(&id) {
        Message::Have(id)
    } else {
        Message::DontHave(id)
    };
    if !link.send(message) {
        pieces.metrics.incr(Metric::IgnoredFramesTotal);
    }
}

/// A GIVE waiting for upload tokens: its ASK's digest, the frame, and its
/// serving budget. It has not started: a CANCEL still drops it, and it
/// still counts as unanswered.
type WaitingGive = (PieceId, Message, Option<OwnedSemaphorePermit>);

/// The connection's writer: control frames go out at once; GIVEs wait for
/// the upload rate limit in their own line, so a rate limit never delays
/// a control frame behind a piece. A GIVE starts (leaves the peer's
/// in-flight count, can no longer be cancelled) only once its tokens are
/// granted. The line holds at most the peer's unanswered ASKs.
async fn run_writer(
    pieces: Arc<Pieces>,
    link: Arc<Link>,
    serving: Arc<ServeSide>,
    mut wr: OwnedWriteHalf,
    (mut rx, mut frames): (mpsc::Receiver<Answer>, mpsc::Receiver<Message>),
    bytes_out: Arc<AtomicU64>,
) {
    let mut frames_open = true;
    let peer = link.node_id;
    let legacy = link.legacy;
    let mut last_sent = tokio::time::Instant::now();
    let mut next_pex = last_sent + PEX_INTERVAL;
    let mut closed = link.closer.subscribe();
    let mut gives: VecDeque<WaitingGive> = VecDeque::new();
    let mut tokens: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut draining = false;
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        // Cancelled GIVEs at the head of the line go without costing tokens.
        while tokens.is_none()
            && gives
                .front()
                .is_some_and(|(id, _, _)| !serving.book().is_queued(id))
        {
            gives.pop_front();
        }
        if tokens.is_none()
            && let Some((_, Message::Give(give), _)) = gives.front()
        {
            // Only with `--max-upload-rate` does a GIVE wait for anything.
            let upload = pieces.upload.clone();
            let len = give.piece().len();
            tokens = Some(Box::pin(async move {
                if let Some(upload) = upload {
                    upload.acquire(len).await;
                }
            }));
        }
        if draining && gives.is_empty() {
            return;
        }
        let keepalive_at = last_sent + KEEPALIVE_INTERVAL;
        let (message, _permit) = tokio::select! {
            m = rx.recv(), if !draining => match m {
                None => {
                    // Finish the pieces already booked, then stop.
                    draining = true;
                    continue;
                }
                Some(Answer { id, message: Some(give @ Message::Give(_)), permit }) => {
                    gives.push_back((id, give, permit));
                    continue;
                }
                Some(Answer { id, message, permit }) => {
                    if !pieces::start_answer(&pieces, &serving, &id, message.as_ref()) {
                        continue; // cancelled, or nothing to say to a legacy peer
                    }
                    let Some(message) = message else { continue };
                    (message, permit)
                }
            },
            f = frames.recv(), if !draining && frames_open => match f {
                None => {
                    frames_open = false;
                    continue;
                }
                Some(message) => {
                    if matches!(message, Message::Cancel(_)) {
                        pieces.metrics.incr(Metric::CancelsSentTotal);
                    }
                    (message, None)
                }
            },
            () = async {
                if let Some(t) = tokens.as_mut() {
                    t.await;
                }
            }, if tokens.is_some() => {
                tokens = None;
                let Some((id, give, permit)) = gives.pop_front() else { continue };
                if !pieces::start_answer(&pieces, &serving, &id, Some(&give)) {
                    continue; // cancelled while it waited
                }
                (give, permit)
            }
            () = tokio::time::sleep_until(next_pex), if !draining => {
                next_pex += PEX_INTERVAL;
                let entries = pieces.swarm.dialable_peers(peer, legacy);
                if entries.is_empty() {
                    continue;
                }
                pieces.metrics.incr(Metric::PexFramesSentTotal);
                (Message::Peers(Peers::new(entries).unwrap_or_default()), None)
            }
            () = tokio::time::sleep_until(keepalive_at), if !draining => (Message::Peers(Peers::empty()), None),
            _ = closed.changed() => return,
        };
        match net::write_message(&mut wr, &message).await {
            Ok(n) => {
                bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                pieces.metrics.add(Metric::BytesOutTotal, n as u64);
                last_sent = tokio::time::Instant::now();
            }
            Err(err) => {
                debug!(%err, "write failed");
                // A stuck reader (no progress on a GIVE) or a dead socket.
                link.close_with(err.reason());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::WRITE_QUEUE_FRAMES;

    #[tokio::test]
    async fn want_haves_past_the_unread_write_queue_are_ignored_and_counted_not_closed() {
        let pieces = Pieces::for_tests();
        // A peer that does not read.
        let remote = "127.0.0.1:40000".parse().unwrap();
        let (link, mut frames) = Link::new(1, remote, None, Arc::default(), Arc::default(), now());
        let id = |n: usize| PieceId::of(&n.to_le_bytes());
        for n in 0..WRITE_QUEUE_FRAMES {
            answer_want_have(&pieces, &link, id(n));
        }
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES);
        assert_eq!(pieces.metrics.value(Metric::IgnoredFramesTotal), 0);

        answer_want_have(&pieces, &link, id(WRITE_QUEUE_FRAMES));
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES, "nothing more is queued");
        assert_eq!(pieces.metrics.value(Metric::IgnoredFramesTotal), 1);
        assert!(!link.is_closed(), "ignored, not closed");

        // Once the peer reads one answer, the next WANT_HAVE is answered.
        assert_eq!(frames.recv().await, Some(Message::DontHave(id(0))));
        answer_want_have(&pieces, &link, id(WRITE_QUEUE_FRAMES + 1));
        assert_eq!(frames.len(), WRITE_QUEUE_FRAMES);
        assert_eq!(pieces.metrics.value(Metric::IgnoredFramesTotal), 1);
    }
}
