//! The disk budget policy. Pure: the caller says how many bytes the log uses; the policy says
//! whether a record may be appended and which alarm to raise or clear.
//!
//! Levels, by the bytes the log uses (including records not yet synced):
//! - `Normal` below `warn_percent` (80%) of the limit;
//! - `Warning` from 80%: an alarm, raised once;
//! - `Thinning` from 100%: metrics are thinned (one in `thin_keep_every` kept, the others
//!   refused with `Admission::Thin` and counted), events are still accepted into a reserve of
//!   `event_reserve_percent` above the limit;
//! - `Blocked` when a record does not fit under the limit plus the reserve: nothing is accepted
//!   (the caller must stop intake) and a critical alarm is raised.
//!
//! Going up is immediate; going down needs the usage to fall `clear_margin_percent` below the
//! level's threshold, so the alarms do not flap around a threshold.

use crate::format::RecordClass;

/// Thresholds of the disk budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// The budget: bytes the log may use on disk (100%).
    pub limit_bytes: u64,
    /// Usage at which the warning alarm is raised, in percent of the limit.
    pub warn_percent: u64,
    /// How far below a threshold usage must fall before its level is left, in percent.
    pub clear_margin_percent: u64,
    /// While thinning, one metric record in this many is kept.
    pub thin_keep_every: u64,
    /// Room above the limit that only events (and kept metrics) may use, in percent.
    pub event_reserve_percent: u64,
}

impl BudgetConfig {
    /// The defaults for a budget of `limit_bytes`: warn at 80%, clear 5 points lower, keep one
    /// metric in 10 when full, and a 10% reserve for events.
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            limit_bytes,
            warn_percent: 80,
            clear_margin_percent: 5,
            thin_keep_every: 10,
            event_reserve_percent: 10,
        }
    }

    fn percent(&self, percent: u64) -> u64 {
        // u128: a limit near u64::MAX times a percentage must not overflow.
        (u128::from(self.limit_bytes) * u128::from(percent) / 100).min(u128::from(u64::MAX)) as u64
    }

    /// Usage at which a level is entered.
    pub fn enter_threshold(&self, level: BudgetLevel) -> u64 {
        match level {
            BudgetLevel::Normal => 0,
            BudgetLevel::Warning => self.percent(self.warn_percent),
            BudgetLevel::Thinning => self.limit_bytes,
            BudgetLevel::Blocked => self.hard_limit(),
        }
    }

    /// Usage below which a level is left.
    pub fn leave_threshold(&self, level: BudgetLevel) -> u64 {
        self.enter_threshold(level)
            .saturating_sub(self.percent(self.clear_margin_percent))
    }

    /// The most bytes the log may ever use: the limit plus the event reserve.
    pub fn hard_limit(&self) -> u64 {
        self.percent(100 + self.event_reserve_percent)
    }
}

/// How full the budget is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BudgetLevel {
    Normal,
    Warning,
    Thinning,
    Blocked,
}

impl BudgetLevel {
    fn below(self) -> Self {
        match self {
            Self::Normal | Self::Warning => Self::Normal,
            Self::Thinning => Self::Warning,
            Self::Blocked => Self::Thinning,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Warning => "warning",
            Self::Thinning => "thinning",
            Self::Blocked => "blocked",
        }
    }
}

/// What happens to a record offered to the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Append it.
    Accept,
    /// A metric thinned away because the budget is exhausted; counted, and the caller is told.
    Thin,
    /// No room even for events: the caller must block intake until space is freed.
    Refuse,
}

/// A change of level: an alarm raised (`to > from`) or cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetTransition {
    pub from: BudgetLevel,
    pub to: BudgetLevel,
    pub used_bytes: u64,
    pub limit_bytes: u64,
}

impl BudgetTransition {
    /// True when the usage went up a level (an alarm is raised), false when it is cleared.
    pub fn is_raised(&self) -> bool {
        self.to > self.from
    }

    /// True when intake is now blocked: the critical alarm.
    pub fn is_critical(&self) -> bool {
        self.to == BudgetLevel::Blocked
    }
}

/// The budget's state: level, thinning counter and totals.
#[derive(Clone, Debug)]
pub struct DiskBudget {
    config: BudgetConfig,
    level: BudgetLevel,
    metrics_offered_while_thinning: u64,
    /// Metrics thinned away since the log was opened.
    pub thinned: u64,
    /// Records refused for lack of room since the log was opened.
    pub refused: u64,
}

