//! `opha-bench ebpf`: nanoseconds per packet of the kernel programs, measured in the kernel with
//! BPF_PROG_TEST_RUN, and each program's verified instruction count.
//!
//! The kernel reports the mean time per run of a test-run call (`repeat` runs of one packet on
//! one skb, preemption excluded). Each case is the median of several such calls. A test-run
//! repeats the *same* packet, which hides two paths behind the steady state:
//! - a response only matches its in-flight request on the first run; the others are unmatched;
//! - a request only inserts a fresh in-flight entry on the first run; the others replace it.
//!
//! Those cases add the extra cost of the real path, measured as the difference of medians over
//! many single runs (repeat = 1) in which the real and the steady path alternate:
//! `ns_per_packet = steady (repeat N) + (real path, repeat 1) - (steady path, repeat 1)`.
//! The fixed overhead of a single test-run cancels in the difference.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use aya::{
    Ebpf,
    maps::{Map, MapData, RingBuf},
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use opha_common::{
    PROG_EGRESS, PROG_INGRESS,
    ringbuf::RingRecord,
    stats::{STAT_COUNT, Stat},
};
use opha_sidecar::loader::{self, DataPlane, LoaderConfig, MAP_EVENTS};
use opha_tests::packets::{
    self as pk, Frame, NODE_MAC, NODE_V4, NODE_V6, OUTSIDE_V4, POLLER_MAC, POLLER_PORT, POLLER_V4,
    POLLER_V6, SNMP_PORT, SNMP_V2C, SYS_DESCR, SYS_UPTIME, TCP_CHECK_PORT, TCP_OTHER_PORT,
    TRAP_PORT, V3Data, Value, VarBind, pdu, tcp_flags,
};
use opha_tests::pins::{TestInstance, configure_default};
use serde_json::{Value as Json, json};

use crate::host;

/// TC_ACT_UNSPEC (-1) as the u32 test-run reports.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// Bytes one trap record takes in the ring buffer: the record plus the 8-byte ring-buffer
/// header, rounded up to 8.
const RING_RECORD_BYTES: u64 = (std::mem::size_of::<RingRecord>() as u64 + 8).div_ceil(8) * 8;

/// The largest ring buffer the benchmark asks the kernel for.
const MAX_RINGBUF_BYTES: u64 = 1 << 30;

/// Targets from the issue, in ns per packet.
const TARGETS: &[(&str, f64)] = &[
    ("snmp_v2c_response", 100.0),
    ("icmp_echo_reply", 60.0),
    ("non_polling", 25.0),
];

#[derive(Clone, Debug)]
pub struct Options {
    /// Runs per test-run call.
    pub repeat: u32,
    /// Test-run calls per case; the median is reported.
    pub runs: usize,
    /// Single-run samples of each path for the matched/fresh corrections.
    pub r1_samples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            repeat: 1_000_000,
            runs: 7,
            r1_samples: 10_001,
        }
    }
}

impl Options {
    /// Parses `[--repeat N] [--runs N] [--samples N]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| -> Result<u64> {
                let v = it.next().with_context(|| format!("{name} needs a value"))?;
                v.parse()
                    .with_context(|| format!("{name} {v:?} is not a number"))
            };
            match a.as_str() {
                "--repeat" => o.repeat = u32::try_from(value("--repeat")?)?,
                "--runs" => o.runs = usize::try_from(value("--runs")?)?,
                "--samples" => o.r1_samples = usize::try_from(value("--samples")?)?,
                other => bail!(
                    "unknown option {other:?} (usage: opha-bench ebpf [--repeat N] [--runs N] [--samples N])"
                ),
            }
        }
        ensure!(
            o.repeat >= 1 && o.runs >= 1 && o.r1_samples >= 1,
            "--repeat, --runs and --samples must be at least 1"
        );
        Ok(o)
    }

    /// Whether the run meets the method (repeat >= 1,000,000, median of >= 5 runs).
    fn meets_method(&self) -> bool {
        self.repeat >= 1_000_000 && self.runs >= 5
    }
}

