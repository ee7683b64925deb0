//! Fleet-wide blocking (docs/fleet.md, "Fleet-wide blocking").
//!
//! 1. An agent's auto-block decision goes out as a [`Proposal`] on
//!    `vigil.v1.proposal.<site>.<host>` (the proposal stream, `[fleet.blocking]`).
//! 2. `vigil collector` with a `[collector.policy]` reads the proposals with a durable consumer,
//!    puts each through the fleet's rails ([`Policy`]: fleet allowlist, the fleet's own hosts,
//!    shortest prefix, rate of new rules, number of rules, longest TTL) and writes what passes
//!    into the fleet blocklist, a `JetStream` key-value bucket: one key per prefix
//!    ([`key_for`]), the value a [`FleetRule`] that carries its own expiry (nats-server 2.9 has
//!    no per-key TTL). The collector deletes a key when its rule lapses.
//! 3. Every agent that follows the blocklist watches the bucket (the latest value of every key,
//!    then each change), puts each rule through its own rails ([`Follower`]: its allowlist,
//!    which holds its own addresses, gateways and loopback) and installs a kernel rule for the
//!    time the rule has left. A deleted key removes the rule the follower installed. Whatever
//!    the bus says, an agent never blocks what its allowlist holds.
//!
//! With `direct = true` a trusted agent writes its decisions into the bucket itself (its own
//! rails already passed them), without the collector's policy.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::yes;
use crate::alert::sink::nats::check_tokens;
use crate::block::rules::{Lapse, Origin, Rule, normalize};
use crate::block::store::RuleStore;
use crate::detect::allowlist::Allowlist;
use crate::detect::engine::BlockMode;

/// The proposal stream's subjects.
pub const PROPOSAL_SUBJECTS: &str = "vigil.v1.proposal.>";
/// The version of [`Proposal`] and [`FleetRule`] documents.
pub const SCHEMA: u32 = 1;

/// `[fleet.blocking]`: an agent's part in fleet-wide blocking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockingSection {
    /// Publish this agent's auto-block decisions as proposals.
    #[serde(default = "yes")]
    pub propose: bool,
    /// What the agent does with the fleet blocklist: `off` (does not watch it), `dry-run` (logs
    /// and counts what it would install), `enforce` (installs kernel rules).
    #[serde(default = "dry_run")]
    pub follow: BlockMode,
    /// The key-value bucket of the fleet blocklist.
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// The stream that takes `vigil.v1.proposal.>` (created with `bus.create_stream`).
    #[serde(default = "default_proposal_stream")]
    pub proposal_stream: String,
    /// A trusted agent: writes its decisions into the bucket itself, past no fleet rails.
    #[serde(default)]
    pub direct: bool,
}

fn dry_run() -> BlockMode {
    BlockMode::DryRun
}
pub(crate) fn default_bucket() -> String {
    "VIGIL_BLOCKLIST".to_owned()
}
pub(crate) fn default_proposal_stream() -> String {
    "VIGIL_PROPOSALS".to_owned()
}

impl BlockingSection {
    /// # Errors
    /// The key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_tokens([
            ("fleet.blocking.bucket", self.bucket.as_str()),
            ("fleet.blocking.proposal_stream", self.proposal_stream.as_str()),
        ])
    }
}

/// An agent's block decision, as it asks the fleet to follow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub schema: u32,
    /// The source prefix the agent blocked.
    pub prefix: IpNet,
    /// The agent's TTL for it, in seconds.
    pub ttl_s: u64,
    /// When the agent decided (Unix ms).
    pub decided_ms: u64,
    /// Why, in the agent's words (its block event's reason).
    pub reason: String,
}

/// A rule of the fleet blocklist: the value under the prefix's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetRule {
    pub schema: u32,
    pub prefix: IpNet,
    /// When it lapses (Unix ms); agents install it for the time left.
    pub expires_ms: u64,
    /// When the proposing agent decided (Unix ms).
    pub decided_ms: u64,
    /// `<site>.<host>` of the agent that proposed it.
    pub proposed_by: String,
    pub reason: String,
}

/// The bucket key of `prefix`: its text with `:` as `-` and `/` as `_` (key-value keys allow
/// letters, digits, `-`, `_`, `/`, `=` and `.`), e.g. `192.0.2.7_32`, `2001-db8--_48`.
#[must_use]
pub fn key_for(prefix: IpNet) -> String {
    prefix.to_string().replace(':', "-").replace('/', "_")
}

