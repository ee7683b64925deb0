//! Controlling a running (or departed) agent: `vigil status`, `vigil block`, `vigil detach`.
//!
//! Everything goes through the objects the agent pinned (see [`crate::sensor::pin`]) and the
//! status file it rewrites every cycle under the run directory, so these commands need no
//! connection to the agent and work after it died.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use agent_common::counters::{Direction, Malformed};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    block::{
        Blocklist, Rule,
        manual::{self, Rails},
        rules::Origin,
    },
    clock,
    detect::allowlist::Allowlist,
    sensor::{DirectionCounters, pin::Pins},
};

/// Where the agent keeps its status file unless configured otherwise.
pub const DEFAULT_RUN_DIR: &str = "/run/vigil";
/// The status file's name.
pub const STATUS_FILE: &str = "status.json";

/// Alert suppression rules, as the agent applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionStatus {
    pub rules_active: usize,
    /// Alerts suppressed per rule id, since the agent started.
    pub suppressed: std::collections::BTreeMap<u32, u64>,
}

/// What a running agent publishes about itself every cycle.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    pub iface: String,
    pub xdp_mode: String,
    /// Whether the TC egress program counts the host's own packets too.
    #[serde(default)]
    pub egress: bool,
    pub pin_dir: Option<PathBuf>,
    pub started: String,
    pub updated: String,
    pub model: String,
    /// sha256 of the running bundle's `manifest.json`.
    #[serde(default)]
    pub model_sha256: String,
    /// Which model is scoring: learning (the built-in one while a site model is learnt), site
    /// or fixed.
    #[serde(default)]
    pub model_phase: crate::learn::Phase,
    /// The learning phase's progress, while learning and after.
    #[serde(default)]
    pub learn: Option<crate::learn::LearnStatus>,
    /// Suppression rules in force, and alerts each kept from the sinks since start.
    #[serde(default)]
    pub suppression: Option<SuppressionStatus>,
    pub block_mode: String,
    pub flows_tracked: usize,
    pub flow_capacity: u32,
    /// Flows the kernel's LRU evicted before a harvest exported them, since the agent started.
    #[serde(default)]
    pub flow_evictions: u64,
    pub last_harvest_ms: f64,
    pub last_scoring_ms: f64,
    pub flows_scored: u64,
    pub engine: crate::detect::engine::EngineStats,
    pub sinks: Vec<crate::alert::sink::SinkStats>,
    /// The embedded store, when enabled.
    #[serde(default)]
    pub store: Option<crate::store::StoreStats>,
    /// The fleet export, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStats>,
}

impl AgentStatus {
    /// Writes the status atomically (temporary file, then rename) into `run_dir`, which
    /// [`crate::private_dir::ensure`] made the agent's own at start, never through a symlink.
    ///
    /// # Errors
    /// If the directory or file cannot be written.
    pub fn write(&self, run_dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::private_dir::write_file(run_dir, STATUS_FILE, &json)
    }

