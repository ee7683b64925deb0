//! Every way a bad bundle is refused, each with the message it gets: values out of range,
//! forests of a shape training never makes, a copying autoencoder, oversized files, files
//! other users can write, and missing or wrong signatures.

use std::{path::Path, sync::OnceLock};

use ndarray::{Array1, Array2};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::{
    Bundle, TrainConfig, Trust,
    autoencoder::{Autoencoder, AutoencoderParams, Dense},
    bundle::{AUTOENCODER, IFOREST, MANIFEST, Manifest},
    files::{
        Access,
        tests::{TempDir, chmod},
    },
    iforest::{ForestParams, IsolationForest, LEAF, MAX_TREES, Node},
    onnx,
    sign::{Provenance, SIGNATURE, SecretKey},
    train,
};
use crate::features::Schema;

/// A small trained bundle (10 trees, a few epochs), trained once.
fn small() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let schema = Schema::flow();
        let mut rng = StdRng::seed_from_u64(12);
        let rows = Array2::from_shape_fn((200, schema.len()), |_| rng.random_range(0.0f32..5.0));
        let config = TrainConfig {
            forest: ForestParams { trees: 10, subsample: 64, seed: 1 },
            autoencoder: AutoencoderParams { hidden: vec![8, 4, 8], max_epochs: 5, ..AutoencoderParams::default() },
            ..TrainConfig::default()
        };
        train(&schema, rows.view(), &config, serde_json::json!({"test": true}), |_| {}).expect("trains").bundle
    })
}

fn forest() -> IsolationForest {
    serde_json::from_slice(&small().iforest).expect("forest")
}

/// The small bundle with its manifest edited, as written to a file: why it is refused.
fn refused(edit: impl FnOnce(&mut Manifest)) -> String {
    let b = small();
    let mut m = b.manifest.clone();
    edit(&mut m);
    let bundle =
        Bundle::from_bytes(&serde_json::to_vec(&m).expect("json"), b.iforest.clone(), b.autoencoder.clone(), None)
            .expect("parses and its checksums hold");
    bundle.detector(&Schema::flow()).expect_err("refused").to_string()
}

/// The small bundle with its manifest text edited (for numbers JSON cannot carry as f32).
fn refused_text(from: &str, to: &str) -> String {
    let b = small();
    let text = serde_json::to_string_pretty(&b.manifest).expect("json");
    assert!(text.contains(from), "{from} in the manifest");
    let bundle =
        Bundle::from_bytes(text.replacen(from, to, 1).as_bytes(), b.iforest.clone(), b.autoencoder.clone(), None)
            .expect("parses");
    bundle.detector(&Schema::flow()).expect_err("refused").to_string()
}

/// The small bundle with other model files (checksums refreshed): why it is refused.
fn refused_with(forest: &IsolationForest, autoencoder: Vec<u8>) -> String {
    let bundle = Bundle::new(small().manifest.clone(), forest, autoencoder);
    bundle.detector(&Schema::flow()).expect_err("refused").to_string()
}

fn refused_forest(edit: impl FnOnce(&mut IsolationForest)) -> String {
    let mut f = forest();
    edit(&mut f);
    refused_with(&f, small().autoencoder.clone())
}

#[test]
fn a_trained_bundle_passes_every_check() {
    small().detector(&Schema::flow()).expect("a freshly trained bundle loads");
    Bundle::embedded().expect("built in").detector(&Schema::flow()).expect("the shipped bundle loads");
}

#[test]
fn thresholds_out_of_the_score_range_are_refused() {
    let e = refused(|m| m.thresholds.alert = 1e30);
    assert!(e.starts_with("thresholds.alert is 1e30; it must be a finite number in [0, "), "{e}");
    assert!(e.contains("above the upper bound no flow can score"), "{e}");
    // 1e39 does not fit an f32: it reads as infinity.
    let alert = small().manifest.thresholds.alert;
    let e = refused_text(&format!("\"alert\": {alert}"), "\"alert\": 1e39");
    assert!(e.starts_with("thresholds.alert is inf; it must be"), "{e}");
    let e = refused(|m| m.thresholds.alert = -1.0);
    assert!(e.starts_with("thresholds.alert is -1; it must be a finite number in [0, "), "{e}");
    // Within f32 but above what the models can give a flow: the forest's highest possible
    // score, a reconstruction error of 10⁶ and the range's bound (256) all stay below it.
    let e = refused(|m| m.thresholds.alert = 300.0);
    assert!(e.starts_with("thresholds.alert is 300;"), "{e}");
    let e = refused(|m| m.thresholds.block = m.thresholds.alert - 1.0);
    assert!(e.starts_with("thresholds.block is ") && e.contains("at or above the alert threshold"), "{e}");
    let e = refused(|m| m.thresholds.target_fpr = 0.7);
    assert_eq!(e, "thresholds.target_fpr is 0.7; it must be in (0, 0.5)");

    // NaN cannot be written in JSON; a detector built in memory is checked the same way.
    let mut d = small().detector(&Schema::flow()).expect("loads");
    d.thresholds.alert = f32::NAN;
    assert!(d.check().expect_err("NaN").to_string().starts_with("thresholds.alert is NaN"));
}

