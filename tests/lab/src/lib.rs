//! Vigil's lab, behind `cargo xtask lab` and `cargo xtask eval-live` (the `vigil-lab` binary):
//! scenarios of benign traffic and attacks played against a running agent, and the live
//! evaluation that replays labelled captures into it. Needs root (network namespaces, XDP).
//!
//! The building blocks (namespaces, the three-host LAN, the agent process, Ctrl-C handling)
//! are the test-support library `vigil-tests`, shared with the privileged tests and benchmarks.
//! What only the lab uses lives here.

pub mod eval_live;
pub mod pcapreplay;
pub mod scenario;
