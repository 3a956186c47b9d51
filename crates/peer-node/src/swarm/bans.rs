//! The ban list: a peer that lies (a GIVE whose bytes do not hash to their
//! digest) is banned for [`BAN_DURATION`], with the reason, the digest and the
//! time kept for the API.
//!
//! # Scope (docs/PROTOCOL.md §4 "Bans")
//! * **Public** addresses: the whole IP, any port, any node id; for IPv6 the
//!   whole /64, since one host usually holds a /64 and can pick any address in
//!   it.
//! * **Every other class** (loopback, private, and the classes no peer should
//!   come from, such as link-local): the (IP, listen port) **and** the node
//!   id. Many nodes may share such an IP — a whole swarm on 127.0.0.1, several
//!   nodes on one LAN host — and a link-local /64 is every host on the link,
//!   so banning the IP would ban the innocent.
//!
//! # Unknown listen ports
//! Before HELLO (an inbound connection just accepted) the listen port and
//! node id are unknown. For public IPs the check is complete at that point.
//! For the other classes an IP alone never matches a ban: otherwise one liar
//! on 127.0.0.1 would lock out every node on the machine. So callers check
//! such connections again once HELLO (or a legacy peer's PEERS) names the
//! listen port and node id. A liar that never named either (a legacy client
//! that sent no PEERS) gets a record that is shown but matches nothing: the
//! lie still closes its connection, and there is nothing narrower than the
//! IP to ban.
//!
//! # Bounds
//! At most [`MAX_BANS`] records; when full, expired records go first, then
//! the record closest to expiry (the oldest ban, as every ban lasts the same
//! time). Each record is reachable through at most two index keys, so memory
//! is bounded by about `MAX_BANS` × (record + reason + 2 keys); reasons are
//! our own messages, not peer text.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use wire_format::addr::canonical_ip;
use wire_format::limits::BAN_DURATION;
use wire_format::{AddrClass, NodeId, PeerAddr, PieceId, host_key};

use super::views::BanView;

/// Most ban records kept; see the module docs for the eviction rule.
pub const MAX_BANS: usize = 4096;

/// Who lied: the connection's observed IP, and its listen port and node id
/// when known (from HELLO, or a legacy peer's PEERS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BanTarget {
    /// The observed source IP (canonicalised by [`Bans::ban`]).
    pub ip: IpAddr,
    /// The port the peer listens on, if known.
    pub listen_port: Option<u16>,
    /// The peer's node id, if known.
    pub node_id: Option<NodeId>,
}

impl BanTarget {
    /// A target with `ip` in canonical form.
    pub fn new(ip: IpAddr, listen_port: Option<u16>, node_id: Option<NodeId>) -> Self {
        Self {
            ip: canonical_ip(ip),
            listen_port,
            node_id,
        }
    }
}

/// What a ban covers, from the class of the liar's IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BanScope {
    /// A public IPv4 address: every port and node id at it.
    Ipv4(Ipv4Addr),
    /// A public IPv6 /64, named by its first address (the low 64 bits zero).
    Ipv6Net64(Ipv6Addr),
    /// Any other address: the target's (IP, listen port) and its node id,
    /// each when known.
    Peer,
}

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    /// The liar, IP canonical.
    pub target: BanTarget,
    /// What the ban covers.
    pub scope: BanScope,
    /// What the peer did.
    pub reason: String,
    /// The piece it lied about, if the ban is for a piece.
    pub digest: Option<PieceId>,
    /// When it was banned, on the node's clock.
    pub since: Instant,
    /// When the ban ends, on the node's clock.
    pub until: Instant,
    /// When it was banned, unix seconds.
    pub since_unix: u64,
    /// When the ban ends, unix seconds.
    pub until_unix: u64,
}

impl BanRecord {
    /// Whether the ban still holds at `now` (it ends exactly at `until`).
    pub fn is_active(&self, now: Instant) -> bool {
        now < self.until
    }

