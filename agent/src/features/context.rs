//! Per-source and per-destination context over sliding windows of recent conversations, at two
//! horizons.
//!
//! Each conversation is an event at its first packet's time, with its initiator as the source
//! and its responder as the destination. The window keeps, incrementally, for every source: how
//! many conversations it started, how many distinct hosts, ports and IP protocols it reached,
//! how many conversations went to each service (responder address, port and protocol), how
//! many went unanswered (nothing back, a SYN rejected, a half-open probe), and the bytes it sent
//! and got back; for every destination: how many conversations and distinct sources reached it
//! and how many of them failed. It does so twice over one queue of events: over the short
//! window (`window`, 10 s by default: floods and fast scans) and over the long one
//! ([`LONG_WINDOW`], 2 minutes: slow scans, sweeps and password guessing accumulate there).
//! Adding and expiring an event are O(1) on average, and the event count is capped so memory is
//! bounded under a flood (under such a load the long horizon holds less than its 2 minutes).
//!
//! Offline (training, replay, evaluation) the time is the capture's own clock, the records'
//! first-packet times. Live, it is `CLOCK_MONOTONIC` ([`ContextWindow::observe_at`]): a wall
//! clock stepped back would stop expiry and let the window fill to its cap.
//!
//! Memory: an event is 64 bytes, kept once for both horizons; a host as a source about 150
//! bytes per horizon (a 16-byte address key, its counters, and its distinct hosts, ports,
//! protocols and services kept inline while there is one of each), as a destination about 64,
//! plus a hash table's slack. A spoofed flood, where every event has a source of its own, costs
//! about 0.5 kB per event.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    hash::Hash,
    time::Duration,
};

use agent_common::proto::IPPROTO_TCP;
use indexmap::IndexMap;

use crate::flows::{FlowRecord, biflow::ConnState, record::addr_bytes as addr};

/// Default window: long enough to gather a slow scan's attempts, short enough to follow change.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// The long horizon: slow scans (one probe a second), sweeps and password guessing gather
/// there. Part of the flow schema (`vigil-flow-v3`), so fixed rather than configured: a model
/// scores features of the horizon it was trained with.
pub const LONG_WINDOW: Duration = Duration::from_mins(2);

/// Default cap on events kept in the window (oldest dropped first): the default flow table's
/// size. `vigil run` caps at its flow table's size.
pub const DEFAULT_MAX_EVENTS: usize = 1 << 18;

/// Context of one conversation's source (initiator) and destination (responder), including
/// the conversation itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContextStats {
    pub src_flows: u32,
    pub src_dst_hosts: u32,
    pub src_dst_ports: u32,
    pub src_unanswered_share: f64,
    /// Failed TCP attempts of the source (the count behind the share).
    pub src_failed: u32,
    pub src_bytes_out: u64,
    pub src_bytes_in: u64,
    pub dst_flows: u32,
    pub dst_src_hosts: u32,
    pub dst_unanswered_share: f64,
    pub dst_failed: u32,
    /// Distinct IP protocols the source used.
    pub src_protocols: u32,
    /// Conversations of the source to this conversation's service (responder, port, protocol).
    pub svc_flows: u32,
    /// The same over the long horizon.
    pub long: LongStats,
}

/// What the long horizon ([`LONG_WINDOW`]) says about a conversation's source and destination.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LongStats {
    pub src_dst_hosts: u32,
    pub src_dst_ports: u32,
    pub src_failed: u32,
    pub svc_flows: u32,
    pub dst_src_hosts: u32,
    /// Distinct ports of the responder the initiator reached.
    pub pair_ports: u32,
    /// The initiator's failed TCP attempts to the responder.
    pub pair_failed: u32,
}

/// An address as a 16-byte key (IPv4 as IPv4-mapped IPv6): smaller than `IpAddr` with its
/// tag and padding, and one hash for both families.
type Addr = [u8; 16];

#[derive(Clone, Copy, Debug)]
struct Event {
    at_ns: u64,
    bytes_out: u64,
    bytes_back: u64,
    src: Addr,
    dst: Addr,
    dst_port: u16,
    protocol: u8,
    attempt: bool,
    unanswered: bool,
}

