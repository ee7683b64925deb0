//! The supervised classifier: a random forest of classification trees over a feature matrix,
//! multi-class (benign and the attack kinds it was trained on), giving a probability per class.
//!
//! Training bins every feature into at most [`ClassifierParams::bins`] quantile bins once, then
//! grows each tree on a bootstrap sample, choosing at every node the best Gini split among
//! `max_features` random features from the bins' class histograms (the histogram method of
//! `LightGBM` and scikit-learn's `HistGradientBoosting`, here for a forest). A split's threshold is
//! a bin edge, a value seen in the training rows, so scoring compares raw values: `x <= t` goes
//! left, anything else (greater, NaN) right, the same rule as the bins'.
//!
//! Scoring walks a flat array: the two children of a node are next to each other, a leaf points
//! at its class probabilities (the class shares of the training rows that reached it), and a
//! row's probabilities are the trees' mean. A forest read from a file is checked before use
//! (every index in range, children after their parent so every walk ends, probabilities that
//! sum to one): a file cannot make the scorer read out of bounds or loop.

#![expect(
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "rows, nodes, classes and bins are far below 2^24; bins fit a u8 by construction"
)]

use std::num::NonZeroUsize;

use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

/// The format version of a saved forest.
pub const FORMAT: u32 = 1;

/// How a forest is grown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierParams {
    pub trees: usize,
    /// Depth of the deepest leaf (the root is depth 0).
    pub max_depth: usize,
    /// Fewest training rows in a leaf.
    pub min_leaf: usize,
    /// Features tried at each node; `None` for the square root of the width (scikit-learn's
    /// `max_features="sqrt"`).
    pub max_features: Option<usize>,
    /// Quantile bins per feature, at most 256.
    pub bins: usize,
    pub seed: u64,
}

impl Default for ClassifierParams {
    fn default() -> Self {
        Self { trees: 50, max_depth: 14, min_leaf: 2, max_features: None, bins: 128, seed: 1 }
    }
}

/// A node: a split on `feature` at `threshold` with children `child` (`<=`) and `child + 1`,
/// or, when `feature` is [`LEAF`], a leaf whose probabilities start at `child`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub feature: u32,
    pub threshold: f32,
    pub child: u32,
}

/// `Node::feature` of a leaf.
pub const LEAF: u32 = u32::MAX;

/// A trained forest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    pub format: u32,
    /// Class names; index 0 is benign by convention of the trainers.
    pub classes: Vec<String>,
    /// Features per row.
    pub width: usize,
    /// Index of each tree's root in `nodes`.
    pub roots: Vec<u32>,
    pub nodes: Vec<Node>,
    /// `classes.len()` probabilities per leaf.
    pub leaf_probs: Vec<f32>,
    pub params: ClassifierParams,
}

/// Why a saved forest was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClassifierError {
    #[error("classifier format {0} (this build reads {FORMAT})")]
    Format(u32),
    #[error("a classifier needs at least two classes, this one has {0}")]
    Classes(usize),
    #[error("a classifier needs at least one tree")]
    NoTrees,
    #[error("classifier: {0}")]
    Structure(String),
}

impl Classifier {
    /// Grows a forest on `x` (one row per flow) with labels `y` (indices into `classes`).
    ///
    /// # Panics
    /// When `y` and `x` differ in length, a label is not a class, or there are no rows.
    #[must_use]
    pub fn train(x: ArrayView2<f32>, y: &[u16], classes: Vec<String>, params: &ClassifierParams) -> Self {
        assert_eq!(x.nrows(), y.len(), "one label per row");
        assert!(x.nrows() > 0, "no rows to train on");
        assert!(y.iter().all(|&c| usize::from(c) < classes.len()), "a label outside the classes");
        let binned = Binned::new(x, params.bins.clamp(2, 256));
        let mtry =
            params.max_features.unwrap_or_else(|| (x.ncols() as f64).sqrt().round() as usize).clamp(1, x.ncols());
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(params.trees.max(1));
        let grown: Vec<Vec<(usize, Tree)>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|w| {
                    let binned = &binned;
                    let n_classes = classes.len();
                    scope.spawn(move || {
                        (w..params.trees)
                            .step_by(threads)
                            .map(|t| (t, grow(binned, y, n_classes, mtry, params, params.seed.wrapping_add(t as u64))))
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|h| h.join().expect("a tree-growing thread panicked")).collect()
        });
        let mut trees: Vec<(usize, Tree)> = grown.into_iter().flatten().collect();
        trees.sort_by_key(|(t, _)| *t);
        let mut forest = Classifier {
            format: FORMAT,
            classes,
            width: x.ncols(),
            roots: Vec::with_capacity(trees.len()),
            nodes: Vec::new(),
            leaf_probs: Vec::new(),
            params: params.clone(),
        };
        for (_, tree) in trees {
            forest.append(tree);
        }
        forest
    }

