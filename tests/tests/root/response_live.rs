//! Live detection and response end to end: the real agent on a victim in a namespace LAN,
//! real attack tools (hping3, nmap) from an attacker, ordinary traffic (iperf3, HTTP, DNS)
//! from a bystander; alerts, auto-block, TTLs, restart takeover and the control commands.

use std::{process::Command, time::Duration};

use serde_json::Value;
use vigil_tests::{
    agent::vigil_bin,
    lab::{ATTACKER, BYSTANDER, IFACE, Lab, VICTIM, is_alert, now_ms, timestamp_ms},
    require_root,
};

fn source_is(e: &Value, ip: &str) -> bool {
    e["source"]["ip"].as_str() == Some(ip)
}

fn action_is(e: &Value, action: &str) -> bool {
    e["event"]["action"].as_str() == Some(action)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn syn_flood_alerts_within_2s_and_bystander_traffic_raises_none() {
    require_root();
    let mut lab = Lab::new("flood");
    lab.start_victim_services();
    let agent = lab.agent("");
    lab.bystander_traffic();
    // Let the bystander's flows be scored as they close too.
    std::thread::sleep(Duration::from_secs(3));
    let false_alerts: Vec<Value> = lab.events().into_iter().filter(is_alert).collect();
    assert!(false_alerts.is_empty(), "ordinary traffic raised alerts: {false_alerts:#?}");

    let start = now_ms();
    let mut flood = lab.syn_flood(3000, 1000, None);
    let alert =
        lab.wait_event("alert naming the attacker", Duration::from_secs(10), |e| is_alert(e) && source_is(e, ATTACKER));
    let latency = timestamp_ms(&alert) - start;
    assert!(latency <= 2000, "alert {latency} ms after the flood started");
    assert_eq!(alert["destination"]["ip"], VICTIM);
    assert_eq!(alert["network"]["transport"], "tcp");
    assert!(alert["vigil"]["counts"]["anomalous_flows"].as_u64().unwrap() >= 10, "{alert:#}");
    assert!(!alert["vigil"]["explanation"].as_array().unwrap().is_empty());
    assert_eq!(alert["vigil"]["attack"]["kind"], "syn-flood", "{alert:#}");
    assert_eq!(alert["threat"]["technique"]["subtechnique"]["id"], "T1499.001", "{alert:#}");
    flood.wait().expect("hping3");
    // One source, one window: a single alert for the whole flood so far, not thousands.
    let alerts = lab.events().into_iter().filter(|e| is_alert(e) && source_is(e, ATTACKER)).count();
    assert!(alerts <= 2, "{alerts} alerts for one flood within one window");
    assert!(lab.events().iter().all(|e| !source_is(e, BYSTANDER)), "nothing about the bystander");
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn nmap_scan_alerts_within_2s() {
    require_root();
    let mut lab = Lab::new("scan");
    lab.start_victim_services();
    let _agent = lab.agent("");
    let start = now_ms();
    let mut scan = lab
        .attacker
        .command("timeout")
        .args(["60", "nmap", "-sS", "-T4", "-Pn", "-n", "-p", "1-2000", VICTIM])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("nmap");
    let alert =
        lab.wait_event("alert naming the scanner", Duration::from_secs(10), |e| is_alert(e) && source_is(e, ATTACKER));
    let latency = timestamp_ms(&alert) - start;
    assert!(latency <= 2000, "alert {latency} ms after the scan started: {alert:#}");
    assert!(alert["vigil"]["counts"]["destination_ports"].as_u64().unwrap() >= 20, "{alert:#}");
    assert_eq!(alert["vigil"]["attack"]["kind"], "scan", "{alert:#}");
    assert_eq!(alert["threat"]["tactic"]["id"], "TA0007", "{alert:#}");
    scan.wait().expect("nmap");
}

#[test]
fn enforce_blocks_the_attacker_only_and_rules_lapse_at_their_ttl() {
    require_root();
    let lab = Lab::new("enforce");
    let agent_config = "[block]\nmode = \"enforce\"\nttl = \"6s\"\n";
    let _agent = lab.agent(agent_config);
    let counter = lab.udp_counter(9000);
    let start = now_ms();
    let mut flood = lab.syn_flood(4000, 1000, None);
    let block = lab.wait_event("block of the attacker", Duration::from_secs(10), |e| {
        action_is(e, "block") && source_is(e, ATTACKER)
    });
    eprintln!("blocked {} ms after the flood started", timestamp_ms(&block) - start);
    assert_eq!(block["vigil"]["rule"]["origin"], "auto");
    flood.wait().expect("hping3");

    // The victim no longer hears the attacker; the bystander is untouched.
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 50);
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 50);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 0, "blocked source got through");
    assert_eq!(counter.from(BYSTANDER), 50, "bystander traffic lost");
    let status: Value = serde_json::from_str(&ok(&lab.vigil(&["status", "--json"]))).expect("status json");
    assert!(status["counters"]["blocklist_drops"].as_u64().unwrap() >= 50, "{status:#}");
    let rule = status["rules"].as_array().unwrap().iter().find(|r| r["prefix"] == format!("{ATTACKER}/32")).cloned();
    let rule = rule.unwrap_or_else(|| panic!("no rule for the attacker: {status:#}"));
    assert!(rule["drops"].as_u64().unwrap() >= 50 && rule["active"] == true, "{rule:#}");
    assert!(status["agent_running"].as_bool().unwrap(), "{status:#}");

    // The rule lapses at its TTL; the attacker's packets pass again.
    let unblock = lab.wait_event("unblock at the TTL", Duration::from_secs(12), |e| {
        action_is(e, "unblock") && source_is(e, ATTACKER)
    });
    assert_eq!(unblock["event"]["reason"], "ttl");
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 20, "traffic passes after the TTL");
}

