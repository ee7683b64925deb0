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

/// A harvester over the harness's flow table (the harness keeps the programs).
fn harvester(h: &mut Harness, idle: std::time::Duration) -> vigil::flows::Harvester {
    let config = vigil::flows::HarvestConfig {
        idle_timeout: idle,
        active_timeout: std::time::Duration::from_hours(1),
        ..vigil::flows::HarvestConfig::default()
    };
    vigil::flows::Harvester::new(h.sensor.take_flows().expect("flow maps"), config, vigil::sensor::possible_cpus())
}

#[test]
fn the_harvest_pairs_the_two_hooks_into_conversations() {
    use vigil::flows::biflow::ConnState;
    let mut h = Harness::new();
    let syn = Pkt::tcp4(CLIENT, HOST, 40_000, 22, flags::SYN).build();
    let syn_ack = Pkt::tcp4(HOST, CLIENT, 22, 40_000, flags::SYN | flags::ACK).build();
    let probe = Pkt::tcp4([203, 0, 113, 5], HOST, 50_000, 23, flags::SYN).build();
    assert_eq!(h.run(&syn), XDP_PASS);
    assert_eq!(h.run_egress(&syn_ack), TC_ACT_UNSPEC);
    assert_eq!(h.run(&probe), XDP_PASS);
    let mut harvester = harvester(&mut h, std::time::Duration::from_secs(1));
    let later = vigil::clock::monotonic_ns() + 2_000_000_000;
    let mut out = Vec::new();
    let report = harvester.harvest(later, |c| out.push(c)).expect("harvest");
    assert_eq!((report.tracked, report.idle, report.removed), (3, 3, 3));
    let records: Vec<_> = out.iter().map(vigil::flows::biflow::Conversation::record).collect();
    assert_eq!(records.len(), 2, "{records:#?}");
    let ssh = records.iter().find(|r| r.responder_port == 22).expect("the SSH conversation");
    assert_eq!((ssh.initiator_port, ssh.conn_state), (40_000, ConnState::S1));
    assert_eq!(ssh.initiator_ip, std::net::IpAddr::from(CLIENT), "the SYN side initiates");
    assert_eq!(ssh.responder.as_ref().map(|r| (r.packets, r.tcp_flags.syn_ack)), Some((1, 1)));
    let scan = records.iter().find(|r| r.responder_port == 23).expect("the probe");
    assert_eq!((scan.responder.is_none(), scan.conn_state), (true, ConnState::S0), "one way is one record");
}

#[test]
fn a_conversation_times_out_as_a_whole() {
    let mut h = Harness::new();
    let request = Pkt::udp4(CLIENT, HOST, 5_000, 53, 40).build();
    let answer = Pkt::udp4(HOST, CLIENT, 53, 5_000, 120).build();
    assert_eq!(h.run(&request), XDP_PASS);
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(h.run_egress(&answer), TC_ACT_UNSPEC);
    let answered = vigil::clock::monotonic_ns();
    let mut harvester = harvester(&mut h, std::time::Duration::from_millis(300));
    // The request alone has been idle past the timeout; the conversation has not.
    let mut out = Vec::new();
    let report = harvester.harvest(answered + 100_000_000, |c| out.push(c)).expect("harvest");
    assert_eq!((report.tracked, report.idle, report.removed, out.len()), (2, 0, 0, 0), "both stay");
    // Once the answer is idle too, both leave together.
    let report = harvester.harvest(answered + 400_000_000, |c| out.push(c)).expect("harvest");
    assert_eq!((report.idle, report.removed, out.len()), (2, 2, 1));
    let record = out[0].record();
    assert_eq!((record.initiator_port, record.responder_port), (5_000, 53), "the first seen initiates");
    assert_eq!(record.responder.as_ref().map(|r| r.bytes), Some(u64::try_from(answer.len()).unwrap()));
}

#[test]
fn live_conversations_carry_both_directions_as_they_stand() {
    let mut h = Harness::new();
    let syn = Pkt::tcp4(CLIENT, HOST, 40_001, 22, flags::SYN).build();
    let syn_ack = Pkt::tcp4(HOST, CLIENT, 22, 40_001, flags::SYN | flags::ACK).build();
    let ack = Pkt::tcp4(CLIENT, HOST, 40_001, 22, flags::ACK).build();
    let flood = Pkt::tcp4([203, 0, 113, 9], HOST, 50_000, 80, flags::SYN).build();
    assert_eq!(h.run(&syn), XDP_PASS);
    assert_eq!(h.run_egress(&syn_ack), TC_ACT_UNSPEC);
    assert_eq!(h.run(&flood), XDP_PASS);
    let mut harvester = harvester(&mut h, std::time::Duration::from_hours(1));
    let first = vigil::clock::monotonic_ns();
    let mut live = Vec::new();
    harvester.harvest_live(first, Some(0), |_| {}, |f| live.push(f)).expect("harvest");
    assert_eq!(live.len(), 2, "one live conversation each: {live:#?}");
    let ssh = live.iter().find(|f| f.record.dst_port == 22).expect("the SSH conversation");
    assert!(ssh.new);
    assert_eq!(ssh.record.src_ip, std::net::IpAddr::from(CLIENT), "the initiator's direction comes first");
    assert_eq!(ssh.back.as_ref().map(|b| (b.packets, b.tcp_flags.syn_ack)), Some((1, 1)));
    let probe = live.iter().find(|f| f.record.dst_port == 80).expect("the probe");
    assert!(probe.back.is_none(), "nothing came back");

    // Only the client sends now: its conversation comes with the answer read from the table.
    assert_eq!(h.run(&ack), XDP_PASS);
    let mut again = Vec::new();
    harvester.harvest_live(vigil::clock::monotonic_ns(), Some(first), |_| {}, |f| again.push(f)).expect("harvest");
    assert_eq!(again.len(), 1, "{again:#?}");
    let ssh = &again[0];
    assert!(!ssh.new, "seen before");
    assert_eq!((ssh.record.src_port, ssh.record.packets), (40_001, 2));
    assert_eq!(ssh.back.as_ref().map(|b| (b.packets, b.tcp_flags.syn_ack)), Some((1, 1)), "the quiet direction too");
}
