//! Adding, removing and listing blocklist rules in the kernel's LPM tries.
//!
//! A rule always carries an expiry; the kernel enforces it on its own (see
//! `agent_common::blocklist::BlockRule`), so nothing stays blocked if the agent goes away.

use std::{
    borrow::BorrowMut,
    net::{IpAddr, Ipv6Addr},
    time::Duration,
};

use agent_common::{
    blocklist::{BlockRule, ORIGIN_AUTO, ORIGIN_FLEET},
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
    #[error(
        "{0} covers part of the IPv4-mapped range ::ffff:0:0/96 and more: IPv4 packets are matched \
         against IPv4 rules, so block the IPv4 part as an IPv4 prefix and the rest separately"
    )]
    StraddlesMapped(IpNet),
}

/// The IPv4-mapped IPv6 range (`::ffff:0:0/96`, RFC 4291 section 2.5.5.2).
const MAPPED_LEN: u8 = 96;
const MAPPED: ipnet::Ipv6Net = ipnet::Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), MAPPED_LEN);

/// The prefix as the kernel stores it: host bits cleared, and an IPv4-mapped IPv6 prefix
/// (`::ffff:a.b.c.d/96+n`) as the IPv4 prefix `a.b.c.d/n`. The XDP program looks IPv4
/// packets up in the IPv4 trie, so a rule for a mapped prefix left in the IPv6 trie would be
/// listed as blocking while the IPv4 traffic it names passes.
///
/// # Errors
/// [`BlockError::StraddlesMapped`] for an IPv6 prefix shorter than /96 that contains the
/// mapped range: it cannot be one rule.
pub fn normalize(prefix: IpNet) -> Result<IpNet, BlockError> {
    let prefix = prefix.trunc();
    let IpNet::V6(net) = prefix else { return Ok(prefix) };
    if net.prefix_len() >= MAPPED_LEN && MAPPED.contains(&net.addr()) {
        let [.., a, b, c, d] = net.addr().octets();
        let v4 = ipnet::Ipv4Net::new_assert([a, b, c, d].into(), net.prefix_len() - MAPPED_LEN);
        return Ok(IpNet::V4(v4));
    }
    if net.contains(&MAPPED) {
        return Err(BlockError::StraddlesMapped(prefix));
    }
    Ok(prefix)
}

/// What [`Blocklist::remove_if_lapsed`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lapse {
    /// The lapsed rule was still there and is now deleted.
    Removed,
    /// No rule for the prefix any more (the kernel or someone else deleted it).
    Gone,
    /// The prefix holds another rule now (re-added since it was read): left in place.
    Replaced(Rule),
}

/// Whether to delete the lapsed rule `read` earlier, given what the map holds for its prefix
/// now (`current`, already matched to the exact prefix length).
#[must_use]
pub fn lapse_action(read: &Rule, current: Option<&BlockRule>) -> Lapse {
    match current {
        None => Lapse::Gone,
        Some(now) if now.expires_ns == read.expires_ns && now.created_ns == read.created_ns => Lapse::Removed,
        Some(now) => Lapse::Replaced(to_rule(read.prefix.addr(), now.prefix_len, now)),
    }
}

/// Who installed a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// An operator, with `vigil block add`.
    Manual,
    /// The agent's auto-block.
    Auto,
    /// The fleet blocklist (`[fleet.blocking]`), decided elsewhere in the fleet.
    Fleet,
}

impl Origin {
    const fn code(self) -> u32 {
        match self {
            Self::Manual => agent_common::blocklist::ORIGIN_MANUAL,
            Self::Auto => ORIGIN_AUTO,
            Self::Fleet => ORIGIN_FLEET,
        }
    }

    const fn from_code(code: u32) -> Self {
        match code {
            ORIGIN_AUTO => Self::Auto,
            ORIGIN_FLEET => Self::Fleet,
            _ => Self::Manual,
        }
    }

