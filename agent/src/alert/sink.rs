//! Alert delivery: fans serialised alert events out to stdout, files, syslog and webhooks.
//!
//! Every sink owns a thread fed by a bounded queue. [`Sinks::send`] only ever `try_send`s, so
//! a slow or dead sink costs dropped alerts (counted per sink), never detection latency. An
//! event a sink cannot deliver counts as failed, never stops anything: the sink tries again
//! with the next event (the file is reopened, the syslog socket reconnected) and logs at most
//! one line per [`FAILURE_LOG_INTERVAL`] with the failures since the last.
//!
//! Config shape (`[[alerts.sinks]]`): `type` picks the sink, `queue` (default 10 000) bounds its
//! queue, the other keys belong to the type. [`SinkSpec`] flattens [`SinkConfig`] beside
//! `queue`; serde's `deny_unknown_fields` does not work on a struct with a flattened field, so
//! it sits on the enum instead: `queue` is taken by the outer struct and every other key must
//! be known to the chosen variant, so a typo still fails with "unknown field `...`".

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{ToSocketAddrs, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::webhook::{self, WebhookOutput, WebhookSettings};

/// Default bound of each sink's queue.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Largest accepted queue bound: `sync_channel` allocates its slots up front.
pub const MAX_QUEUE: usize = 1_000_000;
/// Ceiling of the webhook retry backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest syslog message: the biggest UDP payload over IPv4 (64 KiB less the headers).
pub const MAX_SYSLOG_MESSAGE: usize = 65_507;
/// A failing sink logs at most one failure line per this long, with the count since the last.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One `[[alerts.sinks]]` entry: the sink and the bound of its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSpec {
    #[serde(flatten)]
    pub kind: SinkConfig,
    /// Events waiting for this sink beyond this many are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// Where alerts go. Durations are humantime strings ("500ms", "5s").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    /// One JSON line per event on standard output.
    Stdout,
    /// One JSON line per event appended to `path`; follows logrotate's renames.
    File { path: PathBuf },
    /// RFC 5424 messages over a datagram socket.
    Syslog {
        /// `udp://HOST:PORT` or `unix:///PATH` (a unix datagram socket such as `/dev/log`).
        address: String,
        #[serde(default)]
        facility: Facility,
        /// Defaults to the system host name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        #[serde(default = "default_app_name")]
        app_name: String,
    },
    /// HTTP POST of each event (`Content-Type: application/json`), retried with backoff.
    Webhook {
        /// `https://` (certificates verified), or `http://` with `allow_http = true`.
        url: String,
        #[serde(default = "default_timeout", with = "humantime_str")]
        timeout: Duration,
        #[serde(default = "default_max_retries")]
        max_retries: u32,
        /// First retry delay, doubled on each retry and capped at [`MAX_BACKOFF`].
        #[serde(default = "default_backoff", with = "humantime_str")]
        backoff: Duration,
        /// PEM file of the CA certificates to trust instead of the built-in (Mozilla) roots.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// Allow a plain `http://` url: alerts then cross the network unencrypted.
        #[serde(default)]
        allow_http: bool,
    },
}

fn default_queue() -> usize {
    DEFAULT_QUEUE
}
fn default_app_name() -> String {
    "vigil".to_owned()
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_retries() -> u32 {
    5
}
fn default_backoff() -> Duration {
    Duration::from_millis(500)
}

mod humantime_str {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| D::Error::custom(format!("bad duration {text:?}: {e}")))
    }
}

/// Syslog facility (RFC 5424 section 6.2.1), by its conventional lowercase name; the
/// discriminant is the code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facility {
    Kern = 0,
    User = 1,
    Daemon = 3,
    Auth = 4,
    Authpriv = 10,
    #[default]
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

/// Syslog severity (RFC 5424 section 6.2.1); the discriminant is the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

/// One alert, already serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// One JSON object, without a trailing newline.
    pub json: String,
    pub severity: Severity,
    /// Unix epoch nanoseconds, used for the syslog header.
    pub timestamp_ns: u64,
}

