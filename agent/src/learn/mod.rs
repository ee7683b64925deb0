//! Learning the protected network: the learning phase of `vigil run`.
//!
//! A run with the built-in model and `learn.enabled` starts in the **learning** phase. The
//! built-in model keeps alerting, and its alerts are marked `vigil.model.phase: "learning"`.
//! Auto-block stays in dry-run unless `learn.block` allows it. The scored conversations feed a
//! bounded, stratified [`sample`] of the host's own traffic.
//!
//! When `learn.period` is over, a thread of its own trains a site model on the sample at the
//! lowest CPU priority (`SCHED_IDLE`), so the harvest keeps its interval. The new model is
//! then validated:
//! - enough rows (`learn.min_rows`);
//! - enough hours of the day covered (`learn.min_hours`, or every hour the period spans if it
//!   is shorter);
//! - its alert rate on the held-back slice of recent traffic at most `learn.max_alert_rate`.
//!
//! A model that passes is swapped in between two cycles, and the phase becomes **site**. It is
//! written, signed with a key of the host's own, under `learn.dir`. Status, metrics and every
//! later alert carry its sha256. A model that fails is held back, with the reason in the log and
//! the status file; learning then goes on for another period, keeping its sample.
//!
//! Then the site model **adapts**: every `learn.retrain_every` a new one is trained on that
//! period's traffic, sampled under the same guards, and validated the same way. It must also
//! alert on the held-back recent traffic at about the rate of the model in use (within
//! `learn.max_rate_change`): a model whose alert rate jumps or collapses is held back as
//! **drift**, and the model in use stays. Swaps, held-back models and drift are events for the
//! sinks as well as log lines.

pub mod sample;
pub mod store;

use std::{path::PathBuf, sync::mpsc, time::Duration};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use self::sample::{RowKey, Sample, SampleConfig, SampleStats};
pub use self::store::{CURRENT, SITE_KEY_DIR, SavedSite, SiteError, current_site};
use crate::{
    config::HumanDuration,
    detect::ScoredFlow,
    features::Schema,
    model::{Detector, TrainConfig, train},
};

/// `[learn]`: the learning phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnSection {
    /// Learn a site model when running with the built-in model.
    pub enabled: bool,
    /// How long to learn before training the site model.
    pub period: HumanDuration,
    /// Rows kept to train on, at most (memory: 82 MB at the default, BENCHMARKS.md).
    pub max_rows: usize,
    /// Held-back rows of recent traffic, at most, to validate the new model on.
    pub holdout_rows: usize,
    /// Rows needed to train; fewer and the model is held back.
    pub min_rows: usize,
    /// Hours of the day (UTC) the sample must cover; a shorter period needs every hour it spans.
    pub min_hours: usize,
    /// Share of `max_rows` one source prefix (/24, /64) may hold.
    pub max_source_share: f64,
    /// The new model may alert on at most this share of the held-back rows.
    pub max_alert_rate: f64,
    /// Let auto-block act during learning (otherwise it is a dry run until the site model).
    pub block: bool,
    /// Once a site model is in, train a new one on each such period of traffic (`"0s"`: never).
    pub retrain_every: HumanDuration,
    /// A retrained model whose alert rate on the held-back recent traffic differs from the
    /// current model's by more than this share is held back as drift.
    pub max_rate_change: f64,
    /// Where site models and the key that signs them are kept.
    pub dir: PathBuf,
    /// Site models kept in `dir` (the newest; `vigil model use|rollback` choose among them).
    pub keep: usize,
}

impl Default for LearnSection {
    fn default() -> Self {
        Self {
            enabled: true,
            period: HumanDuration(Duration::from_hours(24)),
            max_rows: 100_000,
            holdout_rows: 10_000,
            min_rows: 5_000,
            min_hours: 12,
            max_source_share: 0.05,
            max_alert_rate: 0.01,
            block: false,
            retrain_every: HumanDuration(Duration::from_hours(7 * 24)),
            max_rate_change: 0.005,
            dir: PathBuf::from("/var/lib/vigil/models"),
            keep: 5,
        }
    }
}