/// Loads and configures (the test harness's standard prefixes and ports) an instance named
/// `bench-TAG-PID`; the guard removes its pins on drop, also when the benchmark fails.
fn load(tag: &str, ringbuf_bytes: u32) -> Result<TestInstance> {
    let mut cfg = LoaderConfig::new(&format!("bench-{tag}-{}", std::process::id()));
    cfg.ringbuf_bytes = ringbuf_bytes;
    let mut inst = TestInstance::with_config(cfg)?;
    configure_default(inst.dp_mut())?;
    Ok(inst)
}

/// One run of `prog` on `pkt`: the kernel's mean ns per run.
fn test_run(dp: &DataPlane, prog: &str, pkt: &[u8], repeat: u32) -> Result<f64> {
    let r = dp
        .test_run(prog, pkt, repeat)
        .with_context(|| format!("test-run of {prog}"))?;
    ensure!(
        r.return_value == TC_ACT_UNSPEC,
        "{prog} returned {:#x}, expected TC_ACT_UNSPEC",
        r.return_value
    );
    Ok(r.duration.as_nanos() as f64)
}

fn stats(dp: &DataPlane) -> Result<[u64; STAT_COUNT as usize]> {
    let s = dp.stats()?;
    Ok(Stat::ALL.map(|st| s.get(st)))
}

