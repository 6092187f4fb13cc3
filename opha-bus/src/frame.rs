//! The frame codec every bus message family shares ([`crate::message`], [`crate::fetch`],
//! [`crate::config_push`]).
//!
//! A frame has opha-common's record frame layout (`opha_common::wire::frame`): magic "OP",
//! protocol version (u16 LE), kind (u16 LE), payload length (u32 LE), then the postcard
//! payload. A family brings its kinds ([`FrameKinds`]) and how its messages map to payloads
//! and what they must satisfy ([`FrameMessage`]); the header checks, the payload bound and the
//! strict (canonical) postcard decoding are here, once. Each family's codec type
//! ([`crate::message::BusFrame`], [`crate::fetch::FetchFrame`],
//! [`crate::config_push::ConfigFrame`]) is made by the `frame_codec!` macro here.

use crate::message::BusError;
use opha_common::wire::{HEADER_LEN, MAGIC, PROTOCOL_VERSION, version_supported};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The frame kinds of one message family (a sub-range of the 0x100..=0x1ff bus kinds).
pub trait FrameKinds: Copy {
    /// The kind with this number, if it belongs to the family.
    fn from_u16(v: u16) -> Option<Self>;
    fn as_u16(self) -> u16;
}

/// One message family carried in bus frames.
pub trait FrameMessage: Sized {
    type Kind: FrameKinds;

    /// Whether encoding refuses a message that decoding would refuse (so that a peer never
    /// sends what it would not accept itself).
    const VALIDATE_ON_ENCODE: bool = false;

    fn kind(&self) -> Self::Kind;

    /// The postcard encoding of the message's body.
    fn to_payload(&self) -> Result<Vec<u8>, postcard::Error>;

    /// The message of `kind` from its payload, decoded strictly (canonical postcard only).
    fn from_payload(kind: Self::Kind, payload: &[u8]) -> Result<Self, BusError>;

