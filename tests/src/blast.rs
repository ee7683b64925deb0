//! A raw frame sender for line-rate benchmarks: an `AF_PACKET` socket on one interface sending
//! batches of ready-made Ethernet frames with `sendmmsg`, every run bounded in time and count;
//! and the interface statistics to measure what arrived.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// What one [`Blaster::send`] did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Frames the kernel accepted.
    pub frames: u64,
    /// `sendmmsg` calls.
    pub calls: u64,
    /// Calls refused outright (`ENOBUFS`/`EAGAIN`: the device or the socket buffer was full).
    pub refused: u64,
    /// Time spent sending.
    pub elapsed: Duration,
    /// CPU time of the sending thread meanwhile, including the softirq work it ran inline
    /// (receive processing on a veth peer, unless deferred to `ksoftirqd`).
    pub cpu: Duration,
}

/// An `AF_PACKET` raw socket bound to one interface, bypassing the qdisc.
pub struct Blaster {
    fd: OwnedFd,
    addr: libc::sockaddr_ll,
}

impl Blaster {
    /// Opens the socket on `iface`, in the calling thread's network namespace. The socket
    /// listens to no protocol, so it never receives a copy of what it sends.
    ///
    /// # Errors
    /// If the interface does not exist or a socket call fails.
    pub fn open(iface: &str) -> io::Result<Self> {
        let (fd, addr) = packet_sender(iface, true)?;
        Ok(Self { fd, addr })
    }

    /// Sends `frames` over and over, one `sendmmsg` call per pass, until `duration` passed
    /// or `max_frames` were accepted. `refill` may rewrite the frames before each call (the
    /// frames it wrote last time may have been refused; they are not retried).
    ///
    /// # Errors
    /// On a send error other than a full device or buffer.
    ///
    /// # Panics
    /// If `frames` holds more than `u32::MAX` frames.
    pub fn send(
        &self,
        frames: &mut [Vec<u8>],
        duration: Duration,
        max_frames: u64,
        mut refill: impl FnMut(&mut [Vec<u8>]),
    ) -> io::Result<Sent> {
        let mut sent = Sent::default();
        let count = u32::try_from(frames.len()).expect("batch size");
        let mut iovs: Vec<libc::iovec> = Vec::with_capacity(frames.len());
        let mut msgs: Vec<libc::mmsghdr> = Vec::with_capacity(frames.len());
        let start = Instant::now();
        let cpu_start = thread_cpu_time();
        while sent.frames < max_frames && start.elapsed() < duration {
            refill(frames);
            iovs.clear();
            iovs.extend(frames.iter_mut().map(|f| libc::iovec { iov_base: f.as_mut_ptr().cast(), iov_len: f.len() }));
            msgs.clear();
            for iov in &mut iovs {
                // SAFETY: msghdr is plain data; all-zero is a valid value.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&raw const self.addr).cast_mut().cast();
                hdr.msg_namelen = socklen::<libc::sockaddr_ll>();
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                msgs.push(libc::mmsghdr { msg_hdr: hdr, msg_len: 0 });
            }
            // SAFETY: every header points at a live iovec and address, each iovec at a live
            // frame; none of them moves until the call returns.
            let n = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), count, libc::MSG_DONTWAIT) };
            sent.calls += 1;
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN) => sent.refused += 1,
                    _ => return Err(err),
                }
            } else {
                sent.frames += u64::try_from(n).unwrap_or(0);
            }
        }
        sent.elapsed = start.elapsed();
        sent.cpu = thread_cpu_time().saturating_sub(cpu_start);
        Ok(sent)
    }
}

/// An `AF_PACKET` raw socket for sending on `iface`, in the calling thread's network
/// namespace, bound to it, with the address to send to. It listens to no protocol, so it never
/// receives a copy of what it sends. With `bypass_qdisc` frames skip the qdisc layer and the
/// interface's TC egress programs (line-rate benchmarks); without, they pass them as the
/// host's own packets do.
///
/// # Errors
/// If the interface does not exist or a socket call fails.
pub fn packet_sender(iface: &str, bypass_qdisc: bool) -> io::Result<(OwnedFd, libc::sockaddr_ll)> {
    let ifindex = nix::net::if_::if_nametoindex(iface).map_err(io::Error::from)?;
    // SAFETY: plain socket call; the descriptor is owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    if bypass_qdisc {
        let one: libc::c_int = 1;
        // SAFETY: the option value is a live c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                socklen::<libc::c_int>(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).map_err(io::Error::other)?;
    addr.sll_ifindex = i32::try_from(ifindex).map_err(io::Error::other)?;
    addr.sll_halen = 6;
    // SAFETY: the address is a live sockaddr_ll of the size given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), socklen::<libc::sockaddr_ll>()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, addr))
}

/// CPU time the calling thread used so far.
fn thread_cpu_time() -> Duration {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

const fn socklen<T>() -> libc::socklen_t {
    #[expect(clippy::cast_possible_truncation, reason = "socket structures are a few bytes")]
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    len
}

/// Pins the calling thread to `cpu`.
///
/// # Panics
/// If the CPU does not exist or the call fails.
pub fn pin_thread(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("CPU number");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

/// Packet counters of an interface (`ip -s link`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

impl LinkStats {
    /// What changed since `before`.
    #[must_use]
    pub const fn since(&self, before: &Self) -> Self {
        Self {
            rx_packets: self.rx_packets.saturating_sub(before.rx_packets),
            rx_dropped: self.rx_dropped.saturating_sub(before.rx_dropped),
            tx_packets: self.tx_packets.saturating_sub(before.tx_packets),
            tx_dropped: self.tx_dropped.saturating_sub(before.tx_dropped),
        }
    }
}

fn link_json(ns: &Netns, iface: &str) -> serde_json::Value {
    let out = ns.ip_output(&["-s", "-j", "link", "show", iface]);
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0].take()
}

/// The counters of `iface` in `ns`.
///
/// # Panics
/// If `ip` fails or prints something unexpected.
#[must_use]
pub fn link_stats(ns: &Netns, iface: &str) -> LinkStats {
    let v = link_json(ns, iface);
    let n = |dir: &str, key: &str| v["stats64"][dir][key].as_u64().unwrap_or_else(|| panic!("no {dir}.{key}: {v}"));
    LinkStats {
        rx_packets: n("rx", "packets"),
        rx_dropped: n("rx", "dropped"),
        tx_packets: n("tx", "packets"),
        tx_dropped: n("tx", "dropped"),
    }
}

/// The MAC address of `iface` in `ns`.
///
/// # Panics
/// If `ip` fails or the address does not parse.
#[must_use]
pub fn link_mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let v = link_json(ns, iface);
    let text = v["address"].as_str().expect("address");
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16).expect("hex byte")).collect();
    bytes.try_into().expect("6-byte MAC")
}

/// Sets the calling thread's nice value (Linux applies it per thread).
///
/// # Panics
/// If the call fails (raising the priority needs `CAP_SYS_NICE`).
pub fn renice_thread(nice: i32) {
    // SAFETY: plain syscall on the calling thread (who = 0).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    assert_eq!(rc, 0, "setpriority: {}", io::Error::last_os_error());
}
