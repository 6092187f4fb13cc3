//! The pure core of ingest: bodies to records, and every invalid field named.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use opha_common::wire::{
    Event, EventId, EventKind, NodeRef, Record, ServiceKind, ServiceState, ServiceStatus, Severity,
    Subject, TenantId,
};
use opha_sidecar::ingest::validate::{self, FieldError, Rules};
use opha_sidecar::ingest::{NodeResolver, TenantPolicy};
use serde_json::json;

const NOW: u64 = 1_700_000_000_000;

fn rules(tenants: &TenantPolicy) -> Rules<'_> {
    Rules {
        tenants,
        resolver: None,
        max_batch: 10,
        now_ms: NOW,
    }
}

fn ids() -> impl FnMut() -> EventId {
    let mut n = 0u128;
    move || {
        n += 1;
        EventId::from_u128(n)
    }
}

fn events(body: serde_json::Value, tenants: &TenantPolicy) -> Result<Vec<Record>, FieldError> {
    validate::events(body.to_string().as_bytes(), &rules(tenants), &mut ids())
}

fn services(body: serde_json::Value, tenants: &TenantPolicy) -> Result<Vec<Record>, FieldError> {
    validate::services(body.to_string().as_bytes(), &rules(tenants))
}

const FIXED: TenantPolicy = TenantPolicy::Fixed(TenantId(7));

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn event_body() -> serde_json::Value {
    json!({
        "source": "opeventsd",
        "event": "Proactive Interface Utilisation",
        "severity": "major",
        "address": "198.18.0.5",
        "node": "core-rtr1",
        "vlan": 12,
        "details": "ge-0/0/1 at 97%",
        "time_ms": 1_690_000_000_000u64,
    })
}

fn err(r: Result<Vec<Record>, FieldError>) -> FieldError {
    match r {
        Ok(records) => panic!("expected an error, got {records:?}"),
        Err(e) => e,
    }
}

#[test]
fn a_full_event() {
    let records = events(event_body(), &FIXED).unwrap();
    assert_eq!(
        records,
        vec![Record::Event(Event {
            id: EventId::from_u128(1),
            time_ms: 1_690_000_000_000,
            tenant: TenantId(7),
            subject: Subject::Node(NodeRef::new(
                12,
                v4(198, 18, 0, 5),
                Some("core-rtr1".into())
            )),
            kind: EventKind::External {
                source: "opeventsd".into(),
                name: "Proactive Interface Utilisation".into(),
            },
            severity: Severity::Major,
            details: "ge-0/0/1 at 97%".into(),
        })]
    );
}

#[test]
fn a_minimal_event_gets_defaults() {
    let body = json!({"source": "nmis9d", "event": "Node Down", "severity": "Critical",
                      "address": "::ffff:198.18.0.9", "details": null});
    let [Record::Event(e)] = &events(body, &FIXED).unwrap()[..] else {
        panic!()
    };
    assert_eq!(e.time_ms, NOW);
    assert_eq!(e.severity, Severity::Critical, "case-insensitive");
    assert_eq!(e.details, "");
    assert_eq!(
        e.subject,
        Subject::Node(NodeRef::new(0, v4(198, 18, 0, 9), None)),
        "IPv4-mapped is the IPv4 node"
    );
    assert_eq!(e.id, EventId::from_u128(1));
}

#[test]
fn nmis_severity_names_and_own_ids() {
    for (text, sev) in [
        ("normal", Severity::Info),
        ("info", Severity::Info),
        ("warning", Severity::Warning),
        ("MINOR", Severity::Minor),
        ("fatal", Severity::Critical),
    ] {
        let mut body = event_body();
        body["severity"] = json!(text);
        body["id"] = json!("00112233445566778899AABBCCDDEEFF");
        let [Record::Event(e)] = &events(body, &FIXED).unwrap()[..] else {
            panic!()
        };
        assert_eq!(e.severity, sev, "{text}");
        assert_eq!(e.id, EventId::from_u128(0x00112233445566778899aabbccddeeff));
    }
}

