//! The SNMP header in BER, as far as matching needs: version, request-id (v1/v2c) or msgID
//! (v3), PDU type and error-status. Short and long length forms; anything inconsistent is
//! malformed.
//!
//! The BER primitives are BPF global functions: the verifier checks each once, on its own,
//! and their results reach the caller as plain numbers. Inlined, every length form of every
//! field multiplied the paths the verifier had to walk (beyond its 1M instruction budget).

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};

use super::packet::{MAX_OFF, Packet};

pub const PDU_GET: u8 = 0xa0;
pub const PDU_GETNEXT: u8 = 0xa1;
pub const PDU_RESPONSE: u8 = 0xa2;
pub const PDU_SET: u8 = 0xa3;
pub const PDU_TRAP_V1: u8 = 0xa4;
pub const PDU_GETBULK: u8 = 0xa5;
pub const PDU_REPORT: u8 = 0xa8;
/// The PDU of an encrypted SNMPv3 message cannot be seen.
pub const PDU_ENCRYPTED: u8 = 0;

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTETS: u8 = 0x04;
const TAG_SEQUENCE: u8 = 0x30;

/// Longest BER length accepted: an SNMP message fits in a UDP datagram.
const MAX_LEN: u32 = 0xffff;

pub struct SnmpHeader {
    /// 0 = v1, 1 = v2c, 3 = v3.
    pub version: u8,
    pub pdu: u8,
    /// request-id (v1/v2c) or msgID (v3), as sent.
    pub id: u32,
    pub error_status: u32,
}

#[derive(Clone, Copy)]
struct Tlv {
    tag: u8,
    len: usize,
    val: usize,
}

impl Tlv {
    #[inline(always)]
    fn end(&self) -> usize {
        self.val + self.len
    }
}

const OK: u64 = 1 << 63;

/// Reads a tag and its length at `off`; the value must end by `limit`.
#[inline(always)]
fn tlv_at(pkt: &Packet, off: usize, limit: usize) -> Option<Tlv> {
    let tag = pkt.u8(off)?;
    let l0 = pkt.u8(off + 1)?;
    let (len, val) = if l0 < 0x80 {
        (l0 as u32, off + 2)
    } else if l0 == 0x81 {
        (pkt.u8(off + 2)? as u32, off + 3)
    } else if l0 == 0x82 {
        (pkt.be16(off + 2)? as u32, off + 4)
    } else if l0 == 0x83 {
        let hi = pkt.u8(off + 2)? as u32;
        (hi << 16 | pkt.be16(off + 3)? as u32, off + 5)
    } else if l0 == 0x84 {
        (pkt.be32(off + 2)?, off + 6)
    } else {
        return None;
    };
    if len > MAX_LEN {
        return None;
    }
    let t = Tlv {
        tag,
        len: len as usize,
        val,
    };
    if t.end() > limit || t.end() > MAX_OFF {
        return None;
    }
    Some(t)
}

/// Global: tag and length at `off`. Packed as OK | tag << 32 | len << 16 | value offset.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn opha_ber_tlv(skb: *mut __sk_buff, off: u32, limit: u32) -> u64 {
    let pkt = Packet::new(&TcContext::new(skb));
    match tlv_at(&pkt, off as usize, limit as usize) {
        Some(t) => OK | (t.tag as u64) << 32 | (t.len as u64) << 16 | t.val as u64,
        None => 0,
    }
}

/// Global: an INTEGER at `off` of 1 to 5 content bytes (5 only with a leading zero), as its
/// low 32 bits. Packed as OK | end offset << 32 | value.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn opha_ber_int(skb: *mut __sk_buff, off: u32, limit: u32) -> u64 {
    let pkt = Packet::new(&TcContext::new(skb));
    let Some(t) = tlv_at(&pkt, off as usize, limit as usize) else {
        return 0;
    };
    if t.tag != TAG_INTEGER || t.len == 0 || t.len > 5 {
        return 0;
    }
    let Some(first) = pkt.u8(t.val) else {
        return 0;
    };
    if t.len == 5 && first != 0 {
        return 0;
    }
    let mut v: u32 = if first & 0x80 != 0 { u32::MAX } else { 0 };
    for i in 0..5 {
        if i >= t.len {
            break;
        }
        let Some(b) = pkt.u8(t.val + i) else {
            return 0;
        };
        v = (v << 8) | b as u32;
    }
    OK | (t.end() as u64) << 32 | v as u64
}

