//! What the engine decides: the typed output of the Decide stage.
//!
//! A [`Decision`] holds everything an operator needs to act on it (counts, the explained worst
//! flow, the rule and why), and nothing about how it is shown: `alert::ecs` renders it as an
//! Elastic Common Schema document at the edge, metrics count it, the log line uses
//! [`Decision::message`]. Nothing parses a rendered decision back.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    alert::attack::{AttackKind, Shape},
    block::Rule,
    flows::FlowRecord,
    model::{Contribution, Score},
};

/// How serious an event is. One scale for everything the agent emits: the engine grades
/// alerts with it, `alerts.min_severity` filters on it, ECS (`event.severity`) and syslog
/// (the PRI severity) are derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Block and unblock events.
    Info,
    /// Fewer than `min_flows` anomalous flows from the source in the window.
    Low,
    /// At least `min_flows` anomalous flows from one source in a window.
    Medium,
    /// As medium, and the top flow is above the block threshold.
    High,
}

impl Severity {
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

    /// The RFC 5424 severity code: error (3), warning (4), notice (5).
    #[must_use]
    pub const fn syslog(self) -> u8 {
        match self {
            Self::High => 3,
            Self::Medium => 4,
            Self::Low | Self::Info => 5,
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

/// The highest-scoring flow of an alert, with the features that explain its score.
#[derive(Clone, Debug)]
pub struct ExplainedFlow {
    /// The initiator's direction of the conversation.
    pub record: FlowRecord,
    /// The responder's, if it answered.
    pub back: Option<FlowRecord>,
    pub score: Score,
    /// The top features, largest share first.
    pub explanation: Vec<Contribution>,
    /// Its raw feature row: what analyst feedback returns to the learning sample.
    pub raw: crate::learn::sample::Row,
}

impl ExplainedFlow {
    /// The leading feature's name, `?` without an explanation.
    #[must_use]
    pub fn lead(&self) -> &str {
        self.explanation.first().map_or("?", |c| c.feature.as_str())
    }

    /// The attack kind the supervised classifier names, when it fired on this conversation.
    #[must_use]
    pub fn classified(&self) -> Option<AttackKind> {
        self.score.classifier.filter(|c| c.fired).map(|c| c.kind)
    }

    /// Where an alert's kind comes from: `classifier` when it fired on the alert's worst
    /// conversation, otherwise `evidence` (the rules of [`AttackKind::of_source`]).
    #[must_use]
    pub fn kind_from(&self) -> &'static str {
        if self.classified().is_some() { "classifier" } else { "evidence" }
    }
}

/// One source's anomalies over an alert window.
#[derive(Clone, Debug)]
pub struct SourceAlert {
    pub source: IpAddr,
    pub severity: Severity,
    /// Flow snapshots scored (an open flow counts once per cycle).
    pub flows: u64,
    /// Distinct anomalous flows.
    pub anomalous_flows: u64,
    pub destinations: usize,
    pub destination_ports: usize,
    /// Latest packets and bytes summed over the anomalous flows.
    pub packets: u64,
    pub bytes: u64,
    /// Wall-clock ns of the first and last packet of those flows.
    pub first_ns: u64,
    pub last_ns: u64,
    pub top: ExplainedFlow,
    pub alert_threshold: f32,
}

/// Anomalous flows from many sources to one destination over an alert window: a spoofed or
/// distributed flood, which no single source's alert shows and blocking cannot stop.
#[derive(Clone, Debug)]
pub struct DestinationAlert {
    pub destination: IpAddr,
    pub severity: Severity,
    /// Distinct sources (at most the engine's cap; `sources_capped` says it was reached).
    pub sources: usize,
    pub sources_capped: bool,
    /// Anomalous flows that started in the window.
    pub new_flows: u64,
    pub destination_ports: usize,
    pub packets: u64,
    pub bytes: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub top: ExplainedFlow,
    pub alert_threshold: f32,
}

impl ExplainedFlow {
    /// The worst conversation's part of an alert's [`Shape`].
    fn shape(&self) -> Shape {
        let r = &self.record;
        let back = self.back.as_ref();
        Shape {
            protocol: r.protocol,
            src_port: r.src_port,
            dst_port: r.dst_port,
            syn_unanswered: r.protocol == 6 && r.tcp_flags.syn > 0 && back.is_none_or(|b| b.tcp_flags.syn_ack == 0),
            syn_only: r.protocol == 6 && r.tcp_flags.syn > 0 && r.tcp_flags.ack == 0,
            bytes_out: r.bytes,
            bytes_back: back.map_or(0, |b| b.bytes),
            seconds: Duration::from_nanos(r.last_seen_ns.saturating_sub(r.first_seen_ns)).as_secs_f64(),
            ..Shape::default()
        }
    }
}

/// A raw feature of a flow-schema row by name (0 for a name the schema lacks), as a count.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a finite, positive count")]
fn raw_feature(raw: &crate::learn::sample::Row, name: &str) -> usize {
    let value = crate::features::FLOW_FEATURES.iter().position(|f| f.0 == name).map_or(0.0, |i| raw[i]);
    if value.is_finite() && value > 0.0 { value.round() as usize } else { 0 }
}

impl SourceAlert {
    /// What kind of attack it is: the classifier's kind when it fired on the worst
    /// conversation, otherwise what the evidence shows ([`AttackKind::of_source`]).
    #[must_use]
    pub fn kind(&self) -> AttackKind {
        if let Some(kind) = self.top.classified() {
            return kind;
        }
        let raw = |name| raw_feature(&self.top.raw, name);
        AttackKind::of_source(&Shape {
            flows: self.anomalous_flows,
            peers: self.destinations,
            destination_ports: self.destination_ports,
            context_ports: raw("src_dst_ports").max(raw("src_dst_ports_long")).max(raw("pair_ports_long")),
            context_hosts: raw("src_dst_hosts").max(raw("src_dst_hosts_long")),
            protocols: raw("src_protocols"),
            packets: self.packets,
            bytes: self.bytes,
            ..self.top.shape()
        })
    }
}

impl DestinationAlert {
    /// What kind of flood it is: the classifier's kind when it fired on the worst
    /// conversation, otherwise what the evidence shows ([`AttackKind::of_destination`]).
    #[must_use]
    pub fn kind(&self) -> AttackKind {
        if let Some(kind) = self.top.classified() {
            return kind;
        }
        AttackKind::of_destination(&Shape {
            flows: self.new_flows,
            peers: self.sources,
            destination_ports: self.destination_ports,
            packets: self.packets,
            bytes: self.bytes,
            ..self.top.shape()
        })
    }
}

/// Why a rule appeared in the blocklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockCause {
    /// The engine blocked a source whose score stayed above the block threshold.
    Auto { consecutive: u32 },
    /// A rule the engine did not write (an operator's `vigil block add`).
    Manual,
    /// A rule of the fleet blocklist, installed by the agent's follower (`[fleet.blocking]`).
    Fleet,
}

/// Why a rule left the blocklist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnblockCause {
    /// It lapsed at its expiry.
    Expired,
    /// Someone removed it before its expiry (`vigil block remove`).
    Removed,
}

