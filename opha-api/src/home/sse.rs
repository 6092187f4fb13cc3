//! HTTP for the Home view: the embedded page and assets, and `GET /api/v1/live` as
//! Server-Sent Events. Everything else goes to [`crate::server::respond`].
//!
//! The live stream is authenticated like the API (`Authorization: Bearer`; the page reads it
//! with `fetch()`, since `EventSource` cannot send headers, and tokens never go in URLs).
//! Each stream is a [`Subscription`] pumped by one task into a small bounded channel that is
//! the response body: a client that stops reading blocks only its own pump, whose
//! subscription then lags (bounded by the hub's capacity) and gets `event: lagged`.

use super::assets::{self, CONTENT_SECURITY_POLICY};
use crate::live::{Subscription, sse_hello, sse_item};
use crate::server::respond;
use crate::{Api, error_body};
use http_body_util::{Either, Full};
use hyper::body::{Body, Bytes, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// The path of the live stream.
pub const LIVE_PATH: &str = "/api/v1/live";

/// Frames written ahead of a slow client before its pump waits (and its subscription lags).
const BODY_FRAMES: usize = 16;

/// A response body: a whole JSON/asset answer, or a live stream.
pub type HomeBody = Either<Full<Bytes>, SseBody>;

/// The body of a live stream: frames from its pump task until the pump ends.
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Routes one request: page and assets, the live stream, or the JSON API.
pub async fn route(api: &Arc<Api>, req: Request<Incoming>) -> Response<HomeBody> {
    let get_or_head = matches!(req.method().as_str(), "GET" | "HEAD");
    if get_or_head && let Some(a) = assets::find(req.uri().path()) {
        api.metrics().answered(200);
        let head = req.method().as_str() == "HEAD";
        return asset(a, head).map(Either::Left);
    }
    if req.uri().path() == LIVE_PATH {
        return live(api, &req).map_or_else(|r| (*r).map(Either::Left), |r| r.map(Either::Right));
    }
    respond(api, req).await.map(Either::Left)
}

fn asset(a: &assets::Asset, head: bool) -> Response<Full<Bytes>> {
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from_static(a.body.as_bytes())
    };
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A refusal (boxed: a response is large next to the stream it replaces).
fn error(api: &Api, status: u16, kind: &str, message: &str) -> Box<Response<Full<Bytes>>> {
    api.metrics().answered(status);
    let mut resp = Response::new(Full::new(Bytes::from(
        error_body(status, kind, message).to_string(),
    )));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == 401 {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"opha\""),
        );
    }
    Box::new(resp)
}

/// `GET /api/v1/live`: authenticate, subscribe, and stream.
fn live(
    api: &Arc<Api>,
    req: &Request<Incoming>,
) -> Result<Response<SseBody>, Box<Response<Full<Bytes>>>> {
    if req.method().as_str() != "GET" {
        return Err(error(
            api,
            405,
            "method_not_allowed",
            "the live stream is GET only",
        ));
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = api
        .authenticate(authorization, LIVE_PATH)
        .map_err(|e| error(api, e.status, e.error, &e.message))?;
    if req.uri().query().is_some_and(|q| !q.is_empty()) {
        return Err(error(
            api,
            400,
            "bad_request",
            "the live stream takes no parameters: filter on the page",
        ));
    }
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    if has_body {
        return Err(error(api, 400, "bad_request", "GET requests carry no body"));
    }
    let Some(hub) = api.live() else {
        return Err(error(
            api,
            503,
            "unavailable",
            "this server has no live hub; reload the summary instead",
        ));
    };
    let sub = hub
        .subscribe(principal.scope)
        .map_err(|e| error(api, 503, "unavailable", &e.to_string()))?;
    api.metrics().answered(200);
    let (tx, rx) = mpsc::channel(BODY_FRAMES);
    // The hello fits: the channel is new and empty.
    let _ = tx.try_send(Bytes::from(sse_hello(principal.scope)));
    let keepalive = hub.config().keepalive;
    tokio::spawn(pump(sub, tx, keepalive));
    let mut resp = Response::new(SseBody { rx });
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Moves a subscription's items into the body until the client goes away or the hub closes.
async fn pump(mut sub: Subscription, tx: mpsc::Sender<Bytes>, keepalive: Duration) {
    let start = tokio::time::Instant::now() + keepalive;
    let mut tick = tokio::time::interval_at(start, keepalive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            item = sub.next() => match sse_item(&item) {
                Some(f) => Bytes::from(f),
                None => break,
            },
            _ = tick.tick() => Bytes::from_static(b": keepalive\n\n"),
            () = tx.closed() => break,
        };
        if tx.send(frame).await.is_err() {
            break;
        }
    }
    drop(sub);
}