/// The prefix of a bucket key written by [`key_for`].
#[must_use]
pub fn prefix_of_key(key: &str) -> Option<IpNet> {
    key.replace('-', ":").replace('_', "/").parse().ok()
}

// ---------------------------------------------------------------------------------------------
// The collector's policy.

/// `[collector.policy]`: the fleet's rails for proposals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// Prefixes the fleet never blocks.
    #[serde(default)]
    pub allowlist: Vec<IpNet>,
    /// The fleet's own hosts (never blocked); hosts that send heartbeats add their addresses.
    #[serde(default)]
    pub fleet_hosts: Vec<IpNet>,
    /// The shortest IPv4 prefix a rule may have (a /16 proposal is refused at 24).
    #[serde(default = "default_min_v4")]
    pub min_prefix_v4: u8,
    /// The shortest IPv6 prefix a rule may have.
    #[serde(default = "default_min_v6")]
    pub min_prefix_v6: u8,
    /// The longest TTL: longer proposals are shortened to it.
    #[serde(default = "default_max_ttl", with = "crate::duration_serde")]
    pub max_ttl: Duration,
    /// New prefixes per minute at most, fleet-wide.
    #[serde(default = "default_max_new")]
    pub max_new_per_minute: usize,
    /// Rules in the fleet blocklist at most.
    #[serde(default = "default_max_rules")]
    pub max_rules: usize,
    /// The key-value bucket (created when missing).
    #[serde(default = "default_bucket")]
    pub bucket: String,
    /// The agents' proposal stream.
    #[serde(default = "default_proposal_stream")]
    pub proposal_stream: String,
    /// The durable consumer on the proposal stream, shared by the fleet's collectors.
    #[serde(default = "default_policy_durable")]
    pub durable: String,
}

fn default_min_v4() -> u8 {
    24
}
fn default_min_v6() -> u8 {
    64
}
fn default_max_ttl() -> Duration {
    Duration::from_hours(1)
}
fn default_max_new() -> usize {
    60
}
fn default_max_rules() -> usize {
    10_000
}
fn default_policy_durable() -> String {
    "vigil-policy".to_owned()
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            fleet_hosts: Vec::new(),
            min_prefix_v4: default_min_v4(),
            min_prefix_v6: default_min_v6(),
            max_ttl: default_max_ttl(),
            max_new_per_minute: default_max_new(),
            max_rules: default_max_rules(),
            bucket: default_bucket(),
            proposal_stream: default_proposal_stream(),
            durable: default_policy_durable(),
        }
    }
}

impl PolicySection {
    /// # Errors
    /// The key at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.min_prefix_v4 > 32 {
            return Err(("collector.policy.min_prefix_v4", "must be at most 32".to_owned()));
        }
        if self.min_prefix_v6 > 128 {
            return Err(("collector.policy.min_prefix_v6", "must be at most 128".to_owned()));
        }
        if self.max_ttl < Duration::from_secs(1) {
            return Err(("collector.policy.max_ttl", "must be at least 1s".to_owned()));
        }
        if self.max_new_per_minute == 0 || self.max_rules == 0 {
            return Err(("collector.policy.max_new_per_minute", "and max_rules must be more than zero".to_owned()));
        }
        check_tokens([
            ("collector.policy.bucket", self.bucket.as_str()),
            ("collector.policy.proposal_stream", self.proposal_stream.as_str()),
            ("collector.policy.durable", self.durable.as_str()),
        ])
    }
}

/// What the policy did with a proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Write this rule (new, or later than the one there).
    Put(FleetRule),
    /// The blocklist already holds the prefix at least as long.
    Held,
    /// A rail stopped it.
    Refused(String),
}

/// The fleet's rails, and what the blocklist holds (from the collector's watch of the bucket).
#[derive(Debug)]
pub struct Policy {
    section: PolicySection,
    allowlist: Allowlist,
    hosts: Allowlist,
    /// Addresses each host reported in its heartbeats.
    reported: HashMap<String, Vec<IpAddr>>,
    /// When new prefixes were accepted (Unix ms), the last minute's.
    recent: VecDeque<u64>,
    active: HashMap<IpNet, FleetRule>,
}

