//! `vigil query alerts|blocks|flows` as an analyst runs them, on a store written through the
//! agent's own store code (no root, no kernel). The agent's side (what a cycle records) is in
//! `agent/src/live/tests.rs`; writing while reading in `agent/src/store/tests.rs`.

mod common;

use std::time::Duration;

use common::{TempDir, arg as s, run_vigil as vigil};
use vigil::{
    detect::Severity,
    store::{ActionRow, AlertRow, FlowRow, Record, Store, StoreSection},
};

fn now_ms() -> i64 {
    i64::try_from(vigil::clock::wall_ns() / 1_000_000).unwrap()
}

fn alert(ago_ms: i64, id: &str, source: &str, severity: Severity) -> Record {
    Record::Alert(Box::new(AlertRow {
        time_ms: now_ms() - ago_ms,
        event_id: id.into(),
        severity,
        kind: "anomalous-flows".into(),
        source: Some(source.parse().unwrap()),
        destination: Some("10.0.0.1".parse().unwrap()),
        destination_port: Some(22),
        score: Some(6.25),
        model_sha256: "abc".into(),
        model_phase: "site".into(),
        message: format!("anomalous flows from {source}"),
        document: if id == "a-1" {
            // What an alert of a password-guessing source says (ECS threat.*, vigil.attack).
            r#"{"event":{"id":"a-1"},"vigil":{"attack":{"kind":"password-guessing"}},"threat":{"technique":{"id":"T1110","subtechnique":{"id":"T1110.001"}}}}"#.to_owned()
        } else {
            format!("{{\"event\":{{\"id\":\"{id}\"}}}}")
        },
    }))
}

fn store_with_history(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path().join("vigil.db");
    let store = Store::start(&StoreSection { path: path.clone(), ..StoreSection::default() }, "sensor-1").unwrap();
    store.record(alert(5_000, "a-1", "192.0.2.7", Severity::Medium));
    store.record(alert(4_000, "a-2", "2001:db8::66", Severity::High));
    store.record(alert(3 * 3_600_000, "a-old", "192.0.2.8", Severity::High));
    store.record(Record::Action(Box::new(ActionRow {
        time_ms: now_ms() - 3_000,
        action: "block".into(),
        source: Some("192.0.2.7".parse().unwrap()),
        prefix: Some("192.0.2.7/32".into()),
        origin: Some("auto".into()),
        expires_ms: Some(now_ms() + 600_000),
        reason: Some("score above the block threshold for 2 consecutive windows".into()),
        message: "192.0.2.7/32 blocked".into(),
        document: "{\"event\":{\"action\":\"block\"}}".into(),
    })));
    let minute = now_ms() / 60_000;
    let row = |source: &str, port, bytes| FlowRow {
        minute,
        source: source.parse().unwrap(),
        destination: "10.0.0.1".parse().unwrap(),
        protocol: 6,
        port,
        flows: 3,
        packets: 30,
        bytes,
        anomalous: 1,
    };
    store.record(Record::Flows(vec![row("192.0.2.7", 22, 9_000), row("198.51.100.4", 443, 50_000)]));
    store.shutdown(Duration::from_secs(10));
    path
}

#[test]
fn alerts_blocks_and_flows_are_listed_and_filtered() {
    let dir = TempDir::new("query-cli");
    let db = store_with_history(&dir);
    let db = s(&db);

    let (code, out, err) = vigil(&["query", "alerts", "--db", db]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("high") && lines[0].contains("2001:db8::66 -> 10.0.0.1:22"), "newest first: {out}");
    assert!(lines[1].contains("medium") && lines[1].contains("score 6.25") && lines[1].contains("[a-1]"), "{out}");

    let (_, out, _) = vigil(&["query", "alerts", "--db", db, "--since", "1h"]);
    assert_eq!(out.lines().count(), 2, "the 3-hour-old alert is outside the last hour: {out}");
    let (_, out, _) = vigil(&["query", "alerts", "--db", db, "--source", "192.0.2.0/24", "--since", "1h"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let (_, out, _) = vigil(&["query", "alerts", "--db", db, "--severity", "high"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let (_, out, _) = vigil(&["query", "alerts", "--db", db, "--source", "2001:db8::66", "--json"]);
    assert_eq!(out.trim(), "{\"event\":{\"id\":\"a-2\"}}", "the ECS document as the sinks got it");

    for filter in [["--attack", "password-guessing"], ["--technique", "T1110"], ["--technique", "T1110.001"]] {
        let (code, out, err) = vigil(&["query", "alerts", "--db", db, filter[0], filter[1]]);
        assert_eq!(code, 0, "{err}");
        assert!(out.lines().count() == 1 && out.contains("[a-1]"), "{filter:?}: {out}");
    }
    let (_, out, _) = vigil(&["query", "alerts", "--db", db, "--attack", "scan"]);
    assert!(out.is_empty(), "{out}");
    let (code, _, err) = vigil(&["query", "alerts", "--db", db, "--attack", "nonsense"]);
    assert_eq!(code, 2, "an unknown attack kind is a usage error: {err}");
    assert!(err.contains("password-guessing") && err.contains("syn-flood"), "the kinds are listed: {err}");

    let (code, out, err) = vigil(&["query", "blocks", "--db", db]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("block") && out.contains("192.0.2.7/32") && out.contains("auto") && out.contains("until"),
        "{out}"
    );
    let (_, out, _) = vigil(&["query", "blocks", "--db", db, "--action", "unblock"]);
    assert!(out.is_empty(), "{out}");

    let (code, out, err) = vigil(&["query", "flows", "--db", db]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("198.51.100.4 -> 10.0.0.1:443 tcp") && lines[0].contains("50000 bytes"),
        "most bytes first: {out}"
    );
    let (_, out, _) = vigil(&["query", "flows", "--db", db, "--source", "192.0.2.7", "--json"]);
    let row: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (row["port"].as_u64(), row["bytes"].as_u64(), row["anomalous"].as_u64()),
        (Some(22), Some(9_000), Some(1))
    );
    assert_eq!(row["host"], "sensor-1");
}

#[test]
fn a_missing_or_foreign_store_is_a_clear_error() {
    let dir = TempDir::new("query-cli-errors");
    let missing = dir.path().join("none.db");
    let (code, _, err) = vigil(&["query", "alerts", "--db", s(&missing)]);
    assert_eq!(code, 1);
    assert!(err.contains("none.db") && err.contains("no store"), "{err}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![7_u8; 4096]).unwrap();
    let (code, _, err) = vigil(&["query", "flows", "--db", s(&junk)]);
    assert_eq!(code, 1);
    assert!(err.contains("junk.db") && err.contains("not a database"), "{err}");
    let (code, _, err) = vigil(&["query", "alerts", "--db", s(&junk), "--source", "10.0.0.300"]);
    assert_eq!(code, 2, "a bad prefix is a usage error: {err}");
    assert!(err.contains("--source"), "{err}");
}
