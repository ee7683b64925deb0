//! Behaviour that only shows over many conversations or a long time, each raised live by a
//! real tool from the attacker against the agent's built-in model: an IP protocol scan (`nmap
//! -sO`), a slow port scan (`nmap --scan-delay`), FTP password guessing (`hydra`) and a slow
//! HTTP denial of service (`slowhttptest`). Each must be alerted naming the attacker, and
//! nothing may name anyone else. Needs root; namespaces only; every tool runs under `timeout`
//! and with bounded counts.
//!
//! Not here: a ping sweep (`nmap -sn`) of a subnet. To the built-in model, trained on benign
//! captures that include peer-to-peer clients reaching hundreds of hosts, it is not anomalous
//! (docs/detection.md).

use std::{
    process::{Child, Stdio},
    time::Duration,
};

use serde_json::Value;
use vigil_tests::{
    lab::{ATTACKER, BYSTANDER, Lab, VICTIM, is_alert, now_ms, timestamp_ms},
    require_root,
};

fn names_attacker(e: &Value) -> bool {
    is_alert(e) && e["source"]["ip"].as_str() == Some(ATTACKER)
}

/// Starts `args` in the attacker's namespace under `timeout secs`, output discarded, in the
/// lab's scratch directory (hydra leaves its restore file in the working directory).
fn attack(lab: &Lab, secs: u32, args: &[&str]) -> Child {
    lab.attacker
        .command("timeout")
        .current_dir(lab.dir.path())
        .arg(secs.to_string())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", args[0]))
}

/// Waits for the alert naming the attacker, checks nobody else was named, and returns it with
/// the milliseconds from `start` to it.
fn alerted(lab: &Lab, what: &str, start: i64, within: Duration) -> (Value, i64) {
    let alert = lab.wait_event(what, within, names_attacker);
    let others: Vec<Value> =
        lab.events().into_iter().filter(|e| is_alert(e) && e["source"]["ip"].as_str() != Some(ATTACKER)).collect();
    assert!(others.is_empty(), "alerts naming someone else: {others:#?}");
    assert!(lab.events().iter().all(|e| e["source"]["ip"].as_str() != Some(BYSTANDER)));
    eprintln!(
        "{what}: alert {} ms after the start, kind {} ({}): {}",
        timestamp_ms(&alert) - start,
        alert["vigil"]["attack"]["kind"],
        alert["threat"]["technique"]["id"],
        alert["vigil"]["explanation"]
    );
    let latency = timestamp_ms(&alert) - start;
    (alert, latency)
}

#[test]
fn an_ip_protocol_scan_is_alerted() {
    require_root();
    let lab = Lab::new("proto");
    let _agent = lab.agent("");
    let start = now_ms();
    let mut scan = attack(&lab, 60, &["nmap", "-sO", "-n", "-Pn", "-T4", "--max-retries", "1", VICTIM]);
    let (alert, _) = alerted(&lab, "alert naming the protocol scanner", start, Duration::from_secs(30));
    assert_eq!(alert["vigil"]["attack"]["kind"], "scan", "{alert:#}");
    scan.wait().expect("nmap");
}

#[test]
fn a_slow_port_scan_is_alerted_before_it_ends() {
    require_root();
    let lab = Lab::new("slow");
    let _agent = lab.agent("");
    let start = now_ms();
    // One probe a second to 60 ports: the 10 s window never holds more than 10.
    let mut scan = attack(
        &lab,
        90,
        &["nmap", "-sS", "-n", "-Pn", "--scan-delay", "1s", "--max-retries", "0", "-p", "1-60", VICTIM],
    );
    let (alert, latency) = alerted(&lab, "alert naming the slow scanner", start, Duration::from_secs(70));
    assert!(latency < 60_000, "alerted {latency} ms after the start, after the scan's 60 probes");
    assert_eq!(alert["vigil"]["attack"]["kind"], "scan", "{alert:#}");
    assert_eq!(alert["threat"]["technique"]["id"], "T1046", "{alert:#}");
    scan.kill().ok();
    scan.wait().ok();
}

/// A minimal FTP server on the victim's port 21 that refuses every login and closes the
/// connection after three failures, as vsftpd and pure-ftpd do.
const FTP_SERVER: &str = r#"
import socketserver, sys
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 lab FTP\r\n")
        failures = 0
        for line in self.rfile:
            cmd = line.split(b" ")[0].strip().upper()
            if cmd == b"USER":
                self.wfile.write(b"331 Please specify the password.\r\n")
            elif cmd == b"PASS":
                self.wfile.write(b"530 Login incorrect.\r\n")
                failures += 1
                if failures >= 3:
                    return
            elif cmd == b"QUIT":
                self.wfile.write(b"221 Goodbye.\r\n")
                return
            else:
                self.wfile.write(b"530 Please login with USER and PASS.\r\n")
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
Server((sys.argv[1], 21), Handler).serve_forever()
"#;

#[test]
fn ftp_password_guessing_is_alerted() {
    require_root();
    let mut lab = Lab::new("hydra");
    lab.serve(|l| &l.victim, "python3", &["-c", FTP_SERVER, VICTIM]);
    let words = lab.dir.path().join("passwords.txt");
    // A short dictionary by brute-force standards: 3,000 guesses, three per connection.
    let list: Vec<String> = (0..3000).map(|i| format!("guess{i}")).collect();
    let list = list.join("\n") + "\n";
    std::fs::write(&words, list).expect("password list");
    let _agent = lab.agent("");
    // Give the server a moment to listen.
    std::thread::sleep(Duration::from_millis(500));
    let start = now_ms();
    let mut hydra = attack(
        &lab,
        90,
        // 16 parallel tasks: hydra's default.
        &["hydra", "-l", "admin", "-P", words.to_str().expect("utf-8"), "-t", "16", "-I", &format!("ftp://{VICTIM}")],
    );
    let (alert, _) = alerted(&lab, "alert naming the password guesser", start, Duration::from_mins(1));
    assert_eq!(alert["vigil"]["attack"]["kind"], "password-guessing", "{alert:#}");
    assert_eq!(alert["threat"]["technique"]["subtechnique"]["id"], "T1110.001", "{alert:#}");
    hydra.kill().ok();
    hydra.wait().ok();
}

#[test]
fn a_slow_http_dos_is_alerted() {
    require_root();
    let mut lab = Lab::new("slowhttp");
    lab.start_victim_services();
    let _agent = lab.agent("");
    let start = now_ms();
    // Slowloris as slowhttptest's documentation runs it: 1,000 connections opened at 200 a
    // second, each sending one more header line every 10 s; here for 40 s.
    let mut dos = attack(
        &lab,
        60,
        &["slowhttptest", "-H", "-c", "1000", "-r", "200", "-i", "10", "-l", "40", "-u", &format!("http://{VICTIM}/")],
    );
    let (alert, _) = alerted(&lab, "alert naming the slow DoS", start, Duration::from_secs(50));
    assert_eq!(alert["vigil"]["attack"]["kind"], "slow-dos", "{alert:#}");
    dos.kill().ok();
    dos.wait().ok();
}
