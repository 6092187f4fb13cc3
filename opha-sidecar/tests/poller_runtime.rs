//! The whole pipeline with a fake kernel and ring (no BPF, no namespaces): node metrics,
//! syslog from the ring, local ingest, daemon health and the heartbeat all reach the replay
//! log; the metrics endpoint shows the contract's metrics; `log dump` reads the log while the
//! poller runs; shutdown finishes and releases the log.

mod poller_support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opha_common::inflight::InflightKey;
use opha_common::node::{NodeCounters, NodeKey};
use opha_common::stats::Stat;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::decode::DecodeContext;
use opha_sidecar::loader::GlobalStats;
use opha_sidecar::logdump::{DumpOptions, dump};
use opha_sidecar::poller::{
    KernelSource, Listeners, Pipeline, PipelineParts, SystemClock, aggregate::resume,
    runtime::open_log, source::monotonic_ns,
};
use opha_sidecar::ring::RingItem;
use poller_support::FakeRing;

/// A kernel whose one node answers one ICMP poll per snapshot, stamped with the real clock.
#[derive(Clone, Default)]
struct LiveKernel(Arc<Mutex<BTreeMap<NodeKey, NodeCounters>>>);

impl KernelSource for LiveKernel {
    fn sweep(&mut self, _: u64, _: u64) -> Result<Vec<(InflightKey, u64)>, String> {
        Ok(Vec::new())
    }

