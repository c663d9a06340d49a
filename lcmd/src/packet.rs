//! Parsing and building the few frame kinds lcmd looks into: Ethernet,
//! ARP, IPv4, TCP and UDP. Zero-copy views over the frame bytes; every
//! accessor is bounds-checked at parse time, so a short or malformed frame
//! is an error, never a panic.

use std::net::Ipv4Addr;

/// Ethertype of IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than its headers say.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A header field that makes no sense.
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// An Ethernet II frame.
#[derive(Debug, Clone, Copy)]
pub struct Eth<'a> {
    /// The whole frame.
    pub frame: &'a [u8],
}

impl<'a> Eth<'a> {
    /// Parses the 14-byte header.
    pub fn parse(frame: &'a [u8]) -> Result<Eth<'a>, ParseError> {
        if frame.len() < 14 {
            return Err(ParseError::Truncated("ethernet"));
        }
        Ok(Eth { frame })
    }
    /// Destination MAC.
    pub fn dst(&self) -> [u8; 6] {
        self.frame[0..6].try_into().expect("checked")
    }
    /// Source MAC.
    pub fn src(&self) -> [u8; 6] {
        self.frame[6..12].try_into().expect("checked")
    }
    /// Ethertype.
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.frame[12], self.frame[13]])
    }
    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.frame[14..]
    }
}

/// An ARP request or reply for IPv4 over Ethernet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1: request, 2: reply.
    pub op: u16,
    /// Sender MAC.
    pub sha: [u8; 6],
    /// Sender IP.
    pub spa: Ipv4Addr,
    /// Target MAC.
    pub tha: [u8; 6],
    /// Target IP.
    pub tpa: Ipv4Addr,
}

impl Arp {
    /// Parses an ARP payload.
    pub fn parse(p: &[u8]) -> Result<Arp, ParseError> {
        if p.len() < 28 {
            return Err(ParseError::Truncated("arp"));
        }
        if p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 {
            return Err(ParseError::Malformed("arp"));
        }
        Ok(Arp {
            op: u16::from_be_bytes([p[6], p[7]]),
            sha: p[8..14].try_into().expect("len"),
            spa: Ipv4Addr::new(p[14], p[15], p[16], p[17]),
            tha: p[18..24].try_into().expect("len"),
            tpa: Ipv4Addr::new(p[24], p[25], p[26], p[27]),
        })
    }

    /// The whole Ethernet frame carrying this ARP message.
    pub fn to_frame(&self, eth_dst: [u8; 6]) -> Vec<u8> {
        let mut f = Vec::with_capacity(42);
        f.extend_from_slice(&eth_dst);
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&ETH_ARP.to_be_bytes());
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&self.op.to_be_bytes());
        f.extend_from_slice(&self.sha);
        f.extend_from_slice(&self.spa.octets());
        f.extend_from_slice(&self.tha);
        f.extend_from_slice(&self.tpa.octets());
        f
    }
}

/// An IPv4 packet.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4<'a> {
    /// The packet (trimmed to its total length).
    pub pkt: &'a [u8],
    /// Header length.
    pub ihl: usize,
}

impl<'a> Ipv4<'a> {
    /// Parses the header and checks the lengths.
    pub fn parse(p: &'a [u8]) -> Result<Ipv4<'a>, ParseError> {
        if p.len() < 20 {
            return Err(ParseError::Truncated("ipv4"));
        }
        if p[0] >> 4 != 4 {
            return Err(ParseError::Malformed("ipv4 version"));
        }
        let ihl = ((p[0] & 0xf) as usize) * 4;
        let total = u16::from_be_bytes([p[2], p[3]]) as usize;
        if ihl < 20 || total < ihl || total > p.len() {
            return Err(ParseError::Malformed("ipv4 length"));
        }
        Ok(Ipv4 {
            pkt: &p[..total],
            ihl,
        })
    }
    /// Source address.
    pub fn src(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.pkt[12], self.pkt[13], self.pkt[14], self.pkt[15])
    }
    /// Destination address.
    pub fn dst(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.pkt[16], self.pkt[17], self.pkt[18], self.pkt[19])
    }
    /// Protocol number.
    pub fn proto(&self) -> u8 {
        self.pkt[9]
    }
    /// Whether this is a non-first fragment (no transport header in it).
    pub fn is_later_fragment(&self) -> bool {
        u16::from_be_bytes([self.pkt[6], self.pkt[7]]) & 0x1fff != 0
    }
    /// The transport payload.
    pub fn payload(&self) -> &'a [u8] {
        &self.pkt[self.ihl..]
    }
}

/// The transport facts enforcement needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport<'a> {
    /// Source port (0 for other protocols).
    pub sport: u16,
    /// Destination port (0 for other protocols).
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub flags: u8,
    /// TCP sequence number (0 for other protocols).
    pub seq: u32,
    /// Application payload.
    pub data: &'a [u8],
}

