//! Up/down hysteresis of one protocol class (or one TCP service port) of one node.
//!
//! Evidence arrives once per snapshot ("tick"): successes (responses counted by the kernel),
//! failed polls (in-flight requests swept after the poll timeout, RSTs), and the class's
//! request counter, from which requests that stayed unanswered past the timeout are counted
//! too (so that a node still goes down when the in-flight LRU lost its entries).
//!
//! A failure counts only when it is *fresh*: its request left after the class's last response
//! (`clear_ns`). A request older than an answer the node gave says nothing about the node now:
//! that keeps the late sweep of requests lost during an outage from taking a node that has
//! come back down again. It also fixes the order of a tick's evidence: fresh failures were sent
//! after every response of the tick, so successes are applied first, then failures.

use serde::{Deserialize, Serialize};

/// State of a class, port or node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not enough evidence yet (new, or re-learning after the node came back).
    #[default]
    Unknown,
    Up,
    Down,
}

/// What a tick changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    None,
    Up,
    Down,
}

/// How much a success says about this state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Credit {
    /// The success certainly belongs here: it ends a failure streak at once.
    Exact,
    /// The success may belong elsewhere (a TCP answer on a node with several check ports): it
    /// counts towards "up", but failures are cleared only after M such ticks in a row.
    Weak,
}

/// One tick's evidence for one state machine.
pub(crate) struct Tick<'a> {
    pub now_ns: u64,
    /// Time of the previous snapshot (`now_ns` on the first).
    pub prev_ns: u64,
    pub successes: u64,
    /// The kernel's last response time of the class: failures sent before it are stale.
    pub success_mark_ns: u64,
    /// Send times of the requests swept as timed out in this tick.
    pub timeouts: &'a [u64],
    /// Failures without a send time (RSTs), counted as fresh at `now_ns`.
    pub extra_failures: u64,
    /// The class's request count before and after this tick (a running sum of deltas, so
    /// counter resets do not disturb it); `None` for ports, which have no counter.
    pub requests: Option<(u64, u64)>,
    pub timeout_ns: u64,
    /// (N, M).
    pub limits: (u64, u64),
}

/// The hysteresis of one class or port. Serialized with the core's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hysteresis {
    pub state: Health,
    /// Successes since the last failure.
    pub ok_streak: u64,
    /// Failed polls since the last success (the larger of the two estimates below).
    pub fail_streak: u64,
    /// Fresh timeouts (and RSTs) since the last success.
    timeout_fails: u64,
    /// Requests sent at or before this monotonic time cannot count as failures.
    pub clear_ns: u64,
    /// Send time of the first failure of the current streak, 0 when there is none.
    pub fail_since_ns: u64,
    silent: Silent,
}

impl Hysteresis {
    pub(crate) fn observe(&mut self, t: &Tick<'_>, credit: Credit) -> Transition {
        let (down_after, up_after) = t.limits;
        if t.successes > 0 {
            self.ok_streak = self.ok_streak.saturating_add(t.successes);
            let clear = match credit {
                Credit::Exact => {
                    self.clear_ns = self.clear_ns.max(t.success_mark_ns);
                    true
                }
                // Requests older than the timeout would have been swept by now: whatever
                // timeouts arrive later were sent after this.
                Credit::Weak if self.ok_streak >= up_after => {
                    self.clear_ns = self.clear_ns.max(t.now_ns.saturating_sub(t.timeout_ns));
                    true
                }
                Credit::Weak => false,
            };
            if clear {
                self.fail_streak = 0;
                self.timeout_fails = 0;
                self.fail_since_ns = 0;
                if let Some((_, after)) = t.requests {
                    self.silent.restart(t.now_ns, after);
                }
            }
        }

        let mut fresh = 0u64;
        let mut first = u64::MAX;
        for &sent in t.timeouts {
            if sent > self.clear_ns {
                fresh += 1;
                first = first.min(sent);
            }
        }
        if t.extra_failures > 0 {
            first = first.min(t.now_ns);
        }
        self.timeout_fails = self
            .timeout_fails
            .saturating_add(fresh)
            .saturating_add(t.extra_failures);
        let mut silent_since = None;
        let silent = match t.requests {
            Some((before, after)) => {
                let n = self
                    .silent
                    .tick(t.prev_ns, t.now_ns, before, after, t.timeout_ns);
                if n > 0 {
                    silent_since = Some(self.silent.since_ns());
                }
                n
            }
            None => 0,
        };
        let fails = self.timeout_fails.max(silent);
        if fails > self.fail_streak {
            if self.fail_streak == 0 {
                // Exact evidence (a swept request's send time) wins over the counter-only
                // estimate, which starts at the tick of the last answer and so can reach back
                // before the outage: an answer from another class in that gap would otherwise
                // look like the node was still alive and hold its NodeDown back.
                self.fail_since_ns = if first != u64::MAX {
                    first
                } else {
                    silent_since.unwrap_or(t.now_ns)
                };
            }
            self.fail_streak = fails;
            self.ok_streak = 0;
        }

        if self.state != Health::Down && self.fail_streak >= down_after {
            self.state = Health::Down;
            return Transition::Down;
        }
        if self.state != Health::Up && self.fail_streak == 0 && self.ok_streak >= up_after {
            self.state = Health::Up;
            return Transition::Up;
        }
        Transition::None
    }

    /// Forgets the evidence and re-learns from `mark_ns` on: used for the other classes and
    /// the ports when a node comes back, whose requests sent during the outage are still
    /// being swept.
    pub(crate) fn rearm(&mut self, now_ns: u64, mark_ns: u64, requests: u64) {
        self.state = Health::Unknown;
        self.ok_streak = 0;
        self.fail_streak = 0;
        self.timeout_fails = 0;
        self.fail_since_ns = 0;
        self.clear_ns = self.clear_ns.max(mark_ns);
        self.silent.restart(now_ns, requests);
    }

