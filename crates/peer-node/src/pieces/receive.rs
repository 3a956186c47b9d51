//! Receiving GIVEs that answer our ASKs: a large one is hashed on a
//! blocking thread while it arrives (streamed), a smaller one once whole;
//! either way the piece reaches its fetch only once whole and matching its
//! name. A mismatch bans the liar and closes its connection; a late answer
//! nobody waits for goes to the cache. A large GIVE that answers nothing we
//! asked is read off and dropped as it arrives, never held.
//!
//! Uses the exchange's state, the swarm's bans, [`crate::net`]'s reader.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use piece_store::{Durability, Retention};
use tokio::io::AsyncRead;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tracing::warn;
use wire_format::limits::PIECE_MAX;
use wire_format::{Give, PieceError, PieceHasher, PieceId, VerifiedPiece};

use super::events::FetchEvent;
use super::link::Link;
use super::state::Pieces;
use crate::clock::now;
use crate::metrics::Metric;
use crate::net::FrameReader;

/// A GIVE whose piece is at least this many bytes is hashed while it
/// arrives: its chunks go to a hashing thread as they are read, so the hash
/// is done soon after the last byte instead of starting then.
pub const STREAM_GIVES_FROM: usize = 64 << 10;

/// Bytes handed to the hashing thread at a time while a piece arrives (the
/// last chunk of a piece may be shorter): fewer wake-ups than one per read.
pub const STREAM_CHUNK_BYTES: usize = 128 << 10;

/// The large GIVE of one connection on its way in, between its header and
/// its last byte (a connection carries one frame at a time).
#[derive(Debug, Default)]
pub(crate) struct GiveIntake {
    /// The GIVE being hashed while it arrives, and how to tell its hashing
    /// thread, once the last byte is in, whether it answers an ASK of ours
    /// (`true`: a late answer). Dropped unsent, the thread drops the piece.
    streaming: Option<(PieceId, oneshot::Sender<bool>)>,
    /// A GIVE is being read off and dropped: it answered nothing of ours
    /// when its head arrived, so it cannot answer an ASK sent since.
    dropping: bool,
}

impl GiveIntake {
    /// The header of a large GIVE has arrived. If it names a piece we asked
    /// this peer for and a streaming slot is free, its bytes are hashed on a
    /// blocking thread as they arrive; if it names nothing we asked, it is
    /// read off and dropped, never held; otherwise it is read whole and
    /// judged as before. Never waits: a peer trickling its GIVE holds a
    /// streaming slot, not a verify slot, so it cannot hold up verification.
    pub(crate) fn start<R: AsyncRead + Unpin>(
        &mut self,
        pieces: &Arc<Pieces>,
        link: &Arc<Link>,
        reader: &mut FrameReader<R>,
        id: PieceId,
    ) {
        if !link.ask_book().expects(&id, now()) {
            self.dropping = reader.discard_piece();
            return;
        }
        let Ok(slot) = Arc::clone(&pieces.stream_slots).try_acquire_owned() else {
            return;
        };
        // Room for every chunk of the largest piece: the reader never waits
        // for the hashing thread (the bytes are in its buffer anyway).
        let (chunks, mut rx) = mpsc::channel(PIECE_MAX.div_ceil(STREAM_CHUNK_BYTES) + 1);
        if !reader.stream_piece(chunks, STREAM_CHUNK_BYTES) {
            return;
        }
        pieces.metrics.incr(Metric::GivesStreamedTotal);
        let (verdict, verdict_rx) = oneshot::channel();
        self.streaming = Some((id, verdict));
        let pieces = Arc::clone(pieces);
        let link = Arc::clone(link);
        on_hashing_thread(slot, move || {
            let mut hasher = PieceHasher::new(id);
            while let Some(chunk) = rx.blocking_recv() {
                hasher.update(chunk);
            }
            // No verdict: the connection ended mid-piece, or the GIVE turned
            // out unsolicited by the time it was whole.
            if let Ok(late) = verdict_rx.blocking_recv() {
                let len = hasher.len() as u64;
                finish_give(&pieces, &link, id, len, hasher.finish(), late);
            }
        });
    }