    /// Appends a tree's nodes, shifting its indices.
    fn append(&mut self, tree: Tree) {
        append_tree(&mut self.roots, &mut self.nodes, &mut self.leaf_probs, tree.nodes, tree.probs);
    }

    /// The class probabilities of one row into `out` (`classes.len()` values).
    ///
    /// # Panics
    /// When `row` or `out` has the wrong length.
    pub fn proba_into(&self, row: &[f32], out: &mut [f32]) {
        assert_eq!(row.len(), self.width, "row width");
        let k = self.classes.len();
        assert_eq!(out.len(), k, "one output per class");
        out.fill(0.0);
        for &root in &self.roots {
            let mut i = root as usize;
            loop {
                let n = self.nodes[i];
                if n.feature == LEAF {
                    let start = n.child as usize;
                    for (o, p) in out.iter_mut().zip(&self.leaf_probs[start..start + k]) {
                        *o += p;
                    }
                    break;
                }
                i = n.child as usize
                    + usize::from(
                        row[n.feature as usize].partial_cmp(&n.threshold).is_none_or(std::cmp::Ordering::is_gt),
                    );
            }
        }
        let scale = 1.0 / self.roots.len() as f32;
        for o in out {
            *o *= scale;
        }
    }

    /// Probabilities of every row: `[rows, classes]`, through a [`Scorer`] built for the call
    /// (hold one to score many batches).
    ///
    /// # Panics
    /// When the rows are not `width` wide.
    #[must_use]
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.scorer().predict_proba(x)
    }

    /// The forest laid out for scoring blocks of rows.
    #[must_use]
    pub fn scorer(&self) -> Scorer {
        let k = self.classes.len();
        let (nodes, leaf, depth) = walkable(&self.nodes, &self.roots);
        Scorer {
            k,
            width: self.width,
            roots: self.roots.clone(),
            depth,
            nodes,
            leaf,
            probs: self.leaf_probs.clone(),
            boosted: None,
        }
    }
    /// The most probable class of each row.
    ///
    /// # Panics
    /// When the rows are not `width` wide.
    #[must_use]
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<u16> {
        self.predict_proba(x)
            .rows()
            .into_iter()
            .map(|p| argmax(p.as_slice().expect("standard layout")) as u16)
            .collect()
    }

    /// Checks a forest read from a file: the format, indices in range, children after their
    /// parents (every walk ends), probabilities between 0 and 1 summing to 1 per leaf.
    ///
    /// # Errors
    /// [`ClassifierError`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ClassifierError> {
        let bad = |m: String| Err(ClassifierError::Structure(m));
        let k = check_header(self.format, FORMAT, &self.classes)?;
        if !self.leaf_probs.len().is_multiple_of(k) {
            return bad(format!("{} leaf probabilities for {k} classes", self.leaf_probs.len()));
        }
        for chunk in self.leaf_probs.chunks(k) {
            let sum: f32 = chunk.iter().sum();
            if chunk.iter().any(|p| !(0.0..=1.0).contains(p)) || (sum - 1.0).abs() > 1e-3 {
                return bad(format!("leaf probabilities {chunk:?} are not a distribution"));
            }
        }
        check_trees(&self.roots, &self.nodes, self.width, |i, n| {
            if !(n.child as usize).is_multiple_of(k) || n.child as usize + k > self.leaf_probs.len() {
                return Err(format!("leaf {i} points at probabilities {} of {}", n.child, self.leaf_probs.len()));
            }
            Ok(())
        })
    }

    /// Nodes per tree on average (for reports).
    #[must_use]
    pub fn mean_nodes(&self) -> f64 {
        self.nodes.len() as f64 / self.roots.len().max(1) as f64
    }
}

