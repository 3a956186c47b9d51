//! Content discovery on the BitTorrent Mainline DHT (BEP 5), with `--dht`:
//! a third source of peers beside the bootstrap servers and peer exchange.
//!
//! The node runs a Mainline DHT node (the `mainline` crate) in server mode
//! on UDP, at the port number of its TCP listener unless `--dht-port` says
//! otherwise, so a peer's PEX address is also its DHT contact. It announces
//! itself under the key of every pinned root it holds ([`announce`]), and a
//! fetch that finds no holder among its connections looks the piece's key
//! up in parallel with widening ([`DhtNode::lookup`]), dialling at most
//! [`DHT_LOOKUP_DIALS_MAX`] of the addresses found.
//!
//! **Keys.** A name's key is the first 20 bytes of SHA-256(`"p2p-dht-v1:"`
//! ‖ the name's 32 bytes) ([`dht_key`]): the raw first 20 bytes of a
//! SHA-256 name would collide with BitTorrent v2's info-hash space and draw
//! BitTorrent clients to our nodes.
//!
//! **Trust.** The DHT hands back addresses without saying who sent which,
//! so every address is an untrusted candidate: one in a private or loopback
//! range is dialled only when the DHT's own bootstrap set is in such a
//! range (a private swarm), banned peers are not dialled, and one lookup
//! dials at most [`DHT_LOOKUP_DIALS_MAX`] addresses however many a
//! malicious DHT node returns, within the node's dial rate and connection
//! limits, through the usual HELLO.
//!
//! **IPv4 only.** The crate does not implement BEP 32; IPv6 peers keep
//! bootstrap and PEX.

mod announce;
mod lookup;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use wire_format::PieceId;
use wire_format::addr::AddrClass;

pub use announce::{
    AnnounceSchedule, DHT_ANNOUNCE_BURST, DHT_ANNOUNCE_RATE_PER_SEC, DHT_ANNOUNCE_RETRY,
    DHT_ANNOUNCE_TICK, DHT_REANNOUNCE_INTERVAL,
};
pub use lookup::{DHT_LOOKUP_DIALS_MAX, DHT_LOOKUP_REUSE, DHT_LOOKUP_TIMEOUT, DHT_LOOKUPS_MAX};

/// The domain separator hashed before a name to make its DHT key.
pub const DHT_KEY_DOMAIN: &[u8] = b"p2p-dht-v1:";

/// The routers of the public Mainline DHT, used when `--dht` is given
/// without `--dht-bootstrap`.
pub const PUBLIC_ROUTERS: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
    "relay.pkarr.org:6881",
];

/// The DHT key of a piece or file name: the first 20 bytes of
/// SHA-256(`DHT_KEY_DOMAIN` ‖ name).
pub fn dht_key(name: &PieceId) -> Id {
    let digest = Sha256::new()
        .chain_update(DHT_KEY_DOMAIN)
        .chain_update(name.as_bytes())
        .finalize();
    let mut key = [0u8; 20];
    key.copy_from_slice(&digest[..20]);
    Id::from(key)
}

/// How to run the node's DHT node (`--dht`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DhtConfig {
    /// DHT nodes to join through (`host:port`); empty: [`PUBLIC_ROUTERS`].
    /// Given, they replace the public routers, so a private swarm never
    /// reaches the public DHT.
    pub bootstrap: Vec<String>,
    /// UDP port (`None`: the TCP listen port's number).
    pub port: Option<u16>,
    /// IPv4 address to bind (`None`: every interface).
    pub bind: Option<Ipv4Addr>,
}

