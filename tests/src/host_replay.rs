//! Replaying a capture the way a host would see it: the victim's own packets leave the
//! victim's namespace through its interface (so they pass the sensor's TC egress hook, as the
//! host's replies do), everything else arrives from the attacker's namespace (the sensor's XDP
//! hook). Every frame the capture reader can read is sent: Linux cooked and raw-IP captures
//! arrive as Ethernet frames, and no frame is refused for its contents (tcprewrite refuses an
//! nmap IP-protocol scan outright).
//!
//! Addresses are mapped as the labels say (attacker and victim into the lab's range), with the
//! IPv4 header checksum and the TCP, UDP and `ICMPv6` checksums adjusted for the change
//! (RFC 1624, so it holds for fragments and cut frames too). Frames carry the sending
//! interface's MAC as source and a locally administered destination no interface owns: the
//! bridge floods them, the sensor's hooks see them, and no host stack answers them (a replayed
//! SYN would otherwise draw a second, real answer from the victim's kernel).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use vigil::capture::CaptureReader;

use crate::{
    blast,
    interrupt::{self, Interrupted},
    netns::Netns,
};

/// The destination MAC of every replayed frame: locally administered, owned by no interface.
pub const REPLAY_DST_MAC: [u8; 6] = [0x02, 0x76, 0x69, 0x67, 0x00, 0x01];

const ETH_HLEN: usize = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Which side of the lab sends a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The victim's namespace: its egress.
    Victim,
    /// The attacker's namespace: arrives at the victim's ingress.
    Outside,
}

/// What a replay sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Frames in the capture.
    pub frames: u64,
    /// Frames sent from the victim's namespace.
    pub from_victim: u64,
    /// Frames sent from the attacker's namespace.
    pub from_outside: u64,
    /// Frames longer than the link takes, sent cut to its MTU.
    pub cut: u64,
    /// 1 if the capture ended in a record the reader could not parse (it cannot go past one).
    pub unreadable: u64,
    pub elapsed: Duration,
}

/// Rewrites one Ethernet frame in place: addresses mapped by `pairs` (from, to), checksums
/// adjusted. Returns the frame's source address after mapping, if it is IP.
pub fn map_addresses(frame: &mut [u8], pairs: &[(IpAddr, IpAddr)]) -> Option<IpAddr> {
    let (ethertype, l3) = network_offset(frame)?;
    match ethertype {
        ETH_P_IPV4 => map_ipv4(frame, l3, pairs),
        ETH_P_IPV6 => map_ipv6(frame, l3, pairs),
        _ => None,
    }
}

/// The ethertype and offset of the network header, past up to two VLAN tags.
fn network_offset(frame: &[u8]) -> Option<(u16, usize)> {
    let mut at = 12;
    for _ in 0..3 {
        let ethertype = u16::from_be_bytes(frame.get(at..at + 2)?.try_into().ok()?);
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            at += 4;
            continue;
        }
        return Some((ethertype, at + 2));
    }
    None
}

fn map_ipv4(frame: &mut [u8], l3: usize, pairs: &[(IpAddr, IpAddr)]) -> Option<IpAddr> {
    let header = frame.get(l3..l3 + 20)?;
    let ihl = usize::from(header[0] & 0x0f) * 4;
    let protocol = header[9];
    // Only the first fragment (offset 0) carries the transport header.
    let first = u16::from_be_bytes([header[6], header[7]]).trailing_zeros() >= 13;
    // A UDP checksum of 0 means none (decided before the addresses change it).
    let udp_checksum = frame.get(l3 + ihl + 6..l3 + ihl + 8).is_some_and(|c| c != [0, 0]);
    let mut source = None;
    for (field, is_source) in [(12, true), (16, false)] {
        let at = l3 + field;
        let old: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
        let to = pairs.iter().find_map(|&(from, to)| match (from, to) {
            (IpAddr::V4(f), IpAddr::V4(t)) if f.octets() == old => Some(t.octets()),
            _ => None,
        });
        let new = to.unwrap_or(old);
        if is_source {
            source = Some(IpAddr::from(new));
        }
        if new == old {
            continue;
        }
        frame[at..at + 4].copy_from_slice(&new);
        adjust(frame, l3 + 10, &old, &new);
        if first && ihl >= 20 {
            match protocol {
                6 => adjust(frame, l3 + ihl + 16, &old, &new),
                17 if udp_checksum => {
                    adjust(frame, l3 + ihl + 6, &old, &new);
                    // A computed 0 is sent as all ones (RFC 768): 0 would mean "none".
                    if frame.get(l3 + ihl + 6..l3 + ihl + 8) == Some(&[0, 0]) {
                        frame[l3 + ihl + 6..l3 + ihl + 8].copy_from_slice(&[0xff, 0xff]);
                    }
                }
                _ => {}
            }
        }
    }
    source
}

