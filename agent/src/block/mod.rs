//! The kernel blocklist: source prefixes whose packets the XDP program drops until the rule
//! expires.

pub mod rules;

pub use rules::{BlockError, Blocklist, Rule};