    /// Keeps the state but forgets failures of requests sent up to `mark_ns`: used for the
    /// class that brought a node back, whose requests lost in the outage are still being
    /// swept (re-arming it would drop the very evidence that the node is up).
    pub(crate) fn forgive(&mut self, now_ns: u64, mark_ns: u64, requests: u64) {
        self.fail_streak = 0;
        self.timeout_fails = 0;
        self.fail_since_ns = 0;
        self.clear_ns = self.clear_ns.max(mark_ns);
        self.silent.restart(now_ns, requests);
    }

    /// Requests known from counters are still waiting to age past the timeout.
    pub(crate) fn has_pending(&self) -> bool {
        !self.silent.pending.is_empty()
    }

    /// The monotonic clock restarted (the machine rebooted): times from before mean nothing.
    pub(crate) fn clock_restarted(&mut self) {
        self.clear_ns = 0;
        self.fail_since_ns = 0;
        self.silent = Silent::default();
    }
}

/// Keeps the requests of ticks that ended after the class's last success and longer than the
/// poll timeout ago: each is a request that was not answered in time, known from counters
/// alone. Requests of the tick with the last success are left out (they may predate it), so
/// the estimate errs towards "not failed".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Silent {
    /// (since when, request count then); `None` until the first tick.
    base: Option<(u64, u64)>,
    /// (tick end, request count then) of ticks not yet older than the timeout.
    pending: Vec<(u64, u64)>,
    /// Request count at the end of the newest tick older than the timeout.
    aged: u64,
}

/// Bounds `pending` when ticks are much shorter than the timeout: the newest entry is then
/// moved forward instead, which only delays counting.
const MAX_PENDING: usize = 32;

impl Silent {
    fn restart(&mut self, now_ns: u64, requests: u64) {
        self.base = Some((now_ns, requests));
        self.pending.clear();
        self.aged = requests;
    }

    fn since_ns(&self) -> u64 {
        self.base.map_or(0, |b| b.0)
    }

    fn tick(&mut self, prev_ns: u64, now_ns: u64, before: u64, after: u64, timeout_ns: u64) -> u64 {
        let base = match self.base {
            Some((_, b)) => b,
            None => {
                self.restart(prev_ns, before);
                before
            }
        };
        let last = self.pending.last().map_or(self.aged, |p| p.1);
        if after > last {
            if self.pending.len() >= MAX_PENDING {
                if let Some(p) = self.pending.last_mut() {
                    *p = (now_ns, after);
                }
            } else {
                self.pending.push((now_ns, after));
            }
        }
        let aged = self
            .pending
            .iter()
            .take_while(|p| p.0.saturating_add(timeout_ns) <= now_ns)
            .count();
        if aged > 0 {
            self.aged = self.pending[aged - 1].1;
            self.pending.drain(..aged);
        }
        self.aged.saturating_sub(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(now_ns: u64, successes: u64, timeouts: &[u64]) -> Tick<'_> {
        Tick {
            now_ns,
            prev_ns: now_ns.saturating_sub(1_000),
            successes,
            success_mark_ns: now_ns,
            timeouts,
            extra_failures: 0,
            requests: None,
            timeout_ns: 5_000,
            limits: (3, 2),
        }
    }

    #[test]
    fn stale_timeouts_do_not_count() {
        let mut h = Hysteresis::default();
        assert_eq!(
            h.observe(&tick(10_000, 2, &[]), Credit::Exact),
            Transition::Up
        );
        // Sent before the last answer: stale, whatever their number.
        let t = tick(20_000, 0, &[1_000, 2_000, 9_000]);
        assert_eq!(h.observe(&t, Credit::Exact), Transition::None);
        assert_eq!(h.fail_streak, 0);
        let t = tick(30_000, 0, &[11_000, 12_000, 13_000]);
        assert_eq!(h.observe(&t, Credit::Exact), Transition::Down);
        assert_eq!(h.fail_since_ns, 11_000);
    }

    #[test]
    fn silent_requests_count_after_the_timeout() {
        let mut h = Hysteresis::default();
        let mut t = tick(1_000, 0, &[]);
        t.requests = Some((0, 0));
        h.observe(&t, Credit::Exact);
        // One request per tick, never answered, no in-flight evidence at all.
        let mut out = Vec::new();
        for i in 1..=12u64 {
            let mut t = tick(1_000 + i * 1_000, 0, &[]);
            t.requests = Some((i - 1, i));
            out.push(h.observe(&t, Credit::Exact));
        }
        // Ticks end at 2k..13k; a tick's requests age 5k later; the third aged one downs it.
        let down = out.iter().position(|t| *t == Transition::Down);
        assert_eq!(down, Some(7), "{out:?}");
        assert_eq!(out.iter().filter(|t| **t == Transition::Down).count(), 1);
    }

    #[test]
    fn weak_credit_clears_only_after_m_ticks() {
        let mut h = Hysteresis::default();
        h.observe(&tick(1_000, 0, &[500]), Credit::Weak);
        h.observe(&tick(2_000, 1, &[]), Credit::Weak);
        assert_eq!(h.fail_streak, 1, "one weak success does not clear");
        h.observe(&tick(3_000, 0, &[1_500]), Credit::Weak);
        assert_eq!(h.fail_streak, 2);
        assert_eq!(
            h.observe(&tick(4_000, 0, &[3_500]), Credit::Weak),
            Transition::Down
        );
        h.observe(&tick(10_000, 1, &[]), Credit::Weak);
        assert_eq!(
            h.observe(&tick(11_000, 1, &[]), Credit::Weak),
            Transition::Up
        );
    }
}
