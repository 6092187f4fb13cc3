//! Config push end to end, in process on 127.0.0.1: two real primaries (`receiver::start`)
//! and a real poller pipeline (`poller::Pipeline` with its bus), whose kernel is a fake that
//! records what the config setters put in its "maps":
//! - applied live: the poller's running config, version and kernel maps change;
//! - rejected (a key that cannot change live; a kernel map that fails to update) with the
//!   reason at the primary, and the previous version still running, maps put back;
//! - delivered on reconnect: a version stored while the poller was down reaches it when it
//!   returns (and the restarted poller ran the last applied version from its own disk);
//! - refused from a fenced primary: the redundant primary, made to believe it acts, pushes;
//!   the poller refuses it (counted), its config unchanged.

mod bus_support;
mod receiver_support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bus_support::{
    PUSH_BASE, PUSH_TENANTS, PUSH_V1, Poller, peer, push_pki, push_poller, push_primary,
    wait_for_sync as wait_for,
};
use opha_bus::message::Grant;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::poller::config_apply::{load_pushed, pushed_path};
use opha_sidecar::receiver::{self, RunningReceiver};
use receiver_support::Pki;

const POLLER: &str = "poller-cp";
const MAIN: &str = "primary-cp-main";
const RED: &str = "primary-cp-red";
const TENANT: u32 = PUSH_TENANTS[0];
const TENANT2: u32 = PUSH_TENANTS[1];
const BASE: &str = PUSH_BASE;
const V1: &str = PUSH_V1;

fn new_pki() -> Pki {
    push_pki("config-push-", POLLER, MAIN, RED)
}

fn receiver_config(root: &Path, id: &str) -> ReceiverFileConfig {
    push_primary(id, POLLER).build(root)
}

/// The poller's config file; `extra` goes at the end (prefixes, ports, thresholds). Paths
/// are absolute, so the same text is valid as a push.
fn poller_text(root: &Path, main: SocketAddr, red: SocketAddr, extra: &str) -> String {
    push_poller(POLLER, "t-config-push", (MAIN, main), (RED, red))
        .extra(extra)
        .text(root)
}

