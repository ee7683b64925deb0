//! The seam between the engine and the kernel blocklist: [`RuleStore`], implemented by the
//! kernel's [`Blocklist`] and by [`MemoryRules`], an in-memory store for tests that need no
//! root.

use std::{collections::BTreeMap, time::Duration};

use ipnet::IpNet;

use super::rules::{BlockError, Blocklist, Lapse, Origin, Rule, normalize};
use crate::clock::duration_ns;

/// Where rules live: what the engine reads, adds and expires.
pub trait RuleStore {
    /// Every rule, lapsed ones included until someone removes them.
    ///
    /// # Errors
    /// The store cannot be read.
    fn list(&self) -> Result<Vec<Rule>, BlockError>;

    /// Blocks `prefix` for `ttl` from now, replacing any rule for the same prefix.
    ///
    /// # Errors
    /// A TTL under a second, or the store refusing the rule (full).
    fn add(&mut self, prefix: IpNet, ttl: Duration, origin: Origin) -> Result<Rule, BlockError>;

    /// Deletes `rule`, read earlier and found lapsed, only if the store still holds that same
    /// rule for its prefix.
    ///
    /// # Errors
    /// The store cannot be read or written.
    fn remove_if_lapsed(&mut self, rule: &Rule) -> Result<Lapse, BlockError>;
}

impl<T: std::borrow::BorrowMut<aya::maps::MapData>> RuleStore for Blocklist<T> {
    fn list(&self) -> Result<Vec<Rule>, BlockError> {
        Blocklist::list(self)
    }

    fn add(&mut self, prefix: IpNet, ttl: Duration, origin: Origin) -> Result<Rule, BlockError> {
        Blocklist::add(self, prefix, ttl, origin)
    }

    fn remove_if_lapsed(&mut self, rule: &Rule) -> Result<Lapse, BlockError> {
        Blocklist::remove_if_lapsed(self, rule)
    }
}

/// Rules in memory, on a clock the test sets: the kernel blocklist's behaviour (one rule per
/// prefix, normalised prefixes, a capacity) without the kernel.
#[derive(Debug, Default)]
pub struct MemoryRules {
    rules: BTreeMap<IpNet, Rule>,
    /// `CLOCK_MONOTONIC` ns as the store sees it (stamps new rules).
    pub now_ns: u64,
    /// Rules at most; an add beyond it fails as a full kernel map would. 0: no limit.
    pub capacity: usize,
    /// Makes `list` fail (a map that cannot be read).
    pub fail_list: bool,
}

impl MemoryRules {
    #[must_use]
    pub fn new(now_ns: u64) -> Self {
        Self { now_ns, ..Self::default() }
    }

    /// Puts `rule` in as someone else would (an operator, a previous run).
    pub fn insert(&mut self, rule: Rule) {
        self.rules.insert(rule.prefix, rule);
    }

    /// Removes the rule for `prefix` behind the engine's back; answers whether there was one.
    pub fn delete(&mut self, prefix: IpNet) -> bool {
        self.rules.remove(&prefix).is_some()
    }

    #[must_use]
    pub fn get(&self, prefix: IpNet) -> Option<&Rule> {
        self.rules.get(&prefix)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl RuleStore for MemoryRules {
    fn list(&self) -> Result<Vec<Rule>, BlockError> {
        if self.fail_list {
            let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_get_next_key",
                io_error: std::io::Error::from_raw_os_error(libc::EPERM),
            });
            return Err(BlockError::Map { name: "memory", source });
        }
        Ok(self.rules.values().cloned().collect())
    }

    fn add(&mut self, prefix: IpNet, ttl: Duration, origin: Origin) -> Result<Rule, BlockError> {
        if ttl < Duration::from_secs(1) {
            return Err(BlockError::BadTtl(ttl));
        }
        let prefix = normalize(prefix)?;
        if self.capacity > 0 && self.rules.len() >= self.capacity && !self.rules.contains_key(&prefix) {
            let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::ENOSPC),
            });
            return Err(BlockError::Map { name: "memory", source });
        }
        let rule = Rule {
            prefix,
            expires_ns: self.now_ns.saturating_add(duration_ns(ttl)),
            created_ns: self.now_ns,
            drops: 0,
            origin,
        };
        self.rules.insert(prefix, rule.clone());
        Ok(rule)
    }

    fn remove_if_lapsed(&mut self, rule: &Rule) -> Result<Lapse, BlockError> {
        match self.rules.get(&rule.prefix) {
            None => Ok(Lapse::Gone),
            Some(now) if now.expires_ns == rule.expires_ns && now.created_ns == rule.created_ns => {
                self.rules.remove(&rule.prefix);
                Ok(Lapse::Removed)
            }
            Some(now) => Ok(Lapse::Replaced(now.clone())),
        }
    }
}