/// Why the DHT node could not start.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// No `--dht-bootstrap` address resolved to an IPv4 address.
    #[error(
        "no DHT bootstrap address resolves to an IPv4 address ({0}); the DHT speaks IPv4 only: \
         check --dht-bootstrap"
    )]
    NoBootstrap(String),
    /// The UDP socket could not be bound.
    #[error("cannot run the DHT on UDP port {port}: {source} (use --dht-port to pick another)")]
    Bind {
        /// The port asked for.
        port: u16,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Resolves `bootstrap` to IPv4 socket addresses (the crate's only kind);
/// names that do not resolve are skipped.
fn resolve(bootstrap: &[String]) -> Vec<std::net::SocketAddrV4> {
    bootstrap
        .iter()
        .filter_map(|b| b.to_socket_addrs().ok())
        .flatten()
        .filter_map(|a| match a {
            SocketAddr::V4(v4) => Some(v4),
            SocketAddr::V6(_) => None,
        })
        .collect()
}

/// The class of addresses the DHT may hand us: that of the most local of
/// its bootstrap addresses. Loopback bootstrap: a test or one-machine swarm,
/// every class accepted; private: a LAN swarm, private and public; public:
/// public only.
fn trusted_class(bootstrap: &[std::net::SocketAddrV4]) -> AddrClass {
    let classes: Vec<AddrClass> = bootstrap
        .iter()
        .map(|a| AddrClass::of(IpAddr::V4(*a.ip())))
        .collect();
    if classes.contains(&AddrClass::Loopback) {
        AddrClass::Loopback
    } else if classes.contains(&AddrClass::Private) {
        AddrClass::Private
    } else {
        AddrClass::Public
    }
}

/// Whether an address of class `ip` from a DHT whose bootstrap set is of
/// class `trusted` (see [`trusted_class`]) may be dialled.
fn dialable(trusted: AddrClass, ip: IpAddr) -> bool {
    match AddrClass::of(ip) {
        AddrClass::Public => true,
        AddrClass::Private => trusted != AddrClass::Public,
        AddrClass::Loopback => trusted == AddrClass::Loopback,
        _ => false,
    }
}

/// The node's DHT node and the state of its lookups.
pub struct DhtNode {
    dht: AsyncDht,
    port: u16,
    /// What addresses from the DHT may be dialled (see [`trusted_class`]).
    trusted: AddrClass,
    /// Lookups running or recently finished, by key.
    lookups: Mutex<lookup::Lookups>,
    /// Which roots were announced when.
    pub(crate) schedule: Mutex<AnnounceSchedule>,
}

impl std::fmt::Debug for DhtNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhtNode")
            .field("port", &self.port)
            .field("trusted", &self.trusted)
            .finish_non_exhaustive()
    }
}

impl DhtNode {
    /// Starts a DHT node in server mode on UDP `port` (the crate runs it on
    /// a thread of its own).
    pub async fn start(config: &DhtConfig, port: u16) -> Result<Arc<Self>, DhtError> {
        let named: Vec<String> = if config.bootstrap.is_empty() {
            PUBLIC_ROUTERS.iter().map(|s| (*s).to_owned()).collect()
        } else {
            config.bootstrap.clone()
        };
        let bootstrap = resolve(&named);
        // The public routers may not resolve on a machine without a
        // resolver: the node still answers others, and learns nodes from
        // whoever contacts it. Addresses the operator named must resolve.
        if bootstrap.is_empty() && !config.bootstrap.is_empty() {
            return Err(DhtError::NoBootstrap(named.join(", ")));
        }
        Self::start_resolved(&bootstrap, config.bind, port).await
    }

    /// Starts a DHT node that joins through nobody: the root of a private
    /// DHT (a bootstrap server's, unless told to join another).
    pub async fn start_root(bind: Option<Ipv4Addr>, port: u16) -> Result<Arc<Self>, DhtError> {
        Self::start_resolved(&[], bind, port).await
    }

    async fn start_resolved(
        bootstrap: &[std::net::SocketAddrV4],
        bind: Option<Ipv4Addr>,
        port: u16,
    ) -> Result<Arc<Self>, DhtError> {
        let mut builder = Dht::builder();
        builder.server_mode().port(port);
        if bootstrap.is_empty() {
            builder.no_bootstrap();
        } else {
            builder.bootstrap(bootstrap);
        }
        if let Some(bind) = bind {
            builder.bind_address(bind);
        }
        let dht = builder
            .build()
            .map_err(|source| DhtError::Bind { port, source })?;
        let dht = dht.as_async();
        let port = dht.info().await.local_addr().port();
        Ok(Arc::new(Self {
            dht,
            port,
            trusted: trusted_class(bootstrap),
            lookups: Mutex::new(lookup::Lookups::default()),
            schedule: Mutex::new(AnnounceSchedule::new(Instant::now())),
        }))
    }

