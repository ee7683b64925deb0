//! The supervised classifier live: an agent whose bundle carries one (the built-in anomaly
//! models plus a forest trained with `vigil train --supervised` on the shared captures, signed
//! with a key the agent trusts) names a real port scan from the attacker by the classifier's
//! word, says how sure it was and which models fired. Needs root; namespaces only; nmap runs
//! under `timeout` with a bounded port range.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use vigil_tests::{
    agent::{public_key_hex, vigil_bin},
    data::{arg as s, shared},
    lab::{ATTACKER, Lab, VICTIM, is_alert, now_ms, timestamp_ms},
    require_root,
};

fn vigil(args: &[&str]) {
    let out = Command::new(vigil_bin()).args(args).env("NO_COLOR", "1").output().expect("vigil runs");
    assert!(out.status.success(), "vigil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_port_scan_is_named_by_the_bundles_classifier() {
    require_root();
    let lab = Lab::new("classify");
    let bundle = lab.dir.path().join("bundle");
    let labels = shared("pcaps/labels.json");
    vigil(&["train", "--base", "default", "--supervised", s(&labels), "--out", s(&bundle), "--no-progress"]);
    let keys = lab.dir.path().join("keys");
    vigil(&["model", "keygen", "--out", s(&keys)]);
    vigil(&["model", "sign", "--key", s(&keys.join("vigil-model.key")), s(&bundle)]);
    let hex = public_key_hex(&keys.join("vigil-model.pub"));
    let extra = format!("[detection]\nmodel = \"{}\"\ntrusted_keys = [\"{hex}\"]\n", bundle.display());
    let _agent = lab.agent(&extra);
    let start = now_ms();
    let mut scan = lab
        .attacker
        .command("timeout")
        .args(["60", "nmap", "-sS", "-n", "-Pn", "-T4", "--max-retries", "1", "-p", "1-1000", VICTIM])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nmap");
    let alert = lab.wait_event("an alert naming the scanner", Duration::from_secs(30), |e| {
        is_alert(e) && e["source"]["ip"].as_str() == Some(ATTACKER)
    });
    scan.kill().ok();
    scan.wait().ok();
    let score = &alert["vigil"]["score"];
    eprintln!(
        "alert {} ms after the start: kind {} from {}; classifier {}; fired {}",
        timestamp_ms(&alert) - start,
        alert["vigil"]["attack"]["kind"],
        alert["vigil"]["attack"]["from"],
        score["classifier"],
        score["fired"]
    );
    // The classifier was there and fired on the worst conversation: the kind is its word.
    assert_eq!(score["classifier"]["fired"], true, "{alert:#}");
    assert!(score["classifier"]["attack_probability"].as_f64().expect("probability") >= 0.9, "{alert:#}");
    assert_eq!(alert["vigil"]["attack"]["from"], "classifier", "{alert:#}");
    assert_eq!(alert["vigil"]["attack"]["kind"], "scan", "{alert:#}");
    assert_eq!(alert["threat"]["technique"]["id"], "T1046", "{alert:#}");
    let fired: Vec<&str> = score["fired"].as_array().expect("fired").iter().filter_map(|m| m.as_str()).collect();
    assert!(fired.contains(&"classifier"), "{fired:?}");
    // Every event names the bundle it came from (the signed bundle with the classifier).
    let sha = &alert["vigil"]["model"]["sha256"];
    let manifest = std::fs::read(bundle.join("manifest.json")).expect("manifest");
    let expected = vigil::model::bundle::sha256_hex(&manifest);
    assert_eq!(sha.as_str(), Some(expected.as_str()), "{alert:#}");
}
