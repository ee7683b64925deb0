//! `vigil replay`: flow records from capture files, through the sensor's own per-packet code.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::{
    capture::{CaptureError, CaptureReader},
    flows::{HarvestConfig, offline::OfflineTable, output::FlowWriter},
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
///
/// # Panics
/// Never: the progress template is a constant that parses.
pub fn replay(config: &ReplayConfig) -> Result<ReplayTotals, ReplayError> {
    let mut readers = config.files.iter().map(|f| CaptureReader::open(f)).collect::<Result<Vec<_>, _>>()?;
    let mut writer = FlowWriter::open(&config.flows_out)?;
    let total_bytes: u64 = readers.iter().map(CaptureReader::size).sum();
    let bar = if config.progress { ProgressBar::new(total_bytes) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut totals = ReplayTotals::default();
    let mut write_error = None;
    for reader in &mut readers {
        let started = Instant::now();
        bar.set_message(reader.path().display().to_string());
        let mut table = OfflineTable::new(config.harvest, config.interval);
        let mut emit = |r| {
            if let Err(e) = writer.write(&r) {
                write_error.get_or_insert(e);
            }
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
    }
    bar.finish_and_clear();
    if let Some(e) = write_error {
        return Err(e.into());
    }
    writer.flush()?;
    totals.records = writer.written();
    Ok(totals)
}
