//! Fencing on the wire: the poller's grants to its primaries and their answers.
//!
//! Each primary link, once streaming, runs a fence task on its own unidirectional QUIC stream
//! (high priority, so grants never queue behind batches): it sends the current
//! [`Grant`] at once, on every change, and again every `bus.heartbeat`; the primary answers
//! each with a [`Term`] (on the link's control stream). A primary that has not answered for
//! `bus.failover_after` is declared unreachable to the arbiter at once and its link is torn
//! down (and reconnects as after any failure), so the next primary becomes active after about
//! `failover_after`, independently of the QUIC idle timeout. Mirrors get no grants.
//!
//! # Never two acting primaries
//! The term alone fences actions (the poller accepts only the current term). On top of that,
//! acting is a lease: a grant naming a primary lets it act for `failover_after - heartbeat`
//! after it arrives, unless renewed. The poller names a primary in a grant only when
//! - the primary has answered since the last grant went out (so a silent primary's lease is
//!   not renewed: the last grant naming it left at most a heartbeat after its last answer),
//!   and
//! - every other primary is fenced for the term: it answered with that term or a higher one
//!   and does not act, or `failover_after` has passed since a grant last named it (its lease
//!   is over, provided a grant travels in less than a heartbeat). Until then the grant names
//!   nobody (same term), which makes the new primary step up to the term without acting.
//!
//! So a returning main primary acts only after the redundant one has answered that it
//! stepped down, and after a kill -9 the redundant one acts about `failover_after` (plus at
//! most a heartbeat) after the main's last answer. After a poller restart, a grant of the
//! previous run may still hold: every primary counts as named at the start.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use opha_bus::message::{BusFrame, BusMessage, Grant, Term};
use tokio::sync::{mpsc, oneshot};

use super::wire::write_message;
use super::{BusStatus, LinkStatus};
use crate::poller::shared::lock;

/// Answers the reader hands to a link's fence task before they are dropped (a primary
/// answers once per grant; this only bounds a misbehaving one).
pub const ANSWER_QUEUE: usize = 16;

/// What the poller knows of one primary's fencing state.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Last grant sent on the current connection.
    sent_at: Option<Instant>,
    /// Last answer on the current connection.
    answered_at: Option<Instant>,
    highest: u64,
    acting: bool,
    /// Last time a grant named this primary (or the bus start).
    named_at: Instant,
}

impl View {
    pub fn new(start: Instant) -> Self {
        Self {
            sent_at: None,
            answered_at: None,
            highest: 0,
            acting: false,
            named_at: start,
        }
    }
}

impl BusStatus {
    fn lease_ms(&self) -> u32 {
        let lease = self.failover_after.saturating_sub(self.heartbeat);
        u32::try_from(lease.as_millis()).unwrap_or(u32::MAX).max(1)
    }

    /// The grant to send to primary link `link` now, and when it may change by itself (an
    /// other primary's lease running out).
    pub fn grant_for(&self, link: usize, now: Instant) -> (Grant, Option<Instant>) {
        let f = lock(&self.fencing);
        let g = f.arbiter.grant();
        let active = g.primary.and_then(|i| self.primaries.get(i)).copied();
        let peer = |l: usize| self.links.get(l).map(|s| s.receiver.peer.clone());
        let mut grant = Grant {
            term: g.term,
            active: active.and_then(peer),
            lease_ms: self.lease_ms(),
        };
        let mut recheck = None;
        if active == Some(link) {
            // Answered since the last grant went out: a silent primary is named at most once
            // more (within a heartbeat of its last answer), so its lease is not renewed.
            let recent = f
                .views
                .get(link)
                .is_some_and(|v| match (v.answered_at, v.sent_at) {
                    (Some(a), Some(s)) => a >= s,
                    (a, _) => a.is_some(),
                });
            for &other in self.primaries.iter().filter(|&&o| o != link) {
                let Some(v) = f.views.get(other) else {
                    continue;
                };
                let stepped_down = v.highest >= g.term && !v.acting;
                let lease_over = v.named_at + self.failover_after;
                if !stepped_down && now < lease_over {
                    recheck = Some(recheck.map_or(lease_over, |r: Instant| r.min(lease_over)));
                }
            }
            if !recent || recheck.is_some() {
                grant.active = None;
            }
        }
        (grant, recheck)
    }

    /// `grant` is about to go to `link`.
    fn sending(&self, link: usize, grant: &Grant, now: Instant) {
        let named = grant.active.is_some()
            && grant.active.as_ref() == self.links.get(link).map(|l| &l.receiver.peer);
        if let Some(v) = lock(&self.fencing).views.get_mut(link) {
            v.sent_at = Some(now);
            if named {
                v.named_at = now;
            }
        }
    }

