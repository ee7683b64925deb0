//! Training a bundle from raw feature rows of benign traffic.
//!
//! The rows are shuffled and split: `calibration_share` is held out for putting the two scores
//! on one scale and for the threshold; the rest fits the scaler, the forest and the autoencoder
//! (which holds out its own validation split for early stopping). Calibration goes through the
//! exported ONNX file with tract, exactly as live scoring does.

use ndarray::{ArrayView2, Axis};
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

use super::{
    autoencoder::{Autoencoder, AutoencoderParams, TrainReport},
    bundle::{Bundle, Manifest, OLDEST_FORMAT_VERSION},
    detector::{Combine, Detector, FeatureRange, Norm, Scaler, Thresholds, log_reconstruction_error, quantile},
    iforest::{ForestParams, IsolationForest},
    onnx::{self, OnnxError, OnnxScorer},
};
use crate::features::Schema;

/// Default share of benign calibration flows allowed above the alert threshold (0.1%).
pub const DEFAULT_TARGET_FPR: f64 = 0.001;
/// Units of benign spread between the alert and the block threshold.
pub const BLOCK_MARGIN: f32 = 2.0;

/// Training settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub forest: ForestParams,
    pub autoencoder: AutoencoderParams,
    pub target_fpr: f64,
    /// Share of the benign rows held out for calibration.
    pub calibration_share: f64,
    pub seed: u64,
    /// Use this ONNX autoencoder (trained elsewhere, e.g. exported from `PyTorch`; it must take
    /// the scaled features and return their reconstruction) instead of training one.
    #[serde(skip)]
    pub external_autoencoder: Option<Vec<u8>>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            forest: ForestParams::default(),
            autoencoder: AutoencoderParams::default(),
            target_fpr: DEFAULT_TARGET_FPR,
            calibration_share: 0.2,
            seed: 1,
            external_autoencoder: None,
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0} rows is too few to train on (at least 20 are needed)")]
    TooFew(usize),
    #[error("rows have {found} features, the schema has {expected}")]
    Width { expected: usize, found: usize },
    #[error("the exported autoencoder did not load back: {0}")]
    Onnx(#[from] OnnxError),
}

/// A trained bundle and what training reported.
#[derive(Debug)]
pub struct Trained {
    pub bundle: Bundle,
    pub detector: Detector,
    /// What autoencoder training did; `None` for an external autoencoder.
    pub autoencoder: Option<TrainReport>,
}

/// Trains forest and autoencoder on benign raw rows and calibrates the thresholds.
/// `summary` (what the data was) goes into the manifest's `training` next to the settings.
///
/// # Errors
/// [`TrainError`] for too few or mis-sized rows.
///
/// # Panics
/// Never: rows are owned and contiguous.
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::cast_precision_loss, reason = "row counts")]
pub fn train(
    schema: &Schema,
    raw: ArrayView2<'_, f32>,
    config: &TrainConfig,
    summary: serde_json::Value,
    mut progress: impl FnMut(&str),
) -> Result<Trained, TrainError> {
    if raw.ncols() != schema.len() {
        return Err(TrainError::Width { expected: schema.len(), found: raw.ncols() });
    }
    if raw.nrows() < 20 {
        return Err(TrainError::TooFew(raw.nrows()));
    }
    let mut order: Vec<usize> = (0..raw.nrows()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(config.seed));
    let n_cal = ((raw.nrows() as f64 * config.calibration_share).round() as usize).clamp(5, raw.nrows() - 10);
    let cal_raw = raw.select(Axis(0), &order[..n_cal]);
    let fit_raw = raw.select(Axis(0), &order[n_cal..]);

    let mut fit = fit_raw.clone();
    schema.transform(&mut fit);
    let scaler = Scaler::fit(fit.view());
    let range = FeatureRange::fit(schema, fit.view());
    scaler.apply(&mut fit);
    let baseline: Vec<f32> = fit_raw.columns().into_iter().map(|c| quantile(&c.to_vec(), 0.5)).collect();

    progress(&format!("isolation forest: {} trees of {} rows", config.forest.trees, config.forest.subsample));
    let forest = IsolationForest::train(fit.view(), config.forest);
    let (onnx_bytes, ae_report) = if let Some(bytes) = &config.external_autoencoder {
        progress("autoencoder: external ONNX model, not trained here");
        (bytes.clone(), None)
    } else {
        let ae_rows = if fit.nrows() > config.autoencoder.max_rows {
            let mut pick: Vec<usize> = (0..fit.nrows()).collect();
            pick.shuffle(&mut StdRng::seed_from_u64(config.autoencoder.seed));
            pick.truncate(config.autoencoder.max_rows);
            pick.sort_unstable();
            Some(fit.select(Axis(0), &pick))
        } else {
            None
        };
        let ae_fit = ae_rows.as_ref().map_or_else(|| fit.view(), |rows| rows.view());
        progress(&format!(
            "autoencoder {:?} on {} rows (of {})",
            config.autoencoder.hidden,
            ae_fit.nrows(),
            fit.nrows()
        ));
        let (ae, report) = Autoencoder::train_with_progress(ae_fit, &config.autoencoder, |epoch, train, val| {
            if epoch % 10 == 0 {
                progress(&format!("  epoch {epoch}: train loss {train:.4}, validation loss {val:.4}"));
            }
        });
        (onnx::export(&ae, &format!("Vigil autoencoder for schema {}", schema.id)), Some(report))
    };
    let scorer = OnnxScorer::load(&onnx_bytes, schema.len())?;

    // Calibrate on the held-out benign rows, through the same path live scoring takes.
    let placeholder =
        Combine { iforest: Norm { median: 0.0, spread: 1.0 }, autoencoder: Norm { median: 0.0, spread: 1.0 } };
    let mut detector = Detector {
        schema: schema.clone(),
        scaler,
        baseline,
        forest,
        autoencoder: scorer,
        combine: placeholder,
        range,
        thresholds: Thresholds { target_fpr: config.target_fpr, alert: f32::INFINITY, block: f32::INFINITY },
        classifier: None,
    };
    let cal_scores = detector.score(cal_raw.view())?;
    let forest_values: Vec<f32> = cal_scores.iter().map(|s| s.iforest).collect();
    let log_errors: Vec<f32> = cal_scores.iter().map(|s| log_reconstruction_error(s.autoencoder)).collect();
    detector.combine = Combine { iforest: Norm::fit(&forest_values), autoencoder: Norm::fit(&log_errors) };
    let combined: Vec<f32> =
        cal_scores.iter().map(|s| detector.combine.score(s.iforest, s.autoencoder).max(s.range)).collect();
    let alert = quantile(&combined, 1.0 - config.target_fpr);
    detector.thresholds = Thresholds { target_fpr: config.target_fpr, alert, block: alert + BLOCK_MARGIN };

    let manifest = Manifest {
        format_version: OLDEST_FORMAT_VERSION,
        created_by: format!("vigil {}", env!("CARGO_PKG_VERSION")),
        schema: schema.clone(),
        scaler: detector.scaler.clone(),
        baseline: detector.baseline.clone(),
        combine: detector.combine,
        range: detector.range.clone(),
        thresholds: detector.thresholds,
        training: serde_json::json!({
            "data": summary,
            "rows": raw.nrows(),
            "fit_rows": fit_raw.nrows(),
            "calibration_rows": n_cal,
            "config": config,
            "autoencoder": ae_report.clone().map_or_else(
                || serde_json::json!({ "external": true, "sha256": super::bundle::sha256_hex(&onnx_bytes) }),
                |r| serde_json::json!(r),
            ),
        }),
        files: std::collections::BTreeMap::new(),
        classifier: None,
    };
    let bundle = Bundle::new(manifest, &detector.forest, onnx_bytes.clone());
    Ok(Trained { bundle, detector, autoencoder: ae_report })
}

