//! Packet builders for BPF_PROG_TEST_RUN, raw sockets and the fuzz tests: whole Ethernet frames
//! (optionally VLAN-tagged) carrying IPv4/IPv6, UDP, TCP, ICMP/ICMPv6, and a small BER encoder
//! for SNMP messages. Checksums (IPv4 header, UDP, TCP, ICMP, ICMPv6) are always correct, so the
//! same frames are accepted by a real kernel stack.
//!
//! ```ignore
//! use opha_tests::packets::*;
//! let get = snmp_v1_v2c(SNMP_V2C, b"public", pdu::GET, 7, 0, &[VarBind::null(SYS_UPTIME)]);
//! let req = Frame::new().ipv4(POLLER_V4, NODE_V4).udp(POLLER_PORT, SNMP_PORT, &get);
//! let rsp = Frame::new().ipv4(NODE_V4, POLLER_V4).udp(SNMP_PORT, POLLER_PORT, &resp_bytes);
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// ---------------------------------------------------------------------------------------------
// Well-known test addresses and ports. Only 198.18.0.0/15 and 2001:db8::/32 are ever used.
// ---------------------------------------------------------------------------------------------

/// The poller (where the programs run).
pub const POLLER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The default device; `node_v4(n)` gives others in the same /24.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 10);
/// A second device.
pub const NODE2_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 11);
/// The IPv4 prefix the tests configure as monitored (contains POLLER_V4 and every node_v4).
pub const MONITORED_V4: &str = "198.18.0.0/16";
/// An address that is not in MONITORED_V4 (but still in the benchmarking range).
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 200, 1);

pub const POLLER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x10);
pub const NODE2_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, 0x11);
/// The IPv6 prefix the tests configure as monitored (contains POLLER_V6 and every node_v6).
pub const MONITORED_V6: &str = "2001:db8::/48";
/// Not in MONITORED_V6.
pub const OUTSIDE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

/// 198.18.1.n
pub const fn node_v4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, n)
}

/// 2001:db8:0:1::n
pub const fn node_v6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, n)
}

pub const POLLER_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x00, 0x02];

pub const SNMP_PORT: u16 = 161;
pub const TRAP_PORT: u16 = 162;
pub const SYSLOG_PORT: u16 = 514;
/// The poller's (ephemeral) source port in the test packets.
pub const POLLER_PORT: u16 = 40161;
/// A TCP service-check port the tests configure.
pub const TCP_CHECK_PORT: u16 = 22;
/// A TCP port that is not configured as a check port.
pub const TCP_OTHER_PORT: u16 = 8080;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// TCP flag bits.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const SYN_ACK: u8 = SYN | ACK;
    pub const RST_ACK: u8 = RST | ACK;
}

/// Length of the Ethernet header without VLAN tags.
pub const ETH_HLEN: usize = 14;

// ---------------------------------------------------------------------------------------------
// Frame builder
// ---------------------------------------------------------------------------------------------

/// An IPv6 extension header placed between the IPv6 header and the upper-layer header, in the
/// order given. Each is encoded in its minimal 8-byte form (options padded with PadN).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    HopByHop,
    /// Type 0 segments-left 0 routing header (8 bytes, no addresses).
    Routing,
    DestOpts,
    /// Fragment header; `offset` in 8-byte units (the header field), `more` = M flag.
    Fragment {
        offset: u16,
        more: bool,
    },
}

impl Ipv6Ext {
    pub const fn next_header_value(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop => 0,
            Ipv6Ext::Routing => 43,
            Ipv6Ext::DestOpts => 60,
            Ipv6Ext::Fragment { .. } => 44,
        }
    }
}

/// The kind of an ICMP error; the type/code is chosen for ICMP or ICMPv6 by the builder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpErrorKind {
    /// ICMP 3/3, ICMPv6 1/4.
    PortUnreachable,
    /// ICMP 3/1, ICMPv6 1/3.
    HostUnreachable,
    /// ICMP 11/0, ICMPv6 3/0.
    TimeExceeded,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L3 {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

/// Builder for one Ethernet frame. Configure the link and IP layers, then finish with a
/// payload constructor (`udp`, `tcp`, `icmp_echo`, `icmp_error`, `ip_raw`, `arp_request`), which
/// returns the whole frame. The builder is `Clone`, so one `Frame` can produce many packets.
#[derive(Clone, Debug)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    /// (TPID, VLAN id), outermost first.
    tags: Vec<(u16, u16)>,
    l3: L3,
    ipv4_options: Vec<u8>,
    ipv6_ext: Vec<Ipv6Ext>,
    /// IPv4: (offset in 8-byte units, MF).
    ipv4_frag: Option<(u16, bool)>,
    ttl: u8,
    ident: u16,
}

impl Default for Frame {
    fn default() -> Self {
        Self::new()
    }
}

impl Frame {
    /// An untagged IPv4 frame POLLER_V4 -> NODE_V4 (a request) until told otherwise.
    pub fn new() -> Self {
        Self {
            src_mac: POLLER_MAC,
            dst_mac: NODE_MAC,
            tags: Vec::new(),
            l3: L3::V4 {
                src: POLLER_V4,
                dst: NODE_V4,
            },
            ipv4_options: Vec::new(),
            ipv6_ext: Vec::new(),
            ipv4_frag: None,
            ttl: 64,
            ident: 0x1234,
        }
    }

    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag (at most two). The first call is the outer tag. With one tag the TPID is
    /// 0x8100; with two, the outer is 0x88a8 (802.1ad) and the inner 0x8100.
    pub fn vlan(mut self, id: u16) -> Self {
        assert!(self.tags.len() < 2, "at most two VLAN tags");
        self.tags.push((ETH_P_8021Q, id & 0x0fff));
        if self.tags.len() == 2 {
            self.tags[0].0 = ETH_P_8021AD;
        }
        self
    }

