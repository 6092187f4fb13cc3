//! Retention: delete the oldest records by age and by size, in bounded chunks.
//!
//! Rule: retention deletes rows of `records` only. Dedupe state (`received_ranges`) must outlive
//! the replay window of every poller (and of any mirror that could forward old records), or a
//! replay of a record whose row was deleted would store it again; it is kept, compacted to one
//! row per gap. Latest-state tables (services, peers, daemons) are current state, not history,
//! and are kept too.

use crate::db::{TenantDb, now_ms, time_i64};
use crate::error::StoreError;
use opha_common::wire::FrameKind;
use rusqlite::{Connection, OptionalExtension, params};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Delete records whose time is older than this; `None` keeps them by age.
    pub max_age_ms: Option<u64>,
    /// Delete the oldest records while the file's used pages exceed this; `None`: no cap.
    pub max_bytes: Option<u64>,
    /// Rows per delete transaction, so a sweep never holds the writer for long.
    pub chunk_rows: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_ms: Some(30 * 24 * 3600 * 1000),
            max_bytes: None,
            chunk_rows: 5_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    pub deleted_by_age: u64,
    pub deleted_by_size: u64,
    /// Bytes in used pages after the sweep (the file may be larger until the free pages
    /// are handed back, which the sweep also does).
    pub used_bytes: u64,
}

impl TenantDb {
    /// Applies the configured retention as of now.
    pub fn apply_retention(&self) -> Result<RetentionReport, StoreError> {
        let r = self.config().retention.clone();
        self.apply_retention_at(&r, now_ms())
    }

    /// Applies `retention` as of `now_ms`: first by age, then by size (oldest first).
    pub fn apply_retention_at(
        &self,
        retention: &Retention,
        now_ms: u64,
    ) -> Result<RetentionReport, StoreError> {
        let chunk = i64::try_from(retention.chunk_rows.max(1)).unwrap_or(i64::MAX);
        let err = self.sql_err("retention");
        let mut report = RetentionReport::default();
        if let Some(age) = retention.max_age_ms {
            let cutoff = time_i64(now_ms.saturating_sub(age));
            for kind in FrameKind::ALL {
                loop {
                    // One chunk per transaction: the writer lock is released in between, so
                    // commits (acks) are delayed by one chunk at most.
                    let n = self
                        .with_writer(|c| {
                            c.prepare_cached(
                                "DELETE FROM records WHERE id IN (SELECT id FROM records
                                 INDEXED BY records_kind_time
                                 WHERE kind = ?1 AND time_ms < ?2 ORDER BY time_ms LIMIT ?3)",
                            )?
                            .execute(params![
                                kind.as_u16(),
                                cutoff,
                                chunk
                            ])
                        })
                        .map_err(&err)?;
                    report.deleted_by_age += n as u64;
                    if (n as i64) < chunk {
                        break;
                    }
                }
            }
        }
        if let Some(max) = retention.max_bytes {
            loop {
                let used = self.with_writer(|c| used_bytes(c)).map_err(&err)?;
                if used <= max {
                    break;
                }
                let n = self
                    .with_writer(|c| delete_oldest_chunk(c, chunk))
                    .map_err(&err)?;
                if n == 0 {
                    // Only dedupe and latest state left: nothing more retention may delete.
                    break;
                }
                report.deleted_by_size += n as u64;
            }
        }
        // Hand freed pages back to the file system (auto_vacuum=INCREMENTAL).
        self.with_writer(|c| c.execute_batch("PRAGMA incremental_vacuum"))
            .map_err(&err)?;
        report.used_bytes = self.with_writer(|c| used_bytes(c)).map_err(&err)?;
        Ok(report)
    }
}

fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
    let free: i64 = c.pragma_query_value(None, "freelist_count", |r| r.get(0))?;
    let size: i64 = c.pragma_query_value(None, "page_size", |r| r.get(0))?;
    Ok((pages - free).max(0) as u64 * size.max(0) as u64)
}

/// Deletes up to `chunk` of the oldest records, taken from the kind whose oldest record is
/// the oldest (each kind's (kind, time) index gives its oldest in one step).
fn delete_oldest_chunk(c: &Connection, chunk: i64) -> rusqlite::Result<usize> {
    let mut oldest: Option<(i64, u16)> = None;
    for kind in FrameKind::ALL {
        let t: Option<i64> = c
            .prepare_cached(
                "SELECT time_ms FROM records INDEXED BY records_kind_time
                 WHERE kind = ?1 ORDER BY time_ms LIMIT 1",
            )?
            .query_row([kind.as_u16()], |r| r.get(0))
            .optional()?;
        if let Some(t) = t
            && oldest.is_none_or(|(o, _)| t < o)
        {
            oldest = Some((t, kind.as_u16()));
        }
    }
    let Some((_, kind)) = oldest else {
        return Ok(0);
    };
    c.prepare_cached(
        "DELETE FROM records WHERE id IN (SELECT id FROM records INDEXED BY records_kind_time
         WHERE kind = ?1 ORDER BY time_ms LIMIT ?2)",
    )?
    .execute(params![kind, chunk])
}
