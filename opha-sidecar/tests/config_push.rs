//! Config push end to end, in process on 127.0.0.1: two real primaries (`receiver::start`)
//! and a real poller pipeline (`poller::Pipeline` with its bus), whose kernel is a fake that
//! records what the config setters put in its "maps":
//! - applied live: the poller's running config, version and kernel maps change;
//! - rejected (a key that cannot change live; a kernel map that fails to update) with the
//!   reason at the primary, and the previous version still running, maps put back;
//! - delivered on reconnect: a version stored while the poller was down reaches it when it
//!   returns (and the restarted poller ran the last applied version from its own disk);
//! - refused from a fenced primary: the redundant primary, made to believe it acts, pushes;
//!   the poller refuses it (counted), its config unchanged.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opha_bus::message::Grant;
use opha_common::inflight::InflightKey;
use opha_common::node::{NodeCounters, NodeKey};
use opha_common::ports::PortConfig;
use opha_common::wire::{PeerId, PeerRole, TenantId};
use opha_identity::ca;
use opha_log::Log;
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::decode::DecodeContext;
use opha_sidecar::loader::{GlobalStats, MonitoredPrefix};
use opha_sidecar::poller::aggregate::Resume;
use opha_sidecar::poller::config_apply::{effective_config, load_pushed, pushed_path};
use opha_sidecar::poller::{KernelSource, Listeners, NoRing, Pipeline, PipelineParts, SystemClock};
use opha_sidecar::receiver::{self, RunningReceiver};

const POLLER: &str = "poller-cp";
const MAIN: &str = "primary-cp-main";
const RED: &str = "primary-cp-red";
const TENANT: u32 = 4;
const TENANT2: u32 = 5;

fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

/// What the fake kernel's maps hold, and how often they were written.
#[derive(Debug, Default)]
struct Maps {
    prefixes: Vec<MonitoredPrefix>,
    ports: PortConfig,
    tcp_ports: Vec<u16>,
    writes: u64,
    /// `set_ports` fails while set.
    fail_ports: bool,
}

#[derive(Clone, Default)]
struct FakeKernel(Arc<Mutex<Maps>>);

