//! The agent's Prometheus endpoint: sensor counters, harvest and scoring timings, alerts,
//! blocklist and sink activity, served as `OpenMetrics` text on `GET /metrics`.
//!
//! Kernel counters, per-rule drops and sink statistics arrive as running totals; they become
//! counter increments here (the last seen value is kept, and a value lower than before is taken
//! as a restart from zero, as when a map is recreated).

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use agent_common::counters::{Counters, Direction, Malformed};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// What the endpoint answers with: the content type of prometheus-client's text encoder.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const HARVEST_BUCKETS: [f64; 11] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0];
const SCORING_BUCKETS: [f64; 13] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

type Label = [(&'static str, String); 1];
type Labels2 = [(&'static str, String); 2];
type Labels3 = [(&'static str, String); 3];

fn label(key: &'static str, value: &str) -> Label {
    [(key, value.to_owned())]
}

/// Errors of [`Metrics::serve`].
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("serving metrics on {addr}: {source}")]
    Bind { addr: SocketAddr, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("starting the metrics server thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Running totals last seen, to turn them into counter increments.
#[derive(Default)]
struct Seen {
    sensor: Counters,
    /// Per hook, as [`Direction`] indexes them: packets, bytes, malformed.
    directions: [[u64; 3]; Direction::COUNT],
    rules: HashMap<String, u64>,
    /// Per sink: delivered, dropped, failed.
    sinks: HashMap<String, [u64; 3]>,
    /// Per sink with a spool, per class: spooled, replayed, dropped, expired.
    spools: HashMap<String, [[u64; 4]; 2]>,
    /// The fleet export: flows exported, dropped, failed; batches; heartbeats sent, failed;
    /// proposals sent, failed; the follower's installed, would-install, refused, removed, failed;
    /// the model follower's accepted, refused, failed.
    fleet: [u64; 16],
    /// Per store table: written, dropped, failed; and rows expired.
    store: HashMap<&'static str, [u64; 3]>,
    store_expired: u64,
}

/// How much `now` adds to the total last seen as `last`; a lower value is a restart from zero.
fn delta(last: &mut u64, now: u64) -> u64 {
    let added = now.checked_sub(*last).unwrap_or(now);
    *last = now;
    added
}

/// The agent's metrics. Cheap to update from any thread (atomics; running totals behind a mutex).
pub struct Metrics {
    registry: Registry,
    packets: Counter,
    bytes: Counter,
    malformed: Family<Label, Counter>,
    direction_packets: Family<Label, Counter>,
    direction_bytes: Family<Label, Counter>,
    direction_malformed: Family<Label, Counter>,
    flows_created: Counter,
    flow_insert_failures: Counter,
    flow_evictions: Counter,
    blocklist_drops: Counter,
    blocklist_expired: Counter,
    flows_tracked: Gauge,
    flow_table_fill: Gauge<f64, std::sync::atomic::AtomicU64>,
    harvest_duration: Histogram,
    scoring_duration: Histogram,
    flows_scored: Counter,
    alerts: Family<Label, Counter>,
    rules_active: Gauge,
    rule_drops: Family<Label, Counter>,
    block_actions: Family<Label, Counter>,
    sink_events: Family<Labels2, Counter>,
    spool_events: Family<Labels3, Counter>,
    spool_pending: Family<Labels2, Gauge>,
    spool_bytes: Family<Label, Gauge>,
    fleet_flows: Family<Label, Counter>,
    fleet_batches: Counter,
    fleet_heartbeats: Family<Label, Counter>,
    fleet_proposals: Family<Label, Counter>,
    fleet_follow: Family<Label, Counter>,
    fleet_follow_rules: Gauge,
    fleet_models: Family<Label, Counter>,
    model_info: Family<Labels2, Gauge>,
    model_phase: Family<Label, Gauge>,
    alerts_suppressed_by_rule: Family<Label, Counter>,
    model_events: Family<Label, Counter>,
    feedback: Family<Label, Counter>,
    output_failures: Family<Label, Counter>,
    store_rows: Family<Labels2, Counter>,
    store_expired: Counter,
    store_up: Gauge,
    store_size: Gauge,
    seen: Mutex<Seen>,
}

impl Metrics {
    /// Every series registered, label sets of known values created at zero.
    #[must_use]
    #[expect(clippy::too_many_lines, reason = "one registration per series, with its help text")]
    pub fn new() -> Arc<Self> {
        let mut m = Self {
            registry: Registry::with_prefix("vigil"),
            packets: Counter::default(),
            bytes: Counter::default(),
            malformed: Family::default(),
            direction_packets: Family::default(),
            direction_bytes: Family::default(),
            direction_malformed: Family::default(),
            flows_created: Counter::default(),
            flow_insert_failures: Counter::default(),
            flow_evictions: Counter::default(),
            blocklist_drops: Counter::default(),
            blocklist_expired: Counter::default(),
            flows_tracked: Gauge::default(),
            flow_table_fill: Gauge::default(),
            harvest_duration: Histogram::new(HARVEST_BUCKETS),
            scoring_duration: Histogram::new(SCORING_BUCKETS),
            flows_scored: Counter::default(),
            alerts: Family::default(),
            rules_active: Gauge::default(),
            rule_drops: Family::default(),
            block_actions: Family::default(),
            sink_events: Family::default(),
            spool_events: Family::default(),
            spool_pending: Family::default(),
            spool_bytes: Family::default(),
            fleet_flows: Family::default(),
            fleet_batches: Counter::default(),
            fleet_heartbeats: Family::default(),
            fleet_proposals: Family::default(),
            fleet_follow: Family::default(),
            fleet_follow_rules: Gauge::default(),
            fleet_models: Family::default(),
            model_info: Family::default(),
            model_phase: Family::default(),
            alerts_suppressed_by_rule: Family::default(),
            model_events: Family::default(),
            feedback: Family::default(),
            output_failures: Family::default(),
            store_rows: Family::default(),
            store_expired: Counter::default(),
            store_up: Gauge::default(),
            store_size: Gauge::default(),
            seen: Mutex::default(),
        };
        m.zero_known_labels();
        let r = &mut m.registry;
        r.register("packets", "Packets seen by the sensor (both hooks)", m.packets.clone());
        r.register("bytes", "Bytes (frame length) of packets seen by the sensor (both hooks)", m.bytes.clone());
        r.register("malformed_packets", "Malformed packets, passed on, by reason", m.malformed.clone());
        r.register(
            "direction_packets",
            "Packets seen per hook: ingress (XDP) or egress (TC; a GSO send counts as its wire segments)",
            m.direction_packets.clone(),
        );
        r.register("direction_bytes", "Bytes seen per hook (frame length)", m.direction_bytes.clone());
        r.register(
            "direction_malformed_packets",
            "Malformed packets per hook, passed on",
            m.direction_malformed.clone(),
        );
        r.register("flows_created", "Flows created in the kernel flow table", m.flows_created.clone());
        r.register("flow_insert_failures", "Flow inserts the kernel refused", m.flow_insert_failures.clone());
        r.register(
            "flow_evictions",
            "Flows the kernel's LRU evicted from the flow table before a harvest exported them (derived per harvest)",
            m.flow_evictions.clone(),
        );
        r.register("blocklist_drops", "Packets dropped by blocklist rules", m.blocklist_drops.clone());
        r.register("blocklist_expired", "Expired blocklist rules removed by the kernel", m.blocklist_expired.clone());
        r.register("flows_tracked", "Flows in the kernel flow table at the last harvest", m.flows_tracked.clone());
        r.register("flow_table_fill_ratio", "Flow table entries over capacity (0..1)", m.flow_table_fill.clone());
        let (harvest, scoring) = (m.harvest_duration.clone(), m.scoring_duration.clone());
        r.register_with_unit("harvest_duration", "Time to harvest the flow table", Unit::Seconds, harvest);
        r.register_with_unit("scoring_duration", "Time to score one batch of flows", Unit::Seconds, scoring);
        r.register("flows_scored", "Flows scored by the anomaly detector", m.flows_scored.clone());
        r.register("alerts", "Alerts raised, by severity", m.alerts.clone());
        r.register(
            "alerts_suppressed_by_rule",
            "Alerts not sent because a suppression rule (`vigil suppress`) matched them, by rule id",
            m.alerts_suppressed_by_rule.clone(),
        );
        r.register("block_rules_active", "Blocklist rules installed in the kernel", m.rules_active.clone());
        r.register("block_rule_drops", "Packets dropped per blocklist rule", m.rule_drops.clone());
        r.register("block_actions", "Blocklist actions, by outcome", m.block_actions.clone());
        r.register("sink_events", "Events handed to output sinks, by sink and outcome", m.sink_events.clone());
        r.register(
            "sink_spool_events",
            "Records through a sink's on-disk spool, by sink, class (alerts, flows) and outcome (spooled, replayed, \
             dropped when full, expired)",
            m.spool_events.clone(),
        );
        r.register(
            "sink_spool_pending",
            "Records waiting in a sink's spool, by sink and class",
            m.spool_pending.clone(),
        );
        r.register("sink_spool_bytes", "Bytes on disk of a sink's spool", m.spool_bytes.clone());
        r.register(
            "fleet_flows",
            "Conversations through the fleet export, by outcome (exported, dropped: queue full, failed: not taken and \
             not spooled)",
            m.fleet_flows.clone(),
        );
        r.register("fleet_batches_exported", "Flow batches the bus acknowledged", m.fleet_batches.clone());
        r.register("fleet_heartbeats", "Heartbeats to the bus, by outcome", m.fleet_heartbeats.clone());
        r.register(
            "fleet_proposals",
            "Auto-block decisions proposed to the fleet, by outcome (sent: acknowledged, failed: not taken)",
            m.fleet_proposals.clone(),
        );
        r.register(
            "fleet_follow",
            "Fleet blocklist updates this agent applied, by outcome (installed, would_install: dry-run, refused: \
             its own rails, removed, failed)",
            m.fleet_follow.clone(),
        );
        r.register(
            "fleet_follow_rules",
            "Rules from the fleet blocklist in the kernel now",
            m.fleet_follow_rules.clone(),
        );
        r.register(
            "fleet_models",
            "Bundles the fleet's model pointer named, by outcome (accepted: verified and handed to the live path, \
             refused: tampered, unsigned, another key's or not loading, failed: download broken by the bus, retried)",
            m.fleet_models.clone(),
        );
        r.register(
            "output_failures",
            "Writes to a local output that failed and were given up (flow records lost, status file not updated); \
             detection goes on",
            m.output_failures.clone(),
        );
        r.register(
            "model_info",
            "The model bundle scoring flows: name and sha256 of its manifest.json (always 1)",
            m.model_info.clone(),
        );
        r.register("model_phase", "Model phase: learning, site or fixed (1 for the current)", m.model_phase.clone());
        r.register("model_events", "Site models swapped in, held back, or held back as drift", m.model_events.clone());
        r.register(
            "feedback",
            "Analyst verdicts (vigil feedback): applied, or naming an unknown alert",
            m.feedback.clone(),
        );
        r.register(
            "store_rows",
            "Rows for the embedded store, by table and outcome: written, dropped (queue full) or failed (store \
             unusable); detection goes on either way",
            m.store_rows.clone(),
        );
        r.register("store_expired_rows", "Store rows deleted by retention (age or size)", m.store_expired.clone());
        r.register("store_up", "1 while the embedded store is open and its last write worked", m.store_up.clone());
        r.register_with_unit(
            "store_size",
            "Bytes of the store's pages in use (as of the last retention run)",
            Unit::Bytes,
            m.store_size.clone(),
        );
        Arc::new(m)
    }

    /// Known label values start at zero, so their series exist before the first event.
    fn zero_known_labels(&self) {
        for reason in Malformed::ALL {
            let _ = self.malformed.get_or_create(&label("reason", reason.name()));
        }
        for direction in Direction::ALL {
            let l = label("direction", direction.name());
            let _ = self.direction_packets.get_or_create(&l);
            let _ = self.direction_bytes.get_or_create(&l);
            let _ = self.direction_malformed.get_or_create(&l);
        }
        for severity in ["low", "medium", "high"] {
            let _ = self.alerts.get_or_create(&label("severity", severity));
        }
        for event in ["swap", "held_back", "drift"] {
            let _ = self.model_events.get_or_create(&label("event", event));
        }
        for action in ["block", "unblock", "dry_run", "refused"] {
            let _ = self.block_actions.get_or_create(&label("action", action));
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // The state is a set of plain numbers, valid whatever a panicking holder did.
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One hook's kernel counters summed over CPUs, read at each harvest.
    pub fn observe_direction(&self, direction: Direction, counters: &Counters) {
        let mut seen = self.seen();
        let [packets, bytes, malformed] = &mut seen.directions[direction as usize];
        let l = label("direction", direction.name());
        self.direction_packets.get_or_create(&l).inc_by(delta(packets, counters.packets));
        self.direction_bytes.get_or_create(&l).inc_by(delta(bytes, counters.bytes));
        self.direction_malformed.get_or_create(&l).inc_by(delta(malformed, counters.malformed_total()));
    }

    /// Kernel counters summed over CPUs and hooks, read at each harvest.
    pub fn observe_sensor(&self, counters: &Counters) {
        let mut seen = self.seen();
        let last = &mut seen.sensor;
        self.packets.inc_by(delta(&mut last.packets, counters.packets));
        self.bytes.inc_by(delta(&mut last.bytes, counters.bytes));
        for ((reason, last), now) in Malformed::ALL.into_iter().zip(&mut last.malformed).zip(counters.malformed) {
            self.malformed.get_or_create(&label("reason", reason.name())).inc_by(delta(last, now));
        }
        self.flows_created.inc_by(delta(&mut last.flows_created, counters.flows_created));
        self.flow_insert_failures.inc_by(delta(&mut last.flow_insert_failed, counters.flow_insert_failed));
        self.blocklist_drops.inc_by(delta(&mut last.blocklist_drops, counters.blocklist_drops));
        self.blocklist_expired.inc_by(delta(&mut last.blocklist_expired, counters.blocklist_expired));
    }

    /// Flows the LRU evicted since the previous harvest (`flows::harvest::Evictions`).
    pub fn add_flow_evictions(&self, n: u64) {
        self.flow_evictions.inc_by(n);
    }

    /// Flows in the table now, and how full it is.
    #[expect(clippy::cast_precision_loss, reason = "a ratio; flow counts are far below 2^52")]
    pub fn set_flows_tracked(&self, flows: u64, capacity: u64) {
        self.flows_tracked.set(i64::try_from(flows).unwrap_or(i64::MAX));
        let ratio = if capacity == 0 { 0.0 } else { (flows as f64 / capacity as f64).min(1.0) };
        self.flow_table_fill.set(ratio);
    }

    /// One harvest of the flow table took `elapsed`.
    pub fn observe_harvest(&self, elapsed: Duration) {
        self.harvest_duration.observe(elapsed.as_secs_f64());
    }

    /// One batch of `flows` flows was scored in `elapsed`.
    pub fn observe_scoring(&self, flows: usize, elapsed: Duration) {
        self.scoring_duration.observe(elapsed.as_secs_f64());
        self.flows_scored.inc_by(u64::try_from(flows).unwrap_or(u64::MAX));
    }

    /// An alert of `severity` (`low`, `medium`, `high`) was raised.
    pub fn alert(&self, severity: &str) {
        self.alerts.get_or_create(&label("severity", severity)).inc();
    }

    /// An alert suppression rule `rule` kept from the sinks.
    pub fn alert_suppressed(&self, rule: u32) {
        self.alerts_suppressed_by_rule.get_or_create(&label("rule", &rule.to_string())).inc();
    }

    /// The installed blocklist rules, each with its prefix and the packets it dropped so far.
    /// Rules absent from `rules` lose their series.
    pub fn set_rules(&self, rules: &[(String, u64)]) {
        self.rules_active.set(i64::try_from(rules.len()).unwrap_or(i64::MAX));
        let mut seen = self.seen();
        let mut current = HashMap::with_capacity(rules.len());
        for (prefix, drops) in rules {
            let mut last = seen.rules.remove(prefix).unwrap_or(0);
            self.rule_drops.get_or_create(&label("prefix", prefix)).inc_by(delta(&mut last, *drops));
            current.insert(prefix.clone(), last);
        }
        for gone in seen.rules.keys() {
            self.rule_drops.remove(&label("prefix", gone));
        }
        seen.rules = current;
    }

    /// A blocklist action: `block`, `unblock`, `dry_run` or `refused`.
    pub fn block_event(&self, action: &str) {
        self.block_actions.get_or_create(&label("action", action)).inc();
    }

    /// Running totals of sink `name`: events delivered, dropped (queue full) and failed.
    pub fn sink_stats(&self, name: &str, delivered: u64, dropped: u64, failed: u64) {
        let mut seen = self.seen();
        let last = seen.sinks.entry(name.to_owned()).or_default();
        for ((outcome, last), now) in
            ["delivered", "dropped", "failed"].into_iter().zip(last).zip([delivered, dropped, failed])
        {
            let labels = [("sink", name.to_owned()), ("outcome", outcome.to_owned())];
            self.sink_events.get_or_create(&labels).inc_by(delta(last, now));
        }
    }

    /// The fleet export's running totals.
    pub fn fleet(&self, stats: &crate::fleet::FleetStats) {
        let mut seen = self.seen();
        let now = [
            stats.flows_exported,
            stats.flows_dropped,
            stats.flows_failed,
            stats.batches_exported,
            stats.heartbeats_sent,
            stats.heartbeats_failed,
        ];
        let [exported, dropped, failed, batches, sent, unsent, proposed, unproposed, rest @ ..] = &mut seen.fleet;
        let (follow, models) = rest.split_at_mut(5);
        for (outcome, last, now) in
            [("exported", exported, now[0]), ("dropped", dropped, now[1]), ("failed", failed, now[2])]
        {
            self.fleet_flows.get_or_create(&label("outcome", outcome)).inc_by(delta(last, now));
        }
        self.fleet_batches.inc_by(delta(batches, now[3]));
        for (outcome, last, now) in [("sent", sent, now[4]), ("failed", unsent, now[5])] {
            self.fleet_heartbeats.get_or_create(&label("outcome", outcome)).inc_by(delta(last, now));
        }
        for (outcome, last, now) in
            [("sent", proposed, stats.proposals_sent), ("failed", unproposed, stats.proposals_failed)]
        {
            self.fleet_proposals.get_or_create(&label("outcome", outcome)).inc_by(delta(last, now));
        }
        if let Some(f) = &stats.follow {
            let outcomes = ["installed", "would_install", "refused", "removed", "failed"];
            let now = [f.installed, f.would_install, f.refused, f.removed, f.failed];
            for ((outcome, last), now) in outcomes.into_iter().zip(follow.iter_mut()).zip(now) {
                self.fleet_follow.get_or_create(&label("outcome", outcome)).inc_by(delta(last, now));
            }
            self.fleet_follow_rules.set(i64::try_from(f.active).unwrap_or(i64::MAX));
        }
        if let Some(m) = &stats.models {
            let now = [m.accepted, m.refused, m.failed];
            for ((outcome, last), now) in ["accepted", "refused", "failed"].into_iter().zip(models.iter_mut()).zip(now)
            {
                self.fleet_models.get_or_create(&label("outcome", outcome)).inc_by(delta(last, now));
            }
        }
    }

    /// Running totals and levels of sink `name`'s spool.
    pub fn sink_spool(&self, name: &str, stats: &crate::spool::SpoolStats) {
        use crate::spool::Class;
        let mut seen = self.seen();
        let last = seen.spools.entry(name.to_owned()).or_default();
        for (class, last) in Class::ALL.into_iter().zip(last) {
            let c = stats.class(class);
            self.spool_pending
                .get_or_create(&[("sink", name.to_owned()), ("class", class.name().to_owned())])
                .set(i64::try_from(c.pending).unwrap_or(i64::MAX));
            for ((outcome, last), now) in ["spooled", "replayed", "dropped", "expired"]
                .into_iter()
                .zip(last)
                .zip([c.spooled, c.replayed, c.dropped, c.expired])
            {
                let labels =
                    [("sink", name.to_owned()), ("class", class.name().to_owned()), ("outcome", outcome.to_owned())];
                self.spool_events.get_or_create(&labels).inc_by(delta(last, now));
            }
        }
        self.spool_bytes.get_or_create(&label("sink", name)).set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    }

    /// The store's running totals.
    pub fn observe_store(&self, stats: &crate::store::StoreStats, by_table: &[(crate::store::Table, [u64; 3])]) {
        let mut seen = self.seen();
        for (table, now) in by_table {
            let last = seen.store.entry(table.name()).or_default();
            for ((outcome, last), now) in ["written", "dropped", "failed"].into_iter().zip(last).zip(now) {
                let labels = [("table", table.name().to_owned()), ("outcome", outcome.to_owned())];
                self.store_rows.get_or_create(&labels).inc_by(delta(last, *now));
            }
        }
        self.store_expired.inc_by(delta(&mut seen.store_expired, stats.expired));
        self.store_up.set(i64::from(stats.up));
        self.store_size.set(i64::try_from(stats.size_bytes).unwrap_or(i64::MAX));
    }

    /// `n` more failures of local output `output` (`flows`, `status`).
    pub fn output_failed(&self, output: &str, n: u64) {
        self.output_failures.get_or_create(&label("output", output)).inc_by(n);
    }

    /// The model bundle in use: `vigil_model_info{model, sha256} 1`.
    pub fn set_model(&self, model: &str, sha256: &str) {
        self.model_info.clear();
        self.model_info.get_or_create(&[("model", model.to_owned()), ("sha256", sha256.to_owned())]).set(1);
    }

    /// An analyst verdict: `applied`, or `unknown` (an alert this run does not hold).
    pub fn feedback(&self, outcome: &str) {
        self.feedback.get_or_create(&label("outcome", outcome)).inc();
    }

    /// A learning-phase event: `swap`, `held_back` or `drift`.
    pub fn model_event(&self, event: &str) {
        self.model_events.get_or_create(&label("event", event)).inc();
    }

    /// The phase of the model in use: `vigil_model_phase{phase} 1`.
    pub fn set_phase(&self, phase: crate::learn::Phase) {
        self.model_phase.clear();
        self.model_phase.get_or_create(&label("phase", phase.name())).set(1);
    }

    /// The metrics as `OpenMetrics` text (see [`CONTENT_TYPE`]).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and the encoder has no error of its own.
        let _ = encode(&mut text, &self.registry);
        text
    }

    /// Binds `addr` now, so a bad address fails before anything is attached, and serves
    /// `GET /metrics` on a background thread until the returned handle is dropped, with the
    /// default [`Limits`]. Warns when the address is not loopback: the endpoint has no
    /// authentication, and what it shows (rules, sources' drop counts) is for operators.
    ///
    /// # Errors
    /// If the address cannot be bound or the thread not started.
    pub fn serve(self: &Arc<Self>, addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        self.serve_with(addr, Limits::default())
    }

    /// [`Metrics::serve`] with explicit limits.
    ///
    /// # Errors
    /// If the address cannot be bound or the thread not started.
    pub fn serve_with(self: &Arc<Self>, addr: SocketAddr, limits: Limits) -> Result<MetricsServer, MetricsError> {
        let bind = |source: std::io::Error| MetricsError::Bind { addr, source: Box::new(source) };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        if !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "the metrics endpoint listens beyond loopback; it has no authentication: \
                                        restrict it with a firewall or bind 127.0.0.1");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let (metrics, stop2, active2) = (Arc::clone(self), Arc::clone(&stop), Arc::clone(&active));
        let thread = std::thread::Builder::new()
            .name("vigil-metrics".into())
            .spawn(move || accept_loop(&listener, &metrics, &stop2, &active2, limits))?;
        Ok(MetricsServer { local_addr, stop, active, thread: Some(thread) })
    }

    /// The answer to one request line's method and path: status, content type, body.
    fn answer(&self, method: &str, path: &str) -> (u16, &'static str, String) {
        let path = path.split('?').next().unwrap_or_default();
        match (method, path) {
            ("GET", "/metrics") => (200, CONTENT_TYPE, self.encode()),
            (_, "/metrics") => (405, "text/plain", "method not allowed\n".to_owned()),
            _ => (404, "text/plain", "not found; metrics are at /metrics\n".to_owned()),
        }
    }
}

/// Bounds on the metrics endpoint, so idle or slow clients cannot pile up threads.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are answered `503` and closed at once.
    pub max_connections: usize,
    /// Time a connection has to send its request and read the answer.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 16, timeout: Duration::from_secs(5) }
    }
}

/// Longest request head read (request line and headers); a scrape needs a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8192;
/// How often the accept loop looks for a stop request when idle.
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// Accepts until `stop`, one thread per connection while fewer than the limit are `active`.
fn accept_loop(
    listener: &TcpListener,
    metrics: &Arc<Metrics>,
    stop: &AtomicBool,
    active: &Arc<AtomicUsize>,
    limits: Limits,
) {
    while !stop.load(Ordering::Relaxed) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
            Err(e) => {
                tracing::debug!("accepting a metrics connection: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(limits.timeout));
        let _ = stream.set_write_timeout(Some(limits.timeout));
        if active.load(Ordering::Relaxed) >= limits.max_connections {
            // Answered here, without reading: the accept loop never waits on a client for long.
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            respond(stream, 503, "text/plain", "busy\n");
            continue;
        }
        active.fetch_add(1, Ordering::Relaxed);
        let (metrics, active2) = (Arc::clone(metrics), Arc::clone(active));
        let spawned = std::thread::Builder::new().name("vigil-metrics-c".into()).spawn(move || {
            serve_connection(stream, &metrics, limits.timeout);
            active2.fetch_sub(1, Ordering::Relaxed);
        });
        if let Err(e) = spawned {
            // The connection is dropped with the closure; the agent goes on.
            active.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("no thread for a metrics connection: {e}");
        }
    }
}

/// Reads one request head (within `timeout` in all) and answers it.
fn serve_connection(mut stream: TcpStream, metrics: &Metrics, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_REQUEST_HEAD || std::time::Instant::now() > deadline {
            return respond(stream, 431, "text/plain", "request head too large or too slow\n");
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.split(|&b| b == b'\n').next().map(String::from_utf8_lossy).unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let (status, content_type, body) = metrics.answer(method, path);
    respond(stream, status, content_type, &body);
}

fn respond(mut stream: TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if let Err(e) = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())) {
        tracing::debug!("answering a metrics request: {e}");
    }
}

/// The running metrics endpoint; dropping it stops the server and frees the address.
pub struct MetricsServer {
    local_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Connections being served (one thread each).
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Connections being served now, each on its own thread.
    #[must_use]
    pub fn active_connections(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// The address actually bound (the port chosen when asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// `GET path` over HTTP/1.0: status code, head, body.
    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_owned(), body.to_owned())
    }

    #[test]
    fn encodes_observed_values() {
        let m = Metrics::new();
        let mut c = Counters { packets: 10, bytes: 1500, flows_created: 3, blocklist_drops: 2, ..Counters::default() };
        c.count_malformed(Malformed::TcpBadOffset);
        m.observe_sensor(&c);
        m.observe_direction(Direction::Egress, &c);
        m.observe_direction(Direction::Egress, &Counters { packets: 14, ..c });
        m.set_flows_tracked(25, 100);
        m.add_flow_evictions(4);
        m.observe_harvest(Duration::from_millis(3));
        m.observe_scoring(40, Duration::from_micros(300));
        m.alert("high");
        m.block_event("dry_run");
        m.sink_stats("webhook", 7, 1, 2);
        let mut spool = crate::spool::SpoolStats { bytes: 4096, ..Default::default() };
        spool.alerts.spooled = 5;
        spool.alerts.pending = 3;
        spool.flows.dropped = 9;
        m.sink_spool("nats:tls://bus:4222", &spool);
        spool.alerts.replayed = 2;
        m.sink_spool("nats:tls://bus:4222", &spool);
        m.fleet(&crate::fleet::FleetStats {
            flows_exported: 1000,
            batches_exported: 2,
            heartbeats_sent: 3,
            ..Default::default()
        });
        m.fleet(&crate::fleet::FleetStats {
            flows_exported: 1500,
            batches_exported: 3,
            heartbeats_sent: 4,
            proposals_sent: 2,
            follow: Some(crate::fleet::blocking::FollowStats {
                updates: 4,
                installed: 3,
                removed: 1,
                active: 2,
                ..Default::default()
            }),
            models: Some(crate::fleet::models::ModelStats { accepted: 1, refused: 2, failed: 0 }),
            ..Default::default()
        });
        let text = m.encode();
        for line in [
            "vigil_packets_total 10",
            "vigil_bytes_total 1500",
            "vigil_malformed_packets_total{reason=\"tcp_bad_offset\"} 1",
            "vigil_malformed_packets_total{reason=\"eth_truncated\"} 0",
            "vigil_flows_created_total 3",
            "vigil_direction_packets_total{direction=\"egress\"} 14",
            "vigil_direction_packets_total{direction=\"ingress\"} 0",
            "vigil_direction_bytes_total{direction=\"egress\"} 1500",
            "vigil_direction_malformed_packets_total{direction=\"egress\"} 1",
            "vigil_flow_insert_failures_total 0",
            "vigil_flow_evictions_total 4",
            "vigil_blocklist_drops_total 2",
            "vigil_flows_tracked 25",
            "vigil_flow_table_fill_ratio 0.25",
            "vigil_harvest_duration_seconds_bucket{le=\"0.005\"} 1",
            "vigil_harvest_duration_seconds_count 1",
            "vigil_scoring_duration_seconds_bucket{le=\"0.00025\"} 0",
            "vigil_scoring_duration_seconds_bucket{le=\"0.0005\"} 1",
            "vigil_flows_scored_total 40",
            "vigil_alerts_total{severity=\"high\"} 1",
            "vigil_alerts_total{severity=\"low\"} 0",
            "vigil_block_actions_total{action=\"dry_run\"} 1",
            "vigil_sink_events_total{sink=\"webhook\",outcome=\"delivered\"} 7",
            "vigil_sink_events_total{sink=\"webhook\",outcome=\"failed\"} 2",
            "vigil_sink_spool_events_total{sink=\"nats:tls://bus:4222\",class=\"alerts\",outcome=\"spooled\"} 5",
            "vigil_sink_spool_events_total{sink=\"nats:tls://bus:4222\",class=\"alerts\",outcome=\"replayed\"} 2",
            "vigil_sink_spool_events_total{sink=\"nats:tls://bus:4222\",class=\"flows\",outcome=\"dropped\"} 9",
            "vigil_sink_spool_pending{sink=\"nats:tls://bus:4222\",class=\"alerts\"} 3",
            "vigil_sink_spool_bytes{sink=\"nats:tls://bus:4222\"} 4096",
            "vigil_fleet_flows_total{outcome=\"exported\"} 1500",
            "vigil_fleet_batches_exported_total 3",
            "vigil_fleet_heartbeats_total{outcome=\"sent\"} 4",
            "vigil_fleet_proposals_total{outcome=\"sent\"} 2",
            "vigil_fleet_follow_total{outcome=\"installed\"} 3",
            "vigil_fleet_follow_total{outcome=\"removed\"} 1",
            "vigil_fleet_follow_rules 2",
            "vigil_fleet_models_total{outcome=\"accepted\"} 1",
            "vigil_fleet_models_total{outcome=\"refused\"} 2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        assert_eq!(text.matches("vigil_malformed_packets_total{").count(), Malformed::COUNT);
    }

    #[test]
    fn running_totals_become_increments_and_restarts_count_from_zero() {
        let m = Metrics::new();
        for packets in [10, 25, 5] {
            m.observe_sensor(&Counters { packets, ..Counters::default() });
        }
        assert!(m.encode().contains("vigil_packets_total 30\n"));
        for delivered in [4, 9, 9, 2] {
            m.sink_stats("file", delivered, 0, 0);
        }
        assert!(m.encode().contains("vigil_sink_events_total{sink=\"file\",outcome=\"delivered\"} 11\n"));
    }

    #[test]
    fn removed_rules_disappear() {
        let m = Metrics::new();
        m.set_rules(&[("10.0.0.0/8".into(), 5), ("192.0.2.1/32".into(), 1)]);
        m.set_rules(&[("10.0.0.0/8".into(), 12)]);
        let text = m.encode();
        assert!(text.contains("vigil_block_rule_drops_total{prefix=\"10.0.0.0/8\"} 12\n"), "{text}");
        assert!(!text.contains("192.0.2.1/32"), "{text}");
        assert!(text.contains("vigil_block_rules_active 1\n"), "{text}");
    }

    #[test]
    fn model_info_names_the_bundle_and_its_hash() {
        let m = Metrics::new();
        m.set_model("default", "9d2b");
        let text = m.encode();
        assert!(text.contains("vigil_model_info{model=\"default\",sha256=\"9d2b\"} 1\n"), "{text}");
    }

    #[test]
    fn serves_metrics_and_404_elsewhere() {
        let m = Metrics::new();
        m.observe_sensor(&Counters { packets: 1234, ..Counters::default() });
        let server = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let (status, head, body) = get(server.local_addr(), "/metrics");
        assert_eq!(status, 200, "{head}");
        assert!(head.to_ascii_lowercase().contains(&format!("content-type: {CONTENT_TYPE}")), "{head}");
        assert!(body.contains("vigil_packets_total 1234\n"), "{body}");
        assert_eq!(get(server.local_addr(), "/other").0, 404);
        assert_eq!(get(server.local_addr(), "/metrics?x=1").0, 200);
    }

    #[test]
    fn address_in_use_is_an_error_naming_it() {
        let m = Metrics::new();
        let first = m.serve("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = m.serve(first.local_addr()).err().expect("second bind fails");
        assert!(err.to_string().contains(&first.local_addr().to_string()), "{err}");
        drop(first);
    }

    #[test]
    fn idle_connections_are_bounded_and_time_out() {
        let m = Metrics::new();
        let limits = Limits { max_connections: 4, timeout: Duration::from_millis(700) };
        let server = m.serve_with("127.0.0.1:0".parse().unwrap(), limits).unwrap();
        let addr = server.local_addr();
        // 40 clients that connect and say nothing (the review's 300 made 300 threads).
        let idle: Vec<_> = (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.active_connections(), 4, "connection threads are capped");
        // Over the limit: answered busy at once without reading the request, so the client
        // may see the 503 or, when its request was still unread at close, a reset.
        let mut over = std::net::TcpStream::connect(addr).unwrap();
        let _ = write!(over, "GET /metrics HTTP/1.0\r\n\r\n");
        let mut answer = String::new();
        let _ = over.read_to_string(&mut answer);
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert_eq!(server.active_connections(), 4, "no thread for it");
        // The idle ones run out of time; scrapes are served again.
        std::thread::sleep(Duration::from_millis(900));
        assert_eq!(get(addr, "/metrics").0, 200);
        drop(idle);
        drop(server);
        assert!(std::net::TcpStream::connect(addr).is_err(), "dropping the server frees the address");
    }

    #[test]
    fn a_slow_request_is_cut_off() {
        let m = Metrics::new();
        let limits = Limits { max_connections: 4, timeout: Duration::from_millis(500) };
        let server = m.serve_with("127.0.0.1:0".parse().unwrap(), limits).unwrap();
        let mut stream = std::net::TcpStream::connect(server.local_addr()).unwrap();
        let started = std::time::Instant::now();
        // One byte at a time, slower than the deadline allows for the whole head.
        for b in b"GET /metrics HTTP/1.0\r\n" {
            if stream.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(60));
            if started.elapsed() > Duration::from_secs(3) {
                break;
            }
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(3), "cut off near its deadline");
    }

    #[test]
    fn output_failures_are_counted_per_output() {
        let m = Metrics::new();
        m.output_failed("flows", 10);
        m.output_failed("flows", 5);
        m.output_failed("status", 1);
        let text = m.encode();
        assert!(text.contains("vigil_output_failures_total{output=\"flows\"} 15"), "{text}");
        assert!(text.contains("vigil_output_failures_total{output=\"status\"} 1"), "{text}");
    }
}
