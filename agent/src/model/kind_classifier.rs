//! The bundle's third model: a supervised classifier that names the attack kinds it was
//! trained on, beside the two anomaly models.
//!
//! It reads the raw feature rows of the flow schema (trees need no scaling; an ONNX export
//! takes the same rows `vigil replay --features-out` writes) and gives each flow the
//! probability of every class. Class 0 is benign; every other class is an attack kind of the
//! ATT&CK table (`alert/attack.rs`), so what it says can be named and tagged. It *fires* on a
//! flow when the probability of "some attack" (one minus benign's) reaches the manifest's
//! `min_probability`: the flow then counts as anomalous (its combined score is at least the
//! alert threshold) and the alert's kind is the classifier's most probable attack class. It
//! never reaches the block threshold on its own: blocking stays with the anomaly evidence.

#![expect(clippy::cast_possible_truncation, reason = "class indices are far below 2^16")]

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::{
    boosted::Boosted,
    classifier::{Classifier, ClassifierError, Scorer},
    onnx::OnnxError,
    onnx_classifier::OnnxClassifier,
};
use crate::alert::attack::AttackKind;

/// The file of Vigil's own random forest in a bundle.
pub const FOREST_FILE: &str = "classifier.json";
/// The file of Vigil's own gradient-boosted trees in a bundle.
pub const BOOSTED_FILE: &str = "boosted.json";
/// The file of an ONNX classifier (scikit-learn export) in a bundle.
pub const ONNX_FILE: &str = "classifier.onnx";
/// The most either may be.
pub const MAX_BYTES: u64 = 256 << 20;
/// The name of class 0.
pub const BENIGN: &str = "benign";
/// `min_probability` when training does not say: an attack when at least 90% of the forest's
/// trees say so.
pub const DEFAULT_MIN_PROBABILITY: f32 = 0.9;

/// The manifest's `classifier` section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    /// [`FOREST_FILE`], [`BOOSTED_FILE`] or [`ONNX_FILE`].
    pub file: String,
    /// Class names, in the order of the model's probabilities: `benign` first, then kinds of
    /// the ATT&CK table.
    pub classes: Vec<String>,
    /// Smallest probability of "some attack" at which the classifier fires.
    pub min_probability: f32,
    /// What it was trained on and how (free-form, for people).
    #[serde(default)]
    pub training: serde_json::Value,
}

/// Why a bundle's classifier cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KindClassifierError {
    #[error("classifier.file is {0:?}; it must be {FOREST_FILE}, {BOOSTED_FILE} or {ONNX_FILE}")]
    File(String),
    #[error("classifier.classes[0] is {0:?}; the first class must be {BENIGN}")]
    FirstClass(String),
    #[error(
        "classifier.classes[{index}] is {name:?}, which is not an attack kind of the table (vigil docs: detection.md)"
    )]
    UnknownClass { index: usize, name: String },
    #[error("classifier.classes lists {name:?} twice")]
    Duplicate { name: String },
    #[error("classifier.min_probability is {0}; it must be in (0.5, 1]")]
    MinProbability(f32),
    #[error("{file}: the model has {found} classes, classifier.classes names {expected}")]
    Classes { file: String, expected: usize, found: usize },
    #[error("{file}: the model's classes {found:?} are not classifier.classes {expected:?}")]
    ClassNames { file: String, expected: Vec<String>, found: Vec<String> },
    #[error("{file}: the model reads {found} features, the schema has {expected}")]
    Width { file: String, expected: usize, found: usize },
    #[error("{file}: not valid JSON for its model: {source}")]
    Json { file: &'static str, source: serde_json::Error },
    #[error("{file}: {source}")]
    Trees { file: &'static str, source: ClassifierError },
    #[error("{ONNX_FILE}: {0}")]
    Onnx(#[from] OnnxError),
}

#[derive(Clone, Debug)]
enum Model {
    /// Vigil's forest or boosted trees.
    Trees(Box<Scorer>),
    Onnx(OnnxClassifier),
}

/// Which trees the supervised classifier grows: measured side by side in docs/detection.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum TreeModel {
    /// A random forest ([`Classifier`]).
    Forest(super::classifier::ClassifierParams),
    /// Gradient-boosted trees ([`Boosted`]).
    Boosted(super::boosted::BoostParams),
}

/// Trees trained by a [`TreeModel`].
#[derive(Clone, Debug)]
pub enum Trees {
    Forest(Classifier),
    Boosted(Boosted),
}

impl TreeModel {
    /// Grows the trees on `x` with labels `y` (indices into `classes`).
    ///
    /// # Panics
    /// As [`Classifier::train`] and [`Boosted::train`].
    #[must_use]
    pub fn train(&self, x: ArrayView2<'_, f32>, y: &[u16], classes: Vec<String>) -> Trees {
        match self {
            Self::Forest(p) => Trees::Forest(Classifier::train(x, y, classes, p)),
            Self::Boosted(p) => Trees::Boosted(Boosted::train(x, y, classes, p)),
        }
    }

    /// The seed of random choices around training (folds, splits).
    #[must_use]
    pub fn seed(&self) -> u64 {
        match self {
            Self::Forest(p) => p.seed,
            Self::Boosted(_) => 1,
        }
    }

    /// The model and its size, for reports.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Forest(p) => format!("a random forest of {} trees (depth ≤ {})", p.trees, p.max_depth),
            Self::Boosted(p) => format!(
                "gradient-boosted trees ({} iterations, ≤ {} leaves, learning rate {})",
                p.iterations, p.max_leaves, p.learning_rate
            ),
        }
    }
}

