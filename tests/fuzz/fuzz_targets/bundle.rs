//! Model bundle loading with the detector, through the public in-memory API
//! (`Bundle::from_bytes`, `Bundle::detector`, `Detector::score`).
//!
//! Input: a 4-byte little-endian manifest length, a 4-byte forest length, the manifest JSON,
//! the forest JSON, then the ONNX bytes. The manifest's checksums and sizes are rewritten to
//! match the files (when it is a JSON object with `files`), so mutations reach the parsers
//! and range checks behind the checksum instead of stopping at it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::{
    features::Schema,
    model::{
        bundle::{Bundle, sha256_hex},
        detector::probe_rows,
    },
};

fn split(data: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (head, rest) = data.split_first_chunk::<8>()?;
    let m = usize::try_from(u32::from_le_bytes([head[0], head[1], head[2], head[3]])).ok()?;
    let f = usize::try_from(u32::from_le_bytes([head[4], head[5], head[6], head[7]])).ok()?;
    let (manifest, rest) = rest.split_at_checked(m)?;
    let (forest, onnx) = rest.split_at_checked(f)?;
    Some((manifest, forest, onnx))
}

/// The manifest with its `files` entries describing `forest` and `onnx`.
fn fix_checksums(manifest: &[u8], forest: &[u8], onnx: &[u8]) -> Vec<u8> {
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(manifest) else { return manifest.to_vec() };
    let Some(files) = value.get_mut("files").and_then(serde_json::Value::as_object_mut) else {
        return manifest.to_vec();
    };
    for (name, bytes) in [("iforest.json", forest), ("autoencoder.onnx", onnx)] {
        if let Some(entry) = files.get_mut(name).and_then(serde_json::Value::as_object_mut) {
            entry.insert("sha256".into(), sha256_hex(bytes).into());
            entry.insert("bytes".into(), (bytes.len() as u64).into());
        }
    }
    serde_json::to_vec(&value).unwrap_or_else(|_| manifest.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((manifest, forest, onnx)) = split(data) else { return };
    let manifest = fix_checksums(manifest, forest, onnx);
    // No classifier file: a manifest that names one is refused here (its loading is covered by
    // the unit tests of `model::kind_classifier` and `model::bundle`).
    let Ok(bundle) = Bundle::from_bytes(&manifest, forest.to_vec(), onnx.to_vec(), None) else { return };
    let schema = Schema::flow();
    let Ok(detector) = bundle.detector(&schema) else { return };
    // A detector that loaded scores the probe rows without panicking.
    let _ = detector.score(probe_rows(schema.len()).view());
});
