//! The receivers' embedded store: one SQLite database file per tenant.
//!
//! Primaries and mirrors store what pollers stream here, exactly once per
//! (poller, epoch, seq), durably before they acknowledge (issue 4 §3).
//!
//! # Layout
//!
//! A directory holds `tenant-<id>.sqlite3` per tenant and `system.sqlite3` for records that
//! belong to no tenant ([`Record::tenant`] is `None`: peer heartbeats and daemon health).
//! A [`TenantDb`] is a handle on exactly one of these files, and every query is a method of
//! it, so no API reads across tenants: isolation is at the data layer, not a `WHERE`
//! clause. A handle refuses records of another scope ([`StoreError::WrongScope`]), and a file
//! whose recorded scope differs from its name is refused on open.
//!
//! Every file is in WAL mode with `synchronous=FULL` (a commit is on disk when it returns, so
//! an ack sent after it never covers a record that a power cut could take back), a busy
//! timeout, foreign keys on, and `auto_vacuum=INCREMENTAL` so that retention gives space back.
//!
//! # Exactly once
//!
//! Each file keeps, per (poller, epoch), the set of seqs it holds as compacted ranges
//! (`received_ranges`, see [`RangeSet`]). [`TenantDb::commit_batch`] drops every record
//! already in the set, inserts the rest, and rewrites the ranges in the same transaction, so
//! records and dedupe state are both committed or neither. `UNIQUE(poller, epoch, seq)` on the
//! records table is a second line of defence. [`TenantDb::held_ranges`] answers the bus
//! handshake ("what do you hold for me").
//!
//! A poller that sends for several tenants has one seq stream split over several files; the
//! bus asks each file it may write for that poller and takes the union
//! ([`Store::held_ranges`]), which is exact because each record goes to one file only.
//!
//! # Record encoding: the wire frame
//!
//! The `frame` column holds the record's wire frame (`opha_common::wire` frame of the
//! [`Sequenced`] envelope: 10-byte header with protocol version and kind, then postcard),
//! rather than JSON, because it is the exact, canonical byte string the poller sent (a receiver
//! need not re-encode, and equal records have equal bytes), it carries the protocol version so
//! that a later build still knows how to read an old row, and it is 2-3 times smaller than JSON
//! for metrics. Operators reading with the `sqlite3` shell use the copied columns (time, node,
//! kind, severity), which are what they filter on anyway.
//!
//! # Retention and dedupe state
//!
//! Retention ([`TenantDb::apply_retention`]) deletes the oldest records by age and by size in
//! bounded chunks, one short transaction each, so commits interleave. It never deletes dedupe
//! state: a poller may replay anything its log still holds (and a mirror may forward older
//! records still), so the ranges must outlive every replay window, or a replayed record whose
//! row was deleted would be stored a second time. Ranges stay small because they are
//! compacted: one row per gap per (poller, epoch), not per record.
//!
//! # Throughput
//!
//! A durable commit costs an fsync or two, so [`Committer`] groups the batches of many callers
//! into one transaction (group commit) and answers each caller only after that commit returned.

mod committer;
mod db;
mod error;
mod fetch;
mod query;
mod retention;
mod schema;

pub use committer::{Committer, CommitterConfig, Ticket};
pub use db::{CommitOutcome, TenantDb};
pub use error::StoreError;
pub use fetch::StoredRecord;
/// The bus's range set: the store persists exactly the dedupe state the bus handshake sends.
pub use opha_bus::ranges::RangeSet;
pub use query::{
    Cursor, EventFilter, NodeAddr, NodePage, NodeSummary, Page, PageRequest, StoredEvent,
    StoredMetrics, Usage, event_kind_name,
};
pub use retention::{Retention, RetentionReport};
pub use schema::{APPLICATION_ID, SCHEMA_VERSION};

use opha_common::wire::{PollerId, Record, TenantId};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// Which file a handle is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Tenant(TenantId),
    /// Records of no tenant (peer status, daemon health).
    System,
}

impl Scope {
    /// The file name of this scope in the store directory.
    pub fn file_name(self) -> String {
        match self {
            Scope::Tenant(t) => format!("tenant-{}.sqlite3", t.0),
            Scope::System => "system.sqlite3".to_string(),
        }
    }

