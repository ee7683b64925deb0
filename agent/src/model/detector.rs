//! The detector: scaling, both models, the combined score, the threshold and explanations.
//!
//! ## How the combined score is formed
//! 1. Raw features are transformed (schema) and standardised (`(x − mean) / std`, training
//!    data; a feature constant in training keeps std 1).
//! 2. The isolation forest gives s ∈ (0, 1); the autoencoder gives the mean squared
//!    reconstruction error e, used as ln(e + 1e-6).
//! 3. Each of the two is put on a common scale with the held-out benign calibration flows:
//!    z = (v − median) / σ̂, σ̂ = (q90 − q10) / 2.563 (the normal-equivalent spread, robust to
//!    outliers in the calibration data).
//! 4. The range: how far the flow's most extreme behaviour count ([`Schema::ranged`]) lies
//!    beyond the largest value of the training rows, [`RANGE_UNIT`] per e-fold; 0 within.
//!    Both models average over every feature, so one count far beyond anything benign (256 IP
//!    protocols from one source, 60 ports of one host, a thousand sessions to one service)
//!    moves them little; the range says it outright.
//! 5. score = `max(z_forest, z_autoencoder, range)`: a flow is as anomalous as the most
//!    surprised of the three says. (On UNSW-NB15 the mean of the two models was worse than the
//!    autoencoder alone because the forest is the weaker model there; the maximum keeps what
//!    each one sees. Numbers in docs/detection.md.)
//! 6. The alert threshold is the (1 − target FPR) quantile of the calibration scores; the
//!    block threshold is 2 units above it (units of benign spread).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::{
    autoencoder::row_errors,
    iforest::IsolationForest,
    kind_classifier::{Classified, KindClassifier},
    onnx::{OnnxError, OnnxScorer},
};
use crate::features::Schema;

