//! Throwaway network namespaces joined by veth pairs. Everything is removed on drop.

use std::{
    fs::File,
    net::UdpSocket,
    process::{Command, Output},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::sched::{CloneFlags, setns};

/// Runs a command and panics with its output if it fails.
///
/// # Panics
/// If the command cannot start or exits non-zero.
pub fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace named `vigil-<tag>-<pid>-<n>`, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with loopback up.
    ///
    /// # Panics
    /// If `ip netns add` fails.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let name = format!("vigil-{tag}-{}-{}", std::process::id(), crate::unique());
        sh(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command run inside the namespace (`ip netns exec`).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// A command run in the namespace's network only (`nsenter --net`), keeping the host's
    /// mounts (`ip netns exec` remounts `/sys`, hiding the host's BPF filesystem).
    #[must_use]
    pub fn command_net_only(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.name)).arg(program);
        cmd
    }

    /// Runs `ip ARGS` inside the namespace.
    ///
    /// # Panics
    /// If it fails.
    pub fn ip(&self, args: &[&str]) {
        let _ = self.ip_output(args);
    }

    /// Runs `ip ARGS` inside the namespace and returns what it printed.
    ///
    /// # Panics
    /// If it fails.
    #[must_use]
    pub fn ip_output(&self, args: &[&str]) -> Output {
        sh(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs `f` on a new thread that has entered the namespace, and returns its result.
    /// Sockets `f` opens live in the namespace.
    ///
    /// # Panics
    /// If entering the namespace fails or `f` panics.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        self.spawn(f).join().expect("thread in namespace panicked")
    }

    /// Like [`Netns::run`] without waiting.
    ///
    /// # Panics
    /// If the namespace file cannot be opened.
    pub fn spawn<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> thread::JoinHandle<R> {
        let file = File::open(format!("/var/run/netns/{}", self.name)).expect("namespace file");
        thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }
}

impl Netns {
    /// Binds a UDP socket on `addr:port` inside the namespace and counts datagrams until `n`
    /// arrived or `within` passed. Returns once the socket is bound; join for the count.
    ///
    /// # Panics
    /// If the socket cannot be bound.
    #[must_use]
    pub fn udp_sink(&self, addr: &'static str, port: u16, n: usize, within: Duration) -> thread::JoinHandle<usize> {
        let (ready_tx, ready) = mpsc::channel();
        let handle = self.spawn(move || {
            let sock = UdpSocket::bind((addr, port)).expect("bind udp sink");
            sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            ready_tx.send(()).expect("ready");
            let deadline = Instant::now() + within;
            let mut got = 0;
            let mut buf = [0u8; 2048];
            while got < n && Instant::now() < deadline {
                if sock.recv(&mut buf).is_ok() {
                    got += 1;
                }
            }
            got
        });
        ready.recv().expect("udp sink thread died");
        handle
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Two namespaces joined by a veth pair: `a` (10.200.0.1/24, `fd00:200::1/64`) on `veth-a`
/// and `b` (10.200.0.2/24, `fd00:200::2/64`) on `veth-b`.
pub struct Link {
    pub a: Netns,
    pub b: Netns,
}

impl Link {
    /// Whether an XDP program is attached to B's interface (`ip link show`).
    #[must_use]
    pub fn xdp_attached(&self) -> bool {
        let out = self.b.ip_output(&["link", "show", "dev", Self::IFACE_B]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    pub const A_V4: [u8; 4] = [10, 200, 0, 1];
    pub const B_V4: [u8; 4] = [10, 200, 0, 2];
    pub const IFACE_A: &'static str = "veth-a";
    pub const IFACE_B: &'static str = "veth-b";

    /// Creates both namespaces and the veth pair, addressed and up. IPv6 DAD is disabled so
    /// addresses are usable at once.
    ///
    /// # Panics
    /// If any step fails.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        let a = Netns::new(&format!("{tag}a"));
        let b = Netns::new(&format!("{tag}b"));
        a.ip(&["link", "add", Self::IFACE_A, "type", "veth", "peer", "name", Self::IFACE_B, "netns", b.name()]);
        for (ns, iface, v4, v6) in [
            (&a, Self::IFACE_A, "10.200.0.1/24", "fd00:200::1/64"),
            (&b, Self::IFACE_B, "10.200.0.2/24", "fd00:200::2/64"),
        ] {
            sh(ns.command("sysctl").args([
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                &format!("net.ipv6.conf.{iface}.accept_dad=0"),
            ]));
            ns.ip(&["addr", "add", v4, "dev", iface]);
            ns.ip(&["addr", "add", v6, "dev", iface, "nodad"]);
            ns.ip(&["link", "set", iface, "up"]);
        }
        Self { a, b }
    }
}