/// The checks both tree models start with: the file's format (the model's own `expected`) and
/// at least two classes; answers the number of classes.
pub(super) fn check_header(format: u32, expected: u32, classes: &[String]) -> Result<usize, ClassifierError> {
    if format != expected {
        return Err(ClassifierError::Format(format));
    }
    match classes.len() {
        k if k < 2 => Err(ClassifierError::Classes(k)),
        k => Ok(k),
    }
}

/// A forest laid out for speed: trees walked in lockstep over blocks of rows, each tree for a
/// whole block while it is in cache, eight rows at a time with no branch on the way down
/// (leaves step to themselves, so every walk takes its tree's depth in steps).
#[derive(Clone, Debug)]
pub struct Scorer {
    pub(super) k: usize,
    pub(super) width: usize,
    pub(super) roots: Vec<u32>,
    /// Steps from each root to its deepest leaf.
    pub(super) depth: Vec<u32>,
    pub(super) nodes: Vec<Node>,
    /// Per node: where its probabilities start, for leaves.
    pub(super) leaf: Vec<u32>,
    pub(super) probs: Vec<f32>,
    /// Gradient boosting ([`super::boosted`]): each tree's class (its leaves hold one value
    /// added to that class's raw score), and the raw scores' starting values; the
    /// probabilities are their softmax. `None` for a forest (leaves hold `k` probabilities,
    /// averaged).
    pub(super) boosted: Option<(Vec<u16>, Vec<f32>)>,
}

/// Appends a grown tree (nodes relative to the tree, leaves pointing into `leaf_values`
/// relative to it) to flat `roots`, `nodes` and `values`, shifting its indices.
pub(super) fn append_tree(
    roots: &mut Vec<u32>,
    nodes: &mut Vec<Node>,
    values: &mut Vec<f32>,
    tree_nodes: Vec<Node>,
    leaf_values: Vec<f32>,
) {
    let base = nodes.len() as u32;
    let start = values.len() as u32;
    roots.push(base);
    nodes.extend(tree_nodes.into_iter().map(|n| {
        if n.feature == LEAF { Node { child: n.child + start, ..n } } else { Node { child: n.child + base, ..n } }
    }));
    values.extend(leaf_values);
}