/// Standard scaling of transformed features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaler {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Scaler {
    /// Fits mean and standard deviation per column.
    #[must_use]
    pub fn fit(rows: ArrayView2<'_, f32>) -> Self {
        let mean = rows.mean_axis(Axis(0)).map_or_else(|| vec![0.0; rows.ncols()], |m| m.to_vec());
        let std =
            rows.std_axis(Axis(0), 0.0).iter().map(|&s| if s.is_finite() && s > 1e-6 { s } else { 1.0 }).collect();
        Self { mean, std }
    }

    /// Scales rows in place.
    pub fn apply(&self, rows: &mut Array2<f32>) {
        for mut row in rows.outer_iter_mut() {
            for ((x, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}

/// The largest value in the training rows of the schema's ranged features
/// ([`Schema::ranged`]), after their transform (`ln(1 + count)`: they are all counts).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureRange {
    /// Feature names, in schema order.
    pub features: Vec<String>,
    /// Each feature's largest transformed training value.
    pub max: Vec<f32>,
    /// Score units per e-fold beyond the largest value ([`RANGE_UNIT`] when trained).
    pub unit: f32,
    /// Each feature's column, found when the detector is checked.
    #[serde(skip)]
    columns: Vec<usize>,
}

/// Score units for each e-fold (a factor of 2.72) a count lies beyond the largest value
/// benign training traffic showed: five times beyond scores 4, about the alert threshold of
/// the built-in model. On benign captures split by file the farthest held-out value lay 1.7
/// e-folds beyond (docs/detection.md).
pub const RANGE_UNIT: f32 = 2.5;

impl FeatureRange {
    /// Fits the ranged features of `schema` on transformed (not yet scaled) training rows.
    #[must_use]
    pub fn fit(schema: &Schema, rows: ArrayView2<'_, f32>) -> Self {
        let columns: Vec<usize> = schema.ranged().collect();
        Self {
            features: columns.iter().map(|&j| schema.features[j].name.clone()).collect(),
            max: columns.iter().map(|&j| rows.column(j).iter().copied().fold(0.0, f32::max)).collect(),
            unit: RANGE_UNIT,
            columns,
        }
    }

    /// Finds each feature's column in `schema`.
    ///
    /// # Errors
    /// [`DetectorError::Range`] for a name the schema does not have, or lists of unequal length.
    pub fn resolve(&mut self, schema: &Schema) -> Result<(), DetectorError> {
        if self.max.len() != self.features.len() {
            return Err(DetectorError::Range {
                field: "range".into(),
                value: format!("{} features, {} maxima", self.features.len(), self.max.len()),
                allowed: "one maximum per feature".into(),
            });
        }
        self.columns = self
            .features
            .iter()
            .map(|name| {
                schema.names().position(|n| n == name).ok_or_else(|| DetectorError::Range {
                    field: "range.features".into(),
                    value: format!("`{name}`"),
                    allowed: "a feature of the schema".into(),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    /// How far each ranged feature of a scaled row lies beyond its maximum, in score units (0
    /// within), by column.
    pub fn excess_each<'a>(
        &'a self,
        row: ArrayView1<'a, f32>,
        scaler: &'a Scaler,
    ) -> impl Iterator<Item = (usize, f32)> + 'a {
        self.columns.iter().zip(&self.max).map(move |(&j, &max)| {
            let transformed = row[j] * scaler.std[j] + scaler.mean[j];
            (j, ((transformed - max) * self.unit).max(0.0))
        })
    }

    /// The largest excess of a scaled row; 0 for a model without a range.
    #[must_use]
    pub fn excess(&self, row: ArrayView1<'_, f32>, scaler: &Scaler) -> f32 {
        self.excess_each(row, scaler).fold(0.0, |m, (_, e)| m.max(e))
    }
}

/// Robust location and spread of one model's benign scores.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Norm {
    pub median: f32,
    pub spread: f32,
}

impl Norm {
    /// Fits on benign calibration values.
    #[must_use]
    pub fn fit(values: &[f32]) -> Self {
        let median = quantile(values, 0.5);
        let spread = (quantile(values, 0.9) - quantile(values, 0.1)) / 2.563;
        Self { median, spread: if spread.is_finite() && spread > 1e-6 { spread } else { 1.0 } }
    }

    #[must_use]
    pub fn z(self, v: f32) -> f32 {
        (v - self.median) / self.spread
    }
}

/// How the two model scores are put on one scale before taking the larger.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Combine {
    pub iforest: Norm,
    pub autoencoder: Norm,
}

impl Combine {
    /// The combined score of a forest score and an autoencoder error.
    #[must_use]
    pub fn score(&self, iforest: f32, autoencoder_mse: f32) -> f32 {
        self.iforest.z(iforest).max(self.autoencoder.z(log_reconstruction_error(autoencoder_mse)))
    }
}

/// Decision thresholds on the combined score.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Share of benign calibration flows allowed above `alert`.
    pub target_fpr: f64,
    pub alert: f32,
    pub block: f32,
}

/// The autoencoder score as used in the combination.
#[must_use]
pub fn log_reconstruction_error(mse: f32) -> f32 {
    (mse + 1e-6).ln()
}

/// The `q` quantile (linear interpolation) of `values`; NaN for none.
#[must_use]
#[expect(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "indices")]
pub fn quantile(values: &[f32], q: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    v[lo] + (v[hi] - v[lo]) * frac
}

/// Scores of one flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Isolation forest anomaly score s ∈ (0, 1).
    pub iforest: f32,
    /// Autoencoder mean squared reconstruction error (scaled features).
    pub autoencoder: f32,
    /// How far the most extreme behaviour count lies beyond the training range (score units).
    #[serde(default)]
    pub range: f32,
    /// Combined score (see the module documentation).
    pub combined: f32,
    /// What the supervised classifier says (a bundle with one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<Classified>,
    /// The models whose own score reached the alert threshold (a bit per [`Fired`]).
    #[serde(default)]
    pub fired: u8,
}

impl Score {
    /// The models whose own score reached the alert threshold.
    pub fn fired(&self) -> impl Iterator<Item = Fired> + '_ {
        Fired::ALL.into_iter().filter(|m| self.fired & m.bit() != 0)
    }
}

