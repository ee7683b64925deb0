//! The interface of the default route, used when `--iface` is not given.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The interface carrying the IPv4 default route (lowest metric), else the IPv6 one.
/// `None` if the host has no default route.
#[must_use]
pub fn default_route_interface() -> Option<String> {
    let v4 = fs::read_to_string("/proc/net/route").ok().and_then(|t| parse_ipv4_routes(&t));
    v4.or_else(|| fs::read_to_string("/proc/net/ipv6_route").ok().and_then(|t| parse_ipv6_routes(&t)))
}

/// Parses `/proc/net/route`: `Iface Destination Gateway Flags RefCnt Use Metric Mask ...`,
/// hex fields; the default route has destination and mask 0.
#[must_use]
pub fn parse_ipv4_routes(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (iface, dest, flags, metric, mask) = (f.first()?, f.get(1)?, f.get(3)?, f.get(6)?, f.get(7)?);
            let up = u32::from_str_radix(flags, 16).ok()? & 1 != 0;
            (up && *dest == "00000000" && *mask == "00000000")
                .then(|| (metric.parse::<u32>().unwrap_or(u32::MAX), (*iface).to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// Parses `/proc/net/ipv6_route`: `dest destlen src srclen nexthop metric refcnt use flags iface`;
/// the default route is `::/0` with a gateway, skipping loopback.
#[must_use]
pub fn parse_ipv6_routes(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, len, metric, iface) = (f.first()?, f.get(1)?, f.get(5)?, f.get(9)?);
            let default = dest.chars().all(|c| c == '0') && *len == "00" && *iface != "lo";
            default.then(|| (u32::from_str_radix(metric, 16).unwrap_or(u32::MAX), (*iface).to_owned()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The gateways of every default route (IPv4 and IPv6), for the auto-block allowlist.
#[must_use]
pub fn default_gateways() -> Vec<IpAddr> {
    let mut gws = fs::read_to_string("/proc/net/route").map(|t| parse_ipv4_gateways(&t)).unwrap_or_default();
    gws.extend(fs::read_to_string("/proc/net/ipv6_route").map(|t| parse_ipv6_gateways(&t)).unwrap_or_default());
    gws
}

/// Gateways of the IPv4 default routes (the gateway field is little-endian hex).
#[must_use]
pub fn parse_ipv4_gateways(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, gw, mask) = (f.get(1)?, f.get(2)?, f.get(7)?);
            let gw = u32::from_str_radix(gw, 16).ok()?;
            (*dest == "00000000" && *mask == "00000000" && gw != 0)
                .then(|| IpAddr::V4(Ipv4Addr::from(gw.to_le_bytes())))
        })
        .collect()
}

/// Gateways of the IPv6 default routes.
#[must_use]
pub fn parse_ipv6_gateways(table: &str) -> Vec<IpAddr> {
    table
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dest, len, hop) = (f.first()?, f.get(1)?, f.get(4)?);
            let gw = u128::from_str_radix(hop, 16).ok()?;
            (dest.chars().all(|c| c == '0') && *len == "00" && gw != 0).then(|| IpAddr::V6(Ipv6Addr::from(gw)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateways_of_default_routes() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                  eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\n\
                  eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(parse_ipv4_gateways(v4), vec![IpAddr::from([10, 0, 0, 1])]);
        let v6 = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wlan0\n";
        assert_eq!(parse_ipv6_gateways(v6), vec!["fe80::1".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn picks_lowest_metric_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth1\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t0100000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(parse_ipv4_routes(table).as_deref(), Some("eth0"));
    }

    #[test]
    fn no_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t0000000A\t00000000\t0001\t0\t0\t100\t00FFFFFF\n";
        assert_eq!(parse_ipv4_routes(table), None);
    }

    #[test]
    fn ipv6_default_route() {
        let table = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 wlan0\n\
                     00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n";
        assert_eq!(parse_ipv6_routes(table).as_deref(), Some("wlan0"));
    }
}
