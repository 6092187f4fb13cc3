//! The Home view (issue 5 §1): the page and its assets ([`assets`]), the snapshot it loads
//! first (`GET /api/v1/summary`, [`summary`]), and the live stream it follows
//! (`GET /api/v1/live`, [`sse`] over [`crate::live::LiveHub`]).
//!
//! The page is plain HTML/CSS/JS embedded in the binary: no build step, no external URL.

pub mod assets;
pub mod sse;

use crate::access::Access;
use crate::error::ApiError;
use crate::handlers::EVENT_KINDS;
use crate::live::{DAEMONS, LiveHub, PeerView, StreamState, now_ms};
use crate::params::Params;
use opha_common::wire::{PeerRole, Severity, TenantId};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// A peer whose heartbeat is older than this, and which is not connected to this primary,
/// counts as down. Heartbeats come every few seconds.
pub const STALE_AFTER_MS: u64 = 60_000;

/// "Events in the last hour" and the per-tenant event and byte counts cover this window.
pub const WINDOW_MS: u64 = 3_600_000;

/// Thresholds of [`heartbeat_age_words`] in seconds; `assets/home.js` holds the same list
/// (`AGE_THRESHOLDS`) and a test checks that they agree.
pub const AGE_THRESHOLDS: [u64; 6] = [45, 90, 45 * 60, 90 * 60, 22 * 3600, 36 * 3600];

/// A heartbeat's age in words, as the peer cards show it: "a few seconds ago" (under 45 s),
/// "a minute ago" (under 90 s), "N minutes ago" (under 45 min), "an hour ago" (under 90 min),
/// "N hours ago" (under 22 h), "a day ago" (under 36 h), then "N days ago". N is rounded to
/// the nearest unit, at least 2.
pub fn heartbeat_age_words(age_ms: u64) -> String {
    let s = age_ms / 1000;
    let [few, minute, minutes, hour, hours, day] = AGE_THRESHOLDS;
    let round = |unit: u64| ((s + unit / 2) / unit).max(2);
    if s < few {
        "a few seconds ago".into()
    } else if s < minute {
        "a minute ago".into()
    } else if s < minutes {
        format!("{} minutes ago", round(60))
    } else if s < hour {
        "an hour ago".into()
    } else if s < hours {
        format!("{} hours ago", round(3600))
    } else if s < day {
        "a day ago".into()
    } else {
        format!("{} days ago", round(86_400))
    }
}

/// Whether a peer counts as up: connected to this primary, or (when not known to be
/// disconnected) a heartbeat younger than [`STALE_AFTER_MS`].
pub fn peer_is_up(stream: Option<&StreamState>, heartbeat_age_ms: Option<u64>) -> bool {
    match stream {
        Some(s) if s.is_connected() => true,
        Some(StreamState::Disconnected { .. }) => false,
        _ => heartbeat_age_ms.is_some_and(|a| a <= STALE_AFTER_MS),
    }
}

fn card(v: &PeerView, now: u64) -> Value {
    let age = v.heartbeat_ms.map(|t| now.saturating_sub(t));
    let mut j = serde_json::to_value(v).unwrap_or_else(|_| json!({"peer": v.peer}));
    j["heartbeat_age_ms"] = json!(age);
    j["heartbeat_words"] = json!(age.map_or_else(|| "never".to_string(), heartbeat_age_words));
    j["up"] = json!(peer_is_up(v.stream.as_ref(), age));
    j
}

