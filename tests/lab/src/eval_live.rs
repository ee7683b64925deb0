//! End-to-end evaluation on replayed captures: every capture of a labelled directory is
//! replayed into the running agent, and its alerts are checked against the labels.
//!
//! The agent runs on the lab's server (the victim). As a capture is replayed, its labelled
//! attacker is mapped to an address of its own in the lab's range and its victim to the
//! server's address, so the labels still say who attacks whom; and the agent sees it as the
//! host would (`vigil_tests::host_replay`): the victim's own packets leave the server's
//! interface (its egress), everything else arrives from the attacker's namespace. Every frame
//! the capture reader reads is replayed, whatever its link type or contents. Captures are
//! replayed one after another, each followed by a quiet `settle` period; an alert belongs to
//! the capture whose segment (replay start to the next replay start) holds its timestamp, and
//! a flow record to the segment holding its first packet.
//!
//! Per capture: for attacks, whether the attacker was alerted and how long after its first
//! packet (as the sensor timed it); for every capture, the alerts on other sources (false
//! alerts) and the benign flows.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use vigil::{
    eval::labels::{CaptureLabel, Labels},
    flows::FlowRecord,
};

use vigil_tests::{
    agent::read_records,
    host_replay::{self, Sender},
    interrupt::{self, Interrupted},
    lab::{IFACE, Lab, VICTIM, Watch, event_ip, is_alert, timestamp_ms},
};

use crate::pcapreplay;

/// How to run the evaluation.
#[derive(Clone, Debug)]
pub struct Options {
    /// A `labels.json` or the directory holding it.
    pub labels: PathBuf,
    /// Model bundle for the agent (`default` or a directory).
    pub model: String,
    /// Longest pause replayed between two packets.
    pub max_gap: Duration,
    /// Quiet time after each capture, so its alerts and flows fall into its segment.
    pub settle: Duration,
    /// Only captures whose path contains one of these (all if empty).
    pub only: Vec<String>,
    /// Print events as they arrive.
    pub watch: bool,
}

/// The targets the issue sets.
pub const TARGET_ALERT_MS: i64 = 2000;
pub const TARGET_FALSE_PER_1000: f64 = 1.0;

/// What happened to one capture.
#[derive(Clone, Debug, Serialize)]
pub struct CaptureResult {
    pub capture: String,
    pub kind: String,
    pub packets: u64,
    /// Frames replayed (frames over the MTU are cut, not dropped).
    pub sent: Option<u64>,
    /// Of those, frames the victim sent (from its own namespace, through its egress).
    pub from_victim: u64,
    pub replay_seconds: f64,
    /// The labelled attacker and victim, and what they became in the lab.
    pub attacker: Option<String>,
    pub attacker_lab: Option<String>,
    pub victim: Option<String>,
    pub victim_lab: Option<String>,
    /// Flow records the sensor produced in this capture's segment.
    pub flows: usize,
    pub attack_flows: usize,
    pub benign_flows: usize,
    /// Attack captures: an alert named the attacker (or, attacker unknown, the victim as
    /// destination).
    pub alerted: Option<bool>,
    /// From the attack's first packet (sensor time) to the first such alert.
    pub time_to_alert_ms: Option<i64>,
    /// Alerts about anything else.
    pub false_alerts: usize,
    pub alerts: usize,
    pub error: Option<String>,
}

/// The whole evaluation.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub labels: String,
    pub model: String,
    pub machine: String,
    pub max_gap_ms: u128,
    pub settle_ms: u128,
    pub captures: Vec<CaptureResult>,
    pub attacks: usize,
    pub attacks_alerted: usize,
    pub attacks_alerted_within_target: usize,
    pub benign_captures_flows: usize,
    pub benign_captures_false_alerts: usize,
    pub false_alerts_per_1000_benign_flows: f64,
    pub all_benign_flows: usize,
    pub all_false_alerts: usize,
}

