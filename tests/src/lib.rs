//! Shared helpers for Vigil's privileged tests and benchmarks, and the building blocks of the
//! lab (`tests/lab`, package `vigil-lab`): hand-built packets, a harness around
//! `BPF_PROG_TEST_RUN`, throwaway network namespaces, the three-host LAN and the agent process.
//!
//! Everything here needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`). Helpers panic on
//! failure so a broken environment fails the test loudly instead of skipping it.

pub mod agent;
pub mod bench;
pub mod blast;
pub mod browser;
pub mod capture;
pub mod data;
pub mod host_replay;
pub mod interrupt;
pub mod lab;
pub mod netns;
pub mod packets;
// Scratch directories, flow-record files, bundle copies: the same helpers as the agent's own
// integration tests, from the one file.
#[path = "../../agent/tests/common/files.rs"]
mod files;

use std::collections::BTreeMap;

use agent_common::{
    counters::Counters,
    flow::{FlowKey, FlowStats},
    maps,
};
use aya::{
    maps::{MapData, PerCpuHashMap},
    programs::{TestRun as _, TestRunOptions},
};
use vigil::{
    block::Blocklist,
    flows::record::merge_per_cpu,
    sensor::{Sensor, SensorOptions},
};

/// `TC_ACT_UNSPEC`: what the egress program returns for every packet (it never stops one).
pub const TC_ACT_UNSPEC: i32 = -1;

/// A `struct __sk_buff` for `BPF_PROG_TEST_RUN`'s `ctx_in`: zero but for the GSO fields, the
/// only ones the sensor reads from its context (offsets from `linux/bpf.h`).
fn sk_buff_ctx(gso_segs: u32, gso_size: u32) -> [u8; 192] {
    const GSO_SEGS: usize = 164;
    const GSO_SIZE: usize = 176;
    let mut ctx = [0u8; 192];
    ctx[GSO_SEGS..GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx[GSO_SIZE..GSO_SIZE + 4].copy_from_slice(&gso_size.to_ne_bytes());
    ctx
}

/// A number unique within this test process, for names of throwaway things.
pub fn unique() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Asserts the tests run as root, with a message that says why.
///
/// # Panics
/// When not root: privileged tests must fail, not silently pass.
pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "privileged test: run as root (cargo xtask test does)");
}

/// The real sensor program, loaded but not attached, driven with `BPF_PROG_TEST_RUN`.
pub struct Harness {
    pub sensor: Sensor,
}

impl Harness {
    /// Loads the sensor with a small flow table.
    ///
    /// # Panics
    /// If loading fails (verifier rejection included).
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(4096)
    }

    /// Loads the sensor with a flow table of `flow_capacity` entries.
    ///
    /// # Panics
    /// If loading fails.
    #[must_use]
    pub fn with_capacity(flow_capacity: u32) -> Self {
        require_root();
        let sensor = Sensor::load(&SensorOptions { flow_capacity, pin_dir: None }).expect("loading the sensor");
        Self { sensor }
    }

    /// Runs the sensor program once on `frame` and returns its XDP action.
    ///
    /// # Panics
    /// If the test run syscall fails.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.run_program(maps::PROGRAM, frame, 1).0
    }

    /// Runs `program` `repeat` times on `frame`; returns the action and the kernel's mean
    /// duration per run.
    ///
    /// # Panics
    /// If the test run syscall fails.
    pub fn run_program(&mut self, program: &'static str, frame: &[u8], repeat: u32) -> (u32, std::time::Duration) {
        let prog = self.sensor.program_mut(program).expect("program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.repeat = repeat;
        let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
        (result.return_value, result.duration)
    }

    /// Runs the egress (TC) program once on `frame` and returns its TC action.
    ///
    /// # Panics
    /// If the test run syscall fails.
    pub fn run_egress(&mut self, frame: &[u8]) -> i32 {
        self.run_egress_gso(frame, 0, 0)
    }

    /// Runs the egress program once on `frame` presented as a GSO super-packet of `gso_segs`
    /// segments of `gso_size` payload bytes (0, 0: an ordinary packet), as a TSO send reaches
    /// TC egress before the device cuts it.
    ///
    /// # Panics
    /// If the test run syscall fails.
    pub fn run_egress_gso(&mut self, frame: &[u8], gso_segs: u32, gso_size: u32) -> i32 {
        self.run_egress_program(maps::PROGRAM_EGRESS, frame, (gso_segs, gso_size), 1).0
    }

    /// Runs TC `program` `repeat` times on `frame` with the GSO shape `gso` (`(0, 0)`: none);
    /// returns the TC action and the kernel's mean duration per run.
    ///
    /// # Panics
    /// If the test run syscall fails.
    pub fn run_egress_program(
        &mut self,
        program: &'static str,
        frame: &[u8],
        gso: (u32, u32),
        repeat: u32,
    ) -> (i32, std::time::Duration) {
        let ctx = sk_buff_ctx(gso.0, gso.1);
        let prog = self.sensor.egress_program(program).expect("egress program");
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        let result = prog.test_run(opts).expect("BPF_PROG_TEST_RUN (TC)");
        (i32::from_ne_bytes(result.return_value.to_ne_bytes()), result.duration)
    }

    /// The flow table, per-CPU values merged.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn flows(&self) -> BTreeMap<FlowKey, FlowStats> {
        let mut flows = BTreeMap::new();
        for name in maps::FLOWS {
            let map = self.sensor.ebpf().map(name).expect("flow map");
            let table: PerCpuHashMap<&MapData, FlowKey, FlowStats> =
                PerCpuHashMap::try_from(map).expect("flow map type");
            for entry in &table {
                let (key, values) = entry.expect("reading a flow");
                assert_eq!(key.shard(), maps::FLOWS.iter().position(|n| *n == name).unwrap(), "flow in its shard");
                if let Some(stats) = merge_per_cpu(&values) {
                    assert!(flows.insert(key, stats).is_none(), "a flow in two shards");
                }
            }
        }
        flows
    }

    /// The sensor counters summed over CPUs.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn counters(&self) -> Counters {
        self.sensor.counters().expect("counters")
    }

    /// The sensor counters of each hook, summed over CPUs.
    ///
    /// # Panics
    /// If the map cannot be read.
    #[must_use]
    pub fn counters_by_direction(&self) -> vigil::sensor::DirectionCounters {
        self.sensor.counters_by_direction().expect("counters")
    }

    /// The blocklist of this sensor.
    ///
    /// # Panics
    /// If the maps are missing.
    pub fn blocklist(&mut self) -> Blocklist<&mut MapData> {
        Blocklist::from_ebpf(self.sensor.ebpf_mut()).expect("blocklist maps")
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}
