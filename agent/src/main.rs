//! `vigil`: the command-line entry point.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use vigil::{
    config::{Config, HumanDuration},
    control,
    detect::BlockMode,
    features::{Schema, dataset::FlowDataset},
    flows::HarvestConfig,
    model::{Bundle, TrainConfig, autoencoder::AutoencoderParams, iforest::ForestParams},
    replay::{self, ReplayConfig},
    run,
    sensor::{AttachMode, pin::Pins},
};

/// Vigil: an XDP network sensor that counts every packet into per-flow statistics in the
/// kernel and harvests them into flow records.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, propagate_version = true)]
#[cfg_attr(not(feature = "offline"), command(after_help = OFFLINE_HINT))]
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
    #[cfg(feature = "offline")]
    Eval(EvalArgs),
    /// Not in this build: says how to get it instead of "unrecognized subcommand".
    #[cfg(not(feature = "offline"))]
    #[command(hide = true, disable_help_flag = true)]
    Eval {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
    },
    /// Show the sensor, the running agent, kernel counters and rules.
    Status(StatusArgs),
    /// List, add, remove or flush blocklist rules of the running sensor.
    Block(BlockArgs),
    /// Detach the sensor and remove everything it pinned (program, maps, rules).
    Detach(ControlArgs),
    /// Suppress alerts by source, destination, port or kind for a while: counted, not sent.
    Suppress(SuppressArgs),
    /// Tell a learning or adapting agent an alert was a false positive: its flow joins the
    /// next site model's training sample.
    Feedback(FeedbackArgs),
    /// Read the history the agent keeps in its store: alerts, block actions, flow aggregates.
    Query(QueryArgs),
    /// Serve the web console over the store (loopback by default; log in with the token in
    /// `console.token_file`).
    Console(ConsoleArgs),
    /// Consume the fleet's alerts from NATS `JetStream` into the store (`[collector]`).
    Collector(CollectorArgs),
    /// Print or check the configuration.
    Config(ConfigArgs),
    /// Make signing keys, sign model bundles and verify their signatures.
    Model(ModelCommandArgs),
}

#[derive(Debug, Args)]
struct QueryArgs {
    #[command(subcommand)]
    what: QueryWhat,
    /// Configuration file whose `store.path` to read [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The store file (overrides the configuration).
    #[arg(long, value_name = "FILE", global = true)]
    db: Option<PathBuf>,
    /// Only what happened in this last stretch of time (e.g. 15m, 1h, 7days).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration, global = true)]
    since: Duration,
    /// Only this source (an address or a prefix): the alert's source, the blocked prefix's
    /// address, the conversations' initiator.
    #[arg(long, value_name = "CIDR", value_parser = control::parse_prefix, global = true)]
    source: Option<ipnet::IpNet>,
    /// Only this destination (an address or a prefix; alerts and flows).
    #[arg(long, value_name = "CIDR", value_parser = control::parse_prefix, global = true)]
    destination: Option<ipnet::IpNet>,
    /// Only this host's rows (a store that holds several).
    #[arg(long, global = true)]
    host: Option<String>,
    /// Rows at most, newest (or, for flows, largest) first.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1_000_000), global = true)]
    limit: u32,
    /// One JSON object per line: the ECS documents of alerts and actions as the sinks got them,
    /// the aggregates of flows.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Args)]
struct CollectorArgs {
    /// Configuration file [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The store file the fleet's alerts go to (`store.path`).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ConsoleArgs {
    /// Configuration file [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on ADDR:PORT (`console.listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,
    /// The store file (`store.path`).
    #[arg(long, value_name = "FILE")]
    db: Option<PathBuf>,
    /// The login token's file (`console.token_file`; generated, mode 0600, if missing).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The sensor's pin directory, whose rules the blocks page manages (`sensor.pin_dir`).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Where `vigil eval --out` wrote its pictures, for the health page (`console.eval_dir`).
    #[arg(long, value_name = "DIR")]
    eval_dir: Option<PathBuf>,
    /// PEM certificate chain for the console's TLS (`console.tls_cert`).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for the console's TLS, mode 0600 (`console.tls_key`).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The file of the password's hash (`console.password_file`).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Read a password (one line) from standard input, write its Argon2id hash to the
    /// password file (mode 0600) and exit.
    #[arg(long)]
    set_password: bool,
}

#[derive(Debug, Subcommand)]
enum QueryWhat {
    /// Alerts: time, severity, kind, source -> destination, score, id, message.
    Alerts {
        /// Only alerts at this level or above.
        #[arg(long, value_enum)]
        severity: Option<SeverityArg>,
        /// Only this kind (`event.action`, e.g. anomalous-flows).
        #[arg(long)]
        kind: Option<String>,
        /// Only this attack kind (`vigil.attack.kind`; docs/detection.md's ATT&CK table).
        #[arg(long, value_parser = attack_kind_name)]
        attack: Option<String>,
        /// Only this ATT&CK technique or sub-technique (T1046, T1498, T1110.001).
        #[arg(long, value_name = "ID")]
        technique: Option<String>,
    },
    /// Block actions: blocks (auto and manual), unblocks, dry runs and refusals.
    Blocks {
        /// Only this action: block, unblock, block-dry-run, block-refused.
        #[arg(long)]
        action: Option<String>,
    },
    /// Flow aggregates per source, destination and service: totals over the period, most
    /// bytes first.
    Flows {
        /// The minute rows themselves, newest first, instead of totals.
        #[arg(long)]
        per_minute: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SeverityArg {
    Low,
    Medium,
    High,
}

#[derive(Debug, Args)]
struct ModelCommandArgs {
    #[command(subcommand)]
    action: ModelAction,
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Write a new key pair: DIR/vigil-model.key (mode 0600; keep it secret) and DIR/vigil-model.pub.
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check that a bundle loads and sign it: writes `BUNDLE_DIR/manifest.sig`.
    Sign {
        /// The private key file (from `vigil model keygen`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(value_name = "BUNDLE_DIR")]
        bundle: PathBuf,
    },
    /// Check a bundle (checksums, values, probes) and its signature; exit 0 only if it loads
    /// and is signed by one of the keys.
    Verify {
        /// A public key: a key file, or 64 hex digits. Repeat for several.
        #[arg(long = "key", value_name = "PUB", required = true)]
        keys: Vec<String>,
        /// A bundle directory, or `default` for the built-in one.
        #[arg(value_name = "BUNDLE_DIR")]
        bundle: PathBuf,
    },
    /// Publish a signed bundle to the fleet: its files into the bus's object store, then the
    /// pointer that makes it GROUP's model (agents with `[fleet.models] group = GROUP` check
    /// it and swap it in). The bus is the configuration's `[fleet.bus]`, else `[collector.bus]`.
    Publish {
        /// Configuration file [default: /etc/vigil/vigil.toml if present].
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
        /// The host group: a canary group first, then the rest.
        #[arg(long, value_name = "GROUP")]
        group: String,
        /// Why, for the people who read the pointer.
        #[arg(long, default_value = "")]
        note: String,
        #[arg(value_name = "BUNDLE_DIR")]
        bundle: PathBuf,
    },
    /// List the site models the learning phase kept (`learn.dir`), oldest first; `*` marks the
    /// one in use.
    List {
        #[command(flatten)]
        site: SiteDirArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print what a kept site model was trained on and its thresholds.
    Show {
        #[command(flatten)]
        site: SiteDirArgs,
        /// Its name or at least 6 hex digits of its sha256.
        name: String,
    },
    /// Make a kept site model the one in use; a running agent swaps it in within a cycle.
    Use {
        #[command(flatten)]
        site: SiteDirArgs,
        /// Its name or at least 6 hex digits of its sha256.
        name: String,
    },
    /// Go back to the site model kept before the one in use.
    Rollback {
        #[command(flatten)]
        site: SiteDirArgs,
    },
}

#[derive(Debug, Args)]
struct FeedbackArgs {
    #[command(subcommand)]
    verdict: FeedbackVerdict,
}

#[derive(Debug, Subcommand)]
enum FeedbackVerdict {
    /// The alert (its `event.id`) flagged ordinary traffic.
    FalsePositive {
        #[command(flatten)]
        site: SiteDirArgs,
        /// The alert's `event.id`.
        id: String,
    },
}

/// Where the site models are.
#[derive(Debug, Args)]
struct SiteDirArgs {
    /// Configuration file whose `learn.dir` to use [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The site model directory (overrides the configuration).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl SiteDirArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        Ok(match &self.dir {
            Some(d) => d.clone(),
            None => Config::load(self.config.as_deref())?.learn.dir,
        })
    }
}

/// Where the control commands find the sensor.
#[derive(Debug, Args)]
struct ControlArgs {
    /// Configuration file whose `sensor.pin_dir`/`sensor.run_dir` to use [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The sensor's pin directory (overrides the configuration).
    #[arg(long, value_name = "DIR", global = true)]
    pin_dir: Option<PathBuf>,
    /// The agent's run directory, where its status file is (overrides the configuration).
    #[arg(long, value_name = "DIR", global = true)]
    run_dir: Option<PathBuf>,
}

impl ControlArgs {
    fn resolve(&self) -> anyhow::Result<(Pins, PathBuf)> {
        self.resolve_with_config().map(|(pins, run_dir, _)| (pins, run_dir))
    }