/// Per-sink counters, as returned by [`Sinks::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    /// `stdout`, `file:PATH`, `syslog:ADDRESS` or `webhook:URL` (credentials hidden).
    pub name: String,
    pub delivered: u64,
    /// Events refused because the queue was full.
    pub dropped: u64,
    /// Events given up on: write errors, or a webhook still failing after its retries.
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("alert sink #{index}: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("opening alert sink {name}: {source}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("starting thread for alert sink {name}: {source}")]
    Spawn {
        name: String,
        #[source]
        source: io::Error,
    },
}

impl SinkSpec {
    /// Checks the settings without touching the system; the error names the offending field.
    ///
    /// # Errors
    /// A description of the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue == 0 || self.queue > MAX_QUEUE {
            return Err(format!("queue must be between 1 and {MAX_QUEUE}, got {}", self.queue));
        }
        self.kind.validate()
    }
}

impl SinkConfig {
    /// Checks the settings without touching the system; the error names the offending field.
    ///
    /// # Errors
    /// A description of the first bad field.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            SinkConfig::File { path } if path.as_os_str().is_empty() => Err("file path must not be empty".into()),
            SinkConfig::Stdout | SinkConfig::File { .. } => Ok(()),
            SinkConfig::Syslog { address, hostname, app_name, .. } => {
                SyslogAddress::parse(address)?;
                if let Some(host) = hostname
                    && !is_header_field(host, 255)
                {
                    return Err(format!("syslog hostname must be 1-255 printable ASCII characters, got {host:?}"));
                }
                if !is_header_field(app_name, 48) {
                    return Err(format!("syslog app_name must be 1-48 printable ASCII characters, got {app_name:?}"));
                }
                Ok(())
            }
            SinkConfig::Webhook { .. } => self.webhook_settings().map_or(Ok(()), |s| webhook::validate(&s)),
        }
    }

    /// The sink's name in stats and logs.
    #[must_use]
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout => "stdout".into(),
            SinkConfig::File { path } => format!("file:{}", path.display()),
            SinkConfig::Syslog { address, .. } => format!("syslog:{address}"),
            SinkConfig::Webhook { url, .. } => format!("webhook:{}", webhook::redact_userinfo(url)),
        }
    }

    fn webhook_settings(&self) -> Option<WebhookSettings<'_>> {
        let SinkConfig::Webhook { url, timeout, max_retries, backoff, ca_file, allow_http } = self else {
            return None;
        };
        Some(WebhookSettings {
            url,
            timeout: *timeout,
            max_retries: *max_retries,
            backoff: *backoff,
            ca_file: ca_file.as_deref(),
            allow_http: *allow_http,
        })
    }
}

