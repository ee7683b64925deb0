//! Reading the store: `vigil query` and the console. Every query is bounded by a time range
//! and a row limit and answered from an index (time, source or destination).

use std::net::IpAddr;

use ipnet::IpNet;
use rusqlite::{Connection, Row, ToSql};
use serde::Serialize;

use super::addr;
use crate::detect::Severity;

/// Which rows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Unix ms, inclusive.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// The source (alerts, actions: the source or the blocked prefix's address; flows: the
    /// initiator) lies in this prefix.
    pub source: Option<IpNet>,
    /// The destination lies in this prefix (alerts, flows).
    pub destination: Option<IpNet>,
    pub host: Option<String>,
    /// Alerts at this level or above.
    pub min_severity: Option<Severity>,
    /// Alerts of this kind, actions of this action.
    pub kind: Option<String>,
    /// Alerts of this attack kind (`vigil.attack.kind`: `scan`, `password-guessing`, ...).
    pub attack: Option<String>,
    /// Alerts of this ATT&CK technique or sub-technique (`threat.technique.id` or
    /// `threat.technique.subtechnique.id`: `T1498` matches its sub-techniques' alerts too).
    pub technique: Option<String>,
    /// Alerts in one of these states (`new`, `acknowledged`, `archived`); empty: any.
    pub statuses: Vec<String>,
    /// Only rows with a larger id (new since the last look).
    pub after_id: Option<i64>,
    /// Rows at most (newest first).
    pub limit: usize,
}

/// An alert read back.
#[derive(Clone, Debug, Serialize)]
pub struct StoredAlert {
    pub id: i64,
    pub host: String,
    pub event_id: String,
    pub time_ms: i64,
    pub severity: Severity,
    pub kind: String,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub destination_port: Option<u16>,
    pub score: Option<f64>,
    pub model_sha256: String,
    pub model_phase: String,
    pub status: String,
    pub message: String,
    /// The ECS document.
    pub document: String,
}

/// A block action read back.
#[derive(Clone, Debug, Serialize)]
pub struct StoredAction {
    pub id: i64,
    pub host: String,
    pub time_ms: i64,
    pub action: String,
    pub source: Option<IpAddr>,
    pub prefix: Option<String>,
    pub origin: Option<String>,
    pub expires_ms: Option<i64>,
    pub reason: Option<String>,
    pub message: String,
    pub document: String,
}

/// Flow aggregates of one source, destination and service over the queried range (or one
/// minute, per minute).
#[derive(Clone, Debug, Serialize)]
pub struct StoredFlows {
    pub host: String,
    /// The first minute (Unix minutes) of the range the totals cover, and the last.
    pub first_minute: i64,
    pub last_minute: i64,
    pub source: Option<IpAddr>,
    pub destination: Option<IpAddr>,
    pub protocol: u8,
    pub port: u16,
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub anomalous: u64,
}

/// `Severity` from its ECS number as stored.
#[must_use]
pub const fn severity_from_ecs(n: i64) -> Severity {
    match n {
        i64::MIN..=20 => Severity::Info,
        21..=46 => Severity::Low,
        47..=72 => Severity::Medium,
        _ => Severity::High,
    }
}

/// The WHERE clause and its parameters, built one condition at a time.
#[derive(Default)]
struct Where {
    clauses: Vec<String>,
    params: Vec<Box<dyn ToSql>>,
}

impl Where {
    /// Adds `clause`, whose `?`s take `values` in order.
    fn push(&mut self, clause: &str, values: Vec<Box<dyn ToSql>>) {
        let mut numbered = String::with_capacity(clause.len() + 4);
        let mut values = values.into_iter();
        for c in clause.chars() {
            numbered.push(c);
            if c == '?'
                && let Some(v) = values.next()
            {
                self.params.push(v);
                numbered.push_str(&self.params.len().to_string());
            }
        }
        self.clauses.push(numbered);
    }

