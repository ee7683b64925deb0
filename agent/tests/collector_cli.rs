//! `vigil collector` killed (SIGKILL) in the middle of its work, three times, and started
//! again: every alert of the stream ends up in the store once, none lost and none twice. The
//! collector acknowledges a batch only after its transaction committed, and the store's key
//! (host, `event.id`) makes a redelivered batch a no-op; at the end the durable consumer has
//! nothing pending or unacknowledged. Needs `nats-server` (Debian's package;
//! `cargo xtask setup` installs it); the test starts its own on a free loopback port.

mod common;

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{TempDir, vigil_bin};

const ALERTS: usize = 20_000;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alert(i: usize) -> String {
    serde_json::json!({
        "@timestamp": "2026-12-02T10:00:00.250Z",
        "message": format!("alert {i}"),
        "event": {"kind": "alert", "id": format!("k-{i}"), "action": "anomalous-flows", "severity": 73},
        "source": {"ip": "192.0.2.7"},
        "vigil": {"severity": "high", "model": {"sha256": "5a484c09", "phase": "site"}},
    })
    .to_string()
}

fn rows(db: &std::path::Path) -> (i64, i64) {
    let Ok(conn) = rusqlite::Connection::open(db) else { return (0, 0) };
    conn.query_row("SELECT count(*), count(DISTINCT event_id) FROM alerts", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap_or((0, 0))
}

fn collector(config: &std::path::Path) -> Killed {
    Killed(
        Command::new(vigil_bin())
            .args(["collector", "-c"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("vigil collector starts"),
    )
}

#[test]
fn a_collector_killed_mid_batch_loses_nothing_and_stores_nothing_twice() {
    let dir = TempDir::new("collector-kill");
    let server = common::NatsServer::start(&dir.path().join("nats"));
    let port = server.port;
    // The stream, filled as a fleet's agents would.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "VIGIL_ALERTS".into(),
                subjects: vec!["vigil.v1.alert.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        for chunk in (0..ALERTS).collect::<Vec<_>>().chunks(500) {
            let mut acks = Vec::new();
            for &i in chunk {
                let subject = format!("vigil.v1.alert.lab.host-{}", i % 3);
                acks.push(jetstream.publish(subject, alert(i).into()).await.unwrap());
            }
            for ack in acks {
                ack.await.unwrap();
            }
        }
    });

    let db = dir.path().join("fleet.db");
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\npath = \"{}\"\n[collector]\nbatch = 100\nack_wait = \"2s\"\n[collector.bus]\nurl = \"nats://127.0.0.1:{port}\"\n\
             allow_plaintext = true\n",
            db.display()
        ),
    )
    .unwrap();

    // Killed three times while it writes, at different points of the stream.
    for at in [2_000, 7_000, 12_000] {
        let mut running = collector(&config);
        let deadline = Instant::now() + Duration::from_mins(1);
        while rows(&db).0 < at {
            assert!(Instant::now() < deadline, "the collector stored only {:?} rows", rows(&db));
            assert!(running.0.try_wait().unwrap().is_none(), "the collector exited on its own");
            thread::sleep(Duration::from_millis(5));
        }
        running.0.kill().unwrap();
        running.0.wait().unwrap();
        let (stored, distinct) = rows(&db);
        assert_eq!(stored, distinct);
        assert!(stored < i64::try_from(ALERTS).unwrap(), "killed before the end ({stored} stored)");
    }
    // Then to the end.
    let running = collector(&config);
    let deadline = Instant::now() + Duration::from_mins(1);
    while rows(&db).0 < i64::try_from(ALERTS).unwrap() {
        assert!(Instant::now() < deadline, "the collector stored only {:?} rows", rows(&db));
        thread::sleep(Duration::from_millis(20));
    }
    // What a kill left delivered and not acknowledged comes again after `ack_wait` (2 s here):
    // once the durable consumer has nothing pending or unacknowledged, nothing more can come.
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let stream = async_nats::jetstream::new(client).get_stream("VIGIL_ALERTS").await.unwrap();
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            let info = stream.consumer_info("vigil-collector").await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the consumer still has work: {info:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    drop(running);
    let n = i64::try_from(ALERTS).unwrap();
    assert_eq!(rows(&db), (n, n), "every alert once");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let hosts: i64 = conn.query_row("SELECT count(DISTINCT host) FROM alerts", [], |r| r.get(0)).unwrap();
    assert_eq!(hosts, 3);
}
