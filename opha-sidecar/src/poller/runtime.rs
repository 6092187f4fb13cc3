//! Start-up and the running pipeline.
//!
//! [`run`] is `opha-sidecar poller --config FILE`: load and check everything that can be
//! wrong before touching the kernel (config, inventory, listeners, the log and the
//! aggregator's checkpoint), then load and attach the data plane, start the tasks, and wait
//! for SIGINT/SIGTERM. Every start-up error names the config key it comes from.
//!
//! [`Pipeline`] is the running part, generic over its kernel and ring sources so that tests
//! drive it with fakes:
//!
//! | task | runs on | does |
//! | --- | --- | --- |
//! | ring | thread `opha-ring` | ring buffer -> decode -> log -> commit ([`super::ring`]) |
//! | aggregate | thread `opha-aggregate` | sweep + snapshot -> aggregator -> checkpoint -> log ([`super::aggregate`]) |
//! | heartbeat | thread `opha-heartbeat` | daemon checks, `DaemonHealth`, `PeerStatus`, log alarms ([`super::heartbeat`]) |
//! | ingest | tokio | HTTP on TCP and a Unix socket; 2xx once durable ([`crate::ingest`]) |
//! | metrics | tokio | Prometheus text, `/v1/log` ([`super::metrics`]) |
//!
//! Blocking work (log appends, which wait for fsync; kernel map reads; daemon checks) happens
//! on the three threads or on tokio's blocking pool, never on the async workers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, anyhow, bail};
use opha_common::wire::{NodeRef, Record, TenantId};
use opha_log::Log;
use tokio::net::{TcpListener, UnixListener};

use super::{
    aggregate::{AggregateSettings, AggregateTask, Resume},
    heartbeat::{HeartbeatSettings, HeartbeatTask, recovery_event},
    metrics,
    ring::{RingSettings, RingTask},
    shared::Shared,
    shutdown::Shutdown,
    source::{Clock, KernelSource, RingSource, SystemClock},
};
use crate::{
    config::PollerConfig,
    daemons::{DaemonMonitor, PeerStatusBuilder},
    decode::DecodeContext,
    ingest::{IngestConfig, IngestServer, LogSink, NodeResolver, TenantPolicy},
    inventory::Inventory,
    loader::{DataPlane, LoaderConfig},
    ring::RingReader,
};

/// Worker threads of the tokio runtime: the async part (HTTP) is light, appends are blocking.
pub const WORKER_THREADS: usize = 2;

/// The sockets, bound before anything else so that a port in use fails the start cleanly.
#[derive(Default)]
pub struct Listeners {
    pub ingest_tcp: Option<TcpListener>,
    pub ingest_unix: Option<UnixListener>,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn ingest_addr(&self) -> Option<SocketAddr> {
        self.ingest_tcp.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds `[ingest]` and `[metrics]` (inside a tokio runtime).
pub async fn bind(cfg: &PollerConfig) -> anyhow::Result<Listeners> {
    let mut l = Listeners::default();
    if let Some(addr) = cfg.ingest.http {
        let bound = if cfg.ingest.allow_remote {
            TcpListener::bind(addr).await
        } else {
            crate::ingest::bind_tcp(addr).await
        };
        l.ingest_tcp =
            Some(bound.with_context(|| format!("ingest.http: cannot listen on {addr}"))?);
    }
    if let Some(path) = cfg.ingest_socket() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("ingest.unix: creating the directory {}", parent.display())
            })?;
        }
        l.ingest_unix = Some(
            crate::ingest::bind_unix(&path, 0o660)
                .with_context(|| format!("ingest.unix: cannot listen on {}", path.display()))?,
        );
    }
    if let Some(addr) = cfg.metrics.listen {
        l.metrics = Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("metrics.listen: cannot listen on {addr}"))?,
        );
    }
    Ok(l)
}

