//! Vigil's sensor programs: XDP on ingress (blocklist first, then one flow-table update per
//! packet) and a TC classifier on egress (the same parser and flow update, no blocklist).
//!
//! Every packet is counted, per direction; malformed ones are counted by reason and passed;
//! packets arriving from a blocked source prefix whose rule has not expired are dropped;
//! everything else updates its flow in a per-CPU LRU hash and is passed. Both hooks feed the
//! same flow table, keyed by the packet's own source and destination: the host's replies are
//! the reverse key of the requests, and the agent pairs them into conversations at harvest.
//! The XDP program never returns `XDP_ABORTED`; the TC program never stops a packet.
#![no_std]
#![no_main]
// `atomic_xadd` compiles to a BPF atomic add; `AtomicU64::fetch_add` is not offered on the BPF
// target because it has no compare-and-swap.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add on the BPF target")]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    blocklist::BlockRule,
    counters::{Counters, Direction},
    flow::{FlowKey, FlowStats, IP_V4, PacketMeta},
    maps::{BLOCKLIST_CAPACITY, DEFAULT_FLOW_CAPACITY},
    parse::{L3, MAX_OFFSET, Packet},
    pipeline::{self, Step},
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns},
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
    programs::{TcContext, XdpContext},
};

// The flow table's shards (`agent_common::maps::FLOWS`); the agent sizes each at load time.
#[map]
static VIGIL_FLOWS0: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY / 2, 0);

#[map]
static VIGIL_FLOWS1: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY / 2, 0);

#[map]
static VIGIL_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Direction::ENTRIES, 0);

#[map]
static VIGIL_BLOCK_V4: LpmTrie<[u8; 4], BlockRule> = LpmTrie::with_max_entries(BLOCKLIST_CAPACITY, 0);

#[map]
static VIGIL_BLOCK_V6: LpmTrie<[u8; 16], BlockRule> = LpmTrie::with_max_entries(BLOCKLIST_CAPACITY, 0);

/// The layout version of the build that created the pinned maps (`agent_common::maps::LAYOUT`),
/// written and checked by the agent; no program reads it.
#[map]
static VIGIL_LAYOUT: Array<u32> = Array::with_max_entries(1, 0);

/// The packet between `data` and `data_end`, read with checks the verifier can follow.
struct XdpPacket {
    data: usize,
    data_end: usize,
}

impl Packet for XdpPacket {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        (self.data_end - self.data) as u32
    }

    #[inline(always)]
    fn available(&self) -> usize {
        self.data_end - self.data
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        read(self.data, self.data_end, offset)
    }
}

/// The `N` bytes at `offset` of the packet data between `data` and `data_end`, with the
/// checks the verifier follows.
#[inline(always)]
fn read<const N: usize>(data: usize, data_end: usize, offset: usize) -> Option<[u8; N]> {
    if offset > MAX_OFFSET {
        return None;
    }
    let start = data + offset;
    if start + N > data_end {
        return None;
    }
    // SAFETY: `[start, start + N)` lies inside the packet data (checked above) and `[u8; N]` has
    // alignment 1.
    Some(unsafe { *(start as *const [u8; N]) })
}

/// The packet of a TC program: the linear part of the buffer between `data` and `data_end`,
/// with the length and GSO shape of the whole buffer.
struct SkbPacket {
    data: usize,
    data_end: usize,
    len: u32,
    gso_segs: u32,
    gso_size: u32,
}

impl Packet for SkbPacket {
    #[inline(always)]
    fn wire_len(&self) -> u32 {
        self.len
    }

    #[inline(always)]
    fn available(&self) -> usize {
        self.data_end - self.data
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        read(self.data, self.data_end, offset)
    }

    #[inline(always)]
    fn gso(&self) -> (u32, u32) {
        (self.gso_segs, self.gso_size)
    }
}

/// Headers pulled into the linear part of a buffer whose linear part is shorter: enough for
/// VLAN tags, IPv6 with a few extension headers, and TCP with options.
const PULL_LEN: u32 = 256;

