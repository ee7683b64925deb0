//! `vigil collector`: the fleet's alerts from NATS `JetStream` into the store. A durable pull
//! consumer on the alert stream hands over batches; each batch is written in one transaction
//! (`INSERT OR IGNORE` on host and `event.id`, so a redelivered message is stored once) and
//! acknowledged only after the commit: a collector killed mid-batch loses nothing, the
//! messages come again. The host of a row is the subject's host token
//! (`vigil.v1.alert.<site>.<host>`), so `vigil query` and the console show the whole fleet in
//! the single-host schema. As many collectors as needed can share the durable consumer.
//!
//! First slice of the fleet (docs/fleet.md): alerts only.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::alert::sink::nats::{NatsSettings, Options};
use crate::store::AlertRow;

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
}

fn default_durable() -> String {
    "vigil-collector".to_owned()
}
fn default_batch() -> usize {
    500
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
        if self.durable.is_empty() || !self.durable.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(("collector.durable", format!("{:?} must be letters, digits, - or _", self.durable)));
        }
        if !(1..=10_000).contains(&self.batch) {
            return Err(("collector.batch", "must be between 1 and 10000".to_owned()));
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
    /// Alerts the store already had (redeliveries, repeats).
    pub repeated: u64,
    /// Messages that are not alerts of a known shape: acknowledged and left out.
    pub skipped: u64,
}

/// The host token of `vigil.v1.alert.<site>.<host>`.
fn subject_host(subject: &str) -> Option<&str> {
    let mut tokens = subject.split('.');
    match (tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next(), tokens.next()) {
        (Some("vigil"), Some("v1"), Some("alert"), Some(_site), Some(host), None) if !host.is_empty() => Some(host),
        _ => None,
    }
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let jetstream = options.connect().await.map_err(|e| anyhow::anyhow!("nats {}: {e}", options.url()))?;
        let stream = jetstream
            .get_stream(options.stream())
            .await
            .map_err(|e| anyhow::anyhow!("nats stream {}: {e}", options.stream()))?;
        let consumer = stream
            .get_or_create_consumer(
                &section.durable,
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(section.durable.clone()),
                    filter_subject: crate::alert::sink::nats::ALERT_SUBJECTS.to_owned(),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("nats consumer {}: {e}", section.durable))?;
        info!(url = %options.url(), stream = options.stream(), durable = section.durable, store = %db.display(), "collector consuming");
        let mut stats = CollectorStats::default();
        while !stop.load(Ordering::Relaxed) {
            let batch = consumer.fetch().max_messages(section.batch).expires(Duration::from_millis(500)).messages().await;
            let mut messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    warn!(error = %e, "collector: fetching a batch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut taken = Vec::new();
            while let Some(m) = messages.next().await {
                match m {
                    Ok(m) => taken.push(m),
                    Err(e) => warn!(error = %e, "collector: a message of the batch failed"),
                }
            }
            if taken.is_empty() {
                continue;
            }
            let rows: Vec<Option<(String, AlertRow)>> = taken
                .iter()
                .map(|m| {
                    let host = subject_host(m.subject.as_str())?.to_owned();
                    let row = AlertRow::from_document(std::str::from_utf8(&m.payload).ok()?)?;
                    Some((host, row))
                })
                .collect();
            let skipped = rows.iter().filter(|r| r.is_none()).count();
            let alerts = rows.iter().flatten().count();
            // The collector's only task: writing here holds nothing else up.
            let written =
                crate::store::insert_alerts(&mut conn, rows.iter().flatten().map(|(h, r)| (h.as_str(), r)));
            let new = match written {
                Ok(n) => n,
                Err(e) => {
                    // Not acknowledged: the stream delivers them again after `ack_wait`.
                    warn!(error = %e, messages = taken.len(), "collector: the store refused the batch; it will come again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            for m in &taken {
                if let Err(e) = m.ack().await {
                    warn!(error = %e, "collector: acknowledging failed; the message will come again (stored once)");
                }
            }
            stats.messages += taken.len() as u64;
            stats.stored += new as u64;
            stats.repeated += (alerts - new) as u64;
            stats.skipped += skipped as u64;
        }
        info!(?stats, "collector stopped");
        Ok(stats)
    })
}

#[cfg(test)]
mod tests;
