//! The poller config endpoints over a fake [`ConfigOps`]: reading, pushing (202 with the
//! version), validation errors naming the key (422, malformed TOML included, never a 500),
//! 409 from a server that does not act for the poller, 403 for tenant tokens (counted),
//! media types, sizes and the method rules; then the same over real HTTP on 127.0.0.1.

mod common;

use common::*;
use opha_api::RequestParts;
use opha_api::poller_config::{
    ConfigFailure, ConfigOps, ConfigProblem, ConfigStatus, PollerConfigView, PushRefusal,
};
use opha_common::wire::PeerId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TOML: Option<&str> = Some("application/toml");

/// Two pollers: `poller-a` this server acts for, `poller-b` it does not. A config is valid
/// when it is a table whose `poller_id` names the poller and whose `interval` (if any) is
/// positive.
#[derive(Default)]
struct FakeOps {
    pollers: Mutex<BTreeMap<String, PollerConfigView>>,
    pushes: AtomicU64,
}

impl FakeOps {
    fn new() -> Arc<FakeOps> {
        let ops = FakeOps::default();
        for (id, acting) in [("poller-a", true), ("poller-b", false)] {
            let status = ConfigStatus {
                poller: id.into(),
                running_version: Some(0),
                connected: true,
                acting,
                ..ConfigStatus::default()
            };
            let view = PollerConfigView {
                desired: None,
                status,
            };
            ops.pollers.lock().unwrap().insert(id.into(), view);
        }
        Arc::new(ops)
    }
}

impl ConfigOps for FakeOps {
    fn statuses(&self) -> Vec<ConfigStatus> {
        self.pollers
            .lock()
            .unwrap()
            .values()
            .map(|v| v.status.clone())
            .collect()
    }

    fn get(&self, poller: &PeerId) -> Option<PollerConfigView> {
        self.pollers.lock().unwrap().get(poller.as_str()).cloned()
    }

    fn push(&self, poller: &PeerId, text: &str) -> Result<u64, PushRefusal> {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        let mut p = self.pollers.lock().unwrap();
        let PollerConfigView { desired, status } = p
            .get_mut(poller.as_str())
            .ok_or(PushRefusal::UnknownPoller)?;
        if !status.acting {
            return Err(PushRefusal::NotActive(format!(
                "this server does not act for {poller}"
            )));
        }
        let table: toml::Table = text.parse().expect("the API checked the syntax");
        let mut problems = Vec::new();
        if table.get("poller_id").and_then(|v| v.as_str()) != Some(poller.as_str()) {
            problems.push(ConfigProblem::new("poller_id", "must name this poller"));
        }
        if table
            .get("interval")
            .and_then(|v| v.as_integer())
            .is_some_and(|i| i <= 0)
        {
            problems.push(ConfigProblem::new("interval", "must be positive"));
        }
        if !problems.is_empty() {
            return Err(PushRefusal::Invalid(problems));
        }
        let version = desired.as_ref().map_or(0, |d| d.0) + 1;
        *desired = Some((version, text.to_string()));
        status.desired_version = Some(version);
        status.pending_version = Some(version);
        Ok(version)
    }
}

fn push(w: &World, target: &str, token: &str, ct: Option<&str>, body: &str) -> opha_api::Reply {
    w.api.handle(&RequestParts::with_body(
        "PUT",
        target,
        Some(token),
        ct,
        body.as_bytes(),
    ))
}

