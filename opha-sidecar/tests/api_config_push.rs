//! Config push through the HTTP API (issue 5 §3), in process on 127.0.0.1: two real
//! primaries with `[api]` and a real poller pipeline (bus included) whose kernel is a fake
//! that records what the config setters put in its "maps". Over real HTTP:
//! - an operator's push to the acting primary is validated there (422 naming the key; a
//!   malformed TOML body is a 422 with its line, not a 500), stored (202 with the version),
//!   and applied by the poller: its running config and kernel maps change, and the status
//!   endpoint shows the applied version;
//! - a version the poller rejects shows as failed with the reason, the previous one running;
//! - a push to the primary that does not act for the poller is refused 409, nothing stored;
//! - a tenant token is refused 403.

mod bus_support;
mod receiver_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use bus_support::{
    PUSH_BASE, PUSH_TENANTS, PUSH_V1, Poller, peer, push_pki, push_poller, push_primary,
};
use opha_common::wire::TenantId;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::receiver::{self, RunningReceiver};
use receiver_support::Pki;
use serde_json::Value;

const POLLER: &str = "poller-acp";
const MAIN: &str = "primary-acp-main";
const RED: &str = "primary-acp-red";
const TENANT: u32 = PUSH_TENANTS[0];
const TENANT2: u32 = PUSH_TENANTS[1];
const WAIT: Duration = Duration::from_secs(15);
const BASE: &str = PUSH_BASE;
const V1: &str = PUSH_V1;

fn new_pki() -> Pki {
    push_pki("api-config-push-", POLLER, MAIN, RED)
}

fn receiver_config(root: &Path, id: &str, tokens: &str) -> ReceiverFileConfig {
    push_primary(id, POLLER)
        .extra(&format!("[api]\nlisten = \"127.0.0.1:8080\"\n{tokens}"))
        .build(root)
}

/// The poller's config file; `extra` goes at the end (prefixes, ports, thresholds). Paths
/// are absolute, so the same text is valid as a push.
fn poller_text(root: &Path, main: SocketAddr, red: SocketAddr, extra: &str) -> String {
    push_poller(POLLER, "t-api-config-push", (MAIN, main), (RED, red))
        .extra(extra)
        .text(root)
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    bus_support::wait_for_sync(what, WAIT, f);
}

/// One request over a fresh connection: (status, JSON body).
fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    token: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/toml\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        ));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, v)
}

fn status_of(addr: SocketAddr, token: &str) -> Value {
    let (code, v) = http(addr, "GET", "/api/v1/pollers/config-status", token, None);
    assert_eq!(code, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["poller"] == POLLER)
        .cloned()
        .unwrap_or_else(|| panic!("no status of {POLLER}: {v}"))
}