/// RFC 5424 header fields are PRINTUSASCII (no spaces) of bounded length.
fn is_header_field(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

enum SyslogAddress {
    Udp(String),
    Unix(PathBuf),
}

impl SyslogAddress {
    fn parse(address: &str) -> Result<SyslogAddress, String> {
        let bad = || format!("syslog address must be udp://HOST:PORT or unix:///PATH, got {address:?}");
        if let Some(host_port) = address.strip_prefix("udp://") {
            let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
            match port.parse::<u16>() {
                Ok(p) if p != 0 && !host.is_empty() => Ok(SyslogAddress::Udp(host_port.to_owned())),
                _ => Err(bad()),
            }
        } else if let Some(path) = address.strip_prefix("unix://").filter(|p| p.starts_with('/') && p.len() > 1) {
            Ok(SyslogAddress::Unix(PathBuf::from(path)))
        } else {
            Err(bad())
        }
    }
}

#[derive(Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

struct Worker {
    name: String,
    counters: Arc<Counters>,
    tx: SyncSender<Arc<Event>>,
    thread: JoinHandle<()>,
}

/// The running sinks. Dropping this without [`Sinks::shutdown`] lets the threads drain detached.
pub struct Sinks {
    workers: Vec<Worker>,
    /// Set when shutdown runs out of time: workers then give up on what is left in their queues.
    abort: Arc<AtomicBool>,
}

impl Sinks {
    /// Validates and opens every sink (files created for append, sockets connected, URLs parsed),
    /// so bad settings fail here, then starts one thread per sink.
    ///
    /// # Errors
    /// An invalid setting, a file or socket that cannot be opened, or a thread that cannot start.
    pub fn start(specs: &[SinkSpec]) -> Result<Sinks, SinkError> {
        Self::start_with(specs, None)
    }

    /// [`Sinks::start`] with the threads' stack size (`None`: the default), so a test can make
    /// the spawn fail.
    fn start_with(specs: &[SinkSpec], stack_size: Option<usize>) -> Result<Sinks, SinkError> {
        let outputs = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                spec.validate().map_err(|reason| SinkError::Invalid { index, reason })?;
                let name = spec.kind.name();
                let output =
                    Output::open(&spec.kind).map_err(|source| SinkError::Open { name: name.clone(), source })?;
                Ok((name, output, spec.queue))
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        let abort = Arc::new(AtomicBool::new(false));
        let mut sinks = Sinks { workers: Vec::with_capacity(outputs.len()), abort };
        for (index, (name, output, queue)) in outputs.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(queue);
            let counters = Arc::new(Counters::default());
            let (worker_name, worker_counters, abort) = (name.clone(), counters.clone(), sinks.abort.clone());
            let mut builder = thread::Builder::new().name(format!("alert-sink-{index}"));
            if let Some(size) = stack_size {
                builder = builder.stack_size(size);
            }
            // On an error `sinks` drops: the threads started so far see their queues close and end.
            let thread = builder
                .spawn(move || run_worker(&worker_name, output, &rx, &worker_counters, &abort))
                .map_err(|source| SinkError::Spawn { name: name.clone(), source })?;
            info!(sink = %name, queue, "alert sink started");
            sinks.workers.push(Worker { name, counters, tx, thread });
        }
        Ok(sinks)
    }

    /// Queues the event for every sink. Never blocks: a full queue counts a drop for that sink.
    pub fn send(&self, event: &Event) {
        if self.workers.is_empty() {
            return;
        }
        let event = Arc::new(event.clone());
        for worker in &self.workers {
            match worker.tx.try_send(Arc::clone(&event)) {
                Ok(()) => {}
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    worker.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Current counters of every sink, in configuration order.
    #[must_use]
    pub fn stats(&self) -> Vec<SinkStats> {
        self.workers
            .iter()
            .map(|w| SinkStats {
                name: w.name.clone(),
                delivered: w.counters.delivered.load(Ordering::Relaxed),
                dropped: w.counters.dropped.load(Ordering::Relaxed),
                failed: w.counters.failed.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Closes the queues and waits up to `timeout` for the threads to drain. Threads still busy
    /// then are told to give up on their backlog (counted as failed) and left to finish alone.
    pub fn shutdown(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let pending: Vec<(String, JoinHandle<()>)> = self
            .workers
            .into_iter()
            .map(|w| {
                drop(w.tx);
                (w.name, w.thread)
            })
            .collect();
        while pending.iter().any(|(_, t)| !t.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.abort.store(true, Ordering::Relaxed);
        for (name, thread) in pending {
            if !thread.is_finished() {
                warn!(sink = %name, "alert sink did not drain before shutdown timeout; abandoning its backlog");
            } else if thread.join().is_err() {
                warn!(sink = %name, "alert sink thread panicked");
            }
        }
    }
}

fn run_worker(name: &str, mut output: Output, rx: &Receiver<Arc<Event>>, counters: &Counters, abort: &AtomicBool) {
    let mut log = FailureLog::new(FAILURE_LOG_INTERVAL);
    for event in rx {
        if abort.load(Ordering::Relaxed) {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match output.deliver(&event, abort) {
            Ok(()) => {
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some(unreported) = log.success() {
                    info!(sink = name, failed_since_last_report = unreported, "alert sink recovered");
                }
            }
            Err(error) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(failed) = log.failure(Instant::now()) {
                    warn!(
                        sink = name,
                        %error,
                        failed_since_last_report = failed,
                        "alert delivery failed; next report in {}s at the earliest",
                        FAILURE_LOG_INTERVAL.as_secs()
                    );
                }
            }
        }
    }
    debug!(sink = name, "alert sink stopped");
}

/// When a sink's failures are logged: the first at once, then at most one line per
/// `interval` carrying how many failed since the previous line, and one line on recovery.
#[derive(Debug)]
struct FailureLog {
    interval: Duration,
    last_line: Option<Instant>,
    /// Failures not yet in a line.
    unreported: u64,
    /// A failure line went out and no recovery line since.
    failing: bool,
}

impl FailureLog {
    const fn new(interval: Duration) -> Self {
        Self { interval, last_line: None, unreported: 0, failing: false }
    }

    /// Records a failure at `now`; `Some(failures the line reports)` when one is due.
    fn failure(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.last_line.is_some_and(|t| now.saturating_duration_since(t) < self.interval) {
            return None;
        }
        self.last_line = Some(now);
        self.failing = true;
        Some(std::mem::take(&mut self.unreported))
    }

    /// Records a success; `Some(failures since the last line)` when it ends a reported failure.
    fn success(&mut self) -> Option<u64> {
        if !self.failing {
            return None;
        }
        self.failing = false;
        Some(std::mem::take(&mut self.unreported))
    }
}

enum Output {
    Stdout,
    File(FileOutput),
    Syslog(SyslogOutput),
    Webhook(WebhookOutput),
}

impl Output {
    fn open(config: &SinkConfig) -> io::Result<Output> {
        Ok(match config {
            SinkConfig::Stdout => Output::Stdout,
            SinkConfig::File { path } => Output::File(FileOutput::open(path)?),
            SinkConfig::Syslog { address, facility, hostname, app_name } => {
                Output::Syslog(SyslogOutput::open(address, *facility, hostname.as_deref(), app_name)?)
            }
            SinkConfig::Webhook { .. } => match config.webhook_settings() {
                Some(settings) => Output::Webhook(WebhookOutput::open(&settings)?),
                None => unreachable!("a webhook has webhook settings"),
            },
        })
    }

    fn deliver(&mut self, event: &Event, abort: &AtomicBool) -> Result<(), String> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(event.json.as_bytes())
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
                    .map_err(|e| e.to_string())
            }
            Output::File(file) => file.write_line(&event.json).map_err(|e| e.to_string()),
            Output::Syslog(syslog) => syslog.send(event).map_err(|e| e.to_string()),
            Output::Webhook(webhook) => webhook.post(event, abort),
        }
    }
}

/// An append-mode file that is reopened when its path stops naming it (logrotate's rename or
/// removal). `copytruncate` needs nothing: with `O_APPEND` writes follow the truncation.
struct FileOutput {
    path: PathBuf,
    /// The open file and its (device, inode); `None` after a write error, reopened next event.
    file: Option<(File, (u64, u64))>,
    /// Times the file was opened (start, renames, failures).
    opens: u64,
}

impl FileOutput {
    fn open(path: &Path) -> io::Result<FileOutput> {
        let mut output = FileOutput { path: path.to_owned(), file: None, opens: 0 };
        output.reopen()?;
        Ok(output)
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.opens += 1;
        let file = OpenOptions::new().append(true).create(true).open(&self.path)?;
        let meta = file.metadata()?;
        self.file = Some((file, (meta.dev(), meta.ino())));
        Ok(())
    }

    fn write_line(&mut self, json: &str) -> io::Result<()> {
        let moved = match (&self.file, fs::metadata(&self.path)) {
            (Some((_, id)), Ok(meta)) => *id != (meta.dev(), meta.ino()),
            _ => true,
        };
        if moved {
            self.reopen()?;
        }
        let mut line = String::with_capacity(json.len() + 1);
        line.push_str(json);
        line.push('\n');
        let Some((file, _)) = &mut self.file else { unreachable!("reopened above") };
        // One write(2) per line, so concurrent appenders never interleave inside it.
        let result = file.write_all(line.as_bytes());
        if result.is_err() {
            self.file = None;
        }
        result
    }
}

enum SyslogSocket {
    Udp(UdpSocket),
    Unix(UnixDatagram, PathBuf),
}

struct SyslogOutput {
    socket: SyslogSocket,
    facility: Facility,
    hostname: String,
    app_name: String,
    pid: u32,
}

impl SyslogOutput {
    fn open(address: &str, facility: Facility, hostname: Option<&str>, app_name: &str) -> io::Result<SyslogOutput> {
        let address = SyslogAddress::parse(address).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let socket = match address {
            SyslogAddress::Udp(host_port) => {
                let target = host_port.to_socket_addrs()?.next().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{host_port} resolves to no address"))
                })?;
                let socket = UdpSocket::bind(if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
                socket.connect(target)?;
                SyslogSocket::Udp(socket)
            }
            SyslogAddress::Unix(path) => SyslogSocket::Unix(connect_unix(&path)?, path),
        };
        let hostname = hostname.map_or_else(system_hostname, str::to_owned);
        Ok(SyslogOutput { socket, facility, hostname, app_name: app_name.to_owned(), pid: std::process::id() })
    }

    fn format(&self, event: &Event) -> String {
        let pri = self.facility as u16 * 8 + event.severity as u16;
        let mut message = format!(
            "<{pri}>1 {} {} {} {} alert - \u{feff}{}",
            crate::clock::rfc3339_micros(event.timestamp_ns),
            self.hostname,
            self.app_name,
            self.pid,
            event.json
        );
        message.truncate(message.floor_char_boundary(MAX_SYSLOG_MESSAGE));
        message
    }

    fn send(&mut self, event: &Event) -> io::Result<()> {
        let message = self.format(event);
        match &mut self.socket {
            SyslogSocket::Udp(socket) => socket.send(message.as_bytes()).map(drop),
            SyslogSocket::Unix(socket, path) => socket.send(message.as_bytes()).map(drop).or_else(|_| {
                // The syslog daemon may have restarted and recreated its socket: reconnect once.
                *socket = connect_unix(path)?;
                socket.send(message.as_bytes()).map(drop)
            }),
        }
    }
}

fn connect_unix(path: &Path) -> io::Result<UnixDatagram> {
    let socket = UnixDatagram::unbound()?;
    socket.connect(path)?;
    // A stalled syslog daemon must not wedge the sink forever.
    socket.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(socket)
}

/// The kernel's node name (what gethostname(2) returns), made a valid RFC 5424 HOSTNAME.
fn system_hostname() -> String {
    let name = nix::sys::utsname::uname().map(|u| u.nodename().to_string_lossy().into_owned()).unwrap_or_default();
    let name: String = name.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).take(255).collect();
    if name.is_empty() { "-".to_owned() } else { name }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn event(n: usize) -> Event {
        Event {
            json: format!(r#"{{"n":{n},"msg":"ü"}}"#),
            severity: Severity::Warning,
            timestamp_ns: 1_795_255_200_123_456_789,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-sink-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spec(kind: SinkConfig, queue: usize) -> SinkSpec {
        SinkSpec { kind, queue }
    }

    /// Polls until `done` holds for the first sink's stats, panicking after 10 s.
    pub(in crate::alert) fn wait_for(sinks: &Sinks, done: impl Fn(&SinkStats) -> bool) -> SinkStats {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = sinks.stats().remove(0);
            if done(&stats) {
                return stats;
            }
            assert!(Instant::now() < deadline, "timed out waiting; stats {stats:?}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn file_sink_reopens_after_rename() {
        let dir = temp_dir("file");
        let path = dir.join("alerts.jsonl");
        let sinks = Sinks::start(&[spec(SinkConfig::File { path: path.clone() }, 100)]).unwrap();
        assert_eq!(sinks.stats()[0].name, format!("file:{}", path.display()));
        (0..3).for_each(|n| sinks.send(&event(n)));
        wait_for(&sinks, |s| s.delivered == 3);
        fs::rename(&path, dir.join("alerts.jsonl.1")).unwrap();
        (3..5).for_each(|n| sinks.send(&event(n)));
        wait_for(&sinks, |s| s.delivered == 5);
        let stats = sinks.stats().remove(0);
        sinks.shutdown(Duration::from_secs(5));
        assert_eq!((stats.dropped, stats.failed), (0, 0));
        let expect = |r: std::ops::Range<usize>| r.map(|n| event(n).json).collect::<Vec<_>>();
        assert_eq!(lines(&dir.join("alerts.jsonl.1")), expect(0..3));
        assert_eq!(lines(&path), expect(3..5));
        fs::remove_dir_all(dir).unwrap();
    }

    /// Checks an RFC 5424 message from a sink configured with local0 and app "vigil".
    fn check_syslog(datagram: &[u8], expect: &Event) {
        let text = std::str::from_utf8(datagram).unwrap();
        let fields: Vec<&str> = text.splitn(8, ' ').collect();
        assert_eq!(fields[0], "<132>1", "local0 (16) * 8 + warning (4), version 1");
        assert_eq!(fields[1], "2026-11-21T10:00:00.123456Z");
        assert!(!fields[2].is_empty() && fields[2].bytes().all(|b| b.is_ascii_graphic()));
        assert_eq!(fields[3..7], ["vigil", &std::process::id().to_string(), "alert", "-"]);
        let body = fields[7].strip_prefix('\u{feff}').expect("BOM before MSG");
        let parsed: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(parsed, serde_json::from_str::<serde_json::Value>(&expect.json).unwrap());
    }

    #[test]
    fn syslog_udp_sends_rfc5424() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let address = format!("udp://{}", receiver.local_addr().unwrap());
        let config =
            SinkConfig::Syslog { address, facility: Facility::Local0, hostname: None, app_name: "vigil".into() };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        sinks.send(&event(7));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(7));
        sinks.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn syslog_unix_datagram() {
        let dir = temp_dir("unix");
        let path = dir.join("log.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let config = SinkConfig::Syslog {
            address: format!("unix://{}", path.display()),
            facility: Facility::default(),
            hostname: Some("sensor-1".into()),
            app_name: default_app_name(),
        };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        sinks.send(&event(1));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(1));
        assert!(std::str::from_utf8(&buf[..n]).unwrap().contains(" sensor-1 vigil "));
        sinks.shutdown(Duration::from_secs(5));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn syslog_message_is_truncated_at_char_boundary() {
        let out = SyslogOutput {
            socket: SyslogSocket::Udp(UdpSocket::bind("127.0.0.1:0").unwrap()),
            facility: Facility::Kern,
            hostname: "h".into(),
            app_name: "a".into(),
            pid: 1,
        };
        let big = Event { json: "é".repeat(40_000), severity: Severity::Emergency, timestamp_ns: 0 };
        let message = out.format(&big);
        assert!(message.len() <= MAX_SYSLOG_MESSAGE && message.len() > MAX_SYSLOG_MESSAGE - 2);
        assert!(message.starts_with("<0>1 1970-01-01T00:00:00.000000Z h a 1 alert - \u{feff}é"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(crate::clock::rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(crate::clock::rfc3339_micros(1_709_251_199_999_999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(crate::clock::rfc3339_micros(1_795_255_200_123_456_789), "2026-11-21T10:00:00.123456Z");
    }

    #[test]
    fn file_sink_on_a_full_disk_counts_failures_and_keeps_going() {
        let sinks = Sinks::start(&[spec(SinkConfig::File { path: "/dev/full".into() }, 100)]).unwrap();
        (0..5).for_each(|n| sinks.send(&event(n)));
        let stats = wait_for(&sinks, |s| s.failed == 5);
        assert_eq!((stats.delivered, stats.dropped), (0, 0));
        sinks.shutdown(Duration::from_secs(5));
    }

    #[test]
    fn file_output_reopens_on_the_event_after_a_failure() {
        let mut out = FileOutput::open(Path::new("/dev/full")).unwrap();
        assert_eq!(out.opens, 1);
        for n in 1..=3 {
            let err = out.write_line("{}").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
            assert!(out.file.is_none(), "a failed handle is dropped");
            assert_eq!(out.opens, n, "opened again only when the next event comes");
        }
    }

    #[test]
    fn syslog_socket_gone_then_back() {
        let dir = temp_dir("unix-gone");
        let path = dir.join("log.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let config = SinkConfig::Syslog {
            address: format!("unix://{}", path.display()),
            facility: Facility::default(),
            hostname: None,
            app_name: default_app_name(),
        };
        let sinks = Sinks::start(&[spec(config, 10)]).unwrap();
        drop(receiver);
        fs::remove_file(&path).unwrap();
        sinks.send(&event(1));
        sinks.send(&event(2));
        let stats = wait_for(&sinks, |s| s.failed == 2);
        assert_eq!(stats.delivered, 0);
        // The daemon comes back: the next event reconnects.
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sinks.send(&event(3));
        let mut buf = vec![0; 70_000];
        let n = receiver.recv(&mut buf).unwrap();
        check_syslog(&buf[..n], &event(3));
        assert_eq!(wait_for(&sinks, |s| s.delivered == 1).failed, 2);
        sinks.shutdown(Duration::from_secs(5));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failures_are_logged_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = FailureLog::new(Duration::from_secs(10));
        assert_eq!(log.success(), None, "nothing to recover from");
        assert_eq!(log.failure(at(0)), Some(1), "the first failure is logged at once");
        for ms in [1, 500, 9_999] {
            assert_eq!(log.failure(at(ms)), None, "quiet inside the interval");
        }
        assert_eq!(log.failure(at(10_000)), Some(4), "then one line with the failures since the last");
        assert_eq!(log.failure(at(10_001)), None);
        assert_eq!(log.success(), Some(1), "recovery reports the failures not yet logged");
        assert_eq!(log.success(), None);
        assert_eq!(log.failure(at(12_000)), None, "a flapping sink still logs once per interval");
        assert_eq!(log.failure(at(20_000)), Some(2));
    }

    #[test]
    fn a_thread_that_cannot_start_is_an_error() {
        let sinks = [spec(SinkConfig::Stdout, 1)];
        let Err(error) = Sinks::start_with(&sinks, Some(1 << 60)) else {
            panic!("a 1 EiB stack cannot be allocated");
        };
        assert!(matches!(error, SinkError::Spawn { .. }), "{error}");
        assert!(error.to_string().starts_with("starting thread for alert sink stdout"), "{error}");
    }

    #[test]
    fn validate_names_the_field() {
        let err = |s: SinkSpec| s.validate().unwrap_err();
        let syslog = |address: &str| SinkConfig::Syslog {
            address: address.into(),
            facility: Facility::Local0,
            hostname: None,
            app_name: "vigil".into(),
        };
        for bad in ["tcp://h:514", "udp://host", "udp://:514", "udp://h:0", "unix://dev/log"] {
            assert!(err(spec(syslog(bad), 1)).starts_with("syslog address must be udp://HOST:PORT"), "{bad}");
        }
        assert!(spec(syslog("udp://[::1]:514"), 1).validate().is_ok());
        assert!(spec(syslog("unix:///dev/log"), 1).validate().is_ok());
        let http = err(spec(webhook("http://example.com/x", false), 1));
        assert!(http.starts_with("webhook url") && http.contains("allow_http = true"), "{http}");
        assert!(spec(webhook("https://example.com/x", false), 1).validate().is_ok());
        assert!(err(spec(SinkConfig::Stdout, 0)).starts_with("queue must be"));
        let mut app = syslog("udp://h:514");
        if let SinkConfig::Syslog { app_name, .. } = &mut app {
            *app_name = "has space".into();
        }
        assert!(err(spec(app, 1)).starts_with("syslog app_name"));
        let Err(SinkError::Invalid { index: 1, reason }) =
            Sinks::start(&[spec(SinkConfig::Stdout, 1), spec(SinkConfig::Stdout, 0)])
        else {
            panic!("start must reject the second sink");
        };
        assert!(reason.contains("queue"));
    }

    fn webhook(url: &str, allow_http: bool) -> SinkConfig {
        SinkConfig::Webhook {
            url: url.into(),
            timeout: Duration::from_secs(1),
            max_retries: 1,
            backoff: Duration::from_millis(10),
            ca_file: None,
            allow_http,
        }
    }

    #[derive(Debug, PartialEq, Deserialize, Serialize)]
    struct Config {
        sinks: Vec<SinkSpec>,
    }

    #[test]
    fn toml_shape_round_trips() {
        let text = r#"
            [[sinks]]
            type = "stdout"

            [[sinks]]
            type = "file"
            path = "/var/log/vigil/alerts.jsonl"
            queue = 500

            [[sinks]]
            type = "syslog"
            address = "unix:///dev/log"
            facility = "authpriv"

            [[sinks]]
            type = "webhook"
            url = "http://user:pw@siem.local:8080/hook"
            timeout = "2s"
            max_retries = 3
            allow_http = true

            [[sinks]]
            type = "webhook"
            url = "https://siem.example/hook"
            ca_file = "/etc/vigil/siem-ca.pem"
        "#;
        let config: Config = toml::from_str(text).unwrap();
        let expected = vec![
            spec(SinkConfig::Stdout, DEFAULT_QUEUE),
            spec(SinkConfig::File { path: "/var/log/vigil/alerts.jsonl".into() }, 500),
            spec(
                SinkConfig::Syslog {
                    address: "unix:///dev/log".into(),
                    facility: Facility::Authpriv,
                    hostname: None,
                    app_name: "vigil".into(),
                },
                DEFAULT_QUEUE,
            ),
            spec(
                SinkConfig::Webhook {
                    url: "http://user:pw@siem.local:8080/hook".into(),
                    timeout: Duration::from_secs(2),
                    max_retries: 3,
                    backoff: Duration::from_millis(500),
                    ca_file: None,
                    allow_http: true,
                },
                DEFAULT_QUEUE,
            ),
            spec(
                SinkConfig::Webhook {
                    url: "https://siem.example/hook".into(),
                    timeout: Duration::from_secs(5),
                    max_retries: 5,
                    backoff: Duration::from_millis(500),
                    ca_file: Some("/etc/vigil/siem-ca.pem".into()),
                    allow_http: false,
                },
                DEFAULT_QUEUE,
            ),
        ];
        assert_eq!(config.sinks, expected);
        assert!(config.sinks.iter().all(|s| s.validate().is_ok()));
        assert_eq!(config.sinks[3].kind.name(), "webhook:http://***@siem.local:8080/hook");
        let again: Config = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);

        let typo = "[[sinks]]\ntype = \"file\"\npath = \"/tmp/a\"\nquue = 5\n";
        let error = toml::from_str::<Config>(typo).unwrap_err().to_string();
        assert!(error.contains("unknown field `quue`"), "{error}");
        let error = toml::from_str::<Config>("[[sinks]]\ntype = \"pager\"\n").unwrap_err().to_string();
        assert!(error.contains("pager"), "{error}");
        let error = toml::from_str::<Config>("[[sinks]]\ntype = \"webhook\"\nurl = \"http://a\"\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("soon"), "{error}");
    }
}
