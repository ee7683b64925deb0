//! The real `vigil` binary attached to a veth in a fresh namespace, with real TCP and UDP
//! traffic from a peer namespace. Its flow records must match, packet for packet and byte for
//! byte, what an independent `AF_PACKET` witness saw arrive on the same interface.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::Duration,
};

use vigil::flows::{EndReason, FlowRecord};
use vigil_tests::{
    agent::{Agent, TempDir, read_records},
    capture::Capture,
    netns::{Link, sh},
    packets::flags,
    require_root,
};

const UDP_PORT: u16 = 9999;
const TCP_PORT: u16 = 8080;

/// What the witness saw of one IPv4 5-tuple.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) packets: u64,
    pub(crate) bytes: u64,
    pub(crate) syn: u32,
    pub(crate) fin: u32,
    pub(crate) rst: u32,
    pub(crate) ack: u32,
}

pub(crate) type Tuple = ([u8; 4], [u8; 4], u16, u16, u8);

/// Tallies captured IPv4 frames by 5-tuple, parsed independently of the sensor's parser.
pub(crate) fn tally(frames: &[Vec<u8>]) -> HashMap<Tuple, Seen> {
    let mut seen: HashMap<Tuple, Seen> = HashMap::new();
    for f in frames {
        if f.len() < 34 || f[12..14] != [0x08, 0x00] {
            continue;
        }
        let ihl = usize::from(f[14] & 0x0f) * 4;
        let proto = f[23];
        let src = [f[26], f[27], f[28], f[29]];
        let dst = [f[30], f[31], f[32], f[33]];
        let l4 = 14 + ihl;
        let (sport, dport) = match proto {
            6 | 17 => (u16::from_be_bytes([f[l4], f[l4 + 1]]), u16::from_be_bytes([f[l4 + 2], f[l4 + 3]])),
            _ => (0, 0),
        };
        let s = seen.entry((src, dst, sport, dport, proto)).or_default();
        s.packets += 1;
        s.bytes += f.len() as u64;
        if proto == 6 {
            let fl = f[l4 + 13];
            s.syn += u32::from(fl & flags::SYN != 0 && fl & flags::ACK == 0);
            s.fin += u32::from(fl & flags::FIN != 0);
            s.rst += u32::from(fl & flags::RST != 0);
            s.ack += u32::from(fl & flags::ACK != 0);
        }
    }
    seen
}

/// Sums the records of one 5-tuple (a flow may span several records).
pub(crate) fn recorded(records: &[FlowRecord], t: Tuple) -> (Seen, Vec<EndReason>) {
    let mut s = Seen::default();
    let mut reasons = Vec::new();
    for r in records.iter().filter(|r| {
        r.src_ip == std::net::IpAddr::from(t.0)
            && r.dst_ip == std::net::IpAddr::from(t.1)
            && r.src_port == t.2
            && r.dst_port == t.3
            && r.protocol == t.4
    }) {
        s.packets += r.packets;
        s.bytes += r.bytes;
        s.syn += r.tcp_flags.syn;
        s.fin += r.tcp_flags.fin;
        s.rst += r.tcp_flags.rst;
        s.ack += r.tcp_flags.ack;
        reasons.push(r.end_reason);
    }
    (s, reasons)
}

/// Turns off offloads that would make the witness see merged frames the sensor saw apart.
pub(crate) fn no_offloads(link: &Link) {
    sh(link.b.command("ethtool").args(["-K", Link::IFACE_B, "gro", "off"]));
    sh(link.a.command("ethtool").args(["-K", Link::IFACE_A, "tso", "off", "gso", "off"]));
}

/// A TCP server in `ns` on `addr:port` that echoes one connection back and returns how many
/// bytes it echoed; listening when this returns.
pub(crate) fn tcp_echo(
    ns: &vigil_tests::netns::Netns,
    addr: &'static str,
    port: u16,
) -> std::thread::JoinHandle<usize> {
    let (ready_tx, ready) = mpsc::channel();
    let echo = ns.spawn(move || {
        let listener = TcpListener::bind((addr, port)).expect("bind tcp");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).expect("nodelay");
        let mut buf = [0u8; 4096];
        let mut echoed = 0;
        loop {
            let n = conn.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            conn.write_all(&buf[..n]).expect("echo");
            echoed += n;
        }
        echoed
    });
    ready.recv().expect("echo server");
    echo
}

/// A UDP sink in B that counts datagrams until `n` arrive or 5 s pass.
fn udp_sink(link: &Link, n: usize) -> std::thread::JoinHandle<usize> {
    link.b.udp_sink("10.200.0.2", UDP_PORT, n, Duration::from_secs(5))
}

