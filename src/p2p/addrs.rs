//! What a remote peer may tell us about addresses, and how much of it we keep.
//!
//! - [`dialable`]: whether an address a peer announced is one our transports can dial and
//!   our policy allows (no DNS, no private ranges unless allowed, IPv4-mapped IPv6 judged by
//!   its IPv4).
//! - [`metric_stack`]: the only address shapes allowed to become metric label values.
//! - [`AddressBook`]: the addresses we put into Kademlia's routing table, capped per peer
//!   (oldest replaced) and over all peers.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use lru::LruCache;

/// Most addresses of one peer kept in the routing table.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Most peers whose routing-table addresses are tracked (well above Kademlia's 256 × 20).
pub const MAX_TRACKED_PEERS: usize = 8192;

/// Whether `addr` is one we would dial: `/ip4|ip6/<ip>/tcp/<port>` or
/// `/ip4|ip6/<ip>/udp/<port>/quic-v1`, optionally ending in `/p2p/<id>`, with an address
/// our policy accepts. Everything else (DNS names, other transports, relays) is refused.
pub fn dialable(addr: &Multiaddr, allow_private: bool) -> bool {
    let mut parts = addr.iter();
    let ip = match parts.next() {
        Some(Protocol::Ip4(ip)) => IpAddr::V4(ip),
        Some(Protocol::Ip6(ip)) => IpAddr::V6(ip),
        _ => return false,
    };
    let rest: Vec<Protocol> = parts.collect();
    let transport_ok = match rest.as_slice() {
        [Protocol::Tcp(port)] | [Protocol::Tcp(port), Protocol::P2p(_)] => *port != 0,
        [Protocol::Udp(port), Protocol::QuicV1]
        | [Protocol::Udp(port), Protocol::QuicV1, Protocol::P2p(_)] => *port != 0,
        _ => false,
    };
    transport_ok && ip_allowed(ip, allow_private)
}

/// The IP address `addr` starts with (an IPv4-mapped IPv6 address as its IPv4 address).
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next()? {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(ip), IpAddr::V4)),
        _ => None,
    }
}

/// Whether an IP is acceptable as a peer's address.
fn ip_allowed(ip: IpAddr, allow_private: bool) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_allowed(v4, allow_private),
        IpAddr::V6(v6) => {
            // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses reach
            // the embedded IPv4 address: judge that one.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_allowed(v4, allow_private);
            }
            if v6.is_loopback() {
                return allow_private;
            }
            if let Some(v4) = v6.to_ipv4()
                && !v6.is_unspecified()
            {
                return v4_allowed(v4, allow_private);
            }
            v6_allowed(v6, allow_private)
        }
    }
}

fn v4_allowed(ip: Ipv4Addr, allow_private: bool) -> bool {
    let [a, b, ..] = ip.octets();
    let never = ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || a >= 240; // reserved
    let private = ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)); // shared address space (CGNAT)
    !never && (allow_private || !private)
}

fn v6_allowed(ip: Ipv6Addr, allow_private: bool) -> bool {
    let seg0 = ip.segments()[0];
    let never =
        ip.is_unspecified() || ip.is_multicast() || seg0 == 0x2001 && ip.segments()[1] == 0x0db8;
    let private = ip.is_loopback()
        || (seg0 & 0xfe00) == 0xfc00 // unique local
        || (seg0 & 0xffc0) == 0xfe80; // link local
    !never && (allow_private || !private)
}

/// The protocol stack of `addr` if it is one that may appear as a metric label value
/// (`/ip4/tcp`, `/ip6/tcp`, `/ip4/udp/quic-v1`, `/ip6/udp/quic-v1`, each optionally with
/// `/p2p`); `None` for anything else, which is then not recorded.
pub fn metric_stack(addr: &Multiaddr) -> Option<&'static str> {
    let tags: Vec<&str> = addr.protocol_stack().collect();
    let known: &[&'static str] = &[
        "/ip4/tcp",
        "/ip6/tcp",
        "/ip4/udp/quic-v1",
        "/ip6/udp/quic-v1",
        "/ip4/tcp/p2p",
        "/ip6/tcp/p2p",
        "/ip4/udp/quic-v1/p2p",
        "/ip6/udp/quic-v1/p2p",
    ];
    let joined: String = tags.iter().flat_map(|t| ["/", t]).collect();
    known.iter().copied().find(|k| *k == joined)
}

