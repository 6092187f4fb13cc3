//! Tenant isolation at the data layer: one file per tenant, a handle reads only its own file,
//! refuses other tenants' records, and a file under another tenant's name is refused.

mod common;

use common::*;
use opha_common::wire::{EventKind, Severity, TenantId};
use opha_store::{EventFilter, PageRequest, Scope, StoreError};

#[test]
fn each_tenant_has_its_own_file_and_sees_only_its_data() {
    let (dir, store) = store();
    let p = poller("shared");
    let a = store.tenant(TenantId(1)).unwrap();
    let b = store.tenant(TenantId(2)).unwrap();
    assert_eq!(a.path(), dir.path().join("tenant-1.sqlite3"));
    assert_eq!(b.path(), dir.path().join("tenant-2.sqlite3"));
    // The same node address and the same (poller, epoch, seq) in both tenants: no collision.
    a.commit_batch(&p, 1, &[(0, node_down(1, 7, 100)), (1, metrics(1, 7, 100))])
        .unwrap();
    b.commit_batch(
        &p,
        1,
        &[(0, event(2, 7, EventKind::NodeUp, Severity::Info, 200))],
    )
    .unwrap();
    b.commit_batch(
        &p,
        1,
        &[(
            2,
            service(2, 7, "https", opha_common::wire::ServiceStatus::Up, 5),
        )],
    )
    .unwrap();
    let ea = a
        .events(&EventFilter::default(), &PageRequest::default())
        .unwrap();
    let eb = b
        .events(&EventFilter::default(), &PageRequest::default())
        .unwrap();
    assert_eq!(ea.items.len(), 1);
    assert_eq!(ea.items[0].event.tenant, TenantId(1));
    assert_eq!(ea.items[0].event.kind, EventKind::NodeDown);
    assert_eq!(eb.items.len(), 1);
    assert_eq!(eb.items[0].event.tenant, TenantId(2));
    assert!(a.services().unwrap().is_empty());
    assert_eq!(b.services().unwrap().len(), 1);
    let node = (&node(7)).into();
    assert_eq!(
        a.metrics_series(node, None, None, &PageRequest::default())
            .unwrap()
            .items
            .len(),
        1
    );
    assert!(
        b.metrics_series(node, None, None, &PageRequest::default())
            .unwrap()
            .items
            .is_empty()
    );
    // The files themselves hold only their tenant's rows.
    let count = |path: &std::path::Path| -> i64 {
        inspect(path)
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!((count(a.path()), count(b.path())), (2, 2));
    assert_eq!(
        store.tenants_on_disk().unwrap(),
        vec![TenantId(1), TenantId(2)]
    );
}

#[test]
fn records_of_another_scope_are_refused() {
    let (_d, store) = store();
    let p = poller("shared");
    let a = store.tenant(TenantId(1)).unwrap();
    let e = a
        .commit_batch(&p, 1, &[(0, node_down(2, 1, 1))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongScope {
                scope: Scope::Tenant(TenantId(1)),
                record_scope: Scope::Tenant(TenantId(2)),
                seq: 0
            }
        ),
        "{e}"
    );
    let e = a
        .commit_batch(&p, 1, &[(0, peer_status("shared", 1))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongScope {
                record_scope: Scope::System,
                ..
            }
        ),
        "{e}"
    );
    let sys = store.system().unwrap();
    let e = sys
        .commit_batch(&p, 1, &[(0, node_down(1, 1, 1))])
        .unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::WrongScope {
                scope: Scope::System,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(a.record_count().unwrap(), 0);
    assert_eq!(sys.record_count().unwrap(), 0);
    // Nothing was created for tenant 2 by the refused record.
    assert_eq!(store.tenants_on_disk().unwrap(), vec![TenantId(1)]);
}

#[test]
fn a_file_under_another_tenants_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = opha_store::Store::open(dir.path(), Default::default()).unwrap();
        let a = store.tenant(TenantId(1)).unwrap();
        a.commit_batch(&poller("p"), 1, &[(0, node_down(1, 1, 1))])
            .unwrap();
    }
    // An operator copies tenant 1's file over tenant 2's name (WAL checkpointed on close).
    std::fs::copy(
        dir.path().join("tenant-1.sqlite3"),
        dir.path().join("tenant-2.sqlite3"),
    )
    .unwrap();
    let store = opha_store::Store::open(dir.path(), Default::default()).unwrap();
    let e = store.tenant(TenantId(2)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Unusable {
                scope: Scope::Tenant(TenantId(2)),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("belongs to \"tenant:1\""), "{e}");
    assert_eq!(
        store.tenant(TenantId(1)).unwrap().record_count().unwrap(),
        1
    );
}

#[test]
fn peers_and_daemons_live_in_the_system_scope() {
    let (_d, store) = store();
    let sys = store.system().unwrap();
    let p = poller("poller-1");
    sys.commit_batch(
        &p,
        1,
        &[
            (0, peer_status("poller-1", 1_000)),
            (
                1,
                daemon("nmis9d", opha_common::wire::DaemonState::Up, 1_000),
            ),
            (
                2,
                daemon("nmis9d", opha_common::wire::DaemonState::Down, 2_000),
            ),
            // An older heartbeat replayed late does not overwrite the newer one.
            (3, peer_status("poller-1", 3_000)),
            (4, peer_status("poller-1", 2_000)),
        ],
    )
    .unwrap();
    let peers = sys.peer_statuses().unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].time_ms, 3_000);
    let daemons = sys.daemon_health().unwrap();
    assert_eq!(daemons.len(), 1);
    assert_eq!(daemons[0].0, p);
    assert_eq!(daemons[0].1.state, opha_common::wire::DaemonState::Down);
    assert_eq!(sys.path().file_name().unwrap(), "system.sqlite3");
}
