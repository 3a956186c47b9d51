//! Peer addresses: canonical form, the 18-byte wire form, and the address
//! classification every filter of the project shares.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::limits::PEER_INFO_BYTES;

/// What kind of address an IP is, for filters, limits and bans.
///
/// Computed on the canonical form, so `::ffff:127.0.0.1` is [`Loopback`] and
/// `::ffff:10.1.2.3` is [`Private`].
///
/// [`Loopback`]: AddrClass::Loopback
/// [`Private`]: AddrClass::Private
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16, 100.64/10 (carrier-grade NAT), fc00::/7.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 224/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Not routable on the internet for other reasons: 0/8, 192.0.0/24,
    /// 198.18/15 (benchmarking), 240/4, IPv4-compatible and other IETF-reserved
    /// IPv6 (`::/96`, 100::/64 discard, 2001::/23, fec0::/10 site-local).
    Reserved,
    /// Everything else.
    Public,
}

impl AddrClass {
    /// The class of `ip`, after canonicalising it.
    pub fn of(ip: IpAddr) -> Self {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => classify_v4(v4),
            IpAddr::V6(v6) => classify_v6(v6),
        }
    }

    /// Addresses no peer can be reached at, whoever names them: unspecified,
    /// multicast, broadcast, link-local, documentation and reserved.
    pub const fn is_never_dialable(self) -> bool {
        matches!(
            self,
            Self::Unspecified
                | Self::Multicast
                | Self::Broadcast
                | Self::LinkLocal
                | Self::Documentation
                | Self::Reserved
        )
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddrClass {
    let [a, b, c, _] = ip.octets();
    match (a, b, c) {
        _ if ip.is_unspecified() => AddrClass::Unspecified,
        _ if ip.is_broadcast() => AddrClass::Broadcast,
        (127, _, _) => AddrClass::Loopback,
        (10, _, _) | (192, 168, _) => AddrClass::Private,
        (172, 16..=31, _) | (100, 64..=127, _) => AddrClass::Private,
        (169, 254, _) => AddrClass::LinkLocal,
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => AddrClass::Documentation,
        (224..=239, _, _) => AddrClass::Multicast,
        (0, _, _) | (192, 0, 0) | (198, 18..=19, _) | (240..=255, _, _) => AddrClass::Reserved,
        _ => AddrClass::Public,
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddrClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_loopback() {
        AddrClass::Loopback
    } else if s[0] & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddrClass::Private
    } else if (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] == 0x3fff && s[1] & 0xf000 == 0) {
        AddrClass::Documentation
    } else if s[..6] == [0; 6]
        || (s[..4] == [0x0100, 0, 0, 0])
        || (s[0] == 0x2001 && s[1] < 0x0200)
        || s[0] & 0xffc0 == 0xfec0
    {
        // ::/96 holds IPv4-compatible addresses (deprecated), 100::/64 is the
        // discard prefix, 2001::/23 IETF protocol assignments, fec0::/10 the
        // deprecated site-local range.
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// `ip` in canonical form: an IPv4-mapped IPv6 address becomes IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The address that stands for one host in per-host connection limits: a
/// public IPv6 address's /64 (its first address, the low 64 bits zero),
/// since one host usually holds a whole /64 and can pick any address in it;
/// any other address itself, in canonical form. Private, link-local and
/// loopback IPv6 keep their full address: a LAN's hosts share a /64.
pub fn host_key(ip: IpAddr) -> IpAddr {
    let ip = canonical_ip(ip);
    match ip {
        IpAddr::V6(v6) if AddrClass::of(ip) == AddrClass::Public => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
        other => other,
    }
}

/// A peer's address in canonical form.
///
/// Construction canonicalises (`::ffff:a.b.c.d` becomes `a.b.c.d`), so two
/// `PeerAddr`s for one peer compare equal and every filter, limit, ban and
/// dedupe sees one form. On the wire it is 18 bytes: the IPv6 address in
/// network order (IPv4 as `::ffff:a.b.c.d`), then the port little-endian.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(SocketAddr);

impl PeerAddr {
    /// The canonical form of `ip:port`.
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self(SocketAddr::new(canonical_ip(ip), port))
    }

    /// Decodes one `peer_info`.
    pub fn from_wire(bytes: &[u8; PEER_INFO_BYTES]) -> Self {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&bytes[..16]);
        let port = u16::from_le_bytes([bytes[16], bytes[17]]);
        Self::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
    }

    /// Encodes one `peer_info`.
    pub fn to_wire(&self) -> [u8; PEER_INFO_BYTES] {
        let v6 = match self.0.ip() {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        let mut out = [0u8; PEER_INFO_BYTES];
        out[..16].copy_from_slice(&v6.octets());
        out[16..].copy_from_slice(&self.0.port().to_le_bytes());
        out
    }

    /// The IP (canonical).
    pub fn ip(&self) -> IpAddr {
        self.0.ip()
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// The socket address to connect to.
    pub const fn socket_addr(&self) -> SocketAddr {
        self.0
    }

    /// The class of the IP.
    pub fn class(&self) -> AddrClass {
        AddrClass::of(self.0.ip())
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::new(addr.ip(), addr.port())
    }
}

impl From<PeerAddr> for SocketAddr {
    fn from(addr: PeerAddr) -> Self {
        addr.0
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<SocketAddr>().map(Self::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_ipv6_host_is_its_64_and_everything_else_itself() {
        let key = |s: &str| host_key(s.parse().unwrap());
        assert_eq!(key("2606:4700:10::6814:1"), key("2606:4700:10::ffff:1:2"));
        assert_eq!(key("2606:4700:10::6814:1").to_string(), "2606:4700:10::");
        assert_ne!(key("2606:4700:10::1"), key("2606:4700:11::1"));
        for exact in ["fd00::1", "fe80::1", "::1", "8.8.8.8", "192.168.1.2"] {
            assert_eq!(key(exact).to_string(), exact);
        }
        assert_eq!(key("::ffff:8.8.8.8").to_string(), "8.8.8.8");
    }

    fn class(s: &str) -> AddrClass {
        AddrClass::of(s.parse().unwrap())
    }

    #[test]
    fn mapped_addresses_are_canonicalised_before_classification() {
        assert_eq!(class("::ffff:127.0.0.1"), AddrClass::Loopback);
        assert_eq!(class("::ffff:10.1.2.3"), AddrClass::Private);
        assert_eq!(class("::ffff:8.8.8.8"), AddrClass::Public);
        let a = PeerAddr::new("::ffff:10.1.2.3".parse().unwrap(), 7001);
        assert_eq!(a, PeerAddr::new("10.1.2.3".parse().unwrap(), 7001));
        assert_eq!(a.to_string(), "10.1.2.3:7001");
        assert!(a.ip().is_ipv4());
    }

    #[test]
    fn classifies_every_range() {
        let cases = [
            ("0.0.0.0", AddrClass::Unspecified),
            ("::", AddrClass::Unspecified),
            ("127.0.0.1", AddrClass::Loopback),
            ("127.255.255.254", AddrClass::Loopback),
            ("::1", AddrClass::Loopback),
            ("10.0.0.1", AddrClass::Private),
            ("172.16.0.1", AddrClass::Private),
            ("172.31.255.255", AddrClass::Private),
            ("172.32.0.1", AddrClass::Public),
            ("192.168.1.1", AddrClass::Private),
            ("100.64.0.1", AddrClass::Private),
            ("100.128.0.1", AddrClass::Public),
            ("fd00::1", AddrClass::Private),
            ("fc00::1", AddrClass::Private),
            ("169.254.1.1", AddrClass::LinkLocal),
            ("fe80::1", AddrClass::LinkLocal),
            ("febf::1", AddrClass::LinkLocal),
            ("192.0.2.1", AddrClass::Documentation),
            ("198.51.100.7", AddrClass::Documentation),
            ("203.0.113.9", AddrClass::Documentation),
            ("2001:db8::1", AddrClass::Documentation),
            ("3fff::1", AddrClass::Documentation),
            ("3fff:fff::1", AddrClass::Documentation),
            ("224.0.0.1", AddrClass::Multicast),
            ("239.255.255.255", AddrClass::Multicast),
            ("ff02::1", AddrClass::Multicast),
            ("255.255.255.255", AddrClass::Broadcast),
            ("0.1.2.3", AddrClass::Reserved),
            ("240.0.0.1", AddrClass::Reserved),
            ("198.18.0.1", AddrClass::Reserved),
            ("192.0.0.8", AddrClass::Reserved),
            ("::1.2.3.4", AddrClass::Reserved),
            ("100::1", AddrClass::Reserved),
            ("2001::1", AddrClass::Reserved),
            ("fec0::1", AddrClass::Reserved),
            ("8.8.8.8", AddrClass::Public),
            ("2606:4700::1111", AddrClass::Public),
            ("2001:4860::8888", AddrClass::Public),
            ("3fff:1000::1", AddrClass::Public),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), expected, "{ip}");
        }
    }

    #[test]
    fn wire_form_is_ipv6_network_order_then_port_le() {
        let a: PeerAddr = "[::1]:56827".parse().unwrap();
        let wire = a.to_wire();
        assert_eq!(hex::encode(wire), "00000000000000000000000000000001fbdd");
        assert_eq!(PeerAddr::from_wire(&wire), a);
        let v4: PeerAddr = "127.0.0.1:8100".parse().unwrap();
        assert_eq!(
            hex::encode(v4.to_wire()),
            "00000000000000000000ffff7f000001a41f"
        );
        assert_eq!(PeerAddr::from_wire(&v4.to_wire()), v4);
    }

    #[test]
    fn never_dialable_classes() {
        assert!(AddrClass::Documentation.is_never_dialable());
        assert!(AddrClass::Reserved.is_never_dialable());
        assert!(!AddrClass::Loopback.is_never_dialable());
        assert!(!AddrClass::Private.is_never_dialable());
        assert!(!AddrClass::Public.is_never_dialable());
    }
}
