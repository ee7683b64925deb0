//! Reading capture files (pcap and pcapng) into link-normalised frames.
//!
//! The sensor's parser reads Ethernet frames. Captures of other link types are turned into
//! the Ethernet frame the same packet would have been: Linux cooked captures (SLL and SLL2)
//! and raw IP get a synthetic 14-byte Ethernet header carrying their protocol, and their
//! wire length is adjusted to the Ethernet length, so records from any capture count bytes
//! the way the live sensor does.
//!
//! pcap parsing is `pcap-file` (pure Rust, reads both formats). Its pcapng reader takes
//! enhanced-packet timestamps as nanoseconds whatever the interface's `if_tsresol` says;
//! this module applies `if_tsresol` (default microseconds) and `if_tsoffset` itself.

use std::{
    fs::File,
    io::{self, BufReader, Read, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{
        Block, PcapNgReader,
        blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
    },
};

const ETH_HLEN: usize = 14;
const SLL_HLEN: usize = 16;
const SLL2_HLEN: usize = 20;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// Errors reading a capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: not a pcap or pcapng file (magic {magic:02x?})")]
    NotACapture { path: PathBuf, magic: [u8; 4] },
    #[error("{path}: {source}")]
    Format { path: PathBuf, source: pcap_file::PcapError },
    #[error("{path}: unsupported link type {linktype:?} (supported: Ethernet, Linux cooked SLL/SLL2, raw IP)")]
    LinkType { path: PathBuf, linktype: DataLink },
}

/// One packet of a capture as an Ethernet frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Capture timestamp, Unix-epoch nanoseconds.
    pub ts_ns: u64,
    /// The frame as captured (snaplen may have cut it), with an Ethernet header.
    pub data: Vec<u8>,
    /// The frame's length on the wire, as Ethernet.
    pub wire_len: u32,
}

/// How a link type maps to Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    Ethernet,
    LinuxSll,
    LinuxSll2,
    RawIp,
    Ipv4,
    Ipv6,
}

impl Link {
    fn of(linktype: DataLink) -> Option<Self> {
        match linktype {
            DataLink::ETHERNET => Some(Self::Ethernet),
            DataLink::LINUX_SLL => Some(Self::LinuxSll),
            DataLink::LINUX_SLL2 => Some(Self::LinuxSll2),
            DataLink::RAW | DataLink::Unknown(12 | 14) => Some(Self::RawIp),
            DataLink::IPV4 => Some(Self::Ipv4),
            DataLink::IPV6 => Some(Self::Ipv6),
            _ => None,
        }
    }

    /// Rewrites `data` (captured) into an Ethernet frame and its Ethernet wire length. A
    /// packet too short to carry its own link header becomes an empty frame, which the parser
    /// counts as malformed.
    fn to_ethernet(self, data: &[u8], orig_len: u32) -> (Vec<u8>, u32) {
        let (skip, ethertype) = match self {
            Self::Ethernet => return (data.to_vec(), orig_len),
            Self::LinuxSll => (SLL_HLEN, data.get(14..16).map(|b| u16::from_be_bytes([b[0], b[1]]))),
            Self::LinuxSll2 => (SLL2_HLEN, data.get(0..2).map(|b| u16::from_be_bytes([b[0], b[1]]))),
            Self::RawIp => (0, data.first().map(|b| if b >> 4 == 6 { ETH_P_IPV6 } else { ETH_P_IPV4 })),
            Self::Ipv4 => (0, Some(ETH_P_IPV4)),
            Self::Ipv6 => (0, Some(ETH_P_IPV6)),
        };
        let Some(ethertype) = ethertype.filter(|_| data.len() >= skip) else {
            // Too short to carry its own link header: hand the parser a truncated frame.
            return (Vec::new(), 0);
        };
        let mut frame = Vec::with_capacity(ETH_HLEN + data.len() - skip);
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.extend_from_slice(&data[skip..]);
        let wire = u64::from(orig_len) + ETH_HLEN as u64 - skip as u64;
        (frame, u32::try_from(wire).unwrap_or(u32::MAX))
    }
}

enum Inner {
    Pcap { reader: PcapReader<BufReader<File>>, link: Link },
    PcapNg { reader: PcapNgReader<BufReader<File>> },
}

/// Reads a pcap or pcapng file packet by packet.
pub struct CaptureReader {
    path: PathBuf,
    inner: Inner,
    size: u64,
}

