//! A whole cycle of the live path on the fakes: flows in, records out, decisions rendered and
//! delivered, metrics and status updated, stop and flush. No root, no kernel.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{
    fake::{FakeFlows, FakeSensor, Harvest},
    *,
};
use agent_common::counters::Counters;

use crate::{
    alert::sink::SinkSpec,
    block::{MemoryRules, Rule, rules::Origin},
    detect::{
        BlockMode, EngineConfig,
        engine::tests::{actions, config as engine_config},
        score::tests::detector,
    },
    features::{context::ContextWindow, flow::tests::record},
};

const S: u64 = 1_000_000_000;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-live-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    crate::private_dir::ensure(&dir).expect("private dir");
    dir
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Waits (bounded) until `path` has `n` lines: sinks deliver on their own threads.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(path).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    lines(path)
}

struct Rig {
    agent: Agent<FakeFlows, FakeSensor>,
    dir: PathBuf,
}

impl Rig {
    fn new(name: &str, flows: FakeFlows, sensor: FakeSensor, rules: MemoryRules, ignored: Vec<IpNet>) -> Self {
        let dir = temp_dir(name);
        let detector = detector();
        let alert = detector.thresholds.alert;
        let spec: SinkSpec =
            toml::from_str(&format!("type = \"file\"\npath = \"{}\"", dir.join("alerts.json").display()))
                .expect("spec");
        let sinks = Sinks::start(&[spec]).expect("sinks");
        // The engine tests' settings, enforcing: the rig's manual rule is reported as a block.
        let engine = Engine::new(EngineConfig { block_mode: BlockMode::Enforce, ..engine_config(alert) });
        let observer = Observer {
            hostname: "rig".into(),
            iface: "fake0".into(),
            model_sha256: "abc".into(),
            model_phase: crate::learn::Phase::Fixed,
            ruleset: detector.schema.id.clone(),
            block_mode: BlockMode::Enforce,
            block_threshold: alert + 0.5,
            ttl: Duration::from_mins(1),
        };
        let outputs = Outputs {
            sinks,
            observer,
            flows: Some(FlowWriter::open(&dir.join("flows.jsonl")).expect("flows out")),
            metrics: Metrics::new(),
            run_dir: dir.clone(),
            status: AgentStatus { flow_capacity: 100, model: "test-model".into(), ..AgentStatus::default() },
            store: Some(crate::store::Recorder::new(
                crate::store::Store::start(
                    &crate::store::StoreSection { path: dir.join("vigil.db"), ..Default::default() },
                    "rig",
                )
                .expect("store"),
                100,
                Duration::from_mins(1),
            )),
            fleet: None,
        };
        let scorer = Scorer::new(detector, ContextWindow::new(Duration::from_secs(10)));
        let kernel = Kernel { flows, sensor, rules: Box::new(rules) };
        Self { agent: Agent::new(kernel, scorer, engine, outputs, ignored, 100 * S), dir }
    }
}

/// An operator's rule on 198.51.100.0/24: the engine reports it, the agent delivers the report.
fn manual_rule() -> Rule {
    Rule {
        prefix: "198.51.100.0/24".parse().unwrap(),
        expires_ns: 700 * S,
        created_ns: 100 * S,
        drops: 0,
        origin: Origin::Manual,
    }
}

fn live(dst_port: u16, dst: u8) -> LiveFlow {
    let mut r = record(7, dst, dst_port, 0);
    r.end_reason = EndReason::Open;
    LiveFlow { record: r, back: None, new: true, first_mono_ns: 100 * S + 1 }
}

