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
    biflow::{self, Conversation},
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
            check_ns: crate::clock::duration_ns(interval).max(1),
            next_check_ns: None,
            clock_ns: 0,
            out_of_order: 0,
        }
    }

    /// Applies one frame. Flows that time out before it are passed to `emit` first.
    pub fn packet(&mut self, frame: &Frame, mut emit: impl FnMut(Conversation)) {
        if frame.ts_ns < self.clock_ns {
            // Captures are not always in time order; a packet never moves the clock back.
            self.out_of_order += 1;
        }
        let now = frame.ts_ns.max(self.clock_ns);
        self.clock_ns = now;
        // Timestamps come from the file: near u64::MAX, the next check saturates (every later
        // packet checks) instead of overflowing.
        let next = *self.next_check_ns.get_or_insert(now.saturating_add(self.check_ns));
        if now >= next {
            self.expire(now, &mut emit);
            self.next_check_ns = Some(now.saturating_add(self.check_ns));
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
    fn expire(&mut self, now: u64, emit: &mut impl FnMut(Conversation)) {
        // A direction that timed out leaves only when its conversation did, and then the other
        // direction leaves with it (as the live harvest does).
        let config = self.config;
        let mut leaving: Vec<(FlowKey, EndReason)> = self
            .flows
            .iter()
            .filter_map(|(key, s)| {
                config.end_reason(s.first_seen_ns, s.last_seen_ns, now)?;
                let back = biflow::reverse(key);
                let (first, last) = match self.flows.get(&back).filter(|_| back != *key) {
                    Some(b) => (s.first_seen_ns.min(b.first_seen_ns), s.last_seen_ns.max(b.last_seen_ns)),
                    None => (s.first_seen_ns, s.last_seen_ns),
                };
                Some((*key, config.end_reason(first, last, now)?))
            })
            .collect();
        leaving.sort_by_key(|(key, _)| (self.flows[key].first_seen_ns, *key));
        let clock = MonoToWall::identity();
        for (key, reason) in leaving {
            // Gone already when it left with its other direction.
            let Some(stats) = self.flows.remove(&key) else { continue };
            let back = biflow::reverse(&key);
            let second = if back == key { None } else { self.flows.remove(&back) };
            emit(Conversation::new(
                FlowRecord::new(&key, &stats, reason, clock),
                second.map(|s| FlowRecord::new(&back, &s, reason, clock)),
            ));
        }
    }

    /// Ends the capture: every flow left is exported with [`EndReason::EndOfCapture`], paired
    /// into conversations. Returns the counters and how many frames came out of order.
    pub fn finish(mut self, emit: impl FnMut(Conversation)) -> OfflineSummary {
        let clock = MonoToWall::identity();
        let rest: Vec<FlowRecord> =
            self.flows.drain().map(|(key, s)| FlowRecord::new(&key, &s, EndReason::EndOfCapture, clock)).collect();
        biflow::pair_all(rest).into_iter().for_each(emit);
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Ethernet + IPv4 + UDP from 10.0.0.1:1000 to 10.0.0.2:53.
    fn udp_frame(ts_ns: u64, wire_len: u32) -> Frame {
        let mut data = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        data.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        data.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 8, 0, 0]);
        Frame { ts_ns, data, wire_len }
    }

    fn replay(frames: &[Frame], interval: Duration) -> (Vec<FlowRecord>, OfflineSummary) {
        let mut table = OfflineTable::new(HarvestConfig::default(), interval);
        let mut out = Vec::new();
        for f in frames {
            table.packet(f, |c| out.extend(c.legs()));
        }
        let summary = table.finish(|c| out.extend(c.legs()));
        (out, summary)
    }

    #[test]
    fn timestamps_and_intervals_near_the_maximum_do_not_overflow() {
        // The next timeout check was `now + interval`: a timestamp near u64::MAX (a pcapng
        // if_tsoffset of 2^64 - 1 s saturates to it) or a huge interval overflowed.
        let frames = [udp_frame(u64::MAX - 5, 42), udp_frame(u64::MAX, 42), udp_frame(3, 42)];
        let (records, summary) = replay(&frames, Duration::from_secs(1));
        assert_eq!(summary.counters.packets, 3);
        assert_eq!(summary.out_of_order, 1);
        assert_eq!(records.iter().map(|r| r.packets).sum::<u64>(), 3);
        let (records, _) = replay(&[udp_frame(10, 42), udp_frame(20, 42)], Duration::MAX);
        assert_eq!(records.len(), 1);
    }

    #[test]
    fn lengths_near_u32_max_saturate() {
        let frames: Vec<Frame> = (0..3).map(|i| udp_frame(i, u32::MAX)).collect();
        let (records, summary) = replay(&frames, Duration::from_secs(1));
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].len_sq_sum, u64::MAX);
        assert_eq!(records[0].bytes, 3 * u64::from(u32::MAX));
        assert_eq!(summary.counters.bytes, 3 * u64::from(u32::MAX));
    }
}
