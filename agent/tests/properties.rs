//! Property tests: `FlowStats::merge` and the context window.

use std::time::Duration;

use agent_common::flow::{FlowKey, FlowStats, PacketMeta, Segments};
use proptest::prelude::*;
use vigil::{
    clock::MonoToWall,
    features::{ContextWindow, context::LONG_WINDOW},
    flows::{EndReason, FlowRecord},
};

/// One packet: length, TCP flags, TTL, gap since the previous one (ns).
fn packet() -> impl Strategy<Value = (u32, u8, u8, u64)> {
    (
        prop_oneof![0..2000u32, Just(u32::MAX)],
        any::<u8>(),
        any::<u8>(),
        prop_oneof![0..10_000_000u64, Just(u64::MAX / 4)],
    )
}

/// The statistics of one flow on one CPU, from 0 (a CPU that never saw it) to 8 packets.
fn stats() -> impl Strategy<Value = FlowStats> {
    (0..1_000_000u64, prop::collection::vec(packet(), 0..8)).prop_map(|(start, packets)| {
        let mut s = FlowStats::default();
        let mut now = start;
        for (len, tcp_flags, ttl, gap) in packets {
            now = now.saturating_add(gap);
            s.update(
                &PacketMeta { key: FlowKey::default(), len, tcp_flags, ttl, flags: 0, segments: Segments::default() },
                now,
            );
        }
        s
    })
}

fn merged(a: &FlowStats, b: &FlowStats) -> FlowStats {
    let mut m = *a;
    m.merge(b);
    m
}

proptest! {
    #[test]
    fn merge_is_commutative_and_associative(a in stats(), b in stats(), c in stats()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        prop_assert_eq!(merged(&a, &FlowStats::default()), a);
        prop_assert_eq!(merged(&FlowStats::default(), &a), a);
    }

    #[test]
    fn merge_sums_counts_and_keeps_extremes(a in stats(), b in stats()) {
        let m = merged(&a, &b);
        prop_assert_eq!(m.packets, a.packets + b.packets);
        prop_assert_eq!(m.bytes, a.bytes.saturating_add(b.bytes));
        prop_assert_eq!(m.len_sq_sum, a.len_sq_sum.saturating_add(b.len_sq_sum));
        prop_assert_eq!((m.syn, m.ack, m.fin, m.rst), (a.syn + b.syn, a.ack + b.ack, a.fin + b.fin, a.rst + b.rst));
        let seen: Vec<&FlowStats> = [&a, &b].into_iter().filter(|s| s.packets > 0).collect();
        if let (Some(lo), Some(hi)) = (seen.iter().map(|s| s.len_min).min(), seen.iter().map(|s| s.len_max).max()) {
            prop_assert_eq!((m.len_min, m.len_max), (lo, hi));
            prop_assert_eq!(m.first_seen_ns, seen.iter().map(|s| s.first_seen_ns).min().unwrap_or_default());
            prop_assert_eq!(m.last_seen_ns, seen.iter().map(|s| s.last_seen_ns).max().unwrap_or_default());
            prop_assert_eq!(m.ttl_min, seen.iter().map(|s| s.ttl_min).min().unwrap_or_default());
            prop_assert_eq!(m.ttl_max, seen.iter().map(|s| s.ttl_max).max().unwrap_or_default());
            prop_assert_eq!(m.iat_min_ns, seen.iter().map(|s| s.iat_min_ns).min().unwrap_or_default());
            prop_assert!(m.len_min <= m.len_max && m.first_seen_ns <= m.last_seen_ns);
        } else {
            prop_assert_eq!(m, FlowStats::default());
        }
    }
}

/// A flow from host `src` to host `dst` (small pools, so hosts repeat).
fn flow() -> impl Strategy<Value = (u8, u8, u16, bool, u32, u32, u32, u64, u64)> {
    (0..6u8, 0..6u8, 0..5u16, any::<bool>(), 0..3u32, 0..3u32, 0..2u32, 0..100_000u64, 0..3_000_000_000u64)
}

