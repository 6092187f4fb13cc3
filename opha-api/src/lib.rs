//! The primary's JSON API (issue 5 §2): `/api/v1/` over the per-tenant store, behind bearer
//! tokens, with tenant isolation at the data layer.
//!
//! - [`token`]: `[[api.token]]` entries (stored as SHA-256), minting, authentication.
//! - [`access::Access`]: the capability a handler reads through; it opens only the tenant
//!   databases the token may read, and refuses (403, counted in `opha_api_forbidden_total`,
//!   logged) a request naming any other tenant.
//! - [`handlers`]: one function per endpoint, (capability, parameters) -> JSON.
//! - [`Api::handle`]: authentication, routing and parameter parsing of one request, without
//!   sockets; [`server`] is the thin hyper driver around it.
//!
//! - [`poller_config`]: reading and pushing pollers' configs (operators only), through the
//!   [`poller_config::ConfigOps`] the receiver attaches ([`Api::with_config_ops`]).
//! - [`home`]: the Home view: the embedded page, `GET /api/v1/summary`, and the live stream
//!   `GET /api/v1/live` fed by a [`live::LiveHub`] (attach one with [`Api::with_live`]).
//!
//! Endpoints, parameters and the configuration are documented in `docs/api.md`.

pub mod access;
pub mod config;
pub mod error;
pub mod handlers;
pub mod home;
pub mod live;
pub mod metrics;
pub mod params;
pub mod poller_config;
pub mod server;
pub mod token;

pub use config::ApiConfig;
pub use error::ApiError;
pub use metrics::ApiMetrics;
pub use token::{
    AuthError, ConfigError, Minted, Principal, PrincipalScope, Role, TokenEntry, Tokens, mint,
    token_sha256,
};

use access::Access;
use handlers::Limits;
use opha_store::Store;
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

/// What the API needs of one HTTP request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub method: String,
    /// Path only, still percent-encoded (as on the wire).
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The `Authorization` header, when present and valid ASCII.
    pub authorization: Option<String>,
    /// Bytes of body received (GET carries none).
    pub body_len: usize,
    /// The body itself (only a config push takes one; bounded by `max_body_bytes`).
    pub body: Vec<u8>,
    /// The `Content-Type` header, when present and valid ASCII.
    pub content_type: Option<String>,
}

impl RequestParts {
    /// A GET of `target` (path and query) with an optional bearer token.
    pub fn get(target: &str, token: Option<&str>) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        Self {
            method: "GET".into(),
            path,
            query,
            authorization: token.map(|t| format!("Bearer {t}")),
            ..Self::default()
        }
    }

    /// A `method` of `target` with a body of `content_type`.
    pub fn with_body(
        method: &str,
        target: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Self {
        Self {
            method: method.into(),
            body_len: body.len(),
            body: body.to_vec(),
            content_type: content_type.map(str::to_string),
            ..Self::get(target, token)
        }
    }
}

/// An answer: status and JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    fn ok(body: Value) -> Self {
        Self { status: 200, body }
    }

    fn error(e: &ApiError) -> Self {
        Self {
            status: e.status,
            body: e.body(),
        }
    }
}

/// The API of one primary.
pub struct Api {
    store: Arc<Store>,
    tokens: Tokens,
    config: ApiConfig,
    metrics: ApiMetrics,
    live: Option<Arc<live::LiveHub>>,
    config_ops: OnceLock<Arc<dyn poller_config::ConfigOps>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("store", &self.store.dir())
            .field("tokens", &self.tokens)
            .finish()
    }
}

