//! Per-minute flow aggregates, built on the agent's thread from the flows each cycle scores.
//!
//! Live flows carry running totals since their conversation began; [`FlowMinutes`] keeps the
//! totals it last saw per conversation and adds only what is new to the minute's row of
//! (source, destination, protocol, port), where source is the initiator and port the
//! responder's. A conversation counts once per minute in `flows` (and in `anomalous` if it
//! scored at or above the alert threshold in that minute). When the minute turns, its rows
//! go to the store. A minute holds at most `max_rows` rows; traffic beyond goes to one
//! "other" row (source and destination `::`, protocol 0, port 0).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use super::FlowRow;
use crate::detect::ScoredFlow;

/// A conversation, as harvests name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Conversation {
    source: IpAddr,
    destination: IpAddr,
    source_port: u16,
    port: u16,
    protocol: u8,
}

/// What was last seen of a conversation.
#[derive(Clone, Copy, Debug)]
struct Seen {
    packets: u64,
    bytes: u64,
    /// The minute it was last counted in `flows`, and in `anomalous`.
    counted: i64,
    anomalous: i64,
    /// When it was last live (monotonic ns).
    last_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct RowKey {
    source: IpAddr,
    destination: IpAddr,
    protocol: u8,
    port: u16,
}

const OTHER: RowKey = RowKey {
    source: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    destination: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    protocol: 0,
    port: 0,
};

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    flows: u64,
    packets: u64,
    bytes: u64,
    anomalous: u64,
}

/// Builds the minute rows; see the module documentation.
#[derive(Debug)]
pub struct FlowMinutes {
    seen: HashMap<Conversation, Seen>,
    minute: Option<i64>,
    rows: HashMap<RowKey, Counts>,
    max_rows: usize,
    /// A conversation not live for this long is forgotten (it has left the flow table: if it
    /// comes back, its totals start again and it is marked new).
    forget_after_ns: u64,
    last_prune_ns: u64,
}

impl FlowMinutes {
    /// At most `max_rows` rows a minute; conversations not live for `forget_after_ns` are
    /// forgotten (the flow table's idle timeout and a margin).
    #[must_use]
    pub fn new(max_rows: usize, forget_after_ns: u64) -> Self {
        Self {
            seen: HashMap::new(),
            minute: None,
            rows: HashMap::new(),
            max_rows: max_rows.max(1),
            forget_after_ns,
            last_prune_ns: 0,
        }
    }

    /// Adds one cycle's scored flows at `now_wall_ns` (`now_mono_ns` on the live clock).
    /// Answers the previous minute's rows when this cycle began a new minute.
    pub fn add(
        &mut self,
        flows: &[ScoredFlow],
        alert_threshold: f32,
        now_mono_ns: u64,
        now_wall_ns: u64,
    ) -> Option<Vec<FlowRow>> {
        let minute = i64::try_from(now_wall_ns / 60_000_000_000).unwrap_or(i64::MAX);
        let finished = match self.minute {
            Some(m) if m != minute => Some(self.take()),
            _ => None,
        };
        self.minute = Some(minute);
        for f in flows {
            let r = &f.flow.record;
            let conversation = Conversation {
                source: r.src_ip,
                destination: r.dst_ip,
                source_port: r.src_port,
                port: r.dst_port,
                protocol: r.protocol,
            };
            let (packets, bytes) = f.flow.back.as_ref().map_or((r.packets, r.bytes), |b| {
                (r.packets.saturating_add(b.packets), r.bytes.saturating_add(b.bytes))
            });
            let fresh = Seen { packets: 0, bytes: 0, counted: i64::MIN, anomalous: i64::MIN, last_ns: now_mono_ns };
            let seen = self.seen.entry(conversation).or_insert(fresh);
            // A new conversation, or one whose totals went down (it left the table and came
            // back), starts from zero.
            if f.flow.new || packets < seen.packets || bytes < seen.bytes {
                seen.packets = 0;
                seen.bytes = 0;
            }
            let key = RowKey { source: r.src_ip, destination: r.dst_ip, protocol: r.protocol, port: r.dst_port };
            let key = if self.rows.len() >= self.max_rows && !self.rows.contains_key(&key) { OTHER } else { key };
            let row = self.rows.entry(key).or_default();
            row.packets += packets - seen.packets;
            row.bytes += bytes - seen.bytes;
            if seen.counted != minute {
                row.flows += 1;
                seen.counted = minute;
            }
            if f.score.combined >= alert_threshold && seen.anomalous != minute {
                row.anomalous += 1;
                seen.anomalous = minute;
            }
            seen.packets = packets;
            seen.bytes = bytes;
            seen.last_ns = now_mono_ns;
        }
        if now_mono_ns.saturating_sub(self.last_prune_ns) >= self.forget_after_ns / 2 {
            self.last_prune_ns = now_mono_ns;
            let forget = self.forget_after_ns;
            self.seen.retain(|_, s| now_mono_ns.saturating_sub(s.last_ns) < forget);
        }
        finished
    }

    /// The current minute's rows so far (the agent stops), leaving it empty.
    pub fn take(&mut self) -> Vec<FlowRow> {
        let Some(minute) = self.minute else { return Vec::new() };
        self.rows
            .drain()
            .map(|(k, c)| FlowRow {
                minute,
                source: k.source,
                destination: k.destination,
                protocol: k.protocol,
                port: k.port,
                flows: c.flows,
                packets: c.packets,
                bytes: c.bytes,
                anomalous: c.anomalous,
            })
            .collect()
    }

    /// Conversations remembered (for memory tests).
    #[must_use]
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}