#[test]
fn scaler_baseline_and_combine_values_out_of_range_are_refused() {
    let e = refused(|m| m.scaler.std[3] = 0.0);
    assert!(e.starts_with("scaler.std[3] (resp_packets) is 0; it must be a finite number in [0.000001, 256]"), "{e}");
    let e = refused(|m| m.scaler.std[0] = -2.0);
    assert!(e.starts_with("scaler.std[0] (duration_s) is -2;"), "{e}");
    // A huge spread squeezes every flow onto the training mean: the models would see no flow.
    let e = refused(|m| m.scaler.std[6] = 1e9);
    assert!(e.starts_with("scaler.std[6] (orig_len_mean) is 1e9;"), "{e}");
    let e = refused(|m| m.scaler.mean[1] = -1e7);
    assert!(e.starts_with("scaler.mean[1] (orig_packets) is -1e7; it must be a finite number in [-256, 256]"), "{e}");
    let e = refused(|m| m.combine.iforest.spread = -0.1);
    assert!(e.starts_with("combine.iforest.spread is -0.1;"), "{e}");
    let e = refused(|m| m.combine.iforest.median = 5.0);
    assert!(e.starts_with("combine.iforest.median is 5; it must be a finite number in [0, 1]"), "{e}");
    let e = refused(|m| m.combine.autoencoder.spread = 1e9);
    assert!(e.starts_with("combine.autoencoder.spread is 1e9;"), "{e}");
    let e = refused(|m| m.combine.autoencoder.median = -50.0);
    assert!(e.starts_with("combine.autoencoder.median is -50;"), "{e}");

    let mut d = small().detector(&Schema::flow()).expect("loads");
    d.baseline[2] = f32::INFINITY;
    assert!(d.check().expect_err("inf").to_string().starts_with("baseline[2] (orig_bytes) is inf"));
    let mut d = small().detector(&Schema::flow()).expect("loads");
    d.scaler.mean[4] = f32::NAN;
    assert!(d.check().expect_err("NaN").to_string().starts_with("scaler.mean[4] (resp_bytes) is NaN"));
}

/// An autoencoder that copies its input: relu(x) − relu(−x) = x.
fn identity(width: usize) -> Autoencoder {
    let eye = Array2::<f32>::eye(width);
    let up = ndarray::concatenate![ndarray::Axis(1), eye, -&eye];
    let down = ndarray::concatenate![ndarray::Axis(0), eye, -&eye];
    Autoencoder {
        layers: vec![
            Dense { weight: up, bias: Array1::zeros(2 * width) },
            Dense { weight: down, bias: Array1::zeros(width) },
        ],
    }
}

#[test]
fn an_identity_autoencoder_is_refused() {
    let width = Schema::flow().len();
    let copy = identity(width);
    let rows = Array2::from_shape_fn((3, width), |(i, j)| f32::from(u8::try_from(i * 7 + j).expect("small")) - 20.0);
    assert_eq!(copy.forward(rows.view()), rows, "the test's autoencoder does copy its input");
    let e = refused_with(&forest(), onnx::export(&copy, "identity"));
    assert!(
        e.starts_with("the autoencoder reconstructs off-baseline probe rows almost perfectly (relative error 0.00e0"),
        "{e}"
    );

    // One that reconstructs badly but is calibrated so that even the probes look normal.
    let e = refused(|m| m.combine.autoencoder.median = 30.0);
    assert!(e.starts_with("the autoencoder's calibrated score of off-baseline probe rows is -"), "{e}");

    // One whose output is not a number (NaN errors would drop out of the score's maximum).
    let mut nan = identity(width);
    nan.layers[1].bias[0] = f32::NAN;
    let e = refused_with(&forest(), onnx::export(&nan, "nan"));
    assert!(e.contains("as non-finite numbers"), "{e}");

    // A model of another width.
    let narrow = identity(5);
    let e = refused_with(&forest(), onnx::export(&narrow, "narrow"));
    let expected = format!("autoencoder.onnx: the model's input is 5 features wide, the schema has {width}");
    assert!(e.starts_with(&expected), "{e}");
}

