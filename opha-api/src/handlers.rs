//! The endpoints: plain functions of (capability, parameters) to JSON.
//!
//! Lists over several tenants (an operator's consolidated view) are merged in one order across
//! tenant files, and their cursors carry the tenant as a tie-break, so paging stays exact
//! whatever is stored meanwhile. Cursors are opaque to clients; their shape is versioned by
//! the leading letter and digit.

use crate::access::Access;
use crate::error::ApiError;
use crate::params::{Params, parse_addr, parse_node, parse_tenant};
use opha_common::wire::{DaemonHealth, EventKind, PeerRole, ServiceStatus, TenantId};
use opha_store::{Cursor, EventFilter, NodeAddr, PageRequest, event_kind_name};
use serde_json::{Value, json};
use std::cmp::Reverse;
use std::time::{SystemTime, UNIX_EPOCH};

/// Limits the handlers apply.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_page: usize,
}

/// Every event kind name the `kind` filter accepts.
pub const EVENT_KINDS: &[&str] = &[
    "node_down",
    "node_up",
    "snmp_down",
    "snmp_up",
    "service_port_down",
    "service_port_up",
    "rtt_above_threshold",
    "rtt_below_threshold",
    "loss_above_threshold",
    "loss_below_threshold",
    "trap",
    "syslog",
    "external",
    "undecodable",
    "daemon_down",
    "daemon_up",
    "replay_log_usage_high",
    "replay_log_usage_normal",
    "replay_log_thinning",
    "replay_log_blocked",
    "replay_log_unblocked",
    "replay_log_recovered",
];

// Keeps EVENT_KINDS in step with the store's names: a new kind fails to compile here until it
// is listed above (the match is exhaustive).
#[allow(dead_code)]
fn kind_is_listed(k: &EventKind) -> bool {
    EVENT_KINDS.contains(&event_kind_name(k))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(format!("encoding the answer: {e}")))
}

/// A position in a list merged over tenant files: (time, tenant, row id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MergedCursor {
    time_ms: u64,
    tenant: u32,
    id: i64,
}

impl MergedCursor {
    fn encode(self, tag: char) -> String {
        format!("{tag}1.{}.{}.{}", self.time_ms, self.tenant, self.id)
    }

