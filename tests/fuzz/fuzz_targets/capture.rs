//! The capture reader and the offline flow table on arbitrary file bytes: no panic, and the
//! records are consistent with the frames read.

#![no_main]

use std::{path::Path, time::Duration};

use libfuzzer_sys::fuzz_target;
use vigil::{
    capture::CaptureReader,
    flows::{HarvestConfig, offline::OfflineTable},
};

fuzz_target!(
    init: {
        // pcap-file reads through an 8 MB buffer per reader. With glibc's adaptive threshold,
        // each one soon comes from the heap and is zeroed in full (0.3 ms per input); a fixed
        // threshold keeps them fresh mmap pages, of which only the touched ones cost.
        // SAFETY: mallopt only changes allocator tuning.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20) };
    },
    |data: &[u8]| {
    let Ok(mut reader) = CaptureReader::from_bytes(Path::new("fuzz.pcap"), data.to_vec()) else {
        return;
    };
    // Short timeouts so idle and active expiry run too.
    let harvest = HarvestConfig {
        idle_timeout: Duration::from_secs(2),
        active_timeout: Duration::from_secs(5),
        ..HarvestConfig::default()
    };
    let mut table = OfflineTable::new(harvest, Duration::from_secs(1));
    let mut records = Vec::new();
    let mut frames = 0u64;
    while let Some(frame) = reader.next_frame() {
        let Ok(frame) = frame else { break };
        assert!(frame.wire_len as usize >= frame.data.len() || frame.data.len() > u32::MAX as usize);
        frames += 1;
        table.packet(&frame, |c| records.extend(c.legs()));
    }
    let summary = table.finish(|c| records.extend(c.legs()));
    assert_eq!(summary.counters.packets, frames);
    let in_flows: u64 = records.iter().map(|r| r.packets).sum();
    assert!(in_flows <= frames, "{in_flows} packets in records from {frames} frames");
    for r in &records {
        assert!(r.packets >= 1);
        assert!(r.first_seen_ns <= r.last_seen_ns);
        assert!(r.len_min <= r.len_max);
        assert!(r.bytes >= u64::from(r.len_max));
    }
});
