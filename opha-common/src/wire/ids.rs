//! Identifiers: peers, tenants.

use super::alloc::string::String;
use core::fmt;
use serde::{Deserialize, Serialize};

/// A tenant, as numbered in the poller's configuration and the kernel's prefix map.
///
/// Receivers never trust this field alone: a record is accepted only for tenants the sending
/// peer's certificate allows (the bus issue).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TenantId(pub u32);

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Id of a peer (poller, primary or mirror), as carried in its certificate.
///
/// 1 to [`PeerId::MAX_LEN`] bytes of `[a-z0-9._-]`, starting with a letter or digit: short
/// enough to sit in every record, safe in file names and URLs, and one spelling per peer (no
/// case variants that would dedupe apart). Checked on construction and on decode.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerId(String);

/// The peer that produced a record: the first part of its dedupe key.
pub type PollerId = PeerId;

/// Why a string is not a valid [`PeerId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerIdError {
    Empty,
    TooLong(usize),
    BadChar(char),
    BadStart(char),
}

impl fmt::Display for PeerIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerIdError::Empty => write!(f, "peer id is empty"),
            PeerIdError::TooLong(n) => {
                write!(
                    f,
                    "peer id is {n} bytes, at most {} allowed",
                    PeerId::MAX_LEN
                )
            }
            PeerIdError::BadChar(c) => {
                write!(
                    f,
                    "peer id contains {c:?}; allowed are a-z, 0-9, '.', '_', '-'"
                )
            }
            PeerIdError::BadStart(c) => {
                write!(
                    f,
                    "peer id starts with {c:?}; it must start with a-z or 0-9"
                )
            }
        }
    }
}

impl core::error::Error for PeerIdError {}

impl PeerId {
    pub const MAX_LEN: usize = 64;

    pub fn new(id: impl Into<String>) -> Result<Self, PeerIdError> {
        let id = id.into();
        Self::check(&id)?;
        Ok(Self(id))
    }

    fn check(id: &str) -> Result<(), PeerIdError> {
        let first = id.chars().next().ok_or(PeerIdError::Empty)?;
        if id.len() > Self::MAX_LEN {
            return Err(PeerIdError::TooLong(id.len()));
        }
        if let Some(c) = id
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
        {
            return Err(PeerIdError::BadChar(c));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(PeerIdError::BadStart(first));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PeerId {
    type Error = PeerIdError;

    fn try_from(id: String) -> Result<Self, PeerIdError> {
        Self::new(id)
    }
}

impl From<PeerId> for String {
    fn from(id: PeerId) -> String {
        id.0
    }
}

impl core::str::FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, PeerIdError> {
        Self::new(s)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