/// A multiset: value → occurrences, whose length is the distinct count. One value (most hosts
/// in a window reach one host, one port) is kept inline; more go to a hash map.
#[derive(Debug, Default)]
enum Distinct<T: Hash + Eq + Copy> {
    #[default]
    Empty,
    One(T, u32),
    #[expect(clippy::box_collection, reason = "8 bytes inline instead of 48: most hosts never spill")]
    Many(Box<HashMap<T, u32>>),
}

impl<T: Hash + Eq + Copy> Distinct<T> {
    fn add(&mut self, v: T) {
        match self {
            Self::Empty => *self = Self::One(v, 1),
            Self::One(x, n) if *x == v => *n += 1,
            Self::One(x, n) => *self = Self::Many(Box::new(HashMap::from([(*x, *n), (v, 1)]))),
            Self::Many(m) => *m.entry(v).or_insert(0) += 1,
        }
    }

    fn remove(&mut self, v: T) {
        match self {
            Self::Empty => {}
            Self::One(x, n) => {
                if *x == v {
                    *n -= 1;
                    if *n == 0 {
                        *self = Self::Empty;
                    }
                }
            }
            Self::Many(m) => {
                if let Entry::Occupied(mut e) = m.entry(v) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
                // Back inline (and the map freed) once one value is left.
                if m.len() <= 1 {
                    *self = m.iter().next().map_or(Self::Empty, |(&x, &n)| Self::One(x, n));
                }
            }
        }
    }

    /// Occurrences of `v`.
    fn count(&self, v: &T) -> u32 {
        match self {
            Self::Empty => 0,
            Self::One(x, n) => {
                if x == v {
                    *n
                } else {
                    0
                }
            }
            Self::Many(m) => m.get(v).copied().unwrap_or(0),
        }
    }

    #[expect(clippy::cast_possible_truncation, reason = "bounded by the event cap")]
    fn len(&self) -> u32 {
        match self {
            Self::Empty => 0,
            Self::One(..) => 1,
            Self::Many(m) => m.len() as u32,
        }
    }
}

/// What the window knows about a host as a source; removed when its last flow leaves.
#[derive(Debug, Default)]
struct SourceState {
    flows: u32,
    attempts: u32,
    unanswered: u32,
    bytes_out: u64,
    bytes_back: u64,
    dst_hosts: Distinct<Addr>,
    dst_ports: Distinct<u16>,
    protocols: Distinct<u8>,
    services: Distinct<Service>,
}

/// What the long horizon knows about an initiator and a responder together: a port scan of
/// one host, slow or fast, is many ports (and failures) of one pair; peer-to-peer clients and
/// sweeps reach many hosts, one port each.
#[derive(Debug, Default)]
struct PairState {
    flows: u32,
    unanswered: u32,
    ports: Distinct<u16>,
}

/// A service as a source reaches it: responder address, port (ICMP: type and code), protocol.
type Service = (Addr, u16, u8);

/// What the window knows about a host as a destination; removed when its last flow leaves.
#[derive(Debug, Default)]
struct DestState {
    flows: u32,
    attempts: u32,
    unanswered: u32,
    src_hosts: Distinct<Addr>,
}

/// The sliding window. Feed records in order of their first packet (small disorder is
/// tolerated: expiry follows the latest time seen).
#[derive(Debug)]
pub struct ContextWindow {
    max_events: usize,
    latest_ns: u64,
    /// The events of the long horizon; the short one counts a suffix of them.
    events: VecDeque<Event>,
    /// Sequence number the next event gets; the front event's is this minus the length.
    next_seq: u64,
    short: Horizon,
    long: Horizon,
}

/// The host state of one horizon over the events from `first_seq` on.
#[derive(Debug)]
struct Horizon {
    window_ns: u64,
    /// Sequence number of the oldest event counted here.
    first_seq: u64,
    /// Host state in index maps: entries sit in one vector and the hash table holds 8-byte
    /// indexes. A hash map of the states themselves, churned by a flood (every cycle a table's
    /// worth of new sources in, as many out), fills with tombstones and doubles to four times
    /// its live entries: 21 MB instead of ~8 for 65,536 sources.
    sources: IndexMap<Addr, SourceState>,
    destinations: IndexMap<Addr, DestState>,
    /// Per initiator and responder; kept by the long horizon only.
    pairs: Option<IndexMap<(Addr, Addr), PairState>>,
}

