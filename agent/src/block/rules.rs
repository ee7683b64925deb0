//! Adding, removing and listing blocklist rules in the kernel's LPM tries.
//!
//! A rule always carries an expiry; the kernel enforces it on its own (see
//! `agent_common::blocklist::BlockRule`), so nothing stays blocked if the agent goes away.

use std::{borrow::BorrowMut, net::IpAddr, time::Duration};

use agent_common::{
    blocklist::{BlockRule, ORIGIN_AUTO},
    maps,
};
use aya::{
    Ebpf,
    maps::{
        Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use ipnet::IpNet;
use serde::Serialize;

use crate::clock;

/// Errors of blocklist operations.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("map `{name}` missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("map `{name}`: {source}")]
    Map { name: &'static str, source: MapError },
    #[error("a rule needs a TTL of at least one second, got {0:?}")]
    BadTtl(Duration),
    #[error("opening pinned map {path}: {source} (is the agent running or was it run with this pin directory?)")]
    Pin { path: std::path::PathBuf, source: MapError },
}

/// Who installed a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// An operator, with `vigil block add`.
    Manual,
    /// The agent's auto-block.
    Auto,
}

impl Origin {
    const fn code(self) -> u32 {
        match self {
            Self::Manual => agent_common::blocklist::ORIGIN_MANUAL,
            Self::Auto => ORIGIN_AUTO,
        }
    }

    const fn from_code(code: u32) -> Self {
        if code == ORIGIN_AUTO { Self::Auto } else { Self::Manual }
    }
}

/// A rule as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub prefix: IpNet,
    /// `CLOCK_MONOTONIC` ns at which it lapses.
    pub expires_ns: u64,
    /// `CLOCK_MONOTONIC` ns at which it was installed.
    pub created_ns: u64,
    /// Packets it dropped.
    pub drops: u64,
    pub origin: Origin,
}

impl Rule {
    /// Whether the rule still applies at `now_ns` (`CLOCK_MONOTONIC`).
    #[must_use]
    pub const fn is_active(&self, now_ns: u64) -> bool {
        now_ns < self.expires_ns
    }
}

/// The two LPM tries (IPv4 and IPv6 source prefixes).
pub struct Blocklist<T> {
    v4: LpmTrie<T, [u8; 4], BlockRule>,
    v6: LpmTrie<T, [u8; 16], BlockRule>,
}

impl<'a> Blocklist<&'a mut MapData> {
    /// The blocklist maps of a loaded sensor object.
    ///
    /// # Errors
    /// If a map is missing or of the wrong type.
    pub fn from_ebpf(ebpf: &'a mut Ebpf) -> Result<Self, BlockError> {
        let [v4, v6] = ebpf.maps_disjoint_mut([maps::BLOCK_V4, maps::BLOCK_V6]);
        let v4 = v4.ok_or(BlockError::MissingMap { name: maps::BLOCK_V4 })?;
        let v6 = v6.ok_or(BlockError::MissingMap { name: maps::BLOCK_V6 })?;
        Ok(Self {
            v4: LpmTrie::try_from(v4).map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?,
            v6: LpmTrie::try_from(v6).map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?,
        })
    }
}

impl Blocklist<MapData> {
    /// The blocklist maps pinned under `dir` by a running (or past) agent.
    ///
    /// # Errors
    /// If a pin is missing or not an LPM trie of the right shape.
    pub fn from_pins(dir: &std::path::Path) -> Result<Self, BlockError> {
        let open = |name: &'static str| {
            let path = dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| BlockError::Pin { path: path.clone(), source })
        };
        let v4 = open(maps::BLOCK_V4)?;
        let v6 = open(maps::BLOCK_V6)?;
        Ok(Self {
            v4: LpmTrie::try_from(v4).map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?,
            v6: LpmTrie::try_from(v6).map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?,
        })
    }
}

impl<T: BorrowMut<MapData>> Blocklist<T> {
    /// Blocks `prefix` for `ttl` from now, replacing any rule for the same prefix.
    ///
    /// # Errors
    /// A TTL under a second, or the map update failing (e.g. the blocklist is full).
    pub fn add(&mut self, prefix: IpNet, ttl: Duration, origin: Origin) -> Result<Rule, BlockError> {
        if ttl < Duration::from_secs(1) {
            return Err(BlockError::BadTtl(ttl));
        }
        let now = clock::monotonic_ns();
        let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        let prefix = prefix.trunc();
        let rule = BlockRule {
            expires_ns: now.saturating_add(ttl_ns),
            created_ns: now,
            drops: 0,
            prefix_len: u32::from(prefix.prefix_len()),
            origin: origin.code(),
        };
        match prefix {
            IpNet::V4(net) => {
                let key = Key::new(rule.prefix_len, net.addr().octets());
                self.v4.insert(&key, rule, 0).map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?;
            }
            IpNet::V6(net) => {
                let key = Key::new(rule.prefix_len, net.addr().octets());
                self.v6.insert(&key, rule, 0).map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?;
            }
        }
        Ok(Rule { prefix, expires_ns: rule.expires_ns, created_ns: now, drops: 0, origin })
    }

    /// Removes the rule for exactly `prefix`. Returns whether there was one.
    ///
    /// # Errors
    /// The map update failing for another reason than a missing key.
    pub fn remove(&mut self, prefix: IpNet) -> Result<bool, BlockError> {
        let prefix = prefix.trunc();
        let len = u32::from(prefix.prefix_len());
        let (result, name) = match prefix {
            IpNet::V4(net) => (self.v4.remove(&Key::new(len, net.addr().octets())), maps::BLOCK_V4),
            IpNet::V6(net) => (self.v6.remove(&Key::new(len, net.addr().octets())), maps::BLOCK_V6),
        };
        match result {
            Ok(()) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(BlockError::Map { name, source }),
        }
    }

    /// Removes every rule; returns the rules removed.
    ///
    /// # Errors
    /// A map read or delete failing.
    pub fn flush(&mut self) -> Result<Vec<Rule>, BlockError> {
        let rules = self.list()?;
        for rule in &rules {
            self.remove(rule.prefix)?;
        }
        Ok(rules)
    }
}

impl<T: std::borrow::Borrow<MapData>> Blocklist<T> {
    /// Every rule in the kernel, expired ones included until the kernel or the agent removes
    /// them.
    ///
    /// # Errors
    /// A map read failing.
    pub fn list(&self) -> Result<Vec<Rule>, BlockError> {
        let mut rules = Vec::new();
        for entry in &self.v4 {
            let (key, rule) = entry.map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?;
            let addr = IpAddr::from(key.data());
            rules.push(to_rule(addr, key.prefix_len(), &rule));
        }
        for entry in &self.v6 {
            let (key, rule) = entry.map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?;
            let addr = IpAddr::from(key.data());
            rules.push(to_rule(addr, key.prefix_len(), &rule));
        }
        Ok(rules)
    }
}

fn to_rule(addr: IpAddr, prefix_len: u32, rule: &BlockRule) -> Rule {
    let prefix = IpNet::new(addr, u8::try_from(prefix_len).unwrap_or(u8::MAX)).unwrap_or_else(|_| IpNet::from(addr));
    Rule {
        prefix,
        expires_ns: rule.expires_ns,
        created_ns: rule.created_ns,
        drops: rule.drops,
        origin: Origin::from_code(rule.origin),
    }
}

/// Whether a map error means "no such key" (aya reports deletes of missing keys as a raw
/// `ENOENT` syscall error, lookups as `KeyNotFound`).
fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
