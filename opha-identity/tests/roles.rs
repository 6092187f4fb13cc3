//! Roles: only pollers may open poller record streams to a primary or mirror; a client that
//! reaches a peer other than the one its configuration names refuses it.
mod common;

use common::*;
use opha_common::wire::{PeerId, PeerRole};
use opha_identity::verify::ExpectPeer;
use opha_identity::{RefusalReason, StreamKind, TransportSettings};

#[tokio::test]
async fn only_pollers_open_poller_streams() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let other_primary = issue(&ca, "primary-2", PeerRole::Primary, &[1]);
    let (_, cfg) = client_cfg(&ca, &other_primary);
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");
    let id = server.next().await.expect("a primary may connect");

    let t = &server.trust;
    let err = t
        .authorize_stream(PeerRole::Primary, &id, StreamKind::PollerRecords)
        .expect_err("a primary may not send poller records");
    assert_eq!(err.remote, PeerRole::Primary);
    assert!(
        t.authorize_stream(PeerRole::Primary, &id, StreamKind::Catchup)
            .is_ok()
    );
    assert!(
        t.authorize_stream(PeerRole::Primary, &id, StreamKind::ConfigPush)
            .is_err()
    );

    let poller = issue(&ca, "poller-a", PeerRole::Poller, &[1]).identity;
    assert!(
        t.authorize_stream(PeerRole::Primary, &poller, StreamKind::PollerRecords)
            .is_ok()
    );
    assert!(
        t.authorize_stream(PeerRole::Mirror, &poller, StreamKind::PollerRecords)
            .is_ok()
    );
    // A poller receives no poller records.
    assert!(
        t.authorize_stream(PeerRole::Poller, &poller, StreamKind::PollerRecords)
            .is_err()
    );
    assert!(
        t.authorize_stream(PeerRole::Primary, &poller, StreamKind::Catchup)
            .is_err()
    );
    assert_eq!(t.counters().get(RefusalReason::WrongRole), 4);
}

#[tokio::test]
async fn client_refuses_a_server_that_is_not_the_configured_peer() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let poller = tls(&issue(&ca, "poller-a", PeerRole::Poller, &[1]));
    let s = TransportSettings::default();

    // Configured for primary-2, reached primary-1.
    let t = trust(&ca);
    let expect = ExpectPeer::receiver(PeerId::new("primary-2").unwrap(), &[PeerRole::Primary]);
    assert!(
        attempt(server.addr, s.client_config(&t, &poller, expect).unwrap())
            .await
            .is_err()
    );
    server.next().await.expect_err("handshake failed");
    assert_eq!(t.counters().get(RefusalReason::WrongPeer), 1);

    // Configured for a mirror named primary-1: the role does not match.
    let expect = ExpectPeer::receiver(PeerId::new(PRIMARY).unwrap(), &[PeerRole::Mirror]);
    assert!(
        attempt(server.addr, s.client_config(&t, &poller, expect).unwrap())
            .await
            .is_err()
    );
    server.next().await.expect_err("handshake failed");
    assert_eq!(t.counters().get(RefusalReason::WrongRole), 1);
    assert_eq!(t.counters().total_refused(), 2);
    assert_eq!(server.trust.counters().accepted(), 0);
}