/// What [`AddressBook::add`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AddOutcome {
    /// The address is new for the peer and must be added to the routing table.
    pub added: bool,
    /// Addresses to remove from the routing table (the peer's oldest, or every address of
    /// a peer dropped from the book).
    pub evicted: Vec<(PeerId, Multiaddr)>,
}

/// The addresses we added to the routing table, per peer: at most [`MAX_ADDRS_PER_PEER`]
/// each (oldest replaced), for at most [`MAX_TRACKED_PEERS`] peers (least recently updated
/// dropped). A plain data structure: the event loop applies its outcomes to Kademlia.
#[derive(Debug)]
pub struct AddressBook {
    peers: LruCache<PeerId, VecDeque<Multiaddr>>,
    per_peer: usize,
}

impl Default for AddressBook {
    fn default() -> Self {
        Self::new(MAX_TRACKED_PEERS, MAX_ADDRS_PER_PEER)
    }
}

impl AddressBook {
    /// A book for `peers` peers of `per_peer` addresses each.
    pub fn new(peers: usize, per_peer: usize) -> Self {
        Self {
            peers: LruCache::new(NonZeroUsize::new(peers.max(1)).expect("at least 1")),
            per_peer: per_peer.max(1),
        }
    }

    /// Records `addr` for `peer`. A known address is refreshed (it becomes the newest).
    pub fn add(&mut self, peer: PeerId, addr: Multiaddr) -> AddOutcome {
        let mut outcome = AddOutcome::default();
        if let Some(addrs) = self.peers.get_mut(&peer) {
            if let Some(pos) = addrs.iter().position(|a| *a == addr) {
                let known = addrs.remove(pos).expect("position is valid");
                addrs.push_back(known);
                return outcome;
            }
            addrs.push_back(addr);
            while addrs.len() > self.per_peer {
                let oldest = addrs.pop_front().expect("longer than the cap");
                outcome.evicted.push((peer, oldest));
            }
        } else if let Some((gone, addrs)) = self.peers.push(peer, VecDeque::from([addr]))
            && gone != peer
        {
            outcome.evicted.extend(addrs.into_iter().map(|a| (gone, a)));
        }
        outcome.added = true;
        outcome
    }

    /// Forgets `peer` (it left the routing table).
    pub fn forget(&mut self, peer: &PeerId) {
        self.peers.pop(peer);
    }

    /// The addresses kept for `peer`, oldest first.
    pub fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .peek(peer)
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of peers tracked.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_our_transports_with_allowed_addresses_are_dialable() {
        let id = PeerId::random();
        for ok in [
            "/ip4/8.8.8.8/tcp/4001".to_owned(),
            "/ip4/8.8.8.8/udp/4001/quic-v1".to_owned(),
            "/ip6/2606:4700::1111/tcp/4001".to_owned(),
            format!("/ip4/8.8.8.8/tcp/4001/p2p/{id}"),
            format!("/ip6/2606:4700::1111/udp/1/quic-v1/p2p/{id}"),
        ] {
            assert!(dialable(&ma(&ok), false), "{ok}");
        }
        for bad in [
            "/dns4/example.com/tcp/4001".to_owned(),
            "/dns/localhost/tcp/4001".to_owned(),
            "/dnsaddr/example.com".to_owned(),
            "/ip4/8.8.8.8/tcp/4001/ws".to_owned(),
            "/ip4/8.8.8.8/udp/4001/quic".to_owned(),
            "/ip4/8.8.8.8/udp/4001".to_owned(),
            "/ip4/8.8.8.8/tcp/0".to_owned(),
            "/ip4/8.8.8.8".to_owned(),
            format!("/ip4/8.8.8.8/tcp/4001/p2p/{id}/p2p-circuit"),
            "/ip4/0.0.0.0/tcp/1".to_owned(),
            "/ip4/255.255.255.255/tcp/1".to_owned(),
            "/ip4/224.0.0.1/tcp/1".to_owned(),
            "/ip4/240.0.0.1/tcp/1".to_owned(),
            "/ip4/192.0.2.1/tcp/1".to_owned(),
            "/ip6/::/tcp/1".to_owned(),
            "/ip6/ff02::1/tcp/1".to_owned(),
            "/ip6/2001:db8::1/tcp/1".to_owned(),
        ] {
            assert!(!dialable(&ma(&bad), false), "{bad}");
            assert!(
                !dialable(&ma(&bad), true),
                "{bad} even with private allowed"
            );
        }
    }

