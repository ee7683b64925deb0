//! The flow batch on the bus, as `agent/proto/flows_v1.proto` defines it: prost messages
//! written by hand (no `protoc` at build time), and the conversions from and to
//! [`BiflowRecord`]. `the_rust_messages_match_the_proto_file` keeps the two in step.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::flows::biflow::{BiflowRecord, ConnState, Side as RecordSide};
use crate::flows::record::{EndReason, TcpFlagCounts};

/// [`FlowBatch::schema`] of this version.
pub const SCHEMA: u32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct FlowBatch {
    #[prost(uint32, tag = "1")]
    pub schema: u32,
    #[prost(string, tag = "2")]
    pub site: String,
    #[prost(string, tag = "3")]
    pub host: String,
    #[prost(uint64, tag = "4")]
    pub boot: u64,
    #[prost(uint64, tag = "5")]
    pub seq: u64,
    #[prost(message, repeated, tag = "6")]
    pub flows: Vec<Conversation>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Conversation {
    #[prost(uint32, tag = "1")]
    pub record_version: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub initiator_ip: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub responder_ip: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub initiator_port: u32,
    #[prost(uint32, tag = "5")]
    pub responder_port: u32,
    #[prost(uint32, tag = "6")]
    pub protocol: u32,
    #[prost(uint64, tag = "7")]
    pub first_seen_ns: u64,
    #[prost(uint64, tag = "8")]
    pub last_seen_ns: u64,
    #[prost(string, tag = "9")]
    pub conn_state: String,
    #[prost(message, optional, tag = "10")]
    pub initiator: Option<Side>,
    #[prost(message, optional, tag = "11")]
    pub responder: Option<Side>,
    #[prost(string, tag = "12")]
    pub end_reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
#[expect(clippy::struct_excessive_bools, reason = "one field per flag of the record, as in the .proto")]
pub struct Side {
    #[prost(uint64, tag = "1")]
    pub first_seen_ns: u64,
    #[prost(uint64, tag = "2")]
    pub last_seen_ns: u64,
    #[prost(uint64, tag = "3")]
    pub packets: u64,
    #[prost(uint64, tag = "4")]
    pub bytes: u64,
    #[prost(uint32, tag = "5")]
    pub len_min: u32,
    #[prost(uint32, tag = "6")]
    pub len_max: u32,
    #[prost(uint64, tag = "7")]
    pub len_sq_sum: u64,
    #[prost(uint64, optional, tag = "8")]
    pub iat_min_ns: Option<u64>,
    #[prost(uint64, optional, tag = "9")]
    pub iat_max_ns: Option<u64>,
    #[prost(uint64, tag = "10")]
    pub iat_sum_ns: u64,
    #[prost(uint64, tag = "11")]
    pub iat_sq_sum_us2: u64,
    #[prost(message, optional, tag = "12")]
    pub tcp_flags: Option<TcpFlags>,
    #[prost(uint32, tag = "13")]
    pub ttl_min: u32,
    #[prost(uint32, tag = "14")]
    pub ttl_max: u32,
    #[prost(bool, tag = "15")]
    pub fragment_first: bool,
    #[prost(bool, tag = "16")]
    pub fragment_later: bool,
    #[prost(uint32, tag = "17")]
    pub malformed: u32,
    #[prost(bool, tag = "18")]
    pub transport_truncated: bool,
    #[prost(bool, tag = "19")]
    pub network_unwalked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct TcpFlags {
    #[prost(uint32, tag = "1")]
    pub syn: u32,
    #[prost(uint32, tag = "2")]
    pub syn_ack: u32,
    #[prost(uint32, tag = "3")]
    pub fin: u32,
    #[prost(uint32, tag = "4")]
    pub rst: u32,
    #[prost(uint32, tag = "5")]
    pub psh: u32,
    #[prost(uint32, tag = "6")]
    pub ack: u32,
    #[prost(uint32, tag = "7")]
    pub urg: u32,
    #[prost(uint32, tag = "8")]
    pub ece: u32,
    #[prost(uint32, tag = "9")]
    pub cwr: u32,
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

pub(crate) fn ip_from(bytes: &[u8]) -> Result<IpAddr, String> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(format!("an address of {} bytes", bytes.len()))
    }
}

fn parse_name<T: serde::de::DeserializeOwned>(what: &str, name: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| format!("unknown {what} {name:?}"))
}

impl From<&TcpFlagCounts> for TcpFlags {
    fn from(f: &TcpFlagCounts) -> Self {
        TcpFlags {
            syn: f.syn,
            syn_ack: f.syn_ack,
            fin: f.fin,
            rst: f.rst,
            psh: f.psh,
            ack: f.ack,
            urg: f.urg,
            ece: f.ece,
            cwr: f.cwr,
        }
    }
}

impl From<TcpFlags> for TcpFlagCounts {
    fn from(f: TcpFlags) -> Self {
        TcpFlagCounts {
            syn: f.syn,
            syn_ack: f.syn_ack,
            fin: f.fin,
            rst: f.rst,
            psh: f.psh,
            ack: f.ack,
            urg: f.urg,
            ece: f.ece,
            cwr: f.cwr,
        }
    }
}

impl From<&RecordSide> for Side {
    fn from(s: &RecordSide) -> Self {
        Side {
            first_seen_ns: s.first_seen_ns,
            last_seen_ns: s.last_seen_ns,
            packets: s.packets,
            bytes: s.bytes,
            len_min: s.len_min,
            len_max: s.len_max,
            len_sq_sum: s.len_sq_sum,
            iat_min_ns: s.iat_min_ns,
            iat_max_ns: s.iat_max_ns,
            iat_sum_ns: s.iat_sum_ns,
            iat_sq_sum_us2: s.iat_sq_sum_us2,
            tcp_flags: Some(TcpFlags::from(&s.tcp_flags)),
            ttl_min: u32::from(s.ttl_min),
            ttl_max: u32::from(s.ttl_max),
            fragment_first: s.fragment_first,
            fragment_later: s.fragment_later,
            malformed: s.malformed,
            transport_truncated: s.transport_truncated,
            network_unwalked: s.network_unwalked,
        }
    }
}

impl TryFrom<Side> for RecordSide {
    type Error = String;

    fn try_from(s: Side) -> Result<Self, String> {
        let ttl = |v: u32| u8::try_from(v).map_err(|_| format!("a TTL of {v}"));
        Ok(RecordSide {
            first_seen_ns: s.first_seen_ns,
            last_seen_ns: s.last_seen_ns,
            packets: s.packets,
            bytes: s.bytes,
            len_min: s.len_min,
            len_max: s.len_max,
            len_sq_sum: s.len_sq_sum,
            iat_min_ns: s.iat_min_ns,
            iat_max_ns: s.iat_max_ns,
            iat_sum_ns: s.iat_sum_ns,
            iat_sq_sum_us2: s.iat_sq_sum_us2,
            tcp_flags: s.tcp_flags.map(TcpFlagCounts::from).unwrap_or_default(),
            ttl_min: ttl(s.ttl_min)?,
            ttl_max: ttl(s.ttl_max)?,
            fragment_first: s.fragment_first,
            fragment_later: s.fragment_later,
            malformed: s.malformed,
            transport_truncated: s.transport_truncated,
            network_unwalked: s.network_unwalked,
        })
    }
}

impl From<&BiflowRecord> for Conversation {
    fn from(r: &BiflowRecord) -> Self {
        Conversation {
            record_version: r.version,
            initiator_ip: ip_bytes(r.initiator_ip),
            responder_ip: ip_bytes(r.responder_ip),
            initiator_port: u32::from(r.initiator_port),
            responder_port: u32::from(r.responder_port),
            protocol: u32::from(r.protocol),
            first_seen_ns: r.first_seen_ns,
            last_seen_ns: r.last_seen_ns,
            conn_state: conn_state_name(r.conn_state).to_owned(),
            initiator: Some(Side::from(&r.initiator)),
            responder: r.responder.as_ref().map(Side::from),
            end_reason: end_reason_name(r.end_reason).to_owned(),
        }
    }
}

impl TryFrom<Conversation> for BiflowRecord {
    type Error = String;

    /// Checks what the wire cannot: address lengths, port and protocol ranges, known names.
    fn try_from(c: Conversation) -> Result<Self, String> {
        let initiator_ip = ip_from(&c.initiator_ip)?;
        let responder_ip = ip_from(&c.responder_ip)?;
        if initiator_ip.is_ipv4() != responder_ip.is_ipv4() {
            return Err("an IPv4 and an IPv6 end".into());
        }
        let port = |v: u32| u16::try_from(v).map_err(|_| format!("a port of {v}"));
        Ok(BiflowRecord {
            version: c.record_version,
            initiator_ip,
            responder_ip,
            initiator_port: port(c.initiator_port)?,
            responder_port: port(c.responder_port)?,
            protocol: u8::try_from(c.protocol).map_err(|_| format!("protocol {}", c.protocol))?,
            ip_version: if initiator_ip.is_ipv4() { 4 } else { 6 },
            first_seen_ns: c.first_seen_ns,
            last_seen_ns: c.last_seen_ns,
            conn_state: parse_name::<ConnState>("conn_state", &c.conn_state)?,
            initiator: c.initiator.ok_or("no initiator side")?.try_into()?,
            responder: c.responder.map(RecordSide::try_from).transpose()?,
            end_reason: parse_name::<EndReason>("end_reason", &c.end_reason)?,
        })
    }
}

/// Writes a whole [`FlowBatch`] straight from the records, with the bytes prost's
/// `encode_to_vec` would give (`the_direct_encoder_writes_what_prost_writes`), but without the
/// intermediate messages: no address vectors, no name strings, each nested length computed once.
/// The export's thread spends most of its time here (BENCHMARKS.md, "Fleet export").
pub fn encode_batch(site: &str, host: &str, boot: u64, seq: u64, records: &[BiflowRecord], out: &mut Vec<u8>) {
    let mut w = Wire(out);
    w.uint(1, u64::from(SCHEMA));
    w.string(2, site);
    w.string(3, host);
    w.uint(4, boot);
    w.uint(5, seq);
    let mut one = Vec::with_capacity(256);
    let mut scratch = Vec::with_capacity(128);
    for r in records {
        one.clear();
        write_conversation(&mut one, &mut scratch, r);
        w.nested(6, &one);
    }
}

/// The protobuf wire format, field by field, skipping proto3 defaults as prost does.
struct Wire<'a>(&'a mut Vec<u8>);

