//! Gradient-boosted trees for the supervised classifier, the other model the issue asks to
//! measure beside the random forest ([`super::classifier`]).
//!
//! Multi-class log-loss boosting as scikit-learn's `HistGradientBoostingClassifier` does it:
//! every feature binned once into quantile bins (the forest's [`Binned`]), raw scores starting
//! at the log of each class's share, then per iteration one tree per class fitted to the
//! gradient `p − y` and hessian `p(1 − p)` of the softmax, grown best-first (the leaf whose
//! split gains most is split next) up to `max_leaves` leaves, a split's gain
//! `G_L²/(H_L+λ) + G_R²/(H_R+λ) − G²/(H+λ)`, a leaf's value `−η·G/(H+λ)`. Probabilities are
//! the softmax of the summed raw scores (computed in f64 while training, so rare classes'
//! probabilities do not underflow to 0). Thresholds are bin edges, so scoring compares raw
//! values with the same rule as the forest (`x <= t` left; greater and NaN right), and the
//! forest's block scorer walks these trees too.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "rows, nodes, classes and bins are far below 2^24; bins fit a u8 by construction"
)]

use std::num::NonZeroUsize;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use super::classifier::{
    Binned, ClassifierError, LEAF, Node, Scorer, append_tree, check_header, check_trees, walkable,
};

/// The format version of saved boosted trees.
pub const FORMAT: u32 = 1;

/// How the trees are grown (scikit-learn's `HistGradientBoostingClassifier` defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoostParams {
    /// Boosting iterations (a tree per class each).
    pub iterations: usize,
    /// η, the shrinkage of every leaf value.
    pub learning_rate: f32,
    /// Leaves per tree at most.
    pub max_leaves: usize,
    /// Depth of the deepest leaf at most.
    pub max_depth: usize,
    /// Fewest training rows in a leaf.
    pub min_leaf: usize,
    /// λ, the L2 regularisation of leaf values. scikit-learn's default is 0; with rare
    /// classes whose probabilities reach 0, leaves of almost no hessian then take values of
    /// 10¹³ and the scores blow up (scikit-learn's own model falls to a ROC-AUC of 0.76 on the
    /// CIC-IDS-2017 sample where the forest reaches 1.0); 1 keeps every leaf value below
    /// `η·|G|`.
    pub l2: f32,
    /// Quantile bins per feature, at most 256.
    pub bins: usize,
}

impl Default for BoostParams {
    fn default() -> Self {
        Self { iterations: 100, learning_rate: 0.1, max_leaves: 31, max_depth: 32, min_leaf: 20, l2: 1.0, bins: 255 }
    }
}

/// Trained boosted trees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Boosted {
    pub format: u32,
    /// Class names; index 0 is benign by convention of the trainers.
    pub classes: Vec<String>,
    /// Features per row.
    pub width: usize,
    /// Each class's starting raw score.
    pub baseline: Vec<f32>,
    /// Each tree's root in `nodes`; tree `t` adds to class `t % classes.len()`.
    pub roots: Vec<u32>,
    pub nodes: Vec<Node>,
    /// One value per leaf (η already applied).
    pub values: Vec<f32>,
    pub params: BoostParams,
}

