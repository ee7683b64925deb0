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
use serde_json::{Value, json};

use super::{
    allowlist::Allowlist,
    live::{CycleScores, Evidence},
};
use crate::clock::rfc3339_millis;
use crate::{
    block::{
        Blocklist, Rule,
        rules::{BlockError, Lapse, Origin},
    },
    flows::{FlowRecord, harvest::LiveFlow},
    model::Detector,
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
    /// Alerts below this level are counted, not sent.
    pub min_level: Level,
    /// Sources with state at most (alert windows, consecutive counts); new ones are ignored
    /// beyond it and counted.
    pub max_sources: usize,
    pub block_mode: BlockMode,
    /// Consecutive cycles, each with at least `min_flows` flows at or above
    /// `block_threshold`, before a block.
    pub consecutive: u32,
    /// Combined score a source's top flow must reach in a cycle to count towards a block.
    pub block_threshold: f32,
    pub ttl: Duration,
    /// Active rules at most (all origins).
    pub max_rules: usize,
    /// New auto-block rules per minute at most.
    pub max_new_per_minute: usize,
    pub allowlist: Allowlist,
    /// Interface the sensor watches (for `observer.ingress.interface.name`).
    pub iface: String,
    pub hostname: String,
    /// sha256 of the model bundle's `manifest.json`, in every event as `vigil.model.sha256`.
    pub model_sha256: String,
}

/// Severity of an event, in ECS (numeric) and syslog terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Block and unblock events.
    Info,
    /// Fewer than `min_flows` anomalous flows from the source in the window.
    Low,
    /// At least `min_flows` anomalous flows from one source in a window.
    Medium,
    /// As medium, and the top flow is above the block threshold.
    High,
}

impl Level {
    /// `event.severity` (Elastic's scale: low 21, medium 47, high 73).
    #[must_use]
    pub const fn ecs(self) -> u8 {
        match self {
            Self::Info => 0,
            Self::Low => 21,
            Self::Medium => 47,
            Self::High => 73,
        }
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// What kind of event: an alert or a block action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Alert,
    /// Many sources, one destination.
    DestinationAlert,
    Block,
    Unblock,
    DryRun,
    Refused,
}

impl Kind {
    /// `event.action`.
    #[must_use]
    pub const fn action(self) -> &'static str {
        match self {
            Self::Alert => "anomalous-flows",
            Self::DestinationAlert => "anomalous-flows-to-destination",
            Self::Block => "block",
            Self::Unblock => "unblock",
            Self::DryRun => "block-dry-run",
            Self::Refused => "block-refused",
        }
    }
}

