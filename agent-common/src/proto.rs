//! IP protocol numbers (IANA "Assigned Internet Protocol Numbers") and their names.
//!
//! Kept apart from [`crate::parse`] and [`crate::counters`] so both can use them without
//! depending on each other.

/// IPv6 Hop-by-Hop Options extension header.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 Routing extension header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 Fragment extension header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// Authentication Header (IPv4 and IPv6).
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 Destination Options extension header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// The IANA keyword of the transport protocols Vigil tells apart (`tcp`, `udp`, `icmp`,
/// `ipv6-icmp`, as ECS `network.transport` has them), `other` for any other number.
#[must_use]
pub const fn name(protocol: u8) -> &'static str {
    match protocol {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_ICMP => "icmp",
        IPPROTO_ICMPV6 => "ipv6-icmp",
        _ => "other",
    }
}

/// ICMP or `ICMPv6`: no ports, type and code instead.
#[inline(always)]
#[must_use]
pub const fn is_icmp(protocol: u8) -> bool {
    protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            [name(6), name(17), name(1), name(58), name(47), name(0)],
            ["tcp", "udp", "icmp", "ipv6-icmp", "other", "other"]
        );
        assert!(is_icmp(1) && is_icmp(58) && !is_icmp(6));
    }
}