#[test]
fn operator_pushes_over_http_to_the_acting_primary_only() {
    let pki = new_pki();
    let root = pki.root.clone();
    let p = peer(POLLER);
    let noc = opha_api::mint("noc", None).unwrap();
    let portal = opha_api::mint("portal", Some(TenantId(TENANT))).unwrap();
    let tokens = format!("{}{}", noc.to_toml(), portal.to_toml());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let main: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, MAIN, &tokens)))
        .unwrap();
    let red: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, RED, &tokens)))
        .unwrap();
    let (main_api, red_api) = (main.api_addr.unwrap(), red.api_addr.unwrap());
    let text = |extra: &str| poller_text(&root, main.addr, red.addr, extra);
    let local = PollerConfig::from_toml(&text(BASE), "poller.toml", &root).unwrap();
    let poller = Poller::start(&rt, local);
    assert_eq!(poller.version(), 0);
    wait_for("the main primary acting", || {
        main.shared.acting_term(&p).is_some()
    });
    wait_for("the poller's config stream at the main primary", || {
        let s = status_of(main_api, &noc.token);
        s["running_version"] == 0 && s["acting"] == true
    });
    let s = status_of(main_api, &noc.token);
    assert_eq!(s["state"], "applied", "{s}");
    assert_eq!(s["desired_version"], Value::Null);
    let target = format!("/api/v1/pollers/{POLLER}/config");

    // Validated at the primary: the key is named; malformed TOML is a 422 too. Nothing stored.
    let (code, v) = http(
        main_api,
        "PUT",
        &target,
        &noc.token,
        Some(&text(&BASE.replace("198.18.0.0/24", "198.18.0.9/24"))),
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["errors"][0]["key"], "prefix[0].cidr", "{v}");
    let (code, v) = http(
        main_api,
        "PUT",
        &target,
        &noc.token,
        Some(&text("[[prefix]\ncidr = ")),
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(v["errors"][0]["key"], "", "{v}");
    assert!(v["errors"][0]["line"].as_u64().unwrap() > 30, "{v}");
    let (code, v) = http(main_api, "PUT", &target, &noc.token, Some("daemon = 3\n"));
    assert_eq!(code, 422, "{v}");
    assert!(!v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert_eq!(main.shared.config_status(&p).desired_version, None);

    // A tenant token may not push, nor read configs.
    let (code, _) = http(main_api, "PUT", &target, &portal.token, Some(&text(V1)));
    assert_eq!(code, 403);
    let (code, _) = http(main_api, "GET", &target, &portal.token, None);
    assert_eq!(code, 403);

    // Applied: 202 with the version; the poller runs it, its kernel maps change, and the
    // status endpoint shows it applied.
    let (code, v) = http(main_api, "PUT", &target, &noc.token, Some(&text(V1)));
    assert_eq!(code, 202, "{v}");
    let v1 = v["version"].as_u64().unwrap();
    assert_eq!(v1, 1);
    wait_for("version 1 running", || poller.version() == v1);
    assert!(poller.kernel.has_prefix("198.19.1.0/24", TENANT2));
    assert_eq!(poller.kernel.maps(|m| m.tcp_ports.clone()), vec![22, 443]);
    let running = poller.pipeline().live_config().config();
    assert_eq!(running.thresholds.down_after, 5);
    wait_for("the status applied", || {
        let s = status_of(main_api, &noc.token);
        s["state"] == "applied" && s["running_version"] == v1
    });
    let (code, v) = http(main_api, "GET", &target, &noc.token, None);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["version"], v1);
    assert_eq!(v["config"], text(V1));
    assert_eq!(v["status"]["pending_version"], Value::Null);

    // Rejected by the poller (the interface cannot change live): failed with the reason, v1
    // still running.
    let bad = text(V1).replace("interface = \"lo\"", "interface = \"eth9\"");
    let (code, v) = http(main_api, "PUT", &target, &noc.token, Some(&bad));
    assert_eq!(code, 202, "{v}");
    let v2 = v["version"].as_u64().unwrap();
    wait_for("the rejection shown", || {
        status_of(main_api, &noc.token)["state"] == "failed"
    });
    let s = status_of(main_api, &noc.token);
    assert_eq!(s["last_failure"]["version"], v2, "{s}");
    assert_eq!(s["last_failure"]["kind"], "rejected", "{s}");
    let reason = s["last_failure"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("interface") && reason.contains("eth9"),
        "{s}"
    );
    assert_eq!(s["running_version"], v1);
    assert_eq!(poller.version(), v1);

    // The redundant primary does not act for the poller: 409, nothing stored there.
    assert_eq!(red.shared.acting_term(&p), None);
    let (code, v) = http(red_api, "PUT", &target, &noc.token, Some(&text(V1)));
    assert_eq!(code, 409, "{v}");
    assert_eq!(v["error"], "not_active");
    assert_eq!(red.shared.config_status(&p).desired_version, None);
    assert_eq!(status_of(red_api, &noc.token)["acting"], false);

    // The push counters and forbidden count reached /metrics' source.
    let api = main.shared.api.as_ref().unwrap();
    assert_eq!(api.metrics().forbidden_total(), 2);
    assert_eq!(api.metrics().responses(202), 2);

    drop(poller);
    rt.block_on(async {
        main.shutdown().await;
        red.shutdown().await;
    });
}