#[test]
fn a_cycle_runs_every_stage_on_the_fakes() {
    let mut flows = FakeFlows::default();
    let mut leaving = record(7, 3, 443, 0);
    leaving.end_reason = EndReason::Idle;
    flows.push(Harvest { live: vec![live(80, 2), live(81, 2)], leaving: vec![leaving], tracked: 25 });
    let mut rules = MemoryRules::new(100 * S);
    // An operator's rule: the engine reports it, the agent delivers the report.
    rules.insert(manual_rule());
    let sensor = FakeSensor {
        counters: Counters { packets: 1000, ..Counters::default() },
        egress: Counters { packets: 234, ..Counters::default() },
        ..FakeSensor::default()
    };
    let mut rig = Rig::new("cycle", flows, sensor, rules, Vec::new());

    let report = rig.agent.cycle(101 * S).expect("cycle");
    assert_eq!((report.harvest.tracked, report.harvest.idle, report.scored), (25, 1, 2));
    assert_eq!(report.next, Next::Continue);
    assert_eq!(actions(&report.decisions), ["block"]);

    // Deliver: the decision rendered once, into the sink.
    let alerts = wait_lines(&rig.dir.join("alerts.json"), 1);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let doc: serde_json::Value = serde_json::from_str(&alerts[0]).expect("ECS JSON");
    assert_eq!(doc["message"], "198.51.100.0/24 blocked (manual)");
    assert_eq!(doc["observer"]["ingress"]["interface"]["name"], "fake0");
    assert_eq!(doc["vigil"]["model"]["sha256"], "abc");

    // Harvest: the leaving flow's conversation record written out.
    let records = lines(&rig.dir.join("flows.jsonl"));
    assert_eq!(records.len(), 1);
    assert!(
        records[0].starts_with("{\"version\":2,") && records[0].contains("\"responder_port\":443"),
        "{}",
        records[0]
    );

    // Observe: metrics and status, in one place.
    let text = rig.agent.outputs.metrics.encode();
    assert!(text.contains("vigil_packets_total 1234\n"), "{text}");
    assert!(text.contains("vigil_direction_packets_total{direction=\"egress\"} 234\n"), "{text}");
    assert!(text.contains("vigil_flows_scored_total 2\n"), "{text}");
    assert!(text.contains("vigil_block_actions_total{action=\"block\"} 1\n"), "{text}");
    assert!(text.contains("vigil_block_rules_active 1\n"), "{text}");
    let status = AgentStatus::read(&rig.dir).expect("status written");
    assert_eq!((status.flows_tracked, status.flows_scored), (25, 2));
    assert_eq!(status.sinks.len(), 1);
}

#[test]
fn the_store_records_what_a_cycle_did() {
    let mut flows = FakeFlows::default();
    flows.push(Harvest { live: vec![live(80, 2), live(81, 2)], tracked: 2, ..Harvest::default() });
    let mut rules = MemoryRules::new(100 * S);
    rules.insert(manual_rule());
    let sensor = FakeSensor { counters: Counters { packets: 1000, ..Counters::default() }, ..FakeSensor::default() };
    let mut rig = Rig::new("store", flows, sensor, rules, Vec::new());
    rig.agent.cycle(101 * S).expect("cycle");
    let status = AgentStatus::read(&rig.dir).expect("status written");
    assert!(status.store.as_ref().is_some_and(|s| s.path == rig.dir.join("vigil.db")), "{:?}", status.store);
    let dir = rig.dir.clone();
    rig.agent.stop(|_sensor| Ok(false)).expect("stop");

    let conn = crate::store::schema::open_for_reading(&dir.join("vigil.db")).expect("store");
    let all = crate::store::query::Filter { limit: 100, ..Default::default() };
    let actions = crate::store::query::actions(&conn, &all).unwrap();
    assert_eq!(actions.len(), 1);
    let a = &actions[0];
    assert_eq!(
        (a.action.as_str(), a.prefix.as_deref(), a.origin.as_deref()),
        ("block", Some("198.51.100.0/24"), Some("manual"))
    );
    assert_eq!(a.host, "rig");
    assert!(a.document.contains("198.51.100.0/24 blocked (manual)"), "{}", a.document);
    // Both conversations, from one source to one destination, on two services.
    let flows = crate::store::query::flows(&conn, &all, false).unwrap();
    assert_eq!(flows.len(), 2, "{flows:?}");
    assert!(flows.iter().all(|f| f.flows == 1 && f.packets > 0), "{flows:?}");
    let mut ports: Vec<u16> = flows.iter().map(|f| f.port).collect();
    ports.sort_unstable();
    assert_eq!(ports, [80, 81]);
    let health = crate::store::query::latest_health(&conn).unwrap();
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].1.packets, 1000);
    let models = crate::store::query::models(&conn).unwrap();
    assert_eq!(
        (models[0].sha256.as_str(), models[0].name.as_str(), models[0].phase.as_str()),
        ("abc", "test-model", "fixed")
    );
}

