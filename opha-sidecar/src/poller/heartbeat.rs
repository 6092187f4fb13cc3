//! The heartbeat task: daemon health checks, `DaemonHealth` and `PeerStatus` every
//! `intervals.heartbeat`, and the replay log's own alarms (budget, recovery) as events.
//!
//! Its records are snapshots (health, status) and rare events, appended as they come on a
//! dedicated thread (checks may block up to their timeout). While the log refuses appends they
//! wait in a bounded queue: when it is full the oldest `PeerStatus`/`DaemonHealth` records go
//! first (a newer one supersedes them; counted), events are never dropped.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use opha_common::wire::{Event, EventKind, Record, ReplayLogStatus, Severity, Subject};
use opha_log::{BudgetLevel, BudgetTransition, RecoveryReport};

use super::{
    durable::{self, Backoff},
    shared::{Shared, add, lock},
    shutdown::Shutdown,
    source::{Clock, monotonic_ns},
};
use crate::daemons::{
    DaemonMonitor, Heartbeat, PeerStatusBuilder, PeerStatusInputs, kernel_counters,
    state::PEER_TENANT,
};

/// Settings of the heartbeat task.
#[derive(Clone, Copy, Debug)]
pub struct HeartbeatSettings {
    /// `PeerStatus` (and every `DaemonHealth`) this often.
    pub heartbeat: Duration,
    /// Daemons are checked this often.
    pub daemon_interval: Duration,
    /// Most records waiting while the log refuses appends (events excepted).
    pub max_queue: usize,
    /// The log's thinning ratio, for the thinning alarm's text.
    pub thin_keep_every: u32,
}

/// The heartbeat task; see the module docs.
pub struct HeartbeatTask {
    shared: Arc<Shared>,
    monitor: DaemonMonitor,
    builder: PeerStatusBuilder,
    beat: Heartbeat,
    clock: Arc<dyn Clock>,
    settings: HeartbeatSettings,
    queue: VecDeque<Record>,
    next_check_ms: u64,
    started_mono_ns: u64,
    backoff: Backoff,
    /// A pushed config to take at the next round ([`super::config_apply`]).
    updates: Option<Arc<std::sync::Mutex<Option<crate::config::PollerConfig>>>>,
}

impl HeartbeatTask {
    pub fn new(
        shared: Arc<Shared>,
        monitor: DaemonMonitor,
        builder: PeerStatusBuilder,
        clock: Arc<dyn Clock>,
        settings: HeartbeatSettings,
    ) -> Self {
        let now = clock.wall_ms();
        let every = u64::try_from(settings.heartbeat.as_millis()).unwrap_or(u64::MAX);
        Self {
            shared,
            monitor,
            builder,
            beat: Heartbeat::new(every, now),
            clock,
            settings,
            queue: VecDeque::new(),
            next_check_ms: now,
            started_mono_ns: monotonic_ns(),
            backoff: Backoff::new("heartbeat -> replay log"),
            updates: None,
        }
    }

    /// Takes pushed configs from `slot` at the start of each round.
    pub fn with_config_updates(
        mut self,
        slot: Arc<std::sync::Mutex<Option<crate::config::PollerConfig>>>,
    ) -> Self {
        self.updates = Some(slot);
        self
    }

    /// A pushed config: daemons (checked anew: a changed list starts from unknown states),
    /// daemon health settings, heartbeat, region.
    fn take_update(&mut self) {
        let Some(cfg) = self.updates.as_ref().and_then(|s| lock(s).take()) else {
            return;
        };
        let now = self.clock.wall_ms();
        let specs = cfg.daemon_specs();
        if specs != self.monitor.specs() {
            self.monitor = DaemonMonitor::new(
                specs,
                cfg.daemon_health.proc_root.clone(),
                cfg.tracker_config(),
                cfg.poller_id.clone(),
                super::durable::random_u64(),
                now,
            );
            self.next_check_ms = now;
        }
        self.builder = PeerStatusBuilder::poller(cfg.poller_id.clone(), cfg.region.clone());
        if cfg.intervals.heartbeat != self.settings.heartbeat {
            let every = u64::try_from(cfg.intervals.heartbeat.as_millis()).unwrap_or(u64::MAX);
            self.beat = Heartbeat::new(every, now);
        }
        self.settings.heartbeat = cfg.intervals.heartbeat;
        self.settings.daemon_interval = cfg.daemon_health.interval;
    }

