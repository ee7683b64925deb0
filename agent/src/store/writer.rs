//! The store's writer thread: batches records into transactions, keeps the database within
//! its retention limits, and survives a database that fails (reopened every
//! [`REOPEN_EVERY`]; rows meanwhile are counted as failed, detection is not touched).

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, mpsc::Receiver},
    time::{Duration, Instant},
};

use rusqlite::{Connection, ErrorCode, params};
use tracing::{debug, info, warn};

use super::{
    ActionRow, AlertRow, FlowRow, HealthRow, ModelRow, Record, StoreCounters, StoreError, StoreSection, Table, addr,
    schema,
};
use crate::throttle::ThrottledLog;

/// Adds a minute row to `flow_minutes`: a row already there for the key grows.
const INSERT_FLOW_MINUTE: &str = "INSERT INTO flow_minutes (minute, host, source, destination, protocol, port, flows, \
     packets, bytes, anomalous) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
     ON CONFLICT (minute, host, source, destination, protocol, port) DO UPDATE SET flows = flows + excluded.flows, \
     packets = packets + excluded.packets, bytes = bytes + excluded.bytes, anomalous = anomalous + excluded.anomalous";
/// Records one transaction takes at most (flow batches count as one).
pub const MAX_BATCH: usize = 2_000;
/// How long the writer waits for more records before committing what it has.
const BATCH_WAIT: Duration = Duration::from_millis(200);
/// How often retention runs and the size gauge is updated.
pub const MAINTAIN_EVERY: Duration = Duration::from_mins(1);
/// How often a store that cannot be opened is tried again.
pub const REOPEN_EVERY: Duration = Duration::from_secs(30);

/// What the writer needs from the configuration.
pub struct Settings {
    pub path: PathBuf,
    pub host: String,
    pub retention: Duration,
    pub flow_retention: Duration,
    pub max_size_bytes: u64,
    pub maintain_every: Duration,
    pub reopen_every: Duration,
}

impl Settings {
    pub fn from_section(section: &StoreSection, host: &str) -> Self {
        Self {
            path: section.path.clone(),
            host: host.to_owned(),
            retention: section.retention.0,
            flow_retention: section.flow_retention.0,
            max_size_bytes: section.max_size_mb.saturating_mul(1 << 20),
            maintain_every: MAINTAIN_EVERY,
            reopen_every: REOPEN_EVERY,
        }
    }
}

/// Opens (creating and migrating) the database at `path`, its directory made the agent's own
/// first.
///
/// # Errors
/// The directory or file cannot be made or opened, or its schema is newer than this vigil's.
pub fn open(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::private_dir::ensure(dir)
            .map_err(|e| StoreError::Io { path: path.to_owned(), source: std::io::Error::other(e.to_string()) })?;
    }
    schema::open_for_writing(path)
}

