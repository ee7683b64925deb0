//! Conversations with their raw feature rows, from captures or from flow-record files.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    time::Duration,
};

use ndarray::{Array2, Axis, concatenate};

use super::{ContextWindow, FlowFeatures, flow::FLOW_FEATURE_COUNT};
use crate::{
    flows::{
        FlowRecord, HarvestConfig,
        biflow::{self, BiflowRecord, Conversation},
    },
    replay::{self, ReplayError},
};

/// Conversations and their raw feature rows (row `i` is `conversations[i]`), with the file
/// each came from.
#[derive(Debug)]
pub struct FlowDataset {
    pub conversations: Vec<Conversation>,
    pub rows: Array2<f32>,
    /// Index into `files` per conversation.
    pub file_index: Vec<usize>,
    pub files: Vec<PathBuf>,
}

/// Why flow data could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: not a flow record: {source}")]
    Record { path: PathBuf, line: usize, source: serde_json::Error },
}

impl FlowDataset {
    fn from_groups(groups: Vec<Vec<Conversation>>, files: Vec<PathBuf>, window: Duration) -> Self {
        let mut conversations = Vec::new();
        let mut file_index = Vec::new();
        let mut parts = Vec::new();
        for (i, group) in groups.into_iter().enumerate() {
            // Each file has its own clock, so its own context window.
            parts.push(FlowFeatures::new(ContextWindow::new(window)).batch(&group));
            file_index.extend(std::iter::repeat_n(i, group.len()));
            conversations.extend(group);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let rows = if views.is_empty() {
            Array2::zeros((0, FLOW_FEATURE_COUNT))
        } else {
            concatenate(Axis(0), &views).expect("same width")
        };
        Self { conversations, rows, file_index, files }
    }

    /// Replays captures (as `vigil replay` does) and computes features per file.
    ///
    /// # Errors
    /// [`DatasetError::Replay`] for an unreadable capture.
    pub fn from_captures(
        files: &[PathBuf],
        harvest: HarvestConfig,
        interval: Duration,
        window: Duration,
        progress: bool,
    ) -> Result<Self, DatasetError> {
        let mut groups = vec![Vec::new(); files.len()];
        replay::replay_files(files, harvest, interval, progress, |i, r| groups[i].push(r))?;
        Ok(Self::from_groups(groups, files.to_vec(), window))
    }

    /// Reads flow-record JSON lines (`vigil replay` or `vigil run --flows-out` output).
    ///
    /// # Errors
    /// [`DatasetError`] naming the file and line of a bad record.
    pub fn from_flow_files(files: &[PathBuf], window: Duration) -> Result<Self, DatasetError> {
        let mut groups = Vec::new();
        for path in files {
            groups.push(read_records(path)?);
        }
        Ok(Self::from_groups(groups, files.to_vec(), window))
    }

    /// Writes one CSV row per conversation: its file, initiator, responder, protocol, first
    /// packet time, then (with a detector) its scores and the alert threshold, then the raw
    /// features. Returns the number of rows.
    ///
    /// # Errors
    /// A write error, or a scoring failure as an I/O error.
    pub fn write_features(
        &self,
        mut out: impl std::io::Write,
        detector: Option<&crate::model::Detector>,
    ) -> std::io::Result<usize> {
        let scores = match detector {
            Some(d) => Some(d.score(self.rows.view()).map_err(std::io::Error::other)?),
            None => None,
        };
        write!(out, "file,orig_ip,orig_port,resp_ip,resp_port,protocol,first_seen_ns")?;
        if scores.is_some() {
            write!(out, ",score,iforest,autoencoder,alert_threshold")?;
        }
        for f in super::FLOW_FEATURES {
            write!(out, ",{}", f.0)?;
        }
        writeln!(out)?;
        for (i, c) in self.conversations.iter().enumerate() {
            let r = &c.first;
            let file = self.files[self.file_index[i]].display().to_string().replace(',', "_");
            write!(
                out,
                "{file},{},{},{},{},{},{}",
                r.src_ip,
                r.src_port,
                r.dst_ip,
                r.dst_port,
                r.protocol,
                c.first_seen_ns()
            )?;
            if let (Some(s), Some(d)) = (&scores, detector) {
                let s = s[i];
                write!(out, ",{},{},{},{}", s.combined, s.iforest, s.autoencoder, d.thresholds.alert)?;
            }
            for v in self.rows.row(i) {
                write!(out, ",{v}")?;
            }
            writeln!(out)?;
        }
        out.flush()?;
        Ok(self.conversations.len())
    }

    /// Keeps at most `max_rows` conversations of each file, a random sample (by `seed`) of a
    /// larger file's in their original order. Returns how many were dropped.
    pub fn cap_per_file(&mut self, max_rows: usize, seed: u64) -> usize {
        use rand::{SeedableRng, seq::SliceRandom};
        let mut by_file = vec![Vec::new(); self.files.len()];
        for (i, &f) in self.file_index.iter().enumerate() {
            by_file[f].push(i);
        }
        let mut keep = Vec::with_capacity(self.len());
        for (f, mut of_file) in by_file.into_iter().enumerate() {
            if of_file.len() > max_rows {
                of_file.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed ^ f as u64));
                of_file.truncate(max_rows);
            }
            keep.extend(of_file);
        }
        keep.sort_unstable();
        let dropped = self.len() - keep.len();
        self.rows = self.rows.select(ndarray::Axis(0), &keep);
        self.conversations = keep.iter().map(|&i| self.conversations[i].clone()).collect();
        self.file_index = keep.iter().map(|&i| self.file_index[i]).collect();
        dropped
    }

    /// Number of conversations.
    #[must_use]
    pub fn len(&self) -> usize {
        self.conversations.len()
    }

    /// True if there are no conversations.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
    }
}