    /// Queues a record to go out with the next flush (e.g. the recovery event at start).
    pub fn enqueue(&mut self, record: Record) {
        self.queue.push_back(record);
    }

    /// Records waiting for the log.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn run(mut self, stop: &Shutdown) {
        loop {
            let wait = self.tick();
            if stop.sleep(wait) {
                break;
            }
        }
        // One last flush: alarms raised during shutdown are events and must not be lost.
        self.take_alarms();
        let _ = self.flush();
        if !self.queue.is_empty() {
            log::warn!(
                "heartbeat: stopping with {} records not durable",
                self.queue.len()
            );
        }
    }

    /// One round; returns how long to wait before the next.
    pub fn tick(&mut self) -> Duration {
        self.take_update();
        let now = self.clock.wall_ms();
        if now >= self.next_check_ms {
            self.monitor.check(now);
            let every = u64::try_from(self.settings.daemon_interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            // Skip missed rounds rather than checking in a burst.
            self.next_check_ms = self.next_check_ms.saturating_add(every).max(now + 1);
            *lock(&self.shared.daemons) = self.monitor.tracker().health();
        }
        let now = self.clock.wall_ms();
        self.monitor.handle_timeout(now);
        while let Some(r) = self.monitor.poll() {
            self.queue.push_back(r);
        }
        self.take_alarms();
        if self.beat.due(now) {
            let status = self.peer_status(now);
            self.queue.push_back(Record::PeerStatus(status));
        }
        self.bound_queue();
        let flushed = self.flush();
        let next = self
            .next_check_ms
            .min(self.beat.next_ms())
            .min(self.monitor.tracker().poll_timeout());
        let until = Duration::from_millis(next.saturating_sub(self.clock.wall_ms()));
        let wait = until.clamp(Duration::from_millis(10), Duration::from_secs(1));
        match flushed {
            Ok(()) => wait,
            Err(backoff) => wait.min(backoff),
        }
    }

    fn take_alarms(&mut self) {
        for t in self.shared.log.take_budget_alarms() {
            let event = budget_event(&t, &self.shared, self.settings.thin_keep_every);
            if t.is_critical() {
                log::error!("replay log: {}", event.details);
            } else if t.is_raised() {
                log::warn!("replay log: {}", event.details);
            } else {
                log::info!("replay log: {}", event.details);
            }
            add(&self.shared.counters.alarm_events, 1);
            self.queue.push_back(Record::Event(event));
        }
    }

    fn peer_status(&self, now_ms: u64) -> opha_common::wire::PeerStatus {
        let m = self.shared.log.metrics();
        let replay_log = ReplayLogStatus {
            records: m.depth_records,
            bytes: m.depth_bytes,
            oldest_age_ms: m
                .oldest_unacked_age
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            budget_bytes: m.budget_limit_bytes,
        };
        let nodes: Vec<_> = self
            .shared
            .tenant_counts()
            .iter()
            .map(|t| (t.tenant, t.nodes))
            .collect();
        let kernel = self
            .shared
            .kernel_stats()
            .map(|s| kernel_counters(&s))
            .unwrap_or_default();
        self.builder.build(&PeerStatusInputs {
            time_ms: now_ms,
            uptime_ms: monotonic_ns().saturating_sub(self.started_mono_ns) / 1_000_000,
            nodes: &nodes,
            replay_log,
            kernel: &kernel,
        })
    }

    /// Drops the oldest snapshots beyond the bound; events stay.
    fn bound_queue(&mut self) {
        let mut excess = self.queue.len().saturating_sub(self.settings.max_queue);
        if excess == 0 {
            return;
        }
        let before = self.queue.len();
        self.queue.retain(|r| {
            if excess > 0 && matches!(r, Record::PeerStatus(_) | Record::DaemonHealth(_)) {
                excess -= 1;
                false
            } else {
                true
            }
        });
        add(
            &self.shared.counters.heartbeat_dropped,
            (before - self.queue.len()) as u64,
        );
    }

    fn flush(&mut self) -> Result<(), Duration> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = self.queue.iter().cloned().collect();
        let encoded = durable::encode(&records, &self.shared.poller);
        let appended = durable::append(&self.shared.log, &encoded);
        let c = &self.shared.counters;
        add(&c.heartbeat_records, appended.durable() as u64);
        if appended.all_done() {
            self.queue.clear();
            self.backoff.succeeded();
            return Ok(());
        }
        add(&c.heartbeat_append_failures, 1);
        let error = appended
            .first_error()
            .map(|(e, _)| e.to_string())
            .unwrap_or_default();
        let mut outcomes = appended.outcomes.into_iter();
        self.queue
            .retain(|_| !outcomes.next().is_some_and(|o| o.is_done()));
        Err(self.backoff.failed(&format!(
            "{} heartbeat records waiting: {error}",
            self.queue.len()
        )))
    }
}

