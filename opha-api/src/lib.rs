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
use std::sync::Arc;

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
            body_len: 0,
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
        _ => None,
    }
}

const ENDPOINTS: &str = "/api/v1/peers, /api/v1/nodes, /api/v1/nodes/{vlan}/{addr}/metrics, \
     /api/v1/events, /api/v1/services, /api/v1/tenants/usage, /api/v1/tenants/{id}/usage, /api/v1/summary, /api/v1/live";

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
        })
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
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::error(&e),
        };
        self.metrics.answered(reply.status);
        reply
    }

    fn answer(&self, req: &RequestParts) -> Result<Value, ApiError> {
        if req.method != "GET" && req.method != "HEAD" {
            return Err(ApiError::new(
                405,
                "method_not_allowed",
                "the API is read-only: use GET",
            ));
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
        if req.body_len > 0 {
            let e = ApiError::bad_param("body", "GET requests carry no body");
            return Err(if req.body_len > self.config.max_body_bytes {
                ApiError::new(413, "too_large", "the body is too large")
            } else {
                e
            });
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
        let params = params::parse_query(req.query.as_deref(), self.config.max_params)?;
        let access = Access::new(&self.store, &principal, &self.metrics, &req.path);
        let limits = Limits {
            max_page: self.config.max_page,
        };
        match route {
            Route::Peers => handlers::peers(&access, params),
            Route::Nodes => handlers::nodes(&access, params, limits),
            Route::Events => handlers::events(&access, params, limits),
            Route::Metrics { vlan, addr } => handlers::metrics(&access, vlan, addr, params, limits),
            Route::Services => handlers::services(&access, params),
            Route::Usage { tenant } => handlers::usage(&access, tenant, params),
            Route::Summary => home::summary(&access, params, self.live.as_deref()),
        }
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