#[inline(always)]
fn tlv(ctx: &TcContext, off: usize, limit: usize) -> Option<Tlv> {
    let r = opha_ber_tlv(ctx.skb.skb, off as u32, limit as u32);
    if r & OK == 0 {
        return None;
    }
    let val = (r & 0xffff) as usize;
    let len = ((r >> 16) & 0xffff) as usize;
    if val > MAX_OFF || len > MAX_OFF {
        return None;
    }
    Some(Tlv {
        tag: (r >> 32) as u8,
        len,
        val,
    })
}

/// (value, end offset) of an INTEGER.
#[inline(always)]
fn integer(ctx: &TcContext, off: usize, limit: usize) -> Option<(u32, usize)> {
    let r = opha_ber_int(ctx.skb.skb, off as u32, limit as u32);
    if r & OK == 0 {
        return None;
    }
    let end = ((r >> 32) & 0xffff) as usize;
    if end > MAX_OFF {
        return None;
    }
    Some((r as u32, end))
}

#[inline(always)]
fn is_pdu(tag: u8) -> bool {
    (PDU_GET..=PDU_REPORT).contains(&tag)
}

/// Global: the SNMP message in `[off, end)`. Packed as OK | errored << 42 | version << 40 |
/// pdu << 32 | id, where errored means error-status != 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn opha_snmp_parse(skb: *mut __sk_buff, off: u32, end: u32) -> u64 {
    let ctx = TcContext::new(skb);
    match parse_inner(&ctx, off as usize, end as usize) {
        Some(h) => {
            OK | ((h.error_status != 0) as u64) << 42
                | ((h.version & 3) as u64) << 40
                | (h.pdu as u64) << 32
                | h.id as u64
        }
        None => 0,
    }
}

/// Parses the SNMP message in `[off, end)`.
#[inline(always)]
pub fn parse(ctx: &TcContext, off: usize, end: usize) -> Option<SnmpHeader> {
    let r = opha_snmp_parse(ctx.skb.skb, off as u32, end as u32);
    if r & OK == 0 {
        return None;
    }
    Some(SnmpHeader {
        version: ((r >> 40) & 3) as u8,
        pdu: (r >> 32) as u8,
        id: r as u32,
        error_status: ((r >> 42) & 1) as u32,
    })
}

#[inline(always)]
fn parse_inner(ctx: &TcContext, off: usize, end: usize) -> Option<SnmpHeader> {
    let msg = tlv(ctx, off, end)?;
    if msg.tag != TAG_SEQUENCE {
        return None;
    }
    let limit = msg.end();
    let (version, after_ver) = integer(ctx, msg.val, limit)?;
    match version {
        0 | 1 => {
            let community = tlv(ctx, after_ver, limit)?;
            if community.tag != TAG_OCTETS {
                return None;
            }
            let pdu = tlv(ctx, community.end(), limit)?;
            pdu_header(ctx, version as u8, &pdu, None)
        }
        3 => {
            let global = tlv(ctx, after_ver, limit)?;
            if global.tag != TAG_SEQUENCE {
                return None;
            }
            let (msg_id, _) = integer(ctx, global.val, global.end())?;
            let sec = tlv(ctx, global.end(), limit)?;
            if sec.tag != TAG_OCTETS {
                return None;
            }
            let data = tlv(ctx, sec.end(), limit)?;
            if data.tag == TAG_OCTETS {
                return Some(SnmpHeader {
                    version: 3,
                    pdu: PDU_ENCRYPTED,
                    id: msg_id,
                    error_status: 0,
                });
            }
            if data.tag != TAG_SEQUENCE {
                return None;
            }
            let engine = tlv(ctx, data.val, data.end())?;
            if engine.tag != TAG_OCTETS {
                return None;
            }
            let ctx_name = tlv(ctx, engine.end(), data.end())?;
            if ctx_name.tag != TAG_OCTETS {
                return None;
            }
            let pdu = tlv(ctx, ctx_name.end(), data.end())?;
            pdu_header(ctx, 3, &pdu, Some(msg_id))
        }
        _ => None,
    }
}

/// request-id and error-status of a PDU; v1 Trap has neither. For v3 the id is the msgID.
#[inline(always)]
fn pdu_header(ctx: &TcContext, version: u8, pdu: &Tlv, msg_id: Option<u32>) -> Option<SnmpHeader> {
    if !is_pdu(pdu.tag) {
        return None;
    }
    if pdu.tag == PDU_TRAP_V1 {
        return Some(SnmpHeader {
            version,
            pdu: pdu.tag,
            id: 0,
            error_status: 0,
        });
    }
    let (request_id, after_id) = integer(ctx, pdu.val, pdu.end())?;
    let (error_status, _) = integer(ctx, after_id, pdu.end())?;
    Some(SnmpHeader {
        version,
        pdu: pdu.tag,
        id: msg_id.unwrap_or(request_id),
        error_status,
    })
}
