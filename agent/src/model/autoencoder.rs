//! A small MLP autoencoder trained in Rust: dense layers with `ReLU` between them and a linear
//! output, mean squared reconstruction error, Adam, mini-batches, early stopping on a
//! validation split. The trained weights are exported as a standard ONNX graph
//! ([`super::onnx`]) and scored with tract; the training code never scores live traffic.

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde::{Deserialize, Serialize};

/// Training parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderParams {
    /// Hidden layer widths; default `[64, 32, 16, 32, 64]` (on UNSW-NB15 without the leak
    /// columns 0.920 ROC-AUC, against 0.885 for `[32, 8, 32]`).
    pub hidden: Vec<usize>,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    pub batch: usize,
    pub learning_rate: f32,
    /// Share of the rows held out for early stopping.
    pub validation_share: f64,
    pub seed: u64,
    /// Rows it trains on at most: a larger training set gives it a random sample of this many
    /// (by `seed`). Its few thousand weights learn nothing more from a million rows than from
    /// 200,000, and an epoch costs in proportion to the rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: usize,
}

fn default_max_rows() -> usize {
    200_000
}

impl Default for AutoencoderParams {
    fn default() -> Self {
        Self {
            hidden: vec![64, 32, 16, 32, 64],
            max_epochs: 200,
            patience: 12,
            batch: 128,
            learning_rate: 1e-3,
            validation_share: 0.15,
            seed: 1,
            max_rows: default_max_rows(),
        }
    }
}

/// One dense layer: `y = x·W + b`, W stored `[inputs, outputs]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dense {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

/// A trained autoencoder's weights (`ReLU` after every layer but the last).
#[derive(Clone, Debug, PartialEq)]
pub struct Autoencoder {
    pub layers: Vec<Dense>,
}

/// What training did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_loss: f32,
    pub validation_loss: f32,
    pub train_rows: usize,
    pub validation_rows: usize,
}

/// Adam state for one parameter tensor.
struct Moments<D: ndarray::Dimension> {
    m: ndarray::Array<f32, D>,
    v: ndarray::Array<f32, D>,
}

impl<D: ndarray::Dimension> Moments<D> {
    fn new(shape: D) -> Self {
        Self { m: ndarray::Array::zeros(shape.clone()), v: ndarray::Array::zeros(shape) }
    }

    fn step(&mut self, param: &mut ndarray::Array<f32, D>, grad: &ndarray::Array<f32, D>, lr_t: f32) {
        const B1: f32 = 0.9;
        const B2: f32 = 0.999;
        const EPS: f32 = 1e-8;
        ndarray::Zip::from(param).and(&mut self.m).and(&mut self.v).and(grad).for_each(|p, m, v, &g| {
            *m = B1 * *m + (1.0 - B1) * g;
            *v = B2 * *v + (1.0 - B2) * g * g;
            *p -= lr_t * *m / (v.sqrt() + EPS);
        });
    }
}

impl Autoencoder {
    /// Input (and output) width.
    #[must_use]
    pub fn width(&self) -> usize {
        self.layers.first().map_or(0, |l| l.weight.nrows())
    }

    /// He-initialised weights for `width → hidden… → width`.
    fn init(width: usize, hidden: &[usize], rng: &mut StdRng) -> Self {
        let mut sizes = vec![width];
        sizes.extend_from_slice(hidden);
        sizes.push(width);
        let layers = sizes
            .windows(2)
            .map(|w| {
                #[expect(clippy::cast_precision_loss, reason = "layer widths are small")]
                let bound = (6.0 / w[0] as f32).sqrt();
                Dense {
                    weight: Array2::from_shape_fn((w[0], w[1]), |_| rng.random_range(-bound..bound)),
                    bias: Array1::zeros(w[1]),
                }
            })
            .collect();
        Self { layers }
    }

    /// Reconstructions of `rows` (the reference forward pass; scoring uses tract).
    ///
    /// # Panics
    /// If the autoencoder has no layers.
    #[must_use]
    pub fn forward(&self, rows: ArrayView2<'_, f32>) -> Array2<f32> {
        self.forward_all(rows).pop().expect("at least one layer")
    }

