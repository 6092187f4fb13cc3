//! SNMP v1/v2c messages in BER: just what a poller sends and reads (Get, GetNext, GetBulk,
//! Response, Report), encoded and decoded strictly. Anything a well-behaved agent would not
//! send (indefinite or overlong lengths, trailing bytes, oversized integers, unknown tags) is
//! an error, never a panic: the generator counts it as malformed and goes on.

use std::fmt;

/// SNMP versions on the wire (RFC 3416: v1 = 0, v2c = 1).
pub const VERSION_V1: i64 = 0;
pub const VERSION_V2C: i64 = 1;

/// Nesting and size bounds: a response is one UDP datagram.
const MAX_MESSAGE: usize = 65_535;
const MAX_OID_ARCS: usize = 128;

/// PDU tags (context-specific, constructed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PduKind {
    Get,
    GetNext,
    Response,
    Set,
    GetBulk,
    Inform,
    TrapV2,
    Report,
}

impl PduKind {
    fn tag(self) -> u8 {
        match self {
            PduKind::Get => 0xa0,
            PduKind::GetNext => 0xa1,
            PduKind::Response => 0xa2,
            PduKind::Set => 0xa3,
            PduKind::GetBulk => 0xa5,
            PduKind::Inform => 0xa6,
            PduKind::TrapV2 => 0xa7,
            PduKind::Report => 0xa8,
        }
    }

    fn from_tag(t: u8) -> Option<Self> {
        Some(match t {
            0xa0 => PduKind::Get,
            0xa1 => PduKind::GetNext,
            0xa2 => PduKind::Response,
            0xa3 => PduKind::Set,
            0xa5 => PduKind::GetBulk,
            0xa6 => PduKind::Inform,
            0xa7 => PduKind::TrapV2,
            0xa8 => PduKind::Report,
            _ => return None,
        })
    }
}

/// An object identifier, as its arcs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub Vec<u32>);

impl Oid {
    /// Parses dotted decimal (`1.3.6.1.2.1.1.1.0`, a leading dot allowed).
    pub fn parse(s: &str) -> Result<Self, BerError> {
        let arcs: Result<Vec<u32>, _> = s
            .trim_start_matches('.')
            .split('.')
            .map(|a| a.parse::<u32>())
            .collect();
        let arcs = arcs.map_err(|_| BerError::BadOid)?;
        if arcs.len() < 2
            || arcs.len() > MAX_OID_ARCS
            || arcs[0] > 2
            || (arcs[0] < 2 && arcs[1] > 39)
        {
            return Err(BerError::BadOid);
        }
        Ok(Oid(arcs))
    }

    pub fn starts_with(&self, prefix: &Oid) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// A varbind value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Integer(i64),
    OctetString(Vec<u8>),
    Oid(Oid),
    IpAddress([u8; 4]),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Opaque(Vec<u8>),
    Counter64(u64),
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarBind {
    pub oid: Oid,
    pub value: Value,
}

/// A PDU. For GetBulk, `error_status` is non-repeaters and `error_index` max-repetitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    pub kind: PduKind,
    pub request_id: i32,
    pub error_status: i32,
    pub error_index: i32,
    pub varbinds: Vec<VarBind>,
}

/// A community-based message (v1 or v2c).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub version: i64,
    pub community: Vec<u8>,
    pub pdu: Pdu,
}

impl Message {
    /// A v2c request whose varbinds carry NULL values.
    pub fn request(kind: PduKind, community: &[u8], request_id: i32, oids: &[Oid]) -> Self {
        Self {
            version: VERSION_V2C,
            community: community.to_vec(),
            pdu: Pdu {
                kind,
                request_id,
                error_status: 0,
                error_index: 0,
                varbinds: oids
                    .iter()
                    .map(|o| VarBind {
                        oid: o.clone(),
                        value: Value::Null,
                    })
                    .collect(),
            },
        }
    }

