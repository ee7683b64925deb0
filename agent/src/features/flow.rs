//! The flow schema's features, computed from a conversation (its initiator's direction and, if
//! it answered, its responder's: Zeek's `orig` and `resp`) and its [`ContextStats`].

use agent_common::proto::{self, IPPROTO_TCP, IPPROTO_UDP};
use ndarray::Array2;

use super::{
    Transform::{self, Identity, Log1p},
    context::{ContextStats, ContextWindow},
};
use crate::flows::{
    FlowRecord,
    biflow::{ConnState, Conversation},
};

/// The flow schema, in order: (name, unit, transform, description). `orig` is the side that
/// initiated the conversation, `resp` the side that answered (Zeek's names).
pub const FLOW_FEATURES: &[(&str, &str, Transform, &str)] = &[
    ("duration_s", "s", Log1p, "time from the first to the last packet of either side"),
    ("orig_packets", "packets", Log1p, "packets the initiator sent"),
    ("orig_bytes", "bytes", Log1p, "frame bytes the initiator sent"),
    ("resp_packets", "packets", Log1p, "packets the responder sent (0: no answer)"),
    ("resp_bytes", "bytes", Log1p, "frame bytes the responder sent"),
    ("bytes_ratio", "ln ratio", Identity, "ln((orig_bytes + 1) / (resp_bytes + 1))"),
    ("orig_len_mean", "bytes", Log1p, "mean frame length the initiator sent"),
    ("orig_len_std", "bytes", Log1p, "standard deviation of the initiator's frame lengths"),
    ("resp_len_mean", "bytes", Log1p, "mean frame length the responder sent"),
    ("resp_len_std", "bytes", Log1p, "standard deviation of the responder's frame lengths"),
    ("orig_iat_mean_ms", "ms", Log1p, "mean gap between the initiator's packets (0 for one packet)"),
    ("orig_iat_std_ms", "ms", Log1p, "standard deviation of the initiator's gaps"),
    ("resp_iat_mean_ms", "ms", Log1p, "mean gap between the responder's packets"),
    ("resp_iat_std_ms", "ms", Log1p, "standard deviation of the responder's gaps"),
    ("resp_delay_ms", "ms", Log1p, "from the initiator's first packet to the responder's first (0: no answer)"),
    ("answered", "flag", Identity, "the responder sent something back"),
    ("orig_syn_ratio", "fraction", Identity, "share of the initiator's packets with SYN and no ACK"),
    ("orig_fin_ratio", "fraction", Identity, "share of the initiator's packets with FIN"),
    ("orig_rst_ratio", "fraction", Identity, "share of the initiator's packets with RST"),
    ("orig_psh_ratio", "fraction", Identity, "share of the initiator's packets with PSH"),
    ("orig_ack_ratio", "fraction", Identity, "share of the initiator's packets with ACK"),
    ("resp_syn_ack_ratio", "fraction", Identity, "share of the responder's packets with SYN+ACK"),
    ("resp_fin_ratio", "fraction", Identity, "share of the responder's packets with FIN"),
    ("resp_rst_ratio", "fraction", Identity, "share of the responder's packets with RST"),
    ("resp_psh_ratio", "fraction", Identity, "share of the responder's packets with PSH"),
    ("state_s0", "flag", Identity, "conn_state S0: an attempt (or a non-TCP message) and no answer"),
    ("state_rej", "flag", Identity, "conn_state REJ: a SYN answered by a reset"),
    ("state_sh", "flag", Identity, "conn_state SH: SYN and FIN from the initiator, no SYN-ACK"),
    ("state_established", "flag", Identity, "a TCP handshake was answered (S1, SF, S2, S3, RSTO, RSTR)"),
    ("state_reset", "flag", Identity, "conn_state RSTO or RSTR: established, then reset"),
    ("state_oth", "flag", Identity, "conn_state OTH: TCP caught mid-conversation (no SYN seen)"),
    ("orig_ttl_min", "hops", Identity, "smallest IPv4 TTL or IPv6 hop limit the initiator sent with"),
    ("proto_tcp", "flag", Identity, "IP protocol is TCP"),
    ("proto_udp", "flag", Identity, "IP protocol is UDP"),
    ("proto_icmp", "flag", Identity, "IP protocol is ICMP or ICMPv6"),
    ("fragmented", "flag", Identity, "IP fragments were seen on either side"),
    ("orig_port_system", "flag", Identity, "the initiator's port is below 1024"),
    ("resp_port_system", "flag", Identity, "the responder's port is below 1024"),
    ("src_flows", "flows", Log1p, "conversations the initiator started in the window"),
    ("src_dst_hosts", "hosts", Log1p, "distinct hosts the initiator reached in the window"),
    ("src_dst_ports", "ports", Log1p, "distinct ports the initiator reached in the window"),
    (
        "src_unanswered_share",
        "fraction",
        Identity,
        "share of the initiator's TCP attempts that failed (no answer, rejected, half-open, never completed)",
    ),
    ("src_failed", "attempts", Log1p, "TCP attempts of the initiator that failed in the window"),
    (
        "src_bytes_out_in",
        "ln ratio",
        Identity,
        "ln((bytes the initiator sent + 1) / (bytes it got back + 1)) in the window",
    ),
    ("dst_flows", "flows", Log1p, "conversations to the responder in the window"),
    ("dst_src_hosts", "hosts", Log1p, "distinct initiators that reached the responder in the window"),
    ("dst_unanswered_share", "fraction", Identity, "share of TCP attempts to the responder that failed"),
    ("dst_failed", "attempts", Log1p, "TCP attempts to the responder that failed in the window"),
    ("src_protocols", "protocols", Log1p, "distinct IP protocols the initiator used in the window"),
    (
        "svc_flows",
        "flows",
        Log1p,
        "conversations of the initiator to this service (responder, port, protocol) in the window",
    ),
    ("src_dst_hosts_long", "hosts", Log1p, "distinct hosts the initiator reached in the last 2 minutes"),
    ("src_dst_ports_long", "ports", Log1p, "distinct ports the initiator reached in the last 2 minutes"),
    ("src_failed_long", "attempts", Log1p, "TCP attempts of the initiator that failed in the last 2 minutes"),
    ("svc_flows_long", "flows", Log1p, "conversations of the initiator to this service in the last 2 minutes"),
    ("dst_src_hosts_long", "hosts", Log1p, "distinct initiators that reached the responder in the last 2 minutes"),
    ("pair_ports_long", "ports", Log1p, "distinct ports of the responder the initiator reached in the last 2 minutes"),
    (
        "pair_failed_long",
        "attempts",
        Log1p,
        "TCP attempts of the initiator to the responder that failed in the last 2 minutes",
    ),
];

