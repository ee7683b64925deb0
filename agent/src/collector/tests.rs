//! The collector against a real `nats-server -js`: two hosts publish through the `nats` sink,
//! the collector writes the store; a repeat is stored once, a non-alert is skipped.

use std::thread;
use std::time::Instant;

use super::*;
use crate::alert::sink::nats::tests::{Server, free_port, settings};
use crate::alert::sink::testing::{spec, temp_dir};
use crate::alert::sink::{Event, Severity, Sinks};

fn alert(id: &str, source: &str) -> Event {
    let json = serde_json::json!({
        "@timestamp": "2026-12-02T10:00:00.250Z",
        "message": format!("{source}: 30 anomalous flows"),
        "event": {"kind": "alert", "id": id, "action": "anomalous-flows", "severity": 73},
        "source": {"ip": source},
        "destination": {"ip": "10.0.0.2", "port": 22},
        "vigil": {"severity": "high", "score": {"combined": 5.5}, "model": {"sha256": "5a484c09", "phase": "site"}},
    })
    .to_string();
    Event { json, severity: Severity::High, timestamp_ns: 0 }
}

fn section(port: u16) -> CollectorSection {
    CollectorSection { bus: settings(port), durable: "vigil-collector".into(), batch: 16 }
}

/// Host, `event.id`, severity, kind, destination port, model phase, message.
type Stored = (String, String, i64, String, Option<u16>, String, String);

fn stored(db: &Path) -> Vec<Stored> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT host, event_id, severity, kind, destination_port, model_phase, message FROM alerts \
             ORDER BY host, event_id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Runs a collector until the store holds `rows` alerts (or 15 s pass) and `settle` more, then
/// stops it.
fn collect_until(section: &CollectorSection, db: &Path, rows: usize, settle: Duration) -> CollectorStats {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let collector = scope.spawn(|| run(section, db, &stop));
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && (!db.exists() || stored(db).len() < rows) {
            thread::sleep(Duration::from_millis(50));
        }
        // A little longer, for what should not come.
        thread::sleep(settle);
        stop.store(true, Ordering::Relaxed);
        collector.join().unwrap().unwrap()
    })
}

#[test]
fn a_fleets_alerts_land_in_the_store_once_each_by_host() {
    let dir = temp_dir("collector");
    let port = free_port();
    let _server = Server::start(&dir.join("nats"), port);
    let db = dir.join("fleet.db");
    let a = Sinks::start(&[spec(NatsSettings { host: Some("host-a".into()), ..settings(port) }, 100)]).unwrap();
    let b = Sinks::start(&[spec(NatsSettings { host: Some("host-b".into()), ..settings(port) }, 100)]).unwrap();
    for n in 0..30 {
        a.send(&alert(&format!("a-{n}"), "192.0.2.7"));
    }
    for n in 0..20 {
        b.send(&alert(&format!("b-{n}"), "198.51.100.9"));
    }
    // A block event goes to the sinks too; the collector stores alerts only (for now).
    a.send(&Event {
        json: r#"{"event":{"kind":"event","id":"x-1","action":"block"}}"#.into(),
        severity: Severity::Info,
        timestamp_ns: 0,
    });
    for (sinks, n) in [(&a, 31), (&b, 20)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sinks.stats()[0].delivered < n {
            assert!(Instant::now() < deadline, "{:?}", sinks.stats());
            thread::sleep(Duration::from_millis(10));
        }
    }

    let stats = collect_until(&section(port), &db, 50, Duration::from_millis(700));
    assert_eq!(stats, CollectorStats { messages: 51, stored: 50, repeated: 0, skipped: 1 });
    let rows = stored(&db);
    assert_eq!(rows.iter().filter(|r| r.0 == "host-a").count(), 30);
    assert_eq!(rows.iter().filter(|r| r.0 == "host-b").count(), 20);
    let a7 = rows.iter().find(|r| r.1 == "a-7").expect("a-7 stored");
    assert_eq!(
        a7,
        &(
            "host-a".to_owned(),
            "a-7".to_owned(),
            73,
            "anomalous-flows".to_owned(),
            Some(22),
            "site".to_owned(),
            "192.0.2.7: 30 anomalous flows".to_owned()
        )
    );

    // The same alert again through the sink: the stream's duplicate window drops it. The same
    // alert under another message id (past the window, or another publisher): the stream keeps
    // it and the store does not. A second collector run takes up where the durable consumer
    // stopped.
    a.send(&alert("a-7", "192.0.2.7"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats()[0].delivered < 32 {
        assert!(Instant::now() < deadline, "{:?}", a.stats());
        thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, "elsewhere-1");
        let payload = alert("a-7", "192.0.2.7").json.into_bytes().into();
        jetstream.publish_with_headers("vigil.v1.alert.lab.host-a", headers, payload).await.unwrap().await.unwrap();
    });
    let stats = collect_until(&section(port), &db, 50, Duration::from_secs(2));
    assert_eq!(stats, CollectorStats { messages: 1, stored: 0, repeated: 1, skipped: 0 });
    assert_eq!(stored(&db).len(), 50);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subjects_name_the_host_and_the_section_is_checked() {
    assert_eq!(subject_host("vigil.v1.alert.paris.web-1"), Some("web-1"));
    assert_eq!(subject_host("vigil.v1.alert.paris"), None);
    assert_eq!(subject_host("vigil.v1.alert.paris.web-1.extra"), None);
    assert_eq!(subject_host("other.v1.alert.paris.web-1"), None);
    assert!(section(4222).validate().is_ok());
    let bad = CollectorSection { durable: "a.b".into(), ..section(4222) };
    assert_eq!(bad.validate().unwrap_err().0, "collector.durable");
    let bad = CollectorSection { batch: 0, ..section(4222) };
    assert_eq!(bad.validate().unwrap_err().0, "collector.batch");
    let bad = CollectorSection { bus: NatsSettings { allow_plaintext: false, ..settings(4222) }, ..section(4222) };
    assert_eq!(bad.validate().unwrap_err().0, "collector.bus");
    let spool = crate::alert::sink::nats::SpoolSettings {
        dir: "/var/lib/vigil/spool".into(),
        max_size_mb: 1,
        max_age: Duration::from_mins(1),
        replay_rate: 1,
        max_in_flight: 1,
    };
    let bad =
        CollectorSection { bus: NatsSettings { spool: Some(Box::new(spool)), ..settings(4222) }, ..section(4222) };
    assert_eq!(bad.validate().unwrap_err().0, "collector.bus.spool");
}

#[test]
fn an_alert_document_becomes_its_row() {
    let row = AlertRow::from_document(&alert("a-1", "192.0.2.7").json).expect("an alert");
    assert_eq!(row.time_ms, 1_796_205_600_250);
    assert_eq!((row.event_id.as_str(), row.severity), ("a-1", crate::detect::Severity::High));
    assert_eq!(row.source, Some("192.0.2.7".parse().unwrap()));
    assert_eq!((row.destination_port, row.score), (Some(22), Some(5.5)));
    assert_eq!((row.model_sha256.as_str(), row.model_phase.as_str()), ("5a484c09", "site"));
    assert!(AlertRow::from_document(r#"{"event":{"kind":"event","id":"x"}}"#).is_none());
    assert!(AlertRow::from_document("not json").is_none());
}