    /// A v2c GetBulk.
    pub fn get_bulk(
        community: &[u8],
        request_id: i32,
        non_repeaters: i32,
        max_repetitions: i32,
        oids: &[Oid],
    ) -> Self {
        let mut m = Self::request(PduKind::GetBulk, community, request_id, oids);
        m.pdu.error_status = non_repeaters;
        m.pdu.error_index = max_repetitions;
        m
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BerError {
    /// The input ended inside an element.
    Truncated,
    /// Bytes after the message.
    Trailing,
    /// A tag other than the one the grammar needs here.
    UnexpectedTag(u8),
    /// Indefinite, overlong or non-minimal length.
    BadLength,
    /// An integer that is empty or does not fit its type.
    BadInteger,
    BadOid,
    /// A version other than v1 / v2c.
    BadVersion(i64),
    TooLarge,
}

impl fmt::Display for BerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BerError::Truncated => f.write_str("truncated"),
            BerError::Trailing => f.write_str("trailing bytes"),
            BerError::UnexpectedTag(t) => write!(f, "unexpected tag 0x{t:02x}"),
            BerError::BadLength => f.write_str("bad length"),
            BerError::BadInteger => f.write_str("bad integer"),
            BerError::BadOid => f.write_str("bad object identifier"),
            BerError::BadVersion(v) => write!(f, "unsupported version {v}"),
            BerError::TooLarge => f.write_str("message too large"),
        }
    }
}

impl std::error::Error for BerError {}

// ---------------------------------------------------------------------------------------------
// Encoding.

const T_INTEGER: u8 = 0x02;
const T_OCTETS: u8 = 0x04;
const T_NULL: u8 = 0x05;
const T_OID: u8 = 0x06;
const T_SEQUENCE: u8 = 0x30;
const T_IPADDR: u8 = 0x40;
const T_COUNTER32: u8 = 0x41;
const T_GAUGE32: u8 = 0x42;
const T_TIMETICKS: u8 = 0x43;
const T_OPAQUE: u8 = 0x44;
const T_COUNTER64: u8 = 0x46;
const T_NOSUCHOBJECT: u8 = 0x80;
const T_NOSUCHINSTANCE: u8 = 0x81;
const T_ENDOFMIBVIEW: u8 = 0x82;

fn put_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn put_tlv(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    put_len(out, body.len());
    out.extend_from_slice(body);
}

/// Minimal two's complement big-endian bytes of a signed integer.
fn int_bytes(v: i64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let mut i = 0;
    while i < 7 && ((b[i] == 0 && b[i + 1] & 0x80 == 0) || (b[i] == 0xff && b[i + 1] & 0x80 != 0)) {
        i += 1;
    }
    b[i..].to_vec()
}

/// Minimal bytes of an unsigned integer, with a leading 0 when the top bit is set.
fn uint_bytes(v: u64) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count().min(7);
    let mut out = Vec::with_capacity(9);
    if b[skip] & 0x80 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&b[skip..]);
    out
}

fn oid_bytes(o: &Oid) -> Vec<u8> {
    let mut out = Vec::with_capacity(o.0.len() + 4);
    let (a, b) = (
        o.0.first().copied().unwrap_or(0),
        o.0.get(1).copied().unwrap_or(0),
    );
    let mut push = |v: u64| {
        let mut tmp = [0u8; 10];
        let mut n = 0;
        let mut x = v;
        loop {
            tmp[n] = (x & 0x7f) as u8;
            n += 1;
            x >>= 7;
            if x == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            out.push(tmp[i] | if i > 0 { 0x80 } else { 0 });
        }
    };
    push(u64::from(a) * 40 + u64::from(b));
    for &arc in o.0.iter().skip(2) {
        push(u64::from(arc));
    }
    out
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => put_tlv(out, T_NULL, &[]),
        Value::Integer(i) => put_tlv(out, T_INTEGER, &int_bytes(*i)),
        Value::OctetString(s) => put_tlv(out, T_OCTETS, s),
        Value::Oid(o) => put_tlv(out, T_OID, &oid_bytes(o)),
        Value::IpAddress(a) => put_tlv(out, T_IPADDR, a),
        Value::Counter32(x) => put_tlv(out, T_COUNTER32, &uint_bytes(u64::from(*x))),
        Value::Gauge32(x) => put_tlv(out, T_GAUGE32, &uint_bytes(u64::from(*x))),
        Value::TimeTicks(x) => put_tlv(out, T_TIMETICKS, &uint_bytes(u64::from(*x))),
        Value::Opaque(s) => put_tlv(out, T_OPAQUE, s),
        Value::Counter64(x) => put_tlv(out, T_COUNTER64, &uint_bytes(*x)),
        Value::NoSuchObject => put_tlv(out, T_NOSUCHOBJECT, &[]),
        Value::NoSuchInstance => put_tlv(out, T_NOSUCHINSTANCE, &[]),
        Value::EndOfMibView => put_tlv(out, T_ENDOFMIBVIEW, &[]),
    }
}

