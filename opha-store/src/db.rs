//! One database file: open and migrate, commit batches exactly once.

use crate::RangeSet;
use crate::error::StoreError;
use crate::query::event_kind_name;
use crate::schema::{APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION};
use crate::{Scope, StoreConfig};
use opha_common::wire::{
    DEFAULT_MAX_PAYLOAD, FrameHeader, HEADER_LEN, NodeRef, PROTOCOL_VERSION, PollerId, Record,
    Subject, WireError,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// What a commit did with one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOutcome {
    /// Records newly stored by this batch.
    pub stored: u64,
    /// Records of the batch that were already held (or repeated within the group) and dropped.
    pub duplicates: u64,
    /// The last seq of the lowest held range of this (poller, epoch) after the commit: every
    /// seq from that range's start through this one is durable here. `None` if nothing is
    /// held. The cumulative ack when the range starts at the epoch's first seq.
    pub durable_through: Option<u64>,
    /// Everything held for this (poller, epoch) after the commit (for acks of out-of-order
    /// data).
    pub held: RangeSet,
}

/// One caller's batch inside a group commit.
pub(crate) struct Batch<'a> {
    pub poller: &'a PollerId,
    pub epoch: u64,
    pub records: &'a [(u64, Record)],
}

type RangeKey = (PollerId, u64);

struct Writer {
    conn: Connection,
    /// Committed dedupe state of the (poller, epoch)s touched since open; loaded on first use.
    ranges: HashMap<RangeKey, RangeSet>,
}

struct Inner {
    scope: Scope,
    path: PathBuf,
    config: StoreConfig,
    // Declared (so dropped) before the writer: the last connection to close checkpoints the
    // WAL into the main file and removes it, which only a read-write connection can do.
    reader: Mutex<Connection>,
    writer: Mutex<Writer>,
}

/// A handle on one scope's database file (one tenant, or the system scope). Cheap to clone;
/// clones share the connections. Every read and write goes to this file only.
#[derive(Clone)]
pub struct TenantDb {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TenantDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantDb")
            .field("scope", &self.inner.scope)
            .field("path", &self.inner.path)
            .finish()
    }
}

/// Serializes exactly like `Sequenced` (same fields, same order) without cloning the record.
#[derive(Serialize)]
struct SequencedRef<'a> {
    poller: &'a PollerId,
    epoch: u64,
    seq: u64,
    record: &'a Record,
}

/// The wire frame of `Sequenced { poller, epoch, seq, record }`, byte for byte what
/// `encode_frame` writes.
pub(crate) fn encode_record(
    poller: &PollerId,
    epoch: u64,
    seq: u64,
    record: &Record,
) -> Result<Vec<u8>, WireError> {
    let mut out = vec![0u8; HEADER_LEN];
    let value = SequencedRef {
        poller,
        epoch,
        seq,
        record,
    };
    let mut out = postcard::to_extend(&value, std::mem::take(&mut out))?;
    let len = out.len() - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l <= DEFAULT_MAX_PAYLOAD)
        .ok_or(WireError::TooLong {
            len,
            max: DEFAULT_MAX_PAYLOAD,
        })?;
    let header = FrameHeader {
        version: PROTOCOL_VERSION,
        kind: record.kind(),
        len: len32,
    };
    out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(out)
}

pub(crate) fn to_i64(what: &'static str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::OutOfRange { what, value: v })
}

