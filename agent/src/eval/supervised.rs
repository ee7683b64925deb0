//! `vigil eval supervised`: how well the supervised classifier names attacks, measured the way
//! the published 0.99+ results are (a random split of flows) and the way a deployment meets
//! them (whole capture files or whole days it never saw).
//!
//! Every split is a k-fold cross-validation: each row is predicted by a forest that was grown
//! without its fold, and the per-class precision, recall, F1 and the confusion matrix are
//! counted over all rows. In the random split a fold is a random share of rows; in the split by
//! group a fold is a set of whole groups (capture files, or days of a dataset), spread so that
//! each class's groups fall into different folds where it has several.

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    reason = "row and class counts far below 2^24"
)]

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
};

use ndarray::{Array2, Axis};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use super::labels::Labels;
use super::{
    metrics::curves,
    unsw::{UnswData, UnswSchema},
};
use crate::{
    alert::attack::AttackKind,
    features::{Schema, dataset::FlowDataset},
    flows::HarvestConfig,
    model::{classifier::argmax, kind_classifier::TreeModel},
};

/// The class name benign rows get, whatever the dataset calls them: the labels' own.
pub use super::labels::BENIGN;

/// Labelled rows: features, a class per row and the group (file or day) each came from.
#[derive(Clone, Debug)]
pub struct Labelled {
    /// What the rows are, for reports.
    pub source: String,
    pub features: Vec<String>,
    pub x: Array2<f32>,
    /// Index into `classes`; 0 is [`BENIGN`].
    pub y: Vec<u16>,
    pub classes: Vec<String>,
    /// Index into `group_names`.
    pub groups: Vec<u32>,
    pub group_names: Vec<String>,
    /// What a group is: `file`, `day`, or `none` (one group: the split by group is impossible).
    pub group_kind: String,
}

/// Why labelled rows could not be read or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum SupervisedError {
    #[error("{path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: column `{column}` is missing")]
    Column { path: PathBuf, column: String },
    #[error(transparent)]
    Unsw(#[from] super::unsw::UnswError),
    #[error("{0}")]
    Split(String),
}

impl Labelled {
    /// Builds the rows from `(features, class name, group name)` triples, giving benign index
    /// 0 and the other classes in name order.
    fn from_parts(
        source: String,
        features: Vec<String>,
        rows: Vec<f32>,
        names: Vec<String>,
        groups: Vec<String>,
        group_kind: &str,
    ) -> Self {
        let mut classes: Vec<String> =
            names.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        classes.retain(|c| c != BENIGN);
        classes.insert(0, BENIGN.to_owned());
        let class_of: BTreeMap<&str, u16> = classes.iter().enumerate().map(|(i, c)| (c.as_str(), i as u16)).collect();
        let group_names: Vec<String> =
            groups.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let group_of: BTreeMap<&str, u32> =
            group_names.iter().enumerate().map(|(i, g)| (g.as_str(), i as u32)).collect();
        let width = features.len();
        Self {
            source,
            x: Array2::from_shape_vec((names.len(), width), rows).expect("one value per feature and row"),
            y: names.iter().map(|n| class_of[n.as_str()]).collect(),
            classes,
            groups: groups.iter().map(|g| group_of[g.as_str()]).collect(),
            group_names,
            group_kind: group_kind.to_owned(),
            features,
        }
    }

    /// UNSW-NB15's CSV (`attack_cat` as the class; `Normal` is benign), its own columns as the
    /// features (one-hot `proto`, `service`, `state`), the TTL columns only `with_leaks`. The
    /// file has no capture or day column: one group.
    ///
    /// # Errors
    /// [`SupervisedError`] naming the file and what is wrong.
    pub fn from_unsw(path: &Path, with_leaks: bool) -> Result<Self, SupervisedError> {
        let data = UnswData::read(path)?;
        let all: Vec<usize> = (0..data.len()).collect();
        let schema = UnswSchema::fit(&data, &all, with_leaks);
        let x = schema.rows(&data, &all);
        let features = schema.schema.features.iter().map(|f| f.name.clone()).collect();
        let names =
            data.kind.iter().map(|k| if k == "Normal" { BENIGN.to_owned() } else { k.trim().to_lowercase() }).collect();
        let leaks = if with_leaks { "with" } else { "without" };
        Ok(Self::from_parts(
            format!("UNSW-NB15 training set ({leaks} the TTL columns)"),
            features,
            x.into_raw_vec_and_offset().0,
            names,
            vec![String::new(); data.len()],
            "none",
        ))
    }

