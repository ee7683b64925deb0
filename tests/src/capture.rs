//! An independent witness: an `AF_PACKET` socket that records every frame arriving on an
//! interface (and, if asked, every frame leaving it), to compare the sensor's counts against.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use crate::netns::Netns;

const PACKET_OUTGOING: u8 = 4;

/// Frames received on one interface (outgoing ones excluded), recorded until stopped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing on `iface` inside `ns`; returns once the socket is bound.
    ///
    /// # Panics
    /// If the socket cannot be opened or bound.
    #[must_use]
    pub fn start(ns: &Netns, iface: &str) -> Self {
        Self::start_with(ns, iface, false)
    }

    /// Starts capturing both directions on `iface` inside `ns`: frames received and frames the
    /// namespace sends (as the stack hands them to the device: a GSO send is one frame).
    ///
    /// # Panics
    /// If the socket cannot be opened or bound.
    #[must_use]
    pub fn start_both(ns: &Netns, iface: &str) -> Self {
        Self::start_with(ns, iface, true)
    }

    fn start_with(ns: &Netns, iface: &str, outgoing: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let iface = iface.to_owned();
        let (ready_tx, ready) = mpsc::channel();
        let handle = ns.spawn(move || {
            let fd = open_packet_socket(&iface);
            ready_tx.send(()).expect("ready");
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: zeroed sockaddr_ll is valid; buffers outlive the call.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut from_len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size");
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::from_mut(&mut from).cast(),
                        &raw mut from_len,
                    )
                };
                if n > 0 && (outgoing || from.sll_pkttype != PACKET_OUTGOING) {
                    frames.push(buf[..usize::try_from(n).expect("len")].to_vec());
                }
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            frames
        });
        ready.recv().expect("capture thread died");
        Self { stop, handle }
    }

    /// Stops and returns the frames.
    ///
    /// # Panics
    /// If the capture thread panicked.
    #[must_use]
    pub fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("capture thread")
    }
}

fn open_packet_socket(iface: &str) -> i32 {
    let proto = u16::try_from(libc::ETH_P_ALL).expect("ETH_P_ALL").to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
    let ifindex = nix::net::if_::if_nametoindex(iface).expect("capture interface");
    // SAFETY: zeroed sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = u16::try_from(libc::AF_PACKET).expect("family");
    addr.sll_protocol = proto;
    addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
    // SAFETY: addr is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(fd, std::ptr::from_ref(&addr).cast(), u32::try_from(size_of::<libc::sockaddr_ll>()).expect("size"))
    };
    assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
    let tv = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    // SAFETY: tv is a valid timeval.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::from_ref(&tv).cast(),
            u32::try_from(size_of::<libc::timeval>()).expect("size"),
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO");
    fd
}