/// Which endpoint a path is.
enum Route<'a> {
    Peers,
    Nodes,
    Events,
    Metrics { vlan: &'a str, addr: &'a str },
    Services,
    Usage { tenant: Option<&'a str> },
    Summary,
    ConfigStatuses,
    PollerConfig { poller: &'a str },
}

fn route<'a>(segments: &[&'a str]) -> Option<Route<'a>> {
    match segments {
        ["peers"] => Some(Route::Peers),
        ["nodes"] => Some(Route::Nodes),
        ["events"] => Some(Route::Events),
        ["nodes", vlan, addr, "metrics"] => Some(Route::Metrics { vlan, addr }),
        ["services"] => Some(Route::Services),
        ["tenants", "usage"] => Some(Route::Usage { tenant: None }),
        ["tenants", t, "usage"] => Some(Route::Usage { tenant: Some(t) }),
        ["summary"] => Some(Route::Summary),
        ["pollers", "config-status"] => Some(Route::ConfigStatuses),
        ["pollers", poller, "config"] => Some(Route::PollerConfig { poller }),
        _ => None,
    }
}

const ENDPOINTS: &str = "/api/v1/peers, /api/v1/nodes, /api/v1/nodes/{vlan}/{addr}/metrics, \
     /api/v1/events, /api/v1/services, /api/v1/tenants/usage, /api/v1/tenants/{id}/usage, /api/v1/summary, /api/v1/live, \
     /api/v1/pollers/config-status, /api/v1/pollers/{id}/config";

/// Whether `path` is the one kind of endpoint that takes a body: a poller's config
/// (`PUT`/`POST /api/v1/pollers/{id}/config`). Decided on the raw path, before anything else.
fn takes_body(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/api/v1/pollers/") else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    matches!(rest.split_once('/'), Some((id, "config")) if !id.is_empty() && !id.contains('/'))
}

impl Api {
    pub fn new(store: Arc<Store>, config: ApiConfig) -> Result<Api, ConfigError> {
        config.check()?;
        let tokens = Tokens::new(&config.tokens)?;
        if tokens.is_empty() {
            log::warn!("api: no [[api.token]] configured: every request will be answered 401");
        }
        Ok(Api {
            store,
            tokens,
            config,
            metrics: ApiMetrics::default(),
            live: None,
            config_ops: OnceLock::new(),
        })
    }

    /// Attaches what serves the poller config endpoints (see [`poller_config`]); without it
    /// they answer 503.
    pub fn with_config_ops(self, ops: Arc<dyn poller_config::ConfigOps>) -> Api {
        let _ = self.config_ops.set(ops);
        self
    }

    /// As [`Api::with_config_ops`], once the API is shared (the receiver's state that serves
    /// the configs is built after the API); false when one is attached already.
    pub fn set_config_ops(&self, ops: Arc<dyn poller_config::ConfigOps>) -> bool {
        self.config_ops.set(ops).is_ok()
    }

    pub fn config_ops(&self) -> Option<&dyn poller_config::ConfigOps> {
        self.config_ops.get().map(|o| o.as_ref())
    }

    /// Attaches the hub the receiver publishes into: `/api/v1/live` streams from it and
    /// `/api/v1/summary` reads the peers' live stream states from it.
    pub fn with_live(mut self, hub: Arc<live::LiveHub>) -> Api {
        self.live = Some(hub);
        self
    }

    pub fn live(&self) -> Option<&Arc<live::LiveHub>> {
        self.live.as_ref()
    }

