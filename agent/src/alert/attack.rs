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

/// What an alert's evidence shows, for [`AttackKind::of_source`] and
/// [`AttackKind::of_destination`]: the counts over the alert window and the worst
/// conversation.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Shape {
    pub protocol: u8,
    /// The worst conversation's ports (initiator's source, responder's).
    pub src_port: u16,
    pub dst_port: u16,
    /// Conversations (source alerts) or new anomalous conversations (destination alerts).
    pub flows: u64,
    /// Distinct destinations (source alerts) or sources (destination alerts).
    pub peers: usize,
    pub destination_ports: usize,
    /// From the worst conversation's context features (source alerts): the most distinct
    /// ports and hosts its initiator reached in the 10 s window or the last 2 minutes, and the
    /// distinct IP protocols it used in the window. They see what the alert window's
    /// anomalous conversations alone miss (a slow scan's earlier probes).
    pub context_ports: usize,
    pub context_hosts: usize,
    pub protocols: usize,
    pub packets: u64,
    pub bytes: u64,
    /// The worst conversation: SYNs without a SYN-ACK back (a handshake never completed).
    pub syn_unanswered: bool,
    /// The worst conversation's initiator sent SYNs and never acknowledged anything (a SYN
    /// flood's or a SYN scan's half-open conversations, whether or not the target answered).
    pub syn_only: bool,
    /// The worst conversation's bytes each way and its length in seconds.
    pub bytes_out: u64,
    pub bytes_back: u64,
    pub seconds: f64,
}

/// Ports of services people log in to: SSH, FTP, telnet, mail, RDP, VNC, databases.
const LOGIN_PORTS: [u16; 13] = [21, 22, 23, 110, 143, 993, 995, 1433, 3306, 3389, 5432, 5900, 5901];
/// Web ports.
const WEB_PORTS: [u16; 6] = [80, 443, 8000, 8080, 8443, 8888];
/// UDP services that answer a small request with a large reply (amplifiers).
const AMPLIFIER_PORTS: [u16; 9] = [19, 53, 123, 161, 389, 1900, 3702, 11211, 5353];
/// Packets in an alert window that make a flood.
const FLOOD_PACKETS: u64 = 1_000;
/// Anomalous conversations in an alert window that make a flood (each of a few packets).
const FLOOD_CONVERSATIONS: u64 = 100;
/// Half-open conversations (SYNs never acknowledged) to a few ports that make a SYN flood: a
/// flood's first window can hold few, and one client retrying a dead service makes far fewer.
const HALF_OPEN_FLOOD: u64 = 20;

impl AttackKind {
    /// The kind a source alert's evidence shows, by the first rule that holds
    /// (docs/detection.md, "Kinds from the evidence").
    #[must_use]
    pub fn of_source(s: &Shape) -> Self {
        let icmp = matches!(s.protocol, 1 | 58);
        let (tcp, udp) = (s.protocol == 6, s.protocol == 17);
        let web = tcp && WEB_PORTS.contains(&s.dst_port);
        let flood = s.packets >= FLOOD_PACKETS || s.flows >= FLOOD_CONVERSATIONS;
        let hosts = s.peers.max(s.context_hosts);
        if s.destination_ports >= 5 || s.context_ports >= 10 || s.protocols >= 5 {
            Self::Scan
        } else if hosts >= 10 && s.destination_ports <= 3 && s.packets < FLOOD_PACKETS * hosts as u64 {
            Self::Sweep
        } else if icmp && flood {
            Self::IcmpFlood
        } else if tcp && s.syn_only && (flood || s.flows >= HALF_OPEN_FLOOD) {
            Self::SynFlood
        } else if udp && flood {
            if AMPLIFIER_PORTS.contains(&s.src_port) { Self::Reflection } else { Self::UdpFlood }
        } else if tcp && LOGIN_PORTS.contains(&s.dst_port) && s.flows >= 5 && s.peers <= 3 {
            Self::PasswordGuessing
        } else if web && !s.syn_only && s.bytes_back <= s.bytes_out && (s.flows >= 5 || s.seconds >= 30.0) {
            Self::SlowDos
        } else if web && s.flows >= FLOOD_CONVERSATIONS {
            Self::HttpFlood
        } else if s.bytes_out >= 10_000_000 && s.bytes_out >= 10 * s.bytes_back.max(1) {
            Self::Exfiltration
        } else if !tcp && !udp && !icmp && flood {
            Self::OtherFlood
        } else {
            Self::Unknown
        }
    }