impl Wire<'_> {
    fn key(&mut self, tag: u32, wire_type: prost::encoding::WireType) {
        prost::encoding::encode_key(tag, wire_type, self.0);
    }

    fn uint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.key(tag, prost::encoding::WireType::Varint);
            prost::encoding::encode_varint(v, self.0);
        }
    }

    fn optional(&mut self, tag: u32, v: Option<u64>) {
        if let Some(v) = v {
            self.key(tag, prost::encoding::WireType::Varint);
            prost::encoding::encode_varint(v, self.0);
        }
    }

    fn bool(&mut self, tag: u32, v: bool) {
        self.uint(tag, u64::from(v));
    }

    fn bytes(&mut self, tag: u32, v: &[u8]) {
        if !v.is_empty() {
            self.nested(tag, v);
        }
    }

    fn string(&mut self, tag: u32, v: &str) {
        self.bytes(tag, v.as_bytes());
    }

    /// A length-delimited field written whatever its length (an empty message still says it is
    /// there, as an `Option<message>` that is `Some` does).
    fn nested(&mut self, tag: u32, v: &[u8]) {
        self.key(tag, prost::encoding::WireType::LengthDelimited);
        prost::encoding::encode_varint(v.len() as u64, self.0);
        self.0.extend_from_slice(v);
    }
}

