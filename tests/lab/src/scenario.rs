//! `cargo xtask lab`: scenarios played in the lab's namespaces against a running agent.
//!
//! The lab has a server (Vigil, with HTTP, iperf3 and DNS services), a client and an attacker
//! on one switch. A scenario is a list of steps, benign traffic first, then attacks. Every
//! attack comes from an address of its own (added to the attacker's interface), so blocking
//! one attack does not hide the next, and each alert or block names the step it belongs to.
//! The summary says, per attack, whether it was detected, how long after its start the first
//! alert and the first block came, and how many alerts named anyone else (false alerts).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde::Serialize;
use serde_json::Value;
use vigil::eval::labels::Labels;

use vigil_tests::{
    agent::Agent,
    host_replay::{self, Sender},
    interrupt::{self, Interrupted},
    lab::{BYSTANDER, IFACE, Lab, VICTIM, Watch, event_ip, is_alert, now_ms, timestamp_ms},
    netns::{Netns, sh},
};

use crate::pcapreplay;

/// What a step does.
#[derive(Clone, Debug)]
enum Action {
    /// iperf3, HTTP fetches and DNS lookups from the client to the server.
    ClientTraffic,
    /// Every benign capture of the data directory, replayed from the client.
    BenignCaptures,
    /// An attack capture replayed from the attacker, its attacker mapped to the step's address
    /// and its victim to the server.
    AttackCapture(&'static str),
    /// nmap SYN scan of ports 1-3000 at 1000 probes per second at most (about 3 s), one probe
    /// per port (once blocked, nothing answers; retries would stretch it to minutes).
    NmapScan,
    /// hping3 SYN flood, 3000 packets at 1000 per second.
    SynFlood,
    /// hping3 SYN flood from random (spoofed) sources.
    SpoofedFlood,
    /// hping3 UDP flood to random ports, 3000 packets at 1000 per second.
    UdpFlood,
}

#[derive(Clone, Debug)]
struct Step {
    name: &'static str,
    action: Action,
}

/// A named list of steps.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    steps: Vec<Step>,
}

fn step(name: &'static str, action: Action) -> Step {
    Step { name, action }
}

/// Every scenario, the default first.
#[must_use]
pub fn scenarios() -> Vec<Scenario> {
    let benign = || {
        vec![step("client: iperf3, HTTP, DNS", Action::ClientTraffic), step("benign captures", Action::BenignCaptures)]
    };
    let live = || {
        vec![
            step("nmap SYN scan", Action::NmapScan),
            step("hping3 SYN flood", Action::SynFlood),
            step("hping3 UDP flood", Action::UdpFlood),
            step("hping3 spoofed SYN flood", Action::SpoofedFlood),
        ]
    };
    let replayed = || {
        vec![
            step("replay: nmap SYN scan", Action::AttackCapture("attack/synscan.pcapng")),
            step("replay: masscan", Action::AttackCapture("attack/masscan_tcp_0_1000.pcap")),
            step("replay: UDP flood", Action::AttackCapture("attack/udp__flood.pcap")),
            step("replay: FTP brute force", Action::AttackCapture("attack/zeek-ftp-bruteforce.pcap")),
        ]
    };
    vec![
        Scenario {
            name: "full",
            about: "benign (live client traffic, replayed benign captures), then replayed and live attacks",
            steps: [benign(), replayed(), live()].concat(),
        },
        Scenario { name: "benign", about: "benign traffic only: what it alerts on is a false alert", steps: benign() },
        Scenario {
            name: "live",
            about: "live client traffic, then live attacks (nmap, hping3); needs no capture files",
            steps: [vec![step("client: iperf3, HTTP, DNS", Action::ClientTraffic)], live()].concat(),
        },
        Scenario { name: "replay", about: "replayed attack captures only", steps: replayed() },
        Scenario {
            name: "quick",
            about: "client traffic, one scan, one flood (about 40 s)",
            steps: vec![
                step("client: iperf3, HTTP, DNS", Action::ClientTraffic),
                step("nmap SYN scan", Action::NmapScan),
                step("hping3 SYN flood", Action::SynFlood),
            ],
        },
    ]
}

/// How to play a scenario.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenario: String,
    /// Directory with `labels.json`, `benign/` and `attack/` (for the replay steps).
    pub data: PathBuf,
    pub block_mode: String,
    pub model: String,
    /// Quiet time after each step.
    pub settle: Duration,
}

