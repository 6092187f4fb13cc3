//! The pure core of ingest: a request body (JSON) to records, or an error naming the field.
//!
//! No I/O and no clock: the caller passes the time and an id generator, so every rule here is
//! tested without sockets. The accepted shapes are documented in [`crate::ingest`].

use std::fmt;
use std::net::IpAddr;

use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, Record, ServiceKind, ServiceState, ServiceStatus, Severity,
    Subject, TenantId,
};
use serde_json::{Map, Value};

use super::{NodeResolver, TenantPolicy};

/// Longest `source`, bytes.
pub const MAX_SOURCE: usize = 128;
/// Longest `event` and `service` name, bytes.
pub const MAX_NAME: usize = 256;
/// Longest node name, bytes (a DNS name).
pub const MAX_NODE_NAME: usize = 255;
/// Longest service `kind`, bytes.
pub const MAX_KIND: usize = 64;
/// Longest `details` or `reason`, bytes.
pub const MAX_TEXT: usize = 8192;

/// Why a request was refused: HTTP status, the field (a path such as `[2].severity`, or `body`
/// for the request as a whole) and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub status: u16,
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            field: field.into(),
            message: message.into(),
        }
    }

    fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status: 403,
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// What a body is checked against.
pub struct Rules<'a> {
    pub tenants: &'a TenantPolicy,
    pub resolver: Option<&'a NodeResolver>,
    /// Most items in one array body.
    pub max_batch: usize,
    /// Unix milliseconds, for times a request leaves out.
    pub now_ms: u64,
}

/// Parses a `POST /v1/events` body into event records. `new_id` mints ids for events that do
/// not bring their own.
pub fn events(
    body: &[u8],
    rules: &Rules<'_>,
    new_id: &mut dyn FnMut() -> EventId,
) -> Result<Vec<Record>, FieldError> {
    items(body, rules)?
        .into_iter()
        .map(|(path, obj)| event(&path, obj, rules, new_id).map(Record::Event))
        .collect()
}

/// Parses a `POST /v1/services` body into service-state records.
pub fn services(body: &[u8], rules: &Rules<'_>) -> Result<Vec<Record>, FieldError> {
    items(body, rules)?
        .into_iter()
        .map(|(path, obj)| service(&path, obj, rules).map(Record::ServiceState))
        .collect()
}

/// The objects of a body (one object, or an array of them) with their paths (`""` or `[i]`).
/// An object of a body, with its path.
type Item = (String, Map<String, Value>);

fn items(body: &[u8], rules: &Rules<'_>) -> Result<Vec<Item>, FieldError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| FieldError::invalid("body", format!("not valid JSON: {e}")))?;
    match value {
        Value::Object(obj) => Ok(vec![(String::new(), obj)]),
        Value::Array(list) => {
            if list.is_empty() {
                return Err(FieldError::invalid(
                    "body",
                    "empty array: nothing to accept",
                ));
            }
            if list.len() > rules.max_batch {
                return Err(FieldError::invalid(
                    "body",
                    format!(
                        "{} items, at most {} per request",
                        list.len(),
                        rules.max_batch
                    ),
                ));
            }
            list.into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Object(obj) => Ok((format!("[{i}]"), obj)),
                    other => Err(FieldError::invalid(
                        format!("[{i}]"),
                        format!("expected an object, got {}", type_name(&other)),
                    )),
                })
                .collect()
        }
        other => Err(FieldError::invalid(
            "body",
            format!(
                "expected an object or an array of objects, got {}",
                type_name(&other)
            ),
        )),
    }
}

