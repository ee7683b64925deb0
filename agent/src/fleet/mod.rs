//! The fleet export (`[fleet]`): the conversations that leave the flow table, in batches, and a
//! heartbeat with the agent's status, to NATS `JetStream` (docs/fleet.md). Alerts go by the
//! `nats` alert sink.
//!
//! Flow records are protobuf (`agent/proto/flows_v1.proto`, [`proto`]): a [`proto::FlowBatch`]
//! of up to `batch` conversations per message on `vigil.v1.flows.<site>.<host>`, with the
//! message id `<host>/<boot>-<seq>` for the stream's duplicate window. Protobuf rather than
//! JSON lines because it is about a sixth of the bytes and a fraction of the encoding time
//! (BENCHMARKS.md, "Fleet export"), and flows are the bulk of what a fleet sends.
//!
//! The agent hands each record to [`FleetExport::flow`], which only `try_send`s into a bounded
//! queue (a full queue drops and counts): the harvest never waits for the bus. The export runs
//! on its own thread (a one-worker tokio runtime): it publishes batches with up to
//! `max_in_flight` unacknowledged; a batch the bus does not take goes to the spool of
//! `bus.spool` when there is one (flow class: dropped oldest-first when full), else it is
//! counted as failed; the spool is replayed at its rate once the bus answers again.
//!
//! Heartbeats: every `heartbeat`, the agent's latest status (`vigil status`'s document, with
//! the export's counters) and health row (the store's `health` columns), with site and host,
//! as JSON on `vigil.v1.health.<site>.<host>`, published without waiting for an
//! acknowledgement and never spooled (only the latest matters). `vigil collector` stores the
//! health rows per host.

pub mod blocking;
pub mod models;
pub mod proto;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::alert::sink::nats::{NatsSettings, Options, Replay, replay_some};
use crate::flows::biflow::BiflowRecord;
use crate::spool::{Class, SpoolCounters, SpoolStats};

/// The flow stream's subjects.
pub const FLOW_SUBJECTS: &str = "vigil.v1.flows.>";
/// The heartbeat stream's subjects.
pub const HEALTH_SUBJECTS: &str = "vigil.v1.health.>";

/// `[fleet]`: what a sensor exports besides its alerts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// The bus: the keys of a `nats` alert sink (`url`, `site`, `host`, credentials, `ca_file`,
    /// `allow_plaintext`, `timeout`, `backoff`, `create_stream`, `spool`); `stream` and
    /// `max_retries` are not used.
    pub bus: NatsSettings,
    /// Export the conversations that leave the flow table.
    #[serde(default = "yes")]
    pub flows: bool,
    /// The stream that takes `vigil.v1.flows.>`.
    #[serde(default = "default_flow_stream")]
    pub flow_stream: String,
    /// The stream that takes `vigil.v1.health.>` (only created with `create_stream`; without a
    /// stream, heartbeats still reach subscribers).
    #[serde(default = "default_health_stream")]
    pub health_stream: String,
    /// Conversations per message at most.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// A batch that is not full goes out after this long.
    #[serde(default = "default_flush", with = "crate::duration_serde")]
    pub flush: Duration,
    /// Messages published and not yet acknowledged, at most.
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Conversations waiting for the export; beyond this they are dropped (counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// How often the status goes out.
    #[serde(default = "default_heartbeat", with = "crate::duration_serde")]
    pub heartbeat: Duration,
    /// Fleet-wide blocking: proposals out, the fleet blocklist followed ([`blocking`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocking: Option<blocking::BlockingSection>,
    /// The fleet's model for this agent: a group's pointer followed ([`models`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<models::ModelsSection>,
}

fn yes() -> bool {
    true
}
fn default_flow_stream() -> String {
    "VIGIL_FLOWS".to_owned()
}
fn default_health_stream() -> String {
    "VIGIL_HEALTH".to_owned()
}
fn default_batch() -> usize {
    1000
}
fn default_flush() -> Duration {
    Duration::from_secs(1)
}
fn default_in_flight() -> usize {
    8
}
fn default_queue() -> usize {
    100_000
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(10)
}

