//! A certificate for tenant 2 yields tenants [2]: records of tenant 1 from that peer are
//! refused and counted, whatever the records say.
mod common;

use common::*;
use opha_common::wire::{PeerRole, TenantId};
use opha_identity::RefusalReason;

#[tokio::test]
async fn tenant_2_certificate_allows_only_tenant_2() {
    let ca = new_ca("opha test CA");
    let mut server = Server::start(&ca, trust(&ca));
    let poller = issue(&ca, "poller-t2", PeerRole::Poller, &[2]);
    let (_, cfg) = client_cfg(&ca, &poller);
    assert_eq!(attempt(server.addr, cfg).await.unwrap(), b"ping");

    let id = server.next().await.expect("accepted");
    assert_eq!(id.tenants, vec![TenantId(2)]);
    assert!(server.trust.authorize_tenant(&id, TenantId(2)).is_ok());
    let err = server
        .trust
        .authorize_tenant(&id, TenantId(1))
        .expect_err("tenant 1 refused");
    assert_eq!(err.tenant, TenantId(1));
    assert_eq!(server.trust.counters().get(RefusalReason::WrongTenant), 1);
    assert_eq!(server.trust.counters().total_refused(), 1);
}

#[test]
fn a_certificate_without_tenants_allows_none() {
    let ca = new_ca("opha test CA");
    let id = issue(&ca, "primary-2", PeerRole::Primary, &[]).identity;
    assert!(id.tenants.is_empty());
    assert!(!id.allows_tenant(TenantId(0)));
}
