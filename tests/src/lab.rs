//! A small LAN in namespaces for the live detection and response tests: an attacker, a victim
//! running Vigil, and a bystander, joined by a bridge in a fourth namespace.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::{Agent, TempDir, vigil_bin},
    netns::{Netns, sh},
};

/// The victim's address (Vigil runs there, on `eth0`).
pub const VICTIM: &str = "10.77.0.2";
pub const ATTACKER: &str = "10.77.0.66";
pub const BYSTANDER: &str = "10.77.0.20";
/// The interface name inside each host namespace.
pub const IFACE: &str = "eth0";

/// The three hosts, the switch, and a scratch directory with the agent's config, alerts and
/// pins (a private pin directory under `/sys/fs/bpf`, removed on drop).
pub struct Lab {
    pub victim: Netns,
    pub attacker: Netns,
    pub bystander: Netns,
    switch: Netns,
    pub dir: TempDir,
    pub pin_dir: PathBuf,
    servers: Vec<Child>,
}

impl Lab {
    /// Builds the LAN, addressed and up.
    ///
    /// # Panics
    /// If any step fails.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        Self::with_mtu(tag, 1500)
    }

    /// [`Lab::new`] with links of the given MTU (jumbo frames for replayed captures; native
    /// XDP on veth takes frames up to about 3.5 kB, beyond that the agent runs in SKB mode).
    ///
    /// # Panics
    /// If any step fails.
    #[must_use]
    pub fn with_mtu(tag: &str, mtu: u32) -> Self {
        let mtu = mtu.to_string();
        let switch = Netns::new(&format!("{tag}sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let host = |name: &str, addr: &str| {
            let ns = Netns::new(&format!("{tag}{name}"));
            let port = format!("sw-{name}");
            switch.ip(&["link", "add", &port, "type", "veth", "peer", "name", IFACE, "netns", ns.name()]);
            switch.ip(&["link", "set", &port, "mtu", &mtu, "master", "br0"]);
            switch.ip(&["link", "set", &port, "up"]);
            ns.ip(&["link", "set", IFACE, "mtu", &mtu]);
            sh(ns.command("sysctl").args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"]));
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", IFACE]);
            ns.ip(&["link", "set", IFACE, "up"]);
            // No offloads: frames on the wire are what the sensor counts.
            let _ = ns.command("ethtool").args(["-K", IFACE, "tso", "off", "gso", "off", "gro", "off"]).output();
            ns
        };
        let victim = host("v", VICTIM);
        let attacker = host("a", ATTACKER);
        let bystander = host("b", BYSTANDER);
        let dir = TempDir::new(&format!("lab-{tag}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/vigil-test-{tag}-{}-{}", std::process::id(), crate::unique()));
        Self { victim, attacker, bystander, switch, dir, pin_dir, servers: Vec::new() }
    }

    /// Makes the switch forward every frame from the attacker's port to all other ports: it
    /// stops learning addresses there. Replayed captures hold both directions of their
    /// conversations; a switch that learned a replayed host's MAC on the attacker's port would
    /// drop the frames sent to that host, so half of each conversation would never reach the
    /// victim.
    pub fn flood_from_attacker(&self) {
        self.unlearned("sw-a");
    }

    /// As [`Lab::flood_from_attacker`], for the bystander's (client's) port.
    pub fn flood_from_bystander(&self) {
        self.unlearned("sw-b");
    }

    fn unlearned(&self, port: &str) {
        sh(Command::new("bridge").args(["-n", self.switch.name(), "link", "set", "dev", port, "learning", "off"]));
    }

    /// Path of the alert file the agent writes.
    #[must_use]
    pub fn alerts_path(&self) -> PathBuf {
        self.dir.path().join("alerts.jsonl")
    }

    #[must_use]
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// Writes the agent's configuration: the lab's interface, pins, run directory and alert
    /// file, then `extra` TOML (sections other than `[sensor]`).
    ///
    /// # Panics
    /// If the file cannot be written.
    #[must_use]
    pub fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("vigil.toml");
        let text = format!(
            "[sensor]\niface = \"{IFACE}\"\npin_dir = \"{}\"\nrun_dir = \"{}\"\n\n[[alerts.sinks]]\ntype = \"file\"\npath = \"{}\"\n\n{}\n{}\n{extra}\n",
            self.pin_dir.display(),
            self.run_dir().display(),
            self.alerts_path().display(),
            self.learn_section(extra),
            self.store_section(extra),
        );
        std::fs::write(&path, text).expect("writing the config");
        path
    }

    /// The lab's store (history) file.
    #[must_use]
    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("vigil.db")
    }

    /// The lab's agent keeps its history under the lab's own directory unless `extra`
    /// configures the store itself.
    fn store_section(&self, extra: &str) -> String {
        if extra.contains("[store]") {
            String::new()
        } else {
            format!("[store]\npath = \"{}\"\n", self.store_path().display())
        }
    }

    /// The lab's agent scores with a fixed model unless `extra` configures learning itself:
    /// its tests are about detection and response, and a learning phase would hold
    /// auto-block in dry-run. Site models would go under the lab's own directory.
    fn learn_section(&self, extra: &str) -> String {
        if extra.contains("[learn]") {
            String::new()
        } else {
            format!("[learn]\nenabled = false\ndir = \"{}\"\n", self.dir.path().join("models").display())
        }
    }

    /// Starts the agent on the victim with `extra` configuration.
    ///
    /// # Panics
    /// If it does not attach.
    #[must_use]
    pub fn agent(&self, extra: &str) -> Agent {
        self.agent_with(extra, &[])
    }

    /// [`Lab::agent`] with extra `vigil run` flags.
    ///
    /// # Panics
    /// If it does not attach.
    #[must_use]
    pub fn agent_with(&self, extra: &str, flags: &[&str]) -> Agent {
        let config = self.config(extra);
        let mut args = vec!["run", "--config", config.to_str().expect("utf-8")];
        args.extend_from_slice(flags);
        Agent::start_net_only(&self.victim, &args)
    }

    /// A second agent, on the bystander (a second protected host of a fleet): its own
    /// configuration, pins, run directory and alert file under `<lab dir>/bystander`, then
    /// `extra`. Its pins are detached with the lab's.
    ///
    /// # Panics
    /// If it does not attach.
    #[must_use]
    pub fn bystander_agent(&self, extra: &str) -> BystanderAgent {
        let dir = self.dir.path().join("bystander");
        std::fs::create_dir_all(&dir).expect("bystander dir");
        let pin_dir = self.bystander_pins();
        let alerts = dir.join("alerts.jsonl");
        let config = dir.join("vigil.toml");
        let text = format!(
            "[sensor]\niface = \"{IFACE}\"\npin_dir = \"{}\"\nrun_dir = \"{}\"\n\n[[alerts.sinks]]\ntype = \"file\"\npath = \"{}\"\n\n[store]\npath = \"{}\"\n\n[learn]\nenabled = false\ndir = \"{}\"\n\n{extra}\n",
            pin_dir.display(),
            dir.join("run").display(),
            alerts.display(),
            dir.join("vigil.db").display(),
            dir.join("models").display(),
        );
        std::fs::write(&config, text).expect("writing the bystander's config");
        let agent = Agent::start_net_only(&self.bystander, &["run", "--config", config.to_str().expect("utf-8")]);
        BystanderAgent { agent, alerts, pin_dir, run_dir: dir.join("run") }
    }

    /// The pin directory of [`Lab::bystander_agent`] (bpffs names take no dots).
    fn bystander_pins(&self) -> PathBuf {
        PathBuf::from(format!("{}-bystander", self.pin_dir.display()))
    }

    /// The switch's namespace (where a test may run what all hosts reach, e.g. a bus).
    #[must_use]
    pub const fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Runs a `vigil` control command against the lab's pins, from the victim's network
    /// namespace (so "the host's own addresses" are the victim's).
    ///
    /// # Panics
    /// If it cannot start.
    #[must_use]
    pub fn vigil(&self, args: &[&str]) -> Output {
        let pin = self.pin_dir.to_str().expect("utf-8");
        let run = self.run_dir();
        let mut cmd = self.victim.command_net_only(vigil_bin().to_str().expect("utf-8"));
        // Global control flags go after the subcommand path.
        cmd.args(args).args(["--pin-dir", pin, "--run-dir", run.to_str().expect("utf-8")]);
        cmd.output().expect("running vigil")
    }

    /// Every event written to the alert file so far.
    ///
    /// # Panics
    /// If a line is not JSON.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.alerts_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l}: {e}")))
            .collect()
    }

    /// Waits for an event matching `pred`.
    ///
    /// # Panics
    /// If none arrives within `timeout`.
    pub fn wait_event(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}; events:\n{:#?}", self.events());
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a long-running server process in `ns`, killed on drop.
    ///
    /// # Panics
    /// If it cannot start.
    pub fn serve(&mut self, ns_pick: fn(&Self) -> &Netns, program: &str, args: &[&str]) {
        let mut cmd = ns_pick(self).command(program);
        crate::interrupt::own_group(&mut cmd);
        let child = cmd
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        self.servers.push(child);
    }

    /// Starts the victim's services: HTTP on :80, iperf3 on :5201, DNS on :53 (a minimal
    /// responder), and waits until they answer.
    ///
    /// # Panics
    /// If they do not come up.
    pub fn start_victim_services(&mut self) {
        self.serve(|l| &l.victim, "python3", &["-m", "http.server", "80", "--bind", VICTIM]);
        self.serve(|l| &l.victim, "iperf3", &["-s", "-B", VICTIM]);
        dns_responder(&self.victim);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .bystander
            .command("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "1", &format!("http://{VICTIM}/")])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "HTTP server on the victim did not come up");
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ordinary traffic from the bystander: an iperf3 run, HTTP fetches and DNS lookups.
    ///
    /// # Panics
    /// If a client fails.
    pub fn bystander_traffic(&self) {
        sh(self.bystander.command("iperf3").args(["-c", VICTIM, "-t", "3", "-b", "200M"]));
        for i in 0..20 {
            sh(self.bystander.command("curl").args([
                "-sf",
                "-o",
                "/dev/null",
                "--max-time",
                "2",
                &format!("http://{VICTIM}/?{i}"),
            ]));
        }
        for i in 0..20 {
            sh(self.bystander.command("dig").args([
                &format!("@{VICTIM}"),
                &format!("host{i}.lab.test"),
                "+tries=1",
                "+noedns",
                "+time=1",
            ]));
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A bounded hping3 SYN flood from the attacker to the victim's port 80: `count` packets,
    /// one every `interval_us`. Returns the running process (ends by itself).
    ///
    /// # Panics
    /// If hping3 cannot start.
    #[must_use]
    pub fn syn_flood(&self, count: u32, interval_us: u32, source: Option<&str>) -> Child {
        let mut cmd = self.attacker.command("timeout");
        cmd.args(["30", "hping3", "-S", "-p", "80", "-c", &count.to_string(), "-i", &format!("u{interval_us}")]);
        if let Some(src) = source {
            cmd.args(["-a", src]);
        }
        cmd.arg(VICTIM).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("starting hping3")
    }

    /// Sends `n` UDP datagrams from `from` (a namespace and its address) to the victim's
    /// `port`.
    ///
    /// # Panics
    /// If the socket cannot be bound or a send fails.
    pub fn send_udp(from: &Netns, addr: &'static str, port: u16, n: usize) {
        from.run(move || {
            let s = UdpSocket::bind((addr, 0)).expect("bind sender");
            for _ in 0..n {
                s.send_to(b"lab", (VICTIM, port)).expect("send");
                thread::sleep(Duration::from_millis(2));
            }
        });
    }

    /// A UDP listener on the victim counting datagrams per source address until dropped.
    ///
    /// # Panics
    /// If the listener cannot be bound.
    #[must_use]
    pub fn udp_counter(&self, port: u16) -> UdpCounter {
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let c2 = Arc::clone(&counts);
        let (ready_tx, ready) = mpsc::channel();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        self.victim.spawn(move || {
            let s = UdpSocket::bind((VICTIM, port)).expect("bind counter");
            s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 2048];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((_, from)) = s.recv_from(&mut buf) {
                    *c2.lock().expect("counts").entry(from.ip()).or_insert(0usize) += 1;
                }
            }
        });
        ready.recv().expect("counter thread");
        UdpCounter { counts, stop }
    }

    /// Whether an XDP program is attached to the victim's interface.
    #[must_use]
    pub fn xdp_attached(&self) -> bool {
        let out = self.victim.ip_output(&["link", "show", "dev", IFACE]);
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pins in [self.pin_dir.clone(), self.bystander_pins()] {
            if pins.exists() {
                let _ = Command::new(vigil_bin()).args(["detach", "--pin-dir"]).arg(&pins).output();
            }
        }
    }
}

/// The agent of [`Lab::bystander_agent`] and where its files are.
pub struct BystanderAgent {
    pub agent: Agent,
    pub alerts: PathBuf,
    pub pin_dir: PathBuf,
    pub run_dir: PathBuf,
}

impl BystanderAgent {
    /// Every event in its alert file so far.
    ///
    /// # Panics
    /// If a line is not JSON.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.alerts)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event {l}: {e}")))
            .collect()
    }

    /// `vigil status --json` of this agent, from the bystander's namespace.
    ///
    /// # Panics
    /// If the command fails or its output is not JSON.
    #[must_use]
    pub fn status(&self, lab: &Lab) -> Value {
        let mut cmd = lab.bystander.command_net_only(vigil_bin().to_str().expect("utf-8"));
        cmd.args(["status", "--json", "--pin-dir"]).arg(&self.pin_dir).arg("--run-dir").arg(&self.run_dir);
        let out = cmd.output().expect("running vigil status");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("status json")
    }
}

/// Datagrams received per source.
pub struct UdpCounter {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl UdpCounter {
    /// Datagrams from `addr` so far.
    ///
    /// # Panics
    /// If the lock is poisoned.
    #[must_use]
    pub fn from(&self, addr: &str) -> usize {
        let ip: IpAddr = addr.parse().expect("address");
        self.counts.lock().expect("counts").get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for UdpCounter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A minimal DNS responder on the victim's port 53: answers every query with one A record.
fn dns_responder(ns: &Netns) {
    let (ready_tx, ready) = mpsc::channel();
    ns.spawn(move || {
        let s = UdpSocket::bind((VICTIM, 53)).expect("bind dns");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] = 0x81; // response, recursion desired
            reply[3] = 0x80; // recursion available, no error
            reply[6..8].copy_from_slice(&1u16.to_be_bytes()); // one answer
            reply[8..12].fill(0);
            // Answer: pointer to the question name, A, IN, TTL 60, 4 bytes.
            reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            reply.extend_from_slice(&Ipv4Addr::new(10, 77, 0, 99).octets());
            let _ = s.send_to(&reply, from);
        }
    });
    ready.recv().expect("dns thread");
}

/// Wall-clock now in Unix milliseconds, to compare with events' `@timestamp`.
///
/// # Panics
/// If the clock is before 1970.
#[must_use]
pub fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis())
        .expect("ms")
}