/// A model whose own score reached the alert threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fired {
    IsolationForest,
    Autoencoder,
    Range,
    Classifier,
}

impl Fired {
    pub const ALL: [Self; 4] = [Self::IsolationForest, Self::Autoencoder, Self::Range, Self::Classifier];

    #[must_use]
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::IsolationForest => "iforest",
            Self::Autoencoder => "autoencoder",
            Self::Range => "range",
            Self::Classifier => "classifier",
        }
    }
}

/// One feature's part in an explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    pub feature: String,
    /// The flow's raw value, in the feature's unit.
    pub value: f32,
    /// The training data's median raw value.
    pub baseline: f32,
    /// Share of the anomaly attributed to this feature (average of the autoencoder's
    /// reconstruction-error share and the forest's isolation share).
    pub share: f32,
}

/// Why an [`Detector`] cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("{what} has {found} values for {expected} features")]
    Width { what: &'static str, expected: usize, found: usize },
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    #[error("{field} is {value}; it must be {allowed}")]
    Range { field: String, value: String, allowed: String },
    #[error(
        "the autoencoder reconstructs off-baseline probe rows {how} (relative error {relative:.2e}, at least {MIN_PROBE_RELATIVE_ERROR} expected): it would score every flow alike"
    )]
    Identity { how: &'static str, relative: f32 },
    #[error(
        "the autoencoder's calibrated score of off-baseline probe rows is {z:.2} (median), at least {MIN_PROBE_Z} expected: with this calibration it would call them normal"
    )]
    Insensitive { z: f32 },
}

/// Smallest share of the probe rows' squared size the autoencoder must fail to reconstruct.
pub const MIN_PROBE_RELATIVE_ERROR: f32 = 0.01;
/// Smallest median calibrated score (units of benign spread) the autoencoder must give the
/// probes.
pub const MIN_PROBE_Z: f32 = 1.0;
/// How far off the training mean a probe row's chosen features are (scaled units).
pub const PROBE_OFFSET: f32 = 8.0;
/// Number of probe rows.
pub const PROBES: usize = 64;
/// Bounds of scaler means and spreads: transformed features of this schema stay within
/// ±256 (counts and rates as ln(1 + x) ≤ 89, TTL ≤ 255, ratios and flags in [0, 1]).
pub const FEATURE_RANGE: f32 = 256.0;
/// Smallest spread (scaler std, score spreads) a fit keeps (`Scaler::fit`, `Norm::fit`).
pub const MIN_SPREAD: f32 = 1e-6;
/// A reconstruction error the alert threshold must be reachable with: 10⁶ (per feature,
/// in squared benign standard deviations) is far beyond any flow seen in testing.
pub const REACHABLE_MSE: f32 = 1e6;
/// Room above the alert threshold for the bundle's block threshold.
pub const MAX_BLOCK_MARGIN: f32 = 100.0;

/// A number as an error message shows it: 1e30 rather than thirty-one digits.
fn number<T: Into<f64> + std::fmt::Display + std::fmt::LowerExp + Copy>(x: T) -> String {
    let v: f64 = x.into();
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) { format!("{x:e}") } else { format!("{x}") }
}

/// The synthetic off-baseline rows (already scaled) every model must react to: in each row
/// about a quarter of the features, drawn by a fixed generator, sit [`PROBE_OFFSET`] benign
/// standard deviations above or below the training mean, the rest at the mean.
#[must_use]
pub fn probe_rows(width: usize) -> Array2<f32> {
    // A linear congruential generator with a fixed seed: the same rows on every machine.
    let mut state: u64 = 0x7669_6769_6c00_0001;
    Array2::from_shape_fn((PROBES, width), |_| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        match state >> 61 {
            0 => PROBE_OFFSET,
            1 => -PROBE_OFFSET,
            _ => 0.0,
        }
    })
}