/// `GET /api/v1/summary`: tenant. The Home view's snapshot: KPIs, peer cards, per-tenant
/// counts, and the lists the page's filters offer. A tenant token (or `tenant`) sees only
/// the peers carrying that tenant's nodes, with that tenant's counts only.
pub fn summary(access: &Access, mut p: Params, live: Option<&LiveHub>) -> Result<Value, ApiError> {
    let tenant = p.tenant()?;
    p.finish(&["tenant"])?;
    if let Some(t) = tenant {
        access.authorize(t, "tenant")?;
    }
    let only = tenant.or(access.own_tenant());
    let now = now_ms();
    let links = live.map(LiveHub::links).unwrap_or_default();

    let mut views: Vec<PeerView> = Vec::new();
    let mut stored: BTreeSet<String> = BTreeSet::new();
    if let Some(sys) = access.system()? {
        let mut health: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for (peer, d) in sys.daemon_health()? {
            health.entry(peer.as_str().to_string()).or_default().push(d);
        }
        for s in sys.peer_statuses()? {
            let id = s.peer.as_str().to_string();
            let stream = links
                .get(&id)
                .map_or(StreamState::Unknown, |(_, state)| *state);
            let v = PeerView::from_status(&s, health.remove(&id).unwrap_or_default(), stream);
            stored.insert(id);
            match only {
                Some(t) => views.extend(v.for_tenant(t)),
                None => views.push(v),
            }
        }
    }
    if only.is_none() {
        // Connected but no heartbeat stored yet: operators see the card; which tenants it
        // carries is not known, so tenants do not.
        for (id, (role, state)) in &links {
            if !stored.contains(id) {
                let mut v = PeerView::new(id);
                v.role = *role;
                v.stream = Some(*state);
                views.push(v);
            }
        }
    }

    let mut pollers_of: BTreeMap<TenantId, Vec<String>> = BTreeMap::new();
    let mut monitored: BTreeMap<TenantId, u64> = BTreeMap::new();
    for v in views.iter().filter(|v| v.role == Some(PeerRole::Poller)) {
        for n in v.nodes.iter().flatten().filter(|n| n.nodes > 0) {
            pollers_of.entry(n.tenant).or_default().push(v.peer.clone());
            *monitored.entry(n.tenant).or_default() += u64::from(n.nodes);
        }
    }

    let from = now.saturating_sub(WINDOW_MS);
    let mut tenants = Vec::new();
    let mut services = [0u64; 3];
    let mut events_last_hour = 0u64;
    for (t, db) in access.tenants(only)? {
        let u = db.usage(Some(from), None)?;
        events_last_hour += u.events;
        for s in db.services()? {
            services[s.state as usize] += 1;
        }
        tenants.push(json!({
            "tenant": t.0,
            "nodes": monitored.get(&t).copied().unwrap_or(0),
            "nodes_stored": u.nodes,
            "events_last_hour": u.events,
            "records_last_hour": u.records,
            "bytes_last_hour": u.bytes_received,
            "pollers": pollers_of.get(&t).cloned().unwrap_or_default(),
        }));
    }

    let cards: Vec<Value> = views.iter().map(|v| card(v, now)).collect();
    let peers_up = cards.iter().filter(|c| c["up"] == json!(true)).count();
    let scope = match access.own_tenant() {
        None => json!({"role": "operator"}),
        Some(t) => json!({"role": "tenant", "tenant": t.0}),
    };
    Ok(json!({
        "server_time_ms": now,
        "window_ms": WINDOW_MS,
        "stale_after_ms": STALE_AFTER_MS,
        "scope": scope,
        "live": live.is_some(),
        "kpi": {
            "peers_total": cards.len(),
            "peers_up": peers_up,
            // Mirrors replicate their pollers' nodes and primaries carry none: pollers only.
            "nodes_monitored": monitored.values().sum::<u64>(),
            "events_last_hour": events_last_hour,
            "services": {"up": services[0], "degraded": services[1], "down": services[2]},
        },
        "peers": cards,
        "tenants": tenants,
        "daemons": DAEMONS,
        "event_kinds": EVENT_KINDS,
        "severities": Severity::ALL.map(Severity::name),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_in_words() {
        let cases = [
            (0, "a few seconds ago"),
            (44_999, "a few seconds ago"),
            (45_000, "a minute ago"),
            (89_999, "a minute ago"),
            (90_000, "2 minutes ago"),
            (180_000, "3 minutes ago"),
            (209_000, "3 minutes ago"),
            (210_000, "4 minutes ago"),
            (44 * 60_000, "44 minutes ago"),
            (45 * 60_000, "an hour ago"),
            (90 * 60_000, "2 hours ago"),
            (5 * 3_600_000, "5 hours ago"),
            (22 * 3_600_000, "a day ago"),
            (36 * 3_600_000, "2 days ago"),
            (10 * 86_400_000, "10 days ago"),
            (u64::MAX, "213503982335 days ago"),
        ];
        for (ms, words) in cases {
            assert_eq!(heartbeat_age_words(ms), words, "{ms} ms");
        }
    }

    #[test]
    fn up_rule() {
        assert!(peer_is_up(Some(&StreamState::Streaming), None));
        assert!(peer_is_up(
            Some(&StreamState::CatchingUp { lag_records: 5 }),
            Some(10 * STALE_AFTER_MS)
        ));
        assert!(!peer_is_up(
            Some(&StreamState::Disconnected { since_ms: 1 }),
            Some(0)
        ));
        assert!(peer_is_up(
            Some(&StreamState::Unknown),
            Some(STALE_AFTER_MS)
        ));
        assert!(!peer_is_up(None, Some(STALE_AFTER_MS + 1)));
        assert!(!peer_is_up(None, None));
    }
}