    /// A CICFlowMeter-style CSV (CIC-IDS-2017 and its relabelled versions; `.gz` or plain):
    /// every numeric column but the identifiers (`id`, `Flow ID`, addresses, `Src Port`,
    /// `Timestamp`) and the labels; `Label` as the class (`BENIGN` is benign); the day of
    /// `Timestamp` as the group. Empty, `NaN` and infinite values become NaN (trees send them
    /// right).
    ///
    /// # Errors
    /// [`SupervisedError`] naming the file, line and column.
    pub fn from_cicflowmeter(path: &Path) -> Result<Self, SupervisedError> {
        const NOT_FEATURES: [&str; 9] =
            ["id", "flow id", "src ip", "dst ip", "src port", "timestamp", "label", "attempted category", "source"];
        let read_err = |message: String| SupervisedError::Read { path: path.to_owned(), message };
        let file = std::fs::File::open(path).map_err(|e| read_err(e.to_string()))?;
        let mut text = Vec::new();
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz")) {
            flate2::read::GzDecoder::new(file).read_to_end(&mut text)
        } else {
            std::io::BufReader::new(file).read_to_end(&mut text)
        }
        .map_err(|e| read_err(e.to_string()))?;
        let text = text.strip_prefix("\u{feff}".as_bytes()).unwrap_or(&text);
        let mut reader = csv::ReaderBuilder::new().from_reader(text);
        let headers: Vec<String> =
            reader.headers().map_err(|e| read_err(e.to_string()))?.iter().map(|h| h.trim().to_owned()).collect();
        let find = |column: &str| {
            headers
                .iter()
                .position(|h| h.eq_ignore_ascii_case(column))
                .ok_or_else(|| SupervisedError::Column { path: path.to_owned(), column: column.to_owned() })
        };
        let label_at = find("Label")?;
        let time_at = find("Timestamp")?;
        let numeric_at: Vec<usize> =
            (0..headers.len()).filter(|&i| !NOT_FEATURES.contains(&headers[i].to_lowercase().as_str())).collect();
        let (mut rows, mut names, mut groups) = (Vec::new(), Vec::new(), Vec::new());
        for (n, record) in reader.records().enumerate() {
            let record = record.map_err(|e| read_err(format!("line {}: {e}", n + 2)))?;
            for &i in &numeric_at {
                let v = record.get(i).unwrap_or("").trim();
                let value = if v.is_empty() || v.eq_ignore_ascii_case("nan") || v.to_lowercase().contains("inf") {
                    f32::NAN
                } else {
                    v.parse::<f32>().map_err(|_| {
                        read_err(format!("line {}: column `{}`: `{v}` is not a number", n + 2, headers[i]))
                    })?
                };
                rows.push(value);
            }
            let label = record.get(label_at).unwrap_or("").trim();
            names.push(if label.eq_ignore_ascii_case("benign") { BENIGN.to_owned() } else { label.to_owned() });
            groups.push(record.get(time_at).unwrap_or("").trim().chars().take(10).collect());
        }
        if names.is_empty() {
            return Err(read_err("no rows".into()));
        }
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        Ok(Self::from_parts(
            format!("{name} (CICFlowMeter features)"),
            numeric_at.iter().map(|&i| headers[i].clone()).collect(),
            rows,
            names,
            groups,
            "day",
        ))
    }

    /// Conversations of labelled captures (one or more `labels.json`, as `vigil eval captures`
    /// reads them) as Vigil builds them live: the flow schema's features, the attack kind of
    /// the capture's label ([`AttackKind::from_label`]) for conversations of its attacker (the
    /// victim when the attacker is unknown), benign for the rest; the capture file as the
    /// group.
    ///
    /// # Errors
    /// [`SupervisedError`] when a labels file or a capture cannot be read.
    pub fn from_captures(labels: &[PathBuf], progress: bool) -> Result<Self, SupervisedError> {
        let mut captures = Vec::new();
        for path in labels {
            let l =
                Labels::read(path).map_err(|e| SupervisedError::Read { path: path.clone(), message: e.to_string() })?;
            captures.extend(
                l.captures().map_err(|e| SupervisedError::Read { path: path.clone(), message: e.to_string() })?,
            );
        }
        let files: Vec<PathBuf> = captures.iter().map(|c| c.0.clone()).collect();
        let data = FlowDataset::from_captures(
            &files,
            HarvestConfig::default(),
            crate::flows::DEFAULT_INTERVAL,
            crate::features::DEFAULT_WINDOW,
            progress,
        )
        .map_err(|e| SupervisedError::Read {
            path: labels.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })?;
        let (mut names, mut groups) = (Vec::with_capacity(data.len()), Vec::with_capacity(data.len()));
        for (i, conversation) in data.conversations.iter().enumerate() {
            let (_, file, label) = &captures[data.file_index[i]];
            let kind =
                if label.is_attack_flow(&conversation.first) { AttackKind::from_label(&label.kind) } else { None };
            names.push(kind.map_or(BENIGN, AttackKind::name).to_owned());
            groups.push(file.clone());
        }
        let sources: Vec<String> = labels.iter().map(|p| p.display().to_string()).collect();
        Ok(Self::from_parts(
            format!("captures of {} (Vigil's conversations)", sources.join(", ")),
            Schema::flow().features.iter().map(|f| f.name.clone()).collect(),
            data.rows.into_raw_vec_and_offset().0,
            names,
            groups,
            "file",
        ))
    }

    /// Rows per class.
    #[must_use]
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &c in &self.y {
            counts[usize::from(c)] += 1;
        }
        counts
    }

    /// Groups per class (files or days that hold at least one row of it).
    #[must_use]
    pub fn class_groups(&self) -> Vec<usize> {
        let mut seen = vec![std::collections::BTreeSet::new(); self.classes.len()];
        for (&c, &g) in self.y.iter().zip(&self.groups) {
            seen[usize::from(c)].insert(g);
        }
        seen.iter().map(std::collections::BTreeSet::len).collect()
    }
}

