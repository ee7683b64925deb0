//! Clocks. The kernel stamps packets with `bpf_ktime_get_ns()`, which is `CLOCK_MONOTONIC`;
//! flow records carry Unix-epoch nanoseconds, converted here.

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

/// A duration in nanoseconds, as the kernel's and the flow records' clocks count; saturates at
/// `u64::MAX` (about 584 years).
#[must_use]
pub fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn now_ns(clock: ClockId) -> u64 {
    // CLOCK_MONOTONIC and CLOCK_REALTIME cannot fail on Linux with a valid timespec pointer.
    let ts = clock_gettime(clock).expect("clock_gettime");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

/// `CLOCK_MONOTONIC` now, in nanoseconds: the kernel program's clock.
#[must_use]
pub fn monotonic_ns() -> u64 {
    now_ns(ClockId::CLOCK_MONOTONIC)
}

/// `CLOCK_REALTIME` now, in Unix-epoch nanoseconds.
#[must_use]
pub fn wall_ns() -> u64 {
    now_ns(ClockId::CLOCK_REALTIME)
}

/// Converts kernel (`CLOCK_MONOTONIC`) timestamps to Unix-epoch nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MonoToWall {
    /// Unix-epoch ns minus monotonic ns, sampled together.
    offset: i128,
}

impl MonoToWall {
    /// Samples both clocks now.
    #[must_use]
    pub fn now() -> Self {
        let mono = now_ns(ClockId::CLOCK_MONOTONIC);
        let wall = now_ns(ClockId::CLOCK_REALTIME);
        Self { offset: i128::from(wall) - i128::from(mono) }
    }

    /// The identity: for timestamps that are already Unix-epoch (captures).
    #[must_use]
    pub const fn identity() -> Self {
        Self { offset: 0 }
    }

    /// A monotonic timestamp as Unix-epoch nanoseconds.
    #[must_use]
    pub fn wall_ns(self, mono_ns: u64) -> u64 {
        u64::try_from((i128::from(mono_ns) + self.offset).max(0)).unwrap_or(u64::MAX)
    }
}

/// Unix-epoch nanoseconds as RFC 3339 UTC with milliseconds (ECS `@timestamp`).
#[must_use]
pub fn rfc3339_millis(wall_ns: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns)).to_string()
}

/// Unix-epoch nanoseconds as RFC 3339 UTC with microseconds (syslog headers).
#[must_use]
pub fn rfc3339_micros(wall_ns: u64) -> String {
    humantime::format_rfc3339_micros(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns)).to_string()
}

/// The hour of day (UTC, 0-23) of a wall-clock time in ns since the epoch.
#[must_use]
pub fn utc_hour(wall_ns: u64) -> u8 {
    u8::try_from(wall_ns / 3_600_000_000_000 % 24).unwrap_or(0)
}