/// Everything needed to score rows of one schema.
#[derive(Clone, Debug)]
pub struct Detector {
    pub schema: Schema,
    pub scaler: Scaler,
    pub baseline: Vec<f32>,
    pub forest: IsolationForest,
    pub autoencoder: OnnxScorer,
    pub combine: Combine,
    /// Empty for a model without a range component.
    pub range: FeatureRange,
    pub thresholds: Thresholds,
    /// The supervised classifier, the third model (format 2 bundles).
    pub classifier: Option<KindClassifier>,
}

impl Detector {
    /// Checks that every part agrees with the schema's width.
    ///
    /// Then every value is range-checked and both models are tried on [`probe_rows`]: a
    /// bundle that loads is one that can raise an alert. The forest must already be validated
    /// ([`IsolationForest::validate`]).
    ///
    /// # Errors
    /// [`DetectorError::Width`] naming the part that disagrees, [`DetectorError::Range`] naming
    /// the field and its allowed range, or a probe failure.
    pub fn check(&self) -> Result<(), DetectorError> {
        let expected = self.schema.len();
        let parts = [
            ("scaler mean", self.scaler.mean.len()),
            ("scaler std", self.scaler.std.len()),
            ("baseline", self.baseline.len()),
            ("isolation forest", self.forest.features),
            ("autoencoder", self.autoencoder.width()),
        ];
        for (what, found) in parts {
            if found != expected {
                return Err(DetectorError::Width { what, expected, found });
            }
        }
        self.check_ranges()?;
        self.check_probes()
    }

    /// The highest combined score a flow can reach: the forest's highest score, or a
    /// reconstruction error of [`REACHABLE_MSE`].
    #[must_use]
    pub fn reachable_score(&self) -> f32 {
        let c = self.combine;
        let models = c.iforest.z(self.forest.max_score()).max(c.autoencoder.z(log_reconstruction_error(REACHABLE_MSE)));
        if self.range.features.is_empty() { models } else { models.max(FEATURE_RANGE) }
    }

    fn check_ranges(&self) -> Result<(), DetectorError> {
        let range = |field: String, value: f32, lo: f32, hi: f32, why: &str| {
            if value.is_finite() && (lo..=hi).contains(&value) {
                Ok(())
            } else {
                Err(DetectorError::Range {
                    field,
                    value: number(value),
                    allowed: format!("a finite number in [{lo}, {hi}] ({why})"),
                })
            }
        };
        let named = |what: &str, i: usize| format!("{what}[{i}] ({})", self.schema.features[i].name);
        for (i, (&mean, &std)) in self.scaler.mean.iter().zip(&self.scaler.std).enumerate() {
            let why = "the range of transformed features";
            range(named("scaler.mean", i), mean, -FEATURE_RANGE, FEATURE_RANGE, why)?;
            range(named("scaler.std", i), std, MIN_SPREAD, FEATURE_RANGE, why)?;
        }
        for (i, &max) in self.range.max.iter().enumerate() {
            let name = &self.range.features[i];
            range(format!("range.max[{i}] ({name})"), max, 0.0, FEATURE_RANGE, "ln(1 + a count)")?;
        }
        if !self.range.features.is_empty() {
            range("range.unit".into(), self.range.unit, MIN_SPREAD, FEATURE_RANGE, "score units per e-fold")?;
        }
        for (i, &b) in self.baseline.iter().enumerate() {
            range(named("baseline", i), b, f32::MIN, f32::MAX, "a raw feature value")?;
        }
        let c = self.combine;
        range("combine.iforest.median".into(), c.iforest.median, 0.0, 1.0, "forest scores are in (0, 1)")?;
        range("combine.iforest.spread".into(), c.iforest.spread, MIN_SPREAD, 1.0, "forest scores are in (0, 1)")?;
        let (lo, hi) = (log_reconstruction_error(0.0), log_reconstruction_error(f32::MAX));
        let why = "ln of a reconstruction error";
        range("combine.autoencoder.median".into(), c.autoencoder.median, lo, hi, why)?;
        range("combine.autoencoder.spread".into(), c.autoencoder.spread, MIN_SPREAD, hi - lo, why)?;
        let t = self.thresholds;
        if !(t.target_fpr > 0.0 && t.target_fpr < 0.5) {
            return Err(DetectorError::Range {
                field: "thresholds.target_fpr".into(),
                value: number(t.target_fpr),
                allowed: "in (0, 0.5)".into(),
            });
        }
        let reach = self.reachable_score();
        let why = "0 is the benign median; above the upper bound no flow can score";
        range("thresholds.alert".into(), t.alert, 0.0, reach, why)?;
        range(
            "thresholds.block".into(),
            t.block,
            t.alert,
            t.alert + MAX_BLOCK_MARGIN,
            "at or above the alert threshold",
        )
    }

