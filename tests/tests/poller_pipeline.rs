//! The poller pipeline on the real kernel programs, fed with BPF_PROG_TEST_RUN packets (no
//! interface, no namespaces): pings become NodeMetrics and a trap a decoded event in the
//! replay log; the ring buffer is committed once durable; after a restart with pinned maps
//! (and pings counted while the sidecar was down) no request is counted twice or skipped.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opha_sidecar::{
    config::PollerConfig,
    decode::DecodeContext,
    loader::DataPlane,
    logdump::{DumpOptions, dump},
    poller::{
        Listeners, Pipeline, PipelineParts, SystemClock, aggregate::resume, checkpoint,
        runtime::open_log,
    },
};
use opha_tests::{
    packets::{Frame, NODE_MAC, NODE_V4, POLLER_MAC, POLLER_V4, TRAP_PORT, pdu, snmp_v2c_trap},
    pins::TestInstance,
    privilege::privileged,
};

fn config(dir: &Path, instance: &str) -> PollerConfig {
    let text = format!(
        r#"
poller_id = "test-pipeline"
interface = "lo"
instance = "{instance}"
daemon = []
[[prefix]]
cidr = "198.18.0.0/16"
tenant = 1
[ports]
tcp_checks = [22]
[intervals]
metrics = "1s"
poll_timeout = "500ms"
sweep = "100ms"
heartbeat = "1s"
[log]
dir = "{dir}/log"
[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
"#,
        dir = dir.display()
    );
    PollerConfig::from_toml(&text, "test.toml", dir).expect("valid config")
}

fn start(inst: &TestInstance, cfg: &PollerConfig, rt: &tokio::runtime::Runtime) -> Pipeline {
    // A second handle on the instance's pinned maps, as a restarted sidecar has.
    let dp = DataPlane::load(inst.config()).expect("reopen the pinned maps");
    let ring = dp.ring_reader().expect("ring reader");
    let log = open_log(cfg).expect("log");
    let r = resume(&log, &cfg.log_dir()).expect("resume");
    Pipeline::start(
        PipelineParts {
            config: cfg.clone(),
            log,
            kernel: dp,
            ring,
            inventory: None,
            resume: r,
            listeners: Listeners::default(),
            clock: Arc::new(SystemClock),
            decode: DecodeContext::new("test-pipeline"),
        },
        rt.handle(),
    )
    .expect("pipeline")
}

fn ping(inst: &TestInstance, seq: u16) {
    let req = Frame::new()
        .ipv4(POLLER_V4, NODE_V4)
        .icmp_echo(true, 7, seq);
    let rep = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
        .icmp_echo(false, 7, seq);
    inst.test_run("opha_egress", &req, 1).unwrap();
    inst.test_run("opha_ingress", &rep, 1).unwrap();
}

fn trap(inst: &TestInstance) {
    let f = Frame::new()
        .macs(NODE_MAC, POLLER_MAC)
        .ipv4(NODE_V4, POLLER_V4)
        .udp(
            40162,
            TRAP_PORT,
            &snmp_v2c_trap(b"public", pdu::TRAP_V2, 77, &[]),
        );
    inst.test_run("opha_ingress", &f, 1).unwrap();
}

fn lines(dir: &Path) -> Vec<serde_json::Value> {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    dump(
        &DumpOptions {
            dir: dir.to_path_buf(),
            from: 0,
            json: true,
        },
        &mut out,
        &mut err,
    )
    .expect("dump");
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// ICMP requests and responses of NODE_V4 over every NodeMetrics record, and the number of
/// such records.
fn icmp_totals(lines: &[serde_json::Value]) -> (u64, u64, usize) {
    let mut t = (0, 0, 0);
    for l in lines {
        let m = &l["record"]["node_metrics"];
        if m["node"]["addr"] == NODE_V4.to_string() {
            t.0 += m["icmp"]["requests"].as_u64().unwrap();
            t.1 += m["icmp"]["responses"].as_u64().unwrap();
            t.2 += 1;
        }
    }
    t
}

fn traps(lines: &[serde_json::Value]) -> usize {
    lines
        .iter()
        .filter(|l| l["record"]["event"]["kind"].get("trap").is_some())
        .count()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pings_and_a_trap_reach_the_log_once_across_a_restart() {
    if !privileged("pings_and_a_trap_reach_the_log_once_across_a_restart") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let inst = TestInstance::configured("pipeline").expect("load");
    let cfg = config(tmp.path(), inst.name());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = cfg.log_dir();

    let p = start(&inst, &cfg, &rt);
    // The first snapshot is the baseline (it checkpoints): polls after it are counted.
    wait_for("the baseline checkpoint", || {
        checkpoint::path_in(&dir).exists()
    });
    for seq in 0..5 {
        ping(&inst, seq);
    }
    trap(&inst);
    wait_for("5 pings and the trap in the log", || {
        let l = lines(&dir);
        icmp_totals(&l).0 == 5 && traps(&l) == 1
    });
    p.shutdown();
    let mut reader = inst.ring_reader().unwrap();
    assert_eq!(reader.pending_bytes(), 0, "the trap was committed");
    let mut items = Vec::new();
    assert_eq!(reader.read(10, &mut items), 0);
    drop(reader);

    // Counted by the kernel while no sidecar runs.
    ping(&inst, 100);
    ping(&inst, 101);
    let p = start(&inst, &cfg, &rt);
    for seq in 200..203 {
        ping(&inst, seq);
    }
    wait_for("all 10 pings in the log", || {
        icmp_totals(&lines(&dir)).0 >= 10
    });
    // One more interval: nothing is counted late or twice.
    std::thread::sleep(Duration::from_millis(1500));
    p.shutdown();
    let l = lines(&dir);
    let (req, resp, records) = icmp_totals(&l);
    assert_eq!((req, resp), (10, 10), "{records} records");
    assert_eq!(traps(&l), 1);
    let trap = l
        .iter()
        .find(|x| x["record"]["event"]["kind"].get("trap").is_some())
        .unwrap();
    assert_eq!(
        trap["record"]["event"]["subject"]["node"]["addr"],
        "198.18.1.10"
    );
}