/// The message's bytes.
pub fn encode(m: &Message) -> Vec<u8> {
    let mut vbs = Vec::new();
    for vb in &m.pdu.varbinds {
        let mut one = Vec::new();
        put_tlv(&mut one, T_OID, &oid_bytes(&vb.oid));
        put_value(&mut one, &vb.value);
        put_tlv(&mut vbs, T_SEQUENCE, &one);
    }
    let mut pdu = Vec::new();
    put_tlv(&mut pdu, T_INTEGER, &int_bytes(i64::from(m.pdu.request_id)));
    put_tlv(
        &mut pdu,
        T_INTEGER,
        &int_bytes(i64::from(m.pdu.error_status)),
    );
    put_tlv(
        &mut pdu,
        T_INTEGER,
        &int_bytes(i64::from(m.pdu.error_index)),
    );
    put_tlv(&mut pdu, T_SEQUENCE, &vbs);
    let mut msg = Vec::new();
    put_tlv(&mut msg, T_INTEGER, &int_bytes(m.version));
    put_tlv(&mut msg, T_OCTETS, &m.community);
    put_tlv(&mut msg, m.pdu.kind.tag(), &pdu);
    let mut out = Vec::with_capacity(msg.len() + 4);
    put_tlv(&mut out, T_SEQUENCE, &msg);
    out
}

// ---------------------------------------------------------------------------------------------
// Decoding.

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn byte(&mut self) -> Result<u8, BerError> {
        let b = *self.buf.get(self.pos).ok_or(BerError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// The next element: (tag, contents).
    fn tlv(&mut self) -> Result<(u8, &'a [u8]), BerError> {
        let tag = self.byte()?;
        // Multi-byte tags never occur in SNMP.
        if tag & 0x1f == 0x1f {
            return Err(BerError::UnexpectedTag(tag));
        }
        let first = self.byte()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            // 0x80 is the indefinite form, not allowed in SNMP; more than 3 bytes is beyond
            // any datagram.
            if n == 0 || n > 3 {
                return Err(BerError::BadLength);
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(self.byte()?);
            }
            if len < 0x80 || len >> (8 * (n - 1)) == 0 {
                return Err(BerError::BadLength);
            }
            len
        };
        let end = self.pos.checked_add(len).ok_or(BerError::BadLength)?;
        let body = self.buf.get(self.pos..end).ok_or(BerError::Truncated)?;
        self.pos = end;
        Ok((tag, body))
    }

    fn expect(&mut self, want: u8) -> Result<&'a [u8], BerError> {
        let (tag, body) = self.tlv()?;
        if tag != want {
            return Err(BerError::UnexpectedTag(tag));
        }
        Ok(body)
    }

    fn integer(&mut self) -> Result<i64, BerError> {
        decode_int(self.expect(T_INTEGER)?)
    }
}

fn decode_int(b: &[u8]) -> Result<i64, BerError> {
    if b.is_empty() || b.len() > 8 {
        return Err(BerError::BadInteger);
    }
    let mut v: i64 = if b[0] & 0x80 != 0 { -1 } else { 0 };
    for &x in b {
        v = (v << 8) | i64::from(x);
    }
    Ok(v)
}

fn decode_uint(b: &[u8], max: u64) -> Result<u64, BerError> {
    if b.is_empty() || b.len() > 9 || b[0] & 0x80 != 0 || (b.len() == 9 && b[0] != 0) {
        return Err(BerError::BadInteger);
    }
    let mut v: u64 = 0;
    for &x in b {
        v = (v << 8) | u64::from(x);
    }
    if v > max {
        return Err(BerError::BadInteger);
    }
    Ok(v)
}