#[test]
fn ignored_destinations_are_harvested_but_not_scored() {
    let mut flows = FakeFlows::default();
    let mut multicast = live(5353, 2);
    multicast.record.dst_ip = "224.0.0.251".parse().unwrap();
    flows.push(Harvest { live: vec![live(80, 2), multicast], ..Harvest::default() });
    let ignored = vec!["224.0.0.0/4".parse().unwrap()];
    let mut rig = Rig::new("ignored", flows, FakeSensor::default(), MemoryRules::new(100 * S), ignored);
    assert_eq!(rig.agent.cycle(101 * S).expect("cycle").scored, 1);
}

#[test]
fn the_pin_state_ends_the_run() {
    for (state, next) in [(PinState::Detached, Next::Detached), (PinState::Unpinned, Next::Unpinned)] {
        let sensor = FakeSensor { pin_state: state, ..FakeSensor::default() };
        let mut rig = Rig::new("pin", FakeFlows::default(), sensor, MemoryRules::new(100 * S), Vec::new());
        assert_eq!(rig.agent.cycle(101 * S).expect("cycle").next, next);
    }
}

#[test]
fn a_failing_seam_fails_the_cycle_with_its_name() {
    let flows = FakeFlows { fail_next: true, ..FakeFlows::default() };
    let mut rig = Rig::new("fail", flows, FakeSensor::default(), MemoryRules::new(100 * S), Vec::new());
    let err = rig.agent.cycle(101 * S).unwrap_err();
    assert!(matches!(err, CycleError::Harvest(_)), "{err}");
    // The next cycle works again.
    rig.agent.cycle(102 * S).expect("recovered");

    let mut rules = MemoryRules::new(100 * S);
    rules.fail_list = true;
    let mut rig = Rig::new("fail-rules", FakeFlows::default(), FakeSensor::default(), rules, Vec::new());
    assert!(matches!(rig.agent.cycle(101 * S).unwrap_err(), CycleError::Rules(_)));
}

#[test]
fn stop_flushes_only_when_the_sensor_is_gone_and_removes_the_status() {
    for detach in [false, true] {
        let flows = FakeFlows { remaining: vec![record(7, 2, 80, 0), record(7, 2, 81, 0)], ..FakeFlows::default() };
        let mut rig = Rig::new("stop", flows, FakeSensor::default(), MemoryRules::new(100 * S), Vec::new());
        rig.agent.cycle(101 * S).expect("cycle");
        assert!(rig.dir.join(crate::control::STATUS_FILE).exists());
        let flushed = rig.agent.stop(|_sensor| Ok(detach)).expect("stop");
        assert_eq!(flushed, if detach { 2 } else { 0 });
        let records = lines(&rig.dir.join("flows.jsonl"));
        assert_eq!(records.len(), flushed, "{records:?}");
        assert!(records.iter().all(|r| r.contains("\"end_reason\":\"shutdown\"")), "{records:?}");
        assert!(!rig.dir.join(crate::control::STATUS_FILE).exists());
    }
}

