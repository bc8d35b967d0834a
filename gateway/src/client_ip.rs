//! The client address the gateway keys and forwards on.
//!
//! Contract: the TCP peer (or the source of a PROXY protocol header, which
//! is only accepted from trusted peers) is the client, unless that address
//! is a trusted proxy; then `X-Forwarded-For` is walked from the right and
//! the first address that is not trusted is the client (nginx
//! `real_ip_recursive on`). Nothing a client sends can choose its key.
//! Keys group addresses by prefix: IPv6 by /64 by default (one host owns a
//! whole /64), IPv4 by /32.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Trusted proxy networks.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// The given networks (IPv4-mapped IPv6 ones as the IPv4 networks
    /// they map, since client addresses are compared that way).
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets.into_iter().map(crate::nets::canonical_net).collect())
    }

    /// Whether `ip` is inside a trusted network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client behind `addr` given the request's `X-Forwarded-For`.
    pub fn resolve(&self, addr: IpAddr, headers: &HeaderMap) -> IpAddr {
        if self.0.is_empty() || !self.contains(addr) {
            return addr;
        }
        let mut client = addr;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match parse_hop(hop) {
                Some(ip) => {
                    client = ip;
                    if !self.contains(ip) {
                        return ip;
                    }
                }
                // Garbage in the chain: stop at the last trusted hop.
                None => return client,
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(canonical(sock.ip()));
    }
    None
}

/// IPv4-mapped IPv6 addresses as IPv4 (dual-stack sockets report them).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A client key: an address masked to its prefix (IPv4 in the IPv4-mapped
/// IPv6 space), as two words to keep entries at 8-byte alignment. The
/// rate limiter, the per-client in-flight share and the connection caps
/// all count by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key(pub u64, pub u64);

impl Key {
    /// The masked address the key stands for (IPv4 as IPv4): how a key is
    /// named outside the process (the shared rate-limit store).
    pub fn address(&self) -> IpAddr {
        let bits = (u128::from(self.0) << 64) | u128::from(self.1);
        IpAddr::V6(std::net::Ipv6Addr::from(bits)).to_canonical()
    }
}

/// Prefix lengths that group addresses into keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPrefixes {
    /// IPv4 prefix length (32 = per address).
    pub v4: u8,
    /// IPv6 prefix length (64 = per /64).
    pub v6: u8,
}

impl Default for KeyPrefixes {
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl KeyPrefixes {
    /// The client key of `ip`.
    pub fn key(&self, ip: IpAddr) -> Key {
        let bits: u128 = match canonical(ip) {
            IpAddr::V4(v4) => {
                let masked = mask(u128::from(u32::from(v4)) << 96, self.v4) >> 96;
                0xffff_0000_0000 | masked
            }
            IpAddr::V6(v6) => mask(u128::from(v6), self.v6),
        };
        Key((bits >> 64) as u64, bits as u64)
    }
}

fn mask(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p if p >= 128 => bits,
        p => bits & (u128::MAX << (128 - u32::from(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).expect("header"));
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_sends() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net")]);
        assert_eq!(trusted.resolve(ip("203.0.113.9"), &xff("1.2.3.4")), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().resolve(ip("10.0.0.1"), &xff("1.2.3.4")),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_trusted_peer_is_walked_from_the_right() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net")]);
        // The client forged 6.6.6.6 on the left; the first untrusted from the right wins.
        assert_eq!(
            trusted.resolve(ip("10.0.0.1"), &xff("6.6.6.6, 198.51.100.7, 10.0.0.2")),
            ip("198.51.100.7")
        );
        assert_eq!(
            trusted.resolve(ip("10.0.0.1"), &xff("10.0.0.3, 10.0.0.2")),
            ip("10.0.0.3")
        );
        assert_eq!(trusted.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        assert_eq!(
            trusted.resolve(ip("10.0.0.1"), &xff("garbage, 10.0.0.2")),
            ip("10.0.0.2")
        );
        assert_eq!(
            trusted.resolve(ip("10.0.0.1"), &xff("[2001:db8::1]:443")),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn an_ipv4_mapped_trusted_network_trusts_the_ipv4_clients_it_maps() {
        let trusted = TrustedProxies::new(vec!["::ffff:10.0.0.0/104".parse().expect("net")]);
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("::ffff:10.1.2.3")));
        assert!(!trusted.contains(ip("11.0.0.1")));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let p = KeyPrefixes::default();
        assert_eq!(p.key(ip("2001:db8:1:2::1")), p.key(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(p.key(ip("2001:db8:1:2::1")), p.key(ip("2001:db8:1:3::1")));
        let per_address = KeyPrefixes { v4: 32, v6: 128 };
        assert_ne!(
            per_address.key(ip("2001:db8:1:2::1")),
            per_address.key(ip("2001:db8:1:2::2"))
        );
    }

    #[test]
    fn ipv4_keys_follow_their_prefix_and_mapped_addresses_match() {
        let p = KeyPrefixes::default();
        assert_ne!(p.key(ip("192.0.2.1")), p.key(ip("192.0.2.2")));
        assert_eq!(p.key(ip("192.0.2.1")), p.key(ip("::ffff:192.0.2.1")));
        let p24 = KeyPrefixes { v4: 24, v6: 64 };
        assert_eq!(p24.key(ip("192.0.2.1")), p24.key(ip("192.0.2.200")));
        assert_ne!(
            p24.key(ip("192.0.2.1")),
            p24.key(ip("::c000:201")),
            "v4 and v6 never collide"
        );
    }

    #[test]
    fn a_key_is_named_by_the_masked_address_it_stands_for() {
        let prefixes = KeyPrefixes { v4: 24, v6: 64 };
        let v4 = prefixes.key("192.0.2.77".parse().expect("ip"));
        assert_eq!(v4.address().to_string(), "192.0.2.0");
        let mapped = prefixes.key("::ffff:192.0.2.77".parse().expect("ip"));
        assert_eq!(mapped, v4);
        let v6 = prefixes.key("2001:db8:1:2:3:4:5:6".parse().expect("ip"));
        assert_eq!(v6.address().to_string(), "2001:db8:1:2::");
    }
}
