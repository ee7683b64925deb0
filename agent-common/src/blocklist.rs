//! Blocklist rules: the value stored for each source prefix in the LPM tries.

/// A drop rule for one source prefix.
///
/// The kernel enforces `expires_ns` itself: once `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`)
/// passes it, the program deletes the rule on the next matching packet and lets the packet
/// through, so a rule lapses on time even if the agent is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockRule {
    /// `CLOCK_MONOTONIC` nanoseconds after which the rule no longer applies.
    pub expires_ns: u64,
    /// `CLOCK_MONOTONIC` nanoseconds at which the rule was installed.
    pub created_ns: u64,
    /// Packets dropped by this rule (updated atomically by the kernel).
    pub drops: u64,
    /// The rule's own prefix length, so the kernel can delete it when it finds it expired
    /// (LPM trie deletes are exact-match on prefix length).
    pub prefix_len: u32,
    /// Who installed it: [`ORIGIN_MANUAL`], [`ORIGIN_AUTO`] or [`ORIGIN_FLEET`]. The kernel
    /// ignores it.
    pub origin: u32,
}

/// A rule added by an operator (`vigil block add`).
pub const ORIGIN_MANUAL: u32 = 0;
/// A rule added by the agent's auto-block.
pub const ORIGIN_AUTO: u32 = 1;
/// A rule of the fleet blocklist (a NATS `JetStream` key-value bucket) the agent follows.
pub const ORIGIN_FLEET: u32 = 2;
crate::assert_size!(BlockRule, 32);

impl BlockRule {
    /// Whether the rule still applies at `now_ns` (`CLOCK_MONOTONIC`).
    #[inline(always)]
    #[must_use]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}
