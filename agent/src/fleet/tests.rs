//! The fleet export: the protobuf schema against `agent/proto/flows_v1.proto`, records
//! through the wire format, and the export against a real `nats-server -js` on loopback.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::thread;
use std::time::Instant;

use super::*;
use crate::alert::sink::nats::SpoolSettings;
use crate::alert::sink::nats::tests::{Server, free_port, settings};
use crate::alert::sink::testing::temp_dir;
use crate::features::flow::tests::{answer, record};
use crate::flows::biflow::BiflowRecord;
use prost::Message as _;

/// Conversations that differ from one another: `n` picks the ports, an answer every other one,
/// an IPv6 pair every third.
pub(crate) fn conversation(n: u32) -> BiflowRecord {
    let mut first = record(1, 2, 80, u64::from(n));
    first.src_port = 40_000 + u16::try_from(n % 20_000).unwrap();
    first.iat_max_ns = if n.is_multiple_of(5) { None } else { Some(u64::from(n)) };
    if n.is_multiple_of(3) {
        first.src_ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        first.dst_ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        first.ip_version = 6;
    }
    let back = answer(&first);
    BiflowRecord::pair(&first, n.is_multiple_of(2).then_some(&back))
}

#[test]
fn a_record_survives_the_wire_format() {
    for n in 0..12 {
        let r = conversation(n);
        let wire = proto::Conversation::from(&r).encode_to_vec();
        let back = BiflowRecord::try_from(proto::Conversation::decode(wire.as_slice()).unwrap()).unwrap();
        assert_eq!(back, r, "conversation {n}");
    }
    let mut bad = proto::Conversation::from(&conversation(1));
    bad.initiator_ip = vec![1, 2, 3];
    assert!(BiflowRecord::try_from(bad.clone()).unwrap_err().contains("3 bytes"));
    bad = proto::Conversation { initiator_port: 70_000, ..proto::Conversation::from(&conversation(1)) };
    assert!(BiflowRecord::try_from(bad).unwrap_err().contains("port"));
    bad = proto::Conversation { conn_state: "XX".into(), ..proto::Conversation::from(&conversation(1)) };
    assert!(BiflowRecord::try_from(bad).unwrap_err().contains("conn_state"));
}

/// Every conversation state and end reason, for the tests that go through all of them.
const ALL_STATES: [crate::flows::biflow::ConnState; 10] = {
    use crate::flows::biflow::ConnState::{OTH, REJ, RSTO, RSTR, S0, S1, S2, S3, SF, SH};
    [S0, S1, SF, REJ, S2, S3, RSTO, RSTR, SH, OTH]
};
const ALL_END_REASONS: [crate::flows::record::EndReason; 5] = {
    use crate::flows::record::EndReason::{Active, EndOfCapture, Idle, Open, Shutdown};
    [Idle, Active, Shutdown, EndOfCapture, Open]
};

#[test]
fn the_direct_encoder_writes_what_prost_writes() {
    let states = ALL_STATES;
    let ends = ALL_END_REASONS;
    let mut records: Vec<BiflowRecord> = (0..40).map(conversation).collect();
    for (i, r) in records.iter_mut().enumerate() {
        r.conn_state = states[i % states.len()];
        r.end_reason = ends[i % ends.len()];
    }
    // Zeros everywhere proto3 leaves a field out, and large values that take ten varint bytes.
    let mut empty = conversation(7);
    empty.initiator = crate::flows::biflow::Side {
        first_seen_ns: 0,
        last_seen_ns: 0,
        packets: 0,
        bytes: 0,
        len_min: 0,
        len_max: 0,
        len_sq_sum: 0,
        iat_min_ns: None,
        iat_max_ns: None,
        iat_sum_ns: 0,
        iat_sq_sum_us2: 0,
        tcp_flags: crate::flows::record::TcpFlagCounts::default(),
        ttl_min: 0,
        ttl_max: 0,
        fragment_first: false,
        fragment_later: false,
        malformed: 0,
        transport_truncated: false,
        network_unwalked: false,
    };
    empty.initiator_port = 0;
    empty.first_seen_ns = 0;
    records.push(empty);
    let mut big = conversation(8);
    big.initiator.bytes = u64::MAX;
    big.initiator.iat_min_ns = Some(0);
    big.initiator.fragment_later = true;
    big.initiator.tcp_flags.cwr = u32::MAX;
    records.push(big);
    for (site, host, boot, seq) in [("lab", "h1", 1_764_000_000_000_000_000, 0), ("", "", 0, u64::MAX)] {
        let prost_bytes = proto::FlowBatch {
            schema: proto::SCHEMA,
            site: site.into(),
            host: host.into(),
            boot,
            seq,
            flows: records.iter().map(proto::Conversation::from).collect(),
        }
        .encode_to_vec();
        let mut direct = Vec::new();
        proto::encode_batch(site, host, boot, seq, &records, &mut direct);
        assert_eq!(direct, prost_bytes, "site {site:?}");
        let back = proto::FlowBatch::decode(direct.as_slice()).unwrap();
        let decoded: Vec<BiflowRecord> = back.flows.into_iter().map(|c| c.try_into().unwrap()).collect();
        assert_eq!(decoded, records);
    }
}

