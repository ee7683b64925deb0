//! Evasion on live traffic: a blocked IPv6 source hiding behind a long extension header, and a
//! SYN scan in tiny fragments (`nmap -f`). Needs root; namespaces only.

use std::{
    net::{Ipv6Addr, SocketAddrV6, TcpListener},
    sync::mpsc,
    time::Duration,
};

use vigil::{
    block::{Blocklist, rules::Origin},
    sensor::{AttachMode, Sensor, SensorOptions},
};
use vigil_tests::{
    lab::{ATTACKER, Lab, VICTIM, is_alert},
    netns::Link,
    require_root,
};

const PORT: u16 = 8081;
/// `IPV6_DSTOPTS` from `linux/in6.h`: a sticky Destination Options header on every packet.
const IPV6_DSTOPTS: libc::c_int = 59;

/// A 1040-byte Destination Options header (length field 129) the kernel accepts: five unknown
/// options of the "skip" kind (type 0x1e), since Linux refuses more than 7 bytes of padding.
fn long_dest_opts() -> Vec<u8> {
    let mut h = vec![0, 129];
    for len in [255u8, 255, 255, 255, 8] {
        h.extend_from_slice(&[0x1e, len]);
        h.extend(std::iter::repeat_n(0, usize::from(len)));
    }
    assert_eq!(h.len(), 1040);
    h
}

/// A TCP connect from `[fd00:200::1]` to `[fd00:200::2]:PORT`, its SYN carrying `dest_opts`;
/// whether the handshake completed within `timeout` (run inside A's namespace).
fn connect_with(dest_opts: Option<&[u8]>, timeout: Duration) -> bool {
    // SAFETY: plain socket calls on a descriptor this function owns and closes; every pointer
    // passed lives for the call and its length is passed with it.
    unsafe {
        let fd = libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        if let Some(opts) = dest_opts {
            let ret = libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                IPV6_DSTOPTS,
                opts.as_ptr().cast(),
                libc::socklen_t::try_from(opts.len()).unwrap(),
            );
            assert_eq!(ret, 0, "IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap(),
            tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
        };
        let ret = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(std::mem::size_of_val(&tv)).unwrap(),
        );
        assert_eq!(ret, 0);
        let dst = SocketAddrV6::new("fd00:200::2".parse::<Ipv6Addr>().unwrap(), PORT, 0, 0);
        let sa = libc::sockaddr_in6 {
            sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap(),
            sin6_port: dst.port().to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr { s6_addr: dst.ip().octets() },
            sin6_scope_id: 0,
        };
        let ret =
            libc::connect(fd, (&raw const sa).cast(), libc::socklen_t::try_from(std::mem::size_of_val(&sa)).unwrap());
        libc::close(fd);
        ret == 0
    }
}

#[test]
fn a_blocked_ipv6_source_behind_a_long_destination_options_header_gets_no_syn_ack() {
    require_root();
    let link = Link::new("dstopt");
    let server = link.b.spawn(|| {
        let listener = TcpListener::bind(("fd00:200::2", PORT)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        // Accept whatever completes for 12 s, then stop.
        let deadline = std::time::Instant::now() + Duration::from_secs(12);
        let mut accepted = 0;
        while std::time::Instant::now() < deadline {
            if listener.accept().is_ok() {
                accepted += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        accepted
    });
    std::thread::sleep(Duration::from_millis(200));
    // The kernel's own stack accepts such SYNs: without a rule the handshake completes.
    assert!(link.a.run(|| connect_with(Some(&long_dest_opts()), Duration::from_secs(2))), "baseline handshake");

    let (tx, rx) = mpsc::channel::<()>();
    let (ready_tx, ready) = mpsc::channel();
    let holder = link.b.spawn(move || {
        let mut sensor = Sensor::load(&SensorOptions::default()).expect("load");
        sensor.attach(Link::IFACE_B, AttachMode::Native).expect("attach");
        Blocklist::from_ebpf(sensor.ebpf_mut())
            .expect("blocklist")
            .add("fd00:200::1/128".parse().unwrap(), Duration::from_mins(1), Origin::Manual)
            .expect("add rule");
        ready_tx.send(()).expect("ready");
        rx.recv().expect("stop");
        sensor.counters().expect("counters")
    });
    ready.recv().expect("sensor ready");
    let with_header = link.a.run(|| connect_with(Some(&long_dest_opts()), Duration::from_secs(2)));
    let plain = link.a.run(|| connect_with(None, Duration::from_secs(1)));
    tx.send(()).expect("stop");
    let counters = holder.join().expect("sensor thread");
    assert!(!with_header, "a blocked source completed a handshake behind a 1040-byte header");
    assert!(!plain, "a blocked source completed a plain handshake");
    assert!(counters.blocklist_drops >= 2, "{counters:?}");
    assert_eq!(counters.malformed_total(), 0, "dropped before the header was walked: {counters:?}");
    assert_eq!(server.join().expect("server"), 1, "only the baseline handshake was accepted");
}

#[test]
fn a_fragmented_syn_scan_raises_an_alert_naming_the_scanner() {
    require_root();
    let mut lab = Lab::new("frag");
    lab.start_victim_services();
    let _agent = lab.agent("");
    // `-f`: every probe split into 8-byte fragments (the first carries only the ports).
    let mut scan = lab
        .attacker
        .command("timeout")
        .args(["60", "nmap", "-f", "-sS", "-T4", "-Pn", "-n", "-p", "1-2000", VICTIM])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("nmap");
    let alert = lab.wait_event("alert naming the fragmenting scanner", Duration::from_secs(15), |e| {
        is_alert(e) && e["source"]["ip"].as_str() == Some(ATTACKER)
    });
    assert!(alert["vigil"]["counts"]["destination_ports"].as_u64().unwrap() >= 20, "{alert:#}");
    scan.wait().expect("nmap");
}