    /// The last byte of a streamed or dropped GIVE is in. `true`: it was
    /// dropped (the caller counts it as unsolicited).
    pub(crate) fn was_dropped(&mut self) -> bool {
        std::mem::take(&mut self.dropping)
    }

    /// Tells the streamed GIVE `id`'s hashing thread what it answers:
    /// `Some(late)` an ASK of ours (`late`: one we no longer wait for),
    /// `None` nothing (the thread drops the piece).
    pub(crate) fn deliver(&mut self, id: &PieceId, answers: Option<bool>) {
        if let Some((streamed, verdict)) = self.streaming.take()
            && streamed == *id
            && let Some(late) = answers
        {
            let _ = verdict.send(late);
        }
    }
}

/// A GIVE that answers one of our ASKs (or is a late answer to one): wait
/// for a slot (bounding the bytes being verified or written node-wide to
/// `VERIFY_QUEUE_PIECES` pieces), then, on the blocking pool while this
/// connection goes on reading: hash, hand the piece to its fetch, and write
/// the cache copy of a late answer.
///
/// Everything after the hash runs on the same blocking thread (delivering
/// is a channel send, a ban is a few locks, a cache copy is blocking I/O
/// anyway): no task hop between "verified" and "the fetch has it".
pub(crate) async fn receive_give(pieces: &Arc<Pieces>, link: &Arc<Link>, give: Give, late: bool) {
    let Ok(slot) = Arc::clone(&pieces.verify_slots).acquire_owned().await else {
        return;
    };
    let pieces = Arc::clone(pieces);
    let link = Arc::clone(link);
    // The slot is held until the cache copy is written too: a disk slower
    // than the network then slows the reader (bounded memory), instead of
    // piling up pieces waiting for the disk.
    on_hashing_thread(slot, move || {
        let (id, bytes) = give.into_parts();
        let len = bytes.len() as u64;
        finish_give(
            &pieces,
            &link,
            id,
            len,
            VerifiedPiece::verify(id, bytes),
            late,
        );
    });
}

/// Runs `work` (hashing a piece, then handing it on) on the blocking pool,
/// in the connection's tracing span, holding `slot` until it is done.
fn on_hashing_thread(slot: OwnedSemaphorePermit, work: impl FnOnce() + Send + 'static) {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _span = span.entered();
        let _slot = slot;
        work();
    });
}

/// After the hash of a GIVE that answered one of our ASKs: a match goes to
/// its fetch (or, a late answer nobody waits for, to the cache); a mismatch
/// bans the peer, closes it, and sends the fetch elsewhere. Runs on the
/// hashing thread: no task hop between "verified" and "the fetch has it".
fn finish_give(
    pieces: &Pieces,
    link: &Link,
    id: PieceId,
    len: u64,
    verified: Result<VerifiedPiece, PieceError>,
    late: bool,
) {
    match verified {
        Ok(piece) => {
            pieces.metrics.incr(Metric::PiecesFetchedTotal);
            pieces.metrics.add(Metric::PieceBytesFetchedTotal, len);
            if late {
                pieces.metrics.add(Metric::DuplicateBytesTotal, len);
            } else {
                pieces.last_giver.store(link.id, Ordering::Relaxed);
            }
            // A running fetch takes the piece (and writes its cache copy
            // once the requesters have it); otherwise, a late answer,
            // it is cached here, durable with the next group commit.
            let copy = piece.clone();
            if !pieces.fetch_event(&id, FetchEvent::Gave(link.id, piece))
                && !pieces.store.has(&copy.id())
            {
                let _ = pieces
                    .store
                    .put(copy, Retention::Cached, Durability::Background);
            }
        }
        Err(err) => {
            // Proof of a lie: ban, close, and let the fetch go elsewhere.
            pieces.metrics.incr(Metric::BansTotal);
            warn!(conn = link.id, %id, %err, "peer sent a piece that does not match its name; banned");
            pieces.swarm.ban(
                link.remote.ip(),
                link.listen_port,
                link.node_id,
                format!("sent a piece that does not match its name ({err})"),
                Some(id),
            );
            link.close_with("banned");
            pieces.fetch_event(&id, FetchEvent::Lied(link.id));
        }
    }
}
