//! The aggregate task: every `intervals.sweep`, sweep the timed-out requests, snapshot the
//! kernel's counters, run the aggregation core, checkpoint, append its records.
//!
//! One tick, in this order (the crash-safety argument is in [`super`]):
//!
//! 1. finish the previous tick if it could not: write its checkpoint, append its records;
//!    until both succeed no new snapshot is taken (intake blocks; the kernel keeps counting, so
//!    nothing is lost, the next snapshot covers the wait);
//! 2. sweep the in-flight map (timeouts) and read every node's counters;
//! 3. `Aggregator::poll` -> metrics and events;
//! 4. when the tick produced records or timeouts, closed an interval, or the last checkpoint is
//!    older than `checkpoint_every`: write the checkpoint (state + those records + the log's
//!    durable end) atomically;
//! 5. append the records and wait until durable; keep any the log refused for step 1.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opha_common::{inflight::InflightKey, wire::Record};
use opha_log::Log;

use super::{
    checkpoint::{self, Checkpoint, CheckpointError},
    durable::{self, Backoff},
    shared::{Shared, add, lock},
    shutdown::Shutdown,
    source::{Clock, KernelSource},
};
use crate::{
    aggregate::{AggConfig, AggState, Aggregator, Input, NodeInfo, Output},
    inventory::Inventory,
    mirror::{MirrorControl, NodeStates},
};

/// How often a waiting aggregate task looks for a config push.
pub const CONFIG_POLL: Duration = Duration::from_millis(20);

/// A mirror's hand-over request to its aggregate task (docs/mirror.md), applied between ticks
/// once the previous tick's records are durable. Each is answered with the cut: the log's
/// durable end at that moment, so the task's records below it were produced before the
/// request and those from it on after. The answer runs on the task's thread before its next
/// poll (so a demoted mirror's links are capped at the cut before anything after it exists).
pub enum HandoverRequest {
    /// Seed the core with the reported node states and report from the next poll on (its
    /// events pass through [`MirrorControl::own_events`]).
    Promote(NodeStates, HandoverReply),
    /// Stop reporting.
    Demote(HandoverReply),
}

/// The answer to a [`HandoverRequest`]: the cut, or why it must be asked again.
pub type HandoverReply = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// Settings of the aggregate task.
#[derive(Clone, Copy, Debug)]
pub struct AggregateSettings {
    /// Time between ticks (`intervals.sweep`).
    pub sweep: Duration,
    /// Requests older than this are timeouts (`intervals.poll_timeout`).
    pub poll_timeout: Duration,
    /// A tick with nothing to record still checkpoints when the last one is this old, so that
    /// a restart replays little and reconciles against a short log tail.
    pub checkpoint_every: Duration,
}

impl AggregateSettings {
    pub fn new(sweep: Duration, poll_timeout: Duration) -> Self {
        Self {
            sweep,
            poll_timeout,
            checkpoint_every: Duration::from_secs(10),
        }
    }
}

/// Where a restarted task continues from: the checkpoint's state, and the checkpoint's
/// records that the log lacks (appended before anything else).
#[derive(Clone, Debug, Default)]
pub struct Resume {
    pub state: Option<AggState>,
    pub missing: Vec<Record>,
    /// Records the checkpoint held (found in the log or not).
    pub checkpointed: usize,
}

/// Reads the checkpoint in `dir` and finds which of its records the log lacks. Call before
/// anything else appends to the log. A damaged checkpoint is moved aside and the task starts
/// fresh (its first snapshot is a baseline): logged, never fatal. Only an unreadable file (I/O,
/// permissions) is an error.
pub fn resume(log: &Log, dir: &std::path::Path) -> Result<Resume, CheckpointError> {
    match checkpoint::read(dir) {
        Ok(None) => {
            log::info!(
                "aggregate: no checkpoint in {}: the first snapshot is a baseline",
                dir.display()
            );
            Ok(Resume::default())
        }
        Ok(Some(c)) => {
            let missing = checkpoint::missing(
                &c.pending,
                checkpoint::log_payloads_from(log, c.log_next_seq),
            );
            log::info!(
                "aggregate: resuming from the checkpoint of {} ({} nodes, {} records of its last tick, {} of them not in the log and appended now)",
                c.written_ms,
                c.state.nodes.len(),
                c.pending.len(),
                missing.len()
            );
            Ok(Resume {
                state: Some(c.state),
                checkpointed: c.pending.len(),
                missing,
            })
        }
        Err(CheckpointError::Damaged { path, why }) => {
            let now = super::source::unix_ms();
            match checkpoint::quarantine(dir, now) {
                Ok(to) => log::error!(
                    "aggregate: checkpoint {} is damaged ({why}); moved to {} and starting without it: the first snapshot is a baseline, counts since the last durable interval are not reported",
                    path.display(),
                    to.display()
                ),
                Err(e) => log::error!(
                    "aggregate: checkpoint {} is damaged ({why}) and could not be moved aside ({e}); starting without it",
                    path.display()
                ),
            }
            Ok(Resume::default())
        }
        Err(e) => Err(e),
    }
}

