//! The disk budget, through the driver: a warning alarm at 80%, metrics thinned at 100% while
//! every event is kept, intake refused with a critical alarm when even events do not fit, and
//! everything back to normal once consumers free space.

mod common;

use common::{ScratchDir, small_segments};
use opha_log::{Appended, BudgetConfig, BudgetLevel, Error, Log, RecordClass};

#[test]
fn budget_alarms_thinning_and_blocking() {
    let dir = ScratchDir::new("budget");
    let mut config = small_segments(dir.path(), 4096);
    config.budget = BudgetConfig::new(64 << 10);
    let log = Log::open(config).unwrap();
    log.add_cursor("receiver").unwrap();
    let payload = [7u8; 100];

    // Fill with events up to the warning threshold.
    let mut appended_events = 0u64;
    while log.metrics().budget_level == BudgetLevel::Normal {
        assert!(matches!(
            log.append(RecordClass::Event, &payload).unwrap(),
            Appended::Durable(_)
        ));
        appended_events += 1;
    }
    let alarms = log.take_budget_alarms();
    assert_eq!(alarms.len(), 1);
    assert_eq!(
        (alarms[0].from, alarms[0].to),
        (BudgetLevel::Normal, BudgetLevel::Warning)
    );
    assert!(alarms[0].used_bytes >= (64 << 10) * 8 / 10);

    // Up to the limit: still everything is kept.
    while log.metrics().budget_level == BudgetLevel::Warning {
        assert!(matches!(
            log.append(RecordClass::Metric, &payload).unwrap(),
            Appended::Durable(_)
        ));
    }
    assert_eq!(log.metrics().budget_level, BudgetLevel::Thinning);

    // Full: one metric in ten is kept, every event that fits is kept.
    let (mut kept, mut thinned) = (0, 0);
    for _ in 0..50 {
        match log.append(RecordClass::Metric, &payload).unwrap() {
            Appended::Durable(_) => kept += 1,
            Appended::Thinned => thinned += 1,
        }
    }
    assert_eq!((kept, thinned), (5, 45));
    assert_eq!(log.metrics().metrics_thinned, 45);

    // Events go on into the reserve until there is no room at all.
    let refused = loop {
        match log.append(RecordClass::Event, &payload) {
            Ok(Appended::Durable(_)) => appended_events += 1,
            Ok(Appended::Thinned) => panic!("an event was thinned"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(refused, Error::BudgetExhausted { .. }),
        "{refused}"
    );
    assert!(refused.is_out_of_space());
    let metrics = log.metrics();
    assert_eq!(metrics.budget_level, BudgetLevel::Blocked);
    assert!(metrics.used_bytes <= (64 << 10) * 110 / 100);
    assert!(matches!(
        log.append(RecordClass::Metric, &payload),
        Err(Error::BudgetExhausted { .. })
    ));
    let alarms = log.take_budget_alarms();
    assert!(
        alarms.iter().any(|a| a.is_critical() && a.is_raised()),
        "{alarms:?}"
    );

    // Every event appended is there.
    let events = log
        .read_from(1)
        .map(|r| r.unwrap())
        .filter(|r| r.class == RecordClass::Event)
        .count() as u64;
    assert_eq!(events, appended_events);

    // The consumer takes everything: segments go, the alarms clear, intake resumes.
    log.set_cursor("receiver", log.durable_next_seq()).unwrap();
    let metrics = log.metrics();
    assert_eq!(metrics.budget_level, BudgetLevel::Normal);
    let alarms = log.take_budget_alarms();
    let last = alarms.last().expect("a clearing transition");
    assert!(
        !last.is_raised() && last.to == BudgetLevel::Normal,
        "{alarms:?}"
    );
    assert!(matches!(
        log.append(RecordClass::Metric, &payload).unwrap(),
        Appended::Durable(_)
    ));
}
