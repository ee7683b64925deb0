//! The packet parser and `pipeline::ingest` on arbitrary frames, checked against etherparse.
//!
//! Whenever etherparse slices a frame cleanly (Ethernet, VLAN, IPv4/IPv6 and the transport
//! header), our flow key must agree with it, except where Vigil differs on purpose (each
//! difference is encoded below, not skipped):
//! - IPv4 addresses are keyed IPv4-mapped (`::ffff:a.b.c.d`) with `ip_version` 4; an IPv6
//!   header carrying IPv4-mapped addresses keeps `ip_version` 6.
//! - Later fragments (offset > 0) are keyed on the 3-tuple with ports 0; for an IPv6 later
//!   fragment the protocol is the fragment header's next header (etherparse walks on into the
//!   fragment's payload).
//! - The IPv6 extension header walk stops after `MAX_IPV6_EXT_HEADERS` headers or past
//!   `MAX_OFFSET` bytes: such a packet is malformed (not walked), never keyed on wrong ports.
//! - More than `MAX_VLAN_TAGS` VLAN tags are malformed.
//! - ICMP and `ICMPv6` have source port 0 and destination port `type << 8 | code`, whatever
//!   the IP version carries them.
//! - IPv4 authentication headers are not walked: the protocol is AH (51), ports 0.
//!
//! Frames etherparse refuses are still parsed by us (for panics, and the blocklist rule
//! below), with no comparison: Vigil is lenient on purpose (a total length of 0 from
//! segmentation offload, a hop-by-hop header not first, lengths beyond the frame).

#![no_main]

use agent_common::{
    counters::Counters,
    flow::{FlowKey, IP_V4, IP_V6, PacketMeta, flags},
    parse::{
        IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, MAX_IPV6_EXT_HEADERS, MAX_OFFSET, MAX_VLAN_TAGS,
        SlicePacket,
    },
    pipeline::{Step, ingest},
};
use etherparse::{Ipv6ExtensionSlice, LinkExtSlice, NetSlice, SlicedPacket, TransportSlice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let packet = SlicePacket::new(data);
    let mut counters = Counters::default();
    let step = ingest(&packet, &mut counters, |_, _| false);
    assert_eq!(counters.packets, 1);
    // A blocked source is dropped whenever its addresses were read, however the rest looks.
    let mut blocked_counters = Counters::default();
    let blocked = ingest(&packet, &mut blocked_counters, |_, _| true);
    if matches!(step, Step::Flow(_)) {
        assert_eq!(blocked, Step::Drop, "a flow's source must be subject to the blocklist");
        assert_eq!(blocked_counters.blocklist_drops, 1);
    }
    if let Ok(reference) = SlicedPacket::from_ethernet(data) {
        compare(data, &step, &reference);
    }
});

/// What etherparse says our parser must produce.
struct Expected {
    src: [u8; 16],
    dst: [u8; 16],
    version: u8,
    ttl: u8,
    /// `None`: the walk limit makes the packet malformed (no ports, maybe no flow).
    protocol: Option<u8>,
    /// `None`: etherparse cannot tell (a first fragment it did not slice).
    ports: Option<(u16, u16)>,
    tcp_flags: Option<u8>,
    later_fragment: bool,
    fragment: bool,
}