impl LearnSection {
    /// Checks values that parse but cannot work; the message names the field.
    ///
    /// # Errors
    /// The first bad field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.period.0 < Duration::from_secs(1) {
            return Err(("learn.period", "must be at least 1s".to_owned()));
        }
        if self.max_rows < 100 {
            return Err(("learn.max_rows", "must be at least 100".to_owned()));
        }
        if self.min_rows < 20 || self.min_rows > self.max_rows {
            return Err(("learn.min_rows", "must be at least 20 and at most learn.max_rows".to_owned()));
        }
        if self.holdout_rows < 10 {
            return Err(("learn.holdout_rows", "must be at least 10".to_owned()));
        }
        if self.min_hours > 24 {
            return Err(("learn.min_hours", "must be at most 24".to_owned()));
        }
        if !(self.max_source_share > 0.0 && self.max_source_share <= 1.0) {
            return Err(("learn.max_source_share", "must be in (0, 1]".to_owned()));
        }
        if !(self.max_alert_rate > 0.0 && self.max_alert_rate <= 1.0) {
            return Err(("learn.max_alert_rate", "must be in (0, 1]".to_owned()));
        }
        if !self.retrain_every.0.is_zero() && self.retrain_every.0 < Duration::from_secs(1) {
            return Err(("learn.retrain_every", "must be 0s (never) or at least 1s".to_owned()));
        }
        if !(self.max_rate_change > 0.0 && self.max_rate_change <= 1.0) {
            return Err(("learn.max_rate_change", "must be in (0, 1]".to_owned()));
        }
        if self.keep == 0 {
            return Err(("learn.keep", "must be at least 1".to_owned()));
        }
        if self.enabled && self.dir.as_os_str().is_empty() {
            return Err(("learn.dir", "must not be empty while learning is enabled".to_owned()));
        }
        Ok(())
    }

    /// Hours the sample must cover for a period of this length.
    #[must_use]
    pub fn hours_needed(&self) -> usize {
        let spanned = usize::try_from(self.period.0.as_secs().div_ceil(3600)).unwrap_or(24).min(24);
        self.min_hours.min(spanned)
    }
}

/// Which model is scoring, in alerts (`vigil.model.phase`), the status file and the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The built-in model, while the site model is being learnt.
    Learning,
    /// A site model learnt on this host.
    Site,
    /// A model from the configuration, with no learning.
    #[default]
    Fixed,
    /// A model the fleet published for this host's group (`[fleet.models]`).
    Fleet,
}

impl Phase {
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Learning => "learning",
            Self::Site => "site",
            Self::Fixed => "fixed",
            Self::Fleet => "fleet",
        }
    }
}

/// A site model that passed validation, ready to swap in.
pub struct SiteModel {
    pub detector: Detector,
    /// sha256 of its `manifest.json`.
    pub sha256: String,
    /// Where it was written, if it could be.
    pub dir: Option<PathBuf>,
    pub report: Validation,
}

/// How a trained model did against the rules.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Validation {
    pub rows: usize,
    pub hours: usize,
    pub holdout_rows: usize,
    /// Share of held-back rows at or above the new model's alert threshold.
    pub holdout_alert_rate: f64,
    /// The same share for the model in use, when a site model is retrained.
    #[serde(default)]
    pub current_alert_rate: Option<f64>,
    /// Held back because it alerts on recent traffic far more or far less than the model in use.
    #[serde(default)]
    pub drift: bool,
    /// Why the model was held back; `None` if it passed.
    pub refused: Option<String>,
    /// Seconds training took.
    pub train_seconds: f64,
}

/// What the learner reports to the status file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LearnStatus {
    pub phase: Phase,
    /// Seconds until the learning period ends (learning only).
    pub ends_in_s: Option<f64>,
    pub sample_rows: usize,
    pub holdout_rows: usize,
    pub hours_covered: usize,
    pub training: bool,
    /// Auto-block is held in dry-run until the site model is in.
    #[serde(default)]
    pub block_held: bool,
    /// The last training's validation.
    pub last: Option<Validation>,
    pub sample: Option<SampleStats>,
}

