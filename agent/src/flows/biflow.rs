//! Bidirectional flow records (biflows): the two directions of a conversation in one record,
//! as RFC 5103 biflows and Zeek's conn records are.
//!
//! The kernel keeps one entry per direction, keyed by each packet's own source and destination
//! (docs/architecture.md says why the merge happens in userspace). This module is the merge:
//! which key is the other direction of a conversation ([`reverse`]), which side initiated
//! ([`initiator`]), the handshake outcome in the style of Zeek's `conn_state` ([`ConnState`]),
//! and the versioned record ([`BiflowRecord`], [`RECORD_VERSION`]) built from the two directional
//! [`FlowRecord`]s, or from one when the other direction never answered (a probe of a closed
//! port, a spoofed flood): that is still one record, with no responder side.

use std::{collections::HashMap, net::IpAddr};

use agent_common::{flow::FlowKey, proto};
use serde::{Deserialize, Serialize};

use super::record::{EndReason, FlowRecord, TcpFlagCounts};

/// The version of [`BiflowRecord`]'s format, written into every record so downstream readers
/// can tell it from the directional records of version 1.
pub const RECORD_VERSION: u32 = 2;

/// ICMP request types and the replies they pair with (echo, timestamp, information, address
/// mask).
const ICMP_PAIRS: [(u8, u8); 4] = [(8, 0), (13, 14), (15, 16), (17, 18)];
/// `ICMPv6` echo request and reply.
const ICMPV6_PAIRS: [(u8, u8); 1] = [(128, 129)];

fn icmp_pairs(protocol: u8) -> &'static [(u8, u8)] {
    if protocol == proto::IPPROTO_ICMP { &ICMP_PAIRS } else { &ICMPV6_PAIRS }
}

/// The key of the other direction of a conversation: addresses and ports swapped; for an ICMP
/// request its reply type (and the reverse), code kept, in the destination port where flow
/// keys hold `type << 8 | code`. Other ICMP messages (errors, adverts) have no reply and pair
/// only with the same type coming back.
#[must_use]
pub fn reverse(key: &FlowKey) -> FlowKey {
    if proto::is_icmp(key.protocol) {
        let [kind, code] = key.dst_port.to_be_bytes();
        let other = icmp_pairs(key.protocol).iter().find_map(|&(req, rep)| match kind {
            k if k == req => Some(rep),
            k if k == rep => Some(req),
            _ => None,
        });
        let dst_port = u16::from_be_bytes([other.unwrap_or(kind), code]);
        return FlowKey { src_addr: key.dst_addr, dst_addr: key.src_addr, dst_port, ..*key };
    }
    FlowKey { src_addr: key.dst_addr, dst_addr: key.src_addr, src_port: key.dst_port, dst_port: key.src_port, ..*key }
}

/// The key both directions of a conversation share: the smaller of a key and its [`reverse`].
#[must_use]
pub fn conversation(key: &FlowKey) -> FlowKey {
    let back = reverse(key);
    if back < *key { back } else { *key }
}

/// Whether the key is an ICMP request (the asking side of a request/reply pair).
fn is_icmp_request(key: &FlowKey) -> bool {
    let kind = key.dst_port.to_be_bytes()[0];
    proto::is_icmp(key.protocol) && icmp_pairs(key.protocol).iter().any(|&(req, _)| req == kind)
}

/// Which of two directions of one conversation initiated it: `true` for `a`.
///
/// In order: the side that sent a SYN without ACK when the other did not; the side that did not
/// send a SYN-ACK when the other did (a capture that missed the SYN); the side seen first; at
/// the same instant, an ICMP request before its reply; then the side with the higher port (the
/// ephemeral one of a client); then the lower address.
#[must_use]
pub fn initiator(a: &FlowRecord, b: &FlowRecord) -> bool {
    let (fa, fb) = (&a.tcp_flags, &b.tcp_flags);
    if (fa.syn > 0) != (fb.syn > 0) {
        return fa.syn > 0;
    }
    if (fa.syn_ack > 0) != (fb.syn_ack > 0) {
        return fb.syn_ack > 0;
    }
    if a.first_seen_ns != b.first_seen_ns {
        return a.first_seen_ns < b.first_seen_ns;
    }
    let (ka, kb) = (a.key(), b.key());
    if is_icmp_request(&ka) != is_icmp_request(&kb) {
        return is_icmp_request(&ka);
    }
    if a.src_port != b.src_port {
        return a.src_port > b.src_port;
    }
    ka <= kb
}

