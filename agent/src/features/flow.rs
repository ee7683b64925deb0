//! The flow schema's features, computed from a [`FlowRecord`] and its [`ContextStats`].

use agent_common::proto::{self, IPPROTO_TCP, IPPROTO_UDP};
use ndarray::Array2;

use super::{
    Transform::{self, Identity, Log1p},
    context::{ContextStats, ContextWindow},
};
use crate::flows::FlowRecord;

/// The flow schema, in order: (name, unit, transform, description).
pub const FLOW_FEATURES: &[(&str, &str, Transform, &str)] = &[
    ("duration_s", "s", Log1p, "time from first to last packet"),
    ("packets", "packets", Log1p, "packets in the flow"),
    ("bytes", "bytes", Log1p, "frame bytes in the flow"),
    ("packets_per_s", "packets/s", Log1p, "packet rate (duration floored at 1 ms)"),
    ("bytes_per_s", "bytes/s", Log1p, "byte rate (duration floored at 1 ms)"),
    ("len_mean", "bytes", Log1p, "mean frame length"),
    ("len_std", "bytes", Log1p, "standard deviation of frame length"),
    ("iat_mean_ms", "ms", Log1p, "mean gap between packets (0 for one packet)"),
    ("iat_std_ms", "ms", Log1p, "standard deviation of the gaps"),
    ("syn_ratio", "fraction", Identity, "share of packets with SYN and no ACK"),
    ("syn_ack_ratio", "fraction", Identity, "share of packets with SYN+ACK"),
    ("fin_ratio", "fraction", Identity, "share of packets with FIN"),
    ("rst_ratio", "fraction", Identity, "share of packets with RST"),
    ("psh_ratio", "fraction", Identity, "share of packets with PSH"),
    ("ack_ratio", "fraction", Identity, "share of packets with ACK"),
    ("tcp_initiated", "flag", Identity, "the flow opened a TCP connection (sent a SYN)"),
    ("tcp_completed", "flag", Identity, "the opener went on to send ACKs (handshake completed)"),
    ("ttl_min", "hops", Identity, "smallest IPv4 TTL or IPv6 hop limit"),
    ("proto_tcp", "flag", Identity, "IP protocol is TCP"),
    ("proto_udp", "flag", Identity, "IP protocol is UDP"),
    ("proto_icmp", "flag", Identity, "IP protocol is ICMP or ICMPv6"),
    ("fragmented", "flag", Identity, "IP fragments were seen"),
    ("src_port_system", "flag", Identity, "source port below 1024"),
    ("dst_port_system", "flag", Identity, "destination port below 1024"),
    ("src_flows", "flows", Log1p, "flows the source started in the window"),
    ("src_dst_hosts", "hosts", Log1p, "distinct destination hosts of the source in the window"),
    ("src_dst_ports", "ports", Log1p, "distinct destination ports of the source in the window"),
    ("src_unanswered_share", "fraction", Identity, "share of the source's TCP attempts unanswered or reset"),
    ("src_bytes_out_in", "ln ratio", Identity, "ln((bytes sent + 1) / (bytes received + 1)) of the source"),
    ("dst_flows", "flows", Log1p, "flows to the destination in the window"),
    ("dst_src_hosts", "hosts", Log1p, "distinct sources of the destination in the window"),
    ("dst_unanswered_share", "fraction", Identity, "share of TCP attempts to the destination unanswered or reset"),
];

/// Number of features in the flow schema.
pub const FLOW_FEATURE_COUNT: usize = FLOW_FEATURES.len();

const NS_PER_S: f64 = 1e9;
const NS_PER_MS: f64 = 1e6;

/// Turns flow records into raw feature rows (before transform and scaling).
#[derive(Debug)]
pub struct FlowFeatures {
    window: ContextWindow,
}

impl FlowFeatures {
    /// An extractor whose context window is `window` long.
    #[must_use]
    pub fn new(window: ContextWindow) -> Self {
        Self { window }
    }