impl DiskBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            level: BudgetLevel::Normal,
            metrics_offered_while_thinning: 0,
            thinned: 0,
            refused: 0,
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    pub fn level(&self) -> BudgetLevel {
        self.level
    }

    /// Updates the level for the current usage (call it after space is freed, too).
    pub fn observe(&mut self, used_bytes: u64) -> Option<BudgetTransition> {
        let raw = [
            BudgetLevel::Blocked,
            BudgetLevel::Thinning,
            BudgetLevel::Warning,
        ]
        .into_iter()
        .find(|level| used_bytes >= self.config.enter_threshold(*level))
        .unwrap_or(BudgetLevel::Normal);
        let mut next = self.level;
        if raw > next {
            next = raw;
        } else {
            while next > raw && used_bytes < self.config.leave_threshold(next) {
                next = next.below();
            }
        }
        self.move_to(next, used_bytes)
    }

    /// Decides whether a record of `record_bytes` of `class` may be appended to a log that uses
    /// `used_bytes`, and updates the level.
    pub fn admit(
        &mut self,
        used_bytes: u64,
        record_bytes: u64,
        class: RecordClass,
    ) -> (Admission, Option<BudgetTransition>) {
        let transition = self.observe(used_bytes);
        if self.level == BudgetLevel::Blocked
            || used_bytes.saturating_add(record_bytes) > self.config.hard_limit()
        {
            self.refused += 1;
            let from = transition.map_or(self.level, |t| t.from);
            self.move_to(BudgetLevel::Blocked, used_bytes);
            // One transition from the level before this call, even if usage jumped two levels.
            let blocked = (from != BudgetLevel::Blocked).then_some(BudgetTransition {
                from,
                to: BudgetLevel::Blocked,
                used_bytes,
                limit_bytes: self.config.limit_bytes,
            });
            return (Admission::Refuse, blocked);
        }
        if class == RecordClass::Metric && self.level >= BudgetLevel::Thinning {
            let offered = self.metrics_offered_while_thinning;
            self.metrics_offered_while_thinning += 1;
            if !offered.is_multiple_of(self.config.thin_keep_every.max(1)) {
                self.thinned += 1;
                return (Admission::Thin, transition);
            }
        }
        (Admission::Accept, transition)
    }

    fn move_to(&mut self, level: BudgetLevel, used_bytes: u64) -> Option<BudgetTransition> {
        if level == self.level {
            return None;
        }
        let transition = BudgetTransition {
            from: self.level,
            to: level,
            used_bytes,
            limit_bytes: self.config.limit_bytes,
        };
        if level < BudgetLevel::Thinning {
            // A new thinning episode keeps its first metric again.
            self.metrics_offered_while_thinning = 0;
        }
        self.level = level;
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 1000;

    fn budget() -> DiskBudget {
        DiskBudget::new(BudgetConfig::new(LIMIT))
    }

    #[test]
    fn warning_is_raised_once_and_cleared_with_hysteresis() {
        let mut budget = budget();
        assert_eq!(budget.observe(799), None);
        let raised = budget.observe(800).unwrap();
        assert!(raised.is_raised());
        assert_eq!(
            (raised.from, raised.to),
            (BudgetLevel::Normal, BudgetLevel::Warning)
        );
        // Hovering around the threshold raises nothing more.
        for used in [790, 805, 760, 799, 800, 751] {
            assert_eq!(budget.observe(used), None, "used {used}");
        }
        let cleared = budget.observe(749).unwrap();
        assert!(!cleared.is_raised());
        assert_eq!(cleared.to, BudgetLevel::Normal);
    }

    #[test]
    fn full_budget_thins_metrics_and_keeps_every_event() {
        let mut budget = budget();
        let (admission, transition) = budget.admit(1000, 10, RecordClass::Metric);
        assert_eq!(
            admission,
            Admission::Accept,
            "the first metric of an episode is kept"
        );
        assert_eq!(transition.unwrap().to, BudgetLevel::Thinning);
        let mut kept = 1;
        for _ in 1..100 {
            match budget.admit(1000, 10, RecordClass::Metric).0 {
                Admission::Accept => kept += 1,
                Admission::Thin => {}
                Admission::Refuse => {
                    panic!("metrics are thinned, not refused, below the hard limit")
                }
            }
        }
        assert_eq!(kept, 10);
        assert_eq!(budget.thinned, 90);
        for _ in 0..100 {
            assert_eq!(
                budget.admit(1050, 10, RecordClass::Event).0,
                Admission::Accept
            );
        }
    }

    #[test]
    fn no_room_for_events_blocks_intake_until_space_is_freed() {
        let mut budget = budget();
        let (admission, transition) = budget.admit(1095, 10, RecordClass::Event);
        assert_eq!(admission, Admission::Refuse);
        let transition = transition.unwrap();
        assert!(transition.is_critical());
        assert_eq!(budget.refused, 1);
        // Still blocked while usage stays within the clear margin of the hard limit.
        assert_eq!(
            budget.admit(1060, 10, RecordClass::Event).0,
            Admission::Refuse
        );
        let (admission, transition) = budget.admit(1040, 10, RecordClass::Event);
        assert_eq!(admission, Admission::Accept);
        assert_eq!(transition.unwrap().to, BudgetLevel::Thinning);
        let cleared = budget.observe(100).unwrap();
        assert_eq!(
            (cleared.from, cleared.to),
            (BudgetLevel::Thinning, BudgetLevel::Normal)
        );
    }

    proptest! {
        #[test]
        fn events_are_accepted_whenever_they_fit(steps in prop::collection::vec((0u64..1300, 1u64..50, any::<bool>()), 1..200)) {
            let mut budget = budget();
            let hard = budget.config().hard_limit();
            let mut last_level = budget.level();
            for (used, size, event) in steps {
                let class = if event { RecordClass::Event } else { RecordClass::Metric };
                let (admission, transition) = budget.admit(used, size, class);
                if let Some(t) = transition {
                    prop_assert_ne!(t.from, t.to);
                    prop_assert_eq!(t.from, last_level);
                }
                last_level = budget.level();
                // Never over the hard limit; an event that fits is refused only while blocked.
                if admission != Admission::Refuse {
                    prop_assert!(used + size <= hard);
                }
                if event {
                    prop_assert_ne!(admission, Admission::Thin);
                    if admission == Admission::Refuse {
                        prop_assert_eq!(budget.level(), BudgetLevel::Blocked);
                    }
                }
                if used < 750 {
                    prop_assert_eq!(budget.level(), BudgetLevel::Normal);
                    prop_assert_eq!(admission, Admission::Accept);
                }
            }
        }
    }
}
