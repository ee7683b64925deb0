//! The embedded store under the real agent: what a live attack leaves in it, read by
//! `vigil query` while the agent runs; and a store that is corrupt or on a full disk, which
//! must leave detection running.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use vigil_tests::{
    agent::vigil_bin,
    lab::{ATTACKER, Lab, is_alert},
    require_root,
};

fn query(db: &Path, args: &[&str]) -> String {
    let out = Command::new(vigil_bin()).arg("query").args(args).arg("--db").arg(db).output().expect("vigil query");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "vigil query {args:?}: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn status(lab: &Lab) -> Value {
    let out = lab.vigil(&["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Waits (bounded) for the running agent's status to satisfy `pred`; answers that status.
fn wait_status(lab: &Lab, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(lab);
        if pred(&s) {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn alert_from_attacker(e: &Value) -> bool {
    is_alert(e) && e["source"]["ip"] == ATTACKER
}

#[test]
fn a_live_attack_is_in_the_store_and_query_reads_it_while_the_agent_runs() {
    require_root();
    let lab = Lab::new("store");
    let agent = lab.agent("[block]\nmode = \"enforce\"\nttl = \"5s\"\n");
    let db = lab.store_path();
    let mut flood = lab.syn_flood(3000, 1000, None);
    let alert = lab.wait_event("alert naming the attacker", Duration::from_secs(10), alert_from_attacker);
    lab.wait_event("block of the attacker", Duration::from_secs(10), |e| {
        e["event"]["action"] == "block" && e["source"]["ip"] == ATTACKER
    });
    flood.wait().expect("hping3");

    // While the agent runs: the alert (same id, same document) and the block.
    let id = alert["event"]["id"].as_str().expect("event.id");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stored = loop {
        let out = query(&db, &["alerts", "--source", ATTACKER, "--json"]);
        if let Some(line) = out.lines().find(|l| l.contains(id)) {
            break line.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "alert {id} not in the store: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let stored: Value = serde_json::from_str(&stored).expect("stored ECS document");
    assert_eq!(stored, alert, "the store holds the document the sinks got");
    let text = query(&db, &["alerts", "--since", "5m"]);
    assert!(text.contains(&format!("{ATTACKER} -> 10.77.0.2:80")), "{text}");
    let blocks = query(&db, &["blocks", "--source", ATTACKER]);
    assert!(blocks.contains(&format!("{ATTACKER}/32")) && blocks.contains("auto"), "{blocks}");

    let s = wait_status(&lab, "store counters", |s| s["agent"]["store"]["written"].as_u64().unwrap_or(0) >= 3);
    assert_eq!(s["agent"]["store"]["up"], true, "{s:#}");

    let (exit, log) = agent.stop();
    assert!(exit.success(), "{log}");
    // Stopping writes the minute's flow rows and a last health row.
    let flows = query(&db, &["flows", "--source", ATTACKER, "--json"]);
    let rows: Vec<Value> = flows.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let to_80 = rows.iter().find(|r| r["port"] == 80).unwrap_or_else(|| panic!("no flow rows to port 80: {flows}"));
    assert!(to_80["flows"].as_u64().unwrap() >= 100, "{to_80}");
    assert!(to_80["packets"].as_u64().unwrap() >= 100, "{to_80}");
    assert!(to_80["anomalous"].as_u64().unwrap() >= 10, "{to_80}");
    let conn = vigil::store::schema::open_for_reading(&db).expect("store");
    let health = vigil::store::query::latest_health(&conn).expect("health");
    assert_eq!(health.len(), 1);
    assert!(health[0].1.packets >= 1000, "{:?}", health[0]);
    assert!(!vigil::store::query::models(&conn).expect("models").is_empty());
}

#[test]
fn a_corrupt_store_is_reported_left_alone_and_detection_goes_on() {
    require_root();
    let lab = Lab::new("store-corrupt");
    let junk = b"not a database; somebody's file".repeat(200);
    std::fs::write(lab.store_path(), &junk).expect("junk");
    let agent = lab.agent("");
    let s = wait_status(&lab, "the store reported down", |s| s["agent"]["store"]["up"] == false);
    let error = s["agent"]["store"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("not a database") && error.contains("vigil.db"), "{s:#}");
    let mut flood = lab.syn_flood(3000, 1000, None);
    lab.wait_event("alert naming the attacker", Duration::from_secs(10), alert_from_attacker);
    flood.wait().expect("hping3");
    let (exit, log) = agent.stop();
    assert!(exit.success(), "{log}");
    assert!(log.contains("the store cannot be used"), "{log}");
    assert_eq!(std::fs::read(lab.store_path()).expect("read"), junk, "the file is left as it was");
}

/// A tmpfs of a fixed size, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(status.success(), "mounting a tmpfs at {}", path.display());
        Self(path.to_owned())
    }

    /// Writes a file until the disk refuses: answers the bytes written.
    fn fill(&self) -> u64 {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join("filler")).expect("filler");
        let block = vec![0_u8; 4096];
        let mut written = 0;
        while f.write_all(&block).is_ok() {
            written += 4096;
        }
        written
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_store_not_detection() {
    require_root();
    let lab = Lab::new("store-full");
    let disk = SmallDisk::mount(&lab.dir.path().join("small"), "2m");
    let db = disk.0.join("vigil.db");
    let agent = lab.agent(&format!("[store]\npath = \"{}\"\n", db.display()));
    wait_status(&lab, "the store written", |s| s["agent"]["store"]["written"].as_u64().unwrap_or(0) >= 2);
    assert!(disk.fill() > 0);
    let mut flood = lab.syn_flood(3000, 1000, None);
    lab.wait_event("alert naming the attacker", Duration::from_secs(10), alert_from_attacker);
    flood.wait().expect("hping3");
    let s = wait_status(&lab, "store writes failing", |s| s["agent"]["store"]["failed"].as_u64().unwrap_or(0) >= 1);
    assert_eq!(s["agent"]["store"]["up"], false, "{s:#}");
    assert!(s["agent"]["store"]["last_error"].as_str().unwrap_or_default().contains("full"), "{s:#}");
    let (exit, log) = agent.stop();
    assert!(exit.success(), "{log}");
    drop(disk);
}
