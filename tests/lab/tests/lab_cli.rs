//! `vigil-lab` (behind `cargo xtask lab` and `cargo xtask eval-live`): a short scenario end to
//! end, Ctrl-C in the middle of one, and the live evaluation on a labelled directory of our
//! own making. Root.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use vigil_tests::{agent::TempDir, data::shared, require_root};

const LAB: &str = env!("CARGO_BIN_EXE_vigil-lab");

/// Namespaces still named after `pid`.
fn namespaces_of(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("vigil-") && n.split('-').nth(2) == Some(&pid.to_string()))
        .map(str::to_owned)
        .collect()
}

fn lab() -> Command {
    let mut cmd = Command::new(LAB);
    // The workspace root, where the default data path `../shared/data/pcaps` resolves.
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    cmd
}

#[test]
fn quick_scenario_detects_blocks_and_removes_the_lab() {
    require_root();
    let dir = TempDir::new("labcli");
    let json = dir.path().join("summary.json");
    let child = lab()
        .args(["lab", "--scenario", "quick", "--settle", "4s", "--json"])
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vigil-lab");
    let pid = child.id();
    let out = child.wait_with_output().expect("vigil-lab output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vigil-lab failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("| step | attacker | detected |"), "summary table missing:\n{stdout}");
    let summary: Value = serde_json::from_slice(&std::fs::read(&json).expect("summary.json")).expect("json");
    let steps = summary["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{summary:#}");
    assert_eq!(steps[0]["kind"], "benign");
    for s in &steps[1..] {
        assert_eq!(s["detected"], true, "{s:#}");
        let alert = s["time_to_alert_ms"].as_i64().expect("time to alert");
        let block = s["time_to_block_ms"].as_i64().expect("time to block (enforce is the lab's default)");
        assert!((0..5000).contains(&alert) && alert < block, "{s:#}");
    }
    for s in steps {
        assert_eq!(s["false_alerts"], 0, "{s:#}");
        assert!(s["error"].is_null(), "{s:#}");
    }
    assert!(stdout.contains("anomalous-flows"), "events are shown as they happen:\n{stdout}");
    assert!(namespaces_of(pid).is_empty(), "namespaces left: {:?}", namespaces_of(pid));
}

#[test]
fn ctrl_c_mid_scenario_removes_everything() {
    require_root();
    let mut child = lab()
        .args(["lab", "--scenario", "live", "--settle", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("vigil-lab");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    // Interrupt once the first attack is under way.
    for line in lines.by_ref() {
        let line = line.expect("line");
        seen.push(line.clone());
        if line.starts_with("[2/") {
            break;
        }
    }
    assert!(seen.last().is_some_and(|l| l.starts_with("[2/")), "never reached the attacks:\n{}", seen.join("\n"));
    assert!(!namespaces_of(pid).is_empty(), "the lab exists while it runs");
    std::thread::sleep(Duration::from_secs(1));
    kill(Pid::from_raw(i32::try_from(pid).expect("pid")), Signal::SIGINT).expect("SIGINT");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "vigil-lab did not exit after SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(status.code(), Some(130), "{status}\n{}", rest.join("\n"));
    assert!(rest.iter().any(|l| l.contains("interrupted")), "{}", rest.join("\n"));
    assert!(namespaces_of(pid).is_empty(), "namespaces left: {:?}", namespaces_of(pid));
    assert!(
        !Command::new("pgrep").args(["-f", "hping3|nmap|iperf3 -s"]).status().expect("pgrep").success(),
        "tools left running"
    );
}

#[test]
fn unknown_scenario_exits_2_naming_the_choices() {
    require_root();
    let out = lab().args(["lab", "--scenario", "nope"]).output().expect("vigil-lab");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown scenario") && err.contains("quick"), "{err}");
}

#[test]
fn eval_live_scores_any_labelled_directory() {
    require_root();
    // A directory of our own: one attack, two benign captures, labels in the same form.
    let dir = TempDir::new("evalcli");
    let data = dir.path().join("data");
    for sub in ["attack", "benign"] {
        std::fs::create_dir_all(data.join(sub)).expect("mkdir");
    }
    for rel in ["attack/udp__flood.pcap", "benign/dns_lab.pcapng", "benign/tcpreplay-test.pcap"] {
        std::os::unix::fs::symlink(shared(&format!("pcaps/{rel}")), data.join(rel)).expect("symlink");
    }
    std::fs::write(
        data.join("labels.json"),
        r#"{"attack/udp__flood.pcap": {"kind": "udp-flood", "attacker": "172.16.2.1", "victim": "172.16.1.2"},
            "benign/*": {"kind": "benign"}}"#,
    )
    .expect("labels");
    let out_dir = dir.path().join("out");
    let out = lab()
        .args(["eval-live", "--quiet", "--settle", "5s", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("vigil-lab");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    let report: Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).expect("report")).expect("json");
    let captures = report["captures"].as_array().expect("captures");
    assert_eq!(captures.len(), 3, "{report:#}");
    let flood = &captures[0];
    assert_eq!(flood["capture"], "attack/udp__flood.pcap");
    assert_eq!(flood["attacker_lab"], "10.77.1.10", "attacker mapped into the lab's range");
    assert_eq!(flood["victim_lab"], "10.77.0.2", "victim mapped to the server");
    assert_eq!(flood["alerted"], true, "{flood:#}");
    let tta = flood["time_to_alert_ms"].as_i64().expect("time to alert");
    assert!((0..=2000).contains(&tta), "{flood:#}");
    assert_eq!(flood["attack_flows"], 10_000, "every flood packet is a flow of its own");
    // dns_lab: 22 one-packet DNS flows, as `vigil replay` counts them offline.
    assert_eq!(captures[1]["capture"], "benign/dns_lab.pcapng");
    assert_eq!(captures[1]["flows"], 22, "{:#}", captures[1]);
    assert!(captures[2]["flows"].as_u64().expect("flows") >= 40, "{:#}", captures[2]);
    assert_eq!(report["benign_captures_false_alerts"], 0, "{report:#}");
    assert!(
        std::fs::read_to_string(out_dir.join("report.md")).expect("report.md").contains("| attack/udp__flood.pcap |")
    );
}