fn percent(used: u64, limit: u64) -> u8 {
    if limit == 0 {
        return 100;
    }
    (u128::from(used) * 100 / u128::from(limit)).min(255) as u8
}

/// The event for a change of the disk budget's level.
pub fn budget_event(t: &BudgetTransition, shared: &Shared, keep_every: u32) -> Event {
    let pct = percent(t.used_bytes, t.limit_bytes);
    let (kind, severity, text) = match (t.from, t.to) {
        (_, BudgetLevel::Blocked) => (
            EventKind::ReplayLogBlocked,
            Severity::Critical,
            format!(
                "disk budget exhausted ({pct}% of {} bytes) even for events: intake is blocked until receivers catch up",
                t.limit_bytes
            ),
        ),
        (BudgetLevel::Blocked, _) => (
            EventKind::ReplayLogUnblocked,
            Severity::Info,
            format!("intake unblocked ({pct}% of the disk budget used)"),
        ),
        (_, BudgetLevel::Thinning) => (
            EventKind::ReplayLogThinning { keep_every },
            Severity::Major,
            format!(
                "disk budget full ({pct}%): metrics are thinned, one interval in {keep_every} kept; events are kept"
            ),
        ),
        (_, BudgetLevel::Warning) => (
            EventKind::ReplayLogUsageHigh { percent: pct },
            Severity::Warning,
            format!("replay log uses {pct}% of its disk budget"),
        ),
        (_, BudgetLevel::Normal) => (
            EventKind::ReplayLogUsageNormal { percent: pct },
            Severity::Info,
            format!("replay log usage back to {pct}% of its disk budget"),
        ),
    };
    Event {
        id: durable::random_event_id(),
        time_ms: super::source::unix_ms(),
        tenant: PEER_TENANT,
        subject: Subject::Peer(shared.poller.clone()),
        kind,
        severity,
        details: text,
    }
}

/// The event for a log that recovery had to repair, if it did; every repair is also logged.
pub fn recovery_event(report: &RecoveryReport, shared: &Shared) -> Option<Event> {
    for t in &report.truncated {
        log::warn!(
            "replay log: torn tail of {} cut at offset {}: {} bytes dropped ({}){}",
            t.segment.display(),
            t.offset,
            t.dropped_bytes,
            t.reason,
            t.preserved_as
                .as_ref()
                .map(|p| format!(", kept as {}", p.display()))
                .unwrap_or_default()
        );
    }
    for q in &report.quarantined {
        log::error!(
            "replay log: corrupt segment {} moved to {} ({}; {} records salvaged)",
            q.segment.display(),
            q.moved_to.display(),
            q.reason,
            q.salvaged_records
        );
    }
    for g in &report.gaps {
        log::error!(
            "replay log: records {}..{} are missing (lost with a quarantined segment)",
            g.start,
            g.end
        );
    }
    if let Some(e) = &report.cursor_file_error {
        log::error!("replay log: cursor file unreadable, set aside: {e}");
    }
    if report.truncated.is_empty() && report.quarantined.is_empty() && report.gaps.is_empty() {
        return None;
    }
    let truncated_bytes: u64 = report.truncated.iter().map(|t| t.dropped_bytes).sum();
    let quarantined = u32::try_from(report.quarantined.len()).unwrap_or(u32::MAX);
    let lost: u64 = report.gaps.iter().map(|g| g.end - g.start).sum();
    Some(Event {
        id: durable::random_event_id(),
        time_ms: super::source::unix_ms(),
        tenant: PEER_TENANT,
        subject: Subject::Peer(shared.poller.clone()),
        kind: EventKind::ReplayLogRecovered {
            truncated_bytes,
            quarantined_segments: quarantined,
        },
        severity: if quarantined > 0 || lost > 0 {
            Severity::Major
        } else {
            Severity::Warning
        },
        details: format!(
            "replay log recovered on start: {truncated_bytes} bytes of torn tail dropped (never acknowledged), {quarantined} corrupt segments quarantined, {lost} records missing"
        ),
    })
}