    /// Adds a VLAN tag with an explicit TPID and full TCI (PCP/DEI bits included), for odd
    /// combinations (e.g. two 0x8100 tags). Any number of tags.
    pub fn vlan_raw(mut self, tpid: u16, tci: u16) -> Self {
        self.tags.push((tpid, tci));
        self
    }

    pub fn ipv4(mut self, src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        self.l3 = L3::V4 { src, dst };
        self
    }

    pub fn ipv6(mut self, src: Ipv6Addr, dst: Ipv6Addr) -> Self {
        self.l3 = L3::V6 { src, dst };
        self
    }

    /// IPv4 or IPv6 depending on the addresses (both must be the same family).
    pub fn ip(self, src: IpAddr, dst: IpAddr) -> Self {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => self.ipv4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => self.ipv6(s, d),
            _ => panic!("mixed address families"),
        }
    }

    pub fn is_ipv6(&self) -> bool {
        matches!(self.l3, L3::V6 { .. })
    }

    /// IPv4 options (padded with EOL to a multiple of 4 bytes, at most 40).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        assert!(
            self.ipv4_options.len() <= 40,
            "IPv4 options are at most 40 bytes"
        );
        self
    }

    /// Appends IPv6 extension headers (in order).
    pub fn ipv6_ext(mut self, ext: &[Ipv6Ext]) -> Self {
        self.ipv6_ext.extend_from_slice(ext);
        self
    }

    /// Makes the packet a fragment: `offset` in 8-byte units, `more` = more fragments. IPv4 sets
    /// the header fields; IPv6 appends a fragment extension header. Only the header changes: the
    /// payload given to the payload constructor is carried as is.
    pub fn fragment(mut self, offset: u16, more: bool) -> Self {
        match self.l3 {
            L3::V4 { .. } => self.ipv4_frag = Some((offset & 0x1fff, more)),
            L3::V6 { .. } => self.ipv6_ext.push(Ipv6Ext::Fragment { offset, more }),
        }
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn ident(mut self, ident: u16) -> Self {
        self.ident = ident;
        self
    }

    /// UDP datagram with a correct checksum.
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = 8 + payload.len();
        let mut l4 = Vec::with_capacity(len);
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&(len as u16).to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
        l4.extend_from_slice(payload);
        let mut c = self.l4_checksum(IPPROTO_UDP, &l4);
        if c == 0 {
            c = 0xffff;
        }
        l4[6..8].copy_from_slice(&c.to_be_bytes());
        self.ip_raw(IPPROTO_UDP, &l4)
    }

    /// TCP segment without options or payload, seq 1000, ack 0 (or 2000 when ACK is set).
    pub fn tcp(&self, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let ack = if flags & tcp_flags::ACK != 0 { 2000 } else { 0 };
        self.tcp_full(sport, dport, flags, 1000, ack, &[])
    }

    /// TCP segment with explicit sequence numbers and payload.
    pub fn tcp_full(
        &self,
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut l4 = Vec::with_capacity(20 + payload.len());
        l4.extend_from_slice(&sport.to_be_bytes());
        l4.extend_from_slice(&dport.to_be_bytes());
        l4.extend_from_slice(&seq.to_be_bytes());
        l4.extend_from_slice(&ack.to_be_bytes());
        l4.push(5 << 4); // data offset: 5 words, no options
        l4.push(flags);
        l4.extend_from_slice(&64240u16.to_be_bytes());
        l4.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
        l4.extend_from_slice(payload);
        let c = self.l4_checksum(IPPROTO_TCP, &l4);
        l4[16..18].copy_from_slice(&c.to_be_bytes());
        self.ip_raw(IPPROTO_TCP, &l4)
    }

    /// ICMP echo request/reply (ICMPv6 128/129 when the builder is IPv6) with 16 bytes of data.
    pub fn icmp_echo(&self, request: bool, id: u16, seq: u16) -> Vec<u8> {
        let typ = match (self.is_ipv6(), request) {
            (false, true) => 8,
            (false, false) => 0,
            (true, true) => 128,
            (true, false) => 129,
        };
        let mut body = Vec::with_capacity(24);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend((0u8..16).map(|i| 0x30 + i));
        self.icmp(typ, 0, &body)
    }

    /// ICMP/ICMPv6 error quoting `quoted` (the IP bytes of the offending packet, see `ip_bytes`).
    pub fn icmp_error(&self, kind: IcmpErrorKind, quoted: &[u8]) -> Vec<u8> {
        let (typ, code) = match (self.is_ipv6(), kind) {
            (false, IcmpErrorKind::PortUnreachable) => (3, 3),
            (false, IcmpErrorKind::HostUnreachable) => (3, 1),
            (false, IcmpErrorKind::TimeExceeded) => (11, 0),
            (true, IcmpErrorKind::PortUnreachable) => (1, 4),
            (true, IcmpErrorKind::HostUnreachable) => (1, 3),
            (true, IcmpErrorKind::TimeExceeded) => (3, 0),
        };
        let mut body = vec![0u8; 4]; // unused / MTU
        body.extend_from_slice(quoted);
        self.icmp(typ, code, &body)
    }

    /// Any ICMP/ICMPv6 message: type, code, then `body` after the 4-byte header.
    pub fn icmp(&self, typ: u8, code: u8, body: &[u8]) -> Vec<u8> {
        let mut l4 = vec![typ, code, 0, 0];
        l4.extend_from_slice(body);
        let (proto, c) = if self.is_ipv6() {
            (IPPROTO_ICMPV6, self.l4_checksum(IPPROTO_ICMPV6, &l4))
        } else {
            (IPPROTO_ICMP, checksum(&[&l4]))
        };
        l4[2..4].copy_from_slice(&c.to_be_bytes());
        self.ip_raw(proto, &l4)
    }

    /// An IP packet with upper-layer protocol `proto` and the given upper-layer bytes (no checksum
    /// is computed for them).
    pub fn ip_raw(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut ip = Vec::with_capacity(60 + l4.len());
        match self.l3 {
            L3::V4 { src, dst } => {
                let hlen = 20 + self.ipv4_options.len();
                let total = hlen + l4.len();
                ip.push(0x40 | (hlen / 4) as u8);
                ip.push(0);
                ip.extend_from_slice(&(total as u16).to_be_bytes());
                ip.extend_from_slice(&self.ident.to_be_bytes());
                let frag = match self.ipv4_frag {
                    Some((off, more)) => off | if more { 0x2000 } else { 0 },
                    None => 0,
                };
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.push(self.ttl);
                ip.push(proto);
                ip.extend_from_slice(&[0, 0]);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                ip.extend_from_slice(&self.ipv4_options);
                let c = checksum(&[&ip[..hlen]]);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
            }
            L3::V6 { src, dst } => {
                let ext_len = 8 * self.ipv6_ext.len();
                let first = self
                    .ipv6_ext
                    .first()
                    .map_or(proto, |e| e.next_header_value());
                ip.extend_from_slice(&[0x60, 0, 0, 0]);
                ip.extend_from_slice(&((ext_len + l4.len()) as u16).to_be_bytes());
                ip.push(first);
                ip.push(self.ttl);
                ip.extend_from_slice(&src.octets());
                ip.extend_from_slice(&dst.octets());
                for (i, ext) in self.ipv6_ext.iter().enumerate() {
                    let next = self
                        .ipv6_ext
                        .get(i + 1)
                        .map_or(proto, |e| e.next_header_value());
                    match *ext {
                        Ipv6Ext::HopByHop | Ipv6Ext::DestOpts => {
                            // Hdr Ext Len 0 (8 bytes), one PadN option covering 4 bytes.
                            ip.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                        }
                        Ipv6Ext::Routing => {
                            // Type 0, segments left 0, reserved.
                            ip.extend_from_slice(&[next, 0, 0, 0, 0, 0, 0, 0]);
                        }
                        Ipv6Ext::Fragment { offset, more } => {
                            let field = (offset << 3) | u16::from(more);
                            ip.extend_from_slice(&[next, 0]);
                            ip.extend_from_slice(&field.to_be_bytes());
                            ip.extend_from_slice(&u32::from(self.ident).to_be_bytes());
                        }
                    }
                }
            }
        }
        ip.extend_from_slice(l4);
        let ethertype = match self.l3 {
            L3::V4 { .. } => ETH_P_IPV4,
            L3::V6 { .. } => ETH_P_IPV6,
        };
        self.ethernet(ethertype, &ip)
    }

    /// ARP request "who has `target`, tell `sender`" (uses the MACs and VLAN tags, not the IP
    /// layer settings).
    pub fn arp_request(&self, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
        let mut arp = Vec::with_capacity(28);
        arp.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
        arp.extend_from_slice(&self.src_mac);
        arp.extend_from_slice(&sender.octets());
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&target.octets());
        self.ethernet(ETH_P_ARP, &arp)
    }

    /// Ethernet header (with the VLAN tags) + `ethertype` + `payload`.
    pub fn ethernet(&self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(ETH_HLEN + 4 * self.tags.len() + payload.len());
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        for &(tpid, tci) in &self.tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn l4_checksum(&self, proto: u8, l4: &[u8]) -> u16 {
        match self.l3 {
            L3::V4 { src, dst } => {
                let mut pseudo = Vec::with_capacity(12);
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&[0, proto]);
                pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                checksum(&[&pseudo, l4])
            }
            L3::V6 { src, dst } => {
                let mut pseudo = Vec::with_capacity(40);
                pseudo.extend_from_slice(&src.octets());
                pseudo.extend_from_slice(&dst.octets());
                pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, proto]);
                checksum(&[&pseudo, l4])
            }
        }
    }
}