fn map_ipv6(frame: &mut [u8], l3: usize, pairs: &[(IpAddr, IpAddr)]) -> Option<IpAddr> {
    let next = *frame.get(l3 + 6)?;
    frame.get(l3..l3 + 40)?;
    // The checksum is adjusted when the transport header follows the fixed header directly.
    let checksum = match next {
        6 => Some(l3 + 40 + 16),
        17 => Some(l3 + 40 + 6),
        58 => Some(l3 + 40 + 2),
        _ => None,
    };
    let mut source = None;
    for (field, is_source) in [(8, true), (24, false)] {
        let at = l3 + field;
        let old: [u8; 16] = frame.get(at..at + 16)?.try_into().ok()?;
        let to = pairs.iter().find_map(|&(from, to)| match (from, to) {
            (IpAddr::V6(f), IpAddr::V6(t)) if f.octets() == old => Some(t.octets()),
            _ => None,
        });
        let new = to.unwrap_or(old);
        if is_source {
            source = Some(IpAddr::from(new));
        }
        if new != old {
            frame[at..at + 16].copy_from_slice(&new);
            if let Some(c) = checksum {
                adjust(frame, c, &old, &new);
            }
        }
    }
    source
}

/// RFC 1624 incremental update of the one's-complement checksum at `at` for 16-bit words
/// `old` replaced by `new` (nothing if the frame was cut before the checksum).
fn adjust(frame: &mut [u8], at: usize, old: &[u8], new: &[u8]) {
    let Some(bytes) = frame.get(at..at + 2) else { return };
    let checksum = u16::from_be_bytes([bytes[0], bytes[1]]);
    let mut sum = u32::from(!checksum);
    for (o, n) in old.chunks(2).zip(new.chunks(2)) {
        sum += u32::from(!u16::from_be_bytes([o[0], o[1]]));
        sum += u32::from(u16::from_be_bytes([n[0], n[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let folded = !u16::try_from(sum).unwrap_or(u16::MAX);
    frame[at..at + 2].copy_from_slice(&folded.to_be_bytes());
}

/// An `AF_PACKET` socket on one interface of a namespace that sends through the qdisc layer,
/// so the interface's TC egress programs see every frame.
pub struct Sender {
    fd: OwnedFd,
    mac: [u8; 6],
    mtu: usize,
}

impl Sender {
    /// Opens the socket on `iface` inside `ns`.
    ///
    /// # Errors
    /// If the interface does not exist or a socket call fails.
    pub fn open(ns: &Netns, iface: &str) -> io::Result<Self> {
        let owned = iface.to_owned();
        // Without the qdisc bypass: the frames pass the interface's TC egress programs.
        let (fd, _) = ns.run(move || blast::packet_sender(&owned, false))?;
        // `/sys/class/net` shows the namespace sysfs was mounted in, not the thread's: ask `ip`.
        let out = ns.ip_output(&["-o", "link", "show", "dev", iface]);
        let text = String::from_utf8_lossy(&out.stdout);
        let after = |word: &str| {
            let mut words = text.split_whitespace();
            words.find(|w| *w == word).and_then(|_| words.next())
        };
        let mac = after("link/ether").and_then(parse_mac);
        let mtu = after("mtu").and_then(|m| m.parse().ok());
        let (Some(mac), Some(mtu)) = (mac, mtu) else {
            return Err(io::Error::other(format!("no MAC or MTU for {iface} in {}: {text}", ns.name())));
        };
        Ok(Self { fd, mac, mtu })
    }

    /// Sends one frame with this interface's MAC as source and [`REPLAY_DST_MAC`] as
    /// destination, cut to the link's MTU. Returns whether it was cut.
    ///
    /// # Errors
    /// A send error.
    pub fn send(&self, frame: &mut Vec<u8>) -> io::Result<bool> {
        if frame.len() < ETH_HLEN {
            frame.resize(ETH_HLEN, 0);
        }
        frame[..6].copy_from_slice(&REPLAY_DST_MAC);
        frame[6..12].copy_from_slice(&self.mac);
        let limit = self.mtu + ETH_HLEN;
        let cut = frame.len() > limit;
        let len = frame.len().min(limit);
        let mut waited = Duration::ZERO;
        loop {
            // SAFETY: the buffer is live and at least `len` bytes long.
            let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), len, 0) };
            if n >= 0 {
                return Ok(cut);
            }
            let e = io::Error::last_os_error();
            // A full device queue: wait for it (a second at most) rather than lose the frame.
            if e.raw_os_error() == Some(libc::ENOBUFS) && waited < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_micros(50));
                waited += Duration::from_micros(50);
                continue;
            }
            return Err(e);
        }
    }
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    bytes.try_into().ok()
}

