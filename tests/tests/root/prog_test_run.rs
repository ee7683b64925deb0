//! The real XDP program fed hand-built packets with `BPF_PROG_TEST_RUN`: return codes, exact
//! flow table contents and counters. Needs root.

use std::{net::Ipv6Addr, time::Duration};

use agent_common::{
    counters::{Malformed, ProtoClass},
    flow::{FlowKey, FlowStats, IP_V4, IP_V6, flags as fflags},
};
use vigil::clock::monotonic_ns;
use vigil_tests::{
    Harness,
    packets::{Ext, Net, Pkt, Transport, XorShift, flags},
};

const XDP_DROP: u32 = 1;
/// The shortest frame `BPF_PROG_TEST_RUN` accepts for XDP.
const ETH_HLEN: usize = 14;
const XDP_PASS: u32 = 2;
const A: [u8; 4] = [192, 0, 2, 1];
const B: [u8; 4] = [198, 51, 100, 7];

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("ipv6 literal")
}

fn key4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: FlowKey::v4_mapped(src),
        dst_addr: FlowKey::v4_mapped(dst),
        src_port: sport,
        dst_port: dport,
        protocol,
        ip_version: IP_V4,
        pad: [0; 2],
    }
}

fn key6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: src.octets(),
        dst_addr: dst.octets(),
        src_port: sport,
        dst_port: dport,
        protocol,
        ip_version: IP_V6,
        pad: [0; 2],
    }
}

/// Runs `frame`, asserts PASS, and returns the only flow in the table.
fn single_flow(h: &mut Harness, frame: &[u8]) -> (FlowKey, FlowStats) {
    assert_eq!(h.run(frame), XDP_PASS);
    let flows = h.flows();
    assert_eq!(flows.len(), 1, "exactly one flow: {flows:?}");
    flows.into_iter().next().expect("one flow")
}

#[test]
fn tcp_ipv4_syn_creates_exact_flow() {
    let mut h = Harness::new();
    let frame = Pkt::tcp4(A, B, 40000, 443, flags::SYN).ttl(61).build();
    let before = monotonic_ns();
    let (key, s) = single_flow(&mut h, &frame);
    let after = monotonic_ns();
    assert_eq!(key, key4(A, B, 40000, 443, 6));
    assert_eq!((s.packets, s.bytes), (1, 54));
    assert!(before <= s.first_seen_ns && s.first_seen_ns <= after);
    assert_eq!(s.first_seen_ns, s.last_seen_ns);
    assert_eq!((s.len_min, s.len_max, s.len_sq_sum), (54, 54, 54 * 54));
    assert_eq!((s.syn, s.syn_ack, s.ack, s.fin), (1, 0, 0, 0));
    assert_eq!((s.ttl_min, s.ttl_max), (61, 61));
    assert_eq!(s.iat_sum_ns, 0);
    let c = h.counters();
    assert_eq!((c.packets, c.bytes, c.ipv4_packets, c.ipv6_packets), (1, 54, 1, 0));
    assert_eq!(c.proto_packets[ProtoClass::Tcp as usize], 1);
    assert_eq!(c.proto_bytes[ProtoClass::Tcp as usize], 54);
    assert_eq!((c.flows_created, c.flow_insert_failed, c.malformed_total()), (1, 0, 0));
}

#[test]
fn every_tcp_flag_is_counted() {
    let mut h = Harness::new();
    let sequence = [
        flags::SYN,
        flags::SYN | flags::ACK,
        flags::ACK,
        flags::PSH | flags::ACK,
        flags::URG | flags::ACK,
        flags::ECE | flags::ACK,
        flags::CWR | flags::ACK,
        flags::FIN | flags::ACK,
        flags::RST,
    ];
    for (i, f) in sequence.iter().enumerate() {
        let frame = Pkt::tcp4(A, B, 1234, 80, *f).ttl(60 + u8::try_from(i).unwrap()).build();
        assert_eq!(h.run(&frame), XDP_PASS);
    }
    let flows = h.flows();
    let s = flows[&key4(A, B, 1234, 80, 6)];
    assert_eq!(s.packets, 9);
    assert_eq!((s.syn, s.syn_ack, s.ack, s.psh, s.urg, s.ece, s.cwr, s.fin, s.rst), (1, 1, 7, 1, 1, 1, 1, 1, 1));
    assert_eq!((s.ttl_min, s.ttl_max), (60, 68));
    assert!(s.last_seen_ns >= s.first_seen_ns);
    assert_eq!(s.iat_sum_ns, s.last_seen_ns - s.first_seen_ns, "gaps add up to the flow's duration");
    assert!(s.iat_min_ns <= s.iat_max_ns);
    assert_eq!(h.counters().flows_created, 1);
}

