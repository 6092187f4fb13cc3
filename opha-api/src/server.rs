//! The thin hyper 1.x driver: connections, size limits, and [`Api::handle`] on a blocking
//! thread (SQLite reads block). The Home view's page, assets and live stream are routed
//! first ([`crate::home::sse::route`]).
//!
//! Sizes are refused before anything is parsed: a request target over `max_uri_bytes` is
//! 414 (hyper itself refuses a head over its 64 KiB buffer), a body over `max_body_bytes`
//! (by Content-Length, or counted while reading a chunked body) is 413 and the connection is
//! closed, since the rest of that body is never read.

use crate::{Api, Reply, RequestParts, error_body};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Most connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 1024;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` resolves. Accept errors are logged and retried.
pub async fn serve(api: Arc<Api>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("api: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(crate::home::sse::route(&api, req).await) }
            });
            let mut b = http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true)
                .max_buf_size(64 * 1024);
            if let Err(e) = b.serve_connection(TokioIo::new(stream), service).await {
                log::debug!("api: connection ended: {e}");
            }
            drop(slot);
        });
    }
}

/// Answers one request: limits, then [`Api::handle`] on a blocking thread.
pub async fn respond(api: &Arc<Api>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let cfg = api.config();
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > cfg.max_uri_bytes {
        return refuse(
            api,
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!(
                "the request target is longer than {} bytes",
                cfg.max_uri_bytes
            ),
        );
    }
    let max = cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return refuse(
            api,
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the body is larger than {max} bytes"),
        );
    }
    let mut parts = RequestParts {
        method: req.method().as_str().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        authorization: req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        content_type: req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ..RequestParts::default()
    };
    let body = Limited::new(req.into_body(), max);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => {
            let bytes = b.to_bytes();
            parts.body_len = bytes.len();
            // Only a config push reads it; other requests are refused for having one.
            parts.body = bytes.to_vec();
        }
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refuse(
                api,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                &format!("the body is larger than {max} bytes"),
            );
        }
        Ok(Err(_)) | Err(_) => {
            return refuse(
                api,
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the body could not be read in time",
            );
        }
    }
    let head = parts.method == "HEAD";
    let api2 = api.clone();
    let reply = match tokio::task::spawn_blocking(move || api2.handle(&parts)).await {
        Ok(r) => r,
        Err(e) => {
            log::error!("api: handler failed: {e}");
            Reply {
                status: 500,
                body: error_body(500, "internal", "the request failed; see the primary's log"),
            }
        }
    };
    let mut resp = json_response(reply.status, &reply.body);
    if head {
        *resp.body_mut() = Full::new(Bytes::new());
    }
    if reply.status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"opha\""),
        );
    }
    resp
}

fn refuse(api: &Api, status: StatusCode, error: &str, message: &str) -> Response<Full<Bytes>> {
    api.metrics().answered(status.as_u16());
    let mut resp = json_response(
        status.as_u16(),
        &error_body(status.as_u16(), error, message),
    );
    // The rest of the request is not read: the connection cannot carry another one.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
