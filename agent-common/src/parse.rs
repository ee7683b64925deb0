//! Packet parsing shared by the XDP program and the pcap path.
//!
//! The parser is generic over [`Packet`], the one thing that differs between the two: the XDP
//! program reads between `data` and `data_end` with checks the verifier can follow, the host
//! reads a byte slice. Every read is of a fixed-size byte array at a bounded offset, so the
//! same code passes the verifier and runs on the host.
//!
//! Parsing is split in two so the XDP program can check the blocklist as soon as the source
//! address is known: [`parse_l3`] (Ethernet, VLAN, IPv4/IPv6 and IPv6 extension headers), then
//! [`parse_l4`] (TCP, UDP, ICMP, `ICMPv6` ports and flags).

use crate::{
    counters::Malformed,
    flow::{FlowKey, IP_V4, IP_V6, PacketMeta, flags},
};

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard `QinQ` outer tag, still seen in the wild.
pub const ETH_P_QINQ_9100: u16 = 0x9100;

// Defined in `proto`; re-exported where the parser's users have always found them.
pub use crate::proto::{
    IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_ROUTING,
    IPPROTO_TCP, IPPROTO_UDP,
};

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// Stacked VLAN tags parsed (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Largest header offset the parser reads at. Bounding offsets is what lets the verifier
/// accept reads at variable positions; no real header stack comes near it.
pub const MAX_OFFSET: usize = 1024;

/// Access to one packet's bytes.
pub trait Packet {
    /// Length of the frame on the wire (the capture's original length in the pcap path).
    fn wire_len(&self) -> u32;
    /// Bytes available to read (the captured length in the pcap path).
    fn available(&self) -> usize;
    /// The `N` bytes at `offset`, or `None` if any of them lies past the available data or
    /// `offset` exceeds [`MAX_OFFSET`].
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// For a GSO super-packet (egress only), the number of wire segments it becomes and their
    /// payload size (`gso_segs`, `gso_size`); `(1, 0)` for everything else.
    #[inline(always)]
    fn gso(&self) -> (u32, u32) {
        (1, 0)
    }
}

/// A packet held in a byte slice (host side: pcap files, tests).
#[derive(Clone, Copy, Debug)]
pub struct SlicePacket<'a> {
    data: &'a [u8],
    wire_len: u32,
}

impl<'a> SlicePacket<'a> {
    /// A whole packet.
    #[must_use]
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, wire_len: u32::try_from(data.len()).unwrap_or(u32::MAX) }
    }

    /// A captured packet that was `wire_len` bytes long on the wire (snaplen may cut it).
    #[must_use]
    pub const fn captured(data: &'a [u8], wire_len: u32) -> Self {
        Self { data, wire_len }
    }
}

impl Packet for SlicePacket<'_> {
    fn wire_len(&self) -> u32 {
        self.wire_len
    }

    fn available(&self) -> usize {
        self.data.len()
    }

    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_OFFSET {
            return None;
        }
        let end = offset.checked_add(N)?;
        self.data.get(offset..end)?.try_into().ok()
    }
}

/// The network-layer view of a packet: addresses, protocol and where the transport header is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L3 {
    /// Addresses, protocol and IP version filled in; ports still zero.
    pub key: FlowKey,
    /// Offset of the transport header.
    pub l4_offset: usize,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// [`flags`] bits (fragments, headers that could not be walked).
    pub flags: u8,
    /// Why the headers between the addresses and the transport header (IPv4 options, IPv6
    /// extension headers) could not be walked. The addresses are still good: the blocklist
    /// applies, and the packet is counted on its 3-tuple with [`flags::NETWORK_UNWALKED`];
    /// `key.protocol` is then the last header type reached.
    pub malformed: Option<Malformed>,
}

impl L3 {
    /// A later fragment carries no transport header; it is counted on the 3-tuple.
    #[inline(always)]
    #[must_use]
    pub const fn is_later_fragment(&self) -> bool {
        self.flags & flags::FRAGMENT_LATER != 0
    }
}

