//! The deny list refuses certificates by serial number and by peer id, takes effect for new
//! handshakes when replaced, and leaves other peers alone.
mod common;

use common::*;
use opha_common::wire::{PeerId, PeerRole};
use opha_identity::{DenyList, RefusalReason};

#[tokio::test]
async fn revoked_certificates_are_refused() {
    let ca = new_ca("opha test CA");
    let stolen = issue(&ca, "poller-a", PeerRole::Poller, &[1]);
    let reissued = issue(&ca, "poller-a", PeerRole::Poller, &[1]);
    let retired = issue(&ca, "poller-z", PeerRole::Poller, &[1]);
    let mut deny = DenyList::default();
    // Configured as text, as an operator would write it.
    deny.serials
        .insert(stolen.serial().to_string().parse().unwrap());
    let mut server = Server::start(&ca, trust(&ca).with_deny_list(deny.clone()));

    let (_, cfg) = client_cfg(&ca, &stolen);
    assert!(attempt(server.addr, cfg).await.is_err());
    let seen = server.next().await.expect_err("revoked serial refused");
    assert!(seen.contains("alert Some(44)"), "{seen}");

    // Same peer id, new serial: accepted.
    let (_, cfg) = client_cfg(&ca, &reissued);
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");
    server.next().await.expect("reissued accepted");

    // Revoke a whole peer at run time. The client reuses its config (and so would reuse a
    // session ticket if resumption were on, skipping the server's verifier): still refused.
    let (_, cfg) = client_cfg(&ca, &retired);
    assert_eq!(attempt(server.addr, cfg.clone()).await.unwrap(), b"ping");
    server.next().await.expect("accepted before revocation");
    deny.peers.insert(PeerId::new("poller-z").unwrap());
    server.trust.set_deny_list(deny);
    assert!(attempt(server.addr, cfg).await.is_err());
    server.next().await.expect_err("revoked peer refused");

    let c = server.trust.counters();
    assert_eq!(c.get(RefusalReason::Revoked), 2);
    assert_eq!(c.total_refused(), 2);
    assert_eq!(c.accepted(), 2);
}
