//! The engine's decisions, case by case, with scores given and rules in memory: no model
//! needed (but for the tests that check explanations), no root, no kernel.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::{
    alert::ecs::Observer,
    block::MemoryRules,
    clock::rfc3339_millis,
    detect::{
        decision::{BlockCause, Decision, Refusal, Severity, UnblockCause},
        score::{Evidence, ScoredFlow, tests::detector},
    },
    features::flow::tests::record,
    flows::harvest::LiveFlow,
    model::{Contribution, Score},
};

const S: u64 = 1_000_000_000;
/// The alert threshold of the configurations below; the block threshold is 0.5 above.
const ALERT: f32 = 1.0;

pub(crate) fn config(alert: f32) -> EngineConfig {
    EngineConfig {
        alert_window: Duration::from_secs(10),
        top_features: 3,
        max_alerts_per_cycle: 100,
        min_flows: 3,
        min_sources: 20,
        min_severity: Severity::Medium,
        max_sources: 100_000,
        block_mode: BlockMode::Off,
        consecutive: 3,
        alert_threshold: alert,
        block_threshold: alert + 0.5,
        ttl: Duration::from_mins(1),
        max_rules: 100,
        max_new_per_minute: 10,
        allowlist: Allowlist::new(&[], false),
    }
}

fn observer() -> Observer {
    Observer {
        hostname: "test".into(),
        iface: "test0".into(),
        model_sha256: String::new(),
        model_phase: crate::learn::Phase::Fixed,
        ruleset: "flow-v1".into(),
        block_mode: BlockMode::Enforce,
        block_threshold: ALERT + 0.5,
        ttl: Duration::from_mins(1),
    }
}

/// Explains every flow with `top` made-up features, `f0` leading.
struct FixedExplain;

impl Explain for FixedExplain {
    fn explain(&self, _: &Evidence, top: usize) -> Vec<Contribution> {
        (0..top)
            .map(|i| {
                let rank = f32::from(u8::try_from(i).unwrap_or(u8::MAX));
                Contribution { feature: format!("f{i}"), value: 1.0, baseline: 0.0, share: 0.5 / (rank + 1.0) }
            })
            .collect()
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("address")
}

/// A new flow from `src` to `dst:port` scored `combined`, first seen at `mono_ns`.
fn flow(src: &str, dst: &str, port: u16, combined: f32, mono_ns: u64) -> ScoredFlow {
    let mut r = record(1, 2, port, 0);
    (r.src_ip, r.dst_ip) = (ip(src), ip(dst));
    (r.first_seen_ns, r.last_seen_ns) = (mono_ns, mono_ns + 1000);
    ScoredFlow {
        flow: LiveFlow { record: r, back: None, new: true, first_mono_ns: mono_ns },
        score: Score { iforest: 0.7, autoencoder: 2.0, range: 0.0, combined, ..Score::default() },
        evidence: Evidence::default(),
    }
}

/// `n` flows from `src` to distinct ports of 10.0.0.2, all scored `combined`.
fn scan(src: &str, first_port: u16, n: u16, combined: f32, mono_ns: u64) -> Vec<ScoredFlow> {
    (0..n).map(|k| flow(src, "10.0.0.2", first_port + k, combined, mono_ns)).collect()
}

/// An engine, a clock and a rule store, stepped one cycle a second.
struct Bench {
    engine: Engine,
    rules: MemoryRules,
    now: u64,
}

impl Bench {
    fn new(config: EngineConfig) -> Self {
        Self { engine: Engine::new(config), rules: MemoryRules::new(1000 * S), now: 1000 * S }
    }

    /// One cycle of `flows` one second after the previous, with the rule store.
    fn cycle(&mut self, flows: &[ScoredFlow]) -> Vec<Decision> {
        self.now += S;
        self.rules.now_ns = self.now;
        self.engine.decide(self.now, flows, &FixedExplain, Some(&mut self.rules)).expect("decide")
    }

    /// `n` cycles of the same flows; answers every decision.
    fn cycles(&mut self, n: usize, flows: &[ScoredFlow]) -> Vec<Decision> {
        (0..n).flat_map(|_| self.cycle(flows)).collect()
    }
}

pub(crate) fn actions(decisions: &[Decision]) -> Vec<&'static str> {
    decisions.iter().map(Decision::action).collect()
}

// ---- alerts by source ----

