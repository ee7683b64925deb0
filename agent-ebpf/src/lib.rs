#![no_std]
// This file exists so that `agent/build.rs` can depend on this crate as a build-dependency,
// which makes cargo rebuild the agent when the eBPF program's dependencies change.
