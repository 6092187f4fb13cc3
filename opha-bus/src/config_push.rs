//! Config push: the active primary sends a poller its configuration; the poller answers
//! whether it runs it. Pure.
//!
//! # Stream and order
//!
//! Once its link to a primary streams, the poller opens one more bidirectional stream for
//! config and sends [`ConfigState`] (the version it runs). The primary answers nothing to
//! it; whenever it acts for the poller (fencing, [`crate::fencing`]) and holds a newer desired
//! version than the poller runs, it sends a [`ConfigPush`] carrying that version and its
//! fencing term. The poller answers every push with one [`ConfigResult`]:
//!
//! - [`ConfigOutcome::Applied`]: it runs `version` now (live, atomically);
//! - [`ConfigOutcome::AlreadyCurrent`]: it runs this version or a newer one already (a push is
//!   idempotent: sending it again changes nothing);
//! - [`ConfigOutcome::Rejected`]: invalid or not appliable live; it keeps running `running`;
//! - [`ConfigOutcome::NotActive`]: the term is not current or the sender is not the active
//!   primary (a fenced primary): refused, nothing looked at.
//!
//! # Frames
//!
//! The bus layout ([`crate::message`]) with kinds of their own (0x120..=0x12f is reserved
//! for config push):
//!
//! | kind  | message          | direction        |
//! |-------|------------------|------------------|
//! | 0x120 | [`ConfigPush`]   | primary -> poller |
//! | 0x121 | [`ConfigResult`] | poller -> primary |
//! | 0x122 | [`ConfigState`]  | poller -> primary |
//!
//! The config travels as the poller's TOML text (what the operator wrote, validated at the
//! primary and again at the poller): the bus does not need to know its schema. Decoding is
//! strict (canonical postcard) and bounded ([`MAX_CONFIG_BYTES`], [`MAX_REASON`]).

use crate::message::{BusError, strict};
use opha_common::wire::{HEADER_LEN, MAGIC, PROTOCOL_VERSION, version_supported};
use serde::{Deserialize, Serialize};

/// Longest config text a push carries.
pub const MAX_CONFIG_BYTES: usize = 256 << 10;
/// Longest reason in a [`ConfigResult`].
pub const MAX_REASON: usize = 4096;
/// Default bound on a config frame's payload: a maximal config plus its header fields.
pub const DEFAULT_MAX_PAYLOAD: u32 = (MAX_CONFIG_BYTES + 1024) as u32;

/// A config frame's kind.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConfigKind {
    Push = 0x120,
    Result = 0x121,
    State = 0x122,
}

impl ConfigKind {
    pub const ALL: [ConfigKind; 3] = [ConfigKind::Push, ConfigKind::Result, ConfigKind::State];

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x120 => ConfigKind::Push,
            0x121 => ConfigKind::Result,
            0x122 => ConfigKind::State,
            _ => return None,
        })
    }
}

/// Primary -> poller: run this configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigPush {
    /// Monotonic per poller, from 1; the poller ignores a version at or below the one it runs.
    pub version: u64,
    /// The primary's acting fencing term (the poller accepts only the current one).
    pub term: u64,
    /// The poller's configuration file, TOML.
    pub config: String,
}

/// What the poller did with a push.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ConfigOutcome {
    Applied,
    AlreadyCurrent,
    Rejected(String),
    NotActive(String),
}

/// Poller -> primary: the answer to one [`ConfigPush`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigResult {
    /// The push's version.
    pub version: u64,
    /// The version the poller runs after handling it (0: its local file, never pushed).
    pub running: u64,
    pub outcome: ConfigOutcome,
}

/// Poller -> primary, first on the config stream: the version it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConfigState {
    pub running: u64,
}

/// Any config message.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ConfigMessage {
    Push(ConfigPush),
    Result(ConfigResult),
    State(ConfigState),
}

impl ConfigMessage {
    pub fn kind(&self) -> ConfigKind {
        match self {
            ConfigMessage::Push(_) => ConfigKind::Push,
            ConfigMessage::Result(_) => ConfigKind::Result,
            ConfigMessage::State(_) => ConfigKind::State,
        }
    }
}

/// A parsed config frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigHeader {
    pub version: u16,
    pub kind: ConfigKind,
    pub len: u32,
}

/// Encodes and decodes config frames with a bound on the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigFrame {
    pub max_payload: u32,
}

impl Default for ConfigFrame {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
        }
    }
}

