//! Alert delivery: serialised alert events fanned out to sinks, each on its own thread
//! ([`sink`]: the fan-out, the `Sink` trait and one file per sink).

pub mod attack;
pub mod ecs;
pub mod sink;
pub mod suppress;