#[test]
fn conn_state_and_end_reason_names_are_the_json_names() {
    for s in ALL_STATES {
        assert_eq!(serde_json::to_value(s).unwrap(), proto::conn_state_name(s), "{s:?}");
    }
    for e in ALL_END_REASONS {
        assert_eq!(serde_json::to_value(e).unwrap(), proto::end_reason_name(e), "{e:?}");
    }
}

/// A message's fields: number → (name, type).
type Fields = BTreeMap<u64, (String, String)>;

/// The fields of each message of the `.proto` file.
fn proto_messages() -> BTreeMap<String, Fields> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/flows_v1.proto")).unwrap();
    let mut messages = BTreeMap::new();
    let mut current: Option<(String, Fields)> = None;
    for line in text.lines().map(|l| l.split("//").next().unwrap().trim()).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix("message ") {
            current = Some((name.trim_end_matches(" {").trim().to_owned(), BTreeMap::new()));
        } else if line == "}" {
            let (name, fields) = current.take().expect("a message ends");
            messages.insert(name, fields);
        } else if let Some((_, fields)) = current.as_mut() {
            let words: Vec<&str> = line.trim_end_matches(';').split_whitespace().collect();
            let words: Vec<&str> = words.into_iter().filter(|w| *w != "optional" && *w != "repeated").collect();
            let [kind, name, "=", number] = words[..] else { panic!("unexpected field line {line:?}") };
            fields.insert(number.parse().unwrap(), (name.to_owned(), kind.to_owned()));
        }
    }
    messages
}

/// The wire type a `.proto` type is encoded with.
fn wire_type(kind: &str) -> u64 {
    match kind {
        "uint32" | "uint64" | "bool" => 0,
        _ => 2,
    }
}

/// Walks an encoded message: each field number seen and its wire type; checks them against
/// the `.proto` file's message `name`, recursing into nested messages.
fn check(messages: &BTreeMap<String, Fields>, name: &str, mut data: &[u8]) -> Vec<u64> {
    fn varint(data: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = data[0];
            *data = &data[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        value
    }
    let fields = &messages[name];
    let mut seen = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data);
        let (number, wire) = (key >> 3, key & 7);
        let (field, kind) = fields.get(&number).unwrap_or_else(|| panic!("{name} has no field {number} in the .proto"));
        assert_eq!(wire, wire_type(kind), "{name}.{field}: wire type");
        seen.push(number);
        if wire == 0 {
            varint(&mut data);
        } else {
            let len = usize::try_from(varint(&mut data)).unwrap();
            if messages.contains_key(kind.as_str()) {
                check(messages, kind, &data[..len]);
            }
            data = &data[len..];
        }
    }
    seen
}

#[test]
fn the_rust_messages_match_the_proto_file() {
    let messages = proto_messages();
    assert_eq!(messages.keys().collect::<Vec<_>>(), ["Conversation", "FlowBatch", "Side", "TcpFlags"]);
    // Every field set to a value that is not its default, so every field is on the wire.
    let flags = proto::TcpFlags { syn: 1, syn_ack: 2, fin: 3, rst: 4, psh: 5, ack: 6, urg: 7, ece: 8, cwr: 9 };
    let side = proto::Side {
        first_seen_ns: 1,
        last_seen_ns: 2,
        packets: 3,
        bytes: 4,
        len_min: 5,
        len_max: 6,
        len_sq_sum: 7,
        iat_min_ns: Some(8),
        iat_max_ns: Some(9),
        iat_sum_ns: 10,
        iat_sq_sum_us2: 11,
        tcp_flags: Some(flags),
        ttl_min: 13,
        ttl_max: 14,
        fragment_first: true,
        fragment_later: true,
        malformed: 17,
        transport_truncated: true,
        network_unwalked: true,
    };
    let conversation = proto::Conversation {
        record_version: 2,
        initiator_ip: vec![10, 0, 0, 1],
        responder_ip: vec![10, 0, 0, 2],
        initiator_port: 4,
        responder_port: 5,
        protocol: 6,
        first_seen_ns: 7,
        last_seen_ns: 8,
        conn_state: "SF".into(),
        initiator: Some(side.clone()),
        responder: Some(side),
        end_reason: "idle".into(),
    };
    let batch = proto::FlowBatch {
        schema: proto::SCHEMA,
        site: "s".into(),
        host: "h".into(),
        boot: 4,
        seq: 5,
        flows: vec![conversation.clone()],
    };
    for (name, wire) in [
        ("FlowBatch", batch.encode_to_vec()),
        ("Conversation", conversation.encode_to_vec()),
        ("Side", conversation.initiator.clone().unwrap().encode_to_vec()),
        ("TcpFlags", flags.encode_to_vec()),
    ] {
        let seen = check(&messages, name, &wire);
        let declared: Vec<u64> = messages[name].keys().copied().collect();
        assert_eq!(seen, declared, "{name}: every field of the .proto, in order, and no other");
    }
}