    /// Activations of every layer (outputs after `ReLU`; the last is linear).
    fn forward_all(&self, rows: ArrayView2<'_, f32>) -> Vec<Array2<f32>> {
        let mut acts: Vec<Array2<f32>> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut z = acts.last().map_or(rows, |a| a.view()).dot(&layer.weight) + &layer.bias;
            if i + 1 < self.layers.len() {
                z.mapv_inplace(|x| x.max(0.0));
            }
            acts.push(z);
        }
        acts
    }

    /// Mean squared reconstruction error over all rows and features.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "loss is approximate")]
    pub fn loss(&self, rows: ArrayView2<'_, f32>) -> f32 {
        if rows.is_empty() {
            return 0.0;
        }
        let out = self.forward(rows);
        (&out - &rows).mapv(|d| d * d).sum() / rows.len() as f32
    }

    /// Trains on already scaled rows, holding out `validation_share` for early stopping, and
    /// returns the weights of the epoch with the lowest validation loss.
    ///
    /// # Panics
    /// If fewer than two rows are given.
    #[must_use]
    pub fn train(rows: ArrayView2<'_, f32>, params: &AutoencoderParams) -> (Self, TrainReport) {
        Self::train_with_progress(rows, params, |_, _, _| {})
    }

    /// [`Self::train`], calling `progress(epoch, train_loss, validation_loss)` after each epoch.
    ///
    /// # Panics
    /// If fewer than two rows are given.
    #[must_use]
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "row counts"
    )]
    pub fn train_with_progress(
        rows: ArrayView2<'_, f32>,
        params: &AutoencoderParams,
        mut progress: impl FnMut(usize, f32, f32),
    ) -> (Self, TrainReport) {
        assert!(rows.nrows() >= 2, "an autoencoder needs at least two rows");
        let mut rng = StdRng::seed_from_u64(params.seed);
        let mut order: Vec<usize> = (0..rows.nrows()).collect();
        order.shuffle(&mut rng);
        let n_val = ((rows.nrows() as f64 * params.validation_share).round() as usize).clamp(1, rows.nrows() - 1);
        let validation = rows.select(Axis(0), &order[..n_val]);
        let train = rows.select(Axis(0), &order[n_val..]);
        // The epochs' shuffles permute these positions, and a batch gathers its rows: the same
        // batches as shuffling the rows themselves, without moving 200,000 rows an epoch.
        let mut positions: Vec<usize> = (0..train.nrows()).collect();

        let mut model = Self::init(rows.ncols(), &params.hidden, &mut rng);
        let mut moments: Vec<(Moments<ndarray::Ix2>, Moments<ndarray::Ix1>)> =
            model.layers.iter().map(|l| (Moments::new(l.weight.raw_dim()), Moments::new(l.bias.raw_dim()))).collect();
        let mut best = (f32::INFINITY, model.clone(), 0usize, 0f32);
        let mut t = 0i32;
        let mut epochs = 0;
        let batch = params.batch.max(1);
        for epoch in 1..=params.max_epochs {
            epochs = epoch;
            shuffle(&mut positions, &mut rng);
            let mut epoch_loss = 0f64;
            let mut x = Array2::zeros((batch.min(train.nrows()), train.ncols()));
            for taken in positions.chunks(batch) {
                if taken.len() != x.nrows() {
                    x = Array2::zeros((taken.len(), train.ncols()));
                }
                for (mut to, &from) in x.rows_mut().into_iter().zip(taken) {
                    to.assign(&train.row(from));
                }
                t += 1;
                epoch_loss += f64::from(model.step(x.view(), &mut moments, params.learning_rate, t)) * x.nrows() as f64;
            }
            let train_loss = (epoch_loss / train.nrows() as f64) as f32;
            let val_loss = model.loss(validation.view());
            progress(epoch, train_loss, val_loss);
            if val_loss < best.0 {
                best = (val_loss, model.clone(), epoch, train_loss);
            } else if epoch - best.2 >= params.patience {
                break;
            }
        }
        let (validation_loss, model, best_epoch, train_loss) = best;
        let report = TrainReport {
            epochs,
            best_epoch,
            train_loss,
            validation_loss,
            train_rows: train.nrows(),
            validation_rows: validation.nrows(),
        };
        (model, report)
    }

    /// One Adam step on a mini-batch; returns the batch loss before the step.
    #[expect(clippy::cast_precision_loss, reason = "batch sizes are small")]
    fn step(
        &mut self,
        x: ArrayView2<'_, f32>,
        moments: &mut [(Moments<ndarray::Ix2>, Moments<ndarray::Ix1>)],
        lr: f32,
        t: i32,
    ) -> f32 {
        let acts = self.forward_all(x);
        let out = acts.last().expect("layers");
        let diff = out - &x;
        let loss = diff.mapv(|d| d * d).sum() / diff.len() as f32;
        // d(mean squared error)/d(output)
        let mut grad = diff * (2.0 / x.len() as f32);
        let lr_t = lr * (1.0 - 0.999f32.powi(t)).sqrt() / (1.0 - 0.9f32.powi(t));
        for i in (0..self.layers.len()).rev() {
            let input = if i == 0 { x } else { acts[i - 1].view() };
            let grad_w = input.t().dot(&grad);
            let grad_b = grad.sum_axis(Axis(0));
            if i > 0 {
                let mut back = grad.dot(&self.layers[i].weight.t());
                ndarray::Zip::from(&mut back).and(&acts[i - 1]).for_each(|g, &a| {
                    if a <= 0.0 {
                        *g = 0.0;
                    }
                });
                grad = back;
            }
            let (mw, mb) = &mut moments[i];
            mw.step(&mut self.layers[i].weight, &grad_w, lr_t);
            mb.step(&mut self.layers[i].bias, &grad_b, lr_t);
        }
        loss
    }
}

