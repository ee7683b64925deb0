//! Suppression rules: an analyst's "stop sending me this alert for a while".
//!
//! A rule matches alerts by any of source, destination (prefixes), destination port and kind
//! (`event.action`: `anomalous-flows`, `anomalous-flows-to-destination`), and expires. Every
//! field it sets must match. A rule sets at least one field, and no rule lasts longer than
//! [`MAX_TTL`]. Matching alerts are counted (`vigil_alerts_suppressed_total`, `vigil status`)
//! and not sent. Rules touch alerts only, never auto-block: a source that must never be
//! blocked belongs in `block.allowlist`.
//!
//! `vigil suppress add|list|del` writes the rules file (`alerts.suppress_file`). The agent
//! reads it again whenever it changes. A rule can hide attacks, so the file is read only if
//! it belongs to root or the agent's user and nobody else may write it. A file that is
//! unreadable, malformed or fails that check is reported in the log, and the agent keeps the
//! rules it had.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{detect::Decision, throttle::ThrottledLog};

/// Longest a rule may last.
pub const MAX_TTL: Duration = Duration::from_hours(90 * 24);
/// Rules in the file at most.
pub const MAX_RULES: usize = 10_000;
/// Largest rules file read.
const MAX_FILE_BYTES: u64 = 4 << 20;
/// The kinds a rule may name (`event.action` of the alerts).
pub const KINDS: [&str; 2] = ["anomalous-flows", "anomalous-flows-to-destination"];

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Wall-clock milliseconds since the epoch.
    pub created_ms: u64,
    pub expires_ms: u64,
    #[serde(default)]
    pub reason: String,
}

impl Rule {
    /// Whether the rule is in force at `now_ms` and covers `decision` (alerts only).
    #[must_use]
    pub fn matches(&self, decision: &Decision, now_ms: u64) -> bool {
        if now_ms >= self.expires_ms {
            return false;
        }
        let (source, destination, port) = match decision {
            Decision::SourceAlert(a) => (Some(a.source), a.top.record.dst_ip, a.top.record.dst_port),
            Decision::DestinationAlert(d) => (None, d.destination, d.top.record.dst_port),
            _ => return false,
        };
        let net = |rule: Option<IpNet>, ip: Option<IpAddr>| rule.is_none_or(|n| ip.is_some_and(|ip| contains(n, ip)));
        net(self.source, source)
            && net(self.destination, Some(destination))
            && self.port.is_none_or(|p| p == port)
            && self.kind.as_deref().is_none_or(|k| k == decision.action())
    }

    /// What the rule covers, for `vigil suppress list`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.source {
            parts.push(format!("source {s}"));
        }
        if let Some(d) = self.destination {
            parts.push(format!("destination {d}"));
        }
        if let Some(p) = self.port {
            parts.push(format!("port {p}"));
        }
        if let Some(k) = &self.kind {
            parts.push(format!("kind {k}"));
        }
        parts.join(", ")
    }

    /// Checks a rule as `vigil suppress add` and the agent both do.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if self.source.is_none() && self.destination.is_none() && self.port.is_none() && self.kind.is_none() {
            return Err("a rule needs at least one of --source, --destination, --port, --kind".to_owned());
        }
        if let Some(k) = &self.kind
            && !KINDS.contains(&k.as_str())
        {
            return Err(format!("unknown kind {k:?}: one of {}", KINDS.join(", ")));
        }
        let ttl = self.expires_ms.saturating_sub(self.created_ms);
        if ttl == 0 || u128::from(ttl) > MAX_TTL.as_millis() {
            return Err(format!("a rule lasts at most {} days", MAX_TTL.as_secs() / 86_400));
        }
        Ok(())
    }
}

/// IPv4 addresses also match as IPv4-mapped IPv6 and the reverse: records hold either.
fn contains(net: IpNet, ip: IpAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    };
    net.contains(&canonical(ip)) || net.contains(&ip)
}

/// The rules file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    pub version: u32,
    pub rules: Vec<Rule>,
}