    fn prefix(&mut self, column: &str, net: Option<IpNet>) {
        if let Some(net) = net {
            let (lo, hi) = addr::range(net);
            self.push(&format!("{column} BETWEEN ? AND ?"), vec![Box::new(lo.to_vec()), Box::new(hi.to_vec())]);
        }
    }

    fn sql(&self) -> String {
        if self.clauses.is_empty() { String::new() } else { format!("WHERE {}", self.clauses.join(" AND ")) }
    }

    fn params(&self) -> Vec<&dyn ToSql> {
        self.params.iter().map(AsRef::as_ref).collect()
    }
}

fn limit(filter: &Filter) -> i64 {
    i64::try_from(filter.limit.max(1)).unwrap_or(i64::MAX)
}

fn ip_column(row: &Row<'_>, i: usize) -> rusqlite::Result<Option<IpAddr>> {
    Ok(row.get::<_, Option<Vec<u8>>>(i)?.and_then(|b| addr::from_key(&b)))
}

fn common(w: &mut Where, filter: &Filter, time: &str) {
    if let Some(s) = filter.since_ms {
        w.push(&format!("{time} >= ?"), vec![Box::new(s)]);
    }
    if let Some(u) = filter.until_ms {
        w.push(&format!("{time} <= ?"), vec![Box::new(u)]);
    }
    if let Some(h) = &filter.host {
        w.push("host = ?", vec![Box::new(h.clone())]);
    }
}

/// Alerts matching `filter`, newest first.
///
/// # Errors
/// The database cannot be read.
pub fn alerts(conn: &Connection, filter: &Filter) -> rusqlite::Result<Vec<StoredAlert>> {
    let mut w = Where::default();
    common(&mut w, filter, "time_ms");
    w.prefix("source", filter.source);
    w.prefix("destination", filter.destination);
    if let Some(s) = filter.min_severity {
        w.push("severity >= ?", vec![Box::new(i64::from(s.ecs()))]);
    }
    if let Some(k) = &filter.kind {
        w.push("kind = ?", vec![Box::new(k.clone())]);
    }
    if let Some(a) = &filter.attack {
        w.push("json_extract(document, '$.vigil.attack.kind') = ?", vec![Box::new(a.clone())]);
    }
    if let Some(t) = &filter.technique {
        w.push(
            "(json_extract(document, '$.threat.technique.id') = ? OR json_extract(document, '$.threat.technique.subtechnique.id') = ?)",
            vec![Box::new(t.clone()), Box::new(t.clone())],
        );
    }
    if !filter.statuses.is_empty() {
        let marks = vec!["?"; filter.statuses.len()].join(", ");
        let values: Vec<Box<dyn ToSql>> =
            filter.statuses.iter().map(|s| Box::new(s.clone()) as Box<dyn ToSql>).collect();
        w.push(&format!("status IN ({marks})"), values);
    }
    if let Some(id) = filter.after_id {
        w.push("id > ?", vec![Box::new(id)]);
    }
    let sql = format!(
        "SELECT id, host, event_id, time_ms, severity, kind, source, destination, destination_port, score, \
         model_sha256, model_phase, status, message, document FROM alerts {} ORDER BY time_ms DESC, id DESC LIMIT {}",
        w.sql(),
        limit(filter)
    );
    let mut stmt = conn.prepare(&sql)?;
    stmt.query_map(w.params().as_slice(), alert_row)?.collect()
}

/// The alert with row id `id`.
///
/// # Errors
/// The database cannot be read.
pub fn alert(conn: &Connection, id: i64) -> rusqlite::Result<Option<StoredAlert>> {
    let mut stmt = conn.prepare(
        "SELECT id, host, event_id, time_ms, severity, kind, source, destination, destination_port, score, \
         model_sha256, model_phase, status, message, document FROM alerts WHERE id = ?1",
    )?;
    let mut rows = stmt.query_map([id], alert_row)?;
    rows.next().transpose()
}