fn compare(data: &[u8], step: &Step, reference: &SlicedPacket<'_>) {
    let vlans = reference.link_exts.iter().filter(|e| matches!(e, LinkExtSlice::Vlan(_))).count();
    if reference.link_exts.iter().any(|e| matches!(e, LinkExtSlice::Macsec(_))) {
        // Not parsed by Vigil: MACsec frames are not IP to it.
        assert_eq!(*step, Step::Pass);
        return;
    }
    let Some(net) = &reference.net else {
        assert_eq!(*step, Step::Pass, "etherparse found no network layer");
        return;
    };
    if vlans > MAX_VLAN_TAGS {
        assert_eq!(*step, Step::Pass, "{vlans} VLAN tags are malformed for Vigil");
        return;
    }
    let l3_offset = 14 + 4 * vlans;
    let expected = match net {
        NetSlice::Arp(_) => {
            assert_eq!(*step, Step::Pass, "ARP is not IP");
            return;
        }
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            let later = h.fragments_offset().value() != 0;
            let protocol = h.protocol().0;
            let ah = ip.extensions().auth.is_some();
            Expected {
                src: FlowKey::v4_mapped(h.source()),
                dst: FlowKey::v4_mapped(h.destination()),
                version: IP_V4,
                ttl: h.ttl(),
                protocol: Some(protocol),
                ports: if ah || later { Some((0, 0)) } else { ports(reference, protocol) },
                // Behind an AH Vigil reads no transport header, so no TCP flags either.
                tcp_flags: if ah { Some(0) } else { tcp_flags(reference) },
                later_fragment: later,
                fragment: later || h.more_fragments(),
            }
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            let mut e = Expected {
                src: h.source(),
                dst: h.destination(),
                version: IP_V6,
                ttl: h.hop_limit(),
                protocol: Some(ip.payload().ip_number.0),
                ports: None,
                tcp_flags: None,
                later_fragment: false,
                fragment: false,
            };
            // Walk the extension headers as Vigil does.
            let mut offset = l3_offset + 40;
            let mut walked = 0;
            let exts: Vec<Ipv6ExtensionSlice<'_>> = ip.extensions().clone().into_iter().collect();
            for (i, ext) in exts.iter().enumerate() {
                let len = match ext {
                    Ipv6ExtensionSlice::HopByHop(s)
                    | Ipv6ExtensionSlice::Routing(s)
                    | Ipv6ExtensionSlice::DestinationOptions(s) => s.slice().len(),
                    Ipv6ExtensionSlice::Authentication(s) => s.slice().len(),
                    Ipv6ExtensionSlice::Fragment(f) => {
                        e.fragment |= f.fragment_offset().value() != 0 || f.more_fragments();
                        if f.fragment_offset().value() != 0 {
                            e.later_fragment = true;
                            e.protocol = Some(f.next_header().0);
                            break;
                        }
                        8
                    }
                };
                if offset + len > MAX_OFFSET {
                    e.protocol = None;
                    break;
                }
                offset += len;
                walked += 1;
                if walked == MAX_IPV6_EXT_HEADERS {
                    if i + 1 < exts.len() {
                        e.protocol = None;
                    }
                    break;
                }
            }
            if e.protocol.is_some() {
                let protocol = e.protocol.unwrap_or_default();
                e.ports = if e.later_fragment { Some((0, 0)) } else { ports(reference, protocol) };
                e.tcp_flags = if e.later_fragment { None } else { tcp_flags(reference) };
            }
            e
        }
    };
    check(data, step, &expected);
}

/// The ports etherparse read; `None` where it has no opinion.
fn ports(reference: &SlicedPacket<'_>, protocol: u8) -> Option<(u16, u16)> {
    match &reference.transport {
        Some(TransportSlice::Tcp(t)) => Some((t.source_port(), t.destination_port())),
        Some(TransportSlice::Udp(u)) => Some((u.source_port(), u.destination_port())),
        Some(TransportSlice::Icmpv4(i)) => Some((0, u16::from(i.type_u8()) << 8 | u16::from(i.code_u8()))),
        Some(TransportSlice::Icmpv6(i)) => Some((0, u16::from(i.type_u8()) << 8 | u16::from(i.code_u8()))),
        // IGMP has no ports for Vigil.
        Some(TransportSlice::Igmp(_)) => Some((0, 0)),
        // A first fragment etherparse did not slice, or ICMP of the other IP version: Vigil
        // reads what is there; etherparse has no opinion.
        None if matches!(protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6) => None,
        None => Some((0, 0)),
    }
}

fn tcp_flags(reference: &SlicedPacket<'_>) -> Option<u8> {
    match &reference.transport {
        Some(TransportSlice::Tcp(t)) => Some(t.slice()[13]),
        _ => None,
    }
}

fn check(data: &[u8], step: &Step, e: &Expected) {
    let meta: PacketMeta = match step {
        Step::Flow(meta) => *meta,
        Step::Pass if e.protocol.is_none() => return, // not walked: malformed, no flow
        other => panic!("etherparse parsed this frame cleanly, Vigil answered {other:?}"),
    };
    let k = &meta.key;
    assert_eq!((k.src_addr, k.dst_addr, k.ip_version), (e.src, e.dst, e.version), "addresses");
    assert_eq!(meta.ttl, e.ttl, "ttl");
    assert_eq!(meta.len as usize, data.len(), "wire length");
    assert_eq!(meta.flags & flags::FRAGMENT_LATER != 0, e.later_fragment, "later fragment flag");
    assert_eq!(meta.flags & (flags::FRAGMENT_FIRST | flags::FRAGMENT_LATER) != 0, e.fragment, "fragment flags");
    let Some(protocol) = e.protocol else {
        // Past the walk limit: counted on the addresses, without ports.
        assert_eq!((k.src_port, k.dst_port, meta.tcp_flags), (0, 0, 0), "unwalked packet with ports");
        return;
    };
    assert_eq!(k.protocol, protocol, "protocol");
    if let Some(ports) = e.ports {
        assert_eq!((k.src_port, k.dst_port), ports, "ports");
    }
    if let Some(f) = e.tcp_flags {
        assert_eq!(meta.tcp_flags, f, "tcp flags");
    }
}
