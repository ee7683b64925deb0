//! Per capture and per attacker: the question a user asks of a sensor. Was the attacker
//! alerted, how long after its first packet, and how many alerts did ordinary traffic raise?
//!
//! Each capture is played through the live path's Decide stage ([`Engine`]) on its own clock:
//! a conversation is scored at the first harvest after its first packet (`interval` steps of
//! the capture's time, as `vigil run` harvests) and the engine groups the scored flows into
//! alerts with the default alert settings (`alerts.window`, `min_flows`, `min_sources`,
//! `min_severity`). Live, a conversation is scored in that first cycle with the counters it
//! has by then and again as it grows; here it is scored once with its final counters, so the
//! times are those of a sensor that sees a conversation whole at its first harvest: a lower
//! bound for conversations that only turn anomalous late.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    detect::{
        Decision, Engine, EngineConfig, Explain,
        allowlist::Allowlist,
        score::{Evidence, ScoredFlow},
    },
    flows::{biflow::Conversation, harvest::LiveFlow},
    model::detector::{Contribution, Score},
};

/// What one capture's replay raised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CaptureOutcome {
    /// The capture, relative to the labels file.
    pub file: String,
    /// `benign` or the attack's kind.
    pub kind: String,
    /// The attacker's address (none for a spoofed flood: then its victim).
    pub attacker: Option<IpAddr>,
    pub victim: Option<IpAddr>,
    pub conversations: usize,
    /// Attack captures: an alert named the attacker (a destination alert named the victim
    /// when the attacker is spoofed).
    pub alerted: Option<bool>,
    /// Seconds from the attack's first packet to its first alert.
    pub seconds_to_alert: Option<f64>,
    /// Alerts of medium or high severity that named anyone else (benign captures: all).
    pub false_alerts: usize,
}

/// Attackers alerted, per kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindOutcome {
    pub kind: String,
    pub captures: usize,
    pub alerted: usize,
    /// Median seconds to the first alert of those alerted.
    pub median_seconds_to_alert: Option<f64>,
}

/// The per-capture evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackerReport {
    /// How the captures were played.
    pub protocol: String,
    pub captures: Vec<CaptureOutcome>,
    pub per_kind: Vec<KindOutcome>,
    /// Conversations of the benign captures played, and the alerts they raised.
    pub benign_conversations: usize,
    pub benign_alerts: usize,
    pub benign_alerts_per_1000: f64,
}

/// One capture to play: its conversations (with their scores) and label.
pub struct Capture<'a> {
    pub file: String,
    pub kind: String,
    pub attacker: Option<IpAddr>,
    pub victim: Option<IpAddr>,
    pub conversations: Vec<&'a Conversation>,
    pub scores: Vec<Score>,
}

/// Alerts carry no explanation here: only who and when count.
struct NoExplanation;

impl Explain for NoExplanation {
    fn explain(&self, _: &Evidence, _: usize) -> Vec<Contribution> {
        Vec::new()
    }
}

/// The engine settings of `vigil run` with the default configuration.
fn engine_config(alert_threshold: f32) -> EngineConfig {
    let config = Config::default();
    let mut engine = EngineConfig::from_config(&config, alert_threshold, Allowlist::new(&[], false));
    // Nothing is blocked in an evaluation.
    engine.block_mode = crate::detect::BlockMode::Off;
    engine
}