    /// The ban as the API shows it.
    pub fn view(&self) -> BanView {
        BanView {
            reason: self.reason.clone(),
            digest: self.digest,
            until: self.until_unix,
        }
    }
}

/// An index key: what one check looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum BanKey {
    /// A public IPv4 address.
    Ipv4(Ipv4Addr),
    /// A public IPv6 /64, by its first address ([`host_key`]).
    Ipv6Net64(Ipv6Addr),
    /// A non-public (IP, listen port).
    Endpoint(IpAddr, u16),
    /// A node id seen at a non-public address.
    Node(NodeId),
    /// A non-public IP whose liar named neither port nor node id: only
    /// dedupes such records, never consulted by a check.
    Unidentified(IpAddr),
}

type RecordId = u64;

#[derive(Debug)]
struct Entry {
    record: BanRecord,
    /// The index keys that still point here (at most two).
    keys: Vec<BanKey>,
}

/// The ban list, bounded by [`MAX_BANS`].
#[derive(Debug)]
pub struct Bans {
    entries: HashMap<RecordId, Entry>,
    index: HashMap<BanKey, RecordId>,
    /// (until, id), so expiry and eviction take the first.
    by_expiry: BTreeSet<(Instant, RecordId)>,
    next_id: RecordId,
    capacity: usize,
}

impl Default for Bans {
    fn default() -> Self {
        Self::new()
    }
}

/// The key that covers a public IP (its host: the IPv4 address, or the
/// IPv6 /64, as the connection limits count it), or `None` for the other
/// classes.
fn network_key(ip: IpAddr) -> Option<BanKey> {
    if AddrClass::of(ip) != AddrClass::Public {
        return None;
    }
    Some(match host_key(ip) {
        IpAddr::V4(v4) => BanKey::Ipv4(v4),
        IpAddr::V6(net) => BanKey::Ipv6Net64(net),
    })
}

