//! Replaying captures into the lab with tcpreplay, after mapping labelled addresses into the
//! lab's range with tcprewrite.

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use vigil::capture::CaptureReader;

use vigil_tests::{
    interrupt::{self, Interrupted},
    netns::Netns,
};

/// The source MAC of every replayed frame (locally administered, unicast).
pub const REPLAY_MAC: &str = "02:00:00:77:00:01";

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
            // tcpreplay sends a packet stamped earlier than the previous one at once.
            replay_ns += frame.ts_ns.saturating_sub(prev).min(cap);
        }
        last = Some(frame.ts_ns);
    }
    Ok(CaptureInfo { packets, max_frame, replay: Duration::from_nanos(replay_ns) })
}

/// Writes `input` to `output` with each `(from, to)` address rewritten in both directions
/// (tcprewrite's pseudo-NAT; checksums are fixed). Addresses must be of one family per pair.
/// With `mtu`, larger packets are cut to it (the lab's links carry no more). Then every
/// multicast source MAC becomes [`REPLAY_MAC`] ([`fix_source_macs`]).
///
/// # Errors
/// tcprewrite's own message.
///
/// # Panics
/// Never in practice (formatting into a string).
pub fn rewrite(input: &Path, output: &Path, pairs: &[(IpAddr, IpAddr)], mtu: Option<u32>) -> Result<(), String> {
    let mut pnat = String::new();
    for (from, to) in pairs {
        if !pnat.is_empty() {
            pnat.push(',');
        }
        match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) => write!(pnat, "{f}/32:{t}/32"),
            (IpAddr::V6(f), IpAddr::V6(t)) => write!(pnat, "[{f}/128]:[{t}/128]"),
            _ => return Err(format!("cannot map {from} to {to}: address families differ")),
        }
        .expect("writing to a string");
    }
    let mut cmd = Command::new("tcprewrite");
    cmd.arg(format!("--infile={}", input.display())).arg(format!("--outfile={}", output.display())).arg("--fixcsum");
    if !pnat.is_empty() {
        cmd.arg(format!("--pnat={pnat}"));
    }
    if let Some(mtu) = mtu {
        cmd.arg(format!("--mtu={mtu}")).arg("--mtu-trunc");
    }
    let out = cmd.output().map_err(|e| format!("starting tcprewrite: {e} (cargo xtask setup installs it)"))?;
    if out.status.success() {
        fix_source_macs(output)
    } else {
        Err(format!("tcprewrite failed on {}: {}", input.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Rewrites, in place, every Ethernet source MAC that is a multicast address to
/// [`REPLAY_MAC`]. Some captures carry synthesised Ethernet headers (nDPI's reddit.pcap has
/// 33:33:.. on both sides, IPv6 multicast MACs); a Linux bridge drops frames with a multicast
/// source as invalid, so they would never reach the agent. The sensor does not look at MACs.
/// tcprewrite's `--enet-smac` left these frames unchanged here, hence this.
///
/// # Errors
/// The file cannot be read or written as pcap.
///
/// # Panics
/// Never in practice ([`REPLAY_MAC`] is a valid MAC).
pub fn fix_source_macs(path: &Path) -> Result<(), String> {
    use pcap_file::pcap::{PcapReader, PcapWriter};
    let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let data = std::fs::read(path).map_err(|e| err(&e))?;
    let mut reader = PcapReader::new(&data[..]).map_err(|e| err(&e))?;
    let mut out = Vec::with_capacity(data.len());
    let mut writer = PcapWriter::with_header(&mut out, reader.header()).map_err(|e| err(&e))?;
    let mac: Vec<u8> = REPLAY_MAC.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex MAC")).collect();
    while let Some(packet) = reader.next_packet() {
        let mut packet = packet.map_err(|e| err(&e))?;
        if packet.data.len() >= 12 && packet.data[6] & 1 == 1 {
            packet.data.to_mut()[6..12].copy_from_slice(&mac);
        }
        writer.write_packet(&packet).map_err(|e| err(&e))?;
    }
    std::fs::write(path, out).map_err(|e| err(&e))
}

/// One replay's outcome.
#[derive(Clone, Debug)]
pub struct Replayed {
    pub elapsed: Duration,
    /// Packets tcpreplay reported sent, when it said.
    pub sent: Option<u64>,
    /// Packets it failed to send.
    pub failed: Option<u64>,
}

/// Replays `file` out of `iface` in `ns` at recorded speed, gaps capped at `max_gap`.
///
/// # Errors
/// [`Interrupted`] on Ctrl-C; a message if tcpreplay fails or runs past `limit`.
///
/// # Panics
/// If waiting for tcpreplay fails.
pub fn replay(
    ns: &Netns,
    iface: &str,
    file: &Path,
    max_gap: Duration,
    limit: Duration,
) -> Result<Result<Replayed, String>, Interrupted> {
    let started = Instant::now();
    let mut cmd = ns.command("tcpreplay");
    cmd.arg(format!("--intf1={iface}"))
        .arg(format!("--maxsleep={}", max_gap.as_millis().max(1)))
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    interrupt::own_group(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ok(Err(format!("starting tcpreplay: {e} (cargo xtask setup installs it)"))),
    };
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
        (out, err)
    });
    let status = interrupt::wait(&mut child, limit)?;
    let (out, err) = reader.join().unwrap_or_default();
    let elapsed = started.elapsed();
    match status {
        None => Ok(Err(format!("tcpreplay still running after {limit:?}; killed"))),
        Some(s) if !s.success() => Ok(Err(format!("tcpreplay failed ({s}): {}", err.trim()))),
        Some(_) => {
            Ok(Ok(Replayed { elapsed, sent: stat(&out, "Successful packets:"), failed: stat(&out, "Failed packets:") }))
        }
    }
}

/// A number after `label` in tcpreplay's summary.
fn stat(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_tcpreplay_summary() {
        let out = "Actual: 22 packets (2376 bytes) sent in 3.39 seconds\n\tSuccessful packets:        22\n\tFailed packets:            1\n";
        assert_eq!(super::stat(out, "Successful packets:"), Some(22));
        assert_eq!(super::stat(out, "Failed packets:"), Some(1));
        assert_eq!(super::stat(out, "Truncated packets:"), None);
    }
}