/// Checks that a phase took the path it claims to measure: `stat` grew by exactly `want`.
fn expect_delta(
    before: &[u64; STAT_COUNT as usize],
    after: &[u64; STAT_COUNT as usize],
    stat: Stat,
    want: u64,
    what: &str,
) -> Result<()> {
    let got = after[stat as usize] - before[stat as usize];
    ensure!(
        got == want,
        "{what}: {} grew by {got}, expected {want}: the measured path is not the one intended",
        stat.name()
    );
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Medians of `runs` test-run calls of `repeat` runs each, after a short warm-up.
fn repeat_runs(dp: &DataPlane, prog: &str, pkt: &[u8], o: &Options) -> Result<Vec<f64>> {
    test_run(dp, prog, pkt, o.repeat.min(10_000))?;
    (0..o.runs)
        .map(|_| test_run(dp, prog, pkt, o.repeat))
        .collect()
}

/// The result of one case.
struct CaseResult {
    name: String,
    program: &'static str,
    packet_bytes: usize,
    ns_per_packet: f64,
    method: &'static str,
    extra: serde_json::Map<String, Json>,
}

impl CaseResult {
    fn target(&self) -> Option<f64> {
        TARGETS
            .iter()
            .find(|(n, _)| *n == self.name)
            .map(|(_, t)| *t)
    }

    fn to_json(&self, o: &Options) -> Json {
        let mut m = serde_json::Map::new();
        m.insert("ns_per_packet".into(), json!(round2(self.ns_per_packet)));
        m.insert("program".into(), json!(self.program));
        m.insert("packet_bytes".into(), json!(self.packet_bytes));
        m.insert("method".into(), json!(self.method));
        m.insert("repeat".into(), json!(o.repeat));
        m.insert("runs".into(), json!(o.runs));
        if let Some(t) = self.target() {
            m.insert("target_ns".into(), json!(t));
            m.insert("target_met".into(), json!(self.ns_per_packet <= t));
        }
        m.extend(self.extra.clone());
        Json::Object(m)
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A steady-state case: every run of the repeat takes the same path. `stat` must grow by one
/// per run, which proves the path.
fn steady(
    dp: &DataPlane,
    name: &str,
    prog: &'static str,
    pkt: &[u8],
    stat: Stat,
    o: &Options,
) -> Result<CaseResult> {
    test_run(dp, prog, pkt, 1)?;
    let before = stats(dp)?;
    let runs = repeat_runs(dp, prog, pkt, o)?;
    let after = stats(dp)?;
    let warmup = u64::from(o.repeat.min(10_000));
    expect_delta(
        &before,
        &after,
        stat,
        warmup + o.runs as u64 * u64::from(o.repeat),
        name,
    )?;
    let mut extra = serde_json::Map::new();
    extra.insert("repeat_ns".into(), json!(runs));
    extra.insert("path_stat".into(), json!(stat.name()));
    Ok(CaseResult {
        name: name.to_string(),
        program: prog,
        packet_bytes: pkt.len(),
        ns_per_packet: median(&runs),
        method: "steady",
        extra,
    })
}

/// A request (egress) and its response (ingress).
struct Pair<'a> {
    request_name: &'a str,
    response_name: &'a str,
    request: Vec<u8>,
    response: Vec<u8>,
}

/// Request and response cases of a pair; see the module comment for the method.
fn pair(dp: &DataPlane, p: &Pair<'_>, filler: &[u8], o: &Options) -> Result<[CaseResult; 2]> {
    let n = o.r1_samples;
    let r1 = |prog, pkt| test_run(dp, prog, pkt, 1);
    // Start with the request not in flight.
    r1(PROG_INGRESS, &p.response)?;
    let (mut fresh, mut replace, mut matched, mut unmatched) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let before = stats(dp)?;
    for _ in 0..n {
        // Every measured run follows a run of the other program, so that the real and the
        // steady path see the same cache state; the fillers are non-polling packets that
        // touch no state.
        fresh.push(r1(PROG_EGRESS, &p.request)?);
        r1(PROG_INGRESS, filler)?;
        replace.push(r1(PROG_EGRESS, &p.request)?);
        matched.push(r1(PROG_INGRESS, &p.response)?);
        r1(PROG_EGRESS, filler)?;
        unmatched.push(r1(PROG_INGRESS, &p.response)?);
    }
    let after = stats(dp)?;
    let what = format!("{}/{} single runs", p.request_name, p.response_name);
    expect_delta(&before, &after, Stat::InflightInserted, n as u64, &what)?;
    expect_delta(&before, &after, Stat::InflightReplaced, n as u64, &what)?;
    expect_delta(&before, &after, Stat::Matched, n as u64, &what)?;
    expect_delta(&before, &after, Stat::UnmatchedResponses, n as u64, &what)?;

    let total = o.runs as u64 * u64::from(o.repeat) + u64::from(o.repeat.min(10_000));
    // Requests: in flight already, so every run of the repeat replaces the entry.
    r1(PROG_EGRESS, &p.request)?;
    let before = stats(dp)?;
    let req_runs = repeat_runs(dp, PROG_EGRESS, &p.request, o)?;
    let after = stats(dp)?;
    expect_delta(
        &before,
        &after,
        Stat::InflightReplaced,
        total,
        p.request_name,
    )?;
    // Responses: not in flight, so every run of the repeat is unmatched.
    r1(PROG_INGRESS, &p.response)?;
    let before = stats(dp)?;
    let resp_runs = repeat_runs(dp, PROG_INGRESS, &p.response, o)?;
    let after = stats(dp)?;
    expect_delta(
        &before,
        &after,
        Stat::UnmatchedResponses,
        total,
        p.response_name,
    )?;

    let (m_fresh, m_replace) = (median(&fresh), median(&replace));
    let (m_matched, m_unmatched) = (median(&matched), median(&unmatched));
    let (req_steady, resp_steady) = (median(&req_runs), median(&resp_runs));
    let mut req_extra = serde_json::Map::new();
    req_extra.insert("repeat_ns".into(), json!(req_runs));
    req_extra.insert("repeat_replace_ns".into(), json!(req_steady));
    req_extra.insert("r1_samples".into(), json!(n));
    req_extra.insert("r1_fresh_ns".into(), json!(m_fresh));
    req_extra.insert("r1_replace_ns".into(), json!(m_replace));
    req_extra.insert("fresh_extra_ns".into(), json!(m_fresh - m_replace));
    let mut resp_extra = serde_json::Map::new();
    resp_extra.insert("repeat_ns".into(), json!(resp_runs));
    resp_extra.insert("repeat_unmatched_ns".into(), json!(resp_steady));
    resp_extra.insert("r1_samples".into(), json!(n));
    resp_extra.insert("r1_matched_ns".into(), json!(m_matched));
    resp_extra.insert("r1_unmatched_ns".into(), json!(m_unmatched));
    resp_extra.insert("matched_extra_ns".into(), json!(m_matched - m_unmatched));
    Ok([
        CaseResult {
            name: p.request_name.to_string(),
            program: PROG_EGRESS,
            packet_bytes: p.request.len(),
            ns_per_packet: req_steady + (m_fresh - m_replace),
            method: "replace+fresh",
            extra: req_extra,
        },
        CaseResult {
            name: p.response_name.to_string(),
            program: PROG_INGRESS,
            packet_bytes: p.response.len(),
            ns_per_packet: resp_steady + (m_matched - m_unmatched),
            method: "unmatched+matched",
            extra: resp_extra,
        },
    ])
}

/// Opens the instance's ring buffer through its pin (the DataPlane keeps its own handle).
fn open_ringbuf(pin_dir: &Path) -> Result<RingBuf<MapData>> {
    let md = MapData::from_pin(pin_dir.join(MAP_EVENTS)).context("opening the ring buffer pin")?;
    Ok(RingBuf::try_from(Map::RingBuf(md))?)
}

/// Consumes every record in the ring buffer; returns how many there were.
fn drain(rb: &mut RingBuf<MapData>) -> Result<u64> {
    let mut n = 0u64;
    while let Some(item) = rb.next() {
        ensure!(
            item.len() >= std::mem::size_of::<RingRecord>(),
            "ring buffer record of {} bytes, expected {}",
            item.len(),
            std::mem::size_of::<RingRecord>()
        );
        n += 1;
    }
    Ok(n)
}

/// Traps copied into a ring buffer large enough for every run of a call, drained (outside the
/// timed region) between calls, so that every measured run reserves, copies and submits.
fn trap_to_ringbuf(
    inst: &TestInstance,
    trap: &[u8],
    trap_repeat: u32,
    o: &Options,
) -> Result<CaseResult> {
    let dp = inst.dp();
    let mut rb = open_ringbuf(&inst.config().pin_dir())?;
    drain(&mut rb)?;
    test_run(dp, PROG_INGRESS, trap, trap_repeat.min(10_000))?;
    drain(&mut rb)?;
    let mut runs = Vec::with_capacity(o.runs);
    let (mut drops, mut drained) = (0u64, 0u64);
    for _ in 0..o.runs {
        let before = stats(dp)?;
        runs.push(test_run(dp, PROG_INGRESS, trap, trap_repeat)?);
        let after = stats(dp)?;
        let d = after[Stat::RingbufDrops as usize] - before[Stat::RingbufDrops as usize];
        drops += d;
        expect_delta(
            &before,
            &after,
            Stat::TrapsCopied,
            u64::from(trap_repeat) - d,
            "trap_to_ringbuf",
        )?;
        let got = drain(&mut rb)?;
        ensure!(
            got == u64::from(trap_repeat) - d,
            "trap_to_ringbuf: drained {got} records, expected {}",
            u64::from(trap_repeat) - d
        );
        drained += got;
    }
    let payload = pk::udp_payload(trap).len();
    let mut extra = serde_json::Map::new();
    extra.insert("repeat_ns".into(), json!(runs));
    extra.insert("trap_repeat".into(), json!(trap_repeat));
    extra.insert("ringbuf_bytes".into(), json!(inst.config().ringbuf_bytes));
    extra.insert("ringbuf_record_bytes".into(), json!(RING_RECORD_BYTES));
    extra.insert("payload_bytes_copied".into(), json!(payload));
    extra.insert("ringbuf_drops".into(), json!(drops));
    extra.insert("records_drained".into(), json!(drained));
    extra.insert(
        "includes".into(),
        json!(
            "parse, prefix lookup, bpf_ringbuf_reserve, metadata, bpf_skb_load_bytes copy of the \
             payload into the record, submit; not the userspace read"
        ),
    );
    Ok(CaseResult {
        name: "trap_to_ringbuf".into(),
        program: PROG_INGRESS,
        packet_bytes: trap.len(),
        ns_per_packet: median(&runs),
        method: "ringbuf+drain",
        extra,
    })
}

/// Traps while the ring buffer is full: what a trap storm costs once userspace falls behind.
fn trap_ringbuf_full(trap: &[u8], o: &Options) -> Result<CaseResult> {
    let inst = load("ebpf-full", 4 << 20)?;
    let dp = inst.dp();
    let fill = (4u64 << 20) / RING_RECORD_BYTES + 1;
    test_run(dp, PROG_INGRESS, trap, fill as u32)?;
    let before = stats(dp)?;
    let runs = repeat_runs(dp, PROG_INGRESS, trap, o)?;
    let after = stats(dp)?;
    let total = o.runs as u64 * u64::from(o.repeat) + u64::from(o.repeat.min(10_000));
    expect_delta(
        &before,
        &after,
        Stat::RingbufDrops,
        total,
        "trap_ringbuf_full",
    )?;
    let mut extra = serde_json::Map::new();
    extra.insert("repeat_ns".into(), json!(runs));
    extra.insert("ringbuf_bytes".into(), json!(inst.config().ringbuf_bytes));
    extra.insert("ringbuf_drops".into(), json!(total));
    Ok(CaseResult {
        name: "trap_ringbuf_full".into(),
        program: PROG_INGRESS,
        packet_bytes: trap.len(),
        ns_per_packet: median(&runs),
        method: "steady",
        extra,
    })
}

/// The packets of every case, from the shared test builders.
struct Packets {
    pairs: Vec<Pair<'static>>,
    non_polling: Vec<u8>,
    non_polling_udp: Vec<u8>,
    non_polling_arp: Vec<u8>,
    outside_prefix: Vec<u8>,
    trap: Vec<u8>,
}

fn packets() -> Packets {
    let out4 = Frame::new().ipv4(POLLER_V4, NODE_V4);
    let in4 = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4);
    let out6 = Frame::new().ipv6(POLLER_V6, NODE_V6);
    let in6 = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv6(NODE_V6, POLLER_V6);
    let get = pk::snmp_v1_v2c(
        SNMP_V2C,
        b"public",
        pdu::GET,
        0x1234_5678,
        0,
        &[VarBind::null(SYS_DESCR), VarBind::null(SYS_UPTIME)],
    );
    let resp = pk::snmp_v1_v2c(
        SNMP_V2C,
        b"public",
        pdu::RESPONSE,
        0x1234_5678,
        0,
        &[
            VarBind::new(
                SYS_DESCR,
                Value::Str(b"Linux edge-router 6.1.0 x86_64".to_vec()),
            ),
            VarBind::new(SYS_UPTIME, Value::TimeTicks(123_456_789)),
        ],
    );
    let v3_vbs = [VarBind::null(SYS_UPTIME)];
    let v3_get = pk::snmp_v3(
        4242,
        &V3Data::Plain {
            pdu_tag: pdu::GET,
            request_id: 77,
            error_status: 0,
            varbinds: &v3_vbs,
        },
    );
    let v3_resp_vbs = [VarBind::new(SYS_UPTIME, Value::TimeTicks(123_456_789))];
    let v3_resp = pk::snmp_v3(
        4242,
        &V3Data::Plain {
            pdu_tag: pdu::RESPONSE,
            request_id: 77,
            error_status: 0,
            varbinds: &v3_resp_vbs,
        },
    );
    let trap = pk::snmp_v2c_trap(
        b"public",
        pdu::TRAP_V2,
        99,
        &[VarBind::new(
            &[1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 3],
            Value::Int(3),
        )],
    );
    let pairs = vec![
        Pair {
            request_name: "snmp_v2c_request",
            response_name: "snmp_v2c_response",
            request: out4.udp(POLLER_PORT, SNMP_PORT, &get),
            response: in4.udp(SNMP_PORT, POLLER_PORT, &resp),
        },
        Pair {
            request_name: "snmp_v3_request",
            response_name: "snmp_v3_response",
            request: out4.udp(POLLER_PORT, SNMP_PORT, &v3_get),
            response: in4.udp(SNMP_PORT, POLLER_PORT, &v3_resp),
        },
        Pair {
            request_name: "snmp_v2c_request_ipv6",
            response_name: "snmp_v2c_response_ipv6",
            request: out6.udp(POLLER_PORT, SNMP_PORT, &get),
            response: in6.udp(SNMP_PORT, POLLER_PORT, &resp),
        },
        Pair {
            request_name: "icmp_echo_request",
            response_name: "icmp_echo_reply",
            request: out4.icmp_echo(true, 0x0bad, 7),
            response: in4.icmp_echo(false, 0x0bad, 7),
        },
        Pair {
            request_name: "icmpv6_echo_request",
            response_name: "icmpv6_echo_reply",
            request: out6.icmp_echo(true, 0x0bad, 7),
            response: in6.icmp_echo(false, 0x0bad, 7),
        },
        Pair {
            request_name: "tcp_syn",
            response_name: "tcp_syn_ack",
            request: out4.tcp(POLLER_PORT, TCP_CHECK_PORT, tcp_flags::SYN),
            response: in4.tcp(TCP_CHECK_PORT, POLLER_PORT, tcp_flags::SYN_ACK),
        },
    ];
    // Bulk traffic of another service: a data segment to a port that is not checked.
    let non_polling = out4.tcp_full(
        50_000,
        TCP_OTHER_PORT,
        tcp_flags::ACK | tcp_flags::PSH,
        1000,
        2000,
        &[0x5a; 64],
    );
    let non_polling_udp = out4.udp(50_001, 53, &[0x11; 32]);
    let non_polling_arp = Frame::new().arp_request(POLLER_V4, NODE_V4);
    let outside_prefix = Frame::new()
        .ipv4(POLLER_V4, OUTSIDE_V4)
        .udp(POLLER_PORT, SNMP_PORT, &get);
    let trap = in4.udp(40_162, TRAP_PORT, &trap);
    Packets {
        pairs,
        non_polling,
        non_polling_udp,
        non_polling_arp,
        outside_prefix,
        trap,
    }
}

/// ns per run of a classifier that returns at once: what test-run itself costs per packet, in
/// calls of REPEAT runs and (median) in single runs.
fn harness(pkt: &[u8], o: &Options) -> Result<(Vec<f64>, f64)> {
    let mut ebpf = Ebpf::load(loader::CALIBRATE_OBJECT).context("loading opha_calibrate")?;
    let prog: &mut SchedClassifier = ebpf
        .program_mut(loader::PROG_CALIBRATE)
        .context("opha_calibrate is missing from its object")?
        .try_into()?;
    prog.load().context("loading opha_calibrate")?;
    let one = |repeat| -> Result<f64> {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..TestRunOptions::new()
        })?;
        ensure!(
            r.return_value == TC_ACT_UNSPEC,
            "opha_calibrate returned {:#x}",
            r.return_value
        );
        Ok(r.duration.as_nanos() as f64)
    };
    one(o.repeat.min(10_000))?;
    let runs = (0..o.runs)
        .map(|_| one(o.repeat))
        .collect::<Result<Vec<_>>>()?;
    let singles = (0..o.r1_samples)
        .map(|_| one(1))
        .collect::<Result<Vec<_>>>()?;
    Ok((runs, median(&singles)))
}