/// Softmax in place.
pub fn softmax(row: &mut [f64]) {
    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// A tree as it grows: nodes relative to the tree, leaves pointing into `values`.
struct Tree {
    nodes: Vec<Node>,
    values: Vec<f32>,
}

/// A leaf that may still be split: its rows `rows[start..end]`, their sums and, while it
/// can be split, its histograms.
struct Open {
    node: usize,
    start: usize,
    end: usize,
    depth: usize,
    g: f64,
    h: f64,
    /// The best split: gain, feature, last bin of the left side.
    split: Option<(f64, usize, u8)>,
    /// Per feature and bin: gradient sum, hessian sum, rows (features at [`Layout`] offsets).
    hist: Option<Vec<Bin>>,
}

/// Gradient sum, hessian sum and rows of one bin.
type Bin = (f64, f64, u32);

/// Where each feature's bins start in a leaf's histograms.
struct Layout {
    offsets: Vec<usize>,
}

impl Layout {
    fn new(binned: &Binned) -> Self {
        let mut offsets = vec![0];
        for e in &binned.edges {
            offsets.push(offsets.last().copied().unwrap_or(0) + e.len() + 1);
        }
        Self { offsets }
    }

    fn len(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }
}

/// Smallest hessian sum a side of a split may have (scikit-learn's `min_hessian_to_split`).
const MIN_HESSIAN: f64 = 1e-3;

impl Boosted {
    /// Boosts trees on `x` (one row per flow) with labels `y` (indices into `classes`).
    ///
    /// # Panics
    /// When `y` and `x` differ in length, a label is not a class, or there are no rows.
    #[must_use]
    #[expect(clippy::many_single_char_names, reason = "x, y, n, k, g, h, p as in the maths")]
    pub fn train(x: ArrayView2<f32>, y: &[u16], classes: Vec<String>, params: &BoostParams) -> Self {
        assert_eq!(x.nrows(), y.len(), "one label per row");
        assert!(x.nrows() > 0, "no rows to train on");
        let k = classes.len();
        assert!(y.iter().all(|&c| usize::from(c) < k), "a label outside the classes");
        let n = x.nrows();
        let binned = Binned::new(x, params.bins.clamp(2, 256));
        let mut counts = vec![0usize; k];
        for &c in y {
            counts[usize::from(c)] += 1;
        }
        // A class without rows starts far below the others (its probability stays ~0).
        let baseline: Vec<f32> =
            counts.iter().map(|&c| if c == 0 { -30.0 } else { (c as f32 / n as f32).ln() }).collect();
        let mut raw: Vec<f64> = (0..n).flat_map(|_| baseline.iter().map(|&b| f64::from(b))).collect();
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(k);
        let mut model = Self {
            format: FORMAT,
            classes,
            width: x.ncols(),
            baseline,
            roots: Vec::new(),
            nodes: Vec::new(),
            values: Vec::new(),
            params: params.clone(),
        };
        let mut p = vec![0f64; n * k];
        for _ in 0..params.iterations {
            p.copy_from_slice(&raw);
            for row in p.chunks_mut(k) {
                softmax(row);
            }
            // One tree per class, the classes shared among the threads; each tree also says
            // what it adds to each row's raw score.
            let grown: Vec<Vec<(usize, Tree, Vec<f32>)>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..threads)
                    .map(|w| {
                        let (binned, p) = (&binned, &p);
                        scope.spawn(move || {
                            (w..k)
                                .step_by(threads)
                                .map(|c| {
                                    let (g, h): (Vec<f32>, Vec<f32>) = (0..n)
                                        .map(|i| {
                                            let pi = p[i * k + c];
                                            let yi = if usize::from(y[i]) == c { 1.0 } else { 0.0 };
                                            ((pi - yi) as f32, (pi * (1.0 - pi)).max(1e-16) as f32)
                                        })
                                        .unzip();
                                    let (tree, add) = grow(binned, &g, &h, params);
                                    (c, tree, add)
                                })
                                .collect()
                        })
                    })
                    .collect();
                workers.into_iter().map(|h| h.join().expect("a tree-growing thread panicked")).collect()
            });
            let mut trees: Vec<(usize, Tree, Vec<f32>)> = grown.into_iter().flatten().collect();
            trees.sort_by_key(|(c, _, _)| *c);
            for (c, tree, add) in trees {
                for (i, a) in add.iter().enumerate() {
                    raw[i * k + c] += f64::from(*a);
                }
                model.append(tree);
            }
        }
        model
    }

    /// Appends a tree's nodes, shifting its indices.
    fn append(&mut self, tree: Tree) {
        append_tree(&mut self.roots, &mut self.nodes, &mut self.values, tree.nodes, tree.values);
    }

    /// The trees laid out for scoring blocks of rows.
    #[must_use]
    pub fn scorer(&self) -> Scorer {
        let k = self.classes.len();
        let (nodes, leaf, depth) = walkable(&self.nodes, &self.roots);
        let classes = (0..self.roots.len()).map(|t| (t % k) as u16).collect();
        Scorer {
            k,
            width: self.width,
            roots: self.roots.clone(),
            depth,
            nodes,
            leaf,
            probs: self.values.clone(),
            boosted: Some((classes, self.baseline.clone())),
        }
    }

    /// Probabilities of every row: `[rows, classes]`.
    ///
    /// # Panics
    /// When the rows are not `width` wide.
    #[must_use]
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.scorer().predict_proba(x)
    }

    /// Checks trees read from a file: the format, a tree per class per iteration, indices in
    /// range, children after their parents (every walk ends), finite values.
    ///
    /// # Errors
    /// [`ClassifierError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ClassifierError> {
        let bad = |m: String| Err(ClassifierError::Structure(m));
        let k = check_header(self.format, FORMAT, &self.classes)?;
        if self.roots.is_empty() {
            return Err(ClassifierError::NoTrees);
        }
        if !self.roots.len().is_multiple_of(k) {
            return bad(format!("{} trees for {k} classes (one per class per iteration)", self.roots.len()));
        }
        if self.baseline.len() != k || self.baseline.iter().any(|b| !b.is_finite()) {
            return bad(format!("baseline {:?} for {k} classes", self.baseline));
        }
        if self.values.iter().any(|v| !v.is_finite()) {
            return bad("a leaf value that is not finite".into());
        }
        check_trees(&self.roots, &self.nodes, self.width, |i, n| {
            if n.child as usize >= self.values.len() {
                return Err(format!("leaf {i} points at value {} of {}", n.child, self.values.len()));
            }
            Ok(())
        })
    }
}

