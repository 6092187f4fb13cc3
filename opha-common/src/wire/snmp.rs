//! SNMP values carried by trap events.

use super::alloc::{string::String, vec::Vec};
use super::bytes::Bytes;
use core::fmt;
use core::net::Ipv4Addr;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};

/// An object identifier.
///
/// postcard writes the arcs as varints (about half the size of the dotted text); human-readable
/// formats get the dotted text (`1.3.6.1.6.3.1.1.5.3`) that operators search for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Oid(pub Vec<u32>);

impl Oid {
    pub fn arcs(&self) -> &[u32] {
        &self.0
    }
}

impl From<&[u32]> for Oid {
    fn from(arcs: &[u32]) -> Self {
        Oid(arcs.to_vec())
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

/// A string that is not a dotted OID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OidParseError;

impl fmt::Display for OidParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a dotted OID (expected decimal arcs separated by '.', e.g. 1.3.6.1)")
    }
}

impl core::error::Error for OidParseError {}

impl core::str::FromStr for Oid {
    type Err = OidParseError;

    /// Dotted decimal, one leading dot allowed (`.1.3.6.1` as net-snmp prints it). The empty
    /// string is the empty OID so that the text form of every value parses back.
    fn from_str(s: &str) -> Result<Self, OidParseError> {
        let s = s.strip_prefix('.').unwrap_or(s);
        if s.is_empty() {
            return Ok(Oid::default());
        }
        s.split('.')
            .map(|a| {
                // u32::from_str accepts a leading '+'; arcs are plain digits only.
                if a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(OidParseError);
                }
                a.parse::<u32>().map_err(|_| OidParseError)
            })
            .collect::<Result<Vec<u32>, _>>()
            .map(Oid)
    }
}

impl Serialize for Oid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            let mut seq = s.serialize_seq(Some(self.0.len()))?;
            for a in &self.0 {
                seq.serialize_element(a)?;
            }
            seq.end()
        }
    }
}

impl<'de> Deserialize<'de> for Oid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Oid;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a dotted OID string or a sequence of arcs")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Oid, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Oid, A::Error> {
                // The length comes from the input: cap the preallocation, not the length.
                let mut arcs = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(a) = seq.next_element::<u32>()? {
                    arcs.push(a);
                }
                Ok(Oid(arcs))
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_seq(V)
        }
    }
}

/// The SNMP version a trap arrived with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SnmpVersion {
    V1,
    V2c,
    V3,
}

/// One variable binding of a trap.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VarBind {
    pub oid: Oid,
    pub value: VarValue,
}

/// An SNMP value (RFC 3416 `ObjectSyntax`, plus the v2 exceptions).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VarValue {
    Integer(i64),
    OctetString(Bytes),
    ObjectId(Oid),
    IpAddress(Ipv4Addr),
    Counter32(u32),
    Gauge32(u32),
    TimeTicks(u32),
    Opaque(Bytes),
    Counter64(u64),
    Null,
    NoSuchObject,
    NoSuchInstance,
    EndOfMibView,
}

impl VarValue {
    /// Text for details strings: octet strings as text when printable UTF-8, else hex.
    pub fn to_text(&self) -> String {
        use super::alloc::string::ToString;
        match self {
            VarValue::Integer(v) => v.to_string(),
            VarValue::OctetString(b) => match core::str::from_utf8(&b.0) {
                Ok(s) if !s.chars().any(char::is_control) => s.into(),
                _ => b.to_hex(),
            },
            VarValue::ObjectId(o) => o.to_string(),
            VarValue::IpAddress(a) => a.to_string(),
            VarValue::Counter32(v) | VarValue::Gauge32(v) | VarValue::TimeTicks(v) => v.to_string(),
            VarValue::Opaque(b) => b.to_hex(),
            VarValue::Counter64(v) => v.to_string(),
            VarValue::Null => "null".into(),
            VarValue::NoSuchObject => "noSuchObject".into(),
            VarValue::NoSuchInstance => "noSuchInstance".into(),
            VarValue::EndOfMibView => "endOfMibView".into(),
        }
    }
}
