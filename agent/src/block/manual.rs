//! The rails a rule from `vigil block add` passes before it reaches the kernel: the prefix as
//! the kernel will store it, the TTL cap, the allowlist (configured prefixes, the host's own
//! addresses, gateways and loopback) and the operator's own SSH session.
//!
//! [`check`] decides from plain values, so every rail is tested without a kernel;
//! [`ssh_peers`] gathers the SSH clients of the calling session.

use std::{net::IpAddr, time::Duration};

use ipnet::IpNet;

use super::rules::{BlockError, normalize};
use crate::detect::allowlist::Allowlist;

/// Longest TTL a rule may have unless the configuration says otherwise (`block.max_ttl`).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_hours(7 * 24);

/// How far up the process tree [`ssh_peers`] looks for an SSH session.
const MAX_ANCESTORS: usize = 64;

/// What a manual rule is checked against.
#[derive(Clone, Debug)]
pub struct Rails {
    /// Prefixes never blocked without `--force`.
    pub allowlist: Allowlist,
    /// Client addresses of the SSH sessions the command runs in.
    pub ssh_peers: Vec<IpAddr>,
    /// Longest TTL accepted (`block.max_ttl`); `--force` does not lift it.
    pub max_ttl: Duration,
}

/// Why a manual rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("refusing to block {prefix}: it covers {covered} ({why}); pass --force if you mean it")]
    Allowlisted { prefix: IpNet, covered: IpNet, why: String },
    #[error(
        "refusing to block {prefix}: it covers {peer}, the client of your own SSH session \
         (SSH_CONNECTION), which would cut you off; pass --force if you mean it"
    )]
    SshPeer { prefix: IpNet, peer: IpAddr },
    #[error("a TTL of {} is longer than block.max_ttl ({}); pass a shorter --ttl or raise block.max_ttl", fmt(*.ttl), fmt(*.max))]
    TtlTooLong { ttl: Duration, max: Duration },
    #[error(transparent)]
    Rule(#[from] BlockError),
}

fn fmt(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(d)
}

/// Checks a manual rule; answers the prefix to install (as the kernel stores it, see
/// [`normalize`]). The TTL bounds and the prefix's shape hold even with `force`; `force`
/// lifts the allowlist and the SSH session check.
///
/// # Errors
/// The first rail the rule hits.
pub fn check(rails: &Rails, prefix: IpNet, ttl: Duration, force: bool) -> Result<IpNet, Refusal> {
    let prefix = normalize(prefix)?;
    if ttl < Duration::from_secs(1) {
        return Err(BlockError::BadTtl(ttl).into());
    }
    if ttl > rails.max_ttl {
        return Err(Refusal::TtlTooLong { ttl, max: rails.max_ttl });
    }
    if force {
        return Ok(prefix);
    }
    if let Some((covered, why)) = rails.allowlist.overlap(prefix) {
        return Err(Refusal::Allowlisted { prefix, covered, why: why.to_owned() });
    }
    if let Some(peer) = rails.ssh_peers.iter().map(IpAddr::to_canonical).find(|p| prefix.contains(p)) {
        return Err(Refusal::SshPeer { prefix, peer });
    }
    Ok(prefix)
}

/// The client address in an `SSH_CONNECTION` (`client port server port`) or `SSH_CLIENT`
/// (`client port port`) value, without a zone, IPv4-mapped addresses as IPv4.
#[must_use]
pub fn parse_ssh_client(value: &str) -> Option<IpAddr> {
    let first = value.split_whitespace().next()?;
    let addr = first.split_once('%').map_or(first, |(addr, _zone)| addr);
    addr.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// The SSH client named by `SSH_CONNECTION` (else `SSH_CLIENT`) in a process environment as
/// `/proc/PID/environ` holds it (`NAME=value` entries separated by NUL bytes).
#[must_use]
pub fn ssh_client_in_environ(environ: &[u8]) -> Option<IpAddr> {
    let value = |name: &[u8]| {
        environ
            .split(|&b| b == 0)
            .find_map(|entry| entry.strip_prefix(name)?.strip_prefix(b"="))
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(parse_ssh_client)
    };
    value(b"SSH_CONNECTION").or_else(|| value(b"SSH_CLIENT"))
}

/// The SSH clients of the session this process runs in: its own `SSH_CONNECTION`, and that
/// of each ancestor process, because `sudo` clears the variable from the environment it
/// passes on while the login shell above it still has it. Unreadable processes are skipped.
#[must_use]
pub fn ssh_peers() -> Vec<IpAddr> {
    let mut peers = Vec::new();
    let own = ["SSH_CONNECTION", "SSH_CLIENT"]
        .iter()
        .find_map(|n| std::env::var(n).ok().as_deref().and_then(parse_ssh_client));
    peers.extend(own);
    let mut pid = std::process::id();
    for _ in 0..MAX_ANCESTORS {
        let Some(parent) = parent_pid(pid).filter(|&p| p > 1) else { break };
        if let Some(peer) =
            std::fs::read(format!("/proc/{parent}/environ")).ok().as_deref().and_then(ssh_client_in_environ)
            && !peers.contains(&peer)
        {
            peers.push(peer);
        }
        pid = parent;
    }
    peers
}

/// The parent of `pid`, from `/proc/PID/stat` (the field after the state, which follows the
/// parenthesised command name, itself free to hold spaces and parentheses).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_ppid(&stat)
}

fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    fn rails() -> Rails {
        Rails {
            allowlist: Allowlist::new(&[net("10.9.0.0/16"), net("127.0.0.0/8")], false),
            ssh_peers: vec!["198.51.100.7".parse().unwrap(), "2001:db8::22".parse().unwrap()],
            max_ttl: DEFAULT_MAX_TTL,
        }
    }

    const TEN_MIN: Duration = Duration::from_mins(10);

    #[test]
    fn configured_allowlist_is_applied_unless_forced() {
        let err = check(&rails(), net("10.9.3.4/32"), TEN_MIN, false).unwrap_err();
        assert!(matches!(&err, Refusal::Allowlisted { covered, .. } if *covered == net("10.9.0.0/16")), "{err}");
        let text = err.to_string();
        assert!(text.contains("10.9.0.0/16") && text.contains("configured") && text.contains("--force"), "{text}");
        assert!(matches!(check(&rails(), net("10.0.0.0/8"), TEN_MIN, false), Err(Refusal::Allowlisted { .. })));
        assert_eq!(check(&rails(), net("10.9.3.4/32"), TEN_MIN, true).unwrap(), net("10.9.3.4/32"));
        assert_eq!(check(&rails(), net("10.8.0.1/32"), TEN_MIN, false).unwrap(), net("10.8.0.1/32"));
    }

    #[test]
    fn own_ssh_session_is_protected_unless_forced() {
        for prefix in ["198.51.100.7/32", "198.51.100.0/24", "::ffff:198.51.100.7/128", "2001:db8::/64"] {
            let err = check(&rails(), net(prefix), TEN_MIN, false).unwrap_err();
            assert!(matches!(err, Refusal::SshPeer { .. }), "{prefix}: {err}");
            assert!(err.to_string().contains("SSH session"), "{err}");
            assert!(check(&rails(), net(prefix), TEN_MIN, true).is_ok(), "{prefix} with --force");
        }
        assert!(check(&rails(), net("198.51.100.8/32"), TEN_MIN, false).is_ok());
    }

    #[test]
    fn ttl_is_capped_even_with_force() {
        let ttl = humantime::parse_duration("100000years").unwrap();
        for force in [false, true] {
            let err = check(&rails(), net("192.0.2.1/32"), ttl, force).unwrap_err();
            assert!(matches!(err, Refusal::TtlTooLong { .. }), "{err}");
            assert!(err.to_string().contains("block.max_ttl (7days)"), "{err}");
        }
        assert!(check(&rails(), net("192.0.2.1/32"), DEFAULT_MAX_TTL, false).is_ok(), "the cap itself is allowed");
        let short = check(&rails(), net("192.0.2.1/32"), Duration::from_millis(500), true).unwrap_err();
        assert!(matches!(short, Refusal::Rule(BlockError::BadTtl(_))), "{short}");
    }

    #[test]
    fn mapped_prefixes_are_checked_as_ipv4() {
        assert_eq!(check(&rails(), net("::ffff:192.0.2.1/128"), TEN_MIN, false).unwrap(), net("192.0.2.1/32"));
        // The allowlist sees the IPv4 prefix the kernel would store.
        let err = check(&rails(), net("::ffff:127.0.0.1/128"), TEN_MIN, false).unwrap_err();
        assert!(matches!(err, Refusal::Allowlisted { .. }), "{err}");
        let straddle = check(&rails(), net("::/64"), TEN_MIN, true).unwrap_err();
        assert!(matches!(straddle, Refusal::Rule(BlockError::StraddlesMapped(_))), "{straddle}");
    }

    #[test]
    fn ssh_client_parsing() {
        assert_eq!(parse_ssh_client("203.0.113.5 52144 10.0.0.2 22"), Some("203.0.113.5".parse().unwrap()));
        assert_eq!(parse_ssh_client("fe80::1%eth0 52144 fe80::2%eth0 22"), Some("fe80::1".parse().unwrap()));
        assert_eq!(parse_ssh_client("::ffff:203.0.113.5 1 2"), Some("203.0.113.5".parse().unwrap()));
        assert_eq!(parse_ssh_client(""), None);
        assert_eq!(parse_ssh_client("nonsense 1 2 3"), None);
        let environ = b"HOME=/root\0SSH_CLIENT=192.0.2.1 1 22\0XSSH_CONNECTION=1.1.1.1 1 2 3\0SSH_CONNECTION=192.0.2.9 5 10.0.0.1 22\0";
        assert_eq!(ssh_client_in_environ(environ), Some("192.0.2.9".parse().unwrap()));
        assert_eq!(ssh_client_in_environ(b"SSH_CLIENT=192.0.2.1 1 22\0"), Some("192.0.2.1".parse().unwrap()));
        assert_eq!(ssh_client_in_environ(b"PATH=/bin\0"), None);
    }

    #[test]
    fn stat_parent_survives_odd_command_names() {
        assert_eq!(parse_stat_ppid("4242 (a) b) (c) S 17 4242 4242 0 -1"), Some(17));
        assert_eq!(parse_stat_ppid("1 (systemd) S 0 1 1"), Some(0));
        assert_eq!(parent_pid(std::process::id()), Some(nix::unistd::getppid().as_raw().cast_unsigned()));
    }
}
