//! `vigil eval`: how well the detector separates attacks from benign traffic.
//!
//! Both modes follow one protocol: train on part of the benign data only, then score held-out
//! benign data and every attack, and report ROC-AUC and PR-AUC (combined score and each model
//! alone), precision, recall, F1 and the confusion matrix at the calibrated alert threshold,
//! and recall per attack kind, as JSON and as an SVG picture (ROC and PR curves, score
//! histograms).

#![expect(
    clippy::needless_pass_by_value,
    reason = "ndarray views are cheap handles, passed by value as ndarray's own API does"
)]

pub mod attackers;
pub mod labels;
pub mod metrics;
pub mod plot;
pub mod supervised;
pub mod unsw;

use std::{collections::BTreeMap, path::Path};

use ndarray::{ArrayView2, Axis};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use self::metrics::{Confusion, Curves, curves, thin};
use crate::{
    features::Schema,
    model::{Detector, TrainConfig, detector::log_reconstruction_error, train::TrainError},
};

/// Areas under the curves of one score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Areas {
    pub roc_auc: f64,
    pub pr_auc: f64,
}

/// Detection of one attack kind at the threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KindRecall {
    pub kind: String,
    pub flows: u64,
    pub detected: u64,
    pub recall: f64,
}

/// Precision, recall and F1 at the alert threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AtThreshold {
    pub threshold: f32,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_positive_rate: f64,
    pub confusion: Confusion,
}

/// One evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub name: String,
    pub protocol: String,
    pub schema: String,
    pub features: usize,
    pub train_rows: usize,
    pub test_benign: usize,
    pub test_attack: usize,
    /// `combined`, `iforest`, `autoencoder`.
    pub areas: BTreeMap<String, Areas>,
    pub at_threshold: AtThreshold,
    pub per_kind: Vec<KindRecall>,
    /// Thinned ROC (fpr, tpr) and PR (recall, precision) points of the combined score.
    pub roc: Vec<(f64, f64)>,
    pub pr: Vec<(f64, f64)>,
    /// Combined scores, for the histograms (not serialised).
    #[serde(skip)]
    pub scores: Vec<(f32, bool)>,
    #[serde(skip)]
    pub all_curves: BTreeMap<String, Curves>,
    /// Captures only: per capture and per attacker, through the live alert grouping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attackers: Option<attackers::AttackerReport>,
    /// Captures split by file with `--classifier`: the same, with a supervised classifier
    /// beside the anomaly models that never saw the capture's file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attackers_with_classifier: Option<attackers::AttackerReport>,
}

/// Held-out test data: raw rows, whether each is an attack, and its kind.
pub struct TestSet<'a> {
    pub rows: ArrayView2<'a, f32>,
    pub attack: &'a [bool],
    pub kind: &'a [String],
}

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("scoring: {0}")]
    Score(#[from] crate::model::onnx::OnnxError),
    #[error("the test data needs both benign and attack rows ({benign} benign, {attack} attack)")]
    OneClass { benign: usize, attack: usize },
}

/// Splits indices 0..n into two shuffled parts, the first `share` of them.
#[must_use]
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "row counts")]
pub fn split(indices: &[usize], share: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut v = indices.to_vec();
    v.shuffle(&mut StdRng::seed_from_u64(seed));
    let k = (v.len() as f64 * share).round() as usize;
    let test = v.split_off(k.min(v.len()));
    (v, test)
}

