//! Sensor-wide counters, kept in a per-CPU array with one entry per hook ([`Direction`]).
//!
//! One struct rather than one array slot per counter: a packet then costs a single (inlined)
//! per-CPU array lookup however many counters it touches.

/// Which hook saw a packet: the index of its [`Counters`] entry in the counters map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Arriving at the interface: the XDP program.
    Ingress = 0,
    /// Leaving the interface: the TC egress program.
    Egress = 1,
}

impl Direction {
    /// Number of directions: the counters map's entries.
    pub const ENTRIES: u32 = 2;
    /// [`Self::ENTRIES`] as an index bound.
    pub const COUNT: usize = Self::ENTRIES as usize;
    /// Every direction, in index order.
    pub const ALL: [Self; Self::COUNT] = [Self::Ingress, Self::Egress];

    /// Stable lowercase name for logs, JSON and metrics labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

/// Why a packet was counted as malformed. The packet is always passed on.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Malformed {
    /// Shorter than an Ethernet header.
    EthTruncated = 0,
    /// A VLAN tag announced but not present in full.
    VlanTruncated = 1,
    /// More than two stacked VLAN tags.
    VlanTooMany = 2,
    /// Shorter than the fixed IPv4 header.
    Ipv4Truncated = 3,
    /// `EtherType` says IPv4 but the version nibble is not 4.
    Ipv4BadVersion = 4,
    /// IHL below 5, or header longer than the packet / the total length.
    Ipv4BadHeaderLen = 5,
    /// Shorter than the fixed IPv6 header.
    Ipv6Truncated = 6,
    /// `EtherType` says IPv6 but the version nibble is not 6.
    Ipv6BadVersion = 7,
    /// An IPv6 extension header runs past the end of the packet.
    Ipv6ExtTruncated = 8,
    /// More IPv6 extension headers than the sensor walks.
    Ipv6ExtTooMany = 9,
    /// Shorter than a TCP header, or the data offset points past the packet.
    TcpTruncated = 10,
    /// TCP data offset below 5.
    TcpBadOffset = 11,
    /// Shorter than a UDP header.
    UdpTruncated = 12,
    /// Shorter than an ICMP or `ICMPv6` header.
    IcmpTruncated = 13,
}

impl Malformed {
    /// Number of reasons; the size of [`Counters::malformed`].
    pub const COUNT: usize = 14;
    /// Every reason, in index order.
    pub const ALL: [Self; Self::COUNT] = [
        Self::EthTruncated,
        Self::VlanTruncated,
        Self::VlanTooMany,
        Self::Ipv4Truncated,
        Self::Ipv4BadVersion,
        Self::Ipv4BadHeaderLen,
        Self::Ipv6Truncated,
        Self::Ipv6BadVersion,
        Self::Ipv6ExtTruncated,
        Self::Ipv6ExtTooMany,
        Self::TcpTruncated,
        Self::TcpBadOffset,
        Self::UdpTruncated,
        Self::IcmpTruncated,
    ];

    /// Stable `snake_case` name for logs, JSON and metrics labels.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::EthTruncated => "eth_truncated",
            Self::VlanTruncated => "vlan_truncated",
            Self::VlanTooMany => "vlan_too_many",
            Self::Ipv4Truncated => "ipv4_truncated",
            Self::Ipv4BadVersion => "ipv4_bad_version",
            Self::Ipv4BadHeaderLen => "ipv4_bad_header_len",
            Self::Ipv6Truncated => "ipv6_truncated",
            Self::Ipv6BadVersion => "ipv6_bad_version",
            Self::Ipv6ExtTruncated => "ipv6_ext_truncated",
            Self::Ipv6ExtTooMany => "ipv6_ext_too_many",
            Self::TcpTruncated => "tcp_truncated",
            Self::TcpBadOffset => "tcp_bad_offset",
            Self::UdpTruncated => "udp_truncated",
            Self::IcmpTruncated => "icmp_truncated",
        }
    }
}

/// Transport protocol classes counted separately.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProtoClass {
    Tcp = 0,
    Udp = 1,
    Icmp = 2,
    Icmpv6 = 3,
    /// Any other IP protocol number (GRE, ESP, SCTP, ...), and later fragments.
    Other = 4,
}

impl ProtoClass {
    /// Number of classes; the size of the per-protocol arrays in [`Counters`].
    pub const COUNT: usize = 5;
    /// Every class, in index order.
    pub const ALL: [Self; Self::COUNT] = [Self::Tcp, Self::Udp, Self::Icmp, Self::Icmpv6, Self::Other];