#[test]
fn flows_below_the_alert_threshold_leave_no_state() {
    let mut b = Bench::new(config(ALERT));
    assert!(b.cycles(5, &scan("10.9.9.9", 1, 50, ALERT - 0.01, 0)).is_empty());
    assert!(b.engine.sources.is_empty());
    assert_eq!(b.engine.stats.alerts, 0);
}

#[test]
fn a_source_with_min_flows_anomalous_flows_gets_one_medium_alert() {
    let mut b = Bench::new(config(ALERT));
    let decisions = b.cycle(&scan("10.9.9.9", 1, 3, ALERT + 0.1, b.now));
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!((a.source, a.severity), (ip("10.9.9.9"), Severity::Medium));
    assert_eq!((a.flows, a.anomalous_flows, a.destinations, a.destination_ports), (3, 3, 1, 3));
    assert_eq!((a.packets, a.bytes), (9, 540));
    assert_eq!(a.top.explanation.len(), 3, "top_features");
    assert_eq!(a.top.lead(), "f0");
    assert_eq!(b.engine.stats.alerts, 1);
}

#[test]
fn the_top_flow_above_the_block_threshold_makes_the_alert_high() {
    let mut b = Bench::new(config(ALERT));
    let mut flows = scan("10.9.9.9", 1, 3, ALERT + 0.1, b.now);
    flows[1].score.combined = ALERT + 0.6;
    let decisions = b.cycle(&flows);
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!(a.severity, Severity::High);
    assert_eq!(a.top.record.dst_port, 2, "the worst flow is reported");
    assert!((a.top.score.combined - (ALERT + 0.6)).abs() < 1e-6);
}

#[test]
fn fewer_than_min_flows_is_low_counted_not_sent_and_let_go_after_a_window() {
    let mut b = Bench::new(config(ALERT));
    let two = scan("10.9.9.9", 1, 2, ALERT + 0.1, b.now);
    assert!(b.cycle(&two).is_empty());
    assert_eq!(b.engine.sources[&ip("10.9.9.9")].pending.anomalous, 2);
    // Quiet for a whole window: the weak anomaly is dropped and counted.
    assert!(b.cycles(10, &[]).is_empty());
    assert_eq!(b.engine.stats.alerts_suppressed, 1);
    assert!(b.engine.sources.is_empty(), "forgotten");
}

#[test]
fn one_flow_at_the_block_threshold_is_alerted_on_its_own_but_never_blocked() {
    // A flood of 10,000 packets in 0.1 s is one flow: fewer than min_flows, yet beyond doubt.
    let mut cfg = config(ALERT);
    cfg.block_mode = BlockMode::Enforce;
    let mut b = Bench::new(cfg);
    let flood = |src: &str, score: f32, packets: u64, now: u64| {
        let mut f = flow(src, "10.0.0.2", 0, score, now);
        f.flow.record.packets = packets;
        f
    };
    let decisions = b.cycle(&[flood("10.9.9.9", ALERT + 0.6, 10_000, b.now)]);
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!((a.severity, a.anomalous_flows), (Severity::Medium, 1));
    // Just under the block threshold, one flow stays a low alert, counted and not sent.
    let decisions = b.cycle(&[flood("10.9.9.8", ALERT + 0.4, 10_000, b.now)]);
    assert!(decisions.is_empty(), "{decisions:#?}");
    // So does a one-packet flow (a spoofed flood's source), however high it scores.
    let decisions = b.cycle(&[flood("10.9.9.7", ALERT + 5.0, 1, b.now)]);
    assert!(decisions.is_empty(), "{decisions:#?}");
    assert!(b.engine.sources[&ip("10.9.9.7")].pending.promoted.is_none(), "stays a small candidate");
    // The lone flow goes on for cycles: it is never blocked (blocking needs min_flows).
    for _ in 0..5 {
        let decisions = b.cycle(&[flood("10.9.9.9", ALERT + 0.6, 10_000, b.now)]);
        assert!(blocks(&decisions).is_empty(), "{decisions:#?}");
    }
}

#[test]
fn low_alerts_are_sent_when_the_minimum_is_low() {
    let mut cfg = config(ALERT);
    cfg.min_severity = Severity::Low;
    let mut b = Bench::new(cfg);
    let decisions = b.cycle(&[flow("10.9.9.9", "10.0.0.2", 22, ALERT + 0.1, b.now)]);
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!((a.severity, a.anomalous_flows), (Severity::Low, 1));
}