/// Features whose range in the training data is a score of its own: how many IP protocols a
/// source used, how many conversations it had with one service, how many ports of one host it
/// reached and how many of its attempts to that host failed. Benign traffic of every kind keeps
/// these small; scans, floods of sessions and password guessing drive one of them far beyond.
/// Measured on `../shared/data` (docs/detection.md): on benign captures split by file, no
/// held-out conversation lay 4 standard deviations beyond the training range on these, while on
/// all features a quarter did (peer-to-peer clients reach hundreds of hosts and ports).
pub const RANGED_FEATURES: &[&str] =
    &["src_protocols", "svc_flows", "svc_flows_long", "pair_ports_long", "pair_failed_long"];

/// Number of features in the flow schema.
pub const FLOW_FEATURE_COUNT: usize = FLOW_FEATURES.len();

const NS_PER_S: f64 = 1e9;
const NS_PER_MS: f64 = 1e6;

/// Turns conversations into raw feature rows (before transform and scaling).
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

    /// Adds the conversation of `orig` (the initiator's direction) and `resp` (the
    /// responder's, if it answered) to the context window and returns its raw feature row.
    pub fn push(&mut self, orig: &FlowRecord, resp: Option<&FlowRecord>) -> [f32; FLOW_FEATURE_COUNT] {
        let context = self.window.observe(orig, resp);
        raw_row(orig, resp, &context)
    }

    /// Raw rows for a batch of conversations, taken in order of their first packet (the order
    /// the context window needs). Row `i` belongs to `conversations[i]`.
    pub fn batch(&mut self, conversations: &[Conversation]) -> Array2<f32> {
        let mut order: Vec<usize> = (0..conversations.len()).collect();
        order.sort_by_key(|&i| conversations[i].first_seen_ns());
        let mut out = Array2::zeros((conversations.len(), FLOW_FEATURE_COUNT));
        for i in order {
            let c = &conversations[i];
            let row = self.push(&c.first, c.second.as_ref());
            out.row_mut(i).assign(&ndarray::ArrayView1::from(&row[..]));
        }
        out
    }
}

/// Mean and standard deviation of a side's frame lengths, and of its gaps in milliseconds.
#[expect(clippy::cast_precision_loss, reason = "feature values are approximate by nature")]
fn side_stats(r: &FlowRecord) -> [f64; 4] {
    let packets = r.packets.max(1) as f64;
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
    [len_mean, len_var.sqrt(), iat_mean_ms, iat_std_ms]
}