    /// As `resolve`, with the configuration it read (`vigil block add` takes its rails from it).
    fn resolve_with_config(&self) -> anyhow::Result<(Pins, PathBuf, Config)> {
        let config = Config::load(self.config.as_deref())?;
        let pin_dir = self.pin_dir.clone().unwrap_or_else(|| config.sensor.pin_dir.clone());
        anyhow::ensure!(!pin_dir.as_os_str().is_empty(), "no pin directory: the configuration disables pinning");
        let run_dir = self.run_dir.clone().unwrap_or_else(|| config.sensor.run_dir.clone());
        Ok((Pins::new(pin_dir), run_dir, config))
    }
}

#[derive(Debug, Args)]
struct SuppressArgs {
    #[command(subcommand)]
    action: SuppressAction,
    /// Configuration file whose `alerts.suppress_file` to use [default: /etc/vigil/vigil.toml if present].
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// The rules file (overrides the configuration).
    #[arg(long, value_name = "FILE", global = true)]
    file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum SuppressAction {
    /// List the rules in force: id, what they match, time left, reason.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule: alerts matching every field given are counted and not sent until it expires.
    Add {
        /// Source address or prefix (source alerts only).
        #[arg(long)]
        source: Option<String>,
        /// Destination address or prefix (the alert's top flow's destination).
        #[arg(long)]
        destination: Option<String>,
        /// Destination port of the alert's top flow.
        #[arg(long)]
        port: Option<u16>,
        /// Alert kind (`event.action`).
        #[arg(long, value_parser = vigil::alert::suppress::KINDS)]
        kind: Option<String>,
        /// How long the rule lasts (at most 90 days).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Why, for whoever reads the list later.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Remove a rule by its id.
    Del {
        /// The rule's id (`vigil suppress list`).
        id: u32,
    },
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    control: ControlArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BlockArgs {
    #[command(subcommand)]
    action: BlockAction,
    #[command(flatten)]
    control: ControlArgs,
}

#[derive(Debug, Subcommand)]
enum BlockAction {
    /// List the rules (prefix, origin, drops, time left).
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Block a source address or prefix.
    Add {
        /// Address or CIDR prefix.
        prefix: String,
        /// How long the rule lasts; the kernel lets traffic through again after it.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Allow a prefix that covers an allowlisted prefix (`block.allowlist`, this host's own
        /// addresses, gateways, loopback) or the client of your own SSH session. The TTL cap
        /// (`block.max_ttl`) still holds.
        #[arg(long)]
        force: bool,
    },
    /// Remove the rule for exactly this prefix.
    Del {
        /// Address or CIDR prefix.
        prefix: String,
    },
    /// Remove every rule.
    Flush,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    #[command(subcommand)]
    action: ConfigAction,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print the effective configuration (file and defaults) as TOML.
    Show {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Check a configuration file; exit 2 naming the first bad field.
    Check {
        #[arg(long, short = 'c', value_name = "FILE")]
        config: Option<PathBuf>,
    },
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
    /// Keep this bundle's anomaly models (a directory, or `default` for the built-in one) and
    /// add the classifier `--supervised` trains.
    #[arg(long, value_name = "BUNDLE", requires = "classifier_source")]
    base: Option<PathBuf>,
}

/// The supervised classifier `vigil train` adds to the bundle.
#[derive(Debug, Args)]
struct SupervisedArgs {
    /// Also train the supervised classifier (the bundle's third model) on labelled captures:
    /// `labels.json` files as `vigil eval captures` reads them; each capture's attack flows
    /// get its label's attack kind, the rest are benign. Needs the `offline` feature.
    #[arg(long, num_args = 1.., value_name = "LABELS", group = "classifier_source")]
    supervised: Vec<PathBuf>,
    /// Put this ONNX classifier in the bundle instead of training one: a scikit-learn export
    /// (skl2onnx, probabilities as a tensor) reading the flow schema's raw features in order
    /// (`vigil replay --features-out` writes them). Needs `--classes`.
    #[arg(long, value_name = "FILE", group = "classifier_source", requires = "classes")]
    classifier_onnx: Option<PathBuf>,
    /// The ONNX classifier's classes, in the order of its probabilities: `benign`, then
    /// attack kinds of the table in docs/detection.md.
    #[arg(long, value_delimiter = ',', requires = "classifier_onnx")]
    classes: Vec<String>,
    /// The classifier `--supervised` trains: a random forest or gradient-boosted trees.
    #[arg(long, value_enum, default_value_t = TreeKind::Forest)]
    classifier: TreeKind,
    /// Trees of the forest.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    classifier_trees: u32,
    /// Depth of the forest's deepest leaf.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=40))]
    classifier_depth: u32,
    /// Boosting iterations (`--classifier boosted`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    classifier_iterations: u32,
    /// Probability of "some attack" at which the classifier fires (the flow counts as
    /// anomalous and the alert takes the classifier's kind).
    #[arg(long, default_value_t = vigil::model::kind_classifier::DEFAULT_MIN_PROBABILITY, value_parser = parse_min_probability)]
    min_probability: f32,
}

fn parse_min_probability(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.5 && v <= 1.0 { Ok(v) } else { Err(format!("{v} is not in (0.5, 1]")) }
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
    #[command(flatten)]
    supervised: SupervisedArgs,
    /// Use this ONNX autoencoder (trained elsewhere, e.g. exported from `PyTorch`) instead of
    /// training one: input `[batch, features]` of scaled features, output their reconstruction.
    #[arg(long, value_name = "FILE")]
    autoencoder: Option<PathBuf>,
    /// At most this share of the training conversations comes from any one file (a random
    /// sample of a larger file's, by the seed): one long capture of one application does not
    /// define normal for all. 1 keeps everything.
    #[arg(long, default_value_t = 1.0, value_parser = parse_share)]
    max_file_share: f64,
    #[command(flatten)]
    timing: TimingArgs,
    /// Do not show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v > 0.0 && v <= 1.0 { Ok(v) } else { Err(format!("{v} is not in (0, 1]")) }
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
    #[arg(long, default_value = "10s", value_parser = vigil::config::parse_interval_flag)]
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

/// Where `vigil eval` is when the build lacks it.
#[cfg(not(feature = "offline"))]
const OFFLINE_HINT: &str = "`vigil eval` (offline evaluation) is not in this build; build it with \
                            `cargo build --release -p vigil --features offline`.";

#[cfg(feature = "offline")]
#[derive(Debug, Args)]
struct EvalArgs {
    #[command(subcommand)]
    mode: EvalMode,
}

#[cfg(feature = "offline")]
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
        /// Split the benign captures between training and test by capture file (no file on
        /// both sides) or by conversation (as the notebooks did; flatters the model).
        #[arg(long, value_enum, default_value = "file")]
        split_by: vigil::eval::captures::SplitBy,
        /// Also play the captures with a supervised classifier of this kind beside the anomaly
        /// models (split by file only): the attack captures in 3 folds by file, each played
        /// with a classifier that never saw its file. Adds "with the classifier" to the report.
        #[arg(long, value_enum, conflicts_with = "model")]
        classifier: Option<TreeKind>,
    },
    /// The supervised classifier (a random forest), cross-validated on labelled flows: by
    /// random rows, as published results are, and by whole days or files, as a deployment
    /// meets traffic. Prints a table per split; writes supervised-<split>.{json,md,svg}.
    Supervised {
        /// UNSW-NB15's CSV (or its .zip): `attack_cat` is the class.
        #[arg(long, value_name = "FILE", required_unless_present_any = ["cicflowmeter", "captures"], conflicts_with_all = ["cicflowmeter", "captures"])]
        unsw: Option<PathBuf>,
        /// Labelled captures: a labels.json (repeat for more); Vigil's own conversations and
        /// features, the attack kind as the class, the capture file as the group.
        #[arg(long, value_name = "LABELS", conflicts_with = "cicflowmeter")]
        captures: Vec<PathBuf>,
        /// Across datasets: train on every row of --captures and test on these labelled
        /// captures (repeatable; the same features); writes supervised-cross.{json,md,svg}.
        #[arg(long, value_name = "LABELS", requires = "captures")]
        test_captures: Vec<PathBuf>,
        /// Do not show a progress bar while captures are read.
        #[arg(long)]
        no_progress: bool,
        /// A CICFlowMeter-style CSV (or .csv.gz; CIC-IDS-2017): `Label` is the class, the day of
        /// `Timestamp` the group.
        #[arg(long, value_name = "FILE")]
        cicflowmeter: Option<PathBuf>,
        /// UNSW-NB15: keep `sttl`, `dttl` and `ct_state_ttl`, which leak the label.
        #[arg(long)]
        with_leaks: bool,
        /// One split only [default: both].
        #[arg(long, value_enum)]
        split: Option<vigil::eval::supervised::Split>,
        /// Folds of the cross-validation.
        #[arg(long, default_value_t = 3)]
        folds: usize,
        /// Also the unknown-attack test: each attack kind left out of training in turn, its
        /// rows given to the classifier and (for captures) to the built-in anomaly model;
        /// writes supervised-unknown.{json,md}.
        #[arg(long)]
        unknown: bool,
        /// The classifier: a random forest or gradient-boosted trees.
        #[arg(long, value_enum, default_value_t = TreeKind::Forest)]
        model: TreeKind,
        /// Trees in the forest.
        #[arg(long, default_value_t = vigil::model::classifier::ClassifierParams::default().trees)]
        trees: usize,
        /// Depth of the forest's deepest leaf.
        #[arg(long, default_value_t = vigil::model::classifier::ClassifierParams::default().max_depth)]
        max_depth: usize,
        /// Boosting iterations (`--model boosted`: a tree per class each).
        #[arg(long, default_value_t = vigil::model::boosted::BoostParams::default().iterations)]
        iterations: usize,
        /// Where the reports go.
        #[arg(long, value_name = "DIR", default_value = "eval")]
        out: PathBuf,
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
#[cfg(feature = "offline")]
#[derive(Debug, Args)]
struct EvalCommon {
    /// Where the reports go: captures.{json,svg}, or unsw-no-ttl.{json,svg} and
    /// unsw-all.{json,svg}.
    #[arg(long, value_name = "DIR", default_value = "eval")]
    out: PathBuf,
    /// Share of the benign captures (files, or flows with `--split-by flow`; UNSW-NB15: normal
    /// rows) to train on.
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
    /// Where flow records go as JSON lines (appended), `-` for standard output [default: `-`,
    /// none with `--features-out`].
    #[arg(long, value_name = "FILE")]
    flows_out: Option<PathBuf>,
    /// Also write what the model sees: one CSV row per conversation (its file, initiator,
    /// responder, protocol and first packet time, then every feature of the schema, raw) to
    /// FILE, `-` for standard output.
    #[arg(long, value_name = "FILE")]
    features_out: Option<PathBuf>,
    /// With `--features-out`: score each conversation with this bundle (a directory, or
    /// `default` for the built-in one) and add its scores and the alert threshold.
    #[arg(long, value_name = "DIR", requires = "features_out")]
    model: Option<PathBuf>,
    /// With `--features-out`: the per-source context window.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    window: Duration,
    #[command(flatten)]
    timing: TimingArgs,
    /// Do not show a progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// When flows leave the table; `replay` applies them on the capture's clock. The defaults are
/// `vigil::flows::DEFAULT_*` written as text (a test below keeps them equal).
#[derive(Debug, Args)]
struct TimingArgs {
    /// Time between harvests of the flow table (timeout checks).
    #[arg(long, default_value = "1s", value_parser = vigil::config::parse_interval_flag)]
    interval: Duration,
    /// A flow with no packet for this long is exported and removed.
    #[arg(long, default_value = "15s", value_parser = vigil::config::parse_interval_flag)]
    idle_timeout: Duration,
    /// A flow older than this is exported and restarted, as `NetFlow`'s active timeout.
    #[arg(long, default_value = "60s", value_parser = vigil::config::parse_interval_flag)]
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
#[expect(clippy::struct_excessive_bools, reason = "one bool per on/off command-line flag")]
struct RunArgs {
    /// Configuration file [default: /etc/vigil/vigil.toml if present]. Flags override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Interface to attach to [default: the interface of the default route].
    #[arg(long, short = 'i')]
    iface: Option<String>,
    /// XDP attach mode: native (driver), skb (generic), or auto (native, else skb).
    #[arg(long, value_enum)]
    xdp_mode: Option<AttachMode>,
    /// Count the host's own outgoing packets with a TC egress program (`sensor.egress`, on by
    /// default).
    #[arg(long)]
    egress: bool,
    /// Watch arriving packets only: no TC egress program (`sensor.egress = false`). Every
    /// conversation then looks unanswered to the model.
    #[arg(long, conflicts_with = "egress")]
    no_egress: bool,
    /// Time between harvests; each harvest scores the flows that moved.
    #[arg(long, value_parser = vigil::config::parse_interval_flag)]
    interval: Option<Duration>,
    /// A flow with no packet for this long is exported and removed.
    #[arg(long, value_parser = vigil::config::parse_interval_flag)]
    idle_timeout: Option<Duration>,
    /// A flow older than this is exported and restarted, as `NetFlow`'s active timeout.
    #[arg(long, value_parser = vigil::config::parse_interval_flag)]
    active_timeout: Option<Duration>,
    /// Flow table capacity in flows (LRU: the least recently used flow is evicted when full).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    flow_capacity: Option<u32>,
    /// Write finished flow records as JSON lines to FILE (appended), or to standard output with `-`.
    #[arg(long, value_name = "FILE")]
    flows_out: Option<PathBuf>,
    /// Model bundle directory, or `default` for the built-in one.
    #[arg(long, value_name = "DIR")]
    model: Option<String>,
    /// Load a model bundle not signed by a trusted key (`detection.allow_unsigned`).
    #[arg(long)]
    allow_unsigned_model: bool,
    /// Auto-block: off, dry-run (report only) or enforce.
    #[arg(long, value_enum)]
    block_mode: Option<BlockMode>,
    /// Serve Prometheus metrics on ADDR:PORT at /metrics.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Append alerts as JSON lines to FILE (in addition to the configured sinks).
    #[arg(long, value_name = "FILE")]
    alerts_file: Option<PathBuf>,
    /// Pin directory for the program, maps and rules.
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
    /// Do not pin: detach and flush on exit, as a one-off run.
    #[arg(long, conflicts_with = "pin_dir")]
    no_pin: bool,
    /// Directory of the status file `vigil status` reads.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
    /// Learn this host's traffic for this long, then swap in a site model (`learn.period`).
    #[arg(long, value_parser = parse_learn_period)]
    learn_period: Option<Duration>,
    /// No learning phase: score with the configured model only (`learn.enabled = false`).
    #[arg(long)]
    no_learn: bool,
    /// Where site models and their signing key are kept (`learn.dir`).
    #[arg(long, value_name = "DIR")]
    learn_dir: Option<PathBuf>,
    /// Keep history in this database file (`store.path`).
    #[arg(long, value_name = "FILE")]
    store: Option<PathBuf>,
    /// Keep no history: alerts only leave through the sinks (`store.enabled = false`).
    #[arg(long, conflicts_with = "store")]
    no_store: bool,
}

/// `--learn-period`: a duration of at least one second.
fn parse_learn_period(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| format!("{e}; write e.g. 24h, 7days, 30s"))?;
    if d < Duration::from_secs(1) {
        return Err("at least 1s".to_owned());
    }
    Ok(d)
}

impl RunArgs {
    /// The configuration file with these flags applied on top.
    fn apply(self, mut c: Config) -> Config {
        let s = &mut c.sensor;
        if let Some(v) = self.iface {
            s.iface = v;
        }
        if let Some(v) = self.xdp_mode {
            s.xdp_mode = v;
        }
        if self.egress {
            s.egress = true;
        }
        if self.no_egress {
            s.egress = false;
        }
        if let Some(v) = self.interval {
            s.interval = HumanDuration(v);
        }
        if let Some(v) = self.idle_timeout {
            s.idle_timeout = HumanDuration(v);
        }
        if let Some(v) = self.active_timeout {
            s.active_timeout = HumanDuration(v);
        }
        if let Some(v) = self.flow_capacity {
            s.flow_capacity = v;
        }
        if let Some(v) = self.pin_dir {
            s.pin_dir = v;
        }
        if self.no_pin {
            s.pin_dir = PathBuf::new();
        }
        if let Some(v) = self.run_dir {
            s.run_dir = v;
        }
        if let Some(v) = self.flows_out {
            c.flows.out = Some(v);
        }
        if let Some(v) = self.learn_period {
            c.learn.period = HumanDuration(v);
        }
        if self.no_learn {
            c.learn.enabled = false;
        }
        if let Some(v) = self.learn_dir {
            c.learn.dir = v;
        }
        if let Some(v) = self.store {
            c.store.path = v;
        }
        if self.no_store {
            c.store.enabled = false;
        }
        if let Some(v) = self.model {
            c.detection.model = v;
        }
        c.detection.allow_unsigned |= self.allow_unsigned_model;
        if let Some(v) = self.block_mode {
            c.block.mode = v;
        }
        if let Some(v) = self.metrics {
            c.metrics.listen = Some(v);
        }
        if let Some(path) = self.alerts_file {
            if c.alerts.sinks.is_empty() {
                c.alerts.sinks.push(vigil::alert::sink::SinkSpec {
                    kind: vigil::alert::sink::SinkConfig::Stdout,
                    queue: vigil::alert::sink::DEFAULT_QUEUE,
                });
            }
            c.alerts.sinks.push(vigil::alert::sink::SinkSpec {
                kind: vigil::alert::sink::file::FileSettings { path }.into(),
                queue: vigil::alert::sink::DEFAULT_QUEUE,
            });
        }
        c
    }
}

/// Exit status for an unusable configuration (as for bad command-line usage).
const EXIT_CONFIG: u8 = 2;

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
        #[cfg(feature = "offline")]
        Command::Eval(args) => eval_command(args),
        #[cfg(not(feature = "offline"))]
        Command::Eval { .. } => Err(anyhow::anyhow!(OFFLINE_HINT)),
        Command::Status(args) => status_command(&args),
        Command::Block(args) => block_command(args),
        Command::Detach(args) => detach_command(&args),
        Command::Suppress(args) => suppress_command(args),
        Command::Feedback(args) => feedback_command(args),
        Command::Query(args) => query_command(args),
        Command::Console(args) => console_command(args),
        Command::Collector(args) => collector_command(args),
        Command::Config(args) => return config_command(&args),
        Command::Model(args) => model_command(args),
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
    let progress = !args.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let harvest = args.timing.harvest_config()?;
    let flows_out = args.flows_out.or_else(|| args.features_out.is_none().then(|| PathBuf::from("-")));
    if let Some(flows_out) = flows_out {
        let config =
            ReplayConfig { files: args.files.clone(), flows_out, harvest, interval: args.timing.interval, progress };
        let totals = replay::replay(&config)?;
        tracing::info!(packets = totals.packets, malformed = totals.malformed, records = totals.records, "replay done");
    }
    if let Some(out) = args.features_out {
        // The model is checked before the captures are read.
        let detector = args.model.as_deref().map(|m| Bundle::load(m)?.detector(&Schema::flow())).transpose()?;
        let data = FlowDataset::from_captures(&args.files, harvest, args.timing.interval, args.window, progress)?;
        let writer: Box<dyn std::io::Write> = if out.as_os_str() == "-" {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(std::fs::File::create(&out).with_context(|| format!("creating {}", out.display()))?)
        };
        let rows = data.write_features(std::io::BufWriter::new(writer), detector.as_ref())?;
        tracing::info!(rows, out = %out.display(), "features written");
    }
    Ok(())
}

/// Loads and validates a configuration; an unusable one is reported and answered with the
/// exit status for a bad configuration (2).
fn load_config(path: Option<&std::path::Path>, flags: Option<RunArgs>) -> Result<Config, ExitCode> {
    let checked = Config::load(path)
        .map(|c| match flags {
            Some(f) => f.apply(c),
            None => c,
        })
        .and_then(|c| {
            c.validate()?;
            Ok(c)
        });
    checked.map_err(|e| {
        eprintln!("vigil: error: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn run_command(args: RunArgs) -> anyhow::Result<()> {
    // Nothing is loaded or attached yet: exiting here leaves nothing behind.
    let Ok(config) = load_config(args.config.clone().as_deref(), Some(args)) else {
        std::process::exit(i32::from(EXIT_CONFIG))
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run::run(config))?;
    Ok(())
}

fn model_command(args: ModelCommandArgs) -> anyhow::Result<()> {
    use vigil::model::sign::{PublicKey, SecretKey, keygen};
    match args.action {
        ModelAction::Keygen { out } => {
            let (secret, public, key) = keygen(&out)?;
            println!("private key: {} (mode 0600; keep it secret)", secret.display());
            println!("public key:  {} ({key})", public.display());
            println!("trust it with: [detection] trusted_keys = [\"{key}\"]");
        }
        ModelAction::Sign { key, bundle } => {
            let key = SecretKey::read(&key)?;
            let sig = Bundle::sign_dir(&bundle, &key)?;
            let hash = Bundle::read_dir(&bundle)?.sha256();
            println!("signed {} with {}: {}; manifest sha256 {hash}", bundle.display(), key.public(), sig.display());
        }
        ModelAction::Verify { keys, bundle } => {
            let keys = keys
                .iter()
                .map(|k| PublicKey::from_entry(k, vigil::model::files::Access::Any))
                .collect::<Result<Vec<_>, _>>()?;
            let loaded = Bundle::load(&bundle)?;
            loaded.detector(&Schema::flow())?;
            let key = loaded.verify(&keys).with_context(|| bundle.display().to_string())?;
            println!("{}: valid, signed by {key}; manifest sha256 {}", bundle.display(), loaded.sha256());
        }
        ModelAction::Publish { config, group, note, bundle } => {
            publish_model(config.as_deref(), &group, &note, &bundle)?;
        }
        ModelAction::List { site, json } => {
            let dir = site.resolve()?;
            let kept = vigil::learn::store::list(&dir);
            if json {
                println!("{}", serde_json::to_string_pretty(&kept)?);
            } else if kept.is_empty() {
                println!("no site models kept in {}", dir.display());
            } else {
                for k in &kept {
                    let mark = if k.current { "*" } else { " " };
                    match &k.problem {
                        None => println!(
                            "{mark} {}  {} rows  alert threshold {:.2}",
                            k.name,
                            k.training["rows"].as_u64().unwrap_or(0),
                            k.alert_threshold
                        ),
                        Some(p) => println!("{mark} {}  does not load: {p}", k.name),
                    }
                }
            }
        }
        ModelAction::Show { site, name } => {
            let dir = site.resolve()?;
            let found = vigil::learn::store::find(&dir, &name)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path.display(), e.error))?;
            let kept = vigil::learn::store::list(&dir);
            let entry = kept.iter().find(|k| k.name == found).context("listed in history")?;
            println!("{}", serde_json::to_string_pretty(entry)?);
        }
        ModelAction::Use { site, name } => {
            let dir = site.resolve()?;
            let chosen = vigil::learn::store::use_site(&dir, &name)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path.display(), e.error))?;
            println!("{chosen} is the site model in use now (a running agent swaps it in within a cycle)");
        }
        ModelAction::Rollback { site } => {
            let dir = site.resolve()?;
            let chosen = vigil::learn::store::rollback(&dir)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path.display(), e.error))?;
            println!("rolled back to {chosen} (a running agent swaps it in within a cycle)");
        }
    }
    Ok(())
}

/// `vigil model publish`: the bundle must load and be signed (by a trusted key, when the
/// configuration lists any) before it goes to the fleet.
fn publish_model(
    config: Option<&std::path::Path>,
    group: &str,
    note: &str,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    config.validate()?;
    let bus = match (&config.fleet, &config.collector) {
        (Some(fleet), _) => &fleet.bus,
        (None, Some(collector)) => &collector.bus,
        (None, None) => anyhow::bail!("config: vigil model publish needs a [fleet.bus] or [collector.bus] section"),
    };
    let models = config.fleet.as_ref().and_then(|f| f.models.clone());
    let (pointers, objects) = models.map_or_else(
        || (vigil::fleet::models::default_pointers(), vigil::fleet::models::default_objects()),
        |m| (m.pointers, m.objects),
    );
    let bundle = Bundle::read_dir(dir).with_context(|| dir.display().to_string())?;
    bundle.detector(&Schema::flow()).with_context(|| dir.display().to_string())?;
    if bundle.signature().is_none() {
        anyhow::bail!(
            "{}: not signed; agents refuse unsigned bundles (sign it with `vigil model sign`)",
            dir.display()
        );
    }
    if config.detection.trusted_keys.is_empty() {
        eprintln!("vigil: warning: no detection.trusted_keys here; the signature is checked by the agents only");
    } else {
        let trust = vigil::model::Trust::from_config(&config.detection.trusted_keys, false)?;
        let key = bundle.verify(&trust.keys).with_context(|| dir.display().to_string())?;
        eprintln!("signed by {key}, a trusted key");
    }
    let pointer = vigil::fleet::models::publish_with(bus, &pointers, &objects, group, &bundle, note)
        .map_err(anyhow::Error::msg)?;
    println!(
        "published {} as the model of group {group} (object store {objects}, pointer {pointers}/{group})",
        pointer.sha256
    );
    Ok(())
}

fn config_command(args: &ConfigArgs) -> ExitCode {
    let (ConfigAction::Show { config } | ConfigAction::Check { config }) = &args.action;
    let loaded = match load_config(config.as_deref(), None) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match args.action {
        ConfigAction::Show { .. } => print!("{}", loaded.to_toml()),
        ConfigAction::Check { .. } => println!("configuration is valid"),
    }
    ExitCode::SUCCESS
}

fn status_command(args: &StatusArgs) -> anyhow::Result<()> {
    let (pins, run_dir) = args.control.resolve()?;
    let report = control::status(&pins, &run_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

fn block_command(args: BlockArgs) -> anyhow::Result<()> {
    let (pins, _, config) = args.control.resolve_with_config()?;
    match args.action {
        BlockAction::List { json } => {
            let rules = control::list_rules(&pins)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else if rules.is_empty() {
                println!("no rules");
            } else {
                for r in &rules {
                    println!("{}", control::format_rule(r));
                }
            }
        }
        BlockAction::Add { prefix, ttl, force } => {
            let prefix = control::parse_prefix(&prefix).map_err(anyhow::Error::msg)?;
            let rule = control::add_rule(&pins, &control::manual_rails(&config.block), prefix, ttl, force)?;
            println!("blocked {} for {}", rule.prefix, humantime::format_duration(ttl));
        }
        BlockAction::Del { prefix } => {
            let prefix = control::parse_prefix(&prefix).map_err(anyhow::Error::msg)?;
            anyhow::ensure!(control::del_rule(&pins, prefix)?, "no rule for {prefix}");
            println!("removed the rule for {prefix}");
        }
        BlockAction::Flush => println!("removed {} rules", control::flush_rules(&pins)?),
    }
    Ok(())
}

fn feedback_command(args: FeedbackArgs) -> anyhow::Result<()> {
    let FeedbackVerdict::FalsePositive { site, id } = args.verdict;
    let dir = site.resolve()?;
    let now_ms = vigil::clock::wall_ns() / 1_000_000;
    vigil::learn::store::add_feedback(&dir, &id, now_ms).map_err(anyhow::Error::msg)?;
    println!(
        "alert {id} marked a false positive; a learning or adapting agent puts its flow into the next site model's \
         sample within a cycle"
    );
    Ok(())
}

fn collector_command(args: CollectorArgs) -> anyhow::Result<()> {
    let config = match Config::load(args.config.as_deref()).map_err(anyhow::Error::from).and_then(|c| {
        c.validate()?;
        c.collector.as_ref().ok_or_else(|| anyhow::anyhow!("config: vigil collector needs a [collector] section"))?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    };
    let section = config.collector.clone().unwrap_or_else(|| unreachable!("checked above"));
    let db = args.db.unwrap_or(config.store.path);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
        });
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
    })?;
    let stats = vigil::collector::run(&section, &db, &stop)?;
    eprintln!(
        "vigil collector: {} messages, {} alerts stored, {} already stored, {} skipped",
        stats.messages, stats.stored, stats.repeated, stats.skipped
    );
    Ok(())
}

fn console_command(args: ConsoleArgs) -> anyhow::Result<()> {
    use vigil::console::{Console, auth};

    let config = match Config::load(args.config.as_deref()).map_err(anyhow::Error::from).and_then(|c| {
        c.validate()?;
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil: error: {e:#}");
            std::process::exit(i32::from(EXIT_CONFIG));
        }
    };
    let password_file = args.password_file.or(config.console.password_file);
    if args.set_password {
        let Some(path) = password_file else {
            anyhow::bail!("--set-password needs --password-file FILE or console.password_file");
        };
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("reading the password from standard input")?;
        let hash = auth::hash_password(line.trim_end_matches(['\r', '\n']))?;
        auth::write_password_hash(&path, &hash).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("vigil console: the password's hash is in {} (mode 0600)", path.display());
        return Ok(());
    }
    let db = args.db.unwrap_or(config.store.path);
    let listen = args.listen.unwrap_or(config.console.listen);
    let token_file = args.token_file.unwrap_or(config.console.token_file);
    // Everything is checked before listening: a store the console cannot read, a password
    // file or a TLS key that is wrong or open to others is an error now, not per request.
    drop(vigil::store::schema::open_for_reading(&db)?);
    let token =
        auth::load_or_create_token(&token_file).with_context(|| format!("console token {}", token_file.display()))?;
    let tls = match (args.tls_cert.or(config.console.tls_cert), args.tls_key.or(config.console.tls_key)) {
        (Some(cert), Some(key)) => Some(vigil::console::tls::server_config(&cert, &key)?),
        _ => None,
    };
    let mut console = Console::new(db, token, config.console.session_ttl.0)
        .with_eval_dir(args.eval_dir.unwrap_or(config.console.eval_dir));
    if let Some(path) = password_file {
        let hash = auth::load_password_hash(&path).with_context(|| format!("console password {}", path.display()))?;
        console = console.with_password_hash(hash);
        eprintln!("vigil console: log in with the password or the token in {}", token_file.display());
    } else {
        eprintln!("vigil console: log in with the token in {}", token_file.display());
    }
    let pin_dir = args.pin_dir.unwrap_or(config.sensor.pin_dir.clone());
    if !pin_dir.as_os_str().is_empty() {
        console = console.with_blocks(Pins::new(pin_dir), control::manual_rails(&config.block));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = async { if let Some(t) = term.as_mut() { t.recv().await; } else { std::future::pending::<()>().await } } => {}
            }
        };
        vigil::console::serve(console, listen, tls, shutdown).await
    })?;
    Ok(())
}

