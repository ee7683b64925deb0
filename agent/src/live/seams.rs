//! The seams between the live path and the kernel: where flows come from and what the sensor
//! reports. The kernel implementations are here; in-memory ones are in [`super::fake`]. (The
//! third seam, where rules go, is [`crate::block::RuleStore`].)

use std::io;

use crate::{
    flows::{EndReason, HarvestReport, Harvester, biflow::Conversation, harvest::LiveFlow},
    sensor::{DirectionCounters, PinState, Sensor, SensorError},
};

/// Where the live path's flows come from: the kernel flow table (through the [`Harvester`]),
/// or a fake fed by a test.
pub trait FlowSource {
    /// Exports the conversations that leave (`export`) and passes every flow with packets after
    /// `since_mono_ns` to `live`, at `now_mono_ns` (`CLOCK_MONOTONIC`).
    ///
    /// # Errors
    /// The source cannot be read.
    fn harvest(
        &mut self,
        now_mono_ns: u64,
        since_mono_ns: Option<u64>,
        export: &mut dyn FnMut(Conversation),
        live: &mut dyn FnMut(LiveFlow),
    ) -> io::Result<HarvestReport>;

    /// Exports every flow left with `reason` (the agent stops and nothing will count them).
    ///
    /// # Errors
    /// The source cannot be read.
    fn flush(&mut self, reason: EndReason, export: &mut dyn FnMut(Conversation)) -> io::Result<usize>;
}

impl FlowSource for Harvester {
    fn harvest(
        &mut self,
        now_mono_ns: u64,
        since_mono_ns: Option<u64>,
        export: &mut dyn FnMut(Conversation),
        live: &mut dyn FnMut(LiveFlow),
    ) -> io::Result<HarvestReport> {
        self.harvest_live(now_mono_ns, since_mono_ns, export, live)
    }

    fn flush(&mut self, reason: EndReason, export: &mut dyn FnMut(Conversation)) -> io::Result<usize> {
        Harvester::flush(self, reason, export)
    }
}

/// What the sensor reports besides flows: its counters and whether its attachment is intact.
pub trait SensorProbe {
    /// Packet, byte, malformed and blocklist counters of each hook, summed over CPUs.
    ///
    /// # Errors
    /// The counters cannot be read.
    fn counters(&self) -> Result<DirectionCounters, SensorError>;

    /// Whether the program is still attached and pinned as the agent left it.
    fn pin_state(&self) -> PinState;
}

impl SensorProbe for Sensor {
    fn counters(&self) -> Result<DirectionCounters, SensorError> {
        Sensor::counters_by_direction(self)
    }

    fn pin_state(&self) -> PinState {
        Sensor::pin_state(self)
    }
}
