//! Names and sizes of the kernel maps, so the XDP program and userspace cannot disagree.
//!
//! Map names are limited to 15 bytes by the kernel (`BPF_OBJ_NAME_LEN`).

/// The flow table is split into [`FLOW_SHARDS`] per-CPU LRU hashes of
/// [`crate::flow::FlowKey`] to [`crate::flow::FlowStats`], one per name here; a flow's shard is
/// [`crate::flow::FlowKey::shard`]. Userspace scans the shards in parallel, which halves the
/// harvest's wall time (the scan is bound by cache misses in the kernel, not by one core).
pub const FLOWS: [&str; FLOW_SHARDS] = ["VIGIL_FLOWS0", "VIGIL_FLOWS1"];
/// Number of flow-table shards.
pub const FLOW_SHARDS: usize = 2;
/// Per-CPU array of [`crate::counters::Counters`], one entry per hook, indexed by
/// [`crate::counters::Direction`].
pub const COUNTERS: &str = "VIGIL_COUNTERS";
/// LPM trie of IPv4 source prefixes to [`crate::blocklist::BlockRule`].
pub const BLOCK_V4: &str = "VIGIL_BLOCK_V4";
/// LPM trie of IPv6 source prefixes to [`crate::blocklist::BlockRule`].
pub const BLOCK_V6: &str = "VIGIL_BLOCK_V6";

/// Array with one `u32`: the [`LAYOUT_VERSION`] of the build that created the pinned maps.
/// The program never reads it; it exists so a restarted agent, or one of another build,
/// can tell whether pinned maps hold what it expects before reusing them.
pub const LAYOUT: &str = "VIGIL_LAYOUT";
/// Version of the layout of everything shared with the kernel: map keys and values
/// ([`crate::flow::FlowKey`], [`crate::flow::FlowStats`], [`crate::counters::Counters`],
/// [`crate::blocklist::BlockRule`]), map types and sizes, and what their fields mean. Bump
/// it with any change to them: an agent refuses pinned maps of another version.
///
/// 3: the counters map holds one entry per [`crate::counters::Direction`] (the TC egress hook).
pub const LAYOUT_VERSION: u32 = 3;

/// Name of the sensor program in the object file (XDP, ingress).
pub const PROGRAM: &str = "vigil";
/// Name of the empty `XDP_PASS` program shipped beside it, the floor for benchmarks.
pub const PROGRAM_EMPTY: &str = "vigil_pass";
/// Name of the egress sensor program (TC classifier): the same parser and flow update, no
/// blocklist.
pub const PROGRAM_EGRESS: &str = "vigil_egress";
/// Name of the empty TC program beside it (returns `TC_ACT_UNSPEC`), the floor for benchmarks.
pub const PROGRAM_EGRESS_EMPTY: &str = "vigil_egress_pass";

/// Flow table capacity compiled into the object; the agent overrides it at load time.
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;
/// Blocklist capacity per address family.
pub const BLOCKLIST_CAPACITY: u32 = 65_536;

/// `BPF_F_NO_PREALLOC`: LPM tries require it.
pub const BPF_F_NO_PREALLOC: u32 = 1;
