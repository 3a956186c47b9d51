//! Lookups: `get_peers` on a name's key, for fetches that found no holder
//! among their connections. One lookup per key at a time, shared by every
//! fetch of that key (the pieces of a file all look up its manifest), and
//! remembered for [`DHT_LOOKUP_REUSE`] once done.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mainline::Id;
use tokio::sync::watch;
use tracing::debug;
use wire_format::{PeerAddr, PieceId};

use super::{DIAL_RETRY, DhtNode, LookupHandle, dht_key};
use crate::metrics::{Metric, Metrics};

/// Addresses one lookup dials at most, however many the DHT returns: a
/// malicious DHT node can aim a lookup at a victim with no more than this.
pub const DHT_LOOKUP_DIALS_MAX: usize = 16;
/// Lookups one node runs at once; a fetch that finds them all busy widens
/// without the DHT.
pub const DHT_LOOKUPS_MAX: usize = 16;
/// Longest a lookup runs (its query and its dials) before it ends.
pub const DHT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished lookup answers new fetches of the same key instead
/// of a new query: a file's pieces that come after its manifest reuse the
/// manifest's lookup.
pub const DHT_LOOKUP_REUSE: Duration = Duration::from_secs(30);

/// Lookups running or recently finished, by key.
#[derive(Debug, Default)]
pub(crate) struct Lookups {
    by_key: HashMap<Id, (LookupHandle, Instant)>,
}

impl Lookups {
    /// The handle of a lookup of `key` still running, or finished less than
    /// [`DHT_LOOKUP_REUSE`] ago; forgets older ones.
    fn current(&mut self, key: &Id, now: Instant) -> Option<LookupHandle> {
        self.by_key.retain(|_, (h, started)| {
            !h.is_done() || now.duration_since(*started) < DHT_LOOKUP_REUSE
        });
        self.by_key.get(key).map(|(h, _)| h.clone())
    }

    fn running(&self) -> usize {
        self.by_key.values().filter(|(h, _)| !h.is_done()).count()
    }
}

/// Chooses what a lookup dials from what the DHT returned: new addresses the
/// DHT may hand us (`may_dial`), at most `room` of them.
pub(crate) fn choose(
    batch: &[std::net::SocketAddrV4],
    seen: &mut HashSet<PeerAddr>,
    room: usize,
    may_dial: impl Fn(IpAddr) -> bool,
) -> Vec<PeerAddr> {
    let mut chosen = Vec::new();
    for a in batch {
        if chosen.len() >= room {
            break;
        }
        let addr = PeerAddr::new(IpAddr::V4(*a.ip()), a.port());
        if a.port() == 0 || !may_dial(addr.ip()) || !seen.insert(addr) {
            continue;
        }
        chosen.push(addr);
    }
    chosen
}

impl DhtNode {
    /// Looks up who announced `name`, and dials up to
    /// [`DHT_LOOKUP_DIALS_MAX`] of them through `dial`, which takes a queue
    /// of addresses and says how many of its first ones it handled (dialled
    /// or skipped; the rest wait for the dial rate). Joins a lookup of the
    /// same key that runs or just ended; `None` when [`DHT_LOOKUPS_MAX`] run.
    pub(crate) fn lookup<D>(
        self: &Arc<Self>,
        name: &PieceId,
        metrics: &Arc<Metrics>,
        dial: D,
    ) -> Option<LookupHandle>
    where
        D: Fn(&[PeerAddr]) -> usize + Send + 'static,
    {
        let key = dht_key(name);
        let at = Instant::now();
        let (handle, done_tx) = {
            let mut lookups = self.lookups();
            if let Some(handle) = lookups.current(&key, at) {
                return Some(handle);
            }
            if lookups.running() >= DHT_LOOKUPS_MAX {
                return None;
            }
            let (done_tx, done) = watch::channel(false);
            let handle = LookupHandle {
                done,
                found: Arc::new(Mutex::new(Vec::new())),
            };
            lookups.by_key.insert(key, (handle.clone(), at));
            (handle, done_tx)
        };
        metrics.incr(Metric::DhtLookupsTotal);
        let node = Arc::clone(self);
        let found = Arc::clone(&handle.found);
        let metrics = Arc::clone(metrics);
        tokio::spawn(async move {
            let run = run(&node, key, &found, &metrics, dial);
            let _ = tokio::time::timeout(DHT_LOOKUP_TIMEOUT, run).await;
            let _ = done_tx.send(true);
        });
        Some(handle)
    }
}

