//! The metrics endpoint as a real Prometheus server sees it: the agent's `OpenMetrics` text is
//! scraped, parsed and queryable. Needs the `prometheus` binary (`cargo xtask setup`), not root.

mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use agent_common::counters::Counters;
use common::TempDir;
use vigil::metrics::Metrics;

/// The `prometheus` server binary on `PATH`.
fn prometheus_bin() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|bin| bin.is_file())
        .expect("the `prometheus` server binary is not on PATH: run `cargo xtask setup` (Debian package `prometheus`)")
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("binding port 0").local_addr().expect("local address").port()
}

/// Percent-encodes a `PromQL` query for a URL query string.
fn url_encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET path` over HTTP/1.0 (no chunked encoding); the status code and body, or `None` if
/// nothing is listening yet.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A running Prometheus server, killed on drop (also when the test panics).
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &TempDir, target: SocketAddr) -> Self {
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("starting prometheus");
        Self { child, addr, log }
    }

    /// The value of the single sample `query` returns now, if there is one.
    fn query(&self, query: &str) -> Option<String> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={}", url_encode(query)))?;
        if status != 200 {
            return None;
        }
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = json["data"]["result"].as_array()?;
        match result.as_slice() {
            [sample] => sample["value"][1].as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// Polls `query` until it returns `expected`, for up to `timeout`.
    fn wait_for(&mut self, query: &str, expected: &str, timeout: Duration) {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", self.log());
            }
            last = self.query(query);
            if last.as_deref() == Some(expected) {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("`{query}` is {last:?}, not {expected}, after {timeout:?}; prometheus log:\n{}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_metrics_endpoint() {
    let metrics = Metrics::new();
    metrics.observe_sensor(&Counters { packets: 1234, bytes: 99_000, ..Counters::default() });
    metrics.set_flows_tracked(50, 200);
    metrics.alert("high");
    let server = metrics.serve("127.0.0.1:0".parse().unwrap()).expect("serving metrics");

    let dir = TempDir::new("prometheus");
    let mut prometheus = Prometheus::start(&dir, server.local_addr());
    let timeout = Duration::from_secs(30);
    prometheus.wait_for("vigil_packets_total", "1234", timeout);
    prometheus.wait_for("up{job=\"vigil\"}", "1", timeout);
    prometheus.wait_for("vigil_flow_table_fill_ratio", "0.25", timeout);
    prometheus.wait_for("vigil_alerts_total{severity=\"high\"}", "1", timeout);
    drop(prometheus);
}