/// The writer's loop: until the queue closes, take what is queued (up to [`MAX_BATCH`]),
/// write it in one transaction, and maintain the database every `maintain_every`.
pub fn run(settings: &Settings, mut conn: Option<Connection>, rx: &Receiver<Record>, counters: &StoreCounters) {
    let mut log = ThrottledLog::new(Duration::from_secs(10));
    let mut next_open = Instant::now() + settings.reopen_every;
    let mut next_maintain = Instant::now();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut running = true;
    while running {
        match rx.recv_timeout(BATCH_WAIT) {
            Ok(record) => batch.push(record),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => running = false,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        if conn.is_none() && (now >= next_open || !running) {
            next_open = now + settings.reopen_every;
            match open(&settings.path) {
                Ok(c) => {
                    info!(path = %settings.path.display(), "store opened; history is recorded again");
                    counters.up.store(true, Ordering::Relaxed);
                    counters.set_error(None);
                    conn = Some(c);
                }
                Err(e) => counters.set_error(Some(e.to_string())),
            }
        }
        if !batch.is_empty() {
            write(&mut conn, settings, &mut batch, counters, &mut log);
        }
        if let Some(c) = &conn
            && (now >= next_maintain || !running)
        {
            next_maintain = now + settings.maintain_every;
            if let Err(e) = maintain(c, settings, counters) {
                warn!(error = %e, path = %settings.path.display(), "store maintenance (retention) failed");
            }
        }
    }
    debug!("store writer stopped");
}

/// Writes `batch` in one transaction and empties it; a failure counts its rows as failed, and
/// a database that turned out unusable is closed to be opened again later.
fn write(
    conn: &mut Option<Connection>,
    settings: &Settings,
    batch: &mut Vec<Record>,
    counters: &StoreCounters,
    log: &mut ThrottledLog,
) {
    let result = match conn.as_mut() {
        Some(c) => insert(c, &settings.host, batch).map_err(|e| {
            let fatal = matches!(
                e.sqlite_error_code(),
                Some(
                    ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::CannotOpen | ErrorCode::ReadOnly
                )
            );
            (e.to_string(), fatal)
        }),
        None => Err(("not open".to_owned(), false)),
    };
    match result {
        Ok(()) => {
            for r in batch.iter() {
                StoreCounters::add(&counters.written, r.table(), r.rows());
            }
            if !counters.up.swap(true, Ordering::Relaxed) || log.success().is_some() {
                counters.set_error(None);
                info!(path = %settings.path.display(), "store writes recovered");
            }
        }
        Err((error, fatal)) => {
            let rows: u64 = batch.iter().map(Record::rows).sum();
            for r in batch.iter() {
                StoreCounters::add(&counters.failed, r.table(), r.rows());
            }
            counters.up.store(false, Ordering::Relaxed);
            let message = format!("store {}: {error}", settings.path.display());
            if conn.is_some() {
                counters.set_error(Some(message.clone()));
            }
            if let Some(failed) = log.failures(rows, Instant::now()) {
                warn!(
                    error = message,
                    failed_rows = failed,
                    "store write failed; detection goes on (counted in vigil_store_rows_total{{outcome=\"failed\"}})"
                );
            }
            if fatal {
                *conn = None;
            }
        }
    }
    batch.clear();
}

/// Inserts every record of `batch` in one transaction.
pub(super) fn insert(conn: &mut Connection, host: &str, batch: &[Record]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut alerts = None;
        let mut actions = None;
        let mut flows = None;
        for record in batch {
            match record {
                Record::Alert(a) => {
                    let stmt = match &mut alerts {
                        Some(s) => s,
                        None => alerts.insert(tx.prepare(INSERT_ALERT)?),
                    };
                    insert_alert(stmt, host, a)?;
                }
                Record::Action(a) => {
                    let stmt = match &mut actions {
                        Some(s) => s,
                        None => actions.insert(tx.prepare(
                            "INSERT INTO actions (host, time_ms, action, source, prefix, origin, expires_ms, reason, \
                             message, document) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                        )?),
                    };
                    insert_action(stmt, host, a)?;
                }
                Record::Flows(rows) => {
                    let stmt = match &mut flows {
                        Some(s) => s,
                        None => flows.insert(tx.prepare(INSERT_FLOW_MINUTE)?),
                    };
                    for row in rows {
                        insert_flow(stmt, host, row)?;
                    }
                }
                Record::Health(h) => insert_health(&tx, host, h)?,
                Record::Model(m) => insert_model(&tx, host, m)?,
            }
        }
    }
    tx.commit()
}

fn ip(ip: Option<std::net::IpAddr>) -> Option<[u8; 16]> {
    ip.map(addr::key)
}

/// `SQLite` integers are signed: counters beyond `i64::MAX` are stored as `i64::MAX`.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const INSERT_ALERT: &str = "INSERT OR IGNORE INTO alerts (host, event_id, time_ms, severity, kind, source, destination, \
     destination_port, score, model_sha256, model_phase, message, document) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";

/// Alerts of many hosts in one transaction, each once (`INSERT OR IGNORE` on host and
/// `event.id`): what the fleet collector writes. Answers how many were new.
///
/// # Errors
/// The transaction fails (nothing of it is kept).
pub fn insert_alerts<'a>(
    conn: &mut Connection,
    rows: impl IntoIterator<Item = (&'a str, &'a AlertRow)>,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let before = tx.total_changes();
    {
        let mut stmt = tx.prepare(INSERT_ALERT)?;
        for (host, row) in rows {
            insert_alert(&mut stmt, host, row)?;
        }
    }
    let new = tx.total_changes() - before;
    tx.commit()?;
    Ok(usize::try_from(new).unwrap_or(usize::MAX))
}