/// What a training run ends with: a validated site model, or the report of one held back.
pub type Outcome = Result<SiteModel, Validation>;

/// The learning phase's state, driven by the agent once per cycle.
pub struct Learner {
    config: LearnSection,
    schema: Schema,
    sample: Sample,
    /// When the current period ends (monotonic ns).
    ends_mono_ns: u64,
    training: Option<mpsc::Receiver<Outcome>>,
    last: Option<Validation>,
    /// The site model in use, once there is one: retrained models are compared with it.
    current: Option<Detector>,
    /// What `learn.dir/current` named when the model in use came from it (or was written
    /// there): a different name means an operator chose another (`vigil model use`).
    current_name: Option<String>,
}

impl Learner {
    /// A learner whose first period starts at `now_mono_ns`.
    #[must_use]
    pub fn new(config: LearnSection, schema: Schema, now_mono_ns: u64) -> Self {
        info!(
            period = %humantime::format_duration(config.period.0),
            max_rows = config.max_rows,
            block = config.block,
            "learning phase: alerting with the built-in model while learning this host's traffic"
        );
        Self::new_quiet(config, schema, now_mono_ns)
    }

    /// A learner that adapts a site model already in use (loaded by this run at start), from
    /// `now_mono_ns` on: `None` when `learn.retrain_every` is `0s`.
    #[must_use]
    pub fn adapting(config: LearnSection, schema: Schema, current: Detector, now_mono_ns: u64) -> Option<Self> {
        if config.retrain_every.0.is_zero() {
            return None;
        }
        let mut learner = Self::new_quiet(config, schema, now_mono_ns);
        learner.current = Some(current);
        learner.ends_mono_ns = now_mono_ns.saturating_add(duration_ns(learner.config.retrain_every.0));
        Some(learner)
    }

    fn new_quiet(config: LearnSection, schema: Schema, now_mono_ns: u64) -> Self {
        let sample = fresh_sample(&config);
        let ends_mono_ns = now_mono_ns.saturating_add(duration_ns(config.period.0));
        let current_name = store::current_name(&config.dir);
        Self { config, schema, sample, ends_mono_ns, training: None, last: None, current: None, current_name }
    }

    /// Where site models, `current` and analysts' feedback are (`learn.dir`).
    #[must_use]
    pub fn dir(&self) -> &std::path::Path {
        &self.config.dir
    }

    /// Whether auto-block may act (not during learning unless `learn.block`).
    #[must_use]
    pub const fn may_block(&self) -> bool {
        self.current.is_some() || self.config.block
    }

    #[must_use]
    pub const fn phase(&self) -> Phase {
        if self.current.is_some() { Phase::Site } else { Phase::Learning }
    }

    /// Whether the learner still samples: while learning, and while adapting a site model.
    const fn sampling(&self) -> bool {
        self.current.is_none() || !self.config.retrain_every.0.is_zero()
    }

    /// The next period's length: the learning period, then the retraining interval.
    const fn period(&self) -> Duration {
        if self.current.is_some() { self.config.retrain_every.0 } else { self.config.period.0 }
    }

    /// Offers a cycle's scored flows: rows below `alert_threshold` from sources not in
    /// `alerted` go to the sample; `alerted` sources (alerted or blocked this cycle) lose their
    /// rows. `hour` is the hour of day (UTC) of the cycle.
    pub fn observe(&mut self, flows: &[ScoredFlow], alerted: &[std::net::IpAddr], alert_threshold: f32, hour: u8) {
        if !self.sampling() {
            return;
        }
        for &source in alerted {
            self.sample.exclude(source);
        }
        for f in flows {
            if !f.score.combined.is_finite() || f.score.combined >= alert_threshold {
                continue;
            }
            let r = &f.flow.record;
            let key = RowKey {
                conversation: conversation_id(r, f.flow.first_mono_ns),
                source: r.src_ip,
                hour,
                protocol: r.protocol,
                port: r.dst_port,
            };
            self.sample.offer(&key, &f.evidence.raw);
        }
    }