#[test]
fn arrays_are_all_or_nothing_and_paths_name_the_item() {
    let mut bad = event_body();
    bad["severity"] = json!("loud");
    let body = json!([event_body(), event_body(), bad]);
    let e = err(events(body, &FIXED));
    assert_eq!(e.status, 400);
    assert_eq!(e.field, "[2].severity");
    assert!(e.message.contains("\"loud\""), "{}", e.message);

    let body = json!([event_body(), event_body()]);
    let records = events(body, &FIXED).unwrap();
    assert_eq!(records.len(), 2);
    let ids: Vec<_> = records
        .iter()
        .map(|r| match r {
            Record::Event(e) => e.id,
            _ => panic!(),
        })
        .collect();
    assert_ne!(ids[0], ids[1], "each event gets its own id");

    let e = err(events(json!([]), &FIXED));
    assert_eq!((e.field.as_str(), e.status), ("body", 400));
    let e = err(events(json!(vec![event_body(); 11]), &FIXED));
    assert_eq!(e.field, "body");
    assert!(e.message.contains("at most 10"), "{}", e.message);
    let e = err(events(json!([event_body(), 3]), &FIXED));
    assert_eq!(e.field, "[1]");
}

#[test]
fn every_invalid_event_field_is_named() {
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        ("source", json!(null), "required"),
        ("source", json!(""), "must not be empty"),
        ("source", json!("   "), "must not be empty"),
        ("source", json!(42), "expected a string"),
        ("source", json!("x".repeat(129)), "at most 128"),
        ("event", json!(null), "required"),
        ("event", json!(["a"]), "expected a string"),
        ("severity", json!(null), "required"),
        ("severity", json!("urgent"), "expected one of"),
        ("severity", json!(5), "expected a string"),
        ("address", json!("not-an-ip"), "not an IP address"),
        ("address", json!("198.18.0.256"), "not an IP address"),
        ("address", json!(19818), "expected a string"),
        ("vlan", json!(4096), "0 to 4095"),
        ("vlan", json!(-1), "0 to 4095"),
        ("vlan", json!("12"), "expected an integer"),
        ("node", json!({}), "expected a string"),
        ("details", json!("d".repeat(8193)), "at most 8192"),
        ("time_ms", json!(-5), "expected an integer"),
        ("time_ms", json!(1.5), "expected an integer"),
        ("id", json!("xyz"), "32 hex digits"),
        (
            "id",
            json!("+0112233445566778899aabbccddeeff"),
            "32 hex digits",
        ),
        ("tenant", json!("seven"), "expected an integer"),
        ("tenant", json!(1u64 << 32), "0 to 4294967295"),
    ];
    for (field, value, message) in cases {
        let mut body = event_body();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value.clone();
        }
        let e = err(events(body, &FIXED));
        assert_eq!(e.field, field, "{field} = {value}: {e}");
        assert_eq!(e.status, 400, "{field} = {value}");
        assert!(
            e.message.contains(message),
            "{field} = {value}: {}",
            e.message
        );
    }
    // No address and no node.
    let mut body = event_body();
    body.as_object_mut().unwrap().remove("address");
    body.as_object_mut().unwrap().remove("node");
    assert_eq!(err(events(body, &FIXED)).field, "address");
    // A misspelt field is refused, not ignored.
    let mut body = event_body();
    body["sevrity"] = json!("major");
    let e = err(events(body, &FIXED));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("sevrity", "unknown field")
    );
}

