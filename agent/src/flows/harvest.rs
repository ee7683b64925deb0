//! Harvesting the kernel flow table into [`FlowRecord`]s.
//!
//! Each harvest reads the whole table (its shards in parallel threads) with
//! `BPF_MAP_LOOKUP_BATCH` in chunks, merges each
//! flow's per-CPU values, and picks the flows that leave: idle ones (no packet for the idle
//! timeout) and long ones (older than the active timeout). Those are removed with
//! `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which returns the value as it was at deletion, so packets
//! that arrived between the scan and the delete are still in the record. Nothing else is
//! deleted: a flow stays in the table, and keeps its statistics, until it leaves.
//!
//! Flows leave by conversation: the table holds one entry per direction (the XDP and TC
//! programs key every packet by its own source and destination), and the timeouts apply to the
//! two directions together. The scan notes every flow's time span under its conversation's key
//! ([`biflow::conversation`]); a flow whose own span has timed out leaves only if its
//! conversation's has, and then its other direction ([`biflow::reverse`]) leaves with it,
//! whatever its own span says. Both go out as one [`Conversation`].

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher as _, RandomState},
    io,
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use agent_common::flow::{FlowKey, FlowStats};
use aya::maps::IterableMap as _;

use super::{
    biflow::{self, Conversation},
    record::{EndReason, FlowRecord, merge_per_cpu},
};
pub use crate::sensor::FlowTable;
use crate::{
    clock::{MonoToWall, duration_ns},
    sensor::batch::{self, PerCpuBatchReader},
};

/// Default time between harvests (`sensor.interval`, `--interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Default idle timeout (`sensor.idle_timeout`, `--idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default active timeout (`sensor.active_timeout`, `--active-timeout`), as `NetFlow`'s.
pub const DEFAULT_ACTIVE_TIMEOUT: Duration = Duration::from_mins(1);

/// When flows leave the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HarvestConfig {
    /// A flow with no packet for this long is exported and deleted.
    pub idle_timeout: Duration,
    /// A flow older than this is exported and deleted; its next packet starts a new record.
    pub active_timeout: Duration,
    /// Keys per `BPF_MAP_LOOKUP_BATCH` call.
    pub chunk: u32,
}

impl Default for HarvestConfig {
    fn default() -> Self {
        Self { idle_timeout: DEFAULT_IDLE_TIMEOUT, active_timeout: DEFAULT_ACTIVE_TIMEOUT, chunk: 8192 }
    }
}

impl HarvestConfig {
    /// Whether a flow whose packets span `first_ns..=last_ns` leaves the table at `now_ns`, and
    /// why: idle first, then active. All three on the same clock.
    #[must_use]
    pub fn end_reason(&self, first_ns: u64, last_ns: u64, now_ns: u64) -> Option<EndReason> {
        if now_ns.saturating_sub(last_ns) >= duration_ns(self.idle_timeout) {
            Some(EndReason::Idle)
        } else if now_ns.saturating_sub(first_ns) >= duration_ns(self.active_timeout) {
            Some(EndReason::Active)
        } else {
            None
        }
    }
}

/// What one harvest did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HarvestReport {
    /// Flows in the table when it was scanned.
    pub tracked: usize,
    /// Records exported on the idle timeout.
    pub idle: usize,
    /// Records exported on the active timeout.
    pub active: usize,
    /// Entries this harvest deleted (leaving flows the LRU had not evicted meanwhile).
    pub removed: usize,
    /// Wall time of the harvest.
    pub elapsed: Duration,
}

/// Flows the kernel's LRU evicted from the table (lost telemetry: their packets never reach a
/// record). The XDP program cannot see an eviction; between two harvests it is
/// `tracked before - removed by the harvest + created since - tracked now`, with `created` the
/// kernel's `flows_created` counter. Per interval the count is off by the flows created between
/// a scan and the counter's reading (they move to the next interval), and a negative result
/// (the counter read late) counts as 0; over many intervals the sum is exact but for those
/// clamps. Entries deleted by anyone else (`vigil detach`, a flush) count as evictions.
#[derive(Clone, Copy, Debug, Default)]
pub struct Evictions {
    /// Entries left after the previous harvest, and `flows_created` then.
    previous: Option<(u64, u64)>,
    /// Evictions counted so far.
    pub total: u64,
}

