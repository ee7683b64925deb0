//! Packets per second through a veth pair with the sensor attached in native mode, next to no
//! program and an empty `XDP_PASS` program measured in the same run; then a spoofed-source
//! flood (a new flow every packet) against the real agent. Needs root.
//!
//! The sender is an `AF_PACKET` socket on `veth-a` in one namespace sending 60-byte UDP/IPv4
//! frames (64 on a wire with the FCS) in `sendmmsg` batches from a thread pinned to one CPU;
//! the program sits on `veth-b` in the other namespace. Without a qdisc the receive side runs
//! in the sender's softirq on the same CPU, so the rate is the per-packet cost of sending,
//! the XDP program and the stack together. What arrived is `veth-b`'s `rx_packets` over each
//! round; with the sensor, its own packet counter must agree, so the bench cannot pass while
//! measuring nothing. The cases are interleaved round by round so drift hits them alike. A
//! last short round per program reads the kernel's BPF run-time statistics: the program's own
//! ns per packet in place, caches as the stack leaves them.
//!
//! The flood runs `vigil run` with a small flow table (far fewer entries than sources sent) and
//! reports what the LRU table, the harvest cycle and the agent's memory did meanwhile;
//! `cargo bench -p vigil-tests --bench linerate -- flood` runs it alone.
#![expect(clippy::cast_precision_loss, reason = "packet counts and rates printed as floats")]

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use agent_common::maps::{PROGRAM, PROGRAM_EMPTY};
use aya::{
    programs::{XdpMode, xdp::XdpLinkId},
    sys::{Stats, enable_stats},
};
use nix::sys::signal::Signal;
use serde_json::Value;
use vigil::sensor::{Sensor, SensorOptions};
use vigil_tests::{
    agent::{Agent, TempDir, vigil_bin},
    bench::{machine, median_f64, report, sender_cpu, usage},
    blast::{Blaster, LinkStats, Sent, link_mac, link_stats, pin_thread, renice_thread},
    netns::{Link, sh},
    packets::{Pkt, checksum},
};

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(1500);
/// The round with BPF run-time statistics on, per program.
const STATS_ROUND: Duration = Duration::from_secs(1);
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;
/// Distinct UDP flows (source ports) of the rate cases.
const FLOWS: u16 = 16;
/// Ethernet + IPv4 + UDP headers (42 bytes) and 18 bytes of payload.
const FRAME_LEN: usize = 60;
/// Bound on the frames of one send, whatever the clock says.
const MAX_FRAMES: u64 = 100_000_000;
const TARGET: f64 = 0.90;
/// The rate sender's nice value: other tasks on its CPU (the machine may be shared) take
/// little time from it, so rounds differ less. The receive work runs inline in its softirqs.
const SENDER_NICE: i32 = -20;

const FLOOD: Duration = Duration::from_secs(10);
/// Sources are 10.0.0.0/8 counted up (the source port too past 2^24 frames); this bounds the
/// flood's frame count.
const FLOOD_MAX_FRAMES: u64 = 50_000_000;
const FLOOD_CAPACITY: u32 = 65_536;
const INTERVAL: Duration = Duration::from_secs(1);
/// How long to wait after the flood for a harvest that includes all of it.
const RECOVERY: Duration = Duration::from_secs(30);
const METRICS_PORT: u16 = 9464;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    NoProgram,
    Empty,
    Vigil,
}

impl Case {
    const ALL: [Self; 3] = [Self::NoProgram, Self::Empty, Self::Vigil];

    const fn name(self) -> &'static str {
        match self {
            Self::NoProgram => "no program",
            Self::Empty => "empty XDP (`vigil_pass`)",
            Self::Vigil => "Vigil sensor",
        }
    }
}

/// One round of one case.
struct Round {
    sent: Sent,
    /// veth-b's counters over the round.
    b: LinkStats,
    /// veth-a's counters over the round.
    a: LinkStats,
}