/// Where a capture's addresses go in the lab.
fn lab_addresses(index: usize, label: &CaptureLabel) -> Vec<(IpAddr, IpAddr)> {
    let mut pairs = Vec::new();
    let n = u8::try_from(10 + index % 240).expect("fits");
    if let Some(a) = label.attacker {
        pairs.push((
            a,
            match a {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 77, 1, n)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x77, 0, 1, 0, 0, 0, u16::from(n))),
            },
        ));
    }
    if let Some(v) = label.victim {
        pairs.push((
            v,
            match v {
                IpAddr::V4(_) => IpAddr::V4(VICTIM.parse().expect("victim address")),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2)),
            },
        ));
    }
    pairs
}

fn mapped(pairs: &[(IpAddr, IpAddr)], from: Option<IpAddr>) -> Option<IpAddr> {
    let from = from?;
    Some(pairs.iter().find(|(f, _)| *f == from).map_or(from, |(_, t)| *t))
}

/// One capture's place in the run.
struct Segment {
    path: String,
    label: CaptureLabel,
    attacker: Option<IpAddr>,
    victim: Option<IpAddr>,
    start_ms: i64,
    packets: u64,
    sent: Option<u64>,
    from_victim: u64,
    replay: Duration,
    error: Option<String>,
}

/// Runs the evaluation: builds the lab, starts the agent, replays every capture, stops the
/// agent and scores what it wrote.
///
/// # Errors
/// A message naming what failed (labels, a missing tool), or [`Interrupted`] wrapped in it.
///
/// # Panics
/// If the lab cannot be built or the agent does not start.
pub fn run(options: &Options) -> Result<Report, String> {
    let labels_path = if options.labels.is_dir() { options.labels.join("labels.json") } else { options.labels.clone() };
    let labels = Labels::read(&labels_path).map_err(|e| e.to_string())?;
    let mut captures = labels.captures().map_err(|e| e.to_string())?;
    if !options.only.is_empty() {
        captures.retain(|(_, rel, _)| options.only.iter().any(|o| rel.contains(o.as_str())));
        if captures.is_empty() {
            return Err(format!("no capture under {} matches {:?}", labels.root.display(), options.only));
        }
    }
    let mut infos = Vec::new();
    for (path, rel, _) in &captures {
        infos.push(pcapreplay::inspect(path, options.max_gap).map_err(|e| format!("{rel}: {e}"))?);
    }
    let total: Duration = infos.iter().map(|i| i.replay + options.settle).sum();
    let jumbo = infos.iter().map(|i| i.max_frame).max().unwrap_or(0);
    // Every frame fits the links; native XDP on veth takes frames up to ~3.5 kB only.
    let mtu = u32::try_from(jumbo.saturating_sub(14).max(1500)).unwrap_or(9000).min(9000);
    let mode = if mtu > 3000 { "skb" } else { "native" };
    println!(
        "eval-live: {} captures from {}, about {} s of replay and settling; MTU {mtu}, XDP {mode} mode",
        captures.len(),
        labels.root.display(),
        total.as_secs()
    );

    let lab = Lab::with_mtu("ev", mtu);
    lab.flood_from_attacker();
    let scratch = lab.dir.path().to_path_buf();
    let flows_out = scratch.join("flows.jsonl");
    let agent = lab.agent_with(
        "",
        &["--no-pin", "--xdp-mode", mode, "--model", &options.model, "--flows-out", flows_out.to_str().expect("utf-8")],
    );
    let watch = options.watch.then(|| Watch::start(lab.alerts_path(), "  | "));
    let mut segments = Vec::new();
    let outcome = replay_all(&lab, &captures, &infos, options, &mut segments);
    drop(watch);
    // SIGINT: a --no-pin agent detaches and exports every remaining flow.
    let (status, log) = agent.stop();
    outcome.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("the agent exited with {status}; log:\n{log}"));
    }
    let records = read_records(&flows_out);
    let events = lab.events();
    Ok(score(options, &labels_path, &segments, &records, &events))
}