impl FleetSection {
    /// Checks the settings without touching the system; the error names the key.
    ///
    /// # Errors
    /// The key and what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        crate::alert::sink::SinkSettings::validate(&self.bus).map_err(|e| ("fleet.bus", e))?;
        crate::alert::sink::nats::check_tokens([
            ("fleet.flow_stream", self.flow_stream.as_str()),
            ("fleet.health_stream", self.health_stream.as_str()),
        ])?;
        if !(1..=100_000).contains(&self.batch) {
            return Err(("fleet.batch", "must be between 1 and 100000".to_owned()));
        }
        if self.flush.is_zero() {
            return Err(("fleet.flush", "must be more than zero".to_owned()));
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return Err(("fleet.max_in_flight", "must be between 1 and 1000".to_owned()));
        }
        if !(1..=10_000_000).contains(&self.queue) {
            return Err(("fleet.queue", "must be between 1 and 10000000".to_owned()));
        }
        if self.heartbeat < Duration::from_millis(100) {
            return Err(("fleet.heartbeat", "must be at least 100ms".to_owned()));
        }
        if let Some(blocking) = &self.blocking {
            blocking.validate()?;
        }
        if let Some(models) = &self.models {
            models.validate()?;
        }
        Ok(())
    }
}

/// The export's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetStats {
    /// Conversations the bus acknowledged when first published (those replayed from the
    /// spool are counted there, as batches).
    pub flows_exported: u64,
    /// Messages (batches) the bus acknowledged.
    pub batches_exported: u64,
    /// Conversations dropped because the export's queue was full.
    pub flows_dropped: u64,
    /// Conversations the bus did not take and no spool kept (or the spool refused).
    pub flows_failed: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_failed: u64,
    /// Block proposals the bus acknowledged, and those it did not take.
    #[serde(default)]
    pub proposals_sent: u64,
    #[serde(default)]
    pub proposals_failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolStats>,
    /// The fleet blocklist's follower, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<blocking::FollowStats>,
    /// The model follower, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<models::ModelStats>,
}

#[derive(Default)]
struct Counters {
    flows_exported: AtomicU64,
    batches_exported: AtomicU64,
    flows_dropped: AtomicU64,
    flows_failed: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeats_failed: AtomicU64,
    proposals_sent: AtomicU64,
    proposals_failed: AtomicU64,
}

/// The running export (see the module documentation).
pub struct FleetExport {
    /// Closed (`None`) at shutdown: the task then flushes and ends.
    tx: Option<tokio::sync::mpsc::Sender<BiflowRecord>>,
    /// `flows`: whether conversations are exported (heartbeats are, either way).
    flows: bool,
    status: tokio::sync::watch::Sender<Option<serde_json::Value>>,
    /// Block proposals (`[fleet.blocking] propose`).
    proposals: Option<tokio::sync::mpsc::Sender<blocking::Proposal>>,
    follow: Option<Arc<std::sync::Mutex<blocking::FollowStats>>>,
    models: Option<Arc<std::sync::Mutex<models::ModelStats>>>,
    section: FleetSection,
    options: Options,
    counters: Arc<Counters>,
    spool: Option<Arc<SpoolCounters>>,
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<()>>,
    abort: Arc<AtomicBool>,
    name: String,
}

impl FleetExport {
    /// Checks the settings, reads the secrets and opens the spool, so a bad setting fails
    /// before the sensor is attached; then starts the export's thread. The bus is not
    /// contacted yet: a bus that is down is spooled or counted, not fatal.
    ///
    /// # Errors
    /// A bad setting, a secret file that cannot be read or is not private, a spool that cannot
    /// be opened, or a thread that cannot start.
    pub fn start(section: &FleetSection) -> io::Result<FleetExport> {
        section.validate().map_err(|(key, e)| io::Error::new(io::ErrorKind::InvalidInput, format!("{key}: {e}")))?;
        let options = Options::new(&section.bus)?;
        let replay = section.bus.spool.as_deref().map(|s| Replay::open(s, section.bus.backoff)).transpose()?;
        let spool = replay.as_ref().map(|r| r.spool.counters());
        let host = section.bus.host.clone().unwrap_or_else(crate::alert::sink::nats::host_token);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fleet-export")
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::channel(section.queue);
        let (status, status_rx) = tokio::sync::watch::channel(None);
        let propose = section.blocking.as_ref().is_some_and(|b| b.propose);
        let (proposals, proposals_rx) = tokio::sync::mpsc::channel(PROPOSAL_QUEUE);
        let counters = Arc::new(Counters::default());
        let abort = Arc::new(AtomicBool::new(false));
        let name = format!("fleet:{}", options.url());
        let exporter = Exporter {
            subject_flows: format!("vigil.v1.flows.{}.{host}", section.bus.site),
            subject_health: format!("vigil.v1.health.{}.{host}", section.bus.site),
            site: section.bus.site.clone(),
            host,
            boot: crate::clock::wall_ns(),
            seq: 0,
            options: options.clone(),
            jetstream: None,
            streams_ready: false,
            section: section.clone(),
            replay,
            acks: FuturesOrdered::new(),
            counters: Arc::clone(&counters),
            abort: Arc::clone(&abort),
        };
        let task = runtime.spawn(exporter.run(rx, status_rx, proposals_rx));
        info!(bus = name, flows = section.flows, "fleet export started");
        Ok(FleetExport {
            tx: Some(tx),
            flows: section.flows,
            status,
            proposals: propose.then_some(proposals),
            follow: None,
            models: None,
            section: section.clone(),
            options,
            counters,
            spool,
            runtime: Some(runtime),
            task: Some(task),
            abort,
            name,
        })
    }