    /// Adds `record` to the context window and returns its raw feature row.
    pub fn push(&mut self, record: &FlowRecord) -> [f32; FLOW_FEATURE_COUNT] {
        let context = self.window.observe(record);
        raw_row(record, &context)
    }

    /// Raw rows for a batch of records, taken in order of their first packet (the order the
    /// context window needs). Row `i` belongs to `records[i]`.
    pub fn batch(&mut self, records: &[FlowRecord]) -> Array2<f32> {
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by_key(|&i| records[i].first_seen_ns);
        let mut out = Array2::zeros((records.len(), FLOW_FEATURE_COUNT));
        for i in order {
            let row = self.push(&records[i]);
            out.row_mut(i).assign(&ndarray::ArrayView1::from(&row[..]));
        }
        out
    }
}

/// The raw feature row of one record given its context.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "feature values are approximate by nature")]
pub fn raw_row(r: &FlowRecord, ctx: &ContextStats) -> [f32; FLOW_FEATURE_COUNT] {
    let packets = r.packets.max(1) as f64;
    let duration_ns = r.duration_ns() as f64;
    let rate_s = (duration_ns / NS_PER_S).max(1e-3);
    let len_mean = r.bytes as f64 / packets;
    let len_var = (r.len_sq_sum as f64 / packets - len_mean * len_mean).max(0.0);
    let gaps = r.packets.saturating_sub(1) as f64;
    let (iat_mean_ms, iat_std_ms) = if gaps > 0.0 {
        let mean_us = r.iat_sum_ns as f64 / gaps / 1e3;
        let var_us2 = (r.iat_sq_sum_us2 as f64 / gaps - mean_us * mean_us).max(0.0);
        (mean_us / 1e3, var_us2.sqrt() / 1e3)
    } else {
        (0.0, 0.0)
    };
    let f = &r.tcp_flags;
    let ratio = |n: u32| f64::from(n) / packets;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let tcp = r.protocol == IPPROTO_TCP;
    let icmp = proto::is_icmp(r.protocol);
    let initiated = tcp && f.syn > 0;
    // The opener's ACKs (its SYN carries none) mean it saw the SYN+ACK and went on.
    let completed = initiated && f.ack > f.syn_ack;
    let row = [
        duration_ns / NS_PER_S,
        r.packets as f64,
        r.bytes as f64,
        r.packets as f64 / rate_s,
        r.bytes as f64 / rate_s,
        len_mean,
        len_var.sqrt(),
        iat_mean_ms,
        iat_std_ms,
        ratio(f.syn),
        ratio(f.syn_ack),
        ratio(f.fin),
        ratio(f.rst),
        ratio(f.psh),
        ratio(f.ack),
        flag(initiated),
        flag(completed),
        f64::from(r.ttl_min),
        flag(tcp),
        flag(r.protocol == IPPROTO_UDP),
        flag(icmp),
        flag(r.fragment_first || r.fragment_later),
        flag(r.src_port < 1024 && !icmp),
        flag(r.dst_port < 1024 && !icmp),
        f64::from(ctx.src_flows),
        f64::from(ctx.src_dst_hosts),
        f64::from(ctx.src_dst_ports),
        ctx.src_unanswered_share,
        ((ctx.src_bytes_out as f64 + 1.0) / (ctx.src_bytes_in as f64 + 1.0)).ln(),
        f64::from(ctx.dst_flows),
        f64::from(ctx.dst_src_hosts),
        ctx.dst_unanswered_share,
    ];
    #[expect(clippy::cast_possible_truncation, reason = "features are f32")]
    row.map(|x| x as f32)
}

