//! Attack kinds and their MITRE ATT&CK techniques: one table ([`KINDS`]) that alerts, the
//! supervised classifier's classes, `vigil query` and the console all read, and that
//! docs/detection.md prints ("Attack kinds and ATT&CK"; a test keeps the two equal).
//!
//! A kind says what the traffic does as a network sensor can see it. The technique is the
//! closest ATT&CK (Enterprise) entry for that behaviour; where a behaviour fits a sub-technique
//! the sub-technique is given and the technique is its parent.

use serde::{Deserialize, Serialize};

/// What an alert's traffic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttackKind {
    Scan,
    Sweep,
    WebScan,
    SynFlood,
    UdpFlood,
    IcmpFlood,
    OtherFlood,
    Reflection,
    SlowDos,
    HttpFlood,
    PasswordGuessing,
    Exploit,
    LateralMovement,
    CommandAndControl,
    Tunnel,
    Exfiltration,
    AdversaryInTheMiddle,
    /// An anomaly no rule or class names.
    Unknown,
}

/// An ATT&CK entry: the tactic, the technique and, where one applies, the sub-technique.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Technique {
    pub tactic: (&'static str, &'static str),
    pub technique: (&'static str, &'static str),
    pub subtechnique: Option<(&'static str, &'static str)>,
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: AttackKind,
    pub name: &'static str,
    pub description: &'static str,
    pub attack: Option<Technique>,
}

#[expect(
    clippy::unnecessary_wraps,
    reason = "the table's `attack` field is optional; this fills the rows that have one"
)]
const fn t(
    tactic: (&'static str, &'static str),
    technique: (&'static str, &'static str),
    subtechnique: Option<(&'static str, &'static str)>,
) -> Option<Technique> {
    Some(Technique { tactic, technique, subtechnique })
}

const RECON: (&str, &str) = ("TA0043", "Reconnaissance");
const INITIAL: (&str, &str) = ("TA0001", "Initial Access");
const CREDENTIALS: (&str, &str) = ("TA0006", "Credential Access");
const DISCOVERY: (&str, &str) = ("TA0007", "Discovery");
const LATERAL: (&str, &str) = ("TA0008", "Lateral Movement");
const C2: (&str, &str) = ("TA0011", "Command and Control");
const EXFILTRATION: (&str, &str) = ("TA0010", "Exfiltration");
const IMPACT: (&str, &str) = ("TA0040", "Impact");
const NETWORK_DOS: (&str, &str) = ("T1498", "Network Denial of Service");
const ENDPOINT_DOS: (&str, &str) = ("T1499", "Endpoint Denial of Service");

