//! The poller's side of config push: the running config and its version, applying a pushed
//! one live, and persisting it so that a restart runs it.
//!
//! [`LiveConfig::handle`] takes one push (its fencing already checked by the bus link,
//! [`super::bus::config`]) and answers it:
//! 1. [`crate::config::push::decide`]: ignore an old version, reject an invalid config or a
//!    change that cannot be applied live (the reason names the keys);
//! 2. apply the plan through an [`ApplyTarget`]: in the pipeline that is the aggregate task
//!    (kernel maps through [`super::KernelSource`]'s setters, without reattaching; the
//!    aggregator's settings swapped between two ticks) and then the heartbeat task (daemons,
//!    region, heartbeat). All or nothing: a kernel map that fails to update puts the maps
//!    already changed back, and the answer is "rejected" with the reason;
//! 3. persist `<log.dir>/pushed-config.toml` (version, term, primary, text; temp file, fsync,
//!    rename, directory fsync); if that fails the live change is undone and the push rejected,
//!    so what runs is always what a restart would run;
//! 4. answer applied.
//!
//! Pushes are handled one at a time (a lock), whichever primary link they come from.
//!
//! # At start
//! [`effective_config`]: the local `--config` file, with the live keys (prefixes, ports,
//! intervals, thresholds, daemons, daemon health, region) of the last pushed config laid over
//! it. Keys that cannot change live always come from the local file.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use opha_bus::config_push::{ConfigOutcome, ConfigPush, ConfigResult, bounded_reason};
use serde::{Deserialize, Serialize};

use super::shared::lock;
use crate::config::PollerConfig;
use crate::config::push::{ConfigPlan, Decision, decide, parse_pushed};

/// File name of the persisted push in the log directory.
pub const PUSHED_FILE: &str = "pushed-config.toml";

/// What is persisted of the last applied push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushedFile {
    pub version: u64,
    /// Fencing term and primary it came with (for the operator).
    pub term: u64,
    pub primary: String,
    /// The pushed config text, as received.
    pub config: String,
}

pub fn pushed_path(cfg: &PollerConfig) -> PathBuf {
    cfg.log_dir().join(PUSHED_FILE)
}

/// Reads the persisted push, if any.
pub fn load_pushed(path: &Path) -> anyhow::Result<Option<PushedFile>> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// Writes the push durably: after a crash the file holds the old push or the new one.
pub fn store_pushed(path: &Path, p: &PushedFile) -> anyhow::Result<()> {
    let text = toml::to_string(p)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("toml.tmp");
    let write = || -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// `local` with the live keys of `pushed` laid over it.
pub fn overlay(local: &PollerConfig, pushed: &PollerConfig) -> PollerConfig {
    let mut c = local.clone();
    c.prefixes = pushed.prefixes.clone();
    c.ports = pushed.ports.clone();
    c.intervals = pushed.intervals.clone();
    c.thresholds = pushed.thresholds.clone();
    c.daemon_health = pushed.daemon_health.clone();
    c.daemons = pushed.daemons.clone();
    c.region = pushed.region.clone();
    c
}

/// The config a poller starts with and its version: the local file alone (version 0), or
/// with the last push laid over it. A persisted push that no longer fits the local file
/// (its keys now break a rule with the file's) is logged and left out: the poller runs its
/// file, and the primary pushes again on reconnect (and sees the rejection's reason).
pub fn effective_config(local: PollerConfig) -> anyhow::Result<(PollerConfig, u64)> {
    let path = pushed_path(&local);
    let Some(p) = load_pushed(&path)? else {
        return Ok((local, 0));
    };
    let pushed = match parse_pushed(&p.config) {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "{}: pushed config version {} no longer parses ({e}); running the local file",
                path.display(),
                p.version
            );
            return Ok((local, 0));
        }
    };
    let merged = overlay(&local, &pushed);
    let problems = merged.validate();
    if !problems.is_empty() {
        let why: Vec<String> = problems.iter().map(ToString::to_string).collect();
        log::error!(
            "{}: pushed config version {} does not fit the local file ({}); running the local file",
            path.display(),
            p.version,
            why.join("; ")
        );
        return Ok((local, 0));
    }
    log::info!(
        "running pushed config version {} (term {}, from {}) over the local file",
        p.version,
        p.term,
        p.primary
    );
    Ok((merged, p.version))
}

/// The pushed version `cfg` runs: that of the persisted push when `cfg` carries its live
/// keys (as [`effective_config`] made it), else 0 (the local file).
pub fn running_version(cfg: &PollerConfig) -> u64 {
    let path = pushed_path(cfg);
    match load_pushed(&path) {
        Ok(Some(p)) => match parse_pushed(&p.config) {
            Ok(pushed) if overlay(cfg, &pushed) == *cfg => p.version,
            _ => 0,
        },
        Ok(None) => 0,
        Err(e) => {
            log::warn!("{e}");
            0
        }
    }
}