fn query_command(args: QueryArgs) -> anyhow::Result<()> {
    use vigil::store::{query, schema};
    let path = match args.db {
        Some(p) => p,
        None => Config::load(args.config.as_deref())?.store.path,
    };
    let conn = schema::open_for_reading(&path)?;
    let now_ms = i64::try_from(vigil::clock::wall_ns() / 1_000_000)?;
    let mut filter = query::Filter {
        since_ms: Some(now_ms.saturating_sub(i64::try_from(args.since.as_millis()).unwrap_or(i64::MAX))),
        source: args.source,
        destination: args.destination,
        host: args.host,
        limit: args.limit as usize,
        ..query::Filter::default()
    };
    let context = || format!("reading {}", path.display());
    let mut out = std::io::stdout().lock();
    let mut print = |line: &str| -> anyhow::Result<()> {
        use std::io::Write as _;
        // A closed pipe (`| head`) ends the listing quietly.
        match writeln!(out, "{line}") {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => Ok(r?),
        }
    };
    match args.what {
        QueryWhat::Alerts { severity, kind, attack, technique } => {
            filter.attack = attack;
            filter.technique = technique;
            filter.min_severity = severity.map(|s| match s {
                SeverityArg::Low => vigil::detect::Severity::Low,
                SeverityArg::Medium => vigil::detect::Severity::Medium,
                SeverityArg::High => vigil::detect::Severity::High,
            });
            filter.kind = kind;
            for a in query::alerts(&conn, &filter).with_context(context)? {
                print(&if args.json { a.document.clone() } else { a.line() })?;
            }
        }
        QueryWhat::Blocks { action } => {
            filter.kind = action;
            for a in query::actions(&conn, &filter).with_context(context)? {
                print(&if args.json { a.document.clone() } else { a.line() })?;
            }
        }
        QueryWhat::Flows { per_minute } => {
            for f in query::flows(&conn, &filter, per_minute).with_context(context)? {
                print(&if args.json { serde_json::to_string(&f)? } else { f.line() })?;
            }
        }
    }
    Ok(())
}

