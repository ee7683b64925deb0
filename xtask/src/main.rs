//! `cargo xtask`: set up the eBPF toolchain, run the agent, run the tests, run the benchmarks.
//!
//! Building is cargo's job (`agent/build.rs` builds the XDP program); this tool only makes sure
//! what that build needs is installed, then drives cargo.

mod fuzz;
mod setup;

use setup::run;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Vigil's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building the XDP program needs (nightly rust-src, LLVM 22, bpf-linker).
    Setup,
    /// Set up, build in release mode and run `vigil run` with the given arguments.
    Run {
        /// Arguments for `vigil run` (e.g. `-- --iface eth0`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up and run every test: the host tests (the default members: unit tests and the
    /// agent's integration tests), the privileged suite and the lab's tests (root), then 20 s
    /// of each fuzz target (when no filter is given). See tests/README.md.
    Test {
        /// Extra arguments for the test binaries (e.g. a name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build a lab in network namespaces, run Vigil on its server and play a scenario of
    /// benign traffic and attacks; ends with a summary table (root). `-- --list` shows the
    /// scenarios, `-- --help` the options.
    Lab {
        /// Arguments for `vigil-lab lab` (e.g. `--scenario quick`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Replay every labelled capture (../shared/data/pcaps by default) into the running agent
    /// and report per capture: attacker alerted, time to alert, false alerts (root).
    EvalLive {
        /// Arguments for `vigil-lab eval-live` (e.g. `--data DIR`, `--out DIR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the fuzz targets (cargo-fuzz, nightly) and run each for a bounded time, starting
    /// from the corpus in tests/fuzz/corpus (see docs/fuzzing.md).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        time: u64,
        /// One target (packet, capture, bundle, config); all of them by default.
        target: Option<String>,
    },
    /// Set up and run the benchmarks (root); prints a markdown report.
    Bench {
        /// Also write the report into BENCHMARKS.md between its generated-results markers.
        #[arg(long)]
        write: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Task::Setup => setup::ensure(),
        Task::Run { args } => {
            setup::ensure()?;
            require_root("attaching an XDP program")?;
            cargo(&root, &["build", "--release", "--package", "vigil", "--bin", "vigil"])?;
            let vigil = target_dir(&root).join("release/vigil");
            let mut cmd = Command::new(&vigil);
            cmd.arg("run").args(&args);
            eprintln!("xtask: running {cmd:?}");
            let status = cmd.status().with_context(|| format!("starting {}", vigil.display()))?;
            if !status.success() {
                bail!("vigil exited with {status}");
            }
            Ok(())
        }
        Task::Test { args } => {
            setup::ensure()?;
            require_root("the privileged tests (XDP, network namespaces, BPF_PROG_TEST_RUN)")?;
            // The host tests are the workspace's default members, what a plain `cargo test` runs
            // as an ordinary user; `vigil/offline` adds the evaluation code's tests.
            let mut host = vec!["test", "--features", "vigil/offline", "--"];
            host.extend(args.iter().map(String::as_str));
            cargo(&root, &host)?;
            // The root-only packages: the privileged test binary (`--test root`, a module per
            // feature) with the support library's own tests, and the lab's. They share the
            // kernel and the network namespaces they create: one at a time.
            let mut privileged =
                vec!["test", "--package", "vigil-tests", "--package", "vigil-lab", "--", "--test-threads=1"];
            privileged.extend(args.iter().map(String::as_str));
            cargo(&root, &privileged)?;
            // Then every fuzz target for a short, bounded time on the corpus in the repo.
            if args.is_empty() { fuzz::run_targets(&root, fuzz::DEFAULT_SECONDS, None) } else { Ok(()) }
        }
        Task::Fuzz { time, target } => {
            setup::ensure_cargo_fuzz()?;
            fuzz::run_targets(&root, time, target.as_deref())
        }
        Task::Lab { args } => vigil_lab(&root, "lab", &args),
        Task::EvalLive { args } => vigil_lab(&root, "eval-live", &args),
        Task::Bench { write } => {
            setup::ensure()?;
            require_root("the benchmarks (BPF_PROG_TEST_RUN, XDP maps)")?;
            let report = target_dir(&root).join("bench-report.md");
            let _ = std::fs::remove_file(&report);
            let mut cmd = cargo_cmd(&root);
            cmd.args(["bench", "--package", "vigil-tests"]).env("VIGIL_BENCH_REPORT", &report);
            run(&mut cmd)?;
            let text = std::fs::read_to_string(&report).with_context(|| format!("reading {}", report.display()))?;
            println!("{text}");
            if write {
                write_benchmarks(&root.join("BENCHMARKS.md"), &text)?;
                eprintln!("xtask: BENCHMARKS.md updated");
            }
            Ok(())
        }
    }
}

/// Builds `vigil` and `vigil-lab` (the test profile and features, sharing the tests' build) and becomes
/// `vigil-lab SUBCOMMAND ARGS`: Ctrl-C then reaches the lab alone, which removes what it built.
fn vigil_lab(root: &Path, subcommand: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    setup::ensure()?;
    require_root("the lab (network namespaces, XDP)")?;
    cargo(root, &["build", "--package", "vigil", "--features", "offline", "--bin", "vigil"])?;
    cargo(root, &["build", "--package", "vigil-lab", "--bin", "vigil-lab"])?;
    let bin = target_dir(root).join("debug/vigil-lab");
    let mut cmd = Command::new(&bin);
    cmd.current_dir(root).arg(subcommand).args(args);
    eprintln!("xtask: {cmd:?}");
    Err(cmd.exec()).with_context(|| format!("starting {}", bin.display()))
}

/// The workspace this xtask runs for. `cargo run` sets `CARGO_MANIFEST_DIR` for the process;
/// the value compiled in is only a fallback, since a build directory shared by two checkouts
/// (CI reusing one for every fresh clone) can hand one checkout the other's binary.
fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("xtask lives in the workspace").to_path_buf()
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn cargo_cmd(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let mut cmd = cargo_cmd(root);
    cmd.args(args);
    run(&mut cmd)
}

fn require_root(what: &str) -> Result<()> {
    if setup::is_root() {
        return Ok(());
    }
    bail!(
        "{what} need root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN).\n\
         Run it as root, e.g.: sudo -E env PATH=\"$PATH\" cargo xtask ..."
    )
}

const BEGIN: &str = "<!-- bench:begin -->";
const END: &str = "<!-- bench:end -->";

fn write_benchmarks(path: &Path, report: &str) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail!("{} lacks the {BEGIN} / {END} markers", path.display());
    };
    let updated = format!("{}{BEGIN}\n{report}\n{}", &text[..b], &text[e..]);
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}