/// How rows are split into folds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Split {
    /// Rows at random, as the notebooks and most papers do: flows of one capture, host and
    /// minute land on both sides.
    Random,
    /// Whole groups (capture files, days): what was tested was never seen.
    ByGroup,
}

/// The fold of each row.
///
/// # Errors
/// [`SupervisedError::Split`] when the split by group has fewer groups than folds.
pub fn folds(data: &Labelled, split: Split, k: usize, seed: u64) -> Result<Vec<usize>, SupervisedError> {
    let mut rng = StdRng::seed_from_u64(seed);
    match split {
        Split::Random => {
            let mut order: Vec<usize> = (0..data.y.len()).collect();
            order.shuffle(&mut rng);
            let mut fold = vec![0; order.len()];
            for (i, &row) in order.iter().enumerate() {
                fold[row] = i % k;
            }
            Ok(fold)
        }
        Split::ByGroup => {
            if data.group_names.len() < k {
                return Err(SupervisedError::Split(format!(
                    "{} has {} {}{} and the split by group needs at least {k}: use the random split",
                    data.source,
                    data.group_names.len(),
                    if data.group_kind == "none" { "group (no file or day column)" } else { &data.group_kind },
                    if data.group_names.len() == 1 { "" } else { "s" },
                )));
            }
            // Each group's main class (its most common non-benign one, else benign); groups of
            // one class are dealt round-robin over the folds so that its files are spread.
            let mut per_group = vec![vec![0usize; data.classes.len()]; data.group_names.len()];
            for (&c, &g) in data.y.iter().zip(&data.groups) {
                per_group[g as usize][usize::from(c)] += 1;
            }
            let main = |counts: &Vec<usize>| {
                let attack = (1..counts.len()).max_by_key(|&c| counts[c]).filter(|&c| counts[c] > 0);
                attack.unwrap_or(0)
            };
            let mut order: Vec<usize> = (0..data.group_names.len()).collect();
            order.shuffle(&mut rng);
            order.sort_by_key(|&g| main(&per_group[g]));
            let mut group_fold = vec![0; data.group_names.len()];
            for (i, &g) in order.iter().enumerate() {
                group_fold[g] = i % k;
            }
            Ok(data.groups.iter().map(|&g| group_fold[g as usize]).collect())
        }
    }
}

