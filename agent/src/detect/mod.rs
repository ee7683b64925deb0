//! Live detection and response: scoring each harvest cycle's flows, grouping anomalies into
//! alerts, and auto-blocking sources behind safety rails.

pub mod allowlist;
pub mod engine;
pub mod live;

pub use engine::{BlockMode, Engine, EngineConfig, Kind, Level, Notice};
pub use live::{CycleScores, LiveScorer};