    /// The UDP port the DHT node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port` of this DHT node for others to join through (on
    /// loopback when it listens on every interface).
    pub fn contact(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The DHT node's estimate of the DHT's size, in nodes.
    pub async fn size_estimate(&self) -> usize {
        self.dht.info().await.dht_size_estimate().0
    }

    /// Whether an address the DHT returned may be dialled.
    pub(crate) fn may_dial(&self, ip: IpAddr) -> bool {
        dialable(self.trusted, ip)
    }

    /// Waits until the DHT node's first bootstrap query ended; true if it
    /// found other nodes.
    pub async fn bootstrapped(&self) -> bool {
        self.dht.bootstrapped().await
    }

    /// Announces this node (its TCP `listen_port`) under `name`'s key.
    pub(crate) async fn announce(&self, name: &PieceId, listen_port: u16) -> bool {
        self.dht
            .announce_peer(dht_key(name), Some(listen_port))
            .await
            .is_ok()
    }

    fn lookups(&self) -> MutexGuard<'_, lookup::Lookups> {
        self.lookups.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn schedule(&self) -> MutexGuard<'_, AnnounceSchedule> {
        self.schedule.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A lookup a fetch waits on: `true` once it ended; the addresses it
/// dialled, to tell `--explain` which holders the DHT found.
#[derive(Debug, Clone)]
pub(crate) struct LookupHandle {
    pub(crate) done: watch::Receiver<bool>,
    pub(crate) found: Arc<Mutex<Vec<wire_format::PeerAddr>>>,
}

impl LookupHandle {
    /// Whether the lookup (and its choosing of dials) has ended.
    pub(crate) fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Every address the lookup chose to dial so far.
    pub(crate) fn found_all(&self) -> Vec<wire_format::PeerAddr> {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the lookup returned `addr`.
    pub(crate) fn found(&self, addr: &wire_format::PeerAddr) -> bool {
        self.found
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(addr)
    }
}

/// How long to wait between polls of a lookup's dials against the dial rate.
const DIAL_RETRY: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_the_domain_separated_hash_not_the_name() {
        let name = PieceId::of(b"a file's manifest");
        let key = dht_key(&name);
        assert_ne!(&key.as_bytes()[..], &name.as_bytes()[..20]);
        let mut h = Sha256::new();
        h.update(b"p2p-dht-v1:");
        h.update(name.as_bytes());
        assert_eq!(&key.as_bytes()[..], &h.finalize()[..20]);
    }

    #[test]
    fn the_key_matches_the_protocol_documents_test_vector() {
        let empty = PieceId::of(b"");
        assert_eq!(
            hex::encode(dht_key(&empty).as_bytes()),
            "ba4e6d28afcc6c05a30f1e97aced00a56e90b1f8"
        );
    }

    #[test]
    fn private_addresses_are_dialled_only_in_a_private_dht() {
        let v4 = |s: &str| s.parse::<std::net::SocketAddrV4>().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let lan: IpAddr = "192.168.1.9".parse().unwrap();
        let public: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(trusted_class(&[v4("1.2.3.4:6881")]), AddrClass::Public);
        assert_eq!(
            trusted_class(&[v4("1.2.3.4:6881"), v4("10.0.0.1:7000")]),
            AddrClass::Private
        );
        assert_eq!(trusted_class(&[v4("127.0.0.1:7000")]), AddrClass::Loopback);
        let allows = dialable;
        assert!(allows(AddrClass::Public, public));
        assert!(!allows(AddrClass::Public, lan));
        assert!(!allows(AddrClass::Public, lo));
        assert!(allows(AddrClass::Private, lan));
        assert!(!allows(AddrClass::Private, lo));
        assert!(allows(AddrClass::Loopback, lo));
        let multicast: IpAddr = "224.0.0.1".parse().unwrap();
        assert!(
            !allows(AddrClass::Loopback, multicast),
            "never a multicast address"
        );
    }
}