impl ConfigFrame {
    /// Appends one frame to `out`; returns its length. On error `out` is left as it was.
    pub fn encode_into(&self, msg: &ConfigMessage, out: &mut Vec<u8>) -> Result<usize, BusError> {
        validate(msg)?;
        let payload = match msg {
            ConfigMessage::Push(m) => postcard::to_allocvec(m),
            ConfigMessage::Result(m) => postcard::to_allocvec(m),
            ConfigMessage::State(m) => postcard::to_allocvec(m),
        }?;
        let len = match u32::try_from(payload.len()) {
            Ok(l) if l <= self.max_payload => l,
            _ => {
                return Err(BusError::TooLong {
                    len: payload.len(),
                    max: self.max_payload,
                });
            }
        };
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        out.extend_from_slice(&(msg.kind() as u16).to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(HEADER_LEN + payload.len())
    }

    pub fn encode(&self, msg: &ConfigMessage) -> Result<Vec<u8>, BusError> {
        let mut out = Vec::new();
        self.encode_into(msg, &mut out)?;
        Ok(out)
    }

    /// Reads and checks the header at the start of `bytes` (checks run on whatever prefix is
    /// present).
    pub fn header(&self, bytes: &[u8]) -> Result<ConfigHeader, BusError> {
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
        let kind = ConfigKind::from_u16(raw).ok_or(BusError::UnknownKind { kind: raw })?;
        let Some(&l) = bytes.get(6..10).and_then(|s| s.first_chunk::<4>()) else {
            return Err(truncated);
        };
        let len = u32::from_le_bytes(l);
        if len > self.max_payload {
            return Err(BusError::TooLong {
                len: len as usize,
                max: self.max_payload,
            });
        }
        Ok(ConfigHeader { version, kind, len })
    }

    /// Decodes the frame at the start of `bytes`; returns it and its length.
    pub fn decode_prefix(&self, bytes: &[u8]) -> Result<(ConfigMessage, usize), BusError> {
        let header = self.header(bytes)?;
        let total = HEADER_LEN + header.len as usize;
        let Some(payload) = bytes.get(HEADER_LEN..total) else {
            return Err(BusError::Truncated {
                needed: total,
                available: bytes.len(),
            });
        };
        let msg = match header.kind {
            ConfigKind::Push => ConfigMessage::Push(strict(payload)?),
            ConfigKind::Result => ConfigMessage::Result(strict(payload)?),
            ConfigKind::State => ConfigMessage::State(strict(payload)?),
        };
        validate(&msg)?;
        Ok((msg, total))
    }

    /// Decodes exactly one frame.
    pub fn decode(&self, bytes: &[u8]) -> Result<ConfigMessage, BusError> {
        let (msg, len) = self.decode_prefix(bytes)?;
        match bytes.len() - len {
            0 => Ok(msg),
            extra => Err(BusError::TrailingBytes { extra }),
        }
    }
}

/// Internal consistency and bounds (what postcard cannot check). Encoding checks it too, so
/// a peer never sends what it would refuse.
pub fn validate(msg: &ConfigMessage) -> Result<(), BusError> {
    match msg {
        ConfigMessage::Push(p) => {
            if p.version == 0 {
                return Err(BusError::Invalid("config push with version 0"));
            }
            if p.term == 0 {
                return Err(BusError::Invalid("config push with fencing term 0"));
            }
            if p.config.is_empty() || p.config.len() > MAX_CONFIG_BYTES {
                return Err(BusError::Invalid("config push text empty or too long"));
            }
        }
        ConfigMessage::Result(r) => {
            if r.version == 0 {
                return Err(BusError::Invalid("config result for version 0"));
            }
            match &r.outcome {
                ConfigOutcome::Applied if r.running != r.version => {
                    return Err(BusError::Invalid(
                        "config applied but another version running",
                    ));
                }
                ConfigOutcome::AlreadyCurrent if r.running < r.version => {
                    return Err(BusError::Invalid(
                        "config current but an older version running",
                    ));
                }
                ConfigOutcome::Rejected(s) | ConfigOutcome::NotActive(s)
                    if s.is_empty() || s.len() > MAX_REASON =>
                {
                    return Err(BusError::Invalid("config result reason empty or too long"));
                }
                _ => {}
            }
        }
        ConfigMessage::State(_) => {}
    }
    Ok(())
}

/// A reason cut to [`MAX_REASON`] bytes (at a character boundary), never empty.
pub fn bounded_reason(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    match &reason[..end] {
        "" => "unspecified".to_string(),
        r => r.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_stay_in_their_range() {
        for k in ConfigKind::ALL {
            let v = k as u16;
            assert!((0x120..=0x12f).contains(&v));
            assert_eq!(ConfigKind::from_u16(v), Some(k));
        }
        assert_eq!(ConfigKind::from_u16(0x102), None);
        assert_eq!(ConfigKind::from_u16(0x110), None);
    }

    #[test]
    fn bounded_reason_cuts_at_a_character() {
        let long = "é".repeat(MAX_REASON);
        let r = bounded_reason(&long);
        assert!(r.len() <= MAX_REASON && !r.is_empty());
        assert_eq!(bounded_reason(""), "unspecified");
    }
}
