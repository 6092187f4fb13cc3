//! Reads of one scope's file: events with filters and keyset paging, metrics series, latest
//! states.
//!
//! Paging is by keyset, not offset: a page ends with a [`Cursor`] (time, row id) and the next
//! page starts strictly after it, so rows stored meanwhile never shift or repeat a page, and
//! page N costs the same as page 1. Each query names its index (`INDEXED BY`), so its cost
//! does not depend on the planner's guesses over 10 million rows.

use crate::db::{TenantDb, time_i64};
use crate::error::StoreError;
use opha_common::wire::{
    DaemonHealth, Event, EventKind, FrameKind, NodeMetrics, NodeRef, PeerId, PeerStatus, PollerId,
    Record, Sequenced, ServiceState, Severity, WireError, decode_frame,
};
use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// A node as queries select it: VLAN and address (the name is not part of the identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddr {
    pub vlan: u16,
    pub addr: IpAddr,
}

impl From<&NodeRef> for NodeAddr {
    fn from(n: &NodeRef) -> Self {
        Self {
            vlan: n.vlan,
            addr: n.addr,
        }
    }
}

/// Filters of the events query; `None` means "any".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub node: Option<NodeAddr>,
    /// An [`EventKind`] name as [`event_kind_name`] spells it, e.g. `"node_down"`.
    pub kind: Option<String>,
    /// At least this severe.
    pub min_severity: Option<Severity>,
    /// Inclusive, unix milliseconds.
    pub from_ms: Option<u64>,
    /// Exclusive, unix milliseconds.
    pub to_ms: Option<u64>,
}

/// Where a page ends: the (time, row id) of its last row. Opaque to API clients as
/// `<time_ms>.<id>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cursor {
    pub time_ms: u64,
    pub id: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.time_ms, self.id)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::BadCursor(s.chars().take(64).collect());
        let (t, id) = s.split_once('.').ok_or_else(bad)?;
        Ok(Cursor {
            time_ms: t.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// At most this many rows (capped by `StoreConfig::max_page`; at least 1).
    pub limit: usize,
    /// Continue after this cursor (the `next` of the previous page).
    pub after: Option<Cursor>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: 100,
            after: None,
        }
    }
}

impl PageRequest {
    pub fn first(limit: usize) -> Self {
        Self { limit, after: None }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// `Some` when more rows may follow: pass it as [`PageRequest::after`].
    pub next: Option<Cursor>,
}

/// An event as stored, with its place in its poller's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub cursor: Cursor,
    pub poller: PollerId,
    pub epoch: u64,
    pub seq: u64,
    pub event: Event,
}

/// The stored (and filterable) name of an event kind: the variant in snake_case, as the JSON
/// encoding spells it.
pub fn event_kind_name(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::NodeDown => "node_down",
        EventKind::NodeUp => "node_up",
        EventKind::SnmpDown => "snmp_down",
        EventKind::SnmpUp => "snmp_up",
        EventKind::ServicePortDown { .. } => "service_port_down",
        EventKind::ServicePortUp { .. } => "service_port_up",
        EventKind::RttAboveThreshold { .. } => "rtt_above_threshold",
        EventKind::RttBelowThreshold { .. } => "rtt_below_threshold",
        EventKind::LossAboveThreshold { .. } => "loss_above_threshold",
        EventKind::LossBelowThreshold { .. } => "loss_below_threshold",
        EventKind::Trap(_) => "trap",
        EventKind::Syslog(_) => "syslog",
        EventKind::External { .. } => "external",
        EventKind::Undecodable { .. } => "undecodable",
        EventKind::DaemonDown { .. } => "daemon_down",
        EventKind::DaemonUp { .. } => "daemon_up",
        EventKind::ReplayLogUsageHigh { .. } => "replay_log_usage_high",
        EventKind::ReplayLogUsageNormal { .. } => "replay_log_usage_normal",
        EventKind::ReplayLogThinning { .. } => "replay_log_thinning",
        EventKind::ReplayLogBlocked => "replay_log_blocked",
        EventKind::ReplayLogUnblocked => "replay_log_unblocked",
        EventKind::ReplayLogRecovered { .. } => "replay_log_recovered",
    }
}

/// One row read back: row id, time, frame.
type Row = (i64, i64, Vec<u8>);

/// How severity is constrained in one SQL query.
#[derive(Clone, Copy)]
enum SevCond {
    Any,
    AtLeast(Severity),
    Exactly(Severity),
}

