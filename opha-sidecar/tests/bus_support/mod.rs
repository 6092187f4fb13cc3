//! Helpers shared by the in-process bus tests (the real poller bus and real receivers on
//! 127.0.0.1): certificates, receiver and poller config files, the poller's bus started and
//! stopped, log records, stored events, waiting, a poller pipeline on a fake kernel.
//! Declare `mod receiver_support;` beside `mod bus_support;` (its `Pki` and records are used).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opha_common::inflight::InflightKey;
use opha_common::node::{NodeCounters, NodeKey};
use opha_common::ports::PortConfig;
use opha_common::wire::{PeerId, PeerRole, TenantId};
use opha_log::{Appended, Log, RecordClass};
use opha_sidecar::config::PollerConfig;
use opha_sidecar::config::receiver::ReceiverFileConfig;
use opha_sidecar::decode::DecodeContext;
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::loader::{GlobalStats, MonitoredPrefix};
use opha_sidecar::poller::aggregate::Resume;
use opha_sidecar::poller::bus::{self, Bus};
use opha_sidecar::poller::config_apply::effective_config;
use opha_sidecar::poller::{
    KernelSource, Listeners, NoRing, Pipeline, PipelineParts, Shutdown, SystemClock,
};
use opha_sidecar::receiver::RunningReceiver;
use opha_store::{EventFilter, PageRequest, StoredEvent};

use crate::receiver_support::{Pki, event_record};

pub fn peer(s: &str) -> PeerId {
    PeerId::new(s).unwrap()
}

/// 127.0.0.1 on a port the OS picks.
pub fn ephemeral() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A CA in a directory named `prefix…` under the target dir, with a certificate saved for
/// each `(peer, role, tenants)`.
pub fn pki(prefix: &str, peers: &[(&str, PeerRole, &[u32])]) -> Pki {
    let pki = Pki::named(prefix);
    for (id, role, tenants) in peers {
        pki.issue(id, *role, tenants);
    }
    pki
}

/// A receiver's config file as `opha-sidecar primary|mirror --config` reads it (certificates
/// and store relative to the test's root), built up by its methods.
#[derive(Clone, Debug)]
pub struct ReceiverFile {
    id: String,
    role: String,
    fast_failure: bool,
    metrics: bool,
    pollers: String,
    peers: String,
    extra: String,
}

impl ReceiverFile {
    /// Transport at its defaults but for `rtt_ms = 1` (keep-alive 1 s, idle timeout 5 s),
    /// metrics off, store in `store-{id}`.
    pub fn new(id: &str, role: &str) -> Self {
        Self {
            id: id.to_string(),
            role: role.to_string(),
            fast_failure: false,
            metrics: false,
            pollers: String::new(),
            peers: String::new(),
            extra: String::new(),
        }
    }

    /// Keep-alive 200 ms, idle timeout 1 s: a lost link is noticed quickly.
    pub fn fast_failure(mut self) -> Self {
        self.fast_failure = true;
        self
    }

    /// Serves `/metrics` (on a port the OS picks).
    pub fn metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// A `[[poller]]` registry entry.
    pub fn poller(mut self, id: &str, tenants: &[u32]) -> Self {
        let tenants: Vec<String> = tenants.iter().map(u32::to_string).collect();
        let _ = write!(
            self.pollers,
            "[[poller]]\nid = \"{id}\"\ntenants = [{}]\n",
            tenants.join(", ")
        );
        self
    }

    /// A `[[peer]]` entry (gap fetch).
    pub fn peer(mut self, id: &str, role: &str, addr: SocketAddr) -> Self {
        let _ = write!(
            self.peers,
            "[[peer]]\nid = \"{id}\"\nrole = \"{role}\"\naddress = \"{addr}\"\n"
        );
        self
    }

    /// More TOML at the end of the file (`[api]`, `[mirror]`).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    pub fn text(&self) -> String {
        let Self { id, role, .. } = self;
        let transport = if self.fast_failure {
            "keep_alive_ms = 200\nidle_timeout_ms = 1000\n"
        } else {
            ""
        };
        let metrics = if self.metrics {
            "127.0.0.1:9731"
        } else {
            "off"
        };
        format!(
            r#"
peer_id = "{id}"
role = "{role}"
listen = "127.0.0.1:7443"
[tls]
certificate = "certs/{id}.pem"
key = "certs/{id}.key"
ca = "ca/ca.pem"
[store]
dir = "store-{id}"
[transport]
{transport}rtt_ms = 1
{pollers}[metrics]
listen = "{metrics}"
{extra}{peers}"#,
            pollers = self.pollers,
            extra = self.extra,
            peers = self.peers,
        )
    }

    /// The parsed file, every listener on a port the OS picks (files name fixed ones).
    pub fn build(&self, root: &Path) -> ReceiverFileConfig {
        let mut cfg = ReceiverFileConfig::from_toml(&self.text(), "receiver.toml", root).unwrap();
        cfg.listen = ephemeral();
        if cfg.metrics.listen.is_some() {
            cfg.metrics.listen = Some(ephemeral());
        }
        if let Some(api) = cfg.api.as_mut() {
            api.listen = api.listen.map(|_| ephemeral());
        }
        cfg
    }
}