#[test]
fn one_alert_per_window_and_the_next_reports_what_came_between() {
    let mut b = Bench::new(config(ALERT));
    let first = b.cycle(&scan("10.9.9.9", 1, 3, ALERT + 0.1, b.now));
    assert_eq!(actions(&first), ["anomalous-flows"]);
    // Nine more cycles inside the window, three new ports each: no alert.
    let mut between = Vec::new();
    for k in 0..9u16 {
        between.extend(b.cycle(&scan("10.9.9.9", 100 + 3 * k, 3, ALERT + 0.1, b.now)));
    }
    assert!(between.is_empty(), "{between:#?}");
    // The window is over: one alert with everything since the first.
    let next = b.cycle(&scan("10.9.9.9", 500, 3, ALERT + 0.1, b.now));
    let [Decision::SourceAlert(a)] = next.as_slice() else { panic!("{next:#?}") };
    assert_eq!(a.anomalous_flows, 30);
    assert_eq!(a.destination_ports, 30);
}

#[test]
fn an_open_flow_rescored_every_cycle_counts_once() {
    let mut b = Bench::new(config(ALERT));
    let mut flows = scan("10.9.9.9", 1, 2, ALERT + 0.1, b.now);
    assert!(b.cycle(&flows).is_empty());
    for f in &mut flows {
        f.flow.new = false;
        f.flow.record.packets = 10;
    }
    assert!(b.cycle(&flows).is_empty(), "the same two flows are not three");
    let p = &b.engine.sources[&ip("10.9.9.9")].pending;
    assert_eq!((p.flows, p.anomalous), (4, 2));
}

#[test]
fn the_per_cycle_cap_sends_the_worst_first_and_the_rest_next_cycle() {
    let mut cfg = config(ALERT);
    cfg.max_alerts_per_cycle = 2;
    let mut b = Bench::new(cfg);
    let mut flows = Vec::new();
    for (i, score) in [0.1f32, 0.3, 0.2].into_iter().enumerate() {
        flows.extend(scan(&format!("10.9.9.{i}"), 1, 3, ALERT + score, b.now));
    }
    let first = b.cycle(&flows);
    let sources: Vec<IpAddr> = first
        .iter()
        .map(|d| match d {
            Decision::SourceAlert(a) => a.source,
            other => panic!("{other:#?}"),
        })
        .collect();
    assert_eq!(sources, [ip("10.9.9.1"), ip("10.9.9.2")]);
    let second = b.cycle(&[]);
    assert!(matches!(second.as_slice(), [Decision::SourceAlert(a)] if a.source == ip("10.9.9.0")), "{second:#?}");
}

#[test]
fn sources_beyond_max_sources_are_ignored_and_counted() {
    let mut cfg = config(ALERT);
    cfg.max_sources = 2;
    let mut b = Bench::new(cfg);
    let flows: Vec<ScoredFlow> = (0..5).flat_map(|i| scan(&format!("10.9.9.{i}"), 1, 3, ALERT + 0.1, 0)).collect();
    let decisions = b.cycle(&flows);
    assert_eq!(decisions.len(), 2);
    assert_eq!(b.engine.stats.sources_ignored, 3);
}

#[test]
fn spoofed_one_flow_sources_stay_small_candidates() {
    let mut b = Bench::new(config(ALERT));
    let flows: Vec<ScoredFlow> = (0..1000u32)
        .map(|i| flow(&Ipv4Addr::from(0x0b00_0000 | i).to_string(), "10.0.0.2", 80, ALERT + 0.1, 0))
        .collect();
    b.cycle(&flows);
    assert_eq!(b.engine.sources.len(), 1000);
    assert!(b.engine.sources.values().all(|s| s.pending.promoted.is_none() && s.pending.seen.len() == 1));
}

// ---- alerts by destination ----