fn suppress_command(args: SuppressArgs) -> anyhow::Result<()> {
    use vigil::alert::suppress::{Rule, RuleFile};
    let path = match args.file {
        Some(p) => p,
        None => Config::load(args.config.as_deref())?.alerts.suppress_file,
    };
    let now_ms = vigil::clock::wall_ns() / 1_000_000;
    let mut file = RuleFile::read(&path)?;
    file.prune(now_ms);
    let left = |r: &Rule| humantime::format_duration(Duration::from_secs(r.expires_ms.saturating_sub(now_ms) / 1000));
    match args.action {
        SuppressAction::List { json } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&file.rules)?);
            } else if file.rules.is_empty() {
                println!("no suppression rules");
            } else {
                for r in &file.rules {
                    let reason = if r.reason.is_empty() { String::new() } else { format!("  ({})", r.reason) };
                    println!("{:>4}  {}  expires in {}{reason}", r.id, r.describe(), left(r));
                }
            }
            return Ok(());
        }
        SuppressAction::Add { source, destination, port, kind, ttl, reason } => {
            let prefix =
                |t: Option<String>| t.map(|t| control::parse_prefix(&t).map_err(anyhow::Error::msg)).transpose();
            let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
            let rule = Rule {
                id: file.next_id(),
                source: prefix(source)?,
                destination: prefix(destination)?,
                port,
                kind,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(ttl_ms),
                reason,
            };
            rule.validate().map_err(anyhow::Error::msg)?;
            println!(
                "rule {}: suppressing alerts of {} for {}",
                rule.id,
                rule.describe(),
                humantime::format_duration(ttl)
            );
            file.rules.push(rule);
        }
        SuppressAction::Del { id } => {
            let before = file.rules.len();
            file.rules.retain(|r| r.id != id);
            anyhow::ensure!(file.rules.len() < before, "no rule {id} in force in {}", path.display());
            println!("removed rule {id}");
        }
    }
    file.write(&path)?;
    Ok(())
}