/// How a conversation went, in the style of Zeek's `conn_state`, from flag counts (Zeek reads
/// the order of packets; counts cannot tell a SYN after data from one before it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConnState {
    /// A SYN and no answer (or, for other protocols, no packet back).
    S0,
    /// Established, not closed.
    S1,
    /// Established and closed by both sides; for other protocols, packets both ways.
    SF,
    /// A SYN answered by a reset: the port is closed.
    REJ,
    /// Established, closed by the initiator only.
    S2,
    /// Established, closed by the responder only.
    S3,
    /// Established, then reset by the initiator.
    RSTO,
    /// Established, then reset by the responder.
    RSTR,
    /// The initiator sent a SYN and a FIN, the responder no SYN-ACK (a half-open scan).
    SH,
    /// No SYN seen: a conversation caught in the middle, or not TCP at all and one-way traffic
    /// that is not a request.
    OTH,
}

impl ConnState {
    /// The state of a conversation from its two sides' flag counts.
    #[must_use]
    pub fn of(protocol: u8, initiator: &TcpFlagCounts, responder: Option<&TcpFlagCounts>) -> Self {
        let none = TcpFlagCounts::default();
        let r = responder.unwrap_or(&none);
        if protocol != proto::IPPROTO_TCP {
            return if responder.is_some() { Self::SF } else { Self::S0 };
        }
        let i = initiator;
        if i.syn == 0 && r.syn_ack == 0 {
            return Self::OTH;
        }
        if r.syn_ack == 0 {
            return if r.rst > 0 {
                Self::REJ
            } else if i.fin > 0 {
                Self::SH
            } else {
                Self::S0
            };
        }
        match (i.rst > 0, r.rst > 0, i.fin > 0, r.fin > 0) {
            (true, _, _, _) => Self::RSTO,
            (_, true, _, _) => Self::RSTR,
            (_, _, true, true) => Self::SF,
            (_, _, true, false) => Self::S2,
            (_, _, false, true) => Self::S3,
            (_, _, false, false) => Self::S1,
        }
    }
}

/// One side of a biflow: what one end sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(clippy::struct_excessive_bools, reason = "one JSON boolean per flag bit, as in docs/flow-records.md")]
pub struct Side {
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub len_min: u32,
    pub len_max: u32,
    pub len_sq_sum: u64,
    pub iat_min_ns: Option<u64>,
    pub iat_max_ns: Option<u64>,
    pub iat_sum_ns: u64,
    pub iat_sq_sum_us2: u64,
    pub tcp_flags: TcpFlagCounts,
    pub ttl_min: u8,
    pub ttl_max: u8,
    pub fragment_first: bool,
    pub fragment_later: bool,
    pub malformed: u32,
    pub transport_truncated: bool,
    pub network_unwalked: bool,
}

impl Side {
    /// The directional record of this side, sent from `src` to `dst`.
    fn record(&self, src: (IpAddr, u16), dst: (IpAddr, u16), of: &BiflowRecord) -> FlowRecord {
        FlowRecord {
            src_ip: src.0,
            dst_ip: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            protocol: of.protocol,
            ip_version: of.ip_version,
            first_seen_ns: self.first_seen_ns,
            last_seen_ns: self.last_seen_ns,
            packets: self.packets,
            bytes: self.bytes,
            len_min: self.len_min,
            len_max: self.len_max,
            len_sq_sum: self.len_sq_sum,
            iat_min_ns: self.iat_min_ns,
            iat_max_ns: self.iat_max_ns,
            iat_sum_ns: self.iat_sum_ns,
            iat_sq_sum_us2: self.iat_sq_sum_us2,
            tcp_flags: self.tcp_flags,
            ttl_min: self.ttl_min,
            ttl_max: self.ttl_max,
            fragment_first: self.fragment_first,
            fragment_later: self.fragment_later,
            malformed: self.malformed,
            transport_truncated: self.transport_truncated,
            network_unwalked: self.network_unwalked,
            end_reason: of.end_reason,
        }
    }
}

