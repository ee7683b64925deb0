//! The models' independent references: UNSW-NB15 prepared as the detector prepares it, and the
//! Python script `tests/python/crosscheck.py` (scikit-learn, onnxruntime, onnx, skl2onnx; `cargo xtask
//! setup` installs them). Needs the `offline` feature (`vigil::eval`). The privileged
//! test-support crate includes this file by path too (`tests/src/data.rs`, for the scoring
//! benchmark), so the preparation both compare against is one piece of code.

#![expect(
    clippy::needless_pass_by_value,
    reason = "ndarray views are cheap handles, passed by value as ndarray's own API does"
)]

use std::{path::Path, process::Command};

use ndarray::{Array2, ArrayView2};
use vigil::{
    eval::{
        split,
        unsw::{UnswData, UnswSchema},
    },
    model::detector::Scaler,
};

use super::{TempDir, arg, shared, workspace};

/// UNSW-NB15 without the leak columns, prepared as the detector prepares rows (schema
/// transform, then scaling fitted on the training rows): train on half the normal rows, test
/// on the rest and on every attack, as `vigil eval unsw` does. Returns (train, test, labels).
///
/// # Panics
/// If the dataset is missing or unreadable.
#[must_use]
pub fn unsw_prepared() -> (Array2<f32>, Array2<f32>, Vec<bool>) {
    let data = UnswData::read(&shared("flows/unsw-nb15/UNSW_NB15_training-set.csv.zip")).expect("UNSW-NB15 reads");
    let normal: Vec<usize> = (0..data.len()).filter(|&i| !data.attack[i]).collect();
    let (train_idx, mut test_idx) = split(&normal, 0.5, 1);
    test_idx.extend((0..data.len()).filter(|&i| data.attack[i]));
    let schema = UnswSchema::fit(&data, &train_idx, false);
    let mut train = schema.rows(&data, &train_idx);
    let mut test = schema.rows(&data, &test_idx);
    schema.schema.transform(&mut train);
    schema.schema.transform(&mut test);
    let scaler = Scaler::fit(train.view());
    scaler.apply(&mut train);
    scaler.apply(&mut test);
    let labels = test_idx.iter().map(|&i| data.attack[i]).collect();
    (train, test, labels)
}

/// Runs `tests/python/crosscheck.py ARGS` with `python3`, single-threaded, and returns its
/// standard output.
///
/// # Panics
/// If Python or its packages are missing, or the script fails: the message says how to fix it.
#[must_use]
pub fn python(args: &[&str]) -> String {
    run_reference(Command::new("python3"), args)
}

/// As [`python`], pinned to CPU 0 (benchmarks compare one core with one core).
///
/// # Panics
/// As [`python`], or if `taskset` is missing.
#[must_use]
pub fn python_on_cpu0(args: &[&str]) -> String {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", "python3"]);
    run_reference(cmd, args)
}

