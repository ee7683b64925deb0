//! Fleet-wide blocking: the rails on plain values, the follower on the in-memory rule store, and
//! the whole path (agent proposal, collector policy, bucket, another agent's follower) against
//! a real `nats-server -js`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::*;
use crate::block::MemoryRules;
use crate::clock;

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn proposal(prefix: &str, ttl_s: u64, decided_ms: u64) -> Proposal {
    Proposal {
        schema: SCHEMA,
        prefix: net(prefix),
        ttl_s,
        decided_ms,
        reason: "score above the block threshold".into(),
    }
}

const NOW: u64 = 1_764_000_000_000;

#[test]
fn keys_are_valid_bucket_keys_and_name_their_prefix() {
    for p in ["192.0.2.7/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8:bad::/48", "::/0"] {
        let key = key_for(net(p));
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b)), "{key}");
        assert!(!key.starts_with('.') && !key.ends_with('.'), "{key}");
        assert_eq!(prefix_of_key(&key), Some(net(p)), "{key}");
    }
    assert_eq!(key_for(net("192.0.2.7/32")), "192.0.2.7_32");
    assert_eq!(prefix_of_key("not a key"), None);
}

#[test]
fn the_policy_writes_what_passes_the_fleets_rails_and_names_what_does_not() {
    let mut policy = Policy::new(PolicySection {
        allowlist: vec![net("10.0.0.0/8")],
        fleet_hosts: vec![net("198.51.100.0/24")],
        max_ttl: Duration::from_mins(10),
        max_new_per_minute: 3,
        ..PolicySection::default()
    });
    policy.host_addresses("lab.web-2", vec!["203.0.113.20".parse().unwrap()]);
    let refused = |v: Verdict| match v {
        Verdict::Refused(why) => why,
        other => panic!("not refused: {other:?}"),
    };
    // A plain proposal: written, expiring at decision + TTL, by the subject's host.
    let Verdict::Put(rule) = policy.decide(&proposal("192.0.2.9/32", 60, NOW - 500), "lab.web-1", NOW) else {
        panic!("refused")
    };
    assert_eq!(
        (rule.prefix, rule.expires_ms, rule.proposed_by.as_str()),
        (net("192.0.2.9/32"), NOW + 59_500, "lab.web-1")
    );
    // The rails, each by name.
    assert!(refused(policy.decide(&proposal("10.1.2.3/32", 60, NOW), "lab.web-1", NOW)).contains("fleet allowlist"));
    assert!(refused(policy.decide(&proposal("198.51.100.7/32", 60, NOW), "lab.web-1", NOW)).contains("fleet host"));
    assert!(refused(policy.decide(&proposal("203.0.113.0/24", 60, NOW), "lab.web-1", NOW)).contains("lab.web-2"));
    assert!(refused(policy.decide(&proposal("192.0.0.0/16", 60, NOW), "lab.web-1", NOW)).contains("/24 at the widest"));
    assert!(refused(policy.decide(&proposal("2001:db8::/32", 60, NOW), "lab.web-1", NOW)).contains("/64"));
    assert!(refused(policy.decide(&proposal("192.0.2.10/32", 60, NOW - 61_000), "lab.web-1", NOW)).contains("up"));
    assert!(refused(policy.decide(&proposal("192.0.2.10/32", 0, NOW), "lab.web-1", NOW)).contains("TTL"));
    // A mapped address is the IPv4 prefix it names, and meets the IPv4 rails.
    assert!(refused(policy.decide(&proposal("::ffff:10.9.9.9/128", 60, NOW), "lab.web-1", NOW)).contains("10.0.0.0/8"));
    // The longest TTL shortens; a decision stamped ahead of the collector counts from now.
    let Verdict::Put(long) = policy.decide(&proposal("192.0.2.11/32", 86_400, NOW + 5_000), "lab.web-1", NOW) else {
        panic!()
    };
    assert_eq!(long.expires_ms, NOW + 600_000);
    // The same prefix again: held while the blocklist has it as long, extended when later.
    assert_eq!(policy.decide(&proposal("192.0.2.9/32", 30, NOW), "lab.web-3", NOW), Verdict::Held);
    let Verdict::Put(later) = policy.decide(&proposal("192.0.2.9/32", 120, NOW), "lab.web-3", NOW) else { panic!() };
    assert_eq!(later.expires_ms, NOW + 120_000);
    // Three new prefixes a minute: the third went in, the fourth waits for the minute to pass.
    let Verdict::Put(_) = policy.decide(&proposal("192.0.2.12/32", 60, NOW), "lab.web-1", NOW) else { panic!() };
    assert!(refused(policy.decide(&proposal("192.0.2.13/32", 60, NOW), "lab.web-1", NOW)).contains("last minute"));
    assert!(matches!(
        policy.decide(&proposal("192.0.2.13/32", 60, NOW + 60_001), "lab.web-1", NOW + 60_001),
        Verdict::Put(_)
    ));
    // Lapsed rules are listed for deletion; forgotten ones are not.
    assert_eq!(policy.lapsed(NOW + 120_000), vec![net("192.0.2.9/32"), net("192.0.2.12/32")]);
    policy.forget(net("192.0.2.12/32"));
    assert_eq!(policy.lapsed(NOW + 120_000), vec![net("192.0.2.9/32")]);
    assert_eq!(policy.active(), 3);
}