    /// The last status written into `run_dir`, if any.
    #[must_use]
    pub fn read(run_dir: &Path) -> Option<Self> {
        let text = std::fs::read(run_dir.join(STATUS_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Whether the process that wrote it is still alive.
    #[must_use]
    pub fn is_running(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else { return false };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "vigil")
    }
}

/// Errors of the control commands.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Pin(#[from] crate::sensor::pin::PinError),
    #[error(transparent)]
    Block(#[from] crate::block::BlockError),
    #[error(transparent)]
    Refused(#[from] crate::block::manual::Refusal),
}

/// A rule as `vigil block list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub prefix: IpNet,
    pub origin: Origin,
    pub drops: u64,
    /// Seconds until it lapses (0 when lapsed).
    pub expires_in_s: u64,
    pub age_s: u64,
    pub active: bool,
}

impl RuleView {
    #[must_use]
    pub fn new(rule: &Rule, now_mono_ns: u64) -> Self {
        Self {
            prefix: rule.prefix,
            origin: rule.origin,
            drops: rule.drops,
            expires_in_s: rule.expires_ns.saturating_sub(now_mono_ns) / 1_000_000_000,
            age_s: now_mono_ns.saturating_sub(rule.created_ns) / 1_000_000_000,
            active: rule.is_active(now_mono_ns),
        }
    }
}

/// The pinned blocklist, once the pins are known to be of this build's layout.
fn pinned_blocklist(pins: &Pins) -> Result<Blocklist<aya::maps::MapData>, ControlError> {
    pins.check_layout()?;
    Ok(Blocklist::from_pins(pins.dir())?)
}

/// The rules pinned under `pins`, as shown to an operator.
///
/// # Errors
/// If the pinned maps cannot be opened or read.
pub fn list_rules(pins: &Pins) -> Result<Vec<RuleView>, ControlError> {
    pins.check_layout()?;
    rules_of_checked_layout(pins)
}

/// [`list_rules`] for a caller that has just checked the layout.
fn rules_of_checked_layout(pins: &Pins) -> Result<Vec<RuleView>, ControlError> {
    let blocklist = Blocklist::from_pins(pins.dir())?;
    let now = clock::monotonic_ns();
    let mut rules: Vec<RuleView> = blocklist.list()?.iter().map(|r| RuleView::new(r, now)).collect();
    rules.sort_by_key(|r| r.prefix);
    Ok(rules)
}

/// The rails for `vigil block add` under `config`: its allowlist plus the host's own
/// addresses, gateways and loopback (always, whatever `block.allowlist_host`), the SSH
/// sessions this command runs in, and `block.max_ttl`.
#[must_use]
pub fn manual_rails(config: &crate::config::BlockSection) -> Rails {
    Rails {
        allowlist: Allowlist::new(&config.allowlist, true),
        ssh_peers: manual::ssh_peers(),
        max_ttl: config.max_ttl.0,
    }
}

/// Adds a manual rule once it passes `rails` ([`manual::check`]): the TTL cap always, the
/// allowlist and the operator's SSH session unless `force`.
///
/// # Errors
/// A refusal naming the rail, or the maps cannot be updated.
pub fn add_rule(pins: &Pins, rails: &Rails, prefix: IpNet, ttl: Duration, force: bool) -> Result<Rule, ControlError> {
    let prefix = manual::check(rails, prefix, ttl, force)?;
    let mut blocklist = pinned_blocklist(pins)?;
    Ok(blocklist.add(prefix, ttl, Origin::Manual)?)
}

/// Removes the rule for exactly `prefix`; whether there was one.
///
/// # Errors
/// If the maps cannot be updated.
pub fn del_rule(pins: &Pins, prefix: IpNet) -> Result<bool, ControlError> {
    Ok(pinned_blocklist(pins)?.remove(prefix)?)
}

/// Removes every rule; how many there were.
///
/// # Errors
/// If the maps cannot be updated.
pub fn flush_rules(pins: &Pins) -> Result<usize, ControlError> {
    Ok(pinned_blocklist(pins)?.flush()?.len())
}

/// Parses `ADDR` or `ADDR/LEN` into a prefix.
///
/// # Errors
/// A message naming the bad text.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| format!("`{text}` is not an IP address or CIDR prefix"))
}

/// Everything `vigil status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub pin_dir: PathBuf,
    pub attached: bool,
    pub agent_running: bool,
    pub agent: Option<AgentStatus>,
    pub counters: Option<CountersView>,
    pub rules: Vec<RuleView>,
    /// Why the pinned maps cannot be read, when they are of another build's layout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins_problem: Option<String>,
}

/// The kernel counters by name.
#[derive(Clone, Debug, Serialize)]
pub struct CountersView {
    /// Both hooks together.
    pub packets: u64,
    pub bytes: u64,
    /// The TC egress hook's share (the host's own packets; 0 without `sensor.egress`).
    pub egress_packets: u64,
    pub egress_bytes: u64,
    pub malformed: std::collections::BTreeMap<&'static str, u64>,
    pub flows_created: u64,
    pub flow_insert_failed: u64,
    pub blocklist_drops: u64,
}

