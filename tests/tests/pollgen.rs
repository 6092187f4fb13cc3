//! The poll generator (`opha_tests::pollgen`, `opha-pollgen`): its SNMP codec, its own
//! bookkeeping against a scripted agent on loopback, and, in network namespaces with real
//! `snmpd`, its per-node counts against the kernel programs' counters, exactly.

use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, TcpListener, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use opha_common::{node::ProtoClass, stats::Stat};
use opha_sidecar::loader::NodeSnapshot;
use opha_tests::{
    netns::{NetNs, Sidecar, Site, SiteConfig, Snmpd, output_within},
    pins::unique_instance,
    pollgen::{
        self, ClassStats, Config, Kind, PollGen, PollStats,
        ber::{self, BerError, Message, Oid, PduKind, Value, VarBind},
    },
};

// ---------------------------------------------------------------------------------------------
// The codec.

fn oid(s: &str) -> Oid {
    Oid::parse(s).expect("oid")
}

#[test]
fn ber_round_trip_and_strict_decoding() {
    // A Get as net-snmp's `snmpget -v2c -c public HOST sysDescr.0` sends it (request-id 1).
    let get = Message::request(PduKind::Get, b"public", 1, &[oid("1.3.6.1.2.1.1.1.0")]);
    let wire = ber::encode(&get);
    let known: &[u8] = &[
        0x30, 0x26, 0x02, 0x01, 0x01, 0x04, 0x06, b'p', b'u', b'b', b'l', b'i', b'c', 0xa0, 0x19,
        0x02, 0x01, 0x01, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00, 0x30, 0x0e, 0x30, 0x0c, 0x06, 0x08,
        0x2b, 0x06, 0x01, 0x02, 0x01, 0x01, 0x01, 0x00, 0x05, 0x00,
    ];
    assert_eq!(wire, known);
    assert_eq!(ber::decode(known).expect("decode"), get);

    // Every value type, extreme integers, long lengths, big arcs.
    let mut resp = Message::request(PduKind::Response, b"c", i32::MIN, &[]);
    resp.pdu.error_status = 2;
    resp.pdu.error_index = i32::MAX;
    let values = [
        Value::Null,
        Value::Integer(i64::from(i32::MIN)),
        Value::Integer(-1),
        Value::Integer(128),
        Value::OctetString(vec![0xab; 300]),
        Value::Oid(oid("2.999.4294967295.0")),
        Value::IpAddress([198, 18, 0, 1]),
        Value::Counter32(u32::MAX),
        Value::Gauge32(0),
        Value::TimeTicks(0x80),
        Value::Opaque(vec![1, 2, 3]),
        Value::Counter64(u64::MAX),
        Value::NoSuchObject,
        Value::NoSuchInstance,
        Value::EndOfMibView,
    ];
    for (i, v) in values.iter().enumerate() {
        resp.pdu.varbinds.push(VarBind {
            oid: oid(&format!("1.3.6.1.2.1.2.2.1.{i}.{}", 1u32 << 31)),
            value: v.clone(),
        });
    }
    let bulk = Message::get_bulk(b"public", 77, 1, 25, &[oid("1.3.6.1.2.1.2.2")]);
    for m in [&resp, &bulk] {
        let bytes = ber::encode(m);
        assert_eq!(&ber::decode(&bytes).expect("round trip"), m);
        // Every truncation and any trailing byte is an error, never a panic.
        for cut in 0..bytes.len() {
            assert!(ber::decode(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(ber::decode(&longer), Err(BerError::Trailing));
    }

    // Malformed by construction.
    let bad: [(&[u8], &str); 7] = [
        (&[0x30, 0x80, 0x00, 0x00], "indefinite length"),
        (
            &[0x30, 0x81, 0x03, 0x02, 0x01, 0x01],
            "long form for a short length",
        ),
        (
            &[
                0x30, 0x0b, 0x02, 0x01, 0x03, 0x04, 0x00, 0xa2, 0x04, 0, 0, 0, 0,
            ],
            "version 3 in a community message",
        ),
        (&[0x30, 0x03, 0x02, 0x00, 0x04], "empty integer"),
        (&[0x02, 0x01, 0x01], "not a sequence"),
        (&[0x30, 0x05, 0x02, 0x01], "length beyond the input"),
        (&[], "empty"),
    ];
    for (b, what) in bad {
        assert!(ber::decode(b).is_err(), "{what} decoded");
    }
    // A varbind with a non-minimal OID arc, and an unknown value tag.
    let mut raw = ber::encode(&Message::request(
        PduKind::Response,
        b"p",
        5,
        &[oid("1.3.6.1")],
    ));
    let n = raw.len();
    raw[n - 2] = 0x47; // NULL tag -> unknown application tag
    assert_eq!(ber::decode(&raw), Err(BerError::UnexpectedTag(0x47)));

    // Random bytes and bit flips of a valid message: no panic, whatever the verdict.
    let valid = ber::encode(&resp);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut m = valid.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() as usize) % m.len();
            m[i] ^= 1 << (next() % 8);
        }
        let _ = ber::decode(&m);
        let len = (next() % 64) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let _ = ber::decode(&junk);
    }

    // Targets and ranges.
    let r = pollgen::parse_range("198.18.1.253-198.18.2.2").expect("range");
    assert_eq!(
        r.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        ["198.18.1.253", "198.18.1.254", "198.18.2.1", "198.18.2.2"]
    );
    assert_eq!(
        pollgen::parse_range("2001:db8::1-2001:db8::3")
            .expect("v6 range")
            .len(),
        3
    );
    assert!(pollgen::parse_range("198.18.0.2-198.18.0.1").is_err());
    assert!(pollgen::parse_range("198.18.0.1-2001:db8::1").is_err());
    let t = pollgen::parse_targets(
        "# nodes\n198.18.16.1\n2001:db8:1::1 # v6\n\n198.18.16.2-198.18.16.3\n",
    )
    .expect("targets");
    assert_eq!(t.len(), 4);
    // The house rule: nothing outside the test ranges and loopback.
    let outside: IpAddr = "192.0.2.1".parse().unwrap();
    assert!(PollGen::new(Config::new(vec![outside])).is_err());
}