#[test]
fn the_rule_cap_refuses_new_prefixes_only() {
    let mut policy = Policy::new(PolicySection { max_rules: 1, ..PolicySection::default() });
    assert!(matches!(policy.decide(&proposal("192.0.2.1/32", 60, NOW), "a.b", NOW), Verdict::Put(_)));
    assert!(
        matches!(policy.decide(&proposal("192.0.2.2/32", 60, NOW), "a.b", NOW), Verdict::Refused(w) if w.contains("max_rules"))
    );
    assert!(matches!(policy.decide(&proposal("192.0.2.1/32", 90, NOW), "a.b", NOW), Verdict::Put(_)));
}

#[test]
fn policy_settings_name_the_key() {
    assert!(PolicySection::default().validate().is_ok());
    let bad = |s: PolicySection| s.validate().unwrap_err().0;
    assert_eq!(bad(PolicySection { min_prefix_v4: 33, ..PolicySection::default() }), "collector.policy.min_prefix_v4");
    assert_eq!(bad(PolicySection { max_ttl: Duration::ZERO, ..PolicySection::default() }), "collector.policy.max_ttl");
    assert_eq!(bad(PolicySection { bucket: "a.b".into(), ..PolicySection::default() }), "collector.policy.bucket");
    let toml = "allowlist = [\"10.0.0.0/8\"]\nmax_ttl = \"30m\"\n";
    let parsed: PolicySection = toml::from_str(toml).unwrap();
    assert_eq!((parsed.max_ttl, parsed.min_prefix_v4), (Duration::from_mins(30), 24));
    assert!(toml::from_str::<PolicySection>("allow_list = []").is_err(), "unknown keys are refused");
}

fn fleet_rule(prefix: &str, expires_ms: u64) -> FleetRule {
    FleetRule {
        schema: SCHEMA,
        prefix: net(prefix),
        expires_ms,
        decided_ms: expires_ms - 60_000,
        proposed_by: "lab.web-1".into(),
        reason: "test".into(),
    }
}

#[test]
fn the_follower_installs_for_the_time_left_behind_its_own_rails() {
    let now_ms = clock::wall_ns() / 1_000_000;
    let mut rules = MemoryRules::new(clock::monotonic_ns());
    let allowlist = Allowlist::new(&[net("192.0.2.0/24")], false);
    let mut follower = Follower::new(BlockMode::Enforce, allowlist);
    // Installed with the time the rule has left, as a fleet rule.
    let Applied::Installed(rule) =
        follower.apply(&Update::Put(fleet_rule("203.0.113.9/32", now_ms + 30_000)), now_ms, &mut rules)
    else {
        panic!("not installed")
    };
    assert_eq!((rule.origin, rule.expires_ns - rule.created_ns), (Origin::Fleet, 30_000_000_000));
    // Its own allowlist wins over the bus, and a rule whose time is up is not installed.
    assert!(matches!(
        follower.apply(&Update::Put(fleet_rule("192.0.2.0/25", now_ms + 30_000)), now_ms, &mut rules),
        Applied::Refused(w) if w.contains("192.0.2.0/24")
    ));
    assert!(matches!(
        follower.apply(&Update::Put(fleet_rule("203.0.113.10/32", now_ms + 500)), now_ms, &mut rules),
        Applied::Ignored(_)
    ));
    // A longer rule of the agent's own stays as it is.
    rules.add(net("203.0.113.11/32"), Duration::from_hours(1), Origin::Manual).unwrap();
    assert!(matches!(
        follower.apply(&Update::Put(fleet_rule("203.0.113.11/32", now_ms + 30_000)), now_ms, &mut rules),
        Applied::Ignored(_)
    ));
    assert_eq!(rules.get(net("203.0.113.11/32")).unwrap().origin, Origin::Manual);
    // A deleted key removes the rule installed for it...
    assert_eq!(
        follower.apply(&Update::Delete(net("203.0.113.9/32")), now_ms, &mut rules),
        Applied::Removed(net("203.0.113.9/32"))
    );
    assert!(rules.get(net("203.0.113.9/32")).is_none());
    // ...but not a rule someone else wrote over it since.
    follower.apply(&Update::Put(fleet_rule("203.0.113.12/32", now_ms + 30_000)), now_ms, &mut rules);
    rules.add(net("203.0.113.12/32"), Duration::from_hours(1), Origin::Manual).unwrap();
    assert!(matches!(follower.apply(&Update::Delete(net("203.0.113.12/32")), now_ms, &mut rules), Applied::Ignored(_)));
    assert_eq!(rules.get(net("203.0.113.12/32")).unwrap().origin, Origin::Manual);
    assert_eq!(
        (follower.stats.installed, follower.stats.refused, follower.stats.removed, follower.stats.updates),
        (2, 1, 1, 7)
    );
}