fn decode_oid(b: &[u8]) -> Result<Oid, BerError> {
    if b.is_empty() {
        return Err(BerError::BadOid);
    }
    let mut arcs = Vec::with_capacity(b.len() + 1);
    let mut cur: u64 = 0;
    let mut started = false;
    for &x in b {
        // A leading 0x80 is a non-minimal encoding.
        if !started && x == 0x80 {
            return Err(BerError::BadOid);
        }
        started = true;
        cur = (cur << 7) | u64::from(x & 0x7f);
        if cur > u64::from(u32::MAX) + 80 {
            return Err(BerError::BadOid);
        }
        if x & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (cur / 40).min(2);
                arcs.push(first as u32);
                arcs.push(u32::try_from(cur - first * 40).map_err(|_| BerError::BadOid)?);
            } else {
                arcs.push(u32::try_from(cur).map_err(|_| BerError::BadOid)?);
            }
            if arcs.len() > MAX_OID_ARCS {
                return Err(BerError::BadOid);
            }
            cur = 0;
            started = false;
        }
    }
    if started {
        return Err(BerError::BadOid);
    }
    Ok(Oid(arcs))
}

fn decode_value(tag: u8, b: &[u8]) -> Result<Value, BerError> {
    let empty = |v: Value| {
        if b.is_empty() {
            Ok(v)
        } else {
            Err(BerError::BadLength)
        }
    };
    Ok(match tag {
        T_NULL => return empty(Value::Null),
        T_NOSUCHOBJECT => return empty(Value::NoSuchObject),
        T_NOSUCHINSTANCE => return empty(Value::NoSuchInstance),
        T_ENDOFMIBVIEW => return empty(Value::EndOfMibView),
        T_INTEGER => Value::Integer(decode_int(b)?),
        T_OCTETS => Value::OctetString(b.to_vec()),
        T_OID => Value::Oid(decode_oid(b)?),
        T_IPADDR => Value::IpAddress(b.try_into().map_err(|_| BerError::BadLength)?),
        T_COUNTER32 => Value::Counter32(decode_uint(b, u64::from(u32::MAX))? as u32),
        T_GAUGE32 => Value::Gauge32(decode_uint(b, u64::from(u32::MAX))? as u32),
        T_TIMETICKS => Value::TimeTicks(decode_uint(b, u64::from(u32::MAX))? as u32),
        T_OPAQUE => Value::Opaque(b.to_vec()),
        T_COUNTER64 => Value::Counter64(decode_uint(b, u64::MAX)?),
        t => return Err(BerError::UnexpectedTag(t)),
    })
}

fn int32(v: i64) -> Result<i32, BerError> {
    i32::try_from(v).map_err(|_| BerError::BadInteger)
}

/// Decodes one whole datagram as a v1/v2c message.
pub fn decode(buf: &[u8]) -> Result<Message, BerError> {
    if buf.len() > MAX_MESSAGE {
        return Err(BerError::TooLarge);
    }
    let mut top = Reader::new(buf);
    let body = top.expect(T_SEQUENCE)?;
    if !top.done() {
        return Err(BerError::Trailing);
    }
    let mut r = Reader::new(body);
    let version = r.integer()?;
    if version != VERSION_V1 && version != VERSION_V2C {
        return Err(BerError::BadVersion(version));
    }
    let community = r.expect(T_OCTETS)?.to_vec();
    let (tag, pdu) = r.tlv()?;
    let kind = PduKind::from_tag(tag).ok_or(BerError::UnexpectedTag(tag))?;
    if !r.done() {
        return Err(BerError::Trailing);
    }
    let mut p = Reader::new(pdu);
    let request_id = int32(p.integer()?)?;
    let error_status = int32(p.integer()?)?;
    let error_index = int32(p.integer()?)?;
    let list = p.expect(T_SEQUENCE)?;
    if !p.done() {
        return Err(BerError::Trailing);
    }
    let mut l = Reader::new(list);
    let mut varbinds = Vec::new();
    while !l.done() {
        let mut vb = Reader::new(l.expect(T_SEQUENCE)?);
        let oid = decode_oid(vb.expect(T_OID)?)?;
        let (tag, val) = vb.tlv()?;
        let value = decode_value(tag, val)?;
        if !vb.done() {
            return Err(BerError::Trailing);
        }
        varbinds.push(VarBind { oid, value });
    }
    Ok(Message {
        version,
        community,
        pdu: Pdu {
            kind,
            request_id,
            error_status,
            error_index,
            varbinds,
        },
    })
}
