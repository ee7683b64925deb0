//! Both hooks on one path, measured against both hooks empty in the same run. Needs root.
//!
//! Part 1, packets forwarded through the host: B (the protected host) routes A's frames to an
//! address behind A back out of the same veth, so every packet passes B's XDP program on the way
//! in and its TC egress program on the way out. The sender is an `AF_PACKET` socket on veth-a
//! pinned to one CPU; the receive, the forwarding and the transmit back to A run inline in its
//! softirqs on that CPU, so Mpps per sender CPU-second is the whole path's cost. Cases,
//! interleaved round by round: no program, both hooks empty (`vigil_pass` + `vigil_egress_pass`),
//! both hooks of the sensor. Delivered = veth-a `rx_packets` (what came back).
//!
//! Part 2, TCP throughput: iperf3 between the namespaces, B uploading to A and downloading from
//! it, with no agent, with both hooks empty, and with `vigil run --egress` on B, its XDP program
//! once in native mode and once in SKB (generic) mode; offloads as the kernel sets them (TSO,
//! GRO on). Rounds alternate.
#![expect(clippy::cast_precision_loss, reason = "packet counts and rates printed as floats")]

use std::time::Duration;

use agent_common::{
    counters::Direction,
    maps::{PROGRAM, PROGRAM_EGRESS, PROGRAM_EGRESS_EMPTY, PROGRAM_EMPTY},
};
use aya::programs::{LinkOrder, TcAttachType, XdpMode, tc::TcAttachOptions};
use vigil::sensor::{Sensor, SensorOptions};
use vigil_tests::{
    agent::{Agent, TempDir},
    bench::{machine, median_f64, report, sender_cpu},
    blast::{Blaster, LinkStats, Sent, link_mac, link_stats, pin_thread, renice_thread},
    netns::{Link, sh},
    packets::Pkt,
};

const ROUNDS: usize = 7;
const ROUND: Duration = Duration::from_millis(1500);
const BATCH: usize = 64;
const FLOWS: u16 = 16;
const FRAME_LEN: usize = 60;
const MAX_FRAMES: u64 = 100_000_000;
const SENDER_NICE: i32 = -20;
/// Where B forwards to: a network it routes via A.
const BEHIND_A: [u8; 4] = [10, 201, 0, 9];
const TARGET_RATE: f64 = 0.85;
const TARGET_TCP: f64 = 0.95;
const IPERF_SECONDS: u32 = 4;
const IPERF_ROUNDS: usize = 3;

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
            Self::Empty => "both hooks empty",
            Self::Vigil => "both hooks of the sensor",
        }
    }

    const fn programs(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::NoProgram => None,
            Self::Empty => Some((PROGRAM_EMPTY, PROGRAM_EGRESS_EMPTY)),
            Self::Vigil => Some((PROGRAM, PROGRAM_EGRESS)),
        }
    }
}

struct Round {
    sent: Sent,
    /// veth-a's counters over the round: what came back.
    a: LinkStats,
}

impl Round {
    fn pps(&self) -> f64 {
        self.a.rx_packets as f64 / self.sent.elapsed.as_secs_f64()
    }

    fn cpu_pps(&self) -> f64 {
        self.a.rx_packets as f64 / self.sent.cpu.as_secs_f64()
    }
}

/// B routes `BEHIND_A`'s network back through A, on the interface the frames came in by.
fn forwarding_link() -> Link {
    let link = Link::new("hk");
    for (ns, iface) in [(&link.a, Link::IFACE_A), (&link.b, Link::IFACE_B)] {
        sh(ns.command("ethtool").args(["-K", iface, "tso", "off", "gso", "off", "gro", "off"]));
    }
    sh(link.b.command("sysctl").args([
        "-qw",
        "net.ipv4.ip_forward=1",
        "net.ipv4.conf.all.send_redirects=0",
        &format!("net.ipv4.conf.{}.send_redirects=0", Link::IFACE_B),
    ]));
    link.b.ip(&["route", "add", "10.201.0.0/24", "via", "10.200.0.1", "dev", Link::IFACE_B]);
    link
}