    /// The export's name in logs and metrics: `fleet:<servers>`, credentials hidden.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Queues a conversation for export. Never blocks: a full queue drops it (counted).
    pub fn flow(&self, record: &BiflowRecord) {
        let Some(tx) = self.tx.as_ref().filter(|_| self.flows) else { return };
        if tx.try_send(record.clone()).is_err() {
            self.counters.flows_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends a block decision to the fleet (`[fleet.blocking] propose`); never blocks (a full
    /// queue counts it as failed).
    pub fn propose(&self, proposal: blocking::Proposal) {
        let Some(tx) = &self.proposals else { return };
        if tx.try_send(proposal).is_err() {
            self.counters.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this agent follows the fleet blocklist (`[fleet.blocking] follow` not `off`).
    #[must_use]
    pub fn follows(&self) -> bool {
        self.section.blocking.as_ref().is_some_and(|b| b.follow != crate::detect::engine::BlockMode::Off)
    }

    /// Starts following the fleet blocklist (`[fleet.blocking] follow` not `off`): its rules go
    /// into `rules` past the agent's `allowlist`. Answers whether it started.
    pub fn follow(
        &mut self,
        rules: Box<dyn crate::block::RuleStore + Send>,
        allowlist: crate::detect::allowlist::Allowlist,
    ) -> bool {
        let Some(blocking) = self.section.blocking.as_ref().filter(|_| self.follows()) else {
            return false;
        };
        let Some(runtime) = &self.runtime else { return false };
        let shared = Arc::new(std::sync::Mutex::new(blocking::FollowStats::default()));
        let follower = blocking::Follower::new(blocking.follow, allowlist);
        runtime.spawn(blocking::follow(
            self.options.clone(),
            blocking.bucket.clone(),
            follower,
            rules,
            Arc::clone(&shared),
        ));
        self.follow = Some(shared);
        true
    }

    /// Starts following the group's model pointer (`[fleet.models]`): bundles that verify
    /// with `keys` and load for `schema` come out of the answered receiver, and so do the
    /// refusals; `running` is the fleet bundle the agent started with, if any (not fetched
    /// again). `None` without `[fleet.models]`.
    pub fn follow_models(
        &mut self,
        keys: Vec<crate::model::sign::PublicKey>,
        schema: crate::features::Schema,
        running: Option<String>,
    ) -> Option<std::sync::mpsc::Receiver<models::ModelUpdate>> {
        let section = self.section.models.clone()?;
        let runtime = self.runtime.as_ref()?;
        let shared = Arc::new(std::sync::Mutex::new(models::ModelStats::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        runtime.spawn(models::follow(self.options.clone(), section, keys, schema, tx, Arc::clone(&shared), running));
        self.models = Some(shared);
        Some(rx)
    }

    /// What the next heartbeat carries: the agent's status and its latest health row.
    pub fn status<T: Serialize>(&self, status: &T, health: Option<&crate::store::HealthRow>) {
        if let Ok(value) = serde_json::to_value(status) {
            self.status.send_replace(Some(serde_json::json!({ "status": value, "health": health })));
        }
    }

    /// The counters now.
    #[must_use]
    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        FleetStats {
            flows_exported: c.flows_exported.load(Ordering::Relaxed),
            batches_exported: c.batches_exported.load(Ordering::Relaxed),
            flows_dropped: c.flows_dropped.load(Ordering::Relaxed),
            flows_failed: c.flows_failed.load(Ordering::Relaxed),
            heartbeats_sent: c.heartbeats_sent.load(Ordering::Relaxed),
            heartbeats_failed: c.heartbeats_failed.load(Ordering::Relaxed),
            proposals_sent: c.proposals_sent.load(Ordering::Relaxed),
            proposals_failed: c.proposals_failed.load(Ordering::Relaxed),
            spool: self.spool.as_ref().map(|s| s.snapshot()),
            follow: self.follow.as_ref().and_then(|f| f.lock().ok().map(|s| *s)),
            models: self.models.as_ref().and_then(|m| m.lock().ok().map(|s| *s)),
        }
    }

    /// Sends what is queued and waits up to `timeout` for the acknowledgements; what the bus
    /// has not taken by then goes to the spool (or counts as failed).
    pub fn shutdown(mut self, timeout: Duration) {
        self.tx = None;
        let (Some(runtime), Some(task)) = (self.runtime.take(), self.task.take()) else { return };
        let abort = Arc::clone(&self.abort);
        let finished = runtime.block_on(async move {
            let mut task = task;
            if tokio::time::timeout(timeout, &mut task).await.is_ok() {
                return true;
            }
            abort.store(true, Ordering::Relaxed);
            tokio::time::timeout(Duration::from_secs(2), task).await.is_ok()
        });
        if !finished {
            warn!("fleet export did not finish before its shutdown timeout");
        }
        runtime.shutdown_timeout(Duration::from_millis(100));
    }
}

impl Drop for FleetExport {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::Relaxed);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How a key-value bucket is made when it is missing.
pub(crate) struct KvLayout {
    pub description: &'static str,
    /// Values kept per key.
    pub history: i64,
    /// Values older than this are dropped (zero: never).
    pub max_age: Duration,
}

/// The key-value bucket `name`; created with `layout` (file storage) when it is missing and
/// there is a layout.
///
/// # Errors
/// The bucket is missing (and not to be created) or the server refused.
pub(crate) async fn kv_bucket(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    layout: Option<&KvLayout>,
) -> Result<async_nats::jetstream::kv::Store, String> {
    use async_nats::jetstream::stream;
    match (jetstream.get_key_value(name).await, layout) {
        (Ok(kv), _) => Ok(kv),
        (Err(_), Some(layout)) => {
            // The bucket's stream, as the key-value layout defines it (ADR-8). Not through
            // `create_key_value`: async-nats 0.51 first asks for the account's information, and
            // cannot read nats-server 2.9's answer.
            let window = Duration::from_mins(2);
            jetstream
                .get_or_create_stream(stream::Config {
                    name: format!("KV_{name}"),
                    description: Some(layout.description.into()),
                    subjects: vec![format!("$KV.{name}.>")],
                    max_messages_per_subject: layout.history,
                    max_age: layout.max_age,
                    storage: stream::StorageType::File,
                    discard: stream::DiscardPolicy::New,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    duplicate_window: if layout.max_age.is_zero() { window } else { window.min(layout.max_age) },
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating bucket {name}: {e}"))?;
            jetstream.get_key_value(name).await.map_err(|e| format!("bucket {name}: {e}"))
        }
        (Err(e), None) => Err(format!("bucket {name}: {e}")),
    }
}

/// Block proposals waiting for the export, at most.
const PROPOSAL_QUEUE: usize = 1024;

/// A published batch waiting for its acknowledgement.
struct Pending {
    id: String,
    payload: bytes::Bytes,
    records: u64,
}

type AckFuture = std::pin::Pin<Box<dyn Future<Output = (Pending, Result<(), String>)> + Send>>;

/// The export's task.
struct Exporter {
    section: FleetSection,
    options: Options,
    jetstream: Option<async_nats::jetstream::Context>,
    /// Whether the streams were made sure of (with `create_stream`) on this connection.
    streams_ready: bool,
    subject_flows: String,
    subject_health: String,
    site: String,
    host: String,
    boot: u64,
    seq: u64,
    replay: Option<Replay>,
    acks: FuturesOrdered<AckFuture>,
    counters: Arc<Counters>,
    abort: Arc<AtomicBool>,
}

impl Exporter {
    async fn run(
        mut self,
        mut rx: tokio::sync::mpsc::Receiver<BiflowRecord>,
        status: tokio::sync::watch::Receiver<Option<serde_json::Value>>,
        mut proposals: tokio::sync::mpsc::Receiver<blocking::Proposal>,
    ) {
        let mut batch = Vec::with_capacity(self.section.batch);
        let mut flush = tokio::time::interval(self.section.flush);
        let mut beat = tokio::time::interval(self.section.heartbeat);
        let mut replay = tokio::time::interval(crate::alert::sink::TICK);
        for timer in [&mut flush, &mut beat, &mut replay] {
            timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => {
                        batch.push(record);
                        if batch.len() >= self.section.batch {
                            self.send(std::mem::take(&mut batch)).await;
                        }
                    }
                    None => break,
                },
                _ = flush.tick() => {
                    if !batch.is_empty() {
                        self.send(std::mem::take(&mut batch)).await;
                    }
                }
                _ = beat.tick() => {
                    let doc = status.borrow().clone();
                    if let Some(doc) = doc {
                        self.heartbeat(doc).await;
                    }
                }
                _ = replay.tick() => self.replay().await,
                Some(proposal) = proposals.recv() => self.propose(proposal).await,
                Some((pending, result)) = self.acks.next(), if !self.acks.is_empty() => self.acked(&pending, result),
            }
        }
        if !batch.is_empty() {
            self.send(batch).await;
        }
        while let Some((pending, result)) = self.acks.next().await {
            self.acked(&pending, result);
        }
        if let Some(jetstream) = &self.jetstream {
            let _ = tokio::time::timeout(Duration::from_secs(1), jetstream.client().flush()).await;
        }
        debug!("fleet export stopped");
    }

    /// Whether the bus can be tried now: connected (streams made sure of), or the backoff
    /// after the last failure has not passed.
    async fn ready(&mut self) -> bool {
        if self.replay.as_ref().is_some_and(|r| !r.may_try()) {
            return false;
        }
        let connected = self.options.ensure_connected(&mut self.jetstream).await;
        let made = match (&connected, &self.jetstream) {
            (Ok(()), Some(j)) if !self.streams_ready => {
                let flows = self.options.ensure_stream(j, &self.section.flow_stream, FLOW_SUBJECTS).await;
                let health = self.options.ensure_stream(j, &self.section.health_stream, HEALTH_SUBJECTS).await;
                let proposals = match &self.section.blocking {
                    Some(b) if b.propose => {
                        self.options.ensure_stream(j, &b.proposal_stream, blocking::PROPOSAL_SUBJECTS).await
                    }
                    _ => Ok(()),
                };
                flows.and(health).and(proposals)
            }
            _ => connected,
        };
        match made {
            Ok(()) => {
                self.streams_ready = true;
                true
            }
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    fn failed(&mut self, error: &str) {
        if let Some(replay) = &mut self.replay {
            replay.failed(error);
        } else {
            debug!(error, "fleet export: bus unavailable");
        }
    }

    /// Encodes and publishes a batch, or spools it.
    async fn send(&mut self, records: Vec<BiflowRecord>) {
        let count = records.len() as u64;
        let mut payload = Vec::with_capacity(records.len() * 224);
        proto::encode_batch(&self.site, &self.host, self.boot, self.seq, &records, &mut payload);
        let pending = Pending {
            id: format!("{}/{}-{}", self.host, self.boot, self.seq),
            payload: payload.into(),
            records: count,
        };
        self.seq += 1;
        let spooling = self.replay.as_ref().is_some_and(|r| !r.spool.is_empty());
        if spooling || !self.ready().await {
            self.spool(&pending);
            return;
        }
        let Some(jetstream) = self.jetstream.clone() else { return self.spool(&pending) };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, pending.id.as_str());
        match jetstream.publish_with_headers(self.subject_flows.clone(), headers, pending.payload.clone()).await {
            Ok(ack) => {
                let timeout = self.options.timeout();
                self.acks.push_back(Box::pin(async move {
                    let result = match tokio::time::timeout(timeout, ack.into_future()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err(format!("no acknowledgement within {timeout:?}")),
                    };
                    (pending, result)
                }));
            }
            Err(e) => {
                self.failed(&e.to_string());
                self.spool(&pending);
            }
        }
        while self.acks.len() >= self.section.max_in_flight {
            let Some((pending, result)) = self.acks.next().await else { break };
            self.acked(&pending, result);
        }
    }

    fn acked(&mut self, pending: &Pending, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.counters.flows_exported.fetch_add(pending.records, Ordering::Relaxed);
                self.counters.batches_exported.fetch_add(1, Ordering::Relaxed);
                if let Some(replay) = &mut self.replay {
                    replay.succeeded();
                }
            }
            Err(e) => {
                self.failed(&e);
                self.spool(pending);
            }
        }
    }

    /// Keeps a batch in the spool, or counts it as failed without one.
    fn spool(&mut self, pending: &Pending) {
        let Some(replay) = &mut self.replay else {
            self.counters.flows_failed.fetch_add(pending.records, Ordering::Relaxed);
            return;
        };
        if let Err(e) = replay.spool.push(Class::Flow, &pending.id, &pending.payload, crate::clock::wall_ns()) {
            warn!(error = %e, "fleet export: a flow batch could not be spooled");
            self.counters.flows_failed.fetch_add(pending.records, Ordering::Relaxed);
        }
    }

    /// Replays the spool when the bus answers.
    async fn replay(&mut self) {
        if self.replay.as_ref().is_none_or(|r| r.spool.is_empty()) || !self.ready().await {
            return;
        }
        let (Some(jetstream), Some(replay)) = (self.jetstream.clone(), self.replay.as_mut()) else { return };
        let before = replay.spool.counters().snapshot().flows.replayed;
        let drained = replay_some(replay, &jetstream, &self.subject_flows, self.options.timeout(), &self.abort).await;
        // The spool's records are batches: they count as batches exported (the spool's own
        // counters count them too); `flows_exported` counts the flows published directly.
        let replayed = replay.spool.counters().snapshot().flows.replayed - before;
        self.counters.batches_exported.fetch_add(replayed, Ordering::Relaxed);
        if drained && replayed > 0 {
            info!(subject = self.subject_flows, "fleet export: spool replayed");
        }
    }

    /// Publishes a block proposal (acknowledged on a task of its own, so the export goes on);
    /// a trusted agent (`direct`) writes the rule into the bucket as well. Not spooled: a
    /// proposal is worth its TTL, and the agent's own rule does not depend on it.
    async fn propose(&mut self, proposal: blocking::Proposal) {
        let Some(section) = self.section.blocking.clone() else { return };
        let counters = Arc::clone(&self.counters);
        if !self.ready().await {
            counters.proposals_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(jetstream) = self.jetstream.clone() else { return };
        let id = format!("{}/{}-p{}", self.host, self.boot, self.seq);
        self.seq += 1;
        let subject = format!("vigil.v1.proposal.{}.{}", self.site, self.host);
        let by = format!("{}.{}", self.site, self.host);
        let timeout = self.options.timeout();
        let create = self.section.bus.create_stream;
        tokio::spawn(async move {
            let Ok(payload) = serde_json::to_vec(&proposal) else { return };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            let sent = async {
                let ack = jetstream
                    .publish_with_headers(subject, headers, payload.into())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(timeout, ack.into_future())
                    .await
                    .map_err(|_| format!("no acknowledgement within {timeout:?}"))?
                    .map_err(|e| e.to_string())?;
                if section.direct {
                    let kv = blocking::bucket(&jetstream, &section.bucket, create, Duration::from_hours(25)).await?;
                    let ttl_ms = proposal.ttl_s.saturating_mul(1000);
                    let rule = blocking::FleetRule {
                        schema: blocking::SCHEMA,
                        prefix: proposal.prefix,
                        expires_ms: proposal.decided_ms.saturating_add(ttl_ms),
                        decided_ms: proposal.decided_ms,
                        proposed_by: by,
                        reason: proposal.reason.clone(),
                    };
                    blocking::put_rule(&kv, &rule).await?;
                }
                Ok::<(), String>(())
            };
            match sent.await {
                Ok(()) => counters.proposals_sent.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    warn!(error = e, prefix = %proposal.prefix, "fleet: a block proposal did not reach the bus");
                    counters.proposals_failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }

    /// Publishes the status and health; not acknowledged, not spooled.
    async fn heartbeat(&mut self, latest: serde_json::Value) {
        if !self.ready().await {
            self.counters.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(jetstream) = &self.jetstream else { return };
        let doc = serde_json::json!({
            "schema": 1,
            "site": self.site,
            "host": self.host,
            "boot": self.boot,
            "time": crate::clock::rfc3339_millis(crate::clock::wall_ns()),
            "status": latest["status"],
            "health": latest["health"],
            // The fleet's own hosts are never blocked fleet-wide (the collector's policy).
            "addresses": crate::detect::allowlist::host_addresses()
                .into_iter()
                .filter(|a| !a.is_loopback() && !a.is_unspecified())
                .collect::<Vec<_>>(),
        });
        let payload = bytes::Bytes::from(doc.to_string());
        match jetstream.client().publish(self.subject_health.clone(), payload).await {
            Ok(()) => self.counters.heartbeats_sent.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.counters.heartbeats_failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

#[cfg(test)]
pub(crate) mod tests;