/// One object's fields, taken one by one so that leftovers are named as unknown.
struct Fields<'a> {
    path: &'a str,
    obj: Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        // null means absent: senders that serialise optional fields as null are common.
        self.obj.remove(key).filter(|v| !v.is_null())
    }

    fn string(
        &mut self,
        key: &str,
        max: usize,
        required: bool,
    ) -> Result<Option<String>, FieldError> {
        let field = self.name(key);
        match self.take(key) {
            None if required => Err(FieldError::invalid(field, "required")),
            None => Ok(None),
            Some(Value::String(s)) => {
                if required && s.trim().is_empty() {
                    Err(FieldError::invalid(field, "must not be empty"))
                } else if s.len() > max {
                    Err(FieldError::invalid(
                        field,
                        format!("{} bytes, at most {max}", s.len()),
                    ))
                } else {
                    Ok(Some(s))
                }
            }
            Some(other) => Err(FieldError::invalid(
                field,
                format!("expected a string, got {}", type_name(&other)),
            )),
        }
    }

    fn required_string(&mut self, key: &str, max: usize) -> Result<String, FieldError> {
        self.string(key, max, true)?
            .ok_or_else(|| FieldError::invalid(self.name(key), "required"))
    }

    fn uint(&mut self, key: &str, max: u64) -> Result<Option<u64>, FieldError> {
        let field = self.name(key);
        match self.take(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if v <= max => Ok(Some(v)),
                _ => Err(FieldError::invalid(
                    field,
                    format!("expected an integer from 0 to {max}, got {n}"),
                )),
            },
            Some(other) => Err(FieldError::invalid(
                field,
                format!("expected an integer, got {}", type_name(&other)),
            )),
        }
    }

    /// Errors on the first field nobody took (a typo such as `sevrity` must not pass silently).
    fn finish(self) -> Result<(), FieldError> {
        match self.obj.keys().next() {
            Some(key) => Err(FieldError::invalid(self.name(key), "unknown field")),
            None => Ok(()),
        }
    }
}

fn event(
    path: &str,
    obj: Map<String, Value>,
    rules: &Rules<'_>,
    new_id: &mut dyn FnMut() -> EventId,
) -> Result<Event, FieldError> {
    let mut f = Fields { path, obj };
    let source = f.required_string("source", MAX_SOURCE)?;
    let name = f.required_string("event", MAX_NAME)?;
    let severity = severity(&mut f)?;
    let node = node(&mut f, rules)?;
    let details = f.string("details", MAX_TEXT, false)?.unwrap_or_default();
    let time_ms = f.uint("time_ms", u64::MAX)?.unwrap_or(rules.now_ms);
    let id = match f.string("id", 32, false)? {
        Some(hex) => parse_id(&hex).ok_or_else(|| {
            FieldError::invalid(f.name("id"), "expected 32 hex digits (a 128-bit event id)")
        })?,
        None => new_id(),
    };
    let tenant = tenant(&mut f, rules.tenants)?;
    f.finish()?;
    Ok(Event {
        id,
        time_ms,
        tenant,
        subject: Subject::Node(node),
        kind: EventKind::External { source, name },
        severity,
        details,
    })
}

fn service(
    path: &str,
    obj: Map<String, Value>,
    rules: &Rules<'_>,
) -> Result<ServiceState, FieldError> {
    let mut f = Fields { path, obj };
    let service = f.required_string("service", MAX_NAME)?;
    let kind_text = f.required_string("kind", MAX_KIND)?;
    let port = f.uint("port", u64::from(u16::MAX))?;
    let kind = match kind_text.as_str() {
        "port" => match port {
            Some(p) if p > 0 => ServiceKind::Port { port: p as u16 },
            Some(_) => return Err(FieldError::invalid(f.name("port"), "must be 1 to 65535")),
            None => {
                return Err(FieldError::invalid(
                    f.name("port"),
                    "required when kind is \"port\"",
                ));
            }
        },
        other => {
            if port.is_some() {
                return Err(FieldError::invalid(
                    f.name("port"),
                    "only allowed when kind is \"port\"",
                ));
            }
            match other {
                "ssl_expiry" => ServiceKind::SslExpiry,
                "application" => ServiceKind::Application,
                _ => ServiceKind::Other(kind_text.clone()),
            }
        }
    };
    let state_field = f.name("state");
    let state = match f
        .required_string("state", 16)?
        .to_ascii_lowercase()
        .as_str()
    {
        "up" => ServiceStatus::Up,
        "degraded" => ServiceStatus::Degraded,
        "down" => ServiceStatus::Down,
        other => {
            return Err(FieldError::invalid(
                state_field,
                format!("expected \"up\", \"degraded\" or \"down\", got {other:?}"),
            ));
        }
    };
    let node = node(&mut f, rules)?;
    let reason = f.string("reason", MAX_TEXT, false)?.unwrap_or_default();
    let since_ms = f.uint("since_ms", u64::MAX)?.unwrap_or(rules.now_ms);
    let checked_ms = f.uint("checked_ms", u64::MAX)?.unwrap_or(rules.now_ms);
    let tenant = tenant(&mut f, rules.tenants)?;
    f.finish()?;
    Ok(ServiceState {
        service,
        kind,
        node,
        tenant,
        state,
        reason,
        since_ms,
        checked_ms,
    })
}