    fn check_probes(&self) -> Result<(), DetectorError> {
        let probes = probe_rows(self.schema.len());
        let recon = self.autoencoder.reconstruct(probes.view())?;
        let energy: f32 = probes.iter().map(|x| x * x).sum();
        let missed: f32 = probes.iter().zip(&recon).map(|(x, y)| (x - y) * (x - y)).sum();
        let relative = missed / energy;
        if !relative.is_finite() {
            return Err(DetectorError::Identity { how: "as non-finite numbers", relative });
        }
        if relative < MIN_PROBE_RELATIVE_ERROR {
            return Err(DetectorError::Identity { how: "almost perfectly", relative });
        }
        let c = self.combine;
        let ae: Vec<f32> = row_errors(probes.view(), recon.view())
            .iter()
            .map(|&e| c.autoencoder.z(log_reconstruction_error(e)))
            .collect();
        let z = quantile(&ae, 0.5);
        if z.is_nan() || z < MIN_PROBE_Z {
            return Err(DetectorError::Insensitive { z });
        }
        Ok(())
    }

    /// Transformed and scaled copy of raw rows: the models' input.
    ///
    /// # Panics
    /// If the rows are not as wide as the schema.
    #[must_use]
    pub fn prepare(&self, raw: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut rows = raw.to_owned();
        self.schema.transform(&mut rows);
        self.scaler.apply(&mut rows);
        rows
    }

    /// Scores raw feature rows.
    ///
    /// # Errors
    /// [`OnnxError`] if tract fails.
    pub fn score(&self, raw: ArrayView2<'_, f32>) -> Result<Vec<Score>, OnnxError> {
        let rows = self.prepare(raw);
        let mut scores = self.score_prepared(rows.view())?.0;
        self.classify_into(raw, &mut scores)?;
        Ok(scores)
    }

    /// Adds the classifier's word to the scores of raw rows (nothing without a classifier): a
    /// flow it fires on scores at least the alert threshold, never more on its account.
    ///
    /// # Errors
    /// [`OnnxError`] if tract fails on an ONNX classifier.
    pub fn classify_into(&self, raw: ArrayView2<'_, f32>, scores: &mut [Score]) -> Result<(), OnnxError> {
        let Some(classifier) = &self.classifier else { return Ok(()) };
        for (score, said) in scores.iter_mut().zip(classifier.classify(raw)?) {
            if said.fired {
                score.combined = score.combined.max(self.thresholds.alert);
                score.fired |= Fired::Classifier.bit();
            }
            score.classifier = Some(said);
        }
        Ok(())
    }