/// An export to the loopback server on `port`: flows on, heartbeats every 200 ms.
pub(crate) fn section(port: u16) -> FleetSection {
    FleetSection {
        bus: settings(port),
        flows: true,
        flow_stream: "VIGIL_FLOWS".into(),
        health_stream: "VIGIL_HEALTH".into(),
        batch: 100,
        flush: Duration::from_millis(100),
        max_in_flight: 4,
        queue: 100_000,
        heartbeat: Duration::from_millis(200),
        blocking: None,
        models: None,
    }
}

/// The flow stream's batches, in order: subject, message id and batch.
pub(crate) fn flow_batches(port: u16) -> Vec<(String, String, proto::FlowBatch)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream("VIGIL_FLOWS").await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.unwrap();
            let id = m.headers.get(async_nats::header::NATS_MESSAGE_ID).map(ToString::to_string).unwrap_or_default();
            out.push((m.subject.to_string(), id, proto::FlowBatch::decode(m.payload.as_ref()).unwrap()));
        }
        out
    })
}

fn wait(export: &FleetExport, what: &str, done: impl Fn(&FleetStats) -> bool) -> FleetStats {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = export.stats();
        if done(&stats) {
            return stats;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}: {stats:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn flows_go_out_in_batches_and_heartbeats_carry_the_status() {
    let dir = temp_dir("fleet-export");
    let port = free_port();
    let _server = Server::start(&dir, port);
    // A subscriber for the heartbeats, before the export starts.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut beats = runtime.block_on(async {
        let client = async_nats::connect(format!("nats://127.0.0.1:{port}")).await.unwrap();
        let sub = client.subscribe("vigil.v1.health.>").await.unwrap();
        client.flush().await.unwrap();
        (client, sub)
    });
    let export = FleetExport::start(&section(port)).unwrap();
    assert_eq!(export.name(), format!("fleet:nats://127.0.0.1:{port}"));
    let health = crate::store::HealthRow { time_ms: 1_764_000_000_000, packets: 1234, ..Default::default() };
    export.status(&serde_json::json!({ "model": "default", "flows_tracked": 12 }), Some(&health));
    let sent: Vec<BiflowRecord> = (0..1050).map(conversation).collect();
    for r in &sent {
        export.flow(r);
    }
    let stats = wait(&export, "1050 flows", |s| s.flows_exported >= 1050);
    assert_eq!((stats.flows_dropped, stats.flows_failed), (0, 0), "{stats:?}");
    let batches = flow_batches(port);
    // At most 100 a batch; a flush tick may send a batch before it is full.
    assert!(batches.len() >= 11, "{} batches", batches.len());
    assert_eq!(stats.batches_exported, batches.len() as u64);
    let mut received = Vec::new();
    for (n, (subject, id, batch)) in batches.into_iter().enumerate() {
        assert_eq!(subject, "vigil.v1.flows.lab.sensor-1");
        assert_eq!((batch.schema, batch.site.as_str(), batch.host.as_str()), (1, "lab", "sensor-1"));
        assert_eq!(id, format!("sensor-1/{}-{n}", batch.boot));
        assert!(batch.flows.len() <= 100);
        received.extend(batch.flows.into_iter().map(|c| BiflowRecord::try_from(c).unwrap()));
    }
    assert_eq!(received, sent, "every flow, once, in order");

    let beat = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), beats.1.next()).await.expect("a heartbeat").unwrap()
    });
    assert_eq!(beat.subject.as_str(), "vigil.v1.health.lab.sensor-1");
    let doc: serde_json::Value = serde_json::from_slice(&beat.payload).unwrap();
    assert_eq!((doc["host"].as_str(), doc["site"].as_str()), (Some("sensor-1"), Some("lab")));
    assert_eq!(doc["status"]["model"], "default");
    assert_eq!(doc["status"]["flows_tracked"], 12);
    assert_eq!(doc["health"]["packets"], 1234);
    assert!(export.stats().heartbeats_sent >= 1);
    export.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn flows_spool_while_the_bus_is_down_and_are_replayed_once_each() {
    let dir = temp_dir("fleet-outage");
    let port = free_port();
    let server = Server::start(&dir.join("server"), port);
    let mut s = section(port);
    s.bus.timeout = Duration::from_secs(1);
    s.bus.spool = Some(Box::new(SpoolSettings {
        dir: dir.join("spool"),
        max_size_mb: 4,
        max_age: Duration::from_hours(1),
        replay_rate: 1000,
        max_in_flight: 8,
    }));
    let export = FleetExport::start(&s).unwrap();
    let sent: Vec<BiflowRecord> = (0..600).map(conversation).collect();
    for r in &sent[..200] {
        export.flow(r);
    }
    wait(&export, "the first 200", |s| s.flows_exported >= 200);
    drop(server);
    for r in &sent[200..] {
        export.flow(r);
    }
    let stats = wait(&export, "spooling", |s| s.spool.is_some_and(|sp| sp.flows.spooled >= 4));
    assert_eq!(stats.flows_failed, 0, "{stats:?}");
    thread::sleep(Duration::from_secs(2));
    let _server = Server::start(&dir.join("server"), port);
    let stats = wait(&export, "the replay", |s| {
        s.spool.is_some_and(|sp| sp.flows.pending == 0 && sp.flows.replayed == sp.flows.spooled)
    });
    let spool = stats.spool.unwrap();
    assert_eq!((spool.flows.dropped, spool.flows.expired, stats.flows_failed), (0, 0, 0), "{stats:?}");
    let batches = flow_batches(port);
    let mut ids: Vec<&str> = batches.iter().map(|(_, id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), batches.len(), "no batch stored twice");
    let mut received: Vec<BiflowRecord> =
        batches.into_iter().flat_map(|(_, _, b)| b.flows).map(|c| BiflowRecord::try_from(c).unwrap()).collect();
    received.sort_by_key(|r| (r.first_seen_ns, r.initiator_port));
    let mut expected = sent;
    expected.sort_by_key(|r| (r.first_seen_ns, r.initiator_port));
    assert_eq!(received, expected, "every flow once");
    export.shutdown(Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_full_queue_drops_and_counts_instead_of_blocking() {
    // No server: the export waits for its connection timeout while the queue fills.
    let port = free_port();
    let s = FleetSection { queue: 10, batch: 1000, ..section(port) };
    let export = FleetExport::start(&s).unwrap();
    let started = Instant::now();
    for n in 0..1000 {
        export.flow(&conversation(n));
    }
    assert!(started.elapsed() < Duration::from_secs(1), "flow() never waits: {:?}", started.elapsed());
    // What the queue took goes out in the next flush, finds no bus and no spool, and counts as
    // failed: every conversation is accounted for.
    let stats = wait(&export, "every flow counted", |s| s.flows_dropped + s.flows_failed == 1000);
    assert!(stats.flows_dropped >= 500, "a queue of 10 cannot take most of a burst of 1000: {stats:?}");
    export.shutdown(Duration::from_secs(1));
}

#[test]
fn settings_are_checked_and_name_the_key() {
    let good = section(4222);
    assert!(good.validate().is_ok());
    for (bad, key) in [
        (FleetSection { batch: 0, ..good.clone() }, "fleet.batch"),
        (FleetSection { flush: Duration::ZERO, ..good.clone() }, "fleet.flush"),
        (FleetSection { max_in_flight: 0, ..good.clone() }, "fleet.max_in_flight"),
        (FleetSection { queue: 0, ..good.clone() }, "fleet.queue"),
        (FleetSection { heartbeat: Duration::from_millis(1), ..good.clone() }, "fleet.heartbeat"),
        (FleetSection { flow_stream: "a.b".into(), ..good.clone() }, "fleet.flow_stream"),
        (
            FleetSection { bus: NatsSettings { allow_plaintext: false, ..good.bus.clone() }, ..good.clone() },
            "fleet.bus",
        ),
    ] {
        assert_eq!(bad.validate().unwrap_err().0, key);
    }
    let parsed: FleetSection = toml::from_str("[bus]\nurl = \"tls://bus:4222\"\n").unwrap();
    assert_eq!((parsed.batch, parsed.max_in_flight, parsed.flows), (1000, 8, true));
    assert_eq!(parsed.heartbeat, Duration::from_secs(10));
    let typo = toml::from_str::<FleetSection>("batches = 3\n[bus]\nurl = \"tls://bus:4222\"\n").unwrap_err();
    assert!(typo.to_string().contains("unknown field `batches`"), "{typo}");
}