impl CaptureReader {
    /// Opens a capture, telling pcap from pcapng by its magic number.
    ///
    /// # Errors
    /// [`CaptureError`] if it cannot be opened, is not a capture, or has an unsupported link
    /// type.
    pub fn open(path: &Path) -> Result<Self, CaptureError> {
        let open_err = |source| CaptureError::Open { path: path.to_owned(), source };
        let mut file = File::open(path).map_err(open_err)?;
        let size = file.metadata().map_err(open_err)?.len();
        let mut magic = [0u8; 4];
        file.read_exact(&mut magic).map_err(open_err)?;
        file.seek(SeekFrom::Start(0)).map_err(open_err)?;
        let format = |source| CaptureError::Format { path: path.to_owned(), source };
        let inner = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => {
                Inner::PcapNg { reader: PcapNgReader::new(BufReader::new(file)).map_err(format)? }
            }
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let reader = PcapReader::new(BufReader::new(file)).map_err(format)?;
                let linktype = reader.header().datalink;
                let link = Link::of(linktype).ok_or(CaptureError::LinkType { path: path.to_owned(), linktype })?;
                Inner::Pcap { reader, link }
            }
            magic => return Err(CaptureError::NotACapture { path: path.to_owned(), magic }),
        };
        Ok(Self { path: path.to_owned(), inner, size })
    }

    /// The file's size in bytes (for progress).
    #[must_use]
    pub const fn size(&self) -> u64 {
        self.size
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next packet, `None` at the end.
    ///
    /// # Errors
    /// A corrupt record or an interface with an unsupported link type.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CaptureError>> {
        let format = |source| CaptureError::Format { path: self.path.clone(), source };
        match &mut self.inner {
            Inner::Pcap { reader, link } => {
                let packet = match reader.next_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(format(e))),
                };
                let (data, wire_len) = link.to_ethernet(&packet.data, packet.orig_len);
                let ts_ns = u64::try_from(packet.timestamp.as_nanos()).unwrap_or(u64::MAX);
                Some(Ok(Frame { ts_ns, data, wire_len }))
            }
            Inner::PcapNg { reader } => loop {
                // Owned, so the reader can be asked about the packet's interface.
                let block: Block<'static> = match reader.next_block()? {
                    Ok(b) => b.into_owned(),
                    Err(e) => return Some(Err(format(e))),
                };
                let (interface, raw_ts, orig_len, data) = match &block {
                    Block::EnhancedPacket(p) => (
                        reader.interfaces().get(p.interface_id as usize),
                        // pcap-file stores the raw tick count as nanoseconds.
                        u64::try_from(p.timestamp.as_nanos()).unwrap_or(u64::MAX),
                        p.original_len,
                        &p.data,
                    ),
                    Block::SimplePacket(p) => (reader.interfaces().first(), 0, p.original_len, &p.data),
                    _ => continue,
                };
                let Some(interface) = interface else {
                    return Some(Err(format(pcap_file::PcapError::InvalidField(
                        "packet refers to an undeclared interface",
                    ))));
                };
                let Some(link) = Link::of(interface.linktype) else {
                    return Some(Err(CaptureError::LinkType { path: self.path.clone(), linktype: interface.linktype }));
                };
                let (data, wire_len) = link.to_ethernet(data, orig_len);
                return Some(Ok(Frame { ts_ns: interface_ts_ns(interface, raw_ts), data, wire_len }));
            },
        }
    }
}

/// Converts a pcapng timestamp in the interface's ticks to Unix-epoch nanoseconds.
fn interface_ts_ns(interface: &InterfaceDescriptionBlock<'_>, ticks: u64) -> u64 {
    let mut resol = 6u8;
    let mut offset_s = 0u64;
    for opt in &interface.options {
        match opt {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset_s = *o,
            _ => {}
        }
    }
    let ns = if resol & 0x80 == 0 {
        let exp = u32::from(resol);
        if exp <= 9 {
            u128::from(ticks) * 10u128.pow(9 - exp)
        } else {
            u128::from(ticks) / 10u128.pow((exp - 9).min(38))
        }
    } else {
        let exp = u32::from(resol & 0x7f).min(127);
        (u128::from(ticks) * 1_000_000_000) >> exp
    };
    u64::try_from(ns + u128::from(offset_s) * 1_000_000_000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooked_and_raw_captures_become_ethernet() {
        let ip = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let mut sll = vec![0u8; 14];
        sll.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        sll.extend_from_slice(&ip);
        let (frame, wire) = Link::LinuxSll.to_ethernet(&sll, 36);
        assert_eq!(&frame[12..14], &ETH_P_IPV4.to_be_bytes());
        assert_eq!(&frame[14..], &ip);
        assert_eq!(wire, 34);
        let (frame, wire) = Link::RawIp.to_ethernet(&ip, 20);
        assert_eq!((frame.len(), wire), (34, 34));
        let (frame, _) = Link::RawIp.to_ethernet(&[0x60, 0, 0, 0], 40);
        assert_eq!(&frame[12..14], &ETH_P_IPV6.to_be_bytes());
        assert_eq!(Link::LinuxSll.to_ethernet(&[0; 10], 10), (Vec::new(), 0));
    }

    #[test]
    fn pcapng_timestamp_resolution() {
        let mut idb = InterfaceDescriptionBlock { linktype: DataLink::ETHERNET, snaplen: 0, options: vec![] };
        assert_eq!(interface_ts_ns(&idb, 1_500_000), 1_500_000_000, "default is microseconds");
        idb.options = vec![InterfaceDescriptionOption::IfTsResol(9)];
        assert_eq!(interface_ts_ns(&idb, 42), 42);
        idb.options =
            vec![InterfaceDescriptionOption::IfTsResol(0x80 | 0x0a), InterfaceDescriptionOption::IfTsOffset(2)];
        assert_eq!(interface_ts_ns(&idb, 1024), 2_000_000_000 + 1_000_000_000);
    }
}