#[inline(always)]
const fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// Parses the link and network layers. `Ok(None)` is a well-formed frame that is not IP.
///
/// Errors are only the cases where no source address can be read. Once the fixed IP header is
/// there, an inconsistent header length or an extension header chain that cannot be walked
/// gives an [`L3`] with [`L3::malformed`] set, so that the caller still consults the blocklist
/// and counts the packet on its addresses: a blocked source must not get through by adding
/// headers the sensor does not walk.
///
/// # Errors
/// The [`Malformed`] reason when the headers before the addresses are truncated or
/// inconsistent.
#[inline(always)]
pub fn parse_l3<P: Packet>(p: &P) -> Result<Option<L3>, Malformed> {
    let Some(eth) = p.bytes::<ETH_HLEN>(0) else {
        return Err(Malformed::EthTruncated);
    };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut offset = ETH_HLEN;
    let mut tags = 0;
    while ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_9100 {
        if tags == MAX_VLAN_TAGS {
            return Err(Malformed::VlanTooMany);
        }
        let Some(tag) = p.bytes::<VLAN_HLEN>(offset) else {
            return Err(Malformed::VlanTruncated);
        };
        ethertype = be16([tag[2], tag[3]]);
        offset += VLAN_HLEN;
        tags += 1;
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(p, offset).map(Some),
        ETH_P_IPV6 => parse_ipv6(p, offset).map(Some),
        _ => Ok(None),
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet>(p: &P, offset: usize) -> Result<L3, Malformed> {
    let Some(h) = p.bytes::<20>(offset) else {
        return Err(Malformed::Ipv4Truncated);
    };
    if h[0] >> 4 != 4 {
        return Err(Malformed::Ipv4BadVersion);
    }
    let key = FlowKey {
        src_addr: FlowKey::v4_mapped([h[12], h[13], h[14], h[15]]),
        dst_addr: FlowKey::v4_mapped([h[16], h[17], h[18], h[19]]),
        protocol: h[9],
        ip_version: IP_V4,
        ..FlowKey::default()
    };
    let frag = be16([h[6], h[7]]);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    let mut flags = if frag_offset != 0 {
        flags::FRAGMENT_LATER
    } else if more_fragments {
        flags::FRAGMENT_FIRST
    } else {
        0
    };
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(be16([h[2], h[3]]));
    // A total length of 0 is what a capture on a host with segmentation offload records for
    // the large frames it hands the NIC; it is not a corrupt header.
    let malformed =
        if header_len < 20 || (total_len != 0 && total_len < header_len) || offset + header_len > p.available() {
            flags |= flags::NETWORK_UNWALKED;
            Some(Malformed::Ipv4BadHeaderLen)
        } else {
            None
        };
    Ok(L3 { key, l4_offset: offset + header_len, ttl: h[8], flags, malformed })
}

#[inline(always)]
fn parse_ipv6<P: Packet>(p: &P, offset: usize) -> Result<L3, Malformed> {
    let Some(h) = p.bytes::<40>(offset) else {
        return Err(Malformed::Ipv6Truncated);
    };
    if h[0] >> 4 != 6 {
        return Err(Malformed::Ipv6BadVersion);
    }
    let mut key = FlowKey { protocol: h[6], ip_version: IP_V6, ..FlowKey::default() };
    key.src_addr.copy_from_slice(&h[8..24]);
    key.dst_addr.copy_from_slice(&h[24..40]);
    let mut l3 = L3 { key, l4_offset: offset + 40, ttl: h[7], flags: 0, malformed: None };
    if let Err(reason) = walk_ipv6_extensions(p, &mut l3) {
        l3.flags |= flags::NETWORK_UNWALKED;
        l3.malformed = Some(reason);
    }
    Ok(l3)
}

/// Walks the extension headers after the fixed IPv6 header, moving `l3.key.protocol` and
/// `l3.l4_offset` along as it goes: on an error they stay at the last header reached.
#[inline(always)]
fn walk_ipv6_extensions<P: Packet>(p: &P, l3: &mut L3) -> Result<(), Malformed> {
    let mut next = l3.key.protocol;
    let mut offset = l3.l4_offset;
    let mut walked = 0;
    loop {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(e) = p.bytes::<2>(offset) else {
                    return Err(Malformed::Ipv6ExtTruncated);
                };
                next = e[0];
                (usize::from(e[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let Some(e) = p.bytes::<2>(offset) else {
                    return Err(Malformed::Ipv6ExtTruncated);
                };
                next = e[0];
                (usize::from(e[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(e) = p.bytes::<8>(offset) else {
                    return Err(Malformed::Ipv6ExtTruncated);
                };
                next = e[0];
                let frag = be16([e[2], e[3]]);
                if frag >> 3 != 0 {
                    // A later fragment: no transport header follows.
                    l3.flags |= flags::FRAGMENT_LATER;
                    offset += 8;
                    l3.key.protocol = next;
                    l3.l4_offset = offset;
                    break;
                }
                if frag & 1 != 0 {
                    l3.flags |= flags::FRAGMENT_FIRST;
                }
                8
            }
            _ => break,
        };
        if offset + len > MAX_OFFSET {
            return Err(Malformed::Ipv6ExtTooMany);
        }
        offset += len;
        walked += 1;
        l3.key.protocol = next;
        l3.l4_offset = offset;
        if walked == MAX_IPV6_EXT_HEADERS {
            if is_ipv6_ext(next) {
                return Err(Malformed::Ipv6ExtTooMany);
            }
            break;
        }
    }
    if offset > p.available() {
        return Err(Malformed::Ipv6ExtTruncated);
    }
    Ok(())
}

#[inline(always)]
const fn is_ipv6_ext(next: u8) -> bool {
    matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT)
}

/// Parses the transport header and completes the flow key. Later fragments and protocols
/// without ports keep ports 0.
///
/// Never fails outright: a packet whose network headers could not be walked is keyed on its
/// 3-tuple with [`flags::NETWORK_UNWALKED`], and a transport header cut short (a tiny first
/// fragment as `nmap -f` sends, a truncated frame) or inconsistent keeps the ports when they are
/// there, with [`flags::TRANSPORT_TRUNCATED`] and no TCP flags. Either way the reason comes
/// back beside the metadata so the caller counts it.
#[inline(always)]
pub fn parse_l4<P: Packet>(p: &P, l3: &L3) -> (PacketMeta, Option<Malformed>) {
    let mut meta = PacketMeta {
        key: l3.key,
        len: p.wire_len(),
        tcp_flags: 0,
        ttl: l3.ttl,
        flags: l3.flags,
        segments: crate::flow::Segments { extra: 0, header_len: 0, full_len: 0, last_len: 0 },
    };
    if l3.malformed.is_some() {
        return (meta, l3.malformed);
    }
    if l3.is_later_fragment() {
        return (meta, None);
    }
    let offset = l3.l4_offset;
    let protocol = l3.key.protocol;
    let is_icmp = crate::proto::is_icmp(protocol);
    // Ports (or ICMP type and code) from as much of the header as is there.
    if is_icmp {
        if let Some(i) = p.bytes::<2>(offset) {
            meta.key.dst_port = be16([i[0], i[1]]);
        }
    } else if (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP)
        && let Some(ports) = p.bytes::<4>(offset)
    {
        meta.key.src_port = be16([ports[0], ports[1]]);
        meta.key.dst_port = be16([ports[2], ports[3]]);
    }
    let problem = match protocol {
        IPPROTO_TCP => match p.bytes::<20>(offset) {
            None => Some(Malformed::TcpTruncated),
            Some(t) => {
                let data_offset = usize::from(t[12] >> 4) * 4;
                if data_offset < 20 {
                    Some(Malformed::TcpBadOffset)
                } else if offset + data_offset > p.available() {
                    Some(Malformed::TcpTruncated)
                } else {
                    meta.tcp_flags = t[13];
                    None
                }
            }
        },
        IPPROTO_UDP => p.bytes::<8>(offset).is_none().then_some(Malformed::UdpTruncated),
        _ if is_icmp => p.bytes::<4>(offset).is_none().then_some(Malformed::IcmpTruncated),
        _ => None,
    };
    if problem.is_some() {
        meta.flags |= flags::TRANSPORT_TRUNCATED;
    }
    (meta, problem)
}

/// Where the transport header of a well-formed TCP or UDP packet ends: the headers a GSO
/// super-packet repeats on each of its segments. `None` for other protocols.
#[inline(always)]
#[must_use]
pub fn headers_end<P: Packet>(p: &P, l3: &L3) -> Option<usize> {
    match l3.key.protocol {
        IPPROTO_TCP => p.bytes::<1>(l3.l4_offset + 12).map(|b| l3.l4_offset + usize::from(b[0] >> 4) * 4),
        IPPROTO_UDP => Some(l3.l4_offset + 8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (20 bytes) + TCP (20 bytes), SYN from 10.0.0.1:1000 to 10.0.0.2:80.
    const TCP4: [u8; 54] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, // ethernet
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ipv4, DF
        0x03, 0xe8, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, // tcp
    ];

    /// The flow metadata of a frame, or the first reason it is malformed.
    fn parse(frame: &[u8]) -> Result<Option<PacketMeta>, Malformed> {
        parse_flagged(frame).map(|m| m.map(|(meta, _)| meta)).and_then(|m| match m {
            Some(meta) if meta.flags & flags::MALFORMED != 0 => {
                let (_, reason) = parse_flagged(frame)?.expect("ip");
                Err(reason.expect("a malformed packet has its reason"))
            }
            other => Ok(other),
        })
    }

    /// Metadata and reason, as the pipeline sees them.
    fn parse_flagged(frame: &[u8]) -> Result<Option<(PacketMeta, Option<Malformed>)>, Malformed> {
        let p = SlicePacket::new(frame);
        Ok(parse_l3(&p)?.map(|l3| parse_l4(&p, &l3)))
    }

    #[test]
    fn tcp_over_ipv4() {
        let m = parse(&TCP4).unwrap().unwrap();
        assert_eq!(m.key.src_addr, FlowKey::v4_mapped([10, 0, 0, 1]));
        assert_eq!(m.key.dst_addr, FlowKey::v4_mapped([10, 0, 0, 2]));
        assert_eq!((m.key.src_port, m.key.dst_port, m.key.protocol, m.key.ip_version), (1000, 80, 6, 4));
        assert_eq!((m.len, m.tcp_flags, m.ttl, m.flags), (54, 0x02, 64, 0));
    }

    #[test]
    fn every_cut_of_the_ethernet_and_ip_headers_has_its_reason() {
        for cut in 0..TCP4.len() {
            let want = match cut {
                0..14 => Malformed::EthTruncated,
                14..34 => Malformed::Ipv4Truncated,
                _ => Malformed::TcpTruncated,
            };
            assert_eq!(parse(&TCP4[..cut]), Err(want), "cut at {cut}");
        }
    }

    #[test]
    fn captured_length_short_of_wire_length() {
        let p = SlicePacket::captured(&TCP4, 1514);
        let l3 = parse_l3(&p).unwrap().unwrap();
        assert_eq!(parse_l4(&p, &l3).0.len, 1514, "bytes count the wire length");
    }

    #[test]
    fn offloaded_frames_with_zero_total_length_parse() {
        let mut tso = TCP4;
        tso[16..18].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&tso).unwrap().unwrap().key.dst_port, 80);
        tso[16..18].copy_from_slice(&[0, 10]);
        assert_eq!(parse(&tso), Err(Malformed::Ipv4BadHeaderLen));
    }

    #[test]
    fn non_ip_is_not_an_error() {
        let mut arp = TCP4;
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), Ok(None));
    }

    #[test]
    fn offsets_beyond_the_bound_are_refused() {
        let big = [0u8; MAX_OFFSET + 64];
        let p = SlicePacket::new(&big);
        assert!(p.bytes::<4>(MAX_OFFSET).is_some());
        assert!(p.bytes::<4>(MAX_OFFSET + 1).is_none());
    }

    /// Ethernet + IPv6 from `2001:db8::66` to `2001:db8::2` with `exts` Destination Options
    /// headers of `units` 8-byte units after the first 8 each, then a TCP SYN to port 80.
    fn tcp6_with_dest_opts(exts: usize, units: u8) -> ([u8; 16], alloc_free::Frame) {
        let mut f = alloc_free::Frame::new();
        f.push(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd]);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 0x66;
        let mut dst = src;
        dst[15] = 2;
        let ext_len = exts * (usize::from(units) + 1) * 8;
        let payload = u16::try_from(ext_len + 20).unwrap();
        let first = if exts == 0 { IPPROTO_TCP } else { IPPROTO_DSTOPTS };
        f.push(&[0x60, 0, 0, 0]);
        f.push(&payload.to_be_bytes());
        f.push(&[first, 64]);
        f.push(&src);
        f.push(&dst);
        for i in 0..exts {
            let next = if i + 1 == exts { IPPROTO_TCP } else { IPPROTO_DSTOPTS };
            f.push(&[next, units]);
            // Pad1 options filling the rest of the header.
            for _ in 0..(usize::from(units) + 1) * 8 - 2 {
                f.push(&[0]);
            }
        }
        f.push(&[0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        (src, f)
    }

    /// A fixed-capacity frame builder (the crate is `no_std` without `alloc`).
    mod alloc_free {
        pub struct Frame {
            pub buf: [u8; 2048],
            pub len: usize,
        }

        impl Frame {
            pub const fn new() -> Self {
                Self { buf: [0; 2048], len: 0 }
            }

            pub fn push(&mut self, bytes: &[u8]) {
                self.buf[self.len..self.len + bytes.len()].copy_from_slice(bytes);
                self.len += bytes.len();
            }

            pub fn bytes(&self) -> &[u8] {
                &self.buf[..self.len]
            }
        }
    }

    #[test]
    fn ipv6_extension_chains_the_walk_cannot_finish_keep_their_addresses() {
        let (_, ok) = tcp6_with_dest_opts(MAX_IPV6_EXT_HEADERS - 1, 0);
        let m = parse(ok.bytes()).unwrap().unwrap();
        assert_eq!((m.key.protocol, m.key.dst_port), (IPPROTO_TCP, 80), "within the walk limit");
        // Seven headers (one more than the walk) and one 1040-byte header: the kernel's own
        // stack accepts both; the sensor must still see whose packet it is.
        for (exts, units) in [(MAX_IPV6_EXT_HEADERS + 1, 0), (1, 129)] {
            let (src, frame) = tcp6_with_dest_opts(exts, units);
            let p = SlicePacket::new(frame.bytes());
            let l3 = parse_l3(&p).unwrap().unwrap();
            assert_eq!(l3.key.src_addr, src, "{exts} x {units}");
            assert_eq!(l3.malformed, Some(Malformed::Ipv6ExtTooMany), "{exts} x {units}");
            let (meta, reason) = parse_l4(&p, &l3);
            assert_eq!(reason, Some(Malformed::Ipv6ExtTooMany));
            assert_eq!((meta.key.src_port, meta.key.dst_port, meta.key.protocol), (0, 0, IPPROTO_DSTOPTS));
            assert_eq!(meta.flags, flags::NETWORK_UNWALKED);
        }
    }

    #[test]
    fn tiny_first_fragments_keep_their_ports() {
        // nmap -f: the first fragment carries 8 bytes of TCP header (ports and sequence).
        let mut frag = [0u8; 42];
        frag.copy_from_slice(&TCP4[..42]);
        frag[16..18].copy_from_slice(&28u16.to_be_bytes());
        frag[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
        let (meta, reason) = parse_flagged(&frag).unwrap().unwrap();
        assert_eq!(reason, Some(Malformed::TcpTruncated));
        assert_eq!((meta.key.src_port, meta.key.dst_port, meta.tcp_flags), (1000, 80, 0));
        assert_eq!(meta.flags, flags::FRAGMENT_FIRST | flags::TRANSPORT_TRUNCATED);
        // Three bytes of transport: not even the ports.
        let (meta, reason) = parse_flagged(&frag[..37]).unwrap().unwrap();
        assert_eq!(reason, Some(Malformed::TcpTruncated));
        assert_eq!((meta.key.src_port, meta.key.dst_port), (0, 0));
        // A later fragment is not malformed: it has no transport header by design.
        frag[20..22].copy_from_slice(&0x0001u16.to_be_bytes());
        let (meta, reason) = parse_flagged(&frag).unwrap().unwrap();
        assert_eq!((reason, meta.flags, meta.key.dst_port), (None, flags::FRAGMENT_LATER, 0));
    }

    #[test]
    fn ipv4_with_a_bad_header_length_keeps_its_addresses() {
        let mut bad = TCP4;
        bad[14] = 0x44;
        let (meta, reason) = parse_flagged(&bad).unwrap().unwrap();
        assert_eq!(reason, Some(Malformed::Ipv4BadHeaderLen));
        assert_eq!(meta.key.src_addr, FlowKey::v4_mapped([10, 0, 0, 1]));
        assert_eq!((meta.key.dst_port, meta.flags), (0, flags::NETWORK_UNWALKED));
    }
}
