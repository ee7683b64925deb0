//! `cargo xtask fuzz`: build the cargo-fuzz targets in `tests/fuzz` once, then run each for a
//! bounded time.
//!
//! Built without a sanitizer (`-s none`) but with debug assertions (`-a`, which also turns on
//! overflow checks): Vigil is safe Rust, so the bugs to find are panics and overflows, and
//! skipping `AddressSanitizer` keeps the build of tract and the agent cheap (docs/fuzzing.md).
//! New inputs go to `fuzz/corpus/TARGET` under the build directory; the seeds in `tests/fuzz/corpus/TARGET` are
//! read, never written. Crashes land in `tests/fuzz/artifacts/TARGET` (ignored by git).

use std::{path::Path, process::Command};

use anyhow::{Result, bail};

use crate::setup::run;

/// The targets, in the order they run.
pub const TARGETS: [&str; 4] = ["packet", "capture", "bundle", "config"];
/// Seconds per target unless `--time` says otherwise (also what `cargo xtask test` runs).
pub const DEFAULT_SECONDS: u64 = 20;

/// Where the fuzz builds and the grown corpus live: `fuzz/` under the build directory
/// (`CARGO_TARGET_DIR`, as CI sets it to reuse builds across runs, or `target/`).
fn fuzz_dir(root: &Path) -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), std::path::PathBuf::from).join("fuzz")
}

/// `cargo fuzz` on the nightly toolchain, with the flags every call shares.
fn cargo_fuzz(root: &Path, subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(root)
        .args(["run", "nightly", "cargo", "fuzz", subcommand, "--fuzz-dir", "tests/fuzz"])
        .args(["--sanitizer", "none", "--debug-assertions", "--target-dir"])
        .arg(fuzz_dir(root))
        // Set by the cargo running xtask for the stable toolchain; the nightly one must choose.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC");
    cmd
}

/// Builds every target, then runs `only` (or all) for `seconds` each.
///
/// # Errors
/// An unknown target, a failed build, or a target that found a crash.
pub fn run_targets(root: &Path, seconds: u64, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t}; the targets are {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    run(&mut cargo_fuzz(root, "build"))?;
    for target in targets {
        let scratch = fuzz_dir(root).join("corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = root.join("tests/fuzz/corpus").join(target);
        let mut cmd = cargo_fuzz(root, "run");
        cmd.arg(target).arg(&scratch).arg(&seeds).arg("--").args([
            format!("-max_total_time={seconds}"),
            "-timeout=10".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
            "-print_final_stats=1".to_owned(),
        ]);
        run(&mut cmd).map_err(|e| {
            anyhow::anyhow!("fuzz target {target} failed (input in tests/fuzz/artifacts/{target}): {e}")
        })?;
    }
    Ok(())
}