/// Whether a conversation is a TCP attempt (its initiator sent a SYN).
fn attempt(orig: &FlowRecord) -> bool {
    orig.protocol == IPPROTO_TCP && orig.tcp_flags.syn > 0
}

/// Whether a TCP attempt failed: nothing came back; it was rejected, left half-open or never
/// answered with a SYN-ACK; or its initiator never sent an ACK (a SYN-ACK it did not complete:
/// half-open scans and floods reset it at once). Other protocols are not counted: one-way UDP
/// (multicast, broadcast, syslog) is ordinary.
fn unanswered(orig: &FlowRecord, resp: Option<&FlowRecord>) -> bool {
    let f = &orig.tcp_flags;
    attempt(orig)
        && (resp.is_none()
            || f.ack == 0
            || matches!(
                ConnState::of(orig.protocol, f, resp.map(|r| &r.tcp_flags)),
                ConnState::S0 | ConnState::REJ | ConnState::SH
            ))
}

fn share(part: u32, whole: u32) -> f64 {
    if whole == 0 { 0.0 } else { f64::from(part) / f64::from(whole) }
}

/// Adds one to `v` (`add`) or takes one away, if `on`.
fn step(v: &mut u32, on: bool, add: bool) {
    if on {
        *v = if add { *v + 1 } else { v.saturating_sub(1) };
    }
}