/// Replays `path` with addresses mapped by `pairs`: frames whose (mapped) source is `victim`
/// from `victim_side`, all others from `outside` (all of them when the victim is unknown), in
/// capture order with the capture's gaps (each at most `max_gap`). Stops after `limit`.
///
/// # Errors
/// [`Interrupted`] on Ctrl-C; inside it, a message if the capture cannot be opened, a send
/// fails or the replay runs past `limit`.
pub fn replay(
    path: &Path,
    pairs: &[(IpAddr, IpAddr)],
    victim: Option<IpAddr>,
    victim_side: &Sender,
    outside: &Sender,
    max_gap: Duration,
    limit: Duration,
) -> Result<Result<Replayed, String>, Interrupted> {
    let mut reader = match CaptureReader::open(path) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut out = Replayed::default();
    let started = Instant::now();
    // When the next frame is due: the capture's gaps, each at most `max_gap`; a frame stamped
    // earlier than the one before goes at once.
    let mut due = started;
    let mut last_ts: Option<u64> = None;
    while let Some(frame) = reader.next_frame() {
        out.frames += 1;
        // The reader does not move past a record it cannot parse: the rest is lost.
        let Ok(frame) = frame else {
            out.unreadable += 1;
            break;
        };
        let mut data = frame.data;
        let side = match map_addresses(&mut data, pairs) {
            Some(src) if Some(src) == victim => Side::Victim,
            _ => Side::Outside,
        };
        if let Some(prev) = last_ts {
            due += Duration::from_nanos(frame.ts_ns.saturating_sub(prev)).min(max_gap);
        }
        // A frame stamped earlier than the one before goes at once, and does not move the clock
        // back (the next frame's gap counts from the latest time seen).
        last_ts = Some(last_ts.map_or(frame.ts_ns, |prev| prev.max(frame.ts_ns)));
        let now = Instant::now();
        if due > now {
            interrupt::sleep(due - now)?;
        }
        let sender = if side == Side::Victim { victim_side } else { outside };
        let cut = match sender.send(&mut data) {
            Ok(cut) => cut,
            Err(e) => return Ok(Err(format!("sending frame {}: {e}", out.frames))),
        };
        out.cut += u64::from(cut);
        match side {
            Side::Victim => out.from_victim += 1,
            Side::Outside => out.from_outside += 1,
        }
        if started.elapsed() > limit {
            return Ok(Err(format!("still replaying after {limit:?}; stopped at frame {}", out.frames)));
        }
    }
    out.elapsed = started.elapsed();
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packets::{Pkt, flags};

    /// The one's-complement sum of `data` (16-bit words, odd byte padded).
    fn sum(data: &[u8]) -> u32 {
        let mut s: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    }

    /// The TCP pseudo-header and segment of an IPv4 frame without VLAN tags.
    fn pseudo(f: &[u8]) -> Vec<u8> {
        let tcp = &f[34..];
        let mut p = Vec::from(&f[26..34]);
        p.extend([0, 6]);
        p.extend(u16::try_from(tcp.len()).unwrap().to_be_bytes());
        p.extend(tcp);
        p
    }

    /// Whether the IPv4 header and TCP checksums of a frame verify.
    fn ipv4_tcp_checksums_hold(f: &[u8]) -> bool {
        sum(&f[14..34]) == 0xffff && sum(&pseudo(f)) == 0xffff
    }

    #[test]
    fn mapped_addresses_keep_checksums_valid() {
        let mut frame = Pkt::tcp4([192, 0, 2, 1], [198, 51, 100, 7], 40_000, 22, flags::SYN).payload(b"hello").build();
        // The builder leaves the TCP checksum 0: write the right one first.
        let c = !u16::try_from(sum(&pseudo(&frame))).unwrap();
        frame[50..52].copy_from_slice(&c.to_be_bytes());
        assert!(ipv4_tcp_checksums_hold(&frame), "the starting checksums");
        let pairs = [
            ("192.0.2.1".parse().unwrap(), "10.77.1.10".parse().unwrap()),
            ("198.51.100.7".parse().unwrap(), "10.77.0.2".parse().unwrap()),
        ];
        let src = map_addresses(&mut frame, &pairs);
        assert_eq!(src, Some("10.77.1.10".parse().unwrap()));
        assert_eq!(&frame[26..34], &[10, 77, 1, 10, 10, 77, 0, 2]);
        assert!(ipv4_tcp_checksums_hold(&frame), "checksums after mapping");
        // Unmapped addresses stay as they are.
        let before = frame.clone();
        assert_eq!(map_addresses(&mut frame, &[]), Some("10.77.1.10".parse().unwrap()));
        assert_eq!(frame, before);
    }

    #[test]
    fn vlan_tags_are_skipped_and_non_ip_is_left_alone() {
        let mut frame = Pkt::tcp4([192, 0, 2, 1], [198, 51, 100, 7], 1, 2, flags::ACK).vlan(0x8100, 7).build();
        let pairs = [("192.0.2.1".parse().unwrap(), "10.77.1.10".parse().unwrap())];
        assert_eq!(map_addresses(&mut frame, &pairs), Some("10.77.1.10".parse().unwrap()));
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let before = arp.clone();
        assert_eq!(map_addresses(&mut arp, &pairs), None);
        assert_eq!(arp, before);
        assert_eq!(map_addresses(&mut [0u8; 5], &pairs), None, "a frame cut inside its header");
    }

    #[test]
    fn macs_parse() {
        assert_eq!(parse_mac("02:76:69:67:00:01"), Some(REPLAY_DST_MAC));
        assert_eq!(parse_mac("02:76"), None);
    }
}