/// Internet checksum (RFC 1071) over the concatenation of `parts` (each part but the last must
/// have even length).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The bytes from the IP header on (skipping Ethernet and any 802.1Q/802.1ad tags), e.g. to quote
/// a request in an ICMP error or to send through a raw IP socket.
pub fn ip_bytes(frame: &[u8]) -> &[u8] {
    let mut off = 12;
    while off + 2 <= frame.len() {
        let et = u16::from_be_bytes([frame[off], frame[off + 1]]);
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            off += 4;
        } else {
            return frame.get(off + 2..).unwrap_or(&[]);
        }
    }
    &[]
}

/// The UDP payload of a frame built here (IPv4 with options or IPv6 with extension headers).
pub fn udp_payload(frame: &[u8]) -> &[u8] {
    let ip = ip_bytes(frame);
    let l4 = match ip.first().map(|b| b >> 4) {
        Some(4) => (usize::from(ip[0] & 0x0f)) * 4,
        Some(6) => {
            let mut next = ip[6];
            let mut off = 40;
            while matches!(next, 0 | 43 | 44 | 60) {
                next = ip[off];
                off += if next == 44 {
                    8
                } else {
                    8 + 8 * usize::from(ip[off + 1])
                };
            }
            off
        }
        _ => return &[],
    };
    ip.get(l4 + 8..).unwrap_or(&[])
}