/// Scores `test` with `detector` and builds the report.
///
/// # Errors
/// [`EvalError`] if scoring fails or a class is missing.
///
/// # Panics
/// Never: both classes are checked before the curves are computed.
pub fn report(
    name: &str,
    protocol: &str,
    detector: &Detector,
    train_rows: usize,
    test: &TestSet<'_>,
) -> Result<EvalReport, EvalError> {
    let attack = test.attack.iter().filter(|&&a| a).count();
    let benign = test.attack.len() - attack;
    if attack == 0 || benign == 0 {
        return Err(EvalError::OneClass { benign, attack });
    }
    let mut scores = Vec::with_capacity(test.rows.nrows());
    for chunk in test.rows.axis_chunks_iter(Axis(0), 4096) {
        scores.extend(detector.score(chunk)?);
    }
    let combined: Vec<f32> = scores.iter().map(|s| s.combined).collect();
    let forest: Vec<f32> = scores.iter().map(|s| s.iforest).collect();
    let ae: Vec<f32> = scores.iter().map(|s| log_reconstruction_error(s.autoencoder)).collect();
    let mut areas = BTreeMap::new();
    let mut all_curves = BTreeMap::new();
    for (model, values) in [("combined", &combined), ("iforest", &forest), ("autoencoder", &ae)] {
        let c = curves(values, test.attack).expect("both classes present");
        areas.insert(model.to_owned(), Areas { roc_auc: c.roc_auc, pr_auc: c.pr_auc });
        all_curves.insert(model.to_owned(), c);
    }
    let threshold = detector.thresholds.alert;
    let confusion = Confusion::at(&combined, test.attack, threshold);
    let mut kinds: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for ((&s, &a), k) in combined.iter().zip(test.attack).zip(test.kind) {
        if a {
            let e = kinds.entry(k.as_str()).or_default();
            e.0 += 1;
            e.1 += u64::from(s > threshold);
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "ratios of counts")]
    let per_kind = kinds
        .into_iter()
        .map(|(kind, (flows, detected))| KindRecall {
            kind: kind.to_owned(),
            flows,
            detected,
            recall: detected as f64 / flows as f64,
        })
        .collect();
    let c = &all_curves["combined"];
    Ok(EvalReport {
        name: name.to_owned(),
        protocol: protocol.to_owned(),
        schema: detector.schema.id.clone(),
        features: detector.schema.len(),
        train_rows,
        test_benign: benign,
        test_attack: attack,
        areas,
        at_threshold: AtThreshold {
            threshold,
            precision: confusion.precision(),
            recall: confusion.recall(),
            f1: confusion.f1(),
            false_positive_rate: confusion.false_positive_rate(),
            confusion,
        },
        per_kind,
        roc: thin(&c.roc, 400),
        pr: thin(&c.pr, 400),
        scores: combined.into_iter().zip(test.attack.iter().copied()).collect(),
        all_curves,
        attackers: None,
        attackers_with_classifier: None,
    })
}

/// Trains on benign rows and evaluates on the test set.
///
/// # Errors
/// [`EvalError`].
pub fn train_and_report(
    name: &str,
    protocol: &str,
    schema: &Schema,
    train: ArrayView2<'_, f32>,
    test: &TestSet<'_>,
    config: &TrainConfig,
    progress: impl FnMut(&str),
) -> Result<EvalReport, EvalError> {
    let summary = serde_json::json!({ "evaluation": name });
    let trained = crate::model::train(schema, train, config, summary, progress)?;
    report(name, protocol, &trained.detector, train.nrows(), test)
}

/// Writes `<stem>.json` and `<stem>.svg` into `dir`.
///
/// # Errors
/// I/O errors, or a plotting failure as an I/O error.
pub fn write_report(dir: &Path, stem: &str, report: &EvalReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    json.push(b'\n');
    std::fs::write(dir.join(format!("{stem}.json")), json)?;
    plot::write_svg(&dir.join(format!("{stem}.svg")), report)
}

