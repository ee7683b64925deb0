//! The kernel blocklist on live traffic: a rule drops a source's packets, the counters show
//! it, and when the rule's TTL passes the same traffic flows again with no userspace action.

use std::{
    net::UdpSocket,
    sync::mpsc,
    time::{Duration, Instant},
};

use vigil::{
    block::{
        Blocklist,
        rules::{Lapse, Origin},
    },
    sensor::{AttachMode, Sensor, SensorOptions},
};
use vigil_tests::{
    agent::{TempDir, vigil_bin},
    netns::Link,
    require_root,
};

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

#[test]
fn ipv4_mapped_rule_drops_the_ipv4_traffic_it_names() {
    require_root();
    let link = Link::new("blkmap");
    let (tx, rx) = mpsc::channel::<()>();
    let (report_tx, report) = mpsc::channel();
    let holder = link.b.spawn(move || {
        let mut sensor = Sensor::load(&SensorOptions::default()).expect("load");
        sensor.attach(Link::IFACE_B, AttachMode::Native).expect("attach");
        let mut blocklist = Blocklist::from_ebpf(sensor.ebpf_mut()).expect("blocklist");
        let rule = blocklist
            .add("::ffff:10.200.0.1/128".parse().unwrap(), Duration::from_mins(1), Origin::Manual)
            .expect("add");
        let listed = blocklist.list().expect("list");
        report_tx.send((rule.clone(), listed)).expect("report");
        rx.recv().expect("remove");
        // The mapped form names the same rule for removal.
        let removed = Blocklist::from_ebpf(sensor.ebpf_mut())
            .expect("blocklist")
            .remove("::ffff:10.200.0.1/128".parse().unwrap())
            .expect("remove");
        report_tx.send((rule, Vec::new())).expect("report");
        rx.recv().expect("stop");
        (removed, sensor.counters().expect("counters"))
    });
    let (rule, listed) = report.recv().expect("sensor ready");
    assert_eq!(rule.prefix, "10.200.0.1/32".parse().unwrap(), "stored as the IPv4 prefix it names");
    assert_eq!(listed.iter().map(|r| r.prefix).collect::<Vec<_>>(), vec![rule.prefix], "listed as IPv4");
    assert_eq!(send_and_count(&link, 20), 0, "IPv4 traffic from the mapped address is dropped");
    tx.send(()).expect("remove");
    report.recv().expect("removed");
    assert_eq!(send_and_count(&link, 20), 20, "removed by its mapped form, the traffic passes");
    tx.send(()).expect("stop");
    let (removed, counters) = holder.join().expect("sensor thread");
    assert!(removed);
    assert_eq!(counters.blocklist_drops, 20, "{counters:?}");
}

#[test]
fn lapsed_rule_removal_keeps_a_rule_re_added_meanwhile() {
    require_root();
    // Not attached: the maps are the sensor's own, private to this test.
    let mut sensor = Sensor::load(&SensorOptions::default()).expect("load");
    let mut blocklist = Blocklist::from_ebpf(sensor.ebpf_mut()).expect("blocklist");
    let prefix = "192.0.2.0/24".parse().unwrap();
    let other = "198.51.100.7/32".parse().unwrap();
    for p in [prefix, other] {
        blocklist.add(p, Duration::from_secs(1), Origin::Auto).expect("add");
    }
    std::thread::sleep(Duration::from_millis(1100));
    let now = vigil::clock::monotonic_ns();
    let mut lapsed = blocklist.list().expect("list");
    lapsed.sort_by_key(|r| r.prefix);
    assert!(lapsed.iter().all(|r| !r.is_active(now)), "{lapsed:?}");
    assert_eq!(lapsed.iter().map(|r| r.prefix).collect::<Vec<_>>(), vec![prefix, other]);
    // Between the read and the delete an operator blocks the /24 again.
    let fresh = blocklist.add(prefix, Duration::from_mins(1), Origin::Manual).expect("re-add");
    assert_eq!(blocklist.remove_if_lapsed(&lapsed[0]).expect("/24"), Lapse::Replaced(fresh.clone()), "kept");
    assert_eq!(blocklist.remove_if_lapsed(&lapsed[1]).expect("/32"), Lapse::Removed);
    assert_eq!(blocklist.remove_if_lapsed(&lapsed[1]).expect("/32 again"), Lapse::Gone);
    let rules: Vec<_> = blocklist.list().expect("list").into_iter().map(|r| (r.prefix, r.expires_ns)).collect();
    assert_eq!(rules, vec![(prefix, fresh.expires_ns)]);

    // The map's lookup answers the longest matching prefix: a rule for a /16 is not the /24's.
    let wide = blocklist.add("10.0.0.0/16".parse().unwrap(), Duration::from_mins(1), Origin::Manual).expect("/16");
    let narrow = vigil::block::Rule { prefix: "10.0.3.0/24".parse().unwrap(), ..wide.clone() };
    assert_eq!(blocklist.remove_if_lapsed(&narrow).expect("/24 under a /16"), Lapse::Gone);
    assert_eq!(blocklist.list().expect("list").len(), 2, "the /16 stays");
}

