//! Vigil's userspace agent and its offline tools.
//!
//! The binary (`vigil`, `src/main.rs`) is a thin command-line layer over this library; the
//! integration tests, the lab and the benchmarks drive the same library. By job:
//!
//! - **Kernel side.** [`sensor`] loads, checks, pins and attaches the XDP program; [`block`]
//!   reads and writes its blocklist (the [`block::RuleStore`] seam); [`net`] finds the default
//!   route; [`private_dir`] keeps the pin and run directories the agent's own.
//! - **The live path.** [`run`] checks the configuration and wires the parts; [`live`] is the
//!   agent's cycle, Harvest ([`flows`]) -> Score ([`detect::score`], [`features`], [`model`])
//!   -> Decide ([`detect::engine`], typed [`detect::Decision`]s) -> Deliver ([`alert::ecs`],
//!   [`alert::sink`]), with [`metrics`] and the status file of [`control`]; [`throttle`] is
//!   the throttled failure log of sinks and local outputs.
//! - **Learning the network.** [`learn`] is the learning phase: a stratified sample of the
//!   host's own conversations, a site model trained on it in the background, validated and
//!   swapped in.
//! - **Configuration and clocks.** [`config`] (the TOML file), [`duration_serde`] (durations in
//!   it), [`clock`] (the kernel's monotonic clock and wall time).
//! - **Offline.** [`capture`] reads pcap/pcapng, [`replay`] turns captures into flow records
//!   through the kernel's own per-packet code, [`model`] trains and signs bundles, and `eval`
//!   (feature `offline`, with the CSV, zip and plotting crates the daemon does not link)
//!   measures detection on labelled captures and UNSW-NB15.
//! - **Control.** [`control`] is `vigil status`, `vigil block` and `vigil detach`: they read
//!   the pinned maps and the status file, never the agent's memory.

pub mod alert;
pub mod block;
pub mod capture;
pub mod clock;
pub mod collector;
pub mod config;
pub mod console;
pub mod control;
pub mod detect;
pub mod duration_serde;
#[cfg(feature = "offline")]
pub mod eval;
pub mod features;
pub mod fleet;
pub mod flows;
pub mod learn;
pub mod live;
pub mod metrics;
pub mod model;
pub mod net;
pub mod private_dir;
pub mod replay;
pub mod run;
pub mod sensor;
pub mod spool;
pub mod store;
pub mod throttle;
