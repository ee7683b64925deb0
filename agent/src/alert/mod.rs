//! Alert delivery: serialised alert events fanned out to sinks, each on its own thread.

pub mod ecs;
pub mod sink;
pub mod webhook;