#[test]
fn packet_lengths_accumulate() {
    let mut h = Harness::new();
    for payload in [0usize, 100, 1000] {
        assert_eq!(h.run(&Pkt::udp4(A, B, 5353, 53, payload).build()), XDP_PASS);
    }
    let s = h.flows()[&key4(A, B, 5353, 53, 17)];
    let lens = [42u64, 142, 1042];
    assert_eq!(s.packets, 3);
    assert_eq!(s.bytes, lens.iter().sum::<u64>());
    assert_eq!(s.len_sq_sum, lens.iter().map(|l| l * l).sum::<u64>());
    assert_eq!((s.len_min, s.len_max), (42, 1042));
    assert_eq!(h.counters().proto_packets[ProtoClass::Udp as usize], 3);
}

#[test]
fn ipv4_options_are_skipped() {
    let mut h = Harness::new();
    let mut pkt = Pkt::tcp4(A, B, 1111, 22, flags::ACK);
    if let Net::V4 { options, .. } = &mut pkt.net {
        *options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0]; // router alert + NOPs + end
    }
    let (key, s) = single_flow(&mut h, &pkt.build());
    assert_eq!(key, key4(A, B, 1111, 22, 6));
    assert_eq!(s.ack, 1);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let mut h = Harness::new();
    let (src, dst) = (v6("2001:db8::1"), v6("2001:db8::2"));
    let mut pkt = Pkt::v6(src, dst, Transport::Tcp { sport: 5000, dport: 80, flags: flags::SYN, options: vec![] });
    if let Net::V6 { exts, .. } = &mut pkt.net {
        *exts = vec![Ext::HopByHop { units: 0 }, Ext::Routing { units: 2 }, Ext::DestOpts { units: 1 }];
    }
    let frame = pkt.ttl(33).build();
    let (key, s) = single_flow(&mut h, &frame);
    assert_eq!(key, key6(src, dst, 5000, 80, 6));
    assert_eq!((s.packets, s.bytes, s.syn), (1, frame.len() as u64, 1));
    assert_eq!((s.ttl_min, s.ttl_max), (33, 33));
    assert_eq!(h.counters().ipv6_packets, 1);
}

#[test]
fn ipv6_fragments_first_carries_ports_later_on_three_tuple() {
    let mut h = Harness::new();
    let (src, dst) = (v6("2001:db8::a"), v6("2001:db8::b"));
    let mut first = Pkt::v6(src, dst, Transport::Udp { sport: 7000, dport: 7001 }).payload(&[1; 64]);
    if let Net::V6 { exts, .. } = &mut first.net {
        *exts = vec![Ext::Fragment { offset: 0, more: true }];
    }
    let mut later = first.clone();
    if let Net::V6 { exts, .. } = &mut later.net {
        *exts = vec![Ext::HopByHop { units: 0 }, Ext::Fragment { offset: 9, more: false }];
    }
    assert_eq!(h.run(&first.build()), XDP_PASS);
    assert_eq!(h.run(&later.build()), XDP_PASS);
    let flows = h.flows();
    assert_eq!(flows.len(), 2);
    let f = flows[&key6(src, dst, 7000, 7001, 17)];
    assert_eq!((f.packets, f.flags), (1, fflags::FRAGMENT_FIRST));
    let l = flows[&key6(src, dst, 0, 0, 17)];
    assert_eq!((l.packets, l.flags), (1, fflags::FRAGMENT_LATER));
    let c = h.counters();
    assert_eq!(c.fragments, 2);
    assert_eq!(c.proto_packets[ProtoClass::Other as usize], 1, "later fragments count as other");
}