fn record(f: &(u8, u8, u16, bool, u32, u32, u32, u64, u64), at_ns: u64) -> FlowRecord {
    let &(src, dst, port, tcp, syn, ack, rst, bytes, _) = f;
    let key = FlowKey {
        src_addr: FlowKey::v4_mapped([10, 0, 0, src]),
        dst_addr: FlowKey::v4_mapped([10, 0, 1, dst]),
        src_port: 40_000,
        dst_port: 80 + port,
        protocol: if tcp { 6 } else { 17 },
        ip_version: 4,
        ..FlowKey::default()
    };
    let mut r = FlowRecord::new(
        &key,
        &FlowStats { packets: 1, bytes, first_seen_ns: at_ns, last_seen_ns: at_ns, ..FlowStats::default() },
        EndReason::Idle,
        MonoToWall::identity(),
    );
    r.tcp_flags.syn = syn;
    r.tcp_flags.ack = ack;
    r.tcp_flags.rst = rst;
    r
}

proptest! {
    #[test]
    fn context_window_returns_to_empty(flows in prop::collection::vec(flow(), 1..60), cap in 1..80usize) {
        let window = Duration::from_secs(10);
        let mut ctx = ContextWindow::with_capacity(window, cap);
        let mut now = 1_000_000_000u64;
        for f in &flows {
            now += f.8;
            let r = record(f, now);
            // Conversations with ACKs got an answer: the same record coming back.
            let back = (f.5 > 0).then(|| {
                let mut b = r.clone();
                (b.src_ip, b.dst_ip, b.src_port, b.dst_port) = (r.dst_ip, r.src_ip, r.dst_port, r.src_port);
                b
            });
            let c = ctx.observe(&r, back.as_ref());
            // The flow itself is always counted; nothing exceeds what the window holds.
            let held = u32::try_from(ctx.len()).unwrap_or(u32::MAX);
            prop_assert!(c.src_flows >= 1 && c.src_flows <= held, "{c:?} with {held} flows held");
            prop_assert!(c.dst_flows >= 1 && c.dst_flows <= held);
            prop_assert!(c.src_dst_hosts >= 1 && c.src_dst_hosts <= c.src_flows);
            prop_assert!(c.src_dst_ports >= 1 && c.src_dst_ports <= c.src_flows);
            prop_assert!(c.dst_src_hosts >= 1 && c.dst_src_hosts <= c.dst_flows);
            prop_assert!((0.0..=1.0).contains(&c.src_unanswered_share));
            prop_assert!((0.0..=1.0).contains(&c.dst_unanswered_share));
            prop_assert!(c.src_bytes_out >= r.bytes);
            prop_assert!(c.src_bytes_in >= back.as_ref().map_or(0, |b| b.bytes));
            // The service and protocol counts include the flow; the long horizon holds at
            // least what the short one does.
            prop_assert!(c.svc_flows >= 1 && c.svc_flows <= c.src_flows);
            prop_assert!(c.src_protocols >= 1 && c.src_protocols <= c.src_flows);
            prop_assert!(c.long.svc_flows >= c.svc_flows);
            prop_assert!(c.long.src_dst_hosts >= c.src_dst_hosts && c.long.src_dst_ports >= c.src_dst_ports);
            prop_assert!(c.long.src_failed >= c.src_failed && c.long.dst_src_hosts >= c.dst_src_hosts);
            prop_assert!(c.long.pair_ports >= 1 && c.long.pair_ports <= c.long.src_dst_ports);
            prop_assert!(c.long.pair_failed <= c.long.src_failed);
            prop_assert!(ctx.len() <= cap);
            let (sources, destinations) = ctx.hosts();
            prop_assert!(sources <= ctx.len() && destinations <= ctx.len());
        }
        // Past the long horizon every flow has left, and with it every host's state.
        ctx.advance(now + u64::try_from(LONG_WINDOW.as_nanos()).unwrap_or(u64::MAX) + 1);
        prop_assert!(ctx.is_empty());
        prop_assert_eq!(ctx.hosts(), (0, 0));
        let lone = ctx.peek(&record(&flows[0], now));
        prop_assert_eq!((lone.src_flows, lone.dst_flows, lone.src_bytes_out), (1, 1, 0));
    }
}
