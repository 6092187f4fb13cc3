//! The running mirror (docs/mirror.md, "Driver"): its own poller pipeline, fed and switched by
//! the promotion core.
//!
//! - [`Hook`]: what the mirror's receiver tells the core about the paired poller (connection
//!   up/down, every frame, every authorized record), the clock, the state and command files,
//!   and the `opha_mirror_*` metrics. Built by the receiver from `[mirror]`.
//! - [`MirrorDriver`]: the mirror's pipeline ([`Pipeline::start_mirror`]: every task of a
//!   poller, but no bus) and a thread that carries out the core's decisions:
//!   - **standby**: the pipeline's log is consumed locally (a cursor follows its head), so it
//!     stays far below its budget and nothing of it is ever sent;
//!   - **promote**: persist the state file; the aggregate task seeds its core with the
//!     reported node states between two polls and answers with the cut (the log's durable end
//!     then); the bus starts with one new epoch at the cut and every receiver's cursor there,
//!     so only what the mirror produced as the reporting side is sent;
//!   - **demote**: the aggregate task stops reporting and answers with its cut; the links are
//!     capped at the cut at once (on the task's thread, before its next poll) and stopped once
//!     every primary has acknowledged up to it (zero loss); their cursors are removed so they
//!     do not hold the log; the state file is persisted.
//!   - each tick: the operator's command file ([`super::control::take_request`]), the core's
//!     tick, the state file when it changed (at most once a second).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use opha_common::wire::{PeerId, Record};
use opha_log::Log;

use super::control::{self, MirrorControl, MirrorState};
use super::promotion::{Decision, Nanos, Role};
use crate::config::PollerConfig;
use crate::config::receiver::ReceiverFileConfig;
use crate::poller::aggregate::HandoverRequest;
use crate::poller::bus::{self, Bus, BusStatus, CURSOR_PREFIX, StartAt};
use crate::poller::{KernelSource, Pipeline, PipelineParts, RingSource, Shutdown};

/// How often the driver looks at the core, the command file and the log without being woken.
pub const TICK: Duration = Duration::from_millis(50);
/// The log cursor that follows the head while the mirror is standby.
pub const STANDBY_CURSOR: &str = "mirror:standby";
/// The state file is written at most this often when only the reported states changed.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// The receiver's side of the mirror; see the module docs.
pub struct Hook {
    /// The paired poller.
    pub poller: PeerId,
    pub control: MirrorControl,
    state_file: PathBuf,
    base: Instant,
    wake: Mutex<Option<mpsc::Sender<()>>>,
    /// The running bus while promoted (for the metrics).
    bus: Mutex<Option<Arc<BusStatus>>>,
    streaming: AtomicBool,
}

impl Hook {
    /// From `[mirror]` (none without it). Reads the state file.
    pub fn from_config(cfg: &ReceiverFileConfig) -> anyhow::Result<Option<Arc<Hook>>> {
        let Some(m) = &cfg.mirror else {
            return Ok(None);
        };
        let state_file = m.state_file(&cfg.store.dir);
        let saved =
            control::load_state(&state_file).map_err(|e| anyhow!("mirror.state_file: {e}"))?;
        Ok(Some(Arc::new(Self::new(
            m.poller.clone(),
            m.promotion_config(),
            saved,
            state_file,
        ))))
    }

    pub fn new(
        poller: PeerId,
        config: super::PromotionConfig,
        saved: MirrorState,
        state_file: PathBuf,
    ) -> Self {
        Self {
            poller,
            control: MirrorControl::new(config, saved, 0),
            state_file,
            base: Instant::now(),
            wake: Mutex::new(None),
            bus: Mutex::new(None),
            streaming: AtomicBool::new(false),
        }
    }