/// Fisher–Yates, drawing as the trained models always have (one draw in `0..=i` for each
/// `i` from the last down to 1), so that a seed keeps giving the same weights.
fn shuffle(positions: &mut [usize], rng: &mut StdRng) {
    for i in (1..positions.len()).rev() {
        let j = rng.random_range(0..=i);
        positions.swap(i, j);
    }
}

/// Per-row mean squared error between rows and their reconstructions.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "feature counts are small")]
pub fn row_errors(rows: ArrayView2<'_, f32>, recon: ArrayView2<'_, f32>) -> Vec<f32> {
    let width = rows.ncols().max(1) as f32;
    rows.outer_iter()
        .zip(recon.outer_iter())
        .map(|(x, y)| x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / width)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows on a 2-D plane embedded in 6-D: an autoencoder with a 2-wide bottleneck can
    /// reconstruct them, and a point off the plane reconstructs badly.
    fn plane(n: usize) -> Array2<f32> {
        let mut rng = StdRng::seed_from_u64(5);
        Array2::from_shape_fn((n, 2), |_| rng.random_range(-1.0f32..1.0))
            .dot(&ndarray::arr2(&[[1.0, 0.5, -0.3, 0.0, 0.8, 0.2], [0.0, 0.7, 0.4, -0.6, 0.1, 0.9]]))
    }

    #[test]
    fn learns_a_plane_and_flags_points_off_it() {
        let rows = plane(2000);
        let params = AutoencoderParams { hidden: vec![16, 4, 16], max_epochs: 150, ..AutoencoderParams::default() };
        let before = Autoencoder::init(6, &params.hidden, &mut StdRng::seed_from_u64(1)).loss(rows.view());
        let (ae, report) = Autoencoder::train(rows.view(), &params);
        assert!(report.validation_loss < before / 20.0, "{report:?} before {before}");
        assert_eq!(ae.width(), 6);
        let off = ndarray::arr2(&[[2.0f32, -2.0, 2.0, 2.0, -2.0, 2.0]]);
        let on = rows.slice(ndarray::s![0..1, ..]);
        let err_off = row_errors(off.view(), ae.forward(off.view()).view())[0];
        let err_on = row_errors(on, ae.forward(on).view())[0];
        assert!(err_off > 20.0 * err_on, "off {err_off} on {err_on}");
    }

    #[test]
    fn early_stopping_keeps_the_best_epoch() {
        let rows = plane(300);
        let params = AutoencoderParams { max_epochs: 400, patience: 3, ..AutoencoderParams::default() };
        let (_, report) = Autoencoder::train(rows.view(), &params);
        assert!(report.best_epoch <= report.epochs);
        assert!(report.epochs < 400 || report.best_epoch > 390, "{report:?}");
    }
}
