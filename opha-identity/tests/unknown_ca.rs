//! Certificates from another CA are refused on both sides: a client's by the primary, a
//! server's by the poller.
mod common;

use common::*;
use opha_common::wire::PeerRole;
use opha_identity::RefusalReason;

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let ca = new_ca("opha test CA");
    // Same name, different key: only the signature tells them apart.
    let rogue = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));

    let poller = issue(&rogue, "poller-a", PeerRole::Poller, &[1]);
    // The rogue client trusts the real CA for the server, so only the server can refuse.
    let (client_trust, cfg) = client_cfg(&ca, &poller);
    assert!(attempt(server.addr, cfg).await.is_err());
    // The issuer name matches, so the chain fails on the signature (decrypt_error alert).
    let seen = server.next().await.expect_err("refused");
    assert!(seen.contains("alert Some(51)"), "{seen}");

    let other = new_ca("other CA");
    let poller = issue(&other, "poller-b", PeerRole::Poller, &[1]);
    let (_, cfg) = client_cfg(&ca, &poller);
    assert!(attempt(server.addr, cfg).await.is_err());
    let seen = server.next().await.expect_err("refused");
    assert!(seen.contains("alert Some(48)"), "{seen}");

    let c = server.trust.counters();
    assert_eq!(c.get(RefusalReason::UnknownCa), 2);
    assert_eq!(c.total_refused(), 2);
    assert_eq!(c.accepted(), 0);
    assert_eq!(client_trust.counters().total_refused(), 0);
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    let ca = new_ca("opha test CA");
    let rogue = new_ca("rogue CA");
    // A rogue primary that trusts the real CA's clients but has its own certificate.
    let mut server = Server::start(&rogue, trust(&ca));
    let poller = issue(&ca, "poller-a", PeerRole::Poller, &[1]);
    let (client_trust, cfg) = client_cfg(&ca, &poller);
    assert!(attempt(server.addr, cfg).await.is_err());
    server.next().await.expect_err("handshake failed");
    assert_eq!(client_trust.counters().get(RefusalReason::UnknownCa), 1);
    assert_eq!(client_trust.counters().total_refused(), 1);
    assert_eq!(server.trust.counters().accepted(), 0);
}