/// Opens (and recovers) the replay log. A damaged log is repaired by recovery and reported;
/// only I/O errors and a second owner fail.
pub fn open_log(cfg: &PollerConfig) -> anyhow::Result<Arc<Log>> {
    let dir = cfg.log_dir();
    let log = Log::open(cfg.log_config()).map_err(|e| match e {
        opha_log::Error::Locked { .. } => anyhow!(
            "log.dir: {} is in use by another process (another poller with this log directory?)",
            dir.display()
        ),
        e => anyhow!("log.dir: opening the replay log in {}: {e}", dir.display()),
    })?;
    Ok(Arc::new(log))
}

/// Loads `inventory` (if configured) against the monitored prefixes.
pub fn load_inventory(cfg: &PollerConfig) -> anyhow::Result<Option<Arc<Inventory>>> {
    let Some(path) = &cfg.inventory else {
        return Ok(None);
    };
    let inv =
        Inventory::load(path, &cfg.monitored_prefixes()).map_err(|e| anyhow!("inventory: {e}"))?;
    for w in inv.warnings() {
        log::warn!("inventory: {w}");
    }
    Ok(Some(Arc::new(inv)))
}

/// The configured interface exists in this process's network namespace.
pub fn check_interface(cfg: &PollerConfig) -> anyhow::Result<()> {
    let iface = &cfg.interface;
    // if_nametoindex asks the kernel in this process's network namespace (/sys/class/net
    // shows the namespace sysfs was mounted in, not necessarily ours).
    let exists = std::ffi::CString::new(iface.as_str())
        // SAFETY: a valid NUL-terminated string.
        .map(|c| unsafe { libc::if_nametoindex(c.as_ptr()) } != 0)
        .unwrap_or(false);
    if !exists {
        bail!("interface: there is no network interface named {iface:?} in this network namespace");
    }
    Ok(())
}

/// Loads, configures and attaches the kernel programs; returns the data plane and a reader of
/// its ring buffer.
pub fn dataplane(cfg: &PollerConfig) -> anyhow::Result<(DataPlane, RingReader)> {
    check_interface(cfg)?;
    let iface = &cfg.interface;
    let lc: LoaderConfig = cfg.loader_config();
    let mut dp = DataPlane::load(&lc).map_err(|e| {
        anyhow!(
            "kernel: loading the programs (instance {:?}, pins in {}): {e}",
            lc.instance,
            lc.pin_dir().display()
        )
    })?;
    dp.set_prefixes(&cfg.monitored_prefixes())
        .map_err(|e| anyhow!("prefix: {e}"))?;
    dp.set_tcp_ports(&cfg.tcp_ports())
        .map_err(|e| anyhow!("ports.tcp_checks: {e}"))?;
    dp.set_ports(cfg.port_config())
        .map_err(|e| anyhow!("ports: {e}"))?;
    let ring = dp
        .ring_reader()
        .map_err(|e| anyhow!("kernel.ringbuf: {e}"))?;
    dp.attach(iface)
        .map_err(|e| anyhow!("interface: attaching to {iface}: {e}"))?;
    Ok((dp, ring))
}

/// Whose data ingested records are. The config has no key for it: with one tenant among the
/// prefixes, that tenant, fixed; with several, a request may name any of them and defaults to
/// the first prefix's.
pub fn tenant_policy(cfg: &PollerConfig) -> TenantPolicy {
    let tenants: BTreeSet<u32> = cfg.prefixes.iter().map(|p| p.tenant).collect();
    let first = cfg.prefixes.first().map_or(1, |p| p.tenant);
    if tenants.len() <= 1 {
        TenantPolicy::Fixed(TenantId(first))
    } else {
        TenantPolicy::FromRequest {
            default: TenantId(first),
            allowed: tenants.into_iter().map(TenantId).collect(),
        }
    }
}

/// Inventory lookup by name for ingest; a name used in two tenants resolves to nothing (the
/// request must then give the address).
pub fn resolver(inv: &Inventory) -> NodeResolver {
    let mut by_name: HashMap<String, Option<NodeRef>> = HashMap::new();
    for (key, info) in inv.iter() {
        let r = NodeRef::from_key(key, Some(info.name.clone()));
        by_name
            .entry(info.name.clone())
            .and_modify(|e| *e = None)
            .or_insert(Some(r));
    }
    Arc::new(move |name: &str| by_name.get(name).cloned().flatten())
}

