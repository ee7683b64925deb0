//! Detection metrics over scored, labelled samples: ROC-AUC, PR-AUC (average precision, as
//! scikit-learn defines it), the confusion matrix at a threshold, and curve points.

use serde::{Deserialize, Serialize};

/// Confusion matrix at a threshold (`score > threshold` is flagged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positives: u64,
    pub false_positives: u64,
    pub true_negatives: u64,
    pub false_negatives: u64,
}

#[expect(clippy::cast_precision_loss, reason = "ratios of counts")]
fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl Confusion {
    /// Counts at `threshold`.
    #[must_use]
    pub fn at(scores: &[f32], labels: &[bool], threshold: f32) -> Self {
        let mut c = Self::default();
        for (&s, &attack) in scores.iter().zip(labels) {
            match (s > threshold, attack) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, false) => c.true_negatives += 1,
                (false, true) => c.false_negatives += 1,
            }
        }
        c
    }

    #[must_use]
    pub fn precision(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }

    #[must_use]
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    #[must_use]
    pub fn false_positive_rate(&self) -> f64 {
        ratio(self.false_positives, self.false_positives + self.true_negatives)
    }

    #[must_use]
    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }
}

/// Points of the ROC curve (fpr, tpr) and the PR curve (recall, precision), one per distinct
/// score, from the highest score down.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Curves {
    pub roc: Vec<(f64, f64)>,
    pub pr: Vec<(f64, f64)>,
    pub roc_auc: f64,
    /// Average precision: Σ (Rₙ − Rₙ₋₁) Pₙ.
    pub pr_auc: f64,
}

/// Computes both curves and their areas. `None` if either class is empty.
#[must_use]
#[expect(clippy::cast_precision_loss, clippy::similar_names, reason = "ratios of counts; tp/fp are the usual names")]
pub fn curves(scores: &[f32], labels: &[bool]) -> Option<Curves> {
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut out = Curves { roc: vec![(0.0, 0.0)], pr: vec![], ..Curves::default() };
    let (mut tp, mut fp) = (0f64, 0f64);
    let (mut prev_fpr, mut prev_tpr, mut prev_recall) = (0f64, 0f64, 0f64);
    let mut i = 0;
    while i < order.len() {
        // All samples tied at this score move together.
        let s = scores[order[i]];
        while i < order.len() && scores[order[i]].total_cmp(&s).is_eq() {
            if labels[order[i]] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            i += 1;
        }
        let (fpr, tpr) = (fp / negatives, tp / positives);
        out.roc_auc += (fpr - prev_fpr) * (tpr + prev_tpr) / 2.0;
        let precision = tp / (tp + fp);
        out.pr_auc += (tpr - prev_recall) * precision;
        out.roc.push((fpr, tpr));
        out.pr.push((tpr, precision));
        (prev_fpr, prev_tpr, prev_recall) = (fpr, tpr, tpr);
    }
    Some(out)
}

/// Keeps at most about `max` points of a curve (for pictures and JSON), always the ends.
#[must_use]
pub fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let step = points.len().div_ceil(max);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if out.last() != points.last() {
        out.extend(points.last());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_inverted_separation() {
        let labels = [false, false, true, true];
        let c = curves(&[0.1, 0.2, 0.8, 0.9], &labels).expect("both classes");
        assert!((c.roc_auc - 1.0).abs() < 1e-12 && (c.pr_auc - 1.0).abs() < 1e-12);
        let c = curves(&[0.9, 0.8, 0.2, 0.1], &labels).expect("both classes");
        assert!(c.roc_auc.abs() < 1e-12);
    }

    #[test]
    fn matches_hand_computed_values() {
        // scikit-learn: roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75,
        // average_precision_score(...) = 0.8333...
        let c = curves(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).expect("both classes");
        assert!((c.roc_auc - 0.75).abs() < 1e-12, "{}", c.roc_auc);
        assert!((c.pr_auc - 0.833_333_333_333).abs() < 1e-9, "{}", c.pr_auc);
    }

    #[test]
    fn ties_count_half() {
        let c = curves(&[0.5, 0.5], &[false, true]).expect("both classes");
        assert!((c.roc_auc - 0.5).abs() < 1e-12);
        assert!(curves(&[0.5], &[true]).is_none());
    }

    #[test]
    fn confusion_rates() {
        let c = Confusion::at(&[0.1, 0.6, 0.7, 0.2], &[false, false, true, true], 0.5);
        assert_eq!((c.true_positives, c.false_positives, c.true_negatives, c.false_negatives), (1, 1, 1, 1));
        assert!((c.precision() - 0.5).abs() < 1e-12 && (c.recall() - 0.5).abs() < 1e-12);
        assert!((c.f1() - 0.5).abs() < 1e-12 && (c.false_positive_rate() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn thinning_keeps_ends() {
        let pts: Vec<(f64, f64)> = (0..1000).map(|i| (f64::from(i), 0.0)).collect();
        let t = thin(&pts, 100);
        assert!(t.len() <= 101 && t[0] == pts[0] && t.last() == pts.last());
    }
}
