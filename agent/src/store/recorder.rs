//! The live path's Record stage: decisions, models, flows and health as store rows.

use std::time::{Duration, Instant};

use super::{ActionRow, AlertRow, FlowRow, HealthRow, ModelRow, Record, Store, aggregate::FlowMinutes};
use crate::{
    alert::sink::Event,
    detect::{Decision, ScoredFlow},
};

/// How often a health snapshot is stored.
pub const HEALTH_EVERY: Duration = Duration::from_mins(1);

/// The store and what the agent keeps for it between cycles.
pub struct Recorder {
    store: Store,
    minutes: FlowMinutes,
    last_health: Option<Instant>,
}

fn ms(wall_ns: u64) -> i64 {
    i64::try_from(wall_ns / 1_000_000).unwrap_or(i64::MAX)
}

impl Recorder {
    /// Records into `store`; a minute holds at most `max_flow_rows` flow rows, conversations
    /// idle for `forget_after` are forgotten.
    #[must_use]
    pub fn new(store: Store, max_flow_rows: usize, forget_after: Duration) -> Self {
        let forget_ns = u64::try_from(forget_after.as_nanos()).unwrap_or(u64::MAX);
        Self { store, minutes: FlowMinutes::new(max_flow_rows, forget_ns), last_health: None }
    }

    #[must_use]
    pub const fn store(&self) -> &Store {
        &self.store
    }

    /// An alert sent to the sinks as `event` with id `id`, rendered by `observer`.
    pub fn alert(&self, decision: &Decision, event: &Event, id: &str, observer: &crate::alert::ecs::Observer) {
        let (source, top) = match decision {
            Decision::SourceAlert(a) => (Some(a.source), &a.top),
            Decision::DestinationAlert(a) => (None, &a.top),
            _ => return,
        };
        let destination = match decision {
            Decision::DestinationAlert(a) => Some(a.destination),
            _ => Some(top.record.dst_ip),
        };
        self.store.record(Record::Alert(Box::new(AlertRow {
            time_ms: ms(event.timestamp_ns),
            event_id: id.to_owned(),
            severity: decision.severity(),
            kind: decision.action().to_owned(),
            source,
            destination,
            destination_port: Some(top.record.dst_port),
            score: Some(top.score.combined),
            model_sha256: observer.model_sha256.clone(),
            model_phase: observer.model_phase.name().to_owned(),
            message: decision.message(),
            document: event.json.clone(),
        })));
    }

    /// A block action (block, unblock, dry run, refusal) sent to the sinks as `event`.
    pub fn action(&self, decision: &Decision, event: &Event) {
        let now_ms = ms(event.timestamp_ns);
        let (source, prefix, origin, expires_ms) = match decision {
            Decision::Blocked { rule, expires_in, .. } => (
                Some(rule.prefix.addr()),
                Some(rule.prefix.to_string()),
                Some(origin(rule.origin)),
                Some(now_ms.saturating_add(i64::try_from(expires_in.as_millis()).unwrap_or(i64::MAX))),
            ),
            Decision::Unblocked { rule, .. } => {
                (Some(rule.prefix.addr()), Some(rule.prefix.to_string()), Some(origin(rule.origin)), None)
            }
            Decision::WouldBlock { source, .. } | Decision::Refused { source, .. } => {
                (Some(*source), Some(ipnet::IpNet::from(*source).to_string()), None, None)
            }
            Decision::SourceAlert(_) | Decision::DestinationAlert(_) => return,
        };
        self.store.record(Record::Action(Box::new(ActionRow {
            time_ms: now_ms,
            action: decision.action().to_owned(),
            source,
            prefix,
            origin,
            expires_ms,
            reason: decision.reason(),
            message: decision.message(),
            document: event.json.clone(),
        })));
    }

    /// The model scoring from now on.
    pub fn model(&self, sha256: &str, name: &str, phase: crate::learn::Phase, now_wall_ns: u64) {
        self.store.record(Record::Model(ModelRow {
            time_ms: ms(now_wall_ns),
            sha256: sha256.to_owned(),
            name: name.to_owned(),
            phase: phase.name().to_owned(),
        }));
    }

    /// The cycle's scored flows into the minute rows; a finished minute goes to the store.
    pub fn flows(&mut self, flows: &[ScoredFlow], alert_threshold: f32, now_mono_ns: u64, now_wall_ns: u64) {
        if let Some(rows) = self.minutes.add(flows, alert_threshold, now_mono_ns, now_wall_ns) {
            self.send_flows(rows);
        }
    }

    fn send_flows(&self, rows: Vec<FlowRow>) {
        if !rows.is_empty() {
            self.store.record(Record::Flows(rows));
        }
    }

    /// Whether a health snapshot is due (the first cycle, then every [`HEALTH_EVERY`]).
    pub fn health_due(&mut self) -> bool {
        let due = self.last_health.is_none_or(|t| t.elapsed() >= HEALTH_EVERY);
        if due {
            self.last_health = Some(Instant::now());
        }
        due
    }

    /// Stores a health snapshot; the store's own drops are filled in here.
    pub fn health(&self, mut row: HealthRow) {
        row.store_dropped = self.store.stats().dropped;
        self.store.record(Record::Health(Box::new(row)));
    }

    /// The agent stops: the current minute's rows and `last` health go in, then the writer
    /// gets up to `timeout` to commit.
    pub fn finish(mut self, last: Option<HealthRow>, timeout: Duration) {
        let rows = self.minutes.take();
        self.send_flows(rows);
        if let Some(row) = last {
            self.health(row);
        }
        self.store.shutdown(timeout);
    }
}

fn origin(origin: crate::block::rules::Origin) -> String {
    origin.name().to_owned()
}