impl FakeKernel {
    fn maps<T>(&self, f: impl FnOnce(&Maps) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
}

impl KernelSource for FakeKernel {
    fn sweep(&mut self, _: u64, _: u64) -> Result<Vec<(InflightKey, u64)>, String> {
        Ok(Vec::new())
    }
    fn nodes(&mut self) -> Result<Vec<(NodeKey, NodeCounters)>, String> {
        Ok(Vec::new())
    }
    fn stats(&mut self) -> Result<GlobalStats, String> {
        Ok(GlobalStats::default())
    }
    fn set_prefixes(&mut self, p: &[MonitoredPrefix]) -> Result<(), String> {
        let mut m = self.0.lock().unwrap();
        m.prefixes = p.to_vec();
        m.writes += 1;
        Ok(())
    }
    fn set_ports(&mut self, p: PortConfig) -> Result<(), String> {
        let mut m = self.0.lock().unwrap();
        if m.fail_ports {
            return Err("map update failed (injected)".into());
        }
        m.ports = p;
        m.writes += 1;
        Ok(())
    }
    fn set_tcp_ports(&mut self, p: &[u16]) -> Result<(), String> {
        let mut m = self.0.lock().unwrap();
        m.tcp_ports = p.to_vec();
        m.writes += 1;
        Ok(())
    }
}

struct Pki {
    dir: tempfile::TempDir,
    ca: ca::Ca,
}

impl Pki {
    fn new() -> Self {
        let _ = env_logger::builder().is_test(true).try_init();
        let dir = tempfile::Builder::new()
            .prefix("config-push-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let ca = ca::init_ca(&dir.path().join("ca"), "config push CA", 1, false).unwrap();
        let pki = Pki { dir, ca };
        pki.issue(POLLER, PeerRole::Poller, &[TENANT, TENANT2]);
        pki.issue(MAIN, PeerRole::Primary, &[]);
        pki.issue(RED, PeerRole::Primary, &[]);
        pki
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn issue(&self, peer_id: &str, role: PeerRole, tenants: &[u32]) {
        let spec = ca::PeerSpec {
            peer_id: peer(peer_id),
            role,
            tenants: tenants.iter().map(|&t| TenantId(t)).collect(),
            validity: ca::Validity::days_from_now(1),
        };
        let issued = self.ca.issue(&spec).unwrap();
        issued.save(&self.root().join("certs"), true).unwrap();
    }
}

fn receiver_config(root: &Path, id: &str) -> ReceiverFileConfig {
    let text = format!(
        r#"
peer_id = "{id}"
role = "primary"
listen = "127.0.0.1:7443"
[tls]
certificate = "certs/{id}.pem"
key = "certs/{id}.key"
ca = "ca/ca.pem"
[store]
dir = "store-{id}"
[transport]
rtt_ms = 1
[[poller]]
id = "{POLLER}"
tenants = [{TENANT}, {TENANT2}]
[metrics]
listen = "off"
"#
    );
    let mut cfg = ReceiverFileConfig::from_toml(&text, "receiver.toml", root).unwrap();
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg
}

/// The poller's config file; `extra` goes at the end (prefixes, ports, thresholds). Paths
/// are absolute, so the same text is valid as a push.
fn poller_text(root: &Path, main: SocketAddr, red: SocketAddr, extra: &str) -> String {
    let r = root.display();
    format!(
        r#"
poller_id = "{POLLER}"
interface = "lo"
instance = "t-config-push"
daemon = []
[log]
dir = "{r}/log"
segment = "1MiB"
budget = "64MiB"
[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
[bus]
cert = "{r}/certs/{POLLER}.pem"
key = "{r}/certs/{POLLER}.key"
ca = "{r}/ca/ca.pem"
reconnect_min = "50ms"
reconnect_max = "200ms"
[bus.transport]
rtt_ms = 1
[[receiver]]
peer = "{MAIN}"
role = "primary"
address = "{main}"
order = 1
[[receiver]]
peer = "{RED}"
role = "primary"
address = "{red}"
order = 2
{extra}
"#
    )
}

const BASE: &str = "[[prefix]]\ncidr = \"198.18.0.0/24\"\ntenant = 4\n";
const V1: &str = "[[prefix]]\ncidr = \"198.18.0.0/24\"\ntenant = 4\n[[prefix]]\ncidr = \"198.19.1.0/24\"\ntenant = 5\n[ports]\ntcp_checks = [22, 443]\n[thresholds]\ndown_after = 5\n";

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// A running poller pipeline (started as `opha-sidecar poller` starts it, minus the kernel).
struct Poller {
    pipeline: Option<Pipeline>,
    kernel: FakeKernel,
}

impl Poller {
    fn start(rt: &tokio::runtime::Runtime, local: PollerConfig) -> Self {
        let (cfg, version) = effective_config(local).unwrap();
        let kernel = FakeKernel::default();
        {
            // What `runtime::dataplane` puts in the maps at start.
            let mut m = kernel.0.lock().unwrap();
            m.prefixes = cfg.monitored_prefixes();
            m.ports = cfg.port_config();
            m.tcp_ports = cfg.tcp_ports();
        }
        let log = Arc::new(Log::open(cfg.log_config()).unwrap());
        let pipeline = Pipeline::start(
            PipelineParts {
                decode: DecodeContext::new(POLLER),
                log,
                kernel: kernel.clone(),
                ring: NoRing,
                inventory: None,
                resume: Resume::default(),
                listeners: Listeners::default(),
                clock: Arc::new(SystemClock),
                config: cfg,
            },
            rt.handle(),
        )
        .unwrap();
        assert_eq!(pipeline.live_config().version(), version);
        Poller {
            pipeline: Some(pipeline),
            kernel,
        }
    }

    fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().unwrap()
    }

    fn version(&self) -> u64 {
        self.pipeline().live_config().version()
    }

    fn stop(mut self) {
        if let Some(p) = self.pipeline.take() {
            p.shutdown();
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(p) = self.pipeline.take() {
            p.shutdown();
        }
    }
}

fn has_prefix(k: &FakeKernel, cidr: &str, tenant: u32) -> bool {
    let want: MonitoredPrefix = format!("{cidr}={tenant}").parse().unwrap();
    k.maps(|m| {
        m.prefixes
            .iter()
            .any(|p| (p.vlan, p.addr, p.len, p.tenant) == (want.vlan, want.addr, want.len, tenant))
    })
}

#[test]
fn config_push_applied_rejected_delivered_on_reconnect_and_fenced() {
    let pki = Pki::new();
    let root = pki.root().to_path_buf();
    let p = peer(POLLER);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let main: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, MAIN)))
        .unwrap();
    let red: RunningReceiver = rt
        .block_on(receiver::start(&receiver_config(&root, RED)))
        .unwrap();
    let text = |extra: &str| poller_text(&root, main.addr, red.addr, extra);
    let local = PollerConfig::from_toml(&text(BASE), "poller.toml", &root).unwrap();

