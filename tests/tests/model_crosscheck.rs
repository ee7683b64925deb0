//! The models against independent references: Vigil's isolation forest against scikit-learn's
//! on the same UNSW-NB15 data, and the autoencoder files against onnxruntime (the exported file
//! is standard ONNX and gives tract's numbers; a PyTorch-style file loads and agrees too).
//!
//! Needs python3 with scikit-learn, onnxruntime and onnx (`cargo xtask setup` installs them);
//! without them these tests fail with that message rather than skip.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use ndarray::{Array2, ArrayView2, Axis};
use vigil::{
    eval::{metrics::curves, split, unsw::{UnswData, UnswSchema}},
    features::Schema,
    model::{
        autoencoder::{Autoencoder, AutoencoderParams},
        detector::Scaler,
        iforest::{ForestParams, IsolationForest},
        onnx::{OnnxScorer, export},
    },
};
use vigil_tests::agent::TempDir;

const UNSW: &str = "../../shared/data/flows/unsw-nb15/UNSW_NB15_training-set.csv.zip";

fn unsw_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(UNSW);
    assert!(p.is_file(), "{} is missing: the shared data must sit beside the repository", p.display());
    p
}

fn python(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/crosscheck.py");
    let out = Command::new("python3").arg(script).args(args).output().expect("python3 runs (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "reference script failed (python3 with scikit-learn, onnxruntime and onnx is needed; `cargo xtask setup` installs them):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn write_f32(path: &Path, rows: ArrayView2<'_, f32>) {
    let bytes: Vec<u8> = rows.as_standard_layout().iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write matrix");
}

fn read_f32(path: &Path, rows: usize, cols: usize) -> Array2<f32> {
    let bytes = std::fs::read(path).expect("read matrix");
    let v: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    Array2::from_shape_vec((rows, cols), v).expect("shape")
}

/// UNSW-NB15 without the leak columns, prepared as the detector prepares rows: train on half
/// the normal rows, test on the rest and on the attacks (as `vigil eval unsw`).
fn unsw_prepared() -> (Array2<f32>, Array2<f32>, Vec<bool>) {
    let data = UnswData::read(&unsw_path()).expect("UNSW-NB15 reads");
    let normal: Vec<usize> = (0..data.len()).filter(|&i| !data.attack[i]).collect();
    let (train_idx, mut test_idx) = split(&normal, 0.5, 1);
    test_idx.extend((0..data.len()).filter(|&i| data.attack[i]));
    let schema = UnswSchema::fit(&data, &train_idx, false);
    let prepare = |rows: &mut Array2<f32>, s: &Schema| {
        for mut r in rows.outer_iter_mut() {
            s.transform(r.as_slice_mut().expect("contiguous"));
        }
    };
    let mut train = schema.rows(&data, &train_idx);
    let mut test = schema.rows(&data, &test_idx);
    prepare(&mut train, &schema.schema);
    prepare(&mut test, &schema.schema);
    let scaler = Scaler::fit(train.view());
    scaler.apply(&mut train);
    scaler.apply(&mut test);
    let labels = test_idx.iter().map(|&i| data.attack[i]).collect();
    (train, test, labels)
}

#[test]
fn isolation_forest_roc_auc_matches_scikit_learn_within_0_02() {
    let (train, test, labels) = unsw_prepared();
    let forest = IsolationForest::train(train.view(), ForestParams::default());
    let ours = curves(&forest.score(test.view()), &labels).expect("both classes").roc_auc;

    let dir = TempDir::new("crosscheck-iforest");
    let (tr, te, lb) = (dir.path().join("train.f32"), dir.path().join("test.f32"), dir.path().join("labels.u8"));
    write_f32(&tr, train.view());
    write_f32(&te, test.view());
    std::fs::write(&lb, labels.iter().map(|&l| u8::from(l)).collect::<Vec<u8>>()).expect("labels");
    let (rows, cols, test_rows) = (train.nrows().to_string(), train.ncols().to_string(), test.nrows().to_string());
    let out = python(&["iforest", path(&tr), &rows, &cols, path(&te), &test_rows, path(&lb)]);
    let sklearn: f64 = out.trim().parse().expect("a ROC-AUC");
    eprintln!("isolation forest ROC-AUC on UNSW-NB15 (no TTL columns): vigil {ours:.4}, scikit-learn {sklearn:.4}");
    assert!(ours > 0.6 && sklearn > 0.6, "both forests must detect something: vigil {ours}, scikit-learn {sklearn}");
    assert!((ours - sklearn).abs() <= 0.02, "vigil {ours:.4} vs scikit-learn {sklearn:.4}");
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn exported_autoencoder_is_standard_onnx_and_onnxruntime_agrees_with_tract() {
    let (train, test, _) = unsw_prepared();
    let sample = train.slice(ndarray::s![..4000, ..]);
    let params = AutoencoderParams { max_epochs: 15, ..AutoencoderParams::default() };
    let (ae, _) = Autoencoder::train(sample, &params);
    let bytes = export(&ae, "crosscheck");
    let tract = OnnxScorer::load(&bytes, train.ncols()).expect("tract loads the export");
    let input = test.select(Axis(0), &(0..test.nrows()).step_by(20).collect::<Vec<_>>());
    let ours = tract.reconstruct(input.view()).expect("tract runs");

    let dir = TempDir::new("crosscheck-onnx");
    let (model, inp, out) = (dir.path().join("ae.onnx"), dir.path().join("in.f32"), dir.path().join("out.f32"));
    std::fs::write(&model, &bytes).expect("model");
    write_f32(&inp, input.view());
    python(&["onnx", path(&model), path(&inp), &input.nrows().to_string(), &input.ncols().to_string(), path(&out)]);
    let reference = read_f32(&out, input.nrows(), input.ncols());
    let worst = (&ours - &reference).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
    eprintln!("{} rows × {} features: largest |tract − onnxruntime| = {worst:e}", input.nrows(), input.ncols());
    assert!(worst < 1e-4, "tract and onnxruntime differ by {worst}");
    // And the reference forward pass in Rust agrees with both.
    let direct = ae.forward(input.view());
    assert!((&direct - &reference).mapv(f32::abs).fold(0f32, |a, &b| a.max(b)) < 1e-4);
}

#[test]
fn pytorch_style_autoencoder_loads_and_agrees_with_onnxruntime() {
    let width = Schema::flow().len();
    let dir = TempDir::new("crosscheck-foreign");
    let model = dir.path().join("torch.onnx");
    python(&["foreign", path(&model), &width.to_string()]);
    let bytes = std::fs::read(&model).expect("model");
    assert!(OnnxScorer::load(&bytes, width + 1).is_err(), "a width mismatch is refused");
    let tract = OnnxScorer::load(&bytes, width).expect("tract loads a PyTorch-style graph");
    let input = Array2::from_shape_fn((257, width), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 7.0 - 1.5);
    let ours = tract.reconstruct(input.view()).expect("runs");
    let (inp, out) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    write_f32(&inp, input.view());
    python(&["onnx", path(&model), path(&inp), "257", &width.to_string(), path(&out)]);
    let worst = (&ours - &read_f32(&out, 257, width)).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
    assert!(worst < 1e-4, "tract and onnxruntime differ by {worst}");

    // It can stand in for the trained autoencoder in a bundle.
    let rows = Array2::from_shape_fn((300, width), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
    let config = vigil::model::TrainConfig { external_autoencoder: Some(bytes), ..Default::default() };
    let trained = vigil::model::train(&Schema::flow(), rows.view(), &config, serde_json::json!({}), |_| {}).expect("trains");
    assert!(trained.autoencoder.is_none());
    let detector = trained.bundle.detector(&Schema::flow()).expect("bundle with a foreign autoencoder loads");
    assert!(detector.score(rows.view()).expect("scores").iter().all(|s| s.combined.is_finite()));
}