fn alert_row(r: &Row<'_>) -> rusqlite::Result<StoredAlert> {
    Ok(StoredAlert {
        id: r.get(0)?,
        host: r.get(1)?,
        event_id: r.get(2)?,
        time_ms: r.get(3)?,
        severity: severity_from_ecs(r.get(4)?),
        kind: r.get(5)?,
        source: ip_column(r, 6)?,
        destination: ip_column(r, 7)?,
        destination_port: r.get(8)?,
        score: r.get(9)?,
        model_sha256: r.get(10)?,
        model_phase: r.get(11)?,
        status: r.get(12)?,
        message: r.get(13)?,
        document: r.get(14)?,
    })
}

/// What an analyst may set an alert to.
pub const STATUSES: [&str; 3] = ["new", "acknowledged", "archived"];

/// Sets alert `id`'s status; answers whether it exists.
///
/// # Errors
/// Not one of [`STATUSES`] (`InvalidParameterName`), or the database cannot be written.
pub fn set_status(conn: &Connection, id: i64, status: &str) -> rusqlite::Result<bool> {
    if !STATUSES.contains(&status) {
        return Err(rusqlite::Error::InvalidParameterName(status.to_owned()));
    }
    Ok(conn.execute("UPDATE alerts SET status = ?1 WHERE id = ?2", rusqlite::params![status, id])? == 1)
}

/// Block actions matching `filter` (`kind` is the action), newest first.
///
/// # Errors
/// The database cannot be read.
pub fn actions(conn: &Connection, filter: &Filter) -> rusqlite::Result<Vec<StoredAction>> {
    let mut w = Where::default();
    common(&mut w, filter, "time_ms");
    w.prefix("source", filter.source);
    if let Some(k) = &filter.kind {
        w.push("action = ?", vec![Box::new(k.clone())]);
    }
    let sql = format!(
        "SELECT id, host, time_ms, action, source, prefix, origin, expires_ms, reason, message, document \
         FROM actions {} ORDER BY time_ms DESC, id DESC LIMIT {}",
        w.sql(),
        limit(filter)
    );
    let mut stmt = conn.prepare(&sql)?;
    stmt.query_map(w.params().as_slice(), |r| {
        Ok(StoredAction {
            id: r.get(0)?,
            host: r.get(1)?,
            time_ms: r.get(2)?,
            action: r.get(3)?,
            source: ip_column(r, 4)?,
            prefix: r.get(5)?,
            origin: r.get(6)?,
            expires_ms: r.get(7)?,
            reason: r.get(8)?,
            message: r.get(9)?,
            document: r.get(10)?,
        })
    })?
    .collect()
}

fn minute_filter(filter: &Filter) -> Filter {
    Filter {
        since_ms: filter.since_ms.map(|ms| ms.div_euclid(60_000)),
        until_ms: filter.until_ms.map(|ms| ms.div_euclid(60_000)),
        ..filter.clone()
    }
}

/// Flow aggregates matching `filter`: totals per host, source, destination and service over
/// the range, most bytes first; or, `per_minute`, the minute rows, newest first.
///
/// # Errors
/// The database cannot be read.
pub fn flows(conn: &Connection, filter: &Filter, per_minute: bool) -> rusqlite::Result<Vec<StoredFlows>> {
    let mut w = Where::default();
    common(&mut w, &minute_filter(filter), "minute");
    w.prefix("source", filter.source);
    w.prefix("destination", filter.destination);
    let sql = if per_minute {
        format!(
            "SELECT host, minute, minute, source, destination, protocol, port, flows, packets, bytes, anomalous \
             FROM flow_minutes {} ORDER BY minute DESC, bytes DESC LIMIT {}",
            w.sql(),
            limit(filter)
        )
    } else {
        format!(
            "SELECT host, min(minute), max(minute), source, destination, protocol, port, sum(flows), sum(packets), \
             sum(bytes), sum(anomalous) FROM flow_minutes {} GROUP BY host, source, destination, protocol, port \
             ORDER BY sum(bytes) DESC LIMIT {}",
            w.sql(),
            limit(filter)
        )
    };
    let mut stmt = conn.prepare(&sql)?;
    let count = |r: &Row<'_>, i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
    stmt.query_map(w.params().as_slice(), |r| {
        Ok(StoredFlows {
            host: r.get(0)?,
            first_minute: r.get(1)?,
            last_minute: r.get(2)?,
            source: ip_column(r, 3)?,
            destination: ip_column(r, 4)?,
            protocol: r.get(5)?,
            port: r.get(6)?,
            flows: count(r, 7)?,
            packets: count(r, 8)?,
            bytes: count(r, 9)?,
            anomalous: count(r, 10)?,
        })
    })?
    .collect()
}

