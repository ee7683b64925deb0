//! Per-source and per-destination context over a sliding window of recent flows.
//!
//! Each flow is an event at its first packet's time. The window keeps the events of the last
//! `window` of capture or wall time and, incrementally, for every host: how many flows it
//! started, how many distinct hosts and ports it reached, how many of its TCP attempts went
//! unanswered or were reset, and the bytes it sent and received; for every destination: how
//! many flows and distinct sources reached it and how many attempts to it failed. Adding and
//! expiring an event are O(1) on average, and the event count is capped so memory is bounded
//! under a flood.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    hash::Hash,
    net::IpAddr,
    time::Duration,
};

use crate::flows::FlowRecord;

/// Default window: long enough to gather a slow scan's attempts, short enough to follow change.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// Default cap on events kept in the window (oldest dropped first): the default flow table's
/// size. About 0.5 kB per event when every flow has a source of its own (a spoofed flood),
/// so the window stays under ~150 MB; at 1 << 20 the spoofed-flood bench measured ~700 MB.
pub const DEFAULT_MAX_EVENTS: usize = 1 << 18;

/// Context of one flow's source and destination, including the flow itself.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ContextStats {
    pub src_flows: u32,
    pub src_dst_hosts: u32,
    pub src_dst_ports: u32,
    pub src_unanswered_share: f64,
    pub src_bytes_out: u64,
    pub src_bytes_in: u64,
    pub dst_flows: u32,
    pub dst_src_hosts: u32,
    pub dst_unanswered_share: f64,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    at_ns: u64,
    src: IpAddr,
    dst: IpAddr,
    dst_port: u16,
    attempt: bool,
    unanswered: bool,
    bytes: u64,
}

/// A multiset: value → occurrences, whose length is the distinct count.
#[derive(Debug)]
struct Distinct<T: Hash + Eq>(HashMap<T, u32>);

impl<T: Hash + Eq> Default for Distinct<T> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<T: Hash + Eq> Distinct<T> {
    fn add(&mut self, v: T) {
        *self.0.entry(v).or_insert(0) += 1;
    }

    fn remove(&mut self, v: T) {
        if let Entry::Occupied(mut e) = self.0.entry(v) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }

    #[expect(clippy::cast_possible_truncation, reason = "bounded by the event cap")]
    fn len(&self) -> u32 {
        self.0.len() as u32
    }
}

/// What the window knows about one host.
#[derive(Debug, Default)]
struct HostState {
    /// Events that mention this host (as source or destination); removed at zero.
    refs: u32,
    // As a source.
    flows_out: u32,
    attempts_out: u32,
    unanswered_out: u32,
    bytes_out: u64,
    dst_hosts: Distinct<IpAddr>,
    dst_ports: Distinct<u16>,
    // As a destination.
    flows_in: u32,
    attempts_in: u32,
    unanswered_in: u32,
    bytes_in: u64,
    src_hosts: Distinct<IpAddr>,
}

/// The sliding window. Feed records in order of their first packet (small disorder is
/// tolerated: expiry follows the latest time seen).
#[derive(Debug)]
pub struct ContextWindow {
    window_ns: u64,
    max_events: usize,
    latest_ns: u64,
    events: VecDeque<Event>,
    hosts: HashMap<IpAddr, HostState>,
}

