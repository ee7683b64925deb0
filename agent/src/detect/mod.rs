//! Live detection and response: the Score stage (each harvest cycle's flows scored against the
//! model, with their evidence) and the Decide stage (anomalies grouped into alerts, auto-block
//! behind safety rails), whose typed output is a [`Decision`].

pub mod allowlist;
pub mod decision;
pub mod engine;
pub mod score;

pub use decision::{Decision, Severity};
pub use engine::{BlockMode, Engine, EngineConfig};
pub use score::{Explain, ScoredCycle, ScoredFlow, Scorer};
