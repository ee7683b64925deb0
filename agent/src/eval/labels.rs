//! Ground truth for captures: a `labels.json` next to them, keyed by path relative to it
//! (`*` matches any run of characters, e.g. `benign/*`), each entry with a `kind` (`benign` or
//! the attack's kind) and optionally the `attacker` and `victim` addresses.
//!
//! A flow of an attack capture is an attack flow when its source or destination is the
//! attacker, or, when the attacker is unknown (spoofed sources), the victim. Other flows in an
//! attack capture are background and count as benign. Every flow of a benign capture is benign.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::flows::FlowRecord;

/// The kind that marks benign captures.
pub const BENIGN: &str = "benign";

/// One entry of `labels.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureLabel {
    pub kind: String,
    #[serde(default)]
    pub attacker: Option<IpAddr>,
    #[serde(default)]
    pub victim: Option<IpAddr>,
    #[serde(default)]
    pub note: Option<String>,
}

impl CaptureLabel {
    /// True for a benign capture.
    #[must_use]
    pub fn is_benign(&self) -> bool {
        self.kind == BENIGN
    }

    /// Whether `record` is part of the attack.
    #[must_use]
    pub fn is_attack_flow(&self, record: &FlowRecord) -> bool {
        if self.is_benign() {
            return false;
        }
        let involves = |a: IpAddr| record.src_ip == a || record.dst_ip == a;
        match (self.attacker, self.victim) {
            (Some(a), _) => involves(a),
            (None, Some(v)) => involves(v),
            // No address given: the whole capture is the attack.
            (None, None) => true,
        }
    }
}

/// Why labels could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a labels file: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{path}: no capture matches any label")]
    NoCaptures { path: PathBuf },
}

/// A parsed `labels.json` and the directory its paths are relative to.
#[derive(Clone, Debug)]
pub struct Labels {
    /// The labels file, as given.
    pub path: PathBuf,
    /// Its directory (`.` for a bare file name).
    pub root: PathBuf,
    pub entries: BTreeMap<String, CaptureLabel>,
}

/// The directory a file lives in. The parent of a bare file name is the empty path, which
/// names no directory (reading it fails with a message that names nothing): it is `.`.
fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// `*` wildcard match over the whole string.
fn wildcard(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Labels {
    /// Reads a labels file.
    ///
    /// # Errors
    /// [`LabelError`] naming the file.
    pub fn read(path: &Path) -> Result<Self, LabelError> {
        let text = std::fs::read(path).map_err(|source| LabelError::Io { path: path.into(), source })?;
        let entries = serde_json::from_slice(&text).map_err(|source| LabelError::Json { path: path.into(), source })?;
        Ok(Self { path: path.to_owned(), root: directory_of(path), entries })
    }

    /// The label of a capture path relative to the root: an exact key wins over patterns.
    #[must_use]
    pub fn label(&self, relative: &str) -> Option<&CaptureLabel> {
        self.entries
            .get(relative)
            .or_else(|| self.entries.iter().find(|(k, _)| k.contains('*') && wildcard(k, relative)).map(|(_, v)| v))
    }

    /// Every capture (`.pcap`, `.pcapng`, `.cap`) under the root with a label, sorted by path.
    ///
    /// # Errors
    /// [`LabelError`] if the directory cannot be read or nothing matches.
    pub fn captures(&self) -> Result<Vec<(PathBuf, String, CaptureLabel)>, LabelError> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            let io = |source| LabelError::Io { path: dir.clone(), source };
            for entry in std::fs::read_dir(&dir).map_err(io)? {
                let path = entry.map_err(io)?.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let is_capture = path.extension().is_some_and(|e| e == "pcap" || e == "pcapng" || e == "cap");
                let Ok(relative) = path.strip_prefix(&self.root) else { continue };
                let relative = relative.to_string_lossy().replace('\\', "/");
                if let (true, Some(label)) = (is_capture, self.label(&relative)) {
                    out.push((path.clone(), relative, label.clone()));
                }
            }
        }
        if out.is_empty() {
            return Err(LabelError::NoCaptures { path: self.path.clone() });
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        // `Path::new("labels.json").parent()` is `Some("")`: reading "" failed with
        // ": No such file or directory".
        assert_eq!(directory_of(Path::new("labels.json")), PathBuf::from("."));
        assert_eq!(directory_of(Path::new("./labels.json")), PathBuf::from("."));
        assert_eq!(directory_of(Path::new("data/labels.json")), PathBuf::from("data"));
        assert_eq!(directory_of(Path::new("/labels.json")), PathBuf::from("/"));
    }

    #[test]
    fn captures_are_found_under_the_labels_directory_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("vigil-labels-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("benign")).expect("temp dir");
        let labels_path = dir.join("labels.json");
        std::fs::write(&labels_path, r#"{"benign/*": {"kind": "benign"}}"#).expect("write");
        let labels = Labels::read(&labels_path).expect("reads");
        let err = labels.captures().expect_err("no capture yet");
        assert_eq!(err.to_string(), format!("{}: no capture matches any label", labels_path.display()));
        std::fs::write(dir.join("benign/a.pcap"), b"").expect("write");
        std::fs::write(dir.join("benign/notes.txt"), b"").expect("write");
        let found = labels.captures().expect("one capture");
        assert_eq!(found.iter().map(|c| c.1.as_str()).collect::<Vec<_>>(), ["benign/a.pcap"]);
        let err = Labels::read(&dir.join("missing.json")).expect_err("missing");
        assert!(err.to_string().starts_with(&dir.join("missing.json").display().to_string()), "{err}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("benign/*", "benign/a.pcap"));
        assert!(wildcard("*.pcap", "x/y.pcap"));
        assert!(wildcard("a*b*c", "aXXbYYc"));
        assert!(!wildcard("benign/*", "attack/a.pcap"));
        assert!(!wildcard("a*bc", "abc_"));
        assert!(wildcard("exact", "exact") && !wildcard("exact", "exactly"));
    }

    #[test]
    fn attack_flows_by_attacker_or_victim() {
        let json = r#"{"attack/scan.pcap": {"kind": "port-scan", "attacker": "10.0.0.1", "victim": "10.0.0.2"},
                       "attack/flood.pcap": {"kind": "syn-flood", "attacker": null, "victim": "10.0.0.9"},
                       "benign/*": {"kind": "benign"}}"#;
        let labels = Labels {
            path: "labels.json".into(),
            root: ".".into(),
            entries: serde_json::from_str(json).expect("parses"),
        };
        let mut r = crate::features::flow::tests::record(1, 2, 80, 0);
        let scan = labels.label("attack/scan.pcap").expect("exact");
        assert!(scan.is_attack_flow(&r));
        r.src_ip = "10.0.0.7".parse().expect("ip");
        assert!(!scan.is_attack_flow(&r), "background flow");
        let flood = labels.label("attack/flood.pcap").expect("exact");
        r.dst_ip = "10.0.0.9".parse().expect("ip");
        assert!(flood.is_attack_flow(&r));
        assert!(labels.label("benign/x.pcapng").expect("pattern").is_benign());
        assert!(labels.label("other/x.pcap").is_none());
    }
}