// ---------------------------------------------------------------------------------------------
// Malformed input helpers
// ---------------------------------------------------------------------------------------------

/// Every truncation of `frame` from 14 bytes (the minimum test-run accepts for TC) to len - 1.
pub fn truncations(frame: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    (ETH_HLEN..frame.len()).map(move |n| &frame[..n])
}

/// A random mutation of `frame`: flips 1-4 bytes to random values, and sometimes truncates it or
/// appends random bytes. Never shorter than 14 bytes.
pub fn mutate(frame: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f.len() < ETH_HLEN {
        f.resize(ETH_HLEN, 0);
    }
    let flips = rng.random_range(1..=4);
    for _ in 0..flips {
        let i = rng.random_range(0..f.len());
        f[i] = rng.random();
    }
    match rng.random_range(0..4) {
        0 => {
            let n = rng.random_range(ETH_HLEN..=f.len());
            f.truncate(n);
        }
        1 => {
            let extra = rng.random_range(1..=16);
            f.extend((0..extra).map(|_| rng.random::<u8>()));
        }
        _ => {}
    }
    f
}

// ---------------------------------------------------------------------------------------------
// BER and SNMP
// ---------------------------------------------------------------------------------------------

/// SNMP version field values.
pub const SNMP_V1: i64 = 0;
pub const SNMP_V2C: i64 = 1;
pub const SNMP_V3: i64 = 3;

/// PDU tags (context-specific, constructed).
pub mod pdu {
    pub const GET: u8 = 0xa0;
    pub const GETNEXT: u8 = 0xa1;
    pub const RESPONSE: u8 = 0xa2;
    pub const SET: u8 = 0xa3;
    pub const TRAP_V1: u8 = 0xa4;
    pub const GETBULK: u8 = 0xa5;
    pub const INFORM: u8 = 0xa6;
    pub const TRAP_V2: u8 = 0xa7;
    pub const REPORT: u8 = 0xa8;
}

/// BER universal / application tags.
pub mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const IP_ADDRESS: u8 = 0x40;
    pub const COUNTER32: u8 = 0x41;
    pub const GAUGE32: u8 = 0x42;
    pub const TIMETICKS: u8 = 0x43;
    pub const COUNTER64: u8 = 0x46;
}

/// sysUpTime.0 and friends, for varbinds.
pub const SYS_DESCR: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 1, 0];
pub const SYS_UPTIME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
pub const SYS_NAME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 5, 0];
pub const IF_TABLE: &[u32] = &[1, 3, 6, 1, 2, 1, 2, 2];
/// snmpTrapOID.0
pub const SNMP_TRAP_OID: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];
/// linkDown
pub const LINK_DOWN: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 5, 3];

/// How BER lengths are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LenForm {
    /// Definite short form below 128, minimal long form above (what agents send).
    #[default]
    Minimal,
    /// Every length in long form: 0x81 nn when it fits one byte, 0x82 nn nn above.
    Long81,
    /// Every length as 0x82 nn nn.
    Long82,
}

/// A varbind value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Str(Vec<u8>),
    Oid(Vec<u32>),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Counter64(u64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarBind {
    pub oid: Vec<u32>,
    pub value: Value,
}

impl VarBind {
    pub fn new(oid: &[u32], value: Value) -> Self {
        Self {
            oid: oid.to_vec(),
            value,
        }
    }

    /// oid = NULL, as in a request.
    pub fn null(oid: &[u32]) -> Self {
        Self::new(oid, Value::Null)
    }
}

/// A BER encoder with a chosen length form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ber {
    pub form: LenForm,
}

impl Ber {
    pub const MINIMAL: Ber = Ber {
        form: LenForm::Minimal,
    };
    pub const LONG81: Ber = Ber {
        form: LenForm::Long81,
    };
    pub const LONG82: Ber = Ber {
        form: LenForm::Long82,
    };

    pub fn len(&self, n: usize) -> Vec<u8> {
        assert!(n <= 0xffff, "lengths above 65535 are not needed here");
        match self.form {
            LenForm::Minimal if n < 0x80 => vec![n as u8],
            LenForm::Minimal | LenForm::Long81 if n <= 0xff => vec![0x81, n as u8],
            _ => vec![0x82, (n >> 8) as u8, n as u8],
        }
    }

    pub fn tlv(&self, tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend(self.len(content.len()));
        v.extend_from_slice(content);
        v
    }