    /// The kind a destination alert's evidence shows (many sources, one target): a flood of
    /// some kind.
    #[must_use]
    pub fn of_destination(s: &Shape) -> Self {
        match s.protocol {
            1 | 58 => Self::IcmpFlood,
            6 if s.syn_unanswered => Self::SynFlood,
            6 if WEB_PORTS.contains(&s.dst_port) => Self::HttpFlood,
            17 if AMPLIFIER_PORTS.contains(&s.src_port) => Self::Reflection,
            17 => Self::UdpFlood,
            _ => Self::OtherFlood,
        }
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

    fn shape() -> Shape {
        Shape {
            protocol: 6,
            src_port: 40_000,
            dst_port: 80,
            flows: 1,
            peers: 1,
            destination_ports: 1,
            ..Shape::default()
        }
    }

    #[test]
    fn source_alerts_get_the_kind_their_evidence_shows() {
        let cases = [
            (Shape { destination_ports: 1000, flows: 1000, syn_only: true, ..shape() }, AttackKind::Scan),
            (Shape { destination_ports: 6, flows: 6, syn_only: true, ..shape() }, AttackKind::Scan),
            (Shape { protocol: 1, peers: 254, packets: 254, ..shape() }, AttackKind::Sweep),
            (Shape { protocol: 1, packets: 10_000, ..shape() }, AttackKind::IcmpFlood),
            (Shape { syn_only: true, syn_unanswered: true, packets: 37_000, ..shape() }, AttackKind::SynFlood),
            // A SYN flood at an open port: answered, never acknowledged; many one-SYN conversations.
            (Shape { syn_only: true, flows: 900, packets: 900, dst_port: 22, ..shape() }, AttackKind::SynFlood),
            // The first window of a SYN flood at a web port: 57 half-open conversations, not a slow DoS.
            (
                Shape { syn_only: true, flows: 57, packets: 114, bytes_out: 120, bytes_back: 60, ..shape() },
                AttackKind::SynFlood,
            ),
            (Shape { protocol: 17, packets: 10_000, ..shape() }, AttackKind::UdpFlood),
            (Shape { protocol: 17, src_port: 123, packets: 10_000, ..shape() }, AttackKind::Reflection),
            (Shape { dst_port: 22, flows: 400, packets: 8_000, ..shape() }, AttackKind::PasswordGuessing),
            (
                Shape { dst_port: 21, flows: 40, packets: 600, bytes_out: 900, bytes_back: 1400, ..shape() },
                AttackKind::PasswordGuessing,
            ),
            (
                Shape { flows: 5_000, packets: 50_000, bytes_out: 400, bytes_back: 9_000, ..shape() },
                AttackKind::HttpFlood,
            ),
            (Shape { flows: 400, packets: 2_000, bytes_out: 300, bytes_back: 120, ..shape() }, AttackKind::SlowDos),
            (
                Shape { flows: 1, packets: 20, bytes_out: 1_200, bytes_back: 600, seconds: 120.0, ..shape() },
                AttackKind::SlowDos,
            ),
            (
                Shape { dst_port: 9000, bytes_out: 200_000_000, bytes_back: 1_000_000, ..shape() },
                AttackKind::Exfiltration,
            ),
            (Shape { protocol: 47, flows: 200, packets: 250, protocols: 38, ..shape() }, AttackKind::Scan),
            // A slow scan: few ports in the window's anomalous conversations, more in its context.
            (Shape { destination_ports: 3, context_ports: 11, flows: 3, syn_only: true, ..shape() }, AttackKind::Scan),
            (Shape { protocol: 1, context_hosts: 40, packets: 40, ..shape() }, AttackKind::Sweep),
            (Shape { protocol: 47, packets: 5_000, ..shape() }, AttackKind::OtherFlood),
            (Shape { dst_port: 9000, flows: 3, packets: 30, ..shape() }, AttackKind::Unknown),
        ];
        for (s, kind) in cases {
            assert_eq!(AttackKind::of_source(&s), kind, "{s:?}");
        }
        // A flood to many hosts is not a sweep.
        let spray = Shape { protocol: 17, peers: 20, packets: 200_000, ..shape() };
        assert_eq!(AttackKind::of_source(&spray), AttackKind::UdpFlood);
    }

    #[test]
    fn destination_alerts_are_floods_of_their_protocol() {
        let cases = [
            (Shape { protocol: 58, ..shape() }, AttackKind::IcmpFlood),
            (Shape { syn_unanswered: true, dst_port: 25_565, ..shape() }, AttackKind::SynFlood),
            (shape(), AttackKind::HttpFlood),
            (Shape { protocol: 17, src_port: 53, ..shape() }, AttackKind::Reflection),
            (Shape { protocol: 17, ..shape() }, AttackKind::UdpFlood),
            (Shape { protocol: 6, dst_port: 9000, ..shape() }, AttackKind::OtherFlood),
        ];
        for (s, kind) in cases {
            assert_eq!(AttackKind::of_destination(&s), kind, "{s:?}");
        }
    }

    #[test]
    fn docs_detection_md_carries_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/detection.md");
        let doc = std::fs::read_to_string(path).unwrap();
        assert!(doc.contains(&markdown_table()), "docs/detection.md must hold this table:\n{}", markdown_table());
    }
}
