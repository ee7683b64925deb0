//! The flow table's key and value, and the per-packet update both the kernel and the pcap
//! path apply.

/// IP version values used in [`FlowKey::ip_version`].
pub const IP_V4: u8 = 4;
/// IP version values used in [`FlowKey::ip_version`].
pub const IP_V6: u8 = 6;

/// A flow: the classic 5-tuple plus the IP version.
///
/// Addresses are 128-bit. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so one
/// key type serves both families. Ports are in host byte order. For ICMP and `ICMPv6` the source
/// port is 0 and the destination port is `type << 8 | code`, as `NetFlow` does. Later IP
/// fragments carry no ports and are keyed on the 3-tuple (ports 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (IPv6: the upper-layer protocol after extension headers).
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// Always zero; makes the padding explicit so hashing the key bytes is deterministic.
    pub pad: [u8; 2],
}
crate::assert_size!(FlowKey, 40);

impl FlowKey {
    /// The flow-table shard this key lives in (`0..FLOW_SHARDS`): the top bits of a
    /// Fibonacci hash of the addresses' low words and the ports, so floods from one source,
    /// scans of one target and sequential addresses all spread evenly (one multiply per packet).
    #[inline(always)]
    #[must_use]
    pub const fn shard(&self) -> usize {
        let s = &self.src_addr;
        let d = &self.dst_addr;
        let src = u32::from_be_bytes([s[12], s[13], s[14], s[15]]);
        let dst = u32::from_be_bytes([d[12], d[13], d[14], d[15]]);
        let ports = ((self.src_port as u32) << 16) | self.dst_port as u32;
        let h = (src ^ dst.rotate_left(11) ^ ports.rotate_left(23)).wrapping_mul(0x9e37_79b1);
        (h >> 24) as usize % crate::maps::FLOW_SHARDS
    }

    /// Writes an IPv4 address in IPv4-mapped form.
    #[inline(always)]
    #[must_use]
    pub const fn v4_mapped(addr: [u8; 4]) -> [u8; 16] {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
    }
}

/// Bits of [`FlowStats::flags`].
pub mod flags {
    /// A first fragment (offset 0, more-fragments set) was seen on this flow.
    pub const FRAGMENT_FIRST: u8 = 1;
    /// A later fragment (offset > 0) was counted on this flow's 3-tuple.
    pub const FRAGMENT_LATER: u8 = 2;
    /// A transport header was cut short or inconsistent (a tiny first fragment as `nmap -f`
    /// sends, a truncated frame, a bad TCP data offset): the ports are those that could be read
    /// (0 when not even they were there) and the packet's TCP flags are not counted.
    pub const TRANSPORT_TRUNCATED: u8 = 4;
    /// The headers between the addresses and the transport header (IPv4 options, IPv6
    /// extension headers) could not be walked: too many, too long or truncated. The packet is
    /// counted on its addresses with the last header type reached as the protocol, no ports.
    pub const NETWORK_UNWALKED: u8 = 8;
    /// Bits that make a packet count in [`super::FlowStats::malformed`].
    pub const MALFORMED: u8 = TRANSPORT_TRUNCATED | NETWORK_UNWALKED;
}

/// What the parser extracts from one packet for the flow update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketMeta {
    pub key: FlowKey,
    /// Frame length in bytes, as on the wire (Ethernet header included, FCS excluded).
    pub len: u32,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// [`flags`] bits this packet contributes.
    pub flags: u8,
    /// The further wire segments of a GSO super-packet (none for every packet but a TCP or UDP
    /// send seen on egress before segmentation): `len` is then the first segment's length.
    pub segments: Segments,
}

/// Largest `gso_size` and `gso_segs` taken at face value (the kernel's own limits are 64 kB).
pub const MAX_GSO: u32 = 65_535;

/// How a GSO super-packet splits into what goes on the wire.
///
/// On egress the kernel hands a TCP (TSO) or UDP (USO) send of up to 64 kB to the device as one
/// buffer, which the device or the stack cuts into segments: all but the last carry
/// `header_len + gso_size` bytes, each with its own copy of the headers. The sensor counts
/// those segments, not the buffer, so a host's uploads look on its egress as they do on the
/// wire and in a capture.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    /// Segments after the first (0: an ordinary packet).
    pub extra: u32,
    /// Link, network and transport headers, repeated on every segment.
    pub header_len: u32,
    /// Wire length of every segment but the last.
    pub full_len: u32,
    /// Wire length of the last segment.
    pub last_len: u32,
}

