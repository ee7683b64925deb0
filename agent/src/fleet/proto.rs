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

/// The JSON name of a unit variant (`"SF"`, `"idle"`): the proto carries the same strings.
fn name_of<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
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
            conn_state: name_of(&r.conn_state),
            initiator: Some(Side::from(&r.initiator)),
            responder: r.responder.as_ref().map(Side::from),
            end_reason: name_of(&r.end_reason),
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
