//! Frames: a fixed header and a postcard payload.
//!
//! ```text
//! offset  size  field
//!      0     2  magic, "OP" (0x4f 0x50)
//!      2     2  protocol version, u16 little endian: major << 8 | minor
//!      4     2  kind (FrameKind), u16 little endian
//!      6     4  payload length in bytes, u32 little endian
//!     10   len  payload: postcard encoding of the value (for records, a `Sequenced`)
//! ```
//!
//! The header is fixed-size so that a stream reader knows after 10 bytes how many more to wait
//! for, and so that the replay log and the bus can route or thin frames by kind without
//! decoding payloads.

use super::alloc::vec::Vec;
use super::error::WireError;
use super::record::Sequenced;
use super::{PROTOCOL_VERSION, version_supported};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// First two bytes of every frame.
pub const MAGIC: [u8; 2] = *b"OP";
/// Bytes before the payload.
pub const HEADER_LEN: usize = 10;
/// Default bound on a payload: far above any real record (a large trap is a few KiB), low
/// enough that a corrupt or hostile length cannot make a receiver buffer much.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// What a frame carries. Values are stable: new kinds get new numbers, old ones are never
/// reused. Records use 1..=0xff; 0x100..=0x1ff are reserved for the bus's own messages
/// (handshake, batches, acks) and 0x200..=0x2ff for configuration push.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrameKind {
    NodeMetrics = 1,
    Event = 2,
    ServiceState = 3,
    DaemonHealth = 4,
    PeerStatus = 5,
}

impl FrameKind {
    pub const ALL: [FrameKind; 5] = [
        FrameKind::NodeMetrics,
        FrameKind::Event,
        FrameKind::ServiceState,
        FrameKind::DaemonHealth,
        FrameKind::PeerStatus,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => FrameKind::NodeMetrics,
            2 => FrameKind::Event,
            3 => FrameKind::ServiceState,
            4 => FrameKind::DaemonHealth,
            5 => FrameKind::PeerStatus,
            _ => return None,
        })
    }

    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// True for kinds that carry a [`Sequenced`] record.
    pub const fn is_record(self) -> bool {
        (self as u16) <= 0xff
    }
}

/// A value that travels in frames.
pub trait FramePayload: Serialize + DeserializeOwned {
    /// The kind of the frame that carries `self`.
    fn frame_kind(&self) -> FrameKind;
    /// Whether frames of `kind` carry this type: decoding any other kind is
    /// [`WireError::UnexpectedKind`].
    fn accepts(kind: FrameKind) -> bool;
}

impl FramePayload for Sequenced {
    fn frame_kind(&self) -> FrameKind {
        self.record.kind()
    }

    fn accepts(kind: FrameKind) -> bool {
        kind.is_record()
    }
}

/// A parsed and checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u16,
    pub kind: FrameKind,
    /// Payload length.
    pub len: u32,
}

impl FrameHeader {
    /// Header plus payload.
    pub const fn frame_len(&self) -> usize {
        HEADER_LEN + self.len as usize
    }

    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2..4].copy_from_slice(&self.version.to_le_bytes());
        h[4..6].copy_from_slice(&self.kind.as_u16().to_le_bytes());
        h[6..10].copy_from_slice(&self.len.to_le_bytes());
        h
    }
}

/// Encodes and decodes frames with a bound on the payload length.
///
/// The same bound applies to encoding, so a sender never produces a frame its receivers would
/// refuse as too long (given the same configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameCodec {
    max_payload: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_PAYLOAD)
    }
}

impl FrameCodec {
    pub const fn new(max_payload: u32) -> Self {
        Self { max_payload }
    }

    pub const fn max_payload(&self) -> u32 {
        self.max_payload
    }