impl Segments {
    /// The segments of a `len`-byte buffer (headers included) cut into `gso_segs` segments of
    /// `gso_size` payload bytes after `header_len` bytes of headers. `None` when it is not cut
    /// (fewer than two segments) or the numbers do not add up, in which case the buffer is
    /// counted as the one packet it is.
    #[inline(always)]
    #[must_use]
    pub const fn of(len: u32, gso_segs: u32, gso_size: u32, header_len: u32) -> Option<Self> {
        if gso_segs < 2 || gso_segs > MAX_GSO || gso_size == 0 || gso_size > MAX_GSO || header_len >= len {
            return None;
        }
        let payload = len - header_len;
        // Both factors are at most 65,535: the product fits in 32 bits.
        let before_last = (gso_segs - 1) * gso_size;
        if before_last >= payload || payload - before_last > gso_size {
            return None;
        }
        Some(Self {
            extra: gso_segs - 1,
            header_len,
            full_len: header_len + gso_size,
            last_len: header_len + (payload - before_last),
        })
    }

    /// Bytes the extra segments add to the buffer's length: their copies of the headers.
    #[inline(always)]
    #[must_use]
    pub const fn extra_header_bytes(&self) -> u64 {
        self.extra as u64 * self.header_len as u64
    }
}

/// TCP flag bits as in the TCP header's flags byte.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Statistics of one flow on one CPU. Userspace merges the per-CPU values with
/// [`FlowStats::merge`].
///
/// Times are `CLOCK_MONOTONIC` nanoseconds in the kernel, capture timestamps in the pcap
/// path. Inter-arrival times are measured between consecutive packets of the flow on the same
/// CPU; the squared sum is kept in microseconds² so it does not overflow for realistic gaps
/// (it saturates rather than wraps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Sum of packet lengths' squares (bytes²).
    pub len_sq_sum: u64,
    /// Inter-arrival time statistics, over `packets - 1` gaps.
    pub iat_min_ns: u64,
    pub iat_max_ns: u64,
    pub iat_sum_ns: u64,
    /// Sum of squared inter-arrival times in µs² (saturating).
    pub iat_sq_sum_us2: u64,
    pub len_min: u32,
    pub len_max: u32,
    /// Packets with SYN set and ACK clear.
    pub syn: u32,
    /// Packets with both SYN and ACK set.
    pub syn_ack: u32,
    pub fin: u32,
    pub rst: u32,
    pub psh: u32,
    /// Packets with ACK set (SYN+ACK included).
    pub ack: u32,
    pub urg: u32,
    pub ece: u32,
    pub cwr: u32,
    /// Packets whose headers were cut short or inconsistent ([`flags::MALFORMED`] bits): the
    /// sensor still counts them on the addresses, so evasion by malformation stays visible
    /// per source.
    pub malformed: u32,
    pub ttl_min: u8,
    pub ttl_max: u8,
    /// [`flags`] bits seen on this flow.
    pub flags: u8,
    /// Always zero.
    pub pad: [u8; 5],
}
crate::assert_size!(FlowStats, 128);

impl FlowStats {
    /// The statistics of a flow whose first packet is `meta`, seen at `now_ns`.
    #[inline(always)]
    #[must_use]
    pub fn first(meta: &PacketMeta, now_ns: u64) -> Self {
        let len = u64::from(meta.len);
        let mut stats = Self {
            packets: 1,
            bytes: len,
            first_seen_ns: now_ns,
            last_seen_ns: now_ns,
            len_sq_sum: len * len,
            iat_min_ns: u64::MAX,
            len_min: meta.len,
            len_max: meta.len,
            ttl_min: meta.ttl,
            ttl_max: meta.ttl,
            flags: meta.flags,
            malformed: u32::from(meta.flags & flags::MALFORMED != 0),
            ..Self::default()
        };
        stats.count_tcp_flags(meta.tcp_flags);
        stats.add_segments(meta);
        stats
    }

