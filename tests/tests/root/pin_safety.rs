//! The pinned sensor and the agent's local outputs under hostile or broken conditions: pins of
//! another layout, a pin directory someone else owns, a link unpinned behind the agent's back,
//! a full disk. Needs root; every case runs the real `vigil` binary on a veth in namespaces.

use std::{
    io::{Read as _, Write as _},
    net::UdpSocket,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use agent_common::{counters::Counters, maps};
use aya::maps::{Array, Map, MapData, MapInfo};
use vigil_tests::{
    agent::{Agent, TempDir, vigil_bin},
    netns::Link,
    require_root,
};

/// A pin directory of this test process on the host's BPF filesystem, removed on drop
/// (`vigil detach`, then whatever is left).
pub(crate) struct PinDir(PathBuf);

impl PinDir {
    pub(crate) fn new(tag: &str) -> Self {
        let dir =
            PathBuf::from(format!("/sys/fs/bpf/vigil-test-{tag}-{}-{}", std::process::id(), vigil_tests::unique()));
        Self(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::process::Command::new(vigil_bin()).args(["detach", "--pin-dir", self.arg()]).output();
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `vigil ARGS` in the namespace's network only (the host's bpffs), to completion.
pub(crate) fn vigil(link: &Link, args: &[&str]) -> Output {
    link.b.command_net_only(vigil_bin().to_str().expect("utf-8")).args(args).output().expect("vigil runs")
}

/// `bpf(BPF_MAP_CREATE)` + `bpf(BPF_OBJ_PIN)`: a map of the given shape pinned at `path`, as
/// another build (or anyone with `CAP_BPF`) could leave it.
fn pin_raw_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    use std::os::unix::ffi::OsStrExt as _;
    let mut attr = [0u32; 18];
    attr[..4].copy_from_slice(&[map_type, key_size, value_size, max_entries]);
    // SAFETY: a zeroed `bpf_attr` prefix of the size given, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_mut_ptr(), std::mem::size_of_val(&attr)) };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let ptr = c_path.as_ptr() as u64;
    let fd = u32::try_from(fd).expect("a small fd");
    #[expect(clippy::cast_possible_truncation, reason = "splitting a u64 into its halves")]
    let mut pin = [ptr as u32, (ptr >> 32) as u32, fd, 0];
    // SAFETY: as above; `c_path` outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_mut_ptr(), std::mem::size_of_val(&pin)) };
    assert_eq!(ret, 0, "BPF_OBJ_PIN {}: {}", path.display(), std::io::Error::last_os_error());
    // SAFETY: the fd came from the kernel above and is not used after this.
    unsafe { libc::close(i32::try_from(fd).expect("a small fd")) };
}

/// One error line naming `needles`, exit status 1.
fn assert_refused(out: &Output, needles: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "expected {n:?} in: {stderr}");
    }
    assert_eq!(stderr.lines().filter(|l| l.contains("error")).count(), 1, "one error line: {stderr}");
    stderr
}

