//! Local ingest: events and service states from NMIS daemons and service checks.
//!
//! Two listeners serve the same HTTP/1.1 API: a TCP address that must be loopback
//! ([`bind_tcp`]) and a Unix socket ([`bind_unix`], mode 0660 by default so that only the
//! sidecar's user and group can write). HTTP over the Unix socket rather than a second,
//! line-based protocol: one code path, one set of status codes, and every client that speaks
//! HTTP reaches it (`curl --unix-socket /run/opha/ingest.sock http://localhost/v1/events`).
//!
//! | request | answer |
//! | --- | --- |
//! | `POST /v1/events` | 200 `{"accepted":n,"seq":[..],"ids":[..]}` once durable |
//! | `POST /v1/services` | 200 `{"accepted":n,"seq":[..]}` once durable |
//! | `GET /healthz` | 200 `{"status":"ok"}` |
//!
//! A 2xx is sent only after the records are durable in the replay log ([`DurableSink`]); if
//! the sink fails the answer is 503 and nothing is acknowledged (retry; an event that brings
//! its own `id` is recognisable as the same event if it was stored twice). Other errors:
//! 400 invalid JSON or field, 403 a `tenant` the policy refuses, 404 unknown path, 405 wrong
//! method (with `Allow`), 408 body too slow, 413 body over [`IngestConfig::max_body_bytes`],
//! 415 a content type other than JSON. Error bodies are `{"error":..,"field":..,"message":..}`
//! where `field` is the offending field's path (`severity`, `[3].address`, or `body`).
//!
//! A body is one object or an array of up to [`IngestConfig::max_batch`] objects, all accepted
//! or all refused. Unknown fields are refused (a misspelt field must not vanish); `null` is the
//! same as absent.
//!
//! Event (`POST /v1/events`):
//!
//! | field | |
//! | --- | --- |
//! | `source` | required: the sending daemon or check, e.g. `opeventsd` |
//! | `event` | required: the sender's event name, e.g. `Proactive Interface Utilisation` |
//! | `severity` | required: `info`, `warning`, `minor`, `major`, `critical` (NMIS `normal`, `fatal` too) |
//! | `address`, `vlan` | the node's IP address and VLAN (default 0); `address` may be left out when `node` names an inventory node |
//! | `node` | the node's name |
//! | `details` | free text |
//! | `time_ms` | unix milliseconds, default now |
//! | `id` | 32 hex digits, default random: send one to make retries recognisable |
//! | `tenant` | see below |
//!
//! Service state (`POST /v1/services`): `service` (required), `kind` (required: `port` with
//! `port`, `ssl_expiry`, `application`, or any other name), `state` (required: `up`,
//! `degraded`, `down`), `address`/`vlan`/`node` as above, `reason`, `since_ms`, `checked_ms`
//! (default now), `tenant`.
//!
//! Tenant: with [`TenantPolicy::Fixed`] (the default) every record gets the configured tenant
//! and a request naming another is refused with 403: a local sender cannot choose whose data
//! it writes. [`TenantPolicy::FromRequest`] takes the field, within an allowed list.
//!
//! Bounds: connections ([`IngestConfig::max_connections`]; further ones wait in the listen
//! backlog), appends in flight ([`IngestConfig::max_inflight_appends`]), header and body read
//! timeouts, body size. Nothing a client sends can make the server exit.

mod server;
pub mod sink;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use opha_common::wire::{NodeRef, TenantId};

pub use server::{IngestMetrics, IngestServer, bind_tcp, bind_unix};
pub use sink::{DurableSink, LogSink, MemorySink, SinkError};
pub use validate::FieldError;

/// Looks a node up by name in the inventory.
pub type NodeResolver = Arc<dyn Fn(&str) -> Option<NodeRef> + Send + Sync>;

/// Whose data ingested records are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantPolicy {
    /// Always this tenant; a request may only repeat it.
    Fixed(TenantId),
    /// The request's `tenant` if it is in `allowed` (any, if `allowed` is empty), else
    /// `default` when the request has none.
    FromRequest {
        default: TenantId,
        allowed: Vec<TenantId>,
    },
}

/// Ingest settings.
#[derive(Clone)]
pub struct IngestConfig {
    pub tenants: TenantPolicy,
    /// Bodies above this are refused with 413.
    pub max_body_bytes: usize,
    /// Most objects in one array body.
    pub max_batch: usize,
    /// Connections served at once (both listeners each).
    pub max_connections: usize,
    /// Requests waiting for the sink at once.
    pub max_inflight_appends: usize,
    /// Time allowed for a request's headers (also bounds idle keep-alive connections).
    pub header_timeout: Duration,
    /// Time allowed for a request's body.
    pub body_timeout: Duration,
    /// Inventory lookup for requests that name a node without its address.
    pub resolver: Option<NodeResolver>,
}

impl IngestConfig {
    /// Defaults: 64 KiB bodies, 1000 objects per body, 256 connections, 64 appends in flight,
    /// 10 s for headers and for the body.
    pub fn new(default_tenant: TenantId) -> Self {
        Self {
            tenants: TenantPolicy::Fixed(default_tenant),
            max_body_bytes: 64 * 1024,
            max_batch: 1000,
            max_connections: 256,
            max_inflight_appends: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            resolver: None,
        }
    }
}

impl std::fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestConfig")
            .field("tenants", &self.tenants)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_batch", &self.max_batch)
            .field("max_connections", &self.max_connections)
            .field("max_inflight_appends", &self.max_inflight_appends)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("resolver", &self.resolver.is_some())
            .finish()
    }
}