#[test]
fn ipv4_fragments_first_carries_ports_later_on_three_tuple() {
    let mut h = Harness::new();
    let mut first = Pkt::udp4(A, B, 6000, 6001, 100);
    if let Net::V4 { more_fragments, .. } = &mut first.net {
        *more_fragments = true;
    }
    let mut later = Pkt::udp4(A, B, 6000, 6001, 100);
    if let Net::V4 { frag_offset, .. } = &mut later.net {
        *frag_offset = 14;
    }
    assert_eq!(h.run(&first.build()), XDP_PASS);
    assert_eq!(h.run(&later.build()), XDP_PASS);
    assert_eq!(h.run(&later.build()), XDP_PASS);
    let flows = h.flows();
    assert_eq!(flows[&key4(A, B, 6000, 6001, 17)].flags, fflags::FRAGMENT_FIRST);
    let l = flows[&key4(A, B, 0, 0, 17)];
    assert_eq!((l.packets, l.flags), (2, fflags::FRAGMENT_LATER));
    assert_eq!(h.counters().fragments, 3);
}

#[test]
fn vlan_tags_single_and_double() {
    let mut h = Harness::new();
    let one = Pkt::tcp4(A, B, 1, 2, flags::SYN).vlan(0x8100, 10);
    let two = Pkt::tcp4(A, B, 3, 4, flags::SYN).vlan(0x88a8, 100).vlan(0x8100, 10);
    assert_eq!(h.run(&one.build()), XDP_PASS);
    assert_eq!(h.run(&two.build()), XDP_PASS);
    let flows = h.flows();
    assert_eq!(flows[&key4(A, B, 1, 2, 6)].bytes, 58);
    assert_eq!(flows[&key4(A, B, 3, 4, 6)].bytes, 62);
    let three = Pkt::tcp4(A, B, 5, 6, flags::SYN).vlan(0x88a8, 1).vlan(0x8100, 2).vlan(0x8100, 3);
    assert_eq!(h.run(&three.build()), XDP_PASS);
    let c = h.counters();
    assert_eq!(c.malformed[Malformed::VlanTooMany as usize], 1);
    assert_eq!(h.flows().len(), 2, "the triple-tagged packet made no flow");
}

#[test]
fn icmp_type_and_code_in_destination_port() {
    let mut h = Harness::new();
    let (key, _) = single_flow(&mut h, &Pkt::v4(A, B, Transport::Icmp { ty: 8, code: 0 }).build());
    assert_eq!(key, key4(A, B, 0, 0x0800, 1));
    let (src, dst) = (v6("fe80::1"), v6("ff02::1"));
    assert_eq!(h.run(&Pkt::v6(src, dst, Transport::Icmpv6 { ty: 135, code: 0 }).build()), XDP_PASS);
    assert!(h.flows().contains_key(&key6(src, dst, 0, 135 << 8, 58)));
    let c = h.counters();
    assert_eq!((c.proto_packets[ProtoClass::Icmp as usize], c.proto_packets[ProtoClass::Icmpv6 as usize]), (1, 1));
}

#[test]
fn other_protocols_by_number() {
    let mut h = Harness::new();
    let gre = Pkt::v4(A, B, Transport::Raw { protocol: 47 }).payload(&[0; 24]);
    let (key, s) = single_flow(&mut h, &gre.build());
    assert_eq!(key, key4(A, B, 0, 0, 47));
    assert_eq!(s.packets, 1);
    assert_eq!(h.counters().proto_packets[ProtoClass::Other as usize], 1);
}

#[test]
fn non_ip_is_counted_and_passed() {
    let mut h = Harness::new();
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    assert_eq!(h.run(&arp), XDP_PASS);
    let c = h.counters();
    assert_eq!((c.packets, c.non_ip_packets, c.malformed_total()), (1, 1, 0));
    assert!(h.flows().is_empty());
}

