//! [`ImpairedLink`]: an in-process TCP proxy that is a bad link between two
//! programs on loopback: one-way delay, loss as TCP shows it to an
//! application, a rate cap, and a cut.
//!
//! # Why it exists
//! Delay and loss belong on a network interface (`tc qdisc ... netem`), but
//! the machines these tests run on have no netem: the kernel lacks the
//! `sch_netem` module, and changing a queueing discipline needs root. So the
//! bad link is a proxy in the test's own process. A test gives a node the
//! link's [`addr`](ImpairedLink::addr) instead of the peer's, and every byte
//! between the two crosses the link. Its timers are tokio's, so on the
//! paused clock (`#[tokio::test(start_paused = true)]`) a test sees exact
//! delays and spends no real time waiting for them.
//!
//! # What it models
//! Each connection through the link is two flows, one towards the target
//! and one back ([`Flow`]). Each flow reads chunks of at most
//! [`SEGMENT_BYTES`] from one socket and writes them to the other, in order:
//! * **delay**: a chunk is written no earlier than [`Impairments::delay`]
//!   after it was read;
//! * **loss, as an application sees it**: TCP retransmits a lost segment,
//!   so the receiving program never misses a byte; it waits, and so does
//!   everything sent after the lost segment (head-of-line blocking). With
//!   probability [`Impairments::loss`] a chunk is lost: it and every chunk
//!   behind it are held [`Impairments::retransmit_after`] longer. Stalls
//!   that overlap do not add up: a chunk lost while the flow already waits
//!   for an earlier one is resent within the same wait, as with selective
//!   acknowledgements. The draws come from a seeded generator
//!   ([`Impairments::seed`]), so a run can be repeated;
//! * **a rate cap**: [`Impairments::rate`] bytes per second per flow
//!   direction, shared by every connection on the link, as one wire is;
//! * **a window**: a flow holds at most [`IN_FLIGHT_BYTES`] inside the
//!   proxy. When that is full the proxy stops reading, the sender's socket
//!   buffer fills and its writes block, as with a closed TCP window. Memory
//!   is bounded: at most [`MAX_CONNECTIONS`] connections, each two flows of
//!   at most [`IN_FLIGHT_BYTES`] and [`IN_FLIGHT_CHUNKS`];
//! * **a cut**: [`ImpairedLink::cut`] resets every connection on both sides
//!   and refuses new ones. A clean close (FIN) crosses the link like data,
//!   after the bytes before it.
//!
//! # What it does not model
//! * Reordering and duplication: TCP hides both from the application, and
//!   the link never does either, so their cost on a real path (duplicate
//!   ACKs, spurious retransmissions) is not here.
//! * Congestion control: a loss costs one stall and never shrinks a sending
//!   window, so throughput under loss is far better than a real TCP's.
//! * Window effects of the bandwidth-delay product beyond the buffers there
//!   are: the endpoints' socket buffers (tuned by the kernel on loopback)
//!   and the fixed [`IN_FLIGHT_BYTES`]; no window is negotiated or grows.
//! * Segment sizes: a chunk is whatever one read returned, up to
//!   [`SEGMENT_BYTES`], not a path MTU.
//! * A silent cut: a cable pulled out leaves connections open and silent
//!   until some deadline notices; [`cut`](ImpairedLink::cut) resets them at
//!   once. Connecting to the link takes no time; only bytes are delayed.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::net;

/// The most one read takes from a socket, and so the largest chunk that is
/// delayed, drawn for loss and charged to the rate as one.
///
/// 16 KiB, not one 1448-byte Ethernet segment: loopback hands a reader far
/// larger blocks than that, and at 1448 bytes a transfer of a few MiB would
/// be thousands of timers and draws in a debug build on a small machine.
/// Loss is drawn per chunk, so a chunk stands for about eleven segments: a
/// `loss` of 5 % is one chunk in twenty stalling, like a segment loss rate
/// of about 0.45 %. A lost segment stalls everything behind it either way.
pub const SEGMENT_BYTES: usize = 16 << 10;

/// Bytes one flow of one connection holds inside the proxy (read, not yet
/// written) at most; when they are there the proxy stops reading.
///
/// It acts as the window of a TCP connection over the link: one flow
/// carries at most `IN_FLIGHT_BYTES / delay` per second (20 MiB/s at 50 ms
/// of delay), and during a stall at most this much waits behind it.
pub const IN_FLIGHT_BYTES: usize = 1 << 20;

