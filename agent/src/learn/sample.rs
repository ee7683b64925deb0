//! The learning phase's sample of the host's own traffic: a bounded, stratified set of feature
//! rows to train the site model on, and a held-back slice of recent traffic to validate it.
//!
//! - **One row per conversation.** A live conversation is scored every cycle it moves. The
//!   sample keeps the latest row of each conversation it holds, so a long transfer is one row,
//!   seen as complete as it got, and not one row per second.
//! - **Stratified.** Rows are grouped by hour of day and by service (protocol and responder
//!   port; ports of 49152 and up are one "ephemeral" service). When the sample is full, a new
//!   conversation of a stratum below its fair share (`max_rows` / strata) takes the place of a
//!   random row of the largest stratum; in a stratum at or above its share, it replaces a
//!   random row with the reservoir's probability. Rare services and quiet hours are kept, and
//!   a busy service cannot crowd them out.
//! - **Poisoning guards.** No source prefix (/24 for IPv4, /64 for IPv6) holds more than
//!   `max_source_share` of `max_rows`; the rows of a source that is alerted or blocked are
//!   removed and its later conversations refused ([`Sample::exclude`]); the caller offers no
//!   row that scored at or above the alert threshold.
//! - **Held back.** One conversation in [`HOLDOUT_EVERY`] (by a hash of its key) goes to the
//!   held-back slice instead: the most recent `holdout_rows` of them, never trained on.
//!
//! Memory: 224 bytes a row (48 features as `f32`, the conversation and source), plus the index
//! and the vectors' spare capacity; 100,000 rows grew the RSS by 82 MB in the benchmark
//! (`cargo bench -p vigil-tests --bench learn`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use ndarray::Array2;
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::features::flow::FLOW_FEATURE_COUNT;

/// One conversation in this many is held back for validation.
pub const HOLDOUT_EVERY: u64 = 10;
/// Distinct strata at most; conversations of further services share one "other" stratum per
/// hour and protocol.
pub const MAX_STRATA: usize = 4096;
/// The service of ports from here up: the ephemeral range, one service.
const EPHEMERAL: u16 = 49152;
/// The service of strata beyond [`MAX_STRATA`].
const OTHER: u16 = u16::MAX;
/// Alerted or blocked sources remembered at most (the oldest are forgotten first).
const MAX_EXCLUDED: usize = 65_536;

/// A feature row.
pub type Row = [f32; FLOW_FEATURE_COUNT];

/// Sample sizes and guards.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleConfig {
    /// Rows to train on, at most.
    pub max_rows: usize,
    /// Held-back rows, at most.
    pub holdout_rows: usize,
    /// Share of `max_rows` one source prefix may hold.
    pub max_source_share: f64,
    pub seed: u64,
}

/// What a row is: its conversation, source, and stratum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowKey {
    /// A hash of the conversation's key and start: the same for every row of one conversation.
    pub conversation: u64,
    /// The initiator.
    pub source: IpAddr,
    /// Hour of day (UTC, 0-23) the row was seen.
    pub hour: u8,
    pub protocol: u8,
    /// The responder's port (0 without ports).
    pub port: u16,
}

impl RowKey {
    fn service(&self) -> u16 {
        if self.port >= EPHEMERAL { EPHEMERAL } else { self.port }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Stratum {
    hour: u8,
    protocol: u8,
    service: u16,
}

struct Slot {
    row: Row,
    conversation: u64,
    source: IpAddr,
}

#[derive(Default)]
struct Bucket {
    slots: Vec<Slot>,
    /// Conversations offered to this stratum (the reservoir's count).
    seen: u64,
}

/// Why a row was not taken, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SampleStats {
    /// Rows taken or updated in place.
    pub taken: u64,
    /// New conversations the reservoir passed over (the stratum was full).
    pub passed_over: u64,
    /// New conversations refused because their source prefix had its share.
    pub source_share: u64,
    /// Rows refused or removed because their source was alerted or blocked.
    pub excluded: u64,
}

/// The sample (see the module documentation).
pub struct Sample {
    config: SampleConfig,
    buckets: BTreeMap<Stratum, Bucket>,
    /// Strata by size, to find the largest without a scan.
    sizes: std::collections::BTreeSet<(usize, Stratum)>,
    /// Where each held conversation's row is.
    index: HashMap<u64, (Stratum, usize)>,
    rows: usize,
    per_prefix: HashMap<u128, usize>,
    excluded: HashSet<IpAddr>,
    excluded_order: std::collections::VecDeque<IpAddr>,
    /// Held back: conversation -> (sequence, row); `holdout_order` finds the oldest.
    holdout: HashMap<u64, (u64, Row)>,
    holdout_order: BTreeMap<u64, u64>,
    holdout_seq: u64,
    hours: [bool; 24],
    rng: StdRng,
    pub stats: SampleStats,
}

/// The /24 or /64 a source belongs to, as one number.
fn prefix(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4) & 0xffff_ff00),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1) | 1,
    }
}