impl Trees {
    /// Probabilities of every row: `[rows, classes]`.
    #[must_use]
    pub fn predict_proba(&self, x: ArrayView2<'_, f32>) -> ndarray::Array2<f32> {
        match self {
            Self::Forest(f) => f.predict_proba(x),
            Self::Boosted(b) => b.predict_proba(x),
        }
    }

    /// The most probable class of each row.
    ///
    /// # Panics
    /// Never: the probabilities are a standard-layout matrix.
    #[must_use]
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Vec<u16> {
        self.predict_proba(x)
            .rows()
            .into_iter()
            .map(|p| super::classifier::argmax(p.as_slice().expect("standard layout")) as u16)
            .collect()
    }

    /// The bundle file it is saved as and its bytes.
    ///
    /// # Panics
    /// Never: trees always serialise.
    #[must_use]
    pub fn to_file(&self) -> (&'static str, Vec<u8>) {
        match self {
            Self::Forest(f) => (FOREST_FILE, serde_json::to_vec(f).expect("a forest serialises")),
            Self::Boosted(b) => (BOOSTED_FILE, serde_json::to_vec(b).expect("trees serialise")),
        }
    }
}

/// What the classifier says of one flow.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classified {
    /// The most probable attack class (whether or not it fired).
    pub kind: AttackKind,
    /// That class's probability.
    pub kind_probability: f32,
    /// Probability of some attack: one minus benign's.
    pub attack_probability: f32,
    /// `attack_probability` reached the bundle's `min_probability`.
    pub fired: bool,
}

/// A bundle's classifier, checked and ready to score.
#[derive(Clone, Debug)]
pub struct KindClassifier {
    model: Model,
    /// The kind of each attack class (index − 1).
    kinds: Vec<AttackKind>,
    pub min_probability: f32,
    /// The spec it was loaded from.
    pub spec: ClassifierSpec,
}

