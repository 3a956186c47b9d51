//! The piece exchange's shared state: the store, the byte budgets and
//! slots, the fetches in progress and the live connections a fetch may
//! ask, the rate limits.
//!
//! Uses the swarm, [`super::link`] and [`super::events`].

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use piece_store::PieceStore;
use tokio::sync::Semaphore;
use wire_format::PieceId;
use wire_format::limits::PIECE_MAX;

use super::events::{FetchEvent, FetchHandle};
use super::link::Link;
use crate::dht::DhtNode;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::swarm::Swarm;

/// Bytes of pieces that may be asked for and not yet received, across all
/// fetches: reserved when an ASK is sent, so every GIVE that arrives can be
/// accepted.
pub const FETCH_BUDGET_BYTES: usize = 256 << 20;
/// Bytes of pieces read from the store and waiting to be written, across
/// all connections.
pub const SERVE_BUDGET_BYTES: usize = 64 << 20;
/// Pieces received and waiting for verification, node-wide; a reader that
/// finds them all taken waits (bounding unverified bytes in memory to this
/// many pieces).
pub const VERIFY_QUEUE_PIECES: usize = 32;
/// GIVEs hashed while they arrive, node-wide (see
/// [`STREAM_GIVES_FROM`](super::STREAM_GIVES_FROM)). A
/// GIVE that finds them all taken is read whole and verified as before:
/// peers trickling the pieces we asked them for can hold at most these (and
/// as many blocking threads), never a verify slot.
pub const STREAMING_GIVES_MAX: usize = 8;
/// Budget units are KiB (semaphore permits are counted in u32).
pub(crate) const BUDGET_UNIT: usize = 1 << 10;
/// Units one answer or one ASK reserves: a whole piece, whatever its size.
#[allow(clippy::cast_possible_truncation)] // 1024: checked below
pub(crate) const PIECE_UNITS: u32 = (PIECE_MAX / BUDGET_UNIT) as u32;
const _: () = assert!(PIECE_MAX / BUDGET_UNIT <= u32::MAX as usize);
/// Budget units per piece must cover the largest piece.
const _: () = assert!(PIECE_UNITS as usize * BUDGET_UNIT >= PIECE_MAX);

/// The piece exchange's state, shared by every connection and fetch.
pub struct Pieces {
    pub(crate) swarm: Arc<Swarm>,
    pub(crate) metrics: Arc<Metrics>,
    /// Where pieces live (blocking API: call through the blocking pool).
    pub(crate) store: Arc<dyn PieceStore>,
    /// Serving budget ([`SERVE_BUDGET_BYTES`], in [`BUDGET_UNIT`]s).
    pub(crate) serve_budget: Arc<Semaphore>,
    /// In-flight fetch budget ([`FETCH_BUDGET_BYTES`], in [`BUDGET_UNIT`]s).
    pub(crate) fetch_budget: Arc<Semaphore>,
    /// Pieces received and waiting for (or in) verification, across all
    /// connections: bounds the memory of unverified bytes.
    pub(crate) verify_slots: Arc<Semaphore>,
    /// GIVEs being hashed while they arrive, at most [`STREAMING_GIVES_MAX`].
    pub(crate) stream_slots: Arc<Semaphore>,
    /// Fetches in progress, by piece.
    pub(super) fetches: Mutex<HashMap<PieceId, FetchHandle>>,
    /// The live connections a fetch may ask.
    links: Mutex<HashMap<u64, Arc<Link>>>,
    /// `--max-upload-rate`: piece bytes we give (`None`: unlimited).
    pub(crate) upload: Option<Arc<RateLimiter>>,
    /// `--max-download-rate`: piece bytes we ask for.
    pub(crate) download: Arc<RateLimiter>,
    /// The connection that gave us the last verified piece (0: none).
    pub(crate) last_giver: AtomicU64,
    /// The DHT node (`--dht`), for lookups when no peer holds a piece.
    pub(crate) dht: Option<Arc<DhtNode>>,
}