/// Every kind, in the order of [`AttackKind`].
pub const KINDS: [KindInfo; 18] = [
    KindInfo {
        kind: AttackKind::Scan,
        name: "scan",
        description: "one source probing many ports of a host",
        attack: t(DISCOVERY, ("T1046", "Network Service Discovery"), None),
    },
    KindInfo {
        kind: AttackKind::Sweep,
        name: "sweep",
        description: "one source probing many hosts (ICMP or one port)",
        attack: t(DISCOVERY, ("T1018", "Remote System Discovery"), None),
    },
    KindInfo {
        kind: AttackKind::WebScan,
        name: "web-scan",
        description: "web application fingerprinting and vulnerability probing",
        attack: t(RECON, ("T1595", "Active Scanning"), Some(("T1595.002", "Vulnerability Scanning"))),
    },
    KindInfo {
        kind: AttackKind::SynFlood,
        name: "syn-flood",
        description: "TCP SYNs that never complete a handshake, at a high rate",
        attack: t(IMPACT, ENDPOINT_DOS, Some(("T1499.001", "OS Exhaustion Flood"))),
    },
    KindInfo {
        kind: AttackKind::UdpFlood,
        name: "udp-flood",
        description: "UDP packets at a high rate against one target",
        attack: t(IMPACT, NETWORK_DOS, Some(("T1498.001", "Direct Network Flood"))),
    },
    KindInfo {
        kind: AttackKind::IcmpFlood,
        name: "icmp-flood",
        description: "ICMP or ICMPv6 packets at a high rate",
        attack: t(IMPACT, NETWORK_DOS, Some(("T1498.001", "Direct Network Flood"))),
    },
    KindInfo {
        kind: AttackKind::OtherFlood,
        name: "other-flood",
        description: "other packet floods (fragments, extension headers, other protocols)",
        attack: t(IMPACT, NETWORK_DOS, Some(("T1498.001", "Direct Network Flood"))),
    },
    KindInfo {
        kind: AttackKind::Reflection,
        name: "reflection",
        description: "large answers from many servers to requests the target never sent (DNS, NTP, memcached)",
        attack: t(IMPACT, NETWORK_DOS, Some(("T1498.002", "Reflection Amplification"))),
    },
    KindInfo {
        kind: AttackKind::SlowDos,
        name: "slow-dos",
        description: "few connections held open with a trickle of data (Slowloris, slow POST)",
        attack: t(IMPACT, ENDPOINT_DOS, Some(("T1499.002", "Service Exhaustion Flood"))),
    },
    KindInfo {
        kind: AttackKind::HttpFlood,
        name: "http-flood",
        description: "complete HTTP connections or requests at a high rate",
        attack: t(IMPACT, ENDPOINT_DOS, Some(("T1499.002", "Service Exhaustion Flood"))),
    },
    KindInfo {
        kind: AttackKind::PasswordGuessing,
        name: "password-guessing",
        description: "many short logins to one service (SSH, FTP, telnet, RDP, web forms)",
        attack: t(CREDENTIALS, ("T1110", "Brute Force"), Some(("T1110.001", "Password Guessing"))),
    },
    KindInfo {
        kind: AttackKind::Exploit,
        name: "exploit",
        description: "exploitation of a public-facing service",
        attack: t(INITIAL, ("T1190", "Exploit Public-Facing Application"), None),
    },
    KindInfo {
        kind: AttackKind::LateralMovement,
        name: "lateral-movement",
        description: "remote service use between inside hosts (SMB admin shares, PsExec)",
        attack: t(LATERAL, ("T1021", "Remote Services"), Some(("T1021.002", "SMB/Windows Admin Shares"))),
    },
    KindInfo {
        kind: AttackKind::CommandAndControl,
        name: "command-and-control",
        description: "an inside host beaconing to a controller",
        attack: t(C2, ("T1071", "Application Layer Protocol"), None),
    },
    KindInfo {
        kind: AttackKind::Tunnel,
        name: "tunnel",
        description: "data carried inside DNS, ICMP or another protocol",
        attack: t(C2, ("T1572", "Protocol Tunneling"), None),
    },
    KindInfo {
        kind: AttackKind::Exfiltration,
        name: "exfiltration",
        description: "an inside host sending far more than it receives to an outside one",
        attack: t(EXFILTRATION, ("T1048", "Exfiltration Over Alternative Protocol"), None),
    },
    KindInfo {
        kind: AttackKind::AdversaryInTheMiddle,
        name: "adversary-in-the-middle",
        description: "ARP or neighbour spoofing (seen by its effects only: Vigil records IP)",
        attack: t(CREDENTIALS, ("T1557", "Adversary-in-the-Middle"), Some(("T1557.002", "ARP Cache Poisoning"))),
    },
    KindInfo {
        kind: AttackKind::Unknown,
        name: "unknown",
        description: "an anomaly no rule or class names",
        attack: None,
    },
];

