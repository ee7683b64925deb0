//! `vigil run`: load, attach, harvest on an interval, and on SIGINT/SIGTERM detach and flush.

use std::{path::PathBuf, time::Duration};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    clock,
    flows::{EndReason, FlowRecord, HarvestConfig, Harvester, output::FlowWriter},
    net::route,
    sensor::{self, AttachMode, Sensor, SensorError, SensorOptions},
};

/// How often `vigil run` logs a status line, so an operator sees the sensor working even
/// without `--flows-out`.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Settings of one `vigil run`.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Interface to attach to; the default route's when `None`.
    pub iface: Option<String>,
    pub mode: AttachMode,
    /// Time between harvests.
    pub interval: Duration,
    pub harvest: HarvestConfig,
    pub sensor: SensorOptions,
    /// Where flow records go as JSON lines (`-` for standard output).
    pub flows_out: Option<PathBuf>,
}

/// Why `vigil run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no --iface given and the host has no default route to take one from")]
    NoDefaultRoute,
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs the sensor until SIGINT or SIGTERM.
///
/// Everything that can fail on bad input (interface, output file, program load) is checked
/// before the program is attached, so an error leaves nothing behind. The attachment is a BPF
/// link owned by this process: if the process dies, the kernel detaches the program.
///
/// # Errors
/// [`RunError`] for a missing interface, an unwritable output, or a failed load or attach.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    let iface = if let Some(iface) = config.iface.clone() {
        iface
    } else {
        let iface = route::default_route_interface().ok_or(RunError::NoDefaultRoute)?;
        info!(iface, "no --iface given; using the default route's interface");
        iface
    };
    if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
        return Err(SensorError::NoSuchInterface { iface }.into());
    }
    let mut writer = config.flows_out.as_deref().map(FlowWriter::open).transpose()?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let mut sensor = Sensor::load(config.sensor)?;
    let mut harvester = Harvester::new(sensor.take_flows()?, config.harvest, sensor::possible_cpus());
    sensor.attach(&iface, config.mode)?;
    info!(
        interval = ?config.interval,
        idle_timeout = ?config.harvest.idle_timeout,
        active_timeout = ?config.harvest.active_timeout,
        flow_capacity = config.sensor.flow_capacity,
        "harvesting flows"
    );

    let mut emit_failed = None;
    let mut emit = |record: FlowRecord, writer: &mut Option<FlowWriter>| {
        if let Some(w) = writer.as_mut()
            && let Err(e) = w.write(&record)
        {
            emit_failed.get_or_insert(e);
        }
    };

    let mut last_status = std::time::Instant::now();
    let mut exported = 0usize;

    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let stop = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let report = harvester.harvest(clock::monotonic_ns(), |r| emit(r, &mut writer))?;
                if let Some(w) = writer.as_mut() {
                    w.flush()?;
                }
                debug!(tracked = report.tracked, idle = report.idle, active = report.active,
                       elapsed_us = report.elapsed.as_micros(), "harvest");
                exported += report.idle + report.active;
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = std::time::Instant::now();
                    let c = sensor.counters()?;
                    info!(packets = c.packets, bytes = c.bytes, malformed = c.malformed_total(),
                          flows_tracked = report.tracked, records_exported = exported,
                          blocklist_drops = c.blocklist_drops, "status");
                }
            }
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };

    info!(signal = stop, "stopping: detaching, then flushing remaining flows");
    sensor.detach()?;
    let flushed = harvester.flush(EndReason::Shutdown, |r| emit(r, &mut writer))?;
    if let Some(w) = writer.as_mut() {
        w.flush()?;
    }
    if let Some(e) = emit_failed {
        warn!(error = %e, "writing flow records failed at least once");
    }
    let counters = sensor.counters()?;
    info!(
        packets = counters.packets,
        bytes = counters.bytes,
        malformed = counters.malformed_total(),
        flows_created = counters.flows_created,
        flow_insert_failed = counters.flow_insert_failed,
        blocklist_drops = counters.blocklist_drops,
        flushed,
        records = writer.as_ref().map_or(0, FlowWriter::written),
        "stopped"
    );
    Ok(())
}
