//! What a capture holds before it is replayed into the lab (the replaying itself is
//! `vigil_tests::host_replay`: the victim's side from the victim's namespace, the rest from
//! outside).

use std::{path::Path, time::Duration};

use vigil::capture::CaptureReader;

/// What a capture holds, and how long replaying it takes.
#[derive(Clone, Debug)]
pub struct CaptureInfo {
    pub packets: u64,
    /// The largest frame, in bytes (the replaying link's MTU must carry it).
    pub max_frame: usize,
    /// Replay time at recorded speed with gaps capped at `max_gap`.
    pub replay: Duration,
}

/// Reads a capture's timing and sizes.
///
/// # Errors
/// The reader's message if the file is not a readable capture.
pub fn inspect(path: &Path, max_gap: Duration) -> Result<CaptureInfo, String> {
    let mut reader = CaptureReader::open(path).map_err(|e| e.to_string())?;
    let (mut packets, mut max_frame, mut replay_ns, mut last) = (0u64, 0usize, 0u64, None::<u64>);
    let cap = u64::try_from(max_gap.as_nanos()).unwrap_or(u64::MAX);
    while let Some(frame) = reader.next_frame() {
        let frame = frame.map_err(|e| e.to_string())?;
        packets += 1;
        max_frame = max_frame.max(frame.data.len());
        if let Some(prev) = last {
            // A packet stamped earlier than the previous one is sent at once.
            replay_ns += frame.ts_ns.saturating_sub(prev).min(cap);
        }
        last = Some(last.map_or(frame.ts_ns, |prev: u64| prev.max(frame.ts_ns)));
    }
    Ok(CaptureInfo { packets, max_frame, replay: Duration::from_nanos(replay_ns) })
}