/// `n` ordinary conversations of cycle `cycle`: distinct clients and start times, a few
/// services.
fn ordinary(cycle: u64, n: u64) -> Vec<LiveFlow> {
    (0..n)
        .map(|i| {
            let port = [80, 443, 8080, 22][usize::try_from(i % 4).unwrap()];
            let client = u8::try_from(10 + i % 50).unwrap();
            let mut r = record(client, 2, port, 0);
            r.src_port = 40_000 + u16::try_from(i).unwrap();
            r.bytes += 40 * (i % 7);
            r.end_reason = EndReason::Open;
            // Answered: a SYN-ACK and an ACK back.
            let mut back = record(2, client, r.src_port, 0);
            back.src_port = port;
            back.packets = 2;
            back.bytes = 120 + 500 * (i % 3);
            back.tcp_flags = crate::flows::record::TcpFlagCounts { syn_ack: 1, ack: 2, ..Default::default() };
            back.end_reason = EndReason::Open;
            LiveFlow { record: r, back: Some(back), new: true, first_mono_ns: cycle * S + i }
        })
        .collect()
}

/// A rig that learns. The built-in model finds many of these synthetic conversations unusual
/// (50 clients calling one server 40 times a second), and the learner takes only rows below the
/// alert threshold: the scorer's threshold is raised so that every row counts, since these tests
/// are about the phase's mechanics, not the model's judgement.
fn learning_rig(name: &str, min_rows: usize) -> Rig {
    let mut rig = Rig::new(name, FakeFlows::default(), FakeSensor::default(), MemoryRules::new(100 * S), Vec::new());
    rig.agent.scorer.detector.thresholds.alert = f32::MAX;
    let learner = learning(&rig.dir, min_rows);
    rig.agent = rig.agent.with_learner(learner);
    rig
}

fn learning(dir: &Path, min_rows: usize) -> crate::learn::Learner {
    learning_with(dir, min_rows, Duration::from_hours(7 * 24))
}

fn learning_with(dir: &Path, min_rows: usize, retrain_every: Duration) -> crate::learn::Learner {
    let config = crate::learn::LearnSection {
        retrain_every: crate::config::HumanDuration(retrain_every),
        max_rate_change: 1.0,
        period: crate::config::HumanDuration(Duration::from_secs(5)),
        min_rows,
        holdout_rows: 10,
        min_hours: 0,
        max_alert_rate: 1.0,
        dir: dir.join("models"),
        ..crate::learn::LearnSection::default()
    };
    crate::learn::Learner::new(config, detector().schema, 100 * S)
}