fn keys(r: &opha_api::Reply) -> Vec<String> {
    r.body["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors: {}", r.body))
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn read_push_and_validation_errors_name_the_key() {
    let w = world();
    let ops = FakeOps::new();
    assert!(w.api.set_config_ops(ops.clone()));
    let op = w.operator.clone();

    let all = w.op("/api/v1/pollers/config-status");
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{all}");
    assert_eq!(items[0]["poller"], "poller-a");
    assert_eq!(items[0]["state"], "applied");
    assert_eq!(items[0]["running_version"], 0);
    assert_eq!(items[1]["acting"], false);

    let one = w.op("/api/v1/pollers/poller-a/config");
    assert_eq!(one["config"], Value::Null);
    assert_eq!(one["version"], Value::Null);
    assert_eq!(one["status"]["state"], "applied");

    // Accepted: 202 with the version; the text reads back.
    let text = "poller_id = \"poller-a\"\ninterval = 5\n";
    let r = push(&w, "/api/v1/pollers/poller-a/config", &op, TOML, text);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["status"]["state"], "pending");
    assert_eq!(r.body["status"]["pending_version"], 1);
    let one = w.op("/api/v1/pollers/poller-a/config");
    assert_eq!(
        (one["version"].as_u64(), one["config"].as_str()),
        (Some(1), Some(text))
    );
    // POST is the same as PUT; a charset parameter is fine.
    let r = w.api.handle(&RequestParts::with_body(
        "POST",
        "/api/v1/pollers/poller-a/config/",
        Some(&op),
        Some("text/plain; charset=utf-8"),
        text.as_bytes(),
    ));
    assert_eq!(
        (r.status, r.body["version"].as_u64()),
        (202, Some(2)),
        "{}",
        r.body
    );

    // Invalid: 422 with every problem naming its key; nothing stored.
    let r = push(
        &w,
        "/api/v1/pollers/poller-a/config",
        &op,
        TOML,
        "poller_id = \"poller-z\"\ninterval = -1\n",
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["error"], "invalid_config");
    assert_eq!(keys(&r), ["poller_id", "interval"]);
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("interval: must be positive"),
        "{}",
        r.body
    );
    assert_eq!(w.op("/api/v1/pollers/poller-a/config")["version"], 2);

    // Malformed TOML: 422 with the line and column, before the receiver is asked.
    let before = ops.pushes.load(Ordering::Relaxed);
    for bad in [
        "poller_id = \"poller-a\"\ninterval = \n",
        "[[prefix]\ncidr = 1",
        "poller_id = \"unterminated\n",
        "= = =",
    ] {
        let r = push(&w, "/api/v1/pollers/poller-a/config", &op, TOML, bad);
        assert_eq!(r.status, 422, "{bad:?}: {}", r.body);
        assert_eq!(keys(&r), [""], "{}", r.body);
        assert!(r.body["errors"][0]["line"].is_u64(), "{}", r.body);
    }
    let r = push(
        &w,
        "/api/v1/pollers/poller-a/config",
        &op,
        TOML,
        "poller_id = \"poller-a\"\ninterval = \n",
    );
    assert_eq!(r.body["errors"][0]["line"], 2, "{}", r.body);
    let r = w.api.handle(&RequestParts::with_body(
        "PUT",
        "/api/v1/pollers/poller-a/config",
        Some(&op),
        TOML,
        b"poller_id = \"\xff\"",
    ));
    assert_eq!(r.status, 422, "not UTF-8: {}", r.body);
    assert_eq!(
        ops.pushes.load(Ordering::Relaxed),
        before,
        "never reached the receiver"
    );

    // Not the acting primary: 409, nothing stored.
    let r = push(
        &w,
        "/api/v1/pollers/poller-b/config",
        &op,
        TOML,
        "poller_id = \"poller-b\"\n",
    );
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.body["error"], "not_active");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .starts_with("only the active primary may push"),
        "{}",
        r.body
    );
    assert_eq!(
        w.op("/api/v1/pollers/poller-b/config")["version"],
        Value::Null
    );

    // Unknown poller: 404; not a peer id: 400; parameters: 400.
    let r = push(&w, "/api/v1/pollers/poller-q/config", &op, TOML, "a = 1");
    assert_eq!((r.status, r.body["param"].as_str()), (404, Some("poller")));
    assert_eq!(
        w.get("/api/v1/pollers/poller-q/config", Some(&op)).status,
        404
    );
    let r = w.get("/api/v1/pollers/Not%20A%20Peer/config", Some(&op));
    assert_eq!((r.status, r.body["param"].as_str()), (400, Some("poller")));
    let r = w.get("/api/v1/pollers/config-status?tenant=1", Some(&op));
    assert_eq!((r.status, r.body["param"].as_str()), (400, Some("tenant")));
    let r = push(&w, "/api/v1/pollers/poller-a/config?dry=1", &op, TOML, text);
    assert_eq!((r.status, r.body["param"].as_str()), (400, Some("query")));

    // Media types: TOML text only.
    for ct in [
        None,
        Some("application/json"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let r = push(&w, "/api/v1/pollers/poller-a/config", &op, ct, text);
        assert_eq!(r.status, 415, "{ct:?}: {}", r.body);
    }
}

