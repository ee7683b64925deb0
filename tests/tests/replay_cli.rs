//! `vigil replay` as a user runs it, on the public captures in `../shared/data/pcaps`.

use std::{path::PathBuf, process::Command};

use vigil::flows::EndReason;
use vigil_tests::{
    agent::{TempDir, read_records, vigil_bin},
    data::shared,
};

fn pcap(rel: &str) -> PathBuf {
    shared(&format!("pcaps/{rel}"))
}

fn replay(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = Command::new(vigil_bin()).arg("replay").args(args).env("NO_COLOR", "1").output().expect("vigil replay");
    (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn udp_flood_capture_becomes_one_record_per_source_port() {
    let dir = TempDir::new("replay");
    let out = dir.path().join("flows.jsonl");
    let (status, log) =
        replay(&[pcap("attack/udp__flood.pcap").to_str().unwrap(), "--flows-out", out.to_str().unwrap()]);
    assert!(status.success(), "{log}");
    let records = read_records(&out);
    assert_eq!(records.iter().map(|r| r.packets).sum::<u64>(), 10_000);
    assert!(records.iter().all(|r| r.src_ip.to_string() == "172.16.2.1" && r.dst_ip.to_string() == "172.16.1.2"));
    assert!(records.iter().all(|r| r.protocol == 17));
    // 10,000 packets in 0.2 s: nothing is idle for 15 s, so everything ends with the capture.
    assert!(records.iter().all(|r| r.end_reason == EndReason::EndOfCapture));
    let first = records.iter().map(|r| r.first_seen_ns).min().unwrap();
    let last = records.iter().map(|r| r.last_seen_ns).max().unwrap();
    assert!(last - first < 1_000_000_000, "capture timestamps, not replay time: {}", last - first);
    assert!(first > 1_000_000_000_000_000_000, "Unix-epoch ns: {first}");
}

#[test]
fn pcapng_timestamps_and_idle_timeouts_follow_the_capture_clock() {
    let dir = TempDir::new("replay");
    let out = dir.path().join("flows.jsonl");
    let (status, log) = replay(&[
        pcap("benign/dns_lab.pcapng").to_str().unwrap(),
        pcap("benign/icmp_traceroute.pcapng").to_str().unwrap(),
        "--idle-timeout",
        "1s",
        "--flows-out",
        out.to_str().unwrap(),
    ]);
    assert!(status.success(), "{log}");
    let records = read_records(&out);
    assert!(!records.is_empty());
    for r in &records {
        assert!(r.last_seen_ns >= r.first_seen_ns);
        // pcapng default resolution is microseconds: a timestamp read as nanoseconds would
        // land in 1970.
        assert!(r.first_seen_ns > 1_000_000_000_000_000_000, "{r:?}");
    }
    assert!(records.iter().any(|r| r.end_reason == EndReason::Idle), "some flow idles for 1 s of capture time");
    assert!(log.contains("dns_lab.pcapng") && log.contains("icmp_traceroute.pcapng"), "{log}");
}

#[test]
fn bad_files_fail_before_anything_is_written() {
    let dir = TempDir::new("replay");
    let junk = dir.path().join("junk.pcap");
    std::fs::write(&junk, b"this is not a capture").unwrap();
    let out = dir.path().join("flows.jsonl");
    let good = pcap("benign/dns_lab.pcapng");
    let (status, log) = replay(&[good.to_str().unwrap(), junk.to_str().unwrap(), "--flows-out", out.to_str().unwrap()]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("junk.pcap") && log.contains("not a pcap or pcapng file"), "{log}");
    assert!(!out.exists(), "no output created for a failed replay");
    let (status, log) = replay(&["/nonexistent.pcap"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("/nonexistent.pcap"), "{log}");
    let (status, _) = replay(&[]);
    assert_eq!(status.code(), Some(2), "a file is required");
}
