//! The agent's configuration file (TOML, default `/etc/vigil/vigil.toml`).
//!
//! Every field has a default (documented in `docs/config.md`, printed by
//! `vigil config show`); command-line flags override the file. Unknown keys and bad values
//! are errors that name the field, and `vigil run` exits with status 2 on them before anything
//! is loaded or attached.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{alert::sink::SinkSpec, detect::BlockMode, sensor::AttachMode};

/// Where `vigil run` looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/vigil/vigil.toml";

/// The longest interval, timeout or window a flag or the file may set: 7 days. Time
/// arithmetic on capture and kernel clocks stays far from overflow below it, and nothing
/// sensible needs more.
pub const MAX_INTERVAL: Duration = Duration::from_hours(7 * 24);
pub use crate::duration_serde::MAX_DURATION;

/// Parses a duration flag (`--interval 1s`) up to [`MAX_INTERVAL`]; clap's error names the
/// flag.
///
/// # Errors
/// Not a duration, or longer than [`MAX_INTERVAL`].
pub fn parse_interval_flag(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e}; write e.g. 1s, 500ms, 10m"))?;
    if d > MAX_INTERVAL {
        return Err(format!("at most {}", humantime::format_duration(MAX_INTERVAL)));
    }
    Ok(d)
}

/// A duration written the human way in TOML: `"1s"`, `"500ms"`, `"10m"`; at most
/// [`MAX_DURATION`] ([`crate::duration_serde`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HumanDuration(#[serde(with = "crate::duration_serde")] pub Duration);

/// The sensor: where it attaches and how flows leave the table.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SensorSection {
    /// Interface to attach to; empty = the default route's.
    pub iface: String,
    pub xdp_mode: AttachMode,
    /// Also count the host's own outgoing packets (a TC egress program), into the same flow
    /// table, so conversations have both sides. On by default: the model describes both.
    pub egress: bool,
    pub flow_capacity: u32,
    /// Time between harvests; also the scoring window of auto-block.
    pub interval: HumanDuration,
    pub idle_timeout: HumanDuration,
    pub active_timeout: HumanDuration,
    /// Keep the program, maps and rules pinned here across agent restarts; empty = do not pin
    /// (everything is detached when the agent exits).
    pub pin_dir: PathBuf,
    /// `vigil status` reads the running agent's state from here.
    pub run_dir: PathBuf,
}

impl Default for SensorSection {
    fn default() -> Self {
        Self {
            iface: String::new(),
            xdp_mode: AttachMode::Auto,
            egress: true,
            flow_capacity: agent_common::maps::DEFAULT_FLOW_CAPACITY,
            interval: HumanDuration(crate::flows::DEFAULT_INTERVAL),
            idle_timeout: HumanDuration(crate::flows::DEFAULT_IDLE_TIMEOUT),
            active_timeout: HumanDuration(crate::flows::DEFAULT_ACTIVE_TIMEOUT),
            pin_dir: PathBuf::from(crate::sensor::pin::DEFAULT_PIN_DIR),
            run_dir: PathBuf::from(crate::control::DEFAULT_RUN_DIR),
        }
    }
}

/// Scoring.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectionSection {
    /// `"default"` (the built-in bundle) or a bundle directory from `vigil train`.
    pub model: String,
    /// Per-source/destination context window (use the one the model was trained with).
    pub context_window: HumanDuration,
    /// Features listed in an alert's explanation.
    pub top_features: usize,
    /// Flows to these destinations are tracked but not scored: link-local control traffic
    /// (neighbour discovery, mDNS, IGMP) that no model of unicast traffic describes.
    pub ignore_destinations: Vec<IpNet>,
    /// Public keys a bundle directory must be signed with: 64 hex digits, or the path of a
    /// key file from `vigil model keygen`.
    pub trusted_keys: Vec<String>,
    /// Load bundle directories not signed by a trusted key (with a warning).
    pub allow_unsigned: bool,
}

impl Default for DetectionSection {
    fn default() -> Self {
        Self {
            model: "default".to_owned(),
            context_window: HumanDuration(crate::features::context::DEFAULT_WINDOW),
            top_features: 5,
            ignore_destinations: ["224.0.0.0/4", "255.255.255.255/32", "ff00::/8"]
                .iter()
                .map(|n| n.parse().expect("literal prefix"))
                .collect(),
            trusted_keys: Vec::new(),
            allow_unsigned: false,
        }
    }
}