fn replay_all(
    lab: &Lab,
    captures: &[(PathBuf, String, CaptureLabel)],
    infos: &[pcapreplay::CaptureInfo],
    options: &Options,
    segments: &mut Vec<Segment>,
) -> Result<(), Interrupted> {
    // The victim's side of every capture leaves the victim's own interface (through the
    // sensor's egress hook); the rest arrives from the attacker's namespace.
    let open = |ns, side| Sender::open(ns, IFACE).unwrap_or_else(|e| panic!("{side} replay socket: {e}"));
    let senders = (open(&lab.victim, "victim"), open(&lab.attacker, "attacker"));
    // Let the agent's first cycles pass before the first capture.
    interrupt::sleep(Duration::from_secs(2))?;
    for (i, ((path, rel, label), info)) in captures.iter().zip(infos).enumerate() {
        let pairs = lab_addresses(i, label);
        let mut segment = Segment {
            path: rel.clone(),
            label: label.clone(),
            attacker: mapped(&pairs, label.attacker),
            victim: mapped(&pairs, label.victim),
            start_ms: vigil_tests::lab::now_ms(),
            packets: info.packets,
            sent: None,
            from_victim: 0,
            replay: Duration::ZERO,
            error: None,
        };
        println!(
            "[{}/{}] {rel} ({}): {} packets, about {:.1} s",
            i + 1,
            captures.len(),
            label.kind,
            info.packets,
            info.replay.as_secs_f64()
        );
        // Every frame fits the links (the MTU was chosen for the largest), nothing is cut.
        segment.start_ms = vigil_tests::lab::now_ms();
        let limit = info.replay * 2 + Duration::from_secs(30);
        match host_replay::replay(path, &pairs, segment.victim, &senders.0, &senders.1, options.max_gap, limit)? {
            Ok(r) => {
                segment.sent = Some(r.from_victim + r.from_outside);
                segment.from_victim = r.from_victim;
                segment.replay = r.elapsed;
            }
            Err(e) => segment.error = Some(e),
        }
        if let Some(e) = &segment.error {
            println!("    error: {e}");
        }
        segments.push(segment);
        interrupt::sleep(options.settle)?;
    }
    Ok(())
}

fn score(options: &Options, labels: &Path, segments: &[Segment], records: &[FlowRecord], events: &[Value]) -> Report {
    let mut results = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let end_ms = segments.get(i + 1).map_or(i64::MAX, |s| s.start_ms);
        let in_segment = |ms: i64| ms >= seg.start_ms && ms < end_ms;
        let flows: Vec<&FlowRecord> = records
            .iter()
            .filter(|r| in_segment(i64::try_from(r.first_seen_ns / 1_000_000).unwrap_or(i64::MAX)))
            .collect();
        let is_attack_flow = |r: &FlowRecord| {
            !seg.label.is_benign()
                && match (seg.attacker, seg.victim) {
                    (Some(a), _) => r.src_ip == a || r.dst_ip == a,
                    (None, Some(v)) => r.dst_ip == v || r.src_ip == v,
                    (None, None) => true,
                }
        };
        let attack_flows: Vec<&&FlowRecord> = flows.iter().filter(|r| is_attack_flow(r)).collect();
        let alerts: Vec<&Value> = events.iter().filter(|e| is_alert(e) && in_segment(timestamp_ms(e))).collect();
        let names_attack = |e: &Value| {
            !seg.label.is_benign()
                && match (seg.attacker, seg.victim) {
                    (Some(a), _) => event_ip(e, "source") == Some(a),
                    (None, Some(v)) => event_ip(e, "destination") == Some(v),
                    (None, None) => true,
                }
        };
        let hits: Vec<i64> = alerts.iter().filter(|e| names_attack(e)).map(|e| timestamp_ms(e)).collect();
        let start = attack_flows
            .iter()
            .filter(|r| seg.attacker.is_none_or(|a| r.src_ip == a))
            .map(|r| i64::try_from(r.first_seen_ns / 1_000_000).unwrap_or(i64::MAX))
            .min();
        let attack = !seg.label.is_benign();
        results.push(CaptureResult {
            capture: seg.path.clone(),
            kind: seg.label.kind.clone(),
            packets: seg.packets,
            sent: seg.sent,
            from_victim: seg.from_victim,
            replay_seconds: seg.replay.as_secs_f64(),
            attacker: seg.label.attacker.map(|a| a.to_string()),
            attacker_lab: seg.attacker.map(|a| a.to_string()),
            victim: seg.label.victim.map(|a| a.to_string()),
            victim_lab: seg.victim.map(|a| a.to_string()),
            flows: flows.len(),
            attack_flows: attack_flows.len(),
            benign_flows: flows.len() - attack_flows.len(),
            alerted: attack.then_some(!hits.is_empty()),
            time_to_alert_ms: match (hits.iter().min(), start) {
                (Some(hit), Some(start)) => Some(hit - start),
                _ => None,
            },
            false_alerts: alerts.len() - hits.len(),
            alerts: alerts.len(),
            error: seg.error.clone(),
        });
    }
    let benign: Vec<&CaptureResult> = results.iter().filter(|r| r.kind == vigil::eval::labels::BENIGN).collect();
    let benign_flows: usize = benign.iter().map(|r| r.benign_flows).sum();
    let benign_false: usize = benign.iter().map(|r| r.false_alerts).sum();
    let attacks: Vec<&CaptureResult> = results.iter().filter(|r| r.alerted.is_some()).collect();
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let per_1000 = if benign_flows == 0 { 0.0 } else { benign_false as f64 * 1000.0 / benign_flows as f64 };
    Report {
        labels: labels.display().to_string(),
        model: options.model.clone(),
        machine: vigil_tests::bench::machine(),
        max_gap_ms: options.max_gap.as_millis(),
        settle_ms: options.settle.as_millis(),
        attacks: attacks.len(),
        attacks_alerted: attacks.iter().filter(|r| r.alerted == Some(true)).count(),
        attacks_alerted_within_target: attacks
            .iter()
            .filter(|r| r.time_to_alert_ms.is_some_and(|t| t <= TARGET_ALERT_MS))
            .count(),
        benign_captures_flows: benign_flows,
        benign_captures_false_alerts: benign_false,
        false_alerts_per_1000_benign_flows: per_1000,
        all_benign_flows: results.iter().map(|r| r.benign_flows).sum(),
        all_false_alerts: results.iter().map(|r| r.false_alerts).sum(),
        captures: results,
    }
}