/// The alerts one capture raises: (capture ns of the harvest, alert).
fn alerts_of(capture: &Capture<'_>, config: &EngineConfig, interval_ns: u64) -> Vec<(u64, Decision)> {
    let window_ns = crate::clock::duration_ns(config.alert_window);
    let mut engine = Engine::new(config.clone());
    let mut cycles: BTreeMap<u64, Vec<ScoredFlow>> = BTreeMap::new();
    for (c, score) in capture.conversations.iter().zip(&capture.scores) {
        let first = c.first_seen_ns();
        let harvest = (first / interval_ns + 1) * interval_ns;
        cycles.entry(harvest).or_default().push(ScoredFlow {
            flow: LiveFlow { record: c.first.clone(), back: c.second.clone(), new: true, first_mono_ns: first },
            score: *score,
            evidence: Evidence::default(),
        });
    }
    let last = cycles.keys().next_back().copied().unwrap_or(0);
    let mut out = Vec::new();
    let mut decide = |engine: &mut Engine, at: u64, flows: &[ScoredFlow]| {
        let decisions = engine.decide(at, flows, &NoExplanation, None).unwrap_or_default();
        out.extend(decisions.into_iter().map(|d| (at, d)));
    };
    for (at, flows) in &cycles {
        decide(&mut engine, *at, flows);
    }
    // One window after the last harvest, pending anomalies are raised or let go.
    for k in 1..=2 {
        decide(&mut engine, last + k * window_ns, &[]);
    }
    out
}

fn names(decision: &Decision) -> Option<(IpAddr, bool)> {
    match decision {
        Decision::SourceAlert(a) => Some((a.source, true)),
        Decision::DestinationAlert(a) => Some((a.destination, false)),
        _ => None,
    }
}

#[expect(clippy::cast_precision_loss, reason = "seconds and rates for a report")]
fn outcome(capture: &Capture<'_>, config: &EngineConfig, interval_ns: u64) -> CaptureOutcome {
    let alerts = alerts_of(capture, config, interval_ns);
    let benign = capture.kind == super::labels::BENIGN;
    let is_attacker = |ip: IpAddr, source: bool| {
        !benign
            && match capture.attacker {
                Some(a) => source && ip == a,
                None => !source && Some(ip) == capture.victim,
            }
    };
    let first_alert =
        alerts.iter().filter(|(_, d)| names(d).is_some_and(|(ip, s)| is_attacker(ip, s))).map(|a| a.0).min();
    let attack_start = capture
        .conversations
        .iter()
        .filter(|c| {
            let ends = [c.first.src_ip, c.first.dst_ip];
            capture.attacker.is_none_or(|a| ends.contains(&a))
        })
        .map(|c| c.first_seen_ns())
        .min();
    let seconds_to_alert = match (first_alert, attack_start) {
        (Some(alert), Some(start)) => Some(alert.saturating_sub(start) as f64 / 1e9),
        _ => None,
    };
    CaptureOutcome {
        file: capture.file.clone(),
        kind: capture.kind.clone(),
        attacker: capture.attacker,
        victim: capture.victim,
        conversations: capture.conversations.len(),
        alerted: (!benign).then_some(first_alert.is_some()),
        seconds_to_alert,
        false_alerts: alerts.iter().filter(|(_, d)| names(d).is_some_and(|(ip, s)| !is_attacker(ip, s))).count(),
    }
}