// ---------------------------------------------------------------------------------------------
// Bookkeeping against a scripted agent on loopback (no root needed).

/// A UDP agent on 127.0.0.1 that answers request k by k % 5: 0 a normal response, 1 garbage,
/// 2 a response with error-status 5, 3 nothing, 4 the response twice. Stops on Drop.
struct ScriptedAgent {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u64, HashSet<i32>)>>,
}

impl ScriptedAgent {
    fn start() -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let port = sock.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut ids = HashSet::new();
            let mut k = 0u64;
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let req = ber::decode(&buf[..n]).expect("the generator sends valid BER");
                assert_eq!(req.pdu.kind, PduKind::Get);
                assert!(ids.insert(req.pdu.request_id), "request-id reused");
                let mut resp = req.clone();
                resp.pdu.kind = PduKind::Response;
                resp.pdu.varbinds[0].value = Value::TimeTicks(42);
                match k % 5 {
                    0 => drop(sock.send_to(&ber::encode(&resp), from)),
                    1 => drop(sock.send_to(&[0x30, 0x03, 0x02, 0x01], from)),
                    2 => {
                        resp.pdu.error_status = 5;
                        resp.pdu.error_index = 1;
                        drop(sock.send_to(&ber::encode(&resp), from))
                    }
                    3 => {}
                    _ => {
                        let b = ber::encode(&resp);
                        let _ = sock.send_to(&b, from);
                        let _ = sock.send_to(&b, from);
                    }
                }
                k += 1;
            }
            (k, ids)
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> (u64, HashSet<i32>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("thread")
            .join()
            .expect("agent thread")
    }
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn malformed_late_and_error_answers_are_counted_not_fatal() {
    let agent = ScriptedAgent::start();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let mut cfg = Config::new(vec![lo]);
    cfg.snmp_port = agent.port;
    cfg.fixed_rate = Some((50.0, vec![Kind::Snmp]));
    cfg.timeout = Duration::from_millis(300);
    let generator = PollGen::new(cfg).expect("generator");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let stop = AtomicBool::new(false);
    let stats = rt
        .block_on(generator.run(Duration::from_secs(1), &stop))
        .expect("run");
    let (seen, ids) = agent.finish();
    let s = stats.nodes[&lo].snmp;
    assert_eq!(s.sent, 50, "{s:?}");
    assert_eq!(seen, 50, "the agent saw every request");
    assert_eq!(ids.len(), 50);
    let want = ClassStats {
        polls: 50,
        sent: 50,
        responses: 40,
        matched: 30,
        late: 10,
        timeouts: 20,
        errors: 10,
        failed: 20,
        malformed: 10,
        ..s
    };
    assert_eq!(s, want);
    assert_eq!(s.bytes_in % 10, 0, "equal-sized answers");
    assert_eq!(stats.behind, 0);
    assert_eq!(stats.unknown_sources, 0);
}