/// The reason the parser must give for `frame` cut to `cut` bytes.
fn expected_reason(layout: &vigil_tests::packets::Layout, cut: usize, v6: bool, l4: Malformed) -> Malformed {
    if cut < layout.eth_end {
        Malformed::EthTruncated
    } else if cut < layout.vlan_end {
        Malformed::VlanTruncated
    } else if cut < layout.ip_fixed_end {
        if v6 { Malformed::Ipv6Truncated } else { Malformed::Ipv4Truncated }
    } else if cut < layout.ip_end {
        if v6 { Malformed::Ipv6ExtTruncated } else { Malformed::Ipv4BadHeaderLen }
    } else {
        l4
    }
}

/// Cuts (from `ETH_HLEN` on) too short to hold the source address: they make no flow.
fn before_addresses(layout: &vigil_tests::packets::Layout) -> u32 {
    u32::try_from(layout.ip_fixed_end - ETH_HLEN).expect("small")
}

#[test]
fn truncated_at_every_byte_is_counted_by_reason_and_passed() {
    let mut tcp6 = Pkt::v6(
        v6("2001:db8::1"),
        v6("2001:db8::2"),
        Transport::Tcp { sport: 1, dport: 2, flags: flags::SYN, options: vec![2, 4, 5, 0xb4] },
    );
    if let Net::V6 { exts, .. } = &mut tcp6.net {
        *exts = vec![Ext::HopByHop { units: 1 }, Ext::DestOpts { units: 0 }];
    }
    let mut tcp4 = Pkt::tcp4(A, B, 1, 2, flags::SYN).vlan(0x88a8, 5).vlan(0x8100, 6);
    if let (Net::V4 { options, .. }, Transport::Tcp { options: tcp_opts, .. }) = (&mut tcp4.net, &mut tcp4.transport) {
        *options = vec![1, 1, 1, 0];
        *tcp_opts = vec![2, 4, 5, 0xb4];
    }
    let cases = [
        (tcp4, false, Malformed::TcpTruncated),
        (tcp6, true, Malformed::TcpTruncated),
        (Pkt::udp4(A, B, 1, 2, 0).vlan(0x8100, 7), false, Malformed::UdpTruncated),
        (Pkt::v4(A, B, Transport::Icmp { ty: 8, code: 0 }), false, Malformed::IcmpTruncated),
        (Pkt::v6(v6("::1"), v6("::2"), Transport::Icmpv6 { ty: 128, code: 0 }), true, Malformed::IcmpTruncated),
    ];
    for (pkt, is_v6, l4_reason) in cases {
        let (frame, layout) = pkt.build_with_layout();
        // ICMP needs only 4 bytes of its 8-byte header.
        let l4_needed = if matches!(l4_reason, Malformed::IcmpTruncated) { layout.ip_end + 4 } else { layout.l4_end };
        let mut h = Harness::new();
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header (EINVAL), and no
        // NIC delivers one; the host tests cover those cuts.
        for cut in ETH_HLEN..l4_needed {
            let before = h.counters();
            assert_eq!(h.run(&frame[..cut]), XDP_PASS, "cut at {cut} of {pkt:?}");
            let c = h.counters();
            let want = expected_reason(&layout, cut, is_v6, l4_reason);
            assert_eq!(
                c.malformed[want as usize],
                before.malformed[want as usize] + 1,
                "cut at {cut}: expected {want:?}, counters {c:?}"
            );
            assert_eq!(c.malformed_total(), before.malformed_total() + 1, "cut at {cut}: one reason only");
            // Once the source address is there the packet is kept on a flagged flow.
            let flows = h.flows();
            if cut < layout.ip_fixed_end {
                assert!(flows.is_empty(), "cut at {cut} made a flow before the addresses");
            } else {
                let want = if cut < layout.ip_end { fflags::NETWORK_UNWALKED } else { fflags::TRANSPORT_TRUNCATED };
                let flagged: u32 = flows.values().filter(|f| f.flags & want != 0).map(|f| f.malformed).sum();
                let total: u32 = flows.values().map(|f| f.malformed).sum();
                let total_malformed = u32::try_from(c.malformed_total()).expect("small");
                assert_eq!(total, total_malformed - before_addresses(&layout), "cut at {cut}: {flows:?}");
                assert!(flagged > 0, "cut at {cut}: no flow flagged {want:#x}: {flows:?}");
            }
        }
        assert_eq!(h.counters().malformed_total(), (l4_needed - ETH_HLEN) as u64);
        let mut h = Harness::new();
        assert_eq!(h.run(&frame[..l4_needed]), XDP_PASS);
        assert_eq!(h.counters().malformed_total(), 0, "the whole transport header is enough");
        assert_eq!(h.flows().len(), 1);
    }
}

