//! Mutual TLS: rustls configs that accept only peers with a certificate chained to the opha CA,
//! refuse and count everything else by reason, and read the peer's identity from the verified
//! certificate only.
//!
//! Both directions are verified. The server requires a client certificate (no certificate,
//! unknown CA, expired or not yet valid, revoked, or without an opha identity: refused). The
//! client verifies the server the same way and, instead of a DNS name, checks the server's
//! *peer id* (and role) against what the client's configuration expects ([`ExpectPeer`]): the
//! server name given to `quinn::Endpoint::connect` is ignored, because receivers are named by
//! peer id, which is not always a valid DNS name.
//!
//! Revocation is a deny list of serial numbers and peer ids from configuration
//! ([`DenyList`], replaceable at run time with [`Trust::set_deny_list`]); it applies to new
//! handshakes, so the caller closes established connections of a newly revoked peer. Session
//! resumption is off on both sides, because a resumed handshake would skip the verifier (and
//! so the deny list and the expiry check).

use crate::identity::{IdentityError, PeerIdentity, Serial};
use crate::transport::ALPN;
use opha_common::wire::{PeerId, PeerRole, TenantId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Why a peer was refused. Each has a counter in [`RefusalCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The client presented no certificate.
    NoCertificate,
    /// The certificate does not chain to the configured CA (unknown issuer or bad signature).
    UnknownCa,
    /// Past its `not_after`.
    Expired,
    /// Before its `not_before`.
    NotYetValid,
    /// Serial number or peer id on the deny list.
    Revoked,
    /// Chains to the CA but carries no valid opha identity (peer id, role, tenants).
    BadIdentity,
    /// The server is not the peer the client's configuration names.
    WrongPeer,
    /// The peer's role may not do this (connect as this receiver, open this stream).
    WrongRole,
    /// The peer's certificate does not list the tenant of a record it sent.
    WrongTenant,
    /// A handshake that broke QUIC's rules before TLS got to certificates: typically junk
    /// datagrams shaped like a QUIC Initial that do not decrypt.
    Malformed,
    /// Any other certificate or handshake failure (bad encoding, wrong key usage, timeout).
    Other,
}

impl RefusalReason {
    pub const ALL: [RefusalReason; 11] = [
        RefusalReason::NoCertificate,
        RefusalReason::UnknownCa,
        RefusalReason::Expired,
        RefusalReason::NotYetValid,
        RefusalReason::Revoked,
        RefusalReason::BadIdentity,
        RefusalReason::WrongPeer,
        RefusalReason::WrongRole,
        RefusalReason::WrongTenant,
        RefusalReason::Malformed,
        RefusalReason::Other,
    ];

    /// Label for metrics (`reason="unknown_ca"`).
    pub fn name(self) -> &'static str {
        match self {
            RefusalReason::NoCertificate => "no_certificate",
            RefusalReason::UnknownCa => "unknown_ca",
            RefusalReason::Expired => "expired",
            RefusalReason::NotYetValid => "not_yet_valid",
            RefusalReason::Revoked => "revoked",
            RefusalReason::BadIdentity => "bad_identity",
            RefusalReason::WrongPeer => "wrong_peer",
            RefusalReason::WrongRole => "wrong_role",
            RefusalReason::WrongTenant => "wrong_tenant",
            RefusalReason::Malformed => "malformed",
            RefusalReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn classify(err: &rustls::Error) -> RefusalReason {
        use CertificateError as C;
        match err {
            rustls::Error::NoCertificatesPresented => RefusalReason::NoCertificate,
            rustls::Error::InvalidCertificate(e) => match e {
                C::UnknownIssuer | C::BadSignature => RefusalReason::UnknownCa,
                C::Expired | C::ExpiredContext { .. } => RefusalReason::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => RefusalReason::NotYetValid,
                C::Revoked => RefusalReason::Revoked,
                _ => RefusalReason::Other,
            },
            _ => RefusalReason::Other,
        }
    }
}

/// Peers refused, by reason, and peers accepted. Shared by every config built from one
/// [`Trust`], so one set of counters covers a whole endpoint.
#[derive(Debug, Default)]
pub struct RefusalCounters {
    refused: [AtomicU64; RefusalReason::ALL.len()],
    accepted: AtomicU64,
}

impl RefusalCounters {
    pub fn get(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Peers whose identity [`Trust::accept`] handed out.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub fn total_refused(&self) -> u64 {
        RefusalReason::ALL.iter().map(|&r| self.get(r)).sum()
    }

    /// Every reason with its count, in [`RefusalReason::ALL`] order.
    pub fn snapshot(&self) -> Vec<(RefusalReason, u64)> {
        RefusalReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .collect()
    }

    fn count(&self, reason: RefusalReason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Revoked certificates: by serial number (one certificate) or by peer id (every certificate
/// of that peer, e.g. a decommissioned poller).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenyList {
    pub serials: HashSet<Serial>,
    pub peers: HashSet<PeerId>,
}

impl DenyList {
    pub fn denies(&self, id: &PeerIdentity) -> bool {
        self.serials.contains(&id.serial) || self.peers.contains(&id.peer_id)
    }
}

/// What a client requires of the server it connects to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpectPeer {
    /// The receiver's peer id from the client's configuration; `None` accepts any peer id the
    /// CA vouches for.
    pub peer_id: Option<PeerId>,
    /// Acceptable roles; empty accepts any.
    pub roles: Vec<PeerRole>,
}

impl ExpectPeer {
    /// A receiver named `peer_id` in one of `roles`.
    pub fn receiver(peer_id: PeerId, roles: &[PeerRole]) -> Self {
        ExpectPeer {
            peer_id: Some(peer_id),
            roles: roles.to_vec(),
        }
    }
}

/// This peer's own certificate chain and key, for presenting in handshakes.
#[derive(Debug)]
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl TlsIdentity {
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem(format!("certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError::Pem("no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(format!("private key: {e}")))?;
        Ok(TlsIdentity { chain, key })
    }

    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| TlsError::Io(format!("{}: {e}", p.display())))
        };
        Self::from_pem(&read(cert_path)?, &read(key_path)?)
    }

    pub fn from_issued(issued: &crate::ca::IssuedCert) -> Result<Self, TlsError> {
        Self::from_pem(&issued.cert_pem, &issued.key_pem)
    }
}

/// The trust configuration of one endpoint: the CA, the deny list and the counters. Cheap to
/// clone; clones share the deny list and counters.
#[derive(Clone, Debug)]
pub struct Trust {
    inner: Arc<TrustInner>,
}

#[derive(Debug)]
struct TrustInner {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    deny: RwLock<DenyList>,
    counters: RefusalCounters,
}

impl Trust {
    /// Trusts exactly this CA certificate.
    pub fn new(ca_cert: CertificateDer<'static>) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(ca_cert)
            .map_err(|e| TlsError::Config(format!("CA certificate: {e}")))?;
        Ok(Trust {
            inner: Arc::new(TrustInner {
                roots: Arc::new(roots),
                provider: Arc::new(rustls::crypto::ring::default_provider()),
                deny: RwLock::new(DenyList::default()),
                counters: RefusalCounters::default(),
            }),
        })
    }

    pub fn from_ca_pem(pem: &str) -> Result<Self, TlsError> {
        let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .ok_or_else(|| TlsError::Pem("no CERTIFICATE block in the CA file".into()))?
            .map_err(|e| TlsError::Pem(format!("CA certificate: {e}")))?;
        Self::new(cert)
    }

    pub fn load_ca(path: &Path) -> Result<Self, TlsError> {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| TlsError::Io(format!("{}: {e}", path.display())))?;
        Self::from_ca_pem(&pem)
    }

    pub fn with_deny_list(self, deny: DenyList) -> Self {
        self.set_deny_list(deny);
        self
    }

    /// Replaces the deny list for handshakes from now on.
    pub fn set_deny_list(&self, deny: DenyList) {
        // A poisoned lock only means a writer panicked mid-assignment of a whole value.
        *self.inner.deny.write().unwrap_or_else(|e| e.into_inner()) = deny;
    }

    pub fn counters(&self) -> &RefusalCounters {
        &self.inner.counters
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.inner.provider
    }

    /// The server side's verifier of client certificates (client certificate mandatory).
    pub fn client_cert_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        let webpki = WebPkiClientVerifier::builder_with_provider(
            self.inner.roots.clone(),
            self.inner.provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(ClientVerifier {
            webpki,
            trust: self.clone(),
        }))
    }

    /// The client side's verifier of the server certificate.
    pub fn server_cert_verifier(&self, expect: ExpectPeer) -> Arc<dyn ServerCertVerifier> {
        Arc::new(ServerVerifier {
            trust: self.clone(),
            expect,
            algs: self.inner.provider.signature_verification_algorithms,
        })
    }

    /// rustls server config: TLS 1.3 only (QUIC), client certificate required, ALPN `opha/1`.
    pub fn server_config(&self, own: &TlsIdentity) -> Result<rustls::ServerConfig, TlsError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(self.client_cert_verifier()?)
            .with_single_cert(own.chain.clone(), own.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // No session resumption: a resumed handshake skips certificate verification, so a
        // peer revoked (or expired) after its first connection could come back on a ticket.
        // A full handshake costs one signature check per reconnect, nothing at this scale.
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        Ok(cfg)
    }

    /// rustls client config: TLS 1.3 only, presents `own`, requires the server to match
    /// `expect`, ALPN `opha/1`.
    pub fn client_config(
        &self,
        own: &TlsIdentity,
        expect: ExpectPeer,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(self.server_cert_verifier(expect))
            .with_client_auth_cert(own.chain.clone(), own.key.clone_key())?;
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        // As on the server: every handshake verifies the server's certificate afresh.
        cfg.resumption = rustls::client::Resumption::disabled();
        Ok(cfg)
    }

    /// Completes an incoming connection's handshake and returns the peer's identity from its
    /// verified certificate. Refusals are counted (the verifier counts certificate failures;
    /// this counts a missing certificate, which rustls refuses before any verifier runs, and
    /// other handshake failures).
    pub async fn accept(
        &self,
        incoming: quinn::Incoming,
    ) -> Result<(quinn::Connection, PeerIdentity), AcceptError> {
        let conn = match incoming.await {
            Ok(conn) => conn,
            Err(error) => {
                let alert = local_tls_alert(&error);
                match alert {
                    Some(ALERT_CERTIFICATE_REQUIRED) => {
                        self.counters().count(RefusalReason::NoCertificate)
                    }
                    // Certificate alerts come from our verifiers, which counted already.
                    Some(a) if CERTIFICATE_ALERTS.contains(&a) => {}
                    None if matches!(error, quinn::ConnectionError::TransportError(_)) => {
                        self.counters().count(RefusalReason::Malformed)
                    }
                    _ => self.counters().count(RefusalReason::Other),
                }
                return Err(AcceptError::Handshake { alert, error });
            }
        };
        match peer_identity(&conn) {
            Ok(id) => {
                self.inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
                Ok((conn, id))
            }
            Err(e) => {
                // Unreachable with configs from this module (the verifier parsed the same
                // certificate); kept so a misbuilt config fails closed.
                self.counters().count(RefusalReason::BadIdentity);
                conn.close(CLOSE_REFUSED, b"no verified identity");
                Err(AcceptError::Identity(e))
            }
        }
    }

    /// Whether `remote`, whose identity came from its certificate, may open a stream of `kind`
    /// to this peer (in `local` role). Refusals are counted as `wrong_role`.
    pub fn authorize_stream(
        &self,
        local: PeerRole,
        remote: &PeerIdentity,
        kind: StreamKind,
    ) -> Result<(), RoleError> {
        let (openers, receivers) = kind.roles();
        if openers.contains(&remote.role) && receivers.contains(&local) {
            return Ok(());
        }
        self.counters().count(RefusalReason::WrongRole);
        Err(RoleError {
            kind,
            local,
            remote: remote.role,
            peer: remote.peer_id.clone(),
        })
    }

    /// Whether `remote`'s certificate allows records of `tenant`. Refusals are counted as
    /// `wrong_tenant`.
    pub fn authorize_tenant(
        &self,
        remote: &PeerIdentity,
        tenant: TenantId,
    ) -> Result<(), TenantDenied> {
        if remote.allows_tenant(tenant) {
            return Ok(());
        }
        self.counters().count(RefusalReason::WrongTenant);
        Err(TenantDenied {
            peer: remote.peer_id.clone(),
            tenant,
        })
    }

    /// The opha checks that follow a successful chain verification, shared by both sides.
    fn check_identity(&self, end_entity: &CertificateDer<'_>) -> Result<PeerIdentity, Refused> {
        let id = PeerIdentity::from_certificate(end_entity).map_err(|_| {
            Refused(
                RefusalReason::BadIdentity,
                CertificateError::ApplicationVerificationFailure,
            )
        })?;
        let denied = self
            .inner
            .deny
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .denies(&id);
        if denied {
            return Err(Refused(RefusalReason::Revoked, CertificateError::Revoked));
        }
        Ok(id)
    }

    fn refuse(&self, Refused(reason, err): Refused) -> rustls::Error {
        self.counters().count(reason);
        rustls::Error::InvalidCertificate(err)
    }

    fn refuse_chain(&self, err: rustls::Error) -> rustls::Error {
        self.counters().count(RefusalReason::classify(&err));
        err
    }
}

struct Refused(RefusalReason, CertificateError);

/// The identity of the peer at the other end of `conn`, from the certificate the handshake
/// verified. Never from application data.
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, IdentityError> {
    let any = conn
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    PeerIdentity::from_certificate(leaf)
}

/// Application close code for a peer refused after the handshake.
pub const CLOSE_REFUSED: quinn::VarInt = quinn::VarInt::from_u32(0x4f01);

/// TLS alert rustls sends when a required client certificate is missing (RFC 8446).
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;
/// Alerts rustls sends for certificate verification errors (bad_certificate,
/// unsupported_certificate, certificate_revoked, certificate_expired, certificate_unknown,
/// unknown_ca, access_denied, decrypt_error).
const CERTIFICATE_ALERTS: [u8; 8] = [42, 43, 44, 45, 46, 48, 49, 51];

/// The TLS alert this endpoint sent, if the connection failed in its own TLS layer.
fn local_tls_alert(err: &quinn::ConnectionError) -> Option<u8> {
    let quinn::ConnectionError::TransportError(te) = err else {
        return None;
    };
    (0u8..=255).find(|&a| te.code == quinn::TransportErrorCode::crypto(a))
}

/// Which stream a peer opens, for [`Trust::authorize_stream`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A poller's record stream to a primary or its mirror.
    PollerRecords,
    /// A primary fetching a gap from a mirror or another primary.
    Catchup,
    /// The active primary pushing configuration to a poller (or the mirror standing in).
    ConfigPush,
    /// A promoted mirror's own record stream to a primary, in place of its poller. Which
    /// poller a mirror may stand in for is the receiver's registry's business (`[[poller]]
    /// mirror = ...`), not the certificate's.
    MirrorRecords,
}

impl StreamKind {
    /// (roles that may open it, roles that may receive it)
    fn roles(self) -> (&'static [PeerRole], &'static [PeerRole]) {
        use PeerRole::*;
        match self {
            StreamKind::PollerRecords => (&[Poller], &[Primary, Mirror]),
            StreamKind::Catchup => (&[Primary], &[Primary, Mirror]),
            StreamKind::ConfigPush => (&[Primary], &[Poller, Mirror]),
            StreamKind::MirrorRecords => (&[Mirror], &[Primary]),
        }
    }
}

#[derive(Debug)]
struct ClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust: Trust,
}