impl Policy {
    #[must_use]
    pub fn new(section: PolicySection) -> Self {
        let mut allowlist = Allowlist::default();
        for net in &section.allowlist {
            allowlist.push(*net, "fleet allowlist");
        }
        let mut hosts = Allowlist::default();
        for net in &section.fleet_hosts {
            hosts.push(*net, "fleet host");
        }
        Self { section, allowlist, hosts, reported: HashMap::new(), recent: VecDeque::new(), active: HashMap::new() }
    }

    /// The addresses `host` reported (its heartbeat): the fleet's own, never blocked.
    pub fn host_addresses(&mut self, host: &str, addresses: Vec<IpAddr>) {
        self.reported.insert(host.to_owned(), addresses);
    }

    /// The blocklist holds `rule` now (a put seen on the bucket, ours or another's).
    pub fn observe(&mut self, rule: FleetRule) {
        self.active.insert(rule.prefix, rule);
    }

    /// The blocklist no longer holds `prefix`.
    pub fn forget(&mut self, prefix: IpNet) {
        self.active.remove(&prefix);
    }

    /// Rules whose time is up at `now_ms`: their keys are to be deleted.
    #[must_use]
    pub fn lapsed(&self, now_ms: u64) -> Vec<IpNet> {
        let mut lapsed: Vec<IpNet> =
            self.active.values().filter(|r| r.expires_ms <= now_ms).map(|r| r.prefix).collect();
        lapsed.sort();
        lapsed
    }

    /// Rules the blocklist holds (as last seen).
    #[must_use]
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Puts a proposal from `by` (`<site>.<host>`, from its subject) through the rails at
    /// `now_ms`.
    pub fn decide(&mut self, proposal: &Proposal, by: &str, now_ms: u64) -> Verdict {
        let refuse = |why: String| Verdict::Refused(why);
        if proposal.schema != SCHEMA {
            return refuse(format!("proposal schema {} (this collector reads {SCHEMA})", proposal.schema));
        }
        let prefix = match normalize(proposal.prefix) {
            Ok(p) => p,
            Err(e) => return refuse(e.to_string()),
        };
        let (len, min) = match prefix {
            IpNet::V4(n) => (n.prefix_len(), self.section.min_prefix_v4),
            IpNet::V6(n) => (n.prefix_len(), self.section.min_prefix_v6),
        };
        if len < min {
            return refuse(format!("{prefix} is wider than the fleet allows (/{min} at the widest)"));
        }
        if let Some((net, why)) = self.allowlist.overlap(prefix).or_else(|| self.hosts.overlap(prefix)) {
            return refuse(format!("{prefix} covers {net} ({why})"));
        }
        if let Some((host, addr)) = self
            .reported
            .iter()
            .find_map(|(h, addrs)| addrs.iter().find(|a| prefix.contains(&a.to_canonical())).map(|a| (h, a)))
        {
            return refuse(format!("{prefix} covers {addr}, an address of fleet host {host}"));
        }
        if proposal.ttl_s == 0 {
            return refuse("a TTL of 0 s".to_owned());
        }
        let ttl_ms = proposal
            .ttl_s
            .saturating_mul(1000)
            .min(u64::try_from(self.section.max_ttl.as_millis()).unwrap_or(u64::MAX));
        // A decision stamped in the future (a clock ahead) counts from now.
        let expires_ms = proposal.decided_ms.min(now_ms).saturating_add(ttl_ms);
        if expires_ms <= now_ms {
            return refuse(format!("{prefix}: the proposal's time is already up"));
        }
        if let Some(held) = self.active.get(&prefix) {
            if held.expires_ms >= expires_ms {
                return Verdict::Held;
            }
        } else {
            if self.active.len() >= self.section.max_rules {
                return refuse(format!("the fleet blocklist holds {} rules (max_rules)", self.active.len()));
            }
            let minute_ago = now_ms.saturating_sub(60_000);
            while self.recent.front().is_some_and(|&t| t <= minute_ago) {
                self.recent.pop_front();
            }
            if self.recent.len() >= self.section.max_new_per_minute {
                return refuse(format!("{} new rules in the last minute (max_new_per_minute)", self.recent.len()));
            }
            self.recent.push_back(now_ms);
        }
        let rule = FleetRule {
            schema: SCHEMA,
            prefix,
            expires_ms,
            decided_ms: proposal.decided_ms,
            proposed_by: by.to_owned(),
            reason: proposal.reason.clone(),
        };
        self.active.insert(prefix, rule.clone());
        Verdict::Put(rule)
    }
}

