//! Rendering decisions as Elastic Common Schema documents: the one place a [`Decision`]
//! becomes JSON, at the edge, on its way to the sinks.

use std::time::Duration;

use serde_json::{Value, json};

use super::{attack::AttackKind, sink::Event};
use crate::{
    clock::rfc3339_millis,
    detect::{
        BlockMode,
        decision::{Decision, ExplainedFlow, Severity},
    },
    flows::biflow::BiflowRecord,
    model::detector::Fired,
};

/// What every event says about the agent that raised it.
#[derive(Clone, Debug)]
pub struct Observer {
    pub hostname: String,
    /// Interface the sensor watches (`observer.ingress.interface.name`).
    pub iface: String,
    /// sha256 of the model bundle's `manifest.json` (`vigil.model.sha256`).
    pub model_sha256: String,
    /// Which model that is (`vigil.model.phase`): learning, site or fixed.
    pub model_phase: crate::learn::Phase,
    /// The feature schema's id (`rule.ruleset`).
    pub ruleset: String,
    pub block_mode: BlockMode,
    pub block_threshold: f32,
    /// Auto-block's rule TTL (named in dry-run and refusal events).
    pub ttl: Duration,
}

impl Observer {
    /// `decision` as an event for the sinks, stamped `now_wall_ns`.
    #[must_use]
    pub fn event(&self, decision: &Decision, now_wall_ns: u64) -> Event {
        Event {
            json: self.render(decision, now_wall_ns).to_string(),
            severity: decision.severity(),
            timestamp_ns: now_wall_ns,
        }
    }

    /// A model event (`model-swap`, `model-held-back`, `model-drift`) for the sinks: the
    /// learning phase's changes to what scores the traffic, with `details` under
    /// `vigil.learn`.
    #[must_use]
    pub fn model_event(&self, action: &str, message: &str, details: &Value, now_wall_ns: u64) -> Event {
        let doc = json!({
            "@timestamp": rfc3339_millis(now_wall_ns),
            "ecs": { "version": "8.11.0" },
            "message": message,
            "event": {
                "kind": "event",
                "category": ["configuration"],
                "type": ["change"],
                "action": action,
                "severity": Severity::Info.ecs(),
                "module": "vigil",
                "dataset": "vigil.model",
            },
            "observer": {
                "type": "ids",
                "vendor": "vigil",
                "hostname": self.hostname,
                "ingress": { "interface": { "name": self.iface } },
            },
            "vigil": { "model": { "sha256": self.model_sha256, "phase": self.model_phase.name() }, "learn": details },
        });
        Event { json: doc.to_string(), severity: Severity::Info, timestamp_ns: now_wall_ns }
    }

    /// An alert as an event with its id (`event.id`), which `vigil feedback` names.
    #[must_use]
    pub fn alert_event(&self, decision: &Decision, id: &str, now_wall_ns: u64) -> Event {
        let mut doc = self.render(decision, now_wall_ns);
        doc["event"]["id"] = Value::from(id);
        Event { json: doc.to_string(), severity: decision.severity(), timestamp_ns: now_wall_ns }
    }

    /// `decision` as an ECS document, stamped `now_wall_ns`.
    #[must_use]
    pub fn render(&self, decision: &Decision, now_wall_ns: u64) -> Value {
        let mut doc = self.envelope(decision, now_wall_ns);
        match decision {
            Decision::SourceAlert(a) => {
                merge(&mut doc, self.explained(a.severity, &a.top, a.alert_threshold));
                merge(&mut doc, threat(a.kind(), a.top.kind_from()));
                merge(
                    &mut doc,
                    json!({
                        "event": { "start": rfc3339_millis(a.first_ns), "end": rfc3339_millis(a.last_ns) },
                        "source": { "ip": a.source, "port": a.top.record.src_port, "packets": a.packets, "bytes": a.bytes },
                        "destination": { "ip": a.top.record.dst_ip, "port": a.top.record.dst_port },
                        "rule": { "name": "vigil-anomaly", "ruleset": self.ruleset },
                        "vigil": {
                            "counts": {
                                "flows": a.flows,
                                "anomalous_flows": a.anomalous_flows,
                                "destinations": a.destinations,
                                "destination_ports": a.destination_ports,
                                "packets": a.packets,
                                "bytes": a.bytes,
                            },
                        },
                    }),
                );
            }
            Decision::DestinationAlert(a) => {
                merge(&mut doc, self.explained(a.severity, &a.top, a.alert_threshold));
                merge(&mut doc, threat(a.kind(), a.top.kind_from()));
                merge(
                    &mut doc,
                    json!({
                        "event": { "start": rfc3339_millis(a.first_ns), "end": rfc3339_millis(a.last_ns) },
                        "destination": { "ip": a.destination, "port": a.top.record.dst_port, "packets": a.packets, "bytes": a.bytes },
                        "rule": { "name": "vigil-anomaly-destination", "ruleset": self.ruleset },
                        "vigil": {
                            "counts": {
                                "sources": a.sources,
                                "sources_capped": a.sources_capped,
                                "new_anomalous_flows": a.new_flows,
                                "destination_ports": a.destination_ports,
                                "packets": a.packets,
                                "bytes": a.bytes,
                            },
                        },
                    }),
                );
            }
            Decision::Blocked { rule, expires_in, .. } => {
                let expires_in = humantime::format_duration(Duration::from_secs(expires_in.as_secs())).to_string();
                merge(&mut doc, self.rule_fields(decision, rule, &expires_in));
            }
            Decision::Unblocked { rule, .. } => merge(&mut doc, self.rule_fields(decision, rule, "0s")),
            Decision::WouldBlock { source, consecutive } | Decision::Refused { source, consecutive, .. } => {
                merge(
                    &mut doc,
                    json!({
                        "event": { "reason": decision.reason() },
                        "source": { "ip": source },
                        "vigil": {
                            "consecutive_windows": consecutive,
                            "block_threshold": self.block_threshold,
                            "block_mode": self.block_mode,
                            "rule": {
                                "prefix": ipnet::IpNet::from(*source).to_string(),
                                "ttl": humantime::format_duration(self.ttl).to_string(),
                            },
                        },
                    }),
                );
            }
        }
        doc
    }

