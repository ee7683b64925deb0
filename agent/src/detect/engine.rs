//! From scored flows to alerts and blocks.
//!
//! Each harvest cycle is one scoring window. Per source address the cycle's flows are
//! aggregated; a source with flows at or above the alert threshold gets an alert, at most one
//! per alert window: anomalies in between are accumulated and reported (with counts) by the
//! next alert, so a flood of thousands of flows is one alert per window, not thousands.
//! Auto-block counts, per source, consecutive cycles whose highest score reaches the block
//! threshold; after `consecutive` of them the source is blocked (or, in dry-run, reported)
//! unless a rail stops it: the allowlist, the cap on active rules, or the limit on new rules
//! per minute. Rules lapse in the kernel at their TTL; the engine removes lapsed rules and
//! reports every block and unblock as an event.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::Duration,
};

use indexmap::IndexMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{
    allowlist::Allowlist,
    decision::{BlockCause, Decision, DestinationAlert, ExplainedFlow, Refusal, Severity, SourceAlert, UnblockCause},
    score::{Explain, ScoredFlow},
};
use crate::{
    block::{
        Rule,
        rules::{BlockError, Lapse, Origin},
        store::RuleStore,
    },
    clock::duration_ns,
    flows::FlowRecord,
};

/// What auto-block does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BlockMode {
    /// Never block.
    #[default]
    Off,
    /// Report what would be blocked, block nothing.
    DryRun,
    /// Install drop rules.
    Enforce,
}

/// Alert and block settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// At most one alert per source per this long.
    pub alert_window: Duration,
    /// Features in an alert's explanation.
    pub top_features: usize,
    /// Alerts raised per cycle at most; the rest wait for the next cycle (a spoofed flood).
    pub max_alerts_per_cycle: usize,
    /// Distinct anomalous flows one source needs in a window for a medium or high alert
    /// (fewer is low), and flows above the block threshold it needs in a cycle for that cycle
    /// to count towards a block.
    pub min_flows: u64,
    /// Distinct sources with anomalous flows to one destination in a window for a
    /// destination alert (a flood from spoofed or many sources, which no single source's
    /// alert shows); 0 turns destination alerts off.
    pub min_sources: usize,
    /// Alerts below this severity are counted, not sent.
    pub min_severity: Severity,
    /// Sources with state at most (alert windows, consecutive counts); new ones are ignored
    /// beyond it and counted.
    pub max_sources: usize,
    pub block_mode: BlockMode,
    /// Consecutive cycles, each with at least `min_flows` flows at or above
    /// `block_threshold`, before a block.
    pub consecutive: u32,
    /// Combined score at which a flow is anomalous (the model's calibrated threshold).
    pub alert_threshold: f32,
    /// Combined score a source's top flow must reach in a cycle to count towards a block.
    pub block_threshold: f32,
    pub ttl: Duration,
    /// Active rules at most (all origins).
    pub max_rules: usize,
    /// New auto-block rules per minute at most.
    pub max_new_per_minute: usize,
    pub allowlist: Allowlist,
}

impl EngineConfig {
    /// The settings of `config`'s `[alerts]` and `[block]` sections for a model whose alert
    /// threshold is `alert_threshold` (the block threshold is `block.margin` above it).
    #[must_use]
    pub fn from_config(config: &crate::config::Config, alert_threshold: f32, allowlist: Allowlist) -> Self {
        Self {
            alert_window: config.alerts.window.0,
            top_features: config.detection.top_features,
            max_alerts_per_cycle: config.alerts.max_per_cycle,
            min_flows: config.alerts.min_flows,
            min_sources: config.alerts.min_sources,
            min_severity: config.alerts.min_severity,
            max_sources: config.alerts.max_sources,
            block_mode: config.block.mode,
            consecutive: config.block.consecutive,
            alert_threshold,
            block_threshold: alert_threshold + config.block.margin,
            ttl: config.block.ttl.0,
            max_rules: config.block.max_rules,
            max_new_per_minute: config.block.max_new_per_minute,
            allowlist,
        }
    }
}

/// Counters of what the engine did (for metrics and `vigil status`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct EngineStats {
    pub alerts: u64,
    /// Alerts below the configured minimum level, counted and not sent.
    pub alerts_suppressed: u64,
    pub blocks: u64,
    pub unblocks: u64,
    pub dry_runs: u64,
    pub refused: u64,
    /// Sources not tracked because `max_sources` was reached.
    pub sources_ignored: u64,
    /// Rule installs the kernel refused (map full, ...).
    pub block_errors: u64,
}