/// Alerts and block actions of many hosts in one transaction, each once: alerts by host and
/// `event.id`, actions (which carry no id) by host, time, action and prefix. What the fleet
/// collector writes. Answers how many of each were new.
///
/// # Errors
/// The transaction fails (nothing of it is kept).
pub fn insert_fleet<'a>(
    conn: &mut Connection,
    alerts: impl IntoIterator<Item = (&'a str, &'a AlertRow)>,
    actions: impl IntoIterator<Item = (&'a str, &'a ActionRow)>,
) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction()?;
    let before = tx.total_changes();
    {
        let mut stmt = tx.prepare(INSERT_ALERT)?;
        for (host, row) in alerts {
            insert_alert(&mut stmt, host, row)?;
        }
    }
    let middle = tx.total_changes();
    {
        let mut stmt = tx.prepare(
            "INSERT INTO actions (host, time_ms, action, source, prefix, origin, expires_ms, reason, message, document) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10 WHERE NOT EXISTS (SELECT 1 FROM actions \
             WHERE time_ms = ?2 AND host = ?1 AND action = ?3 AND prefix IS ?5)",
        )?;
        for (host, row) in actions {
            insert_action(&mut stmt, host, row)?;
        }
    }
    let after = tx.total_changes();
    tx.commit()?;
    let count = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok((count(middle - before), count(after - middle)))
}

fn insert_alert(stmt: &mut rusqlite::Statement<'_>, host: &str, a: &AlertRow) -> rusqlite::Result<()> {
    stmt.execute(params![
        host,
        a.event_id,
        a.time_ms,
        i64::from(a.severity.ecs()),
        a.kind,
        ip(a.source),
        ip(a.destination),
        a.destination_port,
        a.score.map(f64::from),
        a.model_sha256,
        a.model_phase,
        a.message,
        a.document
    ])?;
    Ok(())
}

fn insert_action(stmt: &mut rusqlite::Statement<'_>, host: &str, a: &ActionRow) -> rusqlite::Result<()> {
    stmt.execute(params![
        host,
        a.time_ms,
        a.action,
        ip(a.source),
        a.prefix,
        a.origin,
        a.expires_ms,
        a.reason,
        a.message,
        a.document
    ])?;
    Ok(())
}

fn insert_flow(stmt: &mut rusqlite::Statement<'_>, host: &str, r: &FlowRow) -> rusqlite::Result<()> {
    stmt.execute(params![
        r.minute,
        host,
        addr::key(r.source),
        addr::key(r.destination),
        r.protocol,
        r.port,
        int(r.flows),
        int(r.packets),
        int(r.bytes),
        int(r.anomalous)
    ])?;
    Ok(())
}

/// How long a collector remembers the flow batches it stored: longer than any redelivery
/// (the stream's duplicate window, a consumer's `ack_wait`, an outage's backlog).
pub const BATCHES_KEPT_MS: i64 = 7 * 24 * 3_600_000;

/// Writes flow batches of other hosts (the collector's, from the fleet export) in one
/// transaction: each batch's minute rows are added to `flow_minutes` unless that host's batch
/// id was stored before. Answers the batches and rows written.
///
/// # Errors
/// The database refused the transaction; nothing of it is written.
pub fn insert_flow_batches<'a>(
    conn: &mut Connection,
    batches: impl IntoIterator<Item = (&'a str, &'a str, &'a [FlowRow])>,
    now_ms: i64,
) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction()?;
    let (mut new, mut rows) = (0, 0);
    {
        let mut seen = tx.prepare("INSERT OR IGNORE INTO fleet_batches (host, batch, time_ms) VALUES (?1, ?2, ?3)")?;
        let mut flows = tx.prepare(INSERT_FLOW_MINUTE)?;
        for (host, batch, minutes) in batches {
            if seen.execute(params![host, batch, now_ms])? == 0 {
                continue;
            }
            new += 1;
            for row in minutes {
                insert_flow(&mut flows, host, row)?;
                rows += 1;
            }
        }
    }
    tx.execute("DELETE FROM fleet_batches WHERE time_ms < ?1", [now_ms - BATCHES_KEPT_MS])?;
    tx.commit()?;
    Ok((new, rows))
}