impl Evictions {
    /// Counts the evictions since the previous harvest from this one's report and the kernel's
    /// `flows_created` read right after it; answers them (0 at the first harvest).
    pub fn update(&mut self, report: &HarvestReport, flows_created: u64) -> u64 {
        let tracked = report.tracked as u64;
        let evicted = self
            .previous
            .map_or(0, |(left, created)| (left + flows_created.saturating_sub(created)).saturating_sub(tracked));
        self.previous = Some((tracked.saturating_sub(report.removed as u64), flows_created));
        self.total += evicted;
        evicted
    }
}

/// First and last packet time of a flow over all CPUs.
#[derive(Clone, Copy, Debug)]
struct TimeSpan {
    first_ns: u64,
    last_ns: u64,
}

/// The time span of a flow's per-CPU values; `None` if no CPU has a packet.
fn time_span(per_cpu: &[FlowStats]) -> Option<TimeSpan> {
    per_cpu.iter().filter(|s| s.packets > 0).fold(None, |span: Option<TimeSpan>, s| {
        Some(match span {
            None => TimeSpan { first_ns: s.first_seen_ns, last_ns: s.last_seen_ns },
            Some(t) => TimeSpan { first_ns: t.first_ns.min(s.first_seen_ns), last_ns: t.last_ns.max(s.last_seen_ns) },
        })
    })
}

/// A keyed 64-bit hash of a flow key in five multiplies: the span table hashes every flow of
/// every harvest, so this replaces the standard library's `SipHash`.
/// The key is random per agent, and each word's product is rotated before the next word comes
/// in, so a difference in a word's top bits reaches the low bits of the next multiply instead
/// of cancelling against the next word (without the rotation, flipping bit 63 of one word and
/// bits 63 and 34 of the next collided whatever the key). It is not a cryptographic hash. A
/// collision only keeps a direction in the table until the other conversation times out too,
/// or costs one lookup in the live pass.
#[derive(Clone, Copy, Debug)]
struct KeyHasher(u64);

impl KeyHasher {
    fn new() -> Self {
        Self(RandomState::new().hash_one(0x7669_6769_6c00_u64) | 1)
    }

    fn hash(self, key: &FlowKey) -> u64 {
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let (s, d) = (&key.src_addr, &key.dst_addr);
        let ports = (u64::from(key.src_port) << 32)
            | (u64::from(key.dst_port) << 16)
            | (u64::from(key.protocol) << 8)
            | u64::from(key.ip_version);
        let mut h = self.0;
        for w in [word(&s[..8]), word(&s[8..]), word(&d[..8]), word(&d[8..]), ports] {
            h = (h ^ w).wrapping_mul(K).rotate_left(29);
        }
        h
    }
}

/// The time span of each conversation in the table, under its key's hash.
struct Spans(Vec<(u64, ConversationSpan)>);

#[derive(Clone, Copy, Debug)]
struct ConversationSpan {
    span: TimeSpan,
    /// Directions in the table (2 at most but for a hash collision).
    legs: u32,
}

impl Spans {
    /// Merges the spans of the flows of each conversation.
    fn new(mut flows: Vec<(u64, TimeSpan)>) -> Self {
        flows.sort_unstable_by_key(|(hash, _)| *hash);
        let mut merged: Vec<(u64, ConversationSpan)> = Vec::with_capacity(flows.len());
        for (hash, span) in flows {
            match merged.last_mut() {
                Some((h, c)) if *h == hash => {
                    c.span.first_ns = c.span.first_ns.min(span.first_ns);
                    c.span.last_ns = c.span.last_ns.max(span.last_ns);
                    c.legs += 1;
                }
                _ => merged.push((hash, ConversationSpan { span, legs: 1 })),
            }
        }
        Self(merged)
    }