impl ContextWindow {
    /// A window of the given length with the default event cap.
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self::with_capacity(window, DEFAULT_MAX_EVENTS)
    }

    /// A window of the given length keeping at most `max_events` flows.
    #[must_use]
    pub fn with_capacity(window: Duration, max_events: usize) -> Self {
        let horizon = |window, pairs: bool| Horizon {
            window_ns: crate::clock::duration_ns(window),
            first_seq: 0,
            sources: IndexMap::new(),
            destinations: IndexMap::new(),
            pairs: pairs.then(IndexMap::new),
        };
        Self {
            max_events: max_events.max(1),
            latest_ns: 0,
            events: VecDeque::new(),
            next_seq: 0,
            short: horizon(window, false),
            long: horizon(window.max(LONG_WINDOW), true),
        }
    }

    /// Flows currently in the window.
    #[must_use]
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True if the window holds no flow.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Hosts the short window holds state for (as a source, as a destination).
    #[must_use]
    pub fn hosts(&self) -> (usize, usize) {
        (self.short.sources.len(), self.short.destinations.len())
    }

    /// Adds the conversation of `orig` (the initiator's direction) and `resp` (the
    /// responder's, if it answered) at its first packet's time and returns the context of its
    /// source and destination, this conversation included.
    pub fn observe(&mut self, orig: &FlowRecord, resp: Option<&FlowRecord>) -> ContextStats {
        let first_ns = resp.map_or(orig.first_seen_ns, |r| r.first_seen_ns.min(orig.first_seen_ns));
        self.observe_at(orig, resp, first_ns)
    }

    /// Adds the conversation as an event at `at_ns` (the clock [`ContextWindow::advance`] is
    /// given; live, `CLOCK_MONOTONIC`) and returns the context of its source and destination.
    pub fn observe_at(&mut self, orig: &FlowRecord, resp: Option<&FlowRecord>, at_ns: u64) -> ContextStats {
        self.latest_ns = self.latest_ns.max(at_ns);
        self.expire();
        let event = Event {
            at_ns,
            src: addr(orig.src_ip),
            dst: addr(orig.dst_ip),
            dst_port: orig.dst_port,
            protocol: orig.protocol,
            attempt: attempt(orig),
            unanswered: unanswered(orig, resp),
            bytes_out: orig.bytes,
            bytes_back: resp.map_or(0, |r| r.bytes),
        };
        // The oldest leaves before the new one comes, so the queue never outgrows the cap
        // (a push past a full power-of-two buffer would double it).
        while self.events.len() >= self.max_events
            && let Some(old) = self.events.pop_front()
        {
            let seq = self.next_seq - self.events.len() as u64 - 1;
            for h in [&mut self.short, &mut self.long] {
                if h.first_seq <= seq {
                    h.apply(old, false);
                    h.first_seq = seq + 1;
                }
            }
        }
        self.short.apply(event, true);
        self.long.apply(event, true);
        self.events.push_back(event);
        self.next_seq += 1;
        self.stats_of(orig)
    }

    /// The sequence number of the event [`ContextWindow::observe_at`] added last, to
    /// [`ContextWindow::revise`] it later.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// The sequence number of the oldest event still in the window.
    #[must_use]
    pub fn oldest_seq(&self) -> u64 {
        self.next_seq - self.events.len() as u64
    }

    /// Replaces what event `seq` says about its conversation (what came back, whether the
    /// attempt failed, the bytes) with the conversation as it stands now, keeping its time and
    /// ends. Live, a conversation enters the window when first seen, possibly before its answer
    /// came; without this, an attempt answered a moment after a harvest stays failed for the
    /// whole window. Returns `false` if the event already left.
    pub fn revise(&mut self, seq: u64, orig: &FlowRecord, resp: Option<&FlowRecord>) -> bool {
        let Some(at) = seq.checked_sub(self.oldest_seq()).and_then(|i| usize::try_from(i).ok()) else {
            return false;
        };
        let Some(&old) = self.events.get(at) else { return false };
        let new = Event {
            attempt: attempt(orig),
            unanswered: unanswered(orig, resp),
            bytes_out: orig.bytes,
            bytes_back: resp.map_or(0, |r| r.bytes),
            ..old
        };
        if (new.attempt, new.unanswered, new.bytes_out, new.bytes_back)
            != (old.attempt, old.unanswered, old.bytes_out, old.bytes_back)
        {
            for h in [&mut self.short, &mut self.long] {
                if h.first_seq <= seq {
                    h.apply(old, false);
                    h.apply(new, true);
                }
            }
            self.events[at] = new;
        }
        true
    }

    /// Moves the window's end to `now_ns` (same clock as the events), expiring older flows.
    pub fn advance(&mut self, now_ns: u64) {
        self.latest_ns = self.latest_ns.max(now_ns);
        self.expire();
    }

    /// The context of a conversation observed earlier (by its initiator's direction), without
    /// adding it again (live scoring re-scores conversations still open). If its event already
    /// left the window it counts as a lone conversation.
    #[must_use]
    pub fn peek(&self, r: &FlowRecord) -> ContextStats {
        let mut ctx = self.stats_of(r);
        ctx.src_flows = ctx.src_flows.max(1);
        ctx.src_dst_hosts = ctx.src_dst_hosts.max(1);
        ctx.src_dst_ports = ctx.src_dst_ports.max(1);
        ctx.dst_flows = ctx.dst_flows.max(1);
        ctx.dst_src_hosts = ctx.dst_src_hosts.max(1);
        ctx.src_protocols = ctx.src_protocols.max(1);
        ctx.svc_flows = ctx.svc_flows.max(1);
        ctx.long.src_dst_hosts = ctx.long.src_dst_hosts.max(1);
        ctx.long.src_dst_ports = ctx.long.src_dst_ports.max(1);
        ctx.long.svc_flows = ctx.long.svc_flows.max(1);
        ctx.long.dst_src_hosts = ctx.long.dst_src_hosts.max(1);
        ctx.long.pair_ports = ctx.long.pair_ports.max(1);
        ctx
    }

    fn stats_of(&self, r: &FlowRecord) -> ContextStats {
        let (src, dst) = (addr(r.src_ip), addr(r.dst_ip));
        let service = (dst, r.dst_port, r.protocol);
        let (empty_src, empty_dst) = (SourceState::default(), DestState::default());
        let out = self.short.sources.get(&src).unwrap_or(&empty_src);
        let into = self.short.destinations.get(&dst).unwrap_or(&empty_dst);
        let long_out = self.long.sources.get(&src).unwrap_or(&empty_src);
        let long_into = self.long.destinations.get(&dst).unwrap_or(&empty_dst);
        let empty_pair = PairState::default();
        let pair = self.long.pairs.as_ref().and_then(|p| p.get(&(src, dst))).unwrap_or(&empty_pair);
        ContextStats {
            src_flows: out.flows,
            src_dst_hosts: out.dst_hosts.len(),
            src_dst_ports: out.dst_ports.len(),
            src_unanswered_share: share(out.unanswered, out.attempts),
            src_failed: out.unanswered,
            src_bytes_out: out.bytes_out,
            src_bytes_in: out.bytes_back,
            dst_flows: into.flows,
            dst_src_hosts: into.src_hosts.len(),
            dst_unanswered_share: share(into.unanswered, into.attempts),
            dst_failed: into.unanswered,
            src_protocols: out.protocols.len(),
            svc_flows: out.services.count(&service),
            long: LongStats {
                src_dst_hosts: long_out.dst_hosts.len(),
                src_dst_ports: long_out.dst_ports.len(),
                src_failed: long_out.unanswered,
                svc_flows: long_out.services.count(&service),
                dst_src_hosts: long_into.src_hosts.len(),
                pair_ports: pair.ports.len(),
                pair_failed: pair.unanswered,
            },
        }
    }

    fn expire(&mut self) {
        for h in [&mut self.short, &mut self.long] {
            let horizon = self.latest_ns.saturating_sub(h.window_ns);
            let oldest = self.next_seq - self.events.len() as u64;
            while h.first_seq < self.next_seq {
                #[expect(clippy::cast_possible_truncation, reason = "an index into the queue")]
                let e = self.events[(h.first_seq - oldest) as usize];
                if e.at_ns >= horizon {
                    break;
                }
                h.apply(e, false);
                h.first_seq += 1;
            }
        }
        // The long horizon reaches at least as far back as the short one.
        let keep_from = self.short.first_seq.min(self.long.first_seq);
        while self.oldest_seq() < keep_from {
            self.events.pop_front();
        }
    }
}