/// Runs cycles from second 101 on, 40 ordinary conversations each, until `done` or 60 s of
/// wall time (training runs on its own thread); answers the last cycle's second.
fn run_until(rig: &mut Rig, mut done: impl FnMut(&mut Agent<FakeFlows, FakeSensor>) -> bool) -> u64 {
    let deadline = Instant::now() + Duration::from_mins(1);
    let mut t = 101;
    while !done(&mut rig.agent) && Instant::now() < deadline {
        rig.agent.kernel.flows.push(Harvest { live: ordinary(t, 40), ..Harvest::default() });
        rig.agent.cycle(t * S).expect("cycle");
        t += 1;
        if t > 110 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    t
}

#[test]
fn learning_swaps_in_a_validated_site_model_and_blocks_only_then() {
    let mut rig = learning_rig("learn", 100);
    let dir = rig.dir.clone();
    assert_eq!(rig.agent.phase(), crate::learn::Phase::Learning);
    assert_eq!(rig.agent.engine.config().block_mode, BlockMode::DryRun, "auto-block is a dry run while learning");
    rig.agent.kernel.flows.push(Harvest { live: ordinary(101, 40), ..Harvest::default() });
    rig.agent.cycle(101 * S).expect("cycle");
    let status = AgentStatus::read(&rig.dir).expect("status");
    let learn = status.learn.expect("learning status");
    assert_eq!((status.model_phase, learn.phase), (crate::learn::Phase::Learning, crate::learn::Phase::Learning));
    assert!(learn.sample_rows > 0 && learn.sample_rows <= 40, "{learn:?}");

    run_until(&mut rig, |a| a.phase() == crate::learn::Phase::Site);
    assert_eq!(
        rig.agent.phase(),
        crate::learn::Phase::Site,
        "swapped within 60 s: {:?}",
        rig.agent.outputs.status.learn
    );
    assert_eq!(rig.agent.engine.config().block_mode, BlockMode::Enforce, "auto-block as configured");
    let sha = rig.agent.outputs.observer.model_sha256.clone();
    assert_ne!(sha, "abc");
    assert_eq!(
        rig.agent.engine.config().alert_threshold.to_bits(),
        rig.agent.scorer.detector.thresholds.alert.to_bits()
    );
    assert!(rig.agent.scorer.detector.thresholds.alert < f32::MAX, "the site model's own threshold");
    let text = rig.agent.outputs.metrics.encode();
    assert!(text.contains("vigil_model_phase{phase=\"site\"} 1"), "{text}");
    assert!(text.contains(&format!("sha256=\"{sha}\"")) && !text.contains("sha256=\"abc\""), "{text}");
    // The site model is on disk, signed with the host's own key, and loads back.
    let saved = dir.join("models").join(format!("site-{}", &sha[..12]));
    let key = crate::model::sign::PublicKey::read(
        &dir.join("models/site-key").join(crate::model::sign::PUBLIC_KEY_FILE),
        crate::model::files::Access::Private,
    )
    .expect("site key");
    let trust = crate::model::Trust { keys: vec![key], allow_unsigned: false };
    let (bundle, _) = crate::model::Bundle::load_trusted(&saved, &trust).expect("signed site model loads");
    assert_eq!(bundle.sha256(), sha);
    // The next cycle's status says so.
    rig.agent.kernel.flows.push(Harvest { live: ordinary(500, 5), ..Harvest::default() });
    rig.agent.cycle(500 * S).expect("cycle");
    let status = AgentStatus::read(&rig.dir).expect("status");
    assert_eq!((status.model_phase, status.model_sha256.as_str()), (crate::learn::Phase::Site, sha.as_str()));
    let last = status.learn.and_then(|l| l.last).expect("validation report");
    assert!(last.refused.is_none() && last.rows >= 100, "{last:?}");
}

#[test]
fn a_model_that_fails_validation_is_held_back_and_learning_goes_on() {
    // More rows than the sample can ever hold.
    let mut rig = learning_rig("learn-held", 100_000);
    run_until(&mut rig, |a| {
        a.outputs.status.learn.as_ref().is_some_and(|l| l.last.as_ref().is_some_and(|v| v.refused.is_some()))
    });
    let learn = rig.agent.outputs.status.learn.clone().expect("status");
    let why = learn.last.and_then(|v| v.refused).expect("held back");
    assert!(why.contains("learn.min_rows"), "{why}");
    assert_eq!(rig.agent.phase(), crate::learn::Phase::Learning);
    assert_eq!(rig.agent.engine.config().block_mode, BlockMode::DryRun);
    assert!(learn.ends_in_s.is_some_and(|s| s > 0.0), "a new period started");
}

#[test]
fn suppression_rules_keep_matching_alerts_from_the_sinks_and_count_them() {
    let mut rig =
        Rig::new("suppress", FakeFlows::default(), FakeSensor::default(), MemoryRules::new(100 * S), Vec::new());
    // Every flow anomalous, none blockable: each busy source raises an alert.
    rig.agent.engine.set_thresholds(f32::MIN, f32::MAX);
    let path = rig.dir.join("rules/suppressions.json");
    let now_ms = clock::wall_ns() / 1_000_000;
    let file = crate::alert::suppress::RuleFile {
        version: 1,
        rules: vec![crate::alert::suppress::Rule {
            id: 7,
            source: Some("10.0.0.7/32".parse().unwrap()),
            destination: None,
            port: None,
            kind: None,
            created_ms: now_ms,
            expires_ms: now_ms + 3_600_000,
            reason: "a noisy backup host".into(),
        }],
    };
    file.write(&path).expect("rules file");
    let suppressions = crate::alert::suppress::Suppressions::load(&path).expect("rules");
    rig.agent = rig.agent.with_suppressions(suppressions);
    let flows = |src: u8| -> Vec<LiveFlow> {
        (0..5u16)
            .map(|i| {
                let mut f = live(80 + i, 2);
                f.record.src_ip = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, src));
                f
            })
            .collect()
    };
    let mut live_flows = flows(7);
    live_flows.extend(flows(8));
    rig.agent.kernel.flows.push(Harvest { live: live_flows, ..Harvest::default() });
    let report = rig.agent.cycle(101 * S).expect("cycle");
    assert_eq!(actions(&report.decisions), ["anomalous-flows", "anomalous-flows"], "both sources alerted");

    let alerts = wait_lines(&rig.dir.join("alerts.json"), 1);
    std::thread::sleep(Duration::from_millis(200));
    let alerts = if alerts.len() == 1 { lines(&rig.dir.join("alerts.json")) } else { alerts };
    assert_eq!(alerts.len(), 1, "only the unsuppressed source's alert is sent: {alerts:?}");
    assert!(alerts[0].contains("\"ip\":\"10.0.0.8\""), "{}", alerts[0]);
    let text = rig.agent.outputs.metrics.encode();
    assert!(text.contains("vigil_alerts_suppressed_by_rule_total{rule=\"7\"} 1"), "{text}");
    let status = AgentStatus::read(&rig.dir).expect("status").suppression.expect("suppression status");
    assert_eq!((status.rules_active, status.suppressed.get(&7).copied()), (1, Some(1)));
}