    fn decode(s: &str, tag: char) -> Result<Self, ApiError> {
        let bad = || {
            ApiError::bad_param(
                "cursor",
                "not a cursor of this list; pass `next` back unchanged",
            )
        };
        let rest = s
            .strip_prefix(tag)
            .and_then(|r| r.strip_prefix("1."))
            .ok_or_else(bad)?;
        let mut it = rest.split('.');
        let (Some(t), Some(tn), Some(id), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            time_ms: t.parse().map_err(|_| bad())?,
            tenant: tn.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }

    /// The store cursor that continues tenant `t`'s part of a merge after `self`, in either
    /// order (newest first: time, tenant, id descending; oldest first: all ascending). At the
    /// cursor's own time, a lower tenant has every row of that time left newest first and
    /// none oldest first, a higher tenant the reverse; the store compares ids in the
    /// direction of the list, so `i64::MAX` (lower) and `i64::MIN` (higher) say exactly that
    /// in both directions.
    fn store_after(self, t: u32) -> Cursor {
        let id = match t.cmp(&self.tenant) {
            std::cmp::Ordering::Less => i64::MAX,
            std::cmp::Ordering::Equal => self.id,
            std::cmp::Ordering::Greater => i64::MIN,
        };
        Cursor {
            time_ms: self.time_ms,
            id,
        }
    }
}

/// `GET /api/v1/events`: tenant, node, kind, severity (at least), from, to, limit, cursor.
pub fn events(access: &Access, mut p: Params, limits: Limits) -> Result<Value, ApiError> {
    const ACCEPTED: &[&str] = &[
        "tenant", "node", "kind", "severity", "from", "to", "limit", "cursor",
    ];
    let tenant = p.tenant()?;
    let node = p.node()?;
    let kind = match p.take("kind") {
        Some(k) if EVENT_KINDS.contains(&k.as_str()) => Some(k),
        Some(_) => {
            return Err(ApiError::bad_param(
                "kind",
                &format!("unknown event kind; one of: {}", EVENT_KINDS.join(", ")),
            ));
        }
        None => None,
    };
    let min_severity = p.severity()?;
    let (from_ms, to_ms) = p.time_range()?;
    let limit = p.limit(100, limits.max_page)?;
    let cursor = p
        .take("cursor")
        .map(|c| MergedCursor::decode(&c, 'e'))
        .transpose()?;
    p.finish(ACCEPTED)?;
    let filter = EventFilter {
        node,
        kind,
        min_severity,
        from_ms,
        to_ms,
    };
    let mut rows = Vec::new();
    let mut more = false;
    for (t, db) in access.tenants(tenant)? {
        let req = PageRequest {
            limit,
            after: cursor.map(|c| c.store_after(t.0)),
        };
        let page = db.events(&filter, &req)?;
        more |= page.next.is_some();
        for e in page.items {
            let key = MergedCursor {
                time_ms: e.cursor.time_ms,
                tenant: t.0,
                id: e.cursor.id,
            };
            rows.push((key, e));
        }
    }
    rows.sort_by_key(|(k, _)| Reverse(*k));
    more |= rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(k, _)| k.encode('e'))
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|(k, e)| {
            Ok(json!({
                "tenant": k.tenant,
                "cursor": k.encode('e'),
                "poller": e.poller.as_str(),
                "epoch": e.epoch,
                "seq": e.seq,
                "kind": event_kind_name(&e.event.kind),
                "event": to_json(&e.event)?,
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(json!({"items": items, "next": next}))
}

/// `GET /api/v1/nodes/{vlan}/{addr}/metrics`: tenant, from, to, limit, cursor.
pub fn metrics(
    access: &Access,
    vlan: &str,
    addr: &str,
    mut p: Params,
    limits: Limits,
) -> Result<Value, ApiError> {
    const ACCEPTED: &[&str] = &["tenant", "from", "to", "limit", "cursor"];
    let vlan = vlan
        .parse::<u16>()
        .ok()
        .filter(|v| *v < 4096)
        .ok_or_else(|| ApiError::bad_param("vlan", "must be a VLAN id, 0 to 4095 (0: untagged)"))?;
    let addr = parse_addr(addr)
        .ok_or_else(|| ApiError::bad_param("addr", "must be an IPv4 or IPv6 address"))?;
    let tenant = p.tenant()?;
    let (from_ms, to_ms) = p.time_range()?;
    let limit = p.limit(100, limits.max_page)?;
    let cursor = p
        .take("cursor")
        .map(|c| MergedCursor::decode(&c, 'm'))
        .transpose()?;
    p.finish(ACCEPTED)?;
    let node = NodeAddr { vlan, addr };
    let mut rows = Vec::new();
    let mut more = false;
    for (t, db) in access.tenants(tenant)? {
        let req = PageRequest {
            limit,
            after: cursor.map(|c| c.store_after(t.0)),
        };
        let page = db.metrics_page(node, from_ms, to_ms, &req)?;
        more |= page.next.is_some();
        for m in page.items {
            let key = MergedCursor {
                time_ms: m.cursor.time_ms,
                tenant: t.0,
                id: m.cursor.id,
            };
            rows.push((key, m.metrics));
        }
    }
    rows.sort_by_key(|(k, _)| *k);
    more |= rows.len() > limit;
    rows.truncate(limit);
    let next = if more {
        rows.last().map(|(k, _)| k.encode('m'))
    } else {
        None
    };
    let items = rows
        .into_iter()
        .map(|(k, m)| {
            Ok(json!({
                "tenant": k.tenant,
                "cursor": k.encode('m'),
                "metrics": to_json(&m)?,
            }))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(json!({
        "node": {"vlan": vlan, "addr": addr.to_string()},
        "items": items,
        "next": next,
    }))
}

/// `GET /api/v1/nodes`: tenant, limit, cursor. Ordered by (tenant, VLAN, address).
pub fn nodes(access: &Access, mut p: Params, limits: Limits) -> Result<Value, ApiError> {
    const ACCEPTED: &[&str] = &["tenant", "limit", "cursor"];
    let tenant = p.tenant()?;
    let limit = p.limit(100, limits.max_page)?;
    let cursor = p
        .take("cursor")
        .map(|c| decode_node_cursor(&c))
        .transpose()?;
    p.finish(ACCEPTED)?;
    let mut items = Vec::new();
    let mut next = None;
    for (t, db) in access.tenants(tenant)? {
        let after = match cursor {
            Some((ct, _)) if t < ct => continue,
            Some((ct, n)) if t == ct => Some(n),
            _ => None,
        };
        let want = limit - items.len();
        let page = db.nodes(after.as_ref(), want)?;
        let last = page.items.last().map(|n| n.node);
        for n in page.items {
            let (state, since) = match n
                .state_event
                .as_ref()
                .map(|e| (&e.event.kind, e.event.time_ms))
            {
                Some((EventKind::NodeDown, t)) => ("down", Some(t)),
                Some((EventKind::NodeUp, t)) => ("up", Some(t)),
                _ => ("unknown", None),
            };
            items.push(json!({
                "tenant": t.0,
                "vlan": n.node.vlan,
                "addr": n.node.addr.to_string(),
                "name": n.name,
                "state": state,
                "state_since_ms": since,
                "latest_metrics": to_json(&n.latest_metrics)?,
            }));
        }
        if items.len() >= limit {
            // Full: more may follow in this tenant (page.next) or in later ones.
            next = last.map(|n| encode_node_cursor(t, n));
            break;
        }
    }
    Ok(json!({"items": items, "next": next}))
}

fn encode_node_cursor(t: TenantId, n: NodeAddr) -> String {
    format!("n1.{}.{}@{}", t.0, n.vlan, n.addr)
}

fn decode_node_cursor(s: &str) -> Result<(TenantId, NodeAddr), ApiError> {
    let bad = || {
        ApiError::bad_param(
            "cursor",
            "not a cursor of this list; pass `next` back unchanged",
        )
    };
    let rest = s.strip_prefix("n1.").ok_or_else(bad)?;
    let (t, node) = rest.split_once('.').ok_or_else(bad)?;
    let t = parse_tenant(t, "cursor").map_err(|_| bad())?;
    let node = parse_node(node).ok_or_else(bad)?;
    Ok((t, node))
}

fn parse_status(v: &str) -> Result<ServiceStatus, ApiError> {
    match v {
        "up" => Ok(ServiceStatus::Up),
        "degraded" => Ok(ServiceStatus::Degraded),
        "down" => Ok(ServiceStatus::Down),
        _ => Err(ApiError::bad_param("state", "must be up, degraded or down")),
    }
}

/// `GET /api/v1/services`: tenant, state, service, node. The latest state of every check.
pub fn services(access: &Access, mut p: Params) -> Result<Value, ApiError> {
    const ACCEPTED: &[&str] = &["tenant", "state", "service", "node"];
    let tenant = p.tenant()?;
    let state = p.take("state").map(|s| parse_status(&s)).transpose()?;
    let service = p.take("service");
    let node = p.node()?;
    p.finish(ACCEPTED)?;
    let mut items = Vec::new();
    let mut counts = [0u64; 3];
    for (_, db) in access.tenants(tenant)? {
        for s in db.services()? {
            if state.is_some_and(|st| st != s.state)
                || service.as_deref().is_some_and(|n| n != s.service)
                || node.is_some_and(|n| n != NodeAddr::from(&s.node))
            {
                continue;
            }
            counts[s.state as usize] += 1;
            items.push(to_json(&s)?);
        }
    }
    Ok(json!({
        "items": items,
        "summary": {"up": counts[0], "degraded": counts[1], "down": counts[2]},
    }))
}

fn parse_role(v: &str) -> Result<PeerRole, ApiError> {
    match v {
        "poller" => Ok(PeerRole::Poller),
        "primary" => Ok(PeerRole::Primary),
        "mirror" => Ok(PeerRole::Mirror),
        _ => Err(ApiError::bad_param(
            "role",
            "must be poller, primary or mirror",
        )),
    }
}

/// `GET /api/v1/peers`: tenant, role. Each peer's latest heartbeat and daemon health.
///
/// Peers are infrastructure (the system scope holds no tenant's records), but their node
/// counts are per tenant: a tenant token sees only the peers that carry its nodes, with the
/// counts of its own tenant only. `tenant` narrows an operator's list the same way.
pub fn peers(access: &Access, mut p: Params) -> Result<Value, ApiError> {
    const ACCEPTED: &[&str] = &["tenant", "role"];
    let tenant = p.tenant()?;
    let role = p.take("role").map(|r| parse_role(&r)).transpose()?;
    p.finish(ACCEPTED)?;
    if let Some(t) = tenant {
        access.authorize(t, "tenant")?;
    }
    let only = tenant.or(access.own_tenant());
    let Some(sys) = access.system()? else {
        return Ok(json!({"items": []}));
    };
    let health = sys.daemon_health()?;
    let now = now_ms();
    let mut items = Vec::new();
    for mut s in sys.peer_statuses()? {
        if role.is_some_and(|r| r != s.role) {
            continue;
        }
        if let Some(t) = only {
            s.nodes.retain(|n| n.tenant == t);
            if s.nodes.is_empty() {
                continue;
            }
        }
        let daemons: Vec<&DaemonHealth> = health
            .iter()
            .filter(|(peer, _)| *peer == s.peer)
            .map(|(_, d)| d)
            .collect();
        let nodes: u64 = s.nodes.iter().map(|n| u64::from(n.nodes)).sum();
        items.push(json!({
            "peer": s.peer.as_str(),
            "heartbeat_age_ms": now.saturating_sub(s.time_ms),
            "nodes_total": nodes,
            "status": to_json(&s)?,
            "daemons": to_json(&daemons)?,
        }));
    }
    Ok(json!({"items": items}))
}

/// `GET /api/v1/tenants/usage` (tenant, from, to) and `GET /api/v1/tenants/{id}/usage`
/// (from, to): nodes, events and bytes received per tenant, the billing surface.
pub fn usage(access: &Access, path_tenant: Option<&str>, mut p: Params) -> Result<Value, ApiError> {
    let tenant = match path_tenant {
        Some(t) => {
            let t = parse_tenant(t, "tenant_id")?;
            access.authorize(t, "tenant_id")?;
            Some(t)
        }
        None => p.tenant()?,
    };
    let (from_ms, to_ms) = p.time_range()?;
    if path_tenant.is_some() {
        p.finish(&["from", "to"])?;
    } else {
        p.finish(&["tenant", "from", "to"])?;
    }
    let mut items = Vec::new();
    let mut total = opha_store::Usage::default();
    for (t, db) in access.tenants(tenant)? {
        let u = db.usage(from_ms, to_ms)?;
        total.nodes += u.nodes;
        total.events += u.events;
        total.metrics += u.metrics;
        total.records += u.records;
        total.bytes_received += u.bytes_received;
        items.push(usage_json(Some(t), &u));
    }
    Ok(json!({
        "from_ms": from_ms,
        "to_ms": to_ms,
        "items": items,
        "total": usage_json(None, &total),
    }))
}

fn usage_json(t: Option<TenantId>, u: &opha_store::Usage) -> Value {
    let mut v = json!({
        "nodes": u.nodes,
        "events": u.events,
        "metrics": u.metrics,
        "records": u.records,
        "bytes_received": u.bytes_received,
    });
    if let Some(t) = t {
        v["tenant"] = json!(t.0);
    }
    v
}
