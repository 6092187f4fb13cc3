//! A client without a certificate is refused in the handshake and counted; the primary keeps
//! serving certified peers.
mod common;

use common::*;
use opha_common::wire::PeerRole;
use opha_identity::{ALPN, RefusalReason, TransportSettings};

#[tokio::test]
async fn client_without_certificate_is_refused_and_counted() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));

    // Trusts the right CA for the server, but has nothing to present.
    let t = trust(&ca);
    let mut tls = rustls::ClientConfig::builder_with_provider(t.provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(t.server_cert_verifier(expect_primary()))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let cfg = TransportSettings::default()
        .client_config_from_tls(tls)
        .unwrap();

    let err = attempt(server.addr, cfg)
        .await
        .expect_err("anonymous client refused");
    let seen = server.next().await.expect_err("server refused it");
    assert!(seen.contains("alert Some(116)"), "{seen}");
    assert!(!err.is_empty());
    let t = server.trust.clone();
    let c = t.counters();
    assert_eq!(c.get(RefusalReason::NoCertificate), 1);
    assert_eq!(c.total_refused(), 1);
    assert_eq!(c.accepted(), 0);

    // The primary still serves a certified poller.
    let poller = issue(&ca, "poller-b", PeerRole::Poller, &[1]);
    let (_, cfg) = client_cfg(&ca, &poller);
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");
    assert_eq!(server.next().await.unwrap().peer_id.as_str(), "poller-b");
    assert_eq!(c.accepted(), 1);
    assert_eq!(c.total_refused(), 1);
}
