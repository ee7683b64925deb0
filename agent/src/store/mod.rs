//! The embedded store: the host's history in `SQLite` (WAL), for `vigil query` and the console.
//!
//! What the agent records ([`Record`]): every alert it sends (the ECS document and indexed
//! columns), every block action (block, unblock, dry run, refusal), per-minute flow
//! aggregates (per source, destination and service: flows, packets, bytes, anomalous flows;
//! [`aggregate::FlowMinutes`]), the models it scored with, and a health snapshot a minute.
//!
//! Nothing on the live path waits for the disk: [`Store::record`] only `try_send`s to a
//! bounded queue, and one writer thread ([`writer`]) batches what it finds there into
//! transactions. A full queue drops the record and counts it; a store that cannot be opened
//! (corrupt, locked, a newer schema, a full disk) or fails while writing is logged, counted in
//! the metrics and retried, and detection and blocking go on without it. Retention runs on the
//! writer thread: rows older than their table's age limit go, and then the oldest flow
//! aggregates (and if need be alerts and actions) until the file fits its size cap.

pub mod addr;
pub mod aggregate;
pub mod query;
pub mod recorder;
pub mod schema;
mod writer;

pub use recorder::Recorder;
pub use writer::{insert_alerts, insert_fleet, insert_flow_batches, insert_health_rows, open as open_for_writing};

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::config::HumanDuration;

/// Where the store is unless `store.path` says otherwise.
pub const DEFAULT_PATH: &str = "/var/lib/vigil/vigil.db";

/// `[store]`: where history is kept and for how long.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// Keep history (`false`: alerts only leave through the sinks).
    pub enabled: bool,
    /// The database file (created mode 0600; its directory must be the agent's own).
    pub path: PathBuf,
    /// Alerts, actions, models and health snapshots older than this are deleted.
    pub retention: HumanDuration,
    /// Per-minute flow aggregates older than this are deleted.
    pub flow_retention: HumanDuration,
    /// The database's pages in use are kept under this many MiB: the oldest flow aggregates go
    /// first, then the oldest alerts and actions.
    pub max_size_mb: u64,
    /// Records waiting for the writer at most; beyond it they are dropped and counted
    /// (`vigil_store_records_total{outcome="dropped"}`).
    pub queue: usize,
    /// Flow aggregate rows one minute may hold; conversations beyond it are added to one row
    /// per minute with source and destination `::` and port 0 ("other"), so a scan or a
    /// spoofed flood cannot grow the store without bound.
    pub max_flow_rows: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            enabled: true,
            path: PathBuf::from(DEFAULT_PATH),
            retention: HumanDuration(Duration::from_hours(30 * 24)),
            flow_retention: HumanDuration(Duration::from_hours(7 * 24)),
            max_size_mb: 1024,
            queue: 10_000,
            max_flow_rows: 20_000,
        }
    }
}

impl StoreSection {
    /// Checks values that parse but cannot work.
    ///
    /// # Errors
    /// The field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.enabled {
            return Ok(());
        }
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(("store.path", "must name a file".to_owned()));
        }
        if self.retention.0 < Duration::from_mins(1) || self.flow_retention.0 < Duration::from_mins(1) {
            return Err(("store.retention", "and store.flow_retention must be at least 1m".to_owned()));
        }
        if self.max_size_mb == 0 || self.max_size_mb > 1 << 20 {
            return Err(("store.max_size_mb", "must be between 1 and 1048576".to_owned()));
        }
        if self.queue == 0 || self.queue > 1_000_000 {
            return Err(("store.queue", "must be between 1 and 1000000".to_owned()));
        }
        if self.max_flow_rows == 0 || self.max_flow_rows > 1_000_000 {
            return Err(("store.max_flow_rows", "must be between 1 and 1000000".to_owned()));
        }
        Ok(())
    }
}

