//! The kernel blocklist: source prefixes whose packets the XDP program drops until the rule
//! expires, and the rails a manual rule passes first.

pub mod manual;
pub mod rules;
pub mod store;

pub use rules::{BlockError, Blocklist, Rule};
pub use store::{MemoryRules, RuleStore};
