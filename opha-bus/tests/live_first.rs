//! Live first: while a large backlog replays under the rate cap, a new record is sent within
//! the linger (it never waits behind the backlog), and the backlog still makes progress.

mod common;

use common::drive::Drive;
use opha_bus::sender::SenderConfig;
use opha_bus::{MILLI, SECOND};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn new_records_overtake_the_backlog(
        max_batch in 1u64..64,
        linger_ms in 0u64..6,
        extra_window in 0u64..256,
        rate_kb in 50u64..5_000,
        ack_ms in 1u64..80,
        bursts in prop::collection::vec((0u64..400, 1u64..64), 1..12),
    ) {
        let linger = linger_ms * MILLI;
        let cfg = SenderConfig {
            max_batch_records: max_batch,
            max_batch_bytes: 1 << 20,
            linger,
            window_records: 2 * max_batch + extra_window,
            replay_bytes_per_sec: rate_kb * 1000,
            replay_records_per_sec: 0,
            replay_burst: 50 * MILLI,
            retransmit_after: 10 * SECOND,
            ..SenderConfig::default()
        };
        let ack_delay = ack_ms * MILLI;
        let mut d = Drive::new(cfg, 100_000, 100, ack_delay);
        let mut live = Vec::new();
        for (gap_ms, size) in bursts {
            // Bursts are at most one batch and apart by more than an ack round trip, so the
            // window's live reserve is free when each starts.
            let size = size.min(max_batch);
            let at = d.now + ack_delay + linger + gap_ms * MILLI + 1;
            d.run_until(at);
            for _ in 0..size {
                live.push((d.append(), d.now));
            }
        }
        d.run_until(d.now + ack_delay + linger + SECOND);
        for (seq, appended) in live {
            let sent = d.first_sent[seq as usize];
            prop_assert!(sent.is_some(), "live record {} never sent", seq);
            let waited = sent.unwrap() - appended;
            prop_assert!(waited <= linger, "record {} waited {} ns > linger {}", seq, waited, linger);
        }
        prop_assert!(d.sender.stats().records_backlog > 0, "backlog made no progress");
        prop_assert!(d.sender.stats().records_live > 0);
    }
}

/// A lone event with no linger configured goes at once; with a linger, a burst larger than a
/// batch goes in full batches without waiting for the linger.
#[test]
fn full_batches_do_not_linger() {
    let cfg = SenderConfig {
        max_batch_records: 8,
        linger: 5 * MILLI,
        window_records: 64,
        replay_bytes_per_sec: 10_000,
        ..SenderConfig::default()
    };
    let mut d = Drive::new(cfg, 0, 100, 10 * MILLI);
    d.run_until(MILLI);
    let first: Vec<u64> = (0..20).map(|_| d.append()).collect();
    d.flush();
    // Two full batches went now; the remaining 4 wait for the linger.
    let now_sent = first
        .iter()
        .filter(|&&s| d.first_sent[s as usize].is_some())
        .count();
    assert_eq!(now_sent, 16);
    d.run_until(MILLI + 5 * MILLI - 1);
    assert!(d.first_sent[19].is_none());
    d.run_until(MILLI + 5 * MILLI);
    assert_eq!(d.first_sent[19], Some(6 * MILLI));
}
