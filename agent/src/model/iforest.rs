//! Isolation forest (Liu, Ting and Zhou, "Isolation Forest", ICDM 2008).
//!
//! Training follows the paper: each tree is grown on a subsample of ψ rows drawn without
//! replacement, splitting on a random feature at a random value between that feature's
//! minimum and maximum in the node, down to a height limit of ⌈log₂ ψ⌉. A row's path length
//! is the depth of the leaf it reaches plus c(n) for the n training rows left unsplit there,
//! and its anomaly score is s = 2^(−E[h]/c(ψ)), in (0, 1), higher is more anomalous.
//!
//! The stored form (`iforest.json`) is already the compiled form: all trees' nodes in one
//! flat pre-order array, a split's left child right after it and its right child by index,
//! a leaf holding its whole path-length contribution. Scoring walks that array for a block of
//! rows per tree so the tree stays in cache.

use ndarray::{ArrayView1, ArrayView2};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::index::sample};
use serde::{Deserialize, Serialize};

/// Euler–Mascheroni constant, for the harmonic number approximation in c(n).
const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Marks a leaf in [`Node::feature`].
pub const LEAF: u32 = u32::MAX;

/// Average path length of an unsuccessful search in a binary search tree of n nodes:
/// c(n) = 2H(n−1) − 2(n−1)/n, with H(i) ≈ ln i + γ (c(1) = 0, c(2) = 1).
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "n is a row count")]
pub fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// One node of the flattened forest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Split feature, or [`LEAF`].
    #[serde(rename = "f")]
    pub feature: u32,
    /// Split value (go left when `x < value`), or for a leaf its path length
    /// (depth + c(rows that reached it in training)).
    #[serde(rename = "v")]
    pub value: f32,
    /// Index of the right child (the left child is the next node); 0 for a leaf.
    #[serde(rename = "r")]
    pub right: u32,
    /// Training rows that reached this node (for explanations).
    #[serde(rename = "n")]
    pub size: u32,
}

/// Training parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForestParams {
    pub trees: usize,
    /// Subsample size ψ per tree (capped at the number of rows).
    pub subsample: usize,
    pub seed: u64,
}

impl Default for ForestParams {
    /// The paper's defaults: 100 trees of ψ = 256.
    fn default() -> Self {
        Self { trees: 100, subsample: 256, seed: 1 }
    }
}

/// A trained isolation forest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IsolationForest {
    /// Number of features a row must have.
    pub features: usize,
    /// ψ actually used (c(ψ) normalises the score).
    pub subsample: usize,
    /// Index of each tree's root in `nodes`.
    pub roots: Vec<u32>,
    pub nodes: Vec<Node>,
    /// The scoring plan, built on first use.
    #[serde(skip)]
    plan: std::sync::OnceLock<Plan>,
}

impl PartialEq for IsolationForest {
    fn eq(&self, other: &Self) -> bool {
        (self.features, self.subsample, &self.roots, &self.nodes)
            == (other.features, other.subsample, &other.roots, &other.nodes)
    }
}

/// One step of the scoring plan: from a split, go to `next` when `x[feature] < threshold`
/// and to `next + 1` otherwise (children are laid out side by side). A leaf has a NaN
/// threshold (no comparison with NaN is true) and `next` one before itself, so it stays put:
/// every row takes the same number of steps, and a step is an add, not a branch.
#[derive(Clone, Copy, Debug)]
struct Step {
    feature: u32,
    threshold: f32,
    next: u32,
}

/// The branch-free form of the forest used for scoring.
#[derive(Clone, Debug)]
struct Plan {
    steps: Vec<Step>,
    /// Path length of each step's leaf (0 for splits).
    path: Vec<f32>,
    roots: Vec<u32>,
    /// Deepest leaf in the forest: how many steps every row takes.
    height: usize,
}

