//! One connection of the node, from HELLO to close: the handshake in both
//! directions, the bootstrap announce, registration with the duplicate
//! rule, the read loop with the close-or-count rules, and the writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use piece_store::{Durability, Retention};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{Instrument, debug, info, info_span, warn};
use wire_format::limits::{
    IDLE_TIMEOUT, KEEPALIVE_INTERVAL, MAX_UNSOLICITED_GIVES_PER_MINUTE, PEX_INTERVAL,
    PEX_MAX_ENTRIES, PEX_MAX_FRAMES_PER_INTERVAL,
};
use wire_format::{
    AddrClass, Hello, Message, NodeId, PeerAddr, Peers, PieceError, PieceHasher, PieceId,
    VerifiedPiece,
};

use crate::api::Direction;
use crate::conn::{self, ConnError, Frame, FrameReader, PeerKind};
use crate::fetch::FetchEvent;
use crate::link::{Answer, Answered, Link};
use crate::metrics::{Family, Metric};
use crate::node::{ConnEntry, Shared, now};
use crate::table::{DropReason, Source};

/// A GIVE whose piece is at least this many bytes is hashed while it
/// arrives: its chunks go to a hashing thread as they are read, so the hash
/// is done soon after the last byte instead of starting then.
pub const STREAM_GIVES_FROM: usize = 64 << 10;

/// Bytes handed to the hashing thread at a time while a piece arrives (the
/// last chunk of a piece may be shorter): fewer wake-ups than one per read.
pub const STREAM_CHUNK_BYTES: usize = 128 << 10;

/// A process-wide number for each connection's tracing span.
pub(crate) fn next_span_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Why the connection was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A peer connection, kept while it is useful.
    Peer,
    /// A bootstrap announce: read the answer and close (unless the server
    /// turns out to be a legacy peer, whose connection is kept).
    Announce,
}

/// Resolves `server`, announces to it, and learns its peers.
pub(crate) async fn announce(shared: &Arc<Shared>, server: &str) -> Result<(), String> {
    let addr: SocketAddr = tokio::net::lookup_host(server)
        .await
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .next()
        .ok_or_else(|| format!("{server} resolves to nothing"))?;
    let stream = conn::connect(addr).await.map_err(|e| e.to_string())?;
    let span =
        info_span!("conn", peer = %addr, dir = "out", conn = next_span_id(), purpose = "announce");
    run(
        Arc::clone(shared),
        stream,
        Direction::Out,
        None,
        Purpose::Announce,
    )
    .instrument(span)
    .await
}

fn first_peers(
    shared: &Shared,
    me: Option<PeerAddr>,
    exclude: Option<NodeId>,
    legacy: bool,
) -> Message {
    let mut entries: Vec<PeerAddr> = me.into_iter().collect();
    entries.extend(shared.dialable_peers(exclude, legacy));
    entries.dedup();
    entries.truncate(PEX_MAX_ENTRIES);
    Message::Peers(Peers::new(entries).unwrap_or_default())
}

fn count_close(shared: &Shared, err: &ConnError) {
    shared
        .metrics
        .incr_labelled(Family::ConnectionsClosedTotal, err.reason());
    if let ConnError::Protocol(e) = err {
        shared
            .metrics
            .incr_labelled(Family::ProtocolErrorsTotal, e.kind());
    }
}

