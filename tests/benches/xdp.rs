//! ns per packet of the real sensor programs via `BPF_PROG_TEST_RUN`, each next to an empty
//! program of its kind (the floor) measured in the same run: the XDP program against an empty
//! `XDP_PASS` one, the TC egress program against an empty TC one. Needs root.
//!
//! Repeated cases run one packet `REPEAT` times inside the kernel (the kernel reports the mean).
//! A new flow per packet cannot be repeated in place (the second run finds the flow), so that
//! case runs distinct packets one call each and is compared with the floor measured the same
//! way.
#![expect(clippy::cast_precision_loss, reason = "nanosecond means printed to one decimal")]

use std::time::Duration;

use agent_common::maps::{PROGRAM, PROGRAM_EGRESS, PROGRAM_EGRESS_EMPTY, PROGRAM_EMPTY};
use vigil_tests::{
    Harness, TC_ACT_UNSPEC,
    bench::{machine, median, report},
    packets::{Pkt, flags},
};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 5;
const DISTINCT: u32 = 100_000;

/// The median over `ROUNDS` of `run`'s mean time per run, in ns.
fn median_ns(mut run: impl FnMut() -> Duration) -> f64 {
    let mut samples: Vec<Duration> = (0..ROUNDS).map(|_| run()).collect();
    median(&mut samples).as_nanos() as f64
}

fn repeated(h: &mut Harness, program: &'static str, frame: &[u8], want: u32) -> f64 {
    median_ns(|| {
        let (action, per_run) = h.run_program(program, frame, REPEAT);
        assert_eq!(action, want, "{program} returned {action}");
        per_run
    })
}

/// Mean ns per run over `DISTINCT` single-run calls, each with a packet from `frame_for`.
fn single_runs(h: &mut Harness, program: &'static str, frame_for: impl Fn(u32) -> Vec<u8>) -> f64 {
    let frames: Vec<Vec<u8>> = (0..DISTINCT).map(&frame_for).collect();
    let total: u128 = frames.iter().map(|f| h.run_program(program, f, 1).1.as_nanos()).sum();
    total as f64 / f64::from(DISTINCT)
}

/// As [`repeated`], for a TC program on egress, with the GSO shape `gso`.
fn repeated_egress(h: &mut Harness, program: &'static str, frame: &[u8], gso: (u32, u32)) -> f64 {
    median_ns(|| {
        let (action, per_run) = h.run_egress_program(program, frame, gso, REPEAT);
        assert_eq!(action, TC_ACT_UNSPEC, "{program} returned {action}");
        per_run
    })
}

/// As [`single_runs`], for a TC program on egress.
fn single_runs_egress(h: &mut Harness, program: &'static str, frame_for: impl Fn(u32) -> Vec<u8>) -> f64 {
    let frames: Vec<Vec<u8>> = (0..DISTINCT).map(&frame_for).collect();
    let total: u128 = frames.iter().map(|f| h.run_egress_program(program, f, (0, 0), 1).1.as_nanos()).sum();
    total as f64 / f64::from(DISTINCT)
}

/// A reply from the protected host to a distinct client: a new flow on egress.
fn distinct_destination(i: u32) -> Vec<u8> {
    let b = i.to_be_bytes();
    Pkt::tcp4([192, 0, 2, 1], [10, b[1], b[2], b[3]], 80, 1024 + (i % 50_000) as u16, flags::SYN | flags::ACK).build()
}

fn distinct_source(i: u32) -> Vec<u8> {
    let b = i.to_be_bytes();
    Pkt::tcp4([10, b[1], b[2], b[3]], [192, 0, 2, 1], 1024 + (i % 50_000) as u16, 80, flags::SYN).build()
}

