//! `vigil-lab`: the lab and the end-to-end evaluation behind `cargo xtask lab` and
//! `cargo xtask eval-live`. Needs root (network namespaces, XDP).

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use vigil_lab::{eval_live, scenario};
use vigil_tests::interrupt;

#[derive(Debug, Parser)]
#[command(name = "vigil-lab", about = "Vigil's lab: scenarios and end-to-end evaluation in network namespaces")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the lab, start Vigil on the server and play a scenario; ends with a summary.
    Lab {
        /// Scenario to play (`--list` shows them).
        #[arg(long, default_value = "full")]
        scenario: String,
        /// List the scenarios and exit.
        #[arg(long)]
        list: bool,
        /// Data directory with labels.json, benign/ and attack/ (replay steps).
        #[arg(long, default_value = "../shared/data/pcaps")]
        data: PathBuf,
        /// Auto-block mode of the agent: off, dry-run or enforce.
        #[arg(long, default_value = "enforce")]
        block_mode: String,
        /// Model bundle: `default` (built in) or a directory.
        #[arg(long, default_value = "default")]
        model: String,
        /// Quiet time after each step.
        #[arg(long, default_value = "6s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Also write the summary as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Replay every labelled capture into the running agent and score its alerts.
    EvalLive {
        /// A labels.json, or the directory holding it (captures are found under it).
        #[arg(long, default_value = "../shared/data/pcaps")]
        data: PathBuf,
        /// Model bundle: `default` (built in) or a directory.
        #[arg(long, default_value = "default")]
        model: String,
        /// Longest pause replayed between two packets (longer ones are cut to this).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        max_gap: Duration,
        /// Quiet time after each capture.
        #[arg(long, default_value = "12s", value_parser = humantime::parse_duration)]
        settle: Duration,
        /// Only captures whose path contains this (repeatable).
        #[arg(long)]
        only: Vec<String>,
        /// Where report.md and report.json go.
        #[arg(long, default_value = "target/eval-live")]
        out: PathBuf,
        /// Do not print events as they arrive.
        #[arg(long)]
        quiet: bool,
        /// Exit 1 if a target is missed.
        #[arg(long)]
        check: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("vigil-lab: needs root (network namespaces, XDP); run it as root");
        return ExitCode::from(2);
    }
    interrupt::install();
    scenario::remove_stale();
    match cli.command {
        Command::Lab { list: true, .. } => {
            for s in scenario::scenarios() {
                println!("{:<8} {}", s.name, s.about);
            }
            ExitCode::SUCCESS
        }
        Command::Lab { scenario, data, block_mode, model, settle, json, list: false } => {
            if !["off", "dry-run", "enforce"].contains(&block_mode.as_str()) {
                eprintln!("vigil-lab lab: --block-mode must be off, dry-run or enforce, not {block_mode:?}");
                return ExitCode::from(2);
            }
            let options = scenario::Options { scenario, data, block_mode, model, settle };
            let summary = match scenario::run(&options) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("vigil-lab lab: {e}");
                    return ExitCode::from(2);
                }
            };
            println!("\n{}", summary.markdown());
            if let Some(path) = json
                && let Err(e) = std::fs::write(&path, serde_json::to_string_pretty(&summary).unwrap_or_default())
            {
                eprintln!("vigil-lab lab: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if summary.interrupted { ExitCode::from(130) } else { ExitCode::SUCCESS }
        }
        Command::EvalLive { data, model, max_gap, settle, only, out, quiet, check } => {
            let options = eval_live::Options { labels: data, model, max_gap, settle, only, watch: !quiet };
            let report = match eval_live::run(&options) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("vigil-lab eval-live: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let md = report.markdown();
            println!("\n{md}");
            if let Err(e) =
                std::fs::create_dir_all(&out).and_then(|()| std::fs::write(out.join("report.md"), &md)).and_then(|()| {
                    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report).unwrap_or_default())
                })
            {
                eprintln!("vigil-lab eval-live: writing {}: {e}", out.display());
                return ExitCode::FAILURE;
            }
            println!("report: {} and report.json", out.join("report.md").display());
            if check && !report.targets_met() {
                eprintln!("vigil-lab eval-live: a target was missed");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
    }
}
