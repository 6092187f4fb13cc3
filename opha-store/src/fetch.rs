//! Stored records by (poller, epoch, seq ranges), for serving a gap fetch to another receiver
//! (`opha_bus::fetch`): the records as the bus carries them, i.e. the `Record` payload the
//! poller's replay log held, not the stored frame.
//!
//! The `records` table keeps the wire frame of the `Sequenced` envelope; the payload is the
//! postcard encoding of its `record`, which is canonical, so re-encoding the decoded record
//! gives back the poller's bytes. A row that does not decode, or whose frame names another
//! (poller, epoch, seq) than its columns, is skipped and logged: it is then simply not
//! served (the fetching side counts it as unavailable from this peer).
//!
//! Dedupe ranges outlive retention, so a range held here may have lost its rows: only rows
//! actually present are returned.

use crate::db::{TenantDb, time_i64};
use crate::error::StoreError;
use crate::{RangeSet, Scope, Store};
use opha_common::wire::{PollerId, Sequenced, decode_frame};
use rusqlite::params;

/// One stored record: its sequence number and its payload as the poller's log held it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl TenantDb {
    /// The records of `poller`'s `epoch` stored in this file with a seq in `ranges`, in seq
    /// order, at most `limit` (and at most the store's page bound).
    pub fn records_in(
        &self,
        poller: &PollerId,
        epoch: u64,
        ranges: &RangeSet,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let limit = limit.min(self.config().max_page);
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let conn = self.reader();
        let err = self.sql_err("records in ranges");
        // The UNIQUE (poller, epoch, seq) index answers each range in order.
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, seq, frame FROM records
                 WHERE poller = ?1 AND epoch = ?2 AND seq >= ?3 AND seq < ?4
                 ORDER BY seq LIMIT ?5",
            )
            .map_err(&err)?;
        for r in ranges.iter() {
            let left = limit - out.len();
            if left == 0 {
                break;
            }
            let rows = stmt
                .query_map(
                    params![
                        poller.as_str(),
                        time_i64(epoch),
                        time_i64(r.start),
                        time_i64(r.end),
                        i64::try_from(left).unwrap_or(i64::MAX)
                    ],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, Vec<u8>>(2)?,
                        ))
                    },
                )
                .map_err(&err)?;
            for row in rows {
                let (id, seq, frame) = row.map_err(&err)?;
                let seq = seq.max(0) as u64;
                match payload_of(&frame, poller, epoch, seq) {
                    Some(payload) => out.push(StoredRecord { seq, payload }),
                    None => log::warn!(
                        "{} database: row {id} ({poller}/{epoch}/{seq}) does not decode \
                         to that record; not served",
                        self.scope()
                    ),
                }
            }
        }
        Ok(out)
    }
}

/// The bus payload of a stored frame, if it decodes and is the record its columns name.
fn payload_of(frame: &[u8], poller: &PollerId, epoch: u64, seq: u64) -> Option<Vec<u8>> {
    let s = decode_frame::<Sequenced>(frame).ok()?;
    if &s.poller != poller || s.epoch != epoch || s.seq != seq {
        return None;
    }
    postcard::to_allocvec(&s.record).ok()
}

impl Store {
    /// [`TenantDb::records_in`] over several scopes (the files `poller` may write, as for
    /// [`Store::held_ranges`]), merged in seq order, at most `limit`. A record is in one file
    /// only, so the merge has no duplicates.
    pub fn records_in(
        &self,
        poller: &PollerId,
        epoch: u64,
        ranges: &RangeSet,
        scopes: &[Scope],
        limit: usize,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        let mut all = Vec::new();
        for &s in scopes {
            all.extend(self.scope(s)?.records_in(poller, epoch, ranges, limit)?);
        }
        // Each scope's list is sorted and the first `limit` of the union are among the first
        // `limit` of each.
        all.sort_by_key(|r| r.seq);
        all.dedup_by_key(|r| r.seq);
        all.truncate(limit.min(self.config().max_page));
        Ok(all)
    }
}
