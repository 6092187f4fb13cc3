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
    Record, Sequenced, ServiceState, Severity, Subject, WireError, decode_frame,
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

/// A metrics row as stored, with its place in the file's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMetrics {
    pub cursor: Cursor,
    pub metrics: NodeMetrics,
}

/// One node as [`TenantDb::nodes`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSummary {
    pub node: NodeAddr,
    /// The inventory name of its latest metrics (or latest state event), when known.
    pub name: Option<String>,
    pub latest_metrics: Option<NodeMetrics>,
    /// The latest node_down or node_up event: the node's state as far as events say.
    pub state_event: Option<StoredEvent>,
}

/// A page of nodes, ordered by (VLAN, address as text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePage {
    pub items: Vec<NodeSummary>,
    /// `Some` when more nodes may follow: pass it as `after`.
    pub next: Option<NodeAddr>,
}

/// What one file holds over a time range ([`TenantDb::usage`]): the billing figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Distinct nodes with metrics or node events (whole file, not only the range).
    pub nodes: u64,
    pub events: u64,
    pub metrics: u64,
    /// Records of every kind.
    pub records: u64,
    /// Sum of the records' wire frames, as received from the pollers.
    pub bytes_received: u64,
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

/// A node as the records table spells it: (vlan, address text).
type NodeKeyText = (i64, String);

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
        let p = self.metrics_page(node, from_ms, to_ms, page)?;
        Ok(Page {
            items: p.items.into_iter().map(|m| m.metrics).collect(),
            next: p.next,
        })
    }

    /// As [`TenantDb::metrics_series`], with each row's cursor (to merge several files' series
    /// in cursor order, as the operator's consolidated API view does).
    pub fn metrics_page(
        &self,
        node: NodeAddr,
        from_ms: Option<u64>,
        to_ms: Option<u64>,
        page: &PageRequest,
    ) -> Result<Page<StoredMetrics>, StoreError> {
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
        for (id, time, frame) in rows.into_iter().take(limit) {
            let s = self.decode_row(id, &frame)?;
            let Record::NodeMetrics(m) = s.record else {
                return Err(self.corrupt(id, s.record.kind()));
            };
            items.push(StoredMetrics {
                cursor: Cursor {
                    time_ms: time.max(0) as u64,
                    id,
                },
                metrics: m,
            });
        }
        let next = more.then(|| items.last().map(|m| m.cursor)).flatten();
        Ok(Page { items, next })
    }

    /// The nodes this file holds metrics or node events for, by (VLAN, address text), from
    /// just after `after`, at most `limit`, each with its latest metrics and its latest
    /// node_down/node_up event.
    ///
    /// Distinct nodes are found by skipping along the node index (one seek per node), not by
    /// grouping every row, so a page costs the same with 10 million rows as with 10 thousand.
    pub fn nodes(&self, after: Option<&NodeAddr>, limit: usize) -> Result<NodePage, StoreError> {
        let limit = limit.clamp(1, self.config().max_page.max(1));
        let (keys, next) = self.node_keys(after, limit)?;
        let conn = self.reader();
        let mut items = Vec::with_capacity(keys.len());
        for (vlan, addr) in keys {
            let latest = self.latest_node_row(
                &conn,
                &format!(
                    "SELECT id, time_ms, frame FROM records INDEXED BY records_node_time
                     WHERE kind = {} AND vlan = ?1 AND addr = ?2
                     ORDER BY time_ms DESC, id DESC LIMIT 1",
                    FrameKind::NodeMetrics.as_u16()
                ),
                vlan,
                &addr,
            )?;
            let latest_metrics = match latest {
                Some((id, _, frame)) => match self.decode_row(id, &frame)?.record {
                    Record::NodeMetrics(m) => Some(m),
                    other => return Err(self.corrupt(id, other.kind())),
                },
                None => None,
            };
            let state = self.latest_node_row(
                &conn,
                &format!(
                    "SELECT id, time_ms, frame FROM records INDEXED BY records_node_time
                     WHERE kind = {} AND vlan = ?1 AND addr = ?2
                       AND event_kind IN ('node_down', 'node_up')
                     ORDER BY time_ms DESC, id DESC LIMIT 1",
                    FrameKind::Event.as_u16()
                ),
                vlan,
                &addr,
            )?;
            let state_event = match state {
                Some((id, time, frame)) => {
                    let s = self.decode_row(id, &frame)?;
                    match s.record {
                        Record::Event(event) => Some(StoredEvent {
                            cursor: Cursor {
                                time_ms: time.max(0) as u64,
                                id,
                            },
                            poller: s.poller,
                            epoch: s.epoch,
                            seq: s.seq,
                            event,
                        }),
                        other => return Err(self.corrupt(id, other.kind())),
                    }
                }
                None => None,
            };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                // Written by this crate from an IpAddr: anything else is damage; skip it.
                log::warn!("{}: node address {addr:?} does not parse", self.scope());
                continue;
            };
            let name = latest_metrics
                .as_ref()
                .and_then(|m| m.node.name.clone())
                .or_else(|| match state_event.as_ref().map(|e| &e.event.subject) {
                    Some(Subject::Node(n)) => n.name.clone(),
                    _ => None,
                });
            items.push(NodeSummary {
                node: NodeAddr {
                    vlan: u16::try_from(vlan).unwrap_or(0),
                    addr: ip,
                },
                name,
                latest_metrics,
                state_event,
            });
        }
        Ok(NodePage { items, next })
    }

    /// The first (vlan, addr) of records of `kind` strictly after `after`.
    fn next_node(
        &self,
        conn: &Connection,
        kind: u16,
        after: Option<&(i64, String)>,
    ) -> Result<Option<(i64, String)>, StoreError> {
        let err = self.sql_err("nodes");
        let pick = |sql: &str, args: Vec<Value>| -> Result<Option<(i64, String)>, StoreError> {
            let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
            let mut rows = stmt.query(params_from_iter(args)).map_err(&err)?;
            match rows.next().map_err(&err)? {
                Some(r) => Ok(Some((r.get(0).map_err(&err)?, r.get(1).map_err(&err)?))),
                None => Ok(None),
            }
        };
        let k = Value::Integer(i64::from(kind));
        match after {
            None => pick(
                "SELECT vlan, addr FROM records INDEXED BY records_node_time
                 WHERE kind = ?1 AND vlan IS NOT NULL AND addr IS NOT NULL
                 ORDER BY vlan, addr LIMIT 1",
                vec![k],
            ),
            Some((vlan, addr)) => {
                let same_vlan = pick(
                    "SELECT vlan, addr FROM records INDEXED BY records_node_time
                     WHERE kind = ?1 AND vlan = ?2 AND addr > ?3 ORDER BY addr LIMIT 1",
                    vec![k.clone(), Value::Integer(*vlan), Value::Text(addr.clone())],
                )?;
                if same_vlan.is_some() {
                    return Ok(same_vlan);
                }
                pick(
                    "SELECT vlan, addr FROM records INDEXED BY records_node_time
                     WHERE kind = ?1 AND vlan > ?2 AND addr IS NOT NULL
                     ORDER BY vlan, addr LIMIT 1",
                    vec![k, Value::Integer(*vlan)],
                )
            }
        }
    }

    fn latest_node_row(
        &self,
        conn: &Connection,
        sql: &str,
        vlan: i64,
        addr: &str,
    ) -> Result<Option<Row>, StoreError> {
        Ok(self
            .rows(
                conn,
                sql,
                vec![Value::Integer(vlan), Value::Text(addr.to_string())],
            )?
            .into_iter()
            .next())
    }

    /// What this file holds, for billing: records, events and metrics with
    /// `from_ms <= time < to_ms`, the bytes of their frames as received (the wire frames of
    /// the records, headers included), and the number of distinct nodes held (any time).
    ///
    /// Counts walk the (kind, time) index over the range, so they cost in proportion to the
    /// rows in the range.
    pub fn usage(&self, from_ms: Option<u64>, to_ms: Option<u64>) -> Result<Usage, StoreError> {
        let mut u = Usage::default();
        {
            let conn = self.reader();
            for kind in [
                FrameKind::NodeMetrics,
                FrameKind::Event,
                FrameKind::ServiceState,
                FrameKind::DaemonHealth,
                FrameKind::PeerStatus,
            ] {
                let mut sql = format!(
                    "SELECT count(*), coalesce(sum(length(frame)), 0) FROM records
                     INDEXED BY records_kind_time WHERE kind = {}",
                    kind.as_u16()
                );
                let mut args = Vec::new();
                push_time_bounds(&mut sql, &mut args, from_ms, to_ms);
                let err = self.sql_err("usage");
                let (n, bytes): (i64, i64) = conn
                    .prepare_cached(&sql)
                    .and_then(|mut st| {
                        st.query_row(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))
                    })
                    .map_err(err)?;
                let (n, bytes) = (n.max(0) as u64, bytes.max(0) as u64);
                u.records += n;
                u.bytes_received += bytes;
                match kind {
                    FrameKind::Event => u.events = n,
                    FrameKind::NodeMetrics => u.metrics = n,
                    _ => {}
                }
            }
        }
        let mut after: Option<NodeAddr> = None;
        loop {
            let page = self.node_keys(after.as_ref(), 1000)?;
            u.nodes += page.0.len() as u64;
            match page.1 {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(u)
    }

    /// Distinct node keys only (no latest rows): one page of at most `limit`.
    fn node_keys(
        &self,
        after: Option<&NodeAddr>,
        limit: usize,
    ) -> Result<(Vec<NodeKeyText>, Option<NodeAddr>), StoreError> {
        let conn = self.reader();
        let kinds = [FrameKind::NodeMetrics.as_u16(), FrameKind::Event.as_u16()];
        let start = after.map(|n| (i64::from(n.vlan), n.addr.to_string()));
        let mut heads: Vec<Option<(i64, String)>> = kinds
            .iter()
            .map(|&k| self.next_node(&conn, k, start.as_ref()))
            .collect::<Result<_, _>>()?;
        let mut keys = Vec::new();
        while keys.len() < limit {
            let Some(min) = heads.iter().flatten().min().cloned() else {
                return Ok((keys, None));
            };
            for (i, &k) in kinds.iter().enumerate() {
                if heads[i].as_ref() == Some(&min) {
                    heads[i] = self.next_node(&conn, k, Some(&min))?;
                }
            }
            keys.push(min);
        }
        let next = match (heads.iter().flatten().next(), keys.last()) {
            (Some(_), Some((vlan, addr))) => addr.parse::<IpAddr>().ok().map(|a| NodeAddr {
                vlan: u16::try_from(*vlan).unwrap_or(0),
                addr: a,
            }),
            _ => None,
        };
        Ok((keys, next))
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
