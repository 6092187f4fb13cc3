//! The Home view's browser scenario (issue 5 §5), shared by the browser tests: the page of
//! a primary in headless Chromium pastes a token, connects, and follows the live stream.
//!
//! [`scenario`] only talks to a [`HomeTarget`]: where the page is, which tokens to paste,
//! what it should show at first, and two actions (stop a daemon on a poller, take a node
//! down). `tests/home_browser.rs` implements it in-process over a seeded store;
//! `tests/home_browser_real.rs` with a real primary fed by a real poller in network
//! namespaces, stopping a real process and taking a real node's address away.

use crate::browser::Browser;
use anyhow::{Context as _, Result, anyhow, ensure};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long a change on a peer may take to show on the page (the issue's bound).
pub const LIVE: Duration = Duration::from_secs(5);
/// Loading the page and its first snapshot.
pub const LOAD: Duration = Duration::from_secs(20);
/// `--down` of home.css: the red of a stopped daemon's light.
pub const RED: &str = "rgb(217, 45, 32)";
pub const GREEN: &str = "rgb(31, 157, 85)";

/// The daemons every card shows a light for (`opha_api::live::DAEMONS`).
pub const DAEMONS: [&str; 6] = [
    "opchartsd",
    "opeventsd",
    "opconfigd",
    "nmis9d",
    "omkd",
    "ophad",
];

/// What the page should show right after connecting as the operator.
pub struct Expect {
    /// Every card the operator sees, with the tenants each carries nodes for (none: only
    /// operators see it, e.g. the primary itself).
    pub peers: Vec<(String, Vec<u32>)>,
    /// A daemon already stopped on a poller: its light is red from the start.
    pub stopped: (String, String),
    /// A daemon running on a poller (its light green) that the test stops.
    pub to_stop: (String, String),
    /// Two tenants with their own tokens; the second is the one the test reconnects as.
    pub tenants: [u32; 2],
    /// Exact KPIs when the target knows them (the in-process seed does). Then a node taken
    /// down adds exactly one event to the hour's count; otherwise at least one (a real
    /// outage also raises loss and SNMP events).
    pub kpi: Option<Kpi>,
    /// Bound on a node taken down showing as a `node_down` row: [`LIVE`] when the event is
    /// published at once; a real poller first needs `down_after` failed polls.
    pub node_down_within: Duration,
    /// Screenshots are `target/<shot>.png` and `target/<shot>-tenant.png`.
    pub shot: String,
    /// Tenant rows the operator sees besides [`Expect::tenants`] (a tenant token must still
    /// see its own row only).
    pub operator_extra_tenants: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
pub struct Kpi {
    pub peers_up: u64,
    pub peers_total: u64,
    pub nodes: u64,
    pub events_hour: u64,
    pub services: [u64; 3],
}

/// The system under test, as the browser scenario sees it.
pub trait HomeTarget {
    /// The page's URL (`http://127.0.0.1:PORT/`).
    fn url(&self) -> String;
    fn operator_token(&self) -> &str;
    fn tenant_token(&self, tenant: u32) -> &str;
    fn expect(&self) -> &Expect;
    /// Stops `daemon` on `peer`; returns once the change is made (not once it is visible).
    fn stop_daemon(&mut self, peer: &str, daemon: &str) -> Result<()>;
    /// Takes one of `tenant`'s nodes down; returns the node as the page keys it (`vlan@addr`).
    fn take_node_down(&mut self, tenant: u32) -> Result<String>;
    /// Returns once the `node_down` of `node` (a [`HomeTarget::take_node_down`] of `tenant`)
    /// is stored at the primary, so that its absence from a page is not just its delay.
    fn settle(&mut self, tenant: u32, node: &str) -> Result<()> {
        let _ = (tenant, node);
        Ok(())
    }
}

/// How long each live change took to show on the page, from the action's return.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    pub daemon_red: Duration,
    pub node_down: Duration,
    pub tenant_node_down: Duration,
}

/// The light of `daemon` on `peer`'s card.
pub fn light(peer: &str, daemon: &str) -> String {
    format!(r#"#peers article[data-peer="{peer}"] li.light[data-daemon="{daemon}"]"#)
}

/// The color the light's dot is painted in (its `::before`).
pub fn light_color(b: &Browser, peer: &str, daemon: &str) -> Result<String> {
    let v = b.eval(
        "const e = document.querySelector(arguments[0]);\
         return e ? getComputedStyle(e, '::before').backgroundColor : null;",
        &[json!(light(peer, daemon))],
    )?;
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no light {daemon} on {peer}"))
}

/// A KPI card's value.
pub fn kpi(b: &Browser, id: &str) -> Result<Option<u64>> {
    let v = b.attrs(&format!("#{id}"), "data-value")?;
    Ok(v.first()
        .cloned()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok()))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// The card ids shown, sorted.
pub fn cards(b: &Browser) -> Result<Vec<String>> {
    Ok(sorted(
        b.attrs("#peers article.peer", "data-peer")?
            .into_iter()
            .flatten()
            .collect(),
    ))
}

/// Pastes `token`, connects, and waits for the snapshot and the live stream.
pub fn connect(b: &Browser, token: &str, scope: &str) -> Result<()> {
    b.type_into("#token", token)?;
    b.click("#connect")?;
    b.wait_attr("#scope", "data-scope", scope, LOAD)?;
    b.wait_attr("#app", "data-ready", "true", LOAD)?;
    b.wait_attr("#live-status", "data-live", "live", LOAD)?;
    Ok(())
}

/// Runs the whole scenario; returns how long the live changes took to show.
pub fn scenario(t: &mut dyn HomeTarget, b: &Browser) -> Result<Timings> {
    let mut took = Timings::default();
    b.goto(&t.url())?;
    b.wait_attr("#live-status", "data-live", "idle", LOAD)?;
    ensure!(
        b.count("#peers article.peer")? == 0,
        "cards before a token was given"
    );

    // ---- the operator's consolidated view ----
    connect(b, t.operator_token(), "operator")?;
    let exp = t.expect();
    let want: Vec<String> = sorted(exp.peers.iter().map(|(p, _)| p.clone()).collect());
    b.wait_count("#peers article.peer", want.len(), LOAD)?;
    ensure!(
        cards(b)? == want,
        "cards {:?}, expected {want:?}",
        cards(b)?
    );
    for (p, _) in &exp.peers {
        let card = format!(r#"#peers article[data-peer="{p}"]"#);
        ensure!(
            b.text(&format!("{card} .peer-id"))? == *p,
            "card title of {p}"
        );
        ensure!(
            b.attrs(&card, "data-up")? == [Some("true".into())],
            "{p} is not shown up"
        );
        ensure!(
            b.count(&format!("{card} li.light"))? >= DAEMONS.len(),
            "{p}: fewer lights than daemons"
        );
    }
    // Every poller's heartbeat is fresh.
    for (p, tenants) in &exp.peers {
        if !tenants.is_empty() {
            let words = b.text(&format!(r#"#peers article[data-peer="{p}"] .heartbeat"#))?;
            ensure!(words == "a few seconds ago", "{p}: heartbeat {words:?}");
        }
    }
    let (sp, sd) = exp.stopped.clone();
    b.wait_attr(&light(&sp, &sd), "data-state", "down", LIVE)?;
    ensure!(
        light_color(b, &sp, &sd)? == RED,
        "stopped {sd} on {sp} is not red"
    );
    let (lp, ld) = exp.to_stop.clone();
    b.wait_attr(&light(&lp, &ld), "data-state", "up", LIVE)?;
    ensure!(
        light_color(b, &lp, &ld)? == GREEN,
        "running {ld} on {lp} is not green"
    );
    let others_up = |b: &Browser, peer: &str, except: &[&str]| -> Result<()> {
        for d in DAEMONS.iter().filter(|d| !except.contains(d)) {
            let st = b.attrs(&light(peer, d), "data-state")?;
            ensure!(
                st == [Some("up".into())],
                "{peer}: {d} shows {st:?}, expected up"
            );
        }
        Ok(())
    };
    others_up(b, &sp, &[&sd])?;
    if let Some(k) = exp.kpi {
        for (id, v) in [
            ("kpi-peers-up", k.peers_up),
            ("kpi-peers-total", k.peers_total),
            ("kpi-nodes-monitored", k.nodes),
            ("kpi-events-hour", k.events_hour),
            ("kpi-services-up", k.services[0]),
            ("kpi-services-degraded", k.services[1]),
            ("kpi-services-down", k.services[2]),
        ] {
            b.wait_attr(&format!("#{id}"), "data-value", &v.to_string(), LIVE)
                .with_context(|| format!("KPI {id}"))?;
        }
        ensure!(b.text("#kpi-nodes-monitored")? == k.nodes.to_string());
    }
    let [t_a, t_b] = exp.tenants;
    let (exact_kpi, node_down_within, shot_name) =
        (exp.kpi.is_some(), exp.node_down_within, exp.shot.clone());
    let rows = sorted(
        b.attrs("#tenants-body tr", "data-tenant")?
            .into_iter()
            .flatten()
            .collect(),
    );
    let mut want_rows: Vec<String> = [t_a, t_b]
        .iter()
        .chain(&exp.operator_extra_tenants)
        .map(u32::to_string)
        .collect();
    want_rows = sorted(want_rows);
    ensure!(
        rows == want_rows,
        "operator's tenant rows {rows:?}, expected {want_rows:?}"
    );

    // ---- a daemon stops: its light turns red live, the others keep their state ----
    let events_before = kpi(b, "kpi-events-hour")?.unwrap_or(0);
    t.stop_daemon(&lp, &ld)?;
    let at = Instant::now();
    b.wait_attr(&light(&lp, &ld), "data-state", "down", LIVE)
        .context("the stopped daemon's light did not turn red in time")?;
    took.daemon_red = at.elapsed();
    ensure!(light_color(b, &lp, &ld)? == RED, "{ld} on {lp} is not red");
    // The daemon stopped from the start may be on the same peer: it stays down.
    let mut except = vec![ld.as_str()];
    if sp == lp {
        except.push(sd.as_str());
    }
    others_up(b, &lp, &except)?;

    // ---- a node goes down: the event appears in the live list ----
    let down = t.take_node_down(t_a)?;
    let at = Instant::now();
    let row = format!(r#"#events li[data-kind="node_down"][data-node="{down}"]"#);
    b.wait_attr(&row, "data-tenant", &t_a.to_string(), node_down_within)
        .context("the node_down event did not appear live")?;
    took.node_down = at.elapsed();
    b.wait_for(
        "#kpi-events-hour",
        "data-value",
        |v| {
            v.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| {
                if exact_kpi {
                    n == events_before + 1
                } else {
                    n > events_before
                }
            })
        },
        LIVE,
    )?;
    ensure!(
        b.attrs("#events li", "data-event-id")?.len() > 1,
        "the stored events are listed too"
    );
    let shot = b.screenshot(&shot_name)?;
    eprintln!("screenshot: {}", shot.display());

    // ---- a tenant token: only that tenant's peers and events ----
    connect(b, t.tenant_token(t_b), &format!("tenant-{t_b}"))?;
    let exp = t.expect();
    let theirs: Vec<String> = sorted(
        exp.peers
            .iter()
            .filter(|(_, ts)| ts.contains(&t_b))
            .map(|(p, _)| p.clone())
            .collect(),
    );
    b.wait_count("#peers article.peer", theirs.len(), LOAD)?;
    ensure!(
        cards(b)? == theirs,
        "tenant {t_b} sees cards {:?}",
        cards(b)?
    );
    let rows: Vec<String> = b
        .attrs("#tenants-body tr", "data-tenant")?
        .into_iter()
        .flatten()
        .collect();
    ensure!(
        rows == [t_b.to_string()],
        "tenant {t_b} sees tenant rows {rows:?}"
    );
    let offered: Vec<String> = b
        .attrs("#f-tenant option", "value")?
        .into_iter()
        .flatten()
        .filter(|v| !v.is_empty())
        .collect();
    ensure!(
        offered == [t_b.to_string()],
        "tenant {t_b}'s filter offers tenants {offered:?}"
    );
    let tenants_of = |b: &Browser| -> Result<Vec<String>> {
        Ok(b.attrs("#events li", "data-tenant")?
            .into_iter()
            .flatten()
            .collect())
    };
    let evs = tenants_of(b)?;
    ensure!(!evs.is_empty(), "tenant {t_b} sees none of its events");
    ensure!(
        evs.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees events of tenants {evs:?}"
    );
    ensure!(b.count(&row)? == 0, "tenant {t_b} sees {t_a}'s node_down");
    let svc: Vec<String> = b
        .attrs("#services-body tr", "data-tenant")?
        .into_iter()
        .flatten()
        .collect();
    ensure!(
        svc.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees services of tenants {svc:?}"
    );

    // Live: the other tenant's node goes down first, then this tenant's; once this one is
    // shown, the other must not be (one stream, in order).
    let other = t.take_node_down(t_a)?;
    let own = t.take_node_down(t_b)?;
    let at = Instant::now();
    b.wait_attr(
        &format!(r#"#events li[data-kind="node_down"][data-node="{own}"]"#),
        "data-tenant",
        &t_b.to_string(),
        node_down_within,
    )
    .context("the tenant's own node_down did not appear live")?;
    took.tenant_node_down = at.elapsed();
    // The other tenant's event exists by now (not just "not yet"): then it must not show.
    t.settle(t_a, &other)?;
    let other_row = format!(r#"#events li[data-kind="node_down"][data-node="{other}"]"#);
    ensure!(
        b.count(&other_row)? == 0,
        "tenant {t_b} sees {t_a}'s node_down of {other}"
    );
    let evs = tenants_of(b)?;
    ensure!(
        evs.iter().all(|x| *x == t_b.to_string()),
        "tenant {t_b} sees events of tenants {evs:?} (other tenant's node {other})"
    );
    let shot = b.screenshot(&format!("{shot_name}-tenant"))?;
    eprintln!("screenshot: {}", shot.display());
    Ok(took)
}
