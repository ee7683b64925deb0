//! The collector against a real `nats-server -js`: two hosts publish through the `nats` sink,
//! the collector writes the store; a repeat is stored once, a non-alert is skipped.

use std::thread;
use std::time::Instant;

use super::*;
use crate::alert::sink::nats::tests::{Server, free_port, settings};
use crate::alert::sink::testing::{spec, temp_dir};
use crate::alert::sink::{Event, Severity, Sinks};
use crate::fleet::blocking::PolicyStats;

/// A block event as the ECS renderer writes it (`alert/ecs.rs`).
const BLOCK_EVENT: &str = r#"{"@timestamp":"2026-12-02T10:00:05.000Z","message":"blocked 192.0.2.7/32 for 10m","event":{"kind":"event","action":"block","type":["denied","start"],"reason":"anomalous source"},"source":{"ip":"192.0.2.7","address":"192.0.2.7/32"},"vigil":{"rule":{"prefix":"192.0.2.7/32","origin":"auto","drops":0,"expires_in":"10m"},"block_mode":"enforce"}}"#;

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
    CollectorSection {
        bus: settings(port),
        durable: "vigil-collector".into(),
        batch: 16,
        health_stream: "VIGIL_HEALTH".into(),
        flow_stream: "VIGIL_FLOWS".into(),
        ack_wait: Duration::from_secs(30),
        policy: None,
    }
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

/// Runs a collector until the store holds `rows` alerts (or a minute passes) and `settle` more,
/// then stops it.
fn collect_until(section: &CollectorSection, db: &Path, rows: usize, settle: Duration) -> CollectorStats {
    collect_while(section, db, rows, settle, |_| ())
}

/// [`collect_until`], with `meanwhile` run (once, beside the collector) as soon as it started.
fn collect_while(
    section: &CollectorSection,
    db: &Path,
    rows: usize,
    settle: Duration,
    meanwhile: impl FnOnce(&AtomicBool),
) -> CollectorStats {
    /// Sets `stop` however the scope is left: a panic here must not leave the collector
    /// running, or the scope waits for it forever (a CI run hung on that).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let collector = scope.spawn(|| run(section, db, &stop));
        let guard = StopOnDrop(&stop);
        meanwhile(&stop);
        // Long enough for a cluster's election on a loaded machine; it ends as soon as the
        // rows are there.
        let deadline = Instant::now() + Duration::from_mins(1);
        // The store may exist before its tables do: count only what can be read.
        while Instant::now() < deadline && !stop.load(Ordering::Relaxed) && stored_so_far(db) < rows {
            thread::sleep(Duration::from_millis(50));
        }
        // A little longer, for what should not come.
        thread::sleep(settle);
        drop(guard);
        collector.join().unwrap().unwrap()
    })
}

/// How many alerts the store holds, or 0 while it cannot be read yet (not created, not migrated).
fn stored_so_far(db: &Path) -> usize {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return 0;
    };
    conn.query_row("SELECT count(*) FROM alerts", [], |r| r.get::<_, i64>(0))
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

type ActionColumns = (String, i64, String, String, String, i64, String);