/// Checks flat trees read from a file: at least one tree, roots in order, every split on a
/// feature below `width` at a finite threshold with its children after it inside its tree (so
/// every walk ends); `leaf` checks each leaf's pointer into the values.
pub(super) fn check_trees(
    roots: &[u32],
    nodes: &[Node],
    width: usize,
    leaf: impl Fn(usize, &Node) -> Result<(), String>,
) -> Result<(), ClassifierError> {
    let bad = |m: String| Err(ClassifierError::Structure(m));
    if roots.is_empty() {
        return Err(ClassifierError::NoTrees);
    }
    if width == 0 {
        return bad("a width of 0 features".into());
    }
    for (t, &root) in roots.iter().enumerate() {
        let end = roots.get(t + 1).map_or(nodes.len(), |&r| r as usize);
        if root as usize >= end || (t == 0 && root != 0) || (t > 0 && root <= roots[t - 1]) {
            return bad(format!("tree {t}'s root {root} is out of order"));
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if n.feature == LEAF {
            leaf(i, n).map_err(ClassifierError::Structure)?;
            continue;
        }
        // A tree's nodes run from its root to the next root: children must stay inside it.
        let tree = roots.partition_point(|&r| r as usize <= i) - 1;
        let end = roots.get(tree + 1).map_or(nodes.len(), |&r| r as usize);
        if n.feature as usize >= width {
            return bad(format!("node {i} splits on feature {} of {width}", n.feature));
        }
        if !n.threshold.is_finite() {
            return bad(format!("node {i} has threshold {}", n.threshold));
        }
        if (n.child as usize) <= i || n.child as usize + 1 >= end {
            return bad(format!("node {i}'s children {} and {} are not after it in its tree", n.child, n.child + 1));
        }
    }
    Ok(())
}

/// Trees laid out for [`Scorer`]: a leaf steps to itself whatever the row holds (NaN never
/// compares `<=`, so the walk takes `child + 1`, which is the leaf), with where each leaf's
/// values start and each tree's depth.
pub(super) fn walkable(tree_nodes: &[Node], roots: &[u32]) -> (Vec<Node>, Vec<u32>, Vec<u32>) {
    let mut nodes = Vec::with_capacity(tree_nodes.len());
    let mut leaf = vec![u32::MAX; tree_nodes.len()];
    for (i, n) in tree_nodes.iter().enumerate() {
        if n.feature == LEAF {
            leaf[i] = n.child;
            nodes.push(Node { feature: 0, threshold: f32::NAN, child: (i as u32).wrapping_sub(1) });
        } else {
            nodes.push(*n);
        }
    }
    let depth = roots
        .iter()
        .map(|&r| {
            let mut deepest = 0;
            let mut stack = vec![(r as usize, 0u32)];
            while let Some((i, d)) = stack.pop() {
                deepest = deepest.max(d);
                let n = tree_nodes[i];
                if n.feature != LEAF {
                    stack.push((n.child as usize, d + 1));
                    stack.push((n.child as usize + 1, d + 1));
                }
            }
            deepest
        })
        .collect();
    (nodes, leaf, depth)
}

/// Rows scored together: a block's rows stay in cache while every tree walks them.
const BLOCK: usize = 128;
/// Rows walked in lockstep.
const LANES: usize = 8;

impl Scorer {
    /// Probabilities of every row: `[rows, classes]`.
    ///
    /// # Panics
    /// When the rows are not `width` wide.
    #[must_use]
    #[expect(
        clippy::neg_cmp_op_on_partial_ord,
        reason = "`!(v <= t)` sends NaN right in one compare with no branch, as the bins do"
    )]
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Array2<f32> {
        assert_eq!(x.ncols(), self.width, "row width");
        let x = x.as_standard_layout();
        let rows = x.as_slice().expect("standard layout");
        let k = self.k;
        let mut out = vec![0f32; x.nrows() * k];
        for (block, acc) in rows.chunks(BLOCK * self.width).zip(out.chunks_mut(BLOCK * k)) {
            let n = block.len() / self.width;
            for (t, (&root, &depth)) in self.roots.iter().zip(&self.depth).enumerate() {
                let class = self.boosted.as_ref().map(|(classes, _)| usize::from(classes[t]));
                let mut start = 0;
                while start < n {
                    let lanes = LANES.min(n - start);
                    let mut at = [root; LANES];
                    for _ in 0..depth {
                        for (l, i) in at.iter_mut().enumerate().take(lanes) {
                            let node = self.nodes[*i as usize];
                            let v = block[(start + l) * self.width + node.feature as usize];
                            *i = node.child.wrapping_add(u32::from(!(v <= node.threshold)));
                        }
                    }
                    for (l, &i) in at.iter().enumerate().take(lanes) {
                        let p = self.leaf[i as usize] as usize;
                        let row = &mut acc[(start + l) * k..(start + l + 1) * k];
                        if let Some(c) = class {
                            row[c] += self.probs[p];
                        } else {
                            for (o, v) in row.iter_mut().zip(&self.probs[p..p + k]) {
                                *o += v;
                            }
                        }
                    }
                    start += lanes;
                }
            }
        }
        if let Some((_, baseline)) = &self.boosted {
            let mut wide = vec![0f64; k];
            for row in out.chunks_mut(k) {
                for ((w, v), b) in wide.iter_mut().zip(row.iter()).zip(baseline) {
                    *w = f64::from(*v) + f64::from(*b);
                }
                super::boosted::softmax(&mut wide);
                for (v, w) in row.iter_mut().zip(&wide) {
                    *v = *w as f32;
                }
            }
        } else {
            let scale = 1.0 / self.roots.len() as f32;
            for v in &mut out {
                *v *= scale;
            }
        }
        Array2::from_shape_vec((x.nrows(), k), out).expect("rows × classes")
    }
}

