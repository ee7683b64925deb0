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
