//! A capture replayed the way the victim host sees it (`vigil_tests::host_replay`): the
//! victim's packets leave its own interface through the sensor's egress hook, the rest arrive
//! at its XDP hook. The live agent must then record each conversation exactly as `vigil
//! replay` records it from the file, and never name the victim as the source of an alert for
//! answering.

use std::{net::IpAddr, path::Path, process::Command, time::Duration};

use vigil::flows::biflow::BiflowRecord;
use vigil_tests::{
    agent::{TempDir, read_conversations, vigil_bin},
    data::shared,
    host_replay::{self, Sender},
    lab::{IFACE, Lab, VICTIM, is_alert},
    require_root,
};

/// The conversation records `vigil replay` makes of a capture.
fn offline(capture: &Path, dir: &TempDir) -> Vec<BiflowRecord> {
    let out = dir.path().join("offline.jsonl");
    let status = Command::new(vigil_bin())
        .args(["replay", "--no-progress", "--flows-out"])
        .arg(&out)
        .arg(capture)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("vigil replay");
    assert!(status.success());
    read_conversations(&out)
}

/// Replays `capture` into the lab as its victim host sees it, pauses cut to 20 ms.
fn replay(lab: &Lab, capture: &Path, pairs: &[(IpAddr, IpAddr)], victim: Option<IpAddr>) -> host_replay::Replayed {
    let victim_side = Sender::open(&lab.victim, IFACE).expect("victim socket");
    let outside = Sender::open(&lab.attacker, IFACE).expect("attacker socket");
    host_replay::replay(
        capture,
        pairs,
        victim,
        &victim_side,
        &outside,
        Duration::from_millis(20),
        Duration::from_mins(2),
    )
    .expect("not interrupted")
    .expect("replayed")
}

#[test]
fn a_capture_replayed_from_both_hosts_is_recorded_as_the_file_holds_it() {
    require_root();
    let lab = Lab::new("hostrep");
    let out = lab.dir.path().join("flows.jsonl");
    let agent = lab.agent_with("", &["--no-pin", "--flows-out", out.to_str().expect("utf-8")]);
    // Browsing bro.org: a dozen HTTP conversations with one server, every frame within the
    // lab's 1500-byte MTU.
    let capture = shared("pcaps/benign/bro.org.pcap");
    let (client, server): (IpAddr, IpAddr) = ("10.0.2.15".parse().unwrap(), "192.150.187.43".parse().unwrap());
    let (client_lab, victim): (IpAddr, IpAddr) = ("10.77.1.10".parse().unwrap(), VICTIM.parse().unwrap());
    let pairs = [(client, client_lab), (server, victim)];
    let replayed = replay(&lab, &capture, &pairs, Some(victim));
    assert_eq!(replayed.frames, 751, "{replayed:?}");
    assert_eq!(replayed.from_victim + replayed.from_outside, replayed.frames, "every frame is sent");
    assert_eq!((replayed.cut, replayed.unreadable), (0, 0));
    std::thread::sleep(Duration::from_millis(600));
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");

    let live = read_conversations(&out);
    let dir = TempDir::new("hostrep-offline");
    let file = offline(&capture, &dir);
    let with_server: Vec<&BiflowRecord> =
        file.iter().filter(|r| r.initiator_ip == server || r.responder_ip == server).collect();
    assert!(with_server.len() >= 10, "{} conversations with the server", with_server.len());
    // What the server sent in the file is exactly what left the victim's interface.
    let sent_by_server: u64 =
        with_server
            .iter()
            .map(|r| {
                if r.initiator_ip == server {
                    r.initiator.packets
                } else {
                    r.responder.as_ref().map_or(0, |s| s.packets)
                }
            })
            .sum();
    assert_eq!(replayed.from_victim, sent_by_server, "{replayed:?}");
    // Each of them is one live conversation, both sides counted as the file holds them: the
    // client's through XDP, the victim's through its egress.
    let lab_ip = |ip: IpAddr| pairs.iter().find(|(from, _)| *from == ip).map_or(ip, |(_, to)| *to);
    for want in with_server {
        let got = live
            .iter()
            .find(|r| {
                (r.initiator_ip, r.initiator_port, r.responder_ip, r.responder_port)
                    == (lab_ip(want.initiator_ip), want.initiator_port, lab_ip(want.responder_ip), want.responder_port)
            })
            .unwrap_or_else(|| panic!("no live conversation for {want:#?}"));
        assert_eq!(got.conn_state, want.conn_state, "{want:#?}");
        let (g, w) = (&got.initiator, &want.initiator);
        assert_eq!((g.packets, g.bytes, g.tcp_flags), (w.packets, w.bytes, w.tcp_flags), "the initiator's side");
        let (g, w) = (got.responder.as_ref(), want.responder.as_ref());
        assert_eq!(
            g.map(|s| (s.packets, s.bytes, s.tcp_flags)),
            w.map(|s| (s.packets, s.bytes, s.tcp_flags)),
            "the responder's side"
        );
    }
    // Answering is not attacking: nothing names the victim as a source.
    let named: Vec<_> = lab.events().into_iter().filter(|e| is_alert(e) && e["source"]["ip"] == VICTIM).collect();
    assert!(named.is_empty(), "{named:#?}");
}

#[test]
fn every_frame_of_a_linux_cooked_capture_is_replayed() {
    require_root();
    let lab = Lab::new("hostsll");
    // A Linux cooked (SLL) capture, which tcprewrite cannot rewrite; no victim: all from outside.
    let capture = shared("corpus/benign/ndpi_rtsp.pcap");
    let replayed = replay(&lab, &capture, &[], None);
    // 568 packets, as `capinfos` counts them (corpus/MANIFEST.md).
    assert_eq!((replayed.frames, replayed.from_outside, replayed.unreadable), (568, 568, 0), "{replayed:?}");
}