impl<'a> Transport<'a> {
    /// Parses the TCP or UDP header of `ip`; other protocols give ports 0.
    pub fn parse(ip: &Ipv4<'a>) -> Result<Transport<'a>, ParseError> {
        let p = ip.payload();
        if ip.is_later_fragment() {
            return Err(ParseError::Malformed("fragment"));
        }
        match ip.proto() {
            PROTO_TCP => {
                if p.len() < 20 {
                    return Err(ParseError::Truncated("tcp"));
                }
                let off = ((p[12] >> 4) as usize) * 4;
                if off < 20 || off > p.len() {
                    return Err(ParseError::Malformed("tcp offset"));
                }
                Ok(Transport {
                    sport: u16::from_be_bytes([p[0], p[1]]),
                    dport: u16::from_be_bytes([p[2], p[3]]),
                    flags: p[13],
                    seq: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                    data: &p[off..],
                })
            }
            PROTO_UDP => {
                if p.len() < 8 {
                    return Err(ParseError::Truncated("udp"));
                }
                Ok(Transport {
                    sport: u16::from_be_bytes([p[0], p[1]]),
                    dport: u16::from_be_bytes([p[2], p[3]]),
                    flags: 0,
                    seq: 0,
                    data: &p[8..],
                })
            }
            _ => Ok(Transport {
                sport: 0,
                dport: 0,
                flags: 0,
                seq: 0,
                data: p,
            }),
        }
    }
}

/// `virtio_net_hdr` flag (its first byte): the frame's transport
/// checksum is left for the kernel that delivers it to fill in.
pub const VNET_NEEDS_CSUM: u8 = 1;

/// The one's complement sum of `data` as 16-bit words, added to `sum`
/// (unfolded; a u64 cannot overflow on an IP packet).
fn ones_sum(data: &[u8], mut sum: u64) -> u64 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]) as u64;
    }
    sum
}

/// The Internet checksum of what `ones_sum` added up.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    fold(ones_sum(data, 0))
}

/// Whether the TCP segment in `ip`, in a frame whose vnet header is
/// `vnet`, will pass the checksum check of the stack it is delivered to:
/// either its checksum verifies, or it is left to be filled in on
/// delivery ([`VNET_NEEDS_CSUM`]: the receiving kernel computes it, and
/// the stack takes it as good). False for anything but TCP. Why: a
/// segment its receiver drops must not count as bytes an `http` check
/// saw (see [`crate::http`]).
pub fn tcp_checksum_ok(vnet: &[u8], ip: &Ipv4) -> bool {
    if ip.proto() != PROTO_TCP {
        return false;
    }
    if vnet.first().is_some_and(|f| f & VNET_NEEDS_CSUM != 0) {
        return true;
    }
    let seg = ip.payload();
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&ip.pkt[12..20]);
    pseudo[9] = PROTO_TCP;
    pseudo[10..12].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    fold(ones_sum(seg, ones_sum(&pseudo, 0))) == 0
}

/// Builds an Ethernet frame with an IPv4/UDP datagram (UDP checksum 0,
/// which IPv4 allows).
pub fn udp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    data: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + data.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&ETH_IPV4.to_be_bytes());
    let total = (20 + 8 + data.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = PROTO_UDP;
    ip[12..16].copy_from_slice(&src.0.octets());
    ip[16..20].copy_from_slice(&dst.0.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(data);
    f
}

/// Rewrites a frame's MAC addresses in place (lcmd routes: every delivered
/// frame comes from the gateway MAC to the appliance's MAC).
pub fn set_macs(frame: &mut [u8], src: [u8; 6], dst: [u8; 6]) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_round_trips() {
        let f = udp_frame(
            [1; 6],
            [2; 6],
            ("10.0.0.1".parse().unwrap(), 53),
            ("10.0.0.2".parse().unwrap(), 999),
            b"hi",
        );
        let e = Eth::parse(&f).unwrap();
        assert_eq!(e.ethertype(), ETH_IPV4);
        let ip = Ipv4::parse(e.payload()).unwrap();
        assert_eq!(checksum(&ip.pkt[..20]), 0);
        let t = Transport::parse(&ip).unwrap();
        assert_eq!((t.sport, t.dport, t.data), (53, 999, &b"hi"[..]));
    }

    #[test]
    fn tcp_checksums_verify_or_are_left_to_the_receiver() {
        // A SYN from 10.0.0.1:1000 to 10.0.0.2:80, seq 1, window 512,
        // checksum computed by hand over the pseudo-header.
        let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, PROTO_TCP, 0, 0];
        ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let mut tcp = vec![0x03, 0xe8, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, TCP_SYN];
        tcp.extend_from_slice(&[2, 0, 0, 0, 0, 0]);
        let pseudo = [10, 0, 0, 1, 10, 0, 0, 2, 0, PROTO_TCP, 0, 20];
        let c = checksum(&[&pseudo[..], &tcp].concat());
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
        let pkt = [ip, tcp].concat();
        let parsed = Ipv4::parse(&pkt).unwrap();
        assert!(tcp_checksum_ok(&[0; 10], &parsed));
        let mut bad = pkt.clone();
        bad[24] ^= 1;
        let bad = Ipv4::parse(&bad).unwrap();
        assert!(!tcp_checksum_ok(&[0; 10], &bad));
        assert!(tcp_checksum_ok(
            &[VNET_NEEDS_CSUM, 0, 0, 0, 0, 0, 34, 0, 16, 0],
            &bad
        ));
        let mut udp = pkt.clone();
        udp[9] = PROTO_UDP;
        assert!(!tcp_checksum_ok(&[0; 10], &Ipv4::parse(&udp).unwrap()));
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(Eth::parse(&[0; 10]).is_err());
        assert!(
            Ipv4::parse(&[0x45, 0, 0, 200, 0, 0, 0, 0, 64, 6, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
                .is_err()
        );
        assert!(Arp::parse(&[0; 27]).is_err());
    }
}