/// Why auto-block did not block a source that earned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The source is in the allowlist (`why`: the entry's origin, `net`: the entry).
    Allowlisted { net: IpNet, why: String },
    /// `block.max_rules` rules are active.
    RuleCap(usize),
    /// `block.max_new_per_minute` rules were installed in the last minute.
    RateLimit(usize),
    /// The kernel refused the rule (map full, ...).
    InstallFailed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Allowlisted { net, why } => write!(f, "allowlisted ({why}: {net})"),
            Self::RuleCap(n) => write!(f, "rule cap reached ({n} active rules)"),
            Self::RateLimit(n) => write!(f, "rate limit reached ({n} new rules in the last minute)"),
            Self::InstallFailed(e) => write!(f, "installing the rule failed: {e}"),
        }
    }
}

/// What the engine decided in one cycle, one value per event.
#[derive(Clone, Debug)]
pub enum Decision {
    SourceAlert(Box<SourceAlert>),
    DestinationAlert(Box<DestinationAlert>),
    /// A rule is in the blocklist now; `expires_in` is its time left when decided.
    Blocked {
        rule: Rule,
        cause: BlockCause,
        expires_in: Duration,
    },
    Unblocked {
        rule: Rule,
        cause: UnblockCause,
    },
    /// Dry run: the source would have been blocked.
    WouldBlock {
        source: IpAddr,
        consecutive: u32,
    },
    Refused {
        source: IpAddr,
        consecutive: u32,
        refusal: Refusal,
    },
}

