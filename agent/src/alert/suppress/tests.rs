use std::net::Ipv4Addr;

use super::*;
use crate::{
    detect::{
        Severity,
        decision::{DestinationAlert, ExplainedFlow, SourceAlert},
    },
    features::flow::tests::record,
    model::Score,
};

const NOW: u64 = 1_000_000;

fn top(dst: u8, port: u16) -> ExplainedFlow {
    ExplainedFlow {
        record: record(7, dst, port, 0),
        back: None,
        score: Score { iforest: 0.7, autoencoder: 1.0, range: 0.0, combined: 5.0, ..Score::default() },
        explanation: Vec::new(),
        raw: [0.0; crate::features::flow::FLOW_FEATURE_COUNT],
    }
}

/// A source alert from 10.0.0.`src` whose top flow went to 10.0.0.`dst`:`port`.
fn source_alert(src: u8, dst: u8, port: u16) -> Decision {
    Decision::SourceAlert(Box::new(SourceAlert {
        source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, src)),
        severity: Severity::Medium,
        flows: 3,
        anomalous_flows: 3,
        destinations: 1,
        destination_ports: 1,
        packets: 9,
        bytes: 540,
        first_ns: 0,
        last_ns: 1,
        top: top(dst, port),
        alert_threshold: 3.0,
    }))
}

fn destination_alert(dst: u8, port: u16) -> Decision {
    Decision::DestinationAlert(Box::new(DestinationAlert {
        destination: IpAddr::V4(Ipv4Addr::new(10, 0, 0, dst)),
        severity: Severity::Medium,
        sources: 30,
        sources_capped: false,
        new_flows: 30,
        destination_ports: 1,
        packets: 30,
        bytes: 1800,
        first_ns: 0,
        last_ns: 1,
        top: top(dst, port),
        alert_threshold: 3.0,
    }))
}

fn rule(id: u32) -> Rule {
    Rule {
        id,
        source: None,
        destination: None,
        port: None,
        kind: None,
        created_ms: NOW - 1000,
        expires_ms: NOW + 60_000,
        reason: String::new(),
    }
}

#[test]
fn every_field_a_rule_sets_must_match() {
    let backup = Rule { source: Some("10.0.0.7/32".parse().unwrap()), port: Some(873), ..rule(1) };
    assert!(backup.matches(&source_alert(7, 2, 873), NOW));
    assert!(!backup.matches(&source_alert(7, 2, 22), NOW), "another port");
    assert!(!backup.matches(&source_alert(8, 2, 873), NOW), "another source");
    assert!(!backup.matches(&destination_alert(2, 873), NOW), "a destination alert has no single source");
    let to_server =
        Rule { destination: Some("10.0.0.0/24".parse().unwrap()), kind: Some(KINDS[1].to_owned()), ..rule(2) };
    assert!(to_server.matches(&destination_alert(2, 80), NOW));
    assert!(!to_server.matches(&source_alert(7, 2, 80), NOW), "another kind");
    let blocked = Decision::WouldBlock { source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)), consecutive: 2 };
    assert!(!Rule { source: Some("10.0.0.0/8".parse().unwrap()), ..rule(3) }.matches(&blocked, NOW), "alerts only");
}

#[test]
fn a_rule_stops_at_its_expiry() {
    let r = Rule { port: Some(53), ..rule(1) };
    assert!(r.matches(&source_alert(7, 2, 53), r.expires_ms - 1));
    assert!(!r.matches(&source_alert(7, 2, 53), r.expires_ms));
}

#[test]
fn ipv4_rules_match_ipv4_mapped_addresses() {
    let r = Rule { source: Some("192.0.2.0/24".parse().unwrap()), ..rule(1) };
    let Decision::SourceAlert(mut a) = source_alert(7, 2, 80) else { unreachable!() };
    a.source = "::ffff:192.0.2.9".parse().unwrap();
    assert!(r.matches(&Decision::SourceAlert(a), NOW));
}

#[test]
fn rules_without_a_field_unknown_kinds_and_long_ttls_are_refused() {
    assert!(rule(1).validate().unwrap_err().contains("at least one"));
    assert!(Rule { kind: Some("scan".into()), ..rule(1) }.validate().unwrap_err().contains("unknown kind"));
    let forever = Rule { port: Some(1), expires_ms: u64::MAX, ..rule(1) };
    assert!(forever.validate().unwrap_err().contains("at most 90 days"));
}

#[test]
fn the_agent_reloads_a_changed_file_and_keeps_its_rules_when_it_turns_bad() {
    let dir = std::env::temp_dir().join(format!("vigil-suppress-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("suppressions.json");
    let mut s = Suppressions::load(&path).expect("no file: no rules");
    assert_eq!(s.suppress(&source_alert(7, 2, 53), NOW), None);

    let mut file = RuleFile { version: 1, rules: vec![Rule { port: Some(53), ..rule(4) }] };
    file.write(&path).expect("write");
    s.refresh();
    assert_eq!(s.suppress(&source_alert(7, 2, 53), NOW), Some(4));
    assert_eq!(s.suppress(&source_alert(7, 2, 80), NOW), None);
    assert_eq!(s.suppressed.get(&4), Some(&1));

    // Malformed: the rules in force stay.
    std::fs::write(&path, b"{ not json").expect("write");
    s.refresh();
    assert_eq!(s.suppress(&source_alert(7, 2, 53), NOW), Some(4));
    // Writable by others: refused, the rules in force stay.
    file.rules.push(Rule { port: Some(80), ..rule(5) });
    file.write(&path).expect("write");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    s.refresh();
    assert_eq!(s.suppress(&source_alert(7, 2, 80), NOW), None, "a world-writable file is not read");
    assert!(Suppressions::load(&path).is_err(), "nor at start");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    s.refresh();
    assert_eq!(s.suppress(&source_alert(7, 2, 80), NOW), Some(5));

    assert_eq!(file.next_id(), 6);
    assert_eq!(file.prune(NOW + 120_000), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