    let poller = Poller::start(&rt, local.clone());
    assert_eq!(poller.version(), 0, "the local file, never pushed");
    wait_for("the main primary acting", Duration::from_secs(10), || {
        main.shared.acting_term(&p).is_some()
    });
    wait_for(
        "the poller's config stream at the main primary",
        Duration::from_secs(10),
        || main.shared.config_status(&p).running_version == Some(0),
    );

    // Validation at the primary names the key; nothing is stored.
    let e = main
        .shared
        .push_config(&p, &text(&BASE.replace("198.18.0.0/24", "198.18.0.9/24")))
        .unwrap_err();
    assert_eq!(e.problems[0].key, "prefix[0].cidr", "{e}");
    let e = main
        .shared
        .push_config(&peer("poller-unknown"), &text(BASE))
        .unwrap_err();
    assert_eq!(e.problems[0].key, "poller", "{e}");
    assert_eq!(main.shared.config_status(&p).desired_version, None);

    // 1. Applied live: a second prefix with another tenant, TCP check ports, a threshold.
    let writes_before = poller.kernel.maps(|m| m.writes);
    let pushed_at = Instant::now();
    let v1 = main.shared.push_config(&p, &text(V1)).unwrap();
    assert_eq!(v1, 1);
    wait_for("version 1 running", Duration::from_secs(10), || {
        poller.version() == v1
    });
    let latency = pushed_at.elapsed();
    eprintln!("push to applied (kernel maps written): {latency:?}");
    assert!(has_prefix(&poller.kernel, "198.19.1.0/24", TENANT2));
    assert!(has_prefix(&poller.kernel, "198.18.0.0/24", TENANT));
    assert_eq!(poller.kernel.maps(|m| m.tcp_ports.clone()), vec![22, 443]);
    // Prefixes and TCP ports written, the port config untouched (unchanged).
    assert_eq!(poller.kernel.maps(|m| m.writes), writes_before + 2);
    let running = poller.pipeline().live_config().config();
    assert_eq!(running.thresholds.down_after, 5);
    assert_eq!(running.prefixes.len(), 2);
    let persisted = load_pushed(&pushed_path(&running)).unwrap().unwrap();
    assert_eq!(persisted.version, v1);
    assert_eq!(persisted.primary, MAIN);
    wait_for("the primary's status", Duration::from_secs(5), || {
        let s = main.shared.config_status(&p);
        s.running_version == Some(v1) && s.pending_version.is_none()
    });
    assert_eq!(main.shared.config_status(&p).last_failure, None);

    // 2a. Rejected: the interface cannot change live. The reason names it; v1 keeps running.
    let bad = text(V1).replace("interface = \"lo\"", "interface = \"eth9\"");
    let v2 = main.shared.push_config(&p, &bad).unwrap();
    assert_eq!(v2, 2);
    wait_for("the rejection", Duration::from_secs(10), || {
        main.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == v2)
    });
    let s = main.shared.config_status(&p);
    let f = s.last_failure.clone().unwrap();
    assert_eq!(f.kind, "rejected");
    assert!(
        f.reason.contains("interface") && f.reason.contains("eth9"),
        "{f:?}"
    );
    assert_eq!(s.running_version, Some(v1));
    assert_eq!(s.desired_version, Some(v2));
    assert_eq!(poller.version(), v1);
    assert!(has_prefix(&poller.kernel, "198.19.1.0/24", TENANT2));