impl Plan {
    fn new(nodes: &[Node], roots: &[u32]) -> Self {
        let mut plan = Self {
            steps: Vec::with_capacity(nodes.len()),
            path: Vec::with_capacity(nodes.len()),
            roots: Vec::new(),
            height: 0,
        };
        let placeholder = Step { feature: 0, threshold: f32::NAN, next: 0 };
        let at = |i: usize| u32::try_from(i).expect("forest fits in u32 nodes");
        for &root in roots {
            let new_root = plan.steps.len();
            plan.steps.push(placeholder);
            plan.path.push(0.0);
            plan.roots.push(at(new_root));
            let mut queue = std::collections::VecDeque::from([(root as usize, new_root, 0usize)]);
            while let Some((old, new, depth)) = queue.pop_front() {
                let n = nodes[old];
                if n.feature == LEAF {
                    plan.steps[new] = Step { feature: 0, threshold: f32::NAN, next: at(new).wrapping_sub(1) };
                    plan.path[new] = n.value;
                    plan.height = plan.height.max(depth);
                } else {
                    let k = plan.steps.len();
                    plan.steps.extend([placeholder, placeholder]);
                    plan.path.extend([0.0, 0.0]);
                    plan.steps[new] = Step { feature: n.feature, threshold: n.value, next: at(k) };
                    queue.push_back((old + 1, k, depth + 1));
                    queue.push_back((n.right as usize, k + 1, depth + 1));
                }
            }
        }
        plan
    }
}

/// Why a forest file is unusable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForestError {
    #[error("the forest has no trees")]
    Empty,
    #[error("tree {tree} starts at node {root}, past the {len} nodes")]
    BadRoot { tree: usize, root: u32, len: usize },
    #[error("node {node} splits on feature {feature}, but rows have {features} features")]
    BadFeature { node: usize, feature: u32, features: usize },
    #[error("node {node} has children outside its tree (right child {right})")]
    BadChild { node: usize, right: u32 },
    #[error("node {node} has a non-finite value")]
    NotFinite { node: usize },
    #[error("{what} is {found}, must be in {min}..={max}")]
    Limit { what: &'static str, found: usize, min: usize, max: usize },
    #[error("node {node} is reached twice (trees must not share nodes)")]
    Shared { node: usize },
    #[error("tree {tree} is {depth} deep, deeper than the ⌈log₂ ψ⌉ = {limit} a forest of ψ = {subsample} grows")]
    TooDeep { tree: usize, depth: usize, limit: usize, subsample: usize },
    #[error("leaf {node} at depth {depth} has path length {value}, outside [{depth}, {max}] (depth + c(rows ≤ ψ))")]
    LeafValue { node: usize, depth: usize, value: f32, max: f32 },
    #[error("node {node} claims {size} training rows, more than ψ = {subsample}")]
    NodeSize { node: usize, size: u32, subsample: usize },
}

/// Most trees a loaded forest may have (as `vigil train --trees`).
pub const MAX_TREES: usize = 10_000;
/// Largest subsample ψ a loaded forest may have (as `vigil train --subsample`).
pub const MAX_SUBSAMPLE: usize = 1_000_000;
/// Most nodes a loaded forest may have (about 64 MiB of memory for the nodes and the plan).
pub const MAX_NODES: usize = 1 << 22;

/// ⌈log₂ ψ⌉, the height limit of a tree grown on ψ rows.
#[must_use]
pub const fn height_limit(psi: usize) -> usize {
    (usize::BITS - psi.saturating_sub(1).leading_zeros()) as usize
}

impl IsolationForest {
    /// Trains a forest on `rows` (one row per sample).
    ///
    /// # Panics
    /// If `rows` is empty.
    #[must_use]
    pub fn train(rows: ArrayView2<'_, f32>, params: ForestParams) -> Self {
        assert!(rows.nrows() > 0, "cannot train an isolation forest on no rows");
        let psi = params.subsample.clamp(1, rows.nrows());
        let mut rng = StdRng::seed_from_u64(params.seed);
        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(params.trees);
        for _ in 0..params.trees {
            roots.push(u32::try_from(nodes.len()).expect("forest fits in u32 nodes"));
            let mut idx: Vec<usize> = sample(&mut rng, rows.nrows(), psi).into_vec();
            grow(rows, &mut idx, 0, height_limit(psi), &mut rng, &mut nodes);
        }
        Self { features: rows.ncols(), subsample: psi, roots, nodes, plan: std::sync::OnceLock::new() }
    }