    /// A constructed TLV from already encoded parts.
    pub fn seq(&self, tag: u8, parts: &[Vec<u8>]) -> Vec<u8> {
        self.tlv(tag, &parts.concat())
    }

    pub fn int(&self, v: i64) -> Vec<u8> {
        self.tlv(tag::INTEGER, &int_content(v))
    }

    /// An unsigned application type (Counter32, Gauge32, TimeTicks, Counter64).
    pub fn uint(&self, tag: u8, v: u64) -> Vec<u8> {
        // Two's complement of a non-negative i128 never needs more than 9 bytes for u64.
        let bytes = (v as i128).to_be_bytes();
        let mut start = 0;
        while start < 15 && bytes[start] == 0 && bytes[start + 1] & 0x80 == 0 {
            start += 1;
        }
        self.tlv(tag, &bytes[start..])
    }

    pub fn octets(&self, v: &[u8]) -> Vec<u8> {
        self.tlv(tag::OCTET_STRING, v)
    }

    pub fn null(&self) -> Vec<u8> {
        self.tlv(tag::NULL, &[])
    }

    pub fn oid(&self, oid: &[u32]) -> Vec<u8> {
        assert!(oid.len() >= 2, "an OID has at least two arcs");
        let mut c = Vec::new();
        push_base128(&mut c, oid[0] * 40 + oid[1]);
        for &arc in &oid[2..] {
            push_base128(&mut c, arc);
        }
        self.tlv(tag::OID, &c)
    }

    pub fn value(&self, v: &Value) -> Vec<u8> {
        match v {
            Value::Null => self.null(),
            Value::Int(i) => self.int(*i),
            Value::Str(s) => self.octets(s),
            Value::Oid(o) => self.oid(o),
            Value::IpAddress(a) => self.tlv(tag::IP_ADDRESS, a),
            Value::Counter32(n) => self.uint(tag::COUNTER32, u64::from(*n)),
            Value::Gauge32(n) => self.uint(tag::GAUGE32, u64::from(*n)),
            Value::TimeTicks(n) => self.uint(tag::TIMETICKS, u64::from(*n)),
            Value::Counter64(n) => self.uint(tag::COUNTER64, *n),
        }
    }

    pub fn varbinds(&self, vbs: &[VarBind]) -> Vec<u8> {
        let list: Vec<Vec<u8>> = vbs
            .iter()
            .map(|vb| self.seq(tag::SEQUENCE, &[self.oid(&vb.oid), self.value(&vb.value)]))
            .collect();
        self.seq(tag::SEQUENCE, &list)
    }

    /// A request/response-shaped PDU: request-id, error-status, error-index, varbinds.
    pub fn pdu(
        &self,
        pdu_tag: u8,
        request_id: i32,
        error_status: i32,
        error_index: i32,
        vbs: &[VarBind],
    ) -> Vec<u8> {
        self.seq(
            pdu_tag,
            &[
                self.int(request_id.into()),
                self.int(error_status.into()),
                self.int(error_index.into()),
                self.varbinds(vbs),
            ],
        )
    }

    /// v1/v2c message: SEQUENCE { version, community, PDU }. `error_index` is 1 when
    /// `error_status` != 0, else 0.
    pub fn snmp_v1_v2c(
        &self,
        version: i64,
        community: &[u8],
        pdu_tag: u8,
        request_id: i32,
        error_status: i32,
        vbs: &[VarBind],
    ) -> Vec<u8> {
        let error_index = i32::from(error_status != 0);
        let pdu = self.pdu(pdu_tag, request_id, error_status, error_index, vbs);
        self.community_message(version, community, pdu)
    }

    /// v2c GetBulk: non-repeaters and max-repetitions take the error fields' places.
    pub fn snmp_getbulk(
        &self,
        community: &[u8],
        request_id: i32,
        non_repeaters: i32,
        max_repetitions: i32,
        vbs: &[VarBind],
    ) -> Vec<u8> {
        let pdu = self.pdu(
            pdu::GETBULK,
            request_id,
            non_repeaters,
            max_repetitions,
            vbs,
        );
        self.community_message(SNMP_V2C, community, pdu)
    }

    /// v1 Trap-PDU: enterprise, agent-addr, (generic-trap, specific-trap), time-stamp, varbinds.
    pub fn snmp_v1_trap(
        &self,
        community: &[u8],
        enterprise: &[u32],
        agent: Ipv4Addr,
        (generic, specific): (i64, i64),
        uptime: u32,
        vbs: &[VarBind],
    ) -> Vec<u8> {
        let pdu = self.seq(
            pdu::TRAP_V1,
            &[
                self.oid(enterprise),
                self.tlv(tag::IP_ADDRESS, &agent.octets()),
                self.int(generic),
                self.int(specific),
                self.uint(tag::TIMETICKS, u64::from(uptime)),
                self.varbinds(vbs),
            ],
        );
        self.community_message(SNMP_V1, community, pdu)
    }

    /// v2c SNMPv2-Trap (`pdu_tag` = TRAP_V2) or InformRequest (INFORM): sysUpTime.0 and
    /// snmpTrapOID.0 = `trap_oid` first, then `vbs`.
    pub fn snmp_v2c_trap(
        &self,
        community: &[u8],
        pdu_tag: u8,
        request_id: i32,
        uptime: u32,
        trap_oid: &[u32],
        vbs: &[VarBind],
    ) -> Vec<u8> {
        let mut all = vec![
            VarBind::new(SYS_UPTIME, Value::TimeTicks(uptime)),
            VarBind::new(SNMP_TRAP_OID, Value::Oid(trap_oid.to_vec())),
        ];
        all.extend_from_slice(vbs);
        self.snmp_v1_v2c(SNMP_V2C, community, pdu_tag, request_id, 0, &all)
    }

