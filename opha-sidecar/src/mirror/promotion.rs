//! When a mirror takes its poller's place, and when it gives it back: a pure state machine
//! (no clock, no socket) in the style of quinn-proto. The driver feeds it what the mirror's
//! receiver sees of the paired poller and the operator's commands, with the time (ns on any
//! monotonic clock), and acts on the [`Decision`]s it returns.
//!
//! Rules:
//!
//! - **Promote** (automatic) when nothing has been received from the poller for
//!   `takeover_after`. The silence clock starts when the core is created, so a mirror that
//!   starts while its poller is away promotes `takeover_after` later, not at once.
//! - **Demote** (automatic) when the poller is back: connected and streaming (records or
//!   heartbeats arriving, no gap of `takeover_after`) for `return_after` (0: at its first
//!   sign of life after reconnecting).
//! - Exactly one promotion per silence: after a promotion the next one needs a demotion
//!   first, which needs the poller back; a poller that flickers (seen once, silent again) does
//!   not demote the mirror.
//! - The operator's [`Command::Promote`] and [`Command::Demote`] act at once and pin the role
//!   (the automatic rules are off) until [`Command::Auto`] hands control back.

use serde::{Deserialize, Serialize};

/// Nanoseconds on the driver's monotonic clock.
pub type Nanos = u64;

/// The two roles of a mirror.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The poller reports; the mirror's own records stay local.
    #[default]
    Standby,
    /// The mirror reports for the poller's nodes.
    Active,
}

/// An operator command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Take over now and stay active until `Demote` or `Auto`.
    Promote,
    /// Give back now and stay standby until `Promote` or `Auto`.
    Demote,
    /// Back to the automatic rules.
    Auto,
}

/// Why the role changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// Nothing from the poller for this long (at least `takeover_after`).
    PollerSilent {
        silent_ns: Nanos,
    },
    /// The poller has been streaming again for this long (at least `return_after`).
    PollerBack {
        streaming_ns: Nanos,
    },
    Operator,
}

/// A role change the driver must carry out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub role: Role,
    pub cause: Cause,
    pub at: Nanos,
}

/// Settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionConfig {
    /// Poller silence before an automatic promotion (> 0).
    pub takeover_after: Nanos,
    /// How long the poller must stream again before an automatic demotion.
    pub return_after: Nanos,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        Self {
            takeover_after: 30_000_000_000,
            return_after: 0,
        }
    }
}

/// What the metrics show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionStats {
    pub promotions: u64,
    pub demotions: u64,
    pub commands: u64,
}

/// The state machine; see the module docs.
#[derive(Clone, Debug)]
pub struct Promotion {
    config: PromotionConfig,
    role: Role,
    forced: Option<Role>,
    /// Last sign of life of the poller (or the start, before any).
    last_seen: Nanos,
    connected: bool,
    /// Start of the poller's current streaming run.
    streaming_since: Option<Nanos>,
    /// The clock never goes backwards for the core (a driver's regression is clamped).
    now: Nanos,
    decisions: std::collections::VecDeque<Decision>,
    stats: PromotionStats,
}

impl Promotion {
    /// A standby mirror at `now`.
    pub fn new(config: PromotionConfig, now: Nanos) -> Self {
        Self {
            config: PromotionConfig {
                takeover_after: config.takeover_after.max(1),
                ..config
            },
            role: Role::Standby,
            forced: None,
            last_seen: now,
            connected: false,
            streaming_since: None,
            now,
            decisions: Default::default(),
            stats: PromotionStats::default(),
        }
    }

    pub fn config(&self) -> &PromotionConfig {
        &self.config
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_active(&self) -> bool {
        self.role == Role::Active
    }

    /// The operator's pinned role, if any.
    pub fn forced(&self) -> Option<Role> {
        self.forced
    }

    pub fn stats(&self) -> PromotionStats {
        self.stats
    }

    /// How long the poller has been silent at `now`.
    pub fn silent_for(&self, now: Nanos) -> Nanos {
        now.max(self.now).saturating_sub(self.last_seen)
    }

    /// Since when the poller streams (connected, no silence), if it does.
    pub fn streaming_since(&self) -> Option<Nanos> {
        self.streaming_since
    }

    fn clock(&mut self, now: Nanos) -> Nanos {
        self.now = self.now.max(now);
        self.now
    }

    /// Something arrived from the poller (a batch, a heartbeat, its hello).
    pub fn poller_seen(&mut self, now: Nanos) {
        let now = self.clock(now);
        // A sign of life after a silence starts a new run; so does the first one after a
        // (re)connection.
        if now.saturating_sub(self.last_seen) >= self.config.takeover_after {
            self.streaming_since = None;
        }
        if self.connected && self.streaming_since.is_none() {
            self.streaming_since = Some(now);
        }
        self.last_seen = now;
        self.evaluate();
    }

    /// The poller's connection to this mirror came up or went down.
    pub fn poller_connected(&mut self, up: bool, now: Nanos) {
        let now = self.clock(now);
        self.connected = up;
        if !up {
            self.streaming_since = None;
        }
        self.evaluate_at(now);
    }

    /// An operator command.
    pub fn command(&mut self, cmd: Command, now: Nanos) {
        self.clock(now);
        self.stats.commands += 1;
        match cmd {
            Command::Promote => {
                self.forced = Some(Role::Active);
                self.switch(Role::Active, Cause::Operator);
            }
            Command::Demote => {
                self.forced = Some(Role::Standby);
                self.switch(Role::Standby, Cause::Operator);
            }
            Command::Auto => {
                self.forced = None;
                self.evaluate();
            }
        }
    }

    /// Time passes.
    pub fn tick(&mut self, now: Nanos) {
        let now = self.clock(now);
        self.evaluate_at(now);
    }

    /// The next time a [`Promotion::tick`] may decide something (none: only an input can).
    pub fn poll_timeout(&self) -> Option<Nanos> {
        if self.forced.is_some() {
            return None;
        }
        match self.role {
            Role::Standby => Some(self.last_seen.saturating_add(self.config.takeover_after)),
            Role::Active => self
                .streaming_since
                .map(|s| s.saturating_add(self.config.return_after)),
        }
    }

    /// The next decision to carry out, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    fn evaluate(&mut self) {
        self.evaluate_at(self.now)
    }