/// Alerts and where they go.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// At most one alert per source per window; anomalies in between are counted in the next.
    pub window: HumanDuration,
    /// Alerts raised per harvest cycle at most (the rest wait a cycle).
    pub max_per_cycle: usize,
    /// Distinct anomalous flows one source needs in a window for a medium or high alert
    /// (fewer make a low one, unless one of them, of at least 100 packets, reaches the block
    /// threshold on its own: that is a medium alert), and flows above the block threshold it
    /// needs in a harvest
    /// cycle for the cycle to count towards a block. The per-flow threshold is calibrated on
    /// benign flows, so a lone anomalous flow is expected now and then; several from one
    /// source are evidence.
    pub min_flows: u64,
    /// Distinct sources with anomalous flows to one destination in a window for a
    /// destination alert: a flood from spoofed or many sources, where each source alone sends
    /// too little for an alert of its own. Such alerts never block. 0 turns them off.
    pub min_sources: usize,
    /// Alerts below this level (`low`, `medium`, `high`) are counted in metrics, not sent.
    pub min_severity: crate::detect::Severity,
    /// Sources with alert/block state at most.
    pub max_sources: usize,
    /// Sinks; none = standard output.
    pub sinks: Vec<SinkSpec>,
    /// Suppression rules (`vigil suppress`), read again whenever the file changes.
    pub suppress_file: PathBuf,
}

impl Default for AlertsSection {
    fn default() -> Self {
        Self {
            window: HumanDuration(Duration::from_secs(10)),
            max_per_cycle: 100,
            min_flows: 3,
            min_sources: 20,
            min_severity: crate::detect::Severity::Medium,
            max_sources: 100_000,
            sinks: Vec::new(),
            suppress_file: PathBuf::from("/var/lib/vigil/suppressions.json"),
        }
    }
}

/// Auto-block and its rails.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockSection {
    pub mode: BlockMode,
    /// Consecutive harvest cycles at or above the block threshold before blocking.
    pub consecutive: u32,
    /// The block threshold is the model's alert threshold plus this (combined-score units,
    /// robust z): a source must stand out this much more than an alert, for `consecutive`
    /// cycles in a row.
    pub margin: f32,
    /// How long a rule lasts; the kernel lets traffic through again after it.
    pub ttl: HumanDuration,
    /// Longest TTL any rule may have, `vigil block add --ttl` included (`--force` does not
    /// lift it); `ttl` must not exceed it.
    pub max_ttl: HumanDuration,
    /// Active rules at most.
    pub max_rules: usize,
    /// New auto-block rules per minute at most.
    pub max_new_per_minute: usize,
    /// Prefixes never blocked.
    pub allowlist: Vec<IpNet>,
    /// Also never block the host's own addresses, its default gateways and loopback.
    pub allowlist_host: bool,
}

impl Default for BlockSection {
    fn default() -> Self {
        Self {
            mode: BlockMode::Off,
            consecutive: 2,
            margin: 0.5,
            ttl: HumanDuration(Duration::from_mins(10)),
            max_ttl: HumanDuration(crate::block::manual::DEFAULT_MAX_TTL),
            max_rules: 1024,
            max_new_per_minute: 60,
            allowlist: Vec::new(),
            allowlist_host: true,
        }
    }
}

/// Prometheus endpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `ADDR:PORT` to serve `/metrics` on; absent = no endpoint.
    pub listen: Option<SocketAddr>,
}

/// Flow records.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowsSection {
    /// Append finished flow records as JSON lines here (`-` = standard output).
    pub out: Option<PathBuf>,
}

/// The whole file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sensor: SensorSection,
    pub detection: DetectionSection,
    pub alerts: AlertsSection,
    pub block: BlockSection,
    pub metrics: MetricsSection,
    pub flows: FlowsSection,
    pub learn: crate::learn::LearnSection,
    pub store: crate::store::StoreSection,
    pub console: crate::console::ConsoleSection,
    /// `vigil collector`'s bus and consumer; absent on a sensor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collector: Option<crate::collector::CollectorSection>,
    /// The fleet export of flow records and heartbeats (docs/fleet.md); absent: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetSection>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: `{field}` {message}")]
    Invalid { field: &'static str, message: String },
}

