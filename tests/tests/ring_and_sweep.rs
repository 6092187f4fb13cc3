//! The loader's batch ring-buffer reader (records are consumed only on commit, so a reader that
//! dies before its records are durable loses nothing) and the in-flight sweep (timeouts, and the
//! eviction count that stays right across restarts).

use opha_common::{
    ringbuf::RingKind,
    stats::{Stat, UserStat},
};
use opha_sidecar::{
    loader::LoaderConfig,
    ring::{RingItem, RingReader},
};
use opha_tests::{
    packets::{Frame, NODE_MAC, NODE_V4, POLLER_MAC, POLLER_PORT, POLLER_V4, SNMP_PORT, TRAP_PORT},
    packets::{pdu, snmp_v1_v2c, snmp_v2c_trap, syslog_line},
    pins::{TestInstance, configure_default},
    privilege::privileged,
};

const PASS: u32 = u32::MAX;

fn trap(i: u16) -> Vec<u8> {
    Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
        .udp(
            40000 + i,
            TRAP_PORT,
            &snmp_v2c_trap(b"public", pdu::TRAP_V2, i32::from(i), &[]),
        )
}

fn read_all(reader: &mut RingReader, max: usize) -> Vec<RingItem> {
    let mut out = Vec::new();
    reader.read(max, &mut out);
    out
}

fn src_ports(items: &[RingItem]) -> Vec<u16> {
    items
        .iter()
        .map(|i| match i {
            RingItem::Record(r) => {
                assert_eq!(r.kind, RingKind::Trap as u8);
                r.src_port
            }
            RingItem::Unexpected(n) => panic!("unexpected record of {n} bytes"),
        })
        .collect()
}

#[test]
fn records_are_read_again_until_committed_also_after_a_restart() {
    if !privileged("records_are_read_again_until_committed_also_after_a_restart") {
        return;
    }
    let mut inst = TestInstance::configured("ringcommit").expect("load");
    for i in 0..3 {
        assert_eq!(
            inst.test_run("opha_ingress", &trap(i), 1)
                .unwrap()
                .return_value,
            PASS
        );
    }
    let mut reader = inst.ring_reader().expect("reader");
    assert_eq!(
        src_ports(&read_all(&mut reader, 10)),
        vec![40000, 40001, 40002]
    );
    // Not committed: a reader after a restart (the sidecar died before fsync) sees them again.
    drop(reader);
    let dp = inst.reopen().expect("reopen");
    let mut reader = dp.ring_reader().expect("reader");
    assert!(reader.pending_bytes() > 0);
    assert_eq!(src_ports(&read_all(&mut reader, 2)), vec![40000, 40001]);
    // Rewinding forgets the uncommitted read; committing consumes exactly what was read.
    reader.rewind();
    assert_eq!(src_ports(&read_all(&mut reader, 2)), vec![40000, 40001]);
    reader.commit();
    drop(reader);
    let dp = inst.reopen().expect("reopen");
    let mut reader = dp.ring_reader().expect("reader");
    assert_eq!(src_ports(&read_all(&mut reader, 10)), vec![40002]);
    reader.commit();
    assert_eq!(reader.pending_bytes(), 0);
    assert!(read_all(&mut reader, 10).is_empty());
}

#[test]
fn batches_wrap_around_a_small_ring_without_loss_or_duplicates() {
    if !privileged("batches_wrap_around_a_small_ring_without_loss_or_duplicates") {
        return;
    }
    let mut cfg = LoaderConfig::new("placeholder");
    cfg.ringbuf_bytes = 16 * 4096; // about 110 records of 568 bytes
    let mut inst = TestInstance::with_config(LoaderConfig {
        instance: format!("t-{}-ringwrap", std::process::id()),
        ..cfg
    })
    .expect("load");
    configure_default(inst.dp_mut()).expect("configure");
    let mut reader = inst.ring_reader().expect("reader");
    let mut seen = Vec::new();
    let mut sent = 0u16;
    // 12 rounds of 70 records: the ring (about 110 records) wraps several times.
    for _ in 0..12 {
        for _ in 0..70 {
            inst.test_run("opha_ingress", &trap(sent), 1).unwrap();
            sent += 1;
        }
        loop {
            let items = read_all(&mut reader, 32);
            if items.is_empty() {
                break;
            }
            seen.extend(src_ports(&items));
            reader.commit();
        }
    }
    let want: Vec<u16> = (0..sent).map(|i| 40000 + i).collect();
    assert_eq!(seen, want, "every record exactly once, in order");
    let stats = inst.stats().unwrap();
    assert_eq!(stats.get(Stat::TrapsCopied), u64::from(sent));
    assert_eq!(stats.get(Stat::RingbufDrops), 0);
}