/// A flow within one source's anomalies: source port, destination, destination port,
/// protocol. Open flows are re-scored every cycle; they count once.
type FlowId = (u16, IpAddr, u16, u8);

/// Anomalies of one source since its last alert.
///
/// A source starts as a candidate: counts and the few flows it has, about 100 bytes (a spoofed
/// flood makes one per packet, none of which can reach `min_flows`). Only once it has
/// `min_flows` distinct anomalous flows (one when low alerts are sent) does it get the rest, in
/// [`Promoted`]: the distinct sets and the top flow with the rows that explain it.
#[derive(Clone, Debug, Default)]
struct Pending {
    /// Flow snapshots scored (an open flow counts once per cycle).
    flows: u64,
    /// Distinct anomalous flows.
    anomalous: u64,
    first_ns: u64,
    last_ns: u64,
    /// When (mono ns) the first of these anomalies was seen by the engine.
    opened_ns: u64,
    /// A candidate's anomalous flows with their latest packets and bytes.
    seen: Vec<(FlowId, u64, u64)>,
    /// Set at promotion.
    promoted: Option<Box<Promoted>>,
}

/// What a source's alert reports beyond the counts.
#[derive(Clone, Debug, Default)]
struct Promoted {
    /// Latest packets and bytes of each anomalous flow (capped; beyond it sums are lower bounds).
    counters: HashMap<FlowId, (u64, u64)>,
    destinations: HashSet<IpAddr>,
    ports: HashSet<u16>,
    /// The highest-scoring flow since promotion (the cycle it happened in included): its
    /// record, scores and what explains them (explained only if an alert reports it).
    top: Option<ScoredFlow>,
}

impl Promoted {
    fn note(&mut self, id: FlowId, packets: u64, bytes: u64) {
        let Self { counters, destinations, ports, .. } = self;
        if counters.contains_key(&id) || counters.len() < DISTINCT_CAP {
            counters.insert(id, (packets, bytes));
        }
        if destinations.len() < DISTINCT_CAP {
            destinations.insert(id.1);
        }
        if ports.len() < DISTINCT_CAP {
            ports.insert(id.2);
        }
    }
}

impl Pending {
    /// Counts one anomalous flow; promotes the source when it has `promote_at` of them.
    fn note(&mut self, r: &FlowRecord, promote_at: u64) {
        let id = (r.src_port, r.dst_ip, r.dst_port, r.protocol);
        if let Some(full) = &mut self.promoted {
            self.anomalous += u64::from(!full.counters.contains_key(&id));
            full.note(id, r.packets, r.bytes);
        } else if let Some(known) = self.seen.iter_mut().find(|(k, ..)| *k == id) {
            (known.1, known.2) = (r.packets, r.bytes);
        } else {
            self.anomalous += 1;
            self.seen.push((id, r.packets, r.bytes));
            if self.anomalous >= promote_at {
                let mut full = Promoted::default();
                for (id, packets, bytes) in std::mem::take(&mut self.seen) {
                    full.note(id, packets, bytes);
                }
                self.promoted = Some(Box::new(full));
            }
        }
        self.first_ns = if self.first_ns == 0 { r.first_seen_ns } else { self.first_ns.min(r.first_seen_ns) };
        self.last_ns = self.last_ns.max(r.last_seen_ns);
    }

    fn top_score(&self) -> Option<f32> {
        self.promoted.as_ref()?.top.as_ref().map(|t| t.score.combined)
    }
}

/// Packets the initiator must have sent in a flow at or above the block threshold for that
/// flow alone to make a medium alert.
pub const CONCLUSIVE_PACKETS: u64 = 100;

/// Whether one flow is evidence enough for an alert on its own: at the block threshold, and a
/// substantial flow (a flood of 10,000 packets in 0.1 s is one flow), so that a spoofed
/// flood's one-packet sources stay small candidates.
fn conclusive(f: &ScoredFlow, block_threshold: f32) -> bool {
    f.score.combined >= block_threshold && f.flow.record.packets >= CONCLUSIVE_PACKETS
}

/// Distinct destinations/ports kept per pending alert at most (memory under a scan).
const DISTINCT_CAP: usize = 65_536;