fn frames(mac_a: [u8; 6], mac_b: [u8; 6]) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| {
            let sport = 40_000 + u16::try_from(i).expect("batch index") % FLOWS;
            let mut f = Pkt::udp4(Link::A_V4, BEHIND_A, sport, 9, FRAME_LEN - 42).build();
            f[..6].copy_from_slice(&mac_b);
            f[6..12].copy_from_slice(&mac_a);
            f
        })
        .collect()
}

fn round(link: &Link, frames: &[Vec<u8>], duration: Duration) -> Round {
    let a0 = link_stats(&link.a, Link::IFACE_A);
    let frames = frames.to_vec();
    let cpu = sender_cpu();
    let sent = link
        .a
        .spawn(move || {
            pin_thread(cpu);
            renice_thread(SENDER_NICE);
            let sender = Blaster::open(Link::IFACE_A).expect("AF_PACKET socket on veth-a");
            let mut frames = frames;
            sender.send(&mut frames, duration, MAX_FRAMES, |_| {}).expect("sendmmsg")
        })
        .join()
        .expect("sender");
    std::thread::sleep(Duration::from_millis(50));
    let r = Round { sent, a: link_stats(&link.a, Link::IFACE_A).since(&a0) };
    assert!(r.sent.frames > 0 && r.a.rx_packets > 0, "nothing forwarded back: {:?} {:?}", r.sent, r.a);
    r
}

type Attached = (aya::programs::xdp::XdpLinkId, aya::programs::tc::SchedClassifierLinkId);