impl From<&DirectionCounters> for CountersView {
    fn from(d: &DirectionCounters) -> Self {
        let c = &d.total();
        let egress = d.of(Direction::Egress);
        Self {
            packets: c.packets,
            bytes: c.bytes,
            egress_packets: egress.packets,
            egress_bytes: egress.bytes,
            malformed: Malformed::ALL
                .iter()
                .map(|m| (m.name(), c.malformed[*m as usize]))
                .filter(|(_, n)| *n > 0)
                .collect(),
            flows_created: c.flows_created,
            flow_insert_failed: c.flow_insert_failed,
            blocklist_drops: c.blocklist_drops,
        }
    }
}

/// Gathers the status of the sensor pinned under `pins` and the agent writing to `run_dir`.
#[must_use]
pub fn status(pins: &Pins, run_dir: &Path) -> StatusReport {
    let agent = AgentStatus::read(run_dir);
    // One layout check for the whole report: maps of another layout are not read at all.
    let pins_problem = pins.check_layout().err().map(|e| e.to_string());
    let readable = pins_problem.is_none();
    StatusReport {
        pin_dir: pins.dir().to_owned(),
        attached: pins.is_attached(),
        agent_running: agent.as_ref().is_some_and(AgentStatus::is_running),
        agent,
        counters: readable.then(|| pins.counters_of_checked_layout().ok()).flatten().as_ref().map(CountersView::from),
        rules: if readable { rules_of_checked_layout(pins).unwrap_or_default() } else { Vec::new() },
        pins_problem,
    }
}

impl std::fmt::Display for StatusReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let attached = if self.attached { "attached" } else { "not attached" };
        writeln!(f, "sensor:   {attached} (pins under {})", self.pin_dir.display())?;
        if let Some(problem) = &self.pins_problem {
            writeln!(f, "pins:     {problem}")?;
        }
        match (&self.agent, self.agent_running) {
            (Some(a), true) => writeln!(
                f,
                "agent:    running, pid {} on {} ({} XDP{}), since {}; model {} (sha256 {}), block mode {}",
                a.pid,
                a.iface,
                a.xdp_mode,
                if a.egress { " + TC egress" } else { "" },
                a.started,
                a.model,
                a.model_sha256,
                a.block_mode
            )?,
            (Some(a), false) => writeln!(f, "agent:    not running (last status from pid {} at {})", a.pid, a.updated)?,
            (None, _) => writeln!(f, "agent:    not running (no status file)")?,
        }
        if let Some(a) = self.agent.as_ref().filter(|_| self.agent_running) {
            match (&a.learn, a.model_phase) {
                (Some(l), crate::learn::Phase::Learning) => writeln!(
                    f,
                    "learning: {} rows sampled ({} held back, {} hours of the day){}{}",
                    l.sample_rows,
                    l.holdout_rows,
                    l.hours_covered,
                    if l.training {
                        "; training the site model now".to_owned()
                    } else {
                        l.ends_in_s.map(|s| format!("; site model in {s:.0} s")).unwrap_or_default()
                    },
                    if l.block_held { "; auto-block is a dry run until then" } else { "" }
                )?,
                (Some(l), crate::learn::Phase::Site) if l.ends_in_s.is_some() => writeln!(
                    f,
                    "model:    phase site, adapting: {} rows sampled; {}",
                    l.sample_rows,
                    if l.training {
                        "retraining now".to_owned()
                    } else {
                        format!("next retraining in {:.0} s", l.ends_in_s.unwrap_or_default())
                    }
                )?,
                (_, phase) => writeln!(f, "model:    phase {}", phase.name())?,
            }
            if let Some(why) = a.learn.as_ref().and_then(|l| l.last.as_ref()).and_then(|v| v.refused.as_ref()) {
                writeln!(f, "          last site model held back: {why}")?;
            }
            if let Some(s) = a.suppression.as_ref().filter(|s| s.rules_active > 0 || !s.suppressed.is_empty()) {
                writeln!(
                    f,
                    "suppress: {} rules in force; {} alerts suppressed since start (vigil suppress list)",
                    s.rules_active,
                    s.suppressed.values().sum::<u64>()
                )?;
            }
        }
        if let Some(a) = self.agent.as_ref().filter(|_| self.agent_running) {
            writeln!(
                f,
                "flows:    {} tracked of {}, {} evicted; last harvest {:.1} ms, scoring {:.1} ms; {} scored",
                a.flows_tracked,
                a.flow_capacity,
                a.flow_evictions,
                a.last_harvest_ms,
                a.last_scoring_ms,
                a.flows_scored
            )?;
            let e = &a.engine;
            writeln!(
                f,
                "response: {} alerts, {} blocks, {} unblocks, {} dry-run, {} refused",
                e.alerts, e.blocks, e.unblocks, e.dry_runs, e.refused
            )?;
            write_outputs(f, a)?;
        }
        if let Some(c) = &self.counters {
            let malformed: u64 = c.malformed.values().sum();
            writeln!(
                f,
                "kernel:   {} packets ({} sent by the host), {} bytes, {} malformed, {} flows created, {} dropped by \
                 rules",
                c.packets, c.egress_packets, c.bytes, malformed, c.flows_created, c.blocklist_drops
            )?;
        }
        let active = self.rules.iter().filter(|r| r.active).count();
        writeln!(f, "rules:    {active} active")?;
        for r in &self.rules {
            writeln!(f, "          {}", format_rule(r))?;
        }
        Ok(())
    }
}