impl Sample {
    #[must_use]
    pub fn new(config: SampleConfig) -> Self {
        Self {
            config,
            buckets: BTreeMap::new(),
            sizes: std::collections::BTreeSet::new(),
            index: HashMap::new(),
            rows: 0,
            per_prefix: HashMap::new(),
            excluded: HashSet::new(),
            excluded_order: std::collections::VecDeque::new(),
            holdout: HashMap::new(),
            holdout_order: BTreeMap::new(),
            holdout_seq: 0,
            hours: [false; 24],
            rng: StdRng::seed_from_u64(config.seed),
            stats: SampleStats::default(),
        }
    }

    /// Rows to train on.
    #[must_use]
    pub const fn len(&self) -> usize {
        self.rows
    }

    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Held-back rows.
    #[must_use]
    pub fn holdout_len(&self) -> usize {
        self.holdout.len()
    }

    /// Hours of the day (UTC) the sample has rows from.
    #[must_use]
    pub fn hours_covered(&self) -> usize {
        self.hours.iter().filter(|&&h| h).count()
    }

    /// Strata holding rows.
    #[must_use]
    pub fn strata(&self) -> usize {
        self.buckets.values().filter(|b| !b.slots.is_empty()).count()
    }

    /// Rows of one source prefix in the sample (for tests and reports).
    #[must_use]
    pub fn rows_of_prefix(&self, source: IpAddr) -> usize {
        self.per_prefix.get(&prefix(source)).copied().unwrap_or(0)
    }