impl EvalReport {
    /// A few lines for a terminal.
    #[must_use]
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = format!(
            "{} ({} features, trained on {} benign; tested on {} benign + {} attack)\n",
            self.name, self.features, self.train_rows, self.test_benign, self.test_attack
        );
        for (model, a) in &self.areas {
            let _ = writeln!(s, "  {model:<12} ROC-AUC {:.4}  PR-AUC {:.4}", a.roc_auc, a.pr_auc);
        }
        let t = &self.at_threshold;
        let _ = writeln!(
            s,
            "  at threshold {:.3}: precision {:.4} recall {:.4} F1 {:.4} FPR {:.5} (TP {} FP {} TN {} FN {})",
            t.threshold,
            t.precision,
            t.recall,
            t.f1,
            t.false_positive_rate,
            t.confusion.true_positives,
            t.confusion.false_positives,
            t.confusion.true_negatives,
            t.confusion.false_negatives
        );
        for k in &self.per_kind {
            let _ = writeln!(s, "  {:<16} {:>6}/{:<6} recall {:.3}", k.kind, k.detected, k.flows, k.recall);
        }
        let played = [("", &self.attackers), (", with the classifier", &self.attackers_with_classifier)];
        for (with, a) in played.into_iter().filter_map(|(w, a)| Some((w, a.as_ref()?))) {
            let _ = writeln!(
                s,
                "  per capture, through the live alert grouping{with}: {} alerts on {} benign conversations ({:.2} per 1,000)",
                a.benign_alerts, a.benign_conversations, a.benign_alerts_per_1000
            );
            for k in &a.per_kind {
                let time = k
                    .median_seconds_to_alert
                    .map_or_else(String::new, |t| format!(", median {t:.1} s to the first alert"));
                let alerted = format!("{}/{}", k.alerted, k.captures);
                let _ = writeln!(s, "  {:<16} attackers alerted {alerted:>7}{time}", k.kind);
            }
        }
        s
    }
}

/// The capture evaluation: replay every labelled capture, train on half of the benign
/// captures' flows (unless a model is given), test on the other half and on every flow of the
/// attack captures.
pub mod captures {
    use std::{path::Path, time::Duration};

    use ndarray::Axis;

    use super::{
        EvalError, EvalReport, TestSet,
        attackers::{self, Capture},
        labels::{BENIGN, CaptureLabel, Labels},
        report, split,
    };
    use crate::{
        alert::attack::AttackKind,
        features::{Schema, dataset::FlowDataset},
        flows::HarvestConfig,
        model::{
            Detector, TrainConfig,
            kind_classifier::{DEFAULT_MIN_PROBABILITY, KindClassifier, TreeModel},
        },
    };

    /// How the benign captures are split between training and test.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
    pub enum SplitBy {
        /// By capture file: no file gives rows to both sides, as a sensor meets traffic it
        /// never saw. The honest default.
        #[default]
        File,
        /// By conversation, across files (as the notebooks did): neighbouring conversations of
        /// one file land on both sides, and the numbers flatter the model.
        Flow,
    }