    /// Appends one frame to `out` and returns its length. On error `out` is left as it was.
    pub fn encode_into<T: FramePayload>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<usize, WireError> {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        if let Err(e) = postcard::serialize_with_flavor(value, Append(out)) {
            out.truncate(start);
            return Err(e.into());
        }
        let len = out.len() - start - HEADER_LEN;
        let len32 = match u32::try_from(len) {
            Ok(l) if l <= self.max_payload => l,
            _ => {
                out.truncate(start);
                return Err(WireError::TooLong {
                    len,
                    max: self.max_payload,
                });
            }
        };
        let header = FrameHeader {
            version: PROTOCOL_VERSION,
            kind: value.frame_kind(),
            len: len32,
        };
        out[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(HEADER_LEN + len)
    }

    pub fn encode<T: FramePayload>(&self, value: &T) -> Result<Vec<u8>, WireError> {
        let mut out = Vec::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Reads and checks the header at the start of `bytes` (magic, version, kind, length bound)
    /// without touching the payload. Checks run on whatever prefix is present, so a stream
    /// that lost its framing is refused after two bytes rather than after a bogus length.
    pub fn header(&self, bytes: &[u8]) -> Result<FrameHeader, WireError> {
        let truncated = WireError::Truncated {
            needed: HEADER_LEN,
            available: bytes.len(),
        };
        let (Some(&m0), Some(&m1)) = (bytes.first(), bytes.get(1)) else {
            return Err(truncated);
        };
        if [m0, m1] != MAGIC {
            return Err(WireError::BadMagic { found: [m0, m1] });
        }
        let Some(&[v0, v1]) = bytes.get(2..4).and_then(|s| s.first_chunk::<2>()) else {
            return Err(truncated);
        };
        let version = u16::from_le_bytes([v0, v1]);
        if !version_supported(version) {
            return Err(WireError::UnsupportedVersion {
                found: version,
                supported: PROTOCOL_VERSION,
            });
        }
        let Some(&[k0, k1]) = bytes.get(4..6).and_then(|s| s.first_chunk::<2>()) else {
            return Err(truncated);
        };
        let raw_kind = u16::from_le_bytes([k0, k1]);
        let kind =
            FrameKind::from_u16(raw_kind).ok_or(WireError::UnknownKind { kind: raw_kind })?;
        let Some(&l) = bytes.get(6..10).and_then(|s| s.first_chunk::<4>()) else {
            return Err(truncated);
        };
        let len = u32::from_le_bytes(l);
        if len > self.max_payload {
            return Err(WireError::TooLong {
                len: len as usize,
                max: self.max_payload,
            });
        }
        Ok(FrameHeader { version, kind, len })
    }

    /// Decodes the frame at the start of `bytes`; returns it and the number of bytes it took,
    /// so that concatenated frames can be walked.
    pub fn decode_prefix<T: FramePayload>(&self, bytes: &[u8]) -> Result<(T, usize), WireError> {
        let header = self.header(bytes)?;
        let total = header.frame_len();
        let Some(payload) = bytes.get(HEADER_LEN..total) else {
            return Err(WireError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        };
        if !T::accepts(header.kind) {
            return Err(WireError::UnexpectedKind { kind: header.kind });
        }
        let (value, rest) = postcard::take_from_bytes::<T>(payload)?;
        if !rest.is_empty() {
            return Err(WireError::PayloadTrailing { extra: rest.len() });
        }
        let payload_kind = value.frame_kind();
        if payload_kind != header.kind {
            return Err(WireError::KindMismatch {
                header: header.kind,
                payload: payload_kind,
            });
        }
        if !is_canonical(&value, payload) {
            return Err(WireError::NonCanonical);
        }
        Ok((value, total))
    }

    /// Decodes exactly one frame: `bytes` must end where the frame does.
    pub fn decode<T: FramePayload>(&self, bytes: &[u8]) -> Result<T, WireError> {
        let header = self.header(bytes)?;
        if let Some(extra) = bytes
            .len()
            .checked_sub(header.frame_len())
            .filter(|&e| e > 0)
        {
            return Err(WireError::TrailingBytes { extra });
        }
        self.decode_prefix(bytes).map(|(v, _)| v)
    }
}

/// Encodes one frame with the default codec.
pub fn encode_frame<T: FramePayload>(value: &T) -> Result<Vec<u8>, WireError> {
    FrameCodec::default().encode(value)
}

/// Decodes exactly one frame with the default codec.
pub fn decode_frame<T: FramePayload>(bytes: &[u8]) -> Result<T, WireError> {
    FrameCodec::default().decode(bytes)
}

/// Appends postcard output to a borrowed Vec (postcard's own flavors take it by value).
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// postcard accepts over-long varints; re-encoding against the input (no allocation, stops at
/// the first difference) accepts only the one encoding that `encode` produces.
fn is_canonical<T: Serialize>(value: &T, bytes: &[u8]) -> bool {
    let compare = Compare {
        expected: bytes,
        pos: 0,
    };
    postcard::serialize_with_flavor(value, compare).is_ok()
}

/// A postcard "output" that only compares with the expected bytes.
struct Compare<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl postcard::ser_flavors::Flavor for Compare<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos.saturating_add(data.len());
        if self.expected.get(self.pos..end) == Some(data) {
            self.pos = end;
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        if self.expected.get(self.pos) == Some(&data) {
            self.pos += 1;
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }

    fn finalize(self) -> postcard::Result<()> {
        if self.pos == self.expected.len() {
            Ok(())
        } else {
            Err(postcard::Error::SerializeBufferFull)
        }
    }
}
