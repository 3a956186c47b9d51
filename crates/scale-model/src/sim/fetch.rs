//! Fetches in the model: asking connected peers, widening rounds, and
//! the DHT lookup beside them, to their outcome.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use super::*;

impl Swarm {
    pub(super) fn start_fetch(&mut self, spec: FetchSpec) {
        let f = u32::try_from(self.fetches.len()).unwrap_or(u32::MAX);
        let (storage, lookup) = match (&self.dht, spec.key) {
            (Some(dht), Some(key)) => (
                dht.storage_nodes(key, dht.params.storage),
                Some(Lookup::new(dht, spec.node, key)),
            ),
            _ => (Vec::new(), None),
        };
        self.fetches.push(Fetch {
            spec,
            storage,
            start: self.now,
            running: true,
            outcome: None,
            asked: HashSet::new(),
            wanted: 0,
            connecting: 0,
            widened: None,
            widen_dialled: 0,
            msgs: Msgs::default(),
            lookup,
            dht_queue: Vec::new(),
            dht_dialled: 0,
            widen_asked: Vec::new(),
            dht_asked: Vec::new(),
        });
        let node = self.fetches[f as usize].spec.node;
        for p in self.peers_of(node) {
            let rtt = self.delay() + self.delay();
            self.want(f, p, rtt);
        }
        if self.dht_params().at_start {
            self.dht_queries(f);
        }
        self.push(self.now + FETCH_TICK, Ev::FetchTick(f));
        self.fetch_step(f);
    }

    /// Sends a WANT_HAVE to `peer`, answered after `after`.
    pub(super) fn want(&mut self, f: u32, peer: u32, after: u64) {
        let fetch = &mut self.fetches[f as usize];
        fetch.asked.insert(peer);
        fetch.wanted += 1;
        fetch.msgs.want_have += 2;
        self.push(self.now + after, Ev::Answer { fetch: f, peer });
    }

    pub(super) fn answer(&mut self, f: u32, peer: u32) {
        let now = self.now;
        let fetch = &mut self.fetches[f as usize];
        let node = fetch.spec.node;
        if !fetch.running {
            // A connection dialled for it that outlived it.
            self.push(now + WIDEN_LINGER, Ev::Linger { node, peer });
            return;
        }
        fetch.wanted = fetch.wanted.saturating_sub(1);
        if fetch.spec.holders.binary_search(&peer).is_ok() {
            let via = if fetch.dht_asked.contains(&peer) {
                Via::Dht
            } else if fetch.widen_asked.contains(&peer) {
                Via::Widen
            } else {
                Via::Connected
            };
            fetch.running = false;
            fetch.outcome = Some(Outcome::Found {
                after: now - fetch.start,
                via,
            });
            // The piece comes; the connection lingers after it.
            self.push(now + WIDEN_LINGER, Ev::Linger { node, peer });
            return;
        }
        // DONT_HAVE: a peer dialled only to ask this does not stay.
        self.release_widen(node, peer);
        self.fetch_step(f);
    }

    pub(super) fn end(&mut self, f: u32, outcome: Outcome) {
        let fetch = &mut self.fetches[f as usize];
        fetch.running = false;
        fetch.outcome = Some(outcome);
    }

    /// One wake-up of a fetch: what `ask_peers` does on each event or tick.
    pub(super) fn fetch_step(&mut self, f: u32) {
        let now = self.now;
        if !self.fetches[f as usize].running {
            return;
        }
        let fetch = &self.fetches[f as usize];
        let node = fetch.spec.node;
        if now >= fetch.start + fetch.spec.timeout {
            self.end(f, Outcome::Deadline);
            return;
        }
        // Connections that came up once widening began are asked too.
        if fetch.widened.is_some() {
            let new: Vec<u32> = self.nodes[node as usize]
                .conns
                .iter()
                .map(|c| c.peer)
                .filter(|p| !fetch.asked.contains(p))
                .collect();
            for p in new {
                let rtt = self.delay() + self.delay();
                self.want(f, p, rtt);
            }
        }
        self.dht_dials(f);
        let fetch = &self.fetches[f as usize];
        if fetch.wanted > 0 {
            return;
        }
        let connecting = self.nodes[node as usize].dialing.len();
        let round_over = fetch.widened.is_none_or(|since| {
            let waited = now - since;
            (connecting == 0 && waited >= WIDEN_SETTLE) || waited >= WIDEN_WAIT
        });
        if !round_over {
            return;
        }
        if fetch.widened.is_none() && !self.dht_params().at_start {
            // The lookup runs beside widening, from its first round.
            self.dht_queries(f);
        }
        let fetch = &self.fetches[f as usize];
        let room = WIDEN_MAX_PEERS - fetch.widen_dialled;
        let candidates = self.widening_candidates(f);
        let want = room.min(WIDEN_DIALS).min(candidates.len());
        let granted = if want > 0 {
            self.nodes[node as usize].take_dials(want, now)
        } else {
            0
        };
        for &to in candidates.iter().take(granted) {
            let fetch = &mut self.fetches[f as usize];
            fetch.asked.insert(to);
            fetch.connecting += 1;
            fetch.widen_dialled += 1;
            fetch.widen_asked.push(to);
            fetch.msgs.dials += 1;
            self.dial(node, to, Why::Widen(f));
        }
        let fetch = &self.fetches[f as usize];
        let more = granted > 0 || (candidates.len() > granted && room > 0);
        let dht_over = fetch.lookup.is_none()
            || (fetch
                .lookup
                .as_ref()
                .is_some_and(|l| l.done(&self.dht_params()))
                && (fetch.dht_queue.is_empty() || fetch.dht_dialled >= self.dht_params().dial_cap));
        if !more && connecting == 0 && fetch.connecting == 0 && dht_over {
            self.end(f, Outcome::NotFound);
            return;
        }
        self.fetches[f as usize].widened = Some(now);
    }