/// Chunks one flow holds inside the proxy at most, however small: the
/// bookkeeping is bounded like the bytes are (a peer writing one byte at a
/// time cannot queue a million chunks).
pub const IN_FLIGHT_CHUNKS: usize = 1024;

/// Connections one link carries at once; another is reset as soon as it is
/// accepted. With two flows of [`IN_FLIGHT_BYTES`] each this bounds a
/// link's memory (32 MiB).
pub const MAX_CONNECTIONS: usize = 16;

/// How far ahead a capped wire may send after it was idle: its token
/// bucket holds this long's worth of bytes at the rate. Long enough that
/// tokio's one-millisecond timer does not hold a fast link below its rate.
pub const RATE_BURST: Duration = Duration::from_millis(10);

/// Default [`Impairments::retransmit_after`]: Linux's least retransmission
/// timeout (`TCP_RTO_MIN`), what a lost segment costs on a short path.
pub const DEFAULT_RETRANSMIT_AFTER: Duration = Duration::from_millis(200);

/// Default [`Impairments::seed`].
pub const DEFAULT_SEED: u64 = 0x5eed_1a7e_0f11_4c00;

// Permits of the in-flight semaphore are bytes; one read asks for a chunk's.
const SEGMENT_PERMITS: u32 = 16 << 10;
const _: () = assert!(SEGMENT_PERMITS as usize == SEGMENT_BYTES);
const _: () = assert!(IN_FLIGHT_BYTES >= SEGMENT_BYTES);

/// What a link does to the bytes that cross it. Each flow of each
/// connection gets these on its own (the rate is shared, see [`rate`]).
///
/// [`rate`]: Self::rate
#[derive(Debug, Clone, PartialEq)]
pub struct Impairments {
    /// One-way delay: every chunk is written no earlier than this after it
    /// was read, in both directions. A round trip over the link takes twice
    /// this.
    pub delay: Duration,
    /// Probability, from 0 to 1, that a chunk is lost: held, with every
    /// chunk behind it, [`retransmit_after`](Self::retransmit_after) longer
    /// than its delay. Never missing bytes: TCP would resend them.
    pub loss: f64,
    /// How long a lost chunk waits for its retransmission: TCP's
    /// retransmission timeout.
    pub retransmit_after: Duration,
    /// Bytes per second each direction of the link carries, shared by every
    /// connection on it (`None`: no cap). A chunk goes once the wire would
    /// have sent its last byte (an idle wire runs up to [`RATE_BURST`]
    /// ahead); the proxy reads nothing more meanwhile, so a capped link
    /// slows its sender down as a slow wire would.
    pub rate: Option<u64>,
    /// Seed of the loss draws. Each flow of each connection draws from its
    /// own generator seeded from this, the connection's number and the
    /// direction. Which bytes a draw covers depends on how the kernel
    /// splits the stream into reads.
    pub seed: u64,
}

impl Impairments {
    /// A link that only relays: no delay, no loss, no cap.
    pub fn none() -> Self {
        Self {
            delay: Duration::ZERO,
            loss: 0.0,
            retransmit_after: DEFAULT_RETRANSMIT_AFTER,
            rate: None,
            seed: DEFAULT_SEED,
        }
    }

    fn check(&self) -> io::Result<()> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        if !(0.0..=1.0).contains(&self.loss) {
            return invalid(format!("loss {} is not a probability", self.loss));
        }
        if self.rate == Some(0) {
            return invalid("a rate of 0 carries nothing; use None for no cap".to_owned());
        }
        Ok(())
    }
}

impl Default for Impairments {
    fn default() -> Self {
        Self::none()
    }
}

/// One direction of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// From whoever connected to the link towards its target.
    ToTarget,
    /// From the target back.
    FromTarget,
}

impl Flow {
    fn index(self) -> usize {
        match self {
            Self::ToTarget => 0,
            Self::FromTarget => 1,
        }
    }
}

/// What one direction of a link has carried, over all its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Traffic {
    /// Bytes read from the sending side (taken into the proxy).
    pub read: u64,
    /// Bytes written to the receiving side.
    pub forwarded: u64,
    /// Chunks that were lost, and held for a retransmission.
    pub lost: u64,
}