    fn get(&self, hash: u64) -> Option<ConversationSpan> {
        self.0.binary_search_by_key(&hash, |(h, _)| *h).ok().map(|i| self.0[i].1)
    }
}

/// One shard of the flow table with its scan state.
struct Shard {
    table: FlowTable,
    reader: PerCpuBatchReader<FlowKey, FlowStats>,
    /// Flows whose own span timed out, with the hash of their conversation's key (whether they
    /// leave depends on the conversation's span).
    leaving: Vec<(FlowKey, FlowStats, u64)>,
    /// Every flow's time span under the hash of its conversation's key.
    spans: Vec<(u64, TimeSpan)>,
    /// Flows that stay but saw packets since the last live harvest, with the hash of their
    /// conversation's key.
    updated: Vec<(FlowKey, FlowStats, u64)>,
}

/// A job for [`run_parallel`].
type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;

/// Runs every job, each on a thread of its own when one can be started (from `builder`), on
/// the calling thread otherwise: a thread that cannot be spawned (`RLIMIT_NPROC`, memory) must
/// not stop the harvest. Results come in the jobs' order.
fn run_parallel<'a, T: Send + 'a>(jobs: Vec<Job<'a, T>>, builder: fn() -> std::thread::Builder) -> Vec<T> {
    use std::sync::{Arc, Mutex, PoisonError};
    std::thread::scope(|scope| {
        let mut started = Vec::with_capacity(jobs.len());
        for job in jobs {
            // `spawn_scoped` consumes its closure even when it fails; the job waits in a slot
            // the thread takes it from, so a failed spawn leaves it there to run here.
            let slot = Arc::new(Mutex::new(Some(job)));
            let theirs = Arc::clone(&slot);
            let take = |s: &Mutex<Option<Job<'a, T>>>| s.lock().unwrap_or_else(PoisonError::into_inner).take();
            match builder().spawn_scoped(scope, move || take(&theirs).map(|job| job())) {
                Ok(handle) => started.push(Ok(handle)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a harvest thread; scanning on the agent's own");
                    started.push(Err(take(&slot)));
                }
            }
        }
        started
            .into_iter()
            .map(|s| match s {
                Ok(handle) => handle.join().expect("harvest thread panicked"),
                Err(job) => job.map(|job| job()),
            })
            .map(|r| r.expect("every job runs once"))
            .collect()
    })
}

/// Scan threads: named, so they show in `top -H`.
fn scan_thread() -> std::thread::Builder {
    std::thread::Builder::new().name("vigil-harvest".into())
}

/// Scans one shard: `pick` decides from each flow's time span whether it leaves; flows that
/// stay and saw a packet after `since_ns` are collected as updates.
fn scan_shard(
    shard: &mut Shard,
    since_ns: Option<u64>,
    pick: &(impl Fn(&FlowKey, TimeSpan) -> Option<EndReason> + Sync),
    hasher: KeyHasher,
) -> io::Result<usize> {
    let Shard { table, reader, leaving, spans, updated } = shard;
    leaving.clear();
    spans.clear();
    updated.clear();
    reader.for_each(table.map().fd().as_fd(), |key, per_cpu| {
        // Only the flow's time span is needed to decide; the full merge is done for leaving
        // flows alone.
        let Some(span) = time_span(per_cpu) else { return };
        let conversation = hasher.hash(&biflow::conversation(key));
        spans.push((conversation, span));
        if pick(key, span).is_some() {
            if let Some(stats) = merge_per_cpu(per_cpu) {
                leaving.push((*key, stats, conversation));
            }
        } else if since_ns.is_some_and(|since| span.last_ns > since)
            && let Some(stats) = merge_per_cpu(per_cpu)
        {
            updated.push((*key, stats, conversation));
        }
    })
}