#[derive(Debug, Default)]
struct SourceState {
    last_alert_ns: Option<u64>,
    pending: Pending,
    consecutive: u32,
    /// The last cycle with flows from this source.
    seen_cycle: u64,
    /// Until when (mono ns) a dry-run or refusal was already reported.
    reported_until_ns: u64,
}

/// Distinct sources and ports kept per destination at most: enough to pass
/// `alerts.min_sources` and to show the scale, while 4096 destinations of a flood spread over
/// a whole prefix stay within a few hundred MB (65,536 each would be tens of GB).
const DEST_DISTINCT_CAP: usize = 1024;

/// Anomalies towards one destination since its last destination alert.
#[derive(Debug, Default)]
struct DestPending {
    /// Distinct sources with an anomalous flow to it (at most [`DEST_DISTINCT_CAP`]).
    sources: HashSet<IpAddr>,
    /// Anomalous flows that started in the cycles since (open flows re-scored later are not
    /// counted again).
    new_flows: u64,
    packets: u64,
    bytes: u64,
    ports: HashSet<u16>,
    first_ns: u64,
    last_ns: u64,
    opened_ns: u64,
    top: Option<ScoredFlow>,
}

#[derive(Debug, Default)]
struct DestState {
    last_alert_ns: Option<u64>,
    pending: DestPending,
}

/// Destinations with state at most (a scan of many destinations by many sources).
const MAX_DESTINATIONS: usize = 4096;

/// The alert and auto-block state machine.
pub struct Engine {
    config: EngineConfig,
    /// An index map: entries in one vector, 8-byte indexes in the hash table, which a flood's
    /// churn (tombstones) doubles without doubling the entries.
    sources: IndexMap<IpAddr, SourceState>,
    destinations: HashMap<IpAddr, DestState>,
    /// Mono ns of the auto-block rules installed in the last minute.
    recent_blocks: VecDeque<u64>,
    /// Rules seen in the kernel at the previous cycle.
    known_rules: HashMap<IpNet, Rule>,
    /// Cycles run (stamps the sources each cycle saw).
    cycles: u64,
    pub stats: EngineStats,
}

impl Engine {
    #[must_use]
    pub fn new(config: EngineConfig) -> Self {
        Self {
            config,
            sources: IndexMap::new(),
            destinations: HashMap::new(),
            recent_blocks: VecDeque::new(),
            known_rules: HashMap::new(),
            cycles: 0,
            stats: EngineStats::default(),
        }
    }

    /// Switches to a new model's thresholds (a site model swapped in); sources' streaks of
    /// cycles above the block threshold start again.
    pub fn set_thresholds(&mut self, alert: f32, block: f32) {
        self.config.alert_threshold = alert;
        self.config.block_threshold = block;
        for state in self.sources.values_mut() {
            state.consecutive = 0;
        }
    }

    /// Sets the auto-block mode (the learning phase keeps it in dry-run).
    pub const fn set_block_mode(&mut self, mode: BlockMode) {
        self.config.block_mode = mode;
    }

