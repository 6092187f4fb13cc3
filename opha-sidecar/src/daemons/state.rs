//! The daemon health tracker: pure, no I/O, no clock of its own.
//!
//! Probe results go in with the time they were taken ([`DaemonTracker::observe`]); records come
//! out of [`DaemonTracker::poll`]:
//! - a `DaemonHealth` for a daemon whenever its reported state changes (and when its process
//!   was replaced), and one for every daemon at each heartbeat ([`DaemonTracker::handle_timeout`]);
//! - a `DaemonDown` / `DaemonUp` event only when the debounced state moves between up and down.
//!
//! Debounce: a daemon is reported down after `down_after` consecutive down results and up after
//! `up_after` consecutive up results; a flapping probe does not flap the state. A failed check
//! (unknown) never raises an event, it only makes the reported state unknown after
//! `down_after` consecutive failures, so the page stops showing green. The first known state
//! after start is announced too (also "up"), so that a down alarm raised before a restart of
//! the sidecar is closed when the daemon is found up after it.

use std::collections::VecDeque;

use opha_common::wire::{
    DaemonHealth, DaemonState, Event, EventId, EventKind, PeerId, Record, Severity, Subject,
    TenantId,
};

use super::probe::ProbeResult;

/// Debounce and heartbeat settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    pub down_after: u32,
    pub up_after: u32,
    /// Every daemon's `DaemonHealth` goes out this often (milliseconds).
    pub heartbeat_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            down_after: 2,
            up_after: 1,
            heartbeat_ms: 5000,
        }
    }
}

/// One daemon's tracked state.
#[derive(Clone, Debug)]
struct Slot {
    name: String,
    severity: Severity,
    /// The debounced, reported state.
    shown: DaemonState,
    since_ms: u64,
    checked_ms: u64,
    pid: Option<u32>,
    detail: String,
    /// The last state an event announced (never `Unknown`).
    announced: Option<DaemonState>,
    /// The run of equal raw results that may change `shown`.
    streak: DaemonState,
    streak_len: u32,
    streak_start_ms: u64,
    restarts: u64,
}

/// Tracks a fixed list of daemons; see the module docs.
#[derive(Clone, Debug)]
pub struct DaemonTracker {
    cfg: TrackerConfig,
    peer: PeerId,
    tenant: TenantId,
    id_prefix: u64,
    next_id: u64,
    slots: Vec<Slot>,
    out: VecDeque<Record>,
    next_heartbeat_ms: u64,
}

/// Events about the peer itself carry this tenant: 0 is never a customer's (prefixes refuse
/// it), so it reads as "the operator's".
pub const PEER_TENANT: TenantId = TenantId(0);