/// What a tick did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// A snapshot was taken and everything it produced is durable.
    Polled { records: usize, checkpointed: bool },
    /// Something failed (logged, counted); retry after this long. Nothing is lost.
    Blocked(Duration),
}

/// The aggregate task; see the module docs.
pub struct AggregateTask<K: KernelSource> {
    source: K,
    shared: Arc<Shared>,
    agg: Aggregator,
    dir: PathBuf,
    clock: Arc<dyn Clock>,
    settings: AggregateSettings,
    /// Records of the last tick not yet durable (already in the checkpoint unless
    /// `checkpoint_dirty`).
    pending: Vec<Record>,
    /// The state (and `pending`) are not yet in a checkpoint.
    checkpoint_dirty: bool,
    /// Timeouts swept (deleted from the kernel) but not yet given to the core.
    swept: Vec<(InflightKey, u64)>,
    last_checkpoint: Option<Instant>,
    last_stats: Option<Instant>,
    out: Output,
    backoff: Backoff,
    read_backoff: Backoff,
    /// Config pushes to apply between ticks ([`super::config_apply`]).
    config_rx: Option<std::sync::mpsc::Receiver<super::config_apply::ApplyRequest>>,
    /// A mirror's hand-over requests, and its control (for `own_events`).
    handover: Option<(std::sync::mpsc::Receiver<HandoverRequest>, MirrorControl)>,
    /// Seeded and reporting for the paired poller (a promoted mirror).
    reporting: bool,
}

