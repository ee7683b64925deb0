//! `FlowRecord`: one exported flow, the unit everything downstream (features, scoring,
//! `--flows-out`) consumes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use agent_common::flow::{FlowKey, FlowStats, IP_V4, flags};
use serde::{Deserialize, Serialize};

use crate::clock::MonoToWall;

/// Why a record left the flow table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// No packet for the idle timeout; the flow was removed from the table.
    Idle,
    /// The flow lasted longer than the active timeout; this record closes that stretch and the
    /// next packet starts a new record (as NetFlow/IPFIX do).
    Active,
    /// The agent was stopping and flushed the table.
    Shutdown,
    /// The end of a capture file (pcap path).
    EndOfCapture,
    /// Not ended: a snapshot of a flow still in the table, taken for live scoring.
    Open,
}

/// Per-flag TCP packet counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpFlagCounts {
    /// SYN without ACK.
    pub syn: u32,
    pub syn_ack: u32,
    pub fin: u32,
    pub rst: u32,
    pub psh: u32,
    /// ACK set (SYN+ACK included).
    pub ack: u32,
    pub urg: u32,
    pub ece: u32,
    pub cwr: u32,
}

/// One flow record. Times are Unix-epoch nanoseconds; lengths are frame bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[expect(clippy::struct_excessive_bools, reason = "one JSON boolean per flag bit, as in docs/flow-records.md")]
pub struct FlowRecord {
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    pub ip_version: u8,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub packets: u64,
    pub bytes: u64,
    pub len_min: u32,
    pub len_max: u32,
    /// Sum of squared frame lengths (bytes²), for the length's standard deviation.
    pub len_sq_sum: u64,
    /// Smallest gap between packets; absent for a single-packet flow.
    pub iat_min_ns: Option<u64>,
    pub iat_max_ns: Option<u64>,
    pub iat_sum_ns: u64,
    /// Sum of squared gaps in µs² (saturating).
    pub iat_sq_sum_us2: u64,
    pub tcp_flags: TcpFlagCounts,
    /// IPv4 TTL or IPv6 hop limit range.
    pub ttl_min: u8,
    pub ttl_max: u8,
    /// A first fragment was seen.
    pub fragment_first: bool,
    /// Later fragments were counted on this flow's 3-tuple.
    pub fragment_later: bool,
    /// Packets whose headers were cut short or inconsistent (counted on the addresses and
    /// whatever ports could be read).
    #[serde(default)]
    pub malformed: u32,
    /// A transport header was incomplete (tiny first fragment, truncated frame): ports may be
    /// 0 and TCP flags of those packets are not counted.
    #[serde(default)]
    pub transport_truncated: bool,
    /// IPv4 options or IPv6 extension headers could not be walked: `protocol` is the last
    /// header type reached and there are no ports.
    #[serde(default)]
    pub network_unwalked: bool,
    pub end_reason: EndReason,
}

/// An address as flow keys hold it: 16 bytes, IPv4 IPv4-mapped ([`key_addr`] undoes it).
#[must_use]
pub fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => FlowKey::v4_mapped(a.octets()),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The address in a flow key as an [`IpAddr`].
#[must_use]
pub fn key_addr(addr: [u8; 16], ip_version: u8) -> IpAddr {
    if ip_version == IP_V4 {
        IpAddr::V4(Ipv4Addr::new(addr[12], addr[13], addr[14], addr[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(addr))
    }
}

impl FlowRecord {
    /// Builds a record from a key and its merged statistics; `clock` converts the stats'
    /// timestamps to Unix-epoch nanoseconds.
    #[must_use]
    pub fn new(key: &FlowKey, stats: &FlowStats, end_reason: EndReason, clock: MonoToWall) -> Self {
        let has_gaps = stats.packets > 1;
        Self {
            src_ip: key_addr(key.src_addr, key.ip_version),
            dst_ip: key_addr(key.dst_addr, key.ip_version),
            src_port: key.src_port,
            dst_port: key.dst_port,
            protocol: key.protocol,
            ip_version: key.ip_version,
            first_seen_ns: clock.wall_ns(stats.first_seen_ns),
            last_seen_ns: clock.wall_ns(stats.last_seen_ns),
            packets: stats.packets,
            bytes: stats.bytes,
            len_min: stats.len_min,
            len_max: stats.len_max,
            len_sq_sum: stats.len_sq_sum,
            iat_min_ns: has_gaps.then_some(stats.iat_min_ns),
            iat_max_ns: has_gaps.then_some(stats.iat_max_ns),
            iat_sum_ns: stats.iat_sum_ns,
            iat_sq_sum_us2: stats.iat_sq_sum_us2,
            tcp_flags: TcpFlagCounts {
                syn: stats.syn,
                syn_ack: stats.syn_ack,
                fin: stats.fin,
                rst: stats.rst,
                psh: stats.psh,
                ack: stats.ack,
                urg: stats.urg,
                ece: stats.ece,
                cwr: stats.cwr,
            },
            ttl_min: stats.ttl_min,
            ttl_max: stats.ttl_max,
            fragment_first: stats.flags & flags::FRAGMENT_FIRST != 0,
            fragment_later: stats.flags & flags::FRAGMENT_LATER != 0,
            malformed: stats.malformed,
            transport_truncated: stats.flags & flags::TRANSPORT_TRUNCATED != 0,
            network_unwalked: stats.flags & flags::NETWORK_UNWALKED != 0,
            end_reason,
        }
    }

    /// The flow key this record was built from.
    #[must_use]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            src_addr: addr_bytes(self.src_ip),
            dst_addr: addr_bytes(self.dst_ip),
            src_port: self.src_port,
            dst_port: self.dst_port,
            protocol: self.protocol,
            ip_version: self.ip_version,
            pad: [0; 2],
        }
    }

    /// Flow duration in nanoseconds.
    #[must_use]
    pub const fn duration_ns(&self) -> u64 {
        self.last_seen_ns.saturating_sub(self.first_seen_ns)
    }
}

/// Merges the per-CPU values of one flow. `None` if no CPU has a packet for it.
#[must_use]
pub fn merge_per_cpu(values: &[FlowStats]) -> Option<FlowStats> {
    let mut merged = FlowStats::default();
    for v in values {
        merged.merge(v);
    }
    (merged.packets > 0).then_some(merged)
}
