//! The `[api]` section of a primary's configuration (see docs/api.md).

use crate::token::{ConfigError, TokenEntry};
use serde::Deserialize;

/// `[api]`: limits and `[[api.token]]` entries.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest request body accepted, bytes: bounds a poller config pushed through the API,
    /// and what is read of any other request's body (refused) before answering 413.
    pub max_body_bytes: usize,
    /// Longest request target (path and query), bytes; longer is answered 414.
    pub max_uri_bytes: usize,
    /// Most items per page a client may ask for (`limit`).
    pub max_page: usize,
    /// Most query parameters in one request.
    pub max_params: usize,
    #[serde(rename = "token")]
    pub tokens: Vec<TokenEntry>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
            max_page: 1000,
            max_params: 32,
            tokens: Vec::new(),
        }
    }
}

/// A whole file with an `[api]` table (other tables are the embedding binary's business).
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    api: ApiConfig,
}

impl ApiConfig {
    /// Reads the `[api]` table of a TOML document; other tables are ignored.
    pub fn from_toml(text: &str) -> Result<ApiConfig, ConfigError> {
        let file: File = toml::from_str(text).map_err(|e| ConfigError {
            key: "api".into(),
            message: e.to_string(),
        })?;
        file.api.check()?;
        Ok(file.api)
    }

    /// Limits in range. Token entries are checked by [`crate::Tokens::new`].
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, message: &str| {
            Err(ConfigError {
                key: format!("api.{key}"),
                message: message.into(),
            })
        };
        if self.max_uri_bytes < 256 {
            return bad("max_uri_bytes", "must be at least 256");
        }
        if !(1..=10_000).contains(&self.max_page) {
            return bad("max_page", "must be 1 to 10000");
        }
        if !(8..=1024).contains(&self.max_params) {
            return bad("max_params", "must be 8 to 1024");
        }
        crate::token::Tokens::new(&self.tokens).map(|_| ())
    }
}
