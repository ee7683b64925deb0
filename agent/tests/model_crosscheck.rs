//! The models against independent references: Vigil's isolation forest against scikit-learn's
//! on the same UNSW-NB15 data, and the autoencoder files against onnxruntime (the exported file
//! is standard ONNX and gives tract's numbers; a PyTorch-style file loads and agrees too).
//!
//! Needs python3 with scikit-learn, onnxruntime and onnx (`cargo xtask setup` installs them);
//! without them these tests fail with that message rather than skip.

#![expect(clippy::cast_precision_loss, reason = "synthetic test values")]

mod common;

use common::{
    TempDir, arg,
    reference::{python, read_f32, unsw_prepared, write_f32},
};
use ndarray::{Array2, Axis};
use vigil::{
    eval::metrics::curves,
    features::Schema,
    model::{
        autoencoder::{Autoencoder, AutoencoderParams},
        iforest::{ForestParams, IsolationForest},
        onnx::{OnnxScorer, export},
    },
};

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
    let out = python(&["iforest", arg(&tr), &rows, &cols, arg(&te), &test_rows, arg(&lb)]);
    let sklearn: f64 = out.trim().parse().expect("a ROC-AUC");
    eprintln!("isolation forest ROC-AUC on UNSW-NB15 (no TTL columns): vigil {ours:.4}, scikit-learn {sklearn:.4}");
    assert!(ours > 0.6 && sklearn > 0.6, "both forests must detect something: vigil {ours}, scikit-learn {sklearn}");
    assert!((ours - sklearn).abs() <= 0.02, "vigil {ours:.4} vs scikit-learn {sklearn:.4}");
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
    let _ =
        python(&["onnx", arg(&model), arg(&inp), &input.nrows().to_string(), &input.ncols().to_string(), arg(&out)]);
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
    let _ = python(&["foreign", arg(&model), &width.to_string()]);
    let bytes = std::fs::read(&model).expect("model");
    assert!(OnnxScorer::load(&bytes, width + 1).is_err(), "a width mismatch is refused");
    let tract = OnnxScorer::load(&bytes, width).expect("tract loads a PyTorch-style graph");
    let input = Array2::from_shape_fn((257, width), |(i, j)| ((i * 31 + j * 17) % 23) as f32 / 7.0 - 1.5);
    let ours = tract.reconstruct(input.view()).expect("runs");
    let (inp, out) = (dir.path().join("in.f32"), dir.path().join("out.f32"));
    write_f32(&inp, input.view());
    let _ = python(&["onnx", arg(&model), arg(&inp), "257", &width.to_string(), arg(&out)]);
    let worst = (&ours - &read_f32(&out, 257, width)).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
    assert!(worst < 1e-4, "tract and onnxruntime differ by {worst}");

    // It can stand in for the trained autoencoder in a bundle.
    let rows = Array2::from_shape_fn((300, width), |(i, j)| ((i * 7 + j * 3) % 11) as f32);
    let config = vigil::model::TrainConfig { external_autoencoder: Some(bytes), ..Default::default() };
    let trained =
        vigil::model::train(&Schema::flow(), rows.view(), &config, serde_json::json!({}), |_| {}).expect("trains");
    assert!(trained.autoencoder.is_none());
    let detector = trained.bundle.detector(&Schema::flow()).expect("bundle with a foreign autoencoder loads");
    assert!(detector.score(rows.view()).expect("scores").iter().all(|s| s.combined.is_finite()));
}