/// A TCP proxy on `127.0.0.1` that relays every connection to one target
/// through [`Impairments`] (see the module docs for what it models).
/// Dropping it cuts it.
#[derive(Debug)]
pub struct ImpairedLink {
    addr: SocketAddr,
    link: Arc<LinkState>,
    cut: watch::Sender<bool>,
    closed: watch::Receiver<bool>,
}

impl ImpairedLink {
    /// Listens on `127.0.0.1:0` and relays each connection it accepts to
    /// `target`. Fails if the impairments make no sense (a loss outside
    /// 0..=1, a rate of 0) or the port cannot be bound.
    pub async fn start(target: SocketAddr, impairments: Impairments) -> io::Result<Self> {
        impairments.check()?;
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let link = Arc::new(LinkState::new(target, impairments));
        let (cut, cut_rx) = watch::channel(false);
        let (closed_tx, closed) = watch::channel(false);
        tokio::spawn(serve(listener, Arc::clone(&link), cut_rx, closed_tx));
        Ok(Self {
            addr,
            link,
            cut,
            closed,
        })
    }

    /// Where to connect to cross the link.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `flow` has carried so far.
    pub fn traffic(&self, flow: Flow) -> Traffic {
        let counts = &self.link.flows[flow.index()];
        Traffic {
            read: counts.read.load(Ordering::Relaxed),
            forwarded: counts.forwarded.load(Ordering::Relaxed),
            lost: counts.lost.load(Ordering::Relaxed),
        }
    }

    /// Connections relayed so far (those reset for being over
    /// [`MAX_CONNECTIONS`] are not counted).
    pub fn connections(&self) -> u64 {
        self.link.connections.load(Ordering::Relaxed)
    }

    /// Connections open through the link now.
    pub fn open_connections(&self) -> usize {
        self.link.open.load(Ordering::Relaxed)
    }

    /// Cuts the link: resets every connection on both sides (bytes still
    /// inside the link are lost) and closes the listener, so new connects
    /// are refused. Returns once all of that is done.
    pub async fn cut(&self) {
        self.cut.send_replace(true);
        let mut closed = self.closed.clone();
        // An error is the serving task gone already, which closes it all too.
        let _ = closed.wait_for(|closed| *closed).await;
    }
}

/// What the tasks of one link share.
#[derive(Debug)]
struct LinkState {
    target: SocketAddr,
    impairments: Impairments,
    flows: [FlowState; 2],
    connections: AtomicU64,
    open: AtomicUsize,
}

impl LinkState {
    fn new(target: SocketAddr, impairments: Impairments) -> Self {
        let flow = || FlowState {
            read: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            wire: impairments.rate.map(Wire::new),
        };
        Self {
            target,
            flows: [flow(), flow()],
            impairments,
            connections: AtomicU64::new(0),
            open: AtomicUsize::new(0),
        }
    }

    fn flow(&self, flow: Flow) -> &FlowState {
        &self.flows[flow.index()]
    }
}

/// One direction of the link: its counters and its rate cap.
#[derive(Debug)]
struct FlowState {
    read: AtomicU64,
    forwarded: AtomicU64,
    lost: AtomicU64,
    wire: Option<Wire>,
}

/// A rate cap: when the bytes booked so far will have been sent.
#[derive(Debug)]
struct Wire {
    rate: u64,
    sent_by: Mutex<Instant>,
}

impl Wire {
    fn new(rate: u64) -> Self {
        Self {
            rate,
            sent_by: Mutex::new(Instant::now()),
        }
    }

    /// Books `bytes` on the wire after the bytes booked before them; returns
    /// when they may go: when the wire will have sent them, counting up to
    /// [`RATE_BURST`] of its idle time as sent ahead.
    fn book(&self, bytes: usize, now: Instant) -> Instant {
        let nanos = (bytes as u128 * 1_000_000_000) / u128::from(self.rate.max(1));
        let takes = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let idle_credit = now.checked_sub(RATE_BURST).unwrap_or(now);
        let mut sent_by = self.sent_by.lock().unwrap_or_else(PoisonError::into_inner);
        *sent_by = (*sent_by).max(idle_credit) + takes;
        (*sent_by).max(now)
    }
}

