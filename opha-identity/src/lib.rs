//! opha's bus identity: who a peer is, proven by a certificate, and the mutual-TLS QUIC
//! transport that carries the bus.
//!
//! - [`ca`]: create a CA and issue peer certificates (rcgen, ECDSA P-256, PEM files; keys 0600).
//! - [`identity`]: the certificate layout below, and [`identity::PeerIdentity`] read back from it.
//! - [`verify`]: rustls configs for mutual TLS only, refusals counted by reason, identity taken
//!   from the verified certificate after the handshake, role and tenant checks.
//! - [`transport`]: quinn configs with WAN settings (keep-alive, idle timeout, BDP-sized
//!   windows, Cubic) and ALPN `opha/1`.
//!
//! # Certificate layout
//!
//! A peer certificate (issued by [`ca::Ca::issue`]) carries:
//!
//! | field | value |
//! | --- | --- |
//! | subject | `O=opha, OU=<role>, CN=<peer id>` (for people; CN must equal the peer id URI) |
//! | URI SAN, exactly one | `opha://peer/<peer id>` ([`opha_common::wire::PeerId`] rules) |
//! | URI SAN, exactly one | `opha://role/poller`, `opha://role/primary` or `opha://role/mirror` |
//! | URI SAN, zero or more | `opha://tenant/<n>`, one per tenant, canonical decimal u32 (at most 1,024) |
//! | basic constraints | not a CA |
//! | key usage / extended key usage | digitalSignature / clientAuth + serverAuth (receivers are both) |
//! | serial | 16 random bytes (the deny list names serials in lowercase hex) |
//! | validity | `not_before` backdated by [`ca::CLOCK_SKEW`], `not_after` as requested |
//!
//! URI SANs rather than a custom extension: standard tools show them
//! (`openssl x509 -noout -ext subjectAltName`), and every X.509 library parses them. An
//! `opha://` URI of an unknown kind makes the certificate invalid rather than half-understood.
//! The CA certificate is `O=opha, CN=<name>`, a CA with path length 0 (it signs peers only).
//!
//! The tenant a record belongs to is accepted only if the sender's certificate lists it
//! ([`verify::Trust::authorize_tenant`]); no field of a message can widen that.

pub mod ca;
pub mod identity;
pub mod transport;
pub mod verify;

pub use ca::{Ca, IssuedCert, PeerSpec, Validity};
pub use identity::{PeerIdentity, Serial};
pub use transport::{ALPN, Congestion, SERVER_NAME, TransportSettings};
pub use verify::{
    DenyList, ExpectPeer, RefusalCounters, RefusalReason, StreamKind, TlsIdentity, Trust,
    peer_identity,
};