/// The index of the largest value (the first on ties).
#[must_use]
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold((0, f32::MIN), |best, (i, &v)| if v > best.1 { (i, v) } else { best }).0
}

/// The training matrix as bin numbers, column by column, and each column's bin edges.
pub(super) struct Binned {
    pub(super) rows: usize,
    /// `columns[f][row]`.
    pub(super) columns: Vec<Vec<u8>>,
    /// `edges[f][b]`: the largest value in bin `b` (the last bin holds the rest and NaN).
    pub(super) edges: Vec<Vec<f32>>,
}

impl Binned {
    pub(super) fn new(x: ArrayView2<f32>, bins: usize) -> Self {
        let mut columns = Vec::with_capacity(x.ncols());
        let mut edges = Vec::with_capacity(x.ncols());
        for column in x.columns() {
            let mut values: Vec<f32> = column.iter().copied().filter(|v| !v.is_nan()).collect();
            values.sort_unstable_by(f32::total_cmp);
            values.dedup();
            // Edges: distinct values when they are few, else quantiles of the distinct values
            // weighted by rows (taken from the sorted column).
            let e: Vec<f32> = if values.len() <= bins {
                values.iter().take(values.len().saturating_sub(1)).copied().collect()
            } else {
                let mut all: Vec<f32> = column.iter().copied().filter(|v| !v.is_nan()).collect();
                all.sort_unstable_by(f32::total_cmp);
                let mut e: Vec<f32> = (1..bins).map(|q| all[(q * all.len() / bins).min(all.len() - 1)]).collect();
                e.dedup();
                if e.last() == all.last() {
                    e.pop();
                }
                e
            };
            columns.push(column.iter().map(|&v| e.partition_point(|&edge| edge < v) as u8).collect());
            edges.push(e);
        }
        Self { rows: x.nrows(), columns, edges }
    }
}

/// One tree while it grows: leaves point into `probs` relative to the tree, inner nodes at
/// their children relative to the tree.
struct Tree {
    nodes: Vec<Node>,
    probs: Vec<f32>,
}

fn grow(binned: &Binned, y: &[u16], k: usize, mtry: usize, params: &ClassifierParams, seed: u64) -> Tree {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = binned.rows;
    let mut rows: Vec<u32> = (0..n).map(|_| rng.random_range(0..n) as u32).collect();
    let mut tree = Tree { nodes: vec![Node { feature: LEAF, threshold: 0.0, child: 0 }], probs: Vec::new() };
    // (node, start, end, depth) of rows[start..end].
    let mut stack = vec![(0usize, 0usize, n, 0usize)];
    let width = binned.columns.len();
    let mut features: Vec<usize> = (0..width).collect();
    let mut hist = vec![0u32; 256 * k];
    let mut counts = vec![0u32; k];
    while let Some((node, start, end, depth)) = stack.pop() {
        let here = &mut rows[start..end];
        counts.fill(0);
        for &r in here.iter() {
            counts[usize::from(y[r as usize])] += 1;
        }
        let total = here.len() as u32;
        let pure = counts.contains(&total);
        let split = if pure || depth >= params.max_depth || here.len() < 2 * params.min_leaf.max(1) {
            None
        } else {
            best_split(
                binned,
                y,
                here,
                &counts,
                k,
                mtry,
                params.min_leaf.max(1) as u32,
                &mut features,
                &mut hist,
                &mut rng,
            )
        };
        let Some((feature, bin)) = split else {
            tree.nodes[node] = Node { feature: LEAF, threshold: 0.0, child: tree.probs.len() as u32 };
            tree.probs.extend(counts.iter().map(|&c| c as f32 / total as f32));
            continue;
        };
        let column = &binned.columns[feature];
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
        tree.nodes[node] =
            Node { feature: feature as u32, threshold: binned.edges[feature][usize::from(bin)], child: child as u32 };
        stack.push((child + 1, start + left, end, depth + 1));
        stack.push((child, start, start + left, depth + 1));
    }
    tree
}