/// Why the store cannot be used; the agent reports it and goes on without history.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error(
        "store {path} has schema version {version}, newer than this vigil's ({}); it is left untouched: \
         run the vigil that wrote it, or point store.path elsewhere",
        schema::VERSION
    )]
    NewerSchema { path: PathBuf, version: i64 },
    #[error(
        "store {path} has schema version {version}, older than this vigil's ({}): start the agent once to migrate it",
        schema::VERSION
    )]
    OlderSchema { path: PathBuf, version: i64 },
    #[error("no store at {path}: the agent creates it when it runs with store.enabled (the default)")]
    Missing { path: PathBuf },
    #[error("starting the store's writer thread: {0}")]
    Thread(std::io::Error),
}

/// An alert as stored: the document sent to the sinks and the columns searched on.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRow {
    pub time_ms: i64,
    /// `event.id`.
    pub event_id: String,
    pub severity: crate::detect::Severity,
    /// `event.action` (the attack kind, once alerts carry one).
    pub kind: String,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub destination_port: Option<u16>,
    /// The top flow's combined score.
    pub score: Option<f32>,
    pub model_sha256: String,
    pub model_phase: String,
    pub message: String,
    /// The ECS document, as the sinks got it.
    pub document: String,
}

impl AlertRow {
    /// The row of an alert document as the sinks send it (ECS, docs/deploy.md): what the fleet
    /// collector stores for an alert another host raised. `None` for a document that is not
    /// an alert (`event.kind`) or lacks its id or time.
    #[must_use]
    pub fn from_document(json: &str) -> Option<AlertRow> {
        let doc: serde_json::Value = serde_json::from_str(json).ok()?;
        if doc["event"]["kind"] != "alert" {
            return None;
        }
        let event_id = doc["event"]["id"].as_str()?.to_owned();
        let time = humantime::parse_rfc3339(doc["@timestamp"].as_str()?).ok()?;
        let time_ms = i64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
        let severity = serde_json::from_value(doc["vigil"]["severity"].clone()).ok()?;
        let ip = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<IpAddr>().ok());
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        #[expect(clippy::cast_possible_truncation, reason = "a score")]
        Some(AlertRow {
            time_ms,
            event_id,
            severity,
            kind: text(&doc["event"]["action"]),
            source: ip(&doc["source"]["ip"]),
            destination: ip(&doc["destination"]["ip"]),
            destination_port: doc["destination"]["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
            score: doc["vigil"]["score"]["combined"].as_f64().map(|s| s as f32),
            model_sha256: text(&doc["vigil"]["model"]["sha256"]),
            model_phase: text(&doc["vigil"]["model"]["phase"]),
            message: text(&doc["message"]),
            document: json.to_owned(),
        })
    }
}

/// A block action as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionRow {
    pub time_ms: i64,
    /// `block`, `unblock`, `block-dry-run`, `block-refused`.
    pub action: String,
    pub source: Option<IpAddr>,
    pub prefix: Option<String>,
    /// `auto` or `manual` (rules), none for dry runs and refusals.
    pub origin: Option<String>,
    /// When a block's rule lapses (Unix ms).
    pub expires_ms: Option<i64>,
    pub reason: Option<String>,
    pub message: String,
    pub document: String,
}

