//! `vigil collector`: the fleet's alerts from NATS `JetStream` into the store. A durable pull
//! consumer on the alert stream hands over batches; each batch is written in one transaction
//! (`INSERT OR IGNORE` on host and `event.id`, so a redelivered message is stored once) and
//! acknowledged only after the commit: a collector killed mid-batch loses nothing, the
//! messages come again. The host of a row is the subject's host token
//! (`vigil.v1.alert.<site>.<host>`), so `vigil query` and the console show the whole fleet in
//! the single-host schema. As many collectors as needed can share the durable consumer.
//! Block events on the same subjects (block, unblock, dry run, refusal) go into `actions`, each
//! once: they carry no `event.id`, so their key is host, time, action and prefix.
//!
//! Heartbeats (`vigil.v1.health.<site>.<host>`, from the agents' `[fleet]` export) go into
//! the `health` table the same way, from a second durable consumer on `health_stream` when
//! that stream exists; a row's key is host and time, so a redelivery replaces it with itself.
//!
//! Flow batches (`vigil.v1.flows.<site>.<host>`, protobuf) go into `flow_minutes` from a third
//! durable consumer on `flow_stream` when that stream exists ([`flows`]): a batch's rows are
//! added in the same transaction that records its message id for that host, so a redelivered
//! batch adds nothing.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::alert::sink::nats::{NatsSettings, Options, check_tokens};
use crate::store::{ActionRow, AlertRow};

/// `[collector]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectorSection {
    /// The bus, with the keys of a `nats` alert sink (`url`, `stream`, credentials, `ca_file`,
    /// `allow_plaintext`, `timeout`); `site`, `host` and the retry keys are not used.
    pub bus: NatsSettings,
    /// The durable consumer's name, shared by every collector of the fleet.
    #[serde(default = "default_durable")]
    pub durable: String,
    /// Messages per batch (one transaction) at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// The heartbeat stream (`[fleet] health_stream` of the agents); when it does not exist at
    /// start, heartbeats are not collected (logged once).
    #[serde(default = "default_health_stream")]
    pub health_stream: String,
    /// The flow stream (`[fleet] flow_stream` of the agents); when it does not exist at start,
    /// flow records are not collected (logged once).
    #[serde(default = "default_flow_stream")]
    pub flow_stream: String,
    /// How long a message taken and not acknowledged (a collector that died mid-batch) waits
    /// before the stream delivers it again. Set when the durable consumer is created.
    #[serde(default = "default_ack_wait", with = "crate::duration_serde")]
    pub ack_wait: Duration,
    /// Fleet-wide blocking: the fleet's rails for the agents' block proposals, and the bucket
    /// of the fleet blocklist they write (`crate::fleet::blocking`). Without it, proposals
    /// wait in their stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::fleet::blocking::PolicySection>,
}

fn default_health_stream() -> String {
    "VIGIL_HEALTH".to_owned()
}

fn default_flow_stream() -> String {
    "VIGIL_FLOWS".to_owned()
}

fn default_durable() -> String {
    "vigil-collector".to_owned()
}
fn default_batch() -> usize {
    500
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}

impl CollectorSection {
    /// Checks the section without touching the system.
    ///
    /// # Errors
    /// The key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::alert::sink::SinkSettings::validate(&self.bus).map_err(|e| ("collector.bus", e))?;
        if self.bus.spool.is_some() {
            return Err((
                "collector.bus.spool",
                "is for an agent's export; the collector only reads the bus".to_owned(),
            ));
        }
        check_tokens([("collector.durable", self.durable.as_str())])?;
        if !(1..=10_000).contains(&self.batch) {
            return Err(("collector.batch", "must be between 1 and 10000".to_owned()));
        }
        check_tokens([
            ("collector.health_stream", self.health_stream.as_str()),
            ("collector.flow_stream", self.flow_stream.as_str()),
        ])?;
        if !(Duration::from_secs(1)..=Duration::from_hours(1)).contains(&self.ack_wait) {
            return Err(("collector.ack_wait", "must be between 1s and 1h".to_owned()));
        }
        if let Some(policy) = &self.policy {
            policy.validate()?;
        }
        Ok(())
    }
}

/// What a collector did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CollectorStats {
    /// Messages acknowledged.
    pub messages: u64,
    /// Alerts new to the store.
    pub stored: u64,
    /// Alerts and block events the store already had (redeliveries, repeats).
    pub repeated: u64,
    /// Block events new to the store (`actions`).
    pub actions: u64,
    /// Messages that are neither alerts nor block events of a known shape: acknowledged and
    /// left out.
    pub skipped: u64,
    /// Health rows written from heartbeats.
    pub health: u64,
    /// Flow batches new to the store, and the `flow_minutes` rows they added to.
    pub flow_batches: u64,
    pub flow_rows: u64,
    /// Flow batches that do not decode, and conversations left out (a bad address).
    pub flows_skipped: u64,
    /// The policy's work on block proposals (`[collector.policy]`).
    pub policy: crate::fleet::blocking::PolicyStats,
}