    /// Settings of a capture evaluation.
    pub struct CaptureEval<'a> {
        pub labels: &'a Path,
        pub harvest: HarvestConfig,
        pub interval: Duration,
        pub window: Duration,
        pub train: TrainConfig,
        /// Share of the benign captures (files, or conversations with [`SplitBy::Flow`]) to
        /// train on.
        pub train_share: f64,
        pub split_by: SplitBy,
        /// Evaluate this detector instead of training one (every flow is then test data).
        pub model: Option<Detector>,
        /// With [`SplitBy::File`]: also play the captures with a supervised classifier of
        /// this kind beside the trained anomaly models ([`CLASSIFIER_FOLDS`] folds of the
        /// attack captures by file; each capture's classifier never saw its file).
        pub classifier: Option<TreeModel>,
        pub progress: bool,
    }

    /// Folds of the attack captures for [`CaptureEval::classifier`]: each kind's files are
    /// dealt to them in turn, so a kind with at least this many files is in every fold's
    /// training data.
    pub const CLASSIFIER_FOLDS: usize = 3;

    /// Why a capture evaluation failed.
    #[derive(Debug, thiserror::Error)]
    pub enum CaptureEvalError {
        #[error(transparent)]
        Labels(#[from] super::labels::LabelError),
        #[error(transparent)]
        Data(#[from] crate::features::dataset::DatasetError),
        #[error(transparent)]
        Eval(#[from] EvalError),
        #[error("the classifier of fold {fold}: {message}")]
        Classifier { fold: usize, message: String },
    }

    /// Runs it.
    ///
    /// # Errors
    /// [`CaptureEvalError`].
    pub fn run(config: CaptureEval<'_>, mut progress: impl FnMut(&str)) -> Result<EvalReport, CaptureEvalError> {
        let labels = Labels::read(config.labels)?;
        let captures = labels.captures()?;
        progress(&format!("{} labelled captures under {}", captures.len(), labels.root.display()));
        let files: Vec<_> = captures.iter().map(|c| c.0.clone()).collect();
        let data = FlowDataset::from_captures(&files, config.harvest, config.interval, config.window, config.progress)?;
        let mut attack = Vec::with_capacity(data.len());
        let mut kind = Vec::with_capacity(data.len());
        let mut benign_capture = Vec::new();
        for (i, conversation) in data.conversations.iter().enumerate() {
            let label = &captures[data.file_index[i]].2;
            let is_attack = label.is_attack_flow(&conversation.first);
            attack.push(is_attack);
            kind.push(if is_attack { label.kind.clone() } else { BENIGN.to_owned() });
            if label.is_benign() {
                benign_capture.push(i);
            }
        }
        let name = format!("captures: {}", labels.root.display());
        let interval_ns = crate::clock::duration_ns(config.interval).max(1);
        if let Some(detector) = &config.model {
            let protocol = "given model; every conversation of every labelled capture is scored (benign ones may overlap its training data)";
            let test = TestSet { rows: data.rows.view(), attack: &attack, kind: &kind };
            let mut r = report(&name, protocol, detector, 0, &test)?;
            r.attackers = Some(play(&data, &captures, |_| Some(detector), interval_ns)?);
            return Ok(r);
        }
        let (train_idx, held_out, unit) = match config.split_by {
            SplitBy::Flow => {
                let (train, test) = split(&benign_capture, config.train_share, config.train.seed);
                (train, test, "conversations".to_owned())
            }
            SplitBy::File => {
                let mut files: Vec<usize> = benign_capture.iter().map(|&i| data.file_index[i]).collect();
                files.dedup();
                let (train_files, test_files) = split(&files, config.train_share, config.train.seed);
                let train_files: std::collections::HashSet<usize> = train_files.into_iter().collect();
                let (train, test): (Vec<usize>, Vec<usize>) =
                    benign_capture.iter().partition(|&&i| train_files.contains(&data.file_index[i]));
                (
                    train,
                    test,
                    format!(
                        "files ({} of {} benign captures)",
                        train_files.len(),
                        test_files.len() + train_files.len()
                    ),
                )
            }
        };
        progress(&format!(
            "training on {} conversations, testing on {} benign and the attack captures'",
            train_idx.len(),
            held_out.len()
        ));
        let mut test_idx: Vec<usize> = held_out;
        test_idx.extend((0..data.len()).filter(|i| !captures[data.file_index[*i]].2.is_benign()));
        test_idx.sort_unstable();
        let train_rows = data.rows.select(Axis(0), &train_idx);
        let test_rows = data.rows.select(Axis(0), &test_idx);
        let test_attack: Vec<bool> = test_idx.iter().map(|&i| attack[i]).collect();
        let test_kind: Vec<String> = test_idx.iter().map(|&i| kind[i].clone()).collect();
        let protocol = format!(
            "split by {unit}: train on {:.0}% of the benign captures (seed {}), test on the rest and on every conversation of the attack captures; \
             attack conversations are those to or from the attacker (the victim when the attacker is unknown), other conversations of attack captures count as benign",
            config.train_share * 100.0,
            config.train.seed
        );
        let test = TestSet { rows: test_rows.view(), attack: &test_attack, kind: &test_kind };
        let summary = serde_json::json!({ "evaluation": name });
        let trained = crate::model::train(&Schema::flow(), train_rows.view(), &config.train, summary, &mut progress)
            .map_err(EvalError::from)?;
        let mut r = report(&name, &protocol, &trained.detector, train_rows.nrows(), &test)?;
        // Per capture only where no capture gave training rows: the benign files held out,
        // and the attack files.
        if config.split_by == SplitBy::File {
            let trained_files: std::collections::HashSet<usize> =
                train_idx.iter().map(|&i| data.file_index[i]).collect();
            let held_out = |f: usize| !trained_files.contains(&f);
            r.attackers = Some(play(&data, &captures, |f| held_out(f).then_some(&trained.detector), interval_ns)?);
            if let Some(model) = &config.classifier {
                let folds = classifier_folds(&data, &captures, &trained.detector, &train_idx, model, &mut progress)?;
                let fold_of = attack_folds(&captures);
                r.attackers_with_classifier = Some(play(
                    &data,
                    &captures,
                    |f| held_out(f).then(|| &folds[fold_of[f].unwrap_or(CLASSIFIER_FOLDS)]),
                    interval_ns,
                )?);
            }
        }
        Ok(r)
    }

    /// The fold of each attack capture (none for benign ones): each kind's files in turn.
    fn attack_folds(captures: &[(std::path::PathBuf, String, CaptureLabel)]) -> Vec<Option<usize>> {
        let mut dealt: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        captures
            .iter()
            .map(|(_, _, label)| {
                (!label.is_benign()).then(|| {
                    let n = dealt.entry(label.kind.as_str()).or_default();
                    *n += 1;
                    (*n - 1) % CLASSIFIER_FOLDS
                })
            })
            .collect()
    }

    /// `detector` with a classifier per fold: fold k's is trained on the benign training
    /// conversations and every attack capture outside fold k; the last (index
    /// [`CLASSIFIER_FOLDS`]), for the held-out benign captures, on every attack capture.
    fn classifier_folds(
        data: &FlowDataset,
        captures: &[(std::path::PathBuf, String, CaptureLabel)],
        detector: &Detector,
        benign_train: &[usize],
        model: &TreeModel,
        progress: &mut impl FnMut(&str),
    ) -> Result<Vec<Detector>, CaptureEvalError> {
        // Each conversation's class: the kind of its capture's label for the attacker's
        // conversations, benign for the rest.
        let kinds: Vec<Option<&str>> = data
            .conversations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let label = &captures[data.file_index[i]].2;
                label
                    .is_attack_flow(&c.first)
                    .then(|| AttackKind::from_label(&label.kind).map(AttackKind::name))
                    .flatten()
            })
            .collect();
        let mut classes: Vec<String> = kinds.iter().flatten().map(|k| (*k).to_owned()).collect();
        classes.sort_unstable();
        classes.dedup();
        classes.insert(0, BENIGN.to_owned());
        let y: Vec<u16> = kinds
            .iter()
            .map(|k| {
                let i = k.map_or(0, |k| classes.iter().position(|c| c == k).unwrap_or(0));
                u16::try_from(i).unwrap_or(0)
            })
            .collect();
        let fold_of = attack_folds(captures);
        let schema = Schema::flow();
        (0..=CLASSIFIER_FOLDS)
            .map(|fold| {
                let rows: Vec<usize> = benign_train
                    .iter()
                    .copied()
                    .chain((0..data.len()).filter(|&i| fold_of[data.file_index[i]].is_some_and(|f| f != fold)))
                    .collect();
                progress(&format!(
                    "classifier {} of {}: {} on {} conversations",
                    fold + 1,
                    CLASSIFIER_FOLDS + 1,
                    model.describe(),
                    rows.len()
                ));
                let x = data.rows.select(Axis(0), &rows);
                let labels: Vec<u16> = rows.iter().map(|&i| y[i]).collect();
                let summary = serde_json::json!({ "evaluation fold": fold });
                let trained = crate::model::train::train_classifier(
                    &schema,
                    x.view(),
                    &labels,
                    classes.clone(),
                    model,
                    DEFAULT_MIN_PROBABILITY,
                    summary,
                )
                .map_err(|e| CaptureEvalError::Classifier { fold, message: e.to_string() })?;
                let classifier = KindClassifier::load(&trained.spec, &trained.bytes, schema.len())
                    .map_err(|e| CaptureEvalError::Classifier { fold, message: e.to_string() })?;
                Ok(Detector { classifier: Some(classifier), ..detector.clone() })
            })
            .collect()
    }

    /// Plays the captures `detector_of` gives a detector through the live alert grouping.
    fn play<'d>(
        data: &FlowDataset,
        captures: &[(std::path::PathBuf, String, CaptureLabel)],
        detector_of: impl Fn(usize) -> Option<&'d Detector>,
        interval_ns: u64,
    ) -> Result<attackers::AttackerReport, EvalError> {
        let mut by_file = vec![Vec::new(); data.files.len()];
        for (i, &f) in data.file_index.iter().enumerate() {
            by_file[f].push(i);
        }
        let mut played = Vec::new();
        let mut alert_threshold = None;
        for (f, idx) in by_file.into_iter().enumerate().filter(|(_, idx)| !idx.is_empty()) {
            let Some(detector) = detector_of(f) else { continue };
            // Every capture's detector has the same anomaly models, and so the same threshold.
            alert_threshold = Some(detector.thresholds.alert);
            let (_, file, label) = &captures[f];
            let scores = detector.score(data.rows.select(Axis(0), &idx).view())?;
            played.push(Capture {
                file: file.clone(),
                kind: if label.is_benign() { BENIGN.to_owned() } else { label.kind.clone() },
                attacker: label.attacker,
                victim: label.victim,
                conversations: idx.iter().map(|&i| &data.conversations[i]).collect(),
                scores,
            });
        }
        Ok(attackers::evaluate(&played, alert_threshold.unwrap_or(f32::INFINITY), interval_ns))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn each_kinds_attack_files_are_dealt_to_the_folds_in_turn_and_benign_ones_to_none() {
            let capture = |kind: &str| {
                let label = CaptureLabel { kind: kind.into(), attacker: None, victim: None, note: None };
                (std::path::PathBuf::from(kind), kind.to_owned(), label)
            };
            let kinds = ["scan", "scan", "benign", "scan", "flood", "scan", "flood"];
            let captures: Vec<_> = kinds.iter().map(|k| capture(k)).collect();
            assert_eq!(attack_folds(&captures), [Some(0), Some(1), None, Some(2), Some(0), Some(0), Some(1)]);
        }
    }
}