/// One class's results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassResult {
    pub class: String,
    /// Rows of this class.
    pub support: usize,
    /// Groups (files, days) holding it.
    pub groups: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// A supervised evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupervisedReport {
    pub source: String,
    pub split: Split,
    pub folds: usize,
    pub rows: usize,
    pub features: usize,
    pub group_kind: String,
    pub params: TreeModel,
    pub classes: Vec<ClassResult>,
    /// `confusion[true class][predicted class]`.
    pub confusion: Vec<Vec<u64>>,
    pub accuracy: f64,
    /// The mean F1 of the classes with rows in the data.
    pub macro_f1: f64,
    /// Attack against benign, scored by 1 − P(benign).
    pub attack_roc_auc: Option<f64>,
    /// Each class against the rest by its probability, averaged over the classes present
    /// (scikit-learn's `roc_auc_score(multi_class="ovr", average="macro")`).
    pub macro_roc_auc: Option<f64>,
    /// Out-of-fold probabilities (`[row][class]`), for plots and cross-checks; not serialized.
    #[serde(skip)]
    pub probabilities: Option<Array2<f32>>,
}

/// Cross-validates a forest of `params` over `k` folds of `split`.
///
/// # Errors
/// [`SupervisedError::Split`] when the split is impossible for these rows.
pub fn cross_validate(
    data: &Labelled,
    split: Split,
    k: usize,
    params: &TreeModel,
) -> Result<SupervisedReport, SupervisedError> {
    if k < 2 {
        return Err(SupervisedError::Split(format!("{k} folds: at least 2 are needed")));
    }
    let fold = folds(data, split, k, params.seed())?;
    let n_classes = data.classes.len();
    let mut probabilities = Array2::<f32>::zeros((data.y.len(), n_classes));
    for f in 0..k {
        let train: Vec<usize> = (0..fold.len()).filter(|&i| fold[i] != f).collect();
        let test: Vec<usize> = (0..fold.len()).filter(|&i| fold[i] == f).collect();
        if test.is_empty() || train.is_empty() {
            continue;
        }
        let x = data.x.select(Axis(0), &train);
        let y: Vec<u16> = train.iter().map(|&i| data.y[i]).collect();
        let forest = params.train(x.view(), &y, data.classes.clone());
        let p = forest.predict_proba(data.x.select(Axis(0), &test).view());
        for (row, &i) in test.iter().enumerate() {
            probabilities.row_mut(i).assign(&p.row(row));
        }
    }
    Ok(report(data, split, k, params, probabilities))
}

/// The report of out-of-fold `probabilities`.
///
/// # Panics
/// When `probabilities` is not one standard-layout row per row of `data`.
#[must_use]
pub fn report(
    data: &Labelled,
    split: Split,
    k: usize,
    params: &TreeModel,
    probabilities: Array2<f32>,
) -> SupervisedReport {
    let n_classes = data.classes.len();
    let mut confusion = vec![vec![0u64; n_classes]; n_classes];
    for (row, &truth) in probabilities.rows().into_iter().zip(&data.y) {
        let predicted = argmax(row.as_slice().expect("standard layout"));
        confusion[usize::from(truth)][predicted] += 1;
    }
    let (counts, groups) = (data.class_counts(), data.class_groups());
    let classes: Vec<ClassResult> = (0..n_classes)
        .map(|c| {
            let tp = confusion[c][c] as f64;
            let predicted: u64 = confusion.iter().map(|r| r[c]).sum();
            let actual: u64 = confusion[c].iter().sum();
            let precision = if predicted == 0 { 0.0 } else { tp / predicted as f64 };
            let recall = if actual == 0 { 0.0 } else { tp / actual as f64 };
            let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
            ClassResult { class: data.classes[c].clone(), support: counts[c], groups: groups[c], precision, recall, f1 }
        })
        .collect();
    let right: u64 = (0..n_classes).map(|c| confusion[c][c]).sum();
    let attack: Vec<bool> = data.y.iter().map(|&c| c != 0).collect();
    let scores: Vec<f32> = probabilities.column(0).iter().map(|p| 1.0 - p).collect();
    SupervisedReport {
        source: data.source.clone(),
        split,
        folds: k,
        rows: data.y.len(),
        features: data.features.len(),
        group_kind: data.group_kind.clone(),
        params: params.clone(),
        macro_f1: {
            let present: Vec<f64> = classes.iter().filter(|c| c.support > 0).map(|c| c.f1).collect();
            present.iter().sum::<f64>() / present.len().max(1) as f64
        },
        classes,
        confusion,
        accuracy: right as f64 / data.y.len().max(1) as f64,
        attack_roc_auc: curves(&scores, &attack).map(|c| c.roc_auc),
        macro_roc_auc: one_vs_rest_roc_auc(probabilities.view(), &data.y),
        probabilities: Some(probabilities),
    }
}

