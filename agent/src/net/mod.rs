//! Host network facts the agent needs.

pub mod route;
