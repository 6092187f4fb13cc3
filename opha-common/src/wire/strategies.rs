//! proptest strategies for every wire type (feature `proptest`), so that tests in any crate
//! (replay log, bus, store) can generate realistic and edge-case records.
//!
//! Integers range over their whole type (varint edge cases), strings over arbitrary Unicode,
//! and every enum variant is reachable.

use super::alloc::{string::String, vec};
use super::*;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use proptest::collection::vec as vec_of;
use proptest::option::of;
use proptest::prelude::*;

/// Arbitrary printable text of up to `max` chars.
pub fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&alloc::format!("\\PC{{0,{max}}}"))
        .expect("a constant, valid regex")
}

pub fn peer_id() -> impl Strategy<Value = PeerId> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_filter_map("valid peer id", |s| PeerId::new(s).ok())
}

pub fn tenant() -> impl Strategy<Value = TenantId> {
    any::<u32>().prop_map(TenantId)
}

pub fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
        any::<[u8; 16]>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
    ]
}

pub fn node_ref() -> impl Strategy<Value = NodeRef> {
    (any::<u16>(), ip(), of(text(24))).prop_map(|(vlan, addr, name)| NodeRef::new(vlan, addr, name))
}

pub fn rtt_stats() -> impl Strategy<Value = RttStats> {
    (any::<u64>(), any::<[u32; 6]>()).prop_map(|(samples, r)| RttStats {
        samples,
        min_us: r[0],
        avg_us: r[1],
        max_us: r[2],
        p50_us: r[3],
        p95_us: r[4],
        p99_us: r[5],
    })
}

pub fn class_metrics() -> impl Strategy<Value = ClassMetrics> {
    (any::<[u64; 6]>(), any::<u32>(), of(rtt_stats())).prop_map(|(c, loss_ppm, rtt)| ClassMetrics {
        requests: c[0],
        responses: c[1],
        timeouts: c[2],
        loss_ppm,
        errors: c[3],
        bytes_in: c[4],
        bytes_out: c[5],
        rtt,
    })
}

pub fn poll_class() -> impl Strategy<Value = PollClass> {
    proptest::sample::select(PollClass::ALL.to_vec())
}

pub fn node_metrics() -> impl Strategy<Value = NodeMetrics> {
    (
        node_ref(),
        tenant(),
        any::<u64>(),
        any::<u32>(),
        class_metrics(),
        class_metrics(),
        class_metrics(),
    )
        .prop_map(
            |(node, tenant, interval_start_ms, interval_ms, icmp, snmp, tcp)| NodeMetrics {
                node,
                tenant,
                interval_start_ms,
                interval_ms,
                icmp,
                snmp,
                tcp,
            },
        )
}

pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec_of(any::<u8>(), 0..=max).prop_map(Bytes)
}

pub fn oid() -> impl Strategy<Value = Oid> {
    vec_of(any::<u32>(), 0..=16).prop_map(Oid)
}

pub fn var_value() -> impl Strategy<Value = VarValue> {
    prop_oneof![
        any::<i64>().prop_map(VarValue::Integer),
        bytes(32).prop_map(VarValue::OctetString),
        oid().prop_map(VarValue::ObjectId),
        any::<[u8; 4]>().prop_map(|a| VarValue::IpAddress(Ipv4Addr::from(a))),
        any::<u32>().prop_map(VarValue::Counter32),
        any::<u32>().prop_map(VarValue::Gauge32),
        any::<u32>().prop_map(VarValue::TimeTicks),
        bytes(16).prop_map(VarValue::Opaque),
        any::<u64>().prop_map(VarValue::Counter64),
        Just(VarValue::Null),
        Just(VarValue::NoSuchObject),
        Just(VarValue::NoSuchInstance),
        Just(VarValue::EndOfMibView),
    ]
}

pub fn var_bind() -> impl Strategy<Value = VarBind> {
    (oid(), var_value()).prop_map(|(oid, value)| VarBind { oid, value })
}

pub fn snmp_version() -> impl Strategy<Value = SnmpVersion> {
    proptest::sample::select(vec![SnmpVersion::V1, SnmpVersion::V2c, SnmpVersion::V3])
}