/// Plays every capture and reports per capture, per kind and per 1,000 benign conversations.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "rates for a report")]
pub fn evaluate(captures: &[Capture<'_>], alert_threshold: f32, interval_ns: u64) -> AttackerReport {
    let config = engine_config(alert_threshold);
    let outcomes: Vec<CaptureOutcome> = captures.iter().map(|c| outcome(c, &config, interval_ns)).collect();
    let mut kinds: BTreeMap<&str, (usize, usize, Vec<f64>)> = BTreeMap::new();
    for o in outcomes.iter().filter(|o| o.alerted.is_some()) {
        let k = kinds.entry(o.kind.as_str()).or_default();
        k.0 += 1;
        if o.alerted == Some(true) {
            k.1 += 1;
            k.2.extend(o.seconds_to_alert);
        }
    }
    let per_kind = kinds
        .into_iter()
        .map(|(kind, (n, alerted, mut times))| {
            times.sort_by(f64::total_cmp);
            KindOutcome {
                kind: kind.to_owned(),
                captures: n,
                alerted,
                median_seconds_to_alert: times.get(times.len() / 2).copied(),
            }
        })
        .collect();
    let benign: Vec<&CaptureOutcome> = outcomes.iter().filter(|o| o.alerted.is_none()).collect();
    let benign_conversations: usize = benign.iter().map(|o| o.conversations).sum();
    let benign_alerts: usize = benign.iter().map(|o| o.false_alerts).sum();
    AttackerReport {
        protocol: format!(
            "each capture on its own clock through the live Decide stage with the default alert settings; \
             a conversation is scored once, with its final counters, at the first harvest ({} ms steps) after its first packet",
            interval_ns / 1_000_000
        ),
        captures: outcomes,
        per_kind,
        benign_conversations,
        benign_alerts,
        benign_alerts_per_1000: if benign_conversations == 0 {
            0.0
        } else {
            benign_alerts as f64 * 1000.0 / benign_conversations as f64
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::flow::tests::record;

    fn conversation(src: u8, port: u16, first_ms: u64) -> Conversation {
        Conversation::new(record(src, 2, port, first_ms), None)
    }

    fn score(combined: f32) -> Score {
        Score { iforest: 0.5, autoencoder: 0.1, range: 0.0, combined, ..Score::default() }
    }

    #[test]
    fn an_attacker_with_enough_anomalous_flows_is_alerted_with_its_delay_and_others_count_as_false() {
        // Host 66 probes 10 ports from 1.5 s on, all anomalous; host 20 has one anomalous flow.
        let convs: Vec<Conversation> = (0..10u16)
            .map(|i| conversation(66, 1000 + i, 1500 + u64::from(i) * 100))
            .chain([conversation(20, 80, 100)])
            .collect();
        let mut scores = vec![score(5.0); 10];
        scores.push(score(5.0));
        let attacker: IpAddr = "10.0.0.66".parse().expect("ip");
        let capture = Capture {
            file: "scan.pcap".into(),
            kind: "port-scan".into(),
            attacker: Some(attacker),
            victim: Some("10.0.0.2".parse().expect("ip")),
            conversations: convs.iter().collect(),
            scores,
        };
        let report = evaluate(&[capture], 4.0, 1_000_000_000);
        let o = &report.captures[0];
        assert_eq!(o.alerted, Some(true));
        // The first probes are harvested at 2 s, 0.5 s after the attack's first packet; the
        // third anomalous flow (min_flows) comes with them.
        assert!((o.seconds_to_alert.expect("alerted") - 0.5).abs() < 1e-9, "{o:?}");
        assert_eq!(o.false_alerts, 0, "one anomalous flow of host 20 is a low alert, not sent");
        assert_eq!(report.per_kind[0].alerted, 1);
    }

    #[test]
    fn a_quiet_attacker_is_not_alerted_and_benign_alerts_are_counted_per_thousand() {
        let attack: Vec<Conversation> = (0..5u16).map(|i| conversation(66, 22, u64::from(i) * 1000)).collect();
        let benign: Vec<Conversation> = (0..5u16).map(|i| conversation(30, 443 + i, u64::from(i))).collect();
        let captures = [
            Capture {
                file: "guess.pcap".into(),
                kind: "ssh-bruteforce".into(),
                attacker: Some("10.0.0.66".parse().expect("ip")),
                victim: None,
                conversations: attack.iter().collect(),
                scores: vec![score(1.0); 5],
            },
            Capture {
                file: "web.pcap".into(),
                kind: crate::eval::labels::BENIGN.into(),
                attacker: None,
                victim: None,
                conversations: benign.iter().collect(),
                scores: vec![score(9.0); 5],
            },
        ];
        let report = evaluate(&captures, 4.0, 1_000_000_000);
        assert_eq!(report.captures[0].alerted, Some(false));
        assert_eq!(report.captures[0].seconds_to_alert, None);
        assert_eq!(report.captures[1].alerted, None);
        assert_eq!((report.benign_conversations, report.benign_alerts), (5, 1));
        assert!((report.benign_alerts_per_1000 - 200.0).abs() < 1e-9);
        assert_eq!(report.per_kind.len(), 1, "benign captures are not a kind");
    }
}