    /// SNMPv3 message with USM security parameters. `V3Data::Plain` carries a scoped PDU
    /// (noAuthNoPriv, reportable for requests); `V3Data::Encrypted` an encrypted PDU
    /// (authPriv flags, 12-byte auth and 8-byte priv parameters).
    pub fn snmp_v3(&self, msg_id: i32, data: &V3Data<'_>) -> Vec<u8> {
        let engine_id = [0x80, 0x00, 0x1f, 0x88, 0x80, 0x01, 0x02, 0x03, 0x04];
        let (flags, auth, privacy, msg_data) = match data {
            V3Data::Plain {
                pdu_tag,
                request_id,
                error_status,
                varbinds,
            } => {
                let reportable = matches!(
                    *pdu_tag,
                    pdu::GET | pdu::GETNEXT | pdu::SET | pdu::GETBULK | pdu::INFORM
                );
                let pdu = self.pdu(
                    *pdu_tag,
                    *request_id,
                    *error_status,
                    i32::from(*error_status != 0),
                    varbinds,
                );
                let scoped = self.seq(
                    tag::SEQUENCE,
                    &[self.octets(&engine_id), self.octets(b""), pdu],
                );
                (if reportable { 0x04 } else { 0x00 }, vec![], vec![], scoped)
            }
            V3Data::Encrypted(bytes) => (
                0x07,
                vec![0xaa; 12],
                vec![0, 0, 0, 1, 0x5e, 0x5e, 0x5e, 0x5e],
                self.octets(bytes),
            ),
        };
        let usm = self.seq(
            tag::SEQUENCE,
            &[
                self.octets(&engine_id),
                self.int(3),
                self.int(12345),
                self.octets(b"opha"),
                self.octets(&auth),
                self.octets(&privacy),
            ],
        );
        let global = self.seq(
            tag::SEQUENCE,
            &[
                self.int(msg_id.into()),
                self.int(65507),
                self.octets(&[flags]),
                self.int(3), // USM
            ],
        );
        self.seq(
            tag::SEQUENCE,
            &[self.int(SNMP_V3), global, self.octets(&usm), msg_data],
        )
    }

    fn community_message(&self, version: i64, community: &[u8], pdu: Vec<u8>) -> Vec<u8> {
        self.seq(
            tag::SEQUENCE,
            &[self.int(version), self.octets(community), pdu],
        )
    }
}

/// The body of an SNMPv3 message.
#[derive(Clone, Debug)]
pub enum V3Data<'a> {
    Plain {
        pdu_tag: u8,
        request_id: i32,
        error_status: i32,
        varbinds: &'a [VarBind],
    },
    Encrypted(&'a [u8]),
}

