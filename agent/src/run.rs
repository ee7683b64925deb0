//! `vigil run`: load, attach, and every interval harvest the flow table, score the flows that
//! moved, raise alerts, auto-block, publish metrics and status; on SIGINT/SIGTERM stop.
//!
//! Everything that can fail on bad input (configuration, interface, model, sinks, outputs,
//! metrics address) is checked before the program is attached, so an error leaves nothing
//! behind. With a pin directory (the default) the program, maps and rules stay in the kernel
//! when the agent stops or dies, and the next run takes them over; without one the
//! attachment belongs to the process and goes away with it.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    alert::sink::{Event, Severity, SinkError, Sinks},
    block::{BlockError, Blocklist},
    clock::{self, MonoToWall},
    config::Config,
    control::AgentStatus,
    detect::{BlockMode, Engine, EngineConfig, Kind, Level, LiveScorer, Notice, allowlist::Allowlist},
    features::{Schema, context::ContextWindow},
    flows::{EndReason, FlowRecord, HarvestConfig, Harvester, output::FlowWriter},
    metrics::{Metrics, MetricsError},
    model::{Bundle, BundleError, onnx::OnnxError},
    net::route,
    sensor::{self, PinState, Sensor, SensorError, SensorOptions},
};

/// How often `vigil run` logs a status line, so an operator sees the sensor working even
/// without alerts.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Why `vigil run` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no interface configured (sensor.iface / --iface) and the host has no default route to take one from")]
    NoDefaultRoute,
    #[error(transparent)]
    Sensor(#[from] SensorError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("model {name}: {error}")]
    Model { name: String, error: BundleError },
    #[error("alert sinks: {0}")]
    Sinks(#[from] SinkError),
    #[error("metrics endpoint: {0}")]
    Metrics(#[from] MetricsError),
    #[error("blocklist: {0}")]
    Block(#[from] BlockError),
    #[error("scoring: {0}")]
    Scoring(#[from] OnnxError),
    #[error(
        "the pinned XDP link {path} was removed while still attached, not by `vigil detach`: stopping so that a \
         supervisor restarts the sensor (check who can write the pin directory)"
    )]
    LinkUnpinned { path: PathBuf },
    #[error("{0}")]
    PrivateDir(#[from] crate::private_dir::PrivateDirError),
}

/// A local output (flow records, the status file) that must never stop detection: failures
/// are counted in `vigil_output_failures_total{output}` and logged at most once per
/// [`STATUS_EVERY`], with how many failed since the last log line.
struct OutputHealth {
    name: &'static str,
    since_log: u64,
    last_log: Option<Instant>,
}

impl OutputHealth {
    const fn new(name: &'static str) -> Self {
        Self { name, since_log: 0, last_log: None }
    }

    /// `n` more failures (0: none this cycle), the last with `error`.
    fn failed(&mut self, n: u64, error: Option<String>, metrics: &Metrics) {
        if n == 0 && error.is_none() {
            return;
        }
        metrics.output_failed(self.name, n);
        self.since_log += n;
        if self.last_log.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            warn!(
                output = self.name,
                failed = self.since_log,
                error = error.unwrap_or_default(),
                "output failing; detection goes on (counted in vigil_output_failures_total)"
            );
            self.last_log = Some(Instant::now());
            self.since_log = 0;
        }
    }
}

/// Loads the model a configuration names: `default` (built in) or a bundle directory that
/// only root or the agent's user can write, signed by a trusted key unless
/// `detection.allow_unsigned`. Answers the detector and the sha256 of its `manifest.json`.
///
/// # Errors
/// [`RunError::Model`] naming the bundle and what is wrong with it.
pub fn load_detector(
    detection: &crate::config::DetectionSection,
) -> Result<(crate::model::Detector, String), RunError> {
    let err = |error| RunError::Model { name: detection.model.clone(), error };
    let trust = crate::model::Trust::from_config(&detection.trusted_keys, detection.allow_unsigned)
        .map_err(|e| err(e.into()))?;
    let (bundle, provenance) = Bundle::load_trusted(Path::new(&detection.model), &trust).map_err(err)?;
    let detector = bundle.detector(&Schema::flow()).map_err(err)?;
    let (model, sha256) = (&detection.model, bundle.sha256());
    match provenance {
        crate::model::Provenance::BuiltIn { signed: false } | crate::model::Provenance::Unverified { .. } => {
            warn!(model, sha256, "model bundle {provenance}");
        }
        _ => info!(model, sha256, "model bundle {provenance}"),
    }
    Ok((detector, sha256))
}

/// The syslog severity of an engine event.
const fn severity(level: Level) -> Severity {
    match level {
        Level::High => Severity::Error,
        Level::Medium => Severity::Warning,
        Level::Low | Level::Info => Severity::Notice,
    }
}

/// Runs the agent until SIGINT or SIGTERM (or `vigil detach`).
///
/// # Errors
/// [`RunError`] for bad settings, a failed load or attach, or a failing map syscall.
#[expect(clippy::too_many_lines, reason = "the agent's main loop reads best in one piece")]
pub async fn run(config: Config) -> Result<(), RunError> {
    let s = &config.sensor;
    let iface = if s.iface.is_empty() {
        let iface = route::default_route_interface().ok_or(RunError::NoDefaultRoute)?;
        info!(iface, "no interface configured; using the default route's");
        iface
    } else {
        s.iface.clone()
    };
    if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
        return Err(SensorError::NoSuchInterface { iface }.into());
    }
    let (detector, model_sha256) = load_detector(&config.detection)?;
    let mut writer = config.flows.out.as_deref().map(FlowWriter::open).transpose()?;
    let sink_specs = if config.alerts.sinks.is_empty() {
        vec![crate::alert::sink::SinkSpec { kind: crate::alert::sink::SinkConfig::Stdout, queue: 10_000 }]
    } else {
        config.alerts.sinks.clone()
    };
    let sinks = Sinks::start(&sink_specs)?;
    let metrics = Metrics::new();
    metrics.set_model(&config.detection.model, &model_sha256);
    let metrics_server = config.metrics.listen.map(|addr| metrics.serve(addr)).transpose()?;
    if let Some(server) = &metrics_server {
        info!(addr = %server.local_addr(), "serving Prometheus metrics on /metrics");
    }
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let pin_dir = (!s.pin_dir.as_os_str().is_empty()).then(|| s.pin_dir.clone());
    let run_dir: PathBuf = s.run_dir.clone();
    // The control commands trust the status file there: only the agent's user may write it.
    crate::private_dir::ensure(&run_dir)?;

    let mut sensor = Sensor::load(&SensorOptions { flow_capacity: s.flow_capacity, pin_dir: pin_dir.clone() })?;
    let harvest_config = HarvestConfig {
        idle_timeout: s.idle_timeout.0,
        active_timeout: s.active_timeout.0,
        ..HarvestConfig::default()
    };
    let mut harvester = Harvester::new(sensor.take_flows()?, harvest_config, sensor::possible_cpus());
    let mode = sensor.attach(&iface, s.xdp_mode)?;

    let allowlist = Allowlist::new(&config.block.allowlist, config.block.allowlist_host);
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let mut engine = Engine::new(EngineConfig {
        alert_window: config.alerts.window.0,
        top_features: config.detection.top_features,
        max_alerts_per_cycle: config.alerts.max_per_cycle,
        min_flows: config.alerts.min_flows,
        min_sources: config.alerts.min_sources,
        min_level: config.alerts.min_severity,
        max_sources: config.alerts.max_sources,
        block_mode: config.block.mode,
        consecutive: config.block.consecutive,
        block_threshold: detector.thresholds.alert + config.block.margin,
        ttl: config.block.ttl.0,
        max_rules: config.block.max_rules,
        max_new_per_minute: config.block.max_new_per_minute,
        allowlist,
        iface: iface.clone(),
        hostname,
        model_sha256: model_sha256.clone(),
    });
    let thresholds = detector.thresholds;
    // The context window holds at most a flow table's worth of flows (memory under a flood).
    let context = ContextWindow::with_capacity(config.detection.context_window.0, s.flow_capacity as usize);
    let mut scorer = LiveScorer::new(detector, context);
    info!(
        interval = ?s.interval.0,
        model = config.detection.model,
        alert_threshold = thresholds.alert,
        block_threshold = thresholds.alert + config.block.margin,
        block_mode = ?config.block.mode,
        sinks = sinks.stats().iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(","),
        "detecting"
    );
    if config.block.mode != BlockMode::Off {
        let allowed: Vec<String> =
            engine.config().allowlist.entries().iter().map(|(n, why)| format!("{n} ({why})")).collect();
        info!(allowlist = allowed.join(", "), "auto-block allowlist");
    }

    let mut status = AgentStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        iface: iface.clone(),
        xdp_mode: mode.to_string(),
        pin_dir: pin_dir.clone(),
        started: clock::rfc3339_millis(clock::wall_ns()),
        model: config.detection.model.clone(),
        model_sha256: model_sha256.clone(),
        block_mode: serde_json::to_value(config.block.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        flow_capacity: s.flow_capacity,
        ..AgentStatus::default()
    };

    let emit = |record: FlowRecord, writer: &mut Option<FlowWriter>| {
        if let Some(w) = writer.as_mut() {
            w.emit(&record);
        }
    };
    let mut flows_output = OutputHealth::new("flows");
    let mut status_output = OutputHealth::new("status");
    let deliver = |notice: Notice, now_wall_ns: u64, metrics: &Arc<Metrics>| {
        match notice.kind {
            Kind::Alert | Kind::DestinationAlert => metrics.alert(notice.level.name()),
            Kind::Block => metrics.block_event("block"),
            Kind::Unblock => metrics.block_event("unblock"),
            Kind::DryRun => metrics.block_event("dry_run"),
            Kind::Refused => metrics.block_event("refused"),
        }
        if !matches!(notice.kind, Kind::Alert | Kind::DestinationAlert) {
            info!(action = notice.kind.action(), message = notice.doc["message"].as_str().unwrap_or(""), "response");
        }
        sinks.send(&Event {
            json: notice.doc.to_string(),
            severity: severity(notice.level),
            timestamp_ns: now_wall_ns,
        });
    };

    let mut last_status = Instant::now();
    let mut exported = 0usize;
    let mut flows_scored = 0u64;
    let mut evictions = crate::flows::harvest::Evictions::default();
    let mut suppressed = 0u64;
    let mut since = clock::monotonic_ns();
    let mut ticker = tokio::time::interval(s.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let stop = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = clock::monotonic_ns();
                let mut live = Vec::new();
                let report = harvester.harvest_live(now, Some(since), |r| emit(r, &mut writer), |f| live.push(f))?;
                since = now;
                let ignored = &config.detection.ignore_destinations;
                live.retain(|f| !ignored.iter().any(|n| n.contains(&f.record.dst_ip)));
                if let Some(w) = writer.as_mut() {
                    w.end_batch();
                    let failures = w.take_failures();
                    flows_output.failed(failures.records, failures.last_error.map(|e| e.to_string()), &metrics);
                }
                let now_wall = MonoToWall::now().wall_ns(now);
                let cycle = scorer.score(&live, now)?;
                flows_scored += live.len() as u64;
                let mut blocklist = Blocklist::from_ebpf(sensor.ebpf_mut())?;
                let notices = engine.cycle(now, now_wall, &live, &cycle, &scorer.detector, Some(&mut blocklist))?;
                for notice in notices {
                    deliver(notice, now_wall, &metrics);
                }
                for _ in suppressed..engine.stats.alerts_suppressed {
                    metrics.alert("low");
                }
                suppressed = engine.stats.alerts_suppressed;
                exported += report.idle + report.active;

                let counters = sensor.counters()?;
                metrics.observe_sensor(&counters);
                metrics.add_flow_evictions(evictions.update(&report, counters.flows_created));
                metrics.set_flows_tracked(report.tracked as u64, u64::from(s.flow_capacity));
                metrics.observe_harvest(report.elapsed);
                metrics.observe_scoring(live.len(), cycle.elapsed);
                let rules: Vec<(String, u64)> = engine.rules().map(|r| (r.prefix.to_string(), r.drops)).collect();
                metrics.set_rules(&rules);
                let sink_stats = sinks.stats();
                for st in &sink_stats {
                    metrics.sink_stats(&st.name, st.delivered, st.dropped, st.failed);
                }
                debug!(tracked = report.tracked, live = live.len(), harvest_us = report.elapsed.as_micros(),
                       scoring_us = cycle.elapsed.as_micros(), "cycle");

                status.updated = clock::rfc3339_millis(now_wall);
                status.flows_tracked = report.tracked;
                status.flow_evictions = evictions.total;
                status.last_harvest_ms = report.elapsed.as_secs_f64() * 1e3;
                status.last_scoring_ms = cycle.elapsed.as_secs_f64() * 1e3;
                status.flows_scored = flows_scored;
                status.engine = engine.stats;
                status.sinks = sink_stats;
                let written = status.write(&run_dir);
                status_output.failed(u64::from(written.is_err()), written.err().map(|e| e.to_string()), &metrics);
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = Instant::now();
                    info!(packets = counters.packets, bytes = counters.bytes, malformed = counters.malformed_total(),
                          flows_tracked = report.tracked, records_exported = exported, flows_scored,
                          alerts = engine.stats.alerts, blocks = engine.stats.blocks,
                          blocklist_drops = counters.blocklist_drops, "status");
                }
                match sensor.pin_state() {
                    PinState::Intact => {}
                    PinState::Detached => break "vigil detach",
                    PinState::Unpinned => {
                        let path = pin_dir.as_deref().map(|d| d.join(sensor::pin::LINK)).unwrap_or_default();
                        return Err(RunError::LinkUnpinned { path });
                    }
                }
            }
            _ = sigint.recv() => break "SIGINT",
            _ = sigterm.recv() => break "SIGTERM",
        }
    };

    info!(signal = stop, "stopping");
    let pinned = sensor.pins().is_some() && stop != "vigil detach";
    let mut flushed = 0;
    if pinned {
        // The program keeps counting into the pinned table; the next run exports those flows.
        sensor.release()?;
    } else {
        sensor.detach()?;
        flushed = harvester.flush(EndReason::Shutdown, |r| emit(r, &mut writer))?;
    }
    if let Some(w) = writer.as_mut() {
        w.end_batch();
        if w.failed() > 0 {
            warn!(lost = w.failed(), "flow records lost to output failures while running");
        }
    }
    sinks.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_file(run_dir.join(crate::control::STATUS_FILE));
    info!(flushed, records = writer.as_ref().map_or(0, FlowWriter::written), alerts = engine.stats.alerts, "stopped");
    Ok(())
}
