//! Definitions shared by Vigil's XDP program (`agent-ebpf`) and its userspace agent (`agent`).
//!
//! Everything that crosses the kernel/userspace boundary is defined here once: map names and
//! sizes, map keys and values, and the per-packet code itself. The kernel runs [`parse`] and
//! [`flow::FlowStats::update`] on every packet; the pcap path runs the very same functions on
//! captured frames, so live and offline flow records are built identically.
#![no_std]
// Everything here runs inside the XDP program, where the verifier needs it inlined: BPF
// function calls cannot pass packet pointers around the way the parser does.
#![expect(clippy::inline_always, reason = "eBPF code must be inlined for the verifier")]

pub mod blocklist;
pub mod counters;
pub mod flow;
pub mod maps;
pub mod parse;
pub mod pipeline;
pub mod proto;

/// Asserts at compile time that a type shared with the kernel has exactly the expected size,
/// so a field added without thought to padding fails the build instead of the verifier.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made of integers and byte arrays only, and its
    // size is asserted to have no implicit padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for crate::flow::FlowKey {}
    unsafe impl aya::Pod for crate::flow::FlowStats {}
    unsafe impl aya::Pod for crate::counters::Counters {}
    unsafe impl aya::Pod for crate::blocklist::BlockRule {}
}