fn detach_command(args: &ControlArgs) -> anyhow::Result<()> {
    let (pins, _) = args.resolve()?;
    let removed = pins.remove_all()?;
    if removed.is_empty() {
        println!("nothing pinned under {}", pins.dir().display());
    } else {
        println!("detached; removed {} from {}", removed.join(", "), pins.dir().display());
    }
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
    // Everything is checked before hours go into training.
    #[cfg(not(feature = "offline"))]
    if !args.supervised.supervised.is_empty() {
        anyhow::bail!("`vigil train --supervised` reads labelled captures with the offline tools; {}", OFFLINE_HINT);
    }
    // An ONNX classifier is checked against its classes before anything else is done.
    let onnx = args
        .supervised
        .classifier_onnx
        .as_deref()
        .map(|path| -> anyhow::Result<_> {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let spec = vigil::model::kind_classifier::ClassifierSpec {
                file: vigil::model::kind_classifier::ONNX_FILE.to_owned(),
                classes: args.supervised.classes.clone(),
                min_probability: args.supervised.min_probability,
                training: serde_json::json!({ "model": "ONNX", "from": path.display().to_string() }),
            };
            vigil::model::kind_classifier::KindClassifier::load(&spec, &bytes, Schema::flow().len())
                .with_context(|| path.display().to_string())?;
            Ok((spec, bytes))
        })
        .transpose()?;
    let base = args
        .input
        .base
        .as_deref()
        .map(|b| -> anyhow::Result<Bundle> {
            let bundle = Bundle::load(b).with_context(|| format!("--base {}", b.display()))?;
            bundle.detector(&Schema::flow()).with_context(|| format!("--base {}", b.display()))?;
            Ok(bundle)
        })
        .transpose()?;
    let bundle = match base {
        Some(bundle) => bundle,
        None => train_anomaly_models(&args)?,
    };
    let bundle = match onnx {
        Some((spec, bytes)) => bundle.with_classifier(spec, bytes),
        None => bundle,
    };
    #[cfg(feature = "offline")]
    let bundle = if args.supervised.supervised.is_empty() {
        bundle
    } else {
        add_classifier(bundle, &args.supervised, args.model.seed, progress_bar_wanted(args.no_progress))?
    };
    bundle.write_dir(&args.out)?;
    let detector = bundle.detector(&Schema::flow())?;
    let t = detector.thresholds;
    tracing::info!(
        out = %args.out.display(),
        alert_threshold = t.alert,
        block_threshold = t.block,
        classifier = detector.classifier.as_ref().map(|c| c.spec.classes.join(",")),
        "bundle written"
    );
    Ok(())
}