/// An event's `@timestamp` in Unix milliseconds.
///
/// # Panics
/// If it is missing or not RFC 3339.
#[must_use]
pub fn timestamp_ms(e: &Value) -> i64 {
    let text = e["@timestamp"].as_str().expect("@timestamp");
    let t = humantime::parse_rfc3339(text).unwrap_or_else(|err| panic!("{text}: {err}"));
    i64::try_from(t.duration_since(std::time::UNIX_EPOCH).expect("after epoch").as_millis()).expect("ms")
}

/// Whether an event is an alert (per source or per destination); block, unblock and other
/// response events have `event.kind` `event`.
#[must_use]
pub fn is_alert(e: &Value) -> bool {
    e["event"]["kind"] == "alert"
}

/// The address an event names on `side` (`source` or `destination`).
#[must_use]
pub fn event_ip(e: &Value, side: &str) -> Option<IpAddr> {
    e[side]["ip"].as_str()?.parse().ok()
}

/// One line for a person watching: time, action, severity and the event's message.
#[must_use]
pub fn describe(e: &Value) -> String {
    let time = e["@timestamp"].as_str().and_then(|t| t.get(11..23)).unwrap_or("?");
    let action = e["event"]["action"].as_str().unwrap_or("?");
    let severity = e["vigil"]["severity"].as_str().or_else(|| e["log"]["level"].as_str()).unwrap_or("");
    let message = e["message"].as_str().unwrap_or("");
    format!("{time}  {action:<17} {severity:<6} {message}")
}

/// Prints every new event of an alert file as it is written, until dropped.
pub struct Watch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts following `path` (which may not exist yet) from its current end, printing each
    /// event with `prefix`.
    #[must_use]
    pub fn start(path: PathBuf, prefix: &'static str) -> Self {
        use std::io::{BufRead as _, Seek as _};
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let mut offset = std::fs::metadata(&path).map_or(0, |m| m.len());
        let thread = thread::spawn(move || {
            let mut partial = String::new();
            loop {
                let done = stop2.load(std::sync::atomic::Ordering::Relaxed);
                if let Ok(mut f) = std::fs::File::open(&path)
                    && f.seek(std::io::SeekFrom::Start(offset)).is_ok()
                {
                    let mut reader = std::io::BufReader::new(f);
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                        offset += line.len() as u64;
                        partial.push_str(&line);
                        line.clear();
                        if partial.ends_with('\n') {
                            if let Ok(e) = serde_json::from_str::<Value>(&partial) {
                                println!("{prefix}{}", describe(&e));
                            }
                            partial.clear();
                        }
                    }
                }
                if done {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
