//! Expired and not-yet-valid certificates are refused and counted apart.
mod common;

use common::*;
use opha_common::wire::PeerRole;
use opha_identity::{RefusalReason, Validity};
use std::time::{Duration, SystemTime};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn expired_certificate_is_refused() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let now = SystemTime::now();

    let expired = issue_valid(
        &ca,
        "poller-old",
        PeerRole::Poller,
        &[1],
        Validity {
            not_before: now - 2 * DAY,
            not_after: now - DAY,
        },
    );
    let (_, cfg) = client_cfg(&ca, &expired);
    assert!(attempt(server.addr, cfg).await.is_err());
    let seen = server.next().await.expect_err("refused");
    assert!(seen.contains("alert Some(45)"), "{seen}");
    assert_eq!(server.trust.counters().get(RefusalReason::Expired), 1);

    let future = issue_valid(
        &ca,
        "poller-new",
        PeerRole::Poller,
        &[1],
        Validity {
            not_before: now + DAY,
            not_after: now + 2 * DAY,
        },
    );
    let (_, cfg) = client_cfg(&ca, &future);
    assert!(attempt(server.addr, cfg).await.is_err());
    server.next().await.expect_err("refused");

    let c = server.trust.counters();
    assert_eq!(c.get(RefusalReason::Expired), 1);
    assert_eq!(c.get(RefusalReason::NotYetValid), 1);
    assert_eq!(c.total_refused(), 2);
    assert_eq!(c.accepted(), 0);
}