/// Runs one connection to its end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    direction: Direction,
    dialed: Option<PeerAddr>,
    purpose: Purpose,
) -> Result<(), String> {
    let remote = PeerAddr::from(stream.peer_addr().map_err(|e| e.to_string())?);
    let local = stream.local_addr().ok();
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd);
    let legacy_allowed = (remote.class() == AddrClass::Loopback && shared.config.loopback_is_local)
        || shared.config.legacy;
    let our_hello = Message::Hello(Hello::ours(Some(shared.listen_port), false, shared.node_id));
    // Our own address as this peer sees it: the local IP of this connection.
    let me = local.map(|l| PeerAddr::new(l.ip(), shared.listen_port));
    // That address is ours: a PEERS naming it (peers tell each other whom
    // they know, us included) is dropped, and it is never dialled or saved.
    if let Some(me) = me {
        shared.state().table.mark_ours(me);
    }

    // The dialler speaks first (HELLO, then PEERS naming itself); the
    // accepting side answers after the first frame, like a bootstrap server.
    let kind = if direction == Direction::Out {
        let peers = match purpose {
            Purpose::Announce => {
                Message::Peers(Peers::new(me.into_iter().collect()).unwrap_or_default())
            }
            Purpose::Peer => first_peers(&shared, me, None, remote.class() == AddrClass::Loopback),
        };
        for m in [&our_hello, &peers] {
            if let Err(err) = conn::write_message(&mut wr, m).await {
                return Err(fail(&shared, dialed, &err));
            }
        }
        conn::read_first_frame(&mut reader, legacy_allowed, shared.config.hello_timeout).await
    } else {
        conn::read_first_frame(&mut reader, legacy_allowed, shared.config.hello_timeout).await
    };
    let kind = kind.map_err(|err| fail(&shared, dialed, &err))?;
    let (hello, legacy_first) = match kind {
        PeerKind::Extended(hello) => (Some(hello), None),
        PeerKind::Legacy(first) => (None, first),
    };
    if let Some(hello) = &hello {
        shared.metrics.incr(Metric::HelloReceivedTotal);
        if hello.node_id() == shared.node_id {
            // Both ends of a self-connection see it; count it once, at the
            // dialler, and answer our HELLO so the dialler sees it too.
            if direction == Direction::Out {
                shared.metrics.incr(Metric::SelfConnectionsTotal);
            } else {
                let _ = conn::write_message(&mut wr, &our_hello).await;
            }
            if let Some(addr) = dialed {
                shared.state().table.mark_ours(addr);
            }
            debug!("connected to ourselves; that address is never dialled again");
            return Err("connected to ourselves".into());
        }
    } else {
        shared.metrics.incr(Metric::LegacyPeersTotal);
    }
    if let Some(hello) = &hello
        && shared.is_banned(remote.ip(), hello.listen_port(), Some(hello.node_id()))
    {
        shared.metrics.incr(Metric::ConnectionsRejectedTotal);
        return Err(fail(&shared, dialed, &ConnError::Rule("banned")));
    }

    if direction == Direction::In {
        // Our own address comes first in the first PEERS on every connection;
        // a legacy peer gets only loopback entries (it makes a blocking
        // connect to each).
        let legacy = hello.is_none();
        let peers = first_peers(&shared, me, hello.map(|h| h.node_id()), legacy);
        for m in [&our_hello, &peers] {
            if let Err(err) = conn::write_message(&mut wr, m).await {
                count_close(&shared, &err);
                return Err(err.to_string());
            }
        }
        shared.metrics.incr(Metric::PexFramesSentTotal);
    }
    // Probes and tools (CLIENT) get the same answers as anyone but are never
    // recorded, listed, dialled back or deduplicated.
    let record = !hello.is_some_and(|h| h.flags().client());
    if purpose == Purpose::Announce && hello.is_some() {
        return read_bootstrap_answer(&shared, &mut reader, remote).await;
    }
    let conn = Handshaken {
        reader,
        wr,
        remote,
        direction,
        dialed,
        hello,
        legacy_first,
    };
    if purpose == Purpose::Announce {
        // A legacy bootstrap node keeps its connection (closing it while it
        // writes kills it); it lives on as a peer connection of its own.
        tokio::spawn(
            async move {
                let _ = serve(shared, conn, true).await;
            }
            .in_current_span(),
        );
        return Ok(());
    }
    serve(shared, conn, record).await
}

/// Records a failed handshake; returns its message.
fn fail(shared: &Shared, dialed: Option<PeerAddr>, err: &ConnError) -> String {
    count_close(shared, err);
    if let Some(addr) = dialed {
        shared
            .state()
            .table
            .dial_failed(&addr, err.to_string(), now());
    }
    debug!(%err, "handshake failed");
    err.to_string()
}

