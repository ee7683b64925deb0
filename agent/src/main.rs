//! `vigil`: the command-line entry point.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vigil::{
    flows::HarvestConfig,
    replay::{self, ReplayConfig},
    run::{self, RunConfig},
    sensor::{AttachMode, SensorOptions},
};

/// Vigil: an XDP network sensor that counts every packet into per-flow statistics in the
/// kernel and harvests them into flow records.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attach the sensor to an interface and harvest flows until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Build flow records from pcap/pcapng files with the sensor's own per-packet code.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
struct ReplayArgs {
    /// Capture files (pcap or pcapng; Ethernet, Linux cooked SLL/SLL2 or raw IP).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Where flow records go as JSON lines (appended), `-` for standard output.
    #[arg(long, value_name = "FILE", default_value = "-")]
    flows_out: PathBuf,
    #[command(flatten)]
    timing: TimingArgs,
    /// Do not show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// When flows leave the table; `replay` applies them on the capture's clock.
#[derive(Debug, Args)]
struct TimingArgs {
    /// Time between harvests of the flow table (timeout checks).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// A flow with no packet for this long is exported and removed.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
    /// A flow older than this is exported and restarted, as `NetFlow`'s active timeout.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    active_timeout: Duration,
}

impl TimingArgs {
    fn harvest_config(&self) -> anyhow::Result<HarvestConfig> {
        if self.interval.is_zero() {
            anyhow::bail!("--interval must be greater than zero");
        }
        Ok(HarvestConfig {
            idle_timeout: self.idle_timeout,
            active_timeout: self.active_timeout,
            ..HarvestConfig::default()
        })
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Interface to attach to [default: the interface of the default route].
    #[arg(long, short = 'i')]
    iface: Option<String>,
    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    #[command(flatten)]
    timing: TimingArgs,
    /// Flow table capacity in flows (per-CPU LRU hash; the least recently used flow is evicted
    /// when full).
    #[arg(long, default_value_t = agent_common::maps::DEFAULT_FLOW_CAPACITY,
          value_parser = clap::value_parser!(u32).range(1..))]
    flow_capacity: u32,
    /// Write flow records as JSON lines to FILE (appended), or to standard output with `-`.
    #[arg(long, value_name = "FILE")]
    flows_out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run(args) => run_command(args),
        Command::Replay(args) => replay_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn replay_command(args: ReplayArgs) -> anyhow::Result<()> {
    let config = ReplayConfig {
        files: args.files,
        flows_out: args.flows_out,
        harvest: args.timing.harvest_config()?,
        interval: args.timing.interval,
        progress: !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let totals = replay::replay(&config)?;
    tracing::info!(packets = totals.packets, malformed = totals.malformed, records = totals.records, "replay done");
    Ok(())
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let config = RunConfig {
        iface: args.iface,
        mode: args.xdp_mode,
        interval: args.timing.interval,
        harvest: args.timing.harvest_config()?,
        sensor: SensorOptions { flow_capacity: args.flow_capacity },
        flows_out: args.flows_out,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run::run(config))?;
    Ok(())
}
