//! `certs init` / `certs issue`: PEM files with private keys readable by the owner only, loaded
//! back and used for a real handshake.
mod common;

use common::*;
use opha_common::wire::{PeerId, PeerRole, TenantId};
use opha_identity::ca::{self, CaError, PeerSpec, Validity};
use opha_identity::{PeerIdentity, TlsIdentity, TransportSettings, Trust};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn init_and_issue_write_pem_files_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let peers = dir.path().join("peers");
    let ca = ca::init_ca(&ca_dir, "opha CA", 365, false).unwrap();
    assert_eq!(mode(&ca_dir.join(ca::CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&ca_dir.join(ca::CA_CERT_FILE)), 0o644);
    assert_eq!(mode(&ca_dir), 0o700);
    // A second init must not replace the CA key.
    assert!(matches!(
        ca::init_ca(&ca_dir, "opha CA", 365, false),
        Err(CaError::Exists(_))
    ));

    let spec = PeerSpec {
        peer_id: PeerId::new("poller-a").unwrap(),
        role: PeerRole::Poller,
        tenants: vec![TenantId(7), TenantId(2)],
        validity: Validity::days_from_now(30),
    };
    let (issued, cert, key) = ca::issue_to_dir(&ca_dir, &peers, &spec, false).unwrap();
    assert_eq!(cert, peers.join("poller-a.pem"));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    assert!(matches!(
        ca::issue_to_dir(&ca_dir, &peers, &spec, false),
        Err(CaError::Exists(_))
    ));
    // Renewal with overwrite keeps the key private.
    ca::issue_to_dir(&ca_dir, &peers, &spec, true).unwrap();
    assert_eq!(mode(&key), 0o600);

    let pem = std::fs::read_to_string(&cert).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let own = TlsIdentity::load(&cert, &key).unwrap();
    let id = PeerIdentity::from_certificate(&own.chain[0]).unwrap();
    assert_eq!(id.peer_id, spec.peer_id);
    assert_eq!(id.role, PeerRole::Poller);
    assert_eq!(id.tenants, vec![TenantId(2), TenantId(7)]);
    assert_ne!(
        id.serial, issued.identity.serial,
        "renewal has a new serial"
    );

    // The loaded files complete a handshake with a server trusting ca.pem from disk.
    let mut server = Server::start(&ca, Trust::load_ca(&ca_dir.join(ca::CA_CERT_FILE)).unwrap());
    let t = Trust::load_ca(&ca_dir.join(ca::CA_CERT_FILE)).unwrap();
    let cfg = TransportSettings::default()
        .client_config(&t, &own, expect_primary())
        .unwrap();
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");
    assert_eq!(
        server.next().await.unwrap().tenants,
        vec![TenantId(2), TenantId(7)]
    );
}

#[test]
fn a_ca_key_that_does_not_match_its_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = ca::init_ca(&dir.path().join("a"), "a", 30, false).unwrap();
    let b = new_ca("b");
    let other_key = std::fs::read_to_string(dir.path().join("a").join(ca::CA_KEY_FILE)).unwrap();
    assert!(matches!(
        ca::Ca::from_pem(b.cert_pem(), &other_key),
        Err(CaError::KeyMismatch)
    ));
    assert!(ca::Ca::from_pem(a.cert_pem(), &other_key).is_ok());
    let now = std::time::SystemTime::now();
    let empty = Validity {
        not_before: now,
        not_after: now,
    };
    assert!(matches!(
        ca::Ca::create("x", empty),
        Err(CaError::BadValidity)
    ));
}
