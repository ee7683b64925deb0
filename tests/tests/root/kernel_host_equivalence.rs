//! The same packets through the kernel programs (`BPF_PROG_TEST_RUN`) and through the host
//! path (`vigil replay`'s flow table) must give identical flows and counters. The packets are
//! every frame of every public capture in `../shared/data/pcaps`, each through one of the two
//! hooks: as if the end of each conversation with the lower address were the protected host,
//! what it sends goes through the TC egress program and what it receives through XDP. Needs
//! root.
//!
//! Timestamps differ by nature (the kernel stamps `CLOCK_MONOTONIC` at run time, the host
//! uses the capture's), so times and gaps are compared only where they must agree (a
//! single-packet flow has no gap on either side); every count, length, flag and TTL must be
//! equal.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use agent_common::{
    counters::Direction,
    flow::{FlowKey, FlowStats, IP_V4},
    parse::{SlicePacket, parse_l3},
};
use vigil::{
    capture::{CaptureReader, Frame},
    flows::{FlowRecord, HarvestConfig, offline::OfflineTable},
};
use vigil_tests::{Harness, TC_ACT_UNSPEC};

/// The largest frame `BPF_PROG_TEST_RUN` accepts for XDP (a page less head- and tailroom).
const MAX_TEST_RUN_FRAME: usize = 3000;

fn captures() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/pcaps");
    let mut files: Vec<PathBuf> = ["benign", "attack"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).unwrap_or_else(|e| panic!("{}: {e}", root.join(d).display())))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the shared captures are missing: {files:?}");
    files
}

/// Whether a frame goes through the egress hook: IP packets from the lower address to the
/// higher (everything else, non-IP and malformed frames included, arrives through XDP).
fn sent_by_host(frame: &[u8]) -> bool {
    matches!(parse_l3(&SlicePacket::new(frame)), Ok(Some(l3)) if l3.key.src_addr < l3.key.dst_addr)
}

/// The fields that must agree whatever the clock.
fn comparable(s: &FlowStats) -> FlowStats {
    FlowStats {
        first_seen_ns: 0,
        last_seen_ns: 0,
        iat_min_ns: 0,
        iat_max_ns: 0,
        iat_sum_ns: 0,
        iat_sq_sum_us2: 0,
        ..*s
    }
}

fn from_record(r: &FlowRecord) -> FlowStats {
    FlowStats {
        packets: r.packets,
        bytes: r.bytes,
        len_sq_sum: r.len_sq_sum,
        len_min: r.len_min,
        len_max: r.len_max,
        syn: r.tcp_flags.syn,
        syn_ack: r.tcp_flags.syn_ack,
        fin: r.tcp_flags.fin,
        rst: r.tcp_flags.rst,
        psh: r.tcp_flags.psh,
        ack: r.tcp_flags.ack,
        urg: r.tcp_flags.urg,
        ece: r.tcp_flags.ece,
        cwr: r.tcp_flags.cwr,
        ttl_min: r.ttl_min,
        ttl_max: r.ttl_max,
        malformed: r.malformed,
        flags: u8::from(r.fragment_first)
            | (u8::from(r.fragment_later) << 1)
            | (u8::from(r.transport_truncated) << 2)
            | (u8::from(r.network_unwalked) << 3),
        ..FlowStats::default()
    }
}

#[test]
fn kernel_and_host_build_identical_flows_from_real_captures() {
    let mut total_packets = 0u64;
    let mut total_egress = 0u64;
    for path in captures() {
        let mut h = Harness::with_capacity(65_536);
        let never =
            HarvestConfig { idle_timeout: Duration::MAX, active_timeout: Duration::MAX, ..HarvestConfig::default() };
        let mut host = OfflineTable::new(never, Duration::from_hours(1));
        let mut reader = CaptureReader::open(&path).expect("open capture");
        let mut fed = 0u64;
        let mut egress = 0u64;
        while let Some(frame) = reader.next_frame() {
            let frame = frame.expect("frame");
            if frame.data.len() < 14 || frame.data.len() > MAX_TEST_RUN_FRAME {
                continue;
            }
            // Both sides count the bytes they are given.
            let wire_len = u32::try_from(frame.data.len()).unwrap();
            let frame = Frame { wire_len, ..frame };
            if sent_by_host(&frame.data) {
                let action = h.run_egress(&frame.data);
                assert_eq!(action, TC_ACT_UNSPEC, "{}: frame {fed} not passed on egress", path.display());
                egress += 1;
            } else {
                let action = h.run(&frame.data);
                assert_eq!(action, 2, "{}: frame {fed} not passed", path.display());
            }
            host.packet(&frame, |c| panic!("nothing expires here: {c:?}"));
            fed += 1;
        }
        assert!(fed > 0, "{}: no frame fed", path.display());
        total_packets += fed;

        let mut host_records = Vec::new();
        let summary = host.finish(|c| host_records.extend(c.legs()));
        let kernel: BTreeMap<FlowKey, FlowStats> = h.flows();
        let host_flows: BTreeMap<FlowKey, FlowStats> = host_records.iter().map(|r| (r.key(), from_record(r))).collect();
        assert_eq!(host_records.len(), host_flows.len(), "{}: duplicate host records", path.display());
        assert_eq!(
            kernel.keys().collect::<Vec<_>>(),
            host_flows.keys().collect::<Vec<_>>(),
            "{}: the same flows",
            path.display()
        );
        for (key, k) in &kernel {
            assert_eq!(comparable(k), host_flows[key], "{}: flow {key:?}", path.display());
            if k.packets == 1 {
                assert_eq!(k.iat_sum_ns, 0);
            }
        }
        assert_eq!(h.counters(), summary.counters, "{}: counters", path.display());
        let by_direction = h.counters_by_direction();
        assert_eq!(by_direction.of(Direction::Egress).packets, egress, "{}: egress counted apart", path.display());
        let v4 = kernel.keys().filter(|k| k.ip_version == IP_V4).count();
        eprintln!(
            "{}: {fed} packets ({egress} on egress), {} flows ({v4} IPv4) identical",
            path.display(),
            kernel.len()
        );
        total_egress += egress;
    }
    assert!(total_packets > 50_000, "fed {total_packets} packets");
    assert!(total_egress > 5_000, "both hooks ran: {total_egress} of {total_packets} on egress");
}