impl Report {
    /// The report as markdown.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| capture | kind | packets | flows | attacker (lab) | alerted | time to alert | false alerts |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---|---|---:|---:|");
        for r in &self.captures {
            let attacker = match (&r.attacker_lab, &r.victim_lab) {
                (Some(a), _) => a.clone(),
                (None, Some(v)) if r.alerted.is_some() => format!("spoofed, to {v}"),
                _ => String::new(),
            };
            let alerted = match (r.alerted, &r.error) {
                (_, Some(e)) => format!("error: {e}"),
                (Some(true), _) => "yes".into(),
                (Some(false), _) => "**no**".into(),
                (None, _) => String::new(),
            };
            let tta = r.time_to_alert_ms.map_or_else(String::new, |t| format!("{t} ms"));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {attacker} | {alerted} | {tta} | {} |",
                r.capture, r.kind, r.packets, r.flows, r.false_alerts
            );
        }
        let met = |ok: bool| if ok { "met" } else { "not met" };
        let _ = writeln!(
            s,
            "\nAttacks alerted: {} of {}; within {} ms of their first packet: {} of {} (target: all, {}).",
            self.attacks_alerted,
            self.attacks,
            TARGET_ALERT_MS,
            self.attacks_alerted_within_target,
            self.attacks,
            met(self.attacks_alerted_within_target == self.attacks)
        );
        let _ = writeln!(
            s,
            "False alerts on benign captures: {} over {} benign flows = {:.2} per 1,000 (target ≤ {TARGET_FALSE_PER_1000}, {}). \
             Counting the background flows of attack captures too: {} over {}.",
            self.benign_captures_false_alerts,
            self.benign_captures_flows,
            self.false_alerts_per_1000_benign_flows,
            met(self.false_alerts_per_1000_benign_flows <= TARGET_FALSE_PER_1000),
            self.all_false_alerts,
            self.all_benign_flows
        );
        let _ = writeln!(
            s,
            "\nModel `{}`; replay at recorded speed with pauses capped at {} ms, {} ms of quiet after each capture; {}.",
            self.model, self.max_gap_ms, self.settle_ms, self.machine
        );
        s
    }

    /// Every attacker alerted within the target and the false-alert rate within its target.
    #[must_use]
    pub fn targets_met(&self) -> bool {
        self.attacks_alerted_within_target == self.attacks
            && self.false_alerts_per_1000_benign_flows <= TARGET_FALSE_PER_1000
    }
}