// ---------------------------------------------------------------------------------------------
// An agent following the blocklist.

/// A change of the fleet blocklist, as the watch delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    Put(FleetRule),
    Delete(IpNet),
}

/// What the follower did with an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Installed(Rule),
    /// `follow = "dry-run"`.
    WouldInstall(IpNet),
    /// The agent's own rails stopped it.
    Refused(String),
    /// The rule the follower had installed is gone from the kernel.
    Removed(IpNet),
    /// Nothing to do, and why.
    Ignored(&'static str),
    Failed(String),
}

/// The follower's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowStats {
    /// Updates read from the bucket.
    pub updates: u64,
    pub installed: u64,
    pub would_install: u64,
    pub refused: u64,
    pub removed: u64,
    pub failed: u64,
    /// Rules installed now.
    pub active: u64,
}

/// The agent's side: its rails, and the rules it installed from the bucket.
#[derive(Debug)]
pub struct Follower {
    mode: BlockMode,
    allowlist: Allowlist,
    installed: HashMap<IpNet, Rule>,
    pub stats: FollowStats,
}

/// Rules whose time left is under this are not installed (the kernel needs a second at least).
const MIN_LEFT_MS: u64 = 1000;

impl Follower {
    #[must_use]
    pub fn new(mode: BlockMode, allowlist: Allowlist) -> Self {
        Self { mode, allowlist, installed: HashMap::new(), stats: FollowStats::default() }
    }

    /// Takes over the fleet rules a previous run left in the kernel, so a key deleted while the
    /// agent was away removes its rule when the watch reports it.
    ///
    /// # Errors
    /// The rules cannot be read.
    pub fn adopt(&mut self, rules: &dyn RuleStore) -> Result<usize, crate::block::BlockError> {
        for rule in rules.list()?.into_iter().filter(|r| r.origin == Origin::Fleet) {
            self.installed.insert(rule.prefix, rule);
        }
        self.stats.active = self.installed.len() as u64;
        Ok(self.installed.len())
    }

    /// Applies `update` at `now_ms` (Unix ms) to `rules`.
    pub fn apply(&mut self, update: &Update, now_ms: u64, rules: &mut dyn RuleStore) -> Applied {
        self.stats.updates += 1;
        let applied = match update {
            Update::Put(rule) => self.put(rule, now_ms, rules),
            Update::Delete(prefix) => self.delete(*prefix, rules),
        };
        match &applied {
            Applied::Installed(_) => self.stats.installed += 1,
            Applied::WouldInstall(_) => self.stats.would_install += 1,
            Applied::Refused(_) => self.stats.refused += 1,
            Applied::Removed(_) => self.stats.removed += 1,
            Applied::Failed(_) => self.stats.failed += 1,
            Applied::Ignored(_) => {}
        }
        self.stats.active = self.installed.len() as u64;
        applied
    }

    fn put(&mut self, fleet: &FleetRule, now_ms: u64, rules: &mut dyn RuleStore) -> Applied {
        if self.mode == BlockMode::Off {
            return Applied::Ignored("follow is off");
        }
        let prefix = match normalize(fleet.prefix) {
            Ok(p) => p,
            Err(e) => return Applied::Refused(e.to_string()),
        };
        let left_ms = fleet.expires_ms.saturating_sub(now_ms);
        if left_ms < MIN_LEFT_MS {
            return Applied::Ignored("its time is up");
        }
        if let Some((net, why)) = self.allowlist.overlap(prefix) {
            return Applied::Refused(format!("{prefix} covers {net} ({why})"));
        }
        if self.mode == BlockMode::DryRun {
            return Applied::WouldInstall(prefix);
        }
        let left = Duration::from_millis(left_ms);
        // A rule of the agent's own (manual or auto) that lasts longer stays as it is.
        let mono_now = crate::clock::monotonic_ns();
        match rules.list() {
            Ok(list) => {
                if list.iter().any(|r| {
                    r.prefix == prefix
                        && r.origin != Origin::Fleet
                        && r.expires_ns.saturating_sub(mono_now) >= crate::clock::duration_ns(left)
                }) {
                    return Applied::Ignored("a longer rule of the agent's own holds the prefix");
                }
            }
            Err(e) => return Applied::Failed(e.to_string()),
        }
        match rules.add(prefix, left, Origin::Fleet) {
            Ok(rule) => {
                self.installed.insert(prefix, rule.clone());
                Applied::Installed(rule)
            }
            Err(e) => Applied::Failed(e.to_string()),
        }
    }

