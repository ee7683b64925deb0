//! Hand-built packets for tests and benchmarks: full control over every header, so tests can
//! cut, corrupt and stack them (VLAN tags, IPv4 options and fragments, IPv6 extension headers).

use std::net::{Ipv4Addr, Ipv6Addr};

pub use agent_common::flow::tcp as flags;

/// An IPv6 extension header to insert before the transport header.
#[derive(Clone, Debug)]
pub enum Ext {
    /// Hop-by-hop options with `units` extra 8-byte units of padding (length field).
    HopByHop { units: u8 },
    /// Routing header (type 0 body of zeros), `units` as above.
    Routing { units: u8 },
    /// Destination options, `units` as above.
    DestOpts { units: u8 },
    /// Fragment header: offset in 8-byte units and the more-fragments bit.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    const fn proto(&self) -> u8 {
        match self {
            Self::HopByHop { .. } => 0,
            Self::Routing { .. } => 43,
            Self::DestOpts { .. } => 60,
            Self::Fragment { .. } => 44,
        }
    }
}

/// Network layer.
#[derive(Clone, Debug)]
pub enum Net {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
        /// IPv4 options (padded to 4 bytes).
        options: Vec<u8>,
        /// Fragment offset in 8-byte units.
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
        exts: Vec<Ext>,
    },
}

/// Transport layer.
#[derive(Clone, Debug)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        ty: u8,
        code: u8,
    },
    Icmpv6 {
        ty: u8,
        code: u8,
    },
    /// Any protocol by number, with no header of its own.
    Raw {
        protocol: u8,
    },
}

impl Transport {
    const fn protocol(&self) -> u8 {
        match self {
            Self::Tcp { .. } => 6,
            Self::Udp { .. } => 17,
            Self::Icmp { .. } => 1,
            Self::Icmpv6 { .. } => 58,
            Self::Raw { protocol } => *protocol,
        }
    }
}

/// A packet description; [`Pkt::build`] turns it into an Ethernet frame.
#[derive(Clone, Debug)]
pub struct Pkt {
    /// VLAN tags, outermost first: (TPID, VLAN id).
    pub vlans: Vec<(u16, u16)>,
    pub net: Net,
    pub transport: Transport,
    pub payload: Vec<u8>,
}

/// Where each layer starts in a built frame, for cutting at header boundaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// End of the Ethernet header (14).
    pub eth_end: usize,
    /// End of the VLAN tags.
    pub vlan_end: usize,
    /// End of the IP header including options / extension headers.
    pub ip_end: usize,
    /// End of the fixed IP header (20 or 40).
    pub ip_fixed_end: usize,
    /// End of the transport header.
    pub l4_end: usize,
    pub len: usize,
}

impl Pkt {
    /// A TCP/IPv4 packet with TTL 64 and no payload.
    #[must_use]
    pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Self {
        Self::v4(src, dst, Transport::Tcp { sport, dport, flags, options: Vec::new() })
    }

