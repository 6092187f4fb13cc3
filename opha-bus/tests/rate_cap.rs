//! The replay rate cap: a backlog replays at no more than the configured bytes/s and
//! records/s (plus the bucket's burst and one batch), and not much below it either.

mod common;

use common::drive::Drive;
use opha_bus::sender::SenderConfig;
use opha_bus::{MILLI, Nanos, SECOND};
use proptest::prelude::*;

/// Checks every window [a.at, b.at] between two sends: what went out in it is within the
/// bucket depth plus the rate over its length plus the send at its end. O(n): with scaled
/// units, max over i <= j of (S_j - S_{i-1}) - rate * (t_j - t_i) is
/// (S_j - rate * t_j) - min over i <= j of (S_{i-1} - rate * t_i).
fn within_cap(
    sends: &[(Nanos, u64)],
    per_sec: u64,
    burst: Nanos,
    last_max: u64,
) -> Result<(), String> {
    let sec = i128::from(SECOND);
    let rate = i128::from(per_sec);
    let depth = (rate * i128::from(burst)).max(sec);
    let mut before = 0i128; // S_{i-1}, scaled
    let mut min_start = i128::MAX;
    for (j, &(t, units)) in sends.iter().enumerate() {
        min_start = min_start.min(before - rate * i128::from(t));
        let after = before + i128::from(units) * sec;
        let worst = (after - rate * i128::from(t)) - min_start;
        let allowed = depth + i128::from(last_max) * sec;
        if worst > allowed {
            return Err(format!(
                "send {j}: a window ending here carried {} units, allowed {}",
                worst / sec,
                allowed / sec
            ));
        }
        before = after;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn backlog_respects_bytes_and_records_caps(
        bytes_kb in 20u64..2_000,
        records_per_sec in prop::option::of(100u64..20_000),
        max_batch in 1u64..128,
        record_len in 10usize..400,
        burst_ms in 1u64..200,
        ack_ms in 0u64..50,
    ) {
        let per_sec = bytes_kb * 1000;
        let burst = burst_ms * MILLI;
        let cfg = SenderConfig {
            max_batch_records: max_batch,
            max_batch_bytes: 1 << 20,
            window_records: 4 * max_batch + 64,
            replay_bytes_per_sec: per_sec,
            replay_records_per_sec: records_per_sec.unwrap_or(0),
            replay_burst: burst,
            ..SenderConfig::default()
        };
        let mut d = Drive::new(cfg, 1_000_000, record_len, ack_ms * MILLI);
        let horizon = 2 * SECOND;
        d.run_until(horizon);
        let max_frame = d.sent.iter().map(|s| s.wire_bytes).max().unwrap_or(0);
        let bytes: Vec<(Nanos, u64)> = d.sent.iter().map(|s| (s.at, s.wire_bytes)).collect();
        prop_assert!(!bytes.is_empty());
        within_cap(&bytes, per_sec, burst, max_frame).map_err(TestCaseError::fail)?;
        let mut expected_rate = per_sec as f64;
        if let Some(rps) = records_per_sec {
            let recs: Vec<(Nanos, u64)> = d.sent.iter().map(|s| (s.at, s.records)).collect();
            // Records are taken before sending, so no batch goes beyond the bucket.
            within_cap(&recs, rps, burst, 0).map_err(TestCaseError::fail)?;
            let per_record = max_frame as f64 / d.sent.iter().map(|s| s.records).max().unwrap() as f64;
            expected_rate = expected_rate.min(rps as f64 * per_record);
        }
        // Not starved either: over the horizon at least 70% of the cap (the window and the
        // ack delay can hold it back; these configurations leave room).
        let total: u64 = d.sent.iter().map(|s| s.wire_bytes).sum();
        let rate = total as f64 / (horizon as f64 / SECOND as f64);
        let window_bound = (4 * max_batch + 64 - max_batch) as f64 * max_frame as f64
            / d.sent.iter().map(|s| s.records).max().unwrap() as f64
            / ((ack_ms.max(1) * MILLI) as f64 / SECOND as f64);
        prop_assert!(
            rate >= 0.7 * expected_rate.min(window_bound),
            "replayed at {rate:.0} B/s, cap {expected_rate:.0}, window bound {window_bound:.0}"
        );
    }
}