/// Trains the supervised classifier on labelled captures and adds it to `bundle`.
#[cfg(feature = "offline")]
fn add_classifier(bundle: Bundle, args: &SupervisedArgs, seed: u64, progress: bool) -> anyhow::Result<Bundle> {
    let data = vigil::eval::supervised::Labelled::from_captures(&args.supervised, progress)?;
    let counts = data.class_counts();
    tracing::info!(
        flows = data.y.len(),
        classes = %data.classes.iter().zip(&counts).map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", "),
        "supervised training data"
    );
    let params = match tree_model(
        args.classifier,
        args.classifier_trees as usize,
        args.classifier_depth as usize,
        args.classifier_iterations as usize,
    )? {
        vigil::model::kind_classifier::TreeModel::Forest(p) => {
            vigil::model::kind_classifier::TreeModel::Forest(vigil::model::classifier::ClassifierParams { seed, ..p })
        }
        vigil::model::kind_classifier::TreeModel::Boosted(p) => vigil::model::kind_classifier::TreeModel::Boosted(p),
    };
    let files: Vec<String> = args.supervised.iter().map(|p| p.display().to_string()).collect();
    let summary = serde_json::json!({ "labels": files, "source": data.source, "files": data.group_names.len() });
    let trained = vigil::model::train::train_classifier(
        &Schema::flow(),
        data.x.view(),
        &data.y,
        data.classes.clone(),
        &params,
        args.min_probability,
        summary,
    )?;
    Ok(bundle.with_classifier(trained.spec, trained.bytes))
}