/// Grows one tree on gradients `g` and hessians `h`, best-first; answers the tree and what it
/// adds to each training row's raw score. A split leaf's larger child gets its histograms by
/// subtracting the smaller child's from the parent's, so each split reads only the smaller
/// side's rows.
fn grow(binned: &Binned, g: &[f32], h: &[f32], params: &BoostParams) -> (Tree, Vec<f32>) {
    let n = binned.rows;
    let layout = Layout::new(binned);
    let mut rows: Vec<u32> = (0..n as u32).collect();
    let mut tree = Tree { nodes: vec![Node { feature: LEAF, threshold: 0.0, child: 0 }], values: Vec::new() };
    let (g0, h0) = sums(g, h, &rows);
    let mut root = Open { node: 0, start: 0, end: n, depth: 0, g: g0, h: h0, split: None, hist: None };
    if splittable(&root, params) {
        let mut hist = vec![(0.0, 0.0, 0); layout.len()];
        fill(binned, g, h, &rows, &layout, &mut hist);
        root.split = best_split(binned, &layout, &hist, &root, params);
        root.hist = Some(hist);
    }
    let mut open = vec![root];
    let mut leaves = 1;
    while leaves < params.max_leaves.max(2) {
        let Some(at) = open
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.split.map(|(gain, _, _)| (i, gain)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i)
        else {
            break;
        };
        let o = open.swap_remove(at);
        let (_, feature, bin) = o.split.expect("chosen for its split");
        let column = &binned.columns[feature];
        let here = &mut rows[o.start..o.end];
        let mut left = 0;
        for i in 0..here.len() {
            if column[here[i] as usize] <= bin {
                here.swap(i, left);
                left += 1;
            }
        }
        let child = tree.nodes.len();
        tree.nodes.push(Node { feature: LEAF, threshold: 0.0, child: 0 });
        tree.nodes.push(Node { feature: LEAF, threshold: 0.0, child: 0 });
        tree.nodes[o.node] =
            Node { feature: feature as u32, threshold: binned.edges[feature][usize::from(bin)], child: child as u32 };
        let mut sides =
            [(child, o.start, o.start + left), (child + 1, o.start + left, o.end)].map(|(node, start, end)| {
                let (gs, hs) = sums(g, h, &rows[start..end]);
                Open { node, start, end, depth: o.depth + 1, g: gs, h: hs, split: None, hist: None }
            });
        if sides.iter().any(|s| splittable(s, params)) {
            // The smaller side's histograms from its rows, the larger's by subtraction.
            let mut parent = o.hist.expect("a split leaf has its histograms");
            let small = usize::from(sides[1].end - sides[1].start < sides[0].end - sides[0].start);
            let mut hist = vec![(0.0, 0.0, 0); layout.len()];
            fill(binned, g, h, &rows[sides[small].start..sides[small].end], &layout, &mut hist);
            for (p, s) in parent.iter_mut().zip(&hist) {
                *p = (p.0 - s.0, p.1 - s.1, p.2 - s.2);
            }
            sides[small].hist = Some(hist);
            sides[1 - small].hist = Some(parent);
            for side in &mut sides {
                if splittable(side, params) {
                    side.split = best_split(binned, &layout, side.hist.as_deref().expect("filled"), side, params);
                }
                if side.split.is_none() {
                    side.hist = None;
                }
            }
        }
        open.extend(sides);
        leaves += 1;
    }
    let mut add = vec![0f32; n];
    let lambda = f64::from(params.l2);
    for o in open {
        let value = (-f64::from(params.learning_rate) * o.g / (o.h + lambda).max(1e-12)) as f32;
        tree.nodes[o.node] = Node { feature: LEAF, threshold: 0.0, child: tree.values.len() as u32 };
        tree.values.push(value);
        for &r in &rows[o.start..o.end] {
            add[r as usize] = value;
        }
    }
    (tree, add)
}

