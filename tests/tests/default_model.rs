//! The shipped bundle (`models/default`) is what its recorded command produces: retraining
//! with the files and settings in its manifest gives the same three files, byte for byte.

use std::{path::Path, process::Command};

use vigil::model::bundle::{AUTOENCODER, Bundle, IFOREST, MANIFEST};
use vigil_tests::agent::{TempDir, vigil_bin};

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
    assert_eq!(files.len(), 14, "every benign capture");
    let out = TempDir::new("default-model");
    let status = Command::new(vigil_bin())
        .current_dir(&root)
        .args(["train", "--no-progress", "--out"])
        .arg(out.path())
        .arg("--pcap")
        .args(&files)
        .status()
        .expect("vigil train runs");
    assert!(status.success(), "vigil train failed: {status}");
    for name in [MANIFEST, IFOREST, AUTOENCODER] {
        let a = std::fs::read(shipped.join(name)).expect("shipped file");
        let b = std::fs::read(out.path().join(name)).expect("retrained file");
        assert!(
            a == b,
            "models/default/{name} differs from a retrain with the recorded command (see models/README.md)"
        );
    }
}
