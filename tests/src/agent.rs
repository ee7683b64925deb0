//! Running the real `vigil` binary in a namespace, and reading what it wrote.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        mpsc::{self, Receiver},
    },
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

pub use crate::files::{TempDir, bundle_copy, public_key_hex, read_conversations, read_records};
use crate::netns::{Netns, sh};

/// Builds the `vigil` binary once per test process (same profile as the tests) and returns
/// its path, so the tests always run the current code. It is built with the `offline`
/// feature, as this crate uses the library: the tests run `vigil eval`, and the same features
/// keep one build of the library for both.
///
/// # Panics
/// If the build fails.
pub fn vigil_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        sh(Command::new(cargo).current_dir(&root).args([
            "build",
            "--quiet",
            "--package",
            "vigil",
            "--features",
            "offline",
            "--bin",
            "vigil",
        ]));
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        let bin = target.join("debug/vigil");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    })
}

/// A running `vigil` process whose stderr is collected line by line.
pub struct Agent {
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `vigil ARGS` inside `ns` and waits until it has attached (or fails).
    ///
    /// # Panics
    /// If it exits or does not attach within 20 s.
    #[must_use]
    pub fn start(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn(ns.command(vigil_bin().to_str().expect("utf-8 path")), args)
    }

    /// Starts `vigil ARGS` in `ns`'s network namespace only (`nsenter --net`): it keeps the
    /// host's mounts, so what it pins under `/sys/fs/bpf` outlives it, as on a real host.
    ///
    /// # Panics
    /// If it exits or does not attach within 20 s.
    #[must_use]
    pub fn start_net_only(ns: &Netns, args: &[&str]) -> Self {
        Self::spawn(ns.command_net_only(vigil_bin().to_str().expect("utf-8 path")), args)
    }

    fn spawn(mut command: Command, args: &[&str]) -> Self {
        // Its own process group: a Ctrl-C in the terminal reaches the lab tools, which stop
        // the agent in order.
        crate::interrupt::own_group(&mut command);
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting vigil");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().expect("log").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut agent = Self { child, lines, log };
        agent.wait_for("XDP sensor attached", Duration::from_secs(20));
        agent
    }

    /// Waits for a stderr line containing `needle`.
    ///
    /// # Panics
    /// On timeout or if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let status = self.child.try_wait().ok().flatten();
        panic!("vigil never logged {needle:?} (exit: {status:?}); log:\n{}", self.log());
    }

    /// Everything it logged so far.
    ///
    /// # Panics
    /// If the log lock is poisoned.
    #[must_use]
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// The process id.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Panics
    /// If it is still running after `timeout`.
    #[must_use]
    pub fn wait_exit(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "vigil did not exit; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT and waits for it to exit.
    ///
    /// # Panics
    /// If it does not exit within 20 s.
    #[must_use]
    pub fn stop(self) -> (ExitStatus, String) {
        self.stop_with(Signal::SIGINT)
    }

    /// Sends `signal` and waits for it to exit.
    ///
    /// # Panics
    /// If it does not exit within 20 s.
    #[must_use]
    pub fn stop_with(mut self, signal: Signal) -> (ExitStatus, String) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        // `ip netns exec` execs the command, so the pid is vigil's own.
        kill(pid, signal).expect("signal");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Let the reader thread drain the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "vigil did not stop on SIGINT; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