    /// As listed and recorded.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Auto => "auto",
            Self::Fleet => "fleet",
        }
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
    /// Takes the blocklist maps out of a loaded sensor object: the agent's rule store for the
    /// rest of the run. (The program keeps its own references to them.)
    ///
    /// # Errors
    /// If a map is missing, already taken, or of the wrong type.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, BlockError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(BlockError::MissingMap { name });
        let (v4, v6) = (take(maps::BLOCK_V4)?, take(maps::BLOCK_V6)?);
        Ok(Self {
            v4: LpmTrie::try_from(v4).map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?,
            v6: LpmTrie::try_from(v6).map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?,
        })
    }

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
        let prefix = normalize(prefix)?;
        let now = clock::monotonic_ns();
        let ttl_ns = crate::clock::duration_ns(ttl);
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

    /// Removes the rule for exactly `prefix` (IPv4-mapped prefixes name their IPv4 rule).
    /// Returns whether there was one.
    ///
    /// # Errors
    /// The map update failing for another reason than a missing key.
    pub fn remove(&mut self, prefix: IpNet) -> Result<bool, BlockError> {
        let prefix = normalize(prefix)?;
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

    /// Deletes `rule`, read earlier and found lapsed, only if the map still holds that same
    /// rule (same creation and expiry) for its prefix: a rule re-added since the read stays.
    /// (A delete is by prefix only, so a re-add between this check and the delete, a few
    /// microseconds, can still be lost; the read-then-delete of a whole listing left the
    /// whole cycle for it.)
    ///
    /// # Errors
    /// A map read or delete failing for another reason than a missing key.
    pub fn remove_if_lapsed(&mut self, rule: &Rule) -> Result<Lapse, BlockError> {
        let current = self.get_exact(rule.prefix)?;
        let action = lapse_action(rule, current.as_ref());
        if action == Lapse::Removed && !self.remove(rule.prefix)? {
            return Ok(Lapse::Gone);
        }
        Ok(action)
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
    /// A second handle on the same kernel maps (duplicated file descriptors): the fleet
    /// follower installs rules through it while the engine keeps its own.
    ///
    /// # Errors
    /// A descriptor that cannot be duplicated.
    pub fn try_clone(&self) -> Result<Blocklist<MapData>, BlockError> {
        use std::os::fd::AsFd as _;

        use aya::maps::IterableMap as _;
        fn dup(data: &MapData, name: &'static str) -> Result<Map, BlockError> {
            let fd = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| BlockError::Map {
                name,
                source: MapError::SyscallError(aya::sys::SyscallError { call: "dup", io_error }),
            })?;
            MapData::from_fd(fd).map(Map::LpmTrie).map_err(|source| BlockError::Map { name, source })
        }
        let v4 = dup(self.v4.map(), maps::BLOCK_V4)?;
        let v6 = dup(self.v6.map(), maps::BLOCK_V6)?;
        Ok(Blocklist {
            v4: LpmTrie::try_from(v4).map_err(|source| BlockError::Map { name: maps::BLOCK_V4, source })?,
            v6: LpmTrie::try_from(v6).map_err(|source| BlockError::Map { name: maps::BLOCK_V6, source })?,
        })
    }

    /// The rule stored for exactly `prefix`, if any. (An LPM lookup answers the longest
    /// matching prefix; one of another length is not this prefix's rule.)
    fn get_exact(&self, prefix: IpNet) -> Result<Option<BlockRule>, BlockError> {
        let len = u32::from(prefix.prefix_len());
        let (result, name) = match prefix {
            IpNet::V4(net) => (self.v4.get(&Key::new(len, net.addr().octets()), 0), maps::BLOCK_V4),
            IpNet::V6(net) => (self.v6.get(&Key::new(len, net.addr().octets()), 0), maps::BLOCK_V6),
        };
        match result {
            Ok(rule) if rule.prefix_len == len => Ok(Some(rule)),
            Ok(_) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(source) => Err(BlockError::Map { name, source }),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn mapped_prefixes_become_ipv4() {
        assert_eq!(normalize(net("::ffff:10.0.0.1/128")).unwrap(), net("10.0.0.1/32"));
        assert_eq!(normalize(net("::ffff:10.1.2.3/104")).unwrap(), net("10.0.0.0/8"));
        assert_eq!(normalize(net("::ffff:0:0/96")).unwrap(), net("0.0.0.0/0"));
        // Untouched: IPv4, ordinary IPv6, IPv4-compatible (::a.b.c.d, deprecated, not mapped).
        assert_eq!(normalize(net("10.0.0.7/24")).unwrap(), net("10.0.0.0/24"));
        assert_eq!(normalize(net("2001:db8::1/64")).unwrap(), net("2001:db8::/64"));
        assert_eq!(normalize(net("::10.0.0.1/128")).unwrap(), net("::10.0.0.1/128"));
        assert_eq!(normalize(net("::/95")).unwrap(), net("::/95"), "::/95 ends before ::ffff:0:0");
    }

    #[test]
    fn prefixes_straddling_the_mapped_range_are_refused() {
        for text in ["::ffff:0:0/95", "::/80", "::/0"] {
            let err = normalize(net(text)).unwrap_err();
            assert!(matches!(err, BlockError::StraddlesMapped(_)), "{text}: {err}");
            assert!(err.to_string().contains("::ffff:0:0/96"), "{err}");
        }
    }

    fn rule(expires_ns: u64, created_ns: u64) -> Rule {
        Rule { prefix: net("192.0.2.0/24"), expires_ns, created_ns, drops: 3, origin: Origin::Auto }
    }

    fn stored(expires_ns: u64, created_ns: u64) -> BlockRule {
        BlockRule { expires_ns, created_ns, drops: 9, prefix_len: 24, origin: ORIGIN_AUTO }
    }

    #[test]
    fn a_lapsed_rule_is_deleted_only_if_it_is_still_the_one_read() {
        let read = rule(2_000, 1_000);
        assert_eq!(lapse_action(&read, Some(&stored(2_000, 1_000))), Lapse::Removed, "drops may have moved");
        assert_eq!(lapse_action(&read, None), Lapse::Gone);
        // Re-added after the read: a new expiry (and creation) is a new rule, kept.
        let Lapse::Replaced(newer) = lapse_action(&read, Some(&stored(9_000, 3_000))) else {
            panic!("a re-added rule must not be deleted");
        };
        assert_eq!((newer.prefix, newer.expires_ns, newer.created_ns), (net("192.0.2.0/24"), 9_000, 3_000));
        assert!(matches!(lapse_action(&read, Some(&stored(2_000, 1_500))), Lapse::Replaced(_)));
    }
}