#[test]
fn pinned_maps_of_another_layout_are_refused_and_left_alone() {
    require_root();
    let link = Link::new("layout");
    let run = TempDir::new("layout-run");
    let pins = PinDir::new("layout");
    std::fs::create_dir_all(pins.path()).expect("pin dir");
    // A counters map with one more counter than this build's (the review's double free).
    let counters = pins.path().join(maps::COUNTERS);
    let bigger = u32::try_from(std::mem::size_of::<Counters>() + 8).unwrap();
    pin_raw_map(&counters, 6 /* BPF_MAP_TYPE_PERCPU_ARRAY */, 4, bigger, 1);
    let args = ["run", "--iface", Link::IFACE_B, "--pin-dir", pins.arg(), "--run-dir", run.path().to_str().unwrap()];
    let out = vigil(&link, &args);
    assert_refused(&out, &["VIGIL_COUNTERS", "value size", "vigil detach"]);
    assert!(!link.xdp_attached(), "nothing attached");
    let info = MapInfo::from_pin(&counters).expect("the foreign map is still pinned");
    assert_eq!(info.value_size(), bigger, "and untouched");
    let names: Vec<String> = std::fs::read_dir(pins.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [maps::COUNTERS], "nothing else pinned beside it");
    std::fs::remove_file(&counters).unwrap();

    // A sensor of this build with a 4096-flow table, left pinned by its agent...
    let mut with_capacity = args.to_vec();
    with_capacity.extend(["--flow-capacity", "4096"]);
    let agent = Agent::start_net_only(&link.b, &with_capacity);
    let (status, log) = agent.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(status.success(), "{log}");
    assert!(link.xdp_attached(), "left attached and pinned");
    // ...is not taken over by an agent asking for another capacity (aya would reuse the
    // smaller maps silently),
    let mut other = args.to_vec();
    other.extend(["--flow-capacity", "8192"]);
    assert_refused(&vigil(&link, &other), &["VIGIL_FLOWS0", "capacity", "2048 entries", "4096 entries"]);
    // nor when the layout version it recorded is not this build's.
    let layout = pins.path().join(maps::LAYOUT);
    {
        let map = Map::from_map_data(MapData::from_pin(&layout).expect("layout pinned")).unwrap();
        let mut array: Array<MapData, u32> = Array::try_from(map).unwrap();
        assert_eq!(array.get(&0, 0).unwrap(), maps::LAYOUT_VERSION, "the agent recorded its version");
        array.set(0, maps::LAYOUT_VERSION + 1, 0).unwrap();
    }
    assert_refused(&vigil(&link, &with_capacity), &["VIGIL_LAYOUT", "layout version", "vigil detach"]);
    let status = vigil(&link, &["status", "--pin-dir", pins.arg(), "--run-dir", run.path().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned() + &String::from_utf8_lossy(&status.stderr);
    assert!(text.contains("layout version"), "status reports the mismatch instead of misreading: {text}");
    assert!(link.xdp_attached(), "the refused agents touched nothing");
    // `vigil detach` works on pins of any layout.
    let out = vigil(&link, &["detach", "--pin-dir", pins.arg()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!link.xdp_attached());
}

#[test]
fn pin_directories_others_could_change_are_refused() {
    require_root();
    let link = Link::new("owner");
    let run = TempDir::new("owner-run");
    let pins = PinDir::new("owner");
    std::fs::create_dir_all(pins.path()).expect("pin dir");
    let args = ["run", "--iface", Link::IFACE_B, "--pin-dir", pins.arg(), "--run-dir", run.path().to_str().unwrap()];
    // Pre-created by an unprivileged user (nobody).
    std::os::unix::fs::chown(pins.path(), Some(65_534), Some(65_534)).expect("chown");
    assert_refused(&vigil(&link, &args), &[pins.arg(), "owned by uid 65534"]);
    // Ours, but writable by everyone.
    std::os::unix::fs::chown(pins.path(), Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(pins.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_refused(&vigil(&link, &args), &[pins.arg(), "writable by group or others"]);
    assert!(!link.xdp_attached());
    // A run directory of someone else's is refused the same way.
    std::fs::set_permissions(pins.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(run.path(), Some(65_534), Some(65_534)).expect("chown");
    assert_refused(&vigil(&link, &args), &[run.path().to_str().unwrap(), "owned by uid 65534"]);
    std::os::unix::fs::chown(run.path(), Some(0), Some(0)).expect("chown");
    // A fresh pin directory is created 0700; an existing one of ours is narrowed to it.
    std::fs::remove_dir(pins.path()).unwrap();
    let agent = Agent::start_net_only(&link.b, &args);
    assert_eq!(std::fs::metadata(pins.path()).unwrap().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(run.path()).unwrap().mode() & 0o777, 0o700);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn a_link_unpinned_behind_the_agents_back_is_an_error_and_detach_is_not() {
    require_root();
    let link = Link::new("unpin");
    let run = TempDir::new("unpin-run");
    let pins = PinDir::new("unpin");
    let args = ["run", "--iface", Link::IFACE_B, "--pin-dir", pins.arg(), "--run-dir", run.path().to_str().unwrap()];
    let agent = Agent::start_net_only(&link.b, &args);
    std::fs::remove_file(pins.path().join("link")).expect("unpin");
    let (status, log) = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("removed while still attached"), "{log}");
    let _ = vigil(&link, &["detach", "--pin-dir", pins.arg()]);

    // `vigil detach` is a normal stop.
    let agent = Agent::start_net_only(&link.b, &args);
    let out = vigil(&link, &["detach", "--pin-dir", pins.arg()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, log) = agent.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{log}");
    assert!(!link.xdp_attached());
}

/// `GET /metrics` on `addr` from inside the namespace.
fn scrape(link: &Link, addr: &'static str) -> String {
    link.b.run(move || {
        let mut s = std::net::TcpStream::connect(addr).expect("metrics endpoint");
        write!(s, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    })
}

#[test]
fn a_full_disk_does_not_stop_detection() {
    require_root();
    let link = Link::new("full");
    let run = TempDir::new("full-run");
    let agent = Agent::start(
        &link.b,
        &[
            "run",
            "--no-pin",
            "--iface",
            Link::IFACE_B,
            "--flows-out",
            "/dev/full",
            "--idle-timeout",
            "1s",
            "--metrics",
            "127.0.0.1:9109",
            "--run-dir",
            run.path().to_str().unwrap(),
        ],
    );
    // New flows every 100 ms for 4 s: each ends by idle timeout and its record cannot be
    // written.
    link.a.run(|| {
        let s = UdpSocket::bind(("10.200.0.1", 0)).expect("bind");
        for i in 0..40u16 {
            let _ = s.send_to(b"x", ("10.200.0.2", 20_000 + i));
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    std::thread::sleep(Duration::from_secs(3));
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.path().join("status.json")).expect("status still written"))
            .expect("status json");
    assert!(status["flows_scored"].as_u64().unwrap() >= 40, "{status}");
    let metrics = scrape(&link, "127.0.0.1:9109");
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_output_failures_total{output=\"flows\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no flows failure series: {metrics}"));
    assert!(failed >= 40, "every lost record counted: {failed}");
    let (exit, log) = agent.stop();
    assert!(exit.success(), "still running, stops cleanly: {log}");
    let warnings = log.lines().filter(|l| l.contains("output failing")).count();
    assert!((1..=2).contains(&warnings), "logged once per 10 s, not per record: {warnings}\n{log}");
}