/// Verified instruction count and sizes of both programs.
fn programs(dp: &DataPlane) -> Result<Json> {
    let mut m = serde_json::Map::new();
    for name in [PROG_INGRESS, PROG_EGRESS] {
        let info = dp
            .program(name)?
            .info()
            .with_context(|| format!("program info of {name}"))?;
        let xlated = info.size_translated();
        m.insert(
            name.to_string(),
            json!({
                "verified_instruction_count": info.verified_instruction_count(),
                "xlated_bytes": xlated,
                "xlated_instructions": xlated.map(|b| b / 8),
                "jited_bytes": info.size_jitted(),
            }),
        );
    }
    Ok(Json::Object(m))
}

const METHODS: &[(&str, &str)] = &[
    (
        "steady",
        "median of RUNS test-run calls of REPEAT runs of one packet; every run takes the same path \
         (checked with the global counters)",
    ),
    (
        "unmatched+matched",
        "REPEAT runs of a response only match on the first run: ns = median(REPEAT runs, \
         unmatched) + median(repeat=1, matched: the request was run through opha_egress just \
         before) - median(repeat=1, unmatched), with the single runs interleaved; a single run \
         follows a syscall, so the difference includes the cache misses of the extra path",
    ),
    (
        "replace+fresh",
        "REPEAT runs of a request only insert a fresh in-flight entry on the first run: ns = \
         median(REPEAT runs, replacing) + median(repeat=1, fresh insert) - median(repeat=1, \
         replacing), with the single runs interleaved",
    ),
    (
        "ringbuf+drain",
        "the ring buffer holds every record of a call (checked: no drops) and is drained between \
         calls, outside the timed region; the time includes the copy into the ring buffer, not \
         the userspace read",
    ),
];

