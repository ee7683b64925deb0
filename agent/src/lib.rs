//! Vigil's userspace agent: loads the XDP sensor, harvests its flow table into flow records,
//! and manages the kernel blocklist.
//!
//! The binary (`vigil`, `src/main.rs`) is a thin command-line layer over this library; the
//! integration tests and benchmarks in `tests/` drive the same library.

pub mod alert;
pub mod block;
pub mod capture;
pub mod clock;
pub mod config;
pub mod control;
pub mod detect;
pub mod duration_serde;
#[cfg(feature = "offline")]
pub mod eval;
pub mod features;
pub mod flows;
pub mod metrics;
pub mod model;
pub mod net;
pub mod private_dir;
pub mod live;
pub mod replay;
pub mod run;
pub mod sensor;
pub mod throttle;