    /// The rules in the kernel as of the last cycle.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.known_rules.values()
    }

    #[must_use]
    pub const fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The Decide stage, once per cycle at `now_mono_ns`: alerts from the cycle's scored
    /// flows, then (with a rule store) rule upkeep and auto-block decisions. Alerts explain
    /// their worst flow with `explain`.
    ///
    /// # Errors
    /// Reading the rule store failing.
    pub fn decide(
        &mut self,
        now_mono_ns: u64,
        flows: &[ScoredFlow],
        explain: &dyn Explain,
        rules: Option<&mut dyn RuleStore>,
    ) -> Result<Vec<Decision>, BlockError> {
        self.cycles += 1;
        self.track_sources(now_mono_ns, flows);
        let mut decisions = Vec::new();
        self.raise_alerts(now_mono_ns, explain, &mut decisions);
        if self.config.min_sources > 0 {
            self.track_destinations(now_mono_ns, flows);
            self.raise_destination_alerts(now_mono_ns, explain, &mut decisions);
        }
        if let Some(rules) = rules {
            self.sync_rules(now_mono_ns, rules, &mut decisions)?;
            self.auto_block(now_mono_ns, rules, &mut decisions);
        }
        // Forget quiet sources.
        let window = duration_ns(self.config.alert_window);
        self.sources.retain(|_, s| {
            s.consecutive > 0
                || s.pending.anomalous > 0
                || s.last_alert_ns.is_some_and(|t| now_mono_ns.saturating_sub(t) < window)
        });
        Ok(decisions)
    }

    /// Groups the cycle's flows by source: accumulates anomalies and updates consecutive
    /// counts.
    fn track_sources(&mut self, now_mono_ns: u64, flows: &[ScoredFlow]) {
        let (alert, block_threshold) = (self.config.alert_threshold, self.config.block_threshold);
        // Low alerts need the top flow of a source's first anomaly; otherwise no alert is sent
        // before `min_flows`, and a candidate stays small until then.
        let promote_at = if self.config.min_severity <= Severity::Low { 1 } else { self.config.min_flows.max(1) };
        // Indexes sorted by source address, with no allocation per source (a spoofed flood
        // brings a flow table's worth every cycle).
        let mut order: Vec<usize> = (0..flows.len()).collect();
        order.sort_unstable_by_key(|&i| flows[i].flow.record.src_ip);
        let src_of = |i: usize| flows[i].flow.record.src_ip;
        for group in order.chunk_by(|&a, &b| src_of(a) == src_of(b)) {
            let src = src_of(group[0]);
            let combined = |i: &usize| flows[*i].score.combined;
            let anomalous = group.iter().map(combined).fold(f32::MIN, f32::max) >= alert;
            if !anomalous && !self.sources.contains_key(&src) {
                continue;
            }
            if !self.sources.contains_key(&src) && self.sources.len() >= self.config.max_sources {
                self.stats.sources_ignored += 1;
                continue;
            }
            let above_block = group.iter().map(combined).filter(|&s| s >= self.config.block_threshold).count() as u64;
            let state = self.sources.entry(src).or_default();
            state.seen_cycle = self.cycles;
            state.consecutive = if above_block >= self.config.min_flows { state.consecutive + 1 } else { 0 };
            if !anomalous {
                continue;
            }
            let p = &mut state.pending;
            if p.opened_ns == 0 {
                p.opened_ns = now_mono_ns;
            }
            p.flows += group.len() as u64;
            let mut top: Option<usize> = None;
            for &i in group {
                let s = flows[i].score.combined;
                if s >= alert {
                    let at = if conclusive(&flows[i], block_threshold) { 1 } else { promote_at };
                    p.note(&flows[i].flow.record, at);
                    if top.is_none_or(|t| s > flows[t].score.combined) {
                        top = Some(i);
                    }
                }
            }
            // The cycle's top flow (once promoted, even if promotion came with a later flow of
            // this cycle), copied once.
            if let (Some(full), Some(i)) = (&mut p.promoted, top)
                && full.top.as_ref().is_none_or(|t| flows[i].score.combined > t.score.combined)
            {
                full.top = Some(flows[i].clone());
            }
        }
        // Sources absent this cycle lose their streak.
        for state in self.sources.values_mut() {
            if state.seen_cycle != self.cycles {
                state.consecutive = 0;
            }
        }
    }

    /// The severity a source's pending anomalies deserve: fewer than `min_flows` anomalous
    /// flows make a low alert, unless one of them is [`conclusive`].
    fn severity(&self, p: &Pending) -> Severity {
        let block_threshold = self.config.block_threshold;
        let conclusive =
            p.promoted.as_ref().and_then(|f| f.top.as_ref()).is_some_and(|t| conclusive(t, block_threshold));
        let top = p.top_score().unwrap_or(f32::MIN);
        if p.anomalous < self.config.min_flows {
            if conclusive { Severity::Medium } else { Severity::Low }
        } else if top >= self.config.block_threshold {
            Severity::High
        } else {
            Severity::Medium
        }
    }

    /// The worst flow of an alert with its explanation.
    fn explained(&self, top: ScoredFlow, explain: &dyn Explain) -> ExplainedFlow {
        let explanation = explain.explain(&top.evidence, self.config.top_features);
        ExplainedFlow {
            record: top.flow.record,
            back: top.flow.back,
            score: top.score,
            explanation,
            raw: top.evidence.raw,
        }
    }

    /// Alerts for sources whose window is over. Windows run on `now_mono_ns`.
    fn raise_alerts(&mut self, now_mono_ns: u64, explain: &dyn Explain, decisions: &mut Vec<Decision>) {
        let window = duration_ns(self.config.alert_window);
        // Anomalies too weak to report that stayed so for a whole window are let go (counted).
        let min_severity = self.config.min_severity;
        let mut suppressed = 0;
        let severities: HashMap<IpAddr, Severity> =
            self.sources.iter().map(|(ip, s)| (*ip, self.severity(&s.pending))).collect();
        for (ip, state) in &mut self.sources {
            if state.pending.anomalous > 0
                && severities[ip] < min_severity
                && now_mono_ns.saturating_sub(state.pending.opened_ns) >= window
            {
                state.pending = Pending::default();
                suppressed += 1;
            }
        }
        self.stats.alerts_suppressed += suppressed;
        let mut due: Vec<(IpAddr, f32)> = self
            .sources
            .iter()
            .filter(|(ip, s)| {
                s.pending.anomalous > 0
                    && severities[*ip] >= min_severity
                    && s.last_alert_ns.is_none_or(|t| now_mono_ns.saturating_sub(t) >= window)
            })
            .map(|(ip, s)| (*ip, s.pending.top_score().unwrap_or(0.0)))
            .collect();
        // The worst first when the per-cycle cap bites.
        due.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (src, _) in due.into_iter().take(self.config.max_alerts_per_cycle) {
            let state = self.sources.get_mut(&src).expect("due source");
            let pending = std::mem::take(&mut state.pending);
            state.last_alert_ns = Some(now_mono_ns);
            let severity = self.severity(&pending);
            let Some(full) = pending.promoted else { continue };
            let Some(top) = full.top else { continue };
            let (packets, bytes) = full.counters.values().fold((0, 0), |(a, b), (pk, by)| (a + pk, b + by));
            self.stats.alerts += 1;
            decisions.push(Decision::SourceAlert(Box::new(SourceAlert {
                source: src,
                severity,
                flows: pending.flows,
                anomalous_flows: pending.anomalous,
                destinations: full.destinations.len(),
                destination_ports: full.ports.len(),
                packets,
                bytes,
                first_ns: pending.first_ns,
                last_ns: pending.last_ns,
                top: self.explained(top, explain),
                alert_threshold: self.config.alert_threshold,
            })));
        }
    }

    /// Adds this cycle's anomalous flows to their destinations' pending state.
    fn track_destinations(&mut self, now_mono_ns: u64, flows: &[ScoredFlow]) {
        let alert = self.config.alert_threshold;
        for scored in flows {
            if scored.score.combined < alert {
                continue;
            }
            let r = &scored.flow.record;
            if !self.destinations.contains_key(&r.dst_ip) && self.destinations.len() >= MAX_DESTINATIONS {
                continue;
            }
            let p = &mut self.destinations.entry(r.dst_ip).or_default().pending;
            if p.opened_ns == 0 {
                p.opened_ns = now_mono_ns;
            }
            if p.sources.len() < DEST_DISTINCT_CAP {
                p.sources.insert(r.src_ip);
            }
            if p.ports.len() < DEST_DISTINCT_CAP {
                p.ports.insert(r.dst_port);
            }
            if scored.flow.new {
                p.new_flows += 1;
                p.packets += r.packets;
                p.bytes += r.bytes;
            }
            p.first_ns = if p.first_ns == 0 { r.first_seen_ns } else { p.first_ns.min(r.first_seen_ns) };
            p.last_ns = p.last_ns.max(r.last_seen_ns);
            if p.top.as_ref().is_none_or(|t| scored.score.combined > t.score.combined) {
                p.top = Some(scored.clone());
            }
        }
    }

    /// One alert per destination and window once enough distinct sources sent it anomalous
    /// flows; pending state that stays below that for a whole window is let go.
    fn raise_destination_alerts(&mut self, now_mono_ns: u64, explain: &dyn Explain, decisions: &mut Vec<Decision>) {
        let window = duration_ns(self.config.alert_window);
        let min_sources = self.config.min_sources;
        let mut due = Vec::new();
        for (dst, state) in &mut self.destinations {
            let p = &state.pending;
            if p.sources.len() >= min_sources
                && state.last_alert_ns.is_none_or(|t| now_mono_ns.saturating_sub(t) >= window)
            {
                due.push((*dst, std::mem::take(&mut state.pending)));
                state.last_alert_ns = Some(now_mono_ns);
            } else if p.sources.len() < min_sources
                && p.opened_ns > 0
                && now_mono_ns.saturating_sub(p.opened_ns) >= window
            {
                state.pending = DestPending::default();
            }
        }
        for (dst, pending) in due {
            let Some(top) = pending.top else { continue };
            let severity =
                if top.score.combined >= self.config.block_threshold { Severity::High } else { Severity::Medium };
            self.stats.alerts += 1;
            decisions.push(Decision::DestinationAlert(Box::new(DestinationAlert {
                destination: dst,
                severity,
                sources: pending.sources.len(),
                sources_capped: pending.sources.len() >= DEST_DISTINCT_CAP,
                new_flows: pending.new_flows,
                destination_ports: pending.ports.len(),
                packets: pending.packets,
                bytes: pending.bytes,
                first_ns: pending.first_ns,
                last_ns: pending.last_ns,
                top: self.explained(top, explain),
                alert_threshold: self.config.alert_threshold,
            })));
        }
        self.destinations.retain(|_, s| {
            s.pending.opened_ns > 0 || s.last_alert_ns.is_some_and(|t| now_mono_ns.saturating_sub(t) < window)
        });
    }

    /// Brings the engine's view of the rules up to date: removes lapsed rules, and reports
    /// rules that appeared (manual) or vanished (expired, removed) without the engine.
    fn sync_rules(
        &mut self,
        now_mono_ns: u64,
        rules: &mut dyn RuleStore,
        decisions: &mut Vec<Decision>,
    ) -> Result<(), BlockError> {
        // One read of the kernel's rules: lapsed ones are deleted (the kernel already ignores
        // them), the rest are what is active now. A rule gone meanwhile is caught by the diff.
        let mut current = HashMap::new();
        for rule in rules.list()? {
            if !rule.is_active(now_mono_ns) {
                // Deleted only if still the rule read: one re-added meanwhile stays.
                match rules.remove_if_lapsed(&rule) {
                    Ok(Lapse::Replaced(newer)) => {
                        current.insert(newer.prefix, newer);
                        continue;
                    }
                    Ok(Lapse::Removed) => {
                        self.known_rules.remove(&rule.prefix);
                        self.stats.unblocks += 1;
                        decisions.push(Decision::Unblocked { rule, cause: UnblockCause::Expired });
                        continue;
                    }
                    Ok(Lapse::Gone) => continue,
                    // Still there: kept as current and retried next cycle.
                    Err(_) => {}
                }
            }
            current.insert(rule.prefix, rule);
        }
        for (prefix, rule) in &self.known_rules {
            if !current.contains_key(prefix) {
                self.stats.unblocks += 1;
                let cause = if rule.is_active(now_mono_ns) { UnblockCause::Removed } else { UnblockCause::Expired };
                decisions.push(Decision::Unblocked { rule: rule.clone(), cause });
            }
        }
        for (prefix, rule) in &current {
            if !self.known_rules.contains_key(prefix) && rule.origin != Origin::Auto {
                let expires_in = Duration::from_nanos(rule.expires_ns.saturating_sub(now_mono_ns));
                let cause = if rule.origin == Origin::Fleet { BlockCause::Fleet } else { BlockCause::Manual };
                decisions.push(Decision::Blocked { rule: rule.clone(), cause, expires_in });
            }
        }
        self.known_rules = current;
        Ok(())
    }

    /// Blocks the sources that stayed above the block threshold long enough, unless a rail
    /// stops it (allowlist, rule cap, rate limit) or this is a dry run.
    fn auto_block(&mut self, now_mono_ns: u64, rules: &mut dyn RuleStore, decisions: &mut Vec<Decision>) {
        if self.config.block_mode == BlockMode::Off {
            return;
        }
        let minute_ago = now_mono_ns.saturating_sub(duration_ns(Duration::from_mins(1)));
        while self.recent_blocks.front().is_some_and(|&t| t < minute_ago) {
            self.recent_blocks.pop_front();
        }
        let ttl_ns = duration_ns(self.config.ttl);
        let mut ready: Vec<IpAddr> = self
            .sources
            .iter()
            .filter(|(_, s)| s.consecutive >= self.config.consecutive && s.reported_until_ns <= now_mono_ns)
            .map(|(ip, _)| *ip)
            .collect();
        ready.sort();
        for source in ready {
            let prefix = IpNet::from(source);
            if self.known_rules.get(&prefix).is_some_and(|r| r.is_active(now_mono_ns)) {
                continue;
            }
            let refusal = if let Some((net, why)) = self.config.allowlist.reason(source) {
                Some(Refusal::Allowlisted { net, why: why.to_string() })
            } else if self.known_rules.len() >= self.config.max_rules {
                Some(Refusal::RuleCap(self.config.max_rules))
            } else if self.recent_blocks.len() >= self.config.max_new_per_minute {
                Some(Refusal::RateLimit(self.config.max_new_per_minute))
            } else {
                None
            };
            let state = self.sources.get_mut(&source).expect("ready source");
            let consecutive = state.consecutive;
            if let Some(refusal) = refusal {
                // Reported once per TTL, not every cycle.
                state.reported_until_ns = now_mono_ns.saturating_add(ttl_ns);
                self.stats.refused += 1;
                decisions.push(Decision::Refused { source, consecutive, refusal });
                continue;
            }
            if self.config.block_mode == BlockMode::DryRun {
                state.reported_until_ns = now_mono_ns.saturating_add(ttl_ns);
                self.stats.dry_runs += 1;
                decisions.push(Decision::WouldBlock { source, consecutive });
                continue;
            }
            match rules.add(prefix, self.config.ttl, Origin::Auto) {
                Ok(rule) => {
                    self.recent_blocks.push_back(now_mono_ns);
                    self.stats.blocks += 1;
                    let expires_in = Duration::from_nanos(rule.expires_ns.saturating_sub(now_mono_ns));
                    self.known_rules.insert(prefix, rule.clone());
                    decisions.push(Decision::Blocked { rule, cause: BlockCause::Auto { consecutive }, expires_in });
                }
                Err(e) => {
                    state.reported_until_ns = now_mono_ns.saturating_add(duration_ns(Duration::from_secs(10)));
                    self.stats.block_errors += 1;
                    let refusal = Refusal::InstallFailed(e.to_string());
                    decisions.push(Decision::Refused { source, consecutive, refusal });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
mod flood_memory {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        detect::{Scorer, score::tests::detector},
        features::{context::ContextWindow, flow::tests::record},
        flows::harvest::LiveFlow,
    };

    fn status_kib(field: &str) -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").expect("status");
        s.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Not a check: prints where memory goes when a spoofed flood brings 65,536 new sources
    /// every cycle. `cargo test -p vigil --lib flood_memory -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn spoofed_flood_memory() {
        let detector = detector();
        let mut cfg = super::tests::config(detector.thresholds.alert);
        cfg.alert_threshold = detector.thresholds.alert;
        cfg.max_sources = 100_000;
        let mut engine = Engine::new(cfg);
        let mut scorer = Scorer::new(detector, ContextWindow::with_capacity(Duration::from_secs(10), 65_536));
        eprintln!("start: rss {} kB", status_kib("VmRSS"));
        for cycle in 0..12u32 {
            let mono = (1000 + u64::from(cycle)) * 1_000_000_000;
            let flows: Vec<LiveFlow> = (0..65_536u32)
                .map(|i| {
                    let mut r = record(1, 2, 9, 0);
                    r.src_ip = Ipv4Addr::from(0x0a00_0000 + cycle * 65_536 + i).into();
                    r.protocol = 17;
                    r.packets = 1;
                    LiveFlow { record: r, back: None, new: true, first_mono_ns: mono - 1 }
                })
                .collect();
            let before = status_kib("VmRSS");
            let cycle_scores = scorer.score(flows, mono).expect("scored");
            let after_scoring = status_kib("VmRSS");
            let alert = scorer.detector.thresholds.alert;
            let anomalous = cycle_scores.flows.iter().filter(|s| s.score.combined >= alert).count();
            let notices = engine.decide(mono, &cycle_scores.flows, &scorer.detector, None).expect("cycle");
            drop(cycle_scores);
            eprintln!(
                "cycle {cycle}: rss {before} -> scored {after_scoring} -> engine {} kB (hwm {}); anomalous {anomalous}, notices {}, sources {}, context {}",
                status_kib("VmRSS"),
                status_kib("VmHWM"),
                notices.len(),
                engine.sources.len(),
                scorer.context_len()
            );
        }
    }
}