    /// The fields every event carries.
    fn envelope(&self, decision: &Decision, now_wall_ns: u64) -> Value {
        let (kind, types): (&str, &[&str]) = match decision {
            Decision::SourceAlert(_) | Decision::DestinationAlert(_) => ("alert", &["info"]),
            Decision::Blocked { .. } => ("event", &["denied", "start"]),
            Decision::Unblocked { .. } => ("event", &["allowed", "end"]),
            Decision::WouldBlock { .. } | Decision::Refused { .. } => ("event", &["info"]),
        };
        json!({
            "@timestamp": rfc3339_millis(now_wall_ns),
            "ecs": { "version": "8.11.0" },
            "message": decision.message(),
            "event": {
                "kind": kind,
                "category": ["network", "intrusion_detection"],
                "type": types,
                "action": decision.action(),
                "severity": decision.severity().ecs(),
                "module": "vigil",
                "dataset": "vigil.detection",
            },
            "observer": {
                "type": "ids",
                "vendor": "vigil",
                "hostname": self.hostname,
                "ingress": { "interface": { "name": self.iface } },
            },
            "vigil": { "model": { "sha256": self.model_sha256, "phase": self.model_phase.name() } },
        })
    }

    /// What an alert says about its worst conversation: network, scores against both
    /// thresholds, explanation, the conversation's record (format 2).
    fn explained(&self, severity: Severity, top: &ExplainedFlow, alert_threshold: f32) -> Value {
        let r = &top.record;
        json!({
            "network": {
                "transport": agent_common::proto::name(r.protocol),
                "iana_number": r.protocol.to_string(),
                "type": if r.ip_version == 4 { "ipv4" } else { "ipv6" },
            },
            "vigil": {
                "severity": severity.name(),
                "score": {
                    "combined": top.score.combined,
                    "iforest": top.score.iforest,
                    "autoencoder": top.score.autoencoder,
                    "range": top.score.range,
                    "classifier": top.score.classifier.map(|c| json!({
                        "kind": c.kind.name(),
                        "kind_probability": c.kind_probability,
                        "attack_probability": c.attack_probability,
                        "fired": c.fired,
                    })),
                    "fired": top.score.fired().map(Fired::name).collect::<Vec<_>>(),
                    "alert_threshold": alert_threshold,
                    "block_threshold": self.block_threshold,
                },
                "explanation": top.explanation,
                "top_flow": BiflowRecord::pair(r, top.back.as_ref()),
            },
        })
    }

    fn rule_fields(&self, decision: &Decision, rule: &crate::block::Rule, expires_in: &str) -> Value {
        json!({
            "event": { "reason": decision.reason() },
            "source": { "ip": rule.prefix.addr(), "address": rule.prefix.to_string() },
            "vigil": {
                "rule": {
                    "prefix": rule.prefix.to_string(),
                    "origin": rule.origin,
                    "drops": rule.drops,
                    "expires_in": expires_in,
                },
                "block_mode": self.block_mode,
            },
        })
    }
}

/// An alert's kind (`vigil.attack`) and its ATT&CK entry (ECS `threat.*`; none for an
/// unknown anomaly), from the table of `alert/attack.rs`.
fn threat(kind: AttackKind, from: &str) -> Value {
    let mut doc = json!({ "vigil": { "attack": { "kind": kind.name(), "from": from } } });
    if let Some(t) = kind.info().attack {
        let mut technique = json!({ "id": t.technique.0, "name": t.technique.1 });
        if let Some((id, name)) = t.subtechnique {
            technique["subtechnique"] = json!({ "id": id, "name": name });
        }
        doc["threat"] = json!({
            "framework": "MITRE ATT&CK",
            "tactic": { "id": t.tactic.0, "name": t.tactic.1 },
            "technique": technique,
        });
    }
    doc
}

/// Merges `from` into `into`, objects key by key.
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
