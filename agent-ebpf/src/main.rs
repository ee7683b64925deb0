//! Vigil's XDP sensor: blocklist first, then one flow-table update per packet.
//!
//! Every packet is counted; malformed ones are counted by reason and passed; packets from a
//! blocked source prefix whose rule has not expired are dropped; everything else updates its
//! flow in a per-CPU LRU hash and is passed. The program never returns `XDP_ABORTED`.
#![no_std]
#![no_main]
// `atomic_xadd` compiles to a BPF atomic add; `AtomicU64::fetch_add` is not offered on the BPF
// target because it has no compare-and-swap.
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd is the only atomic add on the BPF target")]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use agent_common::{
    blocklist::BlockRule,
    counters::Counters,
    flow::{FlowKey, FlowStats, IP_V4, PacketMeta},
    maps::{BLOCKLIST_CAPACITY, DEFAULT_FLOW_CAPACITY},
    parse::{L3, MAX_OFFSET, Packet},
    pipeline::{self, Step},
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::{bpf_ktime_get_ns, generated::bpf_ktime_get_coarse_ns},
    macros::{map, xdp},
    maps::{Array, LpmTrie, LruPerCpuHashMap, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};

// The flow table's shards (`agent_common::maps::FLOWS`); the agent sizes each at load time.
#[map]
static VIGIL_FLOWS0: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY / 2, 0);

#[map]
static VIGIL_FLOWS1: LruPerCpuHashMap<FlowKey, FlowStats> =
    LruPerCpuHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY / 2, 0);

#[map]
static VIGIL_COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(1, 0);

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
        if offset > MAX_OFFSET {
            return None;
        }
        let start = self.data + offset;
        if start + N > self.data_end {
            return None;
        }
        // SAFETY: `[start, start + N)` lies inside the packet (checked above) and `[u8; N]` has
        // alignment 1.
        Some(unsafe { *(start as *const [u8; N]) })
    }
}

#[xdp]
pub fn vigil(ctx: XdpContext) -> u32 {
    try_vigil(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// The floor for benchmarks: an XDP program that does nothing but pass.
#[xdp]
pub fn vigil_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn try_vigil(ctx: &XdpContext) -> Option<u32> {
    let counters = VIGIL_COUNTERS.get_ptr_mut(0)?;
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
