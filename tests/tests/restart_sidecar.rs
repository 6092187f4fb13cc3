//! Counters survive a sidecar crash and restart, and nothing is counted twice.
//!
//! The real `opha-sidecar` is killed with SIGKILL between polls. Its programs stay attached
//! through the pinned TCX links, so polls while it is down are still counted; the restarted
//! sidecar reopens the pinned maps and atomically replaces the programs behind the links. If
//! the restart attached a second pair of programs instead, every later poll would be counted
//! twice; if it created fresh maps, the earlier counts would be gone. Either breaks the exact
//! sums asserted here.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use aya::programs::{
    SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
};
use opha_common::node::ProtoClass;
use opha_tests::{
    netns::{FpingOpts, Sidecar, Site, SiteConfig, Snmpd, Tally, Tools, describe},
    pins::unique_instance,
};

/// sysName.0.
const OID: &str = "1.3.6.1.2.1.1.5.0";

/// One round of `times` polls of every node with fping and snmpget.
fn poll(tools: &Tools, nodes: &[IpAddr], times: u32) -> Tally {
    let opts = FpingOpts {
        period: Duration::from_millis(100),
        ..FpingOpts::default()
    };
    let mut t = tools.fping(nodes, times, &opts).expect("fping");
    t.merge(&tools.snmpget(nodes, &[OID], times).expect("snmpget"));
    t
}

/// Per direction (ingress, egress): the pinned link's id, the program behind it, and every
/// program TCX runs on the interface (queried from inside the poller namespace).
fn attachment(site: &Site, sidecar: &Sidecar) -> Vec<(u32, u32, Vec<u32>)> {
    [
        ("link_ingress", TcAttachType::Ingress),
        ("link_egress", TcAttachType::Egress),
    ]
    .into_iter()
    .map(|(pin, attach_type)| {
        let link = FdLink::from(PinnedLink::from_pin(sidecar.pin_dir().join(pin)).expect(pin));
        let info = link.info().expect("link info");
        let iface = site.poller_if.clone();
        let progs = site
            .poller
            .in_thread(move || {
                let (_, progs) = SchedClassifier::query_tcx(&iface, attach_type)?;
                Ok(progs.iter().map(|p| p.id()).collect::<Vec<u32>>())
            })
            .expect("querying TCX");
        (info.id(), info.program_id(), progs)
    })
    .collect()
}

fn assert_counts(sidecar: &Sidecar, want: &Tally, phase: &str) {
    let dp = sidecar.dataplane().expect("opening the pinned maps");
    let nodes = dp.nodes().expect("reading the node map");
    let bad = want.mismatches(&nodes);
    assert!(
        bad.is_empty(),
        "{phase}: the kernel differs from the tools:\n{}",
        bad.join("\n")
    );
}

#[test]
fn counters_survive_a_sidecar_kill_and_restart_without_double_counting() {
    if !opha_tests::privilege::privileged(
        "counters_survive_a_sidecar_kill_and_restart_without_double_counting",
    ) {
        return;
    }
    let started = Instant::now();
    let site = Site::new(&SiteConfig::new("rs", 4, 2)).expect("building the site");
    let _snmpd = Snmpd::start(&site.devices, &site.v6).expect("starting snmpd");
    let nodes = site.nodes();
    // One dead node: requests grow across the restart, responses stay 0.
    let dead = nodes[3];
    site.make_unreachable(&[dead]).expect("removing an address");
    let tools = Tools::new(&site.poller).expect("tools");
    let mut sidecar = Sidecar::start(&site.poller, &site.poller_if, &unique_instance("restart"))
        .expect("starting opha-sidecar");
    let links = [
        sidecar.pin_dir().join("link_ingress"),
        sidecar.pin_dir().join("link_egress"),
    ];
    let first = attachment(&site, &sidecar);
    for (link, prog, on_iface) in &first {
        assert_eq!(on_iface, &vec![*prog], "link {link}: one program, ours");
    }

    // N polls with the first sidecar.
    let (n, m, k) = (3, 4, 5);
    let mut want = poll(&tools, &nodes, n);
    assert_counts(&sidecar, &want, "after N");

    // Crash it; the pinned links keep the programs attached, so M polls still count.
    let pid = sidecar.pid().expect("running");
    let status = sidecar.kill9().expect("kill -9");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "opha-sidecar {pid} is gone ({status})"
    );
    for l in &links {
        assert!(l.exists(), "{} survives the crash", l.display());
    }
    assert_eq!(
        attachment(&site, &sidecar),
        first,
        "the programs stay attached while the sidecar is down"
    );
    want.merge(&poll(&tools, &nodes, m));
    assert_counts(&sidecar, &want, "after M, sidecar down");

    // Restart under the same instance, then K more polls.
    sidecar.restart().expect("restarting opha-sidecar");
    assert_ne!(sidecar.pid(), Some(pid), "a new process");
    let second = attachment(&site, &sidecar);
    for ((link1, prog1, _), (link2, prog2, on_iface)) in first.iter().zip(&second) {
        assert_eq!(link1, link2, "the pinned link is reused");
        assert_ne!(
            prog1, prog2,
            "link {link2} runs the restarted sidecar's program"
        );
        assert_eq!(
            on_iface,
            &vec![*prog2],
            "link {link2}: only the new program runs"
        );
    }
    want.merge(&poll(&tools, &nodes, k));
    assert_counts(&sidecar, &want, "after K, restarted");

    // The exact totals, spelled out: N+M+K per node and class, responses likewise.
    let dp = sidecar.dataplane().expect("opening the pinned maps");
    let total = u64::from(n + m + k);
    for addr in &nodes {
        let key = match addr {
            IpAddr::V4(a) => opha_common::node::NodeKey::v4(a.octets(), 0),
            IpAddr::V6(a) => opha_common::node::NodeKey::new(a.octets(), 0),
        };
        let c = dp.node(&key).expect("reading").expect("node counted");
        for class in [ProtoClass::IcmpEcho, ProtoClass::Snmp] {
            let cc = c.class(class);
            let responses = if *addr == dead { 0 } else { total };
            assert_eq!(
                (cc.requests, cc.responses),
                (total, responses),
                "{addr} {}",
                class.name()
            );
        }
    }
    println!(
        "N={n} M={m} K={k}: {}; {:?}",
        describe(&want),
        started.elapsed()
    );
}