/// Milliseconds in a nanosecond count, for callers that report durations.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "reporting only")]
pub fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / NS_PER_MS
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flows::{EndReason, record::TcpFlagCounts};

    pub(crate) fn record(src: u8, dst: u8, dst_port: u16, first_ms: u64) -> FlowRecord {
        FlowRecord {
            src_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, src)),
            dst_ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, dst)),
            src_port: 40000,
            dst_port,
            protocol: 6,
            ip_version: 4,
            first_seen_ns: first_ms * 1_000_000,
            last_seen_ns: first_ms * 1_000_000 + 2_000_000,
            packets: 3,
            bytes: 180,
            len_min: 60,
            len_max: 60,
            len_sq_sum: 3 * 3600,
            iat_min_ns: Some(1_000_000),
            iat_max_ns: Some(1_000_000),
            iat_sum_ns: 2_000_000,
            iat_sq_sum_us2: 2_000_000,
            tcp_flags: TcpFlagCounts { syn: 1, ack: 2, ..TcpFlagCounts::default() },
            ttl_min: 64,
            ttl_max: 64,
            fragment_first: false,
            fragment_later: false,
            malformed: 0,
            transport_truncated: false,
            network_unwalked: false,
            end_reason: EndReason::Idle,
        }
    }

    fn value(row: &[f32], name: &str) -> f32 {
        row[FLOW_FEATURES.iter().position(|f| f.0 == name).expect("feature exists")]
    }

    #[test]
    fn record_features_have_their_units() {
        let r = record(1, 2, 80, 0);
        let row = raw_row(&r, &ContextStats::default());
        assert!((value(&row, "duration_s") - 0.002).abs() < 1e-6);
        assert!((value(&row, "packets_per_s") - 1500.0).abs() < 1e-2);
        assert!((value(&row, "len_mean") - 60.0).abs() < 1e-4);
        assert!(value(&row, "len_std").abs() < 1e-4);
        assert!((value(&row, "iat_mean_ms") - 1.0).abs() < 1e-6);
        assert!(value(&row, "iat_std_ms").abs() < 1e-3);
        assert!((value(&row, "syn_ratio") - 1.0 / 3.0).abs() < 1e-6);
        assert!((value(&row, "tcp_completed") - 1.0).abs() < f32::EPSILON);
        assert!((value(&row, "dst_port_system") - 1.0).abs() < f32::EPSILON);
        assert!((value(&row, "ttl_min") - 64.0).abs() < f32::EPSILON);
        // No traffic back: ln(181 / 1).
        let ctx = ContextStats { src_bytes_out: 180, ..ContextStats::default() };
        assert!((value(&raw_row(&r, &ctx), "src_bytes_out_in") - 181f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn lone_syn_is_initiated_not_completed() {
        let mut r = record(1, 2, 22, 0);
        r.packets = 1;
        r.bytes = 60;
        r.len_sq_sum = 3600;
        r.last_seen_ns = r.first_seen_ns;
        r.iat_sum_ns = 0;
        r.iat_sq_sum_us2 = 0;
        r.tcp_flags = TcpFlagCounts { syn: 1, ..TcpFlagCounts::default() };
        let row = raw_row(&r, &ContextStats::default());
        assert!((value(&row, "tcp_initiated") - 1.0).abs() < f32::EPSILON);
        assert!(value(&row, "tcp_completed").abs() < f32::EPSILON);
        assert!(value(&row, "iat_mean_ms").abs() < f32::EPSILON);
        assert!((value(&row, "packets_per_s") - 1000.0).abs() < 1e-3, "rate over the 1 ms floor");
    }

    #[test]
    fn batch_rows_follow_input_order_and_see_earlier_flows() {
        // Given out of time order, each row must still land at its record's index and the
        // context must be computed in time order: the scan's third flow sees three ports.
        let records = [record(1, 2, 23, 20), record(1, 2, 21, 0), record(1, 2, 22, 10)];
        let mut features = FlowFeatures::new(ContextWindow::new(std::time::Duration::from_secs(10)));
        let rows = features.batch(&records);
        let ports: Vec<f32> =
            rows.rows().into_iter().map(|r| value(r.as_slice().expect("contiguous"), "src_dst_ports")).collect();
        assert_eq!(ports, [3.0, 1.0, 2.0]);
    }
}