/// Trains the isolation forest and the autoencoder on `args`' benign input.
fn train_anomaly_models(args: &TrainArgs) -> anyhow::Result<Bundle> {
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
    let mut data = data;
    if args.max_file_share < 1.0 {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "row counts"
        )]
        let cap = ((data.len() as f64 * args.max_file_share).ceil() as usize).max(1);
        let dropped = data.cap_per_file(cap, config.seed);
        tracing::info!(cap, dropped, "conversations per file capped");
    }
    tracing::info!(flows = data.len(), files = sources.len(), "training data");
    let files: Vec<String> = sources.iter().map(|p| p.display().to_string()).collect();
    let per_file: Vec<usize> =
        (0..data.files.len()).map(|f| data.file_index.iter().filter(|&&i| i == f).count()).collect();
    let summary = serde_json::json!({
        "kind": if args.input.pcap.is_empty() { "flow records" } else { "captures" },
        "files": files,
        "flows_per_file": per_file,
        "flows": data.len(),
        "max_file_share": args.max_file_share,
        "context_window": humantime::format_duration(args.model.window).to_string(),
        "idle_timeout": humantime::format_duration(args.timing.idle_timeout).to_string(),
        "active_timeout": humantime::format_duration(args.timing.active_timeout).to_string(),
    });
    let trained = vigil::model::train(&Schema::flow(), data.rows.view(), &config, summary, |m| tracing::info!("{m}"))?;
    tracing::info!(
        autoencoder_best_epoch = trained.autoencoder.as_ref().map(|r| r.best_epoch),
        validation_loss = trained.autoencoder.as_ref().map(|r| r.validation_loss),
        "anomaly models trained"
    );
    Ok(trained.bundle)
}