async fn read_bootstrap_answer(
    shared: &Shared,
    reader: &mut FrameReader<OwnedReadHalf>,
    server: PeerAddr,
) -> Result<(), String> {
    loop {
        match conn::read_one(reader, shared.config.hello_timeout).await {
            Ok(Some(Message::Peers(peers))) => {
                offer(shared, server.ip(), &peers, Source::Bootstrap, false);
                shared.metrics.incr(Metric::BootstrapAnnouncesTotal);
                debug!(entries = peers.entries().len(), "bootstrap answered");
                return Ok(());
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("bootstrap server closed before its PEERS".into()),
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// Offers a PEERS list to the table: the first [`PEX_MAX_ENTRIES`] are
/// considered, the rest dropped and counted. A legacy sender's entries go
/// through [`PeerTable::offer_legacy`](crate::table::PeerTable::offer_legacy).
fn offer(shared: &Shared, sender: std::net::IpAddr, peers: &Peers, source: Source, legacy: bool) {
    let entries = peers.entries();
    let considered = &entries[..entries.len().min(PEX_MAX_ENTRIES)];
    let excess = entries.len() - considered.len();
    let mapped;
    let considered = if legacy {
        // Only a legacy peer on this host: `loopback_is_local` off makes
        // loopback stand for another host in tests.
        let local = AddrClass::of(sender) == AddrClass::Loopback && shared.config.loopback_is_local;
        mapped = if local {
            crate::table::legacy_candidates(sender, considered)
        } else {
            Vec::new()
        };
        if mapped.is_empty() {
            return;
        }
        &mapped[..]
    } else {
        considered
    };
    let (allowed, banned): (Vec<PeerAddr>, Vec<PeerAddr>) = {
        let bans = shared.bans();
        considered
            .iter()
            .partition(|entry| !bans.is_addr_banned(**entry, now()))
    };
    let (accepted, mut dropped) = if legacy {
        shared.state().table.offer_legacy(sender, &allowed, now())
    } else {
        shared.state().table.offer(sender, &allowed, source, now())
    };
    dropped.extend(banned.iter().map(|_| DropReason::Banned));
    shared
        .metrics
        .add(Metric::PexEntriesAcceptedTotal, accepted as u64);
    shared.metrics.add(
        Metric::PexEntriesDroppedTotal,
        (dropped.len() + excess) as u64,
    );
    for reason in dropped {
        shared
            .metrics
            .incr_labelled(Family::PexEntriesDroppedByReasonTotal, reason.label());
    }
    if excess > 0 {
        shared.metrics.add_labelled(
            Family::PexEntriesDroppedByReasonTotal,
            "over_50",
            excess as u64,
        );
    }
}

/// Decides whether a new connection to a peer survives an existing one:
/// the connection opened by the lower node_id wins; between two opened by
/// the same node the older one stays.
pub(crate) fn keep_new(existing_opener: Option<NodeId>, new_opener: NodeId) -> bool {
    match existing_opener {
        Some(old) if old != new_opener => new_opener < old,
        _ => false,
    }
}

/// Registers the connection, or returns false if it loses the duplicate rule.
fn register(
    shared: &Shared,
    link: &Arc<Link>,
    direction: Direction,
    dialed: Option<PeerAddr>,
    hello: Option<Hello>,
    bytes: (Arc<AtomicU64>, Arc<AtomicU64>),
) -> bool {
    let node_id = hello.map(|h| h.node_id());
    let opener = match direction {
        Direction::Out => Some(shared.node_id),
        Direction::In => node_id,
    };
    let mut state = shared.state();
    if let Some(addr) = dialed {
        state.table.dial_succeeded(&addr, node_id);
    }
    if let (Some(peer), Some(opener)) = (node_id, opener) {
        let existing = state
            .conns
            .iter()
            .find(|(_, c)| c.node_id == Some(peer))
            .map(|(id, c)| (*id, c.opener, Arc::clone(&c.link)));
        if let Some((old_id, old_opener, old_link)) = existing {
            shared.metrics.incr(Metric::DuplicateConnectionsTotal);
            if !keep_new(old_opener, opener) {
                return false;
            }
            old_link.close_with("duplicate");
            if state.conns.remove(&old_id).is_some() {
                shared.metrics.decr(Metric::ConnectionsOpen);
            }
        }
    }
    if let Some(addr) = dialed {
        // Its entry counts it as outbound from now on; left in `dialing`
        // too, it would count twice against the outbound target.
        state.dialing.remove(&addr);
    }
    state.conns.insert(
        link.id,
        ConnEntry {
            node_id,
            remote: link.remote,
            // What we dialled is dialable, legacy or not; an inbound peer
            // becomes dialable once its dial-back probe succeeds.
            dialable: dialed,
            direction,
            legacy: hello.is_none(),
            opener,
            since: SystemTime::now(),
            link: Arc::clone(link),
            bytes_in: bytes.0,
            bytes_out: bytes.1,
        },
    );
    drop(state);
    shared.metrics.incr(Metric::ConnectionsOpen);
    // Fetches that are widening their search want to hear of it.
    let senders: Vec<_> = shared
        .fetches()
        .values()
        .map(|h| h.events.clone())
        .collect();
    for events in senders {
        let _ = events.try_send(FetchEvent::Connected(Arc::clone(link)));
    }
    true
}

fn remove(shared: &Shared, id: u64) {
    if shared.state().conns.remove(&id).is_some() {
        shared.metrics.decr(Metric::ConnectionsOpen);
    }
}

/// Starts the dial-back probe that makes an inbound peer dialable.
fn probe_inbound(shared: &Arc<Shared>, conn_id: u64, remote: PeerAddr, hello: Hello) {
    let Some(port) = hello.listen_port() else {
        return;
    };
    let addr = PeerAddr::new(remote.ip(), port);
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        shared.metrics.incr(Metric::ProbesTotal);
        match conn::probe(addr.socket_addr(), shared.node_id, Some(hello.node_id())).await {
            Ok(_) => {
                let mut state = shared.state();
                if let Some(c) = state.conns.get_mut(&conn_id) {
                    c.dialable = Some(addr);
                }
                state
                    .table
                    .insert_trusted(addr, Source::Inbound, Some(hello.node_id()), now());
            }
            Err(err) => {
                shared.metrics.incr(Metric::ProbeFailuresTotal);
                debug!(%addr, %err, "dial-back probe failed");
            }
        }
    });
}

/// A connection past the HELLO exchange, ready to be served.
struct Handshaken {
    reader: FrameReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    remote: PeerAddr,
    direction: Direction,
    /// The address we dialled, for outbound connections.
    dialed: Option<PeerAddr>,
    /// The peer's HELLO; `None` for a legacy peer.
    hello: Option<Hello>,
    /// A legacy peer's first frame, already read.
    legacy_first: Option<Message>,
}

/// Runs a connection to its end. `record`: whether it is registered (a
/// CLIENT connection gets the same answers but is never recorded).
async fn serve(shared: Arc<Shared>, conn: Handshaken, record: bool) -> Result<(), String> {
    let Handshaken {
        mut reader,
        wr,
        remote,
        direction,
        dialed,
        hello,
        legacy_first,
    } = conn;
    let mut node_closing = shared.closing.subscribe();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let bytes_out = Arc::new(AtomicU64::new(0));
    reader.set_progress_counter(Arc::clone(&bytes_in));
    let legacy = hello.is_none();
    let (link, queues) = Link::new(next_span_id(), remote, hello, Arc::clone(&bytes_in), now());
    let link = Arc::new(link);
    let mut close_rx = link.close.subscribe();
    if record
        && !register(
            &shared,
            &link,
            direction,
            dialed,
            hello,
            (Arc::clone(&bytes_in), Arc::clone(&bytes_out)),
        )
    {
        debug!("duplicate connection closed by the node_id rule");
        shared
            .metrics
            .incr_labelled(Family::ConnectionsClosedTotal, "duplicate");
        return Ok(());
    }
    let conn_id = link.id;
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
        probe_inbound(&shared, conn_id, remote, hello);
    }
    let writer = tokio::spawn(
        run_writer(
            Arc::clone(&shared),
            Arc::clone(&link),
            wr,
            queues,
            Arc::clone(&bytes_out),
        )
        .in_current_span(),
    );
    let mut rules = Rules::default();
    let result = async {
        if let Some(first) = legacy_first {
            rules.handle(&shared, &link, first).await?;
        }
        loop {
            let frame = tokio::select! {
                read = timeout(IDLE_TIMEOUT, reader.next_frame(STREAM_GIVES_FROM)) => match read {
                    Err(_) => return Err(ConnError::Timeout { what: "idle", after: IDLE_TIMEOUT }),
                    Ok(result) => result?,
                },
                _ = close_rx.wait_for(|closed| *closed) => return Err(ConnError::Rule(link.closed_because())),
                _ = node_closing.wait_for(|closing| *closing) => {
                    return Err(ConnError::Rule("node_shutdown"));
                }
            };
            match frame {
                None => return Ok(()),
                Some(Frame::Message(message)) => rules.handle(&shared, &link, message).await?,
                Some(Frame::GiveHead { id, .. }) => {
                    rules.start_give(&shared, &link, &mut reader, id);
                }
                Some(Frame::GiveEnd { id, .. }) => rules.end_give(&shared, &link, &id)?,
            }
        }
    }
    .await;
    let _ = link.close.send(true);
    shared.metrics.add(Metric::BytesInTotal, reader.bytes_in());
    if record {
        remove(&shared, conn_id);
    }
    // Fetches using this connection look elsewhere.
    let asked: Vec<PieceId> = {
        let book = link.ask_book();
        book.outstanding
            .iter()
            .map(|a| a.id)
            .chain(book.wanted.iter().copied())
            .collect()
    };
    for id in asked {
        shared.fetch_event(&id, FetchEvent::Failed(conn_id));
    }
    drop(link);
    // Let queued answers go out before the socket closes, within bounds.
    let _ = timeout(wire_format::limits::SHUTDOWN_GRACE, writer).await;
    match result {
        Ok(()) => {
            shared
                .metrics
                .incr_labelled(Family::ConnectionsClosedTotal, "peer_closed");
            debug!("peer closed");
            Ok(())
        }
        Err(err) => {
            count_close(&shared, &err);
            if matches!(err, ConnError::Protocol(_) | ConnError::Rule(_)) {
                warn!(%err, "closing");
            } else {
                debug!(%err, "connection ended");
            }
            Err(err.to_string())
        }
    }
}

/// Per-connection state of the close-or-count rules.
#[derive(Debug, Default)]
struct Rules {
    pex_window: Option<Instant>,
    pex_frames: usize,
    give_window: Option<Instant>,
    unsolicited_gives: usize,
    /// The GIVE being hashed while it arrives, and how to tell its hashing
    /// thread, once the last byte is in, whether it answers an ASK of ours
    /// (`true`: a late answer). Dropped unsent, the thread drops the piece.
    streaming: Option<(PieceId, oneshot::Sender<bool>)>,
    /// A GIVE is being read off and dropped: it answered nothing of ours
    /// when its head arrived, so it cannot answer an ASK sent since.
    discarding: bool,
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
        shared: &Arc<Shared>,
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
                shared.metrics.incr(Metric::PexFramesReceivedTotal);
                if peers.entries().is_empty() {
                    return Ok(()); // keepalive
                }
                let frames = count_in_window(&mut self.pex_window, &mut self.pex_frames, at);
                if frames > PEX_MAX_FRAMES_PER_INTERVAL {
                    if legacy {
                        // The reference repeats itself every few seconds: ignore, don't punish.
                        shared.metrics.incr(Metric::IgnoredFramesTotal);
                        return Ok(());
                    }
                    return Err(ConnError::Rule("too_many_peers_frames"));
                }
                // A legacy peer's entries become legacy candidates (observed
                // IP, port from its PEERS), taken only on loopback.
                offer(shared, link.remote.ip(), &peers, Source::Pex, legacy);
            }
            Message::Give(give) => {
                if let Some(late) = self.answer_give(shared, link, &give.id(), at)? {
                    receive_give(shared, link, give, late).await;
                }
            }
            Message::Ask(id) => crate::serve::on_ask(shared, link, id)?,
            Message::WantHave(id) => {
                shared.metrics.incr(Metric::WantHaveReceivedTotal);
                crate::serve::on_want_have(shared, link, id);
            }
            Message::Cancel(id) => crate::serve::on_cancel(shared, link, id),
            Message::Have(id) => {
                if link.ask_book().wanted.remove(&id) {
                    shared.metrics.incr(Metric::HaveReceivedTotal);
                    shared.fetch_event(&id, FetchEvent::Have(link.id));
                } else {
                    shared.metrics.incr(Metric::IgnoredFramesTotal);
                }
            }
            Message::DontHave(id) => {
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
                    shared.metrics.incr(Metric::DontHaveReceivedTotal);
                    shared.fetch_event(&id, FetchEvent::DontHave(link.id));
                } else {
                    // For a digest we did not ask (or no longer wait for): count.
                    shared.metrics.incr(Metric::IgnoredFramesTotal);
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
        shared: &Shared,
        link: &Link,
        id: &PieceId,
        at: Instant,
    ) -> Result<Option<bool>, ConnError> {
        let (answered, next) = link.ask_book().on_answer(id, at);
        if let Some(next) = next {
            link.send(next);
        }
        if answered == Answered::Unsolicited {
            self.unsolicited(shared, link, at)?;
            return Ok(None);
        }
        Ok(Some(answered == Answered::Late))
    }

    /// An unsolicited GIVE: counted, and past the per-minute cap an
    /// extended peer is closed.
    fn unsolicited(&mut self, shared: &Shared, link: &Link, at: Instant) -> Result<(), ConnError> {
        shared.metrics.incr(Metric::UnsolicitedGivesTotal);
        let n = count_in_window(&mut self.give_window, &mut self.unsolicited_gives, at);
        if !link.legacy && n > MAX_UNSOLICITED_GIVES_PER_MINUTE {
            return Err(ConnError::Rule("too_many_unsolicited_gives"));
        }
        Ok(())
    }

    /// The header of a large GIVE has arrived. If it names a piece we asked
    /// this peer for and a streaming slot is free, its bytes are hashed on a
    /// blocking thread as they arrive; if it names nothing we asked, it is
    /// read off and dropped, never held; otherwise it is read whole and
    /// judged as before. Never waits: a peer trickling its GIVE holds a
    /// streaming slot, not a verify slot, so it cannot hold up verification.
    fn start_give<R: AsyncRead + Unpin>(
        &mut self,
        shared: &Arc<Shared>,
        link: &Arc<Link>,
        reader: &mut FrameReader<R>,
        id: PieceId,
    ) {
        if !link.ask_book().expects(&id, now()) {
            self.discarding = reader.discard_piece();
            return;
        }
        let Ok(slot) = Arc::clone(&shared.stream_slots).try_acquire_owned() else {
            return;
        };
        // Room for every chunk of the largest piece: the reader never waits
        // for the hashing thread (the bytes are in its buffer anyway).
        let (chunks, mut rx) =
            mpsc::channel(wire_format::limits::PIECE_MAX.div_ceil(STREAM_CHUNK_BYTES) + 1);
        if !reader.stream_piece(chunks, STREAM_CHUNK_BYTES) {
            return;
        }
        shared.metrics.incr(Metric::GivesStreamedTotal);
        let (verdict, verdict_rx) = oneshot::channel();
        self.streaming = Some((id, verdict));
        let shared = Arc::clone(shared);
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
                finish_give(&shared, &link, id, len, hasher.finish(), late);
            }
        });
    }

    /// The last byte of a streamed GIVE has gone to its hashing thread, or
    /// that of a dropped one has been read off.
    fn end_give(&mut self, shared: &Shared, link: &Link, id: &PieceId) -> Result<(), ConnError> {
        if std::mem::take(&mut self.discarding) {
            return self.unsolicited(shared, link, now());
        }
        let streaming = self.streaming.take();
        if let Some(late) = self.answer_give(shared, link, id, now())?
            && let Some((streamed, verdict)) = streaming
            && streamed == *id
        {
            let _ = verdict.send(late);
        }
        Ok(())
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
async fn receive_give(shared: &Arc<Shared>, link: &Arc<Link>, give: wire_format::Give, late: bool) {
    let Ok(slot) = Arc::clone(&shared.verify_slots).acquire_owned().await else {
        return;
    };
    let shared = Arc::clone(shared);
    let link = Arc::clone(link);
    // The slot is held until the cache copy is written too: a disk slower
    // than the network then slows the reader (bounded memory), instead of
    // piling up pieces waiting for the disk.
    on_hashing_thread(slot, move || {
        let (id, bytes) = give.into_parts();
        let len = bytes.len() as u64;
        finish_give(
            &shared,
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
fn on_hashing_thread(
    slot: tokio::sync::OwnedSemaphorePermit,
    work: impl FnOnce() + Send + 'static,
) {
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
    shared: &Shared,
    link: &Link,
    id: PieceId,
    len: u64,
    verified: Result<VerifiedPiece, PieceError>,
    late: bool,
) {
    match verified {
        Ok(piece) => {
            shared.metrics.incr(Metric::PiecesFetchedTotal);
            shared.metrics.add(Metric::PieceBytesFetchedTotal, len);
            if late {
                shared.metrics.add(Metric::DuplicateBytesTotal, len);
            } else {
                shared.last_giver.store(link.id, Ordering::Relaxed);
            }
            // A running fetch takes the piece (and writes its cache copy
            // once the requesters have it); otherwise, a late answer,
            // it is cached here, durable with the next group commit.
            let copy = piece.clone();
            if !shared.fetch_event(&id, FetchEvent::Gave(link.id, piece))
                && !shared.store.has(&copy.id())
            {
                let _ = shared
                    .store
                    .put(copy, Retention::Cached, Durability::Background);
            }
        }
        Err(err) => {
            // Proof of a lie: ban, close, and let the fetch go elsewhere.
            shared.metrics.incr(Metric::BansTotal);
            warn!(conn = link.id, %id, %err, "peer sent a piece that does not match its name; banned");
            shared.ban(
                link,
                format!("sent a piece that does not match its name ({err})"),
                Some(id),
            );
            link.close_with("banned");
            shared.fetch_event(&id, FetchEvent::Failed(link.id));
        }
    }
}

/// A GIVE waiting for upload tokens: its ASK's digest, the frame, and its
/// serving budget. It has not started: a CANCEL still drops it, and it
/// still counts as unanswered.
type WaitingGive = (PieceId, Message, Option<tokio::sync::OwnedSemaphorePermit>);

/// The connection's writer: control frames go out at once; GIVEs wait for
/// the upload rate limit in their own line, so a rate limit never delays
/// a control frame behind a piece. A GIVE starts (leaves the peer's
/// in-flight count, can no longer be cancelled) only once its tokens are
/// granted. The line holds at most the peer's unanswered ASKs.
async fn run_writer(
    shared: Arc<Shared>,
    link: Arc<Link>,
    mut wr: OwnedWriteHalf,
    (mut rx, mut frames): crate::link::Queues,
    bytes_out: Arc<AtomicU64>,
) {
    let mut frames_open = true;
    let peer = link.node_id;
    let legacy = link.legacy;
    let mut last_sent = tokio::time::Instant::now();
    let mut next_pex = last_sent + PEX_INTERVAL;
    let mut closed = link.close.subscribe();
    let mut gives: std::collections::VecDeque<WaitingGive> = std::collections::VecDeque::new();
    let mut tokens: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = None;
    let mut draining = false;
    loop {
        if *closed.borrow_and_update() {
            return;
        }
        // Cancelled GIVEs at the head of the line go without costing tokens.
        while tokens.is_none()
            && gives
                .front()
                .is_some_and(|(id, _, _)| !link.serve_book().is_queued(id))
        {
            gives.pop_front();
        }
        if tokens.is_none()
            && let Some((_, Message::Give(give), _)) = gives.front()
        {
            let upload = Arc::clone(&shared.upload);
            let len = give.piece().len();
            tokens = Some(Box::pin(async move { upload.acquire(len).await }));
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
                    if !crate::serve::start_answer(&shared, &link, &id, message.as_ref()) {
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
                        shared.metrics.incr(Metric::CancelsSentTotal);
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
                if !crate::serve::start_answer(&shared, &link, &id, Some(&give)) {
                    continue; // cancelled while it waited
                }
                (give, permit)
            }
            () = tokio::time::sleep_until(next_pex), if !draining => {
                next_pex += PEX_INTERVAL;
                let entries = shared.dialable_peers(peer, legacy);
                if entries.is_empty() {
                    continue;
                }
                shared.metrics.incr(Metric::PexFramesSentTotal);
                (Message::Peers(Peers::new(entries).unwrap_or_default()), None)
            }
            () = tokio::time::sleep_until(keepalive_at), if !draining => (Message::Peers(Peers::empty()), None),
            _ = closed.changed() => return,
        };
        match conn::write_message(&mut wr, &message).await {
            Ok(n) => {
                bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                shared.metrics.add(Metric::BytesOutTotal, n as u64);
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

    #[test]
    fn the_connection_opened_by_the_lower_node_id_survives() {
        let low = NodeId([1; 8]);
        let high = NodeId([2; 8]);
        assert!(keep_new(Some(high), low));
        assert!(!keep_new(Some(low), high));
        assert!(
            !keep_new(Some(low), low),
            "same opener: the older one stays"
        );
    }
}