    /// Whether records of `tenant` (as [`Record::tenant`] says) belong in this scope.
    pub fn accepts(self, tenant: Option<TenantId>) -> bool {
        match self {
            Scope::Tenant(t) => tenant == Some(t),
            Scope::System => tenant.is_none(),
        }
    }

    fn meta_value(self) -> String {
        match self {
            Scope::Tenant(t) => format!("tenant:{}", t.0),
            Scope::System => "system".to_string(),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Tenant(t) => write!(f, "tenant {t}"),
            Scope::System => f.write_str("system"),
        }
    }
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// How long a statement waits for a lock held by another connection before failing.
    pub busy_timeout: Duration,
    /// Retention applied by [`TenantDb::apply_retention`].
    pub retention: Retention,
    /// Most rows one query page may return, whatever the caller asks.
    pub max_page: usize,
    /// Page cache of each connection, KiB. The node index takes inserts all over its
    /// range (thousands of nodes), so a cache that holds its hot pages keeps commits fast.
    pub cache_kib: u32,
    /// WAL pages between automatic checkpoints (SQLite's default is 1,000).
    pub wal_autocheckpoint: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            retention: Retention::default(),
            max_page: 10_000,
            cache_kib: 64 * 1024,
            wal_autocheckpoint: 4_000,
        }
    }
}

/// The store directory: hands out one [`TenantDb`] per tenant (plus the system scope).
///
/// One process owns a directory at a time (an exclusive lock on `store.lock`), because each
/// handle caches the dedupe ranges of its file in memory.
pub struct Store {
    dir: PathBuf,
    config: StoreConfig,
    open: Mutex<HashMap<Scope, TenantDb>>,
    _lock: File,
}

impl Store {
    /// Opens (creating if needed) the store directory. Tenant files are opened lazily by
    /// [`Store::tenant`], so a damaged file affects only its tenant.
    pub fn open(dir: impl AsRef<Path>, config: StoreConfig) -> Result<Store, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        let lock_path = dir.join("store.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io(&lock_path, e))?;
        lock.try_lock().map_err(|e| match e {
            std::fs::TryLockError::WouldBlock => StoreError::Locked { dir: dir.clone() },
            std::fs::TryLockError::Error(e) => StoreError::io(&lock_path, e),
        })?;
        Ok(Store {
            dir,
            config,
            open: Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The database of one tenant, opened (or created) on first use. Nothing else is opened:
    /// a handle reads and writes only that tenant's file.
    pub fn tenant(&self, tenant: TenantId) -> Result<TenantDb, StoreError> {
        self.scope(Scope::Tenant(tenant))
    }

    /// The database of records that belong to no tenant (peer status, daemon health).
    pub fn system(&self) -> Result<TenantDb, StoreError> {
        self.scope(Scope::System)
    }

    /// A handle on `scope`'s file. A failed open is not remembered, so a repaired file is
    /// picked up on the next call.
    pub fn scope(&self, scope: Scope) -> Result<TenantDb, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = open.get(&scope) {
            return Ok(db.clone());
        }
        let db = TenantDb::open(&self.dir.join(scope.file_name()), scope, &self.config)?;
        open.insert(scope, db.clone());
        Ok(db)
    }

    /// The scope a record must be stored in.
    pub fn scope_of(record: &Record) -> Scope {
        record.tenant().map_or(Scope::System, Scope::Tenant)
    }

    /// The union, over the given scopes, of what is held for `poller`, per epoch: the
    /// handshake answer of a receiver for a poller allowed to send for those scopes. Reads
    /// dedupe state only, never records.
    pub fn held_ranges(
        &self,
        poller: &PollerId,
        scopes: &[Scope],
    ) -> Result<Vec<(u64, RangeSet)>, StoreError> {
        let mut all: std::collections::BTreeMap<u64, RangeSet> = Default::default();
        for &s in scopes {
            for (epoch, set) in self.scope(s)?.held_ranges(poller)? {
                let held = all.entry(epoch).or_default();
                for r in set.iter() {
                    held.insert(r);
                }
            }
        }
        Ok(all.into_iter().collect())
    }

    /// Tenants that have a file in the directory (by file name), e.g. for retention sweeps.
    pub fn tenants_on_disk(&self) -> Result<Vec<TenantId>, StoreError> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("tenant-"))
                .and_then(|n| n.strip_suffix(".sqlite3"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            out.push(TenantId(id));
        }
        out.sort();
        Ok(out)
    }
}