/// Why the rules file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    #[error(transparent)]
    File(#[from] crate::model::files::FileError),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl RuleFile {
    /// Reads `path` (none yet: no rules), checking who may write it.
    ///
    /// # Errors
    /// [`SuppressError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, SuppressError> {
        use crate::model::files::{Access, FileError, read_capped};
        let bytes = match read_capped(path, MAX_FILE_BYTES, Access::Private) {
            Ok(b) => b,
            Err(FileError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self { version: 1, rules: Vec::new() });
            }
            Err(e) => return Err(e.into()),
        };
        let invalid = |message: String| SuppressError::Invalid { path: path.to_owned(), message };
        let file: Self = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        if file.version != 1 {
            return Err(invalid(format!("version {}, this build reads 1", file.version)));
        }
        if file.rules.len() > MAX_RULES {
            return Err(invalid(format!("{} rules, at most {MAX_RULES}", file.rules.len())));
        }
        for rule in &file.rules {
            rule.validate().map_err(|m| invalid(format!("rule {}: {m}", rule.id)))?;
        }
        Ok(file)
    }

    /// Writes the file atomically into its directory, made the writer's own (0700) if needed.
    ///
    /// # Errors
    /// [`SuppressError`] naming what could not be written.
    pub fn write(&self, path: &Path) -> Result<(), SuppressError> {
        let io = |source| SuppressError::Io { path: path.to_owned(), source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or_else(|| Path::new("."));
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SuppressError::Invalid { path: path.to_owned(), message: "not a file name".to_owned() })?;
        crate::private_dir::ensure(dir).map_err(|e| io(std::io::Error::other(e.to_string())))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        crate::private_dir::write_file(dir, name, &json).map_err(io)
    }

    /// Drops rules that expired before `now_ms`; answers how many.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        let before = self.rules.len();
        self.rules.retain(|r| r.expires_ms > now_ms);
        before - self.rules.len()
    }

    /// The next free rule id.
    #[must_use]
    pub fn next_id(&self) -> u32 {
        self.rules.iter().map(|r| r.id).max().map_or(1, |m| m.saturating_add(1))
    }
}

/// The agent's view of the rules file: read again when it changes.
pub struct Suppressions {
    path: PathBuf,
    /// The file's state when last read.
    stamp: Option<crate::model::files::Stamp>,
    rules: Vec<Rule>,
    log: ThrottledLog,
    /// Alerts suppressed since start, per rule id.
    pub suppressed: std::collections::BTreeMap<u32, u64>,
}

impl Suppressions {
    /// Reads `path` now.
    ///
    /// # Errors
    /// The file exists but cannot be used: the agent does not start on it.
    pub fn load(path: &Path) -> Result<Self, SuppressError> {
        let mut s = Self {
            path: path.to_owned(),
            stamp: None,
            rules: Vec::new(),
            log: ThrottledLog::new(crate::live::STATUS_EVERY),
            suppressed: std::collections::BTreeMap::new(),
        };
        s.stamp = crate::model::files::stamp(path);
        s.rules = RuleFile::read(path)?.rules;
        if !s.rules.is_empty() {
            info!(file = %path.display(), rules = s.rules.len(), "alert suppression rules loaded");
        }
        Ok(s)
    }

    /// Reads the file again if it changed since the last read; keeps the old rules if it
    /// cannot be used.
    pub fn refresh(&mut self) {
        let now = crate::model::files::stamp(&self.path);
        if now == self.stamp {
            return;
        }
        match RuleFile::read(&self.path) {
            Ok(file) => {
                self.stamp = now;
                if file.rules != self.rules {
                    info!(file = %self.path.display(), rules = file.rules.len(), "alert suppression rules changed");
                }
                self.rules = file.rules;
                if self.log.success().is_some() {
                    info!(file = %self.path.display(), "alert suppression rules readable again");
                }
            }
            Err(e) => {
                if self.log.failures(1, Instant::now()).is_some() {
                    warn!(error = %e, rules = self.rules.len(), "alert suppression rules not reloaded; keeping the rules in force");
                }
            }
        }
    }

    /// The rule that suppresses `decision` at `now_ms`, if any; counts it.
    pub fn suppress(&mut self, decision: &Decision, now_ms: u64) -> Option<u32> {
        let id = self.rules.iter().find(|r| r.matches(decision, now_ms))?.id;
        *self.suppressed.entry(id).or_default() += 1;
        Some(id)
    }

    /// Rules in force at `now_ms`.
    #[must_use]
    pub fn active(&self, now_ms: u64) -> usize {
        self.rules.iter().filter(|r| r.expires_ms > now_ms).count()
    }
}

#[cfg(test)]
mod tests;