/// Across datasets: a forest grown on every row of `train`, tested on every row of `test`
/// (same features; classes matched by name, a class only one side has counts as it falls).
///
/// # Errors
/// [`SupervisedError::Split`] when the two do not share their features.
///
/// # Panics
/// Never: every class name is in the union of both sides' classes.
pub fn cross_dataset(
    train: &Labelled,
    test: &Labelled,
    params: &TreeModel,
) -> Result<SupervisedReport, SupervisedError> {
    if train.features != test.features {
        return Err(SupervisedError::Split(format!(
            "{} and {} do not have the same features ({} and {}): a forest of one cannot score the other",
            train.source,
            test.source,
            train.features.len(),
            test.features.len()
        )));
    }
    let mut classes = train.classes.clone();
    for c in &test.classes {
        if !classes.contains(c) {
            classes.push(c.clone());
        }
    }
    let index = |name: &String| classes.iter().position(|c| c == name).expect("in the union") as u16;
    let y_train: Vec<u16> = train.y.iter().map(|&c| index(&train.classes[usize::from(c)])).collect();
    let forest = params.train(train.x.view(), &y_train, classes.clone());
    let probabilities = forest.predict_proba(test.x.view());
    let relabelled = Labelled {
        source: format!("trained on {}, tested on {}", train.source, test.source),
        y: test.y.iter().map(|&c| index(&test.classes[usize::from(c)])).collect(),
        classes,
        ..test.clone()
    };
    let mut report = report(&relabelled, Split::ByGroup, 1, params, probabilities);
    report.group_kind = "dataset".into();
    Ok(report)
}

/// What happens to an attack kind nobody trained on: the classifier grown on every other
/// row, and the anomaly models (trained on benign traffic only) where the rows are Vigil's own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeftOut {
    pub kind: String,
    pub rows: usize,
    pub groups: usize,
    /// Share the classifier called an attack of any other kind.
    pub classifier_attack: f64,
    /// The classifier's three most common answers: (class, share).
    pub classifier_said: Vec<(String, f64)>,
    /// Share the anomaly models score at or above their alert threshold.
    pub anomaly_alert: Option<f64>,
}

