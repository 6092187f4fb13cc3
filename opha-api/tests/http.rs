//! The hyper driver on 127.0.0.1: real HTTP/1.1 requests (raw bytes over TCP, so malformed
//! and oversize requests can be sent as they are), and the server keeps serving after each.

mod common;

use common::*;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Sends `request` as is, reads until the server closes (or a 5 s bound).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything (413): ignore write errors.
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
    Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(target: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_real_requests_and_survives_bad_ones() {
    let w = world();
    let World {
        dir: _dir,
        api,
        operator,
        tenant_tokens,
    } = w;
    let api = Arc::new(api);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(opha_api::server::serve(api.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    let ok = |a: &Answer| {
        assert_eq!(a.status, 200, "{}\n{}", a.head, a.body);
        let v: serde_json::Value = serde_json::from_str(&a.body).expect("JSON body");
        v
    };

    let a = raw(addr, &get("/api/v1/events?limit=5", Some(&operator))).await;
    let v = ok(&a);
    assert_eq!(v["items"].as_array().unwrap().len(), 5);
    assert!(
        a.head
            .to_ascii_lowercase()
            .contains("content-type: application/json")
    );

    let a = raw(addr, &get("/api/v1/events", None)).await;
    assert_eq!(a.status, 401);
    assert!(a.head.contains("www-authenticate: Bearer") || a.head.contains("WWW-Authenticate"));

    let a = raw(
        addr,
        &get("/api/v1/tenants/2/usage", Some(&tenant_tokens[0])),
    )
    .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert_eq!(api.metrics().forbidden_total(), 1);

    let a = raw(addr, &get("/api/v1/events?severity=loud", Some(&operator))).await;
    assert_eq!(a.status, 400);
    assert!(a.body.contains("\"param\":\"severity\""), "{}", a.body);

    // Malformed JSON in a POST: the API is read-only.
    let body = b"{\"tenant\": 1, \"kind\": ";
    let mut req = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    assert_eq!(raw(addr, &req).await.status, 405);

    // A huge declared body: refused by its Content-Length, before it is sent.
    let req = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\
         Content-Length: 1000000000\r\n\r\n"
    );
    let a = raw(addr, req.as_bytes()).await;
    assert_eq!(a.status, 413, "{}", a.head);

    // A chunked body that grows past the limit while it is read.
    let mut req = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {operator}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        req.extend(std::iter::repeat_n(b'x', 8192));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(raw(addr, &req).await.status, 413);

    // A long request target: 414 from the API's limit; a head past hyper's buffer: a 4xx.
    let long = format!("/api/v1/events?node={}", "1".repeat(20_000));
    assert_eq!(raw(addr, &get(&long, Some(&operator))).await.status, 414);
    let huge = format!("/api/v1/events?node={}", "1".repeat(200_000));
    let a = raw(addr, &get(&huge, Some(&operator))).await;
    assert!(
        a.status == 0 || (400..500).contains(&a.status),
        "{}",
        a.head
    );

    // Garbage instead of HTTP.
    let a = raw(addr, b"\x16\x03\x01\x02\x00 not http at all\r\n\r\n").await;
    assert!(
        a.status == 0 || (400..500).contains(&a.status),
        "{}",
        a.head
    );

    // Keep-alive: two requests on one connection.
    let mut two = get("/api/v1/peers", Some(&operator));
    two = String::from_utf8(two)
        .unwrap()
        .replace("Connection: close\r\n", "")
        .into_bytes();
    two.extend(get("/api/v1/services", Some(&operator)));
    let a = raw(addr, &two).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body.matches("HTTP/1.1 200").count(),
        1,
        "a second answer follows"
    );

    // Still serving after all of that.
    let v = ok(&raw(addr, &get("/api/v1/tenants/usage", Some(&operator))).await);
    assert_eq!(v["items"].as_array().unwrap().len(), 3);
    assert!(api.metrics().requests_total() >= 10);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("server stops")
        .expect("server task");
}