    /// Class of an IP protocol number.
    #[inline(always)]
    #[must_use]
    pub const fn of(protocol: u8) -> Self {
        match protocol {
            crate::proto::IPPROTO_TCP => Self::Tcp,
            crate::proto::IPPROTO_UDP => Self::Udp,
            crate::proto::IPPROTO_ICMP => Self::Icmp,
            crate::proto::IPPROTO_ICMPV6 => Self::Icmpv6,
            _ => Self::Other,
        }
    }

    /// Stable lowercase name for logs and metrics labels. These name counter classes, not
    /// protocols: `icmpv6` is the class, [`crate::proto::name`] the IANA keyword (`ipv6-icmp`).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
            Self::Icmpv6 => "icmpv6",
            Self::Other => "other",
        }
    }
}

/// All sensor counters of one CPU. Userspace sums them over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Every packet the program saw, whatever became of it.
    pub packets: u64,
    /// Bytes of those packets (frame length).
    pub bytes: u64,
    pub ipv4_packets: u64,
    pub ipv6_packets: u64,
    /// Packets whose `EtherType` is neither IPv4 nor IPv6 (ARP, LLDP, ...).
    pub non_ip_packets: u64,
    /// Packets per [`ProtoClass`], of well-formed IP packets that reached the flow table.
    pub proto_packets: [u64; ProtoClass::COUNT],
    /// Bytes per [`ProtoClass`].
    pub proto_bytes: [u64; ProtoClass::COUNT],
    /// Malformed packets per [`Malformed`] reason.
    pub malformed: [u64; Malformed::COUNT],
    /// IP fragments (first and later).
    pub fragments: u64,
    /// Flows created in the flow table.
    pub flows_created: u64,
    /// Flow inserts the kernel refused (table full without eviction, or memory pressure).
    pub flow_insert_failed: u64,
    /// Packets dropped by the blocklist.
    pub blocklist_drops: u64,
    /// Expired blocklist rules removed by the kernel on a matching packet.
    pub blocklist_expired: u64,
}
crate::assert_size!(Counters, 8 * (5 + 2 * ProtoClass::COUNT + Malformed::COUNT + 5));

impl Counters {
    /// Counts a malformed packet.
    #[inline(always)]
    pub fn count_malformed(&mut self, reason: Malformed) {
        if let Some(slot) = self.malformed.get_mut(reason as usize) {
            *slot += 1;
        }
    }

    /// Counts a well-formed IP packet of `len` bytes under its protocol class.
    #[inline(always)]
    pub fn count_proto(&mut self, class: ProtoClass, len: u64) {
        if let Some(slot) = self.proto_packets.get_mut(class as usize) {
            *slot += 1;
        }
        if let Some(slot) = self.proto_bytes.get_mut(class as usize) {
            *slot += len;
        }
    }

    /// Counts the wire segments a GSO super-packet becomes beyond the one [`crate::pipeline::ingest`]
    /// counted: their packets and their repeated headers' bytes, in total and under `class`.
    #[inline(always)]
    pub fn count_segments(&mut self, ip_version: u8, class: ProtoClass, segments: &crate::flow::Segments) {
        let extra = u64::from(segments.extra);
        let bytes = segments.extra_header_bytes();
        self.packets += extra;
        self.bytes += bytes;
        if ip_version == crate::flow::IP_V4 {
            self.ipv4_packets += extra;
        } else {
            self.ipv6_packets += extra;
        }
        if let Some(slot) = self.proto_packets.get_mut(class as usize) {
            *slot += extra;
        }
        if let Some(slot) = self.proto_bytes.get_mut(class as usize) {
            *slot += bytes;
        }
    }

    /// Adds another CPU's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.ipv4_packets += other.ipv4_packets;
        self.ipv6_packets += other.ipv6_packets;
        self.non_ip_packets += other.non_ip_packets;
        for (a, b) in self.proto_packets.iter_mut().zip(other.proto_packets) {
            *a += b;
        }
        for (a, b) in self.proto_bytes.iter_mut().zip(other.proto_bytes) {
            *a += b;
        }
        for (a, b) in self.malformed.iter_mut().zip(other.malformed) {
            *a += b;
        }
        self.fragments += other.fragments;
        self.flows_created += other.flows_created;
        self.flow_insert_failed += other.flow_insert_failed;
        self.blocklist_drops += other.blocklist_drops;
        self.blocklist_expired += other.blocklist_expired;
    }

    /// Total malformed packets over all reasons.
    #[must_use]
    pub fn malformed_total(&self) -> u64 {
        self.malformed.iter().sum()
    }
}