/// A trained supervised classifier, ready for [`Bundle::with_classifier`].
#[derive(Debug)]
pub struct TrainedClassifier {
    pub spec: super::kind_classifier::ClassifierSpec,
    pub bytes: Vec<u8>,
}

/// Why a classifier could not be trained.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierTrainError {
    #[error("rows have {found} features, the schema has {expected}")]
    Width { expected: usize, found: usize },
    #[error("{0}")]
    Classes(String),
}

/// Trains the supervised classifier on raw rows of `schema` labelled `y` (indices into
/// `classes`; class 0 [`super::kind_classifier::BENIGN`], the rest attack kinds of the table).
/// `summary` (what the data was) goes into the spec's `training` next to the settings.
///
/// # Errors
/// [`ClassifierTrainError`] for rows of another width, or classes the bundle cannot carry
/// (benign missing or not first, a name that is no attack kind, fewer than two classes with
/// rows).
pub fn train_classifier(
    schema: &Schema,
    x: ArrayView2<'_, f32>,
    y: &[u16],
    classes: Vec<String>,
    model: &super::kind_classifier::TreeModel,
    min_probability: f32,
    summary: serde_json::Value,
) -> Result<TrainedClassifier, ClassifierTrainError> {
    use super::kind_classifier::{ClassifierSpec, KindClassifier};
    if x.ncols() != schema.len() {
        return Err(ClassifierTrainError::Width { expected: schema.len(), found: x.ncols() });
    }
    let mut counts = vec![0usize; classes.len()];
    for &c in y {
        counts[usize::from(c)] += 1;
    }
    if counts.first().copied().unwrap_or(0) == 0 || counts.iter().filter(|&&n| n > 0).count() < 2 {
        return Err(ClassifierTrainError::Classes(format!(
            "a classifier needs benign rows and rows of at least one attack kind; the classes have {}",
            classes.iter().zip(&counts).map(|(c, n)| format!("{c}: {n}")).collect::<Vec<_>>().join(", ")
        )));
    }
    let (file, bytes) = model.train(x, y, classes.clone()).to_file();
    let spec = ClassifierSpec {
        file: file.to_owned(),
        classes,
        min_probability,
        training: serde_json::json!({
            "model": model.describe(),
            "params": model,
            "rows_per_class": counts,
            "data": summary,
        }),
    };
    // What goes into the bundle must load as the agent loads it.
    KindClassifier::load(&spec, &bytes, schema.len()).map_err(|e| ClassifierTrainError::Classes(e.to_string()))?;
    Ok(TrainedClassifier { spec, bytes })
}