    // 2b. Rejected by the kernel: the port map fails after the prefix map was written; the
    //     prefix map is put back, v1 keeps running.
    poller.kernel.0.lock().unwrap().fail_ports = true;
    let v3_text = text(
        &V1.replace("198.19.1.0/24", "198.19.2.0/24")
            .replace("[ports]\n", "[ports]\nsnmp = 1161\n"),
    );
    let v3 = main.shared.push_config(&p, &v3_text).unwrap();
    wait_for("the kernel rejection", Duration::from_secs(10), || {
        main.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == v3)
    });
    let f = main.shared.config_status(&p).last_failure.unwrap();
    assert!(
        f.reason.contains("ports") && f.reason.contains("injected"),
        "{f:?}"
    );
    assert_eq!(poller.version(), v1);
    assert!(
        has_prefix(&poller.kernel, "198.19.1.0/24", TENANT2),
        "put back"
    );
    assert!(!has_prefix(&poller.kernel, "198.19.2.0/24", TENANT2));
    assert_eq!(poller.kernel.maps(|m| m.ports.snmp_port), 161);
    poller.kernel.0.lock().unwrap().fail_ports = false;

    // 3. Delivered on reconnect: the poller goes away, a version is stored meanwhile.
    poller.stop();
    wait_for("the poller gone", Duration::from_secs(10), || {
        !main.shared.config_status(&p).connected && main.shared.acting_term(&p).is_none()
    });
    let v4_text = text(&V1.replace("down_after = 5", "down_after = 7"));
    let v4 = main.shared.push_config(&p, &v4_text).unwrap();
    assert_eq!(main.shared.config_status(&p).running_version, Some(v1));
    // The restarted poller first runs what it applied last (v1), from its own disk.
    let poller = Poller::start(&rt, local.clone());
    let started = poller.pipeline().live_config().config();
    assert!(poller.version() == v1 || poller.version() == v4);
    assert_eq!(
        started.prefixes.len(),
        2,
        "the pushed prefixes, not the file's"
    );
    assert!(has_prefix(&poller.kernel, "198.19.1.0/24", TENANT2));
    wait_for(
        "version 4 after the reconnect",
        Duration::from_secs(10),
        || poller.version() == v4,
    );
    assert_eq!(
        poller
            .pipeline()
            .live_config()
            .config()
            .thresholds
            .down_after,
        7
    );
    wait_for("the primary's status", Duration::from_secs(5), || {
        main.shared.config_status(&p).running_version == Some(v4)
    });
    assert_eq!(main.shared.config_status(&p).last_failure, None);

    // 4. Refused from a fenced primary: the redundant one is made to believe it acts with
    //    the current term (a stale belief); the poller's arbiter names the main primary.
    wait_for("the main primary acting", Duration::from_secs(10), || {
        main.shared.acting_term(&p).is_some()
    });
    wait_for(
        "the poller's config stream at the redundant primary",
        Duration::from_secs(10),
        // Its view follows versions applied from the main primary.
        || red.shared.config_status(&p).running_version == Some(v4),
    );
    let term = main.shared.acting_term(&p).unwrap();
    red.shared
        .fencing
        .on_grant(
            &p,
            &Grant {
                term,
                active: Some(peer(RED)),
                lease_ms: 5_000,
            },
        )
        .unwrap();
    assert_eq!(red.shared.acting_term(&p), Some(term), "believes it acts");
    let fenced_text = text(&V1.replace("down_after = 5", "down_after = 9"));
    let vr = red.shared.push_config(&p, &fenced_text).unwrap();
    assert!(vr > v4, "numbered above what the poller runs: {vr}");
    wait_for("the fenced push refused", Duration::from_secs(10), || {
        red.shared
            .config_status(&p)
            .last_failure
            .is_some_and(|f| f.version == vr)
    });
    let f = red.shared.config_status(&p).last_failure.unwrap();
    assert_eq!(f.kind, "not_active");
    assert!(f.reason.contains("not the active primary"), "{f:?}");
    assert_eq!(poller.version(), v4);
    assert_eq!(
        poller
            .pipeline()
            .live_config()
            .config()
            .thresholds
            .down_after,
        7
    );
    let metrics = {
        let mut o = String::new();
        poller.pipeline().shared().bus.get().unwrap().render(&mut o);
        o
    };
    assert!(
        metrics.contains("opha_config_pushes_total{outcome=\"not_active\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("opha_config_version {v4}")));
    let primary_metrics = main.shared.render_metrics();
    assert!(
        primary_metrics.contains(&format!(
            "opha_receiver_config_version{{poller=\"{POLLER}\",kind=\"running\"}} {v4}"
        )),
        "{primary_metrics}"
    );

    poller.stop();
    rt.block_on(async {
        main.shutdown().await;
        red.shutdown().await;
    });
}