/// A line of a flow-record file, of either format.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum AnyRecord {
    Conversation(Box<BiflowRecord>),
    Direction(Box<FlowRecord>),
}

/// Reads one JSON-lines file of flow records (blank lines skipped) as conversations, the unit
/// the flow schema describes: a conversation record (format 2, what `--flows-out` and
/// `vigil replay` write) is one; directional records (format 1, written before conversations)
/// are paired with their other direction when the file holds it.
///
/// # Errors
/// [`DatasetError`] naming the file and line.
pub fn read_records(path: &Path) -> Result<Vec<Conversation>, DatasetError> {
    let io = |source| DatasetError::Io { path: path.to_owned(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = Vec::new();
    let mut directional = Vec::new();
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        let record: AnyRecord = serde_json::from_str(&line).map_err(|source| DatasetError::Record {
            path: path.to_owned(),
            line: n + 1,
            source,
        })?;
        match record {
            AnyRecord::Conversation(c) => out.push(c.conversation()),
            AnyRecord::Direction(r) => directional.push(*r),
        }
    }
    out.extend(biflow::pair_all(directional));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::flow::tests::record;

    fn dataset(per_file: &[usize]) -> FlowDataset {
        let groups: Vec<Vec<Conversation>> = per_file
            .iter()
            .enumerate()
            .map(|(f, &n)| {
                (0..n)
                    .map(|i| {
                        let port = u16::try_from(i).expect("small");
                        Conversation::new(record(u8::try_from(f).expect("small"), 200, port, i as u64), None)
                    })
                    .collect()
            })
            .collect();
        let files = (0..per_file.len()).map(|f| PathBuf::from(format!("f{f}.pcap"))).collect();
        FlowDataset::from_groups(groups, files, Duration::from_secs(10))
    }

    #[test]
    fn the_per_file_cap_samples_large_files_and_keeps_rows_with_their_conversations() {
        let mut d = dataset(&[500, 20, 80]);
        let before = d.clone_rows();
        let dropped = d.cap_per_file(50, 1);
        assert_eq!(dropped, 450 + 30);
        assert_eq!(d.len(), 50 + 20 + 50);
        assert_eq!(d.rows.nrows(), d.len());
        let per_file: Vec<usize> = (0..3).map(|f| d.file_index.iter().filter(|&&i| i == f).count()).collect();
        assert_eq!(per_file, [50, 20, 50]);
        // Each kept row is still its conversation's row (its ports seen so far identify it).
        let ports = crate::features::FLOW_FEATURES.iter().position(|f| f.0 == "src_dst_ports").expect("exists");
        for (i, c) in d.conversations.iter().enumerate() {
            let original =
                before.iter().position(|(conv, _)| conv == &(c.first.src_ip, c.first.dst_port)).expect("kept");
            assert_eq!(d.rows.row(i)[ports].to_bits(), before[original].1[ports].to_bits());
        }
        // The same seed keeps the same rows; a cap above every file keeps everything.
        let mut again = dataset(&[500, 20, 80]);
        again.cap_per_file(50, 1);
        assert_eq!(again.rows, d.rows);
        assert_eq!(dataset(&[5, 6]).cap_per_file(10, 1), 0);
    }

    impl FlowDataset {
        fn clone_rows(&self) -> Vec<((std::net::IpAddr, u16), Vec<f32>)> {
            self.conversations
                .iter()
                .enumerate()
                .map(|(i, c)| ((c.first.src_ip, c.first.dst_port), self.rows.row(i).to_vec()))
                .collect()
        }
    }
}