/// The UNSW-NB15 evaluation: train on half of the normal rows, test on the other half and on
/// every attack row, once with all columns and once without the TTL leak columns.
pub mod dataset {
    use std::path::Path;

    use ndarray::Array2;

    use super::{
        EvalError, EvalReport, TestSet, split, train_and_report,
        unsw::{UnswData, UnswError, UnswSchema},
    };
    use crate::model::TrainConfig;

    /// Why the dataset evaluation failed.
    #[derive(Debug, thiserror::Error)]
    pub enum DatasetEvalError {
        #[error(transparent)]
        Read(#[from] UnswError),
        #[error(transparent)]
        Eval(#[from] EvalError),
    }

    /// Runs both variants (with and without `sttl`, `dttl`, `ct_state_ttl`).
    ///
    /// # Errors
    /// [`DatasetEvalError`].
    pub fn run(
        path: &Path,
        config: &TrainConfig,
        train_share: f64,
        mut progress: impl FnMut(&str),
    ) -> Result<Vec<EvalReport>, DatasetEvalError> {
        let data = UnswData::read(path)?;
        progress(&format!("{}: {} rows", path.display(), data.len()));
        let normal: Vec<usize> = (0..data.len()).filter(|&i| !data.attack[i]).collect();
        let (train_idx, mut test_idx) = split(&normal, train_share, config.seed);
        test_idx.extend((0..data.len()).filter(|&i| data.attack[i]));
        test_idx.sort_unstable();
        let attack: Vec<bool> = test_idx.iter().map(|&i| data.attack[i]).collect();
        let kind: Vec<String> = test_idx.iter().map(|&i| data.kind[i].clone()).collect();
        let mut reports = Vec::new();
        for with_leaks in [false, true] {
            let schema = UnswSchema::fit(&data, &train_idx, with_leaks);
            let train: Array2<f32> = schema.rows(&data, &train_idx);
            let test_rows = schema.rows(&data, &test_idx);
            let name =
                format!("UNSW-NB15 {}", if with_leaks { "all columns" } else { "without sttl, dttl, ct_state_ttl" });
            let protocol = format!(
                "dataset mode: train on {:.0}% of the normal rows (seed {}), test on the other normal rows and every attack row",
                train_share * 100.0,
                config.seed
            );
            progress(&format!("{name}: {} features", schema.schema.len()));
            let test = TestSet { rows: test_rows.view(), attack: &attack, kind: &kind };
            let report =
                train_and_report(&name, &protocol, &schema.schema, train.view(), &test, config, &mut progress)?;
            reports.push(report);
        }
        Ok(reports)
    }
}
