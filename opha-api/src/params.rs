//! Query strings: strict parsing (percent-decoding, UTF-8, no repeats, no unknown names) and
//! typed values. Every error names the parameter.

use crate::error::ApiError;
use opha_common::wire::{Severity, TenantId};
use opha_store::NodeAddr;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The decoded parameters of one request. Handlers `take` what they know; [`Params::finish`]
/// refuses whatever is left, so a misspelt filter is an error, not silently ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    map: BTreeMap<String, String>,
}

/// Decodes `%XX` and `+` (space). `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a raw query string (without the `?`). Empty segments (`a=1&&b=2`) are skipped.
pub fn parse_query(raw: Option<&str>, max_params: usize) -> Result<Params, ApiError> {
    let mut map = BTreeMap::new();
    let Some(raw) = raw else {
        return Ok(Params { map });
    };
    for seg in raw.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = seg.split_once('=').unwrap_or((seg, ""));
        let key = percent_decode(k).ok_or_else(|| {
            ApiError::bad_param(
                "query",
                "a parameter name is not valid percent-encoded UTF-8",
            )
        })?;
        if key.is_empty() {
            return Err(ApiError::bad_param("query", "a parameter has no name"));
        }
        let value = percent_decode(v).ok_or_else(|| {
            ApiError::bad_param(&key, "the value is not valid percent-encoded UTF-8")
        })?;
        if map.contains_key(&key) {
            return Err(ApiError::bad_param(&key, "given more than once"));
        }
        if map.len() >= max_params {
            return Err(ApiError::bad_param(
                "query",
                &format!("more than {max_params} parameters"),
            ));
        }
        map.insert(key, value);
    }
    Ok(Params { map })
}

impl Params {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The raw value of `name`, removed from the set.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.map.remove(name)
    }

    /// Fails on the first parameter no handler took, naming it and the accepted ones.
    pub fn finish(self, accepted: &[&str]) -> Result<(), ApiError> {
        match self.map.into_keys().next() {
            None => Ok(()),
            Some(k) => Err(ApiError::bad_param(
                &k,
                &format!(
                    "unknown parameter; this endpoint accepts: {}",
                    accepted.join(", ")
                ),
            )),
        }
    }

    pub fn u64(&mut self, name: &str) -> Result<Option<u64>, ApiError> {
        self.take(name)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_param(name, "must be a non-negative integer (unix milliseconds)")
                })
            })
            .transpose()
    }

    pub fn tenant(&mut self) -> Result<Option<TenantId>, ApiError> {
        self.take("tenant")
            .map(|v| parse_tenant(&v, "tenant"))
            .transpose()
    }

    /// `from`/`to` (unix ms, `from` inclusive, `to` exclusive), `from <= to`.
    pub fn time_range(&mut self) -> Result<(Option<u64>, Option<u64>), ApiError> {
        let from = self.u64("from")?;
        let to = self.u64("to")?;
        if let (Some(f), Some(t)) = (from, to)
            && f > t
        {
            return Err(ApiError::bad_param("from", "must not be after `to`"));
        }
        Ok((from, to))
    }

    /// `limit`: 1 to `max`, default `default.min(max)`.
    pub fn limit(&mut self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.take("limit") {
            None => Ok(default.min(max)),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_param(
                    "limit",
                    &format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    }

    pub fn severity(&mut self) -> Result<Option<Severity>, ApiError> {
        self.take("severity")
            .map(|v| {
                Severity::ALL
                    .into_iter()
                    .find(|s| s.name() == v)
                    .ok_or_else(|| {
                        ApiError::bad_param(
                            "severity",
                            "must be one of info, warning, minor, major, critical (the least severe to show)",
                        )
                    })
            })
            .transpose()
    }

    /// `node=[VLAN@]ADDR`.
    pub fn node(&mut self) -> Result<Option<NodeAddr>, ApiError> {
        self.take("node")
            .map(|v| {
                parse_node(&v).ok_or_else(|| {
                    ApiError::bad_param(
                        "node",
                        "must be [VLAN@]ADDRESS, e.g. 10@198.18.0.1 or 2001:db8::1",
                    )
                })
            })
            .transpose()
    }
}

pub fn parse_tenant(v: &str, name: &str) -> Result<TenantId, ApiError> {
    v.parse::<u32>()
        .map(TenantId)
        .map_err(|_| ApiError::bad_param(name, "must be a tenant number (0 to 4294967295)"))
}

/// An address as records spell it: IPv4(-mapped) as IPv4.
pub fn parse_addr(v: &str) -> Option<IpAddr> {
    v.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

pub fn parse_node(v: &str) -> Option<NodeAddr> {
    let (vlan, addr) = match v.split_once('@') {
        Some((vl, a)) => (vl.parse::<u16>().ok().filter(|v| *v < 4096)?, a),
        None => (0, v),
    };
    Some(NodeAddr {
        vlan,
        addr: parse_addr(addr)?,
    })
}