    fn delete(&mut self, prefix: IpNet, rules: &mut dyn RuleStore) -> Applied {
        let Ok(prefix) = normalize(prefix) else { return Applied::Ignored("not a prefix the kernel holds") };
        // The rule installed for it (or adopted from a previous run).
        let Some(rule) = self.installed.remove(&prefix) else { return Applied::Ignored("no fleet rule for it here") };
        // Only that same rule: one written since (an operator's, the engine's) stays.
        match rules.remove_if_lapsed(&rule) {
            Ok(Lapse::Removed) => Applied::Removed(prefix),
            Ok(Lapse::Gone | Lapse::Replaced(_)) => Applied::Ignored("the kernel no longer holds the rule installed"),
            Err(e) => Applied::Failed(e.to_string()),
        }
    }
}

/// The update an entry of the bucket is, if it is one of ours.
#[must_use]
pub fn update_of(key: &str, operation: async_nats::jetstream::kv::Operation, value: &[u8]) -> Option<Update> {
    use async_nats::jetstream::kv::Operation;
    match operation {
        Operation::Put => {
            let rule: FleetRule = serde_json::from_slice(value).ok()?;
            (rule.schema == SCHEMA && key_for(rule.prefix) == key).then_some(Update::Put(rule))
        }
        Operation::Delete | Operation::Purge => prefix_of_key(key).map(Update::Delete),
    }
}

// ---------------------------------------------------------------------------------------------
// On the bus.

/// The bucket `name`; created (file storage, one value per key, values older than `max_age`
/// dropped as a backstop to the expiry in each value) when `create` is set and it is missing.
///
/// # Errors
/// The bucket is missing (and not to be created) or the server refused.
pub(crate) async fn bucket(
    jetstream: &async_nats::jetstream::Context,
    name: &str,
    create: bool,
    max_age: Duration,
) -> Result<async_nats::jetstream::kv::Store, String> {
    let layout = super::KvLayout {
        description: "Vigil fleet blocklist: a key per source prefix, the value a rule with its expiry",
        history: 1,
        max_age,
    };
    super::kv_bucket(jetstream, name, create.then_some(&layout)).await
}

/// Writes `rule` under its key.
///
/// # Errors
/// The server refused or did not answer.
pub(crate) async fn put_rule(kv: &async_nats::jetstream::kv::Store, rule: &FleetRule) -> Result<u64, String> {
    let value = serde_json::to_vec(rule).map_err(|e| e.to_string())?;
    kv.put(key_for(rule.prefix), value.into()).await.map_err(|e| format!("writing {}: {e}", rule.prefix))
}