impl ActionRow {
    /// The row of a block event as the sinks send it (ECS: `event.kind` `event`, `event.action`
    /// one of `block`, `unblock`, `block-dry-run`, `block-refused`): what the fleet collector
    /// stores for another host's action. `None` for any other document.
    #[must_use]
    pub fn from_document(json: &str) -> Option<ActionRow> {
        let doc: serde_json::Value = serde_json::from_str(json).ok()?;
        let action = doc["event"]["action"].as_str()?;
        if doc["event"]["kind"] != "event" || !["block", "unblock", "block-dry-run", "block-refused"].contains(&action)
        {
            return None;
        }
        let time = humantime::parse_rfc3339(doc["@timestamp"].as_str()?).ok()?;
        let time_ms = i64::try_from(time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis()).ok()?;
        let rule = &doc["vigil"]["rule"];
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        // A block's rule lapses `expires_in` after the event (`1h 30m`, humantime).
        let expires_ms = (action == "block")
            .then(|| rule["expires_in"].as_str())
            .flatten()
            .and_then(|s| humantime::parse_duration(s).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .map(|d| time_ms.saturating_add(d));
        Some(ActionRow {
            time_ms,
            action: action.to_owned(),
            source: doc["source"]["ip"].as_str().and_then(|s| s.parse().ok()),
            prefix: text(&rule["prefix"]),
            origin: text(&rule["origin"]),
            expires_ms,
            reason: text(&doc["event"]["reason"]),
            message: text(&doc["message"]).unwrap_or_default(),
            document: json.to_owned(),
        })
    }
}

/// One minute of one source's traffic to one service of one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    /// Unix minutes.
    pub minute: i64,
    pub source: IpAddr,
    pub destination: IpAddr,
    pub protocol: u8,
    /// The responder's port (0 for protocols without ports, and for the "other" row).
    pub port: u16,
    /// Conversations active in the minute.
    pub flows: u64,
    /// Packets and bytes of both directions in the minute.
    pub packets: u64,
    pub bytes: u64,
    /// Conversations that scored at or above the alert threshold in the minute.
    pub anomalous: u64,
}

/// The sensor's health at one moment (running totals since the sensor was loaded). Also in
/// the fleet's heartbeats, which the collector stores per host.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthRow {
    pub time_ms: i64,
    pub packets: u64,
    pub bytes: u64,
    pub malformed: u64,
    pub blocklist_drops: u64,
    pub flows_tracked: u64,
    pub flow_capacity: u64,
    pub harvest_ms: f64,
    pub scoring_ms: f64,
    pub flows_scored: u64,
    pub alerts: u64,
    pub rules_active: u64,
    pub model_sha256: String,
    pub model_phase: String,
    /// Records the store dropped so far (queue full).
    pub store_dropped: u64,
}

/// A model the agent scored with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRow {
    pub time_ms: i64,
    pub sha256: String,
    pub name: String,
    pub phase: String,
}

/// What goes into the store.
#[derive(Clone, Debug)]
pub enum Record {
    Alert(Box<AlertRow>),
    Action(Box<ActionRow>),
    Flows(Vec<FlowRow>),
    Health(Box<HealthRow>),
    Model(ModelRow),
}

impl Record {
    /// Its table, as the metrics label it.
    #[must_use]
    pub const fn table(&self) -> Table {
        match self {
            Self::Alert(_) => Table::Alerts,
            Self::Action(_) => Table::Actions,
            Self::Flows(_) => Table::FlowMinutes,
            Self::Health(_) => Table::Health,
            Self::Model(_) => Table::Models,
        }
    }

    /// Rows it holds.
    #[must_use]
    pub fn rows(&self) -> u64 {
        match self {
            Self::Flows(rows) => rows.len() as u64,
            _ => 1,
        }
    }
}

/// The store's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Table {
    Alerts,
    Actions,
    FlowMinutes,
    Health,
    Models,
}