fn int_content(v: i64) -> Vec<u8> {
    let bytes = v.to_be_bytes();
    let mut start = 0;
    // Drop leading bytes that only repeat the sign.
    while start < 7 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

fn push_base128(out: &mut Vec<u8>, mut v: u32) {
    let mut tmp = [0u8; 5];
    let mut n = 0;
    loop {
        tmp[n] = (v & 0x7f) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(tmp[i] | if i > 0 { 0x80 } else { 0 });
    }
}

/// v1/v2c message in minimal encoding (see `Ber::snmp_v1_v2c` for other length forms).
pub fn snmp_v1_v2c(
    version: i64,
    community: &[u8],
    pdu_tag: u8,
    request_id: i32,
    error_status: i32,
    vbs: &[VarBind],
) -> Vec<u8> {
    Ber::MINIMAL.snmp_v1_v2c(version, community, pdu_tag, request_id, error_status, vbs)
}

/// v2c GetBulk in minimal encoding.
pub fn snmp_getbulk(
    community: &[u8],
    request_id: i32,
    non_repeaters: i32,
    max_repetitions: i32,
    vbs: &[VarBind],
) -> Vec<u8> {
    Ber::MINIMAL.snmp_getbulk(community, request_id, non_repeaters, max_repetitions, vbs)
}

/// SNMPv3 message in minimal encoding.
pub fn snmp_v3(msg_id: i32, data: &V3Data<'_>) -> Vec<u8> {
    Ber::MINIMAL.snmp_v3(msg_id, data)
}

/// v1 linkDown trap from `agent`, minimal encoding.
pub fn snmp_v1_trap(community: &[u8], agent: Ipv4Addr, vbs: &[VarBind]) -> Vec<u8> {
    Ber::MINIMAL.snmp_v1_trap(
        community,
        &[1, 3, 6, 1, 4, 1, 8072, 3, 2, 10],
        agent,
        (2, 0),
        4242,
        vbs,
    )
}

/// v2c linkDown TrapV2 (`pdu::TRAP_V2`) or Inform (`pdu::INFORM`), minimal encoding.
pub fn snmp_v2c_trap(community: &[u8], pdu_tag: u8, request_id: i32, vbs: &[VarBind]) -> Vec<u8> {
    Ber::MINIMAL.snmp_v2c_trap(community, pdu_tag, request_id, 4242, LINK_DOWN, vbs)
}

/// An RFC 3164-style syslog line: `<pri>text`.
pub fn syslog_line(pri: u8, text: &str) -> Vec<u8> {
    format!("<{pri}>{text}").into_bytes()
}

/// Minimal BER reader for tests: (tag, content, rest), accepting short and long definite forms.
pub fn ber_read(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&t, b) = b.split_first()?;
    let (&l0, mut b) = b.split_first()?;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else {
        let n = usize::from(l0 & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let v = b[..n]
            .iter()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x));
        b = &b[n..];
        v
    };
    if b.len() < len {
        return None;
    }
    Some((t, &b[..len], &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Vec<u8> {
        let msg = snmp_v1_v2c(
            SNMP_V2C,
            b"public",
            pdu::GET,
            0x1234_5678,
            0,
            &[VarBind::null(SYS_UPTIME)],
        );
        Frame::new()
            .ipv4(POLLER_V4, NODE_V4)
            .udp(POLLER_PORT, SNMP_PORT, &msg)
    }

    #[test]
    fn ipv4_header_checksum_verifies() {
        let f = request();
        let ip = ip_bytes(&f);
        assert_eq!(checksum(&[&ip[..20]]), 0);
        let with_opts = Frame::new()
            .ipv4_options(&[7, 7, 4, 0, 0, 0, 0]) // record route, padded to 8
            .udp(1, 2, b"x");
        let ip = ip_bytes(&with_opts);
        assert_eq!(ip[0], 0x47);
        assert_eq!(checksum(&[&ip[..28]]), 0);
    }

    #[test]
    fn udp_checksum_verifies_v4_and_v6() {
        for f in [
            request(),
            Frame::new()
                .ipv6(POLLER_V6, NODE_V6)
                .udp(POLLER_PORT, SNMP_PORT, b"abc"),
        ] {
            let ip = ip_bytes(&f);
            let (pseudo, l4) = if ip[0] >> 4 == 4 {
                let mut p = ip[12..20].to_vec();
                p.extend_from_slice(&[0, 17]);
                p.extend_from_slice(&((ip.len() - 20) as u16).to_be_bytes());
                (p, &ip[20..])
            } else {
                let mut p = ip[8..40].to_vec();
                p.extend_from_slice(&((ip.len() - 40) as u32).to_be_bytes());
                p.extend_from_slice(&[0, 0, 0, 17]);
                (p, &ip[40..])
            };
            assert_eq!(checksum(&[&pseudo, l4]), 0);
        }
    }

    #[test]
    fn icmp_checksums_verify() {
        let f = Frame::new().icmp_echo(true, 1, 2);
        let ip = ip_bytes(&f);
        assert_eq!(ip[9], IPPROTO_ICMP);
        assert_eq!(ip[20], 8);
        assert_eq!(checksum(&[&ip[20..]]), 0);
        let f = Frame::new().ipv6(NODE_V6, POLLER_V6).icmp_echo(false, 1, 2);
        let ip = ip_bytes(&f);
        assert_eq!(ip[6], IPPROTO_ICMPV6);
        assert_eq!(ip[40], 129);
        let mut pseudo = ip[8..40].to_vec();
        pseudo.extend_from_slice(&((ip.len() - 40) as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(checksum(&[&pseudo, &ip[40..]]), 0);
    }

    #[test]
    fn vlan_tags_and_lengths() {
        let f = Frame::new().vlan(100).vlan(200).udp(1, 2, b"hi");
        assert_eq!(&f[12..14], &ETH_P_8021AD.to_be_bytes());
        assert_eq!(&f[14..16], &100u16.to_be_bytes());
        assert_eq!(&f[16..18], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(&f[18..20], &200u16.to_be_bytes());
        assert_eq!(&f[20..22], &ETH_P_IPV4.to_be_bytes());
        assert_eq!(f.len(), 14 + 8 + 20 + 8 + 2);
        let one = Frame::new().vlan(7).udp(1, 2, b"");
        assert_eq!(&one[12..14], &ETH_P_8021Q.to_be_bytes());
        assert_eq!(udp_payload(&f), b"hi");
    }

    #[test]
    fn ipv6_extension_chain() {
        let f = Frame::new()
            .ipv6(POLLER_V6, NODE_V6)
            .ipv6_ext(&[Ipv6Ext::HopByHop, Ipv6Ext::DestOpts])
            .fragment(0, true)
            .udp(5, 6, b"pp");
        let ip = ip_bytes(&f);
        assert_eq!(ip[6], 0);
        assert_eq!(ip[40], 60);
        assert_eq!(ip[48], 44);
        assert_eq!(ip[56], IPPROTO_UDP);
        assert_eq!(u16::from_be_bytes([ip[58], ip[59]]), 1); // offset 0, M
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            ip.len() - 40
        );
        assert_eq!(udp_payload(&f), b"pp");
    }

    #[test]
    fn ipv4_fragment_fields() {
        let f = Frame::new().fragment(185, false).udp(1, 2, b"x");
        let ip = ip_bytes(&f);
        assert_eq!(u16::from_be_bytes([ip[6], ip[7]]), 185);
        let f = Frame::new().fragment(0, true).udp(1, 2, b"x");
        assert_eq!(
            u16::from_be_bytes([ip_bytes(&f)[6], ip_bytes(&f)[7]]),
            0x2000
        );
    }

    #[test]
    fn ber_lengths_decode_in_every_form() {
        for ber in [Ber::MINIMAL, Ber::LONG81, Ber::LONG82] {
            let msg = ber.snmp_v1_v2c(
                SNMP_V1,
                b"public",
                pdu::RESPONSE,
                -5,
                2,
                &[VarBind::new(SYS_DESCR, Value::Str(vec![b'a'; 300]))],
            );
            let (t, body, rest) = ber_read(&msg).unwrap();
            assert_eq!((t, rest.len()), (tag::SEQUENCE, 0));
            assert_eq!(msg[1], 0x82); // > 255 bytes: always two length bytes
            let (t, ver, body) = ber_read(body).unwrap();
            assert_eq!((t, ver), (tag::INTEGER, &[0u8][..]));
            let (_, comm, body) = ber_read(body).unwrap();
            assert_eq!(comm, b"public");
            let (t, pdu_body, _) = ber_read(body).unwrap();
            assert_eq!(t, pdu::RESPONSE);
            let (_, rid, pdu_body) = ber_read(pdu_body).unwrap();
            assert_eq!(rid, &[0xfb]);
            let (_, es, _) = ber_read(pdu_body).unwrap();
            assert_eq!(es, &[2]);
            match ber.form {
                LenForm::Minimal => assert_eq!(body[1], 0x82),
                LenForm::Long81 => assert_eq!(&msg[5..7], &[0x81, 1]), // version length
                LenForm::Long82 => assert_eq!(&msg[5..8], &[0x82, 0, 1]),
            }
        }
        assert_eq!(Ber::MINIMAL.len(127), vec![127]);
        assert_eq!(Ber::MINIMAL.len(128), vec![0x81, 128]);
        assert_eq!(Ber::MINIMAL.len(256), vec![0x82, 1, 0]);
    }

    #[test]
    fn ber_integers_and_oids() {
        let b = Ber::MINIMAL;
        assert_eq!(b.int(0), vec![2, 1, 0]);
        assert_eq!(b.int(127), vec![2, 1, 127]);
        assert_eq!(b.int(128), vec![2, 2, 0, 128]);
        assert_eq!(b.int(-1), vec![2, 1, 0xff]);
        assert_eq!(b.int(-129), vec![2, 2, 0xff, 0x7f]);
        assert_eq!(
            b.uint(tag::COUNTER32, 0xffff_ffff),
            vec![0x41, 5, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(
            b.oid(&[1, 3, 6, 1, 4, 1, 8072]),
            vec![6, 7, 0x2b, 6, 1, 4, 1, 0xbf, 0x08]
        );
    }

    #[test]
    fn v3_message_structure() {
        let vbs = [VarBind::null(SYS_NAME)];
        let msg = snmp_v3(
            777,
            &V3Data::Plain {
                pdu_tag: pdu::GET,
                request_id: 9,
                error_status: 0,
                varbinds: &vbs,
            },
        );
        let (_, body, _) = ber_read(&msg).unwrap();
        let (_, ver, body) = ber_read(body).unwrap();
        assert_eq!(ver, &[3]);
        let (_, global, body) = ber_read(body).unwrap();
        let (_, id, _) = ber_read(global).unwrap();
        assert_eq!(id, &[0x03, 0x09]);
        let (t, _, body) = ber_read(body).unwrap();
        assert_eq!(t, tag::OCTET_STRING);
        let (t, scoped, rest) = ber_read(body).unwrap();
        assert_eq!((t, rest.len()), (tag::SEQUENCE, 0));
        let (_, _, scoped) = ber_read(scoped).unwrap();
        let (_, _, scoped) = ber_read(scoped).unwrap();
        assert_eq!(scoped[0], pdu::GET);
        let enc = snmp_v3(778, &V3Data::Encrypted(&[1, 2, 3, 4]));
        let (_, body, _) = ber_read(&enc).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        assert_eq!(body, &[4, 4, 1, 2, 3, 4]);
    }

    #[test]
    fn traps_and_truncations() {
        let t = snmp_v1_trap(b"public", NODE_V4, &[]);
        let (_, body, _) = ber_read(&t).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        assert_eq!(body[0], pdu::TRAP_V1);
        let t2 = snmp_v2c_trap(b"public", pdu::INFORM, 5, &[]);
        let (_, body, _) = ber_read(&t2).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        let (_, _, body) = ber_read(body).unwrap();
        assert_eq!(body[0], pdu::INFORM);
        let f = request();
        let all: Vec<&[u8]> = truncations(&f).collect();
        assert_eq!(all.len(), f.len() - 14);
        assert_eq!(all[0].len(), 14);
        assert_eq!(all.last().unwrap().len(), f.len() - 1);
        let mut rng = rand::rng();
        for _ in 0..100 {
            assert!(mutate(&f, &mut rng).len() >= 14);
        }
        assert_eq!(syslog_line(13, "x"), b"<13>x");
    }

    #[test]
    fn icmp_error_quotes_request() {
        let req = request();
        let err = Frame::new()
            .ipv4(NODE_V4, POLLER_V4)
            .icmp_error(IcmpErrorKind::PortUnreachable, ip_bytes(&req));
        let ip = ip_bytes(&err);
        assert_eq!((ip[20], ip[21]), (3, 3));
        assert_eq!(&ip[28..], ip_bytes(&req));
    }
}