    /// An analyst judged an alert a false positive: its source is taken back into the sample,
    /// and the alert's top flow (`row`, seen at `hour`) joins it, past the alert threshold that
    /// kept it out.
    pub fn false_positive(
        &mut self,
        alert_id: &str,
        source: Option<std::net::IpAddr>,
        key: &FeedbackFlow,
        row: &sample::Row,
    ) {
        if let Some(source) = source {
            self.sample.forgive(source);
        }
        let key = RowKey {
            conversation: conversation_id_of(alert_id),
            source: key.source,
            hour: key.hour,
            protocol: key.protocol,
            port: key.port,
        };
        self.sample.offer(&key, row);
    }

    /// A site model an operator chose since the last look (`vigil model use|rollback` wrote
    /// `learn.dir/current`), checked as at start. A model that does not load is reported (at
    /// most once per name) and the model in use stays.
    pub fn operator_choice(&mut self) -> Option<SiteModel> {
        if self.training.is_some() {
            // Training writes `current` itself when its model passes; `poll` takes that one.
            return None;
        }
        let name = store::current_name(&self.config.dir)?;
        if self.current_name.as_deref() == Some(name.as_str()) {
            return None;
        }
        self.current_name = Some(name.clone());
        match store::current_site(&self.config.dir) {
            Ok(Some(saved)) => {
                info!(model = name, "site model chosen by an operator (learn.dir/current changed)");
                self.current = Some(saved.detector.clone());
                let report = Validation::default();
                Some(SiteModel { detector: saved.detector, sha256: saved.sha256, dir: Some(saved.path), report })
            }
            Ok(None) => None,
            Err(e) => {
                warn!(model = name, error = %e.error, "learn.dir/current names a site model that does not load; keeping the model in use");
                None
            }
        }
    }

    /// Starts training when the period is over; answers the outcome when training has
    /// finished: a validated site model to swap in, or the report of one held back.
    ///
    /// After a swap the next period samples afresh (the last `learn.retrain_every` of
    /// traffic). A model held back while learning keeps the sample and learns for another
    /// period; one held back while adapting (drift, or too many alerts) starts the next
    /// period afresh, so traffic that moved the model does not carry over.
    pub fn poll(&mut self, now_mono_ns: u64) -> Option<Outcome> {
        if !self.sampling() {
            return None;
        }
        if let Some(rx) = &self.training {
            let outcome = match rx.try_recv() {
                Ok(outcome) => outcome,
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    warn!("site model training stopped without a result; sampling goes on for another period");
                    self.training = None;
                    self.ends_mono_ns = now_mono_ns.saturating_add(duration_ns(self.period()));
                    return None;
                }
            };
            self.training = None;
            match &outcome {
                Ok(model) => {
                    self.last = Some(model.report.clone());
                    self.current = Some(model.detector.clone());
                    self.current_name = store::current_name(&self.config.dir);
                    self.sample = fresh_sample(&self.config);
                }
                Err(report) => {
                    warn!(
                        reason = report.refused.as_deref().unwrap_or(""),
                        drift = report.drift,
                        rows = report.rows,
                        hours = report.hours,
                        holdout_alert_rate = report.holdout_alert_rate,
                        "site model held back; the model in use stays and sampling goes on for another period"
                    );
                    self.last = Some(report.clone());
                    if self.current.is_some() {
                        self.sample = fresh_sample(&self.config);
                    }
                }
            }
            self.ends_mono_ns = now_mono_ns.saturating_add(duration_ns(self.period()));
            return Some(outcome);
        }
        if now_mono_ns >= self.ends_mono_ns {
            self.start_training();
        }
        None
    }

    fn start_training(&mut self) {
        let rows = self.sample.rows();
        let holdout = self.sample.holdout_rows();
        let hours = self.sample.hours_covered();
        let job = Job {
            config: self.config.clone(),
            schema: self.schema.clone(),
            rows,
            holdout,
            hours,
            hours_needed: self.config.hours_needed(),
            strata: self.sample.strata(),
            current: self.current.clone(),
        };
        info!(
            rows = job.rows.nrows(),
            holdout = job.holdout.nrows(),
            hours,
            "{}: training the site model",
            if self.current.is_some() { "retraining period over" } else { "learning period over" }
        );
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name("vigil-learn".to_owned()).spawn(move || {
            lowest_priority();
            let _ = tx.send(job.run());
        });
        match spawned {
            Ok(_) => self.training = Some(rx),
            Err(e) => warn!(error = %e, "could not start the training thread; learning goes on"),
        }
    }

    /// For the status file.
    #[must_use]
    pub fn status(&self, now_mono_ns: u64) -> LearnStatus {
        #[expect(clippy::cast_precision_loss, reason = "seconds for display")]
        let ends_in_s = self.sampling().then(|| self.ends_mono_ns.saturating_sub(now_mono_ns) as f64 / 1e9);
        LearnStatus {
            phase: self.phase(),
            ends_in_s,
            sample_rows: self.sample.len(),
            holdout_rows: self.sample.holdout_len(),
            hours_covered: self.sample.hours_covered(),
            training: self.training.is_some(),
            block_held: !self.may_block(),
            last: self.last.clone(),
            sample: Some(self.sample.stats),
        }
    }
}

