//! `vigil replay`: flow records from capture files, through the sensor's own per-packet code.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::{
    capture::{CaptureError, CaptureReader},
    flows::{FlowRecord, HarvestConfig, offline::OfflineTable, output::FlowWriter},
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
/// # Errors
/// [`ReplayError`] for an unreadable or corrupt capture, or an unwritable output.
pub fn replay(config: &ReplayConfig) -> Result<ReplayTotals, ReplayError> {
    // Open the output only after the captures opened, so a bad capture creates no file.
    let readers = open_all(&config.files)?;
    let mut writer = FlowWriter::open(&config.flows_out)?;
    let mut write_error = None;
    let mut totals = replay_readers(readers, config.harvest, config.interval, config.progress, |_, r| {
        if let Err(e) = writer.write(&r) {
            write_error.get_or_insert(e);
        }
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writer.flush()?;
    totals.records = writer.written();
    Ok(totals)
}

fn open_all(files: &[PathBuf]) -> Result<Vec<CaptureReader>, ReplayError> {
    Ok(files.iter().map(|f| CaptureReader::open(f)).collect::<Result<Vec<_>, _>>()?)
}

/// Replays `files` and hands every record to `emit` with the index of the file it came from.
/// Every file is opened before the first record.
///
/// # Errors
/// [`ReplayError`] for an unreadable or corrupt capture.
pub fn replay_files(
    files: &[PathBuf],
    harvest: HarvestConfig,
    interval: Duration,
    progress: bool,
    emit: impl FnMut(usize, FlowRecord),
) -> Result<ReplayTotals, ReplayError> {
    replay_readers(open_all(files)?, harvest, interval, progress, emit)
}

/// # Panics
/// Never: the progress template is a constant that parses.
fn replay_readers(
    mut readers: Vec<CaptureReader>,
    harvest: HarvestConfig,
    interval: Duration,
    progress: bool,
    mut emit: impl FnMut(usize, FlowRecord),
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
        let mut emit = |r| {
            records += 1;
            emit(index, r);
        };
        while let Some(frame) = reader.next_frame() {
            let frame = frame?;
            // Record header plus data: close enough to the file offset for a progress bar.
            bar.inc(16 + frame.data.len() as u64);
            table.packet(&frame, &mut emit);
        }
        let summary = table.finish(&mut emit);
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