fn share(part: u32, whole: u32) -> f64 {
    if whole == 0 { 0.0 } else { f64::from(part) / f64::from(whole) }
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
        Self {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            max_events: max_events.max(1),
            latest_ns: 0,
            events: VecDeque::new(),
            hosts: HashMap::new(),
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

    /// Adds the flow and returns the context of its source and destination, this flow included.
    pub fn observe(&mut self, r: &FlowRecord) -> ContextStats {
        self.latest_ns = self.latest_ns.max(r.first_seen_ns);
        self.expire();
        let tcp_attempt = r.protocol == 6 && r.tcp_flags.syn > 0;
        let event = Event {
            at_ns: r.first_seen_ns,
            src: r.src_ip,
            dst: r.dst_ip,
            dst_port: r.dst_port,
            attempt: tcp_attempt,
            // Never acknowledged a SYN+ACK (no ACK beyond the SYN+ACKs), or reset.
            unanswered: tcp_attempt && (r.tcp_flags.ack <= r.tcp_flags.syn_ack || r.tcp_flags.rst > 0),
            bytes: r.bytes,
        };
        self.apply(event, true);
        self.events.push_back(event);
        if self.events.len() > self.max_events
            && let Some(old) = self.events.pop_front()
        {
            self.apply(old, false);
        }
        self.stats_of(r)
    }

    /// Moves the window's end to `now_ns` (same clock as the records), expiring older flows.
    pub fn advance(&mut self, now_ns: u64) {
        self.latest_ns = self.latest_ns.max(now_ns);
        self.expire();
    }

    /// The context of a flow observed earlier, without adding it again (live scoring re-scores
    /// flows still open). If its events already left the window it counts as a lone flow.
    #[must_use]
    pub fn peek(&self, r: &FlowRecord) -> ContextStats {
        let mut ctx = self.stats_of(r);
        ctx.src_flows = ctx.src_flows.max(1);
        ctx.src_dst_hosts = ctx.src_dst_hosts.max(1);
        ctx.src_dst_ports = ctx.src_dst_ports.max(1);
        ctx.dst_flows = ctx.dst_flows.max(1);
        ctx.dst_src_hosts = ctx.dst_src_hosts.max(1);
        ctx
    }

    fn stats_of(&self, r: &FlowRecord) -> ContextStats {
        let empty = HostState::default();
        let src = self.hosts.get(&r.src_ip).unwrap_or(&empty);
        let dst = self.hosts.get(&r.dst_ip).unwrap_or(&empty);
        ContextStats {
            src_flows: src.flows_out,
            src_dst_hosts: src.dst_hosts.len(),
            src_dst_ports: src.dst_ports.len(),
            src_unanswered_share: share(src.unanswered_out, src.attempts_out),
            src_bytes_out: src.bytes_out,
            src_bytes_in: src.bytes_in,
            dst_flows: dst.flows_in,
            dst_src_hosts: dst.src_hosts.len(),
            dst_unanswered_share: share(dst.unanswered_in, dst.attempts_in),
        }
    }

    fn expire(&mut self) {
        let horizon = self.latest_ns.saturating_sub(self.window_ns);
        while let Some(e) = self.events.front().copied() {
            if e.at_ns >= horizon {
                break;
            }
            self.events.pop_front();
            self.apply(e, false);
        }
    }

    /// Adds (`add`) or removes an event's contribution.
    fn apply(&mut self, e: Event, add: bool) {
        let step = |v: &mut u32, on: bool| {
            if on {
                *v = if add { *v + 1 } else { v.saturating_sub(1) };
            }
        };
        let src = self.hosts.entry(e.src).or_default();
        step(&mut src.refs, true);
        step(&mut src.flows_out, true);
        step(&mut src.attempts_out, e.attempt);
        step(&mut src.unanswered_out, e.unanswered);
        if add {
            src.bytes_out += e.bytes;
            src.dst_hosts.add(e.dst);
            src.dst_ports.add(e.dst_port);
        } else {
            src.bytes_out = src.bytes_out.saturating_sub(e.bytes);
            src.dst_hosts.remove(e.dst);
            src.dst_ports.remove(e.dst_port);
        }
        let dst = self.hosts.entry(e.dst).or_default();
        step(&mut dst.refs, true);
        step(&mut dst.flows_in, true);
        step(&mut dst.attempts_in, e.attempt);
        step(&mut dst.unanswered_in, e.unanswered);
        if add {
            dst.bytes_in += e.bytes;
            dst.src_hosts.add(e.src);
        } else {
            dst.bytes_in = dst.bytes_in.saturating_sub(e.bytes);
            dst.src_hosts.remove(e.src);
        }
        if !add {
            for host in [e.src, e.dst] {
                if self.hosts.get(&host).is_some_and(|h| h.refs == 0) {
                    self.hosts.remove(&host);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::flow::tests::record;

    #[test]
    fn scan_counts_ports_hosts_and_unanswered() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut last = ContextStats::default();
        for port in 1..=20 {
            let mut r = record(1, 2, port, u64::from(port));
            r.tcp_flags.ack = 0; // SYN only: unanswered
            last = w.observe(&r);
        }
        assert_eq!((last.src_flows, last.src_dst_hosts, last.src_dst_ports), (20, 1, 20));
        assert!((last.src_unanswered_share - 1.0).abs() < f64::EPSILON);
        assert_eq!((last.dst_flows, last.dst_src_hosts), (20, 1));
        // A completed connection from another host to the same destination.
        let ok = w.observe(&record(3, 2, 80, 25));
        assert_eq!((ok.src_flows, ok.src_unanswered_share.to_bits()), (1, 0f64.to_bits()));
        assert_eq!((ok.dst_flows, ok.dst_src_hosts), (21, 2));
        assert!((ok.dst_unanswered_share - 20.0 / 21.0).abs() < 1e-12);
    }

    #[test]
    fn bytes_in_come_from_the_reverse_direction() {
        let mut w = ContextWindow::new(Duration::from_secs(10));
        let mut reply = record(2, 1, 40000, 1);
        reply.bytes = 5000;
        w.observe(&reply);
        let ctx = w.observe(&record(1, 2, 80, 2));
        assert_eq!((ctx.src_bytes_out, ctx.src_bytes_in), (180, 5000));
    }

    #[test]
    fn old_flows_leave_and_hosts_are_forgotten() {
        let mut w = ContextWindow::new(Duration::from_secs(1));
        for i in 0..10 {
            w.observe(&record(1, 2, 80 + i, u64::from(i)));
        }
        // 5 s later everything before is out of the window.
        let ctx = w.observe(&record(1, 3, 80, 5000));
        assert_eq!((ctx.src_flows, ctx.src_dst_hosts, ctx.src_dst_ports), (1, 1, 1));
        assert_eq!(w.len(), 1);
        assert_eq!(w.hosts.len(), 2, "host 10.0.0.2 is gone");
    }

    #[test]
    fn event_cap_bounds_memory() {
        let mut w = ContextWindow::with_capacity(Duration::from_hours(1), 100);
        for i in 0..1000u16 {
            w.observe(&record((i % 250) as u8, 2, i, u64::from(i)));
        }
        assert_eq!(w.len(), 100);
        assert!(w.hosts.len() <= 101);
    }
}
