//! Small helpers for the agent's integration tests: the `vigil` binary cargo built for them,
//! scratch directories, the shared data beside the repository, and (with `offline`) the
//! Python reference script.
//!
//! These tests need no root, so they do not use the privileged test-support crate
//! (`vigil-tests`, which links aya and builds namespaces): the few helpers they need are kept
//! here, small on purpose. Each test file includes this module (`mod common;`) and uses part
//! of it.

#![allow(dead_code, unused_imports, reason = "each test binary uses a part of the helpers")]

mod files;
#[cfg(feature = "offline")]
pub mod reference;

use std::path::{Path, PathBuf};

pub use files::{TempDir, arg, bundle_copy, public_key_hex, read_records};

/// The `vigil` binary of this package, built by cargo for the tests with the same features.
#[must_use]
pub fn vigil_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
}

/// Runs `vigil` with `args`: its exit code, standard output and standard error.
///
/// # Panics
/// If it cannot start or is killed by a signal.
#[must_use]
pub fn run_vigil(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(vigil_bin()).args(args).env("NO_COLOR", "1").output().expect("vigil runs");
    let code = out.status.code().expect("exited");
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
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

/// A `nats-server -js` on a free loopback port, its store in `dir` (Debian's package;
/// `cargo xtask setup` installs it); killed on drop.
pub struct NatsServer {
    child: std::process::Child,
    pub port: u16,
}

impl NatsServer {
    /// Starts it and waits (bounded) until it listens.
    ///
    /// # Panics
    /// If it cannot start or does not listen within 10 s.
    #[must_use]
    pub fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let child = std::process::Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server (cargo xtask setup installs it)");
        let server = Self { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