/// A seeded xorshift generator: loss draws that repeat from run to run.
#[derive(Debug)]
struct Draws(u64);

impl Draws {
    /// The generator of one flow of connection number `connection`.
    fn new(seed: u64, connection: u64, flow: Flow) -> Self {
        let stream = splitmix(connection.wrapping_mul(2).wrapping_add(flow.index() as u64));
        Self(splitmix(seed ^ stream).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with probability `p`: never at 0, always at 1.
    fn chance(&mut self, p: f64) -> bool {
        const UNIT: f64 = 1.0 / (1u64 << 53) as f64;
        ((self.next() >> 11) as f64 * UNIT) < p
    }
}

/// Spreads a seed over all 64 bits (SplitMix64's finaliser).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Accepts until the link is cut (or dropped), then closes the listener,
/// waits for every connection to be reset, and says so on `closed`.
async fn serve(
    listener: TcpListener,
    link: Arc<LinkState>,
    cut: watch::Receiver<bool>,
    closed: watch::Sender<bool>,
) {
    let mut relays = JoinSet::new();
    let mut until_cut = cut.clone();
    let is_cut = async move {
        // An error is the link dropped: a cut too.
        let _ = until_cut.wait_for(|cut| *cut).await;
    };
    net::accept_until(&listener, is_cut, |stream, _| {
        while relays.try_join_next().is_some() {}
        if relays.len() >= MAX_CONNECTIONS {
            reset(&stream);
            return;
        }
        let number = link.connections.fetch_add(1, Ordering::Relaxed);
        relays.spawn(relay(stream, Arc::clone(&link), number, cut.clone()));
    })
    .await;
    drop(listener);
    while relays.join_next().await.is_some() {}
    closed.send_replace(true);
}

/// Counts a connection open while it lives.
struct Open<'a>(&'a AtomicUsize);

impl<'a> Open<'a> {
    fn new(open: &'a AtomicUsize) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Relays one accepted connection to the target until both flows have
/// ended cleanly, or resets both sides when either fails or the link is cut.
async fn relay(
    dialler: TcpStream,
    link: Arc<LinkState>,
    number: u64,
    mut cut: watch::Receiver<bool>,
) {
    let _open = Open::new(&link.open);
    let target = tokio::select! {
        _ = cut.wait_for(|cut| *cut) => None,
        target = net::connect(link.target) => target.ok(),
    };
    let Some(target) = target else {
        reset(&dialler);
        return;
    };
    net::tune(&dialler);
    let (dialler, target) = (Arc::new(dialler), Arc::new(target));
    let mut flows = JoinSet::new();
    for (flow, from, to) in [
        (Flow::ToTarget, &dialler, &target),
        (Flow::FromTarget, &target, &dialler),
    ] {
        let (queue, chunks) = mpsc::channel(IN_FLIGHT_CHUNKS);
        let draws = Draws::new(link.impairments.seed, number, flow);
        let read = read_flow(Arc::clone(from), queue, Arc::clone(&link), flow, draws);
        flows.spawn(read);
        flows.spawn(write_flow(Arc::clone(to), chunks, Arc::clone(&link), flow));
    }
    let clean = loop {
        tokio::select! {
            _ = cut.wait_for(|cut| *cut) => break false,
            ended = flows.join_next() => match ended {
                None => break true,
                Some(Ok(Ok(()))) => {}
                Some(_) => break false,
            },
        }
    };
    if !clean {
        reset(&dialler);
        reset(&target);
        // The tasks' handles on the sockets go with them; the last handle
        // dropped, below, closes each socket with a reset.
        flows.shutdown().await;
    }
}

/// Makes closing `stream` send a reset (no FIN): what a cut or a failure on
/// the other side looks like to this side.
fn reset(stream: &TcpStream) {
    // Best effort: without it the close is a FIN, still an end.
    let _ = rustix::net::sockopt::set_socket_linger(stream, Some(Duration::ZERO));
}

/// What one flow hands from its reader to its writer.
#[derive(Debug)]
struct Chunk {
    /// Not written before this.
    due: Instant,
    what: Carried,
}

#[derive(Debug)]
enum Carried {
    /// Bytes, holding their share of the flow's in-flight bytes until they
    /// are written.
    Bytes(Vec<u8>, OwnedSemaphorePermit),
    /// The sender closed its side: close ours towards the receiver.
    End,
}

/// Reads chunks from `from` while the flow has room for them, and queues
/// each with the time it is due: its delay, and a retransmission's wait if
/// it is lost, but never before the chunk ahead of it.
async fn read_flow(
    from: Arc<TcpStream>,
    queue: mpsc::Sender<Chunk>,
    link: Arc<LinkState>,
    flow: Flow,
    mut draws: Draws,
) -> io::Result<()> {
    let impairments = &link.impairments;
    let state = link.flow(flow);
    let room = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
    let mut buf = vec![0u8; SEGMENT_BYTES];
    let mut due = Instant::now();
    loop {
        let mut permit = Arc::clone(&room)
            .acquire_many_owned(SEGMENT_PERMITS)
            .await
            .map_err(|_| io::Error::other("the flow's window was closed"))?;
        let n = read_some(&from, &mut buf).await?;
        if n == 0 {
            due = due.max(Instant::now() + impairments.delay);
            // A writer gone means the connection is being reset anyway.
            let _ = queue
                .send(Chunk {
                    due,
                    what: Carried::End,
                })
                .await;
            return Ok(());
        }
        state.read.fetch_add(n as u64, Ordering::Relaxed);
        // Keep the permits of the bytes read; the rest go back at once.
        let held = permit.split(n).unwrap_or(permit);
        if let Some(wire) = &state.wire {
            tokio::time::sleep_until(wire.book(n, Instant::now())).await;
        }
        let mut at = Instant::now() + impairments.delay;
        if draws.chance(impairments.loss) {
            state.lost.fetch_add(1, Ordering::Relaxed);
            at += impairments.retransmit_after;
        }
        due = due.max(at);
        let chunk = Chunk {
            due,
            what: Carried::Bytes(buf[..n].to_vec(), held),
        };
        if queue.send(chunk).await.is_err() {
            return Ok(());
        }
    }
}

/// Writes each chunk to `to` once it is due; closes `to`'s sending side
/// when the flow ends cleanly.
async fn write_flow(
    to: Arc<TcpStream>,
    mut chunks: mpsc::Receiver<Chunk>,
    link: Arc<LinkState>,
    flow: Flow,
) -> io::Result<()> {
    let forwarded = &link.flow(flow).forwarded;
    while let Some(chunk) = chunks.recv().await {
        tokio::time::sleep_until(chunk.due).await;
        match chunk.what {
            Carried::Bytes(bytes, _room) => write_all(&to, &bytes, forwarded).await?,
            Carried::End => {
                rustix::net::shutdown(&*to, rustix::net::Shutdown::Write)?;
                return Ok(());
            }
        }
    }
    // The reader stopped without an end: it failed, and the relay resets.
    Ok(())
}

/// Reads what `from` has, at least a byte (0: the end of the stream).
async fn read_some(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read(buf) {
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            read => return read,
        }
    }
}

/// Writes all of `bytes` to `to`, counting them in `forwarded` as they go.
async fn write_all(to: &TcpStream, mut bytes: &[u8], forwarded: &AtomicU64) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                forwarded.fetch_add(n as u64, Ordering::Relaxed);
                bytes = &bytes[n..];
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The timer's resolution: how late a timed event may be seen on the
    /// paused clock.
    const TICK: Duration = Duration::from_millis(1);
    const MIB: usize = 1 << 20;