impl KindClassifier {
    /// Checks the spec and loads the model file for rows of `width` features.
    ///
    /// # Errors
    /// [`KindClassifierError`] naming the field or file and the problem.
    pub fn load(spec: &ClassifierSpec, bytes: &[u8], width: usize) -> Result<Self, KindClassifierError> {
        let kinds = check_classes(&spec.classes)?;
        if !(spec.min_probability > 0.5 && spec.min_probability <= 1.0) {
            return Err(KindClassifierError::MinProbability(spec.min_probability));
        }
        let model = match spec.file.as_str() {
            FOREST_FILE => {
                let forest: Classifier = read_trees(FOREST_FILE, bytes)?;
                forest.validate().map_err(|source| KindClassifierError::Trees { file: FOREST_FILE, source })?;
                check_trees(FOREST_FILE, spec, &forest.classes, forest.width, width)?;
                Model::Trees(Box::new(forest.scorer()))
            }
            BOOSTED_FILE => {
                let boosted: Boosted = read_trees(BOOSTED_FILE, bytes)?;
                boosted.validate().map_err(|source| KindClassifierError::Trees { file: BOOSTED_FILE, source })?;
                check_trees(BOOSTED_FILE, spec, &boosted.classes, boosted.width, width)?;
                Model::Trees(Box::new(boosted.scorer()))
            }
            ONNX_FILE => {
                let onnx = OnnxClassifier::load(bytes, width)?;
                if onnx.classes() != spec.classes.len() {
                    return Err(KindClassifierError::Classes {
                        file: ONNX_FILE.into(),
                        expected: spec.classes.len(),
                        found: onnx.classes(),
                    });
                }
                Model::Onnx(onnx)
            }
            other => return Err(KindClassifierError::File(other.to_owned())),
        };
        Ok(Self { model, kinds, min_probability: spec.min_probability, spec: spec.clone() })
    }

    /// What the classifier says of each raw feature row.
    ///
    /// # Errors
    /// [`OnnxError`] if tract fails on an ONNX classifier.
    pub fn classify(&self, raw: ArrayView2<'_, f32>) -> Result<Vec<Classified>, OnnxError> {
        let p = match &self.model {
            Model::Trees(scorer) => scorer.predict_proba(raw),
            Model::Onnx(onnx) => onnx.predict_proba(raw)?,
        };
        Ok(p.rows()
            .into_iter()
            .map(|row| {
                let (best, kind_probability) = row
                    .iter()
                    .enumerate()
                    .skip(1)
                    .fold((1, f32::MIN), |(bi, bp), (i, &p)| if p > bp { (i, p) } else { (bi, bp) });
                let attack_probability = (1.0 - row[0]).clamp(0.0, 1.0);
                Classified {
                    kind: self.kinds[best - 1],
                    kind_probability,
                    attack_probability,
                    fired: attack_probability >= self.min_probability,
                }
            })
            .collect())
    }

    /// The attack kinds it knows, in class order.
    #[must_use]
    pub fn kinds(&self) -> &[AttackKind] {
        &self.kinds
    }
}

fn read_trees<T: serde::de::DeserializeOwned>(file: &'static str, bytes: &[u8]) -> Result<T, KindClassifierError> {
    serde_json::from_slice(bytes).map_err(|source| KindClassifierError::Json { file, source })
}

/// The trees' own classes and width against the spec's and the schema's.
fn check_trees(
    file: &'static str,
    spec: &ClassifierSpec,
    classes: &[String],
    found: usize,
    expected: usize,
) -> Result<(), KindClassifierError> {
    if classes != spec.classes {
        return Err(KindClassifierError::ClassNames {
            file: file.into(),
            expected: spec.classes.clone(),
            found: classes.to_vec(),
        });
    }
    if found != expected {
        return Err(KindClassifierError::Width { file: file.into(), expected, found });
    }
    Ok(())
}

/// Class 0 benign, the rest distinct kinds of the table.
fn check_classes(classes: &[String]) -> Result<Vec<AttackKind>, KindClassifierError> {
    match classes.first() {
        Some(first) if first == BENIGN => {}
        first => return Err(KindClassifierError::FirstClass(first.cloned().unwrap_or_default())),
    }
    let mut kinds = Vec::with_capacity(classes.len() - 1);
    for (index, name) in classes.iter().enumerate().skip(1) {
        let kind = AttackKind::from_name(name)
            .ok_or_else(|| KindClassifierError::UnknownClass { index, name: name.clone() })?;
        if kinds.contains(&kind) {
            return Err(KindClassifierError::Duplicate { name: name.clone() });
        }
        kinds.push(kind);
    }
    if kinds.is_empty() {
        return Err(KindClassifierError::Trees {
            file: "classifier.classes",
            source: ClassifierError::Classes(classes.len()),
        });
    }
    Ok(kinds)
}

