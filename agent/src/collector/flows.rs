//! The fleet's flow batches as `flow_minutes` rows: each conversation of a
//! [`FlowBatch`] counts in every minute it spans (`flows` + 1), its packets and bytes (both
//! sides) shared among those minutes by the time it spent in each, keyed as the agent keys its
//! own rows (initiator, responder, protocol, the responder's port). Records leave the agent
//! at most `active_timeout` after they began (a longer conversation continues in a new record),
//! so the share is close to what the agent's own per-minute rows hold. Records carry no score:
//! `anomalous` stays 0 in the collector's rows.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::fleet::proto::{FlowBatch, ip_from};
use crate::store::FlowRow;

/// The most minutes one conversation is spread over (a day); a longer one (a clock jump on the
/// agent) counts in its last day only.
const MAX_MINUTES: i64 = 24 * 60;

/// The minute rows of `batch`, one per (minute, initiator, responder, protocol, port); records
/// with an address of neither 4 nor 16 bytes are left out (counted in the answer's second part).
pub(crate) fn minute_rows(batch: &FlowBatch) -> (Vec<FlowRow>, usize) {
    type Key = (i64, IpAddr, IpAddr, u8, u16);
    let mut rows: HashMap<Key, FlowRow> = HashMap::new();
    let mut bad = 0;
    for c in &batch.flows {
        let (Ok(source), Ok(destination)) = (ip_from(&c.initiator_ip), ip_from(&c.responder_ip)) else {
            bad += 1;
            continue;
        };
        let sides = [c.initiator.as_ref(), c.responder.as_ref()];
        let packets: u64 = sides.iter().flatten().map(|s| s.packets).sum();
        let bytes: u64 = sides.iter().flatten().map(|s| s.bytes).sum();
        let first_ms = i64::try_from(c.first_seen_ns / 1_000_000).unwrap_or(i64::MAX);
        let last_ms = i64::try_from(c.last_seen_ns / 1_000_000).unwrap_or(i64::MAX).max(first_ms);
        let last_minute = last_ms / 60_000;
        let first_minute = (first_ms / 60_000).max(last_minute - (MAX_MINUTES - 1));
        let first_ms = first_ms.max(first_minute * 60_000);
        let span = u128::try_from(last_ms - first_ms + 1).unwrap_or(1);
        let (protocol, port) = (u8::try_from(c.protocol).unwrap_or(0), u16::try_from(c.responder_port).unwrap_or(0));
        let (mut packets_left, mut bytes_left) = (packets, bytes);
        for minute in first_minute..=last_minute {
            let (share_packets, share_bytes) = if minute == last_minute {
                (packets_left, bytes_left)
            } else {
                let start = first_ms.max(minute * 60_000);
                let end = last_ms.min(minute * 60_000 + 59_999);
                let in_minute = u128::try_from(end - start + 1).unwrap_or(0);
                let share = |total: u64| u64::try_from(u128::from(total) * in_minute / span).unwrap_or(u64::MAX);
                (share(packets), share(bytes))
            };
            packets_left -= share_packets.min(packets_left);
            bytes_left -= share_bytes.min(bytes_left);
            let row = rows.entry((minute, source, destination, protocol, port)).or_insert(FlowRow {
                minute,
                source,
                destination,
                protocol,
                port,
                flows: 0,
                packets: 0,
                bytes: 0,
                anomalous: 0,
            });
            row.flows += 1;
            row.packets += share_packets;
            row.bytes += share_bytes;
        }
    }
    let mut rows: Vec<FlowRow> = rows.into_values().collect();
    rows.sort_by_key(|r| (r.minute, r.source, r.destination, r.protocol, r.port));
    (rows, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::proto::{Conversation, Side};

    const MINUTE_NS: u64 = 60_000_000_000;
    const T0: u64 = 29_400_000 * MINUTE_NS; // a whole minute

    fn conversation(first_ns: u64, last_ns: u64, packets: (u64, u64), bytes: (u64, u64)) -> Conversation {
        Conversation {
            record_version: 2,
            initiator_ip: vec![192, 0, 2, 7],
            responder_ip: vec![198, 51, 100, 1],
            initiator_port: 40_000,
            responder_port: 443,
            protocol: 6,
            first_seen_ns: first_ns,
            last_seen_ns: last_ns,
            initiator: Some(Side { packets: packets.0, bytes: bytes.0, ..Side::default() }),
            responder: (packets.1 > 0).then(|| Side { packets: packets.1, bytes: bytes.1, ..Side::default() }),
            ..Conversation::default()
        }
    }

    #[test]
    fn a_conversation_counts_in_each_minute_it_spans_with_its_traffic_shared_by_time() {
        // 30 s in minute 0, 60 s in minute 1, 30 s in minute 2 (both sides' totals).
        let c =
            conversation(T0 + 30 * MINUTE_NS / 60, T0 + 150 * MINUTE_NS / 60 - 1_000_000, (600, 400), (60_000, 40_000));
        // Another one in minute 0 on the same key, and one to another port.
        let short = conversation(T0 + 1_000_000_000, T0 + 2_000_000_000, (3, 0), (180, 0));
        let mut other_port = short.clone();
        other_port.responder_port = 22;
        let batch = FlowBatch { flows: vec![c, short, other_port], ..FlowBatch::default() };
        let (rows, bad) = minute_rows(&batch);
        assert_eq!(bad, 0);
        let m0 = i64::try_from(T0 / MINUTE_NS).unwrap();
        let got: Vec<(i64, u16, u64, u64, u64)> =
            rows.iter().map(|r| (r.minute - m0, r.port, r.flows, r.packets, r.bytes)).collect();
        assert_eq!(
            got,
            [
                (0, 22, 1, 3, 180),
                (0, 443, 2, 250 + 3, 25_000 + 180),
                (1, 443, 1, 500, 50_000),
                (2, 443, 1, 250, 25_000)
            ]
        );
        let total: u64 = rows.iter().filter(|r| r.port == 443).map(|r| r.bytes).sum();
        assert_eq!(total, 100_000 + 180, "nothing lost to rounding");
        assert!(rows.iter().all(|r| r.source == "192.0.2.7".parse::<IpAddr>().unwrap() && r.anomalous == 0));
    }

    #[test]
    fn bad_addresses_are_left_out_and_a_runaway_span_is_capped_at_a_day() {
        let mut bad = conversation(T0, T0, (1, 0), (60, 0));
        bad.initiator_ip = vec![1, 2, 3];
        let long = conversation(T0 - 10 * 24 * 60 * MINUTE_NS, T0 + 1, (1440, 0), (1440, 0));
        let (rows, left_out) = minute_rows(&FlowBatch { flows: vec![bad, long], ..FlowBatch::default() });
        assert_eq!(left_out, 1);
        assert_eq!(rows.len(), 1440, "a day of minutes");
        assert_eq!(rows.iter().map(|r| r.packets).sum::<u64>(), 1440);
    }
}