#[test]
fn inconsistent_headers_have_their_own_reasons() {
    let mut h = Harness::new();
    let base = Pkt::tcp4(A, B, 1, 2, flags::SYN).build();
    let ip = 14;
    let mut bad_version = base.clone();
    bad_version[ip] = 0x55;
    let mut bad_ihl = base.clone();
    bad_ihl[ip] = 0x44;
    let mut short_total = base.clone();
    short_total[ip + 2..ip + 4].copy_from_slice(&10u16.to_be_bytes());
    let mut bad_doff = base.clone();
    bad_doff[ip + 20 + 12] = 0x40;
    let mut long_doff = base;
    long_doff[ip + 20 + 12] = 0xf0;
    let mut v6_bad = Pkt::v6(v6("::1"), v6("::2"), Transport::Udp { sport: 1, dport: 2 }).build();
    v6_bad[ip] = 0x40;
    let mut too_many = Pkt::v6(v6("::1"), v6("::2"), Transport::Udp { sport: 1, dport: 2 });
    if let Net::V6 { exts, .. } = &mut too_many.net {
        *exts = vec![Ext::DestOpts { units: 0 }; 7];
    }
    let cases = [
        (bad_version, Malformed::Ipv4BadVersion),
        (bad_ihl, Malformed::Ipv4BadHeaderLen),
        (short_total, Malformed::Ipv4BadHeaderLen),
        (bad_doff, Malformed::TcpBadOffset),
        (long_doff, Malformed::TcpTruncated),
        (v6_bad, Malformed::Ipv6BadVersion),
        (too_many.build(), Malformed::Ipv6ExtTooMany),
    ];
    for (frame, reason) in &cases {
        let before = h.counters().malformed[*reason as usize];
        assert_eq!(h.run(frame), XDP_PASS);
        assert_eq!(h.counters().malformed[*reason as usize], before + 1, "{reason:?}");
    }
    assert_eq!(h.counters().malformed_total(), cases.len() as u64);
    // Every case but the two bad versions has readable addresses: kept on flagged flows.
    let flows = h.flows();
    assert_eq!(flows.values().map(|f| f.malformed).sum::<u32>(), 5, "{flows:?}");
    let unwalked = flows[&key4(A, B, 0, 0, 6)];
    assert_eq!((unwalked.malformed, unwalked.flags), (2, fflags::NETWORK_UNWALKED), "bad IHL, short total length");
    let doff = flows[&key4(A, B, 1, 2, 6)];
    assert_eq!((doff.malformed, doff.flags, doff.syn), (2, fflags::TRANSPORT_TRUNCATED, 0), "flags not trusted");
    let v6 = flows[&key6(v6("::1"), v6("::2"), 0, 0, 60)];
    assert_eq!((v6.malformed, v6.flags), (1, fflags::NETWORK_UNWALKED), "the last header reached is the protocol");
}

/// A SYN from `src` to port 80 with `exts` Destination Options headers of `units` each.
fn syn6_with_dest_opts(src: Ipv6Addr, exts: usize, units: u8) -> Vec<u8> {
    let mut pkt = Pkt::v6(
        src,
        v6("2001:db8::2"),
        Transport::Tcp { sport: 40_000, dport: 80, flags: flags::SYN, options: Vec::new() },
    );
    if let Net::V6 { exts: e, .. } = &mut pkt.net {
        *e = vec![Ext::DestOpts { units }; exts];
    }
    pkt.build()
}

