//! `vigil replay`: flow records from capture files, through the sensor's own per-packet code.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::{
    capture::{CaptureError, CaptureReader},
    flows::{HarvestConfig, biflow::Conversation, offline::OfflineTable, output::FlowWriter},
};

/// Settings of one `vigil replay`.
#[derive(Clone, Debug)]
pub struct ReplayConfig {
    pub files: Vec<PathBuf>,
    /// Where records go (`-` for standard output).
    pub flows_out: PathBuf,
    pub harvest: HarvestConfig,
    /// Capture time between timeout checks (the live harvest interval).
    pub interval: Duration,
    /// Show a progress bar on a terminal.
    pub progress: bool,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path}: {source}")]
    Output { path: PathBuf, source: std::io::Error },
}

/// Totals of a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayTotals {
    pub packets: u64,
    pub malformed: u64,
    pub records: u64,
}

/// Replays every file (each its own capture with its own clock) into flow records.
/// Every file is opened and checked before any record is written.
///
/// Records are appended to `flows_out` all at once: they go to a temporary file beside it
/// (holding a copy of what `flows_out` had) that replaces it only when the whole replay
/// succeeded, so a capture corrupt halfway leaves the output as it was. Standard output and
/// outputs that are not regular files (`/dev/null`, a pipe) are written as records come.
///
/// # Errors
/// [`ReplayError`] for an unreadable or corrupt capture, or an unwritable output.
pub fn replay(config: &ReplayConfig) -> Result<ReplayTotals, ReplayError> {
    // Open the output only after the captures opened, so a bad capture creates no file.
    let readers = open_all(&config.files)?;
    let staged = StagedOutput::new(&config.flows_out)?;
    let mut writer = FlowWriter::open(staged.path())?;
    let mut write_error = None;
    let mut totals = replay_readers(readers, config.harvest, config.interval, config.progress, |_, round| {
        for c in round {
            if let Err(e) = writer.write(&c.record()) {
                write_error.get_or_insert(e);
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writer.flush()?;
    totals.records = writer.written();
    drop(writer);
    staged.commit()?;
    Ok(totals)
}

/// An output file written under a temporary name in its own directory and renamed over the
/// real one at the end; removed if never committed.
struct StagedOutput {
    /// Where records are written now.
    writing: PathBuf,
    /// Where they belong; `None` when written in place.
    target: Option<PathBuf>,
}

impl StagedOutput {
    fn new(target: &Path) -> Result<Self, ReplayError> {
        let in_place = Self { writing: target.to_owned(), target: None };
        if target == Path::new("-") {
            return Ok(in_place);
        }
        let existing = match std::fs::metadata(target) {
            Ok(m) if !m.is_file() => return Ok(in_place),
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(ReplayError::Output { path: target.to_owned(), source }),
        };
        let Some(name) = target.file_name() else {
            let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name");
            return Err(ReplayError::Output { path: target.to_owned(), source });
        };
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let staged = Self { writing: target.with_file_name(temp_name), target: Some(target.to_owned()) };
        let result = if existing {
            std::fs::copy(target, &staged.writing).map(drop)
        } else {
            std::fs::File::create(&staged.writing).map(drop)
        };
        result.map_err(|source| ReplayError::Output { path: staged.writing.clone(), source })?;
        Ok(staged)
    }

    fn path(&self) -> &Path {
        &self.writing
    }

    /// Puts the records in place.
    fn commit(mut self) -> Result<(), ReplayError> {
        let Some(target) = self.target.take() else { return Ok(()) };
        std::fs::rename(&self.writing, &target).map_err(|source| {
            let _ = std::fs::remove_file(&self.writing);
            ReplayError::Output { path: target, source }
        })
    }
}

impl Drop for StagedOutput {
    fn drop(&mut self) {
        if self.target.is_some() {
            let _ = std::fs::remove_file(&self.writing);
        }
    }
}

fn open_all(files: &[PathBuf]) -> Result<Vec<CaptureReader>, ReplayError> {
    Ok(files.iter().map(|f| CaptureReader::open(f)).collect::<Result<Vec<_>, _>>()?)
}

/// Replays `files` and hands every conversation to `emit` with the index of the file it came
/// from: the conversations that left the table together (one timeout check of the flow table,
/// or the end of the capture), in order of their first packets.
/// Every file is opened before the first conversation.
///
/// # Errors
/// [`ReplayError`] for an unreadable or corrupt capture.
pub fn replay_files(
    files: &[PathBuf],
    harvest: HarvestConfig,
    interval: Duration,
    progress: bool,
    mut emit: impl FnMut(usize, Conversation),
) -> Result<ReplayTotals, ReplayError> {
    replay_readers(open_all(files)?, harvest, interval, progress, |index, mut round| {
        round.sort_by_key(|c| (c.first_seen_ns(), c.first.key()));
        for c in round {
            emit(index, c);
        }
    })
}

/// # Panics
/// Never: the progress template is a constant that parses.
fn replay_readers(
    mut readers: Vec<CaptureReader>,
    harvest: HarvestConfig,
    interval: Duration,
    progress: bool,
    mut emit: impl FnMut(usize, Vec<Conversation>),
) -> Result<ReplayTotals, ReplayError> {
    let total_bytes: u64 = readers.iter().map(CaptureReader::size).sum();
    let bar = if progress { ProgressBar::new(total_bytes) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut totals = ReplayTotals::default();
    for (index, reader) in readers.iter_mut().enumerate() {
        let started = Instant::now();
        bar.set_message(reader.path().display().to_string());
        let mut table = OfflineTable::new(harvest, interval);
        let mut records = 0u64;
        // The conversations of one timeout check (or of the end), handed on together.
        let mut round = Vec::new();
        while let Some(frame) = reader.next_frame() {
            let frame = frame?;
            // Record header plus data: close enough to the file offset for a progress bar.
            bar.inc(16 + frame.data.len() as u64);
            table.packet(&frame, |c| round.push(c));
            if !round.is_empty() {
                records += round.len() as u64;
                emit(index, std::mem::take(&mut round));
            }
        }
        let summary = table.finish(|c| round.push(c));
        records += round.len() as u64;
        emit(index, round);
        let c = summary.counters;
        let reasons: Vec<String> = agent_common::counters::Malformed::ALL
            .iter()
            .filter(|r| c.malformed[**r as usize] > 0)
            .map(|r| format!("{}={}", r.name(), c.malformed[*r as usize]))
            .collect();
        info!(
            file = %reader.path().display(),
            packets = c.packets,
            malformed = c.malformed_total(),
            malformed_reasons = reasons.join(","),
            non_ip = c.non_ip_packets,
            flows = c.flows_created,
            out_of_order = summary.out_of_order,
            elapsed_ms = started.elapsed().as_millis(),
            "replayed"
        );
        totals.packets += c.packets;
        totals.malformed += c.malformed_total();
        totals.records += records;
    }
    bar.finish_and_clear();
    Ok(totals)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::tests::pcap_bytes;

    const UDP4: [u8; 42] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, // ethernet
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ipv4
        0x03, 0xe8, 0, 53, 0, 8, 0, 0, // udp
    ];

    fn config(dir: &Path, files: &[&str]) -> ReplayConfig {
        ReplayConfig {
            files: files.iter().map(|f| dir.join(f)).collect(),
            flows_out: dir.join("flows.jsonl"),
            harvest: HarvestConfig::default(),
            interval: crate::flows::DEFAULT_INTERVAL,
            progress: false,
        }
    }

    #[test]
    fn a_replay_failing_midway_leaves_the_output_as_it_was() {
        let dir = std::env::temp_dir().join(format!("vigil-replay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("good.pcap"), pcap_bytes(65_535, &[(&UDP4, 42)])).expect("write");
        // A good record, then one cut short: the reader fails after records were emitted.
        let mut bad = pcap_bytes(65_535, &[(&UDP4, 42), (&UDP4, 42)]);
        bad.truncate(bad.len() - 10);
        std::fs::write(dir.join("bad.pcap"), bad).expect("write");
        let out = dir.join("flows.jsonl");

        let err = replay(&config(&dir, &["good.pcap", "bad.pcap"])).expect_err("bad.pcap is cut");
        assert!(err.to_string().contains("bad.pcap"), "{err}");
        assert!(!out.exists(), "no partial output");
        let leftovers: Vec<_> = std::fs::read_dir(&dir).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left: {leftovers:?}");

        let totals = replay(&config(&dir, &["good.pcap"])).expect("replays");
        assert_eq!(totals.records, 1);
        let first = std::fs::read_to_string(&out).expect("output");
        assert_eq!(first.lines().count(), 1);
        replay(&config(&dir, &["good.pcap", "bad.pcap"])).expect_err("bad.pcap is cut");
        assert_eq!(std::fs::read_to_string(&out).expect("output"), first, "a failed replay changes nothing");
        replay(&config(&dir, &["good.pcap"])).expect("replays");
        assert_eq!(std::fs::read_to_string(&out).expect("output").lines().count(), 2, "records are appended");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