/// The actions in the store: host, time, action, prefix, origin, expiry, reason.
fn stored_actions(db: &Path) -> Vec<ActionColumns> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT host, time_ms, action, prefix, origin, expires_ms, reason FROM actions ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
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
    // Block events go to the sinks too: into `actions`. A model event is neither: skipped.
    a.send(&Event { json: BLOCK_EVENT.into(), severity: Severity::Info, timestamp_ns: 0 });
    a.send(&Event {
        json: r#"{"@timestamp":"2026-12-02T10:00:06.000Z","event":{"kind":"event","action":"model-swap"}}"#.into(),
        severity: Severity::Info,
        timestamp_ns: 0,
    });
    for (sinks, n) in [(&a, 32), (&b, 20)] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sinks.stats()[0].delivered < n {
            assert!(Instant::now() < deadline, "{:?}", sinks.stats());
            thread::sleep(Duration::from_millis(10));
        }
    }

    let stats = collect_until(&section(port), &db, 50, Duration::from_millis(700));
    assert_eq!(
        stats,
        CollectorStats {
            messages: 52,
            stored: 50,
            actions: 1,
            repeated: 0,
            skipped: 1,
            health: 0,
            flow_batches: 0,
            flow_rows: 0,
            flows_skipped: 0,
            policy: PolicyStats::default()
        }
    );
    let at = 1_796_205_605_000; // 2026-12-02T10:00:05Z
    let s = str::to_owned;
    let action = (s("host-a"), at, s("block"), s("192.0.2.7/32"), s("auto"), at + 600_000, s("anomalous source"));
    assert_eq!(stored_actions(&db), vec![action]);
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
    // The block event under another message id: stored once too.
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        jetstream.publish("vigil.v1.alert.lab.host-a", BLOCK_EVENT.into()).await.unwrap().await.unwrap();
    });
    let stats = collect_until(&section(port), &db, 50, Duration::from_secs(2));
    assert_eq!(
        stats,
        CollectorStats { messages: 2, stored: 0, repeated: 2, skipped: 0, health: 0, ..CollectorStats::default() }
    );
    assert_eq!(stored_actions(&db).len(), 1);
    assert_eq!(stored(&db).len(), 50);
    a.shutdown(Duration::from_secs(5));
    b.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn subjects_name_the_host_and_the_section_is_checked() {
    assert_eq!(subject_host("vigil.v1.alert.paris.web-1", "alert"), Some("web-1"));
    assert_eq!(subject_host("vigil.v1.health.paris.web-1", "health"), Some("web-1"));
    assert_eq!(subject_host("vigil.v1.health.paris.web-1", "alert"), None);
    assert_eq!(subject_host("vigil.v1.alert.paris", "alert"), None);
    assert_eq!(subject_host("vigil.v1.alert.paris.web-1.extra", "alert"), None);
    assert_eq!(subject_host("other.v1.alert.paris.web-1", "alert"), None);
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

/// A three-node `nats-server` cluster with `JetStream` on loopback; each node killed on drop.
struct Cluster {
    nodes: Vec<Option<Server>>,
    ports: Vec<u16>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route_list = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(", ");
        let nodes = (0..3)
            .map(|i| {
                let store = dir.join(format!("n{i}"));
                let config = dir.join(format!("n{i}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\" }}\n\
                         cluster {{ name: vigil, listen: 127.0.0.1:{}, routes: [{route_list}] }}\n",
                        ports[i],
                        store.display(),
                        routes[i]
                    ),
                )
                .unwrap();
                Some(Server::start_with_config(&config, ports[i]))
            })
            .collect();
        Cluster { nodes, ports }
    }

    fn url(&self) -> String {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }
}