#[test]
fn live_tcp_and_udp_flows_match_the_wire_exactly() {
    let log = flows_match_the_wire("native");
    assert!(!log.contains("SKB mode"), "no SKB-mode warning in native mode:\n{log}");
}

/// In SKB mode, with GRO off as docs/config.md advises, the counts are as exact as in native
/// mode, and the agent warns about receive offload.
#[test]
fn skb_mode_counts_exactly_with_gro_off_and_warns_about_receive_offload() {
    let log = flows_match_the_wire("skb");
    assert!(log.contains("mode=skb"), "attached in SKB mode:\n{log}");
    assert!(
        log.contains("SKB mode sees packets after receive offload") && log.contains("gro off"),
        "the SKB-mode warning names the trap and the fix:\n{log}"
    );
}

/// Runs the agent in `mode` on B while A sends UDP and a TCP echo exchange, checks every flow
/// record against the witness, and returns the agent's log.
fn flows_match_the_wire(mode: &str) -> String {
    require_root();
    let link = Link::new("live");
    no_offloads(&link);
    let dir = TempDir::new("live");
    let out = dir.path().join("flows.jsonl");

    let sink = udp_sink(&link, 20);
    let echo = tcp_echo(&link.b, "10.200.0.2", TCP_PORT);

    let agent = Agent::start(
        &link.b,
        &[
            "run",
            "--no-pin",
            "--iface",
            Link::IFACE_B,
            "--xdp-mode",
            mode,
            "--interval",
            "200ms",
            "--flows-out",
            out.to_str().unwrap(),
        ],
    );
    let capture = Capture::start(&link.b, Link::IFACE_B);

    let tcp_port = link.a.run(|| {
        let udp = UdpSocket::bind(("10.200.0.1", 40001)).expect("bind");
        for i in 0..20u8 {
            udp.send_to(&[i; 100], ("10.200.0.2", UDP_PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut tcp =
            TcpStream::connect_timeout(&SocketAddr::from(([10, 200, 0, 2], TCP_PORT)), Duration::from_secs(5))
                .expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 300];
        for round in 0..5u8 {
            tcp.write_all(&[round; 300]).expect("write");
            tcp.read_exact(&mut buf).expect("echo");
            assert_eq!(buf, [round; 300]);
        }
        let port = tcp.local_addr().expect("addr").port();
        drop(tcp);
        port
    });
    assert_eq!(sink.join().expect("sink"), 20, "B received every datagram");
    assert_eq!(echo.join().expect("echo"), 1500);
    std::thread::sleep(Duration::from_millis(500));
    let frames = capture.stop();
    let (status, log) = agent.stop();
    assert!(status.success(), "vigil exited with {status}; log:\n{log}");

    let records = read_records(&out);
    let witness = tally(&frames);
    let udp = ([10, 200, 0, 1], [10, 200, 0, 2], 40001, UDP_PORT, 17);
    let tcp = ([10, 200, 0, 1], [10, 200, 0, 2], tcp_port, TCP_PORT, 6);

    let (got, reasons) = recorded(&records, udp);
    assert_eq!(witness[&udp].packets, 20);
    assert_eq!(got, witness[&udp], "UDP flow vs the wire");
    assert_eq!(got.bytes, 20 * (14 + 20 + 8 + 100), "UDP bytes are Ethernet frame bytes");
    assert_eq!(reasons, [EndReason::Shutdown]);

    let (got, reasons) = recorded(&records, tcp);
    let wire = witness[&tcp];
    assert_eq!(got, wire, "TCP flow vs the wire");
    assert_eq!((got.syn, got.fin, got.rst), (1, 1, 0), "one handshake, one close");
    assert!(got.packets >= 8, "handshake, 5 requests, close: {got:?}");
    assert_eq!(reasons, [EndReason::Shutdown]);

    // Every IPv4 5-tuple the witness saw arriving is in the records, with the same counts.
    for (t, seen) in &witness {
        assert_eq!(recorded(&records, *t).0, *seen, "flow {t:?}");
    }
    let tcp_record = records.iter().find(|r| r.src_port == tcp_port).expect("tcp record");
    assert!(tcp_record.last_seen_ns >= tcp_record.first_seen_ns);
    assert!(tcp_record.iat_max_ns.is_some());
    assert_eq!((tcp_record.ttl_min, tcp_record.ttl_max), (64, 64));
    log
}

#[test]
fn idle_and_active_timeouts_export_while_running() {
    require_root();
    let link = Link::new("timeouts");
    let dir = TempDir::new("timeouts");
    let out = dir.path().join("flows.jsonl");
    let sink = udp_sink(&link, 30);
    let agent = Agent::start(
        &link.b,
        &[
            "run",
            "--no-pin",
            "--iface",
            Link::IFACE_B,
            "--interval",
            "100ms",
            "--idle-timeout",
            "1s",
            "--active-timeout",
            "1s",
            "--flows-out",
            out.to_str().unwrap(),
        ],
    );
    // A steady flow for ~2.5 s (split by the active timeout), then a short burst on another
    // port that goes idle.
    link.a.run(|| {
        let steady = UdpSocket::bind(("10.200.0.1", 41000)).expect("bind");
        for _ in 0..25 {
            steady.send_to(&[0; 10], ("10.200.0.2", UDP_PORT)).expect("send");
            std::thread::sleep(Duration::from_millis(100));
        }
        let burst = UdpSocket::bind(("10.200.0.1", 41001)).expect("bind");
        for _ in 0..5 {
            burst.send_to(&[0; 10], ("10.200.0.2", UDP_PORT)).expect("send");
        }
    });
    assert_eq!(sink.join().expect("sink"), 30);
    std::thread::sleep(Duration::from_millis(1800));
    // Read while the agent still runs: the idle record must already be there.
    let running = read_records(&out);
    let burst: Vec<&FlowRecord> = running.iter().filter(|r| r.src_port == 41001).collect();
    assert_eq!(burst.len(), 1, "burst exported on idle: {running:?}");
    assert_eq!((burst[0].packets, burst[0].end_reason), (5, EndReason::Idle));
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");

    let records = read_records(&out);
    let steady: Vec<&FlowRecord> = records.iter().filter(|r| r.src_port == 41000).collect();
    assert!(steady.iter().filter(|r| r.end_reason == EndReason::Active).count() >= 2, "{steady:?}");
    assert_eq!(steady.iter().map(|r| r.packets).sum::<u64>(), 25, "no packet lost across records: {steady:?}");
    for pair in steady.windows(2) {
        assert!(pair[0].last_seen_ns < pair[1].first_seen_ns, "records do not overlap");
    }
}

#[test]
fn bad_input_fails_cleanly_with_nothing_attached() {
    require_root();
    let link = Link::new("bad");
    let run = |args: &[&str]| {
        let out = link.b.command(vigil_tests::agent::vigil_bin().to_str().unwrap()).args(args).output().expect("vigil");
        (out.status, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (status, stderr) = run(&["run", "--iface", "nosuch0"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interface `nosuch0` does not exist"), "{stderr}");
    assert_eq!(stderr.lines().filter(|l| l.contains("error")).count(), 1, "one error line: {stderr}");

    let (status, stderr) = run(&["run", "--iface", Link::IFACE_B, "--flows-out", "/nonexistent/dir/f.jsonl"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/dir/f.jsonl"), "{stderr}");
    assert!(!link.xdp_attached(), "nothing left attached");

    let (status, stderr) = run(&["run", "--iface", Link::IFACE_B, "--flow-capacity", "0"]);
    assert_eq!(status.code(), Some(2), "clap rejects it: {stderr}");
    let (status, stderr) = run(&["run", "--iface", Link::IFACE_B, "--interval", "soon"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(!link.xdp_attached());
}

#[test]
fn sigterm_detaches_and_flushes() {
    require_root();
    let link = Link::new("term");
    let dir = TempDir::new("term");
    let out = dir.path().join("flows.jsonl");
    let sink = udp_sink(&link, 3);
    let agent =
        Agent::start(&link.b, &["run", "--no-pin", "--iface", Link::IFACE_B, "--flows-out", out.to_str().unwrap()]);
    assert!(link.xdp_attached());
    link.a.run(|| {
        let s = UdpSocket::bind(("10.200.0.1", 42000)).expect("bind");
        for _ in 0..3 {
            s.send_to(b"x", ("10.200.0.2", UDP_PORT)).expect("send");
        }
    });
    assert_eq!(sink.join().expect("sink"), 3);
    let (status, log) = agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(log.contains("signal=\"SIGTERM\""), "{log}");
    assert!(log.contains("XDP sensor detached"), "{log}");
    assert!(!link.xdp_attached(), "detached on exit");
    let records = read_records(&out);
    let r = records.iter().find(|r| r.src_port == 42000).expect("flushed record");
    assert_eq!((r.packets, r.end_reason), (3, EndReason::Shutdown));
}
