//! API errors: a status and a JSON body `{"error", "param"?, "message"}`.

use serde_json::{Value, json};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Machine-readable kind: `bad_request`, `unauthorized`, `forbidden`, `not_found`, ...
    pub error: &'static str,
    /// The offending query parameter or path part, when there is one.
    pub param: Option<String>,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            param: None,
            message: message.into(),
        }
    }

    /// 400 naming the parameter (names are cut to 64 characters: they come from the client).
    pub fn bad_param(param: &str, message: &str) -> Self {
        Self {
            status: 400,
            error: "bad_request",
            param: Some(param.chars().take(64).collect()),
            message: message.to_string(),
        }
    }

    pub fn forbidden(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: 403,
            error: "forbidden",
            param: Some(param.to_string()),
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal", message)
    }

    pub fn body(&self) -> Value {
        let mut v = json!({"error": self.error, "message": self.message});
        if let Some(p) = &self.param {
            v["param"] = Value::String(p.clone());
        }
        v
    }
}

impl From<opha_store::StoreError> for ApiError {
    fn from(e: opha_store::StoreError) -> Self {
        // Logged in full here; the client gets the gist (paths stay out of answers).
        log::error!("api: store error: {e}");
        ApiError::internal("the store could not answer; see the primary's log")
    }
}
