//! A certificate the CA signed but without a valid opha identity (no peer URI, a CN that
//! differs from the peer id, an unknown opha URI, a non-canonical tenant) is refused in the
//! handshake and counted as `bad_identity`.
mod common;

use common::*;
use opha_identity::ca;
use opha_identity::{PeerIdentity, RefusalReason, TlsIdentity, TransportSettings};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Signs a certificate with CN `cn` and URI SANs `uris` with the test CA's key, bypassing
/// `Ca::issue` (which only writes valid layouts).
fn forge(ca_dir: &std::path::Path, cn: &str, uris: &[&str]) -> TlsIdentity {
    let ca_pem = std::fs::read_to_string(ca_dir.join(ca::CA_CERT_FILE)).unwrap();
    let ca_key =
        KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join(ca::CA_KEY_FILE)).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
        .collect();
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    TlsIdentity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

#[tokio::test]
async fn certificates_without_a_valid_identity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca::init_ca(dir.path(), "opha test CA", 30, false).unwrap();
    let mut server = Server::start(&ca, trust(&ca));
    let forged = [
        forge(dir.path(), "poller-a", &[]),
        forge(
            dir.path(),
            "poller-b",
            &[
                "opha://peer/poller-a",
                "opha://role/poller",
                "opha://tenant/1",
            ],
        ),
        forge(
            dir.path(),
            "poller-a",
            &[
                "opha://peer/poller-a",
                "opha://role/poller",
                "opha://admin/yes",
            ],
        ),
        forge(
            dir.path(),
            "poller-a",
            &[
                "opha://peer/poller-a",
                "opha://role/poller",
                "opha://tenant/01",
            ],
        ),
        forge(
            dir.path(),
            "poller-a",
            &["opha://peer/poller-a", "opha://role/root"],
        ),
    ];
    for own in &forged {
        assert!(PeerIdentity::from_certificate(&own.chain[0]).is_err());
        let t = trust(&ca);
        let cfg = TransportSettings::default()
            .client_config(&t, own, expect_primary())
            .unwrap();
        assert!(attempt(server.addr, cfg).await.is_err());
        let seen = server.next().await.expect_err("refused");
        assert!(seen.contains("alert Some(49)"), "{seen}");
    }
    let c = server.trust.counters();
    assert_eq!(c.get(RefusalReason::BadIdentity), forged.len() as u64);
    assert_eq!(c.total_refused(), forged.len() as u64);
    assert_eq!(c.accepted(), 0);

    // The same layout written by the CA is accepted: the refusals above are about the identity.
    let good = forge(
        dir.path(),
        "poller-a",
        &[
            "opha://peer/poller-a",
            "opha://role/poller",
            "opha://tenant/1",
        ],
    );
    let t = trust(&ca);
    let cfg = TransportSettings::default()
        .client_config(&t, &good, expect_primary())
        .unwrap();
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");
    assert_eq!(server.next().await.unwrap().peer_id.as_str(), "poller-a");
}
