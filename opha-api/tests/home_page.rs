//! The Home page and its assets: served by the binary over real HTTP with the right types and
//! headers, no external URL anywhere, the ids a browser test drives, and the JS heartbeat
//! words in step with the Rust ones.

mod common;

use common::*;
use opha_api::home::{AGE_THRESHOLDS, assets, heartbeat_age_words};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn fetch(addr: std::net::SocketAddr, method: &str, target: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_are_served() {
    let w = world();
    let api = Arc::new(w.api);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(opha_api::server::serve(api.clone(), listener, async {
        let _ = rx.await;
    }));

    for (path, ctype, must) in [
        ("/", "text/html", "<script src=\"/assets/home.js\""),
        ("/home", "text/html", "id=\"peers\""),
        (
            "/assets/home.css",
            "text/css",
            ".light[data-state=\"down\"]",
        ),
        ("/assets/home.js", "text/javascript", "function ageWords"),
    ] {
        let (status, head, body) = fetch(addr, "GET", path).await;
        assert_eq!(status, 200, "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {ctype}; charset=utf-8")),
            "{path}: {head}"
        );
        assert!(head.contains("content-security-policy: default-src 'none'"));
        assert!(head.contains("x-content-type-options: nosniff"));
        assert!(body.contains(must), "{path} lacks {must}");
        // No token needed for the page: it holds no data.
        let (status, _, body) = fetch(addr, "HEAD", path).await;
        assert_eq!(status, 200);
        assert!(body.is_empty());
    }
    // Not an asset: the API's 404 (and data still needs a token).
    let (status, _, _) = fetch(addr, "GET", "/assets/other.js").await;
    assert_eq!(status, 404);
    let (status, _, _) = fetch(addr, "GET", "/api/v1/summary").await;
    assert_eq!(status, 401);
    let (status, _, _) = fetch(addr, "POST", "/").await;
    assert_eq!(status, 405);

    let _ = tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn no_external_urls() {
    for a in assets::ASSETS {
        let lower = a.body.to_ascii_lowercase();
        for bad in ["http://", "https://", "//cdn", "url(", "@import"] {
            assert!(!lower.contains(bad), "{} contains {bad:?}", a.path);
        }
        // Every src/href is relative to this origin (or the empty data: icon).
        for attr in ["src=\"", "href=\""] {
            for (i, _) in lower.match_indices(attr) {
                let v = &lower[i + attr.len()..];
                assert!(
                    v.starts_with('/') || v.starts_with("data:,\""),
                    "{}: {}",
                    a.path,
                    &v[..v.len().min(40)]
                );
            }
        }
    }
    // The JS fetches only API paths of this origin, with the token in a header.
    assert!(assets::JS.contains("Authorization: 'Bearer ' + S.token"));
    assert!(!assets::JS.contains("?token"));
    assert!(!assets::JS.contains("EventSource("));
    assert!(
        !assets::JS.contains("innerHTML"),
        "text goes in as textContent"
    );
}

#[test]
fn the_page_has_the_ids_a_browser_test_drives() {
    let html = assets::HTML;
    for id in [
        "token",
        "connect",
        "live-status",
        "scope",
        "app",
        "kpi-peers-up",
        "kpi-peers-total",
        "kpi-nodes-monitored",
        "kpi-events-hour",
        "kpi-services-up",
        "kpi-services-degraded",
        "kpi-services-down",
        "peers",
        "services-body",
        "events",
        "f-tenant",
        "f-node",
        "f-severity",
        "f-kind",
        "tenants-body",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "no #{id}");
    }
    // The JS sets the data attributes the test asserts on.
    for attr in [
        "'data-peer'",
        "'data-daemon'",
        "'data-state'",
        "dataset.stream",
        "dataset.up",
        "dataset.ready = 'true'",
        "dataset.live = state",
        "'data-event-id'",
        "'data-goto-peer'",
    ] {
        assert!(assets::JS.contains(attr), "home.js does not set {attr}");
    }
}

#[test]
fn js_thresholds_match_rust() {
    let list = AGE_THRESHOLDS.map(|t| t.to_string()).join(", ");
    let line = format!("const AGE_THRESHOLDS = [{list}];");
    assert!(assets::JS.contains(&line), "home.js lacks {line}");
}

/// Runs home.js's pure functions under node (when installed) and compares with Rust.
#[test]
fn js_age_words_match_rust_under_node() {
    if std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: node is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let js = dir.path().join("home.js");
    std::fs::write(&js, assets::JS).unwrap();
    let mut ages: Vec<u64> = Vec::new();
    for s in (0..200u64).chain((0..2000).map(|i| i * 97)) {
        ages.push(s * 1000);
        ages.push(s * 1000 + 999);
    }
    for &t in &AGE_THRESHOLDS {
        for d in [-1i64, 0, 1] {
            let s = (t as i64 + d) as u64;
            ages.push(s * 1000);
        }
    }
    ages.extend([3 * 86_400_000, 400 * 86_400_000, 36 * 3_600_000 - 1]);
    let script = format!(
        "const m = require({js:?}); const ages = {ages:?}; \
         const sse = m.parseSse('event: peer\\ndata: {{\"a\":1}}\\n\\n: keepalive\\n\\nevent: event\\ndata: 2\\n\\ndata: partial');\
         process.stdout.write(JSON.stringify({{words: ages.map(m.ageWords), never: m.ageWords(null), \
         neg: m.ageWords(-5000), sse: sse, up: [m.peerIsUp({{state:'disconnected'}}, 0, 60000), \
         m.peerIsUp({{state:'unknown'}}, 60000, 60000), m.peerIsUp(undefined, 60001, 60000), \
         m.peerIsUp({{state:'catching_up', lag_records: 3}}, null, 60000)]}}));",
        js = js.to_str().unwrap(),
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
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let words = v["words"].as_array().unwrap();
    assert_eq!(words.len(), ages.len());
    for (age, w) in ages.iter().zip(words) {
        assert_eq!(
            w.as_str().unwrap(),
            heartbeat_age_words(*age),
            "age {age} ms"
        );
    }
    assert_eq!(v["never"], "never");
    assert_eq!(v["neg"], "a few seconds ago");
    assert_eq!(
        v["sse"],
        serde_json::json!([[{"event": "peer", "data": "{\"a\":1}"}, {"event": "event", "data": "2"}], "data: partial"])
    );
    assert_eq!(v["up"], serde_json::json!([false, true, false, true]));
}