fn sums(g: &[f32], h: &[f32], rows: &[u32]) -> (f64, f64) {
    rows.iter().fold((0.0, 0.0), |(sg, sh), &r| (sg + f64::from(g[r as usize]), sh + f64::from(h[r as usize])))
}

fn splittable(o: &Open, params: &BoostParams) -> bool {
    o.depth < params.max_depth && o.end - o.start >= 2 * params.min_leaf.max(1)
}

/// Every feature's histogram of `rows` into `hist` (zeroed first).
fn fill(binned: &Binned, g: &[f32], h: &[f32], rows: &[u32], layout: &Layout, hist: &mut [Bin]) {
    hist.fill((0.0, 0.0, 0));
    for (f, column) in binned.columns.iter().enumerate() {
        let hist = &mut hist[layout.offsets[f]..layout.offsets[f + 1]];
        for &r in rows {
            let e = &mut hist[usize::from(column[r as usize])];
            e.0 += f64::from(g[r as usize]);
            e.1 += f64::from(h[r as usize]);
            e.2 += 1;
        }
    }
}

/// The best split of an open leaf from its histograms, or `None` when none gains or leaves
/// `min_leaf` rows and [`MIN_HESSIAN`] on both sides.
fn best_split(
    binned: &Binned,
    layout: &Layout,
    hist: &[Bin],
    o: &Open,
    params: &BoostParams,
) -> Option<(f64, usize, u8)> {
    let rows = (o.end - o.start) as u32;
    let min_leaf = params.min_leaf.max(1) as u32;
    let lambda = f64::from(params.l2);
    let parent = o.g * o.g / (o.h + lambda);
    let mut best: Option<(f64, usize, u8)> = None;
    for f in 0..binned.columns.len() {
        let hist = &hist[layout.offsets[f]..layout.offsets[f + 1]];
        if hist.len() < 2 {
            continue;
        }
        let (mut gl, mut hl, mut nl) = (0.0, 0.0, 0u32);
        for (b, &(bg, bh, bn)) in hist.iter().enumerate().take(hist.len() - 1) {
            gl += bg;
            hl += bh;
            nl += bn;
            let nr = rows - nl;
            if nl < min_leaf || hl < MIN_HESSIAN {
                continue;
            }
            let hr = o.h - hl;
            if nr < min_leaf || hr < MIN_HESSIAN {
                break;
            }
            let gr = o.g - gl;
            let gain = gl * gl / (hl + lambda) + gr * gr / (hr + lambda) - parent;
            if gain > 1e-9 && best.is_none_or(|(bg, _, _)| gain > bg) {
                best = Some((gain, f, b as u8));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    /// Three classes in four features: class 1 high in feature 0, class 2 high in feature 1,
    /// with overlap so that probabilities are not all 0 or 1.
    fn data(n: usize) -> (Array2<f32>, Vec<u16>) {
        let x = Array2::from_shape_fn((n, 4), |(r, c)| {
            let class = r % 3;
            let centre = if (class, c) == (1, 0) || (class, c) == (2, 1) { 2.0 } else { 0.0 };
            centre + (((r * 7919 + c * 104_729) % 1000) as f32 / 500.0 - 1.0)
        });
        (x, (0..n).map(|r| (r % 3) as u16).collect())
    }

    #[test]
    fn boosting_learns_three_classes_and_the_block_scorer_agrees_with_a_plain_walk() {
        let (x, y) = data(1500);
        let classes: Vec<String> = ["benign", "scan", "syn-flood"].map(String::from).to_vec();
        let params = BoostParams { iterations: 30, ..BoostParams::default() };
        let model = Boosted::train(x.view(), &y, classes, &params);
        model.validate().expect("valid");
        assert_eq!(model.roots.len(), 90, "a tree per class per iteration");
        let (test, truth) = data(300);
        let p = model.predict_proba(test.view());
        let right = p
            .rows()
            .into_iter()
            .zip(&truth)
            .filter(|(row, c)| super::super::classifier::argmax(row.as_slice().expect("row")) == usize::from(**c))
            .count();
        assert!(right > 240, "{right} of 300 right");
        // A plain walk of every tree, summed and softmaxed, is what the block scorer gives.
        for (i, row) in test.rows().into_iter().enumerate().take(50) {
            let mut raw: Vec<f64> = model.baseline.iter().map(|&b| f64::from(b)).collect();
            for (t, &root) in model.roots.iter().enumerate() {
                let mut at = root as usize;
                while model.nodes[at].feature != LEAF {
                    let n = model.nodes[at];
                    at = n.child as usize + usize::from(row[n.feature as usize] > n.threshold);
                }
                raw[t % 3] += f64::from(model.values[model.nodes[at].child as usize]);
            }
            softmax(&mut raw);
            for (a, b) in raw.iter().zip(p.row(i)) {
                assert!((a - f64::from(*b)).abs() < 1e-5, "row {i}: {raw:?} vs {}", p.row(i));
            }
        }
        // Saved and read back, checked; damage is refused.
        let back: Boosted = serde_json::from_slice(&serde_json::to_vec(&model).expect("json")).expect("reads");
        assert_eq!(back, model);
        let mut broken = model.clone();
        broken.roots.pop();
        assert!(broken.validate().expect_err("trees").to_string().contains("89 trees for 3 classes"));
        let mut broken = model.clone();
        broken.values[0] = f32::NAN;
        assert!(broken.validate().is_err());
        let mut broken = model;
        let inner = broken.nodes.iter().position(|n| n.feature != LEAF).expect("a split");
        broken.nodes[inner].child = 0;
        assert!(broken.validate().expect_err("loop").to_string().contains("are not after it"));
    }
}