    /// Checks a forest read from a file: sizes within the limits, every index in range, every
    /// value finite, each tree a tree (no shared nodes) no deeper than training grows one, and
    /// leaf path lengths that agree with their depth.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), ForestError> {
        if self.roots.is_empty() {
            return Err(ForestError::Empty);
        }
        let limit = |what, found, min, max| {
            if (min..=max).contains(&found) { Ok(()) } else { Err(ForestError::Limit { what, found, min, max }) }
        };
        limit("the number of trees", self.roots.len(), 1, MAX_TREES)?;
        limit("the subsample ψ", self.subsample, 2, MAX_SUBSAMPLE)?;
        limit("the number of nodes", self.nodes.len(), 1, MAX_NODES)?;
        let len = self.nodes.len();
        for (tree, &root) in self.roots.iter().enumerate() {
            if root as usize >= len {
                return Err(ForestError::BadRoot { tree, root, len });
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.value.is_finite() {
                return Err(ForestError::NotFinite { node: i });
            }
            if n.feature != LEAF {
                if n.feature as usize >= self.features {
                    return Err(ForestError::BadFeature { node: i, feature: n.feature, features: self.features });
                }
                // Pre-order: both children come after the node, so every walk ends.
                if i + 1 >= len || n.right as usize <= i + 1 || n.right as usize >= len {
                    return Err(ForestError::BadChild { node: i, right: n.right });
                }
            }
            if n.size as usize > self.subsample {
                return Err(ForestError::NodeSize { node: i, size: n.size, subsample: self.subsample });
            }
        }
        self.validate_shape()
    }

    /// Each tree a tree within the height limit, leaves with consistent path lengths. Walks
    /// every node at most once, so a forged file of shared subtrees cannot make it (or the
    /// scoring plan) blow up.
    fn validate_shape(&self) -> Result<(), ForestError> {
        let limit = height_limit(self.subsample);
        #[expect(clippy::cast_possible_truncation, reason = "path lengths are small")]
        let c_psi = c(self.subsample) as f32;
        let mut seen = vec![false; self.nodes.len()];
        let mut stack = Vec::new();
        for (tree, &root) in self.roots.iter().enumerate() {
            stack.push((root as usize, 0usize));
            while let Some((i, depth)) = stack.pop() {
                if std::mem::replace(&mut seen[i], true) {
                    return Err(ForestError::Shared { node: i });
                }
                if depth > limit {
                    return Err(ForestError::TooDeep { tree, depth, limit, subsample: self.subsample });
                }
                let n = self.nodes[i];
                if n.feature == LEAF {
                    #[expect(clippy::cast_precision_loss, reason = "depth is at most 20")]
                    let (lo, hi) = (depth as f32, depth as f32 + c_psi);
                    // Rounding of depth + c(n) in f32: allow a hair above c(ψ).
                    if !(lo..=hi * (1.0 + 1e-6)).contains(&n.value) {
                        return Err(ForestError::LeafValue { node: i, depth, value: n.value, max: hi });
                    }
                } else {
                    stack.push((i + 1, depth + 1));
                    stack.push((n.right as usize, depth + 1));
                }
            }
        }
        Ok(())
    }

    /// The highest score any row can get: every tree's shortest path taken at once (an upper
    /// bound; no row need reach all of them).
    #[must_use]
    #[expect(clippy::cast_possible_truncation, clippy::cast_precision_loss, reason = "scores are f32")]
    pub fn max_score(&self) -> f32 {
        let mut shortest = vec![f32::INFINITY; self.roots.len()];
        for (tree, &root) in self.roots.iter().enumerate() {
            let mut stack = vec![root as usize];
            while let Some(i) = stack.pop() {
                let n = self.nodes[i];
                if n.feature == LEAF {
                    shortest[tree] = shortest[tree].min(n.value);
                } else {
                    stack.extend([i + 1, n.right as usize]);
                }
            }
        }
        let mean = f64::from(shortest.iter().sum::<f32>()) / self.roots.len() as f64;
        (-mean / c(self.subsample)).exp2() as f32
    }

    /// Number of trees.
    #[must_use]
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Path length of `row` in the tree rooted at `root`; `visit(feature, parent, child)` sees
    /// every split taken.
    #[inline]
    fn walk(&self, root: u32, row: &[f32], mut visit: impl FnMut(u32, &Node, &Node)) -> f32 {
        let mut i = root as usize;
        loop {
            let n = &self.nodes[i];
            if n.feature == LEAF {
                return n.value;
            }
            i = if row[n.feature as usize] < n.value { i + 1 } else { n.right as usize };
            visit(n.feature, n, &self.nodes[i]);
        }
    }