/// The host token of `vigil.v1.<kind>.<site>.<host>`.
fn subject_host<'a>(subject: &'a str, kind: &str) -> Option<&'a str> {
    let mut tokens = subject.split('.');
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some("vigil"), Some("v1"), Some(k), Some(_site), Some(host), None) if k == kind && !host.is_empty() => {
            Some(host)
        }
        _ => None,
    }
}

/// The health row of a heartbeat.
fn heartbeat_health(payload: &[u8]) -> Option<crate::store::HealthRow> {
    #[derive(Deserialize)]
    struct Heartbeat {
        health: Option<crate::store::HealthRow>,
    }
    serde_json::from_slice::<Heartbeat>(payload).ok()?.health
}

type Consumer = async_nats::jetstream::consumer::Consumer<async_nats::jetstream::consumer::pull::Config>;

/// Up to `max` messages of `consumer`, waiting at most `wait`; a failure is logged and gives none.
/// The whole pull is bounded: a pull whose end the server never signals (a lost request, a
/// connection that went away) gives what arrived instead of holding the collector forever.
/// A pull that brought messages and then goes quiet past `wait` ends sooner than an empty
/// one: after a collector was killed, nats-server 2.9 answered a restarted collector's pulls
/// with part of a batch and no end, and waiting the full grace each time cut the rate to a
/// tenth. What arrives after the collector stopped listening is not acknowledged and comes again.
async fn fetch(consumer: &Consumer, max: usize, wait: Duration) -> Vec<async_nats::jetstream::Message> {
    let started = tokio::time::Instant::now();
    let mut taken = Vec::new();
    let batch = consumer.fetch().max_messages(max).expires(wait).messages();
    let mut messages = match tokio::time::timeout(wait + PULL_GRACE, batch).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            warn!(error = %e, "collector: fetching a batch failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return taken;
        }
        Err(_) => {
            debug!("collector: a pull request was not answered in time");
            return taken;
        }
    };
    loop {
        let grace = if taken.is_empty() { PULL_GRACE } else { PARTIAL_GRACE };
        match tokio::time::timeout_at(started + wait + grace, messages.next()).await {
            Ok(Some(Ok(m))) => taken.push(m),
            Ok(Some(Err(e))) => warn!(error = %e, "collector: a message of the batch failed"),
            Ok(None) => break,
            Err(_) => {
                debug!(wait = ?wait, came = taken.len(), "collector: a pull did not end in time; going on with what came");
                break;
            }
        }
    }
    taken
}

/// How long past its `expires` a pull may take before the collector stops waiting for it.
const PULL_GRACE: Duration = Duration::from_secs(2);
/// The same for a pull that already brought messages.
const PARTIAL_GRACE: Duration = Duration::from_millis(100);

/// How often the collector pulls heartbeats, and flow batches when the last pull drained them.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// Flow batches per pull (each up to the agents' `[fleet] batch` conversations).
const FLOW_PULL: usize = 50;