impl From<&FlowRecord> for Side {
    fn from(r: &FlowRecord) -> Self {
        Self {
            first_seen_ns: r.first_seen_ns,
            last_seen_ns: r.last_seen_ns,
            packets: r.packets,
            bytes: r.bytes,
            len_min: r.len_min,
            len_max: r.len_max,
            len_sq_sum: r.len_sq_sum,
            iat_min_ns: r.iat_min_ns,
            iat_max_ns: r.iat_max_ns,
            iat_sum_ns: r.iat_sum_ns,
            iat_sq_sum_us2: r.iat_sq_sum_us2,
            tcp_flags: r.tcp_flags,
            ttl_min: r.ttl_min,
            ttl_max: r.ttl_max,
            fragment_first: r.fragment_first,
            fragment_later: r.fragment_later,
            malformed: r.malformed,
            transport_truncated: r.transport_truncated,
            network_unwalked: r.network_unwalked,
        }
    }
}

/// A conversation: the initiator's side and, if it answered, the responder's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BiflowRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    pub initiator_ip: IpAddr,
    pub responder_ip: IpAddr,
    /// Ports of the initiator's direction; for ICMP 0 and `type << 8 | code` of its first
    /// message kind, as in the directional records.
    pub initiator_port: u16,
    pub responder_port: u16,
    pub protocol: u8,
    pub ip_version: u8,
    /// First and last packet of either side.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub conn_state: ConnState,
    pub initiator: Side,
    /// `None`: nothing came back.
    pub responder: Option<Side>,
    pub end_reason: EndReason,
}

impl BiflowRecord {
    /// The conversation of one direction and, if there is one, the other (which must be its
    /// [`reverse`]). The side that initiated is found by [`initiator`]; the record ends for the
    /// reason of the side that was seen last.
    #[must_use]
    pub fn pair(a: &FlowRecord, b: Option<&FlowRecord>) -> Self {
        let (init, resp) = match b {
            Some(b) if !initiator(a, b) => (b, Some(a)),
            _ => (a, b),
        };
        let last = resp.map_or(init.last_seen_ns, |r| r.last_seen_ns.max(init.last_seen_ns));
        let end_reason = match resp {
            Some(r) if r.last_seen_ns > init.last_seen_ns => r.end_reason,
            _ => init.end_reason,
        };
        Self {
            version: RECORD_VERSION,
            initiator_ip: init.src_ip,
            responder_ip: init.dst_ip,
            initiator_port: init.src_port,
            responder_port: init.dst_port,
            protocol: init.protocol,
            ip_version: init.ip_version,
            first_seen_ns: resp.map_or(init.first_seen_ns, |r| r.first_seen_ns.min(init.first_seen_ns)),
            last_seen_ns: last,
            conn_state: ConnState::of(init.protocol, &init.tcp_flags, resp.map(|r| &r.tcp_flags)),
            initiator: Side::from(init),
            responder: resp.map(Side::from),
            end_reason,
        }
    }

    /// The directional records this conversation holds: the initiator's, then the
    /// responder's if it answered, each ending for the conversation's reason.
    #[must_use]
    pub fn conversation(&self) -> Conversation {
        let first = self.initiator.record(
            (self.initiator_ip, self.initiator_port),
            (self.responder_ip, self.responder_port),
            self,
        );
        let back = reverse(&first.key());
        let second = self
            .responder
            .as_ref()
            .map(|r| r.record((self.responder_ip, back.src_port), (self.initiator_ip, back.dst_port), self));
        Conversation { first, second }
    }

    /// Packets of both sides.
    #[must_use]
    pub fn packets(&self) -> u64 {
        self.initiator.packets + self.responder.as_ref().map_or(0, |r| r.packets)
    }
}

/// The directional records of one conversation, leaving the flow table together: one, or two
/// when the other direction was seen too. Built with [`Conversation::new`], `first` is the
/// initiator's direction and `second` the responder's.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub first: FlowRecord,
    pub second: Option<FlowRecord>,
}

impl Conversation {
    /// The conversation of a direction and, if seen, the other (its [`reverse`]), initiator
    /// first (see [`initiator`]). A lone direction is its own initiator.
    #[must_use]
    pub fn new(a: FlowRecord, b: Option<FlowRecord>) -> Self {
        match b {
            Some(b) if !initiator(&a, &b) => Self { first: b, second: Some(a) },
            b => Self { first: a, second: b },
        }
    }

    /// The versioned record of the conversation.
    #[must_use]
    pub fn record(&self) -> BiflowRecord {
        BiflowRecord::pair(&self.first, self.second.as_ref())
    }

