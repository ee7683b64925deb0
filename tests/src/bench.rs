//! Helpers for the benchmark binaries: where the report goes and how numbers are summarised.

use std::{io::Write as _, time::Duration};

/// Appends a markdown section to the report named by `VIGIL_BENCH_REPORT` (set by
/// `cargo xtask bench`) and prints it.
///
/// # Panics
/// If the report file cannot be written.
pub fn report(section: &str) {
    println!("{section}");
    if let Some(path) = std::env::var_os("VIGIL_BENCH_REPORT") {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("bench report");
        writeln!(f, "{section}").expect("write report");
    }
}

/// The median of `values`.
///
/// # Panics
/// If `values` is empty.
#[must_use]
pub fn median_f64(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The CPU a rate benchmark's sender runs on: the last one (the bench's own thread and the
/// agent keep the rest).
#[must_use]
pub fn sender_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1
}

/// The median of `samples` (sorted in place).
///
/// # Panics
/// If `samples` is empty.
pub fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// A one-line description of the machine for the report.
#[must_use]
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    format!("{} CPUs ({cpu}), Linux {kernel}", std::thread::available_parallelism().map_or(0, std::num::NonZero::get))
}

/// What a process has used so far, from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// Peak resident memory (`VmHWM`), KiB.
    pub hwm_kib: u64,
}

/// CPU time and memory of `pid`.
///
/// # Panics
/// If the process is gone.
#[must_use]
pub fn usage(pid: u32) -> Usage {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..].split_whitespace().collect();
    let cpu_ticks = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Usage { cpu_ticks, rss_kib: kib("VmRSS:"), hwm_kib: kib("VmHWM:") }
}