/// One step's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub step: String,
    /// `benign` or `attack`.
    pub kind: &'static str,
    /// The attacking address, or for a spoofed flood the victim it floods.
    pub attacker: Option<String>,
    pub spoofed: bool,
    pub detected: Option<bool>,
    pub time_to_alert_ms: Option<i64>,
    pub time_to_block_ms: Option<i64>,
    /// Alerts in this step's time that named none of the scenario's attackers.
    pub false_alerts: usize,
    pub error: Option<String>,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub block_mode: String,
    pub steps: Vec<StepResult>,
    pub interrupted: bool,
    /// Every event the agent sent, in order.
    pub events: Vec<Value>,
}

struct Played {
    name: &'static str,
    attacker: Option<IpAddr>,
    spoofed: bool,
    start_ms: i64,
    error: Option<String>,
}

/// Plays the scenario and returns its summary. On Ctrl-C it stops early and summarises what
/// ran; the lab is removed either way.
///
/// # Errors
/// An unknown scenario, or a data directory that lacks what a replay step needs.
///
/// # Panics
/// If the lab cannot be built or the agent does not start.
pub fn run(options: &Options) -> Result<Summary, String> {
    let all = scenarios();
    let Some(scenario) = all.iter().find(|s| s.name == options.scenario) else {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        return Err(format!("unknown scenario {:?}; one of: {}", options.scenario, names.join(", ")));
    };
    let needs_data =
        scenario.steps.iter().any(|s| matches!(s.action, Action::BenignCaptures | Action::AttackCapture(_)));
    let labels = if needs_data {
        Some(Labels::read(&options.data.join("labels.json")).map_err(|e| format!("{e} (pass --data DIR)"))?)
    } else {
        None
    };
    println!(
        "lab: scenario {} ({}), {} steps, block mode {}",
        scenario.name,
        scenario.about,
        scenario.steps.len(),
        options.block_mode
    );
    let mut lab = Lab::new("lab");
    // Replayed captures hold both directions of their conversations (see flood_from_*).
    lab.flood_from_attacker();
    lab.flood_from_bystander();
    lab.start_victim_services();
    println!(
        "lab: server {VICTIM} (Vigil, HTTP :80, iperf3 :5201, DNS :53), client {BYSTANDER}, attacker {}",
        vigil_tests::lab::ATTACKER
    );
    let agent = lab
        .agent_with(&format!("[block]\nmode = \"{}\"\n", options.block_mode), &["--no-pin", "--model", &options.model]);
    let watch = Watch::start(lab.alerts_path(), "  | ");
    let mut played = Vec::new();
    let outcome = play(&lab, scenario, labels.as_ref(), options, &mut played);
    drop(watch);
    stop_agent(agent);
    let interrupted = outcome.is_err();
    if interrupted {
        println!("lab: interrupted; removing the lab");
    }
    let events = lab.events();
    Ok(Summary {
        scenario: scenario.name.into(),
        block_mode: options.block_mode.clone(),
        steps: summarise(&played, &events),
        interrupted,
        events,
    })
}

fn stop_agent(agent: Agent) {
    let (status, log) = agent.stop();
    if !status.success() {
        eprintln!("lab: the agent exited with {status}; its log:\n{log}");
    }
}

fn play(
    lab: &Lab,
    scenario: &Scenario,
    labels: Option<&Labels>,
    options: &Options,
    played: &mut Vec<Played>,
) -> Result<(), Interrupted> {
    interrupt::sleep(Duration::from_secs(2))?;
    let mut next_attacker = 70u8;
    for (i, s) in scenario.steps.iter().enumerate() {
        println!("[{}/{}] {}", i + 1, scenario.steps.len(), s.name);
        let attack = !matches!(s.action, Action::ClientTraffic | Action::BenignCaptures);
        let source: Option<IpAddr> = attack.then(|| {
            next_attacker += 1;
            IpAddr::from([10, 77, 0, next_attacker])
        });
        if let Some(src) = source {
            lab.attacker.ip(&["addr", "add", &format!("{src}/24"), "dev", IFACE]);
        }
        let spoofed = matches!(s.action, Action::SpoofedFlood);
        let start_ms = now_ms();
        let error = run_step(lab, &s.action, source, labels)?.err();
        if let Some(e) = &error {
            println!("    error: {e}");
        }
        let attacker = if spoofed { Some(VICTIM.parse().expect("victim")) } else { source };
        played.push(Played { name: s.name, attacker, spoofed, start_ms, error });
        interrupt::sleep(options.settle)?;
    }
    Ok(())
}

