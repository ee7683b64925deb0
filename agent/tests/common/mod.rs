//! Small helpers for the agent's integration tests: the `vigil` binary cargo built for them,
//! scratch directories, the shared data beside the repository, and (with `offline`) the
//! Python reference script.
//!
//! These tests need no root, so they do not use the privileged test-support crate
//! (`vigil-tests`, which links aya and builds namespaces): the few helpers they need are kept
//! here, small on purpose. Each test file includes this module (`mod common;`) and uses part
//! of it.

#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

#[cfg(feature = "offline")]
pub mod reference;

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use vigil::flows::FlowRecord;

/// The `vigil` binary of this package, built by cargo for the tests with the same features.
#[must_use]
pub fn vigil_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
}

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file under `../shared/data` (beside the repository).
///
/// # Panics
/// If it is missing: the shared data must sit beside the repository.
#[must_use]
pub fn shared(rel: &str) -> PathBuf {
    let p = workspace().join("../shared/data").join(rel);
    assert!(p.exists(), "{} is missing: the shared data must sit beside the repository", p.display());
    p
}

/// A path as `&str` for command lines.
///
/// # Panics
/// If the path is not UTF-8.
#[must_use]
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The flow records of a JSON-lines file.
///
/// # Panics
/// If the file is unreadable or a line is not a record.
#[must_use]
pub fn read_records(path: &Path) -> Vec<FlowRecord> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}"))).collect()
}

/// A fresh scratch directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// # Panics
    /// If it cannot be created.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vigil-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