    /// Internal consistency and bounds (what postcard cannot check).
    fn validate(&self) -> Result<(), BusError>;
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader<K> {
    pub version: u16,
    pub kind: K,
    pub len: u32,
}

/// Appends one frame to `out`; returns its length. On error `out` is left as it was.
pub fn encode_into<M: FrameMessage>(
    max_payload: u32,
    msg: &M,
    out: &mut Vec<u8>,
) -> Result<usize, BusError> {
    if M::VALIDATE_ON_ENCODE {
        msg.validate()?;
    }
    let payload = msg.to_payload()?;
    let len = match u32::try_from(payload.len()) {
        Ok(l) if l <= max_payload => l,
        _ => {
            return Err(BusError::TooLong {
                len: payload.len(),
                max: max_payload,
            });
        }
    };
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&msg.kind().as_u16().to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(HEADER_LEN + payload.len())
}

/// Reads and checks the header at the start of `bytes`; checks run on whatever prefix is
/// present (a stream that lost its framing is refused after two bytes).
pub fn header<K: FrameKinds>(max_payload: u32, bytes: &[u8]) -> Result<FrameHeader<K>, BusError> {
    let truncated = BusError::Truncated {
        needed: HEADER_LEN,
        available: bytes.len(),
    };
    let at = |i: usize| bytes.get(i).copied();
    let (Some(m0), Some(m1)) = (at(0), at(1)) else {
        return Err(truncated);
    };
    if [m0, m1] != MAGIC {
        return Err(BusError::BadMagic { found: [m0, m1] });
    }
    let (Some(v0), Some(v1)) = (at(2), at(3)) else {
        return Err(truncated);
    };
    let version = u16::from_le_bytes([v0, v1]);
    if !version_supported(version) {
        return Err(BusError::UnsupportedVersion { found: version });
    }
    let (Some(k0), Some(k1)) = (at(4), at(5)) else {
        return Err(truncated);
    };
    let raw = u16::from_le_bytes([k0, k1]);
    let kind = K::from_u16(raw).ok_or(BusError::UnknownKind { kind: raw })?;
    let Some(&l) = bytes.get(6..10).and_then(|s| s.first_chunk::<4>()) else {
        return Err(truncated);
    };
    let len = u32::from_le_bytes(l);
    if len > max_payload {
        return Err(BusError::TooLong {
            len: len as usize,
            max: max_payload,
        });
    }
    Ok(FrameHeader { version, kind, len })
}

/// Decodes the frame at the start of `bytes`; returns it and its length.
pub fn decode_prefix<M: FrameMessage>(
    max_payload: u32,
    bytes: &[u8],
) -> Result<(M, usize), BusError> {
    let header = header::<M::Kind>(max_payload, bytes)?;
    let total = HEADER_LEN + header.len as usize;
    let Some(payload) = bytes.get(HEADER_LEN..total) else {
        return Err(BusError::Truncated {
            needed: total,
            available: bytes.len(),
        });
    };
    let msg = M::from_payload(header.kind, payload)?;
    msg.validate()?;
    Ok((msg, total))
}

/// Decodes exactly one frame.
pub fn decode<M: FrameMessage>(max_payload: u32, bytes: &[u8]) -> Result<M, BusError> {
    let (msg, len) = decode_prefix(max_payload, bytes)?;
    match bytes.len() - len {
        0 => Ok(msg),
        extra => Err(BusError::TrailingBytes { extra }),
    }
}

/// postcard decode of the whole payload, canonical only.
pub(crate) fn strict<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Result<T, BusError> {
    let (value, rest) = postcard::take_from_bytes::<T>(payload)?;
    if !rest.is_empty() {
        return Err(BusError::PayloadTrailing { extra: rest.len() });
    }
    // postcard accepts over-long varints; only the encoder's own bytes are accepted.
    if postcard::to_allocvec(&value)?.as_slice() != payload {
        return Err(BusError::NonCanonical);
    }
    Ok(value)
}

/// Defines a family's codec type: `pub struct $name { pub max_payload: u32 }` with a
/// `Default` of `$default` and inherent `encode_into`/`encode`/`header`/`decode_prefix`/
/// `decode` for messages `$msg` (a [`FrameMessage`]). Inherent rather than a trait's, so
/// callers need no import and build the type by its field.
macro_rules! frame_codec {
    ($(#[$meta:meta])* $name:ident, $msg:ty, $default:expr) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            pub max_payload: u32,
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    max_payload: $default,
                }
            }
        }

        impl $name {
            /// Appends one frame to `out`; returns its length. On error `out` is left as it
            /// was.
            pub fn encode_into(
                &self,
                msg: &$msg,
                out: &mut Vec<u8>,
            ) -> Result<usize, $crate::message::BusError> {
                $crate::frame::encode_into(self.max_payload, msg, out)
            }

            pub fn encode(&self, msg: &$msg) -> Result<Vec<u8>, $crate::message::BusError> {
                let mut out = Vec::new();
                self.encode_into(msg, &mut out)?;
                Ok(out)
            }

            /// Reads and checks the header at the start of `bytes`; checks run on whatever
            /// prefix is present (a stream that lost its framing is refused after two bytes).
            pub fn header(
                &self,
                bytes: &[u8],
            ) -> Result<
                $crate::frame::FrameHeader<<$msg as $crate::frame::FrameMessage>::Kind>,
                $crate::message::BusError,
            > {
                $crate::frame::header(self.max_payload, bytes)
            }

            /// Decodes the frame at the start of `bytes`; returns it and its length.
            pub fn decode_prefix(
                &self,
                bytes: &[u8],
            ) -> Result<($msg, usize), $crate::message::BusError> {
                $crate::frame::decode_prefix(self.max_payload, bytes)
            }

            /// Decodes exactly one frame.
            pub fn decode(&self, bytes: &[u8]) -> Result<$msg, $crate::message::BusError> {
                $crate::frame::decode(self.max_payload, bytes)
            }
        }
    };
}
pub(crate) use frame_codec;
