//! The live path as stages. Every interval the [`Agent`] runs one cycle:
//!
//! 1. **Harvest** ([`FlowSource`]): flows that leave the table become records for
//!    `--flows-out`; flows with packets since the last cycle are the cycle's live flows.
//! 2. **Score** ([`Scorer`]): each live flow gets a score and its evidence ([`ScoredFlow`]).
//! 3. **Decide** ([`Engine`]): scored flows become [`Decision`]s (alerts, blocks, unblocks,
//!    dry runs, refusals); rules go to the [`RuleStore`].
//! 4. **Deliver**: each decision is rendered once ([`Observer`], ECS) and sent to the sinks,
//!    counted in the metrics and, for block actions, logged.
//!
//! Then [`Agent::observe`] updates metrics, the status file and the periodic log line, each
//! in that one place. The kernel sits behind three seams ([`FlowSource`], [`SensorProbe`],
//! [`RuleStore`]) with in-memory fakes in [`fake`], so a whole cycle runs in unit tests.

pub mod fake;
pub mod seams;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use agent_common::counters::Direction;
use ipnet::IpNet;
use tracing::{debug, info, warn};

pub use self::seams::{FlowSource, SensorProbe};
use crate::{
    alert::{ecs::Observer, sink::Sinks},
    block::{BlockError, RuleStore},
    clock::{self, MonoToWall},
    control::AgentStatus,
    detect::{BlockMode, Decision, Engine, ScoredCycle, ScoredFlow, Scorer, decision::BlockCause},
    flows::{
        EndReason, HarvestReport, biflow::Conversation, harvest::Evictions, harvest::LiveFlow, output::FlowWriter,
    },
    learn::{Learner, Phase, SiteModel, store},
    metrics::Metrics,
    model::onnx::OnnxError,
    sensor::{DirectionCounters, PinState, SensorError},
    throttle::ThrottledLog,
};