/// The raw feature row of a conversation (`orig` the initiator's direction, `resp` the
/// responder's if it answered) given its context.
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "feature values are approximate by nature")]
pub fn raw_row(orig: &FlowRecord, resp: Option<&FlowRecord>, ctx: &ContextStats) -> [f32; FLOW_FEATURE_COUNT] {
    let first_ns = resp.map_or(orig.first_seen_ns, |r| r.first_seen_ns.min(orig.first_seen_ns));
    let last_ns = resp.map_or(orig.last_seen_ns, |r| r.last_seen_ns.max(orig.last_seen_ns));
    let duration_ns = last_ns.saturating_sub(first_ns) as f64;
    let (resp_packets, resp_bytes) = resp.map_or((0, 0), |r| (r.packets, r.bytes));
    let o = side_stats(orig);
    let r = resp.map_or([0.0; 4], side_stats);
    let share = |n: u32, of: u64| f64::from(n) / of.max(1) as f64;
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    let of = &orig.tcp_flags;
    let rf = resp.map(|r| r.tcp_flags).unwrap_or_default();
    let icmp = proto::is_icmp(orig.protocol);
    let state = ConnState::of(orig.protocol, of, resp.map(|r| &r.tcp_flags));
    let tcp = orig.protocol == IPPROTO_TCP;
    let established = tcp
        && matches!(
            state,
            ConnState::S1 | ConnState::SF | ConnState::S2 | ConnState::S3 | ConnState::RSTO | ConnState::RSTR
        );
    let resp_delay_ms = resp.map_or(0.0, |r| r.first_seen_ns.saturating_sub(orig.first_seen_ns) as f64 / NS_PER_MS);
    let row = [
        duration_ns / NS_PER_S,
        orig.packets as f64,
        orig.bytes as f64,
        resp_packets as f64,
        resp_bytes as f64,
        ((orig.bytes as f64 + 1.0) / (resp_bytes as f64 + 1.0)).ln(),
        o[0],
        o[1],
        r[0],
        r[1],
        o[2],
        o[3],
        r[2],
        r[3],
        resp_delay_ms,
        flag(resp.is_some()),
        share(of.syn, orig.packets),
        share(of.fin, orig.packets),
        share(of.rst, orig.packets),
        share(of.psh, orig.packets),
        share(of.ack, orig.packets),
        share(rf.syn_ack, resp_packets),
        share(rf.fin, resp_packets),
        share(rf.rst, resp_packets),
        share(rf.psh, resp_packets),
        flag(state == ConnState::S0),
        flag(state == ConnState::REJ),
        flag(state == ConnState::SH),
        flag(established),
        flag(matches!(state, ConnState::RSTO | ConnState::RSTR)),
        flag(state == ConnState::OTH),
        f64::from(orig.ttl_min),
        flag(tcp),
        flag(orig.protocol == IPPROTO_UDP),
        flag(icmp),
        flag(orig.fragment_first || orig.fragment_later || resp.is_some_and(|r| r.fragment_first || r.fragment_later)),
        flag(orig.src_port < 1024 && !icmp),
        flag(orig.dst_port < 1024 && !icmp),
        f64::from(ctx.src_flows),
        f64::from(ctx.src_dst_hosts),
        f64::from(ctx.src_dst_ports),
        ctx.src_unanswered_share,
        f64::from(ctx.src_failed),
        ((ctx.src_bytes_out as f64 + 1.0) / (ctx.src_bytes_in as f64 + 1.0)).ln(),
        f64::from(ctx.dst_flows),
        f64::from(ctx.dst_src_hosts),
        ctx.dst_unanswered_share,
        f64::from(ctx.dst_failed),
        f64::from(ctx.src_protocols),
        f64::from(ctx.svc_flows),
        f64::from(ctx.long.src_dst_hosts),
        f64::from(ctx.long.src_dst_ports),
        f64::from(ctx.long.src_failed),
        f64::from(ctx.long.svc_flows),
        f64::from(ctx.long.dst_src_hosts),
        f64::from(ctx.long.pair_ports),
        f64::from(ctx.long.pair_failed),
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

    /// The answer of 10.0.0.`dst` to [`record`]: SYN-ACK then ACKs, 3 ms after the SYN.
    pub(crate) fn answer(orig: &FlowRecord) -> FlowRecord {
        let mut r = orig.clone();
        (r.src_ip, r.dst_ip, r.src_port, r.dst_port) = (orig.dst_ip, orig.src_ip, orig.dst_port, orig.src_port);
        r.first_seen_ns += 3_000_000;
        r.last_seen_ns += 3_000_000;
        r.packets = 2;
        r.bytes = 1560;
        r.len_sq_sum = 60 * 60 + 1500 * 1500;
        r.iat_sum_ns = 1_000_000;
        r.iat_sq_sum_us2 = 1_000_000;
        r.tcp_flags = TcpFlagCounts { syn_ack: 1, ack: 2, psh: 1, ..TcpFlagCounts::default() };
        r.ttl_min = 63;
        r
    }

    #[test]
    fn record_features_have_their_units() {
        let r = record(1, 2, 80, 0);
        let back = answer(&r);
        let row = raw_row(&r, Some(&back), &ContextStats::default());
        // First SYN at 0 ms, last answer at 5 ms.
        assert!((value(&row, "duration_s") - 0.005).abs() < 1e-6);
        assert!((value(&row, "orig_len_mean") - 60.0).abs() < 1e-4);
        assert!(value(&row, "orig_len_std").abs() < 1e-4);
        assert!((value(&row, "resp_len_mean") - 780.0).abs() < 1e-3);
        assert!((value(&row, "resp_len_std") - 720.0).abs() < 1e-2);
        assert!((value(&row, "bytes_ratio") - (181f32 / 1561.0).ln()).abs() < 1e-5);
        assert!((value(&row, "orig_iat_mean_ms") - 1.0).abs() < 1e-6);
        assert!(value(&row, "orig_iat_std_ms").abs() < 1e-3);
        assert!((value(&row, "resp_delay_ms") - 3.0).abs() < 1e-5);
        assert!((value(&row, "answered") - 1.0).abs() < f32::EPSILON);
        assert!((value(&row, "orig_syn_ratio") - 1.0 / 3.0).abs() < 1e-6);
        assert!((value(&row, "resp_syn_ack_ratio") - 0.5).abs() < 1e-6);
        assert!((value(&row, "state_established") - 1.0).abs() < f32::EPSILON, "S1");
        assert!((value(&row, "resp_port_system") - 1.0).abs() < f32::EPSILON);
        assert!(value(&row, "orig_port_system").abs() < f32::EPSILON);
        assert!((value(&row, "orig_ttl_min") - 64.0).abs() < f32::EPSILON);
        // Nothing got back in the window: ln(181 / 1).
        let ctx = ContextStats { src_bytes_out: 180, ..ContextStats::default() };
        assert!((value(&raw_row(&r, None, &ctx), "src_bytes_out_in") - 181f32.ln()).abs() < 1e-5);
    }

    #[test]
    fn lone_syn_is_s0_and_unanswered() {
        let mut r = record(1, 2, 22, 0);
        r.packets = 1;
        r.bytes = 60;
        r.len_sq_sum = 3600;
        r.last_seen_ns = r.first_seen_ns;
        r.iat_sum_ns = 0;
        r.iat_sq_sum_us2 = 0;
        r.tcp_flags = TcpFlagCounts { syn: 1, ..TcpFlagCounts::default() };
        let row = raw_row(&r, None, &ContextStats::default());
        assert!((value(&row, "state_s0") - 1.0).abs() < f32::EPSILON);
        assert!(value(&row, "state_established").abs() < f32::EPSILON);
        assert!(value(&row, "answered").abs() < f32::EPSILON);
        assert!(value(&row, "resp_packets").abs() < f32::EPSILON);
        assert!(value(&row, "resp_delay_ms").abs() < f32::EPSILON);
        assert!(value(&row, "orig_iat_mean_ms").abs() < f32::EPSILON);
        // Answered by a reset: REJ.
        let mut rst = answer(&r);
        rst.tcp_flags = TcpFlagCounts { rst: 1, ack: 1, ..TcpFlagCounts::default() };
        let row = raw_row(&r, Some(&rst), &ContextStats::default());
        assert!((value(&row, "state_rej") - 1.0).abs() < f32::EPSILON);
        assert!((value(&row, "resp_rst_ratio") - 0.5).abs() < f32::EPSILON);
    }

    #[test]
    fn batch_rows_follow_input_order_and_see_earlier_conversations() {
        // Given out of time order, each row must still land at its conversation's index and
        // the context must be computed in time order: the scan's third probe sees three ports.
        let c = |port, ms| Conversation::new(record(1, 2, port, ms), None);
        let conversations = [c(23, 20), c(21, 0), c(22, 10)];
        let mut features = FlowFeatures::new(ContextWindow::new(std::time::Duration::from_secs(10)));
        let rows = features.batch(&conversations);
        let ports: Vec<f32> =
            rows.rows().into_iter().map(|r| value(r.as_slice().expect("contiguous"), "src_dst_ports")).collect();
        assert_eq!(ports, [3.0, 1.0, 2.0]);
    }
}