    /// Authenticates an `Authorization` header value; a failure is counted and logged
    /// (`path` for the log line) and is the 401 to answer.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        path: &str,
    ) -> Result<Principal, ApiError> {
        self.tokens.authenticate(authorization).map_err(|e| {
            self.metrics.unauthorized();
            log::info!("api: 401 on {}: {e}", cut(path));
            ApiError::new(401, "unauthorized", e.to_string())
        })
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    pub fn metrics(&self) -> &ApiMetrics {
        &self.metrics
    }

    /// Answers one request. Never panics on input; every refusal is a JSON error naming what
    /// was wrong. Blocking (SQLite): async callers run it on a blocking thread.
    pub fn handle(&self, req: &RequestParts) -> Reply {
        let reply = match self.answer(req) {
            Ok((200, v)) => Reply::ok(v),
            Ok((status, body)) => Reply { status, body },
            Err(e) => Reply::error(&e),
        };
        self.metrics.answered(reply.status);
        reply
    }

    fn answer(&self, req: &RequestParts) -> Result<(u16, Value), ApiError> {
        let read = req.method == "GET" || req.method == "HEAD";
        let write = req.method == "PUT" || req.method == "POST";
        let allowed = read || (write && takes_body(&req.path));
        if !allowed {
            let message = if takes_body(&req.path) {
                "a poller's config: GET it, PUT (or POST) a new one"
            } else {
                "read-only: use GET (only /api/v1/pollers/{id}/config takes PUT or POST)"
            };
            return Err(ApiError::new(405, "method_not_allowed", message));
        }
        let target_len = req.path.len() + req.query.as_ref().map_or(0, |q| q.len() + 1);
        if target_len > self.config.max_uri_bytes {
            return Err(ApiError::new(
                414,
                "uri_too_long",
                format!(
                    "the request target is longer than {} bytes",
                    self.config.max_uri_bytes
                ),
            ));
        }
        let Some(rest) = req.path.strip_prefix("/api/v1/") else {
            return Err(ApiError::not_found(format!(
                "no such endpoint; try {ENDPOINTS}"
            )));
        };
        let principal = self.authenticate(req.authorization.as_deref(), &req.path)?;
        if req.body_len > self.config.max_body_bytes {
            return Err(ApiError::new(413, "too_large", "the body is too large"));
        }
        if read && req.body_len > 0 {
            return Err(ApiError::bad_param("body", "GET requests carry no body"));
        }
        let decoded: Vec<String> = rest
            .trim_end_matches('/')
            .split('/')
            .map(|s| {
                params::percent_decode(s)
                    .ok_or_else(|| ApiError::bad_param("path", "not valid percent-encoded UTF-8"))
            })
            .collect::<Result<_, _>>()?;
        let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
        let route = route(&segments)
            .ok_or_else(|| ApiError::not_found(format!("no such endpoint; try {ENDPOINTS}")))?;
        if write {
            let Route::PollerConfig { poller } = route else {
                return Err(ApiError::new(405, "method_not_allowed", "use GET"));
            };
            if req.query.as_deref().is_some_and(|q| !q.is_empty()) {
                return Err(ApiError::bad_param(
                    "query",
                    "a config push takes no parameters",
                ));
            }
            let access = Access::new(&self.store, &principal, &self.metrics, &req.path);
            let body = poller_config::Body {
                bytes: &req.body,
                content_type: req.content_type.as_deref(),
            };
            return poller_config::push(&access, self.config_ops(), poller, &body);
        }
        let params = params::parse_query(req.query.as_deref(), self.config.max_params)?;
        let access = Access::new(&self.store, &principal, &self.metrics, &req.path);
        let limits = Limits {
            max_page: self.config.max_page,
        };
        let value = match route {
            Route::Peers => handlers::peers(&access, params),
            Route::Nodes => handlers::nodes(&access, params, limits),
            Route::Events => handlers::events(&access, params, limits),
            Route::Metrics { vlan, addr } => handlers::metrics(&access, vlan, addr, params, limits),
            Route::Services => handlers::services(&access, params),
            Route::Usage { tenant } => handlers::usage(&access, tenant, params),
            Route::Summary => home::summary(&access, params, self.live.as_deref()),
            Route::ConfigStatuses => params
                .finish(&[])
                .and_then(|()| poller_config::statuses(&access, self.config_ops())),
            Route::PollerConfig { poller } => params
                .finish(&[])
                .and_then(|()| poller_config::get(&access, self.config_ops(), poller)),
        }?;
        Ok((200, value))
    }
}

/// A client-supplied string cut for a log line.
fn cut(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The JSON of an error, for drivers that refuse before [`Api::handle`] (e.g. 413 by size).
pub fn error_body(status: u16, error: &str, message: &str) -> Value {
    json!({"error": error, "message": message, "status": status})
}