    /// Adds one more packet of the flow, seen at `now_ns`.
    ///
    /// A zeroed value (`packets == 0`) is what a per-CPU map holds on a CPU that has not seen
    /// the flow yet; it is initialised as a first packet.
    #[inline(always)]
    pub fn update(&mut self, meta: &PacketMeta, now_ns: u64) {
        if self.packets == 0 {
            *self = Self::first(meta, now_ns);
            return;
        }
        let len = u64::from(meta.len);
        let iat = now_ns.saturating_sub(self.last_seen_ns);
        let iat_us = iat / 1000;
        self.packets += 1;
        // A capture's length field is up to u32::MAX: sums of lengths and of their squares
        // saturate rather than wrap (each square alone fits in 64 bits).
        self.bytes = self.bytes.saturating_add(len);
        self.last_seen_ns = now_ns;
        self.len_sq_sum = self.len_sq_sum.saturating_add(len * len);
        if iat < self.iat_min_ns {
            self.iat_min_ns = iat;
        }
        if iat > self.iat_max_ns {
            self.iat_max_ns = iat;
        }
        self.iat_sum_ns = self.iat_sum_ns.saturating_add(iat);
        // Squares below 2^64 only; `saturating_mul` would need a 128-bit multiply the BPF
        // backend does not have.
        let iat_sq = if iat_us >> 32 == 0 { iat_us * iat_us } else { u64::MAX };
        self.iat_sq_sum_us2 = self.iat_sq_sum_us2.saturating_add(iat_sq);
        if meta.len < self.len_min {
            self.len_min = meta.len;
        }
        if meta.len > self.len_max {
            self.len_max = meta.len;
        }
        if meta.ttl < self.ttl_min {
            self.ttl_min = meta.ttl;
        }
        if meta.ttl > self.ttl_max {
            self.ttl_max = meta.ttl;
        }
        self.flags |= meta.flags;
        self.malformed = self.malformed.saturating_add(u32::from(meta.flags & flags::MALFORMED != 0));
        self.count_tcp_flags(meta.tcp_flags);
        self.add_segments(meta);
    }

    /// Adds the segments of a GSO super-packet after its first (already counted with `meta.len`
    /// the full segment length), all at the same instant: as if `extra - 1` more full segments
    /// and the last one had arrived back to back (gaps of zero). The first segment carries the
    /// packet's TCP flags; the others count only its ACK, as the stack and TSO engines copy
    /// it onto every segment.
    #[inline(always)]
    fn add_segments(&mut self, meta: &PacketMeta) {
        let s = &meta.segments;
        if s.extra == 0 {
            return;
        }
        let extra = u64::from(s.extra);
        let full = u64::from(s.full_len);
        let last = u64::from(s.last_len);
        self.packets += extra;
        // `full` and `last` are below 2^18 and `extra` below 2^16: no product overflows.
        self.bytes = self.bytes.saturating_add((extra - 1) * full + last);
        self.len_sq_sum = self.len_sq_sum.saturating_add((extra - 1) * full * full + last * last);
        self.iat_min_ns = 0;
        if s.last_len < self.len_min {
            self.len_min = s.last_len;
        }
        if s.full_len > self.len_max {
            self.len_max = s.full_len;
        }
        if meta.tcp_flags & tcp::ACK != 0 {
            self.ack = self.ack.saturating_add(s.extra);
        }
    }

    #[inline(always)]
    fn count_tcp_flags(&mut self, f: u8) {
        if f == 0 {
            return;
        }
        let syn = f & tcp::SYN != 0;
        let ack = f & tcp::ACK != 0;
        self.syn += u32::from(syn && !ack);
        self.syn_ack += u32::from(syn && ack);
        self.fin += u32::from(f & tcp::FIN != 0);
        self.rst += u32::from(f & tcp::RST != 0);
        self.psh += u32::from(f & tcp::PSH != 0);
        self.ack += u32::from(ack);
        self.urg += u32::from(f & tcp::URG != 0);
        self.ece += u32::from(f & tcp::ECE != 0);
        self.cwr += u32::from(f & tcp::CWR != 0);
    }