/// Attaches XDP program `xdp` natively and TC program `tc` on egress (tcx) to veth-b, from
/// inside B.
fn attach(link: &Link, mut sensor: Sensor, (xdp, tc): (&'static str, &'static str)) -> (Sensor, Attached) {
    link.b.run(move || {
        let x = sensor.program_mut(xdp).expect("xdp").attach(Link::IFACE_B, XdpMode::Driver).expect("attach XDP");
        let t = sensor
            .egress_program(tc)
            .expect("tc")
            .attach_with_options(Link::IFACE_B, TcAttachType::Egress, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .expect("attach TC egress");
        (sensor, (x, t))
    })
}

fn detach(sensor: &mut Sensor, (xdp, tc): (&'static str, &'static str), (x, t): Attached) {
    sensor.program_mut(xdp).expect("xdp").detach(x).expect("detach XDP");
    sensor.egress_program(tc).expect("tc").detach(t).expect("detach TC");
}

/// One round with both programs of `case` attached to veth-b (XDP native, TC egress by tcx);
/// for the sensor, checks each hook counted what passed it.
fn round_with(link: &Link, frames: &[Vec<u8>], slot: &mut Option<Sensor>, case: Case) -> Round {
    let Some(programs) = case.programs() else { return round(link, frames, ROUND) };
    let (mut sensor, ids) = attach(link, slot.take().expect("sensor"), programs);
    let before = sensor.counters_by_direction().expect("counters");
    let r = round(link, frames, ROUND);
    detach(&mut sensor, programs, ids);
    let after = sensor.counters_by_direction().expect("counters");
    let seen = |d: Direction| after.of(d).packets - before.of(d).packets;
    if case == Case::Vigil {
        let (ingress, egress) = (seen(Direction::Ingress), seen(Direction::Egress));
        // veth-a also receives what B itself sends (ARP): within 2%, as for the egress count.
        assert!(ingress as f64 >= 0.98 * r.a.rx_packets as f64, "XDP counted {ingress}, {} came back", r.a.rx_packets);
        assert!(egress as f64 >= 0.98 * r.a.rx_packets as f64, "TC counted {egress}, {} came back", r.a.rx_packets);
    } else {
        assert_eq!(seen(Direction::Ingress) + seen(Direction::Egress), 0, "empty programs count nothing");
    }
    *slot = Some(sensor);
    r
}

/// Part 1.
fn forwarded() -> (String, f64) {
    let link = forwarding_link();
    let (mac_a, mac_b) = (link_mac(&link.a, Link::IFACE_A), link_mac(&link.b, Link::IFACE_B));
    let frames = frames(mac_a, mac_b);
    let load = || Sensor::load(&SensorOptions::default()).expect("loading the sensor");
    let (mut floor, mut vigil) = (Some(load()), Some(load()));
    let _warm_up = round(&link, &frames, Duration::from_secs(1));
    let mut rounds: Vec<(Case, Round)> = Vec::new();
    for _ in 0..ROUNDS {
        for case in Case::ALL {
            let slot = if case == Case::Vigil { &mut vigil } else { &mut floor };
            rounds.push((case, round_with(&link, &frames, slot, case)));
        }
    }
    let of = |case: Case| rounds.iter().filter(move |(c, _)| *c == case).map(|(_, r)| r);
    let pps = |case: Case| median_f64(of(case).map(Round::pps).collect());
    let cpu_pps = |case: Case| median_f64(of(case).map(Round::cpu_pps).collect());
    let (empty, empty_cpu) = (pps(Case::Empty), cpu_pps(Case::Empty));
    let rows: Vec<String> = Case::ALL
        .into_iter()
        .map(|case| {
            let (sent, back) = of(case).fold((0, 0), |t, r| (t.0 + r.sent.frames, t.1 + r.a.rx_packets));
            format!(
                "| {} | {:.3} | {:.3} | {sent} | {back} | {:.2} | {:.2} |",
                case.name(),
                pps(case) / 1e6,
                cpu_pps(case) / 1e6,
                pps(case) / empty,
                cpu_pps(case) / empty_cpu,
            )
        })
        .collect();
    let ratio = pps(Case::Vigil) / empty;
    let ratio_cpu = cpu_pps(Case::Vigil) / empty_cpu;
    let verdict = |r: f64, t: f64| if r >= t { "met" } else { "NOT met" };
    let text = [
        "### Both hooks: packets forwarded through the host".to_owned(),
        String::new(),
        format!(
            "`cargo bench -p vigil-tests --bench hooks`. Machine: {}. A sends {FRAME_LEN}-byte UDP/IPv4 frames \
             ({FLOWS} flows, `AF_PACKET`, `sendmmsg` of {BATCH}, one thread pinned to CPU {} at nice {SENDER_NICE}) to \
             B, which routes them back out of the same veth to a network behind A: every packet passes B's XDP \
             program in and its TC egress program (tcx) out. Offloads off. {ROUNDS} rounds of {:.1} s per case, \
             interleaved; medians. Delivered = veth-a `rx_packets`; with the sensor, each hook's own counter \
             matched.",
            machine(),
            sender_cpu(),
            ROUND.as_secs_f64()
        ),
        String::new(),
        "| case | Mpps delivered | Mpps per sender CPU-second | frames sent | delivered | vs empty | vs empty (CPU) |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|".to_owned(),
        rows.join("\n"),
        String::new(),
        format!(
            "Target: both hooks of the sensor keep at least {:.0}% of both hooks empty: {} ({:.1}%; per CPU-second \
             {:.1}%, {}).",
            TARGET_RATE * 100.0,
            verdict(ratio, TARGET_RATE),
            ratio * 100.0,
            ratio_cpu * 100.0,
            verdict(ratio_cpu, TARGET_RATE)
        ),
        String::new(),
    ]
    .join("\n");
    (text, ratio)
}

/// Bits per second B received (`download`) or sent (upload) in one iperf3 run against A.
fn iperf(link: &Link, download: bool) -> f64 {
    let mut server = link
        .a
        .command("timeout")
        .args(["30", "iperf3", "-s", "-1", "-B", "10.200.0.1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let mut client = link.b.command("timeout");
    client.args(["30", "iperf3", "-c", "10.200.0.1", "-t", &IPERF_SECONDS.to_string(), "-J"]);
    if download {
        client.arg("-R");
    }
    let out = client.output().expect("iperf3 client");
    let _ = server.wait();
    assert!(out.status.success(), "iperf3: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"].as_f64().expect("bits_per_second")
}

/// Part 2.
fn tcp() -> (String, f64) {
    let link = Link::new("ip");
    let dir = TempDir::new("hooks-iperf");
    let run_dir = dir.path().join("run");
    // (configuration: 0 nothing, 1 both hooks empty, 2 the agent native, 3 the agent in SKB
    // mode; download; bits/s)
    let mut results: Vec<(u8, bool, f64)> = Vec::new();
    let mut floor = Some(Sensor::load(&SensorOptions::default()).expect("loading the sensor"));
    for _ in 0..IPERF_ROUNDS {
        for config in [0u8, 1, 2, 3] {
            let empty = (config == 1)
                .then(|| attach(&link, floor.take().expect("sensor"), (PROGRAM_EMPTY, PROGRAM_EGRESS_EMPTY)));
            let agent = (config >= 2).then(|| {
                Agent::start(
                    &link.b,
                    &[
                        "run",
                        "--no-pin",
                        "--egress",
                        "--iface",
                        Link::IFACE_B,
                        "--xdp-mode",
                        if config == 2 { "native" } else { "skb" },
                        "--run-dir",
                        run_dir.to_str().expect("utf-8"),
                    ],
                )
            });
            for download in [false, true] {
                results.push((config, download, iperf(&link, download)));
            }
            if let Some((mut sensor, ids)) = empty {
                detach(&mut sensor, (PROGRAM_EMPTY, PROGRAM_EGRESS_EMPTY), ids);
                floor = Some(sensor);
            }
            if let Some(agent) = agent {
                let (status, log) = agent.stop();
                assert!(status.success(), "vigil: {log}");
            }
        }
    }
    let gbps = |config: u8, download: bool| {
        median_f64(results.iter().filter(|r| r.0 == config && r.1 == download).map(|r| r.2 / 1e9).collect())
    };
    let mut worst: f64 = f64::MAX;
    let rows: Vec<String> = [(false, "upload from B"), (true, "download to B")]
        .into_iter()
        .map(|(download, name)| {
            let (without, empty, with, skb) =
                (gbps(0, download), gbps(1, download), gbps(2, download), gbps(3, download));
            worst = worst.min(with / without);
            format!(
                "| {name} | {without:.2} | {empty:.2} | {with:.2} | {skb:.2} | {:.3} | {:.3} | {:.3} |",
                with / without,
                with / empty,
                skb / without
            )
        })
        .collect();
    let text = [
        "### Both hooks: TCP throughput through the host".to_owned(),
        String::new(),
        format!(
            "iperf3 ({IPERF_SECONDS} s per run, one stream) between the namespaces, B the client; without an agent and \
             with both hooks empty (`vigil_pass` native, `vigil_egress_pass` tcx) and with `vigil run --egress` \
             on B (both hooks, harvesting each second), its XDP program in native mode and in SKB mode; \
             offloads as the kernel sets them. {IPERF_ROUNDS} rounds alternating; medians. The target is \
             taken on native mode, the default."
        ),
        String::new(),
        "| direction | Gbit/s, nothing attached | both hooks empty | the sensor (native) | the sensor (SKB mode) | \
         native vs nothing | native vs empty | SKB mode vs nothing |"
            .to_owned(),
        "|---|---:|---:|---:|---:|---:|---:|---:|".to_owned(),
        rows.join("\n"),
        String::new(),
        format!(
            "Target: at least {:.0}% of the throughput without the sensor: {} (worst direction {:.1}%).",
            TARGET_TCP * 100.0,
            if worst >= TARGET_TCP { "met" } else { "NOT met" },
            worst * 100.0
        ),
        String::new(),
    ]
    .join("\n");
    (text, worst)
}

fn main() {
    vigil_tests::require_root();
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "forwarded") {
        report(&forwarded().0);
    }
    if only.as_deref().is_none_or(|o| o == "tcp") {
        report(&tcp().0);
    }
}