impl DaemonTracker {
    /// `daemons`: name and down-event severity of each, in the order `observe` indexes them.
    /// `id_prefix` is the upper 64 bits of every event id this tracker makes (pass something
    /// unique per sidecar start, e.g. random); the lower 64 count up. Every daemon starts
    /// unknown ("not checked yet") at `now_ms`, and the first heartbeat is due at `now_ms`.
    pub fn new(
        cfg: TrackerConfig,
        peer: PeerId,
        daemons: impl IntoIterator<Item = (String, Severity)>,
        id_prefix: u64,
        now_ms: u64,
    ) -> Self {
        let slots = daemons
            .into_iter()
            .map(|(name, severity)| Slot {
                name,
                severity,
                shown: DaemonState::Unknown,
                since_ms: now_ms,
                checked_ms: now_ms,
                pid: None,
                detail: "not checked yet".to_string(),
                announced: None,
                streak: DaemonState::Unknown,
                streak_len: 0,
                streak_start_ms: now_ms,
                restarts: 0,
            })
            .collect();
        Self {
            cfg: TrackerConfig {
                down_after: cfg.down_after.max(1),
                up_after: cfg.up_after.max(1),
                heartbeat_ms: cfg.heartbeat_ms.max(1),
            },
            peer,
            tenant: PEER_TENANT,
            id_prefix,
            next_id: 0,
            slots,
            out: VecDeque::new(),
            next_heartbeat_ms: now_ms,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The index of a daemon by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Feeds one probe result of daemon `index`, taken at `now_ms`. Out-of-range indexes are
    /// ignored.
    pub fn observe(&mut self, index: usize, now_ms: u64, result: ProbeResult) {
        let cfg = self.cfg;
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if result.state == slot.streak && slot.streak_len > 0 {
            slot.streak_len = slot.streak_len.saturating_add(1);
        } else {
            slot.streak = result.state;
            slot.streak_len = 1;
            slot.streak_start_ms = now_ms;
        }
        slot.checked_ms = now_ms;
        let needed = match slot.streak {
            DaemonState::Up => cfg.up_after,
            DaemonState::Down | DaemonState::Unknown => cfg.down_after,
        };
        if slot.streak != slot.shown && slot.streak_len >= needed {
            slot.shown = slot.streak;
            slot.since_ms = slot.streak_start_ms;
            slot.pid = result.pid;
            slot.detail = result.detail;
            let health = health_of(slot);
            let event = match slot.shown {
                DaemonState::Unknown => None,
                s if slot.announced == Some(s) => None,
                s => {
                    slot.announced = Some(s);
                    Some(s)
                }
            };
            self.out.push_back(Record::DaemonHealth(health));
            if let Some(state) = event {
                let ev = self.event(index, state, needed);
                self.out.push_back(Record::Event(ev));
            }
            return;
        }
        if slot.streak == slot.shown {
            let replaced = match (slot.pid, result.pid) {
                (Some(old), Some(new)) if old != new && slot.shown == DaemonState::Up => {
                    Some((old, new))
                }
                _ => None,
            };
            slot.pid = result.pid;
            slot.detail = result.detail;
            if let Some((old, new)) = replaced {
                // A process replaced between two checks: no down was seen, but operators want
                // to know the daemon restarted.
                slot.restarts += 1;
                slot.detail = format!("{} (restarted: pid {old} -> {new})", slot.detail);
                self.out.push_back(Record::DaemonHealth(health_of(slot)));
            }
        } else {
            // Not yet confirmed: keep reporting the old state, and say what is pending.
            let state = match slot.streak {
                DaemonState::Up => "up",
                DaemonState::Down => "down",
                DaemonState::Unknown => "unknown",
            };
            slot.detail = format!(
                "{} (looks {state}: {} of {needed} checks)",
                result.detail, slot.streak_len
            );
        }
    }

    fn event(&mut self, index: usize, state: DaemonState, needed: u32) -> Event {
        let id = EventId::from_u128(u128::from(self.id_prefix) << 64 | u128::from(self.next_id));
        self.next_id = self.next_id.wrapping_add(1);
        let slot = &self.slots[index];
        let (kind, severity, word) = match state {
            DaemonState::Down => (
                EventKind::DaemonDown {
                    daemon: slot.name.clone(),
                },
                slot.severity,
                "down",
            ),
            _ => (
                EventKind::DaemonUp {
                    daemon: slot.name.clone(),
                },
                Severity::Info,
                "up",
            ),
        };
        let checks = if needed == 1 {
            "1 check".to_string()
        } else {
            format!("{needed} consecutive checks")
        };
        Event {
            id,
            time_ms: slot.since_ms,
            tenant: self.tenant,
            subject: Subject::Peer(self.peer.clone()),
            kind,
            severity,
            details: format!("{} is {word}: {} ({checks})", slot.name, slot.detail),
        }
    }

    /// Queues every daemon's `DaemonHealth` when the heartbeat is due.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        if now_ms < self.next_heartbeat_ms {
            return;
        }
        for slot in &self.slots {
            self.out.push_back(Record::DaemonHealth(health_of(slot)));
        }
        // Skip missed beats rather than bursting to catch up.
        let hb = self.cfg.heartbeat_ms;
        let behind = (now_ms - self.next_heartbeat_ms) / hb;
        self.next_heartbeat_ms += (behind + 1) * hb;
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> u64 {
        self.next_heartbeat_ms
    }

    /// The next record to write, oldest first.
    pub fn poll(&mut self) -> Option<Record> {
        self.out.pop_front()
    }

    /// Every daemon's current health, in configuration order.
    pub fn health(&self) -> Vec<DaemonHealth> {
        self.slots.iter().map(health_of).collect()
    }

    /// Process replacements seen while up, per daemon (for metrics).
    pub fn restarts(&self, index: usize) -> u64 {
        self.slots.get(index).map_or(0, |s| s.restarts)
    }
}

fn health_of(slot: &Slot) -> DaemonHealth {
    DaemonHealth {
        daemon: slot.name.clone(),
        state: slot.shown,
        pid: slot.pid,
        since_ms: slot.since_ms,
        checked_ms: slot.checked_ms,
        detail: slot.detail.clone(),
    }
}