fn main() {
    vigil_tests::require_root();
    let mut h = Harness::with_capacity(262_144);
    let tcp = Pkt::tcp4([198, 51, 100, 1], [192, 0, 2, 1], 40000, 443, flags::ACK).payload(&[0; 64]).build();
    let blocked = Pkt::tcp4([203, 0, 113, 9], [192, 0, 2, 1], 40000, 443, flags::SYN).build();
    let mut malformed = tcp.clone();
    malformed.truncate(14 + 20 + 10);

    let floor = repeated(&mut h, PROGRAM_EMPTY, &tcp, 2);
    assert_eq!(h.run(&tcp), 2);
    let existing = repeated(&mut h, PROGRAM, &tcp, 2);
    let existing_v6 = {
        let f = Pkt::v6(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            vigil_tests::packets::Transport::Tcp { sport: 1, dport: 2, flags: flags::ACK, options: vec![] },
        )
        .build();
        assert_eq!(h.run(&f), 2);
        repeated(&mut h, PROGRAM, &f, 2)
    };
    h.blocklist()
        .add("203.0.113.0/24".parse().unwrap(), Duration::from_hours(1), vigil::block::rules::Origin::Manual)
        .expect("rule");
    let with_rule_existing = repeated(&mut h, PROGRAM, &tcp, 2);
    let blocked_ns = repeated(&mut h, PROGRAM, &blocked, 1);
    let malformed_ns = repeated(&mut h, PROGRAM, &malformed, 2);
    let malformed_l3 = repeated(&mut h, PROGRAM, &tcp[..14 + 10], 2);
    let mut arp = tcp.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let non_ip = repeated(&mut h, PROGRAM, &arp, 2);
    let floor_single = single_runs(&mut h, PROGRAM_EMPTY, distinct_source);
    let new_flow = single_runs(&mut h, PROGRAM, distinct_source);
    let created = h.counters().flows_created;
    assert!(created >= u64::from(DISTINCT), "every distinct packet made a flow ({created})");

    // Egress, on a fresh sensor: the host's replies and a TSO send of 4 segments.
    let mut e = Harness::with_capacity(262_144);
    let reply = Pkt::tcp4([192, 0, 2, 1], [198, 51, 100, 1], 443, 40000, flags::ACK).payload(&[0; 64]).build();
    let tso = Pkt::tcp4([192, 0, 2, 1], [198, 51, 100, 1], 443, 40000, flags::ACK).payload(&[0; 3 * 500 + 100]).build();
    let egress_floor = repeated_egress(&mut e, PROGRAM_EGRESS_EMPTY, &reply, (0, 0));
    assert_eq!(e.run_egress(&reply), TC_ACT_UNSPEC);
    let egress_existing = repeated_egress(&mut e, PROGRAM_EGRESS, &reply, (0, 0));
    let egress_gso = repeated_egress(&mut e, PROGRAM_EGRESS, &tso, (4, 500));
    let egress_floor_single = single_runs_egress(&mut e, PROGRAM_EGRESS_EMPTY, distinct_destination);
    let egress_new_flow = single_runs_egress(&mut e, PROGRAM_EGRESS, distinct_destination);

    let row = |name: &str, ns: f64, base: f64| format!("| {name} | {ns:.1} | {:.2}x |", ns / base);
    let text = [
        "### XDP program cost (BPF_PROG_TEST_RUN)".to_owned(),
        String::new(),
        format!("Machine: {}. Repeated cases: median of {ROUNDS} runs of {REPEAT} repeats; new-flow case: mean of {DISTINCT} single runs.", machine()),
        String::new(),
        "| case | ns/packet | vs floor |".to_owned(),
        "|---|---:|---:|".to_owned(),
        row("empty XDP_PASS program (floor)", floor, floor),
        row("existing TCP/IPv4 flow", existing, floor),
        row("existing TCP/IPv6 flow", existing_v6, floor),
        row("existing TCP/IPv4 flow, blocklist non-empty", with_rule_existing, floor),
        row("blocked source (XDP_DROP)", blocked_ns, floor),
        row("malformed (truncated TCP)", malformed_ns, floor),
        row("malformed (truncated IPv4 header)", malformed_l3, floor),
        row("non-IP (ARP)", non_ip, floor),
        row("empty program, single runs (floor for the next row)", floor_single, floor_single),
        row("new flow per packet, single runs", new_flow, floor_single),
        String::new(),
        format!(
            "Target: existing-flow update within 2.5x the floor: {} ({:.2}x).",
            if existing <= 2.5 * floor { "met" } else { "NOT met" },
            existing / floor
        ),
        String::new(),
        "### TC egress program cost (BPF_PROG_TEST_RUN)".to_owned(),
        String::new(),
        "Same machine and run, same method, against an empty TC program (`TC_ACT_UNSPEC`).".to_owned(),
        String::new(),
        "| case | ns/packet | vs floor |".to_owned(),
        "|---|---:|---:|".to_owned(),
        row("empty TC program (floor)", egress_floor, egress_floor),
        row("existing TCP/IPv4 flow (the host's reply)", egress_existing, egress_floor),
        row("TSO send of 4 segments, counted as 4", egress_gso, egress_floor),
        row("empty TC program, single runs (floor for the next row)", egress_floor_single, egress_floor_single),
        row("new flow per packet, single runs", egress_new_flow, egress_floor_single),
        String::new(),
    ]
    .join("\n");
    report(&text);
}
