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
