//! The kernel blocklist on live traffic: a rule drops a source's packets, the counters show
//! it, and when the rule's TTL passes the same traffic flows again with no userspace action.

use std::{
    net::UdpSocket,
    sync::mpsc,
    time::{Duration, Instant},
};

use vigil::{
    block::Blocklist,
    sensor::{AttachMode, Sensor, SensorOptions},
};
use vigil_tests::{netns::Link, require_root};

const PORT: u16 = 9998;

/// Sends `n` datagrams from A to B, 5 ms apart, and returns how many B received.
fn send_and_count(link: &Link, n: usize) -> usize {
    let receiver = link.b.udp_sink("10.200.0.2", PORT, n, Duration::from_millis(600 + 5 * n as u64));
    link.a.run(move || {
        let sock = UdpSocket::bind(("10.200.0.1", 0)).expect("bind");
        for _ in 0..n {
            sock.send_to(b"ping", ("10.200.0.2", PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    receiver.join().expect("receiver")
}

#[test]
fn rule_drops_live_traffic_then_lapses_on_its_own() {
    require_root();
    let link = Link::new("block");
    // The sensor lives in B's namespace: load and attach from a thread inside it.
    let (tx, rx) = mpsc::channel::<()>();
    let (report_tx, report) = mpsc::channel();
    let holder = link.b.spawn(move || {
        let mut sensor = Sensor::load(&SensorOptions::default()).expect("load");
        sensor.attach(Link::IFACE_B, AttachMode::Native).expect("attach");
        Blocklist::from_ebpf(sensor.ebpf_mut())
            .expect("blocklist")
            .add("10.200.0.1/32".parse().unwrap(), Duration::from_secs(2), vigil::block::rules::Origin::Manual)
            .expect("add rule");
        report_tx.send(()).expect("report");
        // Keep the sensor attached until told, then report what the kernel counted.
        rx.recv().expect("stop");
        let counters = sensor.counters().expect("counters");
        let rules = Blocklist::from_ebpf(sensor.ebpf_mut()).expect("blocklist").list().expect("list");
        (counters, rules)
    });
    report.recv().expect("sensor ready");
    let added = Instant::now();

    assert_eq!(send_and_count(&link, 20), 0, "blocked source reaches nothing");
    let blocked_for = added.elapsed();
    assert!(blocked_for < Duration::from_secs(2), "the test must finish the blocked phase inside the TTL");
    std::thread::sleep(Duration::from_secs(2).saturating_sub(added.elapsed()) + Duration::from_millis(200));
    assert_eq!(send_and_count(&link, 20), 20, "after the TTL the same traffic passes");

    tx.send(()).expect("stop");
    let (counters, rules) = holder.join().expect("sensor thread");
    assert_eq!(counters.blocklist_drops, 20, "{counters:?}");
    assert_eq!(counters.blocklist_expired, 1, "the kernel removed the lapsed rule itself");
    assert!(rules.is_empty(), "{rules:?}");
    assert!(counters.proto_packets.iter().sum::<u64>() >= 20, "passed traffic went to the flow table");
}
