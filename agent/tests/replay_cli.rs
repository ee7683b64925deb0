//! `vigil replay` as a user runs it, on the public captures in `../shared/data/pcaps`.

mod common;

use std::{path::PathBuf, process::Command};

use common::{TempDir, read_records, shared, vigil_bin};
use vigil::flows::EndReason;

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

/// Ethernet + IPv4 + UDP from 10.0.0.1:`sport` to 10.0.0.2:53, 42 bytes.
fn udp_frame(sport: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&[0, 53, 0, 8, 0, 0]);
    f
}

/// Writes a pcap with `snaplen` in its header and one packet per `(sport, captured bytes,
/// orig_len)`, one second apart.
fn write_pcap(path: &std::path::Path, snaplen: u32, packets: &[(u16, usize, u32)]) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let header = PcapHeader { snaplen, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(std::fs::File::create(path).unwrap(), header).unwrap();
    for (i, (sport, caplen, orig_len)) in packets.iter().enumerate() {
        let data = udp_frame(*sport);
        let ts = std::time::Duration::from_secs(1_700_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, *orig_len, &data[..*caplen])).unwrap();
    }
}

#[test]
fn snaplen_captures_replay_with_wire_lengths() {
    // What `tcpdump -s 38` writes: snaplen 38, each packet cut to 38 bytes with its full
    // original length. It was refused ("orig_len > snap_len").
    let dir = TempDir::new("replay");
    let cap = dir.path().join("snap.pcap");
    write_pcap(&cap, 38, &[(1000, 38, 1514), (1000, 38, 1514), (1001, 38, 60)]);
    let out = dir.path().join("flows.jsonl");
    let (status, log) = replay(&[cap.to_str().unwrap(), "--flows-out", out.to_str().unwrap(), "--no-progress"]);
    assert!(status.success(), "{log}");
    let mut records = read_records(&out);
    records.sort_by_key(|r| r.src_port);
    assert_eq!(
        records.iter().map(|r| (r.src_port, r.packets, r.bytes)).collect::<Vec<_>>(),
        [(1000, 2, 3028), (1001, 1, 60)]
    );
}

#[test]
fn hostile_lengths_and_flags_do_not_panic() {
    // orig_len near u32::MAX overflowed the sum of squared lengths: exit 101.
    let dir = TempDir::new("replay");
    let cap = dir.path().join("huge.pcap");
    write_pcap(&cap, u32::MAX, &[(1, 42, u32::MAX), (1, 42, u32::MAX), (1, 42, u32::MAX - 1)]);
    let out = dir.path().join("flows.jsonl");
    let (status, log) = replay(&[cap.to_str().unwrap(), "--flows-out", out.to_str().unwrap(), "--no-progress"]);
    assert!(status.success(), "{log}");
    let records = read_records(&out);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].len_sq_sum, u64::MAX, "saturates");
    // `--interval 600years` overflowed the capture clock; every duration flag is bounded and
    // the error names it (usage error: exit 2).
    for flag in ["--interval", "--idle-timeout", "--active-timeout"] {
        let (status, log) = replay(&[cap.to_str().unwrap(), flag, "600years", "--flows-out", "-"]);
        assert_eq!(status.code(), Some(2), "{log}");
        assert!(log.contains(flag) && log.contains("at most 7days"), "{log}");
    }
}

#[test]
fn a_replay_failing_midway_leaves_no_output() {
    let dir = TempDir::new("replay");
    let good = dir.path().join("good.pcap");
    write_pcap(&good, 65_535, &[(1, 42, 42)]);
    let cut = dir.path().join("cut.pcap");
    write_pcap(&cut, 65_535, &[(1, 42, 42), (2, 42, 42)]);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let out = dir.path().join("flows.jsonl");
    let (status, log) =
        replay(&[good.to_str().unwrap(), cut.to_str().unwrap(), "--flows-out", out.to_str().unwrap(), "--no-progress"]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("cut.pcap"), "the error names the file: {log}");
    assert!(!out.exists(), "good.pcap's records were written before cut.pcap failed");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
}

// `vigil eval` exists in builds with the `offline` feature (`cargo xtask test` has it).
#[cfg(feature = "offline")]
#[test]
fn eval_finds_a_bare_labels_file_in_the_current_directory() {
    // `--labels labels.json` took "" (the parent of a bare name) as the directory and failed
    // with ": No such file or directory".
    let dir = TempDir::new("eval-labels");
    let labels =
        r#"{"benign/*": {"kind": "benign"}, "attack/scan.pcap": {"kind": "port-scan", "attacker": "10.0.0.1"}}"#;
    std::fs::write(dir.path().join("labels.json"), labels).unwrap();
    let eval = |args: &[&str]| {
        let out = Command::new(vigil_bin())
            .args(["eval", "captures", "--labels", "labels.json", "--model", "default", "--no-progress"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("vigil eval");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, log) = eval(&[]);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("labels.json: no capture matches any label"), "{log}");
    std::fs::create_dir(dir.path().join("benign")).unwrap();
    let packets: Vec<(u16, usize, u32)> = (0..40).map(|i| (1000 + i, 42, 42)).collect();
    write_pcap(&dir.path().join("benign/udp.pcap"), 65_535, &packets);
    std::fs::create_dir(dir.path().join("attack")).unwrap();
    write_pcap(&dir.path().join("attack/scan.pcap"), 65_535, &packets[..10]);
    let (status, log) = eval(&["--out", "report"]);
    assert!(status.success(), "{log}");
    assert!(dir.path().join("report").is_dir(), "{log}");
}

#[test]
fn features_out_writes_what_the_model_sees_with_its_scores() {
    let dir = TempDir::new("replay");
    let out = dir.path().join("rows.csv");
    let scan = pcap("attack/synscan.pcapng");
    let (status, log) =
        replay(&[scan.to_str().unwrap(), "--features-out", out.to_str().unwrap(), "--model", "default"]);
    assert!(status.success(), "{log}");
    let text = std::fs::read_to_string(&out).expect("rows written");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let schema = vigil::features::Schema::flow();
    assert_eq!(
        header[..11],
        [
            "file",
            "orig_ip",
            "orig_port",
            "resp_ip",
            "resp_port",
            "protocol",
            "first_seen_ns",
            "score",
            "iforest",
            "autoencoder",
            "alert_threshold"
        ]
    );
    assert_eq!(header[11..].to_vec(), schema.names().collect::<Vec<_>>());
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert!(rows.len() > 100, "{} conversations", rows.len());
    let column = |name: &str| header.iter().position(|h| *h == name).expect("column");
    let value = |row: &Vec<&str>, name: &str| -> f64 { row[column(name)].parse().expect("a number") };
    // The scan's last probes see many ports of one host and score above the threshold.
    let ports = rows.iter().map(|r| value(r, "pair_ports_long")).fold(0.0, f64::max);
    assert!(ports > 100.0, "{ports}");
    assert!(rows.iter().any(|r| value(r, "score") > value(r, "alert_threshold")));
    assert!(rows.iter().all(|r| r.len() == header.len()));
}

#[test]
fn a_bad_model_for_features_out_is_named_before_the_capture_is_read() {
    let dir = TempDir::new("replay");
    let out = dir.path().join("rows.csv");
    let missing = dir.path().join("no-such-bundle");
    let (status, log) = replay(&[
        pcap("benign/dns_lab.pcapng").to_str().unwrap(),
        "--features-out",
        out.to_str().unwrap(),
        "--model",
        missing.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(log.contains("no-such-bundle"), "{log}");
    assert!(!out.exists(), "nothing written");
}