    fn nodes(&mut self) -> Result<Vec<(NodeKey, NodeCounters)>, String> {
        let mut m = self.0.lock().unwrap();
        let c = m
            .entry(NodeKey::v4([198, 18, 0, 9], 0))
            .or_insert_with(|| NodeCounters {
                tenant: 1,
                ..NodeCounters::default()
            });
        let icmp = &mut c.classes[0];
        icmp.requests += 1;
        icmp.responses += 1;
        icmp.rtt_count += 1;
        icmp.rtt_sum_ns += 500_000;
        icmp.rtt_min_ns = 500_000;
        icmp.rtt_max_ns = 500_000;
        icmp.rtt_hist[opha_common::node::rtt_bucket(500_000)] += 1;
        icmp.last_response_ns = monotonic_ns();
        Ok(m.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn stats(&mut self) -> Result<GlobalStats, String> {
        Ok(GlobalStats {
            counters: Stat::ALL
                .iter()
                .map(|s| (s.name().to_string(), 7))
                .collect(),
            ..GlobalStats::default()
        })
    }
}

fn config(dir: &Path) -> PollerConfig {
    let text = format!(
        r#"
poller_id = "test-poller"
interface = "lo"
instance = "t-runtime"
[[prefix]]
cidr = "198.18.0.0/15"
tenant = 1
[intervals]
metrics = "1s"
poll_timeout = "500ms"
sweep = "100ms"
heartbeat = "200ms"
[daemon_health]
interval = "200ms"
timeout = "200ms"
down_after = 1
[[daemon]]
name = "always"
command = ["/bin/true"]
[log]
dir = "{dir}/log"
[ingest]
http = "off"
unix = "{dir}/ingest.sock"
[metrics]
listen = "off"
"#,
        dir = dir.display()
    );
    PollerConfig::from_toml(&text, "test.toml", dir).expect("valid config")
}

fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn dump_json(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut err = Vec::new();
    dump(
        &DumpOptions {
            dir: dir.to_path_buf(),
            from: 0,
            json: true,
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn kinds(lines: &[serde_json::Value]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let r = &l["record"];
            let top = r
                .as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_default();
            if top == "event" {
                match &r["event"]["kind"] {
                    serde_json::Value::String(s) => format!("event:{s}"),
                    serde_json::Value::Object(o) => {
                        format!("event:{}", o.keys().next().cloned().unwrap_or_default())
                    }
                    _ => "event:?".into(),
                }
            } else {
                top
            }
        })
        .collect()
}

#[test]
fn the_pipeline_runs_end_to_end_on_fakes_and_stops_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listeners = rt.block_on(async {
        Listeners {
            ingest_tcp: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
            ingest_unix: None,
            metrics: Some(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()),
        }
    });
    let (iaddr, maddr) = (
        listeners.ingest_addr().unwrap(),
        listeners.metrics_addr().unwrap(),
    );
    let log = open_log(&cfg).unwrap();
    let r = resume(&log, &cfg.log_dir()).unwrap();
    let ring = FakeRing::default();
    let mut data = [0u8; opha_common::ports::SNAP_LEN];
    let msg = b"<11>Jan  1 00:00:00 sw1 sshd: disk on fire";
    data[..msg.len()].copy_from_slice(msg);
    let mut src = [0u8; 16];
    src[10..].copy_from_slice(&[0xff, 0xff, 198, 18, 0, 9]);
    ring.push(RingItem::Record(Box::new(
        opha_common::ringbuf::RingRecord {
            ts_ns: monotonic_ns(),
            ifindex: 1,
            tenant: 1,
            src,
            vlan: 0,
            src_port: 514,
            dst_port: 514,
            kind: opha_common::ringbuf::RingKind::Syslog as u8,
            _pad: 0,
            orig_len: msg.len() as u16,
            cap_len: msg.len() as u16,
            _pad2: 0,
            data,
        },
    )));
    let pipeline = Pipeline::start(
        PipelineParts {
            config: cfg.clone(),
            log: log.clone(),
            kernel: LiveKernel::default(),
            ring: ring.clone(),
            inventory: None,
            resume: r,
            listeners,
            clock: Arc::new(SystemClock),
            decode: DecodeContext::fixed(0, 1),
        },
        rt.handle(),
    )
    .unwrap();
    drop(log);

    let body =
        r#"{"source":"opeventsd","event":"Node Reset","severity":"major","address":"198.18.0.9"}"#;
    let (status, answer) = http(
        iaddr,
        &format!(
            "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert_eq!(status, 200, "{answer}");

    // Everything arrives while the poller runs; `log dump` reads it without the log's lock.
    let want = [
        "node_metrics",
        "event:syslog",
        "event:external",
        "event:daemon_up",
        "daemon_health",
        "peer_status",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let lines = loop {
        let lines = dump_json(&cfg.log_dir());
        let k = kinds(&lines);
        if want.iter().all(|w| k.iter().any(|x| x == w)) {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "missing some of {want:?} in {k:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let metrics = lines
        .iter()
        .find(|l| l["record"].get("node_metrics").is_some())
        .unwrap();
    assert_eq!(
        metrics["record"]["node_metrics"]["node"]["addr"],
        "198.18.0.9"
    );
    assert!(
        metrics["record"]["node_metrics"]["icmp"]["requests"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(ring.committed(), 1);

    let (status, text) = http(
        maddr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    for name in [
        "opha_log_records_appended_total ",
        "opha_log_depth_records ",
        "opha_log_oldest_age_seconds ",
        "opha_log_fsync_seconds_count ",
        "opha_log_fsync_seconds{quantile=\"0.99\"}",
        "opha_kernel_inflight_evictions_total ",
        "opha_ingest_rejected_total{reason=\"invalid\"} 0",
        "opha_ring_records_total 1",
        "opha_undecodable_total 0",
        "opha_daemon_up{daemon=\"always\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
    for s in Stat::ALL {
        assert!(
            text.contains(&format!("opha_kernel_{}_total 7", s.name())),
            "{}",
            s.name()
        );
    }
    let (status, log_lines) = http(
        maddr,
        "GET /v1/log?from=0&limit=3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(log_lines.lines().count(), 3);

    let started = Instant::now();
    pipeline.shutdown();
    assert!(started.elapsed() < Duration::from_secs(15));
    // The log is closed: it can be opened (and locked) again.
    let again = open_log(&cfg).expect("log released at shutdown");
    assert!(again.durable_next_seq() as usize >= lines.len());
}