/// How often the agent logs a status line, so an operator sees the sensor working even
/// without alerts; also the most often a failing output is logged.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Why a cycle failed: a seam that cannot be read, or the model failing.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error("harvesting flows: {0}")]
    Harvest(#[from] std::io::Error),
    #[error("scoring: {0}")]
    Scoring(#[from] OnnxError),
    #[error("blocklist: {0}")]
    Rules(#[from] BlockError),
    #[error(transparent)]
    Sensor(#[from] SensorError),
}

/// How a cycle ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// `vigil detach` removed the program: stop.
    Detached,
    /// The pinned link was removed while attached, not by `vigil detach`.
    Unpinned,
}

/// What one cycle did, for its caller and for tests.
#[derive(Debug)]
pub struct CycleReport {
    pub harvest: HarvestReport,
    /// Live flows scored.
    pub scored: usize,
    pub decisions: Vec<Decision>,
    pub next: Next,
}

/// A local output (flow records, the status file) that must never stop detection: failures
/// are counted in `vigil_output_failures_total{output}` and logged at most once per
/// [`STATUS_EVERY`], with how many failed since the last log line, and once on recovery.
struct LocalOutput {
    name: &'static str,
    log: ThrottledLog,
}

impl LocalOutput {
    const fn new(name: &'static str) -> Self {
        Self { name, log: ThrottledLog::new(STATUS_EVERY) }
    }

    /// `n` more failures (0 and no error: it worked this cycle), the last with `error`.
    fn failed(&mut self, n: u64, error: Option<String>, metrics: &Metrics) {
        if n == 0 && error.is_none() {
            if let Some(unreported) = self.log.success() {
                info!(output = self.name, failed = unreported, "output recovered");
            }
            return;
        }
        metrics.output_failed(self.name, n);
        if let Some(failed) = self.log.failures(n.max(1), Instant::now()) {
            warn!(
                output = self.name,
                failed,
                error = error.unwrap_or_default(),
                "output failing; detection goes on (counted in vigil_output_failures_total)"
            );
        }
    }
}

/// The kernel side of an agent: where flows come from, what the sensor reports, where rules
/// go.
pub struct Kernel<F, K> {
    pub flows: F,
    pub sensor: K,
    pub rules: Box<dyn RuleStore + Send>,
}

/// Where the agent's results go besides the sinks.
pub struct Outputs {
    pub sinks: Sinks,
    /// How decisions are rendered.
    pub observer: Observer,
    /// `--flows-out`.
    pub flows: Option<FlowWriter>,
    pub metrics: Arc<Metrics>,
    /// Where the status file goes (the agent's private run directory).
    pub run_dir: PathBuf,
    /// The status as of start; cycles fill in the rest.
    pub status: AgentStatus,
    /// The embedded store (`store.enabled`): alerts, actions, flow minutes, models, health.
    pub store: Option<crate::store::Recorder>,
    /// `[fleet]`: flow records and heartbeats to the bus.
    pub fleet: Option<crate::fleet::FleetExport>,
}

impl Outputs {
    /// The sinks' and the fleet export's counters into the metrics; the sinks' for the status.
    fn observe_exports(&self) -> Vec<crate::alert::sink::SinkStats> {
        let sink_stats = self.sinks.stats();
        for st in &sink_stats {
            self.metrics.sink_stats(&st.name, st.delivered, st.dropped, st.failed);
            if let Some(spool) = &st.spool {
                self.metrics.sink_spool(&st.name, spool);
            }
        }
        if let Some(fleet) = &self.fleet {
            let stats = fleet.stats();
            self.metrics.fleet(&stats);
            if let Some(spool) = &stats.spool {
                self.metrics.sink_spool(fleet.name(), spool);
            }
        }
        sink_stats
    }
}

/// Running totals, for the status file and the log line.
#[derive(Debug, Default)]
struct Totals {
    records_exported: usize,
    flows_scored: u64,
    alerts_suppressed: u64,
    evictions: Evictions,
}

/// The live agent: the stages and what they keep between cycles.
pub struct Agent<F, K> {
    kernel: Kernel<F, K>,
    scorer: Scorer,
    engine: Engine,
    outputs: Outputs,
    /// Destinations whose flows are never scored (`detection.ignore_destinations`).
    ignored: Vec<IpNet>,
    flow_capacity: u32,
    /// The previous harvest (mono ns): flows with packets after it are live.
    since_ns: u64,
    totals: Totals,
    flows_output: LocalOutput,
    status_output: LocalOutput,
    last_log: Instant,
    /// The learning phase, when running with the built-in model and learning on.
    learner: Option<Learner>,
    /// Auto-block's mode as configured (the learning phase may hold it in dry-run).
    block_mode: BlockMode,
    /// Alert suppression rules (`vigil suppress`).
    suppressions: Option<crate::alert::suppress::Suppressions>,
    /// Ids for alerts (`event.id`), and the recent alerts that `vigil feedback` may name.
    alerts: AlertLog,
    /// The last cycle's health, for the store (its last row when the agent stops).
    health: Option<crate::store::HealthRow>,
    /// The model last written to the store's models table.
    stored_model: Option<String>,
    /// Bundles the fleet published for this host's group, checked (`[fleet.models]`).
    fleet_models: Option<std::sync::mpsc::Receiver<crate::fleet::models::ModelUpdate>>,
}

/// A conversation that left the flow table: to `--flows-out` and the fleet export.
fn emit(writer: &mut Option<FlowWriter>, fleet: Option<&crate::fleet::FleetExport>, conversation: &Conversation) {
    if writer.is_none() && fleet.is_none() {
        return;
    }
    let record = conversation.record();
    if let Some(w) = writer.as_mut() {
        w.emit(&record);
    }
    if let Some(fleet) = fleet {
        fleet.flow(&record);
    }
}

/// Alerts this run raised, by id: the last [`AlertLog::KEEP`], for analyst feedback.
struct AlertLog {
    /// Random per run, so ids of different runs never meet.
    run: u32,
    seq: u64,
    recent: std::collections::VecDeque<RecentAlert>,
    /// Feedback already acted on (by alert id), and the file's state when last read.
    applied: std::collections::HashSet<String>,
    stamp: Option<crate::model::files::Stamp>,
}

struct RecentAlert {
    id: String,
    source: Option<std::net::IpAddr>,
    flow: crate::learn::FeedbackFlow,
    row: crate::learn::sample::Row,
}

impl AlertLog {
    const KEEP: usize = 4096;

    fn new() -> Self {
        Self {
            run: getrandom::u32().unwrap_or_else(|_| std::process::id()),
            seq: 0,
            recent: std::collections::VecDeque::new(),
            applied: std::collections::HashSet::new(),
            stamp: None,
        }
    }

    /// The next alert's id: the run's tag and a sequence number.
    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{:08x}-{}", self.run, self.seq)
    }
}

impl<F: FlowSource, K: SensorProbe> Agent<F, K> {
    /// An agent whose first cycle sees the flows with packets after `start_mono_ns`.
    #[must_use]
    pub fn new(
        kernel: Kernel<F, K>,
        scorer: Scorer,
        engine: Engine,
        outputs: Outputs,
        ignored: Vec<IpNet>,
        start_mono_ns: u64,
    ) -> Self {
        let flow_capacity = outputs.status.flow_capacity;
        let block_mode = engine.config().block_mode;
        Self {
            kernel,
            scorer,
            engine,
            outputs,
            ignored,
            flow_capacity,
            since_ns: start_mono_ns,
            totals: Totals::default(),
            flows_output: LocalOutput::new("flows"),
            status_output: LocalOutput::new("status"),
            last_log: Instant::now(),
            learner: None,
            block_mode,
            suppressions: None,
            alerts: AlertLog::new(),
            health: None,
            stored_model: None,
            fleet_models: None,
        }
    }

    /// Adds a learner: while learning, the model in use is the built-in one until `learner`
    /// has a validated site model, and auto-block stays a dry run meanwhile unless
    /// `learn.block`; once adapting, it retrains the site model in use.
    #[must_use]
    pub fn with_learner(mut self, learner: Learner) -> Self {
        if !learner.may_block() && self.block_mode == BlockMode::Enforce {
            info!("auto-block is a dry run while learning (learn.block = true lets it act)");
            self.engine.set_block_mode(BlockMode::DryRun);
            self.outputs.observer.block_mode = BlockMode::DryRun;
        }
        self.outputs.observer.model_phase = learner.phase();
        self.outputs.status.model_phase = learner.phase();
        self.learner = Some(learner);
        self
    }

    /// Applies alert suppression rules to every alert from the next cycle on.
    #[must_use]
    pub fn with_suppressions(mut self, suppressions: crate::alert::suppress::Suppressions) -> Self {
        self.suppressions = Some(suppressions);
        self
    }

    /// Runs the bundles `updates` brings (the fleet's model for this host's group) from the
    /// cycle after each arrives; refused bundles are reported there.
    #[must_use]
    pub fn with_fleet_models(mut self, updates: std::sync::mpsc::Receiver<crate::fleet::models::ModelUpdate>) -> Self {
        self.fleet_models = Some(updates);
        self
    }

    /// The phase of the model in use.
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.outputs.observer.model_phase
    }

    #[must_use]
    pub const fn engine(&self) -> &Engine {
        &self.engine
    }

    /// One cycle at `now_mono_ns`: harvest, score, decide, deliver, observe.
    ///
    /// # Errors
    /// [`CycleError`] if a seam cannot be read or the model fails.
    pub fn cycle(&mut self, now_mono_ns: u64) -> Result<CycleReport, CycleError> {
        let (harvest, live) = self.harvest(now_mono_ns)?;
        let scored = self.scorer.score(live, now_mono_ns)?;
        let decisions = self.decide(now_mono_ns, &scored.flows)?;
        let now_wall_ns = MonoToWall::now().wall_ns(now_mono_ns);
        self.deliver(&decisions, now_wall_ns);
        self.learn(now_mono_ns, now_wall_ns, &scored.flows, &decisions);
        self.fleet_model(now_wall_ns);
        self.record(now_mono_ns, now_wall_ns, &scored.flows);
        let counters = self.kernel.sensor.counters()?;
        self.observe(&harvest, &scored, &counters, now_wall_ns);
        let next = match self.kernel.sensor.pin_state() {
            PinState::Intact => Next::Continue,
            PinState::Detached => Next::Detached,
            PinState::Unpinned => Next::Unpinned,
        };
        Ok(CycleReport { harvest, scored: scored.flows.len(), decisions, next })
    }

    /// Harvest: leaving flows to `--flows-out`, live flows (minus ignored destinations) out.
    fn harvest(&mut self, now_mono_ns: u64) -> Result<(HarvestReport, Vec<LiveFlow>), CycleError> {
        let mut live = Vec::new();
        let (writer, fleet) = (&mut self.outputs.flows, &self.outputs.fleet);
        let report = self.kernel.flows.harvest(
            now_mono_ns,
            Some(self.since_ns),
            &mut |conversation| emit(writer, fleet.as_ref(), &conversation),
            &mut |flow| live.push(flow),
        )?;
        self.since_ns = now_mono_ns;
        live.retain(|f| !self.ignored.iter().any(|n| n.contains(&f.record.dst_ip)));
        if let Some(w) = self.outputs.flows.as_mut() {
            w.end_batch();
            let failures = w.take_failures();
            let error = failures.last_error.map(|e| e.to_string());
            self.flows_output.failed(failures.records, error, &self.outputs.metrics);
        }
        self.totals.records_exported += report.idle + report.active;
        Ok((report, live))
    }

    /// Decide: the engine's decisions on the scored flows; rules go to the rule store.
    fn decide(&mut self, now_mono_ns: u64, flows: &[ScoredFlow]) -> Result<Vec<Decision>, BlockError> {
        self.engine.decide(now_mono_ns, flows, &self.scorer.detector, Some(self.kernel.rules.as_mut()))
    }

    /// Record: the cycle's flows into the store's minute aggregates (alerts and actions are
    /// recorded as they are delivered, the health as it is observed).
    fn record(&mut self, now_mono_ns: u64, now_wall_ns: u64, flows: &[ScoredFlow]) {
        if let Some(store) = self.outputs.store.as_mut() {
            store.flows(flows, self.scorer.detector.thresholds.alert, now_mono_ns, now_wall_ns);
        }
    }

    /// Keeps what feedback on alert `id` needs: its source and its top flow's row.
    fn remember(&mut self, decision: &Decision, id: &str, now_wall_ns: u64) {
        let (source, top) = match decision {
            Decision::SourceAlert(a) => (Some(a.source), &a.top),
            Decision::DestinationAlert(d) => (None, &d.top),
            _ => return,
        };
        let flow = crate::learn::FeedbackFlow {
            source: top.record.src_ip,
            hour: clock::utc_hour(now_wall_ns),
            protocol: top.record.protocol,
            port: top.record.dst_port,
        };
        if self.alerts.recent.len() == AlertLog::KEEP {
            self.alerts.recent.pop_front();
        }
        self.alerts.recent.push_back(RecentAlert { id: id.to_owned(), source, flow, row: top.raw });
    }

    /// Analysts' verdicts (`vigil feedback`) since the last look: a false positive's source
    /// goes back into the learning sample with its top flow.
    fn feedback(&mut self) {
        let Some(learner) = self.learner.as_mut() else { return };
        let dir = learner.dir().to_owned();
        let stamp = crate::model::files::stamp(&dir.join(store::FEEDBACK));
        if stamp.is_none() || stamp == self.alerts.stamp {
            return;
        }
        self.alerts.stamp = stamp;
        let verdicts = match store::read_feedback(&dir) {
            Ok(v) => v,
            Err(e) => {
                warn!(error = e, "analyst feedback not read");
                return;
            }
        };
        for v in verdicts {
            if !self.alerts.applied.insert(v.id.clone()) {
                continue;
            }
            if let Some(a) = self.alerts.recent.iter().find(|a| a.id == v.id) {
                learner.false_positive(&a.id, a.source, &a.flow, &a.row);
                self.outputs.metrics.feedback("applied");
                info!(alert = v.id, source = ?a.source, "analyst feedback: false positive; its flow joins the learning sample");
            } else {
                self.outputs.metrics.feedback("unknown");
                warn!(
                    alert = v.id,
                    "analyst feedback names an alert this run does not hold (another run, or older than the last 4096)"
                );
            }
        }
    }

    /// Learn: the cycle's ordinary conversations go to the learning sample (the sources it
    /// alerted or acted on leave it); a validated site model is swapped in, after this cycle's
    /// decisions went out under the model that made them.
    fn learn(&mut self, now_mono_ns: u64, now_wall_ns: u64, flows: &[ScoredFlow], decisions: &[Decision]) {
        self.feedback();
        let Some(learner) = self.learner.as_mut() else { return };
        let acted_on: Vec<std::net::IpAddr> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::SourceAlert(a) => Some(a.source),
                Decision::Blocked { rule, .. } => Some(rule.prefix.addr()),
                Decision::WouldBlock { source, .. } | Decision::Refused { source, .. } => Some(*source),
                Decision::DestinationAlert(_) | Decision::Unblocked { .. } => None,
            })
            .collect();
        learner.observe(flows, &acted_on, self.scorer.detector.thresholds.alert, clock::utc_hour(now_wall_ns));
        if let Some(site) = learner.operator_choice() {
            self.swap_in(site, now_wall_ns);
        }
        let Some(learner) = self.learner.as_mut() else { return };
        match learner.poll(now_mono_ns) {
            Some(Ok(site)) => self.swap_in(site, now_wall_ns),
            Some(Err(report)) => self.held_back(&report, now_wall_ns),
            None => {}
        }
        if let Some(learner) = &self.learner {
            self.outputs.status.learn = Some(learner.status(now_mono_ns));
        }
    }

    /// The fleet's model: a bundle that arrived since the last cycle is swapped in (and the
    /// learning phase, if any, ends: the fleet decides this host's model now); a refused one
    /// is reported and the model in use stays.
    fn fleet_model(&mut self, now_wall_ns: u64) {
        use crate::fleet::models::ModelUpdate;
        let Some(updates) = &self.fleet_models else { return };
        let Ok(update) = updates.try_recv() else { return };
        match update {
            ModelUpdate::Ready { accepted, group } => {
                if accepted.sha256 == self.outputs.observer.model_sha256 {
                    return;
                }
                if self.learner.take().is_some() {
                    info!(group, "the fleet's model replaces the learning phase");
                    self.outputs.status.learn = None;
                }
                let previous = self.outputs.observer.model_sha256.clone();
                let name = format!("fleet:{group}");
                info!(model = name, sha256 = accepted.sha256, key = %accepted.key, "fleet model swapped in");
                let message = format!(
                    "fleet model {} of group {group} swapped in (was {})",
                    store::short(&accepted.sha256),
                    store::short(&previous)
                );
                let details = serde_json::json!({
                    "previous_sha256": previous,
                    "group": group,
                    "signed_by": accepted.key.to_string(),
                });
                self.put_to_work(accepted.detector, &accepted.sha256, &name, Phase::Fleet);
                self.outputs.metrics.model_event("fleet_swap");
                self.outputs.sinks.send(&self.outputs.observer.model_event(
                    "model-swap",
                    &message,
                    &details,
                    now_wall_ns,
                ));
            }
            ModelUpdate::Refused { sha256, group, why } => {
                self.outputs.metrics.model_event("fleet_refused");
                let message = format!("fleet model {} of group {group} refused: {why}", store::short(&sha256));
                let details = serde_json::json!({ "refused_sha256": sha256, "group": group, "why": why });
                self.outputs.sinks.send(&self.outputs.observer.model_event(
                    "model-refused",
                    &message,
                    &details,
                    now_wall_ns,
                ));
            }
        }
    }

    /// Puts a validated site model to work, and reports it.
    fn swap_in(&mut self, site: SiteModel, now_wall_ns: u64) {
        let SiteModel { detector, sha256, dir, report } = site;
        let previous = self.outputs.observer.model_sha256.clone();
        let name = dir.as_ref().map_or_else(|| "site".to_owned(), |d| d.display().to_string());
        let alert = detector.thresholds.alert;
        self.put_to_work(detector, &sha256, &name, Phase::Site);
        info!(
            model = name,
            sha256,
            rows = report.rows,
            hours = report.hours,
            holdout_alert_rate = report.holdout_alert_rate,
            train_seconds = report.train_seconds,
            alert_threshold = alert,
            "site model swapped in: scoring with the model learnt on this host"
        );
        self.outputs.metrics.model_event("swap");
        let message = format!("site model {} swapped in (was {})", store::short(&sha256), store::short(&previous));
        let details = serde_json::json!({ "previous_sha256": previous, "validation": report });
        self.outputs.sinks.send(&self.outputs.observer.model_event("model-swap", &message, &details, now_wall_ns));
    }

    /// Puts a model to work: scores, thresholds (the block threshold keeps its margin above the
    /// alert threshold), auto-block as configured, and its name, hash and phase in alerts,
    /// metrics and the status file.
    fn put_to_work(&mut self, detector: crate::model::Detector, sha256: &str, name: &str, phase: Phase) {
        let config = self.engine.config();
        let margin = config.block_threshold - config.alert_threshold;
        let alert = detector.thresholds.alert;
        self.engine.set_thresholds(alert, alert + margin);
        self.engine.set_block_mode(self.block_mode);
        self.scorer.detector = detector;
        let observer = &mut self.outputs.observer;
        sha256.clone_into(&mut observer.model_sha256);
        observer.model_phase = phase;
        observer.block_mode = self.block_mode;
        observer.block_threshold = alert + margin;
        self.outputs.metrics.set_model(name, sha256);
        self.outputs.metrics.set_phase(phase);
        let status = &mut self.outputs.status;
        name.clone_into(&mut status.model);
        sha256.clone_into(&mut status.model_sha256);
        status.model_phase = phase;
    }

    /// Reports a site model held back (too few rows or hours, too many alerts, or drift) to
    /// the metrics and the sinks; the model in use stays.
    fn held_back(&self, report: &crate::learn::Validation, now_wall_ns: u64) {
        let (event, action) = if report.drift { ("drift", "model-drift") } else { ("held_back", "model-held-back") };
        self.outputs.metrics.model_event(event);
        let message = format!("site model held back: {}", report.refused.as_deref().unwrap_or("validation failed"));
        let details = serde_json::json!({ "validation": report });
        self.outputs.sinks.send(&self.outputs.observer.model_event(action, &message, &details, now_wall_ns));
    }

    /// Deliver: each decision rendered once, sent to the sinks, counted; block actions
    /// logged.
    fn deliver(&mut self, decisions: &[Decision], now_wall_ns: u64) {
        let now_ms = now_wall_ns / 1_000_000;
        if let Some(s) = self.suppressions.as_mut() {
            s.refresh();
        }
        for decision in decisions {
            if decision.is_alert() {
                if let Some(rule) = self.suppressions.as_mut().and_then(|s| s.suppress(decision, now_ms)) {
                    self.outputs.metrics.alert_suppressed(rule);
                    continue;
                }
                let id = self.alerts.next_id();
                if self.learner.is_some() {
                    self.remember(decision, &id, now_wall_ns);
                }
                self.outputs.metrics.alert(decision.severity().name());
                let event = self.outputs.observer.alert_event(decision, &id, now_wall_ns);
                self.outputs.sinks.send(&event);
                if let Some(store) = &self.outputs.store {
                    store.alert(decision, &event, &id, &self.outputs.observer);
                }
                continue;
            }
            let metrics = &self.outputs.metrics;
            match decision {
                Decision::Blocked { .. } => metrics.block_event("block"),
                Decision::Unblocked { .. } => metrics.block_event("unblock"),
                Decision::WouldBlock { .. } => metrics.block_event("dry_run"),
                Decision::Refused { .. } => metrics.block_event("refused"),
                Decision::SourceAlert(_) | Decision::DestinationAlert(_) => {}
            }
            info!(action = decision.action(), message = decision.message(), "response");
            // The agent's own block decisions go to the fleet (`[fleet.blocking] propose`).
            if let (Decision::Blocked { rule, cause: BlockCause::Auto { .. }, expires_in }, Some(fleet)) =
                (decision, &self.outputs.fleet)
            {
                fleet.propose(crate::fleet::blocking::Proposal {
                    schema: crate::fleet::blocking::SCHEMA,
                    prefix: rule.prefix,
                    ttl_s: expires_in.as_secs().max(1),
                    decided_ms: now_ms,
                    reason: decision.reason().unwrap_or_default(),
                });
            }
            let event = self.outputs.observer.event(decision, now_wall_ns);
            self.outputs.sinks.send(&event);
            if let Some(store) = &self.outputs.store {
                store.action(decision, &event);
            }
        }
    }

    /// Metrics, the status file and the periodic log line, each updated here and only here.
    fn observe(
        &mut self,
        harvest: &HarvestReport,
        scored: &ScoredCycle,
        by_direction: &DirectionCounters,
        now_wall_ns: u64,
    ) {
        let counters = &by_direction.total();
        let metrics = &self.outputs.metrics;
        let stats = self.engine.stats;
        // Alerts below `alerts.min_severity` are counted as low alerts, not sent.
        for _ in self.totals.alerts_suppressed..stats.alerts_suppressed {
            metrics.alert("low");
        }
        self.totals.alerts_suppressed = stats.alerts_suppressed;
        self.totals.flows_scored += scored.flows.len() as u64;
        metrics.observe_sensor(counters);
        for direction in Direction::ALL {
            metrics.observe_direction(direction, by_direction.of(direction));
        }
        metrics.add_flow_evictions(self.totals.evictions.update(harvest, counters.flows_created));
        metrics.set_flows_tracked(harvest.tracked as u64, u64::from(self.flow_capacity));
        metrics.observe_harvest(harvest.elapsed);
        metrics.observe_scoring(scored.flows.len(), scored.elapsed);
        let rules: Vec<(String, u64)> = self.engine.rules().map(|r| (r.prefix.to_string(), r.drops)).collect();
        metrics.set_rules(&rules);
        let sink_stats = self.outputs.observe_exports();
        let health = crate::store::HealthRow {
            time_ms: i64::try_from(now_wall_ns / 1_000_000).unwrap_or(i64::MAX),
            packets: counters.packets,
            bytes: counters.bytes,
            malformed: counters.malformed_total(),
            blocklist_drops: counters.blocklist_drops,
            flows_tracked: harvest.tracked as u64,
            flow_capacity: u64::from(self.flow_capacity),
            harvest_ms: harvest.elapsed.as_secs_f64() * 1e3,
            scoring_ms: scored.elapsed.as_secs_f64() * 1e3,
            flows_scored: self.totals.flows_scored,
            alerts: stats.alerts,
            rules_active: rules.len() as u64,
            model_sha256: self.outputs.observer.model_sha256.clone(),
            model_phase: self.outputs.observer.model_phase.name().to_owned(),
            store_dropped: 0,
        };
        if let Some(store) = self.outputs.store.as_mut() {
            let model = &self.outputs.observer;
            if self.stored_model.as_deref() != Some(model.model_sha256.as_str()) {
                store.model(&model.model_sha256, &self.outputs.status.model, model.model_phase, now_wall_ns);
                self.stored_model = Some(model.model_sha256.clone());
            }
            if store.health_due() {
                store.health(health.clone());
            }
            let stats = store.store().stats();
            metrics.observe_store(&stats, &store.store().counters().by_table());
            self.outputs.status.store = Some(stats);
        }
        self.health = Some(health);
        debug!(
            tracked = harvest.tracked,
            live = scored.flows.len(),
            harvest_us = harvest.elapsed.as_micros(),
            scoring_us = scored.elapsed.as_micros(),
            "cycle"
        );

        let st = &mut self.outputs.status;
        st.suppression = self.suppressions.as_ref().map(|s| crate::control::SuppressionStatus {
            rules_active: s.active(now_wall_ns / 1_000_000),
            suppressed: s.suppressed.clone(),
        });
        st.updated = clock::rfc3339_millis(now_wall_ns);
        st.flows_tracked = harvest.tracked;
        st.flow_evictions = self.totals.evictions.total;
        st.last_harvest_ms = harvest.elapsed.as_secs_f64() * 1e3;
        st.last_scoring_ms = scored.elapsed.as_secs_f64() * 1e3;
        st.flows_scored = self.totals.flows_scored;
        st.engine = stats;
        st.sinks = sink_stats;
        st.fleet = self.outputs.fleet.as_ref().map(crate::fleet::FleetExport::stats);
        if let Some(fleet) = &self.outputs.fleet {
            fleet.status(&*st, self.health.as_ref());
        }
        let written = st.write(&self.outputs.run_dir);
        self.status_output.failed(u64::from(written.is_err()), written.err().map(|e| e.to_string()), metrics);

        if self.last_log.elapsed() >= STATUS_EVERY {
            self.last_log = Instant::now();
            info!(
                packets = counters.packets,
                bytes = counters.bytes,
                malformed = counters.malformed_total(),
                flows_tracked = harvest.tracked,
                records_exported = self.totals.records_exported,
                flows_scored = self.totals.flows_scored,
                alerts = stats.alerts,
                blocks = stats.blocks,
                blocklist_drops = counters.blocklist_drops,
                "status"
            );
        }
    }

    /// Stops. `release` lets the sensor go (detached, or left pinned for the next run) and
    /// answers whether the flows left in the table must be flushed now (nothing will count
    /// them any more); then outputs are closed and the status file removed. Answers the
    /// records flushed.
    ///
    /// # Errors
    /// `release` failing, or the flow source not being readable for the flush.
    pub fn stop(self, release: impl FnOnce(K) -> Result<bool, SensorError>) -> Result<usize, CycleError> {
        let Self { kernel, mut outputs, engine, health, .. } = self;
        let Kernel { flows: mut source, sensor, rules } = kernel;
        drop(rules);
        let flush = release(sensor)?;
        let mut flushed = 0;
        if flush {
            let (writer, fleet) = (&mut outputs.flows, &outputs.fleet);
            flushed = source.flush(EndReason::Shutdown, &mut |conversation: Conversation| {
                emit(writer, fleet.as_ref(), &conversation);
            })?;
        }
        if let Some(w) = outputs.flows.as_mut() {
            w.end_batch();
            if w.failed() > 0 {
                warn!(lost = w.failed(), "flow records lost to output failures while running");
            }
        }
        outputs.sinks.shutdown(Duration::from_secs(5));
        if let Some(fleet) = outputs.fleet.take() {
            fleet.shutdown(Duration::from_secs(5));
        }
        if let Some(store) = outputs.store.take() {
            store.finish(health, Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(outputs.run_dir.join(crate::control::STATUS_FILE));
        info!(
            flushed,
            records = outputs.flows.as_ref().map_or(0, FlowWriter::written),
            alerts = engine.stats.alerts,
            "stopped"
        );
        Ok(flushed)
    }
}

#[cfg(test)]
mod tests;
