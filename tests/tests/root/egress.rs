//! The TC egress program fed hand-built packets with `BPF_PROG_TEST_RUN`: it shares the flow
//! table with the XDP program, counts in its own direction, never stops a packet, and counts a
//! GSO super-packet as the segments it becomes on the wire. Needs root.

use agent_common::{
    counters::{Direction, ProtoClass},
    flow::FlowKey,
    maps,
};
use vigil_tests::{
    Harness, TC_ACT_UNSPEC,
    packets::{Pkt, flags},
};

const XDP_PASS: u32 = 2;
const CLIENT: [u8; 4] = [192, 0, 2, 1];
const HOST: [u8; 4] = [198, 51, 100, 7];
/// Ethernet, IPv4 and TCP without options.
const HEADERS: u32 = 54;

fn key(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> FlowKey {
    FlowKey {
        src_addr: FlowKey::v4_mapped(src),
        dst_addr: FlowKey::v4_mapped(dst),
        src_port: sport,
        dst_port: dport,
        protocol: 6,
        ip_version: 4,
        pad: [0; 2],
    }
}

#[test]
fn both_hooks_feed_one_flow_table_and_count_their_own_direction() {
    let mut h = Harness::new();
    let syn = Pkt::tcp4(CLIENT, HOST, 40_000, 22, flags::SYN).build();
    let syn_ack = Pkt::tcp4(HOST, CLIENT, 22, 40_000, flags::SYN | flags::ACK).ttl(64).build();
    assert_eq!(h.run(&syn), XDP_PASS);
    for _ in 0..3 {
        assert_eq!(h.run_egress(&syn_ack), TC_ACT_UNSPEC, "egress never decides a packet's fate");
    }
    let flows = h.flows();
    assert_eq!(flows.len(), 2, "{flows:?}");
    let request = flows[&key(CLIENT, HOST, 40_000, 22)];
    let reply = flows[&key(HOST, CLIENT, 22, 40_000)];
    assert_eq!((request.packets, request.syn, request.syn_ack), (1, 1, 0));
    assert_eq!((reply.packets, reply.bytes, reply.syn_ack, reply.ttl_max), (3, 3 * 54, 3, 64));
    let c = h.counters_by_direction();
    let (ingress, egress) = (c.of(Direction::Ingress), c.of(Direction::Egress));
    assert_eq!((ingress.packets, ingress.bytes, ingress.flows_created), (1, 54, 1));
    assert_eq!((egress.packets, egress.bytes, egress.flows_created), (3, 3 * 54, 1));
    assert_eq!(egress.proto_packets[ProtoClass::Tcp as usize], 3);
    assert_eq!(h.counters(), c.total(), "the sensor's counters are both hooks together");
}

#[test]
fn egress_never_applies_the_blocklist() {
    let mut h = Harness::new();
    h.blocklist()
        .add("198.51.100.0/24".parse().unwrap(), std::time::Duration::from_mins(1), vigil::block::rules::Origin::Manual)
        .expect("add v4 rule");
    let from_host = Pkt::tcp4(HOST, CLIENT, 443, 50_000, flags::ACK).build();
    assert_eq!(h.run_egress(&from_host), TC_ACT_UNSPEC);
    let c = h.counters_by_direction();
    assert_eq!((c.of(Direction::Egress).packets, c.of(Direction::Egress).blocklist_drops), (1, 0));
    assert_eq!(h.flows().len(), 1, "counted as any other packet");
    assert_eq!(h.run(&from_host), 1, "the same packet arriving is dropped by XDP");
}

#[test]
fn a_gso_super_packet_counts_as_its_wire_segments() {
    let mut h = Harness::new();
    // 3 full segments of 500 payload bytes and a last one of 100, sent as one buffer.
    let payload = vec![0x5a; 3 * 500 + 100];
    let frame = Pkt::tcp4(HOST, CLIENT, 443, 50_000, flags::ACK | flags::PSH).payload(&payload).build();
    let len = u32::try_from(frame.len()).unwrap();
    assert_eq!(len, HEADERS + 1600);
    assert_eq!(h.run_egress_gso(&frame, 4, 500), TC_ACT_UNSPEC);
    let flows = h.flows();
    let s = flows[&key(HOST, CLIENT, 443, 50_000)];
    let (full, last) = (HEADERS + 500, HEADERS + 100);
    assert_eq!((s.packets, s.bytes), (4, u64::from(len + 3 * HEADERS)));
    assert_eq!((s.len_min, s.len_max), (last, full));
    assert_eq!(s.len_sq_sum, 3 * u64::from(full * full) + u64::from(last * last));
    assert_eq!((s.ack, s.psh, s.iat_min_ns, s.iat_sum_ns), (4, 1, 0, 0));
    let c = *h.counters_by_direction().of(Direction::Egress);
    assert_eq!((c.packets, c.bytes), (4, u64::from(len + 3 * HEADERS)));
    assert_eq!((c.proto_packets[ProtoClass::Tcp as usize], c.malformed_total()), (4, 0));
    // The same buffer without GSO is one packet; numbers that do not add up are one too.
    let mut h = Harness::new();
    h.run_egress(&frame);
    h.run_egress_gso(&frame, 9, 500);
    let s = h.flows()[&key(HOST, CLIENT, 443, 50_000)];
    assert_eq!((s.packets, s.bytes, s.ack), (2, 2 * u64::from(len), 2));
}

#[test]
fn the_empty_egress_program_is_loaded_for_benchmarks() {
    let mut h = Harness::new();
    let frame = Pkt::tcp4(HOST, CLIENT, 443, 50_000, flags::ACK).build();
    let (action, _) = h.run_egress_program(maps::PROGRAM_EGRESS_EMPTY, &frame, (0, 0), 10);
    assert_eq!(action, TC_ACT_UNSPEC);
    assert!(h.flows().is_empty(), "the floor program touches nothing");
    assert_eq!(h.counters().packets, 0);
}
