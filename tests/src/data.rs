//! The shared data beside the repository (`../shared/data`), prepared for model tests and
//! benchmarks, and the Python reference script (`tests/python/crosscheck.py`).

use std::path::{Path, PathBuf};

/// A file under `../shared/data`.
///
/// # Panics
/// If it is missing: the shared data must sit beside the repository.
#[must_use]
pub fn shared(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(rel);
    assert!(p.exists(), "{} is missing: the shared data must sit beside the repository", p.display());
    p
}

/// The workspace root (the Python reference script lives under it).
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// The models' references (UNSW-NB15 prepared as the detector prepares it, the Python script,
// raw f32 matrices): the file the agent's cross-check tests use, so the benchmark measures
// against the same preparation.
#[path = "../../agent/tests/common/reference.rs"]
mod reference;

pub use reference::{
    ForestSplit, forest_split, python, python_on_cpu0, read_f32, sklearn_boosted, sklearn_forest, unsw_prepared,
    write_f32,
};

use crate::files::TempDir;
pub use crate::files::arg;
