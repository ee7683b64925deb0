//! The TC egress hook on a live host: the real `vigil run --egress` in a namespace counts what
//! the host sends as exactly as what it receives (against an `AF_PACKET` witness of both
//! directions), counts a TSO upload as its wire segments, and its pinned egress link is taken
//! over on restart, dropped when egress is turned off and removed by `vigil detach`.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use vigil::flows::biflow::{BiflowRecord, ConnState};
use vigil::sensor::pin::LinkWatch;
use vigil_tests::{
    agent::{Agent, TempDir, read_conversations, read_records},
    capture::Capture,
    lab::{BYSTANDER, Lab, VICTIM, is_alert},
    netns::{Link, sh},
    require_root,
};

use crate::{
    netns_live::{Tuple, no_offloads, recorded, tally, tcp_echo},
    pin_safety::{PinDir, vigil},
};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;
/// Bytes the host uploads in the TSO test.
const UPLOAD: usize = 8 << 20;
/// Bytes of the big upload that must stay one conversation.
const BIG: usize = 200 << 20;
const A: [u8; 4] = Link::A_V4;
const B: [u8; 4] = Link::B_V4;

/// A TCP server in A that reads `bytes` (or until the connection ends) and returns how many it
/// read; listening when this returns.
fn receive(link: &Link, bytes: usize) -> std::thread::JoinHandle<usize> {
    let (ready_tx, ready) = mpsc::channel();
    let receiver = link.a.spawn(move || {
        let listener = TcpListener::bind(("10.200.0.1", TCP_PORT)).expect("bind tcp");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < bytes {
            match conn.read(&mut buf).expect("read") {
                0 => break,
                n => got += n,
            }
        }
        got
    });
    ready.recv().expect("receiver");
    receiver
}

/// B uploads `bytes` to A's [`receive`] in 64 kB writes; returns B's port.
fn upload(link: &Link, bytes: usize) -> u16 {
    link.b.run(move || {
        let mut tcp =
            TcpStream::connect_timeout(&SocketAddr::from((A, TCP_PORT)), Duration::from_secs(5)).expect("connect");
        let chunk = vec![0x42u8; 1 << 16];
        for _ in 0..bytes / chunk.len() {
            tcp.write_all(&chunk).expect("upload");
        }
        tcp.local_addr().expect("addr").port()
    })
}

fn run_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--egress", "--iface", Link::IFACE_B, "--interval", "200ms", "--flows-out", out];
    args.extend(extra);
    args
}

