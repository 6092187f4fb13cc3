//! Centralised poller configuration through the API (issue 5 §3): the operator reads and
//! pushes a poller's config at the active primary.
//!
//! opha-api does not know how configs are validated, stored or pushed over the bus: the
//! embedding receiver provides that as a [`ConfigOps`] (attached with
//! [`crate::Api::with_config_ops`] or [`crate::Api::set_config_ops`]). This module holds the
//! types both sides speak and the handlers of:
//!
//! - `GET /api/v1/pollers/config-status`: every poller's status;
//! - `GET /api/v1/pollers/{id}/config`: the desired text, its version and the status;
//! - `PUT` (or `POST`) `/api/v1/pollers/{id}/config`: a new config as the TOML body
//!   (`text/plain` or `application/toml`): 202 with its version, 422 with every problem naming
//!   its key, 409 when this server does not act as the poller's active primary.
//!
//! Operator tokens only: a tenant token is refused 403 (counted and logged), since a config
//! carries every tenant's prefixes.

use crate::access::Access;
use crate::error::ApiError;
use opha_common::wire::PeerId;
use serde::Serialize;
use serde_json::{Value, json};

/// The last failure of a push to a poller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigFailure {
    pub version: u64,
    /// `rejected` (the poller refused the config) or `not_active` (fencing refused the push).
    pub kind: String,
    pub reason: String,
}

/// What the page shows for one poller.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConfigStatus {
    pub poller: String,
    /// The version stored on this server to run (none: never pushed through this server).
    pub desired_version: Option<u64>,
    /// The version the poller says it runs: the applied one (none: not heard yet).
    pub running_version: Option<u64>,
    /// A push sent to the poller and not answered yet.
    pub pending_version: Option<u64>,
    pub last_failure: Option<ConfigFailure>,
    /// The poller's config stream to this server is up.
    pub connected: bool,
    /// This server acts as the poller's active primary now (only then may it push).
    pub acting: bool,
}

impl ConfigStatus {
    /// One word for the page: `failed` (the desired version was refused), `pending` (a
    /// desired version the poller does not run yet), `applied` (it runs the desired version,
    /// or runs one and none is desired here), `unknown` (nothing heard, nothing desired).
    pub fn state(&self) -> &'static str {
        let failed = |v: u64| self.last_failure.as_ref().is_some_and(|f| f.version == v);
        match (self.desired_version, self.running_version) {
            (Some(d), _) if failed(d) => "failed",
            (Some(d), Some(r)) if r >= d => "applied",
            (Some(_), _) => "pending",
            (None, Some(_)) => "applied",
            (None, None) => "unknown",
        }
    }

    /// The JSON of a status, with [`ConfigStatus::state`] as `state`.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or_else(|_| json!({"poller": self.poller}));
        v["state"] = json!(self.state());
        v
    }
}

/// A poller's desired config and its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollerConfigView {
    /// The desired config stored here: (version, TOML text); none when never pushed here.
    pub desired: Option<(u64, String)>,
    pub status: ConfigStatus,
}

/// One problem of a refused config, naming its key (`prefix[0].cidr`; empty for a TOML
/// syntax error, which has a line and column instead).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            line: None,
            column: None,
        }
    }
}

/// Why a push was not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushRefusal {
    /// No such poller here (not in the registry): 404.
    UnknownPoller,
    /// This server does not act as the poller's active primary: 409, with the reason.
    NotActive(String),
    /// The config is invalid: 422, every problem naming its key.
    Invalid(Vec<ConfigProblem>),
}

/// What the receiver provides: its pollers' configs, their status, and the push. Called from
/// [`crate::Api::handle`], which runs on a blocking thread: [`ConfigOps::push`] may block
/// (it stores the config durably before it answers).
pub trait ConfigOps: Send + Sync {
    /// Every poller this server configures, by id.
    fn statuses(&self) -> Vec<ConfigStatus>;
    /// One poller's desired config and status; `None` when the poller is unknown here.
    fn get(&self, poller: &PeerId) -> Option<PollerConfigView>;
    /// Validates, versions and stores `text` as the poller's desired config, to be pushed
    /// over the bus; its version. Refused when this server does not act for the poller.
    fn push(&self, poller: &PeerId, text: &str) -> Result<u64, PushRefusal>;
}

/// A request body as the config handlers see it.
pub struct Body<'a> {
    pub bytes: &'a [u8],
    pub content_type: Option<&'a str>,
}

fn operator_only(access: &Access, what: &str) -> Result<(), ApiError> {
    access.require_operator("token", &format!("{what} is for operator tokens only"))
}

fn poller_id(s: &str) -> Result<PeerId, ApiError> {
    PeerId::new(s).map_err(|e| ApiError::bad_param("poller", &format!("not a peer id: {e}")))
}

fn no_ops() -> ApiError {
    ApiError::new(503, "unavailable", "this server does not configure pollers")
}

fn unknown(poller: &PeerId) -> ApiError {
    let mut e = ApiError::not_found(format!("{poller} is not a poller of this server"));
    e.param = Some("poller".into());
    e
}

