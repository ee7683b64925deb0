//! Live response benchmark: time from attack start to alert and to block (hping3 SYN floods
//! from distinct sources in the namespace LAN), and the agent's CPU and memory while it tracks
//! 100k flows.

use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_tests::{
    bench::{machine, report, usage},
    lab::{Lab, VICTIM, now_ms, timestamp_ms},
    require_root,
};

const RUNS: u32 = 10;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "index")]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn latencies(lab: &Lab) -> (Vec<i64>, Vec<i64>) {
    let config = "[block]\nmode = \"enforce\"\nttl = \"5m\"\nmax_new_per_minute = 1000\n";
    let agent = lab.agent(config);
    let (mut alert, mut block) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let src = format!("10.77.0.{}", 100 + i);
        lab.attacker.ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0"]);
        let start = now_ms();
        let mut flood = lab.syn_flood(4000, 1000, Some(&src));
        let src2 = src.clone();
        let a = lab.wait_event("alert", Duration::from_secs(15), move |e| {
            e["event"]["kind"] == "alert" && e["source"]["ip"].as_str() == Some(src2.as_str())
        });
        let src3 = src.clone();
        let b = lab.wait_event("block", Duration::from_secs(15), move |e| {
            e["event"]["action"] == "block" && e["source"]["ip"].as_str() == Some(src3.as_str())
        });
        alert.push(timestamp_ms(&a) - start);
        block.push(timestamp_ms(&b) - start);
        flood.kill().ok();
        flood.wait().ok();
        std::thread::sleep(Duration::from_secs(1));
    }
    drop(agent);
    alert.sort_unstable();
    block.sort_unstable();
    (alert, block)
}

/// Starts 100k flows (two sources × 50k source ports, one UDP packet each) and measures the
/// agent over the following 20 s, while they are tracked and scored.
fn at_100k_flows(lab: &Lab) -> (f64, u64, u64, u64, Duration) {
    let agent = lab.agent_with("", &["--idle-timeout", "60s"]);
    let pid = agent.pid();
    std::thread::sleep(Duration::from_secs(2));
    let t0 = usage(pid).cpu_ticks;
    let started = Instant::now();
    for src in ["10.77.0.201", "10.77.0.202"] {
        lab.attacker.ip(&["addr", "add", &format!("{src}/24"), "dev", "eth0"]);
        // hping3 exits non-zero when nothing answers; the flows are what counts here.
        let _ = lab
            .attacker
            .command("timeout")
            .args(["60", "hping3", "--udp", "-a", src, "-s", "10000", "-p", "53", "-i", "u10", "-c", "50000", VICTIM])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("hping3");
    }
    let send_time = started.elapsed();
    std::thread::sleep(Duration::from_secs(20).saturating_sub(send_time));
    let u1 = usage(pid);
    let (t1, rss, hwm) = (u1.cpu_ticks, u1.rss_kib, u1.hwm_kib);
    let elapsed = started.elapsed();
    let status = lab.vigil(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).expect("status json");
    let tracked = status["agent"]["flows_tracked"].as_u64().unwrap_or(0);
    #[expect(clippy::cast_precision_loss, reason = "reporting")]
    let cpu = (t1 - t0) as f64
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64
        / elapsed.as_secs_f64()
        * 100.0;
    drop(agent);
    (cpu, rss, hwm, tracked, elapsed)
}

fn main() {
    require_root();
    let lab = Lab::new("bench");
    let (alert, block) = latencies(&lab);
    let lab2 = Lab::new("bench100k");
    let (cpu, rss, hwm, tracked, elapsed) = at_100k_flows(&lab2);
    let ms = |v: &[i64], p| percentile(v, p);
    report(&format!(
        "### Live response (`cargo bench -p vigil-tests --bench response`)\n\n\
         {}; agent in a namespace LAN (victim on a bridge with attacker and bystander), \
         hping3 SYN flood 1000 pkt/s to port 80 from a fresh source address per run, \
         1 s harvest interval, block after 2 consecutive windows.\n\n\
         | | runs | p50 | p99 | max | target |\n|---|---|---|---|---|---|\n\
         | attack start → alert | {RUNS} | {} ms | {} ms | {} ms | p99 < 2 s |\n\
         | attack start → block | {RUNS} | {} ms | {} ms | {} ms | p99 < 3 s |\n\n\
         At 100k flows (two sources × 50k UDP source ports, then idle): {tracked} flows tracked; agent CPU {cpu:.1}% of one core \
         averaged over {:.0} s (sending, scoring every new flow, then harvesting 100k each second); RSS {} MB, peak {} MB \
         (target < 100 MB).\n",
        machine(),
        ms(&alert, 0.5),
        ms(&alert, 0.99),
        alert.last().unwrap(),
        ms(&block, 0.5),
        ms(&block, 0.99),
        block.last().unwrap(),
        elapsed.as_secs_f64(),
        rss / 1024,
        hwm / 1024,
    ));
}