impl<K: KernelSource> AggregateTask<K> {
    /// `dir`: where the checkpoint lives (the log directory).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: K,
        shared: Arc<Shared>,
        config: AggConfig,
        resume: Resume,
        inventory: Option<Arc<Inventory>>,
        dir: PathBuf,
        clock: Arc<dyn Clock>,
        settings: AggregateSettings,
    ) -> Self {
        let mut agg = match resume.state {
            Some(state) => match Aggregator::restore(config.clone(), state) {
                Ok(a) => a,
                Err(e) => {
                    log::error!(
                        "aggregate: {e}; starting without the checkpoint (the first snapshot is a baseline)"
                    );
                    Aggregator::new(config)
                }
            },
            None => Aggregator::new(config),
        };
        if let Some(inv) = inventory {
            agg.set_inventory(move |key: &opha_common::node::NodeKey| {
                inv.get(key).map(|n| NodeInfo {
                    name: Some(n.name.clone()),
                    tenant: Some(n.tenant),
                })
            });
        }
        *lock(&shared.tenants) = agg.tenant_counts();
        add(&shared.counters.agg_reconciled, resume.missing.len() as u64);
        Self {
            source,
            shared,
            agg,
            dir,
            clock,
            settings,
            pending: resume.missing,
            checkpoint_dirty: false,
            swept: Vec::new(),
            last_checkpoint: None,
            last_stats: None,
            out: Output::default(),
            backoff: Backoff::new("aggregate -> replay log"),
            read_backoff: Backoff::new("aggregate: reading the kernel maps"),
            config_rx: None,
            handover: None,
            reporting: false,
        }
    }

    /// A mirror's task: takes hand-over requests from `rx` (between ticks, like config
    /// pushes).
    pub fn with_handover(
        mut self,
        rx: std::sync::mpsc::Receiver<HandoverRequest>,
        control: MirrorControl,
    ) -> Self {
        self.handover = Some((rx, control));
        self
    }

    /// Whether the task reports for the paired poller (seeded by a promotion).
    pub fn is_reporting(&self) -> bool {
        self.reporting
    }

    /// One hand-over request; see [`HandoverRequest`].
    pub fn apply_handover(&mut self, req: HandoverRequest) {
        // The previous tick's records must be below the cut.
        let durable = self.finish_previous().map_err(|wait| {
            format!("the last poll's records are not yet durable (retrying in {wait:?})")
        });
        let cut = durable.map(|()| self.shared.log.durable_next_seq());
        match req {
            HandoverRequest::Promote(states, reply) => {
                if cut.is_ok() {
                    let r = states.seed(self.agg.state_mut());
                    self.reporting = true;
                    // The seeded flags are the state a restart must continue from.
                    self.checkpoint_dirty = true;
                    log::info!(
                        "aggregate: seeded with the reported node states ({} nodes with an alarm, {} changed, {} added); reporting",
                        states.len(),
                        r.changed,
                        r.added
                    );
                }
                reply(cut);
            }
            HandoverRequest::Demote(reply) => {
                if cut.is_ok() {
                    self.reporting = false;
                    log::info!("aggregate: no longer reporting for the poller");
                }
                reply(cut);
            }
        }
    }

    /// Takes config pushes from `rx`: applied between ticks, looked at every
    /// [`CONFIG_POLL`] while the task waits.
    pub fn with_config_updates(
        mut self,
        rx: std::sync::mpsc::Receiver<super::config_apply::ApplyRequest>,
    ) -> Self {
        self.config_rx = Some(rx);
        self
    }

    /// Waits `d` (applying config pushes meanwhile); `true` once stopped.
    fn wait(&mut self, stop: &Shutdown, d: Duration) -> bool {
        if self.config_rx.is_none() && self.handover.is_none() {
            return stop.sleep(d);
        }
        let until = Instant::now() + d;
        loop {
            while let Some(req) = self.config_rx.as_ref().and_then(|rx| rx.try_recv().ok()) {
                self.apply_config(req);
            }
            while let Some(req) = self
                .handover
                .as_ref()
                .and_then(|(rx, _)| rx.try_recv().ok())
            {
                self.apply_handover(req);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return stop.is_stopped();
            }
            if stop.sleep(left.min(CONFIG_POLL)) {
                return true;
            }
        }
    }

    /// One config push: kernel maps (all or nothing), then the aggregator's settings.
    fn apply_config(&mut self, req: super::config_apply::ApplyRequest) {
        if !req.take() {
            return;
        }
        let r = super::config_apply::apply_kernel(&mut self.source, &req.plan, &req.undo);
        if r.is_ok() {
            if let Some(c) = &req.plan.aggregate {
                self.agg.set_config(c.clone());
            }
            if let Some((sweep, poll_timeout)) = req.plan.sweep {
                self.settings.sweep = sweep;
                self.settings.poll_timeout = poll_timeout;
            }
        }
        req.reply(r);
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.agg
    }

    /// Records produced and not yet durable.
    pub fn pending(&self) -> &[Record] {
        &self.pending
    }

    /// Runs a tick every `settings.sweep` until `stop`. A tick in progress finishes first
    /// (its records durable or kept in the checkpoint).
    pub fn run(mut self, stop: &Shutdown) {
        let mut next = Instant::now();
        loop {
            let wait = match self.tick() {
                Tick::Polled { .. } => {
                    next += self.settings.sweep;
                    let now = Instant::now();
                    if next < now {
                        // Fell behind (slow kernel reads, a blocked log): no burst to catch up.
                        next = now + self.settings.sweep;
                    }
                    next - now
                }
                Tick::Blocked(d) => {
                    next = Instant::now() + d;
                    d
                }
            };
            if self.wait(stop, wait) {
                break;
            }
        }
        if !self.pending.is_empty() {
            log::warn!(
                "aggregate: stopping with {} records not yet durable; {}",
                self.pending.len(),
                if self.checkpoint_dirty {
                    "they are recomputed from the kernel's counters at the next start"
                } else {
                    "they are in the checkpoint and appended at the next start"
                }
            );
        }
    }

    /// One tick; see the module docs.
    pub fn tick(&mut self) -> Tick {
        if let Err(wait) = self.finish_previous() {
            return Tick::Blocked(wait);
        }
        let c = &self.shared.counters;
        let now_ns = self.clock.mono_ns();
        let timeout_ns = u64::try_from(self.settings.poll_timeout.as_nanos()).unwrap_or(u64::MAX);
        match self.source.sweep(now_ns, timeout_ns) {
            Ok(v) => self.swept.extend(v),
            Err(e) => {
                // The requests stay in the kernel and are swept next time.
                add(&c.agg_read_errors, 1);
                log::warn!("aggregate: sweeping the in-flight map: {e}");
            }
        }
        let nodes = match self.source.nodes() {
            Ok(n) => {
                self.read_backoff.succeeded();
                n
            }
            Err(e) => {
                add(&c.agg_read_errors, 1);
                // Swept timeouts are kept for the next tick.
                return Tick::Blocked(
                    self.read_backoff
                        .failed(&format!("reading node counters: {e}"))
                        .max(self.settings.sweep),
                );
            }
        };
        let input = Input {
            // After the read: every kernel timestamp in the snapshot is at or before it.
            mono_ns: self.clock.mono_ns(),
            wall_ms: self.clock.wall_ms(),
            nodes: &nodes,
            timeouts: &self.swept,
        };
        let closed_before = self.agg.state().intervals_closed;
        self.out.clear();
        self.agg.poll(&input, &mut self.out);
        if self.reporting
            && let Some((_, control)) = &self.handover
        {
            // What this mirror reports is recorded as reported; repeats are dropped.
            let dropped = control.own_events(&mut self.out.events);
            if dropped > 0 {
                log::warn!("aggregate: dropped {dropped} events repeating the reported state");
            }
        }
        let had_timeouts = !self.swept.is_empty();
        add(&c.agg_timeouts, self.swept.len() as u64);
        self.swept.clear();
        add(&c.agg_polls, 1);
        add(&c.agg_metrics, self.out.metrics.len() as u64);
        add(&c.agg_events, self.out.events.len() as u64);
        // Statistics walk the whole in-flight map: at most once a second.
        if self
            .last_stats
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_stats = Some(Instant::now());
            match self.source.stats() {
                Ok(s) => *lock(&self.shared.kernel) = Some(s),
                Err(e) => log::warn!("aggregate: reading kernel statistics: {e}"),
            }
        }
        *lock(&self.shared.tenants) = self.agg.tenant_counts();

        let closed = self.agg.state().intervals_closed != closed_before;
        let stale = self
            .last_checkpoint
            .is_none_or(|t| t.elapsed() >= self.settings.checkpoint_every);
        if self.out.is_empty() && !had_timeouts && !closed && !stale {
            // Nothing to record: a crash now resumes from the last checkpoint, whose snapshot
            // is the base of the next delta, so these counts are taken again then, not lost.
            return Tick::Polled {
                records: 0,
                checkpointed: false,
            };
        }
        self.pending = std::mem::take(&mut self.out).into_records();
        let records = self.pending.len();
        self.checkpoint_dirty = true;
        match self.finish_previous() {
            Ok(()) => Tick::Polled {
                records,
                checkpointed: true,
            },
            Err(wait) => Tick::Blocked(wait),
        }
    }

    /// Checkpoint (if not yet written) then append what is pending.
    fn finish_previous(&mut self) -> Result<(), Duration> {
        let c = &self.shared.counters;
        if self.checkpoint_dirty {
            let ckpt = Checkpoint {
                log_next_seq: self.shared.log.durable_next_seq(),
                written_ms: self.clock.wall_ms(),
                state: self.agg.state().clone(),
                pending: self.pending.clone(),
            };
            if let Err(e) = checkpoint::write(&self.dir, &ckpt) {
                add(&c.agg_checkpoint_failures, 1);
                return Err(self.backoff.failed(&format!("writing the checkpoint: {e}")));
            }
            add(&c.agg_checkpoints, 1);
            self.checkpoint_dirty = false;
            self.last_checkpoint = Some(Instant::now());
        }
        if self.pending.is_empty() {
            self.backoff.succeeded();
            return Ok(());
        }
        let encoded = durable::encode(&self.pending, &self.shared.poller);
        let appended = durable::append(&self.shared.log, &encoded);
        if appended.all_done() {
            self.pending.clear();
            self.backoff.succeeded();
            return Ok(());
        }
        add(&c.agg_append_failures, 1);
        let error = appended
            .first_error()
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        let mut keep = Vec::new();
        for (r, o) in self.pending.drain(..).zip(appended.outcomes) {
            if !o.is_done() {
                keep.push(r);
            }
        }
        let n = keep.len();
        self.pending = keep;
        Err(self.backoff.failed(&format!(
            "{n} metrics/events not yet durable (kept in the checkpoint): {error}"
        )))
    }
}