/// Times are clamped rather than refused: a far-future timestamp is odd but storable.
pub(crate) fn time_i64(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn node_of(record: &Record) -> Option<&NodeRef> {
    match record {
        Record::NodeMetrics(m) => Some(&m.node),
        Record::Event(e) => match &e.subject {
            Subject::Node(n) => Some(n),
            Subject::Peer(_) => None,
        },
        Record::ServiceState(s) => Some(&s.node),
        Record::DaemonHealth(_) | Record::PeerStatus(_) => None,
    }
}

/// True for errors that mean "this file is not a (healthy) SQLite database".
fn is_unusable(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

const INSERT_RECORD: &str = "INSERT OR IGNORE INTO records
    (poller, epoch, seq, kind, time_ms, vlan, addr, node_name, event_kind, severity, frame)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

const UPSERT_SERVICE: &str = "INSERT INTO services_latest
    (service, vlan, addr, state, checked_ms, frame) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
    ON CONFLICT (service, vlan, addr) DO UPDATE SET
        state = excluded.state, checked_ms = excluded.checked_ms, frame = excluded.frame
    WHERE excluded.checked_ms >= services_latest.checked_ms";

const UPSERT_PEER: &str = "INSERT INTO peer_status (peer, time_ms, frame) VALUES (?1, ?2, ?3)
    ON CONFLICT (peer) DO UPDATE SET time_ms = excluded.time_ms, frame = excluded.frame
    WHERE excluded.time_ms >= peer_status.time_ms";

const UPSERT_DAEMON: &str = "INSERT INTO daemon_health
    (peer, daemon, state, checked_ms, frame) VALUES (?1, ?2, ?3, ?4, ?5)
    ON CONFLICT (peer, daemon) DO UPDATE SET
        state = excluded.state, checked_ms = excluded.checked_ms, frame = excluded.frame
    WHERE excluded.checked_ms >= daemon_health.checked_ms";

impl TenantDb {
    pub(crate) fn open(
        path: &Path,
        scope: Scope,
        config: &StoreConfig,
    ) -> Result<Self, StoreError> {
        let unusable = |reason: String| StoreError::Unusable {
            scope,
            path: path.to_path_buf(),
            reason,
        };
        let sql = |context: &'static str| {
            move |e: rusqlite::Error| {
                if is_unusable(&e) {
                    StoreError::Unusable {
                        scope,
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                } else {
                    StoreError::sqlite(scope, context, e)
                }
            }
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open"))?;
        conn.busy_timeout(config.busy_timeout)
            .map_err(sql("busy timeout"))?;
        // The first read of the header: garbage fails here with "file is not a database".
        let app: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .map_err(sql("read application_id"))?;
        let version: i32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("read user_version"))?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(sql("read schema"))?;
        let fresh = app == 0 && version == 0 && tables == 0;
        if !fresh && app != APPLICATION_ID {
            return Err(unusable(format!(
                "not an opha store (application_id {app:#x}, {tables} schema objects)"
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(unusable(format!(
                "schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        if fresh {
            // Only settable before the first table exists.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(sql("set auto_vacuum"))?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(sql("set journal_mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(unusable(format!("journal_mode is {mode}, WAL refused")));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("set synchronous"))?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql("set foreign_keys"))?;
        conn.pragma_update(None, "cache_size", -i64::from(config.cache_kib))
            .map_err(sql("set cache_size"))?;
        conn.pragma_update(None, "wal_autocheckpoint", config.wal_autocheckpoint)
            .map_err(sql("set wal_autocheckpoint"))?;
        conn.set_prepared_statement_cache_capacity(32);
        migrate(&conn, scope, version).map_err(sql("migrate"))?;
        let owner: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'scope'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql("read scope"))?;
        if owner.as_deref() != Some(scope.meta_value().as_str()) {
            return Err(unusable(format!(
                "the file belongs to {:?}, not to {scope}",
                owner.unwrap_or_default()
            )));
        }
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql("open reader"))?;
        reader
            .busy_timeout(config.busy_timeout)
            .map_err(sql("busy timeout"))?;
        reader
            .pragma_update(None, "cache_size", -i64::from(config.cache_kib))
            .map_err(sql("set cache_size"))?;
        reader.set_prepared_statement_cache_capacity(32);
        Ok(TenantDb {
            inner: Arc::new(Inner {
                scope,
                path: path.to_path_buf(),
                config: config.clone(),
                reader: Mutex::new(reader),
                writer: Mutex::new(Writer {
                    conn,
                    ranges: HashMap::new(),
                }),
            }),
        })
    }

    pub fn scope(&self) -> Scope {
        self.inner.scope
    }

    /// The database file (for operators and tests; open it read-only).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub(crate) fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    pub(crate) fn reader(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (SQLite rolls back any
        // open statement), so poisoning is ignored.
        self.inner.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the writer connection, holding the writer lock (so no commit runs
    /// meanwhile).
    pub(crate) fn with_writer<R>(&self, f: impl FnOnce(&mut Connection) -> R) -> R {
        let mut w = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut w.conn)
    }

    pub(crate) fn sql_err(&self, context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
        let scope = self.inner.scope;
        move |e| StoreError::sqlite(scope, context, e)
    }

    /// Stores the records of `poller`'s `epoch` that are not held yet, updates the dedupe
    /// ranges, and commits, all in one durable transaction. Returns after the commit.
    pub fn commit_batch(
        &self,
        poller: &PollerId,
        epoch: u64,
        records: &[(u64, Record)],
    ) -> Result<CommitOutcome, StoreError> {
        let batch = Batch {
            poller,
            epoch,
            records,
        };
        self.commit_group(std::slice::from_ref(&batch))
            .pop()
            .unwrap_or(Err(StoreError::CommitterStopped))
    }

    /// Commits several callers' batches in one transaction. Each batch is checked and
    /// written under its own savepoint, so a bad batch fails alone; a failed commit fails all.
    pub(crate) fn commit_group(
        &self,
        batches: &[Batch<'_>],
    ) -> Vec<Result<CommitOutcome, StoreError>> {
        let scope = self.inner.scope;
        let mut results: Vec<Option<Result<(u64, u64), StoreError>>> = batches
            .iter()
            .map(|b| validate(scope, b).err().map(Err))
            .collect();
        let mut guard = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let writer = &mut *guard;
        let mut working: HashMap<RangeKey, RangeSet> = HashMap::new();
        let sql = self.sql_err("commit");
        let outcome = (|| -> Result<(), StoreError> {
            let mut tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            for (b, result) in batches.iter().zip(results.iter_mut()) {
                if result.is_some() {
                    continue;
                }
                let key = (b.poller.clone(), b.epoch);
                if !working.contains_key(&key) {
                    let set = match writer.ranges.get(&key) {
                        Some(s) => s.clone(),
                        None => load_ranges(&tx, b.poller, b.epoch).map_err(&sql)?,
                    };
                    working.insert(key.clone(), set);
                }
                let Some(set) = working.get_mut(&key) else {
                    continue;
                };
                let before = set.clone();
                let sp = tx.savepoint().map_err(&sql)?;
                match write_batch(&sp, scope, b, set) {
                    Ok(counts) => {
                        sp.commit().map_err(&sql)?;
                        *result = Some(Ok(counts));
                    }
                    Err(e) => {
                        // Dropping the savepoint rolls the batch back; so does its ranges.
                        drop(sp);
                        *set = before;
                        *result = Some(Err(e));
                    }
                }
            }
            let now = time_i64(now_ms());
            for ((poller, epoch), set) in &working {
                if writer.ranges.get(&(poller.clone(), *epoch)) == Some(set) {
                    continue;
                }
                store_ranges(&tx, poller, *epoch, set, now).map_err(&sql)?;
            }
            tx.commit().map_err(&sql)?;
            Ok(())
        })();
        match outcome {
            Ok(()) => {
                let out = batches
                    .iter()
                    .zip(results)
                    .map(|(b, r)| {
                        let (stored, duplicates) =
                            r.unwrap_or(Err(StoreError::CommitterStopped))?;
                        let held = working
                            .get(&(b.poller.clone(), b.epoch))
                            .cloned()
                            .unwrap_or_default();
                        let durable_through = held.iter().next().map(|r| r.end - 1);
                        Ok(CommitOutcome {
                            stored,
                            duplicates,
                            durable_through,
                            held,
                        })
                    })
                    .collect();
                writer.ranges.extend(working);
                out
            }
            Err(e) => {
                // Nothing was committed: every batch that got this far fails with the cause;
                // batches refused on their own keep their own reason.
                results
                    .into_iter()
                    .map(|r| match r {
                        Some(Err(own)) => Err(own),
                        _ => Err(e.clone()),
                    })
                    .collect()
            }
        }
    }

    /// What this file holds for `poller`, per epoch (ascending): the handshake answer.
    pub fn held_ranges(&self, poller: &PollerId) -> Result<Vec<(u64, RangeSet)>, StoreError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(
                "SELECT epoch, start_seq, end_seq FROM received_ranges
                 WHERE poller = ?1 ORDER BY epoch, start_seq",
            )
            .map_err(self.sql_err("held ranges"))?;
        let rows = stmt
            .query_map([poller.as_str()], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .map_err(self.sql_err("held ranges"))?;
        let mut out: Vec<(u64, RangeSet)> = Vec::new();
        for row in rows {
            let (epoch, start, end) = row.map_err(self.sql_err("held ranges"))?;
            // Written by this crate from non-negative values; a negative one is damage.
            let (epoch, start, end) = (epoch.max(0) as u64, start.max(0) as u64, end.max(0) as u64);
            match out.last_mut() {
                Some((e, set)) if *e == epoch => {
                    set.insert(start..end);
                }
                _ => {
                    let mut set = RangeSet::new();
                    set.insert(start..end);
                    out.push((epoch, set));
                }
            }
        }
        Ok(out)
    }

    /// Number of stored records (all kinds): tests, usage figures.
    pub fn record_count(&self) -> Result<u64, StoreError> {
        let conn = self.reader();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
            .map_err(self.sql_err("count"))?;
        Ok(n.max(0) as u64)
    }
}

fn validate(scope: Scope, b: &Batch<'_>) -> Result<(), StoreError> {
    to_i64("epoch", b.epoch)?;
    for (seq, record) in b.records {
        to_i64("seq", *seq)?;
        if !scope.accepts(record.tenant()) {
            return Err(StoreError::WrongScope {
                scope,
                record_scope: crate::Store::scope_of(record),
                seq: *seq,
            });
        }
    }
    Ok(())
}

fn migrate(conn: &Connection, scope: Scope, from: i32) -> rusqlite::Result<()> {
    for v in from..SCHEMA_VERSION {
        let tx = conn.unchecked_transaction()?;
        if let Some(sql) = usize::try_from(v).ok().and_then(|i| MIGRATIONS.get(i)) {
            tx.execute_batch(sql)?;
        }
        if v == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('scope', ?1)",
                [scope.meta_value()],
            )?;
        }
        tx.pragma_update(None, "user_version", v + 1)?;
        tx.commit()?;
    }
    Ok(())
}

fn load_ranges(conn: &Connection, poller: &PollerId, epoch: u64) -> rusqlite::Result<RangeSet> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_seq, end_seq FROM received_ranges WHERE poller = ?1 AND epoch = ?2",
    )?;
    let rows = stmt.query_map(params![poller.as_str(), time_i64(epoch)], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut set = RangeSet::new();
    for row in rows {
        let (s, e) = row?;
        set.insert(s.max(0) as u64..e.max(0) as u64);
    }
    Ok(set)
}

fn store_ranges(
    conn: &Connection,
    poller: &PollerId,
    epoch: u64,
    set: &RangeSet,
    now: i64,
) -> rusqlite::Result<()> {
    let epoch = time_i64(epoch);
    conn.prepare_cached("DELETE FROM received_ranges WHERE poller = ?1 AND epoch = ?2")?
        .execute(params![poller.as_str(), epoch])?;
    let mut ins = conn.prepare_cached(
        "INSERT INTO received_ranges (poller, epoch, start_seq, end_seq, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for r in set.iter() {
        // Seqs were checked to be <= i64::MAX, so end <= i64::MAX + 1; clamp that one case.
        ins.execute(params![
            poller.as_str(),
            epoch,
            time_i64(r.start),
            time_i64(r.end),
            now
        ])?;
    }
    Ok(())
}

/// Writes the new records of one batch; returns (stored, duplicates).
fn write_batch(
    conn: &Connection,
    scope: Scope,
    b: &Batch<'_>,
    held: &mut RangeSet,
) -> Result<(u64, u64), StoreError> {
    let scope_err = |context| move |e| StoreError::sqlite(scope, context, e);
    let mut stored = 0;
    let mut duplicates = 0;
    let mut insert = conn
        .prepare_cached(INSERT_RECORD)
        .map_err(scope_err("prepare insert"))?;
    for (seq, record) in b.records {
        let seq = *seq;
        if held.contains(seq) {
            duplicates += 1;
            continue;
        }
        let frame = encode_record(b.poller, b.epoch, seq, record)
            .map_err(|source| StoreError::Encode { seq, source })?;
        // Latest-state rows keep their own copy of the frame.
        let latest = matches!(
            record,
            Record::ServiceState(_) | Record::PeerStatus(_) | Record::DaemonHealth(_)
        )
        .then(|| frame.clone());
        let node = node_of(record);
        let (event_kind, severity) = match record {
            Record::Event(e) => (Some(event_kind_name(&e.kind)), Some(e.severity as i64)),
            _ => None.unzip(),
        };
        let changed = insert
            .execute(params![
                b.poller.as_str(),
                time_i64(b.epoch),
                time_i64(seq),
                record.kind().as_u16(),
                time_i64(record.time_ms()),
                node.map(|n| n.vlan),
                node.map(|n| n.addr.to_string()),
                node.and_then(|n| n.name.as_deref()),
                event_kind,
                severity,
                frame,
            ])
            .map_err(scope_err("insert record"))?;
        held.insert_one(seq);
        if changed == 0 {
            // The ranges said "new" but the row exists: the UNIQUE constraint caught it.
            log::warn!(
                "record {}/{}/{} already stored although not in the received ranges",
                b.poller,
                b.epoch,
                seq
            );
            duplicates += 1;
            continue;
        }
        stored += 1;
        match record {
            Record::ServiceState(s) => {
                conn.prepare_cached(UPSERT_SERVICE)
                    .and_then(|mut st| {
                        st.execute(params![
                            s.service,
                            s.node.vlan,
                            s.node.addr.to_string(),
                            s.state as i64,
                            time_i64(s.checked_ms),
                            latest,
                        ])
                    })
                    .map_err(scope_err("upsert service"))?;
            }
            Record::PeerStatus(p) => {
                conn.prepare_cached(UPSERT_PEER)
                    .and_then(|mut st| {
                        st.execute(params![p.peer.as_str(), time_i64(p.time_ms), latest])
                    })
                    .map_err(scope_err("upsert peer status"))?;
            }
            Record::DaemonHealth(d) => {
                conn.prepare_cached(UPSERT_DAEMON)
                    .and_then(|mut st| {
                        st.execute(params![
                            b.poller.as_str(),
                            d.daemon,
                            d.state as i64,
                            time_i64(d.checked_ms),
                            latest
                        ])
                    })
                    .map_err(scope_err("upsert daemon health"))?;
            }
            Record::NodeMetrics(_) | Record::Event(_) => {}
        }
    }
    Ok((stored, duplicates))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opha_common::wire::{Sequenced, decode_frame, encode_frame, strategies};
    use proptest::prelude::*;

    proptest! {
        /// The stored frame is exactly the wire frame of the Sequenced envelope.
        #[test]
        fn stored_frame_is_the_wire_frame(s in strategies::sequenced()) {
            let ours = encode_record(&s.poller, s.epoch, s.seq, &s.record);
            let wire = encode_frame(&s);
            match (ours, wire) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(&a, &b);
                    prop_assert_eq!(decode_frame::<Sequenced>(&a).ok(), Some(s));
                }
                (Err(_), Err(_)) => {}
                (a, b) => prop_assert!(false, "encoders disagree: {:?} vs {:?}", a.is_ok(), b.is_ok()),
            }
        }
    }
}