    /// Anomaly scores s ∈ (0, 1) of every row, written to `out`.
    ///
    /// # Panics
    /// If the row width or the output length does not match.
    pub fn score_into(&self, rows: ArrayView2<'_, f32>, out: &mut [f32]) {
        const BLOCK: usize = 128;
        const LANES: usize = 8;
        assert_eq!(rows.ncols(), self.features, "row width does not match the forest");
        assert_eq!(rows.nrows(), out.len());
        let plan = self.plan.get_or_init(|| Plan::new(&self.nodes, &self.roots));
        let rows = rows.as_standard_layout();
        let flat = rows.as_slice().expect("standard layout");
        let width = self.features;
        #[expect(clippy::cast_possible_truncation, clippy::cast_precision_loss, reason = "scores are f32")]
        let norm = (-1.0 / (c(self.subsample) * self.roots.len() as f64)) as f32;
        let mut depth = [0f32; BLOCK];
        for (block, out) in flat.chunks(BLOCK * width).zip(out.chunks_mut(BLOCK)) {
            let n = out.len();
            let depth = &mut depth[..n];
            depth.fill(0.0);
            // One tree at a time for the whole block, one level at a time for every row: the
            // rows' walks are independent, so their loads overlap instead of waiting in turn.
            let (steps, path) = (&plan.steps[..], &plan.path[..]);
            let rows: Vec<&[f32]> = block.chunks_exact(width).collect();
            for &root in &plan.roots {
                // Eight rows walk together, their positions in registers.
                for (group, depth) in rows.chunks(LANES).zip(depth.chunks_mut(LANES)) {
                    let lane = |j: usize| group[j.min(group.len() - 1)];
                    let lanes: [&[f32]; LANES] = std::array::from_fn(lane);
                    let mut pos = [root; LANES];
                    for _ in 0..plan.height {
                        for j in 0..LANES {
                            let step = steps[pos[j] as usize];
                            #[expect(
                                clippy::neg_cmp_op_on_partial_ord,
                                reason = "NaN (leaf, or missing value) must go right"
                            )]
                            let right = !(lanes[j][step.feature as usize] < step.threshold);
                            pos[j] = step.next.wrapping_add(u32::from(right));
                        }
                    }
                    for (d, &p) in depth.iter_mut().zip(pos.iter()) {
                        *d += path[p as usize];
                    }
                }
            }
            for (o, d) in out.iter_mut().zip(depth.iter()) {
                *o = (d * norm).exp2();
            }
        }
    }

    /// Anomaly scores of every row.
    #[must_use]
    pub fn score(&self, rows: ArrayView2<'_, f32>) -> Vec<f32> {
        let mut out = vec![0.0; rows.nrows()];
        self.score_into(rows, &mut out);
        out
    }

    /// How much each feature did to isolate `row`: every split on its path credits its feature
    /// with `log₂((n_parent` + 1) / (`n_child` + 1)), the bits by which it shrank the training rows
    /// still alongside the row. A split that leaves the row alone earns the most; a split that
    /// halves a crowd earns one bit. Normalised to sum to 1.
    #[must_use]
    pub fn attribution(&self, row: ArrayView1<'_, f32>) -> Vec<f32> {
        let row = row.to_vec();
        let mut credit = vec![0f32; self.features];
        for &root in &self.roots {
            #[expect(clippy::cast_precision_loss, reason = "node sizes are at most ψ")]
            self.walk(root, &row, |f, parent, child| {
                credit[f as usize] += ((parent.size as f32 + 1.0) / (child.size as f32 + 1.0)).log2();
            });
        }
        let total: f32 = credit.iter().sum();
        if total > 0.0 {
            for c in &mut credit {
                *c /= total;
            }
        }
        credit
    }
}

