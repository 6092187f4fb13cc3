//! Ethernet (with up to two VLAN tags), IPv4 and IPv6 (with extension headers).

use opha_common::node::v4_mapped;

use super::packet::Packet;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// Why a packet is not parsed further.
#[derive(Clone, Copy)]
pub enum Skip {
    /// Headers cut short or inconsistent: counted as malformed.
    Malformed,
    /// Not IP, or a protocol opha does not count: counted as non-polling.
    NotPolling,
    /// A non-first fragment: no transport header to read.
    Fragment,
    /// Already counted where it was decided (outside prefix, node map full).
    Counted,
}

pub struct L2 {
    /// Node VLAN: the outermost tag (the one the kernel may have moved into the skb), 0 when
    /// untagged.
    pub vlan: u16,
    pub ethertype: u16,
    pub l3_off: usize,
}

/// Ethernet header and in-band VLAN tags. `skb_vlan` is the tag the kernel already stripped
/// into the skb (hardware acceleration), if any.
#[inline(always)]
pub fn parse_l2(pkt: &Packet, skb_vlan: Option<u16>) -> Result<L2, Skip> {
    let mut vlan = skb_vlan.unwrap_or(0);
    let mut tags = if skb_vlan.is_some() { 1 } else { 0 };
    let mut ethertype = pkt.be16(12).ok_or(Skip::Malformed)?;
    let mut off = 14usize;
    // At most two tags in the packet (802.1ad outer, 802.1Q inner), two in all.
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        if tags == 2 {
            return Err(Skip::NotPolling);
        }
        let tci = pkt.be16(off).ok_or(Skip::Malformed)?;
        if tags == 0 {
            vlan = tci & 0x0fff;
        }
        tags += 1;
        ethertype = pkt.be16(off + 2).ok_or(Skip::Malformed)?;
        off += 4;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return Err(Skip::NotPolling);
    }
    Ok(L2 {
        vlan,
        ethertype,
        l3_off: off,
    })
}

/// An IPv6 (or IPv4-mapped) address, 8-byte aligned so that copies are two word moves.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct Addr(pub [u8; 16]);

pub struct L3 {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub l4_off: usize,
    /// Bytes from `l4_off` to the end of the IP packet, from the IP header's length fields.
    pub l4_len: usize,
}

/// IPv4 with options. `pkt_len` is the skb length: a packet shorter than its IP header says is
/// truncated.
#[inline(always)]
pub fn parse_ipv4(pkt: &Packet, off: usize, pkt_len: usize) -> Result<L3, Skip> {
    let vihl = pkt.u8(off).ok_or(Skip::Malformed)?;
    if vihl >> 4 != 4 {
        return Err(Skip::Malformed);
    }
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(Skip::Malformed);
    }
    let tot_len = pkt.be16(off + 2).ok_or(Skip::Malformed)? as usize;
    if tot_len < ihl || off + tot_len > pkt_len {
        return Err(Skip::Malformed);
    }
    let frag = pkt.be16(off + 6).ok_or(Skip::Malformed)?;
    let proto = pkt.u8(off + 9).ok_or(Skip::Malformed)?;
    let src = pkt.bytes::<4>(off + 12).ok_or(Skip::Malformed)?;
    let dst = pkt.bytes::<4>(off + 16).ok_or(Skip::Malformed)?;
    // The options must be present too.
    pkt.u8(off + ihl - 1).ok_or(Skip::Malformed)?;
    if frag & 0x1fff != 0 {
        return Err(Skip::Fragment);
    }
    Ok(L3 {
        src: Addr(v4_mapped(src)),
        dst: Addr(v4_mapped(dst)),
        proto,
        l4_off: off + ihl,
        l4_len: tot_len - ihl,
    })
}

/// Extension headers skipped before giving up (counted as malformed).
const MAX_IPV6_EXT: usize = 4;

/// IPv6, skipping hop-by-hop, routing, destination-options and fragment headers.
#[inline(always)]
pub fn parse_ipv6(pkt: &Packet, off: usize, pkt_len: usize) -> Result<L3, Skip> {
    let v = pkt.u8(off).ok_or(Skip::Malformed)?;
    if v >> 4 != 6 {
        return Err(Skip::Malformed);
    }
    let payload_len = pkt.be16(off + 4).ok_or(Skip::Malformed)? as usize;
    if off + 40 + payload_len > pkt_len {
        return Err(Skip::Malformed);
    }
    let mut next = pkt.u8(off + 6).ok_or(Skip::Malformed)?;
    let src = pkt.bytes::<16>(off + 8).ok_or(Skip::Malformed)?;
    let dst = pkt.bytes::<16>(off + 24).ok_or(Skip::Malformed)?;
    let l3_end = off + 40 + payload_len;
    let mut l4 = off + 40;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let nh = pkt.u8(l4).ok_or(Skip::Malformed)?;
                let len = pkt.u8(l4 + 1).ok_or(Skip::Malformed)? as usize;
                next = nh;
                l4 += (len + 1) * 8;
            }
            // Fragment: 8 bytes; a non-zero offset has no transport header.
            44 => {
                let nh = pkt.u8(l4).ok_or(Skip::Malformed)?;
                let frag = pkt.be16(l4 + 2).ok_or(Skip::Malformed)?;
                if frag & 0xfff8 != 0 {
                    return Err(Skip::Fragment);
                }
                next = nh;
                l4 += 8;
            }
            _ => break,
        }
        if l4 > l3_end {
            return Err(Skip::Malformed);
        }
    }
    if matches!(next, 0 | 43 | 60 | 44) {
        return Err(Skip::Malformed);
    }
    Ok(L3 {
        src: Addr(src),
        dst: Addr(dst),
        proto: next,
        l4_off: l4,
        l4_len: l3_end - l4,
    })
}