    /// A link to a new listener, and the listener.
    async fn link_to(impairments: Impairments) -> (ImpairedLink, TcpListener) {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let link = ImpairedLink::start(target.local_addr().unwrap(), impairments)
            .await
            .unwrap();
        (link, target)
    }

    /// A client connected through `link`, and the target's end of it.
    async fn connect(link: &ImpairedLink, target: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(link.addr()).await.unwrap();
        let (server, _) = target.accept().await.unwrap();
        (client, server)
    }

    /// A link to a new listener, a client connected through it, and the
    /// target's end of that connection.
    async fn through(impairments: Impairments) -> (ImpairedLink, TcpStream, TcpStream) {
        let (link, target) = link_to(impairments).await;
        let (client, server) = connect(&link, &target).await;
        (link, client, server)
    }

    /// How long one byte takes from `from` to `to`.
    async fn one_byte(from: &mut TcpStream, to: &mut TcpStream) -> Duration {
        let sent = Instant::now();
        from.write_all(&[7]).await.unwrap();
        let mut byte = [0];
        to.read_exact(&mut byte).await.unwrap();
        assert_eq!(byte, [7]);
        sent.elapsed()
    }

    /// `len` bytes of xorshift noise, different for each `seed`.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut draws = Draws::new(seed, 0, Flow::ToTarget);
        (0..len).map(|_| draws.next().to_le_bytes()[0]).collect()
    }