pub fn trap() -> impl Strategy<Value = Trap> {
    (
        snmp_version(),
        any::<bool>(),
        oid(),
        ip(),
        vec_of(var_bind(), 0..6),
    )
        .prop_map(|(version, inform, oid, agent, varbinds)| Trap {
            version,
            inform,
            oid,
            agent,
            varbinds,
        })
}

pub fn syslog() -> impl Strategy<Value = Syslog> {
    (any::<u8>(), any::<u8>(), text(24), of(text(16)), text(64)).prop_map(
        |(facility, severity, host, app, message)| Syslog {
            facility,
            severity,
            host,
            app,
            message,
        },
    )
}

pub fn raw_source() -> impl Strategy<Value = RawSource> {
    proptest::sample::select(vec![RawSource::Trap, RawSource::Syslog])
}

pub fn event_kind() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::NodeDown),
        Just(EventKind::NodeUp),
        Just(EventKind::SnmpDown),
        Just(EventKind::SnmpUp),
        any::<u16>().prop_map(|port| EventKind::ServicePortDown { port }),
        any::<u16>().prop_map(|port| EventKind::ServicePortUp { port }),
        (poll_class(), any::<u32>(), any::<u32>()).prop_map(|(class, rtt_us, threshold_us)| {
            EventKind::RttAboveThreshold {
                class,
                rtt_us,
                threshold_us,
            }
        }),
        (poll_class(), any::<u32>(), any::<u32>()).prop_map(|(class, rtt_us, threshold_us)| {
            EventKind::RttBelowThreshold {
                class,
                rtt_us,
                threshold_us,
            }
        }),
        (poll_class(), any::<u32>(), any::<u32>()).prop_map(|(class, loss_ppm, threshold_ppm)| {
            EventKind::LossAboveThreshold {
                class,
                loss_ppm,
                threshold_ppm,
            }
        }),
        (poll_class(), any::<u32>(), any::<u32>()).prop_map(|(class, loss_ppm, threshold_ppm)| {
            EventKind::LossBelowThreshold {
                class,
                loss_ppm,
                threshold_ppm,
            }
        }),
        trap().prop_map(EventKind::Trap),
        syslog().prop_map(EventKind::Syslog),
        (text(16), text(32)).prop_map(|(source, name)| EventKind::External { source, name }),
        (raw_source(), ip(), bytes(64)).prop_map(|(source, from, raw)| EventKind::Undecodable {
            source,
            from,
            raw
        }),
        text(12).prop_map(|daemon| EventKind::DaemonDown { daemon }),
        text(12).prop_map(|daemon| EventKind::DaemonUp { daemon }),
        any::<u8>().prop_map(|percent| EventKind::ReplayLogUsageHigh { percent }),
        any::<u8>().prop_map(|percent| EventKind::ReplayLogUsageNormal { percent }),
        any::<u32>().prop_map(|keep_every| EventKind::ReplayLogThinning { keep_every }),
        Just(EventKind::ReplayLogBlocked),
        Just(EventKind::ReplayLogUnblocked),
        (any::<u64>(), any::<u32>()).prop_map(|(truncated_bytes, quarantined_segments)| {
            EventKind::ReplayLogRecovered {
                truncated_bytes,
                quarantined_segments,
            }
        }),
    ]
}

pub fn severity() -> impl Strategy<Value = Severity> {
    proptest::sample::select(Severity::ALL.to_vec())
}

pub fn subject() -> impl Strategy<Value = Subject> {
    prop_oneof![
        node_ref().prop_map(Subject::Node),
        peer_id().prop_map(Subject::Peer),
    ]
}

pub fn event_id() -> impl Strategy<Value = EventId> {
    any::<[u8; 16]>().prop_map(EventId)
}

pub fn event() -> impl Strategy<Value = Event> {
    (
        event_id(),
        any::<u64>(),
        tenant(),
        subject(),
        event_kind(),
        severity(),
        text(48),
    )
        .prop_map(
            |(id, time_ms, tenant, subject, kind, severity, details)| Event {
                id,
                time_ms,
                tenant,
                subject,
                kind,
                severity,
                details,
            },
        )
}

pub fn service_kind() -> impl Strategy<Value = ServiceKind> {
    prop_oneof![
        any::<u16>().prop_map(|port| ServiceKind::Port { port }),
        Just(ServiceKind::SslExpiry),
        Just(ServiceKind::Application),
        text(16).prop_map(ServiceKind::Other),
    ]
}

