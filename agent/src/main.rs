//! `vigil`: the command-line entry point.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vigil::{
    eval,
    features::{Schema, dataset::FlowDataset},
    flows::HarvestConfig,
    model::{Bundle, TrainConfig, autoencoder::AutoencoderParams, iforest::ForestParams},
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
    /// Train a model bundle (isolation forest + autoencoder) on benign traffic.
    Train(TrainArgs),
    /// Measure detection on labelled captures or on the UNSW-NB15 dataset.
    Eval(EvalArgs),
}

#[derive(Debug, Args)]
#[group(id = "input", required = true, multiple = false)]
struct TrainInput {
    /// Benign captures (pcap or pcapng) to train on.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    pcap: Vec<PathBuf>,
    /// Flow-record JSON lines (from `vigil replay` or `vigil run --flows-out`) to train on.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    flows: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct TrainArgs {
    #[command(flatten)]
    input: TrainInput,
    /// Directory to write the bundle to (manifest.json, iforest.json, autoencoder.onnx).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Use this ONNX autoencoder (trained elsewhere, e.g. exported from `PyTorch`) instead of
    /// training one: input `[batch, features]` of scaled features, output their reconstruction.
    #[arg(long, value_name = "FILE")]
    autoencoder: Option<PathBuf>,
    #[command(flatten)]
    timing: TimingArgs,
    /// Do not show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Model and training settings.
#[derive(Debug, Args)]
struct ModelArgs {
    /// Isolation forest trees.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    trees: u32,
    /// Rows per tree (ψ).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    subsample: u32,
    /// Autoencoder hidden layer widths.
    #[arg(long, value_delimiter = ',', default_value = "64,32,16,32,64")]
    hidden: Vec<usize>,
    /// Autoencoder epochs at most (early stopping usually ends sooner).
    #[arg(long, default_value_t = 200)]
    max_epochs: usize,
    /// Share of benign calibration flows allowed above the alert threshold.
    #[arg(long, default_value_t = vigil::model::train::DEFAULT_TARGET_FPR)]
    target_fpr: f64,
    /// Seed for every random choice (splits, subsamples, initial weights).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the per-source context window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
}

impl ModelArgs {
    fn config(&self) -> anyhow::Result<TrainConfig> {
        if !(0.0..0.5).contains(&self.target_fpr) || self.target_fpr <= 0.0 {
            anyhow::bail!("--target-fpr must be in (0, 0.5), got {}", self.target_fpr);
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            anyhow::bail!("--hidden needs one or more non-zero widths, e.g. 32,8,32");
        }
        Ok(TrainConfig {
            forest: ForestParams { trees: self.trees as usize, subsample: self.subsample as usize, seed: self.seed },
            autoencoder: AutoencoderParams {
                hidden: self.hidden.clone(),
                max_epochs: self.max_epochs,
                seed: self.seed,
                ..AutoencoderParams::default()
            },
            target_fpr: self.target_fpr,
            seed: self.seed,
            ..TrainConfig::default()
        })
    }
}

#[derive(Debug, Args)]
struct EvalArgs {
    #[command(subcommand)]
    mode: EvalMode,
}

#[derive(Debug, Subcommand)]
enum EvalMode {
    /// Labelled captures: a labels.json (as in ../shared/data/pcaps) and the captures under it.
    Captures {
        /// The labels file; captures are found under its directory.
        #[arg(long, value_name = "FILE")]
        labels: PathBuf,
        /// Evaluate this bundle (a directory, or `default` for the built-in one) instead of
        /// training on half of the benign captures.
        #[arg(long, value_name = "DIR")]
        model: Option<PathBuf>,
        #[command(flatten)]
        common: EvalCommon,
        #[command(flatten)]
        timing: TimingArgs,
        /// Do not show a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// UNSW-NB15 CSV (or its .zip) in dataset mode, with and without the TTL leak columns.
    Unsw {
        /// The CSV or the zip that holds it.
        #[arg(value_name = "FILE")]
        csv: PathBuf,
        #[command(flatten)]
        common: EvalCommon,
    },
}

/// What both evaluations take.
#[derive(Debug, Args)]
struct EvalCommon {
    /// Where the reports go: captures.{json,svg}, or unsw-no-ttl.{json,svg} and
    /// unsw-all.{json,svg}.
    #[arg(long, value_name = "DIR", default_value = "eval")]
    out: PathBuf,
    /// Share of the benign flows (normal rows) to train on.
    #[arg(long, default_value_t = 0.5)]
    train_share: f64,
    #[command(flatten)]
    model_args: ModelArgs,
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
        Command::Train(args) => train_command(args),
        Command::Eval(args) => eval_command(args),
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

fn progress_bar_wanted(no_progress: bool) -> bool {
    !no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "the parsed arguments are handed over whole, like the other commands"
)]
fn train_command(args: TrainArgs) -> anyhow::Result<()> {
    let mut config = args.model.config()?;
    if let Some(path) = &args.autoencoder {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        // Check it before spending time on the data.
        vigil::model::onnx::OnnxScorer::load(&bytes, Schema::flow().len())
            .with_context(|| path.display().to_string())?;
        config.external_autoencoder = Some(bytes);
    }
    let harvest = args.timing.harvest_config()?;
    let progress = progress_bar_wanted(args.no_progress);
    let (data, sources) = if args.input.pcap.is_empty() {
        (FlowDataset::from_flow_files(&args.input.flows, args.model.window)?, &args.input.flows)
    } else {
        (
            FlowDataset::from_captures(&args.input.pcap, harvest, args.timing.interval, args.model.window, progress)?,
            &args.input.pcap,
        )
    };
    tracing::info!(flows = data.len(), files = sources.len(), "training data");
    let files: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let per_file: Vec<usize> =
        (0..data.files.len()).map(|f| data.file_index.iter().filter(|&&i| i == f).count()).collect();
    let summary = serde_json::json!({
        "kind": if args.input.pcap.is_empty() { "flow records" } else { "captures" },
        "files": files,
        "flows_per_file": per_file,
        "flows": data.len(),
        "context_window": humantime::format_duration(args.model.window).to_string(),
        "idle_timeout": humantime::format_duration(args.timing.idle_timeout).to_string(),
        "active_timeout": humantime::format_duration(args.timing.active_timeout).to_string(),
    });
    let trained = vigil::model::train(&Schema::flow(), data.rows.view(), &config, summary, |m| tracing::info!("{m}"))?;
    trained.bundle.write_dir(&args.out)?;
    let t = trained.detector.thresholds;
    tracing::info!(
        out = %args.out.display(),
        alert_threshold = t.alert,
        block_threshold = t.block,
        autoencoder_best_epoch = trained.autoencoder.as_ref().map(|r| r.best_epoch),
        validation_loss = trained.autoencoder.as_ref().map(|r| r.validation_loss),
        "bundle written"
    );
    Ok(())
}

/// A bundle from a directory, or the built-in one for `default`.
fn load_bundle(path: &std::path::Path) -> anyhow::Result<Bundle> {
    Ok(if path.as_os_str() == "default" { Bundle::embedded()? } else { Bundle::read_dir(path)? })
}

fn eval_command(args: EvalArgs) -> anyhow::Result<()> {
    match args.mode {
        EvalMode::Captures { labels, model, common, timing, no_progress } => {
            let detector = model
                .as_deref()
                .map(|m| load_bundle(m)?.detector(&Schema::flow()).map_err(anyhow::Error::from))
                .transpose()?;
            let config = eval::captures::CaptureEval {
                labels: &labels,
                harvest: timing.harvest_config()?,
                interval: timing.interval,
                window: common.model_args.window,
                train: common.model_args.config()?,
                train_share: check_share(common.train_share)?,
                model: detector,
                progress: progress_bar_wanted(no_progress),
            };
            let report = eval::captures::run(config, |m| tracing::info!("{m}"))?;
            publish(&common.out, "captures", &report)?;
        }
        EvalMode::Unsw { csv, common } => {
            let config = common.model_args.config()?;
            let reports =
                eval::dataset::run(&csv, &config, check_share(common.train_share)?, |m| tracing::info!("{m}"))?;
            for (report, stem) in reports.iter().zip(["unsw-no-ttl", "unsw-all"]) {
                publish(&common.out, stem, report)?;
            }
        }
    }
    Ok(())
}

/// Writes `<stem>.json` and `<stem>.svg` into `out` and prints the summary.
fn publish(out: &std::path::Path, stem: &str, report: &eval::EvalReport) -> anyhow::Result<()> {
    eval::write_report(out, stem, report)?;
    print!("{}", report.summary());
    println!("report: {}", out.join(format!("{stem}.{{json,svg}}")).display());
    Ok(())
}

fn check_share(share: f64) -> anyhow::Result<f64> {
    if share > 0.0 && share < 1.0 {
        Ok(share)
    } else {
        anyhow::bail!("--train-share must be between 0 and 1, got {share}")
    }
}