    #[test]
    fn private_ranges_need_permission_including_mapped_ipv6() {
        for private in [
            "/ip4/127.0.0.1/tcp/1",
            "/ip4/10.1.2.3/tcp/1",
            "/ip4/192.168.1.1/udp/1/quic-v1",
            "/ip4/169.254.1.1/tcp/1",
            "/ip4/100.64.0.1/tcp/1",
            "/ip6/::1/tcp/1",
            "/ip6/fd00::1/tcp/1",
            "/ip6/fe80::1/tcp/1",
            "/ip6/::ffff:127.0.0.1/tcp/1",
            "/ip6/::ffff:10.0.0.1/tcp/1",
            "/ip6/::ffff:192.168.0.1/udp/1/quic-v1",
            "/ip6/::127.0.0.1/tcp/1",
        ] {
            assert!(!dialable(&ma(private), false), "{private}");
            assert!(
                dialable(&ma(private), true),
                "{private} allowed on a devnet"
            );
        }
        assert!(dialable(&ma("/ip6/::ffff:8.8.8.8/tcp/1"), false));
        assert!(!dialable(&ma("/ip6/::ffff:0.0.0.0/tcp/1"), true));
    }

    #[test]
    fn only_known_stacks_become_metric_labels() {
        let id = PeerId::random();
        assert_eq!(metric_stack(&ma("/ip4/1.2.3.4/tcp/1")), Some("/ip4/tcp"));
        assert_eq!(
            metric_stack(&ma(&format!("/ip6/::1/udp/1/quic-v1/p2p/{id}"))),
            Some("/ip6/udp/quic-v1/p2p")
        );
        for other in [
            "/ip4/1.2.3.4/tcp/1/ws",
            "/dns4/x/tcp/1",
            "/ip4/1.2.3.4/udp/1/quic",
            "/ip4/1.2.3.4/tcp/1/tls/sni/x/ws",
            "/unix/tmp",
        ] {
            assert_eq!(metric_stack(&ma(other)), None, "{other}");
        }
    }

    #[test]
    fn a_peer_keeps_at_most_the_cap_and_the_oldest_goes_first() {
        let mut book = AddressBook::new(16, 3);
        let p = PeerId::random();
        let addrs: Vec<Multiaddr> = (1..=5)
            .map(|i| ma(&format!("/ip4/1.1.1.{i}/tcp/1")))
            .collect();
        for a in &addrs[..3] {
            assert_eq!(
                book.add(p, a.clone()),
                AddOutcome {
                    added: true,
                    evicted: vec![]
                }
            );
        }
        // Refreshing a known address adds nothing and moves it to the newest place.
        assert_eq!(book.add(p, addrs[0].clone()), AddOutcome::default());
        let out = book.add(p, addrs[3].clone());
        assert!(out.added);
        assert_eq!(out.evicted, vec![(p, addrs[1].clone())]);
        let out = book.add(p, addrs[4].clone());
        assert_eq!(out.evicted, vec![(p, addrs[2].clone())]);
        assert_eq!(
            book.addresses(&p),
            vec![addrs[0].clone(), addrs[3].clone(), addrs[4].clone()]
        );
    }

    #[test]
    fn thousands_of_pushes_stay_within_the_cap() {
        let mut book = AddressBook::default();
        let p = PeerId::random();
        let mut in_table: Vec<Multiaddr> = Vec::new();
        for i in 0..2_400u32 {
            let a = ma(&format!(
                "/ip4/1.{}.{}.{}/tcp/1",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            ));
            let out = book.add(p, a.clone());
            if out.added {
                in_table.push(a);
            }
            for (_, gone) in out.evicted {
                in_table.retain(|x| *x != gone);
            }
            assert!(in_table.len() <= MAX_ADDRS_PER_PEER);
        }
        assert_eq!(in_table, book.addresses(&p));
    }

    #[test]
    fn the_book_is_bounded_in_peers_and_reports_what_it_drops() {
        let mut book = AddressBook::new(2, 4);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        book.add(a, ma("/ip4/1.1.1.1/tcp/1"));
        book.add(b, ma("/ip4/1.1.1.2/tcp/1"));
        let out = book.add(c, ma("/ip4/1.1.1.3/tcp/1"));
        assert_eq!(out.evicted, vec![(a, ma("/ip4/1.1.1.1/tcp/1"))]);
        assert_eq!(book.len(), 2);
        book.forget(&b);
        assert!(book.addresses(&b).is_empty());
    }
}
