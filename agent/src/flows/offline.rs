//! The host-side flow table for captures: the kernel's per-packet pipeline
//! (`agent_common::pipeline::ingest`, `FlowStats::first`/`update`) over a `HashMap`, with
//! the same idle and active timeouts evaluated on the capture's clock.

use std::collections::HashMap;

use agent_common::{
    counters::Counters,
    flow::{FlowKey, FlowStats},
    parse::SlicePacket,
    pipeline::{self, Step},
};

use super::{
    harvest::HarvestConfig,
    record::{EndReason, FlowRecord},
};
use crate::{capture::Frame, clock::MonoToWall};

/// Flows built from captured frames.
pub struct OfflineTable {
    flows: HashMap<FlowKey, FlowStats>,
    counters: Counters,
    config: HarvestConfig,
    /// How often (capture time) timeouts are checked, like the live harvest interval.
    check_ns: u64,
    next_check_ns: Option<u64>,
    /// The capture clock: the latest timestamp seen. Earlier timestamps are clamped to it.
    clock_ns: u64,
    out_of_order: u64,
}

impl OfflineTable {
    /// An empty table with the live agent's timeouts, checked every `interval` of capture time.
    #[must_use]
    pub fn new(config: HarvestConfig, interval: std::time::Duration) -> Self {
        Self {
            flows: HashMap::new(),
            counters: Counters::default(),
            config,
            check_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX).max(1),
            next_check_ns: None,
            clock_ns: 0,
            out_of_order: 0,
        }
    }

    /// Applies one frame. Flows that time out before it are passed to `emit` first.
    pub fn packet(&mut self, frame: &Frame, mut emit: impl FnMut(FlowRecord)) {
        if frame.ts_ns < self.clock_ns {
            // Captures are not always in time order; a packet never moves the clock back.
            self.out_of_order += 1;
        }
        let now = frame.ts_ns.max(self.clock_ns);
        self.clock_ns = now;
        let next = *self.next_check_ns.get_or_insert(now + self.check_ns);
        if now >= next {
            self.expire(now, &mut emit);
            self.next_check_ns = Some(now + self.check_ns);
        }
        let packet = SlicePacket::captured(&frame.data, frame.wire_len);
        let Step::Flow(meta) = pipeline::ingest(&packet, &mut self.counters, |_, _| false) else {
            return;
        };
        if let Some(stats) = self.flows.get_mut(&meta.key) {
            stats.update(&meta, now);
        } else {
            self.flows.insert(meta.key, FlowStats::first(&meta, now));
            self.counters.flows_created += 1;
        }
    }

    /// Exports flows idle or older than the timeouts at `now`, in a stable order.
    fn expire(&mut self, now: u64, emit: &mut impl FnMut(FlowRecord)) {
        let mut leaving: Vec<(FlowKey, EndReason)> = self
            .flows
            .iter()
            .filter_map(|(key, s)| Some((*key, self.config.end_reason(s.first_seen_ns, s.last_seen_ns, now)?)))
            .collect();
        leaving.sort_by_key(|(key, _)| (self.flows[key].first_seen_ns, *key));
        for (key, reason) in leaving {
            if let Some(stats) = self.flows.remove(&key) {
                emit(FlowRecord::new(&key, &stats, reason, MonoToWall::identity()));
            }
        }
    }

    /// Exports every remaining flow (reason `end_of_capture`), oldest first, and returns the
    /// counters.
    pub fn finish(mut self, mut emit: impl FnMut(FlowRecord)) -> OfflineSummary {
        let mut rest: Vec<(FlowKey, FlowStats)> = self.flows.drain().collect();
        rest.sort_by_key(|(key, s)| (s.first_seen_ns, *key));
        for (key, stats) in rest {
            emit(FlowRecord::new(&key, &stats, EndReason::EndOfCapture, MonoToWall::identity()));
        }
        OfflineSummary { counters: self.counters, out_of_order: self.out_of_order }
    }
}

/// What a replay counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OfflineSummary {
    /// The same counters the kernel keeps.
    pub counters: Counters,
    /// Packets whose timestamp was earlier than one before them.
    pub out_of_order: u64,
}