    fn prefix_cap(&self) -> usize {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a share of a row count"
        )]
        let cap = (self.config.max_source_share * self.config.max_rows as f64).floor() as usize;
        cap.max(1)
    }

    fn stratum_of(&self, key: &RowKey) -> Stratum {
        let s = Stratum { hour: key.hour.min(23), protocol: key.protocol, service: key.service() };
        if self.buckets.contains_key(&s) || self.buckets.len() < MAX_STRATA {
            s
        } else {
            Stratum { service: OTHER, ..s }
        }
    }

    /// Offers the latest row of a conversation.
    pub fn offer(&mut self, key: &RowKey, row: &Row) {
        if self.excluded.contains(&key.source) {
            self.stats.excluded += 1;
            return;
        }
        if key.conversation.is_multiple_of(HOLDOUT_EVERY) {
            self.hold_back(key.conversation, row);
            return;
        }
        if let Some(&(stratum, i)) = self.index.get(&key.conversation) {
            if let Some(slot) = self.buckets.get_mut(&stratum).and_then(|b| b.slots.get_mut(i)) {
                slot.row = *row;
                self.stats.taken += 1;
            }
            return;
        }
        if self.per_prefix.get(&prefix(key.source)).copied().unwrap_or(0) >= self.prefix_cap() {
            self.stats.source_share += 1;
            return;
        }
        let stratum = self.stratum_of(key);
        let bucket = self.buckets.entry(stratum).or_default();
        bucket.seen += 1;
        let (len, seen) = (bucket.slots.len(), bucket.seen);
        if self.rows < self.config.max_rows {
            self.push(stratum, key, row);
        } else {
            let fair = self.config.max_rows / self.buckets.len().max(1);
            if len < fair {
                self.evict_from_largest();
                self.push(stratum, key, row);
            } else {
                let j = self.rng.random_range(0..seen);
                match usize::try_from(j) {
                    Ok(j) if j < len => {
                        self.remove(stratum, j);
                        self.push(stratum, key, row);
                    }
                    _ => {
                        self.stats.passed_over += 1;
                        return;
                    }
                }
            }
        }
        self.hours[usize::from(key.hour.min(23))] = true;
    }

    fn push(&mut self, stratum: Stratum, key: &RowKey, row: &Row) {
        let bucket = self.buckets.entry(stratum).or_default();
        bucket.slots.push(Slot { row: *row, conversation: key.conversation, source: key.source });
        let len = bucket.slots.len();
        self.sizes.remove(&(len - 1, stratum));
        self.sizes.insert((len, stratum));
        self.index.insert(key.conversation, (stratum, len - 1));
        *self.per_prefix.entry(prefix(key.source)).or_default() += 1;
        self.rows += 1;
        self.stats.taken += 1;
        self.hours[usize::from(stratum.hour)] = true;
    }

    /// Removes slot `i` of `stratum` (the last slot moves into its place).
    fn remove(&mut self, stratum: Stratum, i: usize) {
        let Some(bucket) = self.buckets.get_mut(&stratum) else { return };
        if i >= bucket.slots.len() {
            return;
        }
        let gone = bucket.slots.swap_remove(i);
        if let Some(moved) = bucket.slots.get(i) {
            self.index.insert(moved.conversation, (stratum, i));
        }
        let len = bucket.slots.len();
        self.sizes.remove(&(len + 1, stratum));
        if len > 0 {
            self.sizes.insert((len, stratum));
        }
        self.index.remove(&gone.conversation);
        let p = prefix(gone.source);
        if let Some(n) = self.per_prefix.get_mut(&p) {
            *n -= 1;
            if *n == 0 {
                self.per_prefix.remove(&p);
            }
        }
        self.rows -= 1;
    }

    fn evict_from_largest(&mut self) {
        let Some(&(len, stratum)) = self.sizes.last() else { return };
        if len > 0 {
            let j = self.rng.random_range(0..len);
            self.remove(stratum, j);
        }
    }

    fn hold_back(&mut self, conversation: u64, row: &Row) {
        self.holdout_seq += 1;
        if let Some((seq, _)) = self.holdout.remove(&conversation) {
            self.holdout_order.remove(&seq);
        }
        self.holdout.insert(conversation, (self.holdout_seq, *row));
        self.holdout_order.insert(self.holdout_seq, conversation);
        while self.holdout.len() > self.config.holdout_rows {
            let Some((_, oldest)) = self.holdout_order.pop_first() else { break };
            self.holdout.remove(&oldest);
        }
    }

    /// Removes every row of `source` and refuses its later conversations: it was alerted or
    /// blocked.
    pub fn exclude(&mut self, source: IpAddr) {
        if !self.excluded.insert(source) {
            return;
        }
        self.excluded_order.push_back(source);
        if self.excluded_order.len() > MAX_EXCLUDED
            && let Some(old) = self.excluded_order.pop_front()
        {
            self.excluded.remove(&old);
        }
        let strata: Vec<Stratum> = self.buckets.keys().copied().collect();
        for stratum in strata {
            let mut i = 0;
            while let Some(slot) = self.buckets.get(&stratum).and_then(|b| b.slots.get(i)) {
                if slot.source == source {
                    self.remove(stratum, i);
                    self.stats.excluded += 1;
                } else {
                    i += 1;
                }
            }
        }
    }

    /// Takes `source` back after an analyst judged its alert a false positive: its later
    /// conversations are offered as anyone's again.
    pub fn forgive(&mut self, source: IpAddr) {
        if self.excluded.remove(&source) {
            self.excluded_order.retain(|s| *s != source);
        }
    }

    /// The rows to train on, one per line, in a stable order (by stratum).
    #[must_use]
    pub fn rows(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.rows, FLOW_FEATURE_COUNT));
        let slots = self.buckets.values().flat_map(|b| b.slots.iter());
        for (mut line, slot) in out.rows_mut().into_iter().zip(slots) {
            line.assign(&ndarray::ArrayView1::from(&slot.row));
        }
        out
    }

    /// The held-back rows, oldest first.
    #[must_use]
    pub fn holdout_rows(&self) -> Array2<f32> {
        let mut out = Array2::zeros((self.holdout.len(), FLOW_FEATURE_COUNT));
        let rows = self.holdout_order.values().filter_map(|c| self.holdout.get(c));
        for (mut line, (_, row)) in out.rows_mut().into_iter().zip(rows) {
            line.assign(&ndarray::ArrayView1::from(row));
        }
        out
    }

    /// Rows per stratum as (hour, protocol, service, rows), for reports and tests.
    #[must_use]
    pub fn strata_sizes(&self) -> Vec<(u8, u8, u16, usize)> {
        self.buckets.iter().map(|(s, b)| (s.hour, s.protocol, s.service, b.slots.len())).collect()
    }
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "rows are copied, never computed: exact values")]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn config(max_rows: usize) -> SampleConfig {
        SampleConfig { max_rows, holdout_rows: 50, max_source_share: 1.0, seed: 7 }
    }

    /// A key for conversation `n` (never a held-back one) from 10.x.y.z to `port`.
    fn key(n: u64, source: u32, port: u16, hour: u8) -> RowKey {
        let conversation = n * HOLDOUT_EVERY + 1;
        RowKey { conversation, source: IpAddr::V4(Ipv4Addr::from(source)), hour, protocol: 6, port }
    }

    fn row(v: f32) -> Row {
        [v; FLOW_FEATURE_COUNT]
    }

    #[test]
    fn a_conversation_is_one_row_holding_its_latest_values() {
        let mut s = Sample::new(config(100));
        let k = key(1, 0x0a00_0001, 443, 3);
        s.offer(&k, &row(1.0));
        s.offer(&k, &row(2.0));
        s.offer(&k, &row(3.0));
        assert_eq!(s.len(), 1);
        assert_eq!(s.rows()[[0, 0]], 3.0);
        assert_eq!(s.hours_covered(), 1);
    }

    #[test]
    fn a_busy_service_does_not_crowd_out_a_rare_one() {
        let mut s = Sample::new(config(200));
        // 20 DNS conversations early, then 10,000 HTTPS ones from many sources.
        for n in 0..20 {
            s.offer(&key(n, 0x0a00_0100 + u32::try_from(n).unwrap(), 53, 1), &row(0.5));
        }
        for n in 100..10_100 {
            s.offer(&key(n, 0x0a01_0000 + u32::try_from(n).unwrap() * 256, 443, 1), &row(1.0));
        }
        assert_eq!(s.len(), 200, "bounded");
        let sizes = s.strata_sizes();
        let dns = sizes.iter().find(|t| t.2 == 53).map_or(0, |t| t.3);
        assert_eq!(dns, 20, "the rare service keeps every row: {sizes:?}");
        assert!(s.stats.passed_over > 9_000, "{:?}", s.stats);
        // The index still points at every row after all the replacing.
        for (stratum, i) in s.index.values() {
            assert!(*i < s.buckets[stratum].slots.len());
        }
        assert_eq!(s.index.len(), s.len());
        let sizes: Vec<(usize, Stratum)> =
            s.buckets.iter().filter(|(_, b)| !b.slots.is_empty()).map(|(k, b)| (b.slots.len(), *k)).collect();
        assert_eq!(s.sizes.len(), sizes.len());
        assert!(sizes.iter().all(|e| s.sizes.contains(e)), "the size index follows every change");
    }

    #[test]
    fn one_source_prefix_holds_at_most_its_share() {
        let mut s = Sample::new(SampleConfig { max_source_share: 0.05, ..config(1000) });
        for n in 0..500 {
            // Every source in 192.0.2.0/24.
            s.offer(&key(n, 0xc000_0200 + u32::try_from(n % 200).unwrap(), 22, 5), &row(1.0));
        }
        assert_eq!(s.rows_of_prefix(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))), 50);
        assert_eq!(s.stats.source_share, 450);
        for n in 1000..1100 {
            s.offer(&key(n, 0x0a00_0000 + u32::try_from(n).unwrap() * 256, 22, 5), &row(1.0));
        }
        assert_eq!(s.len(), 150, "other prefixes still get in");
    }

    #[test]
    fn an_excluded_source_loses_its_rows_and_stays_out() {
        let mut s = Sample::new(config(100));
        let bad = 0xcb00_7107;
        for n in 0..10 {
            s.offer(&key(n, bad, 80, 2), &row(9.0));
            s.offer(&key(n + 100, 0x0a00_0001, 80, 2), &row(1.0));
        }
        assert_eq!(s.len(), 20);
        s.exclude(IpAddr::V4(Ipv4Addr::from(bad)));
        assert_eq!(s.len(), 10);
        assert!(s.rows().iter().all(|&v| v == 1.0), "only the good source's rows remain");
        s.offer(&key(50, bad, 80, 2), &row(9.0));
        assert_eq!(s.len(), 10);
        assert_eq!(s.stats.excluded, 11);
        assert_eq!(s.index.len(), 10);
    }

    #[test]
    fn one_conversation_in_ten_is_held_back_most_recent_kept() {
        let mut s = Sample::new(config(1000));
        for c in 0..1000u64 {
            let k = RowKey {
                conversation: c,
                source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                hour: 0,
                protocol: 17,
                port: 53,
            };
            #[expect(clippy::cast_precision_loss, reason = "test values")]
            s.offer(&k, &row(c as f32));
        }
        assert_eq!(s.holdout_len(), 50, "capped at holdout_rows");
        assert_eq!(s.len(), 900);
        let held = s.holdout_rows();
        assert_eq!(held[[0, 0]], 500.0, "the oldest kept is the 50th most recent");
        assert_eq!(held[[49, 0]], 990.0);
    }

    #[test]
    fn strata_beyond_the_cap_share_one_other_stratum() {
        let mut s = Sample::new(config(100_000));
        for n in 0..(MAX_STRATA as u64 + 100) {
            let port = u16::try_from(n % 40_000).unwrap();
            let hour = u8::try_from(n / 40_000).unwrap();
            s.offer(&key(n, 0x0a00_0000 + u32::try_from(n).unwrap() * 256, port, hour), &row(1.0));
        }
        assert_eq!(s.buckets.len(), MAX_STRATA + 1);
        assert_eq!(s.strata_sizes().iter().filter(|t| t.2 == OTHER).map(|t| t.3).sum::<usize>(), 100);
    }
}
