//! Fleet-wide blocking end to end: two protected hosts of the lab LAN (the victim and the
//! bystander) each run `vigil run` with `[fleet.blocking]`; the bus (`nats-server -js`) and
//! `vigil collector` with its policy run on the switch. A SYN flood against host 1 gets the
//! attacker blocked there; host 2 installs the same rule from the fleet blocklist within a
//! second of host 1's decision and drops the attacker's packets; the rule lapses on both.

use std::{
    net::UdpSocket,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use vigil_tests::{
    agent::{TempDir, vigil_bin},
    lab::{ATTACKER, BYSTANDER, Lab, now_ms, timestamp_ms},
    require_root,
};

/// The switch's address on the LAN: the bus and the collector live there.
const BUS: &str = "10.77.0.1";
const PORT: u16 = 4222;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fleet_config(host: &str) -> String {
    format!(
        "[block]\nmode = \"enforce\"\nttl = \"8s\"\nallowlist = [\"{BUS}/32\"]\n\n\
         [fleet]\nflows = false\n\n[fleet.bus]\nurl = \"nats://{BUS}:{PORT}\"\nallow_plaintext = true\n\
         create_stream = true\nsite = \"lab\"\nhost = \"{host}\"\n\n\
         [fleet.blocking]\npropose = true\nfollow = \"enforce\"\n"
    )
}

/// The wall-clock time (Unix ms) at the start of a log line of the agent (RFC 3339, UTC).
fn log_time_ms(line: &str) -> i64 {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    timestamp_ms(&serde_json::json!({ "@timestamp": stamp }))
}

#[test]
fn a_flood_against_one_host_gets_the_attacker_dropped_by_another_within_a_second() {
    require_root();
    let mut lab = Lab::new("fleet");
    lab.switch().ip(&["addr", "add", &format!("{BUS}/24"), "dev", "br0"]);
    let dir = TempDir::new("fleet-live");
    let store = dir.path().join("nats");
    lab.serve(
        |l| l.switch(),
        "nats-server",
        &["-js", "-a", BUS, "-p", &PORT.to_string(), "-sd", store.to_str().expect("utf-8")],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.switch().run(|| std::net::TcpStream::connect((BUS, PORT)).is_ok()) {
        assert!(Instant::now() < deadline, "nats-server did not start on the switch");
        thread::sleep(Duration::from_millis(50));
    }
    // The collector with the fleet's rails; the lab's hosts are fleet hosts.
    let collector_config = dir.path().join("collector.toml");
    std::fs::write(
        &collector_config,
        format!(
            "[collector]\n\n[collector.bus]\nurl = \"nats://{BUS}:{PORT}\"\nallow_plaintext = true\ncreate_stream = true\n\n\
             [collector.policy]\nfleet_hosts = [\"10.77.0.2/32\", \"{BYSTANDER}/32\"]\nmax_ttl = \"1h\"\n"
        ),
    )
    .expect("collector config");
    let mut cmd = lab.switch().command_net_only(vigil_bin().to_str().expect("utf-8"));
    cmd.args(["collector", "-c"]).arg(&collector_config).arg("--db").arg(dir.path().join("fleet.db"));
    let collector =
        Killed(cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("collector"));

    let host1 = lab.agent(&fleet_config("h1"));
    let mut host2 = lab.bystander_agent(&fleet_config("h2"));
    host2.agent.wait_for("following the fleet blocklist", Duration::from_secs(15));

    // The flood against host 1 (the victim): host 1 blocks the attacker and proposes it.
    let mut flood = lab.syn_flood(4000, 1000, None);
    let block = lab.wait_event("host 1 blocking the attacker", Duration::from_secs(15), |e| {
        e["event"]["action"] == "block" && e["source"]["ip"] == ATTACKER
    });
    let decided = timestamp_ms(&block);
    // Host 2 installs the fleet rule.
    host2.agent.wait_for(&format!("fleet blocklist: rule installed prefix={ATTACKER}/32"), Duration::from_secs(10));
    let installed_line = host2
        .agent
        .log()
        .lines()
        .find(|l| l.contains(&format!("rule installed prefix={ATTACKER}/32")))
        .map(str::to_owned)
        .expect("the install line");
    let installed = log_time_ms(&installed_line);
    let latency = installed - decided;
    eprintln!("host 2 installed the rule {latency} ms after host 1's decision");
    assert!(latency <= 1000, "host 2 installed the rule {latency} ms after host 1 decided");
    flood.wait().expect("hping3");

    // Host 2's kernel drops the attacker's packets now; the bystander's own traffic to the
    // victim still goes.
    lab.attacker.run(|| {
        let s = UdpSocket::bind((ATTACKER, 0)).expect("bind");
        for _ in 0..50 {
            let _ = s.send_to(b"fleet", (BYSTANDER, 9000));
            thread::sleep(Duration::from_millis(2));
        }
    });
    thread::sleep(Duration::from_millis(300));
    let status = host2.status(&lab);
    let rule =
        status["rules"].as_array().and_then(|r| r.iter().find(|r| r["prefix"] == format!("{ATTACKER}/32")).cloned());
    let rule = rule.unwrap_or_else(|| panic!("no rule for the attacker on host 2: {status:#}"));
    assert_eq!(rule["origin"], "fleet", "{rule:#}");
    assert!(rule["drops"].as_u64().unwrap_or(0) >= 50, "host 2 dropped too little: {rule:#}");
    assert!(status["counters"]["blocklist_drops"].as_u64().unwrap_or(0) >= 50, "{status:#}");
    // Host 2 reports the rule as a block by the fleet blocklist.
    let deadline = Instant::now() + Duration::from_secs(5);
    let fleet_block = loop {
        if let Some(e) =
            host2.events().into_iter().find(|e| e["event"]["action"] == "block" && e["source"]["ip"] == ATTACKER)
        {
            break e;
        }
        assert!(Instant::now() < deadline, "host 2 reported no block: {:#?}", host2.events());
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(fleet_block["event"]["reason"], "fleet blocklist", "{fleet_block:#}");

    // The rule lapses on both hosts (TTL 8 s from host 1's decision).
    let unblocked = |events: Vec<Value>| {
        events.into_iter().any(|e| e["event"]["action"] == "unblock" && e["source"]["ip"] == ATTACKER)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(unblocked(lab.events()) && unblocked(host2.events())) {
        assert!(
            Instant::now() < deadline,
            "the rule did not lapse on both hosts: host 1 {:#?}\nhost 2 {:#?}",
            lab.events(),
            host2.events()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let lapsed_by = now_ms() - decided;
    assert!(lapsed_by >= 7000, "the rule went after {lapsed_by} ms, before its TTL");
    let status = host2.status(&lab);
    assert!(
        status["rules"]
            .as_array()
            .is_none_or(|r| r.iter().all(|r| r["prefix"] != format!("{ATTACKER}/32") || r["active"] == false)),
        "{status:#}"
    );
    drop(host1);
    drop(host2);
    drop(collector);
}

/// The number of alerts in the store at `db`, 0 while it cannot be read yet.
fn stored_alerts(db: &std::path::Path) -> (i64, i64) {
    let Ok(conn) = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return (0, 0);
    };
    conn.query_row("SELECT count(*), count(DISTINCT host || '/' || event_id) FROM alerts", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap_or((0, 0))
}

/// `vigil collector` killed (SIGKILL) three times while it writes 20,000 alerts from three
/// hosts: after each restart it takes up where the durable consumer stands, and at the end
/// the store holds every alert exactly once, whatever point of a batch (fetch, transaction,
/// commit, acknowledgement) each kill hit.
#[test]
fn the_collector_killed_mid_batch_loses_nothing_and_stores_nothing_twice() {
    const N: i64 = 20_000;
    require_root(); // The suite's binary; the test itself needs no privilege.
    let dir = TempDir::new("collector-kill");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let _server = Killed(
        std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (cargo xtask setup installs it)"),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // The alerts wait in the stream before the collector starts.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: "VIGIL_ALERTS".into(),
                subjects: vec!["vigil.v1.alert.>".into()],
                ..Default::default()
            })
            .await
            .expect("stream");
        for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
            let mut acks = Vec::new();
            for &i in chunk {
                let doc = serde_json::json!({
                    "@timestamp": "2026-12-03T10:00:00.000Z",
                    "message": format!("alert {i}"),
                    "event": {"kind": "alert", "id": format!("kill-{i}"), "action": "anomalous-flows", "severity": 47},
                    "source": {"ip": "192.0.2.7"},
                    "vigil": {"severity": "medium", "score": {"combined": 5.0}, "model": {"sha256": "00", "phase": "site"}},
                });
                let subject = format!("vigil.v1.alert.lab.host-{}", i % 3);
                acks.push(jetstream.publish(subject, doc.to_string().into()).await.expect("publish"));
            }
            for ack in acks {
                ack.await.expect("acknowledged");
            }
        }
    });
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[collector]\nbatch = 500\nack_wait = \"2s\"\n\n[collector.bus]\nurl = \"nats://127.0.0.1:{port}\"\nallow_plaintext = true\n"
        ),
    )
    .expect("collector config");
    let db = dir.path().join("fleet.db");
    let start = || {
        let mut cmd = std::process::Command::new(vigil_bin());
        cmd.args(["collector", "-c"]).arg(&config).arg("--db").arg(&db);
        Killed(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("vigil collector"))
    };
    let wait_stored = |at_least: i64| {
        let deadline = Instant::now() + Duration::from_mins(2);
        while stored_alerts(&db).0 < at_least {
            assert!(Instant::now() < deadline, "the collector stored {:?} of {at_least}", stored_alerts(&db));
            thread::sleep(Duration::from_millis(5));
        }
    };
    for kill_at in [N / 4, N / 2, 3 * N / 4] {
        let started = Instant::now();
        let mut collector = start();
        wait_stored(kill_at);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(collector.0.id()).expect("pid")),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        let _ = collector.0.wait();
        let (rows, _) = stored_alerts(&db);
        assert!(rows < N, "the collector finished ({rows} rows) before it was killed: the test proves nothing");
        eprintln!("collector killed at {rows} rows, {:?} after its start", started.elapsed());
    }
    let _collector = start();
    wait_stored(N);
    // What a kill left delivered and not acknowledged comes again after the consumer's
    // acknowledgement wait (`ack_wait`, 2 s here): the test waits until the consumer has nothing pending or
    // unacknowledged, so nothing more can come, and then counts.
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.expect("connect");
        let jetstream = async_nats::jetstream::new(client);
        let stream = jetstream.get_stream("VIGIL_ALERTS").await.expect("stream");
        let deadline = Instant::now() + Duration::from_mins(2);
        loop {
            let info = stream.consumer_info("vigil-collector").await.expect("consumer info");
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the consumer still has work: {info:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    assert_eq!(stored_alerts(&db), (N, N), "every alert once");
}