    /// A new connection to `link`: nothing answered on it yet.
    fn connected(&self, link: usize) {
        if let Some(v) = lock(&self.fencing).views.get_mut(link) {
            v.sent_at = None;
            v.answered_at = None;
            v.acting = false;
        }
    }

    /// `link` answered; returns whether the term is above ours (grant anew, blocking).
    fn answered(&self, link: usize, t: Term, now: Instant) -> bool {
        let mut f = lock(&self.fencing);
        let ours = f.arbiter.term();
        let Some(v) = f.views.get_mut(link) else {
            return false;
        };
        let changed = v.highest != t.highest || v.acting != t.acting || v.answered_at.is_none();
        v.answered_at = Some(now);
        v.highest = t.highest;
        v.acting = t.acting;
        drop(f);
        if changed {
            self.fence_changes.send_modify(|g| *g += 1);
        }
        t.highest > ours
    }

    /// When `link` last answered (on its current connection).
    fn answered_at(&self, link: usize) -> Option<Instant> {
        lock(&self.fencing)
            .views
            .get(link)
            .and_then(|v| v.answered_at)
    }
}

/// One primary link's fence task (see the module docs). Ends only on failure, which it
/// reports on `failed`; the link aborts it when the connection ends.
pub struct FenceTask {
    pub link: usize,
    pub conn: quinn::Connection,
    pub bus: Arc<BusStatus>,
    pub status: Arc<LinkStatus>,
    /// [`Term`] answers, from the link's stream reader.
    pub answers: mpsc::Receiver<Term>,
    pub failed: oneshot::Sender<anyhow::Error>,
}

impl FenceTask {
    pub async fn run(mut self) {
        let e = self.serve().await;
        let _ = self.failed.send(e);
    }

    async fn serve(&mut self) -> anyhow::Error {
        let frame = BusFrame::default();
        let mut send = match self.conn.open_uni().await {
            Ok(s) => s,
            Err(e) => return anyhow!("opening the fencing stream: {e}"),
        };
        // Grants go ahead of batches queued on the connection.
        let _ = send.set_priority(1);
        let mut changes = self.bus.fence_changes.subscribe();
        let (hb, after) = (self.bus.heartbeat, self.bus.failover_after);
        self.bus.connected(self.link);
        let started = Instant::now();
        let mut last: Option<Grant> = None;
        let mut beat = started;
        loop {
            // Anything changing after this wakes the wait below.
            changes.borrow_and_update();
            let now = Instant::now();
            let silent_since = self.bus.answered_at(self.link).unwrap_or(started);
            if now >= silent_since + after {
                return self.timed_out(now - silent_since).await;
            }
            let (grant, recheck) = self.bus.grant_for(self.link, now);
            if last.as_ref() != Some(&grant) || now >= beat {
                self.bus.sending(self.link, &grant, now);
                let msg = BusMessage::Grant(grant.clone());
                if let Err(e) = write_message(&mut send, &frame, &msg).await {
                    return anyhow!("sending a grant: {e}");
                }
                self.status.grants_sent.fetch_add(1, Ordering::Relaxed);
                last = Some(grant);
                beat = now + hb;
            }
            let mut wake = beat.min(silent_since + after);
            if let Some(r) = recheck {
                wake = wake.min(r);
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {}
                r = changes.changed() => if r.is_err() {
                    return anyhow!("the bus is gone");
                },
                t = self.answers.recv() => match t {
                    Some(t) => self.answer(t).await,
                    None => return anyhow!("the stream reader ended"),
                },
            }
        }
    }

    async fn answer(&self, t: Term) {
        self.status.acting.store(t.acting, Ordering::Relaxed);
        if self.bus.answered(self.link, t, Instant::now()) {
            let bus = self.bus.clone();
            let _ = tokio::task::spawn_blocking(move || bus.observe_term(t.highest)).await;
        }
    }

    /// The primary is silent: unreachable for the arbiter now (not after the connection's
    /// teardown), and the connection closed so that the link's writer stops too.
    async fn timed_out(&self, silent: Duration) -> anyhow::Error {
        self.status.fence_timeouts.fetch_add(1, Ordering::Relaxed);
        self.status.acting.store(false, Ordering::Relaxed);
        if self.status.connected.swap(false, Ordering::Relaxed) {
            let (bus, link) = (self.bus.clone(), self.link);
            let _ = tokio::task::spawn_blocking(move || bus.observe(link, false)).await;
        }
        self.conn.close(0u32.into(), b"no fencing answer");
        anyhow!(
            "no answer to fencing grants for {} ms (bus.failover_after)",
            silent.as_millis()
        )
    }
}