impl Round {
    fn pps(&self) -> f64 {
        self.b.rx_packets as f64 / self.sent.elapsed.as_secs_f64()
    }

    /// Packets received per second of the sender thread's CPU time.
    fn cpu_pps(&self) -> f64 {
        self.b.rx_packets as f64 / self.sent.cpu.as_secs_f64()
    }
}

fn with_macs(mut frame: Vec<u8>, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// One batch of frames cycling over `FLOWS` source ports, A to B.
fn rate_frames(mac_a: [u8; 6], mac_b: [u8; 6]) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let sport = 40_000 + u16::try_from(i).expect("batch index") % FLOWS;
            let f = Pkt::udp4(Link::A_V4, Link::B_V4, sport, 9, FRAME_LEN - 42).build();
            assert_eq!(f.len(), FRAME_LEN);
            with_macs(f, mac_a, mac_b)
        })
        .collect()
}

/// Sends from a thread in A pinned to [`sender_cpu`] at `nice`: `frames` until `duration`
/// passed or `max` frames went, `refill` rewriting them before each call.
fn blast(
    link: &Link,
    mut frames: Vec<Vec<u8>>,
    duration: Duration,
    max: u64,
    nice: i32,
    refill: impl FnMut(&mut [Vec<u8>]) + Send + 'static,
) -> std::thread::JoinHandle<Sent> {
    let cpu = sender_cpu();
    link.a.spawn(move || {
        pin_thread(cpu);
        renice_thread(nice);
        let sender = Blaster::open(Link::IFACE_A).expect("AF_PACKET socket on veth-a");
        sender.send(&mut frames, duration, max, refill).expect("sendmmsg")
    })
}