/// `info`, `warning`, `minor`, `major`, `critical`, any case; NMIS's `normal` and `fatal` too.
fn severity(f: &mut Fields<'_>) -> Result<Severity, FieldError> {
    let field = f.name("severity");
    let text = f.required_string("severity", 16)?;
    Ok(match text.to_ascii_lowercase().as_str() {
        "info" | "normal" => Severity::Info,
        "warning" => Severity::Warning,
        "minor" => Severity::Minor,
        "major" => Severity::Major,
        "critical" | "fatal" => Severity::Critical,
        _ => {
            return Err(FieldError::invalid(
                field,
                format!(
                    "expected one of info, warning, minor, major, critical (or NMIS normal, fatal), got {text:?}"
                ),
            ));
        }
    })
}

/// `address` (+ `vlan`) and/or `node` (a name). A name alone is looked up in the inventory.
fn node(f: &mut Fields<'_>, rules: &Rules<'_>) -> Result<NodeRef, FieldError> {
    let name = f.string("node", MAX_NODE_NAME, false)?;
    let vlan = f.uint("vlan", 4095)?;
    let address_field = f.name("address");
    let address = match f.string("address", 64, false)? {
        Some(text) => Some(text.trim().parse::<IpAddr>().map_err(|_| {
            FieldError::invalid(&address_field, format!("{text:?} is not an IP address"))
        })?),
        None => None,
    };
    match (address, name) {
        (Some(addr), name) => {
            // One spelling per node: IPv4-mapped IPv6 is the IPv4 node.
            let addr = match addr {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
                v4 => v4,
            };
            Ok(NodeRef::new(vlan.unwrap_or(0) as u16, addr, name))
        }
        (None, Some(name)) => {
            let found = rules.resolver.and_then(|r| r(&name));
            match found {
                Some(mut node) => {
                    if let Some(v) = vlan
                        && u64::from(node.vlan) != v
                    {
                        return Err(FieldError::invalid(
                            f.name("vlan"),
                            format!("node {name:?} is on VLAN {} in the inventory", node.vlan),
                        ));
                    }
                    node.name.get_or_insert(name);
                    Ok(node)
                }
                None => Err(FieldError::invalid(
                    address_field,
                    format!("required: node {name:?} is not in the inventory"),
                )),
            }
        }
        (None, None) => Err(FieldError::invalid(
            address_field,
            "required (or \"node\" naming an inventory node)",
        )),
    }
}

fn tenant(f: &mut Fields<'_>, policy: &TenantPolicy) -> Result<TenantId, FieldError> {
    let field = f.name("tenant");
    let asked = f
        .uint("tenant", u64::from(u32::MAX))?
        .map(|t| TenantId(t as u32));
    match (policy, asked) {
        (TenantPolicy::Fixed(t), None) => Ok(*t),
        (TenantPolicy::Fixed(t), Some(a)) if a == *t => Ok(*t),
        (TenantPolicy::Fixed(t), Some(a)) => Err(FieldError::forbidden(
            field,
            format!(
                "tenant {a} refused: this poller assigns tenant {t} to local ingest and does not take tenants from requests"
            ),
        )),
        (TenantPolicy::FromRequest { default, .. }, None) => Ok(*default),
        (TenantPolicy::FromRequest { allowed, .. }, Some(a)) => {
            if allowed.is_empty() || allowed.contains(&a) {
                Ok(a)
            } else {
                Err(FieldError::forbidden(
                    field,
                    format!("tenant {a} is not one this poller serves"),
                ))
            }
        }
    }
}

fn parse_id(hex: &str) -> Option<EventId> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16)
        .ok()
        .filter(|_| hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(EventId::from_u128)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