    /// Table candidates a widening may dial: due first, then those backing
    /// off soonest due first, random among equals; never one the fetch
    /// asked or dialled, nor one connected or being dialled.
    pub(super) fn widening_candidates(&mut self, f: u32) -> Vec<u32> {
        let now = self.now;
        let fetch = &self.fetches[f as usize];
        let node = fetch.spec.node;
        let skip = self.skip_set(node);
        let mut all: Vec<((bool, u64, u8), u32)> = self.nodes[node as usize]
            .table
            .iter()
            .filter(|(a, _)| !skip.contains(a) && !fetch.asked.contains(a))
            .map(|(a, c)| {
                let waiting = c.next > now;
                ((waiting, if waiting { c.next } else { 0 }, c.failures), *a)
            })
            .collect();
        all.shuffle(&mut self.rng);
        all.sort_by_key(|&(k, _)| k);
        all.into_iter().map(|(_, a)| a).collect()
    }

    pub(super) fn dht_params(&self) -> DhtParams {
        self.dht.as_ref().map_or(DhtParams::MAINLINE, |d| d.params)
    }

    pub(super) fn dht_queries(&mut self, f: u32) {
        let params = self.dht_params();
        let Some(lookup) = self.fetches[f as usize].lookup.as_mut() else {
            return;
        };
        let next = lookup.next_queries(&params);
        self.fetches[f as usize].msgs.dht += params.messages_per_visit() * next.len() as u64;
        for to in next {
            let rtt = self.delay() + self.delay();
            self.push(self.now + rtt, Ev::DhtResponse { fetch: f, from: to });
        }
    }

    pub(super) fn dht_response(&mut self, f: u32, from: u32) {
        if !self.fetches[f as usize].running {
            return;
        }
        let Some(dht) = self.dht.as_ref() else { return };
        let fetch = &mut self.fetches[f as usize];
        let Some(lookup) = fetch.lookup.as_mut() else {
            return;
        };
        let values = lookup.on_response(
            dht,
            from,
            &fetch.storage,
            &fetch.spec.holders,
            &mut self.rng,
        );
        for v in values {
            if v != fetch.spec.node && !fetch.dht_queue.contains(&v) {
                fetch.dht_queue.push(v);
            }
        }
        self.dht_queries(f);
        self.fetch_step(f);
    }

    /// Dials the holders the lookup returned, within the dial rate, at most
    /// the cap per lookup; one already connected is asked on its connection.
    pub(super) fn dht_dials(&mut self, f: u32) {
        let now = self.now;
        let cap = self.dht_params().dial_cap;
        let node = self.fetches[f as usize].spec.node;
        let queue = self.fetches[f as usize].dht_queue.clone();
        for h in queue {
            let fetch = &self.fetches[f as usize];
            if fetch.asked.contains(&h) {
                continue;
            }
            if self.nodes[node as usize].conn(h).is_some() {
                let rtt = self.delay() + self.delay();
                self.want(f, h, rtt);
                continue;
            }
            if fetch.dht_dialled >= cap || self.nodes[node as usize].dialing.contains(&h) {
                continue;
            }
            if self.nodes[node as usize].take_dials(1, now) == 0 {
                break;
            }
            let fetch = &mut self.fetches[f as usize];
            fetch.asked.insert(h);
            fetch.connecting += 1;
            fetch.dht_dialled += 1;
            fetch.dht_asked.push(h);
            fetch.msgs.dials += 1;
            self.dial(node, h, Why::Dht(f));
        }
    }
}