#[test]
fn a_range_that_does_not_fit_the_schema_or_itself_is_refused() {
    let e = refused(|m| m.range.features[0] = "bogus".into());
    assert!(e.contains("range.features is `bogus`; it must be a feature of the schema"), "{e}");
    let e = refused(|m| {
        m.range.max.pop();
    });
    assert!(e.contains("one maximum per feature"), "{e}");
    let e = refused(|m| m.range.max[0] = -1.0);
    assert!(e.starts_with("range.max[0] (src_protocols) is -1;"), "{e}");
    let e = refused(|m| m.range.max[1] = 1e6);
    assert!(e.starts_with("range.max[1] (svc_flows) is 1e6;"), "{e}");
    let e = refused(|m| m.range.unit = 0.0);
    assert!(e.starts_with("range.unit is 0;"), "{e}");
}

#[test]
fn forests_training_never_makes_are_refused() {
    let e = refused_forest(|f| f.roots = vec![0; MAX_TREES + 1]);
    assert_eq!(e, "iforest.json: the number of trees is 10001, must be in 1..=10000");
    let e = refused_forest(|f| f.subsample = 1);
    assert_eq!(e, "iforest.json: the subsample ψ is 1, must be in 2..=1000000");
    let e = refused_forest(|f| f.subsample = 5_000_000);
    assert!(e.starts_with("iforest.json: the subsample ψ is 5000000"), "{e}");
    // Two trees sharing one subtree: a forged file of shared nodes could blow up the plan.
    let e = refused_forest(|f| f.roots[1] = f.roots[0]);
    assert!(
        e.starts_with("iforest.json: node ") && e.ends_with("is reached twice (trees must not share nodes)"),
        "{e}"
    );
    let e = refused_forest(|f| {
        let leaf = f.nodes.iter().position(|n| n.feature == LEAF).expect("a leaf");
        f.nodes[leaf].value = 1e6;
    });
    assert!(e.contains("has path length 1000000, outside"), "{e}");
    let e = refused_forest(|f| f.nodes[0].size = 10_000);
    assert!(e.contains("claims 10000 training rows, more than ψ = 64"), "{e}");
    // A chain deeper than ⌈log₂ 64⌉ = 6: every row would walk it.
    let e = refused_forest(|f| {
        let mut nodes = Vec::new();
        for d in 0..7u8 {
            nodes.push(Node { feature: 0, value: 0.5, right: 0, size: 2 });
            nodes.push(Node { feature: LEAF, value: f32::from(d + 1), right: 0, size: 1 });
        }
        // Each split's left child is its leaf; the right child is the next split.
        for (i, n) in nodes.iter_mut().enumerate() {
            if n.feature != LEAF {
                n.right = u32::try_from(i + 2).expect("small");
            }
        }
        nodes.push(Node { feature: LEAF, value: 7.0, right: 0, size: 1 });
        f.nodes = nodes;
        f.roots = vec![0];
    });
    assert!(e.starts_with("iforest.json: tree 0 is 7 deep, deeper than the ⌈log₂ ψ⌉ = 6"), "{e}");
}

#[test]
fn size_claims_are_capped_before_anything_is_read() {
    let b = small();
    // A 2 GiB claim for the forest: refused from the manifest alone.
    let mut m = b.manifest.clone();
    m.files.get_mut(IFOREST).expect("entry").bytes = 2 << 30;
    let manifest = serde_json::to_vec(&m).expect("json");
    let e = Bundle::from_bytes(&manifest, b.iforest.clone(), b.autoencoder.clone(), None).expect_err("claim");
    assert_eq!(
        e.to_string(),
        "manifest.json: files.\"iforest.json\".bytes is 2147483648; it must be at most 268435456"
    );
    let dir = TempDir::new("refuse-size");
    b.write_dir(&dir.0).expect("writes");
    std::fs::write(dir.0.join(MANIFEST), &manifest).expect("write");
    // The forest file itself, sparse, as large as claimed: never read.
    std::fs::File::options().write(true).open(dir.0.join(IFOREST)).expect("open").set_len(2 << 30).expect("grow");
    let e = Bundle::read_dir(&dir.0).expect_err("claim");
    assert!(e.to_string().contains("bytes is 2147483648; it must be at most"), "{e}");

    // A file larger than its (acceptable) claim is not read past the claim.
    b.write_dir(&dir.0).expect("writes");
    let mut onnx = b.autoencoder.clone();
    onnx.extend([0u8; 10]);
    std::fs::write(dir.0.join(AUTOENCODER), &onnx).expect("write");
    let e = Bundle::read_dir(&dir.0).expect_err("larger than claimed");
    assert!(
        e.to_string().starts_with(&format!("autoencoder.onnx: {} bytes where the manifest says", onnx.len())),
        "{e}"
    );

    let mut m = b.manifest.clone();
    m.files.insert("../../etc/shadow".into(), m.files[IFOREST].clone());
    let e = Bundle::from_bytes(&serde_json::to_vec(&m).expect("json"), b.iforest.clone(), b.autoencoder.clone(), None)
        .expect_err("extra entry");
    assert_eq!(e.to_string(), "manifest.json: files lists ../../etc/shadow, which is not part of a bundle");
}

