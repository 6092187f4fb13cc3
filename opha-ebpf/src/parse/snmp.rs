//! The SNMP header in BER, as far as matching needs: version, request-id (v1/v2c) or msgID
//! (v3), PDU type and error-status. Short and long length forms; anything inconsistent is
//! malformed.
//!
//! Verification: every length form of every field is a separate path, and with precise offsets
//! the verifier cannot merge them (5^9 paths, beyond its budget). Each offset therefore passes
//! through a per-CPU scratch slot (`Launder`): the value read back is an unknown number to the
//! verifier, bounded again right after, so all paths reach the next field in the same state and
//! are pruned. The parser stays inline: on CPUs with return-thunk mitigations (SRSO "Safe RET"),
//! every BPF-to-BPF call and return costs several nanoseconds.

use aya_ebpf::{macros::map, maps::PerCpuArray};

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

#[map]
static OPHA_SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Hides a value's provenance from the verifier (see the module comment).
struct Launder(*mut u64);

impl Launder {
    #[inline(always)]
    fn new() -> Option<Self> {
        OPHA_SCRATCH.get_ptr_mut(0).map(Launder)
    }

    #[inline(always)]
    fn offset(&self, x: usize) -> Option<usize> {
        let v = unsafe {
            core::ptr::write_volatile(self.0, x as u64);
            core::ptr::read_volatile(self.0)
        } as usize;
        if v > MAX_OFF { None } else { Some(v) }
    }
}

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

struct Ber<'a> {
    pkt: &'a Packet,
    launder: Launder,
}

impl Ber<'_> {
    /// Tag and length at `off`; the value must end by `limit`.
    #[inline(always)]
    fn tlv(&self, off: usize, limit: usize) -> Option<Tlv> {
        let pkt = self.pkt;
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
        let val = self.launder.offset(val)?;
        let len = self.launder.offset(len as usize)?;
        let t = Tlv { tag, len, val };
        if t.end() > limit || t.end() > MAX_OFF {
            return None;
        }
        Some(t)
    }

    /// An INTEGER of 1 to 5 content bytes (5 only with a leading zero), as its low 32 bits,
    /// and the offset after it.
    #[inline(always)]
    fn integer(&self, off: usize, limit: usize) -> Option<(u32, usize)> {
        let t = self.tlv(off, limit)?;
        if t.tag != TAG_INTEGER || t.len == 0 || t.len > 5 {
            return None;
        }
        let first = self.pkt.u8(t.val)?;
        if t.len == 5 && first != 0 {
            return None;
        }
        let mut v: u32 = if first & 0x80 != 0 { u32::MAX } else { 0 };
        for i in 0..5 {
            if i >= t.len {
                break;
            }
            v = (v << 8) | self.pkt.u8(t.val + i)? as u32;
        }
        Some((v, self.launder.offset(t.end())?))
    }
}

#[inline(always)]
fn is_pdu(tag: u8) -> bool {
    (PDU_GET..=PDU_REPORT).contains(&tag)
}

/// Parses the SNMP message in `[off, end)`.
#[inline(always)]
pub fn parse(pkt: &Packet, off: usize, end: usize) -> Option<SnmpHeader> {
    let ber = Ber {
        pkt,
        launder: Launder::new()?,
    };
    let msg = ber.tlv(off, end)?;
    if msg.tag != TAG_SEQUENCE {
        return None;
    }
    let limit = msg.end();
    let (version, after_ver) = ber.integer(msg.val, limit)?;
    match version {
        0 | 1 => {
            let community = ber.tlv(after_ver, limit)?;
            if community.tag != TAG_OCTETS {
                return None;
            }
            let pdu = ber.tlv(community.end(), limit)?;
            pdu_header(&ber, version as u8, &pdu, None)
        }
        3 => {
            let global = ber.tlv(after_ver, limit)?;
            if global.tag != TAG_SEQUENCE {
                return None;
            }
            let (msg_id, _) = ber.integer(global.val, global.end())?;
            let sec = ber.tlv(global.end(), limit)?;
            if sec.tag != TAG_OCTETS {
                return None;
            }
            let data = ber.tlv(sec.end(), limit)?;
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
            let engine = ber.tlv(data.val, data.end())?;
            if engine.tag != TAG_OCTETS {
                return None;
            }
            let ctx_name = ber.tlv(engine.end(), data.end())?;
            if ctx_name.tag != TAG_OCTETS {
                return None;
            }
            let pdu = ber.tlv(ctx_name.end(), data.end())?;
            pdu_header(&ber, 3, &pdu, Some(msg_id))
        }
        _ => None,
    }
}

/// request-id and error-status of a PDU; v1 Trap has neither. For v3 the id is the msgID.
#[inline(always)]
fn pdu_header(ber: &Ber, version: u8, pdu: &Tlv, msg_id: Option<u32>) -> Option<SnmpHeader> {
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
    let (request_id, after_id) = ber.integer(pdu.val, pdu.end())?;
    let (error_status, _) = ber.integer(after_id, pdu.end())?;
    Some(SnmpHeader {
        version,
        pdu: pdu.tag,
        id: msg_id.unwrap_or(request_id),
        error_status,
    })
}