/// Acknowledges what was committed (bounded: what is not acknowledged comes again, and is
/// stored once).
async fn ack_all(taken: &[async_nats::jetstream::Message]) {
    let acks = async {
        for m in taken {
            if let Err(e) = m.ack().await {
                warn!(error = %e, "collector: acknowledging failed; the message will come again (stored once)");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), acks).await.is_err() {
        warn!("collector: acknowledging took over 10 s; the rest will come again (stored once)");
    }
}

/// The durable consumer `durable` on `stream` for `subjects`.
async fn consumer(
    jetstream: &async_nats::jetstream::Context,
    stream: &str,
    durable: &str,
    subjects: &str,
    ack_wait: Duration,
) -> Result<Consumer, String> {
    let stream = jetstream.get_stream(stream).await.map_err(|e| format!("nats stream {stream}: {e}"))?;
    stream
        .get_or_create_consumer(
            durable,
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                filter_subject: subjects.to_owned(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait,
                ..Default::default()
            },
        )
        .await
        .inspect(|c| {
            let info = c.cached_info();
            debug!(
                durable,
                pending = info.num_pending,
                ack_pending = info.num_ack_pending,
                max_ack_pending = info.config.max_ack_pending,
                "collector: consumer bound"
            );
        })
        .map_err(|e| format!("nats consumer {durable}: {e}"))
}

/// Connects and binds the durable consumer on the alert stream, retrying until it works or
/// `stop`: a collector started before its bus, or while a cluster elects a new leader after
/// losing a node, waits for it (each failure logged with its reason) instead of exiting.
async fn bind_alerts(
    section: &CollectorSection,
    options: &Options,
    stop: &AtomicBool,
) -> Option<(async_nats::jetstream::Context, Consumer)> {
    let mut backoff = BIND_RETRY_FIRST;
    loop {
        let bound = match options.connect().await {
            Ok(jetstream) => consumer(
                &jetstream,
                options.stream(),
                &section.durable,
                crate::alert::sink::nats::ALERT_SUBJECTS,
                section.ack_wait,
            )
            .await
            .map(|c| (jetstream, c)),
            Err(e) => Err(format!("nats {}: {e}", options.url())),
        };
        match bound {
            Ok(bound) => return Some(bound),
            Err(e) => warn!(error = %e, retry_in = ?backoff, "collector: the bus is not ready; retrying"),
        }
        // Slept in short steps, so that a stop is seen at once.
        let until = tokio::time::Instant::now() + backoff;
        while tokio::time::Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        backoff = (backoff * 2).min(BIND_RETRY_MAX);
    }
}

/// The first and the longest wait between two attempts of [`bind_alerts`].
const BIND_RETRY_FIRST: Duration = Duration::from_millis(500);
const BIND_RETRY_MAX: Duration = Duration::from_secs(10);

/// One pull of flow batches into `flow_minutes` (see [`flows`]); answers whether the stream
/// is drained (the pull was not full). What the store refuses is not acknowledged: it comes
/// again after `ack_wait`.
async fn collect_flows(consumer: &Consumer, conn: &mut rusqlite::Connection, stats: &mut CollectorStats) -> bool {
    use prost::Message as _;
    let taken = fetch(consumer, FLOW_PULL, Duration::from_millis(100)).await;
    if taken.is_empty() {
        return true;
    }
    let mut batches = Vec::with_capacity(taken.len());
    for m in &taken {
        let host = subject_host(m.subject.as_str(), "flows");
        let id = m.headers.as_ref().and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID)).map(ToString::to_string);
        let decoded = crate::fleet::proto::FlowBatch::decode(m.payload.as_ref());
        let (Some(host), Some(id), Ok(batch)) = (host, id, decoded) else {
            stats.flows_skipped += 1;
            continue;
        };
        let (rows, bad) = flows::minute_rows(&batch);
        stats.flows_skipped += bad as u64;
        batches.push((host.to_owned(), id, rows));
    }
    let now_ms = i64::try_from(crate::clock::wall_ns() / 1_000_000).unwrap_or(i64::MAX);
    let written = crate::store::insert_flow_batches(
        conn,
        batches.iter().map(|(host, id, rows)| (host.as_str(), id.as_str(), rows.as_slice())),
        now_ms,
    );
    match written {
        Ok((new, rows)) => {
            ack_all(&taken).await;
            stats.messages += taken.len() as u64;
            stats.flow_batches += new as u64;
            stats.flow_rows += rows as u64;
        }
        Err(e) => {
            warn!(error = %e, batches = taken.len(), "collector: the store refused flow batches; they will come again");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    taken.len() < FLOW_PULL
}

/// Consumes until `stop` is set: connects, binds the durable consumer, and writes batches into
/// the store at `db` (created and migrated like the agent's).
///
/// # Errors
/// A bad setting or secret file, a store that cannot be opened, or a bus that cannot be
/// reached or has no such stream at start. Later bus errors are logged and retried.
pub fn run(section: &CollectorSection, db: &Path, stop: &AtomicBool) -> anyhow::Result<CollectorStats> {
    let options = Options::new(&section.bus)?;
    let mut conn = crate::store::open_for_writing(db)?;
    let Some(policy) = &section.policy else { return consume(section, &options, &mut conn, db, stop) };
    // The policy on a thread of its own: a store write never delays a block decision.
    std::thread::scope(|scope| {
        let decided = std::thread::Builder::new().name("collector-policy".into()).spawn_scoped(scope, || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let decided =
                runtime.block_on(crate::fleet::blocking::run_policy(&options, policy, &section.health_stream, stop));
            if let Err(e) = &decided {
                // A policy that cannot run stops the collector: its error is the answer.
                tracing::error!(error = %e, "collector: the policy cannot run; stopping");
                stop.store(true, Ordering::Relaxed);
            }
            decided.map_err(|e| anyhow::anyhow!("policy: {e}"))
        })?;
        let consumed = consume(section, &options, &mut conn, db, stop);
        // The consumer ended: so does the policy (and the other way round, below).
        stop.store(true, Ordering::Relaxed);
        let decided = decided.join().map_err(|_| anyhow::anyhow!("the policy thread panicked"))?;
        let policy = decided?;
        let mut stats = consumed?;
        stats.policy = policy;
        Ok(stats)
    })
}