#[test]
fn config_push_applied_rejected_delivered_on_reconnect_and_fenced() {
    let pki = new_pki();
    let root = pki.root.clone();
    let p = peer(POLLER);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let main: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, MAIN)))
        .unwrap();
    let red: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, RED)))
        .unwrap();
    let text = |extra: &str| poller_text(&root, main.addr, red.addr, extra);
    let local = PollerConfig::from_toml(&text(BASE), "poller.toml", &root).unwrap();

    let poller = Poller::start(&rt, local.clone());
    assert_eq!(poller.version(), 0, "the local file, never pushed");
    wait_for("the main primary acting", Duration::from_secs(10), || {
        main.shared.acting_term(&p).is_some()
    });
    wait_for(
        "the poller's config stream at the main primary",
        Duration::from_secs(10),
        || main.shared.config_status(&p).running_version == Some(0),
    );

    // Validation at the primary names the key; nothing is stored.
    let e = main
        .shared
        .push_config(&p, &text(&BASE.replace("198.18.0.0/24", "198.18.0.9/24")))
        .unwrap_err();
    assert_eq!(e.problems[0].key, "prefix[0].cidr", "{e}");
    let e = main
        .shared
        .push_config(&peer("poller-unknown"), &text(BASE))
        .unwrap_err();
    assert_eq!(e.problems[0].key, "poller", "{e}");
    assert_eq!(main.shared.config_status(&p).desired_version, None);

    // 1. Applied live: a second prefix with another tenant, TCP check ports, a threshold.
    let writes_before = poller.kernel.maps(|m| m.writes);
    let pushed_at = Instant::now();
    let v1 = main.shared.push_config(&p, &text(V1)).unwrap();
    assert_eq!(v1, 1);
    wait_for("version 1 running", Duration::from_secs(10), || {
        poller.version() == v1
    });
    let latency = pushed_at.elapsed();
    eprintln!("push to applied (kernel maps written): {latency:?}");
    assert!(poller.kernel.has_prefix("198.19.1.0/24", TENANT2));
    assert!(poller.kernel.has_prefix("198.18.0.0/24", TENANT));
    assert_eq!(poller.kernel.maps(|m| m.tcp_ports.clone()), vec![22, 443]);
    // Prefixes and TCP ports written, the port config untouched (unchanged).
    assert_eq!(poller.kernel.maps(|m| m.writes), writes_before + 2);
    let running = poller.pipeline().live_config().config();
    assert_eq!(running.thresholds.down_after, 5);
    assert_eq!(running.prefixes.len(), 2);
    let persisted = load_pushed(&pushed_path(&running)).unwrap().unwrap();
    assert_eq!(persisted.version, v1);
    assert_eq!(persisted.primary, MAIN);
    wait_for("the primary's status", Duration::from_secs(5), || {
        let s = main.shared.config_status(&p);
        s.running_version == Some(v1) && s.pending_version.is_none()
    });
    assert_eq!(main.shared.config_status(&p).last_failure, None);

    // 2a. Rejected: the interface cannot change live. The reason names it; v1 keeps running.
    let bad = text(V1).replace("interface = \"lo\"", "interface = \"eth9\"");
    let v2 = main.shared.push_config(&p, &bad).unwrap();
    assert_eq!(v2, 2);
    wait_for("the rejection", Duration::from_secs(10), || {
        main.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == v2)
    });
    let s = main.shared.config_status(&p);
    let f = s.last_failure.clone().unwrap();
    assert_eq!(f.kind, "rejected");
    assert!(
        f.reason.contains("interface") && f.reason.contains("eth9"),
        "{f:?}"
    );
    assert_eq!(s.running_version, Some(v1));
    assert_eq!(s.desired_version, Some(v2));
    assert_eq!(poller.version(), v1);
    assert!(poller.kernel.has_prefix("198.19.1.0/24", TENANT2));

    // 2b. Rejected by the kernel: the port map fails after the prefix map was written; the
    //     prefix map is put back, v1 keeps running.
    poller.kernel.0.lock().unwrap().fail_ports = true;
    let v3_text = text(
        &V1.replace("198.19.1.0/24", "198.19.2.0/24")
            .replace("[ports]\n", "[ports]\nsnmp = 1161\n"),
    );
    let v3 = main.shared.push_config(&p, &v3_text).unwrap();
    wait_for("the kernel rejection", Duration::from_secs(10), || {
        main.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == v3)
    });
    let f = main.shared.config_status(&p).last_failure.unwrap();
    assert!(
        f.reason.contains("ports") && f.reason.contains("injected"),
        "{f:?}"
    );
    assert_eq!(poller.version(), v1);
    assert!(
        poller.kernel.has_prefix("198.19.1.0/24", TENANT2),
        "put back"
    );
    assert!(!poller.kernel.has_prefix("198.19.2.0/24", TENANT2));
    assert_eq!(poller.kernel.maps(|m| m.ports.snmp_port), 161);
    poller.kernel.0.lock().unwrap().fail_ports = false;

    // 3. Delivered on reconnect: the poller goes away, a version is stored meanwhile.
    poller.stop();
    wait_for("the poller gone", Duration::from_secs(10), || {
        !main.shared.config_status(&p).connected && main.shared.acting_term(&p).is_none()
    });
    let v4_text = text(&V1.replace("down_after = 5", "down_after = 7"));
    let v4 = main.shared.push_config(&p, &v4_text).unwrap();
    assert_eq!(main.shared.config_status(&p).running_version, Some(v1));
    // The restarted poller first runs what it applied last (v1), from its own disk.
    let poller = Poller::start(&rt, local.clone());
    let started = poller.pipeline().live_config().config();
    assert!(poller.version() == v1 || poller.version() == v4);
    assert_eq!(
        started.prefixes.len(),
        2,
        "the pushed prefixes, not the file's"
    );
    assert!(poller.kernel.has_prefix("198.19.1.0/24", TENANT2));
    wait_for(
        "version 4 after the reconnect",
        Duration::from_secs(10),
        || poller.version() == v4,
    );
    assert_eq!(
        poller
            .pipeline()
            .live_config()
            .config()
            .thresholds
            .down_after,
        7
    );
    wait_for("the primary's status", Duration::from_secs(5), || {
        main.shared.config_status(&p).running_version == Some(v4)
    });
    assert_eq!(main.shared.config_status(&p).last_failure, None);

    // 4. Refused from a fenced primary: the redundant one is made to believe it acts with
    //    the current term (a stale belief); the poller's arbiter names the main primary.
    wait_for("the main primary acting", Duration::from_secs(10), || {
        main.shared.acting_term(&p).is_some()
    });
    wait_for(
        "the poller's config stream at the redundant primary",
        Duration::from_secs(10),
        // Its view follows versions applied from the main primary.
        || red.shared.config_status(&p).running_version == Some(v4),
    );
    let term = main.shared.acting_term(&p).unwrap();
    red.shared
        .fencing
        .on_grant(
            &p,
            &Grant {
                term,
                active: Some(peer(RED)),
                lease_ms: 5_000,
            },
        )
        .unwrap();
    assert_eq!(red.shared.acting_term(&p), Some(term), "believes it acts");
    let fenced_text = text(&V1.replace("down_after = 5", "down_after = 9"));
    let vr = red.shared.push_config(&p, &fenced_text).unwrap();
    assert!(vr > v4, "numbered above what the poller runs: {vr}");
    wait_for("the fenced push refused", Duration::from_secs(10), || {
        red.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == vr)
    });
    let f = red.shared.config_status(&p).last_failure.unwrap();
    assert_eq!(f.kind, "not_active");
    assert!(f.reason.contains("not the active primary"), "{f:?}");
    assert_eq!(poller.version(), v4);
    assert_eq!(
        poller
            .pipeline()
            .live_config()
            .config()
            .thresholds
            .down_after,
        7
    );
    let metrics = {
        let mut o = String::new();
        poller.pipeline().shared().bus.get().unwrap().render(&mut o);
        o
    };
    assert!(
        metrics.contains("opha_config_pushes_total{outcome=\"not_active\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("opha_config_version {v4}")));
    let primary_metrics = main.shared.render_metrics();
    assert!(
        primary_metrics.contains(&format!(
            "opha_receiver_config_version{{poller=\"{POLLER}\",kind=\"running\"}} {v4}"
        )),
        "{primary_metrics}"
    );

    poller.stop();
    rt.block_on(async {
        main.shutdown().await;
        red.shutdown().await;
    });
}