#[test]
fn a_site_model_is_retrained_each_period_and_every_swap_is_an_event() {
    let mut rig =
        Rig::new("retrain", FakeFlows::default(), FakeSensor::default(), MemoryRules::new(100 * S), Vec::new());
    rig.agent.scorer.detector.thresholds.alert = f32::MAX;
    let learner = learning_with(&rig.dir, 100, Duration::from_secs(5));
    rig.agent = rig.agent.with_learner(learner);
    let swaps = |a: &Agent<FakeFlows, FakeSensor>| {
        let text = a.outputs.metrics.encode();
        text.lines().find(|l| l.starts_with("vigil_model_events_total{event=\"swap\"}")).map(str::to_owned)
    };
    run_until(&mut rig, |a| {
        // As before the first model: every synthetic row goes to the sample.
        a.scorer.detector.thresholds.alert = f32::MAX;
        swaps(a).is_some_and(|l| l.ends_with(" 2"))
    });
    assert_eq!(
        swaps(&rig.agent).as_deref(),
        Some("vigil_model_events_total{event=\"swap\"} 2"),
        "learnt, then retrained"
    );
    let events: Vec<serde_json::Value> = wait_lines(&rig.dir.join("alerts.json"), 2)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|d: &serde_json::Value| d["event"]["action"] == "model-swap")
        .collect();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[1]["event"]["dataset"], "vigil.model");
    assert_eq!(events[1]["vigil"]["model"]["phase"], "site");
    assert_eq!(events[1]["vigil"]["learn"]["previous_sha256"], events[0]["vigil"]["model"]["sha256"]);
    assert!(events[1]["vigil"]["learn"]["validation"]["current_alert_rate"].is_number(), "{:#}", events[1]);

    // An operator rolls back (`vigil model rollback`): the agent follows within a cycle or two
    // (a retraining in flight finishes first).
    let first = events[0]["vigil"]["model"]["sha256"].as_str().expect("sha").to_owned();
    crate::learn::store::rollback(&rig.dir.join("models")).expect("rollback");
    run_until(&mut rig, |a| a.outputs.observer.model_sha256 == first);
    assert_eq!(rig.agent.outputs.observer.model_sha256, first, "rolled back");
}