/// Where a plan is applied. All or nothing: on `Err` the target is as before.
pub trait ApplyTarget: Send + Sync {
    /// Takes the poller from `running` to `pushed`, as `plan` says.
    fn apply(
        &self,
        plan: &ConfigPlan,
        running: &PollerConfig,
        pushed: &PollerConfig,
    ) -> Result<(), String>;
}

/// Counters for the metrics.
#[derive(Debug, Default)]
pub struct ConfigCounters {
    pub applied: AtomicU64,
    pub current: AtomicU64,
    pub rejected: AtomicU64,
    /// Pushes refused by fencing (a primary that is not the active one, or an old term).
    pub not_active: AtomicU64,
}

struct Running {
    config: PollerConfig,
    version: u64,
}

/// The running config of a poller and its version; see the module docs.
pub struct LiveConfig {
    running: Mutex<Running>,
    /// The running version, for the primaries' views ([`super::bus::config`]).
    versions: tokio::sync::watch::Sender<u64>,
    path: PathBuf,
    target: Box<dyn ApplyTarget>,
    pub counters: ConfigCounters,
}

impl std::fmt::Debug for LiveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveConfig")
            .field("version", &self.version())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LiveConfig {
    /// `config` runs as `version` (from [`effective_config`]); pushes persist at `path`.
    pub fn new(
        config: PollerConfig,
        version: u64,
        path: PathBuf,
        target: Box<dyn ApplyTarget>,
    ) -> Self {
        Self {
            versions: tokio::sync::watch::channel(version).0,
            running: Mutex::new(Running { config, version }),
            path,
            target,
            counters: ConfigCounters::default(),
        }
    }

    pub fn version(&self) -> u64 {
        lock(&self.running).version
    }

    /// Changes of the running version.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.versions.subscribe()
    }

    pub fn config(&self) -> PollerConfig {
        lock(&self.running).config.clone()
    }

    /// A push refused by fencing: counted and answered.
    pub fn not_active(&self, push: &ConfigPush, why: &str) -> ConfigResult {
        self.counters.not_active.fetch_add(1, Ordering::Relaxed);
        ConfigResult {
            version: push.version,
            running: self.version(),
            outcome: ConfigOutcome::NotActive(bounded_reason(why)),
        }
    }

    /// A push from the active primary (blocking: kernel maps, fsync).
    pub fn handle(&self, push: &ConfigPush, primary: &str) -> ConfigResult {
        let mut r = lock(&self.running);
        let answer = |running: u64, outcome| ConfigResult {
            version: push.version,
            running,
            outcome,
        };
        match decide(&r.config, r.version, push.version, &push.config) {
            Decision::Current { running } => {
                self.counters.current.fetch_add(1, Ordering::Relaxed);
                answer(running, ConfigOutcome::AlreadyCurrent)
            }
            Decision::Reject(why) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "config push version {} from {primary} rejected, still running version {}: {why}",
                    push.version,
                    r.version
                );
                answer(r.version, ConfigOutcome::Rejected(bounded_reason(&why)))
            }
            Decision::Apply {
                version,
                config,
                plan,
            } => {
                if let Err(why) = self.target.apply(&plan, &r.config, &config) {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let why = format!("applying: {why}");
                    log::error!(
                        "config push version {version} from {primary} failed, still running version {}: {why}",
                        r.version
                    );
                    return answer(r.version, ConfigOutcome::Rejected(bounded_reason(&why)));
                }
                let file = PushedFile {
                    version,
                    term: push.term,
                    primary: primary.to_string(),
                    config: push.config.clone(),
                };
                if let Err(e) = store_pushed(&self.path, &file) {
                    // What runs must be what a restart runs: undo.
                    let undo = plan.undo(&r.config);
                    if let Err(u) = self.target.apply(&undo, &config, &r.config) {
                        log::error!("config push: undoing version {version}: {u}");
                    }
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    let why = format!("persisting: {e}");
                    return answer(r.version, ConfigOutcome::Rejected(bounded_reason(&why)));
                }
                log::info!(
                    "config version {version} from {primary} (term {}) applied: {}",
                    push.term,
                    if plan.changed.is_empty() {
                        "no change".to_string()
                    } else {
                        plan.changed.join(", ")
                    }
                );
                r.config = *config;
                r.version = version;
                self.versions.send_replace(version);
                self.counters.applied.fetch_add(1, Ordering::Relaxed);
                answer(version, ConfigOutcome::Applied)
            }
        }
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP opha_config_version Version of the pushed config running (0: the local file).\n# TYPE opha_config_version gauge\nopha_config_version {}",
            self.version()
        );
        let _ = writeln!(
            out,
            "# HELP opha_config_pushes_total Config pushes received, by outcome.\n# TYPE opha_config_pushes_total counter"
        );
        let c = &self.counters;
        for (outcome, v) in [
            ("applied", &c.applied),
            ("current", &c.current),
            ("rejected", &c.rejected),
            ("not_active", &c.not_active),
        ] {
            let _ = writeln!(
                out,
                "opha_config_pushes_total{{outcome=\"{outcome}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// A plan on its way to the aggregate task, which applies it between two ticks.
pub struct ApplyRequest {
    pub plan: ConfigPlan,
    /// The same parts at the running values (to put back what a failure left half done).
    pub undo: ConfigPlan,
    state: Arc<Mutex<RequestState>>,
    reply: mpsc::SyncSender<Result<(), String>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RequestState {
    Pending,
    Taken,
    Abandoned,
}

impl ApplyRequest {
    /// Claims the request; `false`: the sender gave up waiting (do not apply it).
    pub fn take(&self) -> bool {
        let mut s = lock(&self.state);
        if *s == RequestState::Pending {
            *s = RequestState::Taken;
            true
        } else {
            false
        }
    }

    pub fn reply(self, r: Result<(), String>) {
        let _ = self.reply.send(r);
    }
}

/// How long a push waits for the aggregate task to take its plan (it takes it within a few
/// tens of milliseconds unless a kernel read is stuck).
pub const APPLY_WAIT: Duration = Duration::from_secs(5);

/// The pipeline's [`ApplyTarget`]: the aggregate task (kernel maps, aggregator), then the
/// heartbeat task (which takes the new config at its next round).
pub struct PipelineTarget {
    pub aggregate: mpsc::Sender<ApplyRequest>,
    pub heartbeat: Arc<Mutex<Option<PollerConfig>>>,
}

impl ApplyTarget for PipelineTarget {
    fn apply(
        &self,
        plan: &ConfigPlan,
        running: &PollerConfig,
        pushed: &PollerConfig,
    ) -> Result<(), String> {
        let needs_task = plan.touches_kernel() || plan.aggregate.is_some() || plan.sweep.is_some();
        if needs_task {
            let state = Arc::new(Mutex::new(RequestState::Pending));
            let (tx, rx) = mpsc::sync_channel(1);
            let req = ApplyRequest {
                plan: plan.clone(),
                undo: plan.undo(running),
                state: state.clone(),
                reply: tx,
            };
            self.aggregate
                .send(req)
                .map_err(|_| "the aggregate task is not running".to_string())?;
            match rx.recv_timeout(APPLY_WAIT) {
                Ok(r) => r?,
                Err(_) => {
                    let mut s = lock(&state);
                    if *s == RequestState::Pending {
                        *s = RequestState::Abandoned;
                        return Err(format!(
                            "the aggregate task did not take the change within {APPLY_WAIT:?}"
                        ));
                    }
                    drop(s);
                    // Taken: it is being applied; its answer comes.
                    rx.recv()
                        .map_err(|_| "the aggregate task ended while applying".to_string())??;
                }
            }
        }
        if plan.heartbeat {
            *lock(&self.heartbeat) = Some(pushed.clone());
        }
        Ok(())
    }
}

/// One kernel map update of a plan (`None`: the plan leaves that map alone).
type KernelStep<K> = dyn Fn(&mut K, &ConfigPlan) -> Option<Result<(), String>>;

/// Applies the kernel part of `plan` to `k`, all or nothing: on an error the maps already
/// changed are put back to `undo`'s values.
pub fn apply_kernel<K: super::KernelSource + ?Sized>(
    k: &mut K,
    plan: &ConfigPlan,
    undo: &ConfigPlan,
) -> Result<(), String> {
    let steps: [&KernelStep<K>; 3] = [
        &|k, p| {
            p.prefixes
                .as_ref()
                .map(|v| k.set_prefixes(v).map_err(|e| format!("prefix: {e}")))
        },
        &|k, p| {
            p.tcp_ports.as_ref().map(|v| {
                k.set_tcp_ports(v)
                    .map_err(|e| format!("ports.tcp_checks: {e}"))
            })
        },
        &|k, p| {
            p.ports
                .map(|v| k.set_ports(v).map_err(|e| format!("ports: {e}")))
        },
    ];
    for (done, step) in steps.iter().enumerate() {
        if let Some(Err(e)) = step(k, plan) {
            for back in &steps[..done] {
                if let Some(Err(u)) = back(k, undo) {
                    log::error!("config push: putting a kernel map back: {u}");
                }
            }
            return Err(e);
        }
    }
    Ok(())
}