pub fn service_status() -> impl Strategy<Value = ServiceStatus> {
    proptest::sample::select(vec![
        ServiceStatus::Up,
        ServiceStatus::Degraded,
        ServiceStatus::Down,
    ])
}

pub fn service_state() -> impl Strategy<Value = ServiceState> {
    (
        text(24),
        service_kind(),
        node_ref(),
        tenant(),
        service_status(),
        text(32),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(service, kind, node, tenant, state, reason, since_ms, checked_ms)| ServiceState {
                service,
                kind,
                node,
                tenant,
                state,
                reason,
                since_ms,
                checked_ms,
            },
        )
}

pub fn daemon_state() -> impl Strategy<Value = DaemonState> {
    proptest::sample::select(vec![
        DaemonState::Up,
        DaemonState::Down,
        DaemonState::Unknown,
    ])
}

pub fn daemon_health() -> impl Strategy<Value = DaemonHealth> {
    (
        text(12),
        daemon_state(),
        of(any::<u32>()),
        any::<u64>(),
        any::<u64>(),
        text(32),
    )
        .prop_map(
            |(daemon, state, pid, since_ms, checked_ms, detail)| DaemonHealth {
                daemon,
                state,
                pid,
                since_ms,
                checked_ms,
                detail,
            },
        )
}

pub fn peer_role() -> impl Strategy<Value = PeerRole> {
    proptest::sample::select(vec![PeerRole::Poller, PeerRole::Primary, PeerRole::Mirror])
}

pub fn replay_log_status() -> impl Strategy<Value = ReplayLogStatus> {
    any::<[u64; 4]>().prop_map(|v| ReplayLogStatus {
        records: v[0],
        bytes: v[1],
        oldest_age_ms: v[2],
        budget_bytes: v[3],
    })
}

pub fn peer_status() -> impl Strategy<Value = PeerStatus> {
    (
        (peer_id(), peer_role(), text(12), any::<u16>()),
        (any::<u64>(), text(16), any::<u64>()),
        vec_of(
            (tenant(), any::<u32>()).prop_map(|(tenant, nodes)| TenantNodes { tenant, nodes }),
            0..8,
        ),
        replay_log_status(),
        vec_of(
            (text(24), any::<u64>()).prop_map(|(name, value)| KernelCounter { name, value }),
            0..8,
        ),
    )
        .prop_map(
            |(
                (peer, role, version, protocol),
                (uptime_ms, region, time_ms),
                nodes,
                replay_log,
                kernel,
            )| {
                PeerStatus {
                    peer,
                    role,
                    version,
                    protocol,
                    uptime_ms,
                    region,
                    time_ms,
                    nodes,
                    replay_log,
                    kernel,
                }
            },
        )
}

pub fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        node_metrics().prop_map(Record::NodeMetrics),
        event().prop_map(Record::Event),
        service_state().prop_map(Record::ServiceState),
        daemon_health().prop_map(Record::DaemonHealth),
        peer_status().prop_map(Record::PeerStatus),
    ]
}

pub fn sequenced() -> impl Strategy<Value = Sequenced> {
    (peer_id(), any::<u64>(), any::<u64>(), record())
        .prop_map(|(poller, epoch, seq, record)| Sequenced::new(poller, epoch, seq, record))
}

/// Records of one kind, for per-kind tests.
pub fn sequenced_of(kind: FrameKind) -> BoxedStrategy<Sequenced> {
    let record = match kind {
        FrameKind::NodeMetrics => node_metrics().prop_map(Record::NodeMetrics).boxed(),
        FrameKind::Event => event().prop_map(Record::Event).boxed(),
        FrameKind::ServiceState => service_state().prop_map(Record::ServiceState).boxed(),
        FrameKind::DaemonHealth => daemon_health().prop_map(Record::DaemonHealth).boxed(),
        FrameKind::PeerStatus => peer_status().prop_map(Record::PeerStatus).boxed(),
    };
    (peer_id(), any::<u64>(), any::<u64>(), record)
        .prop_map(|(poller, epoch, seq, record)| Sequenced::new(poller, epoch, seq, record))
        .boxed()
}