impl Decision {
    /// The attack kind of an alert; `None` for other decisions.
    #[must_use]
    pub fn attack_kind(&self) -> Option<AttackKind> {
        match self {
            Self::SourceAlert(a) => Some(a.kind()),
            Self::DestinationAlert(a) => Some(a.kind()),
            _ => None,
        }
    }

    /// `event.action`.
    #[must_use]
    pub const fn action(&self) -> &'static str {
        match self {
            Self::SourceAlert(_) => "anomalous-flows",
            Self::DestinationAlert(_) => "anomalous-flows-to-destination",
            Self::Blocked { .. } => "block",
            Self::Unblocked { .. } => "unblock",
            Self::WouldBlock { .. } => "block-dry-run",
            Self::Refused { .. } => "block-refused",
        }
    }

    #[must_use]
    pub const fn is_alert(&self) -> bool {
        matches!(self, Self::SourceAlert(_) | Self::DestinationAlert(_))
    }

    #[must_use]
    pub fn severity(&self) -> Severity {
        match self {
            Self::SourceAlert(a) => a.severity,
            Self::DestinationAlert(a) => a.severity,
            _ => Severity::Info,
        }
    }

    /// Why a block action happened (`event.reason`); alerts have none.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        match self {
            Self::SourceAlert(_) | Self::DestinationAlert(_) => None,
            Self::Blocked { cause: BlockCause::Auto { consecutive }, .. } => {
                Some(format!("score above the block threshold for {consecutive} consecutive windows"))
            }
            Self::Blocked { cause: BlockCause::Manual, .. } => Some("manual".to_owned()),
            Self::Blocked { cause: BlockCause::Fleet, .. } => Some("fleet blocklist".to_owned()),
            Self::Unblocked { cause: UnblockCause::Expired, .. } => Some("ttl".to_owned()),
            Self::Unblocked { cause: UnblockCause::Removed, .. } => Some("removed".to_owned()),
            Self::WouldBlock { .. } => Some("dry run: would block".to_owned()),
            Self::Refused { refusal, .. } => Some(refusal.to_string()),
        }
    }

    /// One line for people: the ECS `message` and the agent's log.
    #[must_use]
    pub fn message(&self) -> String {
        match self {
            Self::SourceAlert(a) => format!(
                "{}: {} anomalous flows to {} hosts / {} ports (score {:.1}, alert at {:.1}); top feature {}",
                a.source,
                a.anomalous_flows,
                a.destinations,
                a.destination_ports,
                a.top.score.combined,
                a.alert_threshold,
                a.top.lead()
            ),
            Self::DestinationAlert(a) => format!(
                "{}: anomalous flows from {}{} sources ({} new flows, {} ports; score {:.1}, alert at {:.1}); spoofed or distributed, not blocked; top feature {}",
                a.destination,
                if a.sources_capped { "at least " } else { "" },
                a.sources,
                a.new_flows,
                a.destination_ports,
                a.top.score.combined,
                a.alert_threshold,
                a.top.lead()
            ),
            Self::Blocked { rule, .. } => format!("{} blocked ({})", rule.prefix, self.reason().unwrap_or_default()),
            Self::Unblocked { rule, .. } => {
                format!("{} unblocked ({})", rule.prefix, self.reason().unwrap_or_default())
            }
            Self::WouldBlock { source, .. } | Self::Refused { source, .. } => {
                format!("{source}: {}", self.reason().unwrap_or_default())
            }
        }
    }

    /// The rule a block event is about.
    #[must_use]
    pub const fn rule(&self) -> Option<&Rule> {
        match self {
            Self::Blocked { rule, .. } | Self::Unblocked { rule, .. } => Some(rule),
            _ => None,
        }
    }
}
