//! The kernel counters against real tools: real net-snmp `snmpd` answering for 500+ IPv4 and a
//! few IPv6 device addresses in a devices namespace, the real `opha-sidecar` binary attached to
//! the poller namespace's link, and real `fping`, `snmpget` and `snmpbulkwalk` polling from
//! the poller namespace. Per node, the kernel's requests, responses, errors and bytes must equal
//! what the tools report they sent and received.
//!
//! The sidecar runs as the real binary (not the loader in-process) because that is what ships:
//! its command line, its configuration of ports and prefixes and its TCX attach are under test
//! too. It runs in the poller's network namespace only (setns in the child, like
//! `nsenter --net`), so it still sees /sys/fs/bpf. The counters are read in this process from
//! the pinned maps, which needs no namespace.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use opha_common::{
    node::{ProtoClass, rtt_bucket},
    stats::Stat,
};
use opha_sidecar::loader::{DataPlane, NodeSnapshot};
use opha_tests::{
    netns::{FpingOpts, Sidecar, Site, SiteConfig, Snmpd, Tally, Tools, describe, kernel_rtt_ms},
    pins::unique_instance,
};

/// sysDescr.0, sysUpTime.0, sysName.0.
const OIDS: [&str; 3] = [
    "1.3.6.1.2.1.1.1.0",
    "1.3.6.1.2.1.1.3.0",
    "1.3.6.1.2.1.1.5.0",
];
/// The system subtree: several GetBulk requests with -Cr10.
const SYSTEM: &str = "1.3.6.1.2.1.1";

const MAIN_V4: usize = 500;
const UNREACHABLE_V4: usize = 10;
const DELAYED_V4: usize = 10;
const MAIN_V6: usize = 3;
const UNREACHABLE_V6: usize = 1;
const DELAYED_V6: usize = 2;
const DELAY: Duration = Duration::from_millis(20);
/// Polls per delayed node and class: enough that one late wake-up of snmpd on a busy host does
/// not move the average far.
const DELAY_SAMPLES: u32 = 10;

/// The histogram bucket that holds the median sample.
fn median_bucket(hist: &[u32], count: u64) -> usize {
    let mut seen = 0u64;
    for (i, &n) in hist.iter().enumerate() {
        seen += u64::from(n);
        if seen * 2 >= count {
            return i;
        }
    }
    hist.len()
}