#[test]
fn dry_run_installs_nothing_and_a_restarted_follower_takes_over_its_rules() {
    let now_ms = clock::wall_ns() / 1_000_000;
    let mut rules = MemoryRules::new(clock::monotonic_ns());
    let mut dry = Follower::new(BlockMode::DryRun, Allowlist::default());
    assert_eq!(
        dry.apply(&Update::Put(fleet_rule("203.0.113.9/32", now_ms + 30_000)), now_ms, &mut rules),
        Applied::WouldInstall(net("203.0.113.9/32"))
    );
    assert!(rules.is_empty());
    let mut first = Follower::new(BlockMode::Enforce, Allowlist::default());
    first.apply(&Update::Put(fleet_rule("203.0.113.9/32", now_ms + 30_000)), now_ms, &mut rules);
    // The next run finds it in the kernel, and a delete it reads then removes it.
    let mut next = Follower::new(BlockMode::Enforce, Allowlist::default());
    assert_eq!(next.adopt(&rules).unwrap(), 1);
    assert_eq!(
        next.apply(&Update::Delete(net("203.0.113.9/32")), now_ms, &mut rules),
        Applied::Removed(net("203.0.113.9/32"))
    );
    assert!(rules.is_empty());
}

#[test]
fn bucket_entries_become_updates_only_when_key_and_value_agree() {
    use async_nats::jetstream::kv::Operation;
    let rule = fleet_rule("203.0.113.9/32", NOW);
    let value = serde_json::to_vec(&rule).unwrap();
    assert_eq!(update_of("203.0.113.9_32", Operation::Put, &value), Some(Update::Put(rule)));
    assert_eq!(update_of("203.0.113.10_32", Operation::Put, &value), None, "a value under another prefix's key");
    assert_eq!(update_of("203.0.113.9_32", Operation::Put, b"{}"), None);
    assert_eq!(update_of("203.0.113.9_32", Operation::Delete, b""), Some(Update::Delete(net("203.0.113.9/32"))));
    assert_eq!(update_of("203.0.113.9_32", Operation::Purge, b""), Some(Update::Delete(net("203.0.113.9/32"))));
}

/// The in-memory rule store shared between a test and a follower on another thread.
#[derive(Clone)]
struct SharedRules(Arc<Mutex<MemoryRules>>);

impl RuleStore for SharedRules {
    fn list(&self) -> Result<Vec<Rule>, crate::block::BlockError> {
        self.0.lock().unwrap().list()
    }
    fn add(&mut self, prefix: IpNet, ttl: Duration, origin: Origin) -> Result<Rule, crate::block::BlockError> {
        let mut rules = self.0.lock().unwrap();
        rules.now_ns = clock::monotonic_ns();
        rules.add(prefix, ttl, origin)
    }
    fn remove_if_lapsed(&mut self, rule: &Rule) -> Result<Lapse, crate::block::BlockError> {
        self.0.lock().unwrap().remove_if_lapsed(rule)
    }
}