/// The sinks' and the store's lines of `vigil status`.
fn write_outputs(f: &mut std::fmt::Formatter<'_>, a: &AgentStatus) -> std::fmt::Result {
    for s in &a.sinks {
        writeln!(f, "sink:     {} delivered {}, dropped {}, failed {}", s.name, s.delivered, s.dropped, s.failed)?;
    }
    let Some(s) = &a.store else { return Ok(()) };
    let tenths_mib = s.size_bytes.saturating_mul(10) / (1 << 20);
    writeln!(
        f,
        "store:    {} {}; {} rows written, {} dropped, {} failed, {} expired; {}.{} MiB in use",
        s.path.display(),
        if s.up { "up" } else { "DOWN" },
        s.written,
        s.dropped,
        s.failed,
        s.expired,
        tenths_mib / 10,
        tenths_mib % 10
    )?;
    if let Some(e) = s.last_error.as_ref().filter(|_| !s.up) {
        writeln!(f, "          {e}")?;
    }
    Ok(())
}

/// One line of `vigil block list`.
#[must_use]
pub fn format_rule(r: &RuleView) -> String {
    let state = if r.active {
        format!("expires in {}", humantime::format_duration(Duration::from_secs(r.expires_in_s)))
    } else {
        "lapsed".to_owned()
    };
    let origin = r.origin.name();
    format!("{:<43} {origin:<6} {:>10} drops  {state}", r.prefix.to_string(), r.drops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::{LearnStatus, Phase};

    fn shown(phase: Phase, learn: LearnStatus) -> String {
        let agent = AgentStatus { model_phase: phase, learn: Some(learn), ..AgentStatus::default() };
        let report = StatusReport {
            pin_dir: PathBuf::from("/sys/fs/bpf/vigil"),
            attached: true,
            agent_running: true,
            agent: Some(agent),
            counters: None,
            rules: Vec::new(),
            pins_problem: None,
        };
        report.to_string()
    }

    #[test]
    fn status_shows_the_learning_progress_and_the_adapting_site_model() {
        let learning = LearnStatus {
            phase: Phase::Learning,
            ends_in_s: Some(3600.0),
            sample_rows: 1200,
            holdout_rows: 130,
            hours_covered: 5,
            block_held: true,
            ..LearnStatus::default()
        };
        let text = shown(Phase::Learning, learning);
        assert!(
            text.contains(
                "learning: 1200 rows sampled (130 held back, 5 hours of the day); site model in 3600 s; auto-block is a \
                 dry run until then"
            ),
            "{text}"
        );
        let adapting =
            LearnStatus { phase: Phase::Site, ends_in_s: Some(60.0), sample_rows: 40, ..LearnStatus::default() };
        let text = shown(Phase::Site, adapting);
        assert!(text.contains("model:    phase site, adapting: 40 rows sampled; next retraining in 60 s"), "{text}");
        let fixed = shown(Phase::Site, LearnStatus { phase: Phase::Site, ..LearnStatus::default() });
        assert!(fixed.contains("model:    phase site\n"), "{fixed}");
    }
}