/// Everything a pipeline is made of.
pub struct PipelineParts<K, R> {
    pub config: PollerConfig,
    pub log: Arc<Log>,
    pub kernel: K,
    pub ring: R,
    pub inventory: Option<Arc<Inventory>>,
    /// From [`super::aggregate::resume`], read before anything else appended.
    pub resume: Resume,
    pub listeners: Listeners,
    pub clock: Arc<dyn Clock>,
    pub decode: DecodeContext,
}

/// The running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    /// The running config and its pushed version ([`super::config_apply`]).
    live: Arc<super::config_apply::LiveConfig>,
    stop: Shutdown,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    servers: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    rt: tokio::runtime::Handle,
}

fn spawn_thread(
    name: &'static str,
    f: impl FnOnce() + Send + 'static,
) -> anyhow::Result<(&'static str, JoinHandle<()>)> {
    let h = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .with_context(|| format!("starting thread {name}"))?;
    Ok((name, h))
}

impl Pipeline {
    /// Starts every task. `rt` runs the servers.
    pub fn start<K, R>(
        parts: PipelineParts<K, R>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self>
    where
        K: KernelSource + 'static,
        R: RingSource + 'static,
    {
        Self::start_inner(parts, rt, None)
    }

    /// A mirror's pipeline (docs/mirror.md): every task as for a poller except the bus, which
    /// the mirror's driver starts when it is promoted ([`super::bus::start_at`]); the
    /// aggregate task takes hand-over requests from `handover`.
    pub fn start_mirror<K, R>(
        parts: PipelineParts<K, R>,
        rt: &tokio::runtime::Handle,
        handover: std::sync::mpsc::Receiver<super::aggregate::HandoverRequest>,
        control: crate::mirror::MirrorControl,
    ) -> anyhow::Result<Self>
    where
        K: KernelSource + 'static,
        R: RingSource + 'static,
    {
        Self::start_inner(parts, rt, Some((handover, control)))
    }

    fn start_inner<K, R>(
        parts: PipelineParts<K, R>,
        rt: &tokio::runtime::Handle,
        mirror: Option<(
            std::sync::mpsc::Receiver<super::aggregate::HandoverRequest>,
            crate::mirror::MirrorControl,
        )>,
    ) -> anyhow::Result<Self>
    where
        K: KernelSource + 'static,
        R: RingSource + 'static,
    {
        let cfg = parts.config;
        let shared = Arc::new(Shared::new(cfg.poller_id.clone(), parts.log.clone()));
        let stop = Shutdown::new();
        // Config pushes reach the aggregate task (kernel maps, aggregator) and the heartbeat.
        let (config_tx, config_rx) = std::sync::mpsc::channel();
        let heartbeat_slot = Arc::new(std::sync::Mutex::new(None));
        let live = Arc::new(super::config_apply::LiveConfig::new(
            cfg.clone(),
            super::config_apply::running_version(&cfg),
            super::config_apply::pushed_path(&cfg),
            Box::new(super::config_apply::PipelineTarget {
                aggregate: config_tx,
                heartbeat: heartbeat_slot.clone(),
            }),
        ));
        let mut pipeline = Self {
            live: live.clone(),
            shared: shared.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
            servers: Vec::new(),
            rt: rt.clone(),
        };

        // The bus before any task appends: its epoch is bumped and persisted first. A
        // mirror's starts when it is promoted.
        let bus = match mirror {
            Some(_) => None,
            None => super::bus::start(&cfg, parts.log.clone(), stop.clone(), rt)?,
        };
        if let Some(bus) = bus {
            let _ = bus.status.config.set(live.clone());
            let _ = shared.bus.set(bus.status.clone());
            pipeline
                .servers
                .extend(bus.tasks.into_iter().map(|t| ("bus", t)));
        }

        // The heartbeat task first: it carries the log's recovery event, the first record of
        // this run.
        let monitor = DaemonMonitor::new(
            cfg.daemon_specs(),
            cfg.daemon_health.proc_root.clone(),
            cfg.tracker_config(),
            cfg.poller_id.clone(),
            super::durable::random_u64(),
            parts.clock.wall_ms(),
        );
        let mut hb = HeartbeatTask::new(
            shared.clone(),
            monitor,
            PeerStatusBuilder::poller(cfg.poller_id.clone(), cfg.region.clone()),
            parts.clock.clone(),
            HeartbeatSettings {
                heartbeat: cfg.intervals.heartbeat,
                daemon_interval: cfg.daemon_health.interval,
                max_queue: 10_000,
                thin_keep_every: cfg.log.thin_keep_every,
            },
        )
        .with_config_updates(heartbeat_slot);
        if let Some(ev) = recovery_event(parts.log.recovery(), &shared) {
            hb.enqueue(Record::Event(ev));
        }
        let s = stop.clone();
        // Started last below would delay the recovery event behind the others: start it
        // now, the others follow within microseconds.
        pipeline
            .threads
            .push(spawn_thread("opha-heartbeat", move || hb.run(&s))?);

        let agg = AggregateTask::new(
            parts.kernel,
            shared.clone(),
            cfg.aggregate_config(),
            parts.resume,
            parts.inventory.clone(),
            cfg.log_dir(),
            parts.clock.clone(),
            AggregateSettings::new(cfg.intervals.sweep, cfg.intervals.poll_timeout),
        )
        .with_config_updates(config_rx);
        let agg = match mirror {
            Some((rx, control)) => agg.with_handover(rx, control),
            None => agg,
        };
        let s = stop.clone();
        pipeline
            .threads
            .push(spawn_thread("opha-aggregate", move || agg.run(&s))?);

        let ring = RingTask::new(
            parts.ring,
            shared.clone(),
            parts.decode,
            parts.inventory.clone(),
            RingSettings::default(),
        );
        let s = stop.clone();
        pipeline
            .threads
            .push(spawn_thread("opha-ring", move || ring.run(&s))?);

        let mut icfg = IngestConfig::new(TenantId(cfg.prefixes.first().map_or(1, |p| p.tenant)));
        icfg.tenants = tenant_policy(&cfg);
        icfg.max_body_bytes = usize::try_from(cfg.ingest.max_body).unwrap_or(usize::MAX);
        icfg.resolver = parts.inventory.as_deref().map(resolver);
        let server = IngestServer::new(icfg, LogSink::new(parts.log.clone()));
        *super::shared::lock(&shared.ingest) = Some(server.clone());
        let listeners = parts.listeners;
        if let Some(l) = listeners.ingest_tcp {
            let (srv, s) = (server.clone(), stop.clone());
            pipeline.servers.push((
                "ingest http",
                rt.spawn(async move {
                    if let Err(e) = srv.serve_tcp(l, async move { s.wait().await }).await {
                        log::error!("ingest http: {e}");
                    }
                }),
            ));
        }
        if let Some(l) = listeners.ingest_unix {
            let (srv, s) = (server.clone(), stop.clone());
            pipeline.servers.push((
                "ingest unix",
                rt.spawn(async move {
                    if let Err(e) = srv.serve_unix(l, async move { s.wait().await }).await {
                        log::error!("ingest unix socket: {e}");
                    }
                }),
            ));
        }
        if let Some(l) = listeners.metrics {
            let (sh, s) = (shared.clone(), stop.clone());
            pipeline
                .servers
                .push(("metrics", rt.spawn(metrics::serve(l, sh, s))));
        }
        Ok(pipeline)
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The running config and its pushed version.
    pub fn live_config(&self) -> &Arc<super::config_apply::LiveConfig> {
        &self.live
    }

    /// A handle that stops the pipeline (e.g. from a signal handler).
    pub fn stop_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Stops intake, lets appends in flight finish (ingest requests get their answer, the ring
    /// and aggregate tasks finish their batch), joins every task and closes the log. Call from
    /// outside the runtime. Pins and programs stay.
    pub fn shutdown(self) {
        self.stop.trigger();
        let Self {
            shared,
            threads,
            servers,
            rt,
            ..
        } = self;
        rt.block_on(async {
            for (name, h) in servers {
                if let Err(e) = h.await {
                    log::error!("{name} ended abnormally: {e}");
                }
            }
        });
        for (name, h) in threads {
            if h.join().is_err() {
                log::error!("task {name} panicked");
            }
        }
        // The ingest server holds a log handle; the last handle dropped flushes and closes.
        super::shared::lock(&shared.ingest).take();
        drop(shared);
    }
}

/// `opha-sidecar poller --config FILE [--check]`.
pub fn run(path: &Path, check_only: bool) -> anyhow::Result<()> {
    let cfg = PollerConfig::load(path)?;
    // The last pushed config's live keys over the local file (docs/configuration.md).
    let (cfg, _version) = super::config_apply::effective_config(cfg)?;
    let inventory = load_inventory(&cfg)?;
    if check_only {
        let text = cfg
            .to_toml()
            .map_err(|e| anyhow!("rendering the effective config: {e}"))?;
        print!("{text}");
        eprintln!(
            "{}: ok ({} prefixes{})",
            path.display(),
            cfg.prefixes.len(),
            inventory
                .as_ref()
                .map(|i| format!(", {} inventory nodes", i.len()))
                .unwrap_or_default()
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .thread_name("opha-rt")
        .build()
        .context("starting the tokio runtime")?;
    // Signals first: a SIGTERM during start-up then stops the pipeline cleanly once started.
    let signals = rt.block_on(async { Signals::new() })?;
    check_interface(&cfg)?;
    // The log first: its lock keeps a second poller with the same config from going further
    // (binding the Unix socket would take over the running poller's socket path).
    let log = open_log(&cfg)?;
    let resume = super::aggregate::resume(&log, &cfg.log_dir())
        .map_err(|e| anyhow!("log.dir: reading the aggregator checkpoint: {e}"))?;
    let listeners = rt.block_on(bind(&cfg))?;
    let (dp, ring) = dataplane(&cfg)?;
    let (maddr, iaddr) = (listeners.metrics_addr(), listeners.ingest_addr());
    let pipeline = Pipeline::start(
        PipelineParts {
            decode: DecodeContext::new(cfg.poller_id.as_str()),
            log: log.clone(),
            kernel: dp,
            ring,
            inventory,
            resume,
            listeners,
            clock: Arc::new(SystemClock),
            config: cfg.clone(),
        },
        rt.handle(),
    )?;
    drop(log);
    log::info!(
        "poller {} running on {} (instance {}, log {}, metrics {}, ingest {})",
        cfg.poller_id.as_str(),
        cfg.interface,
        cfg.instance(),
        cfg.log_dir().display(),
        maddr.map_or("off".into(), |a| a.to_string()),
        iaddr.map_or("off".into(), |a| a.to_string()),
    );
    let stop = pipeline.stop_handle();
    rt.block_on(signals.wait(stop));
    log::info!("stopping: finishing appends in flight; programs stay attached, maps pinned");
    pipeline.shutdown();
    log::info!("stopped");
    Ok(())
}

/// SIGINT and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Waits for the first signal and triggers `stop`; a second signal exits at once (safe:
    /// everything acknowledged is durable, the rest is recovered at the next start).
    async fn wait(mut self, stop: Shutdown) {
        tokio::select! {
            _ = self.int.recv() => log::info!("SIGINT"),
            _ = self.term.recv() => log::info!("SIGTERM"),
        }
        stop.trigger();
        tokio::spawn(async move {
            tokio::select! {
                _ = self.int.recv() => {}
                _ = self.term.recv() => {}
            }
            log::warn!("second signal: exiting now");
            std::process::exit(130);
        });
    }
}
