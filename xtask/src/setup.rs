//! Checking and installing the eBPF build prerequisites.
//!
//! The XDP program is built with the nightly toolchain (`-Z build-std=core` needs `rust-src`)
//! and linked by `bpf-linker`, which is built against LLVM 22. Each step says what it does;
//! where it cannot act (not root, no apt-get), it stops with the exact commands to run.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGES: [&str; 2] = ["llvm-22-dev", "libpolly-22-dev"];
/// bpf-linker 0.13 is the release built and verified against LLVM 22 and this rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz drives the fuzz targets (`cargo xtask fuzz`, and the end of `cargo xtask test`);
/// 0.13.2 builds with the installed stable toolchain and runs with nightly.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// What the privileged tests and benchmarks use from the system.
const TEST_PACKAGES: [(&str, &str); 14] = [
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("hping3", "hping3"),
    ("nmap", "nmap"),
    ("hydra", "hydra"),
    ("slowhttptest", "slowhttptest"),
    ("iperf3", "iperf3"),
    ("dig", "dnsutils"),
    ("curl", "curl"),
    ("prometheus", "prometheus"),
    // The console's browser tests: headless Chromium driven over WebDriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The fleet bus: the NATS sink's tests start their own JetStream servers.
    ("nats-server", "nats-server"),
];
/// The Python references the model cross-checks and scoring benchmark compare against
/// (never used by the agent). Versions are the ones the checks were written against.
const PYTHON_PACKAGES: [&str; 5] =
    ["scikit-learn==1.9.1", "onnxruntime==1.31.1", "onnx==1.23.2", "numpy==2.4.6", "skl2onnx==1.20.0"];

/// Makes sure every prerequisite is present, installing what is missing.
///
/// # Errors
/// A step that cannot be done here, with the commands that would do it.
pub fn ensure() -> Result<()> {
    ensure_nightly_rust_src()?;
    ensure_bpf_linker()?;
    ensure_test_tools()?;
    ensure_python_references()?;
    ensure_cargo_fuzz()?;
    eprintln!("xtask: setup complete (nightly rust-src, bpf-linker, test tools, Python references, cargo-fuzz)");
    Ok(())
}

pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Runs a command, echoing it, and fails if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn ensure_nightly_rust_src() -> Result<()> {
    if !succeeds(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        bail!(
            "the nightly Rust toolchain is missing; it builds the XDP program. Install it with:\n  \
             rustup toolchain install nightly --component rust-src"
        );
    }
    let installed = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("xtask: setup: nightly rust-src is missing; adding it");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src; try: rustup component add rust-src --toolchain nightly")
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn ensure_bpf_linker() -> Result<()> {
    if bpf_linker_ok() {
        return Ok(());
    }
    eprintln!("xtask: setup: bpf-linker {BPF_LINKER_VERSION} not found; it needs LLVM 22 to build");
    ensure_apt_packages(&LLVM_PACKAGES, Path::new(LLVM_PREFIX).join("bin/llvm-config").exists())?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX))
    .with_context(|| {
        format!(
            "installing bpf-linker; try: LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --locked \
             --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22"
        )
    })?;
    if !bpf_linker_ok() {
        bail!("bpf-linker was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
}

/// Installs cargo-fuzz unless this version is on PATH.
///
/// # Errors
/// The install fails.
pub fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_fuzz_ok() {
        return Ok(());
    }
    eprintln!("xtask: setup: cargo-fuzz {CARGO_FUZZ_VERSION} not found; installing it");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo).args(["install", "cargo-fuzz", "--locked", "--version", CARGO_FUZZ_VERSION]))
        .with_context(|| {
            format!("installing cargo-fuzz; try: cargo install cargo-fuzz --locked --version {CARGO_FUZZ_VERSION}")
        })?;
    if !cargo_fuzz_ok() {
        bail!("cargo-fuzz was installed but is not on PATH; add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn ensure_test_tools() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(bin, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {bin}")])))
        .map(|(_, pkg)| *pkg)
        .collect();
    ensure_apt_packages(&missing, missing.is_empty())
}

fn ensure_python_references() -> Result<()> {
    let check = "import sklearn, onnxruntime, onnx, numpy, skl2onnx";
    if succeeds(Command::new("python3").args(["-c", check])) {
        return Ok(());
    }
    if !succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
        ensure_apt_packages(&["python3", "python3-pip"], false)?;
    }
    eprintln!("xtask: setup: installing the Python references for the model cross-checks");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            "--break-system-packages",
        ])
        .args(PYTHON_PACKAGES))
    .context("installing scikit-learn, onnxruntime, onnx and skl2onnx (used by tests/python/crosscheck.py only)")?;
    if !succeeds(Command::new("python3").args(["-c", check])) {
        bail!("python3 still cannot import scikit-learn, onnxruntime, onnx and skl2onnx after pip install");
    }
    Ok(())
}

/// Installs Debian packages with apt-get unless `present`. Without root or apt-get, fails
/// with the command to run.
fn ensure_apt_packages(packages: &[&str], present: bool) -> Result<()> {
    if present || packages.is_empty() {
        return Ok(());
    }
    let list = packages.join(" ");
    if !is_root() || !succeeds(Command::new("sh").args(["-c", "command -v apt-get"])) {
        bail!("missing packages: {list}. Install them with:\n  sudo apt-get update && sudo apt-get install -y {list}");
    }
    eprintln!("xtask: setup: installing {list} with apt-get");
    run(Command::new("apt-get").arg("update").env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}
