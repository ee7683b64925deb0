//! Files the tests make and read: scratch directories, flow-record files, copies of the
//! shipped model bundle and key files. One definition for the agent's integration tests
//! (`agent/tests/common`) and the privileged test-support crate (`tests/src`, which includes
//! this file by path), so neither keeps a copy.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use vigil::flows::{FlowRecord, biflow::BiflowRecord};

/// A path as `&str` for command lines.
///
/// # Panics
/// If the path is not UTF-8.
#[must_use]
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The conversation records (format 2) of a JSON-lines file from `--flows-out` or `vigil replay`.
///
/// # Panics
/// If the file is unreadable or a line is not a conversation record.
#[must_use]
pub fn read_conversations(path: &Path) -> Vec<BiflowRecord> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l}: {e}"))).collect()
}

/// The directional records of a JSON-lines file of conversations: one or two per line.
///
/// # Panics
/// If the file is unreadable or a line is not a conversation record.
#[must_use]
pub fn read_records(path: &Path) -> Vec<FlowRecord> {
    read_conversations(path).iter().flat_map(|c| c.conversation().legs()).collect()
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

/// A copy of the shipped bundle (without its signature) in `dir/bundle`, owned by whoever runs
/// the test, mode 0644 in a 0755 directory.
///
/// # Panics
/// If the bundle cannot be copied.
#[must_use]
pub fn bundle_copy(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).expect("dir");
    std::fs::set_permissions(&bundle, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // Both including crates sit one level below the workspace root.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/default");
    for f in ["manifest.json", "iforest.json", "autoencoder.onnx"] {
        std::fs::copy(shipped.join(f), bundle.join(f)).expect("copy");
        std::fs::set_permissions(bundle.join(f), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    bundle
}

/// The hex key line of a public key file written by `vigil model keygen`.
///
/// # Panics
/// If the file is unreadable or holds no key line.
#[must_use]
pub fn public_key_hex(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("public key");
    text.lines().find(|l| !l.starts_with('#')).expect("a key line").trim().to_owned()
}