/// `GET /api/v1/pollers/config-status`.
pub fn statuses(access: &Access, ops: Option<&dyn ConfigOps>) -> Result<Value, ApiError> {
    operator_only(access, "poller configuration")?;
    let ops = ops.ok_or_else(no_ops)?;
    let items: Vec<Value> = ops.statuses().iter().map(ConfigStatus::to_json).collect();
    Ok(json!({"items": items}))
}

/// `GET /api/v1/pollers/{id}/config`.
pub fn get(access: &Access, ops: Option<&dyn ConfigOps>, poller: &str) -> Result<Value, ApiError> {
    operator_only(access, "poller configuration")?;
    let ops = ops.ok_or_else(no_ops)?;
    let poller = poller_id(poller)?;
    let view = ops.get(&poller).ok_or_else(|| unknown(&poller))?;
    let (version, config) = match view.desired {
        Some((v, t)) => (Some(v), Some(t)),
        None => (None, None),
    };
    Ok(json!({
        "poller": poller.as_str(),
        "version": version,
        "config": config,
        "status": view.status.to_json(),
    }))
}

/// Media types a config body may have (parameters such as `charset=utf-8` are allowed).
pub const CONFIG_MEDIA_TYPES: &[&str] = &["text/plain", "application/toml"];

/// `PUT`/`POST /api/v1/pollers/{id}/config`: (status, body): 202 with the version, or 422
/// with the problems; other refusals are errors.
pub fn push(
    access: &Access,
    ops: Option<&dyn ConfigOps>,
    poller: &str,
    body: &Body,
) -> Result<(u16, Value), ApiError> {
    operator_only(access, "pushing a poller configuration")?;
    let ops = ops.ok_or_else(no_ops)?;
    let poller = poller_id(poller)?;
    let media = body
        .content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if !media
        .as_deref()
        .is_some_and(|m| CONFIG_MEDIA_TYPES.contains(&m))
    {
        return Err(ApiError {
            param: Some("content-type".into()),
            ..ApiError::new(
                415,
                "unsupported_media_type",
                "send the config as TOML text: Content-Type: text/plain or application/toml",
            )
        });
    }
    let who = &access.principal().name;
    let refused = |problems: Vec<ConfigProblem>| {
        log::info!(
            "api: config push by token {who:?} for {poller} refused: {} problem(s)",
            problems.len()
        );
        let message = problems
            .iter()
            .map(|p| {
                if p.key.is_empty() {
                    p.message.clone()
                } else {
                    format!("{}: {}", p.key, p.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok((
            422,
            json!({
                "error": "invalid_config",
                "message": message,
                "poller": poller.as_str(),
                "errors": problems,
            }),
        ))
    };
    let Ok(text) = std::str::from_utf8(body.bytes) else {
        return refused(vec![ConfigProblem::new("", "the config is not UTF-8 text")]);
    };
    // TOML syntax is checked here, so that a malformed body is answered with its line and
    // column whatever the receiver's checks are; the receiver checks the meaning.
    if let Err(e) = text.parse::<toml::Table>() {
        let mut p = ConfigProblem::new("", e.message().to_string());
        if let Some(span) = e.span() {
            let before = &text[..span.start.min(text.len())];
            p.line = Some(before.matches('\n').count() + 1);
            p.column = Some(before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1);
        }
        return refused(vec![p]);
    }
    match ops.push(&poller, text) {
        Ok(version) => {
            log::info!(
                "api: config push by token {who:?}: poller {poller} version {version} ({} bytes)",
                text.len()
            );
            let status = ops.get(&poller).map(|v| v.status.to_json());
            Ok((
                202,
                json!({"poller": poller.as_str(), "version": version, "status": status}),
            ))
        }
        Err(PushRefusal::Invalid(problems)) => refused(problems),
        Err(PushRefusal::UnknownPoller) => Err(unknown(&poller)),
        Err(PushRefusal::NotActive(reason)) => {
            log::info!("api: config push by token {who:?} for {poller} refused: {reason}");
            Err(ApiError {
                param: Some("poller".into()),
                ..ApiError::new(
                    409,
                    "not_active",
                    format!("only the active primary may push: {reason}"),
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(d: Option<u64>, r: Option<u64>, failed: Option<u64>) -> ConfigStatus {
        ConfigStatus {
            desired_version: d,
            running_version: r,
            last_failure: failed.map(|v| ConfigFailure {
                version: v,
                kind: "rejected".into(),
                reason: "x".into(),
            }),
            ..ConfigStatus::default()
        }
    }

    #[test]
    fn state_words() {
        assert_eq!(st(None, None, None).state(), "unknown");
        assert_eq!(st(None, Some(0), None).state(), "applied");
        assert_eq!(st(Some(2), Some(2), None).state(), "applied");
        assert_eq!(st(Some(2), Some(3), None).state(), "applied");
        assert_eq!(st(Some(2), Some(1), None).state(), "pending");
        assert_eq!(st(Some(2), None, None).state(), "pending");
        assert_eq!(st(Some(2), Some(1), Some(2)).state(), "failed");
        assert_eq!(st(Some(3), Some(1), Some(2)).state(), "pending");
    }
}