#[test]
fn allowlisted_attacker_is_never_blocked() {
    require_root();
    let lab = Lab::new("allow");
    let _agent = lab.agent(&format!("[block]\nmode = \"enforce\"\nallowlist = [\"{ATTACKER}/32\"]\n"));
    let mut flood = lab.syn_flood(4000, 1000, None);
    let refused =
        lab.wait_event("refusal", Duration::from_secs(10), |e| action_is(e, "block-refused") && source_is(e, ATTACKER));
    assert!(refused["event"]["reason"].as_str().unwrap().contains("allowlisted"), "{refused:#}");
    flood.wait().expect("hping3");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!lab.events().iter().any(|e| action_is(e, "block")), "{:#?}", lab.events());
    let rules = ok(&lab.vigil(&["block", "list"]));
    assert_eq!(rules.trim(), "no rules");
}

#[test]
fn dry_run_reports_but_blocks_nothing() {
    require_root();
    let lab = Lab::new("dry");
    let _agent = lab.agent("[block]\nmode = \"dry-run\"\n");
    let counter = lab.udp_counter(9000);
    let mut flood = lab.syn_flood(4000, 1000, None);
    lab.wait_event("dry-run report", Duration::from_secs(10), |e| {
        action_is(e, "block-dry-run") && source_is(e, ATTACKER)
    });
    flood.wait().expect("hping3");
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 20);
    assert_eq!(ok(&lab.vigil(&["block", "list"])).trim(), "no rules");
}

#[test]
fn rules_survive_kill_9_and_a_restarted_agent_takes_over() {
    require_root();
    let lab = Lab::new("restart");
    let config = "[block]\nmode = \"enforce\"\nttl = \"10s\"\n";
    let agent = lab.agent(config);
    let mut flood = lab.syn_flood(4000, 1000, None);
    lab.wait_event("block", Duration::from_secs(10), |e| action_is(e, "block") && source_is(e, ATTACKER));
    flood.wait().expect("hping3");
    let (_, log) = agent.stop_with(nix::sys::signal::Signal::SIGKILL);

    // The agent is gone; the program and the rule are not.
    assert!(lab.xdp_attached(), "XDP program gone with the agent; log:\n{log}");
    let list = ok(&lab.vigil(&["block", "list"]));
    assert!(list.contains(&format!("{ATTACKER}/32")) && list.contains("auto"), "{list}");
    let counter = lab.udp_counter(9000);
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 20);
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!((counter.from(ATTACKER), counter.from(BYSTANDER)), (0, 20));
    let status = ok(&lab.vigil(&["status"]));
    assert!(status.contains("agent:    not running") && status.contains("sensor:   attached"), "{status}");

    // A new agent takes the pinned link and rules over and retires the rule at its TTL.
    let agent = lab.agent(config);
    assert!(agent.log().contains("took over the pinned link"), "{}", agent.log());
    lab.wait_event("unblock by the new agent", Duration::from_secs(15), |e| {
        action_is(e, "unblock") && source_is(e, ATTACKER)
    });
    Lab::send_udp(&lab.attacker, ATTACKER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(ATTACKER), 20);

    // `vigil detach` removes everything and the running agent stops by itself.
    let out = ok(&lab.vigil(&["detach"]));
    assert!(out.contains("detached"), "{out}");
    let (status, log) = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    assert!(!lab.xdp_attached());
    assert!(!lab.pin_dir.exists());
}

