//! The shipped bundle (`models/default`) is what its recorded command produces: retraining
//! with the files and settings in its manifest gives the same forest byte for byte, the same
//! schema, scaler and baseline, and the same thresholds and autoencoder outputs. (On this
//! machine type all three files come out byte-identical; the autoencoder's floating-point
//! sums may differ in the last bits on a CPU with other SIMD kernels, hence the tolerance.)

mod common;

use std::{path::Path, process::Command};

use common::{TempDir, vigil_bin};
use ndarray::Array2;
use vigil::{
    features::Schema,
    model::bundle::{Bundle, IFOREST},
};

#[test]
fn default_bundle_is_reproduced_by_its_recorded_command() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = root.join("models/default");
    let bundle = Bundle::read_dir(&shipped).expect("models/default reads and its checksums hold");
    let files: Vec<String> = bundle.manifest.training["data"]["files"]
        .as_array()
        .expect("the manifest records its training files")
        .iter()
        .map(|f| f.as_str().expect("a path").to_owned())
        .collect();
    assert_eq!(files.len(), 133, "every benign capture of pcaps/ and corpus/");
    let share = bundle.manifest.training["data"]["max_file_share"].as_f64().expect("the manifest records the file cap");
    let out = TempDir::new("default-model");
    let status = Command::new(vigil_bin())
        .current_dir(&root)
        .args(["train", "--no-progress", "--max-file-share", &share.to_string(), "--out"])
        .arg(out.path())
        .arg("--pcap")
        .args(&files)
        .status()
        .expect("vigil train runs");
    assert!(status.success(), "vigil train failed: {status}");
    let a = std::fs::read(shipped.join(IFOREST)).expect("shipped forest");
    let b = std::fs::read(out.path().join(IFOREST)).expect("retrained forest");
    assert!(a == b, "models/default/{IFOREST} differs from a retrain with the recorded command (see models/README.md)");

    let retrained = Bundle::read_dir(out.path()).expect("the retrained bundle reads");
    let (m, r) = (&bundle.manifest, &retrained.manifest);
    assert_eq!(m.schema, r.schema);
    assert_eq!(m.scaler, r.scaler);
    assert_eq!(m.baseline, r.baseline);
    assert_eq!(m.range, r.range);
    assert_eq!(m.training["data"], r.training["data"]);
    let close = |x: f32, y: f32| (x - y).abs() <= 1e-3 * x.abs().max(1.0);
    assert!(close(m.thresholds.alert, r.thresholds.alert), "{:?} vs {:?}", m.thresholds, r.thresholds);
    assert!(close(m.combine.autoencoder.median, r.combine.autoencoder.median));
    let schema = Schema::flow();
    let (d1, d2) = (bundle.detector(&schema).expect("shipped"), retrained.detector(&schema).expect("retrained"));
    let rows = Array2::from_shape_fn((200, schema.len()), |(i, j)| {
        f32::from(u8::try_from((i * 7 + j * 13) % 50).expect("small")) / 10.0
    });
    let (s1, s2) = (d1.score(rows.view()).expect("scores"), d2.score(rows.view()).expect("scores"));
    for (x, y) in s1.iter().zip(&s2) {
        assert!(close(x.combined, y.combined), "shipped {x:?} vs retrained {y:?}");
    }
}