/// The store's side of [`run`]: alerts and heartbeats into `conn` until `stop`.
fn consume(
    section: &CollectorSection,
    options: &Options,
    conn: &mut rusqlite::Connection,
    db: &Path,
    stop: &AtomicBool,
) -> anyhow::Result<CollectorStats> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let Some((jetstream, alerts)) = bind_alerts(section, options, stop).await else {
            info!("collector stopped before its bus answered");
            return Ok(CollectorStats::default());
        };
        let health = match consumer(&jetstream, &section.health_stream, &section.durable, crate::fleet::HEALTH_SUBJECTS, section.ack_wait).await {
            Ok(c) => Some(c),
            Err(e) => {
                info!(error = %e, "collector: no heartbeat stream; heartbeats are not collected");
                None
            }
        };
        let flows = match consumer(&jetstream, &section.flow_stream, &section.durable, crate::fleet::FLOW_SUBJECTS, section.ack_wait).await {
            Ok(c) => Some(c),
            Err(e) => {
                info!(error = %e, "collector: no flow stream; flow records are not collected");
                None
            }
        };
        info!(url = %options.url(), stream = options.stream(), durable = section.durable, store = %db.display(), "collector consuming");
        let mut stats = CollectorStats::default();
        // Heartbeats come every few seconds per host: pulled once a second, so that an empty
        // pull's wait does not come between every two batches of alerts.
        let mut health_due = tokio::time::Instant::now();
        let mut flows_due = tokio::time::Instant::now();
        // Alerts first: while their pulls come back full, flows get one pull a second.
        let mut alerts_backlog = false;
        // While flows wait, an empty alert pull waits less, so it does not hold them up.
        let mut flows_backlog = false;
        while !stop.load(Ordering::Relaxed) {
            if let Some(flows) = flows.as_ref().filter(|_| tokio::time::Instant::now() >= flows_due) {
                let drained = collect_flows(flows, conn, &mut stats).await;
                flows_backlog = !drained;
                let later = drained || alerts_backlog;
                flows_due = tokio::time::Instant::now() + if later { HEALTH_EVERY } else { Duration::ZERO };
            }
            if let Some(health) = health.as_ref().filter(|_| tokio::time::Instant::now() >= health_due) {
                health_due = tokio::time::Instant::now() + HEALTH_EVERY;
                let taken = fetch(health, section.batch, Duration::from_millis(100)).await;
                if !taken.is_empty() {
                    let rows: Vec<(String, crate::store::HealthRow)> = taken
                        .iter()
                        .filter_map(|m| Some((subject_host(m.subject.as_str(), "health")?.to_owned(), heartbeat_health(&m.payload)?)))
                        .collect();
                    match crate::store::insert_health_rows(conn, rows.iter().map(|(h, r)| (h.as_str(), r))) {
                        Ok(n) => {
                            ack_all(&taken).await;
                            stats.health += n as u64;
                        }
                        Err(e) => warn!(error = %e, "collector: the store refused heartbeats; they will come again"),
                    }
                }
            }
            let wait = Duration::from_millis(if flows_backlog { 20 } else { 400 });
            let taken = fetch(&alerts, section.batch, wait).await;
            alerts_backlog = taken.len() >= section.batch;
            if taken.is_empty() {
                continue;
            }
            let mut alerts = Vec::new();
            let mut actions = Vec::new();
            for m in &taken {
                let (Some(host), Ok(doc)) = (subject_host(m.subject.as_str(), "alert"), std::str::from_utf8(&m.payload)) else {
                    continue;
                };
                if let Some(row) = AlertRow::from_document(doc) {
                    alerts.push((host.to_owned(), row));
                } else if let Some(row) = ActionRow::from_document(doc) {
                    actions.push((host.to_owned(), row));
                }
            }
            let skipped = taken.len() - alerts.len() - actions.len();
            // The collector's only task: writing here holds nothing else up.
            let written = crate::store::insert_fleet(
                conn,
                alerts.iter().map(|(h, r)| (h.as_str(), r)),
                actions.iter().map(|(h, r)| (h.as_str(), r)),
            );
            let (new, new_actions) = match written {
                Ok(n) => n,
                Err(e) => {
                    // Not acknowledged: the stream delivers them again after `ack_wait`.
                    warn!(error = %e, messages = taken.len(), "collector: the store refused the batch; it will come again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            ack_all(&taken).await;
            stats.messages += taken.len() as u64;
            stats.stored += new as u64;
            stats.repeated += (alerts.len() + actions.len() - new - new_actions) as u64;
            stats.actions += new_actions as u64;
            stats.skipped += skipped as u64;
        }
        info!(?stats, "collector stopped");
        Ok(stats)
    })
}

mod flows;

#[cfg(test)]
mod tests;