/// What a traffic chart groups bytes by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    /// Who sent (top talkers).
    Source,
    /// Who was sent to.
    Destination,
    /// The responder's protocol and port.
    Service,
}

impl By {
    /// The column (or expression) that is the key.
    fn key(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Destination => "destination",
            Self::Service => "protocol * 65536 + port",
        }
    }
}

/// The key of one series.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrafficKey {
    Host(IpAddr),
    Service { protocol: u8, port: u16 },
}

/// One of the busiest keys: its bytes in each bucket and its totals over the window.
#[derive(Clone, Debug)]
pub struct Series {
    pub key: TrafficKey,
    pub bytes: Vec<u64>,
    pub total_bytes: u64,
    pub flows: u64,
    pub anomalous: u64,
}

/// Bytes over time, split into the busiest keys and the rest.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// The first minute (Unix minutes) of the first bucket, and each bucket's length.
    pub start_minute: i64,
    pub step_minutes: i64,
    /// The busiest keys, most bytes first.
    pub series: Vec<Series>,
    /// Everything else, per bucket.
    pub other: Vec<u64>,
}

/// Bytes per bucket of `step_minutes` from `start_minute` for `buckets` buckets, for the
/// `top` keys of `by` with the most bytes in that window, and the rest as `other`. Reads the
/// minute index only (the window is a range of its first column).
///
/// # Errors
/// The database cannot be read.
pub fn traffic(
    conn: &Connection,
    by: By,
    start_minute: i64,
    step_minutes: i64,
    buckets: usize,
    top: usize,
) -> rusqlite::Result<Traffic> {
    use rusqlite::types::Value as Sql;
    let step = step_minutes.max(1);
    let n = i64::try_from(buckets).unwrap_or(i64::MAX);
    let end = start_minute.saturating_add(step.saturating_mul(n));
    let key = by.key();
    let count = |v: i64| u64::try_from(v).unwrap_or(0);
    let bucket_of = |b: i64| usize::try_from(b).ok().filter(|&b| b < buckets);

    let mut stmt = conn.prepare(&format!(
        "SELECT {key}, sum(bytes), sum(flows), sum(anomalous) FROM flow_minutes \
         WHERE minute >= ?1 AND minute < ?2 GROUP BY 1 ORDER BY 2 DESC LIMIT ?3"
    ))?;
    let tops: Vec<(Sql, u64, u64, u64)> = stmt
        .query_map(rusqlite::params![start_minute, end, i64::try_from(top).unwrap_or(0)], |r| {
            Ok((r.get(0)?, count(r.get(1)?), count(r.get(2)?), count(r.get(3)?)))
        })?
        .collect::<rusqlite::Result<_>>()?;

    // One more pass over the window: bytes per bucket for each top key, and for the rest.
    let placeholders: Vec<String> = (0..tops.len()).map(|i| format!("?{}", i + 4)).collect();
    let list = if placeholders.is_empty() { "NULL".to_owned() } else { placeholders.join(", ") };
    let mut stmt = conn.prepare(&format!(
        "SELECT (minute - ?1) / ?3, CASE WHEN {key} IN ({list}) THEN {key} END, sum(bytes) FROM flow_minutes \
         WHERE minute >= ?1 AND minute < ?2 GROUP BY 1, 2"
    ))?;
    let mut params: Vec<Sql> = vec![Sql::Integer(start_minute), Sql::Integer(end), Sql::Integer(step)];
    params.extend(tops.iter().map(|t| t.0.clone()));
    let mut per_key = vec![vec![0u64; buckets]; tops.len()];
    let mut other = vec![0u64; buckets];
    let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
    while let Some(r) = rows.next()? {
        let Some(b) = bucket_of(r.get(0)?) else { continue };
        let value: Sql = r.get(1)?;
        let bytes = count(r.get(2)?);
        match tops.iter().position(|t| t.0 == value) {
            Some(i) if value != Sql::Null => per_key[i][b] += bytes,
            _ => other[b] += bytes,
        }
    }

    let mut series = Vec::with_capacity(tops.len());
    for ((value, total_bytes, flows, anomalous), bytes) in tops.into_iter().zip(per_key) {
        let key = match &value {
            Sql::Blob(b) => addr::from_key(b).map(TrafficKey::Host),
            Sql::Integer(i) => Some(TrafficKey::Service {
                protocol: u8::try_from(i >> 16).unwrap_or(0),
                port: u16::try_from(i & 0xffff).unwrap_or(0),
            }),
            _ => None,
        };
        let Some(key) = key else { continue };
        series.push(Series { key, bytes, total_bytes, flows, anomalous });
    }
    Ok(Traffic { start_minute, step_minutes: step, series, other })
}