/// Runs the reference script with `python3` started by `cmd`, single-threaded.
fn run_reference(mut cmd: Command, args: &[&str]) -> String {
    let script = workspace().join("tests/python/crosscheck.py");
    let out = cmd
        .arg(script)
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .env("OPENBLAS_NUM_THREADS", "1")
        .output()
        .expect("python3 runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "reference script failed (python3 with scikit-learn, onnxruntime, onnx and skl2onnx is needed; `cargo xtask setup` installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Writes a matrix as raw little-endian f32.
///
/// # Panics
/// If the file cannot be written.
pub fn write_f32(path: &Path, rows: ArrayView2<'_, f32>) {
    let bytes: Vec<u8> = rows.as_standard_layout().iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write matrix");
}

/// Reads a raw little-endian f32 matrix.
///
/// # Panics
/// If the file is unreadable or of another size.
#[must_use]
pub fn read_f32(path: &Path, rows: usize, cols: usize) -> Array2<f32> {
    let bytes = std::fs::read(path).expect("read matrix");
    let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Array2::from_shape_vec((rows, cols), v).expect("shape")
}

/// A labelled dataset split at random, two thirds to train (seed 3): the rows the forest
/// cross-check and the classifier benchmark give to Vigil and to scikit-learn alike.
pub struct ForestSplit {
    pub train: Array2<f32>,
    pub test: Array2<f32>,
    pub y_train: Vec<u16>,
    pub y_test: Vec<u16>,
    pub classes: usize,
}

/// Splits `data` as [`ForestSplit`] says.
#[must_use]
pub fn forest_split(data: &vigil::eval::supervised::Labelled) -> ForestSplit {
    let all: Vec<usize> = (0..data.y.len()).collect();
    let (train_idx, test_idx) = split(&all, 2.0 / 3.0, 3);
    ForestSplit {
        train: data.x.select(ndarray::Axis(0), &train_idx),
        test: data.x.select(ndarray::Axis(0), &test_idx),
        y_train: train_idx.iter().map(|&i| data.y[i]).collect(),
        y_test: test_idx.iter().map(|&i| data.y[i]).collect(),
        classes: data.classes.len(),
    }
}

/// scikit-learn's `RandomForestClassifier` of `trees` trees of depth `depth` (leaves of 2,
/// √features) on `split`: its attack-vs-benign ROC-AUC, its one-vs-rest macro ROC-AUC and its
/// `predict_proba` rows per second (one job; pinned to CPU 0 with `on_cpu0`).
///
/// # Panics
/// As [`python`], or if the script's answer is not three numbers.
#[must_use]
pub fn sklearn_forest(split: &ForestSplit, trees: usize, depth: usize, on_cpu0: bool) -> (f64, f64, f64) {
    sklearn_classifier("forest", split, [trees, depth], on_cpu0)
}

/// scikit-learn's `HistGradientBoostingClassifier` of `iterations` iterations (its defaults
/// otherwise: learning rate 0.1, 31 leaves, leaves of 20, 255 bins, no early stopping) on
/// `split`: as [`sklearn_forest`] answers.
///
/// # Panics
/// As [`python`], or if the script's answer is not three numbers.
#[must_use]
pub fn sklearn_boosted(split: &ForestSplit, iterations: usize, on_cpu0: bool) -> (f64, f64, f64) {
    sklearn_classifier("boosted", split, [iterations, 0], on_cpu0)
}

/// Runs the reference script's `command` (`forest` or `boosted`) on `split` with two sizes.
fn sklearn_classifier(command: &str, split: &ForestSplit, sizes: [usize; 2], on_cpu0: bool) -> (f64, f64, f64) {
    let dir = TempDir::new("sklearn-classifier");
    let path = |f: &str| dir.path().join(f);
    write_f32(&path("train.f32"), split.train.view());
    write_f32(&path("test.f32"), split.test.view());
    let u16s = |v: &[u16]| v.iter().flat_map(|c| c.to_le_bytes()).collect::<Vec<u8>>();
    std::fs::write(path("train.u16"), u16s(&split.y_train)).expect("labels");
    std::fs::write(path("test.u16"), u16s(&split.y_test)).expect("labels");
    let (train, test) = (path("train.f32"), path("test.f32"));
    let (train_y, test_y) = (path("train.u16"), path("test.u16"));
    let numbers = [
        split.train.nrows().to_string(),
        split.train.ncols().to_string(),
        split.test.nrows().to_string(),
        split.classes.to_string(),
        sizes[0].to_string(),
        sizes[1].to_string(),
    ];
    let args = [
        command,
        arg(&train),
        &numbers[0],
        &numbers[1],
        arg(&train_y),
        arg(&test),
        &numbers[2],
        arg(&test_y),
        &numbers[3],
        &numbers[4],
        &numbers[5],
    ];
    let out = if on_cpu0 { python_on_cpu0(&args) } else { python(&args) };
    let v: Vec<f64> = out.split_whitespace().map(|x| x.parse().expect("a number")).collect();
    assert_eq!(v.len(), 3, "the {command} reference answers three numbers: {out}");
    (v[0], v[1], v[2])
}
