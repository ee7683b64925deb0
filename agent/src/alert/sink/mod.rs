//! Alert delivery: fans serialised alert events out to the configured sinks.
//!
//! This module holds what every sink shares: the configuration entry ([`SinkSpec`] and the
//! tagged [`SinkConfig`]), the fan-out ([`Sinks`]: a bounded queue and a thread per sink),
//! the worker loop, the per-sink counters ([`SinkStats`]) and the errors ([`SinkError`]).
//! Each sink lives in its own file with its settings, their validation, its opening and its
//! delivery: [`stdout`], [`file`] (reopened after logrotate's rename), [`syslog`] (RFC 5424
//! over UDP or a unix datagram socket) and [`webhook`] (HTTP POST over rustls, retried with
//! backoff). A sink's settings implement [`SinkSettings`], the opened sink implements [`Sink`],
//! and one line in the `sinks!` invocation below registers it.
//!
//! [`Sinks::send`] only ever `try_send`s, so a slow or dead sink costs dropped alerts (counted
//! per sink), never detection latency. An event a sink cannot deliver counts as failed, never
//! stops anything: the sink tries again with the next event (the file is reopened, the syslog
//! socket reconnected) and the worker logs at most one line per [`FAILURE_LOG_INTERVAL`] with
//! the failures since the last ([`ThrottledLog`]).
//!
//! Config shape (`[[alerts.sinks]]`): `type` picks the sink, `queue` (default 10 000) bounds its
//! queue, the other keys belong to the type. [`SinkSpec`] flattens [`SinkConfig`] beside
//! `queue`; serde's `deny_unknown_fields` does not work on a struct with a flattened field, so
//! it sits on every sink's settings struct instead: `queue` is taken by the outer struct and
//! every other key must be known to the chosen sink, so a typo still fails with "unknown field
//! `...`". (A sink without settings, a unit variant such as `stdout`, ignores extra keys: serde
//! does not check them for unit variants of an internally tagged enum.)

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::spool::{SpoolCounters, SpoolStats};
use crate::throttle::ThrottledLog;

pub use syslog::{Facility, MAX_SYSLOG_MESSAGE};
pub use webhook::MAX_BACKOFF;

/// Default bound of each sink's queue.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Largest accepted queue bound: `sync_channel` allocates its slots up front.
pub const MAX_QUEUE: usize = 1_000_000;
/// A failing sink logs at most one failure line per this long, with the count since the last.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A sink's settings: the keys of its `[[alerts.sinks]]` entry besides `type` and `queue`.
///
/// The implementing type is the serde struct of those keys (`#[serde(deny_unknown_fields)]`,
/// defaults for optional keys), registered in `sinks!`.
pub trait SinkSettings {
    /// The sink's name in stats, logs and metrics: `type` or `type:target`, with any
    /// credentials hidden.
    fn name(&self) -> String;

    /// Checks the settings without touching the system (no file, socket or DNS).
    ///
    /// # Errors
    /// A description of the first bad key that names it.
    fn validate(&self) -> Result<(), String>;

    /// Opens the sink: files created, sockets bound, clients built, certificates read, so a
    /// bad setting fails in [`Sinks::start`], before the program is attached. Called once,
    /// after [`SinkSettings::validate`] passed.
    ///
    /// A sink that talks to a server decides whether an unreachable server is fatal here; if
    /// not, it connects (and later reconnects) in [`Sink::deliver`].
    ///
    /// # Errors
    /// What could not be opened.
    fn open(&self) -> io::Result<Box<dyn Sink>>;
}

/// An opened sink, owned by its worker thread.
pub trait Sink: Send {
    /// Delivers one event. Runs on the sink's own thread: blocking only delays this sink.
    /// Anything that waits, retries or reconnects must give up soon once `abort` is set
    /// (shutdown ran out of time).
    ///
    /// # Errors
    /// Why the event was given up on; it is counted as failed and the next event is tried
    /// anyway, so a sink whose connection broke reconnects on a later call.
    fn deliver(&mut self, event: &Event, abort: &AtomicBool) -> Result<Delivery, String>;

    /// Called on the sink's thread about every [`TICK`], between events or when none come: a
    /// sink with a spool replays some of it here. Must give up soon once `abort` is set.
    fn tick(&mut self, _abort: &AtomicBool) {}