#[test]
fn a_false_positive_verdict_puts_the_alerts_flow_and_source_back_into_the_sample() {
    let mut rig = learning_rig("feedback", 100_000);
    // Every flow anomalous to the engine: a source with a few flows is alerted, and leaves
    // the sample.
    rig.agent.engine.set_thresholds(f32::MIN, f32::MAX);
    let flows: Vec<LiveFlow> = (0..5u16).map(|i| live(80 + i, 2)).collect();
    rig.agent.kernel.flows.push(Harvest { live: flows, ..Harvest::default() });
    let report = rig.agent.cycle(101 * S).expect("cycle");
    assert_eq!(actions(&report.decisions), ["anomalous-flows"]);
    let sampled = |a: &Agent<FakeFlows, FakeSensor>| a.outputs.status.learn.as_ref().map_or(0, |l| l.sample_rows);
    assert_eq!(sampled(&rig.agent), 0, "the alerted source's flows stay out");
    let alert: serde_json::Value =
        serde_json::from_str(&wait_lines(&rig.dir.join("alerts.json"), 1)[0]).expect("alert json");
    let id = alert["event"]["id"].as_str().expect("alerts carry an id").to_owned();
    assert!(crate::learn::store::is_alert_id(&id), "{id}");

    let models = rig.dir.join("models");
    crate::learn::store::add_feedback(&models, &id, 0).expect("feedback");
    crate::learn::store::add_feedback(&models, "0badc0de-1", 0).expect("feedback");
    rig.agent.cycle(102 * S).expect("cycle");
    assert_eq!(sampled(&rig.agent), 1, "the alert's top flow joined the sample");
    let text = rig.agent.outputs.metrics.encode();
    assert!(text.contains("vigil_feedback_total{outcome=\"applied\"} 1"), "{text}");
    assert!(text.contains("vigil_feedback_total{outcome=\"unknown\"} 1"), "{text}");
    // Read once: the next cycle does not apply it again.
    rig.agent.cycle(103 * S).expect("cycle");
    assert!(rig.agent.outputs.metrics.encode().contains("vigil_feedback_total{outcome=\"applied\"} 1"));
}

#[test]
fn the_fleet_export_gets_every_leaving_conversation_and_the_status() {
    use crate::alert::sink::nats::tests::{Server, free_port};
    use futures_util::StreamExt as _;

    let port = free_port();
    let server_dir = temp_dir("fleet-server");
    let _server = Server::start(&server_dir, port);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_client, mut beats) = runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let sub = client.subscribe("vigil.v1.health.>").await.unwrap();
        client.flush().await.unwrap();
        (client, sub)
    });
    let mut flows = FakeFlows { remaining: vec![record(7, 2, 80, 0), record(7, 2, 81, 0)], ..FakeFlows::default() };
    let mut leaving = record(7, 3, 443, 0);
    leaving.end_reason = EndReason::Idle;
    flows.push(Harvest { live: vec![live(80, 2)], leaving: vec![leaving], tracked: 25 });
    let sensor = FakeSensor { counters: Counters { packets: 1000, ..Counters::default() }, ..FakeSensor::default() };
    let mut rig = Rig::new("fleet", flows, sensor, MemoryRules::new(100 * S), Vec::new());
    let section: crate::fleet::FleetSection = toml::from_str(&format!(
        "heartbeat = \"100ms\"\nflush = \"100ms\"\n[bus]\nurl = \"nats://127.0.0.1:{port}\"\nallow_plaintext = true\n\
         create_stream = true\nsite = \"lab\"\nhost = \"rig\"\n"
    ))
    .unwrap();
    rig.agent.outputs.fleet = Some(crate::fleet::FleetExport::start(&section).unwrap());

    rig.agent.cycle(101 * S).expect("cycle");
    // The heartbeat carries the cycle's status and health.
    let beat = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), beats.next()).await.expect("a heartbeat").unwrap()
    });
    let doc: serde_json::Value = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!(beat.subject.as_str(), "vigil.v1.health.lab.rig");
    assert_eq!(doc["status"]["flows_tracked"], 25, "{doc:#}");
    assert_eq!(doc["health"]["packets"], 1000, "{doc:#}");
    assert_eq!(doc["health"]["model_sha256"], "abc", "{doc:#}");

    // Stop with the sensor gone: the table's flush goes out too, before the export stops.
    let flushed = rig.agent.stop(|_sensor| Ok(true)).expect("stop");
    assert_eq!(flushed, 2);
    let conversations: Vec<(u16, String)> = crate::fleet::tests::flow_batches(port)
        .into_iter()
        .flat_map(|(subject, _, batch)| {
            assert_eq!(subject, "vigil.v1.flows.lab.rig");
            batch.flows
        })
        .map(|c| (u16::try_from(c.responder_port).unwrap(), c.end_reason))
        .collect();
    assert_eq!(
        conversations,
        [(443, "idle".to_owned()), (80, "shutdown".to_owned()), (81, "shutdown".to_owned())],
        "the leaving conversation, then the flush"
    );
    let _ = fs::remove_dir_all(&server_dir);
}