/// The live form of a conversation whose first packet (of either direction) came at
/// `first_mono_ns`: new if that is after `since_mono_ns`.
fn live_flow(conversation: Conversation, first_mono_ns: u64, since_mono_ns: Option<u64>) -> LiveFlow {
    LiveFlow {
        record: conversation.first,
        back: conversation.second,
        new: since_mono_ns.is_some_and(|since| first_mono_ns > since),
        first_mono_ns,
    }
}

/// The updated directions that stay, as conversations: pairs of directions that both moved,
/// and single directions with, for each, how many directions the scan saw under its
/// conversation's hash (two or more: the other one is in the table, worth a lookup).
///
/// Everything works on the conversation hashes the scan computed, in contiguous sorted
/// vectors: no key is hashed again and no lookup jumps around memory, so a one-way flood
/// (every direction single, none with a partner) costs two sorts and a merge.
fn live_groups(updated: &[Vec<(FlowKey, FlowStats, u64)>], spans: &[Vec<(u64, TimeSpan)>]) -> LiveGroups {
    let at = |l: Leg| &updated[l.0 as usize][l.1 as usize];
    let mut order: Vec<(u64, Leg)> = Vec::with_capacity(updated.iter().map(Vec::len).sum());
    for (shard, legs) in updated.iter().enumerate() {
        for (i, leg) in legs.iter().enumerate() {
            order.push((leg.2, (u32::try_from(shard).unwrap_or(u32::MAX), u32::try_from(i).unwrap_or(u32::MAX))));
        }
    }
    order.sort_unstable_by_key(|o| o.0);
    let mut groups = LiveGroups::default();
    for run in order.chunk_by(|a, b| a.0 == b.0) {
        if let [(hash, a)] = run {
            groups.singles.push((*hash, *a));
            continue;
        }
        // Two directions (more only on a hash collision): pair each with its reverse.
        let mut left: Vec<Leg> = run.iter().map(|r| r.1).collect();
        while let Some(a) = left.pop() {
            let back = biflow::reverse(&at(a).0);
            match left.iter().position(|&b| back != at(a).0 && at(b).0 == back) {
                Some(p) => groups.pairs.push((a, left.swap_remove(p))),
                None => groups.singles.push((run[0].0, a)),
            }
        }
    }
    // Directions in the table per single's hash: a merge of two sorted vectors.
    groups.seen = vec![0; groups.singles.len()];
    if !groups.singles.is_empty() {
        let mut hashes: Vec<u64> = spans.iter().flatten().map(|s| s.0).collect();
        hashes.sort_unstable();
        let mut h = 0;
        for (n, (hash, _)) in groups.singles.iter().enumerate() {
            while h < hashes.len() && hashes[h] < *hash {
                h += 1;
            }
            groups.seen[n] = u32::try_from(hashes[h..].iter().take_while(|&&x| x == *hash).count()).unwrap_or(u32::MAX);
        }
    }
    groups
}

/// Where an updated direction is: (shard, index in the shard's updates).
type Leg = (u32, u32);

#[derive(Default)]
struct LiveGroups {
    /// Two updated directions of one conversation.
    pairs: Vec<(Leg, Leg)>,
    /// (conversation hash, direction) of updated directions whose other direction did not move,
    /// in hash order (runs are visited in hash order).
    singles: Vec<(u64, Leg)>,
    /// Per single, directions in the table under its hash.
    seen: Vec<u32>,
}

/// A conversation as it stands now, for live scoring: snapshots of its directions still in
/// the table, or the final records of one that left, whenever either direction saw packets
/// since the previous harvest.
#[derive(Clone, Debug)]
pub struct LiveFlow {
    /// The initiator's direction (see [`biflow::initiator`]).
    pub record: FlowRecord,
    /// The responder's direction, if it sent anything.
    pub back: Option<FlowRecord>,
    /// Its first packet (of either direction) came after the previous harvest: the first time
    /// the conversation is seen.
    pub new: bool,
    /// Its first packet's `CLOCK_MONOTONIC` time, the clock live windows run on (the records'
    /// times are wall-clock, for output).
    pub first_mono_ns: u64,
}