#[test]
fn what_the_host_sends_matches_the_wire_as_what_it_receives() {
    require_root();
    let link = Link::new("egress");
    no_offloads(&link);
    // The host's own sends leave as the wire carries them, and A hands them up unmerged.
    sh(link.b.command("ethtool").args(["-K", Link::IFACE_B, "tso", "off", "gso", "off"]));
    sh(link.a.command("ethtool").args(["-K", Link::IFACE_A, "gro", "off"]));
    let dir = TempDir::new("egress");
    let out = dir.path().join("flows.jsonl");
    let out_arg = out.to_str().unwrap().to_owned();

    // B, the protected host, serves TCP; A is its client. B also sends UDP to A on its own.
    let server = tcp_echo(&link.b, "10.200.0.2", TCP_PORT);
    let sink = link.a.udp_sink("10.200.0.1", UDP_PORT, 15, Duration::from_secs(5));
    let agent = Agent::start(&link.b, &run_args(&out_arg, &["--no-pin", "--xdp-mode", "native"]));
    agent_log_has(&agent, "TC egress sensor attached");
    let capture = Capture::start_both(&link.b, Link::IFACE_B);

    let client_port = link.a.run(|| {
        let mut tcp =
            TcpStream::connect_timeout(&SocketAddr::from((B, TCP_PORT)), Duration::from_secs(5)).expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 700];
        for round in 0..6u8 {
            tcp.write_all(&[round; 700]).expect("write");
            tcp.read_exact(&mut buf).expect("echo");
        }
        tcp.local_addr().expect("addr").port()
    });
    link.b.run(|| {
        let udp = UdpSocket::bind(("10.200.0.2", 40_002)).expect("bind");
        for i in 0..15u8 {
            udp.send_to(&[i; 200], ("10.200.0.1", UDP_PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    assert_eq!(server.join().expect("server"), 6 * 700);
    assert_eq!(sink.join().expect("sink"), 15, "A received every datagram");
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    let (status, log) = agent.stop();
    assert!(status.success(), "vigil exited with {status}; log:\n{log}");

    let records = read_records(&out);
    let witness = tally(&frames);
    let request: Tuple = (A, B, client_port, TCP_PORT, 6);
    let reply: Tuple = (B, A, TCP_PORT, client_port, 6);
    let udp_out: Tuple = (B, A, 40_002, UDP_PORT, 17);
    for t in [request, reply, udp_out] {
        assert!(witness[&t].packets > 0, "the witness saw {t:?}");
        assert_eq!(recorded(&records, t).0, witness[&t], "flow {t:?} vs the wire");
    }
    assert_eq!(witness[&udp_out].packets, 15);
    assert_eq!((witness[&reply].syn, recorded(&records, reply).0.ack), (0, witness[&reply].ack));
    // Every IPv4 5-tuple the witness saw, in either direction, is in the records.
    for (t, seen) in &witness {
        assert_eq!(recorded(&records, *t).0, *seen, "flow {t:?}");
    }
    // As conversations: the TCP connection is one record, A's side and B's side each what the
    // wire carried; B's own UDP sends are one record with nothing back.
    let conversations = read_conversations(&out);
    let tcp: Vec<&BiflowRecord> = conversations.iter().filter(|c| c.protocol == 6).collect();
    assert_eq!(tcp.len(), 1, "{tcp:#?}");
    let c = tcp[0];
    assert_eq!((c.initiator_ip, c.initiator_port, c.responder_port), (A.into(), client_port, TCP_PORT));
    let responder = c.responder.as_ref().expect("B answered");
    assert_eq!((c.initiator.packets, c.initiator.bytes), (witness[&request].packets, witness[&request].bytes));
    assert_eq!((responder.packets, responder.bytes), (witness[&reply].packets, witness[&reply].bytes));
    assert_eq!(c.conn_state, ConnState::SF, "opened and closed by both");
    let udp: Vec<&BiflowRecord> = conversations.iter().filter(|c| c.protocol == 17).collect();
    assert_eq!(udp.len(), 1, "{udp:#?}");
    assert_eq!((udp[0].initiator_ip, udp[0].initiator.packets), (B.into(), 15));
    assert!(udp[0].responder.is_none() && udp[0].conn_state == ConnState::S0);
}

#[test]
fn an_upload_from_the_host_is_one_record_with_the_bytes_on_the_initiators_side() {
    require_root();
    let link = Link::new("upload");
    let dir = TempDir::new("upload");
    let out = dir.path().join("flows.jsonl");
    let out_arg = out.to_str().unwrap().to_owned();
    let receiver = receive(&link, BIG);
    let agent = Agent::start(&link.b, &run_args(&out_arg, &["--no-pin"]));
    let port = upload(&link, BIG);
    assert_eq!(receiver.join().expect("receiver"), BIG);
    std::thread::sleep(Duration::from_millis(500));
    let (status, log) = agent.stop();
    assert!(status.success(), "vigil exited with {status}; log:\n{log}");
    let ours: Vec<BiflowRecord> =
        read_conversations(&out).into_iter().filter(|c| c.protocol == 6 && c.initiator_port == port).collect();
    assert_eq!(ours.len(), 1, "one conversation: {ours:#?}");
    let c = &ours[0];
    assert_eq!((c.initiator_ip, c.responder_ip, c.responder_port), (B.into(), A.into(), TCP_PORT));
    assert!(c.initiator.bytes > BIG as u64, "the upload is on the initiator's side: {c:#?}");
    let acks = c.responder.as_ref().expect("A acknowledged");
    assert!(acks.bytes < c.initiator.bytes / 20 && acks.packets > 0, "{acks:#?}");
}

#[test]
fn a_scan_from_the_protected_host_is_alerted_with_the_host_as_source() {
    require_root();
    let mut lab = Lab::new("egscan");
    lab.start_victim_services();
    let _agent = lab.agent_with("", &["--egress"]);
    // The protected host, compromised, scans its neighbour.
    let mut scan = lab
        .victim
        .command("timeout")
        .args(["60", "nmap", "-sS", "-T4", "-Pn", "-n", "-p", "1-2000", BYSTANDER])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("nmap");
    let alert = lab.wait_event("alert naming the protected host as the scanner", Duration::from_secs(15), |e| {
        is_alert(e) && e["source"]["ip"].as_str() == Some(VICTIM)
    });
    assert!(alert["vigil"]["counts"]["destination_ports"].as_u64().unwrap() >= 20, "{alert:#}");
    scan.wait().expect("nmap");
    // `vigil status` tells the host's own packets apart, and the agent says egress is on.
    let out = lab.vigil(&["status", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    let counters = &status["counters"];
    let (all, sent) = (counters["packets"].as_u64().unwrap(), counters["egress_packets"].as_u64().unwrap());
    assert!(sent >= 2000 && sent < all, "{status:#}");
    assert_eq!(status["agent"]["egress"], true, "{status:#}");
}

#[test]
fn a_tso_upload_counts_as_its_wire_segments() {
    require_root();
    let link = Link::new("tso");
    sh(link.b.command("ethtool").args(["-K", Link::IFACE_B, "tso", "on", "gso", "on"]));
    let dir = TempDir::new("tso");
    let out = dir.path().join("flows.jsonl");
    let out_arg = out.to_str().unwrap().to_owned();

    let receiver = receive(&link, UPLOAD);
    let agent = Agent::start(&link.b, &run_args(&out_arg, &["--no-pin"]));
    let capture = Capture::start_both(&link.b, Link::IFACE_B);
    let port = upload(&link, UPLOAD);
    assert_eq!(receiver.join().expect("receiver"), UPLOAD);
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    let (status, log) = agent.stop();
    assert!(status.success(), "vigil exited with {status}; log:\n{log}");

    let upload: Tuple = (B, A, port, TCP_PORT, 6);
    let handed = tally(&frames)[&upload];
    let largest = frames.iter().map(Vec::len).max().unwrap_or(0);
    assert!(largest > 1514, "the stack handed the device GSO buffers (largest frame {largest} bytes)");
    let records = read_records(&out);
    let (got, _) = recorded(&records, upload);
    // Every segment carries at most one MSS (1448 bytes with timestamps) of the upload, and
    // its own Ethernet, IP and TCP headers (54 to 78 bytes with options).
    let min_segments = (UPLOAD as u64).div_ceil(1448);
    assert!(got.packets >= min_segments, "{} packets for {UPLOAD} bytes (at least {min_segments})", got.packets);
    assert!(
        got.packets > handed.packets,
        "segments ({}) beyond the buffers handed down ({})",
        got.packets,
        handed.packets
    );
    // Every segment counted is one the wire can carry (the buffers were up to 64 kB), and each
    // brings its own headers: at least 54 bytes per packet beyond the payload. (Retransmissions
    // add payload, so there is no upper bound to check.)
    let len_max = records.iter().filter(|r| r.src_port == port && r.protocol == 6).map(|r| r.len_max).max();
    assert_eq!(len_max.map(|l| l <= 1514), Some(true), "largest counted packet {len_max:?} bytes");
    assert!(got.bytes >= UPLOAD as u64 + 54 * got.packets, "{} bytes over {} packets", got.bytes, got.packets);
    assert_eq!(u64::from(got.ack), got.packets - 1, "every segment but the SYN carries the ACK");
}

#[test]
fn the_pinned_egress_link_is_taken_over_dropped_and_detached() {
    require_root();
    let link = Link::new("pinegress");
    let pins = PinDir::new("egress");
    let run = TempDir::new("pinegress");
    let dir = TempDir::new("pinegress-out");
    let out = dir.path().join("flows.jsonl");
    let out_arg = out.to_str().unwrap().to_owned();
    let run_arg = run.path().to_str().unwrap().to_owned();
    let pinned = ["--pin-dir", pins.arg(), "--run-dir", run_arg.as_str()];
    let egress_pin = pins.path().join(vigil::sensor::pin::EGRESS_LINK);

    // Left pinned by its agent...
    let (status, log) = Agent::start_net_only(&link.b, &run_args(&out_arg, &pinned)).stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("TC egress sensor attached"), "{log}");
    assert!(egress_pin.exists(), "the egress link is pinned beside the XDP link");
    let watch = LinkWatch::open(&egress_pin).expect("open the pinned egress link");
    assert!(watch.is_attached());
    // ...taken over by the next one...
    let (status, log) = Agent::start_net_only(&link.b, &run_args(&out_arg, &pinned)).stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("TC egress sensor attached: took over the pinned link"), "{log}");
    assert!(watch.is_attached(), "the same link, now running the new program");
    // ...dropped by one run without egress...
    let mut without = vec!["run", "--no-egress", "--iface", Link::IFACE_B, "--interval", "200ms"];
    without.extend(pinned);
    let (status, log) = Agent::start_net_only(&link.b, &without).stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("egress is off: detached the egress link"), "{log}");
    assert!(!egress_pin.exists() && !watch.is_attached(), "egress gone, XDP left");
    assert!(link.xdp_attached());
    // ...and, pinned again, removed with the rest by `vigil detach`.
    let (status, log) = Agent::start_net_only(&link.b, &run_args(&out_arg, &pinned)).stop();
    assert!(status.success(), "{log}");
    let watch = LinkWatch::open(&egress_pin).expect("pinned again");
    let detach = vigil(&link, &["detach", "--pin-dir", pins.arg()]);
    let said = String::from_utf8_lossy(&detach.stdout);
    assert!(detach.status.success() && said.contains("link_egress"), "{said}");
    assert!(!watch.is_attached() && !egress_pin.exists());
    assert!(!link.xdp_attached());
}

/// Asserts the agent's log so far has a line containing `needle`.
fn agent_log_has(agent: &Agent, needle: &str) {
    let log = agent.log();
    assert!(log.contains(needle), "no `{needle}` in\n{log}");
}
