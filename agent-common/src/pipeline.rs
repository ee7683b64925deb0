//! The per-packet steps before the flow-table update, shared by the XDP program and the pcap
//! path: count, parse the network layer, consult the blocklist, parse the transport layer,
//! count by protocol. Only the flow-table and blocklist storage differ between the two.

use crate::{
    counters::{Counters, ProtoClass},
    flow::{IP_V4, PacketMeta, flags},
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
/// headers after them still make (flagged) flows, counted by reason.
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
    let (meta, malformed) = parse::parse_l4(packet, &l3);
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
    }
    Step::Flow(meta)
}
