//! Networks as client addresses are compared: an IPv4-mapped IPv6
//! network (`::ffff:a.b.c.d/96+n`) is the IPv4 network it maps, since
//! client addresses arrive that way from dual-stack sockets and are
//! compared as IPv4 (see `client_ip::canonical`).

use ipnet::IpNet;

/// `net` with an IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`) written
/// as the IPv4 network it maps (`a.b.c.d/n`), as client addresses are.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(addr) => ipnet::Ipv4Net::new(addr, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
}

/// Whether `nets` together cover every IPv4 or every IPv6 address (one
/// `/0`, or pieces such as `0.0.0.0/1` + `128.0.0.0/1`), IPv4-mapped IPv6
/// networks counting as the IPv4 networks they map.
pub fn trusts_everyone(nets: &[IpNet]) -> bool {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for net in nets.iter().map(|n| canonical_net(*n)) {
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    ipnet::Ipv4Net::aggregate(&v4).iter().any(|n| n.prefix_len() == 0)
        || ipnet::Ipv6Net::aggregate(&v6).iter().any(|n| n.prefix_len() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("net")).collect()
    }

    #[test]
    fn pieces_that_together_cover_a_family_trust_everyone() {
        assert!(trusts_everyone(&nets(&["0.0.0.0/0"])));
        assert!(trusts_everyone(&nets(&["0.0.0.0/1", "128.0.0.0/1"])));
        assert!(trusts_everyone(&nets(&["::/1", "8000::/1"])));
        assert!(trusts_everyone(&nets(&["::ffff:0.0.0.0/97", "128.0.0.0/1"])));
        assert!(!trusts_everyone(&nets(&["0.0.0.0/1", "10.0.0.0/8", "fd00::/8"])));
    }

    #[test]
    fn mapped_networks_become_ipv4() {
        assert_eq!(
            canonical_net("::ffff:10.0.0.0/104".parse().expect("net")),
            "10.0.0.0/8".parse().expect("net")
        );
        let v6: IpNet = "2001:db8::/32".parse().expect("net");
        assert_eq!(canonical_net(v6), v6);
    }
}
