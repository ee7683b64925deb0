//! Prefixes auto-block never touches: configured CIDRs plus, by default, the host's own
//! addresses, its default gateways and loopback.

use std::net::IpAddr;

use ipnet::IpNet;

/// A set of prefixes, each with why it is there (shown in refusals and `vigil status`).
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    entries: Vec<(IpNet, String)>,
}

impl Allowlist {
    /// `configured` CIDRs, plus the host's own addresses, default gateways and loopback when
    /// `host` is set.
    ///
    /// # Panics
    /// Never: the loopback prefixes are literals.
    #[must_use]
    pub fn new(configured: &[IpNet], host: bool) -> Self {
        let mut list = Self::default();
        for net in configured {
            list.push(*net, "configured");
        }
        if host {
            for net in ["127.0.0.0/8", "::1/128"] {
                list.push(net.parse().expect("literal prefix"), "loopback");
            }
            for addr in host_addresses() {
                list.push(IpNet::from(addr), "host address");
            }
            for gw in crate::net::route::default_gateways() {
                list.push(IpNet::from(gw), "default gateway");
            }
        }
        list
    }

    /// Adds `net`, shown with `why` (a fleet's allowlist and hosts in the collector's policy).
    pub fn push(&mut self, net: IpNet, why: &str) {
        // An IPv4-mapped entry protects the IPv4 prefix it names, which is what the kernel
        // matches IPv4 packets against; one straddling the mapped range stays as written.
        let net = crate::block::rules::normalize(net).unwrap_or(net.trunc());
        if !self.entries.iter().any(|(n, _)| *n == net) {
            self.entries.push((net, why.to_owned()));
        }
    }

    /// Why `addr` is allowlisted, if it is.
    #[must_use]
    pub fn reason(&self, addr: IpAddr) -> Option<(IpNet, &str)> {
        let addr = addr.to_canonical();
        self.entries.iter().find(|(n, _)| n.contains(&addr)).map(|(n, why)| (*n, why.as_str()))
    }

    /// The first entry that `prefix` overlaps (covers it, or lies inside it), and why it is
    /// there. Compare prefixes as the kernel stores them ([`crate::block::rules::normalize`]).
    #[must_use]
    pub fn overlap(&self, prefix: IpNet) -> Option<(IpNet, &str)> {
        self.entries
            .iter()
            .find(|(n, _)| prefix.contains(&n.network()) || n.contains(&prefix.network()))
            .map(|(n, why)| (*n, why.as_str()))
    }

    #[must_use]
    pub fn entries(&self) -> &[(IpNet, String)] {
        &self.entries
    }
}

/// Every address configured on the host's interfaces (in this network namespace).
#[must_use]
pub fn host_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_entries_cover_loopback_and_own_addresses() {
        let list = Allowlist::new(&["192.0.2.0/24".parse().unwrap()], true);
        assert_eq!(list.reason("192.0.2.77".parse().unwrap()).map(|(_, w)| w), Some("configured"));
        assert_eq!(list.reason("127.0.0.53".parse().unwrap()).map(|(_, w)| w), Some("loopback"));
        for addr in host_addresses().into_iter().filter(|a| !a.is_loopback()) {
            assert!(list.reason(addr).is_some(), "{addr} is the host's own");
        }
        assert!(list.reason("198.51.100.1".parse().unwrap()).is_none());
        let bare = Allowlist::new(&[], false);
        assert!(bare.reason("127.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn overlap_both_ways_and_mapped_entries() {
        let net = |t: &str| t.parse::<IpNet>().unwrap();
        let list = Allowlist::new(&[net("10.1.0.0/16"), net("::ffff:192.0.2.0/120"), net("2001:db8::/32")], false);
        assert_eq!(list.overlap(net("10.1.2.3/32")).map(|(n, _)| n), Some(net("10.1.0.0/16")), "inside");
        assert_eq!(list.overlap(net("10.0.0.0/8")).map(|(n, _)| n), Some(net("10.1.0.0/16")), "covers");
        assert!(list.overlap(net("10.2.0.0/16")).is_none());
        assert_eq!(list.overlap(net("192.0.2.9/32")), Some((net("192.0.2.0/24"), "configured")));
        assert!(list.overlap(net("2001:db8:1::/48")).is_some());
        assert!(list.overlap(net("0.0.0.0/0")).is_some());
        assert_eq!(list.reason("::ffff:192.0.2.5".parse().unwrap()).map(|(n, _)| n), Some(net("192.0.2.0/24")));
    }
}