#[test]
fn vigil_run_refuses_bundles_other_users_can_write() {
    let dir = TempDir::new("refuse-mode");
    small().write_dir(&dir.0).expect("writes");
    for f in [MANIFEST, IFOREST, AUTOENCODER] {
        chmod(&dir.0.join(f), 0o644);
    }
    Bundle::read_dir_with(&dir.0, Access::Private).expect("root's private bundle reads");
    let trust = Trust { keys: Vec::new(), allow_unsigned: true };
    for f in [MANIFEST, IFOREST, AUTOENCODER] {
        let path = dir.0.join(f);
        chmod(&path, 0o664);
        let e = Bundle::load_trusted(&dir.0, &trust).expect_err("group-writable").to_string();
        assert!(e.contains(&format!("{f}: writable by group or others (mode 0664)")), "{e}");
        Bundle::read_dir(&dir.0).expect("offline commands (vigil eval) read it anyway");
        chmod(&path, 0o644);
    }
    chmod(&dir.0, 0o777);
    let e = Bundle::load_trusted(&dir.0, &trust).expect_err("world-writable directory").to_string();
    assert!(e.contains("writable by group or others (mode 0777)"), "{e}");
    chmod(&dir.0, 0o755);
    std::fs::write(dir.0.join(SIGNATURE), "00").expect("write");
    chmod(&dir.0.join(SIGNATURE), 0o666);
    let e = Bundle::load_trusted(&dir.0, &trust).expect_err("the signature too").to_string();
    assert!(e.contains("manifest.sig: writable by group or others"), "{e}");
}

#[test]
fn vigil_run_loads_only_bundles_signed_by_a_trusted_key() {
    let dir = TempDir::new("refuse-sign");
    small().write_dir(&dir.0).expect("writes");
    let (key, other) = (SecretKey::generate().expect("key"), SecretKey::generate().expect("key"));
    let trusted = Trust { keys: vec![key.public()], allow_unsigned: false };

    let e = Bundle::load_trusted(&dir.0, &trusted).expect_err("unsigned").to_string();
    assert!(e.starts_with("no manifest.sig: the bundle is not signed"), "{e}");
    let (_, how) = Bundle::load_trusted(&dir.0, &Trust { allow_unsigned: true, ..trusted.clone() }).expect("allowed");
    assert!(matches!(how, Provenance::Unverified { .. }), "{how:?}");

    Bundle::sign_dir(&dir.0, &other).expect("signs");
    let e = Bundle::load_trusted(&dir.0, &trusted).expect_err("another key").to_string();
    assert!(e.starts_with("manifest.sig does not verify with 1 trusted key(s)"), "{e}");
    let e = Bundle::load_trusted(&dir.0, &Trust::default()).expect_err("no keys at all").to_string();
    assert!(e.starts_with("no trusted keys"), "{e}");

    Bundle::sign_dir(&dir.0, &key).expect("signs");
    let (bundle, how) = Bundle::load_trusted(&dir.0, &trusted).expect("signed by the trusted key");
    assert_eq!(how, Provenance::Signed { key: key.public() });
    assert_eq!(bundle.sha256(), super::bundle::sha256_hex(&std::fs::read(dir.0.join(MANIFEST)).expect("read")));

    // A manifest changed after signing (a threshold raised, checksums intact) fails.
    let text = std::fs::read_to_string(dir.0.join(MANIFEST)).expect("read");
    let alert = small().manifest.thresholds.alert;
    std::fs::write(dir.0.join(MANIFEST), text.replacen(&format!("\"alert\": {alert}"), "\"alert\": 9.5", 1))
        .expect("tamper");
    let e = Bundle::load_trusted(&dir.0, &trusted).expect_err("tampered").to_string();
    assert!(e.contains("does not verify"), "{e}");

    // A bundle that does not load is not signed.
    std::fs::write(dir.0.join(IFOREST), b"{}").expect("break");
    assert!(Bundle::sign_dir(&dir.0, &key).expect_err("broken").to_string().starts_with("iforest.json: sha256"));
}

#[test]
fn the_built_in_bundle_is_signed_by_the_models_key() {
    let (bundle, how) = Bundle::load_trusted(Path::new("default"), &Trust::default()).expect("built in");
    assert_eq!(how, Provenance::BuiltIn { signed: true }, "re-sign models/default (models/README.md)");
    let on_disk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    assert_eq!(bundle.sha256(), super::bundle::sha256_hex(&std::fs::read(on_disk.join(MANIFEST)).expect("read")));
    assert_eq!(bundle.signature(), Some(std::fs::read(on_disk.join(SIGNATURE)).expect("read").as_slice()));
}