    fn evaluate_at(&mut self, now: Nanos) {
        let silent = now.saturating_sub(self.last_seen);
        if silent >= self.config.takeover_after {
            // Silence ends a streaming run even without a disconnection (a stuck poller).
            self.streaming_since = None;
        }
        if self.forced.is_some() {
            return;
        }
        match self.role {
            Role::Standby if silent >= self.config.takeover_after => {
                self.switch(Role::Active, Cause::PollerSilent { silent_ns: silent });
            }
            Role::Active => {
                if let Some(since) = self.streaming_since {
                    let streaming = now.saturating_sub(since);
                    if self.connected && streaming >= self.config.return_after {
                        self.switch(
                            Role::Standby,
                            Cause::PollerBack {
                                streaming_ns: streaming,
                            },
                        );
                    }
                }
            }
            Role::Standby => {}
        }
    }

    fn switch(&mut self, role: Role, cause: Cause) {
        if self.role == role {
            return;
        }
        self.role = role;
        match role {
            Role::Active => self.stats.promotions += 1,
            Role::Standby => self.stats.demotions += 1,
        }
        self.decisions.push_back(Decision {
            role,
            cause,
            at: self.now,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn core(return_after: Nanos) -> Promotion {
        Promotion::new(
            PromotionConfig {
                takeover_after: 30 * S,
                return_after,
            },
            0,
        )
    }

    #[test]
    fn promotes_after_the_silence_and_demotes_when_the_poller_streams() {
        let mut p = core(5 * S);
        p.poller_connected(true, 0);
        for t in 0..10 {
            p.poller_seen(t * S);
        }
        p.tick(38 * S);
        assert_eq!(p.poll_decision(), None, "silent 29 s only");
        assert_eq!(p.poll_timeout(), Some(39 * S));
        p.tick(39 * S);
        let d = p.poll_decision().expect("promoted");
        assert_eq!(d.role, Role::Active);
        assert_eq!(d.cause, Cause::PollerSilent { silent_ns: 30 * S });
        p.poller_connected(false, 40 * S);
        // Back: a flicker does not demote.
        p.poller_connected(true, 100 * S);
        p.poller_seen(100 * S);
        p.tick(102 * S);
        assert_eq!(p.poll_decision(), None);
        p.poller_connected(false, 103 * S);
        p.poller_connected(true, 110 * S);
        p.poller_seen(110 * S);
        p.poller_seen(114 * S);
        p.tick(115 * S);
        let d = p.poll_decision().expect("demoted");
        assert_eq!(d.role, Role::Standby);
        assert_eq!(
            d.cause,
            Cause::PollerBack {
                streaming_ns: 5 * S
            }
        );
        assert_eq!(p.stats().promotions, 1);
        assert_eq!(p.stats().demotions, 1);
    }

    #[test]
    fn a_mirror_started_alone_waits_for_the_delay() {
        let mut p = core(0);
        p.tick(29 * S);
        assert!(!p.is_active());
        p.tick(30 * S);
        assert!(p.is_active());
    }

    #[test]
    fn operator_commands_pin_the_role_until_auto() {
        let mut p = core(0);
        p.poller_connected(true, 0);
        p.poller_seen(S);
        p.command(Command::Promote, 2 * S);
        assert_eq!(p.poll_decision().map(|d| d.cause), Some(Cause::Operator));
        p.poller_seen(3 * S);
        p.tick(4 * S);
        assert!(p.is_active(), "pinned despite the streaming poller");
        p.command(Command::Auto, 5 * S);
        assert!(!p.is_active(), "the poller streams: back to standby");
        p.command(Command::Demote, 6 * S);
        p.tick(100 * S);
        assert!(!p.is_active(), "pinned standby despite the silence");
        p.command(Command::Auto, 101 * S);
        assert!(p.is_active());
    }
}