    /// Its directional records.
    pub fn legs(self) -> impl Iterator<Item = FlowRecord> {
        std::iter::once(self.first).chain(self.second)
    }

    /// The earliest first packet of either direction.
    #[must_use]
    pub fn first_seen_ns(&self) -> u64 {
        self.second.as_ref().map_or(self.first.first_seen_ns, |s| s.first_seen_ns.min(self.first.first_seen_ns))
    }
}

/// Pairs directional records into conversations ordered by first packet: each record with an
/// unused record of its [`reverse`] key, every record in exactly one conversation.
///
/// In a flow table or one capture's end every key appears once, and a record pairs with its
/// reverse whatever their times. A file of exported records may hold a key many times (a long
/// conversation split at the active timeout, NTP from port 123 to 123 every few minutes): there
/// a record pairs with the unused reverse record whose first packet is nearest its own, among
/// the two next in time, and only if their spans lie within an idle timeout
/// ([`super::DEFAULT_IDLE_TIMEOUT`]) of each other.
#[must_use]
pub fn pair_all(records: Vec<FlowRecord>) -> Vec<Conversation> {
    let slack = crate::clock::duration_ns(super::DEFAULT_IDLE_TIMEOUT);
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by_key(|&i| (records[i].first_seen_ns, records[i].key()));
    // Per key, its records in time order and a cursor past the ones used.
    let mut by_key: HashMap<FlowKey, (Vec<usize>, usize)> = HashMap::new();
    for &i in &order {
        by_key.entry(records[i].key()).or_default().0.push(i);
    }
    let mut used = vec![false; records.len()];
    let mut pairs: Vec<(usize, Option<usize>)> = Vec::with_capacity(records.len());
    for &i in &order {
        if used[i] {
            continue;
        }
        used[i] = true;
        let key = records[i].key();
        let back = reverse(&key);
        let unique = by_key.get(&key).is_some_and(|(own, _)| own.len() == 1);
        let partner = match by_key.get_mut(&back) {
            Some((others, cursor)) if back != key => {
                while *cursor < others.len() && used[others[*cursor]] {
                    *cursor += 1;
                }
                let (a, b) = (&records[i], |j: usize| &records[j]);
                let near = |j: usize| {
                    b(j).first_seen_ns <= a.last_seen_ns.saturating_add(slack)
                        && a.first_seen_ns <= b(j).last_seen_ns.saturating_add(slack)
                };
                if unique && others.len() == 1 {
                    others.get(*cursor).copied()
                } else {
                    others[*cursor..]
                        .iter()
                        .copied()
                        .filter(|&j| !used[j])
                        .take(2)
                        .filter(|&j| near(j))
                        .min_by_key(|&j| b(j).first_seen_ns.abs_diff(a.first_seen_ns))
                }
            }
            _ => None,
        };
        if let Some(j) = partner {
            used[j] = true;
        }
        pairs.push((i, partner));
    }
    let mut slots: Vec<Option<FlowRecord>> = records.into_iter().map(Some).collect();
    let mut out: Vec<Conversation> = pairs
        .into_iter()
        .filter_map(|(i, j)| Some(Conversation::new(slots[i].take()?, j.and_then(|j| slots[j].take()))))
        .collect();
    out.sort_by_key(|c| (c.first_seen_ns(), c.first.key()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src: &str, sport: u16, dst: &str, dport: u16, protocol: u8, first: u64) -> FlowRecord {
        FlowRecord {
            src_ip: src.parse().unwrap(),
            dst_ip: dst.parse().unwrap(),
            src_port: sport,
            dst_port: dport,
            protocol,
            ip_version: 4,
            first_seen_ns: first,
            last_seen_ns: first + 10,
            packets: 1,
            bytes: 60,
            len_min: 60,
            len_max: 60,
            len_sq_sum: 3600,
            iat_min_ns: None,
            iat_max_ns: None,
            iat_sum_ns: 0,
            iat_sq_sum_us2: 0,
            tcp_flags: TcpFlagCounts::default(),
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

    fn flags(syn: u32, syn_ack: u32, fin: u32, rst: u32) -> TcpFlagCounts {
        TcpFlagCounts { syn, syn_ack, fin, rst, ..TcpFlagCounts::default() }
    }

    #[test]
    fn reverse_swaps_ends_and_pairs_icmp_requests_with_replies() {
        let tcp = record("10.0.0.1", 40_000, "10.0.0.2", 22, 6, 0).key();
        let back = reverse(&tcp);
        assert_eq!((back.src_addr, back.dst_addr), (tcp.dst_addr, tcp.src_addr));
        assert_eq!((back.src_port, back.dst_port), (22, 40_000));
        assert_eq!(reverse(&back), tcp, "an involution");
        assert_eq!(conversation(&tcp), conversation(&back), "one conversation key for both");
        let echo = record("10.0.0.1", 0, "10.0.0.2", 0x0800, 1, 0).key();
        assert_eq!((reverse(&echo).src_port, reverse(&echo).dst_port), (0, 0x0000), "echo request -> reply");
        assert_eq!(reverse(&reverse(&echo)), echo);
        let unreachable = record("10.0.0.9", 0, "10.0.0.1", 0x0303, 1, 0).key();
        assert_eq!(reverse(&unreachable).dst_port, 0x0303, "errors pair with nothing else");
        let mut v6 = record("fd00::1", 0, "fd00::2", 0x8000, 58, 0);
        v6.ip_version = 6;
        assert_eq!(reverse(&v6.key()).dst_port, 0x8100, "ICMPv6 echo request -> reply");
    }

    #[test]
    fn the_initiator_is_the_syn_side_else_the_first_seen() {
        let mut client = record("10.0.0.1", 40_000, "10.0.0.2", 22, 6, 100);
        let mut server = record("10.0.0.2", 22, "10.0.0.1", 40_000, 6, 50);
        client.tcp_flags = flags(1, 0, 0, 0);
        server.tcp_flags = flags(0, 1, 0, 0);
        assert!(initiator(&client, &server), "the SYN wins over an earlier first packet");
        assert!(!initiator(&server, &client));
        client.tcp_flags = flags(0, 0, 0, 0);
        assert!(initiator(&client, &server), "a SYN-ACK marks the responder when the SYN was missed");
        server.tcp_flags = flags(0, 0, 0, 0);
        assert!(!initiator(&client, &server), "else the side seen first");
        server.first_seen_ns = 100;
        assert!(initiator(&client, &server), "at the same instant, the higher (ephemeral) port");
        let request = record("10.0.0.1", 0, "10.0.0.2", 0x0800, 1, 7);
        let reply = record("10.0.0.2", 0, "10.0.0.1", 0, 1, 7);
        assert!(!initiator(&reply, &request) && initiator(&request, &reply), "an ICMP request before its reply");
    }

    #[test]
    fn conn_state_follows_zeeks_meaning() {
        let tcp = proto::IPPROTO_TCP;
        let cases = [
            (flags(1, 0, 0, 0), None, ConnState::S0),
            (flags(1, 0, 0, 0), Some(flags(0, 0, 0, 1)), ConnState::REJ),
            (flags(1, 0, 1, 0), None, ConnState::SH),
            (flags(1, 0, 0, 0), Some(flags(0, 1, 0, 0)), ConnState::S1),
            (flags(1, 0, 1, 0), Some(flags(0, 1, 1, 0)), ConnState::SF),
            (flags(1, 0, 1, 0), Some(flags(0, 1, 0, 0)), ConnState::S2),
            (flags(1, 0, 0, 0), Some(flags(0, 1, 1, 0)), ConnState::S3),
            (flags(1, 0, 0, 1), Some(flags(0, 1, 0, 0)), ConnState::RSTO),
            (flags(1, 0, 0, 0), Some(flags(0, 1, 0, 1)), ConnState::RSTR),
            (flags(0, 0, 0, 0), Some(flags(0, 0, 0, 0)), ConnState::OTH),
        ];
        for (init, resp, want) in cases {
            assert_eq!(ConnState::of(tcp, &init, resp.as_ref()), want, "{init:?} / {resp:?}");
        }
        let none = TcpFlagCounts::default();
        assert_eq!(ConnState::of(17, &none, Some(&none)), ConnState::SF, "UDP answered");
        assert_eq!(ConnState::of(17, &none, None), ConnState::S0, "UDP unanswered");
    }

    #[test]
    fn a_pair_puts_each_direction_on_its_side() {
        let mut upload = record("10.0.0.1", 40_000, "10.0.0.2", 443, 6, 100);
        upload.tcp_flags = flags(1, 0, 1, 0);
        (upload.packets, upload.bytes) = (140_000, 200_000_000);
        let mut acks = record("10.0.0.2", 443, "10.0.0.1", 40_000, 6, 101);
        acks.tcp_flags = flags(0, 1, 1, 0);
        (acks.packets, acks.bytes, acks.last_seen_ns, acks.end_reason) = (70_000, 4_620_000, 900, EndReason::Active);
        for b in [BiflowRecord::pair(&upload, Some(&acks)), BiflowRecord::pair(&acks, Some(&upload))] {
            assert_eq!((b.version, b.initiator_port, b.responder_port), (RECORD_VERSION, 40_000, 443));
            assert_eq!(b.initiator.bytes, 200_000_000, "the upload on the initiator's side");
            assert_eq!(b.responder.as_ref().map(|r| r.packets), Some(70_000));
            assert_eq!((b.first_seen_ns, b.last_seen_ns, b.packets()), (100, 900, 210_000));
            assert_eq!((b.conn_state, b.end_reason), (ConnState::SF, EndReason::Active));
        }
        let probe = BiflowRecord::pair(&upload, None);
        assert_eq!((probe.responder.is_none(), probe.packets()), (true, 140_000));
        let json = serde_json::to_value(&probe).unwrap();
        assert_eq!((json["version"].as_u64(), json["responder"].is_null()), (Some(2), true));
        let back: BiflowRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, probe);
        // Back to the directional records, each ending for the conversation's reason.
        let both = BiflowRecord::pair(&upload, Some(&acks));
        let legs = both.conversation();
        assert_eq!(legs.first, FlowRecord { end_reason: EndReason::Active, ..upload.clone() });
        assert_eq!(legs.second, Some(acks.clone()));
        assert_eq!(legs.record(), both, "a round trip");
    }

    #[test]
    fn pairing_a_set_puts_every_record_in_one_conversation() {
        let self_talk = record("10.0.0.7", 9, "10.0.0.7", 9, 17, 1);
        assert_eq!(pair_all(vec![self_talk.clone()]), [Conversation { first: self_talk, second: None }]);
        let records = vec![
            record("10.0.0.1", 40_000, "10.0.0.2", 22, 6, 10),
            record("10.0.0.3", 5_000, "10.0.0.2", 53, 17, 5),
            record("10.0.0.2", 22, "10.0.0.1", 40_000, 6, 11),
            record("10.0.0.1", 0, "10.0.0.2", 0x0800, 1, 20),
            record("10.0.0.2", 0, "10.0.0.1", 0, 1, 21),
            record("10.0.0.2", 0, "10.0.0.1", 0x0303, 1, 30),
        ];
        let pairs: Vec<BiflowRecord> = pair_all(records).iter().map(Conversation::record).collect();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs.iter().map(BiflowRecord::packets).sum::<u64>(), 6);
        let answered: Vec<bool> = pairs.iter().map(|b| b.responder.is_some()).collect();
        assert_eq!(answered, [false, true, true, false], "by first packet: DNS alone, SSH, ping, an error");
        assert_eq!((pairs[2].initiator_port, pairs[2].responder_port), (0, 0x0800), "the echo request initiates");
    }

    #[test]
    fn repeated_keys_pair_with_the_answer_nearest_in_time() {
        // NTP from port 123 to 123 three times a minute apart, as an exported file holds it (in
        // no order), and a stray answer 100 s before anything was asked.
        let s = 1_000_000_000;
        let ask = |t: u64| record("10.0.0.1", 123, "10.0.0.2", 123, 17, t * s);
        let answer = |t: u64| record("10.0.0.2", 123, "10.0.0.1", 123, 17, t * s + 5_000_000);
        let records = vec![answer(220), ask(160), answer(0), ask(100), answer(160), ask(220), answer(100)];
        let pairs = pair_all(records);
        let seen: Vec<(u64, Option<u64>)> =
            pairs.iter().map(|c| (c.first.first_seen_ns, c.second.as_ref().map(|r| r.first_seen_ns))).collect();
        assert_eq!(
            seen,
            [
                (5_000_000, None),
                (100 * s, Some(100 * s + 5_000_000)),
                (160 * s, Some(160 * s + 5_000_000)),
                (220 * s, Some(220 * s + 5_000_000))
            ],
            "each question with its own answer, the stray answer alone"
        );
    }
}