// ---------------------------------------------------------------------------------------------
// Against the kernel, with real snmpd, in namespaces (root).

/// Accepts and drops TCP connections on a port in a namespace until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Acceptor {
    fn start(ns: &NetNs, port: u16) -> Self {
        // Bound inside the namespace; the socket stays there when the thread ends.
        let l = ns
            .in_thread(|| Ok(TcpListener::bind(("::", port))?))
            .expect("listener in the devices namespace");
        l.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut n = 0;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match l.accept() {
                    Ok(_) => n += 1,
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            n
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const TCP_OPEN: u16 = 22;
const TCP_CLOSED: u16 = 23;

/// Every difference between the generator's counts and the kernel's, one line each.
fn mismatches(stats: &PollStats, kernel: &[NodeSnapshot]) -> Vec<String> {
    let mut out = Vec::new();
    let k: BTreeMap<IpAddr, &NodeSnapshot> = kernel.iter().map(|n| (n.addr(), n)).collect();
    for a in k.keys() {
        if !stats.nodes.contains_key(a) {
            out.push(format!("{a}: in the kernel, never polled"));
        }
    }
    for (a, n) in &stats.nodes {
        for class in ProtoClass::ALL {
            let g = n.class(class);
            let (req, resp, err, bout, bin, rtt) = match k.get(a) {
                Some(node) => {
                    let c = node.counters.class(class);
                    (
                        c.requests,
                        c.responses,
                        c.errors,
                        c.bytes_out,
                        c.bytes_in,
                        c.rtt_count,
                    )
                }
                None => Default::default(),
            };
            let mut diff = vec![];
            if (g.sent, g.responses, g.errors) != (req, resp, err) {
                diff.push(format!(
                    "sent/responses/errors {}/{}/{} vs kernel {req}/{resp}/{err}",
                    g.sent, g.responses, g.errors
                ));
            }
            // TCP bytes are the kernel's choice of SYN options: not predicted.
            if class != ProtoClass::TcpCheck && (g.bytes_out, g.bytes_in) != (bout, bin) {
                diff.push(format!(
                    "bytes {}/{} vs kernel {bout}/{bin}",
                    g.bytes_out, g.bytes_in
                ));
            }
            if rtt != resp {
                diff.push(format!("kernel matched {rtt} of {resp} responses"));
            }
            if !diff.is_empty() {
                out.push(format!("{a} {}: {}", class.name(), diff.join("; ")));
            }
        }
    }
    out
}

#[test]
fn pollgen_counts_equal_the_kernel_counts() {
    if !opha_tests::privilege::privileged("pollgen_counts_equal_the_kernel_counts") {
        return;
    }
    let started = Instant::now();
    let (v4_n, v6_n) = (196, 6);
    let site = Site::new(&SiteConfig::new("pg", v4_n, v6_n)).expect("site");
    let nodes = site.nodes();
    let dead: Vec<IpAddr> = nodes[v4_n - 8..v4_n]
        .iter()
        .chain(nodes.last())
        .copied()
        .collect();
    let _snmpd = Snmpd::start(&site.devices, &site.v6).expect("snmpd");
    site.make_unreachable(&dead).expect("removing addresses");
    let _acceptor = Acceptor::start(&site.devices, TCP_OPEN);
    let sidecar = Sidecar::start(&site.poller, &site.poller_if, &unique_instance("pollgen"))
        .expect("sidecar");
    let mut dp = sidecar.dataplane().expect("maps");
    dp.set_tcp_ports(&[TCP_OPEN, TCP_CLOSED])
        .expect("tcp ports");
    site.poller
        .sysctl("net/ipv4/ping_group_range", "0 2147483647")
        .expect("ping_group_range");

    // Two SNMP cycles, four pings, two TCP checks per port; a timeout past the initial SYN
    // RTO (1 s), so a dead node's check sends two SYNs.
    let mut cfg = Config::new(nodes.clone());
    cfg.cycle = Some(Duration::from_secs(4));
    cfg.ping_every = Some(Duration::from_secs(2));
    cfg.tcp_ports = vec![TCP_OPEN, TCP_CLOSED];
    cfg.tcp_every = Duration::from_secs(4);
    cfg.timeout = Duration::from_millis(1500);
    cfg.retries = 1;
    let t = Instant::now();
    let stats = site
        .poller
        .in_thread(move || {
            let generator = PollGen::new(cfg)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let stop = AtomicBool::new(false);
            rt.block_on(generator.run(Duration::from_secs(8), &stop))
        })
        .expect("pollgen run");
    let run_time = t.elapsed();

    let kernel = dp.nodes().expect("node map");
    let bad = mismatches(&stats, &kernel);
    assert!(
        bad.is_empty(),
        "{} differences between the generator and the kernel, e.g.:\n{}",
        bad.len(),
        bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    let g = dp.stats().expect("global stats");
    assert_eq!(g.get(Stat::Malformed), 0);
    assert_eq!(g.get(Stat::NodeMapFull), 0);

    // The site's shape, as the generator saw it.
    let dead_set: HashSet<IpAddr> = dead.iter().copied().collect();
    for (a, n) in &stats.nodes {
        let (i, s, t) = (n.icmp, n.snmp, n.tcp);
        if dead_set.contains(a) {
            // Each request and its retry time out; a retry that would fall after the end of
            // sending is not sent.
            for (c, what) in [(i, "icmp"), (s, "snmp")] {
                assert!(
                    c.responses == 0
                        && c.timeouts == c.sent
                        && c.failed == c.polls
                        && c.sent >= 2 * c.polls - 1,
                    "{a} {what} {c:?}"
                );
            }
            assert!(i.polls == 4 && s.polls == 2, "{a} {i:?} {s:?}");
            assert!(
                t.polls == 4 && t.sent == 8 && t.responses == 0 && t.timeouts == 4,
                "{a} tcp {t:?}: one retransmitted SYN per check"
            );
        } else {
            assert!(
                i.polls == 4 && i.sent == 4 && i.matched == 4 && i.late == 0,
                "{a} icmp {i:?}"
            );
            // The system Get and at least two GetBulks of the ifTable walk, per cycle.
            assert!(
                s.polls == 2 && s.sent >= 6 && s.matched == s.sent && s.timeouts == 0,
                "{a} snmp {s:?}"
            );
            assert_eq!(s.errors, 0, "{a} snmp {s:?}");
            assert!(
                t.polls == 4 && t.sent == 4 && t.responses == 4 && t.errors == 2,
                "{a} tcp {t:?}: {TCP_CLOSED} answers RST"
            );
        }
        assert_eq!(i.malformed + s.malformed + t.local_errors, 0, "{a}");
    }
    println!(
        "{} nodes ({} dead), run {run_time:?}, setup+run {:?}: icmp {:?}\nsnmp {:?}\ntcp {:?}",
        stats.nodes.len(),
        dead.len(),
        started.elapsed(),
        stats.total(ProtoClass::IcmpEcho),
        stats.total(ProtoClass::Snmp),
        stats.total(ProtoClass::TcpCheck)
    );
}

/// The binary at a fixed rate, in the poller namespace: its JSON report equals the kernel's
/// counts per node, and it reports how fast it went.
#[test]
fn pollgen_binary_fixed_rate_matches_the_kernel() {
    if !opha_tests::privilege::privileged("pollgen_binary_fixed_rate_matches_the_kernel") {
        return;
    }
    let site = Site::new(&SiteConfig::new("pgr", 100, 2)).expect("site");
    let _snmpd = Snmpd::start(&site.devices, &site.v6).expect("snmpd");
    let _acceptor = Acceptor::start(&site.devices, TCP_OPEN);
    let sidecar =
        Sidecar::start(&site.poller, &site.poller_if, &unique_instance("pgrate")).expect("sidecar");
    let mut dp = sidecar.dataplane().expect("maps");
    dp.set_tcp_ports(&[TCP_OPEN]).expect("tcp ports");
    let first = site.v4[0];
    let last = site.v4[site.v4.len() - 1];
    let mut cmd = site.poller.command(env!("CARGO_BIN_EXE_opha-pollgen"));
    cmd.args(["--range", &format!("{first}-{last}")])
        .args(["--target", &site.v6[0].to_string()])
        .args(["--target", &site.v6[1].to_string()])
        .args(["--rate", "3000", "--kinds", "snmp,icmp,tcp", "--tcp-port"])
        .arg(TCP_OPEN.to_string())
        .args([
            "--duration",
            "3s",
            "--timeout",
            "1s",
            "--set-ping-group-range",
        ])
        .arg("--json");
    let out = output_within(cmd, Duration::from_secs(60)).expect("opha-pollgen");
    assert!(
        out.status.success(),
        "opha-pollgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let mut stats = PollStats::default();
    for n in json["per_node"].as_array().expect("per_node") {
        let addr: IpAddr = n["addr"].as_str().expect("addr").parse().expect("addr");
        let class = |k: &str| ClassStats {
            sent: n[k]["sent"].as_u64().expect("sent"),
            responses: n[k]["responses"].as_u64().expect("responses"),
            errors: n[k]["errors"].as_u64().expect("errors"),
            bytes_out: n[k]["bytes_out"].as_u64().expect("bytes_out"),
            bytes_in: n[k]["bytes_in"].as_u64().expect("bytes_in"),
            timeouts: n[k]["timeouts"].as_u64().expect("timeouts"),
            ..ClassStats::default()
        };
        let e = stats.nodes.entry(addr).or_default();
        e.icmp = class("icmp");
        e.snmp = class("snmp");
        e.tcp = class("tcp");
    }
    assert_eq!(stats.nodes.len(), 102);
    let kernel = dp.nodes().expect("node map");
    let bad = mismatches(&stats, &kernel);
    assert!(
        bad.is_empty(),
        "{} differences, e.g.:\n{}",
        bad.len(),
        bad.iter().take(25).cloned().collect::<Vec<_>>().join("\n")
    );
    let total: u64 = ProtoClass::ALL.iter().map(|&c| stats.total(c).sent).sum();
    let behind = json["behind"].as_u64().expect("behind");
    let jobs = json["jobs"].as_u64().expect("jobs");
    // Every due request was either started or dropped as behind, none twice.
    assert_eq!(jobs + behind, 9000, "jobs {jobs}, behind {behind}");
    assert!(total >= jobs, "sent {total} for {jobs} jobs");
    let lost: u64 = ProtoClass::ALL
        .iter()
        .map(|&c| stats.total(c).timeouts)
        .sum();
    println!(
        "fixed rate 3000/s for 3 s: sent {total} ({:.0}/s), behind {behind}, lost {lost}",
        json["sent_per_s"].as_f64().unwrap_or(0.0)
    );
}