#[test]
fn control_commands_manage_rules_of_the_running_agent() {
    require_root();
    let lab = Lab::new("ctl");
    let _agent = lab.agent("");
    let counter = lab.udp_counter(9000);
    let out = ok(&lab.vigil(&["block", "add", BYSTANDER, "--ttl", "1m"]));
    assert!(out.contains(&format!("blocked {BYSTANDER}/32")), "{out}");
    ok(&lab.vigil(&["block", "add", "192.0.2.0/24"]));
    let list: Value = serde_json::from_str(&ok(&lab.vigil(&["block", "list", "--json"]))).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list:#}");
    assert!(list.as_array().unwrap().iter().all(|r| r["origin"] == "manual"));
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(BYSTANDER), 0, "manual rule drops");
    // The agent reports rules it did not make.
    lab.wait_event("manual block event", Duration::from_secs(5), |e| action_is(e, "block") && source_is(e, BYSTANDER));

    // The host's own address is refused without --force.
    let refused = lab.vigil(&["block", "add", VICTIM]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("host address"), "{refused:?}");
    let bad = lab.vigil(&["block", "add", "10.0.0.300"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not an IP address"), "{bad:?}");

    ok(&lab.vigil(&["block", "del", BYSTANDER]));
    lab.wait_event("unblock event", Duration::from_secs(5), |e| action_is(e, "unblock") && source_is(e, BYSTANDER));
    Lab::send_udp(&lab.bystander, BYSTANDER, 9000, 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter.from(BYSTANDER), 20);
    assert!(ok(&lab.vigil(&["block", "flush"])).contains("removed 1 rules"));
    let status = ok(&lab.vigil(&["status"]));
    assert!(status.contains("agent:    running") && status.contains(&format!("on {IFACE}")), "{status}");
    assert!(status.contains("rules:    0 active"), "{status}");
}

#[test]
fn bad_config_exits_2_naming_the_field_before_attaching() {
    require_root();
    let lab = Lab::new("badcfg");
    for (extra, field) in [
        ("[block]\nmdoe = \"enforce\"\n", "mdoe"),
        ("[block]\nconsecutive = 0\n", "block.consecutive"),
        ("[block]\nttl = \"forever\"\n", "ttl"),
        ("[[alerts.sinks]]\ntype = \"syslog\"\naddress = \"tcp://x\"\n", "syslog address"),
        ("[detection]\nmodel = \"/nonexistent/bundle\"\n", "/nonexistent/bundle"),
    ] {
        let config = lab.config(extra);
        let out = lab
            .victim
            .command_net_only(vigil_bin().to_str().unwrap())
            .args(["run", "--config", config.to_str().unwrap()])
            .output()
            .expect("vigil");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = if field.starts_with('/') { 1 } else { 2 };
        assert_eq!(out.status.code(), Some(expected), "{extra}: {stderr}");
        assert!(stderr.contains(field), "{extra}: error should name {field}: {stderr}");
        assert!(!lab.xdp_attached(), "nothing attached after a bad config");
        assert!(!lab.pin_dir.exists(), "nothing pinned after a bad config");
    }
    let missing = Command::new(vigil_bin()).args(["run", "--config", "/nonexistent/vigil.toml"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/vigil.toml"));
}

#[test]
fn spoofed_flood_raises_a_destination_alert_and_blocks_nothing() {
    require_root();
    let lab = Lab::new("spoof");
    let agent = lab.agent("[block]\nmode = \"enforce\"\n");
    let start = now_ms();
    // One SYN per random source: no source alone has enough for an alert of its own.
    let mut flood = lab
        .attacker
        .command("timeout")
        .args(["30", "hping3", "-q", "-S", "-p", "80", "-c", "3000", "-i", "u1000", "--rand-source", VICTIM])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("hping3");
    let alert = lab
        .wait_event("destination alert", Duration::from_secs(10), |e| action_is(e, "anomalous-flows-to-destination"));
    flood.wait().expect("hping3");
    let latency = timestamp_ms(&alert) - start;
    assert!(latency <= 2000, "destination alert {latency} ms after the flood started");
    assert_eq!(alert["destination"]["ip"], VICTIM, "{alert:#}");
    assert!(alert["source"].is_null(), "a destination alert names no source: {alert:#}");
    assert!(alert["vigil"]["counts"]["sources"].as_u64().unwrap() >= 20, "{alert:#}");
    assert!(!alert["vigil"]["explanation"].as_array().unwrap().is_empty(), "{alert:#}");
    assert_eq!(alert["vigil"]["attack"]["kind"], "syn-flood", "a flood of one SYN per source: {alert:#}");
    std::thread::sleep(Duration::from_secs(2));
    let events = lab.events();
    assert!(events.iter().all(|e| !action_is(e, "block")), "spoofed sources are never blocked: {events:#?}");
    assert!(
        events.iter().filter(|e| action_is(e, "anomalous-flows")).count() == 0,
        "no per-source alert for one-packet sources: {events:#?}"
    );
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}