#[cfg(feature = "offline")]
fn eval_command(args: EvalArgs) -> anyhow::Result<()> {
    match args.mode {
        EvalMode::Captures { labels, model, common, timing, no_progress, split_by, classifier } => {
            let detector = model
                .as_deref()
                .map(|m| Bundle::load(m)?.detector(&Schema::flow()).map_err(anyhow::Error::from))
                .transpose()?;
            let config = vigil::eval::captures::CaptureEval {
                split_by,
                labels: &labels,
                harvest: timing.harvest_config()?,
                interval: timing.interval,
                window: common.model_args.window,
                train: common.model_args.config()?,
                train_share: check_share(common.train_share)?,
                model: detector,
                classifier: eval_classifier(classifier, split_by)?,
                progress: progress_bar_wanted(no_progress),
            };
            publish(&common.out, "captures", &vigil::eval::captures::run(config, |m| tracing::info!("{m}"))?)?;
        }
        EvalMode::Supervised {
            unsw,
            cicflowmeter,
            captures,
            test_captures,
            no_progress,
            with_leaks,
            split,
            folds,
            unknown,
            trees,
            max_depth,
            model,
            iterations,
            out,
        } => {
            use vigil::eval::supervised::{Labelled, Split, cross_validate, write_report};
            // Arguments first: reading captures takes a while.
            if folds < 2 {
                anyhow::bail!("--folds must be at least 2, got {folds}");
            }
            let params = tree_model(model, trees, max_depth, iterations)?;
            let from_captures = !captures.is_empty();
            let data = match (unsw, cicflowmeter) {
                (Some(path), _) => Labelled::from_unsw(&path, with_leaks)?,
                (None, Some(path)) => Labelled::from_cicflowmeter(&path)?,
                (None, None) if !captures.is_empty() => {
                    Labelled::from_captures(&captures, progress_bar_wanted(no_progress))?
                }
                (None, None) => anyhow::bail!("give --unsw FILE, --cicflowmeter FILE or --captures LABELS"),
            };
            let splits = split.map_or_else(|| vec![Split::Random, Split::ByGroup], |s| vec![s]);
            for s in splits {
                let report = match cross_validate(&data, s, folds, &params) {
                    Ok(r) => r,
                    // Both splits were asked for by default: say why one cannot run, run the other.
                    Err(e @ vigil::eval::supervised::SupervisedError::Split(_)) if split.is_none() => {
                        println!("{e}\n");
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let stem = match s {
                    Split::Random => "supervised-random",
                    Split::ByGroup => "supervised-by-group",
                };
                write_report(&out, stem, &report)?;
                println!("{}\nreport: {}\n", report.markdown(), out.join(format!("{stem}.{{json,md,svg}}")).display());
            }
            if !test_captures.is_empty() {
                let test = Labelled::from_captures(&test_captures, progress_bar_wanted(no_progress))?;
                let report = vigil::eval::supervised::cross_dataset(&data, &test, &params)?;
                write_report(&out, "supervised-cross", &report)?;
                println!("{}\nreport: {}\n", report.markdown(), out.join("supervised-cross.{json,md,svg}").display());
            }
            if unknown {
                let detector = if from_captures { Some(Bundle::embedded()?.detector(&Schema::flow())?) } else { None };
                let kinds: Vec<u16> = (1..u16::try_from(data.classes.len())?).collect();
                let results = vigil::eval::supervised::unknown_attacks(&data, &kinds, &params, detector.as_ref())?;
                let table = vigil::eval::supervised::left_out_markdown(&results, &data.group_kind);
                std::fs::create_dir_all(&out)?;
                let mut json = serde_json::to_vec_pretty(&results)?;
                json.push(b'\n');
                std::fs::write(out.join("supervised-unknown.json"), json)?;
                std::fs::write(out.join("supervised-unknown.md"), &table)?;
                println!(
                    "unknown attacks ({}): each kind left out of training\n\n{table}\nreport: {}",
                    data.source,
                    out.join("supervised-unknown.{json,md}").display()
                );
            }
        }
        EvalMode::Unsw { csv, common } => {
            let config = common.model_args.config()?;
            let reports =
                vigil::eval::dataset::run(&csv, &config, check_share(common.train_share)?, |m| tracing::info!("{m}"))?;
            for (report, stem) in reports.iter().zip(["unsw-no-ttl", "unsw-all"]) {
                publish(&common.out, stem, report)?;
            }
        }
    }
    Ok(())
}

/// Writes `<stem>.json` and `<stem>.svg` into `out` and prints the summary.
#[cfg(feature = "offline")]
fn publish(out: &std::path::Path, stem: &str, report: &vigil::eval::EvalReport) -> anyhow::Result<()> {
    vigil::eval::write_report(out, stem, report)?;
    print!("{}", report.summary());
    println!("report: {}", out.join(format!("{stem}.{{json,svg}}")).display());
    Ok(())
}

/// The supervised classifier's kind of trees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum TreeKind {
    /// A random forest (bootstrap, √features per split, Gini).
    Forest,
    /// Gradient-boosted trees (log loss, a tree per class per iteration).
    Boosted,
}

/// The supervised classifier from its flags: `trees` and `max_depth` size a forest,
/// `iterations` boosted trees.
#[cfg(feature = "offline")]
fn tree_model(
    kind: TreeKind,
    trees: usize,
    max_depth: usize,
    iterations: usize,
) -> anyhow::Result<vigil::model::kind_classifier::TreeModel> {
    use vigil::model::{boosted::BoostParams, classifier::ClassifierParams, kind_classifier::TreeModel};
    if trees == 0 || max_depth == 0 || iterations == 0 {
        anyhow::bail!("--trees, --max-depth and --iterations must be at least 1");
    }
    Ok(match kind {
        TreeKind::Forest => TreeModel::Forest(ClassifierParams { trees, max_depth, ..Default::default() }),
        TreeKind::Boosted => TreeModel::Boosted(BoostParams { iterations, ..Default::default() }),
    })
}

/// `vigil eval captures --classifier`: the trees `vigil train --supervised` grows by default,
/// and only with a split by file.
fn eval_classifier(
    kind: Option<TreeKind>,
    split_by: vigil::eval::captures::SplitBy,
) -> anyhow::Result<Option<vigil::model::kind_classifier::TreeModel>> {
    if kind.is_some() && split_by != vigil::eval::captures::SplitBy::File {
        anyhow::bail!("--classifier needs --split-by file: a classifier must not see the files it is tested on");
    }
    kind.map(|kind| tree_model(kind, 50, 14, 100)).transpose()
}

/// An attack kind of the table, for `--attack`.
fn attack_kind_name(name: &str) -> Result<String, String> {
    use vigil::alert::attack::{AttackKind, KINDS};
    AttackKind::from_name(name).map(|k| k.name().to_owned()).ok_or_else(|| {
        format!("unknown attack kind {name:?}: one of {}", KINDS.iter().map(|k| k.name).collect::<Vec<_>>().join(", "))
    })
}

#[cfg(feature = "offline")]
fn check_share(share: f64) -> anyhow::Result<f64> {
    if share > 0.0 && share < 1.0 {
        Ok(share)
    } else {
        anyhow::bail!("--train-share must be between 0 and 1, got {share}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's defaults are text; they must say what the library's constants say.
    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let Command::Train(train) = Cli::parse_from(["vigil", "train", "--pcap", "x.pcap", "--out", "m"]).command
        else {
            unreachable!("parsed as train")
        };
        let t = &train.timing;
        assert_eq!(t.interval, vigil::flows::DEFAULT_INTERVAL);
        assert_eq!(t.idle_timeout, vigil::flows::DEFAULT_IDLE_TIMEOUT);
        assert_eq!(t.active_timeout, vigil::flows::DEFAULT_ACTIVE_TIMEOUT);
        assert_eq!(train.model.window, vigil::features::DEFAULT_WINDOW);
    }

    #[test]
    fn egress_is_on_unless_turned_off() {
        let run = |args: &[&str]| {
            let Command::Run(run) = Cli::parse_from([&["vigil", "run"], args].concat()).command else {
                unreachable!("parsed as run")
            };
            run.apply(vigil::config::Config::default()).sensor.egress
        };
        assert!(run(&[]));
        assert!(run(&["--egress"]));
        assert!(!run(&["--no-egress"]));
        assert!(Cli::try_parse_from(["vigil", "run", "--egress", "--no-egress"]).is_err());
    }
}