/// Runs a bounded tool in `ns`; Ctrl-C kills it.
fn tool(ns: &Netns, args: &[&str], limit: Duration) -> Result<Result<(), String>, Interrupted> {
    let mut cmd = ns.command(args[0]);
    cmd.args(&args[1..]).stdout(Stdio::null()).stderr(Stdio::piped());
    interrupt::own_group(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Err(format!("starting {}: {e} (cargo xtask setup installs it)", args[0]))),
    };
    Ok(match interrupt::wait(&mut child, limit)? {
        None => Err(format!("{} still running after {limit:?}; killed", args[0])),
        // hping3 exits 1 when nothing answered, which a flood into a busy port may cause.
        Some(_) => Ok(()),
    })
}

fn run_step(
    lab: &Lab,
    action: &Action,
    source: Option<IpAddr>,
    labels: Option<&Labels>,
) -> Result<Result<(), String>, Interrupted> {
    let src = source.map(|s| s.to_string()).unwrap_or_default();
    let limit = Duration::from_mins(1);
    match action {
        Action::ClientTraffic => {
            lab.bystander_traffic();
            Ok(Ok(()))
        }
        Action::BenignCaptures => {
            let labels = labels.expect("labels loaded for replay steps");
            let captures = labels.captures().map_err(|e| e.to_string());
            let captures = match captures {
                Ok(c) => c,
                Err(e) => return Ok(Err(e)),
            };
            for (path, rel, _) in captures.iter().filter(|(_, _, l)| l.is_benign()) {
                println!("    {rel}");
                if let Err(e) = replay(lab, &lab.bystander, path, &[])? {
                    return Ok(Err(e));
                }
            }
            Ok(Ok(()))
        }
        Action::AttackCapture(rel) => {
            let labels = labels.expect("labels loaded for replay steps");
            let path = labels.root.join(rel);
            let Some(label) = labels.label(rel) else {
                return Ok(Err(format!("{rel} has no label in {}", labels.root.join("labels.json").display())));
            };
            let mut pairs = Vec::new();
            if let (Some(a), Some(s)) = (label.attacker, source) {
                pairs.push((a, s));
            }
            if let Some(v) = label.victim.filter(IpAddr::is_ipv4) {
                pairs.push((v, VICTIM.parse().expect("victim")));
            }
            replay(lab, &lab.attacker, &path, &pairs)
        }
        Action::NmapScan => tool(
            &lab.attacker,
            &[
                "nmap",
                "-sS",
                "-T4",
                "-Pn",
                "-n",
                "--max-rate",
                "1000",
                "--max-retries",
                "0",
                "--host-timeout",
                "30s",
                "-e",
                IFACE,
                "-S",
                &src,
                "-p",
                "1-3000",
                VICTIM,
            ],
            limit,
        ),
        Action::SynFlood => tool(
            &lab.attacker,
            &["hping3", "-q", "-S", "-p", "80", "-c", "3000", "-i", "u1000", "-a", &src, VICTIM],
            limit,
        ),
        Action::UdpFlood => tool(
            &lab.attacker,
            &["hping3", "-q", "--udp", "-p", "++1024", "-c", "3000", "-i", "u1000", "-a", &src, VICTIM],
            limit,
        ),
        Action::SpoofedFlood => tool(
            &lab.attacker,
            &["hping3", "-q", "-S", "-p", "80", "-c", "5000", "-i", "u500", "--rand-source", VICTIM],
            limit,
        ),
    }
}

/// Replays a capture as the victim host would see it (`vigil_tests::host_replay`): frames from
/// the mapped victim leave the victim's interface, the rest arrive from `from`. The lab's links
/// carry 1500-byte packets; larger captured frames are cut.
fn replay(lab: &Lab, from: &Netns, path: &Path, pairs: &[(IpAddr, IpAddr)]) -> Result<Result<(), String>, Interrupted> {
    let info = match pcapreplay::inspect(path, Duration::from_secs(1)) {
        Ok(i) => i,
        Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
    };
    let victim: IpAddr = VICTIM.parse().expect("victim");
    let victim = pairs.iter().any(|&(_, to)| to == victim).then_some(victim);
    let senders = Sender::open(&lab.victim, IFACE).and_then(|v| Ok((v, Sender::open(from, IFACE)?)));
    let (victim_side, outside) = match senders {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("replay sockets: {e}"))),
    };
    let limit = info.replay * 2 + Duration::from_secs(30);
    Ok(host_replay::replay(path, pairs, victim, &victim_side, &outside, Duration::from_secs(1), limit)?.map(|_| ()))
}