#[test]
fn the_stream_leader_killed_while_agents_publish_every_alert_is_stored_once() {
    let dir = temp_dir("collector-cluster");
    let mut cluster = Cluster::start(&dir);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = cluster.url();
    // The stream, replicated on all three nodes (retried until the cluster has a meta leader).
    let jetstream = runtime.block_on(async {
        let client = async_nats::connect(url.split(',').next().unwrap()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let created = jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "VIGIL_ALERTS".into(),
                    subjects: vec![crate::alert::sink::nats::ALERT_SUBJECTS.into()],
                    storage: async_nats::jetstream::stream::StorageType::File,
                    num_replicas: 3,
                    duplicate_window: Duration::from_mins(2),
                    ..Default::default()
                })
                .await;
            match created {
                Ok(_) => break jetstream,
                Err(e) => assert!(Instant::now() < deadline, "no replicated stream: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let bus = NatsSettings {
        url: url.clone(),
        create_stream: false,
        timeout: Duration::from_secs(2),
        spool: Some(Box::new(crate::alert::sink::nats::SpoolSettings {
            dir: dir.join("spool"),
            max_size_mb: 4,
            max_age: Duration::from_hours(1),
            replay_rate: 500,
            max_in_flight: 16,
        })),
        ..settings(cluster.ports[0])
    };
    let sinks = Sinks::start(&[spec(bus.clone(), 1000)]).unwrap();
    let n = 300;
    let mut killed = None;
    for i in 0..n {
        sinks.send(&alert(&format!("c-{i}"), "192.0.2.9"));
        thread::sleep(Duration::from_millis(20));
        if i == 100 {
            // The stream's leader goes away mid-run.
            // Asked again while the cluster is busy (a loaded machine) or has no leader yet.
            let leader = runtime.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let leader = match jetstream.get_stream("VIGIL_ALERTS").await {
                        Ok(mut stream) => {
                            stream.info().await.ok().and_then(|i| i.cluster.clone()).and_then(|c| c.leader)
                        }
                        Err(_) => None,
                    };
                    if let Some(leader) = leader {
                        break leader;
                    }
                    assert!(Instant::now() < deadline, "the stream has no leader");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
            let index: usize = leader.trim_start_matches('n').parse().unwrap();
            cluster.nodes[index] = None;
            killed = Some(index);
        }
    }
    let deadline = Instant::now() + Duration::from_mins(1);
    let stats = loop {
        let stats = sinks.stats().remove(0);
        if stats.delivered >= n && stats.spool.is_some_and(|s| s.alerts.pending == 0) {
            break stats;
        }
        assert!(Instant::now() < deadline, "not all delivered after the leader was killed: {stats:?}");
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((stats.delivered, stats.failed, stats.dropped), (n, 0, 0), "{stats:?}");
    sinks.shutdown(Duration::from_secs(5));

    // The collector, on the surviving nodes.
    let killed = killed.unwrap();
    let alive = (0..3).find(|i| *i != killed).unwrap();
    let db = dir.join("vigil.db");
    // Ten seconds for the API calls: the cluster may still be electing a new meta leader.
    let bus = NatsSettings { spool: None, timeout: Duration::from_secs(10), ..bus };
    let section = CollectorSection { bus, ..section(cluster.ports[alive]) };
    let stats = collect_until(&section, &db, 300, Duration::from_secs(1));
    let rows = stored(&db);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    ids.sort_unstable();
    let mut expected: Vec<String> = (0..n).map(|i| format!("c-{i}")).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every alert exactly once ({stats:?})");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_collector_started_before_its_bus_waits_for_it_and_stores_what_comes() {
    let dir = temp_dir("collector-early");
    let port = free_port();
    let db = dir.join("vigil.db");
    let mut server = None;
    let stats = collect_while(&section(port), &db, 1, Duration::from_millis(300), |_| {
        // Two failed attempts at least (0.5 s, then 1 s) before the bus exists.
        thread::sleep(Duration::from_millis(1800));
        server = Some(Server::start(&dir, port));
        let sinks = Sinks::start(&[spec(settings(port), 10)]).unwrap();
        sinks.send(&alert("e-1", "192.0.2.8"));
        sinks.shutdown(Duration::from_secs(5));
    });
    let rows = stored(&db);
    assert_eq!(rows.len(), 1, "{rows:?} ({stats:?})");
    assert_eq!((rows[0].1.as_str(), stats.stored), ("e-1", 1));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_collector_stopped_before_its_bus_came_ends_at_once_with_nothing() {
    let dir = temp_dir("collector-never");
    let started = Instant::now();
    let stats = collect_while(&section(free_port()), &dir.join("vigil.db"), 1, Duration::ZERO, |stop| {
        thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(stats.stored, 0);
    // Stopped within the retry's wait, not after a minute.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bus on a free port with one alert in its alert stream (which the sink creates), for the
/// collector to have something to store: its directory, port, server and the sink.
fn bus_with_an_alert(name: &str) -> (std::path::PathBuf, u16, Server, Sinks) {
    let dir = temp_dir(name);
    let port = free_port();
    let server = Server::start(&dir, port);
    let sinks = Sinks::start(&[spec(settings(port), 10)]).unwrap();
    sinks.send(&alert("h-1", "192.0.2.7"));
    (dir, port, server, sinks)
}

#[test]
fn heartbeats_of_the_fleet_export_become_health_rows_per_host() {
    // An agent's fleet export (it creates the heartbeat stream) and an alert through the sink
    // (which creates the alert stream).
    let (dir, port, _server, sinks) = bus_with_an_alert("collector-health");
    let fleet = crate::fleet::FleetExport::start(&crate::fleet::FleetSection {
        bus: NatsSettings { host: Some("web-1".into()), ..settings(port) },
        flows: false,
        heartbeat: Duration::from_millis(100),
        ..crate::fleet::tests::section(port)
    })
    .unwrap();
    for i in 0..5 {
        let health = crate::store::HealthRow {
            time_ms: 1_764_000_000_000 + i * 1000,
            packets: 100 * u64::try_from(i).unwrap(),
            model_sha256: "5a484c09".into(),
            model_phase: "site".into(),
            ..Default::default()
        };
        fleet.status(&serde_json::json!({ "model": "default" }), Some(&health));
        thread::sleep(Duration::from_millis(150));
    }
    let sent = fleet.stats();
    assert!(sent.heartbeats_sent >= 5, "{sent:?}");
    fleet.shutdown(Duration::from_secs(2));
    let db = dir.join("vigil.db");
    let stats = collect_until(&section(port), &db, 1, Duration::from_secs(1));
    assert!(stats.health >= 5, "{stats:?}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (hosts, last, rows): (i64, i64, i64) = conn
        .query_row("SELECT count(DISTINCT host), max(packets), count(*) FROM health WHERE host = 'web-1'", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    // Heartbeats repeat the latest row until it changes: one row per time.
    assert_eq!((hosts, last, rows), (1, 400, 5), "{stats:?}");
    sinks.shutdown(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flow_batches_of_the_fleet_export_become_minute_rows_once() {
    let (dir, port, _server, sinks) = bus_with_an_alert("collector-flows");
    // An agent's export of 1,050 conversations in batches of at most 100 (it creates the flow
    // stream).
    let fleet = crate::fleet::FleetExport::start(&crate::fleet::FleetSection {
        bus: NatsSettings { host: Some("web-1".into()), ..settings(port) },
        ..crate::fleet::tests::section(port)
    })
    .unwrap();
    let sent: Vec<_> = (0..1050).map(crate::fleet::tests::conversation).collect();
    for record in &sent {
        fleet.flow(record);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.stats().flows_exported < 1050 {
        assert!(Instant::now() < deadline, "{:?}", fleet.stats());
        thread::sleep(Duration::from_millis(20));
    }
    let batches = fleet.stats().batches_exported;
    fleet.shutdown(Duration::from_secs(2));
    let db = dir.join("vigil.db");
    let stats = collect_until(&section(port), &db, 1, Duration::from_millis(1500));
    assert!(batches >= 11, "batches of at most 100");
    assert_eq!((stats.flow_batches, stats.flows_skipped), (batches, 0), "{stats:?}");
    let totals = |db: &Path| -> (i64, i64, i64, i64) {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.query_row(
            "SELECT count(DISTINCT host), sum(flows), sum(packets), sum(bytes) FROM flow_minutes WHERE host = 'web-1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap()
    };
    let packets: u64 = sent.iter().map(crate::flows::biflow::BiflowRecord::packets).sum();
    let bytes: u64 = sent.iter().map(|r| r.initiator.bytes + r.responder.as_ref().map_or(0, |s| s.bytes)).sum();
    let (hosts, flows, stored_packets, stored_bytes) = totals(&db);
    assert_eq!(
        (hosts, stored_packets, stored_bytes),
        (1, i64::try_from(packets).unwrap(), i64::try_from(bytes).unwrap())
    );
    assert!(flows >= 1050, "every conversation counts in each minute it spans: {flows}");
    // The collector again: the consumer has acknowledged every batch, nothing is added.
    let again = collect_until(&section(port), &db, 1, Duration::from_millis(500));
    assert_eq!(again.flow_batches, 0, "{again:?}");
    assert_eq!(totals(&db), (hosts, flows, stored_packets, stored_bytes));
    // A batch delivered twice (its acknowledgement lost) is added once.
    let mut conn = crate::store::open_for_writing(&db).unwrap();
    let row = crate::store::FlowRow {
        minute: 29_400_000,
        source: "192.0.2.9".parse().unwrap(),
        destination: "198.51.100.1".parse().unwrap(),
        protocol: 17,
        port: 53,
        flows: 1,
        packets: 2,
        bytes: 150,
        anomalous: 0,
    };
    let rows = [row];
    let batch = [("web-2", "web-2/1-1", &rows[..])];
    assert_eq!(crate::store::insert_flow_batches(&mut conn, batch, 1_764_000_000_000).unwrap(), (1, 1));
    assert_eq!(crate::store::insert_flow_batches(&mut conn, batch, 1_764_000_000_000).unwrap(), (0, 0));
    let twice: i64 =
        conn.query_row("SELECT sum(bytes) FROM flow_minutes WHERE host = 'web-2'", [], |r| r.get(0)).unwrap();
    assert_eq!(twice, 150);
    sinks.shutdown(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}
