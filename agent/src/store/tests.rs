//! The store without the agent: every table written and read back, retention by age and by
//! size, a corrupt file and a full queue leaving the caller untouched, reads while writing,
//! and the per-minute flow aggregates.

use std::{fs, net::IpAddr, path::Path, time::Duration};

use super::{aggregate::FlowMinutes, query::Filter, schema::tests::tempfile_dir, *};
use crate::{
    detect::{Severity, score::Evidence, score::ScoredFlow},
    features::flow::tests::record,
    flows::harvest::LiveFlow,
    model::Score,
};

/// The tests' "now", fixed once: rows are stamped near it so retention keeps them.
fn now_ms() -> i64 {
    static NOW: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap())
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn section(path: &Path) -> StoreSection {
    StoreSection { path: path.to_owned(), ..StoreSection::default() }
}

fn alert(n: i64, source: &str, severity: Severity) -> Record {
    Record::Alert(Box::new(AlertRow {
        time_ms: now_ms() + n,
        event_id: format!("run-{n}"),
        severity,
        kind: "anomalous-flows".into(),
        source: Some(ip(source)),
        destination: Some(ip("10.0.0.1")),
        destination_port: Some(22),
        score: Some(5.5),
        model_sha256: "abc".into(),
        model_phase: "fixed".into(),
        message: format!("alert {n}"),
        // Alert 2 is a scan, as an alert document says it (`vigil.attack`, `threat`).
        document: if n == 2 {
            r#"{"n":2,"vigil":{"attack":{"kind":"scan"}},"threat":{"technique":{"id":"T1046"}}}"#.to_owned()
        } else {
            format!("{{\"n\":{n}}}")
        },
    }))
}

fn action(n: i64, action: &str, prefix: &str) -> Record {
    let net: ipnet::IpNet = prefix.parse().unwrap();
    Record::Action(Box::new(ActionRow {
        time_ms: now_ms() + n,
        action: action.into(),
        source: Some(net.addr()),
        prefix: Some(prefix.into()),
        origin: Some("auto".into()),
        expires_ms: Some(now_ms() + 600_000),
        reason: Some("test".into()),
        message: format!("{action} {prefix}"),
        document: "{}".into(),
    }))
}

fn flow_row(minute: i64, source: &str, port: u16, bytes: u64) -> FlowRow {
    FlowRow {
        minute,
        source: ip(source),
        destination: ip("10.0.0.1"),
        protocol: 6,
        port,
        flows: 1,
        packets: 2,
        bytes,
        anomalous: 0,
    }
}

fn health(time_ms: i64) -> Record {
    Record::Health(Box::new(HealthRow {
        time_ms,
        packets: 10,
        bytes: 1000,
        model_sha256: "abc".into(),
        model_phase: "fixed".into(),
        ..HealthRow::default()
    }))
}

fn all(limit: usize) -> Filter {
    Filter { limit, ..Filter::default() }
}