async fn run<D>(node: &DhtNode, key: Id, found: &Mutex<Vec<PeerAddr>>, metrics: &Metrics, dial: D)
where
    D: Fn(&[PeerAddr]) -> usize,
{
    let mut stream = node.dht.get_peers(key);
    let mut seen = HashSet::new();
    let mut queue: VecDeque<PeerAddr> = VecDeque::new();
    let mut chosen = 0;
    let mut answered = false;
    loop {
        if !answered {
            tokio::select! {
                batch = stream.next() => match batch {
                    Some(batch) => {
                        let new = choose(&batch, &mut seen, DHT_LOOKUP_DIALS_MAX - chosen, |ip| node.may_dial(ip));
                        chosen += new.len();
                        metrics.add(Metric::DhtPeersFoundTotal, new.len() as u64);
                        debug!(%key, returned = batch.len(), new = new.len(), "DHT lookup answer");
                        if let Ok(mut found) = found.lock() {
                            found.extend(&new);
                        }
                        queue.extend(new);
                    }
                    None => answered = true,
                },
                () = tokio::time::sleep(DIAL_RETRY) => {}
            }
        } else if !queue.is_empty() {
            tokio::time::sleep(DIAL_RETRY).await;
        }
        if !queue.is_empty() {
            let handled = dial(queue.make_contiguous()).min(queue.len());
            queue.drain(..handled);
        }
        if answered && queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> std::net::SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn a_lookup_chooses_at_most_its_room_of_new_dialable_addresses() {
        let mut seen = HashSet::new();
        let batch: Vec<_> = (1..=40u16)
            .map(|n| v4(&format!("8.8.{}.{}:7001", n / 250, n % 250)))
            .collect();
        let first = choose(&batch, &mut seen, DHT_LOOKUP_DIALS_MAX, |_| true);
        assert_eq!(first.len(), DHT_LOOKUP_DIALS_MAX);
        // The same batch again (a second DHT node's answer): nothing new
        // within the room left.
        let again = choose(&batch[..DHT_LOOKUP_DIALS_MAX], &mut seen, 0, |_| true);
        assert!(again.is_empty());
        let again = choose(&batch[..DHT_LOOKUP_DIALS_MAX], &mut seen, 5, |_| true);
        assert!(again.is_empty(), "addresses seen are not chosen twice");
    }

    #[test]
    fn a_lookup_skips_addresses_it_may_not_dial_and_port_zero() {
        let mut seen = HashSet::new();
        let batch = [v4("10.0.0.1:7001"), v4("8.8.8.8:0"), v4("8.8.8.8:7001")];
        let chosen = choose(&batch, &mut seen, 10, |ip| {
            !ip.is_loopback() && ip != IpAddr::from([10, 0, 0, 1])
        });
        assert_eq!(
            chosen,
            vec![PeerAddr::new(IpAddr::from([8, 8, 8, 8]), 7001)]
        );
    }

    #[test]
    fn finished_lookups_are_reused_for_a_while_then_forgotten() {
        let mut lookups = Lookups::default();
        let key = dht_key(&PieceId::of(b"x"));
        let (tx, done) = watch::channel(false);
        let handle = LookupHandle {
            done,
            found: Arc::new(Mutex::new(Vec::new())),
        };
        let t0 = Instant::now();
        lookups.by_key.insert(key, (handle, t0));
        assert_eq!(lookups.running(), 1);
        let later = t0 + DHT_LOOKUP_REUSE;
        assert!(
            lookups.current(&key, later).is_some(),
            "a running lookup is never dropped"
        );
        tx.send(true).unwrap();
        assert_eq!(lookups.running(), 0);
        assert!(
            lookups
                .current(&key, later - Duration::from_millis(1))
                .is_some()
        );
        assert!(lookups.current(&key, later).is_none());
    }
}