#[test]
fn syslog_and_traps_share_the_ring_in_order() {
    if !privileged("syslog_and_traps_share_the_ring_in_order") {
        return;
    }
    let inst = TestInstance::configured("ringmix").expect("load");
    let syslog = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
        .udp(514, 514, &syslog_line(13, "host app: hello"));
    inst.test_run("opha_ingress", &trap(7), 1).unwrap();
    inst.test_run("opha_ingress", &syslog, 1).unwrap();
    let mut reader = inst.ring_reader().expect("reader");
    let items = read_all(&mut reader, 10);
    let kinds: Vec<u8> = items
        .iter()
        .map(|i| match i {
            RingItem::Record(r) => r.kind,
            RingItem::Unexpected(n) => panic!("unexpected record of {n} bytes"),
        })
        .collect();
    assert_eq!(kinds, vec![RingKind::Trap as u8, RingKind::Syslog as u8]);
    if let RingItem::Record(r) = &items[1] {
        assert_eq!(r.payload(), b"<13>host app: hello");
    }
}

fn snmp_get(request_id: i32) -> Vec<u8> {
    Frame::new().ipv4(POLLER_V4, NODE_V4).udp(
        POLLER_PORT,
        SNMP_PORT,
        &snmp_v1_v2c(1, b"public", pdu::GET, request_id, 0, &[]),
    )
}

fn snmp_response(request_id: i32) -> Vec<u8> {
    Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
        .udp(
            SNMP_PORT,
            POLLER_PORT,
            &snmp_v1_v2c(1, b"public", pdu::RESPONSE, request_id, 0, &[]),
        )
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn sweep_removes_timed_out_requests_and_keeps_the_eviction_count_right() {
    if !privileged("sweep_removes_timed_out_requests_and_keeps_the_eviction_count_right") {
        return;
    }
    let mut inst = TestInstance::configured("sweep").expect("load");
    for id in [1, 2, 3] {
        inst.test_run("opha_egress", &snmp_get(id), 1).unwrap();
    }
    // A generous timeout: nothing has waited that long.
    let swept = inst
        .dp_mut()
        .sweep_inflight(monotonic_ns(), 60_000_000_000)
        .unwrap();
    assert!(swept.is_empty());
    assert_eq!(inst.inflight().unwrap().len(), 3);
    // Request 2 is answered; the other two time out.
    inst.test_run("opha_ingress", &snmp_response(2), 1).unwrap();
    let later = monotonic_ns() + 120_000_000_000;
    let swept = inst.dp_mut().sweep_inflight(later, 60_000_000_000).unwrap();
    let mut ids: Vec<u32> = swept.iter().map(|(k, _)| k.id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 3]);
    let stats = inst.stats().unwrap();
    assert_eq!(stats.inflight_live, 0);
    assert_eq!(stats.inflight_swept, 2);
    assert_eq!(stats.get(Stat::InflightInserted), 3);
    assert_eq!(stats.get(Stat::Matched), 1);
    assert_eq!(
        stats.inflight_evictions, 0,
        "swept requests are not evictions"
    );
    // A late response to a swept request is unmatched.
    inst.test_run("opha_ingress", &snmp_response(1), 1).unwrap();
    assert_eq!(inst.stats().unwrap().get(Stat::UnmatchedResponses), 1);
    // The swept total is pinned: a restarted sidecar still counts it.
    let dp = inst.reopen().expect("reopen");
    assert_eq!(dp.user_stat(UserStat::InflightSwept).unwrap(), 2);
    let stats = dp.stats().unwrap();
    assert_eq!(stats.inflight_swept, 2);
    assert_eq!(stats.inflight_evictions, 0);
}