/// `vigil block ARGS` against `pin_dir` with `config`, `SSH_CONNECTION` set to `ssh` (or
/// unset), run to completion: (success, stdout, stderr).
fn block_cli(pin_dir: &str, config: &std::path::Path, ssh: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = std::process::Command::new(vigil_bin());
    command.args(["block", "--pin-dir", pin_dir, "--config", config.to_str().expect("utf-8")]).args(args);
    command.env_remove("SSH_CONNECTION").env_remove("SSH_CLIENT");
    if let Some(value) = ssh {
        command.env("SSH_CONNECTION", value);
    }
    let out = command.output().expect("vigil runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn block_add_cli_applies_the_configured_rails() {
    require_root();
    let dir = TempDir::new("block-cli");
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[block]\nallowlist = [\"198.51.100.0/24\"]\nmax_ttl = \"1h\"\n").expect("config");
    let pin_dir = format!("/sys/fs/bpf/vigil-test-blockcli-{}", std::process::id());
    let sensor = Sensor::load(&SensorOptions { pin_dir: Some(pin_dir.clone().into()), ..SensorOptions::default() })
        .expect("load pinned");
    let ssh_connection = "203.0.113.77 52144 10.0.0.2 22";
    let ssh = Some(ssh_connection);

    let (ok, _, err) = block_cli(&pin_dir, &config, ssh, &["add", "198.51.100.9"]);
    assert!(!ok && err.contains("198.51.100.0/24 (configured)") && err.contains("--force"), "{err}");
    let (ok, _, err) = block_cli(&pin_dir, &config, ssh, &["add", "203.0.113.0/24"]);
    assert!(!ok && err.contains("203.0.113.77") && err.contains("SSH session"), "{err}");
    // As under sudo: the command's own environment lacks SSH_CONNECTION, its parent's has it.
    let bin = vigil_bin().to_str().expect("utf-8");
    let script = format!(
        "env -u SSH_CONNECTION {bin} block --pin-dir {pin_dir} --config {} add 203.0.113.77; exit $?",
        config.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("SSH_CONNECTION", ssh_connection)
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("SSH session"), "{err}");
    let (ok, _, err) = block_cli(&pin_dir, &config, ssh, &["add", "192.0.2.1", "--ttl", "100000years", "--force"]);
    assert!(!ok && err.contains("block.max_ttl (1h)"), "{err}");
    let (ok, _, err) = block_cli(&pin_dir, &config, ssh, &["add", "::/0", "--force"]);
    assert!(!ok && err.contains("::ffff:0:0/96"), "{err}");

    let (ok, out, err) = block_cli(&pin_dir, &config, ssh, &["add", "::ffff:192.0.2.7", "--ttl", "10m"]);
    assert!(ok && out.contains("blocked 192.0.2.7/32"), "{out}{err}");
    let (ok, out, err) = block_cli(&pin_dir, &config, ssh, &["add", "203.0.113.0/24", "--force"]);
    assert!(ok && out.contains("blocked 203.0.113.0/24"), "{out}{err}");
    let (ok, out, err) = block_cli(&pin_dir, &config, None, &["list", "--json"]);
    assert!(ok, "{err}");
    let rules: serde_json::Value = serde_json::from_str(&out).expect("json");
    let prefixes: Vec<&str> = rules.as_array().expect("array").iter().filter_map(|r| r["prefix"].as_str()).collect();
    assert_eq!(prefixes, ["192.0.2.7/32", "203.0.113.0/24"]);

    drop(sensor);
    let out = std::process::Command::new(vigil_bin()).args(["detach", "--pin-dir", &pin_dir]).output().expect("detach");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir(&pin_dir);
}
