//! A malformed file in the directory: a clear error for that tenant, the others keep working.

mod common;

use common::*;
use opha_common::wire::TenantId;
use opha_store::{Scope, Store, StoreConfig, StoreError};

#[test]
fn garbage_file_fails_only_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.path().join("tenant-3.sqlite3"), &junk).unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let e = store.tenant(TenantId(3)).unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Unusable {
                scope: Scope::Tenant(TenantId(3)),
                ..
            }
        ),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("tenant-3.sqlite3") && msg.contains("not a database"),
        "{msg}"
    );
    // The file is left as it was for the operator to inspect.
    assert_eq!(
        std::fs::read(dir.path().join("tenant-3.sqlite3")).unwrap(),
        junk
    );
    // Other tenants are unaffected, before and after.
    let t4 = store.tenant(TenantId(4)).unwrap();
    let o = t4
        .commit_batch(&poller("p"), 1, &[(0, node_down(4, 1, 1))])
        .unwrap();
    assert_eq!(o.stored, 1);
    assert!(store.tenant(TenantId(3)).is_err(), "still refused on retry");
    assert_eq!(t4.record_count().unwrap(), 1);
}

#[test]
fn foreign_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = rusqlite::Connection::open(dir.path().join("tenant-9.sqlite3")).unwrap();
        c.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('hello');")
            .unwrap();
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let e = store.tenant(TenantId(9)).unwrap_err();
    assert!(e.to_string().contains("not an opha store"), "{e}");
    // Nothing was written into it.
    let c = inspect(&dir.path().join("tenant-9.sqlite3"));
    let tables: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);
    assert!(store.tenant(TenantId(10)).is_ok());
}

#[test]
fn truncated_store_file_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let t = store.tenant(TenantId(1)).unwrap();
        let records: Vec<_> = (0..2000)
            .map(|s| (s, metrics(1, (s % 100) as u16, s)))
            .collect();
        t.commit_batch(&poller("p"), 1, &records).unwrap();
    }
    // Keep the header page, cut the rest: a valid-looking database whose pages are gone.
    let path = dir.path().join("tenant-1.sqlite3");
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 8192, "file has more than a few pages: {len}");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(4096).unwrap();
    drop(f);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let result = store.tenant(TenantId(1)).and_then(|t| {
        t.events(&Default::default(), &Default::default())?;
        t.record_count()
    });
    let e = result.unwrap_err();
    assert!(
        matches!(e, StoreError::Unusable { .. } | StoreError::Sqlite { .. }),
        "{e}"
    );
    assert!(store.tenant(TenantId(2)).is_ok());
}

#[test]
fn second_process_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path(), StoreConfig::default()).unwrap();
    // File locks are per open file description, so a second open in-process collides too.
    let e = Store::open(dir.path(), StoreConfig::default())
        .err()
        .expect("locked");
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
}
