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
//! The bus layout and codec ([`crate::frame`]) with kinds of their own (0x120..=0x12f is
//! reserved for config push):
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

use crate::frame::{FrameHeader, FrameKinds, FrameMessage, frame_codec, strict};
use crate::message::BusError;
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
pub type ConfigHeader = FrameHeader<ConfigKind>;

frame_codec!(
    /// Encodes and decodes config frames with a bound on the payload.
    ConfigFrame,
    ConfigMessage,
    DEFAULT_MAX_PAYLOAD
);

impl FrameKinds for ConfigKind {
    fn from_u16(v: u16) -> Option<Self> {
        ConfigKind::from_u16(v)
    }

    fn as_u16(self) -> u16 {
        self as u16
    }
}

impl FrameMessage for ConfigMessage {
    type Kind = ConfigKind;

    const VALIDATE_ON_ENCODE: bool = true;

    fn kind(&self) -> ConfigKind {
        ConfigMessage::kind(self)
    }

    fn to_payload(&self) -> Result<Vec<u8>, postcard::Error> {
        match self {
            ConfigMessage::Push(m) => postcard::to_allocvec(m),
            ConfigMessage::Result(m) => postcard::to_allocvec(m),
            ConfigMessage::State(m) => postcard::to_allocvec(m),
        }
    }

    fn from_payload(kind: ConfigKind, payload: &[u8]) -> Result<Self, BusError> {
        Ok(match kind {
            ConfigKind::Push => ConfigMessage::Push(strict(payload)?),
            ConfigKind::Result => ConfigMessage::Result(strict(payload)?),
            ConfigKind::State => ConfigMessage::State(strict(payload)?),
        })
    }

    fn validate(&self) -> Result<(), BusError> {
        validate(self)
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
