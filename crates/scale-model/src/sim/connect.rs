//! Connections in the model: the dialler, dials and their outcome,
//! closing (widening's releases included) and peer exchange.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use super::*;

impl Swarm {
    pub(super) fn arm_dialler(&mut self, n: u32) {
        let node = &mut self.nodes[n as usize];
        if node.joined && !node.dialler_armed && node.needs_dials() {
            node.dialler_armed = true;
            self.push(self.now + DIAL_TICK, Ev::DialTick(n));
        }
    }

    pub(super) fn dial_tick(&mut self, n: u32) {
        let now = self.now;
        self.nodes[n as usize].dialler_armed = false;
        if !self.nodes[n as usize].needs_dials() {
            return;
        }
        let skip = self.skip_set(n);
        let node = &self.nodes[n as usize];
        // Due candidates, fewest failures first, random among equals: the
        // dialler takes one per tick.
        let mut due: Vec<(u8, u32)> = node
            .table
            .iter()
            .filter(|(a, c)| c.next <= now && !skip.contains(a))
            .map(|(a, c)| (c.failures, *a))
            .collect();
        if !due.is_empty() {
            due.shuffle(&mut self.rng);
            due.sort_by_key(|&(f, _)| f);
            let granted = self.nodes[n as usize].take_dials(1, now);
            if granted > 0 {
                let to = due[0].1;
                self.dial(n, to, Why::Dialler);
            }
        }
        let node = &mut self.nodes[n as usize];
        if node.needs_dials() {
            node.dialler_armed = true;
            self.push(now + DIAL_TICK, Ev::DialTick(n));
        }
    }

    pub(super) fn skip_set(&self, n: u32) -> HashSet<u32> {
        let node = &self.nodes[n as usize];
        let mut skip: HashSet<u32> = node.dialing.iter().copied().collect();
        skip.extend(node.conns.iter().map(|c| c.peer));
        skip
    }

    pub(super) fn dial(&mut self, from: u32, to: u32, why: Why) {
        self.nodes[from as usize].dialing.push(to);
        let d = self.delay();
        self.push(self.now + d, Ev::DialArrive { from, to, why });
    }

    pub(super) fn dial_arrive(&mut self, from: u32, to: u32, why: Why) {
        let d = self.delay();
        let target = &self.nodes[to as usize];
        let duplicate = target.conn(from).is_some();
        let full = target.inbound() >= MAX_INBOUND || target.conns.len() >= MAX_CONNECTIONS;
        if duplicate || full || !target.joined {
            // A duplicate keeps the connection already there; a full node
            // refuses at accept.
            let ok = duplicate;
            self.push(self.now + d, Ev::DialDone { from, to, ok, why });
            return;
        }
        self.add_conn(to, from, false, false);
        // The accepting side learns the dialler's listen address (its PEERS
        // names it first) and answers with its own PEERS.
        self.offer_entries(to, &[from]);
        self.send_peers(to, from);
        self.push(
            self.now + d,
            Ev::DialDone {
                from,
                to,
                ok: true,
                why,
            },
        );
    }

    pub(super) fn dial_done(&mut self, from: u32, to: u32, ok: bool, why: Why) {
        let now = self.now;
        {
            let node = &mut self.nodes[from as usize];
            node.dialing.retain(|&a| a != to);
            if let Some(c) = node.table.get_mut(&to) {
                if ok {
                    c.failures = 0;
                } else {
                    c.failures = c.failures.saturating_add(1);
                    let factor = 1u64 << (c.failures.min(16) - 1);
                    c.next = now + (DIAL_BACKOFF_BASE * factor).min(DIAL_BACKOFF_MAX);
                }
            }
        }
        let fetch = match why {
            Why::Dialler => None,
            Why::Widen(f) | Why::Dht(f) => Some(f),
        };
        let fresh = ok
            && self.nodes[from as usize].conn(to).is_none()
            && self.nodes[to as usize].conn(from).is_some();
        if fresh {
            self.add_conn(from, to, true, fetch.is_some());
            self.send_peers(from, to);
        }
        if let Some(f) = fetch {
            let fetch = &mut self.fetches[f as usize];
            fetch.connecting = fetch.connecting.saturating_sub(1);
            if ok {
                if fresh {
                    fetch.msgs.hello += 2;
                    fetch.msgs.peers += 2;
                }
                if fetch.running {
                    // HELLOs cross, then the WANT_HAVE and its answer.
                    let rtt = self.delay() + self.delay();
                    self.want(f, to, rtt);
                } else if fresh {
                    self.push(
                        now + WIDEN_LINGER,
                        Ev::Linger {
                            node: from,
                            peer: to,
                        },
                    );
                }
            }
            if self.fetches[f as usize].running {
                self.fetch_step(f);
            }
        }
        self.arm_dialler(from);
    }

    pub(super) fn add_conn(&mut self, n: u32, peer: u32, out: bool, widen: bool) {
        let before = self.nodes[n as usize].conns.len();
        self.nodes[n as usize].conns.push(Conn { peer, out, widen });
        if before + 1 == self.want_peers {
            self.ready += 1;
            self.check_formed();
        }
    }

    pub(super) fn close(&mut self, a: u32, b: u32) {
        for (x, y) in [(a, b), (b, a)] {
            let node = &mut self.nodes[x as usize];
            let before = node.conns.len();
            node.conns.retain(|c| c.peer != y);
            if before == self.want_peers && node.conns.len() < before {
                self.ready -= 1;
            }
            self.arm_dialler(x);
        }
    }

    /// A connection `node` dialled for a fetch closes once that fetch is done
    /// with it, while `node` has more outbound connections than its target;
    /// otherwise it stays as an ordinary one.
    pub(super) fn release_widen(&mut self, node: u32, peer: u32) {
        let n = &mut self.nodes[node as usize];
        let Some(i) = n.conn(peer) else { return };
        if !n.conns[i].widen {
            return;
        }
        if n.outbound() > TARGET_OUTBOUND {
            self.close(node, peer);
        } else {
            n.conns[i].widen = false;
        }
    }

    // --- peer exchange ---

    pub(super) fn send_peers(&mut self, from: u32, to: u32) {
        let mut entries: Vec<u32> = self.nodes[from as usize]
            .conns
            .iter()
            .map(|c| c.peer)
            .filter(|&p| p != to)
            .collect();
        entries.shuffle(&mut self.rng);
        entries.truncate(PEX_MAX_ENTRIES - 1);
        entries.insert(0, from);
        let d = self.delay();
        self.push(self.now + d, Ev::Peers { to, from, entries });
    }

    pub(super) fn offer(&mut self, to: u32, _from: u32, entries: &[u32]) {
        self.offer_entries(to, entries);
        self.arm_dialler(to);
    }

    pub(super) fn offer_entries(&mut self, to: u32, entries: &[u32]) {
        let now = self.now;
        let node = &mut self.nodes[to as usize];
        for &e in entries.iter().take(PEX_MAX_ENTRIES) {
            if e == to || node.table.len() >= PEER_TABLE_MAX {
                continue;
            }
            node.table.entry(e).or_insert(Cand {
                failures: 0,
                next: now,
            });
        }
    }
}