impl Horizon {
    /// Adds (`add`) or removes an event's contribution.
    fn apply(&mut self, e: Event, add: bool) {
        let src = self.sources.entry(e.src).or_default();
        step(&mut src.flows, true, add);
        step(&mut src.attempts, e.attempt, add);
        step(&mut src.unanswered, e.unanswered, add);
        let service = (e.dst, e.dst_port, e.protocol);
        if add {
            src.bytes_out += e.bytes_out;
            src.bytes_back += e.bytes_back;
            src.dst_hosts.add(e.dst);
            src.dst_ports.add(e.dst_port);
            src.protocols.add(e.protocol);
            src.services.add(service);
        } else {
            src.bytes_out = src.bytes_out.saturating_sub(e.bytes_out);
            src.bytes_back = src.bytes_back.saturating_sub(e.bytes_back);
            src.dst_hosts.remove(e.dst);
            src.dst_ports.remove(e.dst_port);
            src.protocols.remove(e.protocol);
            src.services.remove(service);
            if src.flows == 0 {
                self.sources.swap_remove(&e.src);
            }
        }
        if let Some(pairs) = &mut self.pairs {
            let pair = pairs.entry((e.src, e.dst)).or_default();
            step(&mut pair.flows, true, add);
            step(&mut pair.unanswered, e.unanswered, add);
            if add {
                pair.ports.add(e.dst_port);
            } else {
                pair.ports.remove(e.dst_port);
                if pair.flows == 0 {
                    pairs.swap_remove(&(e.src, e.dst));
                }
            }
        }
        let dst = self.destinations.entry(e.dst).or_default();
        step(&mut dst.flows, true, add);
        step(&mut dst.attempts, e.attempt, add);
        step(&mut dst.unanswered, e.unanswered, add);
        if add {
            dst.src_hosts.add(e.src);
        } else {
            dst.src_hosts.remove(e.src);
            if dst.flows == 0 {
                self.destinations.swap_remove(&e.dst);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::flow::tests::record;

    #[test]
    fn event_and_host_sizes_match_the_memory_note() {
        assert_eq!(std::mem::size_of::<Event>(), 64);
        assert!(std::mem::size_of::<SourceState>() <= 136, "{}", std::mem::size_of::<SourceState>());
        assert!(std::mem::size_of::<DestState>() <= 48, "{}", std::mem::size_of::<DestState>());
    }

    #[test]
    fn scan_counts_ports_hosts_and_unanswered() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut last = ContextStats::default();
        for port in 1..=20 {
            let mut r = record(1, 2, port, u64::from(port));
            r.tcp_flags.ack = 0; // SYN only, nothing back: unanswered
            last = w.observe(&r, None);
        }
        assert_eq!((last.src_flows, last.src_dst_hosts, last.src_dst_ports), (20, 1, 20));
        assert!((last.src_unanswered_share - 1.0).abs() < f64::EPSILON);
        assert_eq!((last.src_failed, last.dst_failed), (20, 20));
        assert_eq!((last.dst_flows, last.dst_src_hosts), (20, 1));
        // A completed connection from another host to the same destination.
        let ok = w.observe(&record(3, 2, 80, 25), Some(&answer(3, 2, 80, 25)));
        assert_eq!((ok.src_flows, ok.src_unanswered_share.to_bits()), (1, 0f64.to_bits()));
        assert_eq!((ok.dst_flows, ok.dst_src_hosts), (21, 2));
        assert!((ok.dst_unanswered_share - 20.0 / 21.0).abs() < 1e-12);
    }

    /// The responder's answer to [`record`]`(src, dst, port, first_ms)`: SYN-ACK and ACKs.
    fn answer(src: u8, dst: u8, port: u16, first_ms: u64) -> FlowRecord {
        let mut r = record(dst, src, 40000, first_ms);
        r.src_port = port;
        r.tcp_flags = crate::flows::record::TcpFlagCounts { syn_ack: 1, ack: 3, ..Default::default() };
        r
    }

    #[test]
    fn bytes_back_come_from_the_source_s_own_conversations() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut reply = answer(1, 2, 80, 1);
        reply.bytes = 5000;
        let ctx = w.observe(&record(1, 2, 80, 1), Some(&reply));
        assert_eq!((ctx.src_bytes_out, ctx.src_bytes_in), (180, 5000));
        assert!(ctx.src_unanswered_share.abs() < f64::EPSILON, "answered with a SYN-ACK");
        // The responder starting a conversation of its own: what it sent as a responder is not
        // counted as its own sending.
        let ctx = w.observe(&record(2, 1, 53, 2), None);
        assert_eq!((ctx.src_bytes_out, ctx.src_bytes_in), (180, 0));
        assert!((ctx.src_unanswered_share - 1.0).abs() < f64::EPSILON, "nothing back");
    }

    #[test]
    fn a_revised_event_counts_the_answer_that_came_later() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut syn = record(1, 2, 80, 1);
        syn.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, ..Default::default() };
        let ctx = w.observe(&syn, None);
        assert_eq!((ctx.src_failed, ctx.src_bytes_in), (1, 0), "no answer yet");
        let seq = w.last_seq();
        w.observe(&record(3, 2, 80, 2), None);
        // The answer came, and the initiator completed the handshake.
        let done = record(1, 2, 80, 1);
        let mut back = answer(1, 2, 80, 1);
        back.bytes = 900;
        assert!(w.revise(seq, &done, Some(&back)));
        let ctx = w.peek(&done);
        assert_eq!((ctx.src_failed, ctx.src_bytes_in, ctx.src_flows), (0, 900, 1));
        assert_eq!(w.peek(&record(3, 2, 80, 2)).dst_failed, 1, "the other source's attempt still failed");
        // Once its event left the long horizon too, there is nothing to revise.
        w.advance(200_000_000_000);
        assert!(!w.revise(seq, &done, Some(&back)));
        assert!(w.is_empty());
    }

    #[test]
    fn rejected_and_half_open_attempts_fail_and_one_way_udp_is_not_an_attempt() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut syn = record(1, 2, 81, 1);
        syn.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, ..Default::default() };
        let mut rst = answer(1, 2, 81, 1);
        rst.tcp_flags = crate::flows::record::TcpFlagCounts { rst: 1, ack: 1, ..Default::default() };
        let ctx = w.observe(&syn, Some(&rst));
        assert_eq!(ctx.src_failed, 1, "REJ");
        // Half-open: the SYN-ACK came, the initiator reset instead of completing.
        let mut half = record(1, 2, 80, 2);
        half.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, rst: 1, ..Default::default() };
        let ctx = w.observe(&half, Some(&answer(1, 2, 80, 2)));
        assert_eq!((ctx.src_failed, ctx.dst_failed), (2, 2), "never completed");
        let mut udp = record(1, 3, 514, 3);
        udp.protocol = 17;
        let ctx = w.observe(&udp, None);
        assert_eq!(ctx.src_failed, 2, "one-way UDP is no attempt");
        let ctx = w.observe(&record(1, 2, 443, 4), Some(&answer(1, 2, 443, 4)));
        assert_eq!(ctx.src_failed, 2);
        assert!((ctx.src_unanswered_share - 2.0 / 3.0).abs() < 1e-12, "two of three TCP attempts");
    }

    #[test]
    fn old_flows_leave_and_hosts_are_forgotten() {
        let mut w = ContextWindow::new(Duration::from_secs(1));
        for i in 0..10 {
            w.observe(&record(1, 2, 80 + i, u64::from(i)), None);
        }
        // 5 s later everything before is out of the short window; the long one keeps it.
        let ctx = w.observe(&record(1, 3, 80, 5000), None);
        assert_eq!((ctx.src_flows, ctx.src_dst_hosts, ctx.src_dst_ports), (1, 1, 1));
        assert_eq!((ctx.long.src_dst_hosts, ctx.long.src_dst_ports), (2, 10));
        assert_eq!(w.hosts(), (1, 1), "host 10.0.0.2 is gone from the short window");
        // 3 minutes later from the long one too.
        w.advance(185_000_000_000);
        assert!(w.is_empty());
        assert!(w.long.sources.is_empty() && w.long.destinations.is_empty());
        assert!(w.long.pairs.as_ref().is_some_and(IndexMap::is_empty));
    }

    #[test]
    fn the_long_horizon_gathers_a_slow_scan_the_short_one_forgets() {
        // One refused probe every 2 s for 100 s: the 10 s window holds 5, the long one all 50.
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut last = ContextStats::default();
        for i in 0..50u16 {
            let mut syn = record(1, 2, 1000 + i, u64::from(i) * 2000);
            syn.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, ..Default::default() };
            last = w.observe(&syn, None);
        }
        // The short window holds the probes at 88, 90, ..., 98 s.
        assert_eq!((last.src_dst_ports, last.src_failed), (6, 6));
        assert_eq!((last.long.src_dst_ports, last.long.src_failed, last.long.src_dst_hosts), (50, 50, 1));
        assert_eq!((last.long.pair_ports, last.long.pair_failed), (50, 50), "one host's ports");
        assert_eq!(w.len(), 50, "events are kept for the long horizon");
        assert_eq!(w.hosts(), (1, 1));
        // 3 minutes later both horizons have forgotten it.
        let ctx = w.observe(&record(1, 2, 80, 280_000), Some(&answer(1, 2, 80, 280_000)));
        assert_eq!((ctx.src_dst_ports, ctx.long.src_dst_ports, ctx.long.src_failed), (1, 1, 0));
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn services_and_protocols_are_counted_per_source() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        // Password guessing: many sessions to one service; a sweep: one probe each to many hosts.
        for i in 0..30u64 {
            w.observe(&record(1, 2, 22, i * 100), Some(&answer(1, 2, 22, i * 100)));
        }
        let ctx = w.observe(&record(1, 2, 22, 3100), Some(&answer(1, 2, 22, 3100)));
        assert_eq!((ctx.svc_flows, ctx.long.svc_flows, ctx.src_dst_ports, ctx.src_protocols), (31, 31, 1, 1));
        // Another service of the same host is a service of its own.
        let ctx = w.observe(&record(1, 2, 80, 3200), None);
        assert_eq!((ctx.svc_flows, ctx.src_dst_ports), (1, 2));
        // A protocol scan: the same host under many IP protocols.
        let mut ctx = ContextStats::default();
        for proto in 0..=40u8 {
            let mut r = record(3, 2, 0, 4000);
            r.protocol = proto;
            ctx = w.observe(&r, None);
        }
        assert_eq!((ctx.src_protocols, ctx.svc_flows, ctx.src_dst_hosts), (41, 1, 1));
        assert_eq!(ctx.long.dst_src_hosts, 2, "hosts 1 and 3 reached host 2");
        // Host 1 reached two ports of host 2; host 3 reached one (port 0) under many protocols.
        assert_eq!(w.peek(&record(1, 2, 22, 3300)).long.pair_ports, 2);
        assert_eq!(ctx.long.pair_ports, 1);
    }

    #[test]
    fn a_revision_reaches_both_horizons_and_the_cap_both_too() {
        let mut w = ContextWindow::with_capacity(Duration::from_secs(10), 3);
        let mut syn = record(1, 2, 80, 0);
        syn.tcp_flags = crate::flows::record::TcpFlagCounts { syn: 1, ..Default::default() };
        w.observe(&syn, None);
        let seq = w.last_seq();
        // 20 s later the event is out of the short horizon but still in the long one.
        w.advance(20_000_000_000);
        assert!(w.revise(seq, &record(1, 2, 80, 0), Some(&answer(1, 2, 80, 0))));
        let ctx = w.peek(&record(1, 2, 80, 0));
        assert_eq!((ctx.src_failed, ctx.long.src_failed, ctx.long.svc_flows), (0, 0, 1));
        // The cap evicts from both horizons.
        for i in 0..5u16 {
            w.observe(&record(4, 5, i, 21_000), None);
        }
        assert_eq!(w.len(), 3);
        assert!(w.long.sources.len() == 1 && w.short.sources.len() == 1, "only host 4 is left");
    }

    #[test]
    fn event_cap_bounds_memory() {
        let mut w = ContextWindow::with_capacity(Duration::from_hours(1), 100);
        for i in 0..1000u16 {
            w.observe(&record((i % 250) as u8, 2, i, u64::from(i)), None);
        }
        assert_eq!(w.len(), 100);
        assert!(w.long.sources.len() <= 100 && w.long.destinations.len() == 1);
        // Popped before pushed: the queue never held more than the cap.
        assert!(w.events.capacity() < 200, "capacity {}", w.events.capacity());
    }

    #[test]
    fn distinct_sets_stay_exact_inline_and_spilled() {
        let mut d = Distinct::default();
        for v in [7u16, 7, 8, 9, 8] {
            d.add(v);
        }
        assert_eq!(d.len(), 3);
        for v in [9, 8, 8] {
            d.remove(v);
        }
        assert!(matches!(d, Distinct::One(7, 2)), "back inline: {d:?}");
        d.remove(7);
        d.remove(7);
        assert!(matches!(d, Distinct::Empty));
        d.remove(7);
        assert_eq!(d.len(), 0);
    }

    #[test]
    fn ipv4_and_ipv6_hosts_are_distinct_keys() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut v6 = record(1, 2, 80, 0);
        v6.src_ip = "2001:db8::1".parse().expect("ip");
        w.observe(&v6, None);
        let ctx = w.observe(&record(1, 2, 80, 1), None);
        assert_eq!((ctx.src_flows, ctx.dst_flows, ctx.dst_src_hosts), (1, 2, 2));
    }

    #[test]
    fn observe_at_uses_the_given_clock_not_the_records() {
        // Live: records carry wall times that may jump; the window runs on the given clock.
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let s = 1_000_000_000;
        let mut ctx = ContextStats::default();
        for i in 0..200u16 {
            // Wall time goes back an hour halfway; the event clock keeps going.
            let wall_ms = if i < 100 { 3_600_000 + u64::from(i) * 1000 } else { u64::from(i) * 1000 };
            ctx = w.observe_at(&record(1, 2, i, wall_ms), None, u64::from(i) * s);
        }
        assert_eq!(ctx.src_flows, 11, "the last 10 s of the event clock, whatever the records say");
        assert_eq!(w.len(), 121, "and the last 2 minutes");
    }
}