/// A poller's config file with a `[bus]` (every path absolute, so the text is valid as a
/// config push too), built up by its methods.
#[derive(Clone, Debug)]
pub struct PollerFile {
    id: String,
    instance: String,
    prefixes: String,
    log_dir: Option<PathBuf>,
    log_sizes: Option<(String, String)>,
    bus_extra: String,
    fast_failure: bool,
    receivers: String,
    extra: String,
}

impl PollerFile {
    /// The log in `{root}/log` (1 MiB segments, 64 MiB budget), reconnects after 50-200 ms,
    /// the bus transport at its defaults but for `rtt_ms = 1`; no prefix, no receiver.
    pub fn new(id: &str, instance: &str) -> Self {
        Self {
            id: id.to_string(),
            instance: instance.to_string(),
            prefixes: String::new(),
            log_dir: None,
            log_sizes: Some(("1MiB".into(), "64MiB".into())),
            bus_extra: String::new(),
            fast_failure: false,
            receivers: String::new(),
            extra: String::new(),
        }
    }

    pub fn prefix(mut self, cidr: &str, tenant: u32) -> Self {
        let _ = write!(
            self.prefixes,
            "[[prefix]]\ncidr = \"{cidr}\"\ntenant = {tenant}\n"
        );
        self
    }

    /// The log's directory (absolute) instead of `{root}/log`.
    pub fn log_dir(mut self, dir: PathBuf) -> Self {
        self.log_dir = Some(dir);
        self
    }

    /// Log segment and budget sizes; `None`: the defaults.
    pub fn log_sizes(mut self, sizes: Option<(&str, &str)>) -> Self {
        self.log_sizes = sizes.map(|(s, b)| (s.to_string(), b.to_string()));
        self
    }

    /// More keys in `[bus]`.
    pub fn bus(mut self, keys: &str) -> Self {
        self.bus_extra.push_str(keys);
        self.bus_extra.push('\n');
        self
    }

    /// Keep-alive 200 ms, idle timeout 1 s: a lost link is noticed quickly.
    pub fn fast_failure(mut self) -> Self {
        self.fast_failure = true;
        self
    }

    /// A `[[receiver]]`, in file order.
    pub fn receiver(mut self, peer: &str, role: &str, addr: SocketAddr) -> Self {
        let _ = write!(
            self.receivers,
            "[[receiver]]\npeer = \"{peer}\"\nrole = \"{role}\"\naddress = \"{addr}\"\n"
        );
        self
    }

    /// A `[[receiver]]` with its failover `order`.
    pub fn ordered_receiver(self, peer: &str, role: &str, addr: SocketAddr, order: u32) -> Self {
        let mut s = self.receiver(peer, role, addr);
        let _ = writeln!(s.receivers, "order = {order}");
        s
    }

    /// More TOML at the end of the file (prefixes, ports, thresholds, intervals).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self
    }

    pub fn text(&self, root: &Path) -> String {
        let Self { id, instance, .. } = self;
        let r = root.display();
        let log = self
            .log_dir
            .clone()
            .unwrap_or_else(|| root.join("log"))
            .display()
            .to_string();
        let sizes = match &self.log_sizes {
            Some((segment, budget)) => format!("segment = \"{segment}\"\nbudget = \"{budget}\"\n"),
            None => String::new(),
        };
        let transport = if self.fast_failure {
            "keep_alive_ms = 200\nidle_timeout_ms = 1000\n"
        } else {
            ""
        };
        format!(
            r#"
poller_id = "{id}"
interface = "lo"
instance = "{instance}"
daemon = []
{prefixes}[log]
dir = "{log}"
{sizes}[ingest]
http = "off"
unix = "off"
[metrics]
listen = "off"
[bus]
cert = "{r}/certs/{id}.pem"
key = "{r}/certs/{id}.key"
ca = "{r}/ca/ca.pem"
{bus_extra}reconnect_min = "50ms"
reconnect_max = "200ms"
[bus.transport]
{transport}rtt_ms = 1
{receivers}{extra}
"#,
            prefixes = self.prefixes,
            bus_extra = self.bus_extra,
            receivers = self.receivers,
            extra = self.extra,
        )
    }

    pub fn build(&self, root: &Path) -> PollerConfig {
        PollerConfig::from_toml(&self.text(root), "poller.toml", root).expect("valid poller config")
    }
}

/// Appends [`event_record`]`(tenant, n, label)` for `n` in `from..to`: record numbers are log
/// positions.
pub fn append_events(log: &Log, tenant: u32, label: &str, from: u64, to: u64) {
    for n in from..to {
        let rec = encode_record(&event_record(tenant, n, label)).unwrap();
        let seq = log.append(RecordClass::Event, &rec).unwrap();
        assert_eq!(
            seq,
            Appended::Durable(n),
            "the log's positions are the record numbers"
        );
    }
}