/// For each class of `kinds` (class indices, benign excluded), grows a forest without any row
/// of it and predicts its rows; scores them with `anomaly` too when given (rows in the flow
/// schema, raw as [`Labelled::from_captures`] gives them).
///
/// # Errors
/// When the anomaly models fail to score.
pub fn unknown_attacks(
    data: &Labelled,
    kinds: &[u16],
    params: &TreeModel,
    anomaly: Option<&crate::model::Detector>,
) -> Result<Vec<LeftOut>, crate::model::onnx::OnnxError> {
    let groups = data.class_groups();
    let mut out = Vec::new();
    for &kind in kinds.iter().filter(|&&k| k != 0) {
        let (test, train): (Vec<usize>, Vec<usize>) = (0..data.y.len()).partition(|&i| data.y[i] == kind);
        if test.is_empty() {
            continue;
        }
        let y: Vec<u16> = train.iter().map(|&i| data.y[i]).collect();
        let forest = params.train(data.x.select(Axis(0), &train).view(), &y, data.classes.clone());
        let rows = data.x.select(Axis(0), &test);
        let said = forest.predict(rows.view());
        let mut counts = vec![0usize; data.classes.len()];
        for &c in &said {
            counts[usize::from(c)] += 1;
        }
        let n = test.len() as f64;
        let mut ranked: Vec<(String, f64)> = counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(c, &k)| (data.classes[c].clone(), k as f64 / n))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(3);
        let anomaly_alert = match anomaly {
            Some(d) => {
                let scores = d.score(rows.view())?;
                Some(scores.iter().filter(|s| s.combined >= d.thresholds.alert).count() as f64 / n)
            }
            None => None,
        };
        out.push(LeftOut {
            kind: data.classes[usize::from(kind)].clone(),
            rows: test.len(),
            groups: groups[usize::from(kind)],
            classifier_attack: said.iter().filter(|&&c| c != 0).count() as f64 / n,
            classifier_said: ranked,
            anomaly_alert,
        });
    }
    Ok(out)
}

/// The unknown-attack results as a Markdown table.
#[must_use]
pub fn left_out_markdown(results: &[LeftOut], group_kind: &str) -> String {
    use std::fmt::Write as _;
    let groups = groups_heading(group_kind);
    let mut out = format!(
        "| kind left out | rows | {groups} | classifier: called an attack | classifier said | anomaly models: at or above the alert threshold |\n|---|---:|---:|---:|---|---:|\n"
    );
    for r in results {
        let said: Vec<String> = r.classifier_said.iter().map(|(c, s)| format!("{c} {:.0}%", s * 100.0)).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.1}% | {} | {} |",
            r.kind,
            r.rows,
            r.groups,
            r.classifier_attack * 100.0,
            said.join(", "),
            r.anomaly_alert.map_or_else(|| "n/a (not Vigil's features)".to_owned(), |a| format!("{:.1}%", a * 100.0)),
        );
    }
    out
}

/// The mean over classes of each class's ROC-AUC against the rest, scored by its probability;
/// `None` when no class has both positives and negatives.
#[must_use]
pub fn one_vs_rest_roc_auc(probabilities: ndarray::ArrayView2<f32>, y: &[u16]) -> Option<f64> {
    let areas: Vec<f64> = (0..probabilities.ncols())
        .filter_map(|c| {
            let positive: Vec<bool> = y.iter().map(|&t| usize::from(t) == c).collect();
            curves(&probabilities.column(c).to_vec(), &positive).map(|k| k.roc_auc)
        })
        .collect();
    (!areas.is_empty()).then(|| areas.iter().sum::<f64>() / areas.len() as f64)
}

/// Writes `<stem>.json`, `<stem>.md` and `<stem>.svg` (the confusion matrix) into `dir`.
///
/// # Errors
/// If the directory or a file cannot be written.
pub fn write_report(dir: &Path, stem: &str, report: &SupervisedReport) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut json = serde_json::to_vec_pretty(report).map_err(std::io::Error::other)?;
    json.push(b'\n');
    std::fs::write(dir.join(format!("{stem}.json")), json)?;
    std::fs::write(dir.join(format!("{stem}.md")), report.markdown())?;
    super::plot::write_confusion_svg(&dir.join(format!("{stem}.svg")), report)
}

/// A table's heading for the groups column: `files`, `days`, or `groups` where a group is
/// not a file or a day (one group, or a whole dataset).
fn groups_heading(group_kind: &str) -> String {
    match group_kind {
        "none" | "dataset" => "groups".to_owned(),
        g => format!("{g}s"),
    }
}

impl SupervisedReport {
    /// How the rows were split: `by random rows`, `by whole files` (days), `across datasets`.
    #[must_use]
    pub fn split_name(&self) -> String {
        match self.split {
            Split::Random => "by random rows".to_owned(),
            Split::ByGroup if self.group_kind == "dataset" => "across datasets".to_owned(),
            Split::ByGroup => format!("by whole {}s", self.group_kind),
        }
    }

