//! The per-packet steps before the flow-table update, shared by the XDP program and the pcap
//! path: count, parse the network layer, consult the blocklist, parse the transport layer,
//! count by protocol. Only the flow-table and blocklist storage differ between the two.

use crate::{
    counters::{Counters, ProtoClass},
    flow::{IP_V4, PacketMeta, Segments, flags},
    parse::{self, L3, Packet},
};

/// What to do with a packet after [`ingest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Update the flow table with this packet, then pass it.
    Flow(PacketMeta),
    /// Pass it without touching the flow table (not IP, or too short to hold addresses).
    Pass,
    /// Drop it (an active blocklist rule covers its source).
    Drop,
}

/// Counts `packet` in `counters`, parses it, and asks `blocked` about its source as soon as
/// the source address is known, before anything after it is looked at: a blocked source is
/// dropped however malformed the rest of its packet is. Packets with addresses but malformed
/// headers after them still make (flagged) flows, counted by reason. A GSO super-packet
/// ([`Packet::gso`], egress only) counts as the segments it becomes on the wire.
#[inline(always)]
pub fn ingest<P: Packet>(
    packet: &P,
    counters: &mut Counters,
    blocked: impl FnOnce(&L3, &mut Counters) -> bool,
) -> Step {
    let len = packet.wire_len();
    counters.packets += 1;
    counters.bytes += u64::from(len);
    let l3 = match parse::parse_l3(packet) {
        Ok(Some(l3)) => l3,
        Ok(None) => {
            counters.non_ip_packets += 1;
            return Step::Pass;
        }
        Err(reason) => {
            counters.count_malformed(reason);
            return Step::Pass;
        }
    };
    if l3.key.ip_version == IP_V4 {
        counters.ipv4_packets += 1;
    } else {
        counters.ipv6_packets += 1;
    }
    if blocked(&l3, counters) {
        counters.blocklist_drops += 1;
        return Step::Drop;
    }
    let (mut meta, malformed) = parse::parse_l4(packet, &l3);
    if l3.flags & (flags::FRAGMENT_FIRST | flags::FRAGMENT_LATER) != 0 {
        counters.fragments += 1;
    }
    if let Some(reason) = malformed {
        // Counted by reason (every packet lands in one bucket: malformed, non-IP or a
        // protocol class) and still kept on its flow, flagged.
        counters.count_malformed(reason);
    } else {
        let class = if l3.is_later_fragment() { ProtoClass::Other } else { ProtoClass::of(meta.key.protocol) };
        counters.count_proto(class, u64::from(len));
        let (gso_segs, gso_size) = packet.gso();
        if gso_segs > 1
            && !l3.is_later_fragment()
            && let Some(end) = parse::headers_end(packet, &l3)
            && let Ok(end) = u32::try_from(end)
            && let Some(segments) = Segments::of(len, gso_segs, gso_size, end)
        {
            meta.len = segments.full_len;
            meta.segments = segments;
            counters.count_segments(l3.key.ip_version, class, &segments);
        }
    }
    Step::Flow(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::SlicePacket;

    /// A TCP/IPv4 super-packet as TC egress sees it: the headers in the buffer, `len` the
    /// whole send, `gso` what the stack asked of the device.
    struct Gso<'a> {
        headers: SlicePacket<'a>,
        len: u32,
        shape: (u32, u32),
    }

    impl Packet for Gso<'_> {
        fn wire_len(&self) -> u32 {
            self.len
        }
        fn available(&self) -> usize {
            self.headers.available()
        }
        fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            self.headers.bytes(offset)
        }
        fn gso(&self) -> (u32, u32) {
            self.shape
        }
    }

    /// Ethernet + IPv4 + TCP with 12 bytes of options (timestamps): 66 bytes of headers, ACK.
    fn headers(protocol: u8) -> [u8; 66] {
        let mut f = [0u8; 66];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14..24].copy_from_slice(&[0x45, 0, 0x05, 0xdc, 0, 1, 0x40, 0, 64, protocol]);
        f[26..34].copy_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f[34..38].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51]);
        f[46] = 0x80; // data offset 8 words
        f[47] = crate::flow::tcp::ACK;
        f
    }

    #[test]
    fn a_super_packet_counts_as_its_wire_segments() {
        let frame = headers(crate::proto::IPPROTO_TCP);
        let len = 66 + 3 * 1448 + 100;
        let packet = Gso { headers: SlicePacket::new(&frame), len, shape: (4, 1448) };
        let mut c = Counters::default();
        let Step::Flow(meta) = ingest(&packet, &mut c, |_, _| false) else { panic!("a flow") };
        assert_eq!((meta.len, meta.segments.extra, meta.segments.last_len), (1514, 3, 166));
        assert_eq!((c.packets, c.bytes, c.ipv4_packets), (4, u64::from(len) + 3 * 66, 4));
        let tcp = ProtoClass::Tcp as usize;
        assert_eq!((c.proto_packets[tcp], c.proto_bytes[tcp]), (4, u64::from(len) + 3 * 66));
        assert_eq!(c.malformed_total(), 0);
    }

    #[test]
    fn only_tcp_and_udp_are_cut_and_only_when_the_numbers_add_up() {
        let frame = headers(crate::proto::IPPROTO_TCP);
        let bogus = Gso { headers: SlicePacket::new(&frame), len: 66 + 1448, shape: (4, 1448) };
        let mut c = Counters::default();
        let Step::Flow(meta) = ingest(&bogus, &mut c, |_, _| false) else { panic!("a flow") };
        assert_eq!((meta.len, meta.segments.extra, c.packets), (66 + 1448, 0, 1), "counted as the one buffer");
        let gre = headers(47);
        let other = Gso { headers: SlicePacket::new(&gre), len: 66 + 3 * 1448 + 100, shape: (4, 1448) };
        let mut c = Counters::default();
        let Step::Flow(meta) = ingest(&other, &mut c, |_, _| false) else { panic!("a flow") };
        assert_eq!((meta.segments.extra, c.packets), (0, 1));
    }
}