    /// The core's clock.
    pub fn now(&self) -> Nanos {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Where `opha-sidecar mirror promote|demote|auto` leaves its command.
    pub fn command_dir(&self) -> &Path {
        self.state_file.parent().unwrap_or(Path::new("."))
    }

    pub fn state_file(&self) -> &Path {
        &self.state_file
    }

    /// Whether `peer` is the paired poller.
    pub fn is_poller(&self, peer: &PeerId) -> bool {
        *peer == self.poller
    }

    fn decided(&self, decisions: Vec<Decision>) {
        if decisions.is_empty() {
            return;
        }
        for d in &decisions {
            log::info!(
                "mirror: {} for {} ({:?})",
                match d.role {
                    Role::Active => "promoted",
                    Role::Standby => "demoted",
                },
                self.poller,
                d.cause
            );
        }
        if let Some(w) = lock(&self.wake).as_ref() {
            let _ = w.send(());
        }
    }

    /// The poller's connection came up or went down.
    pub fn connected(&self, up: bool) {
        self.decided(self.control.poller_connected(up, self.now()));
    }

    /// A frame (hello, batch, heartbeat) arrived from the poller.
    pub fn seen(&self) {
        self.decided(self.control.poller_records(std::iter::empty(), self.now()));
    }

    /// A record of the poller's stream (authorized, decoded).
    pub fn record(&self, r: &Record) {
        self.decided(self.control.poller_records(std::iter::once(r), self.now()));
    }

    /// An operator command (API); the CLI goes through the command file.
    pub fn command(&self, cmd: super::Command) {
        self.decided(self.control.command(cmd, self.now()));
    }

    /// The `opha_mirror_*` metrics, and the mirror's bus while it streams.
    pub fn render(&self, out: &mut String) {
        self.control.render(self.poller.as_str(), self.now(), out);
        out.push_str(&format!(
            "# HELP opha_mirror_streaming 1 while the mirror's links to the primaries run (promoted, or draining after a demotion).\n# TYPE opha_mirror_streaming gauge\nopha_mirror_streaming{{poller=\"{}\"}} {}\n",
            self.poller.as_str(),
            u8::from(self.streaming.load(Ordering::Relaxed))
        ));
        if let Some(b) = lock(&self.bus).as_ref() {
            b.render(out);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the driver has carried out.
enum Applied {
    Standby,
    /// Seeded at `cut`; the bus runs (None: it could not start yet, retried each tick).
    Active {
        cut: u64,
        bus: Option<(Bus, Shutdown)>,
    },
    /// Demoted at `cut`: the links run until the primaries acknowledged up to it.
    Draining {
        cut: u64,
        bus: Bus,
        stop: Shutdown,
    },
}

/// A running mirror pipeline and its driver thread.
pub struct MirrorDriver {
    pipeline: Pipeline,
    stop: Shutdown,
    thread: Option<JoinHandle<()>>,
}

impl MirrorDriver {
    /// Starts the mirror's pipeline from `parts` (its `config` is the mirror's
    /// `poller_config`) and the driver. Blocking; call outside the runtime's workers.
    pub fn start<K, R>(
        hook: Arc<Hook>,
        parts: PipelineParts<K, R>,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self>
    where
        K: KernelSource + 'static,
        R: RingSource + 'static,
    {
        let cfg = parts.config.clone();
        if cfg.poller_id == hook.poller {
            bail!(
                "mirror.poller_config: poller_id must be the mirror's own peer id, not its poller's ({})",
                hook.poller
            );
        }
        let log = parts.log.clone();
        // Links of an earlier promotion (a mirror stopped while active) must not hold the log;
        // the next promotion registers them again at its cut.
        for name in log.cursors().keys() {
            if name.starts_with(CURSOR_PREFIX) {
                log.remove_cursor(name)
                    .with_context(|| format!("log.dir: removing cursor {name:?}"))?;
            }
        }
        log.add_cursor(STANDBY_CURSOR)
            .context("log.dir: the mirror's standby cursor")?;
        let (tx, rx) = mpsc::channel();
        let pipeline = Pipeline::start_mirror(parts, rt, rx, hook.control.clone())?;
        let (wake_tx, wake) = mpsc::channel();
        *lock(&hook.wake) = Some(wake_tx);
        let stop = Shutdown::new();
        let d = Driver {
            hook,
            cfg,
            log,
            handover: tx,
            rt: rt.clone(),
            wake,
            stop: stop.clone(),
            applied: Applied::Standby,
            saved: None,
        };
        let thread = std::thread::Builder::new()
            .name("opha-mirror".into())
            .spawn(move || d.run())
            .context("starting thread opha-mirror")?;
        Ok(Self {
            pipeline,
            stop,
            thread: Some(thread),
        })
    }

    /// `[mirror] poller_config` with the real data plane (`opha-sidecar mirror`). Blocking.
    pub fn start_from_file(
        hook: Arc<Hook>,
        path: &Path,
        rt: &tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        use crate::poller::runtime;
        let cfg = PollerConfig::load(path)
            .map_err(|e| anyhow!("mirror.poller_config {}: {e}", path.display()))?;
        let inventory = runtime::load_inventory(&cfg)?;
        runtime::check_interface(&cfg)?;
        let log = runtime::open_log(&cfg)?;
        let resume = crate::poller::aggregate::resume(&log, &cfg.log_dir())
            .map_err(|e| anyhow!("log.dir: reading the aggregator checkpoint: {e}"))?;
        let listeners = rt.block_on(runtime::bind(&cfg))?;
        let (dp, ring) = runtime::dataplane(&cfg)?;
        Self::start(
            hook,
            PipelineParts {
                decode: crate::decode::DecodeContext::new(cfg.poller_id.as_str()),
                log,
                kernel: dp,
                ring,
                inventory,
                resume,
                listeners,
                clock: Arc::new(crate::poller::SystemClock),
                config: cfg,
            },
            rt,
        )
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Stops the driver (its links stop; what they did not deliver stays in the log) and the
    /// pipeline. Call from outside the runtime.
    pub fn shutdown(mut self) {
        self.stop.trigger();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("mirror: the driver thread panicked");
        }
        self.pipeline.shutdown();
    }
}

struct Driver {
    hook: Arc<Hook>,
    cfg: PollerConfig,
    log: Arc<Log>,
    handover: mpsc::Sender<HandoverRequest>,
    rt: tokio::runtime::Handle,
    wake: mpsc::Receiver<()>,
    stop: Shutdown,
    applied: Applied,
    saved: Option<(MirrorState, Instant)>,
}

impl Driver {
    fn run(mut self) {
        while !self.stop.is_stopped() {
            self.step();
            let _ = self.wake.recv_timeout(TICK);
        }
        let bus = match std::mem::replace(&mut self.applied, Applied::Standby) {
            Applied::Active { bus, .. } => bus,
            Applied::Draining { bus, stop, .. } => Some((bus, stop)),
            Applied::Standby => None,
        };
        if let Some((bus, stop)) = bus {
            stop.trigger();
            self.rt.block_on(bus.join());
        }
        self.save(true);
    }

    fn step(&mut self) {
        let h = self.hook.clone();
        match control::take_request(h.command_dir()) {
            Ok(Some(cmd)) => {
                log::info!("mirror: operator command {cmd:?}");
                h.command(cmd);
            }
            Ok(None) => {}
            Err(e) => log::warn!("mirror: {e}"),
        }
        h.decided(h.control.tick(h.now()));
        let want = h.control.role();
        enum Act {
            Promote,
            Demote,
            RetryBus(u64),
            Drained,
            Nothing,
        }
        let act = match (&self.applied, want) {
            (Applied::Standby, Role::Active) => Act::Promote,
            (Applied::Active { .. }, Role::Standby) => Act::Demote,
            (Applied::Active { cut, bus: None }, Role::Active) if self.awaiting_bus() => {
                Act::RetryBus(*cut)
            }
            (Applied::Draining { cut, bus, .. }, _)
                if bus.status.links.iter().all(|l| l.cursor() >= *cut) =>
            {
                Act::Drained
            }
            _ => Act::Nothing,
        };
        match act {
            Act::Promote => {
                if let Err(e) = self.promote() {
                    log::error!("mirror: promotion not carried out yet: {e:#}");
                }
            }
            Act::Demote => {
                if let Err(e) = self.demote() {
                    log::error!("mirror: demotion not carried out yet: {e:#}");
                }
            }
            Act::RetryBus(cut) => match self.start_bus(cut) {
                Ok(b) => self.applied = Applied::Active { cut, bus: b },
                Err(e) => log::error!("mirror: starting the links to the primaries: {e:#}"),
            },
            Act::Drained => self.drained(),
            Act::Nothing => {}
        }
        // Standby (or streaming): nothing below the head is needed locally; only a
        // promotion whose links did not start yet keeps its cut.
        if !self.awaiting_bus() {
            let head = self.log.durable_next_seq();
            if let Err(e) = self.log.set_cursor(STANDBY_CURSOR, head) {
                log::warn!("mirror: moving the standby cursor: {e}");
            }
        }
        self.save(false);
    }

    /// Promoted, and the links to the configured primaries did not start yet.
    fn awaiting_bus(&self) -> bool {
        matches!(self.applied, Applied::Active { bus: None, .. }) && !self.cfg.receivers.is_empty()
    }

    /// Asks the aggregate task and waits for its answer (or the stop).
    fn ask(
        &self,
        make: impl FnOnce(crate::poller::aggregate::HandoverReply) -> HandoverRequest,
        on_cut: impl FnOnce(u64) + Send + 'static,
    ) -> anyhow::Result<u64> {
        let (tx, rx) = mpsc::channel();
        let reply: crate::poller::aggregate::HandoverReply = Box::new(move |r| {
            if let Ok(cut) = r {
                on_cut(cut);
            }
            let _ = tx.send(r);
        });
        self.handover
            .send(make(reply))
            .map_err(|_| anyhow!("the aggregate task is gone"))?;
        loop {
            match rx.recv_timeout(TICK) {
                Ok(r) => return r.map_err(|e| anyhow!(e)),
                Err(mpsc::RecvTimeoutError::Timeout) if !self.stop.is_stopped() => {}
                Err(_) => bail!("stopping"),
            }
        }
    }

    fn promote(&mut self) -> anyhow::Result<()> {
        let h = self.hook.clone();
        // Durable before anything is sent: a restart knows it reported.
        control::store_state(h.state_file(), &h.control.saved()).map_err(|e| anyhow!(e))?;
        let states = h.control.states();
        let cut = self.ask(|r| HandoverRequest::Promote(states, r), |_| {})?;
        log::info!("mirror: reporting for {} from log position {cut}", h.poller);
        self.applied = Applied::Active { cut, bus: None };
        let bus = self.start_bus(cut)?;
        self.applied = Applied::Active { cut, bus };
        Ok(())
    }

    fn start_bus(&mut self, cut: u64) -> anyhow::Result<Option<(Bus, Shutdown)>> {
        let stop = Shutdown::new();
        let bus = bus::start_at(
            &self.cfg,
            self.log.clone(),
            stop.clone(),
            &self.rt,
            StartAt::Head(cut),
        )?;
        match bus {
            Some(b) => {
                *lock(&self.hook.bus) = Some(b.status.clone());
                self.hook.streaming.store(true, Ordering::Relaxed);
                Ok(Some((b, stop)))
            }
            None => {
                log::warn!(
                    "mirror: promoted, but mirror.poller_config has no [[receiver]]: nothing is sent"
                );
                Ok(None)
            }
        }
    }

    fn demote(&mut self) -> anyhow::Result<()> {
        let links = match &self.applied {
            Applied::Active {
                bus: Some((b, _)), ..
            } => b.status.links.clone(),
            _ => Vec::new(),
        };
        let cut = self.ask(HandoverRequest::Demote, move |cut| {
            for l in &links {
                l.limit.store(cut, Ordering::Relaxed);
            }
        })?;
        log::info!(
            "mirror: no longer reporting for {}: draining the links up to log position {cut}",
            self.hook.poller
        );
        match std::mem::replace(&mut self.applied, Applied::Standby) {
            Applied::Active {
                bus: Some((bus, stop)),
                ..
            } => self.applied = Applied::Draining { cut, bus, stop },
            _ => self.drained(),
        }
        Ok(())
    }

    /// Every primary has what the mirror reported: stop the links, release their cursors.
    fn drained(&mut self) {
        if let Applied::Draining { bus, stop, .. } =
            std::mem::replace(&mut self.applied, Applied::Standby)
        {
            stop.trigger();
            let names: Vec<String> = bus
                .status
                .links
                .iter()
                .map(|l| bus::cursor_name(&l.receiver.peer))
                .collect();
            self.rt.block_on(bus.join());
            for n in names {
                if let Err(e) = self.log.remove_cursor(&n) {
                    log::warn!("mirror: removing log cursor {n:?}: {e}");
                }
            }
        }
        *lock(&self.hook.bus) = None;
        self.hook.streaming.store(false, Ordering::Relaxed);
        log::info!("mirror: standby for {}", self.hook.poller);
        self.save(true);
    }

    /// Persists the state when it changed (at once with `now`, else at most every
    /// [`SAVE_EVERY`]).
    fn save(&mut self, now: bool) {
        let s = self.hook.control.saved();
        if let Some((last, at)) = &self.saved
            && (*last == s || (!now && at.elapsed() < SAVE_EVERY))
        {
            return;
        }
        match control::store_state(self.hook.state_file(), &s) {
            Ok(()) => self.saved = Some((s, Instant::now())),
            Err(e) => log::warn!("mirror: {e}"),
        }
    }
}

/// `opha-sidecar mirror promote|demote|auto --config FILE`: leaves `cmd` for the running
/// mirror of that config (it takes it within [`TICK`]).
pub fn request_command(config: &Path, cmd: super::Command) -> anyhow::Result<()> {
    let cfg = ReceiverFileConfig::load(config)?;
    let Some(m) = &cfg.mirror else {
        bail!("{}: no [mirror] table", config.display());
    };
    let state = m.state_file(&cfg.store.dir);
    let dir = state.parent().unwrap_or(Path::new("."));
    control::request(dir, cmd).map_err(|e| anyhow!(e))
}