#[xdp]
pub fn vigil(ctx: XdpContext) -> u32 {
    try_vigil(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The floor for benchmarks: an XDP program that does nothing but pass.
#[xdp]
pub fn vigil_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The egress sensor: counts the host's own packets into the same flow table. It never changes
/// or stops a packet (`TC_ACT_UNSPEC`: the next program, or the default action, decides).
///
/// Parsing and the flow update are two BPF functions called one after the other: inlined
/// into one, the GSO arithmetic leaves LLVM more than the 512-byte stack, and nested, their
/// frames add up past it. Side by side only the packet's metadata is shared.
#[classifier]
pub fn vigil_egress(ctx: TcContext) -> i32 {
    let mut meta = PacketMeta::default();
    if egress_parse(&ctx, &mut meta) {
        egress_flow(&meta);
    }
    TC_ACT_UNSPEC
}

/// The floor for benchmarks: a TC program that does nothing.
#[classifier]
pub fn vigil_egress_pass(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Counts the packet and parses it into `meta`; whether it goes to the flow table.
#[inline(never)]
fn egress_parse(ctx: &TcContext, meta: &mut PacketMeta) -> bool {
    let Some(counters) = VIGIL_COUNTERS.get_ptr_mut(Direction::Egress as u32) else { return false };
    // SAFETY: as in `try_vigil`.
    let counters = unsafe { &mut *counters };
    let len = ctx.len();
    // Sends from local sockets have their headers in the linear part; anything else (a
    // forwarded or tunnelled buffer) gets them pulled in, if the kernel can.
    let wanted = if len < PULL_LEN { len } else { PULL_LEN };
    if ((ctx.data_end() - ctx.data()) as u32) < wanted {
        let _ = ctx.pull_data(wanted);
    }
    // SAFETY: `skb` points at the program's context for the whole run.
    let (gso_segs, gso_size) = unsafe { ((*ctx.skb.skb).gso_segs, (*ctx.skb.skb).gso_size) };
    let packet = SkbPacket { data: ctx.data(), data_end: ctx.data_end(), len, gso_segs, gso_size };
    match pipeline::ingest(&packet, counters, |_, _| false) {
        Step::Flow(m) => {
            *meta = m;
            true
        }
        Step::Pass | Step::Drop => false,
    }
}

/// Applies an egress packet to its flow.
#[inline(never)]
fn egress_flow(meta: &PacketMeta) {
    let Some(counters) = VIGIL_COUNTERS.get_ptr_mut(Direction::Egress as u32) else { return };
    // SAFETY: as in `try_vigil`.
    let counters = unsafe { &mut *counters };
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let table = if meta.key.shard() == 0 { &VIGIL_FLOWS0 } else { &VIGIL_FLOWS1 };
    update_flow(table, meta, now, counters);
}

#[inline(always)]
fn try_vigil(ctx: &XdpContext) -> Option<u32> {
    let counters = VIGIL_COUNTERS.get_ptr_mut(Direction::Ingress as u32)?;
    // SAFETY: a per-CPU array value is only touched by this CPU, and no other reference exists.
    let counters = unsafe { &mut *counters };
    let packet = XdpPacket { data: ctx.data(), data_end: ctx.data_end() };
    let meta = match pipeline::ingest(&packet, counters, is_blocked) {
        Step::Flow(meta) => meta,
        Step::Pass => return Some(xdp_action::XDP_PASS),
        Step::Drop => return Some(xdp_action::XDP_DROP),
    };

    // Read the clock only once the packet is known to reach the flow table: on this
    // class of VM it is the single most expensive step of the program.
    // SAFETY: `bpf_ktime_get_ns` has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let table = if meta.key.shard() == 0 { &VIGIL_FLOWS0 } else { &VIGIL_FLOWS1 };
    update_flow(table, &meta, now, counters);
    Some(xdp_action::XDP_PASS)
}

/// Applies the packet to its flow, creating the flow if needed.
#[inline(always)]
fn update_flow(table: &LruPerCpuHashMap<FlowKey, FlowStats>, meta: &PacketMeta, now: u64, counters: &mut Counters) {
    if let Some(stats) = table.get_ptr_mut(&meta.key) {
        // SAFETY: the per-CPU value belongs to this CPU; the map keeps it alive for the program.
        unsafe { (*stats).update(meta, now) };
        return;
    }
    let stats = FlowStats::first(meta, now);
    match table.insert(&meta.key, &stats, u64::from(BPF_NOEXIST)) {
        Ok(()) => counters.flows_created += 1,
        // Another CPU created the flow between our lookup and insert: update our slot.
        Err(_) => match table.get_ptr_mut(&meta.key) {
            // SAFETY: as above.
            Some(stats) => unsafe { (*stats).update(meta, now) },
            None => counters.flow_insert_failed += 1,
        },
    }
}

/// Whether an active blocklist rule covers the packet's source. Expired rules met on the way
/// are deleted (the kernel enforces expiry), then the lookup is repeated once so a shorter,
/// still active prefix behind an expired longer one keeps applying.
///
/// Expiry is checked against `CLOCK_MONOTONIC_COARSE` (same base as the agent's
/// `CLOCK_MONOTONIC`, at most one tick behind), read only when a rule matches: a rule may
/// outlive its TTL by a few milliseconds, and packets with no rule pay nothing for the clock.
#[inline(always)]
fn is_blocked(l3: &L3, counters: &mut Counters) -> bool {
    let src = &l3.key.src_addr;
    for _ in 0..2 {
        let hit = if l3.key.ip_version == IP_V4 {
            check_trie(&VIGIL_BLOCK_V4, 32, [src[12], src[13], src[14], src[15]])
        } else {
            check_trie(&VIGIL_BLOCK_V6, 128, *src)
        };
        match hit {
            None => return false,
            Some(true) => return true,
            Some(false) => counters.blocklist_expired += 1,
        }
    }
    false
}

/// Looks up the rule covering `addr` (`bits` long) in one trie: `None` if there is none,
/// `Some(true)` (drop counted on the rule) if it is active, `Some(false)` if it had expired and
/// was deleted, by its own prefix length since trie deletes are exact-match.
#[inline(always)]
fn check_trie<A: Copy>(trie: &LpmTrie<A, BlockRule>, bits: u32, addr: A) -> Option<bool> {
    let rule = trie.get(Key::new(bits, addr))?;
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if rule.is_active(now) {
        // SAFETY: `drops` is a u64 inside a live map value; concurrent CPUs update it with
        // atomic adds only.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(core::ptr::addr_of!(rule.drops).cast_mut(), 1) };
        Some(true)
    } else {
        let _ = trie.remove(Key::new(rule.prefix_len, addr));
        Some(false)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