/// Bytes `ip` sent and received per bucket of `step_minutes` from `start_minute`.
///
/// # Errors
/// The database cannot be read.
pub fn host_traffic(
    conn: &Connection,
    ip: IpAddr,
    start_minute: i64,
    step_minutes: i64,
    buckets: usize,
) -> rusqlite::Result<(Vec<u64>, Vec<u64>)> {
    let step = step_minutes.max(1);
    let end = start_minute.saturating_add(step.saturating_mul(i64::try_from(buckets).unwrap_or(i64::MAX)));
    let key = addr::key(ip).to_vec();
    let mut sides = [vec![0u64; buckets], vec![0u64; buckets]];
    for (side, column) in sides.iter_mut().zip(["source", "destination"]) {
        let mut stmt = conn.prepare(&format!(
            "SELECT (minute - ?1) / ?3, sum(bytes) FROM flow_minutes \
             WHERE {column} = ?4 AND minute >= ?1 AND minute < ?2 GROUP BY 1"
        ))?;
        let rows = stmt.query_map(rusqlite::params![start_minute, end, step, key], |r| {
            Ok((r.get::<_, i64>(0)?, u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0)))
        })?;
        for row in rows {
            let (b, v) = row?;
            if let Some(slot) = usize::try_from(b).ok().and_then(|b| side.get_mut(b)) {
                *slot = v;
            }
        }
    }
    let [sent, received] = sides;
    Ok((sent, received))
}

/// The latest health snapshot of each host.
///
/// # Errors
/// The database cannot be read.
pub fn latest_health(conn: &Connection) -> rusqlite::Result<Vec<(String, super::HealthRow)>> {
    let mut stmt = conn.prepare(
        "SELECT host, max(time_ms), packets, bytes, malformed, blocklist_drops, flows_tracked, flow_capacity, \
         harvest_ms, scoring_ms, flows_scored, alerts, rules_active, model_sha256, model_phase, store_dropped \
         FROM health GROUP BY host ORDER BY host",
    )?;
    let count = |r: &Row<'_>, i| r.get::<_, i64>(i).map(|v| u64::try_from(v).unwrap_or(0));
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            super::HealthRow {
                time_ms: r.get(1)?,
                packets: count(r, 2)?,
                bytes: count(r, 3)?,
                malformed: count(r, 4)?,
                blocklist_drops: count(r, 5)?,
                flows_tracked: count(r, 6)?,
                flow_capacity: count(r, 7)?,
                harvest_ms: r.get(8)?,
                scoring_ms: r.get(9)?,
                flows_scored: count(r, 10)?,
                alerts: count(r, 11)?,
                rules_active: count(r, 12)?,
                model_sha256: r.get(13)?,
                model_phase: r.get(14)?,
                store_dropped: count(r, 15)?,
            },
        ))
    })?
    .collect()
}