/// Grows one (sub)tree over `idx` in pre-order into `nodes`.
fn grow(
    rows: ArrayView2<'_, f32>,
    idx: &mut [usize],
    depth: usize,
    limit: usize,
    rng: &mut StdRng,
    nodes: &mut Vec<Node>,
) {
    #[expect(clippy::cast_possible_truncation, clippy::cast_precision_loss, reason = "depth is small")]
    let leaf = |nodes: &mut Vec<Node>, n: usize| {
        let size = u32::try_from(n).expect("subsample fits in u32");
        nodes.push(Node { feature: LEAF, value: (depth as f64 + c(n)) as f32, right: 0, size });
    };
    if depth >= limit || idx.len() <= 1 {
        return leaf(nodes, idx.len());
    }
    // Pick a random feature that is not constant here (the paper's random split on a
    // constant attribute isolates nothing); a node whose rows are all equal is a leaf.
    let mut candidates: Vec<(usize, f32, f32)> = Vec::new();
    for f in 0..rows.ncols() {
        let (lo, hi) = idx.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &i| {
            let x = rows[[i, f]];
            (lo.min(x), hi.max(x))
        });
        if hi > lo {
            candidates.push((f, lo, hi));
        }
    }
    if candidates.is_empty() {
        return leaf(nodes, idx.len());
    }
    let (feature, lo, hi) = candidates[rng.random_range(0..candidates.len())];
    let mut value = rng.random_range(lo..hi);
    if value <= lo {
        // `x < value` must send at least the minimum left.
        value = lo + (hi - lo) * 0.5;
    }
    let mut split = 0;
    for k in 0..idx.len() {
        if rows[[idx[k], feature]] < value {
            idx.swap(k, split);
            split += 1;
        }
    }
    let at = nodes.len();
    let size = u32::try_from(idx.len()).expect("subsample fits in u32");
    nodes.push(Node { feature: u32::try_from(feature).expect("feature index fits"), value, right: 0, size });
    let (left, right) = idx.split_at_mut(split);
    grow(rows, left, depth + 1, limit, rng, nodes);
    nodes[at].right = u32::try_from(nodes.len()).expect("forest fits in u32 nodes");
    grow(rows, right, depth + 1, limit, rng, nodes);
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    fn cluster(n: usize, seed: u64) -> Array2<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        Array2::from_shape_fn((n, 4), |_| rng.random_range(-1.0..1.0))
    }

    #[test]
    fn c_matches_the_paper() {
        assert!((c(2) - 1.0).abs() < 1e-12);
        // c(256) = 2(ln 255 + γ) − 2·255/256 ≈ 10.2448
        assert!((c(256) - 10.244_8).abs() < 1e-3, "{}", c(256));
    }

    #[test]
    fn outlier_scores_higher_than_inliers() {
        let rows = cluster(1000, 7);
        let forest = IsolationForest::train(rows.view(), ForestParams::default());
        forest.validate().expect("valid");
        assert_eq!(forest.trees(), 100);
        let score = |row: [f32; 4]| forest.score(ndarray::arr2(&[row]).view())[0];
        let inlier = score([0.0, 0.0, 0.0, 0.0]);
        let outlier = score([6.0, 6.0, 6.0, 6.0]);
        let one_dim = score([6.0, 0.0, 0.0, 0.0]);
        assert!(outlier > 0.65 && inlier < 0.5, "outlier {outlier} inlier {inlier}");
        assert!(one_dim > inlier + 0.03, "one-dimensional outlier {one_dim} inlier {inlier}");
        // The feature that makes it an outlier gets the most credit.
        let credit = forest.attribution(ndarray::arr1(&[6.0f32, 0.0, 0.0, 0.0]).view());
        assert!(credit[1..].iter().all(|&c| c < credit[0]), "{credit:?}");
        assert!((credit.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn block_scoring_matches_row_by_row() {
        let rows = cluster(300, 3);
        let forest = IsolationForest::train(rows.view(), ForestParams { trees: 10, subsample: 64, seed: 9 });
        let batch = forest.score(rows.view());
        for (i, s) in batch.iter().enumerate() {
            let one = forest.score(rows.slice(ndarray::s![i..=i, ..]))[0];
            assert!((one - s).abs() < 1e-6);
        }
    }

    #[test]
    fn json_round_trip_and_validation() {
        let rows = cluster(100, 1);
        let forest = IsolationForest::train(rows.view(), ForestParams { trees: 3, subsample: 32, seed: 2 });
        let back: IsolationForest =
            serde_json::from_str(&serde_json::to_string(&forest).expect("json")).expect("parse");
        assert_eq!(back, forest);
        let mut bad = forest.clone();
        bad.nodes[0].right = 0;
        assert!(matches!(bad.validate(), Err(ForestError::BadChild { node: 0, .. })));
        let mut bad = forest;
        bad.features = 1;
        assert!(matches!(bad.validate(), Err(ForestError::BadFeature { .. })));
    }
}