#[test]
fn tenant_tokens_are_refused_and_counted() {
    let w = world();
    w.api.set_config_ops(FakeOps::new());
    let t1 = w.tenant(1).to_string();
    let before = w.api.metrics().forbidden_total();
    for target in [
        "/api/v1/pollers/config-status",
        "/api/v1/pollers/poller-a/config",
    ] {
        let r = w.get(target, Some(&t1));
        assert_eq!(r.status, 403, "{target}: {}", r.body);
        assert_eq!(r.body["error"], "forbidden");
    }
    let r = push(
        &w,
        "/api/v1/pollers/poller-a/config",
        &t1,
        TOML,
        "poller_id = \"poller-a\"\n",
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(w.api.metrics().forbidden_total(), before + 3);
    assert_eq!(
        w.op("/api/v1/pollers/poller-a/config")["version"],
        Value::Null
    );
    // No token at all: 401.
    let r = w.api.handle(&RequestParts::with_body(
        "PUT",
        "/api/v1/pollers/poller-a/config",
        None,
        TOML,
        b"poller_id = \"poller-a\"\n",
    ));
    assert_eq!(r.status, 401);
}

#[test]
fn methods_bodies_and_sizes() {
    let w = world();
    w.api.set_config_ops(FakeOps::new());
    let op = w.operator.clone();
    let req = |m: &str, target: &str, body: &[u8]| {
        w.api
            .handle(&RequestParts::with_body(m, target, Some(&op), TOML, body))
    };
    // Writes only on a poller's config.
    for (m, target) in [
        ("PUT", "/api/v1/events"),
        ("POST", "/api/v1/summary"),
        ("PUT", "/api/v1/pollers/config-status"),
        ("PUT", "/api/v1/pollers"),
        ("PUT", "/api/v1/pollers/poller-a"),
        ("PUT", "/api/v1/pollers/poller-a/config/x"),
        ("POST", "/"),
        ("DELETE", "/api/v1/pollers/poller-a/config"),
        ("PATCH", "/api/v1/pollers/poller-a/config"),
        ("OPTIONS", "/api/v1/pollers/poller-a/config"),
    ] {
        let r = req(m, target, b"poller_id = \"poller-a\"\n");
        assert_eq!(r.status, 405, "{m} {target}: {}", r.body);
    }
    // Other requests still carry no body, the config's GET included.
    let r = req("GET", "/api/v1/pollers/poller-a/config", b"x = 1");
    assert_eq!((r.status, r.body["param"].as_str()), (400, Some("body")));
    let r = req("GET", "/api/v1/events", b"x = 1");
    assert_eq!(r.status, 400);
    // Over max_body_bytes: 413.
    let big = format!("poller_id = \"poller-a\"\n# {}\n", "x".repeat(70 * 1024));
    let r = req("PUT", "/api/v1/pollers/poller-a/config", big.as_bytes());
    assert_eq!(r.status, 413, "{}", r.body);
    // HEAD reads like GET.
    let r = req("HEAD", "/api/v1/pollers/config-status", b"");
    assert_eq!(r.status, 200);
}

#[test]
fn without_config_ops_the_endpoints_are_unavailable() {
    let w = world();
    let r = w.get("/api/v1/pollers/config-status", Some(&w.operator));
    assert_eq!(r.status, 503, "{}", r.body);
    let r = push(
        &w,
        "/api/v1/pollers/poller-a/config",
        &w.operator.clone(),
        TOML,
        "poller_id = \"poller-a\"\n",
    );
    assert_eq!(r.status, 503, "{}", r.body);
}

/// Sends `request` as is, reads until the server closes (bounded): (status, body).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn put(target: &str, token: &str, ct: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http() {
    let World {
        dir: _dir,
        api,
        operator,
        tenant_tokens,
    } = world();
    let api = Arc::new(api.with_config_ops(FakeOps::new()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(opha_api::server::serve(api.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let target = "/api/v1/pollers/poller-a/config";

    let (status, body) = raw(
        addr,
        &put(
            target,
            &operator,
            "application/toml",
            b"poller_id = \"poller-a\"\n",
        ),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], 1);

    let (status, body) = raw(
        addr,
        &put(
            target,
            &operator,
            "text/plain",
            b"poller_id = \"poller-a\"\n[[prefix]\n",
        ),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["key"], "");
    assert_eq!(v["errors"][0]["line"], 2, "{v}");

    let (status, _) = raw(
        addr,
        &put(
            target,
            &tenant_tokens[0],
            "text/plain",
            b"poller_id = \"poller-a\"\n",
        ),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = raw(
        addr,
        &put(
            "/api/v1/pollers/poller-b/config",
            &operator,
            "text/plain",
            b"poller_id = \"poller-b\"\n",
        ),
    )
    .await;
    assert_eq!(status, 409);

    // A huge declared body: 413 by its Content-Length, before it is sent.
    let req = format!(
        "PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\
         Content-Type: text/plain\r\nContent-Length: 1000000000\r\n\r\n"
    );
    assert_eq!(raw(addr, req.as_bytes()).await.0, 413);
    // A chunked body growing past the limit while it is read: 413.
    let mut req = format!(
        "PUT {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\
         Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        req.extend(std::iter::repeat_n(b'#', 8192));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &req).await.0, 413);

    // Still serving; the accepted version reads back.
    let get = format!(
        "GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw(addr, get.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["config"], "poller_id = \"poller-a\"\n");

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .expect("server task");
}

#[test]
fn failure_is_shown_with_its_reason() {
    let s = ConfigStatus {
        poller: "poller-a".into(),
        desired_version: Some(3),
        running_version: Some(2),
        last_failure: Some(ConfigFailure {
            version: 3,
            kind: "rejected".into(),
            reason: "interface: cannot change while the poller runs".into(),
        }),
        ..ConfigStatus::default()
    };
    let v = s.to_json();
    assert_eq!(v["state"], "failed");
    assert_eq!(v["last_failure"]["kind"], "rejected");
    assert!(
        v["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("interface")
    );
}

/// The page carries the config form and sets the attributes a browser test reads.
#[test]
fn the_page_has_the_config_form() {
    use opha_api::home::assets;
    for id in [
        "config-section",
        "config-poller",
        "config-status",
        "config-text",
        "config-push",
        "config-result",
        "config-errors",
    ] {
        assert!(assets::HTML.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    // dataset.configApplied is data-config-applied, and so on.
    for attr in [
        "'configApplied'",
        "'configPending'",
        "'configError'",
        "'data-key'",
        "'data-config-poller'",
        "/api/v1/pollers/config-status",
        "'Content-Type': contentType",
    ] {
        assert!(assets::JS.contains(attr), "home.js lacks {attr}");
    }
    // Only operators ask for configs (a tenant's request would be a counted 403).
    assert!(assets::JS.contains("if (!S.operator) return;"));
}

/// The page's configView agrees with the server's state words (under node, when installed).
#[test]
fn js_config_view_matches_rust_under_node() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: node is not installed");
        return;
    }
    let failure = |v: u64, kind: &str| ConfigFailure {
        version: v,
        kind: kind.into(),
        reason: format!("reason {v}"),
    };
    let cases = [
        ConfigStatus::default(),
        ConfigStatus {
            running_version: Some(0),
            ..ConfigStatus::default()
        },
        ConfigStatus {
            desired_version: Some(2),
            running_version: Some(1),
            pending_version: Some(2),
            connected: true,
            ..ConfigStatus::default()
        },
        ConfigStatus {
            desired_version: Some(2),
            running_version: Some(2),
            ..ConfigStatus::default()
        },
        ConfigStatus {
            desired_version: Some(3),
            running_version: Some(2),
            last_failure: Some(failure(3, "rejected")),
            ..ConfigStatus::default()
        },
        ConfigStatus {
            desired_version: Some(4),
            running_version: Some(2),
            last_failure: Some(failure(4, "not_active")),
            ..ConfigStatus::default()
        },
    ];
    let input: Vec<Value> = cases.iter().map(ConfigStatus::to_json).collect();
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("home.js");
    std::fs::write(&js, opha_api::home::assets::JS).unwrap();
    let script = format!(
        "const m = require({js:?}); const input = {input}; \
         process.stdout.write(JSON.stringify(input.map(m.configView)));",
        js = js.to_str().unwrap(),
        input = Value::Array(input.clone()),
    );
    let out = std::process::Command::new("node")
        .arg("-e")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let views: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (s, v) in cases.iter().zip(&views) {
        assert_eq!(v["state"], s.state(), "{s:?}: {v}");
        let applied = if s.state() == "unknown" {
            None
        } else {
            s.running_version
        };
        assert_eq!(v["applied"].as_u64(), applied, "{s:?}: {v}");
        let pending = (s.state() == "pending")
            .then_some(s.desired_version)
            .flatten();
        assert_eq!(v["pending"].as_u64(), pending, "{s:?}: {v}");
        match &s.last_failure {
            Some(f) if s.state() == "failed" => {
                assert_eq!(v["error"], f.reason.as_str());
                assert!(v["text"].as_str().unwrap().contains(&f.reason), "{v}");
            }
            _ => assert!(v["error"].is_null(), "{v}"),
        }
    }
    assert!(
        views[5]["text"]
            .as_str()
            .unwrap()
            .contains("not the active primary")
    );
}