fn fresh_sample(config: &LearnSection) -> Sample {
    Sample::new(SampleConfig {
        max_rows: config.max_rows,
        holdout_rows: config.holdout_rows,
        max_source_share: config.max_source_share,
        seed: 1,
    })
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the sample needs to know of an alert's top flow.
#[derive(Clone, Copy, Debug)]
pub struct FeedbackFlow {
    pub source: std::net::IpAddr,
    pub hour: u8,
    pub protocol: u8,
    pub port: u16,
}

/// A row key for an alert's flow returned by feedback: never held back (it is not a
/// conversation of the sample's own choosing, and validation should not see it twice).
fn conversation_id_of(alert_id: &str) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    std::hash::Hash::hash(&("feedback", alert_id), &mut h);
    let id = h.finish();
    if id.is_multiple_of(sample::HOLDOUT_EVERY) { id.wrapping_add(1) } else { id }
}

/// A conversation's identity across cycles: its initiator's 5-tuple and first packet.
fn conversation_id(r: &crate::flows::FlowRecord, first_mono_ns: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // A fixed-key hasher: the same conversation hashes the same in every cycle.
    let mut h = std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().build_hasher();
    std::hash::Hash::hash(&(r.src_ip, r.dst_ip, r.src_port, r.dst_port, r.protocol, first_mono_ns), &mut h);
    h.finish()
}

/// Runs the calling thread at the lowest priority Linux has (`SCHED_IDLE`): it gets a CPU only
/// when nothing else wants one.
pub fn lowest_priority() {
    // SAFETY: a zeroed `sched_param` is valid for SCHED_IDLE (priority 0), and pid 0 is the
    // calling thread.
    let param: libc::sched_param = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the call only reads `param`.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &raw const param) };
    if rc != 0 {
        warn!(error = %std::io::Error::last_os_error(), "could not lower the training thread's priority");
    }
}

/// Trains a site model on `rows` and validates it against `holdout` and the rules of `config`
/// (`hours` of the day covered by the rows), as the learning phase does at the end of a
/// period; writes it under `config.dir` when it passes. Runs on the calling thread.
///
/// # Errors
/// The validation report, with why the model was held back.
pub fn train_site(
    config: &LearnSection,
    schema: &Schema,
    rows: ndarray::Array2<f32>,
    holdout: ndarray::Array2<f32>,
    hours: usize,
    current: Option<&Detector>,
) -> Result<SiteModel, Validation> {
    Job {
        config: config.clone(),
        schema: schema.clone(),
        rows,
        holdout,
        hours,
        hours_needed: config.hours_needed(),
        strata: 0,
        current: current.cloned(),
    }
    .run()
}

