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
//! this module applies `if_tsresol` (default microseconds) and `if_tsoffset` itself. Legacy
//! pcap records are read raw and checked here: `pcap-file` refuses a record whose original
//! length exceeds the file's snaplen, which is every cut packet of `tcpdump -s N`.
//!
//! Every number in a capture is hostile until proven otherwise: lengths and timestamps are
//! combined with saturating or 128-bit arithmetic, never with plain `+` or `*`.

use std::{
    fs::File,
    io::{self, BufReader, Cursor, Read, Seek as _, SeekFrom},
    path::{Path, PathBuf},
};

use pcap_file::{
    DataLink, TsResolution,
    pcap::{PcapReader, RawPcapPacket},
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
    ///
    /// An original length shorter than what was captured (a broken writer) counts as the
    /// captured length.
    fn to_ethernet(self, data: &[u8], orig_len: u32) -> (Vec<u8>, u32) {
        let orig_len = orig_len.max(u32::try_from(data.len()).unwrap_or(u32::MAX));
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

/// Where capture bytes come from: a file, or memory (tests and fuzzing).
type Source = Box<dyn Read + Send>;

enum Inner {
    Pcap { reader: PcapReader<Source>, link: Link, nanos: bool },
    PcapNg { reader: PcapNgReader<Source> },
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
        Self::from_source(path, magic, Box::new(BufReader::new(file)), size)
    }

    /// Reads a capture held in memory; `name` stands for its path in errors.
    ///
    /// # Errors
    /// As [`CaptureReader::open`].
    pub fn from_bytes(name: &Path, bytes: Vec<u8>) -> Result<Self, CaptureError> {
        let Some(&[a, b, c, d]) = bytes.first_chunk::<4>() else {
            let source = io::Error::new(io::ErrorKind::UnexpectedEof, "shorter than a capture's magic number");
            return Err(CaptureError::Open { path: name.to_owned(), source });
        };
        let size = bytes.len() as u64;
        Self::from_source(name, [a, b, c, d], Box::new(Cursor::new(bytes)), size)
    }

    fn from_source(path: &Path, magic: [u8; 4], source: Source, size: u64) -> Result<Self, CaptureError> {
        let format = |source| CaptureError::Format { path: path.to_owned(), source };
        let inner = match magic {
            [0x0a, 0x0d, 0x0d, 0x0a] => Inner::PcapNg { reader: PcapNgReader::new(source).map_err(format)? },
            [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0xc3, 0xd4]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d] => {
                let reader = PcapReader::new(source).map_err(format)?;
                let header = reader.header();
                let linktype = header.datalink;
                let link = Link::of(linktype).ok_or(CaptureError::LinkType { path: path.to_owned(), linktype })?;
                Inner::Pcap { reader, link, nanos: header.ts_resolution == TsResolution::NanoSecond }
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
            Inner::Pcap { reader, link, nanos } => {
                let packet = match reader.next_raw_packet()? {
                    Ok(p) => p,
                    Err(e) => return Some(Err(format(e))),
                };
                let (data, wire_len) = link.to_ethernet(&packet.data, packet.orig_len);
                Some(Ok(Frame { ts_ns: pcap_ts_ns(&packet, *nanos), data, wire_len }))
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
                        crate::clock::duration_ns(p.timestamp),
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

/// A legacy pcap record's timestamp as Unix-epoch nanoseconds. A fraction of a second past
/// one second (a sloppy writer) carries over; nothing here can overflow: u32 seconds in
/// nanoseconds and a u32 fraction in microseconds both fit in 64 bits with room to add.
fn pcap_ts_ns(packet: &RawPcapPacket<'_>, nanos: bool) -> u64 {
    let frac_ns = if nanos { u64::from(packet.ts_frac) } else { u64::from(packet.ts_frac) * 1000 };
    u64::from(packet.ts_sec) * 1_000_000_000 + frac_ns
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
pub(crate) mod tests {
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

    /// A little-endian microsecond pcap with `snaplen` and one record per `(incl, orig)`.
    pub(crate) fn pcap_bytes(snaplen: u32, records: &[(&[u8], u32)]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        out.extend_from_slice(&snaplen.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (i, (data, orig_len)) in records.iter().enumerate() {
            out.extend_from_slice(&u32::try_from(i).unwrap().to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&orig_len.to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn pcapng_block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(12 + body.len().next_multiple_of(4)).unwrap();
        let mut out = kind.to_le_bytes().to_vec();
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(body);
        out.resize(usize::try_from(len).unwrap() - 4, 0);
        out.extend_from_slice(&len.to_le_bytes());
        out
    }

    /// A little-endian pcapng: one Ethernet interface with `idb_options` (raw option bytes,
    /// end-of-options included), then one enhanced packet per `(ticks, data, orig_len)`.
    fn pcapng_bytes(idb_options: &[u8], packets: &[(u64, &[u8], u32)]) -> Vec<u8> {
        let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
        shb.extend_from_slice(&[1, 0, 0, 0]);
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        let mut out = pcapng_block(0x0a0d_0d0a, &shb);
        let mut idb = vec![1, 0, 0, 0, 0, 0, 0, 0];
        idb.extend_from_slice(idb_options);
        out.extend(pcapng_block(1, &idb));
        for (ticks, data, orig_len) in packets {
            let mut epb = 0u32.to_le_bytes().to_vec();
            epb.extend_from_slice(&u32::try_from(ticks >> 32).unwrap().to_le_bytes());
            epb.extend_from_slice(&u32::try_from(ticks & 0xffff_ffff).unwrap().to_le_bytes());
            epb.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
            epb.extend_from_slice(&orig_len.to_le_bytes());
            epb.extend_from_slice(data);
            epb.resize(epb.len().next_multiple_of(4), 0);
            out.extend(pcapng_block(6, &epb));
        }
        out
    }

    fn frames(bytes: Vec<u8>) -> Vec<Frame> {
        let mut reader = CaptureReader::from_bytes(Path::new("test.pcap"), bytes).expect("opens");
        std::iter::from_fn(|| reader.next_frame()).collect::<Result<_, _>>().expect("reads")
    }

    const UDP4: [u8; 42] = [
        2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, // ethernet
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, // ipv4
        0x03, 0xe8, 0, 53, 0, 8, 0, 0, // udp
    ];

    #[test]
    fn snaplen_cut_packets_replay_with_their_wire_length() {
        // `tcpdump -s 42` writes snaplen 42 and orig_len 1514 > snaplen; pcap-file's checked
        // reader refused such records.
        let f = frames(pcap_bytes(42, &[(&UDP4, 1514), (&UDP4[..30], 1514)]));
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].data.as_slice(), f[0].wire_len, f[0].ts_ns), (&UDP4[..], 1514, 0));
        assert_eq!((f[1].data.len(), f[1].wire_len, f[1].ts_ns), (30, 1514, 1_000_000_000));
    }

    #[test]
    fn hostile_lengths_and_timestamps_are_clamped() {
        // orig_len near u32::MAX, shorter than the captured length, a fraction past 1 s.
        let mut bytes = pcap_bytes(0, &[(&UDP4, u32::MAX), (&UDP4, 10)]);
        bytes[24 + 4..24 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let f = frames(bytes);
        assert_eq!((f[0].wire_len, f[1].wire_len), (u32::MAX, 42));
        assert_eq!(f[0].ts_ns, u64::from(u32::MAX) * 1000);
        // pcapng: if_tsoffset (option 14) of 2^64 - 1 s and the largest tick count.
        let mut opts = vec![14, 0, 8, 0];
        opts.extend_from_slice(&u64::MAX.to_le_bytes());
        opts.extend_from_slice(&[0, 0, 0, 0]);
        let f = frames(pcapng_bytes(&opts, &[(u64::MAX, &UDP4, u32::MAX), (1, &UDP4, 42)]));
        assert_eq!((f[0].ts_ns, f[0].wire_len), (u64::MAX, u32::MAX));
        assert_eq!(f[1].ts_ns, u64::MAX);
        let f = frames(pcapng_bytes(&[0, 0, 0, 0], &[(u64::MAX, &UDP4, 42)]));
        assert_eq!(f[0].ts_ns, u64::MAX, "2^64 µs do not fit in u64 ns");
    }

    #[test]
    fn errors_name_the_capture() {
        let err = CaptureReader::from_bytes(Path::new("x/short.pcap"), vec![0xd4]).err().expect("too short");
        assert!(err.to_string().contains("x/short.pcap"), "{err}");
        let err = CaptureReader::from_bytes(Path::new("junk.pcap"), b"junkjunk".to_vec()).err().expect("junk");
        assert!(err.to_string().contains("junk.pcap") && err.to_string().contains("not a pcap"), "{err}");
        // A record claiming more bytes than the file holds.
        let mut bytes = pcap_bytes(0, &[(&UDP4, 42)]);
        bytes.truncate(bytes.len() - 1);
        let mut reader = CaptureReader::from_bytes(Path::new("cut.pcap"), bytes).expect("header is fine");
        let err = reader.next_frame().expect("a record").expect_err("truncated");
        assert!(err.to_string().contains("cut.pcap"), "{err}");
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
