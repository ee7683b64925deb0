//! Addresses as the store keeps them: 16 bytes, IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`),
//! so one column holds both families, sorts by address, and a prefix is a range of keys that
//! an index answers (`source BETWEEN lo AND hi`).

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

/// `ip` as its 16-byte key.
#[must_use]
pub fn key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The address a key holds; `None` if it is not 16 bytes. IPv4-mapped keys come back as IPv4.
#[must_use]
pub fn from_key(bytes: &[u8]) -> Option<IpAddr> {
    let octets: [u8; 16] = bytes.try_into().ok()?;
    let v6 = Ipv6Addr::from(octets);
    Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
}

/// The first and last key inside `net`.
#[must_use]
pub fn range(net: IpNet) -> ([u8; 16], [u8; 16]) {
    (key(net.network()), key(net.broadcast()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_families_round_trip_and_prefixes_are_ranges() {
        for text in ["10.1.2.3", "0.0.0.0", "255.255.255.255", "2001:db8::1", "::1", "ffff::"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(from_key(&key(ip)), Some(ip), "{text}");
        }
        assert_eq!(from_key(&[1, 2, 3]), None);
        let (lo, hi) = range("10.1.0.0/16".parse().unwrap());
        let inside = key("10.1.255.7".parse().unwrap());
        let outside = key("10.2.0.0".parse().unwrap());
        assert!(lo <= inside && inside <= hi);
        assert!(outside > hi);
        // An IPv4 prefix never covers IPv6 addresses, nor the reverse.
        let v6 = key("2001:db8::1".parse().unwrap());
        assert!(!(lo <= v6 && v6 <= hi));
        let (lo6, hi6) = range("2001:db8::/32".parse().unwrap());
        assert!(lo6 <= v6 && v6 <= hi6 && !(lo6 <= inside && inside <= hi6));
    }
}