#[cfg(test)]
pub(crate) mod tests {
    use ndarray::Array2;

    use super::*;
    use crate::model::classifier::ClassifierParams;

    /// A forest on `width` features: benign near 0, a scan when feature 0 is large, a SYN
    /// flood when feature 1 is (every split sees every feature, so only those two are used).
    #[expect(clippy::cast_precision_loss, reason = "small row numbers")]
    pub(crate) fn small_forest(width: usize) -> (ClassifierSpec, Vec<u8>) {
        let n = 300;
        let x = Array2::from_shape_fn((n, width), |(i, j)| match (i % 3, j) {
            (1, 0) | (2, 1) => 100.0 + (i % 7) as f32,
            _ => (i % 5) as f32,
        });
        let y: Vec<u16> = (0..n).map(|i| (i % 3) as u16).collect();
        let classes: Vec<String> = ["benign", "scan", "syn-flood"].map(String::from).to_vec();
        let forest = Classifier::train(
            x.view(),
            &y,
            classes.clone(),
            &ClassifierParams { trees: 9, max_features: Some(width), ..Default::default() },
        );
        let spec = ClassifierSpec {
            file: FOREST_FILE.into(),
            classes,
            min_probability: DEFAULT_MIN_PROBABILITY,
            training: serde_json::Value::Null,
        };
        (spec, serde_json::to_vec(&forest).expect("json"))
    }

    #[test]
    fn a_forest_names_the_kinds_it_learnt_and_fires_only_when_sure() {
        let (spec, bytes) = small_forest(4);
        let c = KindClassifier::load(&spec, &bytes, 4).expect("loads");
        let rows = ndarray::array![[0.0, 1.0, 2.0, 0.0], [103.0, 2.0, 0.0, 1.0], [1.0, 104.0, 3.0, 2.0]];
        let said = c.classify(rows.view()).expect("classifies");
        assert!(!said[0].fired && said[0].attack_probability < 0.1, "{:?}", said[0]);
        assert!(said[1].fired && said[1].kind == AttackKind::Scan, "{:?}", said[1]);
        assert!(
            said[2].fired && said[2].kind == AttackKind::SynFlood && said[2].kind_probability > 0.9,
            "{:?}",
            said[2]
        );
    }

    #[test]
    fn refuses_classes_widths_files_and_thresholds_it_cannot_use() {
        let (spec, bytes) = small_forest(4);
        let e = KindClassifier::load(&spec, &bytes, 5).expect_err("width");
        assert_eq!(e.to_string(), "classifier.json: the model reads 4 features, the schema has 5");
        let bad = |f: &dyn Fn(&mut ClassifierSpec)| {
            let mut s = spec.clone();
            f(&mut s);
            KindClassifier::load(&s, &bytes, 4).expect_err("refused").to_string()
        };
        assert!(bad(&|s| s.classes[0] = "normal".into()).contains("the first class must be benign"));
        assert!(bad(&|s| s.classes[2] = "teleport".into()).contains("classifier.classes[2] is \"teleport\""));
        assert!(bad(&|s| s.classes[2] = "scan".into()).contains("lists \"scan\" twice"));
        assert!(bad(&|s| s.classes[2] = "udp-flood".into()).contains("are not classifier.classes"));
        assert!(bad(&|s| s.min_probability = 0.3).contains("must be in (0.5, 1]"));
        assert!(bad(&|s| s.min_probability = f32::NAN).contains("must be in (0.5, 1]"));
        assert!(
            bad(&|s| s.file = "model.pkl".into()).contains("must be classifier.json, boosted.json or classifier.onnx")
        );
        assert!(bad(&|s| s.file = BOOSTED_FILE.into()).starts_with("boosted.json: not valid JSON for its model"));
        let e = KindClassifier::load(&spec, b"{\"format\": 1}", 4).expect_err("json");
        assert!(e.to_string().starts_with("classifier.json: not valid JSON for its model"), "{e}");
    }
}