impl Config {
    /// Reads `path`, or [`DEFAULT_PATH`] if it exists, or takes the defaults.
    ///
    /// # Errors
    /// A missing explicit file, a parse error (naming the key and line), or an invalid value.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        let config = Self::parse(&text).map_err(|message| ConfigError::Parse { path, message })?;
        Ok(config)
    }

    /// Parses TOML text (no validation).
    ///
    /// # Errors
    /// The parser's message, which names the offending key and its line.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())
    }

    /// The configuration as TOML, every field included.
    ///
    /// # Panics
    /// Never: every field serialises.
    #[must_use]
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, message: &str| Err(ConfigError::Invalid { field, message: message.to_owned() });
        let s = &self.sensor;
        if s.flow_capacity == 0 {
            return bad("sensor.flow_capacity", "must be at least 1");
        }
        if s.interval.0.is_zero() {
            return bad("sensor.interval", "must be greater than zero");
        }
        if s.idle_timeout.0 < s.interval.0 {
            return bad("sensor.idle_timeout", "must be at least sensor.interval");
        }
        if s.active_timeout.0 < s.interval.0 {
            return bad("sensor.active_timeout", "must be at least sensor.interval");
        }
        for (field, d) in [
            ("sensor.interval", s.interval),
            ("sensor.idle_timeout", s.idle_timeout),
            ("sensor.active_timeout", s.active_timeout),
            ("detection.context_window", self.detection.context_window),
            ("alerts.window", self.alerts.window),
        ] {
            if d.0 > MAX_INTERVAL {
                let message = format!("must be at most {}", humantime::format_duration(MAX_INTERVAL));
                return Err(ConfigError::Invalid { field, message });
            }
        }
        if s.run_dir.as_os_str().is_empty() {
            return bad("sensor.run_dir", "must not be empty");
        }
        if self.detection.model.is_empty() {
            return bad("detection.model", "must be \"default\" or a bundle directory");
        }
        for key in &self.detection.trusted_keys {
            if key.is_empty() {
                return bad("detection.trusted_keys", "entries must be 64 hex digits or a key file path");
            }
            if crate::model::sign::is_hex_key(key)
                && let Err(e) = crate::model::sign::PublicKey::parse(key, key)
            {
                return Err(ConfigError::Invalid { field: "detection.trusted_keys", message: e.to_string() });
            }
        }
        if self.detection.context_window.0.is_zero() {
            return bad("detection.context_window", "must be greater than zero");
        }
        if self.alerts.window.0.is_zero() {
            return bad("alerts.window", "must be greater than zero");
        }
        if self.alerts.min_flows == 0 {
            return bad("alerts.min_flows", "must be at least 1");
        }
        if self.alerts.min_severity == crate::detect::Severity::Info {
            return bad("alerts.min_severity", "must be low, medium or high");
        }
        if self.alerts.max_per_cycle == 0 || self.alerts.max_sources == 0 {
            return bad("alerts.max_per_cycle", "and alerts.max_sources must be at least 1");
        }
        for spec in &self.alerts.sinks {
            if let Err(message) = spec.validate() {
                return Err(ConfigError::Invalid { field: "alerts.sinks", message });
            }
        }
        let b = &self.block;
        if b.consecutive == 0 {
            return bad("block.consecutive", "must be at least 1");
        }
        if !(b.margin.is_finite() && b.margin >= 0.0) {
            return bad("block.margin", "must be a number ≥ 0");
        }
        if b.ttl.0 < Duration::from_secs(1) {
            return bad("block.ttl", "must be at least 1s");
        }
        if b.max_ttl.0 < Duration::from_secs(1) {
            return bad("block.max_ttl", "must be at least 1s");
        }
        if b.ttl.0 > b.max_ttl.0 {
            return bad("block.ttl", "must not exceed block.max_ttl");
        }
        let cap = agent_common::maps::BLOCKLIST_CAPACITY as usize;
        if b.max_rules == 0 || b.max_rules > cap {
            return Err(ConfigError::Invalid { field: "block.max_rules", message: format!("must be in 1..={cap}") });
        }
        if b.max_new_per_minute == 0 {
            return bad("block.max_new_per_minute", "must be at least 1");
        }
        self.learn.validate().map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        self.store.validate().map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        self.console.validate().map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        if let Some(c) = &self.collector {
            c.validate().map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        }
        self.validate_fleet()
    }

    fn validate_fleet(&self) -> Result<(), ConfigError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        f.validate().map_err(|(field, message)| ConfigError::Invalid { field, message })?;
        if f.models.is_some() && self.detection.trusted_keys.is_empty() {
            return Err(ConfigError::Invalid {
                field: "fleet.models",
                message: "needs detection.trusted_keys: the fleet's bundles are verified with them, always".to_owned(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_validate() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        let text = c.to_toml();
        let back = Config::parse(&text).expect("own output parses");
        assert_eq!(back.to_toml(), text);
        assert_eq!(back.block.mode, BlockMode::Off);
        assert_eq!(back.block.ttl, HumanDuration(Duration::from_mins(10)));
        assert_eq!(back.block.max_ttl, HumanDuration(Duration::from_hours(7 * 24)), "documented default");
    }

    #[test]
    fn partial_file_keeps_other_defaults() {
        let c = Config::parse("[block]\nmode = \"enforce\"\nttl = \"30s\"\nallowlist = [\"10.0.0.0/8\"]\n").unwrap();
        assert_eq!(c.block.mode, BlockMode::Enforce);
        assert_eq!(c.block.ttl.0, Duration::from_secs(30));
        assert_eq!(c.block.consecutive, 2);
        assert_eq!(c.sensor.interval.0, Duration::from_secs(1));
        c.validate().unwrap();
    }

    #[test]
    fn durations_are_bounded() {
        // `600years` overflowed the replay's and the harvest's clock arithmetic.
        let e = Config::parse("[sensor]\ninterval = \"600years\"\n").unwrap_err();
        assert!(e.contains("interval") && e.contains("600years"), "{e}");
        let c = Config::parse("[sensor]\nactive_timeout = \"30days\"\n").expect("under a year parses");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("sensor.active_timeout") && e.contains("7days"), "{e}");
        let c = Config::parse("[alerts]\nwindow = \"8days\"\n").expect("parses");
        assert!(c.validate().unwrap_err().to_string().contains("alerts.window"));
        assert_eq!(parse_interval_flag("7days"), Ok(MAX_INTERVAL));
        assert!(parse_interval_flag("600years").unwrap_err().contains("at most 7days"));
        assert!(parse_interval_flag("soon").is_err());
    }

    #[test]
    fn fleet_models_need_trusted_keys() {
        let text = "[fleet.bus]\nurl = \"nats://127.0.0.1:4222\"\nallow_plaintext = true\n\n[fleet.models]\ngroup = \"canary\"\n";
        let mut c = Config::parse(text).expect("parses");
        let e = c.validate().expect_err("no keys").to_string();
        assert!(e.contains("fleet.models") && e.contains("detection.trusted_keys"), "{e}");
        c.detection.trusted_keys = vec!["ab".repeat(32)];
        let e = c.validate().map_or_else(|e| e.to_string(), |()| String::new());
        assert!(!e.contains("fleet.models"), "{e}");
    }

    #[test]
    fn trusted_keys_are_keys_or_paths_and_bad_keys_are_named() {
        assert!(!Config::default().detection.allow_unsigned, "unsigned bundles are refused by default");
        let weak = format!("01{}", "00".repeat(31));
        let mut c =
            Config::parse(&format!("[detection]\ntrusted_keys = [\"{weak}\"]\nallow_unsigned = true\n")).unwrap();
        assert!(c.detection.allow_unsigned);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("config: `detection.trusted_keys` 0100") && e.contains("weak key"), "{e}");
        c.detection.trusted_keys = vec![String::new()];
        assert!(c.validate().unwrap_err().to_string().contains("detection.trusted_keys"));
        c.detection.trusted_keys = vec!["/etc/vigil/k.pub".into()];
        c.validate().expect("key files are read when the model loads");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Config::parse("[block]\nmdoe = \"enforce\"\n").unwrap_err();
        assert!(e.contains("mdoe"), "{e}");
        let e = Config::parse("[block]\nttl = 5\n").unwrap_err();
        assert!(e.contains("ttl"), "{e}");
        let e = Config::parse("[block]\nmode = \"sometimes\"\n").unwrap_err();
        assert!(e.contains("mode") && e.contains("sometimes"), "{e}");
        let e = Config::parse("[block]\nallowlist = [\"10.0.0.300/8\"]\n").unwrap_err();
        assert!(e.contains("allowlist"), "{e}");
        let mut c = Config::default();
        c.block.consecutive = 0;
        assert!(c.validate().unwrap_err().to_string().contains("block.consecutive"));
        let mut c = Config::default();
        c.block.ttl = HumanDuration(Duration::from_hours(24 * 8));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("block.ttl") && e.contains("block.max_ttl"), "{e}");
        c.block.max_ttl = HumanDuration(Duration::from_hours(24 * 8));
        c.validate().unwrap();
        let c = Config::parse("[block]\nmax_ttl = \"1h\"\n").unwrap();
        assert_eq!(c.block.max_ttl.0, Duration::from_hours(1));
        c.validate().unwrap();
        let c = Config::parse("[block]\nmax_ttl = \"5m\"\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("block.ttl"), "default ttl 10m over 5m");
        let mut c = Config::default();
        c.sensor.interval = HumanDuration(Duration::ZERO);
        assert!(c.validate().unwrap_err().to_string().contains("sensor.interval"));
    }
}
