//! Harvest time for 10k, 100k and 1M flows in the kernel table: the batched scan
//! (`BPF_MAP_LOOKUP_BATCH`, what the agent uses) against one-key-at-a-time iteration
//! (`GET_NEXT_KEY` + lookup per key), in the same run; and the live pass, where every flow
//! moved and is handed on as a conversation. Needs root.
//!
//! The table is filled from userspace with `BPF_MAP_UPDATE_BATCH` (per-CPU values, one CPU's
//! slot holding a packet), so the numbers measure reading, not generating traffic.
#![expect(clippy::cast_precision_loss, reason = "flow counts compared as ratios")]

use std::time::{Duration, Instant};

use agent_common::flow::{FlowKey, FlowStats, IP_V4};
use vigil::{
    flows::{HarvestConfig, Harvester},
    sensor::{self, Sensor, SensorOptions, batch},
};
use vigil_tests::bench::{machine, median, report};

fn key(i: u32) -> FlowKey {
    let b = i.to_be_bytes();
    FlowKey {
        src_addr: FlowKey::v4_mapped([10, b[1], b[2], b[3]]),
        dst_addr: FlowKey::v4_mapped([192, 0, 2, 1]),
        src_port: (i % 60_000) as u16,
        dst_port: 443,
        protocol: 6,
        ip_version: IP_V4,
        pad: [0; 2],
    }
}

fn fill(harvester: &Harvester, n: u32, cpus: usize) {
    use aya::maps::IterableMap as _;
    use std::os::fd::AsFd as _;
    let tables: Vec<_> = harvester.tables().collect();
    let mut start = 0;
    while start < n {
        let end = (start + 8192).min(n);
        for (shard, table) in tables.iter().enumerate() {
            let keys: Vec<FlowKey> = (start..end).map(key).filter(|k| k.shard() == shard).collect();
            let mut values = vec![FlowStats::default(); keys.len() * cpus];
            for i in 0..keys.len() {
                values[i * cpus] =
                    FlowStats { packets: 1, bytes: 60, first_seen_ns: 1, last_seen_ns: 1, ..FlowStats::default() };
            }
            batch::update_batch(table.map().fd().as_fd(), &keys, &values, cpus).expect("BPF_MAP_UPDATE_BATCH");
        }
        start = end;
    }
}

fn main() {
    vigil_tests::require_root();
    let cpus = sensor::possible_cpus();
    let mut rows = Vec::new();
    let mut one_m_batched = Duration::ZERO;
    for n in [10_000u32, 100_000, 1_000_000] {
        // Headroom over n: the LRU may evict before it is completely full.
        let mut s = Sensor::load(&SensorOptions { flow_capacity: n + n / 4, pin_dir: None }).expect("load");
        let mut harvester = Harvester::new(s.take_flows().expect("flows"), HarvestConfig::default(), cpus);
        fill(&harvester, n, cpus);
        let present = harvester.scan_batched().expect("scan");
        assert!(present as f64 >= 0.99 * f64::from(n), "table holds {present} of {n}");
        let mut batched: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(harvester.scan_batched().expect("scan"), present);
                t.elapsed()
            })
            .collect();
        let batched = median(&mut batched);
        let t = Instant::now();
        assert_eq!(harvester.scan_one_by_one().expect("iterate"), present);
        let single = t.elapsed();
        // Full harvest passes (scan + timeout checks, nothing due) as the agent runs them.
        let mut passes: Vec<Duration> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let report = harvester.harvest(2, |_| {}).expect("harvest");
                assert_eq!(report.tracked, present);
                t.elapsed()
            })
            .collect();
        let harvest = median(&mut passes);
        // Live passes as the agent runs them when every flow moved since the last one: each
        // direction paired (here none has a partner) and handed on as a conversation.
        let mut live_passes: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                let mut live = 0usize;
                let report = harvester.harvest_live(2, Some(0), |_| {}, |_| live += 1).expect("harvest");
                assert_eq!((report.tracked, live), (present, present));
                t.elapsed()
            })
            .collect();
        let live = median(&mut live_passes);
        if n == 1_000_000 {
            one_m_batched = harvest;
        }
        rows.push(format!(
            "| {present} | {:.1} | {:.1} | {:.1}x | {:.1} | {:.1} |",
            batched.as_secs_f64() * 1e3,
            single.as_secs_f64() * 1e3,
            single.as_secs_f64() / batched.as_secs_f64(),
            harvest.as_secs_f64() * 1e3,
            live.as_secs_f64() * 1e3
        ));
    }
    let text = [
        "### Harvest time (flow table scan)".to_owned(),
        String::new(),
        format!("Machine: {}; {cpus} possible CPUs (per-CPU values per flow). Batched and full pass: median of 5, live pass median of 3, 8192 keys per call, the two table shards scanned in parallel threads.", machine()),
        String::new(),
        "| flows | batched ms | one-by-one ms | speed-up | full harvest pass ms | live pass, every flow moved, ms |".to_owned(),
        "|---:|---:|---:|---:|---:|---:|".to_owned(),
        rows.join("\n"),
        String::new(),
        format!(
            "Target: 1M flows harvested (full pass) in under 250 ms: {} ({:.1} ms).",
            if one_m_batched < Duration::from_millis(250) { "met" } else { "NOT met" },
            one_m_batched.as_secs_f64() * 1e3
        ),
        String::new(),
    ]
    .join("\n");
    report(&text);
}