/// Attaches `program` of `sensor` to veth-b in native mode, from a thread inside B (the
/// interface is looked up by name in the caller's namespace).
fn attach(link: &Link, mut sensor: Sensor, program: &'static str) -> (Sensor, XdpLinkId) {
    link.b.run(move || {
        let id = sensor
            .program_mut(program)
            .expect("program")
            .attach(Link::IFACE_B, XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attaching {program} natively to veth-b: {e}"));
        (sensor, id)
    })
}

fn detach(sensor: &mut Sensor, program: &'static str, id: XdpLinkId) {
    sensor.program_mut(program).expect("program").detach(id).expect("detach");
}

/// Sends for `duration` and reads both ends' counters around it.
fn round(link: &Link, frames: &[Vec<u8>], duration: Duration) -> Round {
    let (a0, b0) = (link_stats(&link.a, Link::IFACE_A), link_stats(&link.b, Link::IFACE_B));
    let sent = blast(link, frames.to_vec(), duration, MAX_FRAMES, SENDER_NICE, |_| {}).join().expect("sender");
    // Let the receive ring drain before reading the counters.
    std::thread::sleep(Duration::from_millis(50));
    let (a1, b1) = (link_stats(&link.a, Link::IFACE_A), link_stats(&link.b, Link::IFACE_B));
    let r = Round { sent, b: b1.since(&b0), a: a1.since(&a0) };
    assert!(
        r.sent.frames > 0 && r.b.rx_packets > 0 && !r.sent.cpu.is_zero(),
        "nothing sent or received: {:?} {:?}",
        r.sent,
        r.b
    );
    r
}

/// One round with `program` of `sensor` attached; for the sensor, checks its counters saw
/// what veth-b received.
fn round_with(link: &Link, frames: &[Vec<u8>], slot: &mut Option<Sensor>, program: &'static str) -> Round {
    let (mut sensor, id) = attach(link, slot.take().expect("sensor"), program);
    let before = sensor.counters().expect("counters");
    let r = round(link, frames, ROUND);
    detach(&mut sensor, program, id);
    let after = sensor.counters().expect("counters");
    let (seen, udp, rx) =
        (after.packets - before.packets, after.proto_packets[1] - before.proto_packets[1], r.b.rx_packets);
    if program == PROGRAM {
        assert!(
            seen.abs_diff(rx) as f64 <= 0.02 * rx as f64 + 50.0,
            "the sensor counted {seen} packets, veth-b received {rx}"
        );
        assert!(udp as f64 >= 0.98 * rx as f64, "{udp} UDP packets counted of {rx}");
    } else {
        assert_eq!(seen, 0, "the empty program counts nothing");
    }
    *slot = Some(sensor);
    r
}

/// The program's mean run time per packet in place, from the kernel's BPF statistics over one
/// short round.
fn ns_in_program(link: &Link, frames: &[Vec<u8>], slot: &mut Option<Sensor>, program: &'static str) -> f64 {
    let (mut sensor, id) = attach(link, slot.take().expect("sensor"), program);
    let stats = enable_stats(Stats::RunTime).expect("BPF_ENABLE_STATS");
    let info = |s: &mut Sensor| s.program_mut(program).expect("program").info().expect("program info");
    let before = info(&mut sensor);
    let _ = round(link, frames, STATS_ROUND);
    let after = info(&mut sensor);
    drop(stats);
    detach(&mut sensor, program, id);
    *slot = Some(sensor);
    let runs = after.run_count() - before.run_count();
    assert!(runs > 0, "{program} never ran");
    after.run_time().saturating_sub(before.run_time()).as_nanos() as f64 / runs as f64
}

fn no_offloads(link: &Link) {
    for (ns, iface) in [(&link.a, Link::IFACE_A), (&link.b, Link::IFACE_B)] {
        sh(ns.command("ethtool").args(["-K", iface, "tso", "off", "gso", "off", "gro", "off"]));
    }
}

/// Part 1: the three cases, `ROUNDS` rounds each, interleaved.
fn rates() -> String {
    let link = Link::new("lr");
    no_offloads(&link);
    let (mac_a, mac_b) = (link_mac(&link.a, Link::IFACE_A), link_mac(&link.b, Link::IFACE_B));
    let frames = rate_frames(mac_a, mac_b);
    let load = || Sensor::load(&SensorOptions::default()).expect("loading the sensor");
    // The empty program comes from an object of its own, so the sensor's maps see only its run.
    let (mut floor, mut vigil) = (Some(load()), Some(load()));
    let _warm_up = round(&link, &frames, Duration::from_secs(1));
    let mut rounds: Vec<(Case, Round)> = Vec::new();
    for _ in 0..ROUNDS {
        for case in Case::ALL {
            let r = match case {
                Case::NoProgram => round(&link, &frames, ROUND),
                Case::Empty => round_with(&link, &frames, &mut floor, PROGRAM_EMPTY),
                Case::Vigil => round_with(&link, &frames, &mut vigil, PROGRAM),
            };
            rounds.push((case, r));
        }
    }
    let ns_empty = ns_in_program(&link, &frames, &mut floor, PROGRAM_EMPTY);
    let ns_vigil = ns_in_program(&link, &frames, &mut vigil, PROGRAM);
    let counters = vigil.as_ref().expect("sensor").counters().expect("counters");

    let of = |case: Case| rounds.iter().filter(move |(c, _)| *c == case).map(|(_, r)| r);
    let pps = |case: Case| median_f64(of(case).map(Round::pps).collect());
    let cpu_pps = |case: Case| median_f64(of(case).map(Round::cpu_pps).collect());
    let (empty, empty_cpu) = (pps(Case::Empty), cpu_pps(Case::Empty));
    let (ratio, ratio_cpu) = (pps(Case::Vigil) / empty, cpu_pps(Case::Vigil) / empty_cpu);
    let rows: Vec<String> = Case::ALL
        .into_iter()
        .map(|case| {
            let per_round: Vec<String> = of(case).map(|r| format!("{:.3}", r.pps() / 1e6)).collect();
            let (sent, rx, a_drop, b_drop, refused) = of(case).fold((0, 0, 0, 0, 0), |t, r| {
                let (a, b) = (r.a.tx_dropped, r.b.rx_dropped);
                (t.0 + r.sent.frames, t.1 + r.b.rx_packets, t.2 + a, t.3 + b, t.4 + r.sent.refused)
            });
            let in_program = match case {
                Case::NoProgram => "–".to_owned(),
                Case::Empty => format!("{ns_empty:.0}"),
                Case::Vigil => format!("{ns_vigil:.0}"),
            };
            format!(
                "| {} | {:.3} | {} | {:.3} | {in_program} | {sent} | {} / {a_drop} / {b_drop} / {refused} | {:.2} | {:.2} |",
                case.name(),
                pps(case) / 1e6,
                per_round.join(", "),
                cpu_pps(case) / 1e6,
                sent.saturating_sub(rx),
                pps(case) / empty,
                cpu_pps(case) / empty_cpu,
            )
        })
        .collect();
    let verdict = |r: f64| if r >= TARGET { "met" } else { "NOT met" };
    [
        "### Line rate through a veth pair (native XDP)".to_owned(),
        String::new(),
        format!(
            "Machine: {}. Sender: `AF_PACKET` raw socket on veth-a (`PACKET_QDISC_BYPASS`, `sendmmsg` of {BATCH} \
             frames), one thread pinned to CPU {} at nice {SENDER_NICE}; {FRAME_LEN}-byte UDP/IPv4 frames (64 with \
             FCS), {FLOWS} flows, to veth-b in another namespace (no listener: the stack drops them after XDP); \
             offloads off; XDP in native mode. The receive side runs inline in the sender's softirqs on the same CPU, \
             so the sender thread's CPU time covers sending, XDP and the stack: Mpps per CPU-second is the rate of a \
             CPU of its own, insensitive to other load on the machine. {ROUNDS} rounds of {:.1} s per case, \
             interleaved; medians. Received = veth-b `rx_packets`. The sensor counted {} packets in {} flows over its \
             rounds, each round within 2% of veth-b's count. ns/packet in program: kernel BPF run-time statistics \
             over a separate {:.1} s round per program.",
            machine(),
            sender_cpu(),
            ROUND.as_secs_f64(),
            counters.packets,
            counters.flows_created,
            STATS_ROUND.as_secs_f64()
        ),
        String::new(),
        "| case | Mpps received | per round | Mpps per sender CPU-second | ns/packet in program | frames sent | not \
         received / veth-a tx_dropped / veth-b rx_dropped / refused sends | vs empty | vs empty (CPU) |"
            .to_owned(),
        "|---|---:|---|---:|---:|---:|---|---:|---:|".to_owned(),
        rows.join("\n"),
        String::new(),
        format!(
            "Target: Vigil keeps at least {:.0}% of the empty program's rate: {} ({:.1}% of packets received per \
             second; per CPU-second: {:.1}%, {}).",
            TARGET * 100.0,
            verdict(ratio),
            ratio * 100.0,
            ratio_cpu * 100.0,
            verdict(ratio_cpu),
        ),
        String::new(),
    ]
    .join("\n")
}

/// `GET /metrics` of the agent in B, parsed into (name with labels, value).
fn scrape(link: &Link) -> Vec<(String, f64)> {
    let body = link.b.run(|| {
        let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT)).expect("metrics endpoint");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("response");
        text
    });
    let (_, body) = body.split_once("\r\n\r\n").expect("HTTP response");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect()
}