#[test]
fn every_table_is_written_and_read_back() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let store = Store::start(&section(&path), "host-a").unwrap();
    store.record(alert(1, "192.0.2.7", Severity::Medium));
    store.record(alert(2, "2001:db8::9", Severity::High));
    store.record(action(3, "block", "192.0.2.7/32"));
    store.record(Record::Flows(vec![flow_row(now_ms() / 60_000, "192.0.2.7", 22, 500)]));
    // The same minute's row again (a restart, a late batch) adds up.
    store.record(Record::Flows(vec![flow_row(now_ms() / 60_000, "192.0.2.7", 22, 300)]));
    store.record(health(now_ms()));
    store.record(Record::Model(ModelRow {
        time_ms: now_ms(),
        sha256: "abc".into(),
        name: "default".into(),
        phase: "fixed".into(),
    }));
    store.shutdown(Duration::from_secs(10));

    let conn = schema::open_for_reading(&path).unwrap();
    let alerts = query::alerts(&conn, &all(10)).unwrap();
    assert_eq!(alerts.len(), 2);
    assert_eq!(alerts[0].source, Some(ip("2001:db8::9")), "newest first");
    assert_eq!(alerts[0].severity, Severity::High);
    assert_eq!(alerts[1].event_id, "run-1");
    assert_eq!(alerts[1].host, "host-a");
    assert_eq!(alerts[1].destination_port, Some(22));
    assert_eq!(alerts[1].document, "{\"n\":1}");
    assert_eq!(alerts[1].status, "new");
    let v4 = Filter { source: Some("192.0.2.0/24".parse().unwrap()), ..all(10) };
    assert_eq!(query::alerts(&conn, &v4).unwrap().len(), 1);
    let high = Filter { min_severity: Some(Severity::High), ..all(10) };
    assert_eq!(query::alerts(&conn, &high).unwrap().len(), 1);
    let later = Filter { since_ms: Some(now_ms() + 2), ..all(10) };
    assert_eq!(query::alerts(&conn, &later).unwrap().len(), 1);
    // Attack kind and technique come from the document.
    let scans = Filter { attack: Some("scan".into()), ..all(10) };
    assert_eq!(query::alerts(&conn, &scans).unwrap().len(), 1);
    assert_eq!(query::alerts(&conn, &scans).unwrap()[0].event_id, "run-2");
    for (technique, n) in [("T1046", 1), ("T1498", 0), ("T1498.001", 0), ("T1110", 0)] {
        let f = Filter { technique: Some(technique.into()), ..all(10) };
        assert_eq!(query::alerts(&conn, &f).unwrap().len(), n, "{technique}");
    }

    let actions = query::actions(&conn, &v4).unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!((actions[0].action.as_str(), actions[0].prefix.as_deref()), ("block", Some("192.0.2.7/32")));

    let flows = query::flows(&conn, &all(10), false).unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].flows, flows[0].packets, flows[0].bytes), (2, 4, 800));
    assert_eq!(flows[0].source, Some(ip("192.0.2.7")));
    let elsewhere = Filter { destination: Some("10.9.0.0/16".parse().unwrap()), ..all(10) };
    assert!(query::flows(&conn, &elsewhere, true).unwrap().is_empty());

    let health = query::latest_health(&conn).unwrap();
    assert_eq!(health.len(), 1);
    assert_eq!((health[0].0.as_str(), health[0].1.packets), ("host-a", 10));
    let models = query::models(&conn).unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].name, "default");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn traffic_splits_bytes_into_the_busiest_keys_and_the_rest_per_bucket() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let store = Store::start(&section(&path), "host-a").unwrap();
    let m = now_ms() / 60_000 - 10;
    store.record(Record::Flows(vec![
        // Bucket 0 (minutes m, m+1): the big talker on ssh, a small one on http.
        flow_row(m, "192.0.2.1", 22, 1000),
        flow_row(m + 1, "192.0.2.1", 22, 500),
        flow_row(m + 1, "192.0.2.2", 80, 10),
        // Bucket 1: the small one again, and a third source.
        flow_row(m + 2, "192.0.2.2", 80, 20),
        flow_row(m + 3, "192.0.2.3", 80, 5),
        // Outside the window on both sides.
        flow_row(m - 1, "192.0.2.9", 22, 99_999),
        flow_row(m + 6, "192.0.2.9", 22, 99_999),
    ]));
    store.shutdown(Duration::from_secs(10));
    let conn = schema::open_for_reading(&path).unwrap();

    let t = query::traffic(&conn, query::By::Source, m, 2, 3, 2).unwrap();
    assert_eq!((t.start_minute, t.step_minutes), (m, 2));
    let keys: Vec<_> = t.series.iter().map(|s| s.key.clone()).collect();
    assert_eq!(
        keys,
        [query::TrafficKey::Host(ip("192.0.2.1")), query::TrafficKey::Host(ip("192.0.2.2"))],
        "the two busiest, most bytes first; the 99,999-byte rows are outside the window"
    );
    assert_eq!(t.series[0].bytes, [1500, 0, 0]);
    assert_eq!((t.series[0].total_bytes, t.series[0].flows), (1500, 2));
    assert_eq!(t.series[1].bytes, [10, 20, 0]);
    assert_eq!(t.other, [0, 5, 0], "the third source is the rest");

    let t = query::traffic(&conn, query::By::Service, m, 2, 3, 5).unwrap();
    assert_eq!(t.series[0].key, query::TrafficKey::Service { protocol: 6, port: 22 });
    assert_eq!(t.series[1].key, query::TrafficKey::Service { protocol: 6, port: 80 });
    assert_eq!(t.series[1].bytes, [10, 25, 0]);
    assert_eq!(t.other, [0, 0, 0]);
    let t = query::traffic(&conn, query::By::Destination, m, 2, 3, 5).unwrap();
    assert_eq!(t.series.len(), 1);
    assert_eq!(t.series[0].total_bytes, 1535);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_same_alert_twice_is_stored_once() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let store = Store::start(&section(&path), "h").unwrap();
    store.record(alert(1, "192.0.2.7", Severity::Medium));
    store.record(alert(1, "192.0.2.7", Severity::Medium));
    store.shutdown(Duration::from_secs(10));
    let conn = schema::open_for_reading(&path).unwrap();
    assert_eq!(query::alerts(&conn, &all(10)).unwrap().len(), 1);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn retention_deletes_by_age_then_by_size() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let mut conn = schema::open_for_writing(&path).unwrap();
    let now_ms = i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap();
    let day = 86_400_000;
    let old = |n: i64| {
        let Record::Alert(mut a) = alert(n, "192.0.2.1", Severity::Medium) else { unreachable!() };
        a.time_ms = now_ms - 40 * day + n;
        Record::Alert(a)
    };
    let batch = vec![
        old(1),
        Record::Alert(Box::new(AlertRow {
            time_ms: now_ms,
            ..match alert(2, "192.0.2.1", Severity::Low) {
                Record::Alert(a) => *a,
                _ => unreachable!(),
            }
        })),
        Record::Flows(vec![
            flow_row(now_ms / 60_000 - 8 * 1440, "192.0.2.1", 1, 1),
            flow_row(now_ms / 60_000, "192.0.2.1", 1, 1),
        ]),
        health(now_ms - 31 * day),
    ];
    writer::insert(&mut conn, "h", &batch).unwrap();
    let mut settings = writer::Settings::from_section(&section(&path), "h");
    settings.max_size_bytes = 1 << 30;
    let counters = StoreCounters::default();
    let deleted = writer::maintain(&conn, &settings, &counters).unwrap();
    assert_eq!(deleted, 3, "the 40-day alert, the 8-day flow minute and the 31-day health row");
    assert_eq!(query::alerts(&conn, &all(10)).unwrap().len(), 1);
    assert_eq!(query::flows(&conn, &all(10), true).unwrap().len(), 1);

    // Past the size cap, the oldest flow minutes go first, then alerts.
    let rows: Vec<FlowRow> =
        (0..20_000).map(|i| flow_row(now_ms / 60_000 - 100 + i64::from(i % 100), "192.0.2.1", i, 10)).collect();
    writer::insert(&mut conn, "h", &[Record::Flows(rows)]).unwrap();
    let used = writer::used_bytes(&conn).unwrap();
    settings.max_size_bytes = used / 2;
    writer::maintain(&conn, &settings, &counters).unwrap();
    let after = writer::used_bytes(&conn).unwrap();
    assert!(after <= used / 2, "{after} bytes in use after retention, cap {}", used / 2);
    let left = query::flows(&conn, &all(100_000), true).unwrap();
    assert!(!left.is_empty() && left.len() < 20_000, "{} rows left", left.len());
    let oldest_left = left.iter().map(|r| r.first_minute).min().unwrap();
    assert!(oldest_left > now_ms / 60_000 - 100, "the oldest minutes went first");
    assert_eq!(query::alerts(&conn, &all(10)).unwrap().len(), 1, "alerts stay while flow rows can go");
    assert!(counters.expired.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_corrupt_file_is_reported_left_alone_and_opened_once_replaced() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let junk = b"this is not a database, but it is somebody's file".repeat(100);
    fs::write(&path, &junk).unwrap();
    let store = Store::start_with(&section(&path), "h", Duration::from_millis(100), Duration::from_mins(1)).unwrap();
    let stats = store.stats();
    assert!(!stats.up);
    assert!(stats.last_error.as_deref().is_some_and(|e| e.contains("not a database")), "{stats:?}");
    store.record(alert(1, "192.0.2.1", Severity::Medium));
    wait(|| store.stats().failed == 1, "the alert to be counted as failed");
    assert_eq!(fs::read(&path).unwrap(), junk, "the file is left as it was");
    // The operator moves it away: the writer opens a new store by itself.
    fs::rename(&path, dir.join("vigil.db.broken")).unwrap();
    wait(|| store.stats().up, "the store to come back");
    assert_eq!(store.stats().last_error, None);
    store.record(alert(2, "192.0.2.1", Severity::Medium));
    wait(|| store.stats().written == 1, "the alert to be written");
    store.shutdown(Duration::from_secs(10));
    let conn = schema::open_for_reading(&path).unwrap();
    assert!(!query::alerts(&conn, &all(10)).unwrap().is_empty());
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    // Hold the write lock from another connection so the writer waits on it.
    let blocker = schema::open_for_writing(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let store = Store::start(&StoreSection { queue: 2, ..section(&path) }, "h").unwrap();
    let started = std::time::Instant::now();
    for n in 0..5_000 {
        store.record(alert(n, "192.0.2.1", Severity::Medium));
    }
    assert!(started.elapsed() < Duration::from_secs(2), "record() never waits for the disk");
    assert!(store.stats().dropped > 4_000, "{:?}", store.stats());
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    store.shutdown(Duration::from_secs(20));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn readers_see_committed_rows_while_the_writer_writes() {
    let dir = tempfile_dir();
    let path = dir.join("vigil.db");
    let store = Store::start(&section(&path), "h").unwrap();
    store.record(alert(0, "192.0.2.1", Severity::Medium));
    wait(|| store.stats().written == 1, "the first alert");
    let reader_path = path.clone();
    let reader = std::thread::spawn(move || {
        let conn = schema::open_for_reading(&reader_path).unwrap();
        let mut last = 0;
        for _ in 0..200 {
            let n = query::alerts(&conn, &all(100_000)).unwrap().len();
            assert!(n >= last, "a reader never sees rows disappear");
            last = n;
            std::thread::sleep(Duration::from_millis(2));
        }
        last
    });
    for n in 1..3_000 {
        store.record(alert(n, "192.0.2.1", Severity::Medium));
        if n % 100 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let seen = reader.join().unwrap();
    store.shutdown(Duration::from_secs(10));
    assert!(seen >= 1);
    let conn = schema::open_for_reading(&path).unwrap();
    assert_eq!(query::alerts(&conn, &all(100_000)).unwrap().len(), 3_000);
    fs::remove_dir_all(dir).unwrap();
}

fn wait(cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn scored(src: &str, src_port: u16, port: u16, packets: u64, bytes: u64, new: bool, combined: f32) -> ScoredFlow {
    let mut r = record(1, 2, port, 0);
    (r.src_ip, r.dst_ip, r.src_port) = (ip(src), ip("10.0.0.1"), src_port);
    (r.packets, r.bytes) = (packets, bytes);
    ScoredFlow {
        flow: LiveFlow { record: r, back: None, new, first_mono_ns: 0 },
        score: Score { iforest: 0.5, autoencoder: 1.0, range: 0.0, combined, ..Score::default() },
        evidence: Evidence::default(),
    }
}

#[test]
fn minute_rows_count_what_is_new_once_per_minute() {
    const MIN: u64 = 60_000_000_000;
    let mut minutes = FlowMinutes::new(100, 10 * MIN);
    let t0 = 1_000 * MIN;
    // Two conversations of one source to one service, one anomalous.
    let cycle =
        vec![scored("192.0.2.1", 1000, 22, 10, 1000, true, 0.5), scored("192.0.2.1", 1001, 22, 4, 400, true, 9.0)];
    assert!(minutes.add(&cycle, 4.0, 1, t0).is_none());
    // The same two later in the minute, with more packets: only the growth counts.
    let cycle =
        vec![scored("192.0.2.1", 1000, 22, 15, 1500, false, 0.5), scored("192.0.2.1", 1001, 22, 4, 400, false, 9.0)];
    assert!(minutes.add(&cycle, 4.0, 2, t0 + 30_000_000_000).is_none());
    // Next minute: the first minute's row comes out.
    let cycle = vec![scored("192.0.2.1", 1000, 22, 16, 1600, false, 0.5)];
    let rows = minutes.add(&cycle, 4.0, 3, t0 + MIN).expect("the first minute");
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!((r.minute, r.port, r.protocol), (1_000, 22, 6));
    assert_eq!((r.flows, r.packets, r.bytes, r.anomalous), (2, 19, 1900, 1));
    let rest = minutes.take();
    assert_eq!((rest[0].flows, rest[0].packets, rest[0].bytes), (1, 1, 100));
    // A conversation that left the table and came back (new, lower totals) starts again.
    let cycle = vec![scored("192.0.2.1", 1000, 22, 3, 300, true, 0.5)];
    minutes.add(&cycle, 4.0, 4, t0 + MIN + 1);
    assert_eq!(minutes.take()[0].packets, 3);
}

#[test]
fn a_minute_holds_at_most_max_rows_and_forgets_old_conversations() {
    const MIN: u64 = 60_000_000_000;
    let mut minutes = FlowMinutes::new(10, MIN);
    let scan: Vec<ScoredFlow> = (0..100).map(|p| scored("192.0.2.1", 1000, p, 1, 60, true, 0.5)).collect();
    minutes.add(&scan, 4.0, 1, 7 * MIN);
    let rows = minutes.take();
    assert_eq!(rows.len(), 11, "ten rows and the other row");
    let other = rows.iter().find(|r| r.source == ip("::")).expect("other row");
    assert_eq!((other.flows, other.packets, other.port), (90, 90, 0));
    assert_eq!(rows.iter().map(|r| r.flows).sum::<u64>(), 100, "nothing is lost");
    assert_eq!(minutes.remembered(), 100);
    minutes.add(&[], 4.0, 3 * MIN, 10 * MIN);
    assert_eq!(minutes.remembered(), 0, "conversations not live for the idle time are forgotten");
}