    /// The report as Markdown: the summary, a row per class, the confusion matrix.
    #[must_use]
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let split = if self.group_kind == "dataset" {
            self.split_name()
        } else {
            format!("{}-fold cross-validation {}", self.folds, self.split_name())
        };
        let mut out = format!(
            "{}: {} rows, {} features; {split}; {}.\n\n\
             accuracy {:.4}, macro F1 {:.4}, attack-vs-benign ROC-AUC {}, one-vs-rest macro ROC-AUC {}\n\n\
             | class | rows | {} | precision | recall | F1 |\n|---|---:|---:|---:|---:|---:|\n",
            self.source,
            self.rows,
            self.features,
            self.params.describe(),
            self.accuracy,
            self.macro_f1,
            self.attack_roc_auc.map_or_else(|| "n/a (one class)".to_owned(), |a| format!("{a:.4}")),
            self.macro_roc_auc.map_or_else(|| "n/a".to_owned(), |a| format!("{a:.4}")),
            groups_heading(&self.group_kind),
        );
        for c in &self.classes {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                c.class, c.support, c.groups, c.precision, c.recall, c.f1
            );
        }
        out.push_str("\nconfusion (rows: true class, columns: predicted, in the order above)\n\n");
        for (c, row) in self.classes.iter().zip(&self.confusion) {
            let _ = write!(out, "{:>28} ", c.class);
            for v in row {
                let _ = write!(out, "{v:>7}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::classifier::ClassifierParams;

    /// Rows of three classes in six files: class from the file, features that tell them apart,
    /// plus a per-file offset on a feature that also tells the files apart (what a random
    /// split rewards and a split by file does not).
    fn three_kinds() -> Labelled {
        let (mut rows, mut names, mut groups) = (Vec::new(), Vec::new(), Vec::new());
        for file in 0..6u32 {
            let class = ["benign", "scan", "flood"][file as usize % 3];
            for i in 0..200u32 {
                let jitter = (i % 17) as f32 / 17.0;
                rows.extend([(file % 3) as f32 * 2.0 + jitter, file as f32 * 10.0 + jitter, jitter]);
                names.push(class.to_owned());
                groups.push(format!("f{file}"));
            }
        }
        Labelled::from_parts(
            "three kinds".into(),
            vec!["a".into(), "b".into(), "c".into()],
            rows,
            names,
            groups,
            "file",
        )
    }

    #[test]
    fn benign_is_class_zero_and_folds_keep_files_whole() {
        let data = three_kinds();
        assert_eq!(data.classes, ["benign", "flood", "scan"]);
        assert_eq!(data.class_groups(), [2, 2, 2]);
        let fold = folds(&data, Split::ByGroup, 2, 1).unwrap();
        for g in 0..6 {
            let of: std::collections::BTreeSet<usize> =
                (0..fold.len()).filter(|&i| data.groups[i] == g).map(|i| fold[i]).collect();
            assert_eq!(of.len(), 1, "file {g} in one fold");
        }
        // Each class's two files are in different folds.
        for c in 0..3u16 {
            let of: std::collections::BTreeSet<usize> =
                (0..fold.len()).filter(|&i| data.y[i] == c).map(|i| fold[i]).collect();
            assert_eq!(of.len(), 2, "class {c} spread");
        }
        let err = folds(&data, Split::ByGroup, 7, 1).unwrap_err().to_string();
        assert!(err.contains("6 files") && err.contains("random split"), "{err}");
    }

    #[test]
    fn cross_validation_counts_every_row_once_and_scores_classes() {
        let data = three_kinds();
        let params = TreeModel::Forest(ClassifierParams { trees: 10, ..ClassifierParams::default() });
        let report = cross_validate(&data, Split::ByGroup, 2, &params).unwrap();
        let total: u64 = report.confusion.iter().flatten().sum();
        assert_eq!(total, 1200);
        // Feature `b` names the file: rows of a file seen in training give it away, so the
        // random split scores (nearly) perfectly and the split by file pays for trusting it.
        let random = cross_validate(&data, Split::Random, 2, &params).unwrap();
        assert!(random.accuracy > 0.99, "{}", random.markdown());
        assert!(report.accuracy < random.accuracy - 0.05, "{}", report.markdown());
        assert!(report.classes[0].recall > 0.999, "benign is told apart by `a` alone: {}", report.markdown());
        let text = report.markdown();
        assert!(text.contains("| scan | 400 | 2 |") && text.contains("by whole files"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["split"], "by-group");
        assert!(json.get("probabilities").is_none());
    }

    #[test]
    fn a_kind_left_out_is_predicted_by_a_forest_that_never_saw_it() {
        let data = three_kinds();
        let params = TreeModel::Forest(ClassifierParams { trees: 5, ..ClassifierParams::default() });
        let results = unknown_attacks(&data, &[0, 1, 2], &params, None).unwrap();
        assert_eq!(results.len(), 2, "benign is never left out");
        for r in &results {
            assert_eq!(r.rows, 400);
            assert!(!r.classifier_said.iter().any(|(c, _)| *c == r.kind), "{r:?} never saw its own class");
            let total: f64 = r.classifier_said.iter().map(|(_, s)| s).sum();
            assert!((total - 1.0).abs() < 1e-9 && r.anomaly_alert.is_none());
        }
        let table = left_out_markdown(&results, "file");
        assert!(table.contains("| flood | 400 | 2 |") && table.contains("n/a"), "{table}");
    }

    #[test]
    fn across_datasets_classes_are_matched_by_name() {
        let train = three_kinds();
        let mut test = three_kinds();
        // The other dataset names its classes in another order and has one the first lacks.
        test.classes = vec!["benign".into(), "scan".into(), "sweep".into()];
        let params = TreeModel::Forest(ClassifierParams { trees: 5, ..ClassifierParams::default() });
        let report = cross_dataset(&train, &test, &params).unwrap();
        let names: Vec<&str> = report.classes.iter().map(|c| c.class.as_str()).collect();
        assert_eq!(names, ["benign", "flood", "scan", "sweep"]);
        assert!(report.markdown().contains("across datasets"));
        // The test's "scan" (its class 1) are rows like train's floods, its "sweep" rows like
        // train's scans: matched by name, they land in those columns.
        assert!(report.confusion[2][1] >= 390, "scan rows called flood: {}", report.markdown());
        assert!(report.confusion[3][2] >= 390, "sweep rows called scan: {}", report.markdown());
        assert!(report.classes[3].recall.abs() < f64::EPSILON, "sweep was never taught");
        let mut narrow = three_kinds();
        narrow.features.pop();
        assert!(cross_dataset(&train, &narrow, &params).unwrap_err().to_string().contains("same features"));
    }

    #[test]
    fn a_cicflowmeter_csv_reads_with_days_as_groups_and_names_bad_cells() {
        let dir = crate::alert::sink::testing::temp_dir("cic");
        let path = dir.join("flows.csv");
        std::fs::write(
            &path,
            "id,Flow ID,Src IP,Src Port,Dst IP,Dst Port,Protocol,Timestamp,Flow Duration,Flow Bytes/s,Label\n\
             1,x,10.0.0.1,5000,10.0.0.2,80,6,2017-07-03 10:00:00,100,Infinity,BENIGN\n\
             2,x,10.0.0.1,5001,10.0.0.2,22,6,2017-07-04 10:00:00,200,5.5,SSH-Patator\n",
        )
        .unwrap();
        let data = Labelled::from_cicflowmeter(&path).unwrap();
        assert_eq!(data.features, ["Dst Port", "Protocol", "Flow Duration", "Flow Bytes/s"]);
        assert_eq!(data.classes, ["benign", "SSH-Patator"]);
        assert_eq!(data.group_names, ["2017-07-03", "2017-07-04"]);
        assert!(data.x[[0, 3]].is_nan());
        std::fs::write(&path, "Timestamp,Flow Duration,Label\n2017-07-03,abc,BENIGN\n").unwrap();
        let err = Labelled::from_cicflowmeter(&path).unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("Flow Duration") && err.contains("abc"), "{err}");
        std::fs::write(&path, "Timestamp,Flow Duration\n2017-07-03,1\n").unwrap();
        assert!(Labelled::from_cicflowmeter(&path).unwrap_err().to_string().contains("`Label` is missing"));
    }
}