impl std::fmt::Debug for Pieces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces")
            .field("store", &self.store.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Pieces {
    /// The exchange of a node whose swarm is `swarm`, keeping pieces in
    /// `store`, with the rate limits of the swarm's config.
    pub(crate) fn new(swarm: Arc<Swarm>, store: Arc<dyn PieceStore>) -> Self {
        let config = &swarm.config;
        let upload = config
            .max_upload_rate
            .map(|rate| Arc::new(RateLimiter::new(Some(rate))));
        let download = Arc::new(RateLimiter::new(config.max_download_rate));
        Self {
            metrics: Arc::clone(&swarm.metrics),
            store,
            serve_budget: Arc::new(Semaphore::new(SERVE_BUDGET_BYTES / BUDGET_UNIT)),
            fetch_budget: Arc::new(Semaphore::new(FETCH_BUDGET_BYTES / BUDGET_UNIT)),
            verify_slots: Arc::new(Semaphore::new(VERIFY_QUEUE_PIECES)),
            stream_slots: Arc::new(Semaphore::new(STREAMING_GIVES_MAX)),
            fetches: Mutex::new(HashMap::new()),
            links: Mutex::new(HashMap::new()),
            upload,
            download,
            last_giver: AtomicU64::new(0),
            dht: None,
            swarm,
        }
    }

    pub(crate) fn fetches(&self) -> MutexGuard<'_, HashMap<PieceId, FetchHandle>> {
        lock(&self.fetches)
    }

    /// The live connection `id`, if registered.
    pub(crate) fn link(&self, id: u64) -> Option<Arc<Link>> {
        lock(&self.links).get(&id).map(Arc::clone)
    }

    /// The live connections a fetch may ask.
    pub(crate) fn links(&self) -> Vec<Arc<Link>> {
        lock(&self.links).values().map(Arc::clone).collect()
    }

    /// Adds a live connection; fetches that are widening their search hear
    /// of it at once.
    pub(crate) fn add_link(&self, link: &Arc<Link>) {
        lock(&self.links).insert(link.id, Arc::clone(link));
        let senders: Vec<_> = self.fetches().values().map(|h| h.events.clone()).collect();
        for events in senders {
            let _ = events.try_send(FetchEvent::Connected(Arc::clone(link)));
        }
    }

    /// Removes a connection that ended; fetches that asked it look elsewhere.
    pub(crate) fn remove_link(&self, link: &Link) {
        lock(&self.links).remove(&link.id);
        let asked: Vec<PieceId> = {
            let book = link.ask_book();
            book.outstanding
                .iter()
                .map(|a| a.id)
                .chain(book.wanted.iter().copied())
                .collect()
        };
        for id in asked {
            self.fetch_event(&id, FetchEvent::Failed(link.id));
        }
    }

    /// Tells every extended peer connected that this node now holds `id`
    /// (an unasked HAVE): the leechers of one file then fetch from each
    /// other what they already hold instead of all from its seeders. A
    /// peer whose control queue is full misses the announcement.
    pub(crate) fn announce(&self, id: PieceId) {
        let links = self.links();
        let mut sent = 0;
        for link in links.iter().filter(|l| !l.legacy) {
            if link.send(wire_format::Message::Have(id)) {
                sent += 1;
            }
        }
        self.metrics
            .add(crate::metrics::Metric::HaveAnnouncedTotal, sent);
    }

    /// Delivers an event to the fetch of `id`, if one runs.
    pub(crate) fn fetch_event(&self, id: &PieceId, event: FetchEvent) -> bool {
        let sender = self.fetches().get(id).map(|h| h.events.clone());
        sender.is_some_and(|tx| tx.try_send(event).is_ok())
    }

    /// The node's piece store.
    pub fn store(&self) -> &Arc<dyn PieceStore> {
        &self.store
    }

    /// An exchange over a memory store, for a node that dials nobody.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        let mut config = crate::config::NodeConfig::new(([127, 0, 0, 1], 0).into());
        config.target_outbound = 0;
        let (swarm, _dials) = Swarm::new(
            config,
            wire_format::NodeId([7; 8]),
            7001,
            Arc::default(),
            &[],
        );
        let store = Arc::new(piece_store::MemStore::new(1 << 30));
        Arc::new(Self::new(Arc::new(swarm), store))
    }
}