/// One training run, owned by its thread.
struct Job {
    config: LearnSection,
    schema: Schema,
    rows: ndarray::Array2<f32>,
    holdout: ndarray::Array2<f32>,
    hours: usize,
    hours_needed: usize,
    strata: usize,
    /// The site model in use, to compare with (adapting only).
    current: Option<Detector>,
}

impl Job {
    fn run(self) -> Outcome {
        let started = std::time::Instant::now();
        let mut report = Validation {
            rows: self.rows.nrows(),
            hours: self.hours,
            holdout_rows: self.holdout.nrows(),
            ..Validation::default()
        };
        let refuse = |mut report: Validation, why: String| {
            report.refused = Some(why);
            Err(report)
        };
        if report.rows < self.config.min_rows {
            let why = format!("{} rows, fewer than learn.min_rows ({})", report.rows, self.config.min_rows);
            return refuse(report, why);
        }
        if report.hours < self.hours_needed {
            let why = format!("{} hours of the day covered, fewer than {} needed", report.hours, self.hours_needed);
            return refuse(report, why);
        }
        if report.holdout_rows < 10 {
            let why = format!("{} held-back rows, too few to validate on (10 needed)", report.holdout_rows);
            return refuse(report, why);
        }
        let summary = serde_json::json!({
            "source": "learning phase",
            "strata": self.strata,
            "hours": self.hours,
            "period_s": self.config.period.0.as_secs(),
        });
        let trained = match train(&self.schema, self.rows.view(), &TrainConfig::default(), summary, |_| {}) {
            Ok(t) => t,
            Err(e) => return refuse(report, format!("training failed: {e}")),
        };
        report.train_seconds = started.elapsed().as_secs_f64();
        let scores = match trained.detector.score(self.holdout.view()) {
            Ok(s) => s,
            Err(e) => return refuse(report, format!("scoring the held-back rows failed: {e}")),
        };
        let rate = alert_rate(&scores, trained.detector.thresholds.alert);
        report.holdout_alert_rate = rate;
        if let Some(current) = &self.current {
            let now = match current.score(self.holdout.view()) {
                Ok(s) => alert_rate(&s, current.thresholds.alert),
                Err(e) => {
                    return refuse(report, format!("scoring the held-back rows with the model in use failed: {e}"));
                }
            };
            report.current_alert_rate = Some(now);
            if (rate - now).abs() > self.config.max_rate_change {
                report.drift = true;
                let why = format!(
                    "drift: alerts on {:.2}% of the held-back recent traffic where the model in use alerts on {:.2}%, a \
                     change beyond learn.max_rate_change ({:.2} points)",
                    rate * 100.0,
                    now * 100.0,
                    self.config.max_rate_change * 100.0
                );
                return refuse(report, why);
            }
        }
        if rate > self.config.max_alert_rate {
            let why = format!(
                "alerts on {:.2}% of the held-back recent traffic, above learn.max_alert_rate ({:.2}%)",
                rate * 100.0,
                self.config.max_alert_rate * 100.0
            );
            return refuse(report, why);
        }
        let sha256 = trained.bundle.sha256();
        let dir = match store::save(&self.config.dir, &trained.bundle, &sha256, self.config.keep) {
            Ok(dir) => Some(dir),
            Err(e) => {
                warn!(error = %e, dir = %self.config.dir.display(), "could not write the site model; using it anyway");
                None
            }
        };
        Ok(SiteModel { detector: trained.detector, sha256, dir, report })
    }
}

/// Share of `scores` at or above `alert`.
#[expect(clippy::cast_precision_loss, reason = "row counts")]
fn alert_rate(scores: &[crate::model::Score], alert: f32) -> f64 {
    scores.iter().filter(|s| s.combined >= alert).count() as f64 / scores.len().max(1) as f64
}

#[cfg(test)]
mod tests;