impl TenantDb {
    /// Events matching `filter`, newest first, one page.
    pub fn events(
        &self,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> Result<Page<StoredEvent>, StoreError> {
        let limit = page.limit.clamp(1, self.config().max_page.max(1));
        let conn = self.reader();
        let rows = match filter.min_severity {
            // No narrower index applies: walk each qualifying severity's (severity, time)
            // index newest first and merge, instead of sorting every match in the range.
            Some(min) if filter.node.is_none() && filter.kind.is_none() => {
                let mut all = Vec::new();
                for s in Severity::ALL.into_iter().filter(|s| *s >= min) {
                    all.extend(self.event_rows(
                        &conn,
                        filter,
                        SevCond::Exactly(s),
                        page.after,
                        limit + 1,
                    )?);
                }
                all.sort_by_key(|r| std::cmp::Reverse((r.1, r.0)));
                all.truncate(limit + 1);
                all
            }
            Some(min) => {
                self.event_rows(&conn, filter, SevCond::AtLeast(min), page.after, limit + 1)?
            }
            None => self.event_rows(&conn, filter, SevCond::Any, page.after, limit + 1)?,
        };
        drop(conn);
        let more = rows.len() > limit;
        let mut items = Vec::with_capacity(limit.min(rows.len()));
        for (id, time, frame) in rows.into_iter().take(limit) {
            let s = self.decode_row(id, &frame)?;
            let Record::Event(event) = s.record else {
                return Err(self.corrupt(id, s.record.kind()));
            };
            items.push(StoredEvent {
                cursor: Cursor {
                    time_ms: time.max(0) as u64,
                    id,
                },
                poller: s.poller,
                epoch: s.epoch,
                seq: s.seq,
                event,
            });
        }
        let next = more.then(|| items.last().map(|e| e.cursor)).flatten();
        Ok(Page { items, next })
    }

    fn event_rows(
        &self,
        conn: &Connection,
        filter: &EventFilter,
        sev: SevCond,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<Row>, StoreError> {
        let index = if filter.node.is_some() {
            "records_node_time"
        } else if filter.kind.is_some() {
            "records_event_kind_time"
        } else if matches!(sev, SevCond::Exactly(_)) {
            "records_severity_time"
        } else {
            "records_kind_time"
        };
        let mut sql = format!(
            "SELECT id, time_ms, frame FROM records INDEXED BY {index} WHERE kind = {}",
            FrameKind::Event.as_u16()
        );
        let mut args: Vec<Value> = Vec::new();
        if let Some(n) = &filter.node {
            sql.push_str(" AND vlan = ? AND addr = ?");
            args.push(Value::Integer(i64::from(n.vlan)));
            args.push(Value::Text(n.addr.to_string()));
        }
        if let Some(k) = &filter.kind {
            sql.push_str(" AND event_kind = ?");
            args.push(Value::Text(k.clone()));
        }
        match sev {
            SevCond::Any => {}
            SevCond::AtLeast(s) => {
                sql.push_str(" AND severity >= ?");
                args.push(Value::Integer(s as i64));
            }
            SevCond::Exactly(s) => {
                sql.push_str(" AND severity = ?");
                args.push(Value::Integer(s as i64));
            }
        }
        push_time_bounds(&mut sql, &mut args, filter.from_ms, filter.to_ms);
        if let Some(c) = after {
            // The first term bounds the index range; the second breaks ties by row id.
            sql.push_str(" AND time_ms <= ? AND (time_ms < ? OR id < ?)");
            args.push(Value::Integer(time_i64(c.time_ms)));
            args.push(Value::Integer(time_i64(c.time_ms)));
            args.push(Value::Integer(c.id));
        }
        sql.push_str(" ORDER BY time_ms DESC, id DESC LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        self.rows(conn, &sql, args)
    }

    /// One node's metrics with `from_ms <= interval start < to_ms`, oldest first, one page.
    pub fn metrics_series(
        &self,
        node: NodeAddr,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        page: &PageRequest,
    ) -> Result<Page<NodeMetrics>, StoreError> {
        let limit = page.limit.clamp(1, self.config().max_page.max(1));
        let mut sql = format!(
            "SELECT id, time_ms, frame FROM records INDEXED BY records_node_time
             WHERE kind = {} AND vlan = ? AND addr = ?",
            FrameKind::NodeMetrics.as_u16()
        );
        let mut args = vec![
            Value::Integer(i64::from(node.vlan)),
            Value::Text(node.addr.to_string()),
        ];
        push_time_bounds(&mut sql, &mut args, from_ms, to_ms);
        if let Some(c) = page.after {
            sql.push_str(" AND time_ms >= ? AND (time_ms > ? OR id > ?)");
            args.push(Value::Integer(time_i64(c.time_ms)));
            args.push(Value::Integer(time_i64(c.time_ms)));
            args.push(Value::Integer(c.id));
        }
        sql.push_str(" ORDER BY time_ms, id LIMIT ?");
        args.push(Value::Integer(i64::try_from(limit + 1).unwrap_or(i64::MAX)));
        let rows = {
            let conn = self.reader();
            self.rows(&conn, &sql, args)?
        };
        let more = rows.len() > limit;
        let mut items = Vec::new();
        let mut last = None;
        for (id, time, frame) in rows.into_iter().take(limit) {
            let s = self.decode_row(id, &frame)?;
            let Record::NodeMetrics(m) = s.record else {
                return Err(self.corrupt(id, s.record.kind()));
            };
            items.push(m);
            last = Some(Cursor {
                time_ms: time.max(0) as u64,
                id,
            });
        }
        Ok(Page {
            items,
            next: if more { last } else { None },
        })
    }

    /// The latest state of every service check, by service name then node.
    pub fn services(&self) -> Result<Vec<ServiceState>, StoreError> {
        self.latest(
            "SELECT 0, 0, frame FROM services_latest ORDER BY service, vlan, addr",
            |r| match r {
                Record::ServiceState(s) => Ok(s),
                other => Err(other.kind()),
            },
        )
    }

    /// The latest heartbeat of every peer that sent one to this scope (the system scope).
    pub fn peer_statuses(&self) -> Result<Vec<PeerStatus>, StoreError> {
        self.latest(
            "SELECT 0, 0, frame FROM peer_status ORDER BY peer",
            |r| match r {
                Record::PeerStatus(p) => Ok(p),
                other => Err(other.kind()),
            },
        )
    }

    /// The latest health of every (peer, daemon).
    pub fn daemon_health(&self) -> Result<Vec<(PeerId, DaemonHealth)>, StoreError> {
        let conn = self.reader();
        let rows = self.rows(
            &conn,
            "SELECT 0, 0, frame FROM daemon_health ORDER BY peer, daemon",
            Vec::new(),
        )?;
        drop(conn);
        rows.into_iter()
            .map(|(id, _, frame)| {
                let s = self.decode_row(id, &frame)?;
                match s.record {
                    Record::DaemonHealth(d) => Ok((s.poller, d)),
                    other => Err(self.corrupt(id, other.kind())),
                }
            })
            .collect()
    }

    fn latest<T>(
        &self,
        sql: &str,
        pick: impl Fn(Record) -> Result<T, FrameKind>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = {
            let conn = self.reader();
            self.rows(&conn, sql, Vec::new())?
        };
        rows.into_iter()
            .map(|(id, _, frame)| {
                let s = self.decode_row(id, &frame)?;
                pick(s.record).map_err(|k| self.corrupt(id, k))
            })
            .collect()
    }

    fn rows(&self, conn: &Connection, sql: &str, args: Vec<Value>) -> Result<Vec<Row>, StoreError> {
        let err = self.sql_err("query");
        let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
        let rows = stmt
            .query_map(params_from_iter(args), |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(&err)?;
        rows.collect::<Result<Vec<Row>, _>>().map_err(&err)
    }

    fn decode_row(&self, id: i64, frame: &[u8]) -> Result<Sequenced, StoreError> {
        decode_frame::<Sequenced>(frame).map_err(|source| StoreError::CorruptRow {
            scope: self.scope(),
            id,
            source,
        })
    }

    fn corrupt(&self, id: i64, kind: FrameKind) -> StoreError {
        StoreError::CorruptRow {
            scope: self.scope(),
            id,
            source: WireError::UnexpectedKind { kind },
        }
    }
}

fn push_time_bounds(sql: &mut String, args: &mut Vec<Value>, from: Option<u64>, to: Option<u64>) {
    if let Some(f) = from {
        sql.push_str(" AND time_ms >= ?");
        args.push(Value::Integer(time_i64(f)));
    }
    if let Some(t) = to {
        sql.push_str(" AND time_ms < ?");
        args.push(Value::Integer(time_i64(t)));
    }
}