    /// Folds another CPU's statistics of the same flow into these. Zeroed values (CPUs that
    /// never saw the flow) are skipped.
    ///
    /// Counts and sums add; minima, maxima and first/last times combine. Inter-arrival sums
    /// add the per-CPU gaps: exact when a flow stays on one CPU (as RSS keeps it), an
    /// approximation otherwise.
    pub fn merge(&mut self, other: &Self) {
        if other.packets == 0 {
            return;
        }
        if self.packets == 0 {
            *self = *other;
            return;
        }
        // Every sum saturates: per-CPU values are each bounded, their sum need not be.
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.first_seen_ns = self.first_seen_ns.min(other.first_seen_ns);
        self.last_seen_ns = self.last_seen_ns.max(other.last_seen_ns);
        self.len_sq_sum = self.len_sq_sum.saturating_add(other.len_sq_sum);
        self.iat_min_ns = self.iat_min_ns.min(other.iat_min_ns);
        self.iat_max_ns = self.iat_max_ns.max(other.iat_max_ns);
        self.iat_sum_ns = self.iat_sum_ns.saturating_add(other.iat_sum_ns);
        self.iat_sq_sum_us2 = self.iat_sq_sum_us2.saturating_add(other.iat_sq_sum_us2);
        self.len_min = self.len_min.min(other.len_min);
        self.len_max = self.len_max.max(other.len_max);
        self.syn = self.syn.saturating_add(other.syn);
        self.syn_ack = self.syn_ack.saturating_add(other.syn_ack);
        self.fin = self.fin.saturating_add(other.fin);
        self.rst = self.rst.saturating_add(other.rst);
        self.psh = self.psh.saturating_add(other.psh);
        self.ack = self.ack.saturating_add(other.ack);
        self.urg = self.urg.saturating_add(other.urg);
        self.ece = self.ece.saturating_add(other.ece);
        self.cwr = self.cwr.saturating_add(other.cwr);
        self.ttl_min = self.ttl_min.min(other.ttl_min);
        self.ttl_max = self.ttl_max.max(other.ttl_max);
        self.flags |= other.flags;
        self.malformed = self.malformed.saturating_add(other.malformed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(len: u32, tcp_flags: u8, ttl: u8) -> PacketMeta {
        PacketMeta { key: FlowKey::default(), len, tcp_flags, ttl, flags: 0, segments: Segments::default() }
    }

    #[test]
    fn segments_split_a_super_packet_as_the_wire_does() {
        // 66 bytes of headers, 3 x 1448 + 100 bytes of payload.
        let s = Segments::of(66 + 3 * 1448 + 100, 4, 1448, 66).unwrap();
        assert_eq!((s.extra, s.full_len, s.last_len, s.extra_header_bytes()), (3, 1514, 166, 198));
        let exact = Segments::of(66 + 2 * 1448, 2, 1448, 66).unwrap();
        assert_eq!((exact.extra, exact.last_len), (1, 1514), "a last segment may be full");
        for (len, segs, size, header) in [
            (1514, 1, 1448, 66),          // one segment: an ordinary packet
            (1514, 0, 0, 66),             // not GSO at all
            (66 + 1448, 2, 1448, 66),     // claims two segments but holds one
            (66 + 3 * 1448, 2, 1448, 66), // more payload than two segments carry
            (60, 2, 1448, 60),            // no payload
            (100_000, 70_000, 1, 60),     // beyond the kernel's limits
        ] {
            assert_eq!(Segments::of(len, segs, size, header), None, "{len} {segs} {size} {header}");
        }
    }

    #[test]
    fn a_super_packet_counts_as_its_segments_back_to_back() {
        let s = Segments::of(66 + 3 * 1448 + 100, 4, 1448, 66).unwrap();
        let flags = tcp::ACK | tcp::PSH;
        let first = PacketMeta { len: s.full_len, segments: s, ..meta(0, flags, 64) };
        for earlier in [None, Some(meta(60, tcp::SYN, 64))] {
            // The super-packet as one update...
            let mut got = earlier.map_or_else(|| FlowStats::first(&first, 5_000), |e| FlowStats::first(&e, 1_000));
            if earlier.is_some() {
                got.update(&first, 5_000);
            }
            // ...against its four segments one by one, flags on the first, ACK on the rest.
            let mut want = earlier.map_or_else(
                || FlowStats::first(&meta(1514, flags, 64), 5_000),
                |e| {
                    let mut w = FlowStats::first(&e, 1_000);
                    w.update(&meta(1514, flags, 64), 5_000);
                    w
                },
            );
            want.update(&meta(1514, tcp::ACK, 64), 5_000);
            want.update(&meta(1514, tcp::ACK, 64), 5_000);
            want.update(&meta(166, tcp::ACK, 64), 5_000);
            assert_eq!(got, want, "after {earlier:?}");
            assert_eq!((got.packets, got.ack, got.psh), (4 + u64::from(earlier.is_some()), 4, 1));
        }
    }

    #[test]
    fn first_packet_initialises_everything() {
        let s = FlowStats::first(&meta(60, tcp::SYN, 64), 1_000);
        assert_eq!((s.packets, s.bytes, s.first_seen_ns, s.last_seen_ns), (1, 60, 1_000, 1_000));
        assert_eq!((s.len_min, s.len_max, s.len_sq_sum), (60, 60, 3600));
        assert_eq!((s.syn, s.syn_ack, s.ack), (1, 0, 0));
        assert_eq!(s.iat_min_ns, u64::MAX, "no gap yet");
        assert_eq!((s.iat_max_ns, s.iat_sum_ns), (0, 0));
    }

    #[test]
    fn update_accumulates_gaps_lengths_flags_and_ttl() {
        let mut s = FlowStats::first(&meta(60, tcp::SYN, 64), 1_000);
        s.update(&meta(1500, tcp::ACK | tcp::PSH, 63), 3_000);
        s.update(&meta(40, tcp::FIN | tcp::ACK, 65), 13_000);
        assert_eq!((s.packets, s.bytes, s.last_seen_ns), (3, 1600, 13_000));
        assert_eq!((s.len_min, s.len_max, s.len_sq_sum), (40, 1500, 3600 + 1500 * 1500 + 1600));
        assert_eq!((s.iat_min_ns, s.iat_max_ns, s.iat_sum_ns), (2_000, 10_000, 12_000));
        assert_eq!(s.iat_sq_sum_us2, 2 * 2 + 10 * 10);
        assert_eq!((s.syn, s.ack, s.psh, s.fin), (1, 2, 1, 1));
        assert_eq!((s.ttl_min, s.ttl_max), (63, 65));
    }

    #[test]
    fn zeroed_per_cpu_slot_starts_as_first_packet() {
        let mut s = FlowStats::default();
        s.update(&meta(100, 0, 9), 5);
        assert_eq!(s, FlowStats::first(&meta(100, 0, 9), 5));
    }

    #[test]
    fn huge_gaps_saturate_instead_of_wrapping() {
        let mut s = FlowStats::first(&meta(60, 0, 1), 0);
        s.update(&meta(60, 0, 1), u64::MAX / 2);
        s.update(&meta(60, 0, 1), u64::MAX);
        assert_eq!(s.iat_sq_sum_us2, u64::MAX);
    }

    #[test]
    fn lengths_near_u32_max_saturate_instead_of_overflowing() {
        // A capture may claim `orig_len` = u32::MAX: the squares' sum of two such packets
        // overflowed (a panic in debug builds, a wrapped value in release).
        let mut s = FlowStats::first(&meta(u32::MAX, 0, 1), 0);
        s.update(&meta(u32::MAX, 0, 1), 1);
        s.update(&meta(u32::MAX, 0, 1), 2);
        assert_eq!(s.len_sq_sum, u64::MAX);
        assert_eq!(s.bytes, 3 * u64::from(u32::MAX));
        let mut m = s;
        m.merge(&FlowStats { bytes: u64::MAX, syn: u32::MAX, ..s });
        assert_eq!((m.bytes, m.len_sq_sum, m.packets), (u64::MAX, u64::MAX, 6));
        m.merge(&FlowStats { syn: u32::MAX, ..s });
        assert_eq!(m.syn, u32::MAX);
    }

    #[test]
    fn shards_are_balanced_for_floods_and_scans() {
        let mut counts = [[0u32; crate::maps::FLOW_SHARDS]; 3];
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            let flood =
                FlowKey { src_addr: FlowKey::v4_mapped([10, b[1], b[2], b[3]]), dst_port: 80, ..FlowKey::default() };
            let scan = FlowKey { dst_port: u16::try_from(i % 65_536).unwrap(), src_port: 40_000, ..FlowKey::default() };
            let ports = FlowKey { src_port: (i % 60_000) as u16, dst_port: 443, ..flood };
            for (n, key) in [flood, scan, ports].iter().enumerate() {
                counts[n][key.shard()] += 1;
            }
        }
        for c in counts {
            assert!(c.iter().all(|&x| x > 4_500), "unbalanced shards: {c:?}");
        }
    }

    #[test]
    fn merge_combines_cpus_and_skips_empty_slots() {
        let mut a = FlowStats::first(&meta(60, tcp::SYN, 64), 100);
        a.update(&meta(80, tcp::ACK, 64), 200);
        let mut b = FlowStats::first(&meta(1000, tcp::ACK, 50), 150);
        b.update(&meta(20, tcp::ACK, 70), 400);
        let mut m = FlowStats::default();
        for v in [FlowStats::default(), a, FlowStats::default(), b] {
            m.merge(&v);
        }
        assert_eq!((m.packets, m.bytes), (4, 1160));
        assert_eq!((m.first_seen_ns, m.last_seen_ns), (100, 400));
        assert_eq!((m.len_min, m.len_max), (20, 1000));
        assert_eq!((m.iat_min_ns, m.iat_max_ns, m.iat_sum_ns), (100, 250, 350));
        assert_eq!((m.syn, m.ack), (1, 3));
        assert_eq!((m.ttl_min, m.ttl_max), (50, 70));
    }
}