impl Table {
    pub const ALL: [Self; 5] = [Self::Alerts, Self::Actions, Self::FlowMinutes, Self::Health, Self::Models];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::Actions => "actions",
            Self::FlowMinutes => "flow_minutes",
            Self::Health => "health",
            Self::Models => "models",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Counters the writer and the agent share; read for metrics, status and health.
#[derive(Default)]
pub struct StoreCounters {
    /// Rows committed, per table.
    written: [AtomicU64; 5],
    /// Rows dropped because the queue was full, per table.
    dropped: [AtomicU64; 5],
    /// Rows lost to a store that could not be opened or written.
    failed: [AtomicU64; 5],
    /// Rows deleted by retention.
    expired: AtomicU64,
    /// The database is open and the last write worked.
    up: AtomicBool,
    /// Pages in use × page size, as of the last maintenance.
    size_bytes: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// A snapshot of [`StoreCounters`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub path: PathBuf,
    pub up: bool,
    pub written: u64,
    pub dropped: u64,
    pub failed: u64,
    pub expired: u64,
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl StoreCounters {
    fn add(counters: &[AtomicU64; 5], table: Table, rows: u64) {
        counters[table.index()].fetch_add(rows, Ordering::Relaxed);
    }

    /// Per table: written, dropped, failed.
    #[must_use]
    pub fn by_table(&self) -> Vec<(Table, [u64; 3])> {
        Table::ALL
            .iter()
            .map(|&t| {
                let i = t.index();
                (
                    t,
                    [
                        self.written[i].load(Ordering::Relaxed),
                        self.dropped[i].load(Ordering::Relaxed),
                        self.failed[i].load(Ordering::Relaxed),
                    ],
                )
            })
            .collect()
    }

    fn set_error(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }
}

/// The agent's handle on the store: a bounded queue to the writer thread.
pub struct Store {
    tx: Option<SyncSender<Record>>,
    counters: Arc<StoreCounters>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
    host: String,
}

impl Store {
    /// Starts the writer for `section` as host `host`. The database is opened on the calling
    /// thread first, so a store that cannot be used is reported at start (and the writer keeps
    /// trying to open it); only a thread that cannot start is an error.
    ///
    /// # Errors
    /// [`StoreError::Thread`].
    pub fn start(section: &StoreSection, host: &str) -> Result<Self, StoreError> {
        Self::start_with(section, host, writer::REOPEN_EVERY, writer::MAINTAIN_EVERY)
    }

    /// [`Store::start`] with how often the writer retries opening and runs retention.
    ///
    /// # Errors
    /// [`StoreError::Thread`].
    pub fn start_with(
        section: &StoreSection,
        host: &str,
        reopen_every: Duration,
        maintain_every: Duration,
    ) -> Result<Self, StoreError> {
        let counters = Arc::new(StoreCounters::default());
        let conn = match writer::open(&section.path) {
            Ok(conn) => {
                counters.up.store(true, Ordering::Relaxed);
                Some(conn)
            }
            Err(e) => {
                warn!(error = %e, "the store cannot be used; detection and blocking go on without history (retrying every {}s)", reopen_every.as_secs());
                counters.set_error(Some(e.to_string()));
                None
            }
        };
        let (tx, rx) = mpsc::sync_channel(section.queue);
        let mut settings = writer::Settings::from_section(section, host);
        (settings.reopen_every, settings.maintain_every) = (reopen_every, maintain_every);
        let shared = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer::run(&settings, conn, &rx, &shared))
            .map_err(StoreError::Thread)?;
        Ok(Self { tx: Some(tx), counters, thread: Some(thread), path: section.path.clone(), host: host.to_owned() })
    }

    /// Queues `record` for the writer. Never blocks: a full queue drops it (counted).
    pub fn record(&self, record: Record) {
        let Some(tx) = &self.tx else { return };
        let (table, rows) = (record.table(), record.rows());
        match tx.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                StoreCounters::add(&self.counters.dropped, table, rows);
            }
        }
    }

    /// The host every row is written for.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The counters, for the metrics.
    #[must_use]
    pub fn counters(&self) -> &StoreCounters {
        &self.counters
    }

    /// Totals over all tables, for the status file and health rows.
    #[must_use]
    pub fn stats(&self) -> StoreStats {
        let c = &self.counters;
        let sum = |a: &[AtomicU64; 5]| a.iter().map(|v| v.load(Ordering::Relaxed)).sum();
        StoreStats {
            path: self.path.clone(),
            up: c.up.load(Ordering::Relaxed),
            written: sum(&c.written),
            dropped: sum(&c.dropped),
            failed: sum(&c.failed),
            expired: c.expired.load(Ordering::Relaxed),
            size_bytes: c.size_bytes.load(Ordering::Relaxed),
            last_error: c.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Closes the queue and waits up to `timeout` for the writer to commit what it holds.
    pub fn shutdown(mut self, timeout: Duration) {
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else { return };
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if thread.is_finished() {
            if thread.join().is_err() {
                warn!("the store's writer thread panicked");
            }
        } else {
            warn!(path = %self.path.display(), "the store did not finish writing before the shutdown timeout; leaving it");
        }
    }
}

#[cfg(test)]
mod tests;