impl Bans {
    /// An empty list of at most [`MAX_BANS`] records.
    pub fn new() -> Self {
        Self::with_capacity(MAX_BANS)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            index: HashMap::new(),
            by_expiry: BTreeSet::new(),
            next_id: 0,
            capacity: capacity.max(1),
        }
    }

    /// Records held, expired ones not yet removed included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bans `peer` for [`BAN_DURATION`] from `now` (`now_unix` is the same
    /// moment in unix seconds, for the API), and returns the record.
    ///
    /// A new ban replaces older ones on the keys it covers (a second lie
    /// restarts the hour with the new reason); an older record keeps the keys
    /// the new one does not cover. When the list is full, expired records are
    /// dropped, then the record closest to expiry.
    pub fn ban(
        &mut self,
        peer: BanTarget,
        reason: String,
        digest: Option<PieceId>,
        now: Instant,
        now_unix: u64,
    ) -> BanRecord {
        let target = BanTarget::new(peer.ip, peer.listen_port, peer.node_id);
        let (scope, keys) = match network_key(target.ip) {
            Some(key @ BanKey::Ipv4(v4)) => (BanScope::Ipv4(v4), vec![key]),
            Some(key @ BanKey::Ipv6Net64(net)) => (BanScope::Ipv6Net64(net), vec![key]),
            _ => {
                let mut keys = Vec::with_capacity(2);
                if let Some(port) = target.listen_port {
                    keys.push(BanKey::Endpoint(target.ip, port));
                }
                if let Some(node_id) = target.node_id {
                    keys.push(BanKey::Node(node_id));
                }
                if keys.is_empty() {
                    keys.push(BanKey::Unidentified(target.ip));
                }
                (BanScope::Peer, keys)
            }
        };
        // An Instant an hour past `now` exists on every real clock; if it did
        // not, a ban that lasts until `now` is the least harmful fallback.
        let until = now.checked_add(BAN_DURATION).unwrap_or(now);
        let record = BanRecord {
            target,
            scope,
            reason,
            digest,
            since: now,
            until,
            since_unix: now_unix,
            until_unix: now_unix.saturating_add(BAN_DURATION.as_secs()),
        };

        self.expire(now);
        for key in &keys {
            self.detach(key);
        }
        while self.entries.len() >= self.capacity {
            let Some(&(_, oldest)) = self.by_expiry.first() else {
                break;
            };
            self.remove(oldest);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        for key in &keys {
            self.index.insert(*key, id);
        }
        self.by_expiry.insert((until, id));
        self.entries.insert(
            id,
            Entry {
                record: record.clone(),
                keys,
            },
        );
        record
    }

    /// Removes `key` from the index and from the record it points to,
    /// dropping that record when nothing points to it any more.
    fn detach(&mut self, key: &BanKey) {
        let Some(id) = self.index.remove(key) else {
            return;
        };
        let orphaned = match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.keys.retain(|k| k != key);
                entry.keys.is_empty()
            }
            None => false,
        };
        if orphaned {
            self.remove(id);
        }
    }

    fn remove(&mut self, id: RecordId) {
        if let Some(entry) = self.entries.remove(&id) {
            for key in &entry.keys {
                if self.index.get(key) == Some(&id) {
                    self.index.remove(key);
                }
            }
            self.by_expiry.remove(&(entry.record.until, id));
        }
    }

    fn active(&self, key: &BanKey, now: Instant) -> Option<&BanRecord> {
        let id = self.index.get(key)?;
        let record = &self.entries.get(id)?.record;
        record.is_active(now).then_some(record)
    }

    /// The ban that covers a peer at `ip` with this listen port and node id,
    /// if any, at `now`.
    ///
    /// A public IP is covered by a ban of its IPv4 address or IPv6 /64,
    /// whatever the port and node id. Any other IP is covered by a ban of the
    /// same (IP, listen port), or of the same node id. With the port and node
    /// id unknown (`None`), a non-public IP never matches: check again after
    /// HELLO (see the module docs).
    pub fn is_banned(
        &self,
        ip: IpAddr,
        listen_port: Option<u16>,
        node_id: Option<NodeId>,
        now: Instant,
    ) -> Option<&BanRecord> {
        let ip = canonical_ip(ip);
        if let Some(key) = network_key(ip) {
            return self.active(&key, now);
        }
        let by_endpoint =
            listen_port.and_then(|port| self.active(&BanKey::Endpoint(ip, port), now));
        by_endpoint.or_else(|| node_id.and_then(|id| self.active(&BanKey::Node(id), now)))
    }

    /// Whether a dialable address (a PEERS entry, a dial candidate) is
    /// banned at `now`: its IP (or /64) when public, else its (IP, port).
    pub fn is_addr_banned(&self, addr: PeerAddr, now: Instant) -> bool {
        self.is_banned(addr.ip(), Some(addr.port()), None, now)
            .is_some()
    }

    /// Drops the records whose ban has ended at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(until, id)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            self.remove(id);
        }
    }

    /// The bans in force at `now`, closest to expiry first (for the API).
    pub fn records(&self, now: Instant) -> Vec<&BanRecord> {
        self.by_expiry
            .iter()
            .filter_map(|(_, id)| self.entries.get(id))
            .map(|entry| &entry.record)
            .filter(|record| record.is_active(now))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const NOW_UNIX: u64 = 1_700_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(n: u8) -> Option<NodeId> {
        Some(NodeId([n; 8]))
    }

    fn ban(bans: &mut Bans, at: &str, port: Option<u16>, id: Option<NodeId>, now: Instant) {
        bans.ban(
            BanTarget::new(ip(at), port, id),
            "sent a piece that does not match its digest".into(),
            Some(PieceId::from_bytes([7; 32])),
            now,
            NOW_UNIX,
        );
    }

    fn banned(bans: &Bans, at: &str, port: Option<u16>, id: Option<NodeId>, now: Instant) -> bool {
        bans.is_banned(ip(at), port, id, now).is_some()
    }

    fn assert_peer_scope(addr: &str, other: &str) {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, addr, Some(7001), node(1), now);
        // The (IP, listen port), whatever node id it now has.
        assert!(banned(&bans, addr, Some(7001), node(9), now));
        assert!(banned(&bans, addr, Some(7001), None, now));
        // The node id, wherever it now listens.
        assert!(banned(&bans, addr, Some(7002), node(1), now));
        assert!(banned(&bans, other, Some(7005), node(1), now));
        // Not the neighbours sharing the IP.
        assert!(!banned(&bans, addr, Some(7002), node(2), now));
        assert!(!banned(&bans, addr, Some(7002), None, now));
        // An IP-only check (before HELLO) bans nobody.
        assert!(!banned(&bans, addr, None, None, now));
        assert!(!banned(&bans, other, Some(7001), node(2), now));
    }

    #[test]
    fn loopback_ban_covers_ip_and_port_and_node_id_only() {
        assert_peer_scope("127.0.0.1", "127.0.0.2");
        assert_peer_scope("::1", "127.0.0.1");
    }

    #[test]
    fn private_ban_covers_ip_and_port_and_node_id_only() {
        assert_peer_scope("192.168.1.20", "192.168.1.21");
        assert_peer_scope("10.0.0.5", "10.0.0.6");
        assert_peer_scope("fd00::5", "fd00::6");
    }

    #[test]
    fn link_local_gets_the_narrow_scope_too() {
        // fe80::/64 is every host on the link: never ban it whole.
        assert_peer_scope("fe80::1", "fe80::2");
    }

    #[test]
    fn public_ipv4_ban_covers_the_whole_ip() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "8.8.8.8", Some(7001), node(1), now);
        assert!(banned(&bans, "8.8.8.8", Some(7001), node(1), now));
        assert!(banned(&bans, "8.8.8.8", Some(9999), node(2), now));
        assert!(banned(&bans, "8.8.8.8", None, None, now));
        assert!(!banned(&bans, "8.8.8.9", Some(7001), None, now));
        let record = bans.is_banned(ip("8.8.8.8"), None, None, now).unwrap();
        assert_eq!(record.scope, BanScope::Ipv4("8.8.8.8".parse().unwrap()));
        // A public ban is of the IP, not of the node id.
        assert!(!banned(&bans, "127.0.0.1", Some(7001), node(1), now));
    }

    #[test]
    fn public_ipv6_ban_covers_the_slash_64() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "2606:4700:10:20::1", Some(7001), None, now);
        assert!(banned(&bans, "2606:4700:10:20::1", Some(1), None, now));
        assert!(banned(
            &bans,
            "2606:4700:10:20:ffff:ffff:ffff:ffff",
            Some(7001),
            node(3),
            now
        ));
        assert!(banned(&bans, "2606:4700:10:20::99", None, None, now));
        assert!(!banned(&bans, "2606:4700:10:21::1", Some(7001), None, now));
        assert!(!banned(&bans, "2606:4700:10::1", Some(7001), None, now));
        let record = bans.is_banned(ip("2606:4700:10:20::5"), None, None, now);
        assert_eq!(
            record.unwrap().scope,
            BanScope::Ipv6Net64("2606:4700:10:20::".parse().unwrap())
        );
    }

    #[test]
    fn mapped_addresses_are_canonicalised() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "::ffff:8.8.8.8", Some(7001), None, now);
        ban(&mut bans, "::ffff:127.0.0.1", Some(7001), None, now);
        let record = bans.is_banned(ip("8.8.8.8"), None, None, now).unwrap();
        assert_eq!(record.target.ip, ip("8.8.8.8"));
        assert!(banned(&bans, "::ffff:8.8.8.8", None, None, now));
        // The mapped loopback is loopback: the narrow scope, in either form.
        assert!(banned(&bans, "127.0.0.1", Some(7001), None, now));
        assert!(banned(&bans, "::ffff:127.0.0.1", Some(7001), None, now));
        assert!(!banned(&bans, "127.0.0.1", Some(7002), None, now));
        assert!(bans.is_addr_banned("[::ffff:127.0.0.1]:7001".parse().unwrap(), now));
        // The unmapped BanTarget fields are fixed up by `ban` too.
        let raw = BanTarget {
            ip: ip("::ffff:9.9.9.9"),
            listen_port: None,
            node_id: None,
        };
        let record = bans.ban(raw, "lie".into(), None, now, NOW_UNIX);
        assert_eq!(record.target.ip, ip("9.9.9.9"));
        assert!(banned(&bans, "9.9.9.9", None, None, now));
    }

    #[test]
    fn ban_ends_exactly_at_ban_duration() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "8.8.8.8", Some(7001), None, now);
        let last = now + BAN_DURATION - Duration::from_nanos(1);
        let end = now + BAN_DURATION;
        assert!(banned(&bans, "8.8.8.8", None, None, last));
        assert_eq!(bans.records(last).len(), 1);
        assert!(!banned(&bans, "8.8.8.8", None, None, end));
        assert!(bans.records(end).is_empty());
        let record = &bans.records(now)[0];
        assert_eq!(record.until, end);
        assert_eq!(record.until_unix, NOW_UNIX + BAN_DURATION.as_secs());
        assert_eq!(record.since_unix, NOW_UNIX);
        bans.expire(last);
        assert_eq!(bans.len(), 1);
        bans.expire(end);
        assert!(bans.is_empty());
    }

    #[test]
    fn records_carry_what_the_api_shows() {
        let now = Instant::now();
        let mut bans = Bans::new();
        let record = bans.ban(
            BanTarget::new(ip("127.0.0.1"), Some(7001), node(1)),
            "bad piece".into(),
            Some(PieceId::from_bytes([9; 32])),
            now,
            NOW_UNIX,
        );
        assert_eq!(
            record.view(),
            BanView {
                reason: "bad piece".into(),
                digest: Some(PieceId::from_bytes([9; 32])),
                until: NOW_UNIX + BAN_DURATION.as_secs(),
            }
        );
        assert_eq!(bans.records(now), vec![&record]);
    }

    #[test]
    fn a_second_lie_restarts_the_ban_without_duplicating_it() {
        let now = Instant::now();
        let later = now + Duration::from_secs(600);
        let mut bans = Bans::new();
        ban(&mut bans, "127.0.0.1", Some(7001), node(1), now);
        bans.ban(
            BanTarget::new(ip("127.0.0.1"), Some(7001), node(1)),
            "again".into(),
            None,
            later,
            NOW_UNIX + 600,
        );
        assert_eq!(bans.len(), 1);
        let record = bans.is_banned(ip("127.0.0.1"), Some(7001), None, now + BAN_DURATION);
        assert_eq!(record.map(|r| r.reason.as_str()), Some("again"));
    }

    #[test]
    fn an_older_record_keeps_the_keys_a_new_ban_does_not_cover() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "127.0.0.1", Some(7001), node(1), now);
        // The same node id lies from another port: the node key moves to the
        // new record, the old (IP, port) stays banned.
        ban(&mut bans, "127.0.0.1", Some(7002), node(1), now);
        assert_eq!(bans.len(), 2);
        assert!(banned(&bans, "127.0.0.1", Some(7001), None, now));
        assert!(banned(&bans, "127.0.0.1", Some(7002), None, now));
        assert!(banned(&bans, "127.0.0.1", Some(7003), node(1), now));
        // A third ban covering both of the second one's keys replaces it.
        ban(&mut bans, "127.0.0.1", Some(7002), node(1), now);
        assert_eq!(bans.len(), 2);
    }

    #[test]
    fn a_liar_with_no_port_or_node_id_is_recorded_but_bans_nobody() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "127.0.0.1", None, None, now);
        ban(&mut bans, "127.0.0.1", None, None, now);
        assert_eq!(bans.records(now).len(), 1);
        assert!(!banned(&bans, "127.0.0.1", None, None, now));
        assert!(!banned(&bans, "127.0.0.1", Some(7001), node(1), now));
        assert!(!bans.is_addr_banned("127.0.0.1:7001".parse().unwrap(), now));
    }

    #[test]
    fn no_port_but_a_node_id_bans_the_node_id() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "10.0.0.5", None, node(4), now);
        assert!(banned(&bans, "10.0.0.5", None, node(4), now));
        assert!(banned(&bans, "10.0.0.5", Some(7001), node(4), now));
        assert!(!banned(&bans, "10.0.0.5", None, node(5), now));
        assert!(!bans.is_addr_banned("10.0.0.5:7001".parse().unwrap(), now));
    }

    #[test]
    fn cap_holds_and_evicts_the_record_closest_to_expiry() {
        let start = Instant::now();
        let mut bans = Bans::new();
        let public = |i: usize| {
            let i = u32::try_from(i).unwrap();
            IpAddr::V4(Ipv4Addr::from(0x0808_0000 + i))
        };
        for i in 0..MAX_BANS {
            let at = start + Duration::from_millis(u64::try_from(i).unwrap());
            bans.ban(
                BanTarget::new(public(i), None, None),
                "lie".into(),
                None,
                at,
                NOW_UNIX,
            );
        }
        // At the limit: all kept.
        let now = start + Duration::from_millis(u64::try_from(MAX_BANS).unwrap());
        assert_eq!(bans.len(), MAX_BANS);
        assert!(bans.is_banned(public(0), None, None, now).is_some());
        // One more: the oldest (closest to expiry) goes, nothing else.
        bans.ban(
            BanTarget::new(public(MAX_BANS), None, None),
            "lie".into(),
            None,
            now,
            NOW_UNIX,
        );
        assert_eq!(bans.len(), MAX_BANS);
        assert!(bans.is_banned(public(0), None, None, now).is_none());
        assert!(bans.is_banned(public(1), None, None, now).is_some());
        assert!(bans.is_banned(public(MAX_BANS), None, None, now).is_some());
        // Expired records go before any live one.
        let after_first_two = start + BAN_DURATION + Duration::from_millis(2);
        bans.ban(
            BanTarget::new(ip("9.9.9.9"), None, None),
            "lie".into(),
            None,
            after_first_two,
            NOW_UNIX,
        );
        assert_eq!(bans.len(), MAX_BANS - 1);
        assert!(
            bans.is_banned(public(3), None, None, after_first_two)
                .is_some()
        );
    }

    #[test]
    fn banned_peers_entries_are_filtered() {
        let now = Instant::now();
        let mut bans = Bans::new();
        ban(&mut bans, "127.0.0.1", Some(7001), node(1), now);
        ban(&mut bans, "203.0.114.7", Some(7001), None, now);
        ban(&mut bans, "2606:4700::1", Some(7001), None, now);
        let banned_addr = |s: &str| bans.is_addr_banned(s.parse().unwrap(), now);
        assert!(banned_addr("127.0.0.1:7001"));
        assert!(!banned_addr("127.0.0.1:7002"));
        assert!(banned_addr("203.0.114.7:7001"));
        assert!(banned_addr("203.0.114.7:40000"));
        assert!(!banned_addr("203.0.114.8:7001"));
        assert!(banned_addr("[2606:4700::ffff]:7001"));
        assert!(!banned_addr("[2606:4701::1]:7001"));
        assert!(!bans.is_addr_banned("127.0.0.1:7001".parse().unwrap(), now + BAN_DURATION));
    }
}