fn write_conversation(out: &mut Vec<u8>, side: &mut Vec<u8>, r: &BiflowRecord) {
    let mut w = Wire(out);
    w.uint(1, u64::from(r.version));
    match r.initiator_ip {
        IpAddr::V4(v4) => w.bytes(2, &v4.octets()),
        IpAddr::V6(v6) => w.bytes(2, &v6.octets()),
    }
    match r.responder_ip {
        IpAddr::V4(v4) => w.bytes(3, &v4.octets()),
        IpAddr::V6(v6) => w.bytes(3, &v6.octets()),
    }
    w.uint(4, u64::from(r.initiator_port));
    w.uint(5, u64::from(r.responder_port));
    w.uint(6, u64::from(r.protocol));
    w.uint(7, r.first_seen_ns);
    w.uint(8, r.last_seen_ns);
    w.string(9, conn_state_name(r.conn_state));
    side.clear();
    write_side(side, &r.initiator);
    w.nested(10, side);
    if let Some(responder) = &r.responder {
        side.clear();
        write_side(side, responder);
        w.nested(11, side);
    }
    w.string(12, end_reason_name(r.end_reason));
}

fn write_side(out: &mut Vec<u8>, s: &RecordSide) {
    let mut flags = [0u8; 9 * 6];
    let flags_len = {
        let mut buf = &mut flags[..];
        let before = buf.len();
        let f = &s.tcp_flags;
        for (tag, v) in (1..).zip([f.syn, f.syn_ack, f.fin, f.rst, f.psh, f.ack, f.urg, f.ece, f.cwr]) {
            if v != 0 {
                prost::encoding::encode_key(tag, prost::encoding::WireType::Varint, &mut buf);
                prost::encoding::encode_varint(u64::from(v), &mut buf);
            }
        }
        before - buf.len()
    };
    let mut w = Wire(out);
    w.uint(1, s.first_seen_ns);
    w.uint(2, s.last_seen_ns);
    w.uint(3, s.packets);
    w.uint(4, s.bytes);
    w.uint(5, u64::from(s.len_min));
    w.uint(6, u64::from(s.len_max));
    w.uint(7, s.len_sq_sum);
    w.optional(8, s.iat_min_ns);
    w.optional(9, s.iat_max_ns);
    w.uint(10, s.iat_sum_ns);
    w.uint(11, s.iat_sq_sum_us2);
    w.nested(12, &flags[..flags_len]);
    w.uint(13, u64::from(s.ttl_min));
    w.uint(14, u64::from(s.ttl_max));
    w.bool(15, s.fragment_first);
    w.bool(16, s.fragment_later);
    w.uint(17, u64::from(s.malformed));
    w.bool(18, s.transport_truncated);
    w.bool(19, s.network_unwalked);
}

/// The proto's (and the JSON record's) name of a state: `conn_state_names_are_the_json_names`
/// holds them to serde's.
pub(crate) const fn conn_state_name(s: ConnState) -> &'static str {
    match s {
        ConnState::S0 => "S0",
        ConnState::S1 => "S1",
        ConnState::SF => "SF",
        ConnState::REJ => "REJ",
        ConnState::S2 => "S2",
        ConnState::S3 => "S3",
        ConnState::RSTO => "RSTO",
        ConnState::RSTR => "RSTR",
        ConnState::SH => "SH",
        ConnState::OTH => "OTH",
    }
}

pub(crate) const fn end_reason_name(e: EndReason) -> &'static str {
    match e {
        EndReason::Idle => "idle",
        EndReason::Active => "active",
        EndReason::Shutdown => "shutdown",
        EndReason::EndOfCapture => "end_of_capture",
        EndReason::Open => "open",
    }
}
