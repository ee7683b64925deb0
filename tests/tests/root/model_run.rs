//! `vigil run` refusing bundle directories that are unsigned, wrongly signed, out of range or
//! writable by others, and naming its bundle in every event (the `vigil model` commands
//! themselves are tested without root in `agent/tests/model_cli.rs`).
//!
//! The `vigil run` cases run in a network namespace of their own (`unshare -n`, only `lo`)
//! under `timeout`, so a run that wrongly got past the model check stays bounded and touches
//! nothing outside.

use std::{os::unix::fs::PermissionsExt as _, process::Command};

use vigil_tests::{
    agent::{TempDir, bundle_copy, public_key_hex, vigil_bin},
    data::arg as s,
};

fn vigil(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(vigil_bin()).args(args).env("NO_COLOR", "1").output().expect("vigil runs");
    let code = out.status.code().expect("exited");
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Starts `vigil run ARGS` on `lo` of a fresh network namespace, stopped with SIGTERM after
/// `seconds` at the latest.
fn spawn_isolated(seconds: u32, args: &[&str]) -> std::process::Child {
    Command::new("unshare")
        .args(["-n", "timeout", "--preserve-status", "-s", "TERM", &seconds.to_string()])
        .arg(vigil_bin())
        .args(["run", "--iface", "lo", "--no-pin"])
        .args(args)
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare runs")
}

fn finish(child: std::process::Child) -> (i32, String) {
    let out = child.wait_with_output().expect("waits");
    (out.status.code().expect("exited"), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `vigil run ARGS` isolated, for at most `seconds`.
fn run_isolated(seconds: u32, args: &[&str]) -> (i32, String) {
    finish(spawn_isolated(seconds, args))
}

#[test]
fn vigil_run_refuses_unsigned_untrusted_and_writable_bundles() {
    let dir = TempDir::new("model-run");
    let bundle = bundle_copy(dir.path());
    let keys = dir.path().join("keys");
    assert_eq!(vigil(&["model", "keygen", "--out", s(&keys)]).0, 0);
    let hex = public_key_hex(&keys.join("vigil-model.pub"));
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, format!("[detection]\ntrusted_keys = [\"{hex}\"]\n")).expect("config");
    let run_dir = dir.path().join("run");
    let common = ["--config", s(&config), "--run-dir", s(&run_dir), "--model", s(&bundle)];

    let (code, stderr) = run_isolated(20, &common);
    assert_eq!(code, 1, "an unsigned bundle stops vigil run: {stderr}");
    assert!(stderr.contains("no manifest.sig: the bundle is not signed"), "{stderr}");
    assert!(stderr.contains(s(&bundle)), "the error names the bundle: {stderr}");
    assert_eq!(stderr.matches("no manifest.sig").count(), 1, "said once: {stderr}");

    let (code, _, other_err) = vigil(&["model", "keygen", "--out", s(&dir.path().join("other"))]);
    assert_eq!(code, 0, "{other_err}");
    let other = dir.path().join("other/vigil-model.key");
    assert_eq!(vigil(&["model", "sign", "--key", s(&other), s(&bundle)]).0, 0);
    let (code, stderr) = run_isolated(20, &common);
    assert_eq!(code, 1, "a bundle signed by an untrusted key: {stderr}");
    assert!(stderr.contains("does not verify with 1 trusted key(s)"), "{stderr}");

    assert_eq!(vigil(&["model", "sign", "--key", s(&keys.join("vigil-model.key")), s(&bundle)]).0, 0);
    std::fs::set_permissions(bundle.join("iforest.json"), std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, stderr) = run_isolated(20, &common);
    assert_eq!(code, 1, "a file anyone can write: {stderr}");
    assert!(stderr.contains("iforest.json: writable by group or others (mode 0666)"), "{stderr}");
    std::fs::set_permissions(bundle.join("iforest.json"), std::fs::Permissions::from_mode(0o644)).expect("chmod");

    // Signed by the trusted key and private: it runs, and says which bundle it runs, in its
    // log and in the status file `vigil status` reads.
    let child = spawn_isolated(20, &common);
    let status_file = run_dir.join("status.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let status = loop {
        if let Some(status) =
            std::fs::read(&status_file).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no status file within 15 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let sha = "5a484c092b6db5d56b3332f23c2dfdcddd23dbd512741a96b58c4f9980061156";
    assert_eq!(status["model_sha256"], sha, "{status:#}");
    let report = vigil(&["status", "--pin-dir", s(&dir.path().join("no-pins")), "--run-dir", s(&run_dir)]).1;
    assert!(report.contains(&format!("model {} (sha256 {sha})", bundle.display())), "{report}");
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill").success());
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "SIGTERM is a clean stop: {stderr}");
    assert!(stderr.contains(&format!("model bundle signed by {hex}")) && stderr.contains(sha), "{stderr}");

    // allow_unsigned loads an unsigned bundle, saying so.
    std::fs::remove_file(bundle.join("manifest.sig")).expect("unsign");
    let mut args = common.to_vec();
    args.push("--allow-unsigned-model");
    let (code, stderr) = run_isolated(4, &args);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("not verified (allow_unsigned): no manifest.sig"), "{stderr}");
}

/// A pinned agent in its own network namespace: stopped and detached on drop, whatever the
/// test did.
struct PinnedAgent {
    child: Option<std::process::Child>,
    pin_dir: String,
}

impl PinnedAgent {
    fn stop(&mut self) -> (i32, String) {
        let child = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        finish(child)
    }
}

impl Drop for PinnedAgent {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
        }
        let _ = vigil(&["detach", "--pin-dir", &self.pin_dir]);
    }
}

#[test]
fn every_event_names_the_model_bundle() {
    let dir = TempDir::new("model-event");
    let alerts = dir.path().join("alerts.jsonl");
    let pin_dir = format!("/sys/fs/bpf/vigil-test-model-{}", std::process::id());
    let run_dir = dir.path().join("run");
    let child = Command::new("unshare")
        .args(["-n", "timeout", "--preserve-status", "-s", "TERM", "30"])
        .arg(vigil_bin())
        .args(["run", "--iface", "lo", "--pin-dir", &pin_dir, "--run-dir", s(&run_dir), "--alerts-file", s(&alerts)])
        .args(["--config", "/dev/null"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("unshare runs");
    let mut agent = PinnedAgent { child: Some(child), pin_dir: pin_dir.clone() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while !run_dir.join("status.json").exists() {
        assert!(std::time::Instant::now() < deadline, "the agent did not start within 15 s");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // A manual rule (a documentation address): the agent reports it as a `block` event within
    // one interval, through the same envelope as alerts.
    let blocked = "198.51.100.77";
    let (code, _, stderr) = vigil(&["block", "add", blocked, "--ttl", "1m", "--pin-dir", &pin_dir]);
    assert_eq!(code, 0, "{stderr}");
    let event = loop {
        let text = std::fs::read_to_string(&alerts).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(blocked)) {
            break serde_json::from_str::<serde_json::Value>(line).expect("JSON");
        }
        assert!(std::time::Instant::now() < deadline + std::time::Duration::from_secs(5), "no event: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (code, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    let sha = "5a484c092b6db5d56b3332f23c2dfdcddd23dbd512741a96b58c4f9980061156";
    assert_eq!(event["event"]["action"], "block", "{event:#}");
    assert_eq!(event["vigil"]["model"]["sha256"], sha, "{event:#}");
}