/// The best (feature, last bin of the left side) among `mtry` random features by the Gini
/// impurity decrease, or `None` when no split leaves `min_leaf` rows on both sides.
#[expect(
    clippy::too_many_arguments,
    clippy::many_single_char_names,
    reason = "the grower's working buffers, passed to avoid allocating per node; k, y as in the maths"
)]
fn best_split(
    binned: &Binned,
    y: &[u16],
    rows: &[u32],
    counts: &[u32],
    k: usize,
    mtry: usize,
    min_leaf: u32,
    features: &mut [usize],
    hist: &mut [u32],
    rng: &mut StdRng,
) -> Option<(usize, u8)> {
    let total = rows.len() as f64;
    let parent: f64 = counts.iter().map(|&c| f64::from(c) * f64::from(c)).sum::<f64>() / total;
    let mut best: Option<(f64, usize, u8)> = None;
    // A partial Fisher-Yates shuffle picks mtry distinct features.
    for i in 0..mtry {
        let j = rng.random_range(i..features.len());
        features.swap(i, j);
        let f = features[i];
        let bins = binned.edges[f].len() + 1;
        if bins < 2 {
            continue;
        }
        let column = &binned.columns[f];
        let hist = &mut hist[..bins * k];
        hist.fill(0);
        for &r in rows {
            hist[usize::from(column[r as usize]) * k + usize::from(y[r as usize])] += 1;
        }
        let mut left = vec![0u32; k];
        for b in 0..bins - 1 {
            for c in 0..k {
                left[c] += hist[b * k + c];
            }
            let n_left: u32 = left.iter().sum();
            let n_right = rows.len() as u32 - n_left;
            if n_left < min_leaf {
                continue;
            }
            if n_right < min_leaf {
                break;
            }
            // Weighted Gini decrease ∝ Σ l²/nl + Σ r²/nr − Σ p²/n.
            let (mut sl, mut sr) = (0.0, 0.0);
            for c in 0..k {
                let l = f64::from(left[c]);
                let r = f64::from(counts[c] - left[c]);
                sl += l * l;
                sr += r * r;
            }
            let gain = sl / f64::from(n_left) + sr / f64::from(n_right) - parent;
            if gain > 1e-9 && best.is_none_or(|(g, _, _)| gain > g) {
                best = Some((gain, f, b as u8));
            }
        }
    }
    best.map(|(_, f, b)| (f, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three classes in four features: class 0 near the origin, class 1 where feature 0 is
    /// large, class 2 where feature 1 is large; features 2 and 3 are noise.
    pub(crate) fn blobs(n: usize, seed: u64) -> (Array2<f32>, Vec<u16>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut y = Vec::with_capacity(n);
        let x = Array2::from_shape_fn((n, 4), |(r, c)| {
            let class = (r % 3) as u16;
            if c == 0 {
                y.push(class);
            }
            let centre = match (class, c) {
                (1, 0) | (2, 1) => 3.0,
                _ => 0.0,
            };
            centre + rng.random_range(-1.0..1.0)
        });
        (x, y)
    }

    fn names() -> Vec<String> {
        vec!["benign".into(), "scan".into(), "flood".into()]
    }

    #[test]
    fn a_forest_separates_classes_it_can_see_and_is_valid() {
        let (x, y) = blobs(3000, 1);
        let forest = Classifier::train(x.view(), &y, names(), &ClassifierParams { trees: 20, ..Default::default() });
        forest.validate().expect("a grown forest is valid");
        let (tx, ty) = blobs(900, 2);
        let predicted = forest.predict(tx.view());
        let right = predicted.iter().zip(&ty).filter(|(p, t)| p == t).count();
        assert!(right as f64 / ty.len() as f64 > 0.97, "{right} of {} right", ty.len());
        let p = forest.predict_proba(tx.view());
        for row in p.rows() {
            assert!((row.sum() - 1.0).abs() < 1e-4, "{row}");
        }
        // The block scorer gives what one row's walk gives, NaN and odd block ends included.
        let mut odd = tx.slice(ndarray::s![..(BLOCK + LANES + 3), ..]).to_owned();
        odd[[5, 0]] = f32::NAN;
        odd[[130, 1]] = f32::NAN;
        let blocks = forest.predict_proba(odd.view());
        let mut one = [0.0; 3];
        for (r, row) in odd.rows().into_iter().enumerate() {
            forest.proba_into(row.as_slice().unwrap(), &mut one);
            for c in 0..3 {
                assert!((blocks[[r, c]] - one[c]).abs() < 1e-6, "row {r}: {:?} vs {one:?}", blocks.row(r));
            }
        }
        // The same seed grows the same forest, whatever the number of threads.
        let again = Classifier::train(x.view(), &y, names(), &ClassifierParams { trees: 20, ..Default::default() });
        assert_eq!(again, forest);
    }

    #[test]
    fn nan_and_values_beyond_the_training_range_go_right_and_still_score() {
        let (x, y) = blobs(600, 3);
        let forest = Classifier::train(x.view(), &y, names(), &ClassifierParams { trees: 5, ..Default::default() });
        let mut out = [0.0; 3];
        forest.proba_into(&[f32::NAN, f32::NAN, f32::NAN, f32::NAN], &mut out);
        assert!((out.iter().sum::<f32>() - 1.0).abs() < 1e-4);
        forest.proba_into(&[1e30, -1e30, 0.0, 0.0], &mut out);
        assert_eq!(argmax(&out), 1, "feature 0 far above the rest is class 1: {out:?}");
    }

    #[test]
    fn depth_and_leaf_size_bound_the_trees() {
        let (x, y) = blobs(2000, 4);
        let stump = Classifier::train(
            x.view(),
            &y,
            names(),
            &ClassifierParams { trees: 3, max_depth: 1, max_features: Some(4), ..Default::default() },
        );
        assert!(stump.roots.iter().all(|&r| stump.nodes[r as usize].feature != LEAF));
        assert_eq!(stump.nodes.len(), 3 * 3, "a root and two leaves per tree");
        let coarse = Classifier::train(
            x.view(),
            &y,
            names(),
            &ClassifierParams { trees: 3, min_leaf: 500, ..Default::default() },
        );
        assert!(coarse.mean_nodes() <= 7.0, "{} nodes a tree with leaves of 500 of 2000 rows", coarse.mean_nodes());
    }

    type Damage = Box<dyn Fn(&mut Classifier)>;

    #[test]
    fn a_damaged_forest_is_refused_with_the_reason() {
        let (x, y) = blobs(600, 5);
        let good = Classifier::train(x.view(), &y, names(), &ClassifierParams { trees: 3, ..Default::default() });
        let inner = good.nodes.iter().position(|n| n.feature != LEAF).expect("a split");
        let leaf = good.nodes.iter().position(|n| n.feature == LEAF).expect("a leaf");
        let cases: Vec<(Damage, &str)> = vec![
            (Box::new(|c| c.format = 9), "format 9"),
            (Box::new(|c| c.classes.truncate(1)), "two classes"),
            (Box::new(|c| c.roots.clear()), "one tree"),
            (Box::new(move |c| c.nodes[inner].child = inner as u32), "not after it"),
            (Box::new(move |c| c.nodes[inner].child = u32::MAX - 1), "not after it"),
            (Box::new(move |c| c.nodes[inner].feature = 4), "feature 4 of 4"),
            (Box::new(move |c| c.nodes[inner].threshold = f32::NAN), "threshold NaN"),
            (Box::new(move |c| c.nodes[leaf].child = 1), "points at probabilities"),
            (Box::new(|c| c.leaf_probs[0] = 2.0), "not a distribution"),
            (Box::new(|c| c.roots[1] = 0), "out of order"),
        ];
        for (damage, why) in cases {
            let mut bad = good.clone();
            damage(&mut bad);
            let err = bad.validate().expect_err(why).to_string();
            assert!(err.contains(why), "{err:?} should say {why:?}");
        }
        let json = serde_json::to_string(&good).unwrap();
        let back: Classifier = serde_json::from_str(&json).unwrap();
        assert_eq!(back, good);
        back.validate().unwrap();
    }
}