/// Whether `e` names `ip`: as its source, or for a spoofed flood as its destination.
fn names(e: &Value, ip: IpAddr, spoofed: bool) -> bool {
    event_ip(e, if spoofed { "destination" } else { "source" }) == Some(ip)
}

fn summarise(played: &[Played], events: &[Value]) -> Vec<StepResult> {
    // An alert naming any attack's source (or, for a spoofed flood, its victim as the
    // destination) is a true alert, even when it comes late: a source alerted once reports its
    // later anomalies in its next window. Anything else is false.
    let named_by_some_attack = |e: &Value| played.iter().any(|p| p.attacker.is_some_and(|a| names(e, a, p.spoofed)));
    played
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let end = played.get(i + 1).map_or(i64::MAX, |n| n.start_ms);
            let during = |e: &&Value| {
                let t = timestamp_ms(e);
                t >= p.start_ms && t < end
            };
            let first = |pred: &dyn Fn(&Value) -> bool| {
                events.iter().filter(|e| pred(e) && timestamp_ms(e) >= p.start_ms).map(timestamp_ms).min()
            };
            let (alert, block) = match p.attacker {
                Some(a) => (
                    first(&|e| is_alert(e) && names(e, a, p.spoofed)),
                    first(&|e| e["event"]["action"] == "block" && names(e, a, false)),
                ),
                None => (None, None),
            };
            let false_alerts =
                events.iter().filter(|e| is_alert(e)).filter(during).filter(|e| !named_by_some_attack(e)).count();
            StepResult {
                step: p.name.into(),
                kind: if p.attacker.is_some() { "attack" } else { "benign" },
                attacker: p.attacker.map(|a| a.to_string()),
                spoofed: p.spoofed,
                detected: p.attacker.map(|_| alert.is_some()),
                time_to_alert_ms: alert.map(|t| t - p.start_ms),
                time_to_block_ms: block.map(|t| t - p.start_ms),
                false_alerts,
                error: p.error.clone(),
            }
        })
        .collect()
}

impl Summary {
    /// The summary table.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| step | attacker | detected | time to alert | time to block | false alerts |");
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|");
        let ms = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |t| format!("{}.{} s", t / 1000, (t % 1000) / 100));
        for r in &self.steps {
            let attacker = match (&r.attacker, r.spoofed) {
                (Some(a), true) => format!("spoofed, to {a}"),
                (Some(a), false) => a.clone(),
                (None, _) => "(benign)".into(),
            };
            let detected = match (&r.error, r.detected) {
                (Some(e), _) => format!("error: {e}"),
                (None, Some(true)) => "yes".into(),
                (None, Some(false)) => "**no**".into(),
                (None, None) => "-".into(),
            };
            let block = if r.spoofed { "never (spoofed)".into() } else { ms(r.time_to_block_ms) };
            let _ = writeln!(
                s,
                "| {} | {attacker} | {detected} | {} | {block} | {} |",
                r.step,
                ms(r.time_to_alert_ms),
                r.false_alerts
            );
        }
        let attacks = self.steps.iter().filter(|r| r.detected.is_some()).count();
        let detected = self.steps.iter().filter(|r| r.detected == Some(true)).count();
        let false_alerts: usize = self.steps.iter().map(|r| r.false_alerts).sum();
        let _ = writeln!(
            s,
            "\n{detected} of {attacks} attacks detected; {false_alerts} false alerts; block mode {}{}.",
            self.block_mode,
            if self.interrupted { "; interrupted" } else { "" }
        );
        s
    }
}

/// Removes namespaces and pins left by lab runs that were killed (SIGKILL leaves no chance
/// to clean up): every `vigil-*-PID-*` namespace whose process is gone.
pub fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let pid =
            name.strip_prefix("vigil-").and_then(|rest| rest.split('-').nth(1)).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            println!("lab: removing namespace {name} left by an earlier run (process {pid} is gone)");
            sh(Command::new("ip").args(["netns", "del", name]));
        }
    }
}
