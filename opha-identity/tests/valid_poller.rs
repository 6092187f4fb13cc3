//! A poller with a certificate from the CA connects; the primary sees its identity and tenants
//! from the certificate, and the poller sees the primary's.
mod common;

use common::*;
use opha_common::wire::{PeerRole, TenantId};
use opha_identity::{RefusalReason, peer_identity};

#[tokio::test]
async fn valid_poller_connects_and_server_sees_its_identity() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let poller = issue(&ca, "poller-a", PeerRole::Poller, &[3, 1, 3]);
    let (client_trust, cfg) = client_cfg(&ca, &poller);

    let ep = client_endpoint();
    let conn = connect(&ep, server.addr, cfg).await.expect("connect");
    assert_eq!(echo(&conn, b"hello").await.unwrap(), b"hello");
    assert_eq!(
        conn.handshake_data().and_then(|h| {
            h.downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|h| h.protocol)
        }),
        Some(b"opha/1".to_vec())
    );

    let id = server.next().await.expect("accepted");
    assert_eq!(id.peer_id.as_str(), "poller-a");
    assert_eq!(id.role, PeerRole::Poller);
    assert_eq!(id.tenants, vec![TenantId(1), TenantId(3)]);
    assert_eq!(&id.serial, poller.serial());
    assert_eq!(server.trust.counters().accepted(), 1);
    assert_eq!(server.trust.counters().total_refused(), 0);

    // The client side reads the primary's identity from its verified certificate too.
    let primary = peer_identity(&conn).expect("server identity");
    assert_eq!(primary.peer_id.as_str(), PRIMARY);
    assert_eq!(primary.role, PeerRole::Primary);
    assert_eq!(client_trust.counters().total_refused(), 0);
    for (reason, n) in server.trust.counters().snapshot() {
        assert_eq!(n, 0, "{}", reason.name());
    }
    assert_eq!(server.trust.counters().get(RefusalReason::Other), 0);
}