fn metric(m: &[(String, f64)], name: &str) -> f64 {
    m.iter().find(|(k, _)| k == name).map_or_else(|| panic!("no metric {name}"), |(_, v)| *v)
}

/// One harvest cycle as the status file tells it: when it started, how long harvest and
/// scoring took, flows tracked.
struct Cycle {
    started: SystemTime,
    harvest_ms: f64,
    scoring_ms: f64,
    tracked: u64,
}

fn status(run_dir: &Path) -> Option<Cycle> {
    let v: Value = serde_json::from_slice(&std::fs::read(run_dir.join("status.json")).ok()?).ok()?;
    Some(Cycle {
        started: humantime::parse_rfc3339(v["updated"].as_str()?).ok()?,
        harvest_ms: v["last_harvest_ms"].as_f64()?,
        scoring_ms: v["last_scoring_ms"].as_f64()?,
        tracked: v["flows_tracked"].as_u64()?,
    })
}

/// Rewrites each frame with the next source address (and port, past 2^24), so every frame
/// starts a flow.
fn next_sources(next: &mut u64, frames: &mut [Vec<u8>]) {
    for f in frames {
        let n = *next;
        *next += 1;
        let addr = 0x0a00_0000 | u32::try_from(n & 0x00ff_ffff).expect("24 bits");
        let sport = 1024 + u16::try_from(n >> 24).expect("bounded by FLOOD_MAX_FRAMES");
        f[26..30].copy_from_slice(&addr.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[24..26].copy_from_slice(&[0, 0]);
        let sum = checksum(&f[14..34]);
        f[24..26].copy_from_slice(&sum.to_be_bytes());
    }
}

/// Samples the agent every 50 ms: new harvest cycles from the status file, and the largest RSS.
struct Sampler<'a> {
    run_dir: &'a Path,
    pid: u32,
    cycles: Vec<Cycle>,
    rss_max: u64,
}