/// Writes health rows of other hosts (the collector's, from heartbeats) in one transaction;
/// a row already there for that host and time is replaced by the same values.
///
/// # Errors
/// The database refused the transaction; nothing of it is written.
pub fn insert_health_rows<'a>(
    conn: &mut Connection,
    rows: impl IntoIterator<Item = (&'a str, &'a HealthRow)>,
) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut n = 0;
    for (host, row) in rows {
        insert_health(&tx, host, row)?;
        n += 1;
    }
    tx.commit()?;
    Ok(n)
}

fn insert_health(tx: &rusqlite::Transaction<'_>, host: &str, h: &HealthRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT OR REPLACE INTO health (host, time_ms, packets, bytes, malformed, blocklist_drops, flows_tracked, \
         flow_capacity, harvest_ms, scoring_ms, flows_scored, alerts, rules_active, model_sha256, model_phase, \
         store_dropped) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            host,
            h.time_ms,
            int(h.packets),
            int(h.bytes),
            int(h.malformed),
            int(h.blocklist_drops),
            int(h.flows_tracked),
            int(h.flow_capacity),
            h.harvest_ms,
            h.scoring_ms,
            int(h.flows_scored),
            int(h.alerts),
            int(h.rules_active),
            h.model_sha256,
            h.model_phase,
            int(h.store_dropped)
        ],
    )?;
    Ok(())
}

fn insert_model(tx: &rusqlite::Transaction<'_>, host: &str, m: &ModelRow) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO models (host, sha256, name, phase, first_ms, last_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
         ON CONFLICT DO UPDATE SET name = excluded.name, phase = excluded.phase, last_ms = excluded.last_ms",
        params![host, m.sha256, m.name, m.phase, m.time_ms],
    )?;
    Ok(())
}

/// Bytes of the pages in use (the file minus its free pages).
pub(super) fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

/// Retention: rows past their age go, then the oldest rows until the pages in use fit
/// `max_size_bytes`; freed pages go back to the file system. Answers the rows deleted.
pub(super) fn maintain(conn: &Connection, settings: &Settings, counters: &StoreCounters) -> rusqlite::Result<u64> {
    let now_ms = i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap_or(i64::MAX);
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let cutoff = now_ms.saturating_sub(ms(settings.retention));
    let flow_cutoff_minute = now_ms.saturating_sub(ms(settings.flow_retention)) / 60_000;
    let mut deleted = 0;
    deleted += conn.execute("DELETE FROM flow_minutes WHERE minute < ?1", [flow_cutoff_minute])?;
    for table in [Table::Alerts, Table::Actions, Table::Health] {
        deleted += conn.execute(&format!("DELETE FROM {} WHERE time_ms < ?1", table.name()), [cutoff])?;
    }
    deleted += conn.execute("DELETE FROM models WHERE last_ms < ?1", [cutoff])?;
    // Over the size cap: a tenth of the oldest rows at a time, flow aggregates first.
    let mut rounds = 0;
    while used_bytes(conn)? > settings.max_size_bytes && rounds < 64 {
        rounds += 1;
        let mut gone = conn.execute(
            "DELETE FROM flow_minutes WHERE minute <= (SELECT minute FROM flow_minutes ORDER BY minute \
             LIMIT 1 OFFSET (SELECT count(*) / 10 FROM flow_minutes))",
            [],
        )?;
        if gone == 0 {
            for table in ["health", "actions", "alerts"] {
                gone += conn.execute(
                    &format!(
                        "DELETE FROM {table} WHERE time_ms <= (SELECT time_ms FROM {table} ORDER BY time_ms \
                         LIMIT 1 OFFSET (SELECT count(*) / 10 FROM {table}))"
                    ),
                    [],
                )?;
            }
        }
        deleted += gone;
        if gone == 0 {
            break;
        }
    }
    if deleted > 0 {
        conn.execute_batch("PRAGMA incremental_vacuum")?;
        counters.expired.fetch_add(deleted as u64, Ordering::Relaxed);
        debug!(deleted, "store retention");
    }
    counters.size_bytes.store(used_bytes(conn)?, Ordering::Relaxed);
    Ok(deleted as u64)
}
