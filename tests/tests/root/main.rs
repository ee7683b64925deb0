//! Vigil's privileged integration tests, as root: one test binary, a module per feature.
//!
//! Every test here needs root (`CAP_BPF`, `CAP_NET_ADMIN`, `CAP_SYS_ADMIN`): it loads the XDP
//! program, runs it with `BPF_PROG_TEST_RUN`, pins it, or builds network namespaces and sends
//! bounded traffic between them. Run them one at a time:
//!
//! ```text
//! cargo test -p vigil-tests --test root -- --test-threads=1              # all of them
//! cargo test -p vigil-tests --test root -- netns_live:: --test-threads=1  # one module
//! ```
//!
//! `cargo xtask test` runs them after the host tests. How to add one: tests/README.md.

mod behaviour_live;
mod blocklist_live;
mod classifier_live;
mod console_live;
mod egress;
mod egress_live;
mod evasion_live;
mod fleet_live;
mod host_replay;
mod kernel_host_equivalence;
mod learn_live;
mod model_run;
mod netns_live;
mod pin_safety;
mod prog_test_run;
mod response_live;
mod store_live;