impl AttackKind {
    /// The table's row.
    #[must_use]
    pub fn info(self) -> &'static KindInfo {
        &KINDS[self as usize]
    }

    /// The kind's name (`password-guessing`).
    #[must_use]
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The kind of a name from the table.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        KINDS.iter().find(|k| k.name == name).map(|k| k.kind)
    }

    /// The kind of a dataset's label: the table's names, the `kind` values of the shared
    /// captures' `labels.json`, CIC-IDS-2017's and UNSW-NB15's classes. `None` for benign
    /// traffic; [`AttackKind::Unknown`] for a label nothing here describes.
    #[must_use]
    pub fn from_label(label: &str) -> Option<Self> {
        let l = label.trim().to_lowercase();
        if let Some(k) = Self::from_name(&l) {
            return Some(k);
        }
        let kind = match l.as_str() {
            "benign" | "normal" => return None,
            "port-scan" | "network-scan" | "portscan" | "infiltration - portscan" | "reconnaissance" => Self::Scan,
            "host-sweep" | "ping-sweep" => Self::Sweep,
            "ssh-bruteforce"
            | "ftp-bruteforce"
            | "brute-force"
            | "botnet-propagation"
            | "ftp-patator"
            | "ssh-patator"
            | "web attack - brute force" => Self::PasswordGuessing,
            "dos" => Self::OtherFlood,
            "dos slowloris" | "dos slowhttptest" => Self::SlowDos,
            "dos hulk" | "dos goldeneye" | "ddos" => Self::HttpFlood,
            "exploit"
            | "web-exploit"
            | "web-attack-sqli"
            | "heartbleed"
            | "web attack - xss"
            | "web attack - sql injection"
            | "infiltration"
            | "exploits"
            | "shellcode"
            | "worms" => Self::Exploit,
            "botnet-c2" | "rat-c2" | "exploit-kit+ransomware-c2" | "botnet" | "backdoor" => Self::CommandAndControl,
            "dns-tunnel" | "icmp-tunnel" => Self::Tunnel,
            "dns-exfiltration" => Self::Exfiltration,
            "arp-spoofing" => Self::AdversaryInTheMiddle,
            _ => Self::Unknown,
        };
        Some(kind)
    }
}

impl std::fmt::Display for AttackKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The table as Markdown, as docs/detection.md carries it.
#[must_use]
pub fn markdown_table() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "| kind | what the traffic does | ATT&CK tactic | technique | sub-technique |\n|---|---|---|---|---|\n",
    );
    for k in &KINDS {
        let (tactic, technique, sub) = match k.attack {
            Some(a) => (
                format!("{} {}", a.tactic.0, a.tactic.1),
                format!("{} {}", a.technique.0, a.technique.1),
                a.subtechnique.map_or_else(|| "–".to_owned(), |s| format!("{} {}", s.0, s.1)),
            ),
            None => ("–".to_owned(), "–".to_owned(), "–".to_owned()),
        };
        let _ = writeln!(out, "| `{}` | {} | {tactic} | {technique} | {sub} |", k.name, k.description);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_enum_order_and_names_are_unique() {
        for (i, k) in KINDS.iter().enumerate() {
            assert_eq!(k.kind as usize, i, "{}", k.name);
            assert_eq!(AttackKind::from_name(k.name), Some(k.kind));
            assert_eq!(serde_json::to_value(k.kind).unwrap(), k.name);
            if let Some(a) = k.attack {
                assert!(a.tactic.0.starts_with("TA") && a.technique.0.starts_with('T'), "{}", k.name);
                if let Some(s) = a.subtechnique {
                    assert!(
                        s.0.starts_with(&format!("{}.", a.technique.0)),
                        "{}: {} under {}",
                        k.name,
                        s.0,
                        a.technique.0
                    );
                }
            }
        }
    }

    #[test]
    fn every_label_of_the_shared_data_has_a_kind() {
        for labels in ["pcaps/labels.json", "corpus/labels.json"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data").join(labels);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            for (file, entry) in json.as_object().unwrap() {
                let label = entry["kind"].as_str().unwrap();
                let kind = AttackKind::from_label(label);
                assert_eq!(kind.is_none(), label == "benign", "{file}: {label}");
                assert_ne!(kind, Some(AttackKind::Unknown), "{file}: {label} needs a kind");
            }
        }
        for cic in ["BENIGN", "DoS Hulk", "Portscan", "SSH-Patator", "DoS Slowloris", "Botnet", "Web Attack - XSS"] {
            assert_ne!(AttackKind::from_label(cic), Some(AttackKind::Unknown), "{cic}");
        }
        assert_eq!(AttackKind::from_label("fuzzers"), Some(AttackKind::Unknown));
    }

    #[test]
    fn docs_detection_md_carries_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/detection.md");
        let doc = std::fs::read_to_string(path).unwrap();
        assert!(doc.contains(&markdown_table()), "docs/detection.md must hold this table:\n{}", markdown_table());
    }
}
