//! The wire protocol: versioned records that leave a poller (replay log, bus) and their framing.
//!
//! Records are plain serde types encoded with postcard (compact, not self-describing). Every
//! record travels in a [`Sequenced`] envelope, (poller id, epoch, sequence), which receivers
//! dedupe on. A frame ([`frame`]) is a fixed 10-byte header (magic, protocol version, kind,
//! payload length) followed by the postcard payload.
//!
//! # Versioning rule
//!
//! [`PROTOCOL_VERSION`] is `major << 8 | minor`.
//!
//! - The header layout (magic, then the version field) never changes, so any decoder can always
//!   read the version of any frame and say why it refuses it.
//! - Within a major version, changes are additive only: new [`FrameKind`]s, new enum variants
//!   appended at the end (postcard encodes a variant as its index), new record types. Each such
//!   change bumps the minor version. Existing fields are never removed, reordered or retyped,
//!   and no field is added to an existing struct (postcard has no field tags, so an old decoder
//!   could not skip it): a new field means a new variant or record type, or a major bump.
//! - A decoder accepts a frame whose major equals its own and whose minor is at most its own
//!   (it knows every shape that version can contain). Anything else is refused with
//!   [`WireError::UnsupportedVersion`], which names both versions. So receivers (primaries,
//!   mirrors) are upgraded before the pollers that send to them.
//! - Encoders always write their own [`PROTOCOL_VERSION`].
//!
//! Decoding is strict: a payload must be the canonical encoding of the value it decodes to
//! (postcard itself accepts over-long varints), so equal records always have equal bytes.

extern crate alloc;

pub mod bytes;
pub mod daemon;
pub mod error;
pub mod event;
pub mod frame;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod record;
pub mod service;
pub mod snmp;
#[cfg(feature = "proptest")]
pub mod strategies;

pub use bytes::Bytes;
pub use daemon::{DaemonHealth, DaemonState};
pub use error::WireError;
pub use event::{Event, EventId, EventKind, RawSource, Severity, Subject, Syslog, Trap};
pub use frame::{
    DEFAULT_MAX_PAYLOAD, FrameCodec, FrameHeader, FrameKind, FramePayload, HEADER_LEN, MAGIC,
    decode_frame, encode_frame,
};
pub use ids::{PeerId, PeerIdError, PollerId, TenantId};
pub use metrics::{ClassMetrics, NodeMetrics, PPM, PollClass, RttStats};
pub use node::NodeRef;
pub use peer::{KernelCounter, PeerRole, PeerStatus, ReplayLogStatus, TenantNodes};
pub use record::{Record, Sequenced};
pub use service::{ServiceKind, ServiceState, ServiceStatus};
pub use snmp::{Oid, OidParseError, SnmpVersion, VarBind, VarValue};

/// Major version of the wire protocol: bumped for any change that is not additive.
pub const PROTOCOL_MAJOR: u8 = 1;
/// Minor version: bumped for each additive change within [`PROTOCOL_MAJOR`].
pub const PROTOCOL_MINOR: u8 = 0;
/// The version this build writes, `major << 8 | minor`.
pub const PROTOCOL_VERSION: u16 = (PROTOCOL_MAJOR as u16) << 8 | PROTOCOL_MINOR as u16;

/// True when this build can decode frames written with `version`.
// While PROTOCOL_MINOR is 0 the `<=` is an `==`; it is written for the minors to come.
#[allow(clippy::absurd_extreme_comparisons)]
pub const fn version_supported(version: u16) -> bool {
    (version >> 8) as u8 == PROTOCOL_MAJOR && (version & 0xff) as u8 <= PROTOCOL_MINOR
}

/// Displays a protocol version as `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u16);

impl core::fmt::Display for Version {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}.{}", self.0 >> 8, self.0 & 0xff)
    }
}
