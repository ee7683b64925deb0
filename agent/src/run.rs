//! `vigil run`: load, attach, and every interval harvest the flow table, score the flows that
//! moved, raise alerts, auto-block, publish metrics and status; on SIGINT/SIGTERM stop.
//!
//! Everything that can fail on bad input (configuration, interface, model, sinks, outputs,
//! metrics address) is checked before the program is attached, so an error leaves nothing
//! behind. With a pin directory (the default) the program, maps and rules stay in the kernel
//! when the agent stops or dies, and the next run takes them over; without one the
//! attachment belongs to the process and goes away with it.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    alert::{
        ecs::Observer,
        sink::{SinkError, Sinks},
    },
    block::{BlockError, Blocklist},
    clock,
    config::Config,
    control::AgentStatus,
    detect::{BlockMode, Engine, EngineConfig, Scorer, allowlist::Allowlist},
    features::{Schema, context::ContextWindow},
    flows::{HarvestConfig, Harvester, output::FlowWriter},
    learn::{Learner, Phase},
    live::{Agent, CycleError, Kernel, Next, Outputs},
    metrics::{Metrics, MetricsError},
    model::{Bundle, BundleError, onnx::OnnxError},
    net::route,
    sensor::{self, Sensor, SensorError, SensorOptions},
};

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
    #[error("alert suppression rules: {0}")]
    Suppress(#[from] crate::alert::suppress::SuppressError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl From<CycleError> for RunError {
    fn from(e: CycleError) -> Self {
        match e {
            CycleError::Harvest(e) => Self::Io(e),
            CycleError::Scoring(e) => Self::Scoring(e),
            CycleError::Rules(e) => Self::Block(e),
            CycleError::Sensor(e) => Self::Sensor(e),
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

/// Runs the agent until SIGINT or SIGTERM (or `vigil detach`): checks everything that can be
/// wrong before attaching, then hands the live path to an [`Agent`], one cycle per interval.
///
/// # Errors
/// [`RunError`] for bad settings, a failed load or attach, or a failing map syscall.
#[expect(clippy::too_many_lines, reason = "the wiring of the agent's parts, checked before anything is attached")]
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
    let (mut detector, mut model_sha256) = load_detector(&config.detection)?;
    let mut model_name = config.detection.model.clone();
    // With the built-in model, the agent learns this host's traffic and swaps in a site model;
    // a site model learnt by an earlier run is used as it is.
    let mut learning = config.learn.enabled && config.detection.model == "default";
    let mut phase = if learning { Phase::Learning } else { Phase::Fixed };
    if learning && config.learn.dir.exists() {
        // Checked now, not a day later when the site model is written: it must be the
        // agent's own (it is created then if it does not exist yet).
        crate::private_dir::ensure(&config.learn.dir)?;
        let site = crate::learn::current_site(&config.learn.dir).map_err(|e| RunError::Model {
            name: format!(
                "{} (remove {} to learn afresh)",
                e.path.display(),
                config.learn.dir.join(crate::learn::CURRENT).display()
            ),
            error: e.error,
        })?;
        if let Some(site) = site {
            let path = site.path.display().to_string();
            info!(model = path, sha256 = site.sha256, "site model learnt by an earlier run, signed by this host's key");
            (detector, model_sha256, model_name) = (site.detector, site.sha256, path);
            (learning, phase) = (false, Phase::Site);
        }
    }
    // The fleet's model for this host's group: bundles verify with the trusted keys, always.
    // The one an earlier run verified and kept is used from the first cycle.
    let fleet_models = config.fleet.as_ref().and_then(|f| f.models.as_ref());
    let mut fleet_running = None;
    let fleet_keys = match fleet_models {
        Some(models) => {
            let trust = crate::model::Trust::from_config(&config.detection.trusted_keys, false)
                .map_err(|e| RunError::Model { name: "fleet.models".to_owned(), error: e.into() })?;
            match crate::fleet::models::kept(&models.dir, &trust.keys, &Schema::flow()) {
                Ok(Some(kept)) => {
                    let name = format!("fleet:{}", models.group);
                    info!(model = name, sha256 = kept.sha256, key = %kept.key, "the fleet's bundle kept by an earlier run");
                    fleet_running = Some(kept.sha256.clone());
                    (detector, model_sha256, model_name) = (kept.detector, kept.sha256, name);
                    (learning, phase) = (false, Phase::Fleet);
                }
                Ok(None) => {}
                Err(e) => warn!(
                    error = e,
                    "the fleet's bundle kept by an earlier run does not load; scoring with detection.model until the fleet's comes"
                ),
            }
            trust.keys
        }
        None => Vec::new(),
    };
    let flows_out = config.flows.out.as_deref().map(FlowWriter::open).transpose()?;
    let sink_specs = if config.alerts.sinks.is_empty() {
        vec![crate::alert::sink::SinkSpec { kind: crate::alert::sink::SinkConfig::Stdout, queue: 10_000 }]
    } else {
        config.alerts.sinks.clone()
    };
    let sinks = Sinks::start(&sink_specs)?;
    let mut fleet = config.fleet.as_ref().map(crate::fleet::FleetExport::start).transpose()?;
    let fleet_models = match fleet.as_mut() {
        Some(f) if fleet_models.is_some() => f.follow_models(fleet_keys, Schema::flow(), fleet_running),
        _ => None,
    };
    let suppressions = crate::alert::suppress::Suppressions::load(&config.alerts.suppress_file)?;
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    // A store that cannot be opened is reported and retried; detection does not wait for it.
    let store = if config.store.enabled {
        let store = crate::store::Store::start(&config.store, &hostname)?;
        if store.stats().up {
            info!(path = %config.store.path.display(), "recording history in the embedded store");
        }
        // Conversations idle this long have left the flow table: the minute rows forget them.
        let forget = s.idle_timeout.0 + 2 * s.interval.0;
        Some(crate::store::Recorder::new(store, config.store.max_flow_rows, forget))
    } else {
        None
    };
    let metrics = Metrics::new();
    metrics.set_model(&model_name, &model_sha256);
    metrics.set_phase(phase);
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
    let harvester = Harvester::new(sensor.take_flows()?, harvest_config, sensor::possible_cpus());
    let rules = Blocklist::take_from(sensor.ebpf_mut())?;
    // The first cycle scores every flow with a packet after this instant: taken before the
    // attach, so no packet the program sees is too early to be scored (a late stamp used to
    // skip flows that began while the agent was still setting up).
    let attaching_ns = clock::monotonic_ns();
    // Egress first: when it cannot attach, nothing is attached yet.
    if s.egress {
        sensor.attach_egress(&iface)?;
    } else {
        sensor.drop_pinned_egress()?;
    }
    let mode = match sensor.attach(&iface, s.xdp_mode) {
        Ok(mode) => mode,
        Err(e) => {
            // No half sensor stays behind: the egress hook goes too.
            sensor.detach().ok();
            return Err(e.into());
        }
    };

    let allowlist = Allowlist::new(&config.block.allowlist, config.block.allowlist_host);
    // The fleet blocklist's rules go into the same kernel maps through a handle of their own,
    // past the same allowlist (the host's addresses, gateways and loopback with
    // `allowlist_host`).
    if let Some(fleet) = fleet.as_mut().filter(|f| f.follows())
        && fleet.follow(Box::new(rules.try_clone()?), allowlist.clone())
    {
        info!("following the fleet blocklist");
    }
    let thresholds = detector.thresholds;
    let engine = Engine::new(EngineConfig::from_config(&config, thresholds.alert, allowlist));
    let block_threshold = engine.config().block_threshold;
    let observer = Observer {
        hostname,
        iface: iface.clone(),
        model_sha256: model_sha256.clone(),
        model_phase: phase,
        ruleset: detector.schema.id.clone(),
        block_mode: config.block.mode,
        block_threshold,
        ttl: config.block.ttl.0,
    };
    // The context window holds at most a flow table's worth of flows (memory under a flood).
    let context = ContextWindow::with_capacity(config.detection.context_window.0, s.flow_capacity as usize);
    let learner = if learning {
        Some(Learner::new(config.learn.clone(), detector.schema.clone(), clock::monotonic_ns()))
    } else if phase == Phase::Site && config.learn.enabled {
        // A site model from an earlier run goes on adapting.
        Learner::adapting(config.learn.clone(), detector.schema.clone(), detector.clone(), clock::monotonic_ns())
    } else {
        None
    };
    let scorer = Scorer::new(detector, context);
    info!(
        interval = ?s.interval.0,
        model = config.detection.model,
        phase = phase.name(),
        alert_threshold = thresholds.alert,
        block_threshold,
        block_mode = ?config.block.mode,
        sinks = sinks.stats().iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(","),
        "detecting"
    );
    if config.block.mode != BlockMode::Off {
        let allowed: Vec<String> =
            engine.config().allowlist.entries().iter().map(|(n, why)| format!("{n} ({why})")).collect();
        info!(allowlist = allowed.join(", "), "auto-block allowlist");
    }

    let status = AgentStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        iface: iface.clone(),
        xdp_mode: mode.to_string(),
        egress: s.egress,
        pin_dir: pin_dir.clone(),
        started: clock::rfc3339_millis(clock::wall_ns()),
        model: model_name,
        model_sha256,
        model_phase: phase,
        block_mode: serde_json::to_value(config.block.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        flow_capacity: s.flow_capacity,
        ..AgentStatus::default()
    };
    let kernel = Kernel { flows: harvester, sensor, rules: Box::new(rules) };
    let outputs = Outputs { sinks, observer, flows: flows_out, metrics, run_dir, status, store, fleet };
    let ignored = config.detection.ignore_destinations.clone();
    let mut agent = Agent::new(kernel, scorer, engine, outputs, ignored, attaching_ns);
    if let Some(learner) = learner {
        agent = agent.with_learner(learner);
    }
    agent = agent.with_suppressions(suppressions);
    if let Some(updates) = fleet_models {
        agent = agent.with_fleet_models(updates);
    }

    let mut ticker = tokio::time::interval(s.interval.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let stop = loop {
        tokio::select! {
            _ = ticker.tick() => {
                match agent.cycle(clock::monotonic_ns())?.next {
                    Next::Continue => {}
                    Next::Detached => break "vigil detach",
                    Next::Unpinned => {
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
    let detached = stop == "vigil detach";
    agent.stop(|mut sensor| {
        if sensor.pins().is_some() && !detached {
            // The program keeps counting into the pinned table; the next run exports those flows.
            sensor.release()?;
            Ok(false)
        } else {
            sensor.detach()?;
            Ok(true)
        }
    })?;
    drop(metrics_server);
    Ok(())
}