    /// Writes `data` and closes the sending side, while reading what the
    /// other end sends until it closes.
    async fn exchange(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut rd, mut wr) = stream.into_split();
        let write = async move {
            wr.write_all(&data).await.unwrap();
            wr.shutdown().await.unwrap();
            wr
        };
        let read = async move {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.unwrap();
            got
        };
        tokio::join!(write, read).1
    }

    #[tokio::test(start_paused = true)]
    async fn a_byte_arrives_the_delay_after_it_was_sent_each_way() {
        let delay = Duration::from_millis(50);
        let impairments = Impairments {
            delay,
            ..Impairments::none()
        };
        let (_link, mut client, mut server) = through(impairments).await;
        for _ in 0..3 {
            let there = one_byte(&mut client, &mut server).await;
            let back = one_byte(&mut server, &mut client).await;
            for took in [there, back] {
                assert!(took >= delay, "{took:?}");
                assert!(took <= delay + TICK, "{took:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn with_a_loss_of_one_every_chunk_waits_a_retransmission_more() {
        let delay = Duration::from_millis(20);
        let rto = Duration::from_millis(300);
        let impairments = Impairments {
            delay,
            loss: 1.0,
            retransmit_after: rto,
            ..Impairments::none()
        };
        let (link, mut client, mut server) = through(impairments).await;
        for _ in 0..3 {
            let there = one_byte(&mut client, &mut server).await;
            let back = one_byte(&mut server, &mut client).await;
            for took in [there, back] {
                assert!(took >= delay + rto, "{took:?}");
                assert!(took <= delay + rto + TICK, "{took:?}");
            }
        }
        for flow in [Flow::ToTarget, Flow::FromTarget] {
            assert_eq!(link.traffic(flow).lost, 3, "{flow:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn megabytes_cross_intact_and_in_order_both_ways_through_loss() {
        const LEN: usize = 4 * MIB;
        let impairments = Impairments {
            delay: Duration::from_millis(10),
            loss: 0.1,
            ..Impairments::none()
        };
        let (link, client, server) = through(impairments).await;
        let there = noise(1, LEN);
        let back = noise(2, LEN);
        let (at_client, at_server) = tokio::join!(
            exchange(client, there.clone()),
            exchange(server, back.clone())
        );
        assert!(at_server == there, "the bytes towards the target differ");
        assert!(at_client == back, "the bytes back differ");
        for flow in [Flow::ToTarget, Flow::FromTarget] {
            let traffic = link.traffic(flow);
            assert_eq!(traffic.read, LEN as u64, "{flow:?}");
            assert_eq!(traffic.forwarded, LEN as u64, "{flow:?}");
            // 4 MiB is at least 256 chunks: some of them were lost.
            assert!(traffic.lost > 0, "{flow:?}: {traffic:?}");
        }
        // Both sides closed cleanly, so the relay ended on its own.
        let ended =
            crate::testing::wait_for(Duration::from_secs(1), || link.open_connections() == 0);
        assert!(ended.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_cap_paces_the_link_and_its_connections_share_it() {
        const RATE: u64 = MIB as u64;
        const EACH: usize = 2 * MIB;
        let impairments = Impairments {
            rate: Some(RATE),
            ..Impairments::none()
        };
        let (link, target) = link_to(impairments).await;
        let (a, a_end) = connect(&link, &target).await;
        let (b, b_end) = connect(&link, &target).await;
        let started = Instant::now();
        let (_, at_a_end, _, at_b_end) = tokio::join!(
            exchange(a, noise(3, EACH)),
            exchange(a_end, Vec::new()),
            exchange(b, noise(4, EACH)),
            exchange(b_end, Vec::new()),
        );
        assert!(at_a_end == noise(3, EACH) && at_b_end == noise(4, EACH));
        // Both connections' bytes went over one wire at the rate, which ran
        // a burst ahead at the start.
        let took = started.elapsed();
        let paced = Duration::from_secs_f64((2 * EACH) as f64 / RATE as f64);
        assert!(took >= paced - RATE_BURST, "{took:?}");
        assert!(took <= paced + TICK, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_receiver_that_never_reads_stops_the_link_reading_at_its_bound() {
        // Far more than the link and every socket buffer on the way hold.
        const OFFERED: usize = 64 * MIB;
        let (link, client, server) = through(Impairments::none()).await;
        let (_rd, mut wr) = client.into_split();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&vec![0u8; OFFERED]).await;
        });
        // On the paused clock a sleep ends only once every task waits for
        // its socket: by then the buffers are full.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let settled = link.traffic(Flow::ToTarget);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(link.traffic(Flow::ToTarget), settled, "the link read on");
        assert!(!writer.is_finished(), "the sender was never held back");
        // The link holds its window, full (less a chunk being written, and
        // a chunk's worth it waits for), and no more.
        let held = usize::try_from(settled.read - settled.forwarded).unwrap();
        assert!(held <= IN_FLIGHT_BYTES, "{settled:?}");
        assert!(held > IN_FLIGHT_BYTES - 2 * SEGMENT_BYTES, "{settled:?}");
        // What it forwarded sits in socket buffers: the link's own send
        // buffer (at most the kernel's tcp_wmem maximum) and the receiver's.
        let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").unwrap();
        let wmem_max: u64 = wmem.split_whitespace().last().unwrap().parse().unwrap();
        let rcvbuf = rustix::net::sockopt::socket_recv_buffer_size(&server).unwrap() as u64;
        assert!(
            settled.read <= IN_FLIGHT_BYTES as u64 + wmem_max + rcvbuf,
            "{settled:?}, wmem max {wmem_max}, receive buffer {rcvbuf}"
        );
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_resets_both_sides_loses_what_is_inside_and_refuses_new_connections() {
        let delay = Duration::from_secs(1);
        let impairments = Impairments {
            delay,
            ..Impairments::none()
        };
        let (link, mut client, mut server) = through(impairments).await;
        one_byte(&mut client, &mut server).await;
        one_byte(&mut server, &mut client).await;
        assert_eq!(link.open_connections(), 1);
        // A byte each way is inside the link when it is cut.
        client.write_all(b"x").await.unwrap();
        server.write_all(b"y").await.unwrap();
        tokio::time::sleep(delay / 2).await;
        link.cut().await;
        assert_eq!(link.open_connections(), 0);
        for end in [&mut client, &mut server] {
            let mut buf = [0u8; 8];
            let read = end.read(&mut buf).await;
            let err = read.expect_err("a byte or a clean end came after the cut");
            assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
        }
        for flow in [Flow::ToTarget, Flow::FromTarget] {
            assert_eq!(link.traffic(flow).forwarded, 1, "{flow:?}");
        }
        let refused = TcpStream::connect(link.addr()).await.unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(link.connections(), 1);
    }

    #[test]
    fn draws_repeat_for_a_seed_and_hit_their_probability() {
        let run = |seed| {
            let mut draws = Draws::new(seed, 3, Flow::FromTarget);
            (0..64).map(|_| draws.next()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let mut draws = Draws::new(DEFAULT_SEED, 0, Flow::ToTarget);
        const N: usize = 100_000;
        assert!((0..N).all(|_| !draws.chance(0.0)));
        assert!((0..N).all(|_| draws.chance(1.0)));
        let hits = (0..N).filter(|_| draws.chance(0.05)).count();
        assert!((4_500..5_500).contains(&hits), "{hits} of {N}");
    }

    #[tokio::test]
    async fn impairments_that_make_no_sense_are_refused() {
        let target = "127.0.0.1:9".parse().unwrap();
        for bad in [
            Impairments {
                loss: 1.5,
                ..Impairments::none()
            },
            Impairments {
                loss: f64::NAN,
                ..Impairments::none()
            },
            Impairments {
                rate: Some(0),
                ..Impairments::none()
            },
        ] {
            let err = ImpairedLink::start(target, bad).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