#[test]
fn a_fleet_model_replaces_learning_and_a_refused_one_is_reported_while_the_model_stays() {
    use crate::fleet::models::{Accepted, ModelUpdate};
    let mut rig = learning_rig("fleet-model", 1_000_000);
    let (tx, rx) = std::sync::mpsc::channel();
    rig.agent = rig.agent.with_fleet_models(rx);
    let key = crate::model::sign::SecretKey::generate().expect("key").public();
    let mut fleet = detector();
    fleet.thresholds.alert = 7.25;
    let sha = "f1ee7".repeat(12) + "abcd";

    // A refused bundle: reported, the learning phase and its model go on.
    tx.send(ModelUpdate::Refused {
        sha256: "0bad".repeat(16),
        group: "canary".into(),
        why: "iforest.json: sha256 x".into(),
    })
    .expect("send");
    rig.agent.kernel.flows.push(Harvest { live: ordinary(101, 5), ..Harvest::default() });
    rig.agent.cycle(101 * S).expect("cycle");
    assert_eq!(
        (rig.agent.phase(), rig.agent.outputs.observer.model_sha256.as_str()),
        (crate::learn::Phase::Learning, "abc")
    );
    assert!(rig.agent.learner.is_some());

    tx.send(ModelUpdate::Ready {
        accepted: Box::new(Accepted {
            detector: fleet,
            sha256: sha.clone(),
            key,
            bundle: crate::model::Bundle::embedded().expect("built in"),
        }),
        group: "canary".into(),
    })
    .expect("send");
    rig.agent.kernel.flows.push(Harvest { live: ordinary(102, 5), ..Harvest::default() });
    rig.agent.cycle(102 * S).expect("cycle");
    assert_eq!(rig.agent.phase(), crate::learn::Phase::Fleet);
    assert!(rig.agent.learner.is_none(), "the fleet decides this host's model now");
    assert_eq!(rig.agent.engine.config().block_mode, BlockMode::Enforce, "auto-block as configured");
    assert_eq!(rig.agent.engine.config().alert_threshold.to_bits(), 7.25f32.to_bits());
    let status = AgentStatus::read(&rig.dir).expect("status");
    assert_eq!(
        (status.model.as_str(), status.model_sha256.as_str(), status.model_phase, status.learn.is_none()),
        ("fleet:canary", sha.as_str(), crate::learn::Phase::Fleet, true)
    );
    let text = rig.agent.outputs.metrics.encode();
    for line in [
        "vigil_model_phase{phase=\"fleet\"} 1",
        "vigil_model_events_total{event=\"fleet_swap\"} 1",
        "vigil_model_events_total{event=\"fleet_refused\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
    let events: Vec<serde_json::Value> = wait_lines(&rig.dir.join("alerts.json"), 2)
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .filter(|d: &serde_json::Value| d["event"]["dataset"] == "vigil.model")
        .collect();
    let actions: Vec<&str> = events.iter().map(|e| e["event"]["action"].as_str().unwrap_or("")).collect();
    assert_eq!(actions, ["model-refused", "model-swap"], "{events:#?}");
    assert_eq!(events[0]["vigil"]["learn"]["why"], "iforest.json: sha256 x");
    assert_eq!(events[0]["vigil"]["model"]["sha256"], "abc", "refused while the model in use stayed");
    assert_eq!(events[1]["vigil"]["model"]["phase"], "fleet");
    assert_eq!(events[1]["vigil"]["learn"]["signed_by"], key.to_string());
}