#[test]
fn many_sources_to_one_destination_raise_a_destination_alert() {
    let mut b = Bench::new(config(ALERT));
    let flows: Vec<ScoredFlow> =
        (0..25u32).map(|i| flow(&format!("10.1.0.{i}"), "10.0.0.2", 80, ALERT + 0.1, 0)).collect();
    let decisions = b.cycle(&flows);
    let [Decision::DestinationAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!((a.destination, a.sources, a.sources_capped, a.new_flows), (ip("10.0.0.2"), 25, false, 25));
    assert_eq!(a.severity, Severity::Medium);
    assert!(decisions[0].message().contains("25 sources"), "{}", decisions[0].message());
    // Within the window: nothing more, however many more sources.
    assert!(b.cycle(&flows).is_empty());
}

#[test]
fn too_few_sources_or_min_sources_zero_raise_no_destination_alert() {
    let flows: Vec<ScoredFlow> =
        (0..19u32).map(|i| flow(&format!("10.1.0.{i}"), "10.0.0.2", 80, ALERT + 0.1, 0)).collect();
    let mut b = Bench::new(config(ALERT));
    assert!(b.cycle(&flows).is_empty(), "19 sources, 20 needed");
    b.cycles(10, &[]);
    assert!(b.engine.destinations.is_empty(), "let go after a window");

    let mut cfg = config(ALERT);
    cfg.min_sources = 0;
    let mut b = Bench::new(cfg);
    let many: Vec<ScoredFlow> =
        (0..50u32).map(|i| flow(&format!("10.1.0.{i}"), "10.0.0.2", 80, ALERT + 0.1, 0)).collect();
    assert!(b.cycle(&many).is_empty());
    assert!(b.engine.destinations.is_empty());
}

// ---- auto-block ----

fn enforce() -> EngineConfig {
    EngineConfig { block_mode: BlockMode::Enforce, ..config(ALERT) }
}

/// Three flows from `src` above the block threshold.
fn attack(src: &str) -> Vec<ScoredFlow> {
    scan(src, 1, 3, ALERT + 0.6, 0)
}

fn blocks(decisions: &[Decision]) -> Vec<String> {
    decisions.iter().filter_map(|d| d.rule().filter(|_| d.action() == "block").map(|r| r.prefix.to_string())).collect()
}

#[test]
fn a_source_above_the_block_threshold_for_consecutive_cycles_is_blocked() {
    let mut b = Bench::new(enforce());
    let attack = attack("10.9.9.9");
    assert!(blocks(&b.cycles(2, &attack)).is_empty(), "two cycles are not three");
    let third = b.cycle(&attack);
    assert_eq!(blocks(&third), ["10.9.9.9/32"]);
    let rule = b.rules.get("10.9.9.9/32".parse().unwrap()).expect("rule in the store");
    assert_eq!((rule.origin, rule.expires_ns), (Origin::Auto, b.now + 60 * S));
    let blocked = third.iter().find(|d| d.action() == "block").unwrap();
    assert!(matches!(blocked, Decision::Blocked { cause: BlockCause::Auto { consecutive: 3 }, .. }));
    assert_eq!(blocked.message(), "10.9.9.9/32 blocked (score above the block threshold for 3 consecutive windows)");
    assert_eq!(b.engine.stats.blocks, 1);
    // Blocked while the rule lasts: no second rule.
    assert!(blocks(&b.cycles(5, &attack)).is_empty());
    assert_eq!(b.engine.rules().count(), 1);
}

#[test]
fn a_missed_cycle_or_too_few_flows_resets_the_streak() {
    let mut b = Bench::new(enforce());
    let attack = attack("10.9.9.9");
    b.cycles(2, &attack);
    b.cycle(&[]);
    assert!(blocks(&b.cycles(2, &attack)).is_empty(), "absent once: the count starts again");
    b.cycle(&attack[..2]);
    assert!(blocks(&b.cycles(2, &attack)).is_empty(), "two flows are fewer than min_flows");
    assert_eq!(blocks(&b.cycle(&attack)), ["10.9.9.9/32"]);
}

#[test]
fn off_never_blocks_and_dry_run_reports_once_per_ttl() {
    let mut b = Bench::new(config(ALERT));
    assert!(b.cycles(10, &attack("10.9.9.9")).iter().all(Decision::is_alert));
    assert!(b.rules.is_empty());

    let mut b = Bench::new(EngineConfig { block_mode: BlockMode::DryRun, ..config(ALERT) });
    let decisions = b.cycles(30, &attack("10.9.9.9"));
    let dry: Vec<_> = decisions.iter().filter(|d| matches!(d, Decision::WouldBlock { .. })).collect();
    assert_eq!(dry.len(), 1, "{decisions:#?}");
    assert_eq!(dry[0].message(), "10.9.9.9: dry run: would block");
    assert!(b.rules.is_empty(), "a dry run installs nothing");
    assert_eq!(b.engine.stats.dry_runs, 1);
}

#[test]
fn an_allowlisted_source_is_refused_once_per_ttl() {
    let mut cfg = enforce();
    cfg.allowlist = Allowlist::new(&["10.9.0.0/16".parse().unwrap()], false);
    let mut b = Bench::new(cfg);
    let decisions = b.cycles(30, &attack("10.9.9.9"));
    let refused: Vec<_> = decisions.iter().filter(|d| matches!(d, Decision::Refused { .. })).collect();
    assert_eq!(refused.len(), 1);
    let Decision::Refused { refusal: Refusal::Allowlisted { net, .. }, .. } = refused[0] else { panic!() };
    assert_eq!(net.to_string(), "10.9.0.0/16");
    assert_eq!(refused[0].message(), "10.9.9.9: allowlisted (configured: 10.9.0.0/16)");
    assert!(b.rules.is_empty());
    // A TTL after the refusal (cycle 3) it is reported again (cycle 63).
    assert_eq!(b.cycles(32, &attack("10.9.9.9")).iter().filter(|d| d.action() == "block-refused").count(), 0);
    assert_eq!(b.cycles(1, &attack("10.9.9.9")).iter().filter(|d| d.action() == "block-refused").count(), 1);
}

#[test]
fn the_rule_cap_counts_every_rule_and_refuses_beyond_it() {
    let mut cfg = enforce();
    cfg.max_rules = 1;
    let mut b = Bench::new(cfg);
    // A manual rule already takes the one place.
    b.rules.insert(Rule {
        prefix: "192.0.2.0/24".parse().unwrap(),
        expires_ns: b.now + 3600 * S,
        created_ns: b.now,
        drops: 0,
        origin: Origin::Manual,
    });
    let decisions = b.cycles(3, &attack("10.9.9.9"));
    assert!(decisions.iter().any(|d| matches!(d, Decision::Refused { refusal: Refusal::RuleCap(1), .. })));
    assert!(b.rules.get("10.9.9.9/32".parse().unwrap()).is_none());
}

#[test]
fn the_rate_limit_holds_new_rules_for_a_minute() {
    let mut cfg = enforce();
    cfg.max_new_per_minute = 2;
    let mut b = Bench::new(cfg);
    let flows: Vec<ScoredFlow> = (1..=3).flat_map(|i| attack(&format!("10.9.9.{i}"))).collect();
    let decisions = b.cycles(3, &flows);
    assert_eq!(blocks(&decisions), ["10.9.9.1/32", "10.9.9.2/32"], "in address order");
    assert!(decisions.iter().any(
        |d| matches!(d, Decision::Refused { source, refusal: Refusal::RateLimit(2), .. } if *source == ip("10.9.9.3"))
    ));
    assert_eq!(b.engine.stats.refused, 1);
}

#[test]
fn a_rule_the_kernel_refuses_is_reported_and_retried_later() {
    let mut b = Bench::new(enforce());
    b.rules.capacity = 1;
    b.rules.insert(Rule {
        prefix: "192.0.2.0/24".parse().unwrap(),
        expires_ns: b.now + 3600 * S,
        created_ns: b.now,
        drops: 0,
        origin: Origin::Auto,
    });
    let decisions = b.cycles(3, &attack("10.9.9.9"));
    let failed: Vec<_> = decisions
        .iter()
        .filter(|d| matches!(d, Decision::Refused { refusal: Refusal::InstallFailed(_), .. }))
        .collect();
    assert_eq!(failed.len(), 1, "{decisions:#?}");
    assert!(failed[0].message().starts_with("10.9.9.9: installing the rule failed"), "{}", failed[0].message());
    assert_eq!(b.engine.stats.block_errors, 1);
    // Room again: the next try (10 s later) succeeds.
    b.rules.capacity = 0;
    assert!(blocks(&b.cycles(9, &attack("10.9.9.9"))).is_empty(), "not before 10 s");
    assert_eq!(blocks(&b.cycle(&attack("10.9.9.9"))), ["10.9.9.9/32"]);
}

// ---- rule upkeep and takeover ----

#[test]
fn lapsed_rules_are_removed_and_reported_once() {
    let mut cfg = enforce();
    cfg.ttl = Duration::from_secs(5);
    let mut b = Bench::new(cfg);
    b.cycles(3, &attack("10.9.9.9"));
    assert_eq!(b.rules.len(), 1);
    let later = b.cycles(6, &[]);
    let unblocks: Vec<_> = later.iter().filter(|d| d.action() == "unblock").collect();
    assert_eq!(unblocks.len(), 1, "{later:#?}");
    assert!(matches!(unblocks[0], Decision::Unblocked { cause: UnblockCause::Expired, .. }));
    assert_eq!(unblocks[0].message(), "10.9.9.9/32 unblocked (ttl)");
    assert!(b.rules.is_empty(), "the lapsed rule is deleted");
    assert_eq!(b.engine.stats.unblocks, 1);
}

#[test]
fn manual_rules_are_reported_when_they_appear_and_when_they_go() {
    let mut b = Bench::new(enforce());
    let prefix: IpNet = "198.51.100.0/24".parse().unwrap();
    b.rules.insert(Rule { prefix, expires_ns: b.now + 600 * S, created_ns: b.now, drops: 4, origin: Origin::Manual });
    let appeared = b.cycle(&[]);
    let [Decision::Blocked { rule, cause: BlockCause::Manual, expires_in }] = appeared.as_slice() else {
        panic!("{appeared:#?}")
    };
    assert_eq!((rule.prefix, expires_in.as_secs()), (prefix, 599));
    assert!(b.cycles(3, &[]).is_empty(), "reported once");
    assert!(b.rules.delete(prefix));
    let gone = b.cycle(&[]);
    assert!(matches!(gone.as_slice(), [Decision::Unblocked { cause: UnblockCause::Removed, .. }]), "{gone:#?}");
    assert_eq!(gone[0].message(), "198.51.100.0/24 unblocked (removed)");
}

#[test]
fn a_restarted_engine_takes_over_the_rules_it_finds() {
    let mut b = Bench::new(enforce());
    let prefix: IpNet = "10.9.9.9/32".parse().unwrap();
    // A rule the previous run installed, 30 s left.
    b.rules.insert(Rule {
        prefix,
        expires_ns: b.now + 30 * S,
        created_ns: b.now - 30 * S,
        drops: 7,
        origin: Origin::Auto,
    });
    assert!(b.cycle(&[]).is_empty(), "an auto rule is taken over silently");
    assert_eq!(b.engine.rules().map(|r| r.prefix).collect::<Vec<_>>(), [prefix]);
    // The source keeps attacking: no second rule while the first lasts.
    assert!(blocks(&b.cycles(5, &attack("10.9.9.9"))).is_empty());
    // Its expiry is reported like the engine's own.
    let later = b.cycles(30, &[]);
    assert_eq!(actions(&later.into_iter().filter(|d| !d.is_alert()).collect::<Vec<_>>()), ["unblock"]);
}

#[test]
fn a_rule_store_that_cannot_be_read_fails_the_cycle() {
    let mut b = Bench::new(enforce());
    b.rules.fail_list = true;
    b.now += S;
    let err = b.engine.decide(b.now, &[], &FixedExplain, Some(&mut b.rules)).unwrap_err();
    assert!(err.to_string().contains("memory"), "{err}");
    // Without a rule store (no blocklist), alerts go on and nothing is blocked.
    let decisions = b.engine.decide(b.now + S, &attack("10.9.9.9"), &FixedExplain, None).expect("decide");
    assert_eq!(actions(&decisions), ["anomalous-flows"]);
}

// ---- rendering at the edge ----

#[test]
fn decisions_render_as_ecs_with_the_wall_clock_and_their_fields() {
    let mut b = Bench::new(enforce());
    let decisions = b.cycles(3, &attack("10.9.9.9"));
    let wall = 1_700_000_000 * S;
    let docs: Vec<serde_json::Value> = decisions.iter().map(|d| observer().render(d, wall)).collect();
    let alert = docs.iter().find(|d| d["event"]["kind"] == "alert").expect("alert");
    assert_eq!(alert["@timestamp"], rfc3339_millis(wall));
    assert_eq!(alert["event"]["severity"], 73);
    assert_eq!(alert["source"]["ip"], "10.9.9.9");
    assert_eq!(alert["vigil"]["explanation"][0]["feature"], "f0");
    assert_eq!(alert["rule"]["ruleset"], "flow-v1");
    assert_eq!(alert["network"]["transport"], "tcp");
    let block = docs.iter().find(|d| d["event"]["action"] == "block").expect("block");
    assert_eq!(block["vigil"]["rule"]["prefix"], "10.9.9.9/32");
    assert_eq!(block["vigil"]["rule"]["origin"], "auto");
    assert_eq!(block["vigil"]["rule"]["expires_in"], "1m");
    assert_eq!(block["event"]["type"], serde_json::json!(["denied", "start"]));
    assert_eq!(block["message"], decisions.iter().find(|d| d.action() == "block").unwrap().message());
    let event = observer().event(&decisions[0], wall);
    assert_eq!(event.timestamp_ns, wall);
    let parsed: serde_json::Value = serde_json::from_str(&event.json).expect("one JSON object");
    assert_eq!(parsed["message"], decisions[0].message());
}

#[test]
fn an_alert_the_classifier_fired_on_takes_its_kind_and_says_which_models_fired() {
    use crate::{alert::attack::AttackKind, model::detector::Fired, model::kind_classifier::Classified};
    let said = Classified {
        kind: AttackKind::PasswordGuessing,
        kind_probability: 0.93,
        attack_probability: 0.97,
        fired: true,
    };
    // The classifier alone lifted these flows to the alert threshold.
    let mut flows = scan("10.9.9.9", 1, 3, ALERT, 0);
    for f in &mut flows {
        f.score.classifier = Some(said);
        f.score.fired = Fired::Classifier.bit();
    }
    let mut b = Bench::new(config(ALERT));
    let decisions = b.cycle(&flows);
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    // The evidence of three flows says little; the classifier names it.
    assert_eq!(
        (a.kind(), a.top.kind_from(), a.severity),
        (AttackKind::PasswordGuessing, "classifier", Severity::Medium)
    );
    let doc = observer().render(&decisions[0], S);
    assert_eq!(doc["vigil"]["attack"]["kind"], "password-guessing");
    assert_eq!(doc["vigil"]["attack"]["from"], "classifier");
    assert_eq!(doc["threat"]["technique"]["id"], "T1110");
    assert_eq!(doc["vigil"]["score"]["fired"], serde_json::json!(["classifier"]));
    assert!((doc["vigil"]["score"]["classifier"]["attack_probability"].as_f64().unwrap() - 0.97).abs() < 1e-6);
    // Not fired (below its probability): the evidence names the kind, the classifier's word
    // is still reported.
    for f in &mut flows {
        f.score = Score { classifier: Some(Classified { fired: false, ..said }), fired: 0, ..f.score };
        f.score.combined = ALERT + 0.1;
        f.flow.record.src_ip = ip("10.9.9.8");
    }
    let decisions = b.cycle(&flows);
    let [Decision::SourceAlert(a)] = decisions.as_slice() else { panic!("{decisions:#?}") };
    assert_eq!((a.kind(), a.top.kind_from()), (AttackKind::Unknown, "evidence"));
    assert_ne!(a.kind(), AttackKind::PasswordGuessing);
    let doc = observer().render(&decisions[0], S);
    assert_eq!(doc["vigil"]["score"]["classifier"]["fired"], false);
}

// ---- with the built-in model's explanations (kept from before the seams) ----

/// One cycle's flows: a scanner (10.9.9.9, three new ports) and 25 spoofed sources with one
/// flow each to 10.0.0.2, all anomalous; records stamped with `wall_ns`.
fn cycle_flows(cycle: u32, wall_ns: u64, mono_ns: u64, score: Score) -> Vec<ScoredFlow> {
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
            ScoredFlow {
                flow: LiveFlow { record: r, back: None, new: true, first_mono_ns: mono_ns },
                score,
                evidence: Evidence::default(),
            }
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
        let score = Score { iforest: 0.9, autoencoder: 1.0, range: 0.0, combined: alert + 0.1, ..Score::default() };
        let flows = cycle_flows(cycle, wall - S / 2, mono - S / 2, score);
        let decisions = engine.decide(mono, &flows, &detector, None).expect("cycle");
        for d in &decisions {
            // Output carries the wall clock, whatever it says.
            assert_eq!(observer().render(d, wall)["@timestamp"], rfc3339_millis(wall));
            match d {
                Decision::SourceAlert(a) => {
                    assert_eq!(a.source, ip("10.9.9.9"), "{a:#?}");
                    by_source.push(cycle);
                }
                Decision::DestinationAlert(_) => by_destination.push(cycle),
                other => panic!("unexpected {other:?}"),
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
    let score = Score { iforest: 0.9, autoencoder: 1.0, range: 0.0, combined: alert + 0.1, ..Score::default() };
    let mut flows = Vec::new();
    for d in 0..64u32 {
        for k in 0..5_000u32 {
            let mut r = record(1, 2, u16::try_from(k % 60_000).unwrap(), 0);
            r.src_ip = Ipv4Addr::from(0x0b00_0000 | k).into();
            r.dst_ip = Ipv4Addr::from(0x0a00_0000 | d).into();
            flows.push(ScoredFlow {
                flow: LiveFlow { record: r, back: None, new: true, first_mono_ns: S },
                score,
                evidence: Evidence::default(),
            });
        }
    }
    let decisions = engine.decide(2 * S, &flows, &detector, None).expect("cycle");
    let dest_alerts: Vec<_> = decisions.iter().filter(|d| matches!(d, Decision::DestinationAlert(_))).collect();
    assert!(!dest_alerts.is_empty(), "the flood is still reported");
    for d in dest_alerts {
        let doc = observer().render(d, 2 * S);
        let counts = &doc["vigil"]["counts"];
        assert_eq!(counts["sources"], DEST_DISTINCT_CAP, "{doc:#}");
        assert_eq!(counts["sources_capped"], true);
        assert_eq!(counts["new_anomalous_flows"], 5_000, "flows are still all counted");
        assert!(doc["message"].as_str().unwrap().contains("at least 1024 sources"));
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
    let low = Score { iforest: 0.9, autoencoder: 1.0, range: 0.0, combined: alert + 0.1, ..Score::default() };
    let high = Score { combined: alert + 2.0, ..low };
    let mut decisions = Vec::new();
    // Two anomalous flows in one cycle (a candidate), a third and its repeat in the next.
    for (cycle, ports, scores) in [(0u64, vec![21u16, 22], vec![low, low]), (1, vec![22, 23], vec![low, high])] {
        let flows: Vec<ScoredFlow> = ports
            .iter()
            .zip(scores)
            .map(|(&p, score)| {
                let mut r = record(9, 2, p, 0);
                r.packets = 2;
                let flow = LiveFlow { record: r, back: None, new: cycle == 0 || p == 23, first_mono_ns: cycle * S };
                ScoredFlow { flow, score, evidence: Evidence::default() }
            })
            .collect();
        decisions = engine.decide((cycle + 1) * S, &flows, &detector, None).expect("cycle");
        if cycle == 0 {
            assert!(decisions.is_empty(), "below min_flows: no medium alert yet");
            assert!(engine.sources.values().all(|s| s.pending.promoted.is_none()));
        }
    }
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    assert_eq!(decisions[0].severity(), Severity::High);
    let doc = observer().render(&decisions[0], 0);
    let counts = &doc["vigil"]["counts"];
    assert_eq!(counts["flows"], 4);
    assert_eq!(counts["anomalous_flows"], 3);
    assert_eq!(counts["destination_ports"], 3);
    assert_eq!(counts["packets"], 6);
    assert_eq!(doc["destination"]["port"], 23, "the top flow: {doc:#}");
    assert_eq!(doc["vigil"]["explanation"].as_array().map(Vec::len), Some(3));
}

#[test]
fn alerts_carry_their_attack_kind_and_its_attck_entry() {
    let mut b = Bench::new(enforce());
    let decisions = b.cycles(3, &attack("10.9.9.9"));
    let mut alert = decisions.iter().find(|d| matches!(d, Decision::SourceAlert(_))).expect("alert").clone();
    // The same alert as a scan of 50 ports, then as a burst of SSH logins to one host.
    let Decision::SourceAlert(a) = &mut alert else { unreachable!() };
    a.destination_ports = 50;
    let doc = observer().render(&alert, 0);
    assert_eq!(doc["vigil"]["attack"]["kind"], "scan", "{doc:#}");
    assert_eq!(doc["vigil"]["attack"]["from"], "evidence");
    assert_eq!(doc["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(doc["threat"]["tactic"]["id"], "TA0007");
    assert_eq!(doc["threat"]["technique"]["id"], "T1046");
    assert_eq!(doc["threat"]["technique"]["name"], "Network Service Discovery");
    assert!(doc["threat"]["technique"].get("subtechnique").is_none());
    let Decision::SourceAlert(a) = &mut alert else { unreachable!() };
    (a.destination_ports, a.destinations, a.anomalous_flows) = (1, 1, 40);
    a.top.record.protocol = 6;
    a.top.record.dst_port = 22;
    let doc = observer().render(&alert, 0);
    assert_eq!(doc["vigil"]["attack"]["kind"], "password-guessing", "{doc:#}");
    assert_eq!(doc["threat"]["technique"]["id"], "T1110");
    assert_eq!(doc["threat"]["technique"]["subtechnique"]["id"], "T1110.001");
    assert_eq!(doc["threat"]["tactic"]["name"], "Credential Access");
    // Nothing the rules name: an unknown anomaly, without a threat entry.
    let Decision::SourceAlert(a) = &mut alert else { unreachable!() };
    (a.anomalous_flows, a.top.record.dst_port) = (2, 9999);
    let doc = observer().render(&alert, 0);
    assert_eq!(doc["vigil"]["attack"]["kind"], "unknown", "{doc:#}");
    assert!(doc.get("threat").is_none());
    // Block events say nothing of kinds.
    let block = decisions.iter().find(|d| d.action() == "block").expect("block");
    assert!(observer().render(block, 0).get("threat").is_none() && block.attack_kind().is_none());
}