/// Every event in the receiver's file of `tenant`, following the pages.
pub fn stored_events(rx: &RunningReceiver, tenant: u32) -> Vec<StoredEvent> {
    let db = rx.shared.store.tenant(TenantId(tenant)).unwrap();
    let mut out = Vec::new();
    let mut page = PageRequest::first(1000);
    loop {
        let p = db.events(&EventFilter::default(), &page).unwrap();
        out.extend(p.items);
        match p.next {
            Some(c) => page.after = Some(c),
            None => return out,
        }
    }
}

/// Starts the poller's bus on the current runtime.
pub fn start_bus(cfg: &PollerConfig, log: &Arc<Log>) -> (Bus, Shutdown) {
    let stop = Shutdown::new();
    let bus = bus::start(
        cfg,
        log.clone(),
        stop.clone(),
        &tokio::runtime::Handle::current(),
    )
    .unwrap()
    .expect("a receiver is configured");
    (bus, stop)
}

pub async fn stop_bus(bus: Bus, stop: Shutdown) {
    stop.trigger();
    tokio::time::timeout(Duration::from_secs(10), bus.join())
        .await
        .expect("bus tasks end on stop");
}

/// Polls `f` every 5 ms until it holds (panics after `timeout`); returns how long it took.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// [`wait_for`] for a test thread outside the runtime.
pub fn wait_for_sync(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// The config push tests' estate: a poller of tenants [`PUSH_TENANTS`] and two primaries,
/// `main` (order 1) and `red` (order 2).
pub const PUSH_TENANTS: [u32; 2] = [4, 5];
/// The poller's own file's prefixes.
pub const PUSH_BASE: &str = "[[prefix]]\ncidr = \"198.18.0.0/24\"\ntenant = 4\n";
/// A first push: a prefix of the second tenant, TCP check ports, a threshold.
pub const PUSH_V1: &str = "[[prefix]]\ncidr = \"198.18.0.0/24\"\ntenant = 4\n[[prefix]]\ncidr = \"198.19.1.0/24\"\ntenant = 5\n[ports]\ntcp_checks = [22, 443]\n[thresholds]\ndown_after = 5\n";

/// [`pki`] with the push estate's certificates.
pub fn push_pki(prefix: &str, poller: &str, main: &str, red: &str) -> Pki {
    pki(
        prefix,
        &[
            (poller, PeerRole::Poller, &PUSH_TENANTS),
            (main, PeerRole::Primary, &[]),
            (red, PeerRole::Primary, &[]),
        ],
    )
}

/// A primary of the push estate (`poller` registered).
pub fn push_primary(id: &str, poller: &str) -> ReceiverFile {
    ReceiverFile::new(id, "primary").poller(poller, &PUSH_TENANTS)
}

/// The push estate's poller file (no prefix: the pushed text brings them).
pub fn push_poller(
    poller: &str,
    instance: &str,
    main: (&str, SocketAddr),
    red: (&str, SocketAddr),
) -> PollerFile {
    PollerFile::new(poller, instance)
        .ordered_receiver(main.0, "primary", main.1, 1)
        .ordered_receiver(red.0, "primary", red.1, 2)
}

/// What the fake kernel's maps hold, and how often they were written.
#[derive(Debug, Default)]
pub struct Maps {
    pub prefixes: Vec<MonitoredPrefix>,
    pub ports: PortConfig,
    pub tcp_ports: Vec<u16>,
    pub writes: u64,
    /// `set_ports` fails while set.
    pub fail_ports: bool,
}

/// A kernel that polls nothing and records what the config setters put in its maps.
#[derive(Clone, Default)]
pub struct MapsKernel(pub Arc<Mutex<Maps>>);

impl MapsKernel {
    pub fn maps<T>(&self, f: impl FnOnce(&Maps) -> T) -> T {
        f(&self.0.lock().unwrap())
    }

    /// Whether the prefix map holds `cidr` for `tenant`.
    pub fn has_prefix(&self, cidr: &str, tenant: u32) -> bool {
        let want: MonitoredPrefix = format!("{cidr}={tenant}").parse().unwrap();
        self.maps(|m| {
            m.prefixes.iter().any(|p| {
                (p.vlan, p.addr, p.len, p.tenant) == (want.vlan, want.addr, want.len, tenant)
            })
        })
    }
}

impl KernelSource for MapsKernel {
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

/// A running poller pipeline, bus included (started as `opha-sidecar poller` starts it, on a
/// [`MapsKernel`]); shut down on drop.
pub struct Poller {
    pipeline: Option<Pipeline>,
    pub kernel: MapsKernel,
}

impl Poller {
    pub fn start(rt: &tokio::runtime::Runtime, local: PollerConfig) -> Self {
        let (cfg, version) = effective_config(local).unwrap();
        let kernel = MapsKernel::default();
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
                decode: DecodeContext::new(cfg.poller_id.as_str()),
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

    pub fn pipeline(&self) -> &Pipeline {
        self.pipeline.as_ref().unwrap()
    }

    /// The config version it runs.
    pub fn version(&self) -> u64 {
        self.pipeline().live_config().version()
    }

    pub fn stop(mut self) {
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
