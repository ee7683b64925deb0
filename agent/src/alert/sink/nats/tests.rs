//! The NATS sink against a real `JetStream` server (`nats-server -js`, Debian's package, which
//! `cargo xtask setup` installs), started by each test on a free loopback port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

use super::super::testing::{spec, temp_dir, wait_for};
use super::super::{Severity, Sinks};
use super::*;

/// A `nats-server` with `JetStream` on loopback, its store in `dir`; killed on drop.
pub(crate) struct Server {
    child: Child,
}

impl Server {
    pub(crate) fn start(dir: &Path, port: u16) -> Server {
        let mut command = Command::new("nats-server");
        command.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"]).arg(dir);
        Server::spawn(command, port)
    }

    /// A server from a configuration file (a cluster node), listening on `port`.
    pub(crate) fn start_with_config(config: &Path, port: u16) -> Server {
        let mut command = Command::new("nats-server");
        command.arg("-c").arg(config);
        Server::spawn(command, port)
    }

    fn spawn(mut command: Command, port: u16) -> Server {
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian's nats-server; cargo xtask setup installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen on {port}");
            thread::sleep(Duration::from_millis(20));
        }
        Server { child }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub(crate) fn settings(port: u16) -> NatsSettings {
    NatsSettings {
        url: format!("nats://127.0.0.1:{port}"),
        site: "lab".into(),
        host: Some("sensor-1".into()),
        stream: "VIGIL_ALERTS".into(),
        create_stream: true,
        credentials_file: None,
        nkey_seed_file: None,
        user: None,
        password_file: None,
        ca_file: None,
        allow_plaintext: true,
        timeout: Duration::from_secs(2),
        max_retries: 1,
        backoff: Duration::from_millis(10),
        spool: None,
    }
}

fn alert(id: &str) -> Event {
    Event {
        json: format!(r#"{{"event":{{"id":"{id}","kind":"alert"}},"message":"alert {id}"}}"#),
        severity: Severity::High,
        timestamp_ns: 0,
    }
}

/// The stream's messages, in order: subject, `Nats-Msg-Id`, payload.
fn stream_messages(port: u16) -> Vec<(String, String, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream("VIGIL_ALERTS").await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(ToString::to_string).unwrap_or_default();
            out.push((m.subject.to_string(), id, String::from_utf8(m.payload.to_vec()).unwrap()));
        }
        out
    })
}