    /// The counters of the sink's spool, if it has one; asked once, before the thread starts.
    fn spool(&self) -> Option<Arc<SpoolCounters>> {
        None
    }

    /// Called once on the sink's thread when its queue is closed and drained (or abandoned):
    /// flush buffers, say goodbye to a server. Must not block for long.
    fn close(&mut self) {}
}

/// What became of an event a sink accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to its destination.
    Delivered,
    /// Kept in the sink's on-disk spool, to be delivered when the destination is back
    /// (counted in the spool's counters, and as delivered once replayed).
    Spooled,
}

/// How often a sink's [`Sink::tick`] runs.
pub const TICK: Duration = Duration::from_millis(250);

/// Registers the sinks: declares each sink's module and generates the `type`-tagged
/// [`SinkConfig`] enum with one variant per sink, and [`SinkConfig::settings`].
///
/// `with_settings` lists `Variant => module::Settings`: the variant name lowercased is the
/// `type`, `module` is the file `sink/module.rs`, `Settings` its [`SinkSettings`] struct.
/// `without_settings` lists sinks that have no keys (`Variant => module::UnitStruct`, a unit struct implementing [`SinkSettings`]): their
/// variant is a unit variant, so `SinkConfig::Stdout` stays a plain value.
macro_rules! sinks {
    (
        without_settings { $( $(#[$unit_doc:meta])* $unit:ident => $unit_module:ident :: $unit_settings:ident, )* }
        with_settings { $( $(#[$doc:meta])* $variant:ident => $module:ident :: $settings:ident, )* }
    ) => {
        $( pub mod $unit_module; )*
        $( pub mod $module; )*

        /// Where alerts go: one variant per sink, tagged by `type`.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
        pub enum SinkConfig {
            $( $(#[$unit_doc])* $unit, )*
            $( $(#[$doc])* $variant($module::$settings), )*
        }

        impl SinkConfig {
            /// The chosen sink's settings.
            #[must_use]
            pub fn settings(&self) -> &dyn SinkSettings {
                match self {
                    $( SinkConfig::$unit => &$unit_module::$unit_settings, )*
                    $( SinkConfig::$variant(settings) => settings, )*
                }
            }
        }

        $(
            impl From<$module::$settings> for SinkConfig {
                fn from(settings: $module::$settings) -> Self {
                    SinkConfig::$variant(settings)
                }
            }
        )*
    };
}

sinks! {
    without_settings {
        /// One JSON line per event on standard output.
        Stdout => stdout::StdoutSettings,
    }
    with_settings {
        /// One JSON line per event appended to a file; follows logrotate's renames.
        File => file::FileSettings,
        /// RFC 5424 messages over a datagram socket.
        Syslog => syslog::SyslogSettings,
        /// HTTP POST of each event (`Content-Type: application/json`), retried with backoff.
        Webhook => webhook::WebhookSettings,
        /// Published to NATS `JetStream` and acknowledged by the stream (at-least-once).
        Nats => nats::NatsSettings,
    }
}

/// One `[[alerts.sinks]]` entry: the sink and the bound of its queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkSpec {
    #[serde(flatten)]
    pub kind: SinkConfig,
    /// Events waiting for this sink beyond this many are dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    DEFAULT_QUEUE
}

/// How serious an event is: one scale for the whole agent (see [`crate::detect::Severity`]).
pub use crate::detect::Severity;

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
    /// [`SinkSettings::name`]: `stdout`, `file:PATH`, `syslog:ADDRESS`, `webhook:URL`
    /// (credentials hidden), ...
    pub name: String,
    pub delivered: u64,
    /// Events refused because the queue was full.
    pub dropped: u64,
    /// Events given up on: write errors, or a webhook still failing after its retries.
    pub failed: u64,
    /// The sink's on-disk spool (the `nats` sink's `spool`): `delivered` includes what it
    /// replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolStats>,
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
        self.settings().validate()
    }

    /// The sink's name in stats and logs.
    #[must_use]
    pub fn name(&self) -> String {
        self.settings().name()
    }

    /// Opens the sink ([`SinkSettings::open`]).
    ///
    /// # Errors
    /// What could not be opened.
    pub fn open(&self) -> io::Result<Box<dyn Sink>> {
        self.settings().open()
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
    spool: Option<Arc<SpoolCounters>>,
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
        let opened = specs
            .iter()
            .enumerate()
            .map(|(index, spec)| {
                spec.validate().map_err(|reason| SinkError::Invalid { index, reason })?;
                let name = spec.kind.name();
                let sink = spec.kind.open().map_err(|source| SinkError::Open { name: name.clone(), source })?;
                Ok((name, sink, spec.queue))
            })
            .collect::<Result<Vec<_>, SinkError>>()?;
        let abort = Arc::new(AtomicBool::new(false));
        let mut sinks = Sinks { workers: Vec::with_capacity(opened.len()), abort };
        for (index, (name, sink, queue)) in opened.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel(queue);
            let counters = Arc::new(Counters::default());
            let spool = sink.spool();
            let (worker_name, worker_counters, abort) = (name.clone(), counters.clone(), sinks.abort.clone());
            let mut builder = thread::Builder::new().name(format!("alert-sink-{index}"));
            if let Some(size) = stack_size {
                builder = builder.stack_size(size);
            }
            // On an error `sinks` drops: the threads started so far see their queues close and end.
            let thread = builder
                .spawn(move || run_worker(&worker_name, sink, &rx, &worker_counters, &abort))
                .map_err(|source| SinkError::Spawn { name: name.clone(), source })?;
            info!(sink = %name, queue, "alert sink started");
            sinks.workers.push(Worker { name, counters, spool, tx, thread });
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
            .map(|w| {
                let spool = w.spool.as_ref().map(|s| s.snapshot());
                SinkStats {
                    name: w.name.clone(),
                    delivered: w.counters.delivered.load(Ordering::Relaxed)
                        + spool.map_or(0, |s| s.alerts.replayed + s.flows.replayed),
                    dropped: w.counters.dropped.load(Ordering::Relaxed),
                    failed: w.counters.failed.load(Ordering::Relaxed),
                    spool,
                }
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

/// A sink's thread: delivers what its queue holds until the queue closes, counting and
/// (throttled) logging the failures, and ticks the sink about every [`TICK`].
fn run_worker(name: &str, mut sink: Box<dyn Sink>, rx: &Receiver<Arc<Event>>, counters: &Counters, abort: &AtomicBool) {
    let mut log = ThrottledLog::new(FAILURE_LOG_INTERVAL);
    let mut last_tick = Instant::now();
    loop {
        let event = match rx.recv_timeout(TICK) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(event) = event {
            if abort.load(Ordering::Relaxed) {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match sink.deliver(&event, abort) {
                Ok(delivery) => {
                    if delivery == Delivery::Delivered {
                        counters.delivered.fetch_add(1, Ordering::Relaxed);
                    }
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
        if last_tick.elapsed() >= TICK && !abort.load(Ordering::Relaxed) {
            sink.tick(abort);
            last_tick = Instant::now();
        }
    }
    sink.close();
    debug!(sink = name, "alert sink stopped");
}

/// Runs `attempt` until it succeeds, at most `max_retries` more times after the first, waiting
/// `backoff` doubled each time (at most [`MAX_BACKOFF`]), and gives up early once `abort` is
/// set. `sink` names the sink in the debug line of each retry.
///
/// # Errors
/// The last attempt's error, with the number of attempts.
fn retry(
    sink: &str,
    max_retries: u32,
    backoff: Duration,
    abort: &AtomicBool,
    mut attempt: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut delay = backoff.min(MAX_BACKOFF);
    let mut tries = 0;
    loop {
        let error = match attempt() {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if tries >= max_retries || abort.load(Ordering::Relaxed) {
            return Err(format!("{error} (gave up after {} attempts)", tries + 1));
        }
        debug!(sink, %error, ?delay, "delivery failed; retrying");
        let wake = Instant::now() + delay;
        while Instant::now() < wake && !abort.load(Ordering::Relaxed) {
            thread::sleep((wake - Instant::now()).min(Duration::from_millis(50)));
        }
        delay = delay.saturating_mul(2).min(MAX_BACKOFF);
        tries += 1;
    }
}

/// Helpers shared by the sinks' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};
    use std::{fs, thread};

    use super::{Event, Severity, SinkConfig, SinkSpec, SinkStats, Sinks};

    pub fn event(n: usize) -> Event {
        Event {
            json: format!(r#"{{"n":{n},"msg":"ü"}}"#),
            severity: Severity::Medium,
            timestamp_ns: 1_795_255_200_123_456_789,
        }
    }

    /// A fresh, empty directory for one test.
    pub fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vigil-sink-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    pub fn spec(kind: impl Into<SinkConfig>, queue: usize) -> SinkSpec {
        SinkSpec { kind: kind.into(), queue }
    }

    /// Polls until `done` holds for the first sink's stats, panicking after 10 s.
    pub fn wait_for(sinks: &Sinks, done: impl Fn(&SinkStats) -> bool) -> SinkStats {
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
}

#[cfg(test)]
mod tests {
    use super::file::FileSettings;
    use super::syslog::SyslogSettings;
    use super::testing::{event, spec};
    use super::webhook::WebhookSettings;
    use super::*;

    /// A sink that records what it was given, for the worker's own tests.
    struct Recorder {
        fail: bool,
        seen: Arc<std::sync::Mutex<Vec<String>>>,
        closed: Arc<AtomicBool>,
    }

    impl Sink for Recorder {
        fn deliver(&mut self, event: &Event, _abort: &AtomicBool) -> Result<Delivery, String> {
            self.seen.lock().unwrap().push(event.json.clone());
            if self.fail { Err("refused".into()) } else { Ok(Delivery::Delivered) }
        }
        fn close(&mut self) {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_worker_counts_and_closes_the_sink() {
        for fail in [false, true] {
            let seen = Arc::default();
            let closed = Arc::new(AtomicBool::new(false));
            let sink = Recorder { fail, seen: Arc::clone(&seen), closed: Arc::clone(&closed) };
            let (tx, rx) = mpsc::sync_channel(10);
            (0..3).for_each(|n| tx.send(Arc::new(event(n))).unwrap());
            drop(tx);
            let counters = Counters::default();
            run_worker("recorder", Box::new(sink), &rx, &counters, &AtomicBool::new(false));
            let counts = (counters.delivered.into_inner(), counters.failed.into_inner());
            assert_eq!(counts, if fail { (0, 3) } else { (3, 0) });
            assert_eq!(*seen.lock().unwrap(), (0..3).map(|n| event(n).json).collect::<Vec<_>>());
            assert!(closed.load(Ordering::Relaxed), "close runs once the queue is drained");
        }
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
        let syslog = |address: &str| SyslogSettings {
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
        app.app_name = "has space".into();
        assert!(err(spec(app, 1)).starts_with("syslog app_name"));
        let Err(SinkError::Invalid { index: 1, reason }) =
            Sinks::start(&[spec(SinkConfig::Stdout, 1), spec(SinkConfig::Stdout, 0)])
        else {
            panic!("start must reject the second sink");
        };
        assert!(reason.contains("queue"));
    }

    fn webhook(url: &str, allow_http: bool) -> WebhookSettings {
        WebhookSettings {
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
            spec(FileSettings { path: "/var/log/vigil/alerts.jsonl".into() }, 500),
            spec(
                SyslogSettings {
                    address: "unix:///dev/log".into(),
                    facility: Facility::Authpriv,
                    hostname: None,
                    app_name: "vigil".into(),
                },
                DEFAULT_QUEUE,
            ),
            spec(
                WebhookSettings {
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
                WebhookSettings {
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

    #[test]
    fn serialised_shape_is_flat_and_tagged() {
        let specs = [
            spec(SinkConfig::Stdout, 7),
            spec(FileSettings { path: "/a".into() }, 1),
            spec(webhook("https://h/x", false), 2),
        ];
        let json: Vec<serde_json::Value> = specs.iter().map(|s| serde_json::to_value(s).unwrap()).collect();
        assert_eq!(json[0], serde_json::json!({"type": "stdout", "queue": 7}));
        assert_eq!(json[1], serde_json::json!({"type": "file", "path": "/a", "queue": 1}));
        assert_eq!(
            json[2],
            serde_json::json!({"type": "webhook", "url": "https://h/x", "timeout": "1s", "max_retries": 1,
                "backoff": "10ms", "allow_http": false, "queue": 2})
        );
        let error = serde_json::from_value::<SinkSpec>(serde_json::json!({"type": "file", "pth": "/a"}))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `pth`"), "{error}");
    }
}