/// Two agents and a collector on one bus: agent 1's decision reaches agent 2's rules within a
/// second, the fleet's rails refuse an allowlisted address and a fleet host, agent 2's own
/// rails refuse what its allowlist holds, and the rule lapses and leaves agent 2 by itself.
#[test]
fn a_decision_on_one_agent_is_installed_on_another_and_lapses_on_both() {
    use crate::alert::sink::nats::tests::{Server, free_port, settings};
    use crate::fleet::{FleetExport, FleetSection};

    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("vigil=debug").try_init();
    let dir = crate::alert::sink::testing::temp_dir("fleet-blocking");
    let port = free_port();
    let _server = Server::start(&dir, port);
    let fleet = |host: &str, follow: BlockMode| FleetSection {
        bus: crate::alert::sink::nats::NatsSettings { host: Some(host.into()), ..settings(port) },
        flows: false,
        heartbeat: Duration::from_secs(10),
        blocking: Some(BlockingSection {
            propose: true,
            follow,
            bucket: default_bucket(),
            proposal_stream: default_proposal_stream(),
            direct: false,
        }),
        ..crate::fleet::tests::section(port)
    };
    // The collector with the fleet's rails (it creates the bucket).
    let stop = std::sync::atomic::AtomicBool::new(false);
    let collector = crate::collector::CollectorSection {
        bus: settings(port),
        durable: "vigil-collector".into(),
        batch: 16,
        health_stream: "VIGIL_HEALTH".into(),
        flow_stream: "VIGIL_FLOWS".into(),
        ack_wait: Duration::from_secs(30),
        policy: Some(PolicySection {
            allowlist: vec![net("10.0.0.0/8")],
            fleet_hosts: vec![net("198.51.100.0/24")],
            ..PolicySection::default()
        }),
    };
    let one = FleetExport::start(&fleet("web-1", BlockMode::Off)).unwrap();
    let mut two = FleetExport::start(&fleet("web-2", BlockMode::Enforce)).unwrap();
    let rules = SharedRules(Arc::new(Mutex::new(MemoryRules::new(clock::monotonic_ns()))));
    assert!(two.follow(Box::new(rules.clone()), Allowlist::new(&[net("192.0.2.0/24")], false)));
    let db = dir.join("vigil.db");
    std::thread::scope(|scope| {
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let collecting = scope.spawn(|| crate::collector::run(&collector, &db, &stop));
        let guard = StopOnDrop(&stop);
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done() {
                assert!(Instant::now() < deadline, "{what}: {:?} {:?}", two.stats(), rules.list());
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // Until the collector's policy and agent 2's watch are up, a proposal could only wait:
        // a first one, through to agent 2, shows the path is open.
        one.propose(proposal("203.0.113.1/32", 5, clock::wall_ns() / 1_000_000));
        wait_for("the first rule", &|| rules.list().unwrap().iter().any(|r| r.prefix == net("203.0.113.1/32")));
        // Now timed: from agent 1's decision to the rule in agent 2's store.
        let decided_ms = clock::wall_ns() / 1_000_000;
        let started = Instant::now();
        one.propose(proposal("203.0.113.9/32", 3, decided_ms));
        wait_for("the timed rule", &|| rules.list().unwrap().iter().any(|r| r.prefix == net("203.0.113.9/32")));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "agent 2 installed the rule {took:?} after agent 1's decision");
        let rule = rules.list().unwrap().into_iter().find(|r| r.prefix == net("203.0.113.9/32")).unwrap();
        assert_eq!(rule.origin, Origin::Fleet);
        assert!(rule.expires_ns - rule.created_ns <= 3_000_000_000, "{rule:?}");
        // The fleet's rails: neither an allowlisted address nor a fleet host reaches the bucket;
        // agent 2's own rails refuse what its allowlist holds.
        one.propose(proposal("10.1.2.3/32", 60, decided_ms));
        one.propose(proposal("198.51.100.7/32", 60, decided_ms));
        one.propose(proposal("192.0.2.50/32", 60, decided_ms));
        wait_for("agent 2's refusal", &|| two.stats().follow.is_some_and(|f| f.refused == 1));
        // Both rules lapse: the collector deletes their keys, agent 2 removes its rules (or
        // finds them lapsed in its kernel already: the TTL and the key's deletion race).
        wait_for("the rules to lapse", &|| {
            rules.list().unwrap().is_empty() && two.stats().follow.is_some_and(|f| f.active == 0)
        });
        let follow = two.stats().follow.unwrap();
        assert_eq!((follow.installed, follow.refused, follow.failed), (2, 1, 0), "{follow:?}");
        assert!(follow.removed <= 2, "{follow:?}");
        assert_eq!(one.stats().proposals_sent, 5, "{:?}", one.stats());
        drop(guard);
        let stats = collecting.join().unwrap().unwrap();
        assert_eq!(
            (stats.policy.proposals, stats.policy.accepted, stats.policy.refused, stats.policy.expired),
            (5, 3, 2, 2),
            "{:?}",
            stats.policy
        );
    });
    one.shutdown(Duration::from_secs(1));
    two.shutdown(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
}