#[test]
fn blocked_ipv6_sources_are_dropped_whatever_headers_follow() {
    let mut h = Harness::new();
    let bad = v6("2001:db8:bad::9");
    h.blocklist()
        .add("2001:db8:bad::/48".parse().unwrap(), Duration::from_mins(1), vigil::block::rules::Origin::Manual)
        .expect("add v6 rule");
    // The two shapes the review found getting a SYN-ACK from a blocked source: seven
    // Destination Options headers (one more than the walk), and one 1040-byte header.
    let cases = [(0, 0), (7, 0), (1, 129), (40, 0)];
    for (exts, units) in cases {
        assert_eq!(h.run(&syn6_with_dest_opts(bad, exts, units)), XDP_DROP, "{exts} x {units} units");
    }
    let c = h.counters();
    assert_eq!((c.blocklist_drops, c.malformed_total()), (cases.len() as u64, 0), "dropped before the rest is parsed");
    assert!(h.flows().is_empty());
    // The same chains from an unblocked source are passed and kept on a flagged flow.
    let good = v6("2001:db8::77");
    for (exts, units) in [(7, 0), (1, 129)] {
        assert_eq!(h.run(&syn6_with_dest_opts(good, exts, units)), XDP_PASS);
    }
    let flows = h.flows();
    let f = flows[&key6(good, v6("2001:db8::2"), 0, 0, 60)];
    assert_eq!((f.packets, f.malformed, f.flags), (2, 2, fflags::NETWORK_UNWALKED));
    assert_eq!(h.counters().malformed[Malformed::Ipv6ExtTooMany as usize], 2);
}

#[test]
fn tiny_fragment_scans_make_one_flow_per_port() {
    // `nmap -f`: each probe is a first fragment with 8 bytes of TCP header, then a later
    // fragment with the rest. 50 ports must be 50 flows (and the evasion counted), not one.
    let mut h = Harness::new();
    for port in 1000..1050u16 {
        let full = Pkt::tcp4(A, B, 50_000, port, flags::SYN).build();
        let ip = 14;
        let mut first = full[..ip + 20 + 8].to_vec();
        first[ip + 2..ip + 4].copy_from_slice(&28u16.to_be_bytes());
        first[ip + 6..ip + 8].copy_from_slice(&0x2000u16.to_be_bytes());
        let mut later = full[..ip + 20].to_vec();
        later.extend_from_slice(&full[ip + 20 + 8..]);
        later[ip + 2..ip + 4].copy_from_slice(&32u16.to_be_bytes());
        later[ip + 6..ip + 8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(h.run(&first), XDP_PASS);
        assert_eq!(h.run(&later), XDP_PASS);
    }
    let flows = h.flows();
    assert_eq!(flows.len(), 51, "one per probed port plus the later fragments' 3-tuple");
    for port in 1000..1050u16 {
        let f = flows[&key4(A, B, 50_000, port, 6)];
        assert_eq!((f.packets, f.malformed, f.syn), (1, 1, 0));
        assert_eq!(f.flags, fflags::FRAGMENT_FIRST | fflags::TRANSPORT_TRUNCATED);
    }
    let later = flows[&key4(A, B, 0, 0, 6)];
    assert_eq!((later.packets, later.malformed, later.flags), (50, 0, fflags::FRAGMENT_LATER));
    let c = h.counters();
    assert_eq!((c.fragments, c.malformed[Malformed::TcpTruncated as usize]), (100, 50));
}

#[test]
fn garbage_is_always_passed_and_accounted() {
    let mut h = Harness::new();
    let mut rng = XorShift::new(0x5eed);
    let n = 3000u64;
    for i in 0..n {
        let len = ETH_HLEN + usize::try_from(rng.next_u64() % 200).unwrap();
        let mut frame = vec![0u8; len];
        rng.fill(&mut frame);
        // Steer a share of them into the IP parsers.
        if len >= 15 {
            match i % 3 {
                0 => frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes()),
                1 => frame[12..14].copy_from_slice(&0x86ddu16.to_be_bytes()),
                _ => {}
            }
            // Half of those get a plausible version/IHL byte so they reach deeper headers.
            if i % 2 == 0 {
                match i % 3 {
                    0 => frame[14] = 0x45,
                    1 => frame[14] = 0x60,
                    _ => {}
                }
            }
        }
        let action = h.run(&frame);
        assert_eq!(action, XDP_PASS, "garbage frame {i} ({len} bytes)");
    }
    let c = h.counters();
    assert_eq!(c.packets, n);
    let parsed = c.proto_packets.iter().sum::<u64>();
    assert_eq!(c.malformed_total() + c.non_ip_packets + parsed, n, "every packet lands in one bucket: {c:?}");
    assert!(c.malformed_total() > 0 && parsed > 0, "the mix exercises both paths: {c:?}");
}