impl Sampler<'_> {
    fn sample(&mut self) {
        if let Some(c) = status(self.run_dir)
            && self.cycles.last().is_none_or(|l| l.started != c.started)
        {
            self.cycles.push(c);
        }
        self.rss_max = self.rss_max.max(usage(self.pid).rss_kib);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn secs_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a).map_or(0.0, |d| d.as_secs_f64())
}

/// Part 2: the agent under a flood of new flows.
#[expect(clippy::too_many_lines, reason = "one scenario, measured and reported in order")]
fn flood() -> String {
    let link = Link::new("lrf");
    no_offloads(&link);
    let (mac_a, mac_b) = (link_mac(&link.a, Link::IFACE_A), link_mac(&link.b, Link::IFACE_B));
    let dir = TempDir::new("linerate");
    let run_dir: PathBuf = dir.path().join("run");
    let capacity = FLOOD_CAPACITY.to_string();
    let interval = humantime::format_duration(INTERVAL).to_string();
    let metrics_addr = format!("127.0.0.1:{METRICS_PORT}");
    let agent = Agent::start(
        &link.b,
        &[
            "run",
            "--iface",
            Link::IFACE_B,
            "--xdp-mode",
            "native",
            "--no-pin",
            "--flow-capacity",
            &capacity,
            "--interval",
            &interval,
            "--metrics",
            &metrics_addr,
            "--run-dir",
            run_dir.to_str().expect("utf-8"),
            "--store",
            dir.path().join("vigil.db").to_str().expect("utf-8"),
        ],
    );
    let pid = agent.pid();
    let mut s = Sampler { run_dir: &run_dir, pid, cycles: Vec::new(), rss_max: 0 };
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.cycles.is_empty() {
        assert!(Instant::now() < deadline, "no status file after 5 s; log:\n{}", agent.log());
        s.sample();
    }
    let u0 = usage(pid);
    let (rss0, ticks0) = (u0.rss_kib, u0.cpu_ticks);
    let m0 = scrape(&link);
    let b0 = link_stats(&link.b, Link::IFACE_B);

    let mut frame = Pkt::udp4([10, 0, 0, 1], Link::B_V4, 1024, 9, FRAME_LEN - 42).build();
    frame[40..42].copy_from_slice(&[0, 0]); // no UDP checksum: the sources change
    let frames = vec![with_macs(frame, mac_a, mac_b); BATCH];
    let mut next = 1u64;
    let flood_start = SystemTime::now();
    let sender = blast(&link, frames, FLOOD, FLOOD_MAX_FRAMES, 0, move |f| next_sources(&mut next, f));
    let hard_stop = Instant::now() + FLOOD + Duration::from_secs(10);
    while !sender.is_finished() && Instant::now() < hard_stop {
        s.sample();
    }
    let sent = sender.join().expect("flood sender");
    let flood_end = SystemTime::now();
    let ticks1 = usage(pid).cpu_ticks;
    let m1 = scrape(&link);
    // The counters and the flow count are published at each harvest: wait for one that
    // started after the flood, so they include all of it.
    let recovery = Instant::now() + RECOVERY;
    while s.cycles.last().is_none_or(|c| c.started < flood_end) && Instant::now() < recovery {
        s.sample();
    }
    let recovered = s.cycles.last().is_some_and(|c| c.started >= flood_end);
    let m2 = scrape(&link);
    let b1 = link_stats(&link.b, Link::IFACE_B);
    let u_end = usage(pid);
    let (rss_end, hwm) = (u_end.rss_kib, u_end.hwm_kib);
    let (exit, log) = agent.stop_with(Signal::SIGTERM);
    assert!(exit.success(), "vigil exited with {exit}; log:\n{log}");

    let d = |m: &[(String, f64)], name: &str| metric(m, name) - metric(&m0, name);
    let rx = b1.since(&b0).rx_packets;
    let packets = d(&m2, "vigil_packets_total");
    let created = d(&m2, "vigil_flows_created_total");
    assert!(rx > 0 && sent.frames > 0, "nothing sent or received: {sent:?}, rx {rx}");
    if recovered {
        assert!(
            (packets - rx as f64).abs() <= 0.02 * rx as f64 + 100.0,
            "the sensor counted {packets} packets, veth-b received {rx}"
        );
        assert!(created >= 0.9 * packets, "{created} flows created for {packets} packets of distinct sources");
    }
    let failures = d(&m2, "vigil_flow_insert_failures_total");
    let evicted = d(&m2, "vigil_flow_evictions_total");
    let tracked = metric(&m2, "vigil_flows_tracked");
    let fill = metric(&m2, "vigil_flow_table_fill_ratio");
    let harvests = d(&m1, "vigil_harvest_duration_seconds_count");
    let harvest_sum = d(&m1, "vigil_harvest_duration_seconds_sum");
    let flood_secs = secs_between(flood_start, flood_end);
    let cycles = &s.cycles;
    let tracked_max = cycles.iter().map(|c| c.tracked).max().unwrap_or(0);
    let in_flood = cycles.iter().filter(|c| c.started >= flood_start && c.started <= flood_end).count();
    // Gaps between harvest starts from the last one before the flood; while waiting for the
    // first after it, the time since the last start is a gap too.
    let mut gaps: Vec<(f64, &Cycle)> =
        cycles.windows(2).map(|w| (secs_between(w[0].started, w[1].started), &w[0])).collect();
    if !recovered && let Some(last) = cycles.last() {
        gaps.push((secs_between(last.started, SystemTime::now()), last));
    }
    let (max_gap, slowest) = gaps.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).expect("two harvests");
    let max_harvest = cycles.iter().map(|c| c.harvest_ms).fold(0.0, f64::max);
    let max_scoring = cycles.iter().map(|c| c.scoring_ms).fold(0.0, f64::max);
    let first_after = cycles.iter().find(|c| c.started >= flood_end).map(|c| secs_between(flood_end, c.started));
    let clk = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let cpu = (ticks1 - ticks0) as f64 / clk / flood_secs * 100.0;
    let kept = max_gap <= 1.5 * INTERVAL.as_secs_f64();
    let mb = |kib: u64| kib as f64 / 1024.0;
    let row = |what: &str, value: String| format!("| {what} | {value} |");
    let counted = if recovered {
        format!("{packets:.0}")
    } else {
        format!("{packets:.0} (last harvest before the end of the flood)")
    };
    [
        "### Spoofed-source flood against the agent (new flow every packet)".to_owned(),
        String::new(),
        format!(
            "`vigil run --xdp-mode native --no-pin --flow-capacity {FLOOD_CAPACITY} --interval {interval}` on veth-b \
             (default model, block mode off, idle timeout 15 s, alerts to the default stdout sink, discarded). The same \
             sender (at nice 0 here) sends {FRAME_LEN}-byte UDP frames from 10.0.0.0/8 counted up, a new source per frame, for \
             {flood_secs:.1} s. Harvest times: the status file's `updated` (start of each cycle), sampled every 50 ms; \
             counters from `/metrics` at the first harvest that started after the flood."
        ),
        String::new(),
        "| measure | value |".to_owned(),
        "|---|---:|".to_owned(),
        row(
            "frames sent (= distinct sources)",
            format!("{} ({:.2} Mpps)", sent.frames, sent.frames as f64 / flood_secs / 1e6),
        ),
        row("received on veth-b / counted by the sensor", format!("{rx} / {counted}")),
        row(
            "flows created (kernel counter) / capacity",
            format!("{created:.0} / {FLOOD_CAPACITY} ({:.0}x)", created / f64::from(FLOOD_CAPACITY)),
        ),
        row("flow insert failures", format!("{failures:.0}")),
        row("LRU evictions derived by the agent (`vigil_flow_evictions_total`)", format!("{evicted:.0}")),
        row("flows tracked: max at a harvest / at the end", format!("{tracked_max} / {tracked:.0} (fill {fill:.2})")),
        row(
            "harvests started during the flood (expected ~1 per interval)",
            format!("{in_flood} in {flood_secs:.1} s (histogram count +{harvests:.0})"),
        ),
        row(
            "longest time between harvest starts",
            format!(
                "{max_gap:.1} s (that cycle: harvest {:.0} ms, scoring {:.0} ms)",
                slowest.harvest_ms, slowest.scoring_ms
            ),
        ),
        row(
            "first harvest after the flood started",
            first_after.map_or_else(|| format!("not within {} s", RECOVERY.as_secs()), |t| format!("{t:.1} s after it")),
        ),
        row(
            "harvest duration: mean during the flood / max",
            if harvests > 0.0 {
                format!("{:.1} ms / {max_harvest:.1} ms", harvest_sum / harvests * 1e3)
            } else {
                format!("none finished / {max_harvest:.1} ms")
            },
        ),
        row("scoring per cycle: max", format!("{max_scoring:.0} ms")),
        row(
            "agent RSS: before / max / after; peak (VmHWM)",
            format!("{:.0} / {:.0} / {:.0} MB; {:.0} MB", mb(rss0), mb(s.rss_max), mb(rss_end), mb(hwm)),
        ),
        row("agent CPU during the flood", format!("{cpu:.0}% of one core")),
        String::new(),
        format!(
            "LRU: {created:.0} flows created through a {FLOOD_CAPACITY}-entry table, at most {tracked_max} tracked. \
             Harvest interval ({interval}) kept through the flood (no gap over 1.5x): {}.",
            if kept { "yes" } else { "NO" }
        ),
        String::new(),
    ]
    .join("\n")
}

fn main() {
    vigil_tests::require_root();
    // `cargo bench -p vigil-tests --bench linerate -- flood` runs the flood alone.
    let flood_only = std::env::args().skip(1).any(|a| a == "flood");
    // Build the agent before anything is timed.
    let _ = vigil_bin();
    if !flood_only {
        report(&rates());
    }
    report(&flood());
}