/// A model a host scored with.
#[derive(Clone, Debug, Serialize)]
pub struct StoredModel {
    pub host: String,
    pub sha256: String,
    pub name: String,
    pub phase: String,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// Models each host scored with, most recently used first.
///
/// # Errors
/// The database cannot be read.
pub fn models(conn: &Connection) -> rusqlite::Result<Vec<StoredModel>> {
    let mut stmt =
        conn.prepare("SELECT host, sha256, name, phase, first_ms, last_ms FROM models ORDER BY last_ms DESC")?;
    stmt.query_map([], |r| {
        Ok(StoredModel {
            host: r.get(0)?,
            sha256: r.get(1)?,
            name: r.get(2)?,
            phase: r.get(3)?,
            first_ms: r.get(4)?,
            last_ms: r.get(5)?,
        })
    })?
    .collect()
}

fn time(ms: i64) -> String {
    crate::clock::rfc3339_millis(u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000))
}

fn or_dash(ip: Option<IpAddr>) -> String {
    ip.map_or_else(|| "-".to_owned(), |ip| ip.to_string())
}

/// `ip:port`, bracketed for IPv6.
fn endpoint(ip: Option<IpAddr>, port: Option<u16>) -> String {
    match (ip, port) {
        (Some(IpAddr::V6(v6)), Some(p)) => format!("[{v6}]:{p}"),
        (Some(ip), Some(p)) => format!("{ip}:{p}"),
        (ip, None) => or_dash(ip),
        (None, Some(p)) => format!("-:{p}"),
    }
}

impl StoredAlert {
    /// One line of `vigil query alerts`.
    #[must_use]
    pub fn line(&self) -> String {
        format!(
            "{}  {:<6}  {:<30}  {} -> {}  score {}  [{}] {}",
            time(self.time_ms),
            self.severity.name(),
            self.kind,
            or_dash(self.source),
            endpoint(self.destination, self.destination_port),
            self.score.map_or_else(|| "-".to_owned(), |s| format!("{s:.2}")),
            self.event_id,
            self.message
        )
    }
}

impl StoredAction {
    /// One line of `vigil query blocks`.
    #[must_use]
    pub fn line(&self) -> String {
        let until = self.expires_ms.map(|e| format!("  until {}", time(e))).unwrap_or_default();
        format!(
            "{}  {:<13}  {:<20}  {}{until}  {}",
            time(self.time_ms),
            self.action,
            self.prefix.as_deref().unwrap_or("-"),
            self.origin.as_deref().unwrap_or("-"),
            self.reason.as_deref().unwrap_or("")
        )
    }
}

impl StoredFlows {
    /// One line of `vigil query flows`.
    #[must_use]
    pub fn line(&self) -> String {
        let span = if self.first_minute == self.last_minute {
            time(self.first_minute * 60_000)
        } else {
            format!("{} .. {}", time(self.first_minute * 60_000), time(self.last_minute * 60_000))
        };
        let other = self.source.is_some_and(|s| s.is_unspecified()) && self.port == 0 && self.protocol == 0;
        let what = if other {
            "(other: beyond store.max_flow_rows that minute)".to_owned()
        } else {
            format!(
                "{} -> {} {}",
                or_dash(self.source),
                endpoint(self.destination, Some(self.port)),
                agent_common::proto::name(self.protocol)
            )
        };
        format!(
            "{span}  {what}  {} flows, {} packets, {} bytes, {} anomalous",
            self.flows, self.packets, self.bytes, self.anomalous
        )
    }
}