    /// Scores prepared rows; also returns the reconstructions (for explanations).
    ///
    /// # Errors
    /// [`OnnxError`] if tract fails.
    pub fn score_prepared(&self, rows: ArrayView2<'_, f32>) -> Result<(Vec<Score>, Array2<f32>), OnnxError> {
        let forest = self.forest.score(rows);
        let recon = self.autoencoder.reconstruct(rows)?;
        let errors = row_errors(rows, recon.view());
        let c = self.combine;
        let scores = forest
            .into_iter()
            .zip(errors)
            .zip(rows.rows())
            .map(|((f, e), row)| {
                let range = self.range.excess(row, &self.scaler);
                let alert = self.thresholds.alert;
                let fired = [
                    (c.iforest.z(f), Fired::IsolationForest),
                    (c.autoencoder.z(log_reconstruction_error(e)), Fired::Autoencoder),
                    (range, Fired::Range),
                ]
                .into_iter()
                .filter(|(z, _)| *z >= alert)
                .fold(0, |bits, (_, m)| bits | m.bit());
                Score { iforest: f, autoencoder: e, range, combined: c.score(f, e).max(range), classifier: None, fired }
            })
            .collect();
        Ok((scores, recon))
    }

    /// The `top` features that contributed most to one row's score.
    #[must_use]
    pub fn explain(
        &self,
        raw: ArrayView1<'_, f32>,
        prepared: ArrayView1<'_, f32>,
        recon: ArrayView1<'_, f32>,
        top: usize,
    ) -> Vec<Contribution> {
        let errors: Vec<f32> = prepared.iter().zip(recon).map(|(x, y)| (x - y) * (x - y)).collect();
        let total: f32 = errors.iter().sum();
        let isolation = self.forest.attribution(prepared);
        // A feature beyond the training range shares the explanation with the two models.
        let mut excess = vec![0.0; errors.len()];
        for (j, e) in self.range.excess_each(prepared, &self.scaler) {
            excess[j] = e;
        }
        let beyond: f32 = excess.iter().sum();
        let mut parts: Vec<(usize, f32)> = errors
            .iter()
            .zip(&isolation)
            .map(|(e, i)| if total > 0.0 { 0.5 * e / total + 0.5 * i } else { *i })
            .enumerate()
            .map(|(j, p)| {
                (j, if beyond > 0.0 { 0.5 * p + 0.5 * excess.get(j).copied().unwrap_or(0.0) / beyond } else { p })
            })
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        parts
            .into_iter()
            .take(top)
            .map(|(i, share)| Contribution {
                feature: self.schema.features[i].name.clone(),
                value: raw[i],
                baseline: self.baseline[i],
                share,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates() {
        let v = [4.0, 1.0, 3.0, 2.0];
        assert!((quantile(&v, 0.0) - 1.0).abs() < 1e-6);
        assert!((quantile(&v, 0.5) - 2.5).abs() < 1e-6);
        assert!((quantile(&v, 1.0) - 4.0).abs() < 1e-6);
        assert!(quantile(&[], 0.5).is_nan());
    }

    #[test]
    fn scaler_keeps_constant_columns_finite() {
        let rows = ndarray::arr2(&[[1.0f32, 5.0], [3.0, 5.0]]);
        let s = Scaler::fit(rows.view());
        assert_eq!(s.mean, [2.0, 5.0]);
        assert_eq!(s.std, [1.0, 1.0]);
        let mut r = ndarray::arr2(&[[3.0f32, 7.0]]);
        s.apply(&mut r);
        assert_eq!(r.row(0).to_vec(), [1.0, 2.0]);
    }

    #[test]
    fn norm_is_robust() {
        let mut v: Vec<f32> = (0..1000).map(|i| f32::from(u16::try_from(i % 100).expect("small"))).collect();
        v.push(1e9);
        let n = Norm::fit(&v);
        assert!((n.median - 49.5).abs() < 1.0 && n.spread < 40.0, "{n:?}");
    }
}