/// One event for the sinks.
#[derive(Clone, Debug)]
pub struct Notice {
    pub kind: Kind,
    pub level: Level,
    /// The ECS document.
    pub doc: Value,
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
    top: Option<(FlowRecord, crate::model::detector::Score, Evidence)>,
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
        self.promoted.as_ref()?.top.as_ref().map(|(_, s, _)| s.combined)
    }
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
    top: Option<(FlowRecord, crate::model::detector::Score, Evidence)>,
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

    /// The rules in the kernel as of the last cycle.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> {
        self.known_rules.values()
    }

    #[must_use]
    pub const fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Runs one cycle: alerts from `scores`, then auto-block decisions and rule upkeep on
    /// `blocklist` (if the sensor has one), at `now_mono_ns`/`now_wall_ns`.
    ///
    /// # Errors
    /// Reading the blocklist failing.
    pub fn cycle<T: std::borrow::BorrowMut<aya::maps::MapData>>(
        &mut self,
        now_mono_ns: u64,
        now_wall_ns: u64,
        flows: &[LiveFlow],
        scores: &CycleScores,
        detector: &Detector,
        blocklist: Option<&mut Blocklist<T>>,
    ) -> Result<Vec<Notice>, BlockError> {
        let thresholds = detector.thresholds;
        // Low alerts need the top flow of a source's first anomaly; otherwise no alert is sent
        // before `min_flows`, and a candidate stays small until then.
        let promote_at = if self.config.min_level <= Level::Low { 1 } else { self.config.min_flows.max(1) };
        // The cycle's flows grouped by source: indexes sorted by source address, with no
        // allocation per source (a spoofed flood brings a flow table's worth every cycle).
        let mut order: Vec<usize> = (0..flows.len().min(scores.len())).collect();
        order.sort_unstable_by_key(|&i| flows[i].record.src_ip);
        self.cycles += 1;
        let mut notices = Vec::new();

        // Accumulate anomalies and update consecutive counts.
        for group in order.chunk_by(|&a, &b| flows[a].record.src_ip == flows[b].record.src_ip) {
            let src = &flows[group[0]].record.src_ip;
            let combined = |i: &usize| scores.scores[*i].combined;
            let anomalous = group.iter().map(combined).fold(f32::MIN, f32::max) >= thresholds.alert;
            if !anomalous && !self.sources.contains_key(src) {
                continue;
            }
            if !self.sources.contains_key(src) && self.sources.len() >= self.config.max_sources {
                self.stats.sources_ignored += 1;
                continue;
            }
            let above_block = group.iter().map(combined).filter(|&s| s >= self.config.block_threshold).count() as u64;
            let state = self.sources.entry(*src).or_default();
            state.seen_cycle = self.cycles;
            state.consecutive = if above_block >= self.config.min_flows { state.consecutive + 1 } else { 0 };
            if anomalous {
                let p = &mut state.pending;
                if p.opened_ns == 0 {
                    p.opened_ns = now_mono_ns;
                }
                p.flows += group.len() as u64;
                let mut top: Option<usize> = None;
                for &i in group {
                    let s = scores.scores[i].combined;
                    if s >= thresholds.alert {
                        p.note(&flows[i].record, promote_at);
                        if top.is_none_or(|t| s > scores.scores[t].combined) {
                            top = Some(i);
                        }
                    }
                }
                // The cycle's top flow (once promoted, even if promotion came with a later
                // flow of this cycle), its rows copied once.
                if let (Some(full), Some(i)) = (&mut p.promoted, top)
                    && full.top.as_ref().is_none_or(|(_, t, _)| scores.scores[i].combined > t.combined)
                {
                    full.top = Some((flows[i].record.clone(), scores.scores[i], scores.evidence(i)));
                }
            }
        }
        // Sources absent this cycle lose their streak.
        for state in self.sources.values_mut() {
            if state.seen_cycle != self.cycles {
                state.consecutive = 0;
            }
        }

        self.raise_alerts(now_mono_ns, now_wall_ns, detector, &mut notices);
        if self.config.min_sources > 0 {
            self.track_destinations(now_mono_ns, flows, scores, detector);
            self.raise_destination_alerts(now_mono_ns, now_wall_ns, detector, &mut notices);
        }
        if let Some(blocklist) = blocklist {
            self.upkeep(now_mono_ns, now_wall_ns, blocklist, &mut notices)?;
            self.auto_block(now_mono_ns, now_wall_ns, blocklist, &mut notices);
        }
        // Forget quiet sources.
        let window = ns(self.config.alert_window);
        self.sources.retain(|_, s| {
            s.consecutive > 0
                || s.pending.anomalous > 0
                || s.last_alert_ns.is_some_and(|t| now_mono_ns.saturating_sub(t) < window)
        });
        Ok(notices)
    }

    /// The level a source's pending anomalies deserve.
    fn level(&self, p: &Pending) -> Level {
        let top = p.top_score().unwrap_or(f32::MIN);
        if p.anomalous < self.config.min_flows {
            Level::Low
        } else if top >= self.config.block_threshold {
            Level::High
        } else {
            Level::Medium
        }
    }

    /// Windows run on `now_mono_ns`; `now_wall_ns` is only written in the alerts.
    fn raise_alerts(&mut self, now_mono_ns: u64, now_wall_ns: u64, detector: &Detector, notices: &mut Vec<Notice>) {
        let window = ns(self.config.alert_window);
        // Anomalies too weak to report that stayed so for a whole window are let go (counted).
        let min_level = self.config.min_level;
        let mut suppressed = 0;
        let levels: HashMap<IpAddr, Level> = self.sources.iter().map(|(ip, s)| (*ip, self.level(&s.pending))).collect();
        for (ip, state) in &mut self.sources {
            if state.pending.anomalous > 0
                && levels[ip] < min_level
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
                    && levels[*ip] >= min_level
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
            let level = self.level(&pending);
            if let Some(notice) = alert_doc(&self.config, detector, now_wall_ns, src, pending, level) {
                self.stats.alerts += 1;
                notices.push(notice);
            }
        }
    }

    /// Adds this cycle's anomalous flows to their destinations' pending state.
    fn track_destinations(&mut self, now_mono_ns: u64, flows: &[LiveFlow], scores: &CycleScores, detector: &Detector) {
        let alert = detector.thresholds.alert;
        for (i, (flow, score)) in flows.iter().zip(&scores.scores).enumerate() {
            if score.combined < alert {
                continue;
            }
            let r = &flow.record;
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
            if flow.new {
                p.new_flows += 1;
                p.packets += r.packets;
                p.bytes += r.bytes;
            }
            p.first_ns = if p.first_ns == 0 { r.first_seen_ns } else { p.first_ns.min(r.first_seen_ns) };
            p.last_ns = p.last_ns.max(r.last_seen_ns);
            if p.top.as_ref().is_none_or(|(_, t, _)| score.combined > t.combined) {
                p.top = Some((r.clone(), *score, scores.evidence(i)));
            }
        }
    }

    /// One alert per destination and window once enough distinct sources sent it anomalous
    /// flows; pending state that stays below that for a whole window is let go.
    fn raise_destination_alerts(
        &mut self,
        now_mono_ns: u64,
        now_wall_ns: u64,
        detector: &Detector,
        notices: &mut Vec<Notice>,
    ) {
        let window = ns(self.config.alert_window);
        let min_sources = self.config.min_sources;
        for (dst, state) in &mut self.destinations {
            let p = &state.pending;
            if p.sources.len() >= min_sources
                && state.last_alert_ns.is_none_or(|t| now_mono_ns.saturating_sub(t) >= window)
            {
                let pending = std::mem::take(&mut state.pending);
                state.last_alert_ns = Some(now_mono_ns);
                let top = pending.top.as_ref().map_or(f32::MIN, |(_, s, _)| s.combined);
                let level = if top >= self.config.block_threshold { Level::High } else { Level::Medium };
                if let Some(notice) = destination_doc(&self.config, detector, now_wall_ns, *dst, pending, level) {
                    self.stats.alerts += 1;
                    notices.push(notice);
                }
            } else if p.sources.len() < min_sources
                && p.opened_ns > 0
                && now_mono_ns.saturating_sub(p.opened_ns) >= window
            {
                state.pending = DestPending::default();
            }
        }
        self.destinations.retain(|_, s| {
            s.pending.opened_ns > 0 || s.last_alert_ns.is_some_and(|t| now_mono_ns.saturating_sub(t) < window)
        });
    }

    /// Removes lapsed rules and reports rules that appeared or vanished without the engine.
    fn upkeep<T: std::borrow::BorrowMut<aya::maps::MapData>>(
        &mut self,
        now_mono_ns: u64,
        now_wall_ns: u64,
        blocklist: &mut Blocklist<T>,
        notices: &mut Vec<Notice>,
    ) -> Result<(), BlockError> {
        // One read of the kernel's rules: lapsed ones are deleted (the kernel already ignores
        // them), the rest are what is active now. A rule gone meanwhile is caught by the diff.
        let mut current = HashMap::new();
        for rule in blocklist.list()? {
            if !rule.is_active(now_mono_ns) {
                // Deleted only if still the rule read: one re-added meanwhile stays.
                match blocklist.remove_if_lapsed(&rule) {
                    Ok(Lapse::Replaced(newer)) => {
                        current.insert(newer.prefix, newer);
                        continue;
                    }
                    Ok(Lapse::Removed) => {
                        self.known_rules.remove(&rule.prefix);
                        self.stats.unblocks += 1;
                        notices.push(rule_doc(&self.config, Kind::Unblock, now_wall_ns, &rule, now_mono_ns, "ttl"));
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
                let reason = if rule.is_active(now_mono_ns) { "removed" } else { "ttl" };
                notices.push(rule_doc(&self.config, Kind::Unblock, now_wall_ns, rule, now_mono_ns, reason));
            }
        }
        for (prefix, rule) in &current {
            if !self.known_rules.contains_key(prefix) && rule.origin == Origin::Manual {
                notices.push(rule_doc(&self.config, Kind::Block, now_wall_ns, rule, now_mono_ns, "manual"));
            }
        }
        self.known_rules = current;
        Ok(())
    }

    fn auto_block<B: RuleSink>(
        &mut self,
        now_mono_ns: u64,
        now_wall_ns: u64,
        blocklist: &mut B,
        notices: &mut Vec<Notice>,
    ) {
        if self.config.block_mode == BlockMode::Off {
            return;
        }
        let minute_ago = now_mono_ns.saturating_sub(60_000_000_000);
        while self.recent_blocks.front().is_some_and(|&t| t < minute_ago) {
            self.recent_blocks.pop_front();
        }
        let ttl_ns = ns(self.config.ttl);
        let mut ready: Vec<IpAddr> = self
            .sources
            .iter()
            .filter(|(_, s)| s.consecutive >= self.config.consecutive && s.reported_until_ns <= now_mono_ns)
            .map(|(ip, _)| *ip)
            .collect();
        ready.sort();
        for src in ready {
            let prefix = IpNet::from(src);
            if self.known_rules.get(&prefix).is_some_and(|r| r.is_active(now_mono_ns)) {
                continue;
            }
            let refusal = if let Some((net, why)) = self.config.allowlist.reason(src) {
                Some(format!("allowlisted ({why}: {net})"))
            } else if self.known_rules.len() >= self.config.max_rules {
                Some(format!("rule cap reached ({} active rules)", self.config.max_rules))
            } else if self.recent_blocks.len() >= self.config.max_new_per_minute {
                Some(format!("rate limit reached ({} new rules in the last minute)", self.config.max_new_per_minute))
            } else {
                None
            };
            let state = self.sources.get_mut(&src).expect("ready source");
            let consecutive = state.consecutive;
            if let Some(reason) = refusal {
                // Reported once per TTL, not every cycle.
                state.reported_until_ns = now_mono_ns.saturating_add(ttl_ns);
                self.stats.refused += 1;
                notices.push(decision_doc(&self.config, Kind::Refused, now_wall_ns, src, consecutive, &reason));
                continue;
            }
            if self.config.block_mode == BlockMode::DryRun {
                state.reported_until_ns = now_mono_ns.saturating_add(ttl_ns);
                self.stats.dry_runs += 1;
                notices.push(decision_doc(
                    &self.config,
                    Kind::DryRun,
                    now_wall_ns,
                    src,
                    consecutive,
                    "dry run: would block",
                ));
                continue;
            }
            match blocklist.add_rule(prefix, self.config.ttl) {
                Ok(rule) => {
                    self.recent_blocks.push_back(now_mono_ns);
                    self.stats.blocks += 1;
                    let reason = format!("score above the block threshold for {consecutive} consecutive windows");
                    notices.push(rule_doc(&self.config, Kind::Block, now_wall_ns, &rule, now_mono_ns, &reason));
                    self.known_rules.insert(prefix, rule);
                }
                Err(e) => {
                    state.reported_until_ns = now_mono_ns.saturating_add(ns(Duration::from_secs(10)));
                    self.stats.block_errors += 1;
                    let reason = format!("installing the rule failed: {e}");
                    notices.push(decision_doc(&self.config, Kind::Refused, now_wall_ns, src, consecutive, &reason));
                }
            }
        }
    }
}

/// Where auto-block installs rules: the kernel blocklist, or nothing (dry run without maps).
trait RuleSink {
    fn add_rule(&mut self, prefix: IpNet, ttl: Duration) -> Result<Rule, BlockError>;
}

impl<T: std::borrow::BorrowMut<aya::maps::MapData>> RuleSink for Blocklist<T> {
    fn add_rule(&mut self, prefix: IpNet, ttl: Duration) -> Result<Rule, BlockError> {
        self.add(prefix, ttl, Origin::Auto)
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn transport(protocol: u8) -> &'static str {
    match protocol {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        58 => "ipv6-icmp",
        _ => "other",
    }
}

/// The common ECS envelope.
fn envelope(config: &EngineConfig, kind: Kind, level: Level, now_wall_ns: u64, message: &str) -> Value {
    let (event_kind, category, types): (&str, Vec<&str>, Vec<&str>) = match kind {
        Kind::Alert | Kind::DestinationAlert => ("alert", vec!["network", "intrusion_detection"], vec!["info"]),
        Kind::Block => ("event", vec!["network", "intrusion_detection"], vec!["denied", "start"]),
        Kind::Unblock => ("event", vec!["network", "intrusion_detection"], vec!["allowed", "end"]),
        Kind::DryRun | Kind::Refused => ("event", vec!["network", "intrusion_detection"], vec!["info"]),
    };
    json!({
        "@timestamp": rfc3339_millis(now_wall_ns),
        "ecs": { "version": "8.11.0" },
        "message": message,
        "event": {
            "kind": event_kind,
            "category": category,
            "type": types,
            "action": kind.action(),
            "severity": level.ecs(),
            "module": "vigil",
            "dataset": "vigil.detection",
        },
        "observer": {
            "type": "ids",
            "vendor": "vigil",
            "hostname": config.hostname,
            "ingress": { "interface": { "name": config.iface } },
        },
        "vigil": { "model": { "sha256": config.model_sha256 } },
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            match a.get_mut(&k) {
                Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                _ => {
                    a.insert(k, v);
                }
            }
        }
    }
}

/// The worst flow of an alert, explained: its explanation, the name of its leading feature
/// (for the message), and the fields every alert carries about it (network, scores against
/// both thresholds, explanation, the flow itself).
struct Worst {
    lead: String,
    fields: Value,
}

fn worst_flow(
    config: &EngineConfig,
    detector: &Detector,
    level: Level,
    top: &FlowRecord,
    score: &crate::model::detector::Score,
    evidence: &Evidence,
) -> Worst {
    let explanation = serde_json::to_value(evidence.explain(detector, config.top_features)).unwrap_or(Value::Null);
    let lead = explanation.get(0).and_then(|c| c.get("feature")).and_then(Value::as_str).unwrap_or("?").to_owned();
    let fields = json!({
        "network": {
            "transport": transport(top.protocol),
            "iana_number": top.protocol.to_string(),
            "type": if top.ip_version == 4 { "ipv4" } else { "ipv6" },
        },
        "vigil": {
            "severity": level.name(),
            "score": {
                "combined": score.combined,
                "iforest": score.iforest,
                "autoencoder": score.autoencoder,
                "alert_threshold": detector.thresholds.alert,
                "block_threshold": config.block_threshold,
            },
            "explanation": explanation,
            "top_flow": top,
        },
    });
    Worst { lead, fields }
}

fn alert_doc(
    config: &EngineConfig,
    detector: &Detector,
    now_wall_ns: u64,
    src: IpAddr,
    p: Pending,
    level: Level,
) -> Option<Notice> {
    let full = p.promoted?;
    let (top, score, evidence) = full.top?;
    let worst = worst_flow(config, detector, level, &top, &score, &evidence);
    let (packets, bytes) = full.counters.values().fold((0, 0), |(a, b), (pk, by)| (a + pk, b + by));
    let message = format!(
        "{src}: {} anomalous flows to {} hosts / {} ports (score {:.1}, alert at {:.1}); top feature {}",
        p.anomalous,
        full.destinations.len(),
        full.ports.len(),
        score.combined,
        detector.thresholds.alert,
        worst.lead
    );
    let mut doc = envelope(config, Kind::Alert, level, now_wall_ns, &message);
    merge(&mut doc, worst.fields);
    merge(
        &mut doc,
        json!({
            "event": { "start": rfc3339_millis(p.first_ns), "end": rfc3339_millis(p.last_ns) },
            "source": { "ip": src, "port": top.src_port, "packets": packets, "bytes": bytes },
            "destination": { "ip": top.dst_ip, "port": top.dst_port },
            "rule": { "name": "vigil-anomaly", "ruleset": detector.schema.id },
            "vigil": {
                "counts": {
                    "flows": p.flows,
                    "anomalous_flows": p.anomalous,
                    "destinations": full.destinations.len(),
                    "destination_ports": full.ports.len(),
                    "packets": packets,
                    "bytes": bytes,
                },
            },
        }),
    );
    Some(Notice { kind: Kind::Alert, level, doc })
}

fn destination_doc(
    config: &EngineConfig,
    detector: &Detector,
    now_wall_ns: u64,
    dst: IpAddr,
    p: DestPending,
    level: Level,
) -> Option<Notice> {
    let (top, score, evidence) = p.top?;
    let worst = worst_flow(config, detector, level, &top, &score, &evidence);
    let capped = p.sources.len() >= DEST_DISTINCT_CAP;
    let message = format!(
        "{dst}: anomalous flows from {}{} sources ({} new flows, {} ports; score {:.1}, alert at {:.1}); spoofed or distributed, not blocked; top feature {}",
        if capped { "at least " } else { "" },
        p.sources.len(),
        p.new_flows,
        p.ports.len(),
        score.combined,
        detector.thresholds.alert,
        worst.lead
    );
    let mut doc = envelope(config, Kind::DestinationAlert, level, now_wall_ns, &message);
    merge(&mut doc, worst.fields);
    merge(
        &mut doc,
        json!({
            "event": { "start": rfc3339_millis(p.first_ns), "end": rfc3339_millis(p.last_ns) },
            "destination": { "ip": dst, "port": top.dst_port, "packets": p.packets, "bytes": p.bytes },
            "rule": { "name": "vigil-anomaly-destination", "ruleset": detector.schema.id },
            "vigil": {
                "counts": {
                    "sources": p.sources.len(),
                    "sources_capped": capped,
                    "new_anomalous_flows": p.new_flows,
                    "destination_ports": p.ports.len(),
                    "packets": p.packets,
                    "bytes": p.bytes,
                },
            },
        }),
    );
    Some(Notice { kind: Kind::DestinationAlert, level, doc })
}

fn rule_doc(
    config: &EngineConfig,
    kind: Kind,
    now_wall_ns: u64,
    rule: &Rule,
    now_mono_ns: u64,
    reason: &str,
) -> Notice {
    let verb = if kind == Kind::Unblock { "unblocked" } else { "blocked" };
    let remaining = rule.expires_ns.saturating_sub(now_mono_ns);
    let message = format!("{} {verb} ({reason})", rule.prefix);
    let mut doc = envelope(config, kind, Level::Info, now_wall_ns, &message);
    let ttl = humantime::format_duration(Duration::from_secs(remaining / 1_000_000_000)).to_string();
    merge(
        &mut doc,
        json!({
            "event": { "reason": reason },
            "source": { "ip": rule.prefix.addr(), "address": rule.prefix.to_string() },
            "vigil": {
                "rule": {
                    "prefix": rule.prefix.to_string(),
                    "origin": rule.origin,
                    "drops": rule.drops,
                    "expires_in": if kind == Kind::Unblock { "0s".to_owned() } else { ttl },
                },
                "block_mode": config.block_mode,
            },
        }),
    );
    Notice { kind, level: Level::Info, doc }
}

fn decision_doc(
    config: &EngineConfig,
    kind: Kind,
    now_wall_ns: u64,
    src: IpAddr,
    consecutive: u32,
    reason: &str,
) -> Notice {
    let message = format!("{src}: {reason}");
    let mut doc = envelope(config, kind, Level::Info, now_wall_ns, &message);
    merge(
        &mut doc,
        json!({
            "event": { "reason": reason },
            "source": { "ip": src },
            "vigil": {
                "consecutive_windows": consecutive,
                "block_threshold": config.block_threshold,
                "block_mode": config.block_mode,
                "rule": { "prefix": IpNet::from(src).to_string(), "ttl": humantime::format_duration(config.ttl).to_string() },
            },
        }),
    );
    Notice { kind, level: Level::Info, doc }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{detect::live::tests::detector, features::flow::tests::record, model::detector::Score};

    const S: u64 = 1_000_000_000;

    pub(super) fn config(alert: f32) -> EngineConfig {
        EngineConfig {
            alert_window: Duration::from_secs(10),
            top_features: 3,
            max_alerts_per_cycle: 100,
            min_flows: 3,
            min_sources: 20,
            min_level: Level::Medium,
            max_sources: 100_000,
            block_mode: BlockMode::Off,
            consecutive: 3,
            block_threshold: alert + 0.5,
            ttl: Duration::from_mins(1),
            max_rules: 100,
            max_new_per_minute: 10,
            allowlist: Allowlist::new(&[], false),
            iface: "test0".into(),
            hostname: "test".into(),
            model_sha256: String::new(),
        }
    }

    /// One cycle's flows: a scanner (10.9.9.9, three new ports) and 25 spoofed sources with one
    /// flow each to 10.0.0.2, all anomalous; records stamped with `wall_ns`.
    fn cycle_flows(cycle: u32, wall_ns: u64, mono_ns: u64) -> Vec<LiveFlow> {
        let mut flows = Vec::new();
        for k in 0..3 {
            let mut r = record(1, 2, u16::try_from(cycle * 3 + k).expect("port"), 0);
            r.src_ip = Ipv4Addr::new(10, 9, 9, 9).into();
            flows.push(r);
        }
        for k in 0..25 {
            let mut r = record(1, 2, 80, 0);
            r.src_ip = Ipv4Addr::from(0x0a01_0000 | (cycle << 8) | k).into();
            flows.push(r);
        }
        flows
            .into_iter()
            .map(|mut r| {
                (r.first_seen_ns, r.last_seen_ns) = (wall_ns, wall_ns);
                LiveFlow { record: r, new: true, first_mono_ns: mono_ns }
            })
            .collect()
    }

    /// Runs 25 one-second cycles with the wall clock stepped by `step_s` after cycle 3; answers
    /// the cycles with a per-source alert and those with a destination alert.
    fn alert_cycles(step_s: i64) -> (Vec<u32>, Vec<u32>) {
        let detector = detector();
        let alert = detector.thresholds.alert;
        let mut engine = Engine::new(config(alert));
        let (mono0, wall0) = (5000 * S, 1_700_000_000 * S);
        let (mut by_source, mut by_destination) = (Vec::new(), Vec::new());
        for cycle in 0..25u32 {
            let mono = mono0 + u64::from(cycle) * S;
            let step = if cycle > 3 { step_s * 1_000_000_000 } else { 0 };
            let wall = (wall0 + u64::from(cycle) * S).saturating_add_signed(step);
            let flows = cycle_flows(cycle, wall - S / 2, mono - S / 2);
            let score = Score { iforest: 0.9, autoencoder: 1.0, combined: alert + 0.1 };
            let scores = CycleScores::fixed(vec![score; flows.len()]);
            let notices = engine
                .cycle(mono, wall, &flows, &scores, &detector, None::<&mut Blocklist<aya::maps::MapData>>)
                .expect("cycle");
            for n in &notices {
                // Output carries the wall clock, whatever it says.
                assert_eq!(n.doc["@timestamp"], rfc3339_millis(wall));
                match n.kind {
                    Kind::Alert => {
                        assert_eq!(n.doc["source"]["ip"], "10.9.9.9", "{:#}", n.doc);
                        by_source.push(cycle);
                    }
                    Kind::DestinationAlert => by_destination.push(cycle),
                    _ => panic!("unexpected {:?}", n.kind),
                }
            }
            // Spoofed sources stay small candidates; only the scanner is promoted.
            let promoted = engine.sources.values().filter(|s| s.pending.promoted.is_some()).count();
            assert!(promoted <= 1, "{promoted} promoted");
        }
        (by_source, by_destination)
    }

    #[test]
    fn alert_windows_run_on_the_monotonic_clock() {
        let expected = (vec![0, 10, 20], vec![0, 10, 20]);
        assert_eq!(alert_cycles(0), expected, "steady clock");
        // Wall time an hour back: the windows still close every 10 s.
        assert_eq!(alert_cycles(-3600), expected, "wall clock stepped back");
        // Wall time an hour forward: no window closes early.
        assert_eq!(alert_cycles(3600), expected, "wall clock stepped forward");
    }

    #[test]
    fn destination_state_is_bounded_under_a_spread_flood() {
        // A spoofed flood over many destinations: 64 destinations, 5,000 sources each.
        let detector = detector();
        let alert = detector.thresholds.alert;
        let mut engine = Engine::new(config(alert));
        let mut flows = Vec::new();
        for d in 0..64u32 {
            for k in 0..5_000u32 {
                let mut r = record(1, 2, u16::try_from(k % 60_000).unwrap(), 0);
                r.src_ip = Ipv4Addr::from(0x0b00_0000 | k).into();
                r.dst_ip = Ipv4Addr::from(0x0a00_0000 | d).into();
                flows.push(LiveFlow { record: r, new: true, first_mono_ns: S });
            }
        }
        let score = Score { iforest: 0.9, autoencoder: 1.0, combined: alert + 0.1 };
        let notices = engine
            .cycle(
                2 * S,
                2 * S,
                &flows,
                &CycleScores::fixed(vec![score; flows.len()]),
                &detector,
                None::<&mut Blocklist<aya::maps::MapData>>,
            )
            .expect("cycle");
        let dest_alerts: Vec<_> = notices.iter().filter(|n| n.kind == Kind::DestinationAlert).collect();
        assert!(!dest_alerts.is_empty(), "the flood is still reported");
        for n in dest_alerts {
            let counts = &n.doc["vigil"]["counts"];
            assert_eq!(counts["sources"], DEST_DISTINCT_CAP, "{:#}", n.doc);
            assert_eq!(counts["sources_capped"], true);
            assert_eq!(counts["new_anomalous_flows"], 5_000, "flows are still all counted");
            assert!(n.doc["message"].as_str().unwrap().contains("at least 1024 sources"));
        }
        for state in engine.destinations.values() {
            assert!(state.pending.sources.len() <= DEST_DISTINCT_CAP && state.pending.ports.len() <= DEST_DISTINCT_CAP);
        }
    }

    #[test]
    fn alert_counts_survive_promotion() {
        let detector = detector();
        let alert = detector.thresholds.alert;
        let mut engine = Engine::new(config(alert));
        let low = Score { iforest: 0.9, autoencoder: 1.0, combined: alert + 0.1 };
        let high = Score { combined: alert + 2.0, ..low };
        let mut notices = Vec::new();
        // Two anomalous flows in one cycle (a candidate), a third and its repeat in the next.
        for (cycle, ports, scores) in [(0u64, vec![21u16, 22], vec![low, low]), (1, vec![22, 23], vec![low, high])] {
            let flows: Vec<LiveFlow> = ports
                .iter()
                .map(|&p| {
                    let mut r = record(9, 2, p, 0);
                    r.packets = 2;
                    LiveFlow { record: r, new: cycle == 0 || p == 23, first_mono_ns: cycle * S }
                })
                .collect();
            notices = engine
                .cycle(
                    (cycle + 1) * S,
                    (cycle + 1) * S,
                    &flows,
                    &CycleScores::fixed(scores),
                    &detector,
                    None::<&mut Blocklist<aya::maps::MapData>>,
                )
                .expect("cycle");
            if cycle == 0 {
                assert!(notices.is_empty(), "below min_flows: no medium alert yet");
                assert!(engine.sources.values().all(|s| s.pending.promoted.is_none()));
            }
        }
        assert_eq!(notices.len(), 1, "{notices:#?}");
        let doc = &notices[0].doc;
        assert_eq!(notices[0].level, Level::High);
        let counts = &doc["vigil"]["counts"];
        assert_eq!(counts["flows"], 4);
        assert_eq!(counts["anomalous_flows"], 3);
        assert_eq!(counts["destination_ports"], 3);
        assert_eq!(counts["packets"], 6);
        assert_eq!(doc["destination"]["port"], 23, "the top flow: {doc:#}");
        assert_eq!(doc["vigil"]["explanation"].as_array().map(Vec::len), Some(3));
    }
}

#[cfg(test)]
mod flood_memory {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        detect::{LiveScorer, live::tests::detector},
        features::{context::ContextWindow, flow::tests::record},
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
        cfg.max_sources = 100_000;
        let mut engine = Engine::new(cfg);
        let mut scorer = LiveScorer::new(detector, ContextWindow::with_capacity(Duration::from_secs(10), 65_536));
        eprintln!("start: rss {} kB", status_kib("VmRSS"));
        for cycle in 0..12u32 {
            let mono = (1000 + u64::from(cycle)) * 1_000_000_000;
            let flows: Vec<LiveFlow> = (0..65_536u32)
                .map(|i| {
                    let mut r = record(1, 2, 9, 0);
                    r.src_ip = Ipv4Addr::from(0x0a00_0000 + cycle * 65_536 + i).into();
                    r.protocol = 17;
                    r.packets = 1;
                    LiveFlow { record: r, new: true, first_mono_ns: mono - 1 }
                })
                .collect();
            let before = status_kib("VmRSS");
            let cycle_scores = scorer.score(&flows, mono).expect("scored");
            let after_scoring = status_kib("VmRSS");
            let alert = scorer.detector.thresholds.alert;
            let anomalous = cycle_scores.scores.iter().filter(|s| s.combined >= alert).count();
            let notices = engine
                .cycle(mono, mono, &flows, &cycle_scores, &scorer.detector, None::<&mut Blocklist<aya::maps::MapData>>)
                .expect("cycle");
            drop(cycle_scores);
            drop(flows);
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