fn assert_matches(dp: &DataPlane, tally: &Tally, phase: &str) -> Vec<NodeSnapshot> {
    let nodes = dp.nodes().expect("reading the node map");
    let bad = tally.mismatches(&nodes);
    assert!(
        bad.is_empty(),
        "{phase}: {} differences between the tools and the kernel, e.g.:\n{}",
        bad.len(),
        bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    let stats = dp.stats().expect("reading the global statistics");
    let responses =
        tally.total(ProtoClass::IcmpEcho).received + tally.total(ProtoClass::Snmp).received;
    assert_eq!(stats.get(Stat::Malformed), 0, "{phase}: malformed packets");
    assert_eq!(stats.get(Stat::NodeMapFull), 0, "{phase}: node map full");
    assert_eq!(
        stats.get(Stat::UnmatchedResponses),
        0,
        "{phase}: unmatched responses"
    );
    assert_eq!(
        stats.get(Stat::Matched),
        responses,
        "{phase}: matched responses"
    );
    nodes
}

#[test]
fn kernel_counts_equal_what_real_tools_report() {
    if !opha_tests::privilege::privileged("kernel_counts_equal_what_real_tools_report") {
        return;
    }
    let started = Instant::now();
    let site = Site::new(&SiteConfig::new(
        "rt",
        MAIN_V4 + UNREACHABLE_V4 + DELAYED_V4,
        MAIN_V6 + UNREACHABLE_V6 + DELAYED_V6,
    ))
    .expect("building the site");
    let v4: Vec<IpAddr> = site.v4.iter().map(|&a| a.into()).collect();
    let v6: Vec<IpAddr> = site.v6.iter().map(|&a| a.into()).collect();
    let (main_v4, rest_v4) = v4.split_at(MAIN_V4);
    let (unreachable_v4, delayed_v4) = rest_v4.split_at(UNREACHABLE_V4);
    let (main_v6, rest_v6) = v6.split_at(MAIN_V6);
    let (unreachable_v6, delayed_v6) = rest_v6.split_at(UNREACHABLE_V6);
    let main: Vec<IpAddr> = main_v4.iter().chain(main_v6).copied().collect();
    let unreachable: Vec<IpAddr> = unreachable_v4
        .iter()
        .chain(unreachable_v6)
        .copied()
        .collect();
    let delayed: Vec<IpAddr> = delayed_v4.iter().chain(delayed_v6).copied().collect();
    let polled: Vec<IpAddr> = main.iter().chain(&unreachable).copied().collect();

    let _snmpd = Snmpd::start(&site.devices, &site.v6).expect("starting snmpd");
    site.make_unreachable(&unreachable)
        .expect("removing addresses");
    let sidecar = Sidecar::start(&site.poller, &site.poller_if, &unique_instance("realtools"))
        .expect("starting opha-sidecar");
    let dp = sidecar.dataplane().expect("opening the pinned maps");
    let mut tools = Tools::new(&site.poller).expect("tools");
    let setup = started.elapsed();

    // Phase 1: every device, no delay.
    let mut tally = Tally::default();
    let t = Instant::now();
    let fping = tools
        .fping(
            &polled,
            3,
            &FpingOpts {
                period: Duration::from_millis(600),
                ..FpingOpts::default()
            },
        )
        .expect("fping");
    tally.merge(&fping);
    let fping_time = t.elapsed();
    let t = Instant::now();
    tally.merge(&tools.snmpget(&polled, &OIDS, 1).expect("snmpget"));
    let snmpget_time = t.elapsed();
    tally.merge(
        &tools
            .snmpget_v1_missing(&main_v4[..5])
            .expect("snmpget -v1"),
    );
    let walked: Vec<IpAddr> = main_v4[..10]
        .iter()
        .chain(&main_v6[..2])
        .chain(&unreachable_v4[..1])
        .chain(unreachable_v6)
        .copied()
        .collect();
    tally.merge(
        &tools
            .snmpbulkwalk(&walked, SYSTEM, 10)
            .expect("snmpbulkwalk"),
    );

    // The tools themselves must have seen what the site is built for, or the comparison
    // below would prove little: live devices answer everything, dead ones nothing.
    for a in &main {
        let i = tally.icmp[a];
        let s = tally.snmp[a];
        assert!(i.sent == 3 && i.received == 3, "fping to live {a}: {i:?}");
        assert!(
            s.sent > 0 && s.received == s.sent,
            "snmp to live {a}: {s:?}"
        );
    }
    for a in &unreachable {
        let i = tally.icmp[a];
        let s = tally.snmp[a];
        assert!(i.sent == 3 && i.received == 0, "fping to dead {a}: {i:?}");
        assert!(s.sent > 0 && s.received == 0, "snmp to dead {a}: {s:?}");
    }
    let walk_requests: u64 = walked[..12].iter().map(|a| tally.snmp[a].sent).sum();
    assert!(
        walk_requests > 12 * 2,
        "the walks took several GetBulk requests each"
    );
    assert_eq!(tally.total(ProtoClass::Snmp).errors, 5, "v1 noSuchName");

    let nodes = assert_matches(&dp, &tally, "phase 1");
    let kernel: BTreeMap<IpAddr, &NodeSnapshot> = nodes.iter().map(|n| (n.addr(), n)).collect();
    let snmp_answered = nodes
        .iter()
        .filter(|n| n.counters.class(ProtoClass::Snmp).responses > 0)
        .count();
    assert!(
        snmp_answered >= 500,
        "SNMP responses from {snmp_answered} nodes"
    );
    for a in &unreachable {
        for class in [ProtoClass::IcmpEcho, ProtoClass::Snmp] {
            let c = kernel[a].counters.class(class);
            assert!(
                c.requests > 0 && c.responses == 0 && c.rtt_count == 0,
                "unreachable {a} {}: {c:?}",
                class.name()
            );
        }
    }
    for n in &nodes {
        assert_eq!(n.counters.tenant, 1, "{}: tenant", n.addr());
    }
    let undelayed_max_min = nodes
        .iter()
        .filter_map(|n| kernel_rtt_ms(n, ProtoClass::IcmpEcho))
        .map(|r| r.0)
        .fold(0.0, f64::max);
    println!(
        "phase 1 ({} nodes, fping {fping_time:?}, snmpget {snmpget_time:?}): {}; highest ICMP \
         min RTT without delay {undelayed_max_min:.3} ms",
        nodes.len(),
        describe(&tally)
    );
    assert!(
        undelayed_max_min < DELAY.as_secs_f64() * 1e3,
        "without delay, RTTs are far below {DELAY:?}"
    );

    // Phase 2: every response from the devices delayed by 20 ms, on devices not polled yet.
    // Few tools at once: on a loaded host, snmpd's scheduling delay adds to its RTT.
    site.delay_responses(DELAY, None);
    tools.parallel = 4;
    let t = Instant::now();
    let mut phase2 = Tally::default();
    phase2.merge(
        &tools
            .fping(
                &delayed,
                DELAY_SAMPLES,
                &FpingOpts {
                    period: Duration::from_millis(100),
                    ..FpingOpts::default()
                },
            )
            .expect("fping with delay"),
    );
    phase2.merge(
        &tools
            .snmpget(&delayed, &OIDS, DELAY_SAMPLES)
            .expect("snmpget with delay"),
    );
    phase2.merge(
        &tools
            .snmpbulkwalk(&delayed[..1], SYSTEM, 10)
            .expect("snmpbulkwalk with delay"),
    );
    let delay_time = t.elapsed();
    site.delay_responses(Duration::ZERO, None);
    for a in &delayed {
        assert_eq!(
            phase2.icmp[a].received,
            u64::from(DELAY_SAMPLES),
            "fping with delay to {a}"
        );
        assert_eq!(
            phase2.snmp[a].received, phase2.snmp[a].sent,
            "snmp with delay to {a}"
        );
    }
    tally.merge(&phase2);
    let nodes = assert_matches(&dp, &tally, "phase 2");
    let kernel: BTreeMap<IpAddr, &NodeSnapshot> = nodes.iter().map(|n| (n.addr(), n)).collect();
    let floor = DELAY.as_secs_f64() * 1e3;
    let mut lines = Vec::new();
    for a in &delayed {
        for class in [ProtoClass::IcmpEcho, ProtoClass::Snmp] {
            let (min, avg, max) = kernel_rtt_ms(kernel[a], class)
                .unwrap_or_else(|| panic!("{a} {}: no RTT", class.name()));
            lines.push(format!(
                "{a} {}: kernel min/avg/max {min:.3}/{avg:.3}/{max:.3} ms{}",
                class.name(),
                match (class, tally.fping_rtt_ms.get(a)) {
                    (ProtoClass::IcmpEcho, Some((fmin, favg, fmax))) =>
                        format!(", fping {fmin:.3}/{favg:.3}/{fmax:.3} ms"),
                    _ => String::new(),
                }
            ));
            // At or just above the delay: never below it, the best sample close to it, and
            // the typical one too. For ICMP (answered by the kernel) that is the average; for
            // SNMP the median, read from the kernel's log2 histogram: on a busy host one late
            // wake-up of snmpd can add 100 ms to a sample and drag the average along.
            assert!(
                min >= floor && min < 1.25 * floor,
                "{a} {}: RTT min {min:.3} ms with a {DELAY:?} delay",
                class.name()
            );
            match class {
                ProtoClass::IcmpEcho => assert!(
                    avg < 2.0 * floor,
                    "{a} icmp: RTT avg {avg:.3} ms with a {DELAY:?} delay"
                ),
                _ => {
                    let c = kernel[a].counters.class(class);
                    let want = rtt_bucket(DELAY.as_nanos() as u64);
                    assert_eq!(
                        median_bucket(&c.rtt_hist, c.rtt_count),
                        want,
                        "{a} {}: median RTT outside [{}, {}) us (avg {avg:.3} ms)",
                        class.name(),
                        1u64 << want,
                        1u64 << (want + 1)
                    );
                }
            }
        }
    }
    println!(
        "phase 2 ({delay_time:?}), {DELAY:?} delay on the devices' responses:\n  {}",
        lines.join("\n  ")
    );
    println!(
        "delay line: {:?}; setup {setup:?}, total {:?}",
        site.wan_line.stats,
        started.elapsed()
    );
}

/// The harness leaves nothing behind when a test fails half-way: no namespace, no process in
/// one, no pinned instance.
#[test]
fn failing_test_leaves_nothing_behind() {
    if !opha_tests::privilege::privileged("failing_test_leaves_nothing_behind") {
        return;
    }
    let instance = unique_instance("panics");
    let names = std::sync::Mutex::new(Vec::new());
    let pids = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let site = Site::new(&SiteConfig::new("fail", 4, 1)).expect("site");
        let snmpd = Snmpd::start(&site.devices, &site.v6).expect("snmpd");
        let sidecar = Sidecar::start(&site.poller, &site.poller_if, &instance).expect("sidecar");
        names.lock().unwrap().extend(
            [&site.poller, &site.wan, &site.devices]
                .iter()
                .map(|n| n.name().to_string()),
        );
        pids.lock()
            .unwrap()
            .extend([snmpd.pid(), sidecar.pid().expect("sidecar pid")]);
        assert!(sidecar.pin_dir().exists());
        panic!("deliberate failure with the site up (expected: this test checks the cleanup)");
    });
    assert!(result.is_err(), "the closure panicked");
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 3, "the site was built before the panic");
    let listed = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let listed = String::from_utf8_lossy(&listed.stdout);
    for n in &names {
        assert!(!listed.contains(n.as_str()), "namespace {n} left behind");
    }
    for pid in pids.into_inner().unwrap() {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
    let pin_dir = opha_sidecar::loader::LoaderConfig::new(&instance).pin_dir();
    assert!(!pin_dir.exists(), "{} left behind", pin_dir.display());
}
