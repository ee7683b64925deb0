//! Fleet-wide blocking end to end: two protected hosts of the lab LAN (the victim and the
//! bystander) each run `vigil run` with `[fleet.blocking]`; the bus (`nats-server -js`) and
//! `vigil collector` with its policy run on the switch. A SYN flood against host 1 gets the
//! attacker blocked there; host 2 installs the same rule from the fleet blocklist within a
//! second of host 1's decision and drops the attacker's packets; the rule lapses on both.
//!
//! Models to the fleet end to end: a running agent of group canary swaps in the bundle an
//! operator publishes with `vigil model publish`, and refuses one whose manifest was changed
//! after signing, keeping its model.

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

/// The bus on the switch: `nats-server -js` on [`BUS`], its store in `dir`.
fn start_bus(lab: &mut Lab, dir: &TempDir) {
    lab.switch().ip(&["addr", "add", &format!("{BUS}/24"), "dev", "br0"]);
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
}

#[test]
fn a_flood_against_one_host_gets_the_attacker_dropped_by_another_within_a_second() {
    require_root();
    let mut lab = Lab::new("fleet");
    let dir = TempDir::new("fleet-live");
    start_bus(&mut lab, &dir);
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

/// A copy of the shipped bundle in `dir/<name>` with `note` in its training summary (so a hash
/// of its own), signed with `key` by `vigil model sign`.
fn signed_bundle(dir: &TempDir, name: &str, key: &std::path::Path) -> std::path::PathBuf {
    let bundle = dir.path().join(name);
    std::fs::create_dir_all(&bundle).expect("bundle dir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    for f in ["iforest.json", "autoencoder.onnx"] {
        std::fs::copy(shipped.join(f), bundle.join(f)).expect("copy");
    }
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(shipped.join("manifest.json")).expect("manifest")).expect("json");
    manifest["training"]["note"] = name.into();
    std::fs::write(bundle.join("manifest.json"), serde_json::to_vec_pretty(&manifest).expect("json")).expect("write");
    let out = std::process::Command::new(vigil_bin())
        .args(["model", "sign", "--key"])
        .arg(key)
        .arg(&bundle)
        .output()
        .expect("vigil model sign");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    bundle
}

#[test]
fn a_bundle_published_for_a_group_runs_on_its_agent_and_a_tampered_one_is_refused() {
    require_root();
    let mut lab = Lab::new("fleetmod");
    let dir = TempDir::new("fleet-models-live");
    start_bus(&mut lab, &dir);
    let keys = dir.path().join("keys");
    let out =
        std::process::Command::new(vigil_bin()).args(["model", "keygen", "--out"]).arg(&keys).output().expect("keygen");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let public = keys.join("vigil-model.pub");
    let bus = format!("[fleet.bus]\nurl = \"nats://{BUS}:{PORT}\"\nallow_plaintext = true\nsite = \"lab\"\n");
    let config = format!(
        "[detection]\ntrusted_keys = [\"{}\"]\n\n[fleet]\nflows = false\n\n{bus}host = \"h1\"\n\n\
         [fleet.models]\ngroup = \"canary\"\ndir = \"{}\"\n",
        public.display(),
        dir.path().join("kept").display()
    );
    let mut agent = lab.agent(&config);
    // Nothing is published yet (no bucket): the agent detects with its own model meanwhile.
    agent.wait_for("detecting", Duration::from_secs(15));
    let status = |lab: &Lab| -> Value {
        let out = lab.vigil(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    // The status file comes with the first cycle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&lab)["agent"]["model_sha256"].as_str().is_none_or(str::is_empty) {
        assert!(Instant::now() < deadline, "no status: {:#}", status(&lab));
        thread::sleep(Duration::from_millis(100));
    }
    let before = status(&lab)["agent"]["model_sha256"].as_str().unwrap_or_default().to_owned();

    // The operator publishes from the switch (a host of its own) for group canary.
    let publisher = dir.path().join("publisher.toml");
    std::fs::write(&publisher, format!("{bus}host = \"ops\"\n")).expect("publisher config");
    let publish = |bundle: &std::path::Path| {
        let mut cmd = lab.switch().command_net_only(vigil_bin().to_str().expect("utf-8"));
        cmd.args(["model", "publish", "--group", "canary", "-c"]).arg(&publisher).arg(bundle);
        let out = cmd.output().expect("vigil model publish");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let good = signed_bundle(&dir, "canary-1", &keys.join("vigil-model.key"));
    let sha = vigil::model::Bundle::read_dir(&good).expect("bundle").sha256();
    publish(&good);
    agent.wait_for("fleet model swapped in", Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&lab)["agent"]["model_sha256"] != sha.as_str() {
        assert!(Instant::now() < deadline, "status: {:#}", status(&lab));
        thread::sleep(Duration::from_millis(100));
    }
    let now = status(&lab);
    assert_eq!(
        (now["agent"]["model_phase"].as_str(), now["agent"]["model"].as_str()),
        (Some("fleet"), Some("fleet:canary")),
        "{now:#}"
    );
    let swap = lab.wait_event("the model-swap event", Duration::from_secs(5), |e| e["event"]["action"] == "model-swap");
    assert_eq!(swap["vigil"]["learn"]["previous_sha256"], before.as_str(), "{swap:#}");

    // A bundle whose manifest was changed after signing (the alert threshold raised, which
    // would blind the sensor): published (this publisher trusts no key), refused by the agent.
    let tampered = signed_bundle(&dir, "canary-2", &keys.join("vigil-model.key"));
    let path = tampered.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("json");
    manifest["thresholds"]["alert"] = 40.0.into();
    manifest["thresholds"]["block"] = 42.0.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).expect("json")).expect("tamper");
    publish(&tampered);
    let refused =
        lab.wait_event("the model-refused event", Duration::from_secs(15), |e| e["event"]["action"] == "model-refused");
    assert!(refused["vigil"]["learn"]["why"].as_str().unwrap_or_default().contains("does not verify"), "{refused:#}");
    let after = status(&lab);
    assert_eq!(after["agent"]["model_sha256"], sha.as_str(), "the model in use stays: {after:#}");

    // Restarted, the agent scores with the fleet's bundle it kept from its first cycle.
    drop(agent);
    let mut agent = lab.agent(&config);
    agent.wait_for("detecting", Duration::from_secs(15));
    let log = agent.log();
    assert!(
        log.contains(&format!("the fleet's bundle kept by an earlier run model=\"fleet:canary\" sha256=\"{sha}\"")),
        "{log}"
    );
    let detecting = log.lines().find(|l| l.contains("detecting")).unwrap_or_default();
    assert!(detecting.contains("phase=\"fleet\""), "{detecting}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&lab)["agent"]["model_sha256"] != sha.as_str() {
        assert!(Instant::now() < deadline, "status after the restart: {:#}", status(&lab));
        thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
}