/// The agent's follower, on the fleet export's runtime until it shuts down: watches the bucket
/// (every key's latest value, then each change) and applies each update to `rules`; a broken
/// watch or a missing bucket is retried every second.
pub(crate) async fn follow(
    options: crate::alert::sink::nats::Options,
    name: String,
    mut follower: Follower,
    mut rules: Box<dyn RuleStore + Send>,
    shared: std::sync::Arc<std::sync::Mutex<FollowStats>>,
) {
    use futures_util::StreamExt as _;
    use tracing::{debug, info, warn};

    match follower.adopt(rules.as_ref()) {
        Ok(0) => {}
        Ok(n) => info!(rules = n, "fleet blocklist: rules of a previous run taken over"),
        Err(e) => warn!(error = %e, "fleet blocklist: the kernel's rules cannot be read"),
    }
    let mut jetstream = None;
    let mut last_error = String::new();
    loop {
        let watch = async {
            options.ensure_connected(&mut jetstream).await?;
            let js = jetstream.as_ref().ok_or("not connected")?;
            let kv = bucket(js, &name, false, Duration::ZERO).await?;
            kv.watch_with_history(">").await.map_err(|e| format!("watching bucket {name}: {e}"))
        };
        let mut watch = match watch.await {
            Ok(w) => w,
            Err(e) => {
                if e != last_error {
                    warn!(error = %e, "fleet blocklist: not followed yet; retrying every second");
                    last_error = e;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        last_error.clear();
        info!(bucket = name, mode = ?follower.mode, "following the fleet blocklist");
        while let Some(entry) = watch.next().await {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "fleet blocklist: the watch broke; watching again");
                    break;
                }
            };
            let Some(update) = update_of(&entry.key, entry.operation, &entry.value) else {
                debug!(key = entry.key, "fleet blocklist: an entry that is not a rule of this schema");
                continue;
            };
            let now_ms = crate::clock::wall_ns() / 1_000_000;
            match follower.apply(&update, now_ms, rules.as_mut()) {
                Applied::Installed(rule) => info!(prefix = %rule.prefix, "fleet blocklist: rule installed"),
                Applied::WouldInstall(prefix) => info!(%prefix, "fleet blocklist: would install (follow = dry-run)"),
                Applied::Refused(why) => warn!(why, "fleet blocklist: refused by this host's rails"),
                Applied::Removed(prefix) => info!(%prefix, "fleet blocklist: rule removed"),
                Applied::Failed(e) => warn!(error = e, "fleet blocklist: installing failed"),
                Applied::Ignored(why) => debug!(why, ?update, "fleet blocklist: nothing to do"),
            }
            if let Ok(mut s) = shared.lock() {
                *s = follower.stats;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the collector's policy did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyStats {
    pub proposals: u64,
    pub accepted: u64,
    /// Proposals for a prefix the blocklist already held as long.
    pub held: u64,
    pub refused: u64,
    /// Keys deleted because their rule lapsed.
    pub expired: u64,
    /// Proposals that could not be read.
    pub skipped: u64,
}

/// The collector's policy until `stop`: proposals from the durable consumer through the
/// [`Policy`] into the bucket (acknowledged once written; a failed write is not acknowledged
/// and comes again), the bucket watched for what it holds, lapsed keys deleted, and the fleet
/// hosts' addresses read from their heartbeats.
///
/// # Errors
/// The bus, the proposal stream or the bucket cannot be reached at start.
pub(crate) async fn run_policy(
    options: &crate::alert::sink::nats::Options,
    section: &PolicySection,
    health_stream: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<PolicyStats, String> {
    use futures_util::StreamExt as _;
    use std::sync::atomic::Ordering;
    use tracing::{debug, info, warn};

    let js = options.connect().await?;
    options.ensure_stream(&js, &section.proposal_stream, PROPOSAL_SUBJECTS).await?;
    let kv = bucket(&js, &section.bucket, true, section.max_ttl + Duration::from_mins(1)).await?;
    let consumer = js
        .get_stream(&section.proposal_stream)
        .await
        .map_err(|e| format!("nats stream {}: {e}", section.proposal_stream))?
        .get_or_create_consumer(
            &section.durable,
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(section.durable.clone()),
                filter_subject: PROPOSAL_SUBJECTS.to_owned(),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("nats consumer {}: {e}", section.durable))?;
    let mut proposals = consumer.messages().await.map_err(|e| format!("reading proposals: {e}"))?;
    let mut watch = kv.watch_with_history(">").await.map_err(|e| format!("watching bucket {}: {e}", section.bucket))?;
    let mut heartbeats = heartbeats(&js, health_stream).await;
    info!(stream = section.proposal_stream, bucket = section.bucket, "policy: deciding the fleet's proposals");
    let mut policy = Policy::new(section.clone());
    let mut stats = PolicyStats::default();
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            entry = watch.next() => match entry {
                Some(Ok(entry)) => match update_of(&entry.key, entry.operation, &entry.value) {
                    Some(Update::Put(rule)) => policy.observe(rule),
                    Some(Update::Delete(prefix)) => policy.forget(prefix),
                    None => {}
                },
                Some(Err(e)) => warn!(error = %e, "policy: the bucket's watch failed"),
                None => {
                    warn!("policy: the bucket's watch ended; watching again");
                    match kv.watch_with_history(">").await {
                        Ok(w) => watch = w,
                        Err(e) => {
                            warn!(error = %e, "policy: watching the bucket failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            },
            message = proposals.next() => match message {
                Some(Ok(message)) => decide_one(&mut policy, &kv, &message, &mut stats).await,
                Some(Err(e)) => {
                    debug!(error = %e, "policy: reading proposals");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => {
                    warn!("policy: the proposal consumer ended; reading again");
                    match consumer.messages().await {
                        Ok(p) => proposals = p,
                        Err(e) => {
                            warn!(error = %e, "policy: reading proposals failed");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            },
            Some(Ok(beat)) = async { match heartbeats.as_mut() { Some(h) => h.next().await, None => std::future::pending().await } } => {
                if let Some(host) = beat.subject.as_str().strip_prefix("vigil.v1.health.") {
                    let addresses = serde_json::from_slice::<serde_json::Value>(&beat.payload)
                        .ok()
                        .and_then(|v| serde_json::from_value::<Vec<IpAddr>>(v["addresses"].clone()).ok())
                        .unwrap_or_default();
                    policy.host_addresses(host, addresses);
                }
            },
            _ = sweep.tick() => {
                let now_ms = crate::clock::wall_ns() / 1_000_000;
                for prefix in policy.lapsed(now_ms) {
                    match kv.delete(key_for(prefix)).await {
                        Ok(()) => {
                            policy.forget(prefix);
                            stats.expired += 1;
                            info!(%prefix, "policy: fleet rule lapsed, key deleted");
                        }
                        Err(e) => warn!(error = %e, %prefix, "policy: deleting a lapsed key failed; retrying"),
                    }
                }
            }
        }
    }
    info!(?stats, "policy stopped");
    Ok(stats)
}

/// The latest heartbeat of each host, then each new one (their addresses are the fleet's); none
/// when the health stream is missing or cannot be read.
async fn heartbeats(
    js: &async_nats::jetstream::Context,
    health_stream: &str,
) -> Option<async_nats::jetstream::consumer::push::Ordered> {
    use tracing::info;
    let stream = match js.get_stream(health_stream).await {
        Ok(stream) => stream,
        Err(e) => {
            info!(error = %e, "policy: no heartbeat stream; fleet hosts are the configured ones only");
            return None;
        }
    };
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: crate::fleet::HEALTH_SUBJECTS.to_owned(),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await;
    match consumer {
        Ok(c) => match c.messages().await {
            Ok(m) => Some(m),
            Err(e) => {
                info!(error = %e, "policy: heartbeats cannot be read; fleet hosts are the configured ones only");
                None
            }
        },
        Err(e) => {
            info!(error = %e, "policy: heartbeats cannot be read; fleet hosts are the configured ones only");
            None
        }
    }
}

/// Decides one proposal message and acknowledges it once its outcome is final.
async fn decide_one(
    policy: &mut Policy,
    kv: &async_nats::jetstream::kv::Store,
    message: &async_nats::jetstream::Message,
    stats: &mut PolicyStats,
) {
    use tracing::{info, warn};
    stats.proposals += 1;
    let by = message.subject.as_str().strip_prefix("vigil.v1.proposal.").unwrap_or("?").to_owned();
    let Ok(proposal) = serde_json::from_slice::<Proposal>(&message.payload) else {
        stats.skipped += 1;
        let _ = message.ack().await;
        return;
    };
    let now_ms = crate::clock::wall_ns() / 1_000_000;
    match policy.decide(&proposal, &by, now_ms) {
        Verdict::Put(rule) => match put_rule(kv, &rule).await {
            Ok(_) => {
                stats.accepted += 1;
                info!(prefix = %rule.prefix, by, expires_ms = rule.expires_ms, "policy: fleet rule written");
            }
            Err(e) => {
                // Not acknowledged: it comes again after the consumer's ack_wait.
                policy.forget(rule.prefix);
                warn!(error = e, "policy: writing the rule failed; the proposal will come again");
                return;
            }
        },
        Verdict::Held => stats.held += 1,
        Verdict::Refused(why) => {
            stats.refused += 1;
            warn!(by, prefix = %proposal.prefix, why, "policy: proposal refused by the fleet's rails");
        }
    }
    let _ = message.ack().await;
}

#[cfg(test)]
#[path = "blocking_tests.rs"]
mod tests;