#[test]
fn bodies_that_are_not_objects() {
    for (body, message) in [
        (&b"{\"source\": "[..], "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"42", "expected an object or an array"),
        (b"\"text\"", "expected an object or an array"),
        (b"null", "expected an object or an array"),
    ] {
        let e = validate::events(body, &rules(&FIXED), &mut ids()).unwrap_err();
        assert_eq!(e.field, "body");
        assert!(e.message.contains(message), "{body:?}: {}", e.message);
    }
}

#[test]
fn tenant_is_never_trusted_by_default() {
    // Fixed: the configured tenant; the same value may be repeated, another is refused (403).
    let mut body = event_body();
    body["tenant"] = json!(7);
    let [Record::Event(e)] = &events(body.clone(), &FIXED).unwrap()[..] else {
        panic!()
    };
    assert_eq!(e.tenant, TenantId(7));
    body["tenant"] = json!(8);
    let e = err(events(body.clone(), &FIXED));
    assert_eq!((e.status, e.field.as_str()), (403, "tenant"));
    assert!(e.message.contains("tenant 8 refused"), "{}", e.message);

    // FromRequest: within the allowed list; default when absent.
    let policy = TenantPolicy::FromRequest {
        default: TenantId(1),
        allowed: vec![TenantId(1), TenantId(8)],
    };
    let [Record::Event(e)] = &events(body.clone(), &policy).unwrap()[..] else {
        panic!()
    };
    assert_eq!(e.tenant, TenantId(8));
    body["tenant"] = json!(9);
    let e = err(events(body.clone(), &policy));
    assert_eq!((e.status, e.field.as_str()), (403, "tenant"));
    body.as_object_mut().unwrap().remove("tenant");
    let [Record::Event(e)] = &events(body, &policy).unwrap()[..] else {
        panic!()
    };
    assert_eq!(e.tenant, TenantId(1));
}

#[test]
fn node_names_resolve_through_the_inventory() {
    let resolver: NodeResolver = Arc::new(|name: &str| {
        (name == "edge-7").then(|| NodeRef::new(30, v4(198, 19, 0, 7), None))
    });
    let r = Rules {
        tenants: &FIXED,
        resolver: Some(&resolver),
        max_batch: 10,
        now_ms: NOW,
    };
    let body = json!({"source": "s", "event": "e", "severity": "info", "node": "edge-7"});
    let [Record::Event(e)] =
        &validate::events(body.to_string().as_bytes(), &r, &mut ids()).unwrap()[..]
    else {
        panic!()
    };
    assert_eq!(
        e.subject,
        Subject::Node(NodeRef::new(30, v4(198, 19, 0, 7), Some("edge-7".into())))
    );
    let body =
        json!({"source": "s", "event": "e", "severity": "info", "node": "edge-7", "vlan": 31});
    let e = validate::events(body.to_string().as_bytes(), &r, &mut ids()).unwrap_err();
    assert_eq!(e.field, "vlan");
    let body = json!({"source": "s", "event": "e", "severity": "info", "node": "nowhere"});
    let e = validate::events(body.to_string().as_bytes(), &r, &mut ids()).unwrap_err();
    assert_eq!(e.field, "address");
    assert!(
        e.message.contains("\"nowhere\" is not in the inventory"),
        "{}",
        e.message
    );
}

fn service_body() -> serde_json::Value {
    json!({
        "service": "https",
        "kind": "port",
        "port": 443,
        "address": "198.18.0.5",
        "state": "down",
        "reason": "connection refused",
        "since_ms": 1_690_000_000_000u64,
    })
}

#[test]
fn service_states() {
    let [Record::ServiceState(s)] = &services(service_body(), &FIXED).unwrap()[..] else {
        panic!()
    };
    assert_eq!(
        s.clone(),
        ServiceState {
            service: "https".into(),
            kind: ServiceKind::Port { port: 443 },
            node: NodeRef::new(0, v4(198, 18, 0, 5), None),
            tenant: TenantId(7),
            state: ServiceStatus::Down,
            reason: "connection refused".into(),
            since_ms: 1_690_000_000_000,
            checked_ms: NOW,
        }
    );
    for (kind, expected) in [
        ("ssl_expiry", ServiceKind::SslExpiry),
        ("application", ServiceKind::Application),
        (
            "opCharts stack",
            ServiceKind::Other("opCharts stack".into()),
        ),
    ] {
        let mut body = service_body();
        body["kind"] = json!(kind);
        body.as_object_mut().unwrap().remove("port");
        body["state"] = json!("Degraded");
        let [Record::ServiceState(s)] = &services(body, &FIXED).unwrap()[..] else {
            panic!()
        };
        assert_eq!(s.kind, expected);
        assert_eq!(s.state, ServiceStatus::Degraded);
    }
}

#[test]
fn every_invalid_service_field_is_named() {
    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        ("service", json!(null), "service", "required"),
        ("kind", json!(null), "kind", "required"),
        ("kind", json!(3), "kind", "expected a string"),
        (
            "port",
            json!(null),
            "port",
            "required when kind is \"port\"",
        ),
        ("port", json!(0), "port", "1 to 65535"),
        ("port", json!(70000), "port", "0 to 65535"),
        (
            "state",
            json!("sideways"),
            "state",
            "expected \"up\", \"degraded\" or \"down\"",
        ),
        ("state", json!(null), "state", "required"),
        ("address", json!("x"), "address", "not an IP address"),
        ("reason", json!(false), "reason", "expected a string"),
        ("since_ms", json!("now"), "since_ms", "expected an integer"),
        ("checked_ms", json!(-1), "checked_ms", "expected an integer"),
        ("tenant", json!(99), "tenant", "refused"),
        ("colour", json!("red"), "colour", "unknown field"),
    ];
    for (key, value, field, message) in cases {
        let mut body = service_body();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(key);
        } else {
            body[key] = value.clone();
        }
        let e = err(services(json!([service_body(), body]), &FIXED));
        assert_eq!(e.field, format!("[1].{field}"), "{key} = {value}: {e}");
        assert!(
            e.message.contains(message),
            "{key} = {value}: {}",
            e.message
        );
    }
    let mut body = service_body();
    body["kind"] = json!("application");
    let e = err(services(body, &FIXED));
    assert_eq!(e.field, "port");
    assert!(e.message.contains("only allowed when kind is \"port\""));
}
