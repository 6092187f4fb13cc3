//! Why a frame could not be encoded or decoded.

use super::frame::FrameKind;
use super::{PROTOCOL_VERSION, Version};
use core::fmt;

/// Every way a frame can be refused. Decoding returns one of these for any input; it never
/// panics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The first two bytes are not [`super::MAGIC`]: not an opha frame, or a stream that lost
    /// its framing.
    BadMagic { found: [u8; 2] },
    /// A version this build does not decode (see the versioning rule in [`crate::wire`]).
    UnsupportedVersion { found: u16, supported: u16 },
    /// A kind this version does not define.
    UnknownKind { kind: u16 },
    /// A defined kind that the caller did not ask for (e.g. a record where a handshake was
    /// expected).
    UnexpectedKind { kind: FrameKind },
    /// The input ends before the header or the payload does. A stream reader waits for
    /// `needed` bytes in total.
    Truncated { needed: usize, available: usize },
    /// The payload is longer than the configured maximum.
    TooLong { len: usize, max: u32 },
    /// Bytes after the end of the frame where exactly one frame was expected.
    TrailingBytes { extra: usize },
    /// The payload decoded before its declared end.
    PayloadTrailing { extra: usize },
    /// The header's kind and the payload's record type disagree.
    KindMismatch {
        header: FrameKind,
        payload: FrameKind,
    },
    /// The payload decodes, but is not the canonical encoding of its value (e.g. an over-long
    /// varint), so its bytes would not be reproducible.
    NonCanonical,
    /// postcard refused the payload (bad varint, UTF-8, enum tag, invalid peer id, ...).
    Postcard(postcard::Error),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadMagic { found } => write!(
                f,
                "bad frame magic {:02x}{:02x} (expected {:02x}{:02x})",
                found[0],
                found[1],
                super::MAGIC[0],
                super::MAGIC[1]
            ),
            WireError::UnsupportedVersion { found, supported } => write!(
                f,
                "unsupported protocol version {} (this build speaks {} and decodes {}.0 to {})",
                Version(*found),
                Version(*supported),
                supported >> 8,
                Version(*supported),
            ),
            WireError::UnknownKind { kind } => {
                write!(
                    f,
                    "unknown frame kind {kind} for protocol version {}",
                    Version(PROTOCOL_VERSION)
                )
            }
            WireError::UnexpectedKind { kind } => write!(f, "unexpected frame kind {kind:?}"),
            WireError::Truncated { needed, available } => {
                write!(f, "truncated frame: {available} of {needed} bytes")
            }
            WireError::TooLong { len, max } => {
                write!(
                    f,
                    "frame payload of {len} bytes exceeds the maximum of {max}"
                )
            }
            WireError::TrailingBytes { extra } => {
                write!(f, "{extra} trailing bytes after the frame")
            }
            WireError::PayloadTrailing { extra } => {
                write!(f, "{extra} bytes left over inside the frame payload")
            }
            WireError::KindMismatch { header, payload } => write!(
                f,
                "frame header says {header:?} but the payload is {payload:?}"
            ),
            WireError::NonCanonical => write!(f, "frame payload is not canonically encoded"),
            WireError::Postcard(e) => write!(f, "invalid frame payload: {e}"),
        }
    }
}

impl core::error::Error for WireError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            WireError::Postcard(e) => Some(e),
            _ => None,
        }
    }
}

impl From<postcard::Error> for WireError {
    fn from(e: postcard::Error) -> Self {
        WireError::Postcard(e)
    }
}