#[test]
fn alerts_reach_the_stream_once_each_and_the_sink_rides_out_a_server_restart() {
    let dir = temp_dir("nats-restart");
    let port = free_port();
    let server = Server::start(&dir, port);
    let sinks = Sinks::start(&[spec(settings(port), 100)]).unwrap();
    assert_eq!(sinks.stats()[0].name, format!("nats:nats://127.0.0.1:{port}"));
    for n in 0..20 {
        sinks.send(&alert(&format!("e-{n}")));
    }
    // A repeat of a delivered alert (as a retry after a lost acknowledgement would be): the
    // stream's duplicate window keeps one.
    sinks.send(&alert("e-3"));
    let stats = wait_for(&sinks, |s| s.delivered + s.failed >= 21);
    assert_eq!((stats.delivered, stats.failed, stats.dropped), (21, 0, 0));
    let messages = stream_messages(port);
    assert_eq!(messages.len(), 20, "one message per alert: {messages:?}");
    for (n, (subject, id, payload)) in messages.iter().enumerate() {
        assert_eq!(subject, "vigil.v1.alert.lab.sensor-1");
        assert_eq!(id, &format!("sensor-1/e-{n}"));
        assert_eq!(payload, &alert(&format!("e-{n}")).json);
    }

    // The bus goes away: the alert fails after its retry, counted, and the sink goes on.
    drop(server);
    sinks.send(&alert("while-down"));
    let stats = wait_for(&sinks, |s| s.delivered + s.failed >= 22);
    assert_eq!((stats.delivered, stats.failed), (21, 1));
    // It comes back (same store): the next alert is delivered without a restart of the agent.
    let _server = Server::start(&dir, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        sinks.send(&alert(&format!("after-{n}")));
        let stats = wait_for(&sinks, |s| s.delivered + s.failed >= 23 + n);
        if stats.delivered == 22 {
            break;
        }
        assert!(Instant::now() < deadline, "no delivery after the server came back: {stats:?}");
        n += 1;
    }
    // The stream kept what it had and took the new alert. An alert counted as failed may still
    // have reached it (the client had it buffered when the server came back: at-least-once), but
    // never twice.
    let ids: Vec<String> = stream_messages(port).into_iter().map(|m| m.1).collect();
    for id in (0..20).map(|n| format!("e-{n}")).chain([format!("after-{n}")]) {
        assert_eq!(ids.iter().filter(|i| **i == format!("sensor-1/{id}")).count(), 1, "{id} in {ids:?}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a message stored twice: {ids:?}");
    sinks.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

fn spooled(port: u16, dir: &Path, replay_rate: u32) -> NatsSettings {
    NatsSettings {
        timeout: Duration::from_secs(1),
        spool: Some(Box::new(SpoolSettings {
            dir: dir.to_owned(),
            max_size_mb: 1,
            max_age: Duration::from_hours(1),
            replay_rate,
            max_in_flight: 8,
        })),
        ..settings(port)
    }
}

/// The ids in the stream, checked to be there once each.
fn unique_ids(port: u16) -> Vec<String> {
    let ids: Vec<String> = stream_messages(port).into_iter().map(|m| m.1).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a message stored twice: {ids:?}");
    ids
}

#[test]
fn the_bus_down_for_30_s_loses_nothing_the_spool_replays_at_its_rate() {
    let dir = temp_dir("nats-outage");
    let port = free_port();
    let server = Server::start(&dir.join("server"), port);
    let sinks = Sinks::start(&[spec(spooled(port, &dir.join("spool"), 20), 1000)]).unwrap();
    for n in 0..10 {
        sinks.send(&alert(&format!("before-{n}")));
    }
    let stats = wait_for(&sinks, |s| s.delivered >= 10);
    assert_eq!(stats.spool.unwrap().alerts.spooled, 0, "a bus that answers gets the alerts directly");

    // The whole bus is down for 30 s while alerts keep coming.
    drop(server);
    let down = Instant::now();
    let mut sent = 0;
    while down.elapsed() < Duration::from_secs(30) {
        sinks.send(&alert(&format!("during-{sent}")));
        sent += 1;
        thread::sleep(Duration::from_millis(600));
    }
    let stats = sinks.stats().remove(0);
    let spool = stats.spool.unwrap();
    assert_eq!((stats.delivered, stats.failed, stats.dropped), (10, 0, 0), "{stats:?}");
    assert_eq!((spool.alerts.spooled, spool.alerts.pending), (sent, sent), "{stats:?}");
    assert!(spool.bytes > 0);

    // It comes back: the spool replays, at most 20 a second, and nothing is lost or doubled.
    let _server = Server::start(&dir.join("server"), port);
    let back = Instant::now();
    let deadline = back + Duration::from_mins(1);
    let stats = loop {
        let stats = sinks.stats().remove(0);
        if stats.spool.unwrap().alerts.pending == 0 {
            break stats;
        }
        assert!(Instant::now() < deadline, "the spool was not replayed: {stats:?}");
        thread::sleep(Duration::from_millis(20));
    };
    let replay_took = back.elapsed();
    let spool = stats.spool.unwrap();
    assert_eq!((spool.alerts.replayed, spool.alerts.dropped, spool.alerts.expired), (sent, 0, 0), "{stats:?}");
    assert_eq!((stats.delivered, stats.failed), (10 + sent, 0));
    assert_eq!(spool.bytes, 0);
    // A budget of at most one second's worth (20) builds up while the bus is down; the rest
    // goes at 20 a second.
    let floor = Duration::from_millis((sent - 20) * 1000 / 20 * 9 / 10);
    assert!(replay_took >= floor, "{sent} replayed in {replay_took:?}, faster than 20 a second");
    let ids = unique_ids(port);
    let expected: Vec<String> = (0..10)
        .map(|n| format!("sensor-1/before-{n}"))
        .chain((0..sent).map(|n| format!("sensor-1/during-{n}")))
        .collect();
    assert_eq!(ids, expected, "every alert once, in order");
    // New alerts go straight to the bus again.
    sinks.send(&alert("after"));
    let stats = wait_for(&sinks, |s| s.delivered > 10 + sent);
    assert_eq!(stats.spool.unwrap().alerts.spooled, sent);
    sinks.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_was_spooled_is_replayed_by_the_next_run() {
    let dir = temp_dir("nats-next-run");
    let port = free_port();
    // No server at all: the first alert waits for the connection timeout, the rest spool.
    let sinks = Sinks::start(&[spec(spooled(port, &dir.join("spool"), 500), 100)]).unwrap();
    for n in 0..5 {
        sinks.send(&alert(&format!("a-{n}")));
    }
    let stats = wait_for(&sinks, |s| s.spool.is_some_and(|sp| sp.alerts.spooled == 5));
    assert_eq!((stats.delivered, stats.failed), (0, 0));
    let second = Sinks::start(&[spec(spooled(port, &dir.join("spool"), 500), 100)]).err().expect("one sink per spool");
    assert!(second.to_string().contains("in use"), "{second}");
    sinks.shutdown(Duration::from_secs(5));

    let _server = Server::start(&dir.join("server"), port);
    let sinks = Sinks::start(&[spec(spooled(port, &dir.join("spool"), 500), 100)]).unwrap();
    assert_eq!(sinks.stats()[0].spool.unwrap().alerts.pending, 5, "the spool outlives the agent");
    let stats = wait_for(&sinks, |s| s.delivered >= 5);
    assert_eq!(stats.spool.unwrap().alerts.replayed, 5);
    assert_eq!(unique_ids(port), (0..5).map(|n| format!("sensor-1/a-{n}")).collect::<Vec<_>>());
    sinks.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_bus_fails_deliveries_but_not_the_start() {
    let port = free_port();
    let sinks = Sinks::start(&[spec(NatsSettings { max_retries: 0, ..settings(port) }, 10)]).unwrap();
    sinks.send(&alert("a"));
    sinks.send(&alert("b"));
    let stats = wait_for(&sinks, |s| s.failed >= 2);
    assert_eq!((stats.delivered, stats.failed), (0, 2));
    sinks.shutdown(Duration::from_secs(5));
}

#[test]
fn settings_are_checked_before_anything_connects() {
    let base = settings(4222);
    assert!(validate(&base).is_ok());
    let plain = validate(&NatsSettings { allow_plaintext: false, ..base.clone() }).unwrap_err();
    assert!(plain.contains("allow_plaintext"), "{plain}");
    assert!(validate(&NatsSettings { url: "tls://bus.example:4222,tls://bus2.example:4222".into(), ..base.clone() }).is_ok());
    assert!(validate(&NatsSettings { url: "http://bus:4222".into(), ..base.clone() }).is_err());
    let site = validate(&NatsSettings { site: "a.b".into(), ..base.clone() }).unwrap_err();
    assert!(site.contains("subject token"), "{site}");
    assert!(validate(&NatsSettings { host: Some("h*".into()), ..base.clone() }).is_err());
    let two = NatsSettings {
        credentials_file: Some("/etc/vigil/nats.creds".into()),
        nkey_seed_file: Some("/etc/vigil/nats.nk".into()),
        ..base.clone()
    };
    assert!(validate(&two).unwrap_err().contains("choose one"));
    assert!(validate(&NatsSettings { user: Some("u".into()), ..base.clone() }).unwrap_err().contains("go together"));
    assert_eq!(redact("tls://u:p@a:4222, tls://b:4222"), "tls://***@a:4222,tls://b:4222");
    assert!(is_token(&host_token()), "{}", host_token());
}

#[test]
fn a_secret_file_others_can_read_is_refused_at_open() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = temp_dir("nats-secret");
    let password = dir.join("nats.password");
    std::fs::write(&password, "hunter2-but-longer\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let s = NatsSettings { user: Some("sensor-1".into()), password_file: Some(password.clone()), ..settings(4222) };
    let Err(e) = NatsSink::open(&s) else { panic!("a world-readable password file was accepted") };
    assert!(e.to_string().contains("password_file") && e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    let sink = NatsSink::open(&s).unwrap();
    assert_eq!(sink.options.user, Some(("sensor-1".to_owned(), "hunter2-but-longer".to_owned())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn message_ids_come_from_the_event_or_a_sequence() {
    let seq = AtomicU64::new(7);
    assert_eq!(message_id("h", &alert("abc-1").json, 99, &seq), "h/abc-1");
    assert_eq!(message_id("h", r#"{"n":1}"#, 99, &seq), "h/99-7");
    assert_eq!(message_id("h", "not json", 99, &seq), "h/99-8");
}

#[test]
fn a_toml_entry_gets_its_defaults_refuses_typos_and_round_trips() {
    use super::super::{SinkConfig, SinkSpec};
    let entry: SinkSpec = toml::from_str("type = \"nats\"\nurl = \"tls://bus:4222\"\nsite = \"paris\"\n").unwrap();
    let SinkConfig::Nats(s) = &entry.kind else { panic!("{entry:?}") };
    assert_eq!((s.stream.as_str(), s.create_stream, s.allow_plaintext), ("VIGIL_ALERTS", false, false));
    assert_eq!((s.timeout, s.max_retries, s.host.as_deref()), (Duration::from_secs(5), 5, None));
    assert_eq!(toml::from_str::<SinkSpec>(&toml::to_string(&entry).unwrap()).unwrap(), entry);
    let error = toml::from_str::<SinkSpec>("type = \"nats\"\nurl = \"tls://bus:4222\"\nsubject = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("unknown field `subject`"), "{error}");
}

#[test]
fn a_spool_table_gets_its_defaults_and_is_checked() {
    use super::super::{SinkConfig, SinkSpec};
    let text = "type = \"nats\"\nurl = \"tls://bus:4222\"\n[spool]\ndir = \"/var/lib/vigil/spool/nats\"\n";
    let entry: SinkSpec = toml::from_str(text).unwrap();
    let SinkConfig::Nats(s) = &entry.kind else { panic!("{entry:?}") };
    let spool = s.spool.clone().unwrap();
    assert_eq!(
        *spool,
        SpoolSettings {
            dir: "/var/lib/vigil/spool/nats".into(),
            max_size_mb: 256,
            max_age: Duration::from_hours(7 * 24),
            replay_rate: 500,
            max_in_flight: 64,
        }
    );
    assert_eq!(toml::from_str::<SinkSpec>(&toml::to_string(&entry).unwrap()).unwrap(), entry);
    let typo = toml::from_str::<SinkSpec>(&format!("{text}max_size = 3\n")).unwrap_err().to_string();
    assert!(typo.contains("unknown field `max_size`"), "{typo}");
    for (bad, key) in [
        (SpoolSettings { dir: PathBuf::new(), ..(*spool).clone() }, "spool.dir"),
        (SpoolSettings { max_size_mb: 0, ..(*spool).clone() }, "spool.max_size_mb"),
        (SpoolSettings { max_age: Duration::ZERO, ..(*spool).clone() }, "spool.max_age"),
        (SpoolSettings { replay_rate: 0, ..(*spool).clone() }, "spool.replay_rate"),
        (SpoolSettings { max_in_flight: 0, ..(*spool).clone() }, "spool.max_in_flight"),
    ] {
        let error = validate(&NatsSettings { spool: Some(Box::new(bad)), ..s.clone() }).unwrap_err();
        assert!(error.contains(key), "{error} should name {key}");
    }
}