    /// A UDP/IPv4 packet with TTL 64 and `payload` bytes of payload.
    #[must_use]
    pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: usize) -> Self {
        let mut p = Self::v4(src, dst, Transport::Udp { sport, dport });
        p.payload = vec![0xab; payload];
        p
    }

    /// An IPv4 packet carrying `transport`, TTL 64.
    #[must_use]
    pub fn v4(src: [u8; 4], dst: [u8; 4], transport: Transport) -> Self {
        Self {
            vlans: Vec::new(),
            net: Net::V4 {
                src: src.into(),
                dst: dst.into(),
                ttl: 64,
                options: Vec::new(),
                frag_offset: 0,
                more_fragments: false,
            },
            transport,
            payload: Vec::new(),
        }
    }

    /// An IPv6 packet carrying `transport`, hop limit 64.
    #[must_use]
    pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, transport: Transport) -> Self {
        Self {
            vlans: Vec::new(),
            net: Net::V6 { src, dst, hop_limit: 64, exts: Vec::new() },
            transport,
            payload: Vec::new(),
        }
    }

    /// Adds a VLAN tag (outermost first).
    #[must_use]
    pub fn vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    /// Sets the payload.
    #[must_use]
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Sets the TTL / hop limit.
    #[must_use]
    pub fn ttl(mut self, value: u8) -> Self {
        match &mut self.net {
            Net::V4 { ttl, .. } => *ttl = value,
            Net::V6 { hop_limit, .. } => *hop_limit = value,
        }
        self
    }

    /// Builds the frame and reports where its layers are.
    ///
    /// # Panics
    /// If a header field overflows (a packet over 64 KiB).
    #[must_use]
    pub fn build_with_layout(&self) -> (Vec<u8>, Layout) {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01]);
        let ip_type: u16 = match self.net {
            Net::V4 { .. } => 0x0800,
            Net::V6 { .. } => 0x86dd,
        };
        let mut types: Vec<u16> = self.vlans.iter().map(|(tpid, _)| *tpid).collect();
        types.push(ip_type);
        f.extend_from_slice(&types[0].to_be_bytes());
        let eth_end = f.len();
        for (i, (_, id)) in self.vlans.iter().enumerate() {
            f.extend_from_slice(&id.to_be_bytes());
            f.extend_from_slice(&types[i + 1].to_be_bytes());
        }
        let vlan_end = f.len();
        let l4 = self.transport_bytes();
        let ip_start = f.len();
        let (ip_fixed_end, ip_end);
        match &self.net {
            Net::V4 { src, dst, ttl, options, frag_offset, more_fragments } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(0);
                }
                let header_len = 20 + opts.len();
                let later = *frag_offset != 0;
                let body_len = if later { self.payload.len() } else { l4.len() + self.payload.len() };
                let total = u16::try_from(header_len + body_len).expect("packet fits");
                let frag = (frag_offset & 0x1fff) | if *more_fragments { 0x2000 } else { 0 };
                let ihl = u8::try_from(header_len / 4).expect("ihl");
                f.push(0x40 | ihl);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&0x1234u16.to_be_bytes());
                f.extend_from_slice(&frag.to_be_bytes());
                f.push(*ttl);
                f.push(self.transport.protocol());
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                ip_fixed_end = f.len();
                f.extend_from_slice(&opts);
                let csum = checksum(&f[ip_start..]);
                f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
                ip_end = f.len();
                if !later {
                    f.extend_from_slice(&l4);
                }
            }
            Net::V6 { src, dst, hop_limit, exts } => {
                let mut ext_bytes = Vec::new();
                let mut later = false;
                for (i, ext) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).map_or(self.transport.protocol(), Ext::proto);
                    match ext {
                        Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
                            ext_bytes.push(next);
                            ext_bytes.push(*units);
                            // PadN option filling the rest (contents do not matter to the parser).
                            ext_bytes.extend(std::iter::repeat_n(0, 6 + 8 * usize::from(*units)));
                        }
                        Ext::Fragment { offset, more } => {
                            ext_bytes.push(next);
                            ext_bytes.push(0);
                            let v = (offset << 3) | u16::from(*more);
                            ext_bytes.extend_from_slice(&v.to_be_bytes());
                            ext_bytes.extend_from_slice(&0xdead_beefu32.to_be_bytes());
                            later |= *offset != 0;
                        }
                    }
                }
                let body = if later { self.payload.len() } else { l4.len() + self.payload.len() };
                let payload_len = u16::try_from(ext_bytes.len() + body).expect("packet fits");
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&payload_len.to_be_bytes());
                f.push(exts.first().map_or(self.transport.protocol(), Ext::proto));
                f.push(*hop_limit);
                f.extend_from_slice(&src.octets());
                f.extend_from_slice(&dst.octets());
                ip_fixed_end = f.len();
                f.extend_from_slice(&ext_bytes);
                ip_end = f.len();
                if !later {
                    f.extend_from_slice(&l4);
                }
            }
        }
        let l4_end = f.len();
        f.extend_from_slice(&self.payload);
        let len = f.len();
        (f, Layout { eth_end, vlan_end, ip_end, ip_fixed_end, l4_end, len })
    }

    /// Builds the frame.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        self.build_with_layout().0
    }

    fn transport_bytes(&self) -> Vec<u8> {
        match &self.transport {
            Transport::Tcp { sport, dport, flags, options } => {
                let mut opts = options.clone();
                while opts.len() % 4 != 0 {
                    opts.push(1);
                }
                let doff = u8::try_from((20 + opts.len()) / 4).expect("data offset");
                let mut t = Vec::with_capacity(20 + opts.len());
                t.extend_from_slice(&sport.to_be_bytes());
                t.extend_from_slice(&dport.to_be_bytes());
                t.extend_from_slice(&1000u32.to_be_bytes());
                t.extend_from_slice(&0u32.to_be_bytes());
                t.push(doff << 4);
                t.push(*flags);
                t.extend_from_slice(&64240u16.to_be_bytes());
                t.extend_from_slice(&[0, 0, 0, 0]);
                t.extend_from_slice(&opts);
                t
            }
            Transport::Udp { sport, dport } => {
                let len = u16::try_from(8 + self.payload.len()).expect("udp length");
                let mut u = Vec::with_capacity(8);
                u.extend_from_slice(&sport.to_be_bytes());
                u.extend_from_slice(&dport.to_be_bytes());
                u.extend_from_slice(&len.to_be_bytes());
                u.extend_from_slice(&[0, 0]);
                u
            }
            Transport::Icmp { ty, code } | Transport::Icmpv6 { ty, code } => vec![*ty, *code, 0, 0, 0, 1, 0, 1],
            Transport::Raw { .. } => Vec::new(),
        }
    }
}

/// The Internet checksum of `data`.
///
/// # Panics
/// Never: the sum is folded to 16 bits first.
#[must_use]
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// A small deterministic generator (xorshift64*) for garbage packets: tests stay reproducible.
#[derive(Clone, Debug)]
pub struct XorShift(u64);

impl XorShift {
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64().to_le_bytes()[0];
        }
    }
}