#[test]
fn blocklist_drops_before_the_flow_table() {
    let mut h = Harness::new();
    h.blocklist()
        .add("192.0.2.0/24".parse().unwrap(), Duration::from_mins(1), vigil::block::rules::Origin::Manual)
        .expect("add v4 rule");
    h.blocklist()
        .add("2001:db8:bad::/48".parse().unwrap(), Duration::from_mins(1), vigil::block::rules::Origin::Manual)
        .expect("add v6 rule");
    for _ in 0..3 {
        assert_eq!(h.run(&Pkt::tcp4(A, B, 1, 2, flags::SYN).build()), XDP_DROP);
    }
    let v6_bad = Pkt::v6(v6("2001:db8:bad::9"), v6("2001:db8::2"), Transport::Udp { sport: 1, dport: 2 });
    assert_eq!(h.run(&v6_bad.build()), XDP_DROP);
    assert_eq!(h.run(&Pkt::tcp4(B, A, 2, 1, flags::SYN).build()), XDP_PASS, "other sources pass");
    let flows = h.flows();
    assert_eq!(flows.len(), 1);
    assert!(flows.contains_key(&key4(B, A, 2, 1, 6)));
    let c = h.counters();
    assert_eq!((c.packets, c.blocklist_drops), (5, 4));
    let rules = h.blocklist().list().expect("list");
    let drops = |p: &str| rules.iter().find(|r| r.prefix.to_string() == p).map(|r| r.drops);
    assert_eq!(drops("192.0.2.0/24"), Some(3));
    assert_eq!(drops("2001:db8:bad::/48"), Some(1));
}

#[test]
fn blocklist_rules_expire_in_the_kernel() {
    let mut h = Harness::new();
    // A short, more specific rule over a longer, wider one: after the short one lapses, the
    // wider one still applies; after removing it, traffic passes.
    h.blocklist()
        .add("192.0.2.1/32".parse().unwrap(), Duration::from_secs(1), vigil::block::rules::Origin::Manual)
        .expect("add");
    h.blocklist()
        .add("192.0.2.0/24".parse().unwrap(), Duration::from_mins(2), vigil::block::rules::Origin::Manual)
        .expect("add");
    h.blocklist()
        .add("198.51.100.0/24".parse().unwrap(), Duration::from_secs(1), vigil::block::rules::Origin::Manual)
        .expect("add");
    let from_a = Pkt::tcp4(A, B, 1, 2, flags::SYN).build();
    let from_b = Pkt::tcp4(B, A, 1, 2, flags::SYN).build();
    assert_eq!(h.run(&from_a), XDP_DROP);
    assert_eq!(h.run(&from_b), XDP_DROP);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(h.run(&from_a), XDP_DROP, "the /24 still covers A");
    assert_eq!(h.run(&from_b), XDP_PASS, "B's only rule lapsed");
    let prefixes: Vec<String> = h.blocklist().list().unwrap().iter().map(|r| r.prefix.to_string()).collect();
    assert_eq!(prefixes, ["192.0.2.0/24"], "the kernel deleted both expired rules");
    assert_eq!(h.counters().blocklist_expired, 2);
    assert!(h.blocklist().remove("192.0.2.0/24".parse().unwrap()).unwrap());
    assert!(!h.blocklist().remove("192.0.2.0/24".parse().unwrap()).unwrap());
    assert_eq!(h.run(&from_a), XDP_PASS);
}

#[test]
fn short_ttl_is_refused() {
    let mut h = Harness::new();
    assert!(
        h.blocklist()
            .add("192.0.2.0/24".parse().unwrap(), Duration::from_millis(10), vigil::block::rules::Origin::Manual)
            .is_err()
    );
}