/// Runs the benchmark, prints the table and writes `target/bench/ebpf.json`.
pub fn run(o: &Options) -> Result<PathBuf> {
    if !o.meets_method() {
        eprintln!(
            "warning: repeat {} / runs {} is below the issue's method (repeat >= 1,000,000, \
             median of >= 5 runs); figures are for a quick look only",
            o.repeat, o.runs
        );
    }
    let pk = packets();
    // Sized so that one call of `repeat` traps never finds the ring buffer full.
    let want = (u64::from(o.repeat) * RING_RECORD_BYTES).next_power_of_two();
    let ringbuf_bytes = want.clamp(4 << 20, MAX_RINGBUF_BYTES);
    let trap_repeat = u32::try_from((ringbuf_bytes / RING_RECORD_BYTES).min(u64::from(o.repeat)))?;
    let inst = load("ebpf", u32::try_from(ringbuf_bytes)?)?;
    let dp = inst.dp();
    eprintln!(
        "opha-bench ebpf: repeat {}, median of {} runs, {} single-run samples per path \
         (instance {})",
        o.repeat,
        o.runs,
        o.r1_samples,
        inst.name()
    );

    eprintln!("  harness (opha_calibrate)");
    let (harness_runs, harness_r1) = harness(&pk.pairs[0].response, o)?;
    let harness_ns = median(&harness_runs);

    let mut results = Vec::new();
    for p in &pk.pairs {
        eprintln!("  {} / {}", p.request_name, p.response_name);
        results.extend(pair(dp, p, &pk.non_polling, o)?);
    }
    eprintln!("  steady cases");
    results.push(steady(
        dp,
        "non_polling",
        PROG_EGRESS,
        &pk.non_polling,
        Stat::NonPolling,
        o,
    )?);
    results.push(steady(
        dp,
        "non_polling_udp",
        PROG_EGRESS,
        &pk.non_polling_udp,
        Stat::NonPolling,
        o,
    )?);
    results.push(steady(
        dp,
        "non_polling_arp",
        PROG_EGRESS,
        &pk.non_polling_arp,
        Stat::NonPolling,
        o,
    )?);
    results.push(steady(
        dp,
        "outside_prefix",
        PROG_EGRESS,
        &pk.outside_prefix,
        Stat::OutsidePrefix,
        o,
    )?);
    eprintln!("  trap_to_ringbuf");
    results.push(trap_to_ringbuf(&inst, &pk.trap, trap_repeat, o)?);
    let progs = programs(dp)?;
    drop(inst);
    eprintln!("  trap_ringbuf_full");
    results.push(trap_ringbuf_full(&pk.trap, o)?);

    let order = [
        "snmp_v2c_request",
        "snmp_v2c_response",
        "icmp_echo_request",
        "icmp_echo_reply",
        "tcp_syn_ack",
        "trap_to_ringbuf",
        "non_polling",
        "outside_prefix",
    ];
    results.sort_by_key(|r| {
        order
            .iter()
            .position(|n| *n == r.name)
            .unwrap_or(order.len())
    });

    print!("{}", table(&results, &progs, harness_ns, o));

    let mut doc = serde_json::Map::new();
    for r in &results {
        let mut v = r.to_json(o);
        if let Json::Object(m) = &mut v {
            m.insert(
                "net_ns_per_packet".into(),
                json!(round2(r.ns_per_packet - harness_ns)),
            );
        }
        doc.insert(r.name.clone(), v);
    }
    doc.insert(
        "_meta".into(),
        json!({
            "date": host::utc_now(),
            "kernel": host::kernel_release(),
            "cpu_model": host::cpu_model(),
            "cpus": host::cpu_count(),
            "bpf_jit_enabled": host::bpf_jit_enabled(),
            "repeat": o.repeat,
            "runs": o.runs,
            "r1_samples": o.r1_samples,
            "meets_method": o.meets_method(),
            "timer": "kernel BPF_PROG_TEST_RUN duration: mean ns per run of one call, \
                      integer ns, preemption excluded",
            "methods": METHODS.iter().map(|(k, v)| (k.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>(),
            "programs": progs,
            "programs_note": "verified_instruction_count is bpf_prog_info.verified_insns, the \
                              instructions the verifier processed over all paths; \
                              xlated_instructions is the program's length after verification",
            "harness_ns": harness_ns,
            "harness_repeat_ns": harness_runs,
            "harness_r1_ns": harness_r1,
            "harness": "ns per run of opha_calibrate (returns at once) with the same method; \
                        net_ns_per_packet = ns_per_packet - harness_ns",
        }),
    );
    host::write_report("ebpf", &Json::Object(doc))
}

fn table(results: &[CaseResult], progs: &Json, harness_ns: f64, o: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\neBPF per-packet cost (BPF_PROG_TEST_RUN, repeat {}, median of {} runs; kernel {}, {})\n",
        o.repeat,
        o.runs,
        host::kernel_release(),
        host::cpu_model()
    );
    let _ = writeln!(
        s,
        "{:<24} {:<12} {:>5} {:>9} {:>7}  {:<18} {:<18} target",
        "case", "program", "bytes", "ns/pkt", "net", "method", "components"
    );
    for r in results {
        let comp = match r.method {
            "unmatched+matched" => format!(
                "{:.0} + {:.0}",
                r.extra["repeat_unmatched_ns"].as_f64().unwrap_or(f64::NAN),
                r.extra["matched_extra_ns"].as_f64().unwrap_or(f64::NAN)
            ),
            "replace+fresh" => format!(
                "{:.0} + {:.0}",
                r.extra["repeat_replace_ns"].as_f64().unwrap_or(f64::NAN),
                r.extra["fresh_extra_ns"].as_f64().unwrap_or(f64::NAN)
            ),
            "ringbuf+drain" => format!(
                "drops {}",
                r.extra["ringbuf_drops"].as_u64().unwrap_or(u64::MAX)
            ),
            _ => String::new(),
        };
        let target = match r.target() {
            Some(t) if r.ns_per_packet <= t => format!("<= {t:.0}: met"),
            Some(t) => format!("<= {t:.0}: NOT met"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<24} {:<12} {:>5} {:>9.1} {:>7.1}  {:<18} {:<18} {}",
            r.name,
            r.program,
            r.packet_bytes,
            r.ns_per_packet,
            r.ns_per_packet - harness_ns,
            r.method,
            comp,
            target
        );
    }
    let _ = writeln!(
        s,
        "\nnet = ns/pkt minus the harness: {harness_ns:.1} ns per run of a classifier that does \
         nothing (opha_calibrate), same method; targets apply to ns/pkt"
    );
    let _ = writeln!(s, "\nprograms:");
    if let Json::Object(m) = progs {
        for (name, v) in m {
            let _ = writeln!(
                s,
                "  {name:<13} verified (processed) instructions {}, xlated {} instructions ({} bytes), \
                 jited {} bytes",
                v["verified_instruction_count"],
                v["xlated_instructions"],
                v["xlated_bytes"],
                v["jited_bytes"]
            );
        }
    }
    let _ = writeln!(s, "\nmethods:");
    for (k, v) in METHODS {
        let _ = writeln!(s, "  {k}: {v}");
    }
    s
}