/// Reads the flow table and turns leaving flows into records. The table's shards are scanned
/// in parallel, one thread each.
pub struct Harvester {
    shards: Vec<Shard>,
    config: HarvestConfig,
    scratch: Vec<FlowStats>,
    /// Where scan threads come from (a test makes them fail).
    builder: fn() -> std::thread::Builder,
    /// Hashes conversation keys for the scan's span table.
    hasher: KeyHasher,
}

impl Harvester {
    /// A harvester over the table's shards on a system with `cpus` possible CPUs.
    #[must_use]
    pub fn new(tables: Vec<FlowTable>, config: HarvestConfig, cpus: usize) -> Self {
        let shards = tables
            .into_iter()
            .map(|table| Shard {
                table,
                reader: PerCpuBatchReader::new(config.chunk, cpus),
                leaving: Vec::new(),
                spans: Vec::new(),
                updated: Vec::new(),
            })
            .collect();
        Self {
            shards,
            config,
            scratch: vec![FlowStats::default(); cpus],
            builder: scan_thread,
            hasher: KeyHasher::new(),
        }
    }

    /// The shards this harvester reads.
    pub fn tables(&self) -> impl Iterator<Item = &FlowTable> {
        self.shards.iter().map(|s| &s.table)
    }

    /// Scans every shard in parallel; `pick` decides from each flow's time span (over all
    /// CPUs) whether it leaves and why. Flows that stay and saw a packet after `since_ns` are
    /// collected as updates. Returns the number of flows scanned.
    fn scan(
        &mut self,
        since_ns: Option<u64>,
        pick: impl Fn(&FlowKey, TimeSpan) -> Option<EndReason> + Sync,
    ) -> io::Result<usize> {
        let pick = &pick;
        let hasher = self.hasher;
        let jobs: Vec<Job<'_, io::Result<usize>>> = self
            .shards
            .iter_mut()
            .map(|shard| -> Job<'_, io::Result<usize>> { Box::new(move || scan_shard(shard, since_ns, pick, hasher)) })
            .collect();
        run_parallel(jobs, self.builder).into_iter().sum()
    }

    /// Scans the table at `now_mono_ns` (`CLOCK_MONOTONIC`) and passes every flow that leaves
    /// to `emit`.
    ///
    /// # Errors
    /// A failing map syscall.
    ///
    /// # Panics
    /// If a scan thread panics.
    pub fn harvest(&mut self, now_mono_ns: u64, emit: impl FnMut(Conversation)) -> io::Result<HarvestReport> {
        self.harvest_live(now_mono_ns, None, emit, |_| {})
    }

    /// [`Harvester::harvest`] that also passes to `live` every conversation with packets after
    /// `since_mono_ns` (the previous harvest's `now`), both directions as they stand: snapshots
    /// of conversations that stay (a direction that saw no packet is read from the table), and
    /// copies of the records of those that leave. With `since_mono_ns = None` nothing is live.
    ///
    /// # Errors
    /// A failing map syscall.
    ///
    /// # Panics
    /// If a scan thread panics.
    pub fn harvest_live(
        &mut self,
        now_mono_ns: u64,
        since_mono_ns: Option<u64>,
        mut emit: impl FnMut(Conversation),
        mut live: impl FnMut(LiveFlow),
    ) -> io::Result<HarvestReport> {
        let started = Instant::now();
        let config = self.config;
        let tracked =
            self.scan(since_mono_ns, |_, span| config.end_reason(span.first_ns, span.last_ns, now_mono_ns))?;
        let is_live = |stats: &FlowStats| since_mono_ns.is_some_and(|since| stats.last_seen_ns > since);

        // Taken, not drained: the buffers (a flow table's worth under a flood) are freed before
        // scoring, not kept between harvests. Conversation spans only matter when some
        // direction timed out.
        let any_leaving = self.shards.iter().any(|s| !s.leaving.is_empty());
        let all: Vec<Vec<(u64, TimeSpan)>> = self.shards.iter_mut().map(|s| std::mem::take(&mut s.spans)).collect();
        let updated: Vec<Vec<(FlowKey, FlowStats, u64)>> =
            self.shards.iter_mut().map(|s| std::mem::take(&mut s.updated)).collect();
        let groups = live_groups(&updated, &all);
        let spans = Spans::new(if any_leaving { all.into_iter().flatten().collect() } else { Vec::new() });
        let mut candidates: HashMap<FlowKey, FlowStats> = HashMap::new();
        // (key, reason, whether the other direction is in the table)
        let mut leaving: Vec<(FlowKey, EndReason, bool)> = Vec::new();
        for (key, stats, conversation) in self.shards.iter_mut().flat_map(|s| std::mem::take(&mut s.leaving)) {
            // A direction that timed out leaves only when its conversation did.
            let own = ConversationSpan {
                span: TimeSpan { first_ns: stats.first_seen_ns, last_ns: stats.last_seen_ns },
                legs: 1,
            };
            let c = spans.get(conversation).unwrap_or(own);
            if let Some(reason) = config.end_reason(c.span.first_ns, c.span.last_ns, now_mono_ns) {
                leaving.push((key, reason, c.legs > 1));
                candidates.insert(key, stats);
            }
        }
        leaving.sort_by_key(|(key, _, _)| (candidates[key].first_seen_ns, *key));

        let clock = MonoToWall::now();
        let mut report = HarvestReport { tracked, ..HarvestReport::default() };
        // Other directions taken out of the table with their conversation: not live snapshots.
        let mut taken: HashSet<FlowKey> = HashSet::new();
        for (key, reason, paired) in leaving {
            let Some(scanned) = candidates.remove(&key) else { continue };
            let mut legs = Vec::with_capacity(2);
            legs.push((key, self.remove(&key, Some(scanned), &mut report)?));
            let back = biflow::reverse(&key);
            if paired && back != key {
                let scanned = candidates.remove(&back);
                let from_table = scanned.is_none();
                if let Some(stats) = self.remove(&back, scanned, &mut report)? {
                    if from_table {
                        taken.insert(back);
                    }
                    legs.push((back, Some(stats)));
                }
            }
            let legs: Vec<(FlowKey, FlowStats)> =
                legs.into_iter().filter_map(|(key, stats)| Some((key, stats?))).collect();
            for _ in &legs {
                match reason {
                    EndReason::Idle => report.idle += 1,
                    _ => report.active += 1,
                }
            }
            let mut records = legs.iter().map(|(key, stats)| FlowRecord::new(key, stats, reason, clock));
            let Some(first) = records.next() else { continue };
            let conversation = Conversation::new(first, records.next());
            if legs.iter().any(|(_, stats)| is_live(stats)) {
                let first_mono_ns = legs.iter().map(|(_, s)| s.first_seen_ns).min().unwrap_or_default();
                live(live_flow(conversation.clone(), first_mono_ns, since_mono_ns));
            }
            emit(conversation);
        }
        // Directions that stay and saw packets, each with its other direction: updated too, or
        // read from the table when the scan saw it there.
        let conversation = |a: (FlowKey, FlowStats), b: Option<(FlowKey, FlowStats)>| {
            let first_mono_ns = b.map_or(a.1.first_seen_ns, |b| b.1.first_seen_ns.min(a.1.first_seen_ns));
            let record = FlowRecord::new(&a.0, &a.1, EndReason::Open, clock);
            let c = Conversation::new(record, b.map(|b| FlowRecord::new(&b.0, &b.1, EndReason::Open, clock)));
            live_flow(c, first_mono_ns, since_mono_ns)
        };
        let leg = |l: Leg| {
            let u = &updated[l.0 as usize][l.1 as usize];
            (u.0, u.1)
        };
        for &(a, b) in &groups.pairs {
            live(conversation(leg(a), Some(leg(b))));
        }
        for (&(_, i), &seen) in groups.singles.iter().zip(&groups.seen) {
            let (key, stats) = leg(i);
            // Taken out of the table with a conversation that left (its other direction, which
            // did not move, so it is single here): already handed on.
            if !taken.is_empty() && taken.contains(&key) {
                continue;
            }
            let back = biflow::reverse(&key);
            let other = if seen > 1 && back != key {
                // A failed read costs the conversation its other side this cycle, not the cycle.
                self.read(&back)
                    .unwrap_or_else(|e| {
                        tracing::debug!(error = %e, "cannot read the other direction of a live conversation");
                        None
                    })
                    .map(|stats| (back, stats))
            } else {
                None
            };
            let unread = seen > 1 && other.is_none();
            let mut flow = conversation((key, stats), other);
            // The scan saw the other direction, so the conversation began before this
            // direction did: not new, even if its other side could not be read (evicted
            // meanwhile), or its initiator would be counted again with the roles reversed.
            flow.new &= !unread;
            live(flow);
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// The current value of `key` in its shard, summed over CPUs.
    fn read(&mut self, key: &FlowKey) -> io::Result<Option<FlowStats>> {
        let shard = &self.shards[key.shard() % self.shards.len()];
        let fd = shard.table.map().fd().as_fd();
        Ok(if batch::lookup(fd, key, &mut self.scratch)? { merge_per_cpu(&self.scratch) } else { None })
    }

    /// Removes `key` from its shard and returns its value at deletion, which includes packets
    /// that arrived after the scan. If the entry is gone (LRU eviction in between), `scanned`
    /// is the best there is (`None`: it was not scanned as leaving, and is not there).
    fn remove(
        &mut self,
        key: &FlowKey,
        scanned: Option<FlowStats>,
        report: &mut HarvestReport,
    ) -> io::Result<Option<FlowStats>> {
        let shard = &self.shards[key.shard() % self.shards.len()];
        let fd = shard.table.map().fd().as_fd();
        if batch::lookup_and_delete(fd, key, &mut self.scratch)? {
            report.removed += 1;
            Ok(merge_per_cpu(&self.scratch).or(scanned))
        } else {
            Ok(scanned)
        }
    }

    /// Exports every flow still in the table with `reason`, paired into conversations, and
    /// removes it. Call it after the program is detached for an exact final flush.
    ///
    /// # Errors
    /// A failing map syscall.
    pub fn flush(&mut self, reason: EndReason, emit: impl FnMut(Conversation)) -> io::Result<usize> {
        let clock = MonoToWall::now();
        let mut flushed = 0;
        let mut records = Vec::new();
        for shard in &mut self.shards {
            let fd = shard.table.map().fd().as_fd();
            let mut keys = Vec::new();
            shard.reader.for_each(fd, |key, per_cpu| {
                if let Some(stats) = merge_per_cpu(per_cpu) {
                    records.push(FlowRecord::new(key, &stats, reason, clock));
                }
                keys.push(*key);
            })?;
            for chunk in keys.chunks(self.config.chunk as usize) {
                // Entries evicted meanwhile make the batch stop early; fall back to single deletes.
                if batch::delete_batch(fd, chunk).is_err() {
                    for key in chunk {
                        let _ = batch::lookup_and_delete(fd, key, &mut self.scratch);
                    }
                }
            }
            flushed += keys.len();
        }
        biflow::pair_all(records).into_iter().for_each(emit);
        Ok(flushed)
    }

    /// Reads every flow one key at a time (`BPF_MAP_GET_NEXT_KEY` + lookup per key), the way
    /// aya's map iterator does. Only for benchmarks against the batched scan.
    ///
    /// # Errors
    /// A failing map syscall.
    pub fn scan_one_by_one(&self) -> Result<usize, aya::maps::MapError> {
        let mut n = 0;
        for table in self.tables() {
            for entry in table {
                let (_key, values) = entry?;
                if merge_per_cpu(&values).is_some() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Reads every flow with the batched parallel scan without exporting anything; for
    /// benchmarks.
    ///
    /// # Errors
    /// A failing map syscall.
    pub fn scan_batched(&mut self) -> io::Result<usize> {
        self.scan(None, |_, _| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_tell_keys_apart_and_depend_on_the_agents_key() {
        let h = KeyHasher(12_345);
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            let b = i.to_be_bytes();
            let key = FlowKey {
                src_addr: FlowKey::v4_mapped([10, b[1], b[2], b[3]]),
                src_port: u16::try_from(i % 7).unwrap(),
                dst_port: 80,
                protocol: 6,
                ip_version: 4,
                ..FlowKey::default()
            };
            assert!(seen.insert(h.hash(&key)), "a collision at {i}");
        }
        let key = FlowKey::default();
        assert_ne!(h.hash(&key), KeyHasher(54_321).hash(&key));
    }

    #[test]
    fn idle_wins_over_active_and_bounds_are_inclusive() {
        let c =
            HarvestConfig { idle_timeout: Duration::from_secs(15), active_timeout: Duration::from_mins(1), chunk: 1 };
        let s = 1_000_000_000;
        assert_eq!(c.end_reason(0, 10 * s, 24 * s), None);
        assert_eq!(c.end_reason(0, 10 * s, 25 * s), Some(EndReason::Idle));
        assert_eq!(c.end_reason(0, 59 * s, 60 * s), Some(EndReason::Active));
        assert_eq!(c.end_reason(0, 0, 90 * s), Some(EndReason::Idle), "idle is checked first");
        let never = HarvestConfig { idle_timeout: Duration::MAX, active_timeout: Duration::MAX, chunk: 1 };
        assert_eq!(never.end_reason(0, 0, u64::MAX - 1), None);
    }

    #[test]
    fn evictions_follow_from_tracked_created_and_removed() {
        let mut e = Evictions::default();
        let report = |tracked, removed| HarvestReport { tracked, removed, ..HarvestReport::default() };
        assert_eq!(e.update(&report(100, 10), 500), 0, "nothing to compare with yet");
        // 90 left, 50 created, 100 seen: 40 evicted.
        assert_eq!(e.update(&report(100, 0), 550), 40);
        // A full table under a flood: 1000 created, still 100 tracked.
        assert_eq!(e.update(&report(100, 0), 1550), 1000);
        // The counter read late last time: fewer than nothing is none.
        assert_eq!(e.update(&report(100, 0), 1550), 0);
        assert_eq!(e.total, 1040);
    }

    #[test]
    fn jobs_run_on_threads_or_here_when_no_thread_starts() {
        let jobs = || -> Vec<Job<'static, usize>> {
            (0..3).map(|i| -> Job<'static, usize> { Box::new(move || i * 10) }).collect()
        };
        assert_eq!(run_parallel(jobs(), scan_thread), [0, 10, 20]);
        // A stack no address space can hold: `spawn_scoped` fails (as with RLIMIT_NPROC),
        // and the jobs run on this thread instead of panicking.
        let unspawnable = || std::thread::Builder::new().stack_size(1 << 60);
        assert!(std::thread::scope(|s| unspawnable().spawn_scoped(s, || ()).is_err()), "spawning must fail here");
        let here = std::thread::current().id();
        let on = run_parallel(
            (0..3)
                .map(|_| -> Job<'static, std::thread::ThreadId> { Box::new(|| std::thread::current().id()) })
                .collect(),
            unspawnable,
        );
        assert_eq!(on, [here; 3]);
    }
}
