//! In-memory stand-ins for the kernel side of the live path, so the agent's cycle runs in a
//! plain `cargo test`, without root: [`FakeFlows`] hands out the flows a test queued,
//! [`FakeSensor`] answers counters and a pin state the test sets. (Rules:
//! [`crate::block::MemoryRules`].)

use std::{collections::VecDeque, io, time::Duration};

use agent_common::counters::Counters;

use crate::sensor::DirectionCounters;

use super::seams::{FlowSource, SensorProbe};
use crate::{
    flows::{EndReason, FlowRecord, HarvestReport, biflow::Conversation, harvest::LiveFlow},
    sensor::{PinState, SensorError},
};

/// One harvest's worth of flows, as a test scripts it.
#[derive(Clone, Debug, Default)]
pub struct Harvest {
    /// Flows that saw packets since the previous harvest.
    pub live: Vec<LiveFlow>,
    /// Records of flows that leave the table this harvest (each its own conversation).
    pub leaving: Vec<FlowRecord>,
    /// Flows still in the table afterwards.
    pub tracked: usize,
}

/// A flow source that answers each harvest with the next queued [`Harvest`] (nothing once
/// the queue is empty).
#[derive(Debug, Default)]
pub struct FakeFlows {
    pub queue: VecDeque<Harvest>,
    /// Records still "in the table" at the end, exported by `flush`.
    pub remaining: Vec<FlowRecord>,
    /// Makes the next harvest fail (a map that cannot be read).
    pub fail_next: bool,
}

impl FakeFlows {
    pub fn push(&mut self, harvest: Harvest) {
        self.queue.push_back(harvest);
    }
}

impl FlowSource for FakeFlows {
    fn harvest(
        &mut self,
        _now_mono_ns: u64,
        since_mono_ns: Option<u64>,
        export: &mut dyn FnMut(Conversation),
        live: &mut dyn FnMut(LiveFlow),
    ) -> io::Result<HarvestReport> {
        if std::mem::take(&mut self.fail_next) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        let next = self.queue.pop_front().unwrap_or_default();
        let mut report =
            HarvestReport { tracked: next.tracked, elapsed: Duration::from_micros(1), ..HarvestReport::default() };
        if since_mono_ns.is_some() {
            next.live.into_iter().for_each(&mut *live);
        }
        for record in next.leaving {
            match record.end_reason {
                EndReason::Idle => report.idle += 1,
                _ => report.active += 1,
            }
            report.removed += 1;
            export(Conversation { first: record, second: None });
        }
        Ok(report)
    }

    fn flush(&mut self, reason: EndReason, export: &mut dyn FnMut(Conversation)) -> io::Result<usize> {
        let records = std::mem::take(&mut self.remaining);
        let n = records.len();
        for mut record in records {
            record.end_reason = reason;
            export(Conversation { first: record, second: None });
        }
        Ok(n)
    }
}

/// A sensor whose counters and pin state the test sets.
#[derive(Debug)]
pub struct FakeSensor {
    /// What the ingress hook counted.
    pub counters: Counters,
    /// What the egress hook counted.
    pub egress: Counters,
    pub pin_state: PinState,
}

impl Default for FakeSensor {
    fn default() -> Self {
        Self { counters: Counters::default(), egress: Counters::default(), pin_state: PinState::Intact }
    }
}

impl SensorProbe for FakeSensor {
    fn counters(&self) -> Result<DirectionCounters, SensorError> {
        Ok(DirectionCounters([self.counters, self.egress]))
    }

    fn pin_state(&self) -> PinState {
        self.pin_state
    }
}
