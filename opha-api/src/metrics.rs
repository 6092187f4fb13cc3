//! The API's counters, in the Prometheus text format for the primary's `/metrics`.
//!
//! | metric | meaning |
//! | --- | --- |
//! | `opha_api_requests_total` | requests answered |
//! | `opha_api_responses_total{status}` | answers by HTTP status |
//! | `opha_api_unauthorized_total` | 401: missing, malformed or unknown token |
//! | `opha_api_forbidden_total` | 403: a token asked for a tenant it may not read |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct ApiMetrics {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    forbidden: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
}

impl ApiMetrics {
    pub(crate) fn forbidden(&self) {
        self.forbidden.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn unauthorized(&self) {
        self.unauthorized.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn answered(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status)
            .or_default() += 1;
    }

    pub fn requests_total(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn forbidden_total(&self) -> u64 {
        self.forbidden.load(Ordering::Relaxed)
    }

    pub fn unauthorized_total(&self) -> u64 {
        self.unauthorized.load(Ordering::Relaxed)
    }

    pub fn responses(&self, status: u16) -> u64 {
        self.by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&status)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text of these counters.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let head = |o: &mut String, name: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        head(&mut o, "opha_api_requests_total", "API requests answered.");
        let _ = writeln!(o, "opha_api_requests_total {}", self.requests_total());
        head(
            &mut o,
            "opha_api_responses_total",
            "API answers by HTTP status.",
        );
        for (s, n) in self
            .by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(o, "opha_api_responses_total{{status=\"{s}\"}} {n}");
        }
        head(
            &mut o,
            "opha_api_unauthorized_total",
            "API requests without a valid bearer token (401).",
        );
        let _ = writeln!(
            o,
            "opha_api_unauthorized_total {}",
            self.unauthorized_total()
        );
        head(
            &mut o,
            "opha_api_forbidden_total",
            "API requests for a tenant the token may not read (403).",
        );
        let _ = writeln!(o, "opha_api_forbidden_total {}", self.forbidden_total());
        o
    }
}