impl ClientCertVerifier for ClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| self.trust.refuse_chain(e))?;
        self.trust
            .check_identity(end_entity)
            .map_err(|r| self.trust.refuse(r))?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ServerVerifier {
    trust: Trust,
    expect: ExpectPeer,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed =
            ParsedCertificate::try_from(end_entity).map_err(|e| self.trust.refuse_chain(e))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.trust.inner.roots,
            intermediates,
            now,
            self.algs.all,
        )
        .map_err(|e| self.trust.refuse_chain(e))?;
        let id = self
            .trust
            .check_identity(end_entity)
            .map_err(|r| self.trust.refuse(r))?;
        // Named by peer id, not DNS name (see the module docs).
        if self
            .expect
            .peer_id
            .as_ref()
            .is_some_and(|p| *p != id.peer_id)
        {
            return Err(self.trust.refuse(Refused(
                RefusalReason::WrongPeer,
                CertificateError::ApplicationVerificationFailure,
            )));
        }
        if !self.expect.roles.is_empty() && !self.expect.roles.contains(&id.role) {
            return Err(self.trust.refuse(Refused(
                RefusalReason::WrongRole,
                CertificateError::ApplicationVerificationFailure,
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("PEM: {0}")]
    Pem(String),
    #[error("{0}")]
    Io(String),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake failed; `alert` is the TLS alert this endpoint sent, if any (116 = no
    /// client certificate, 48 = unknown CA, 45 = expired, 44 = revoked, 49 = no identity).
    #[error("handshake refused (TLS alert {alert:?}): {error}")]
    Handshake {
        alert: Option<u8>,
        error: quinn::ConnectionError,
    },
    #[error("peer identity: {0}")]
    Identity(IdentityError),
}

#[derive(Debug, thiserror::Error)]
#[error("peer {peer} ({remote:?}) may not open a {kind:?} stream to a {local:?}")]
pub struct RoleError {
    pub kind: StreamKind,
    pub local: PeerRole,
    pub remote: PeerRole,
    pub peer: PeerId,
}

#[derive(Debug, thiserror::Error)]
#[error("peer {peer}'s certificate does not allow tenant {tenant}")]
pub struct TenantDenied {
    pub peer: PeerId,
    pub tenant: TenantId,
}
