//! The aggregation benchmark, runnable on its own (performance is never asserted in tests):
//! `cargo test --release -p opha-sidecar --test aggregate_bench -- --ignored --nocapture`.

use opha_sidecar::aggregate::{bench_aggregate, bench_aggregate_2000, bench_aggregate_spread};

#[test]
#[ignore = "benchmark: run explicitly, in release mode"]
fn aggregate_ms_per_2000_nodes() {
    let one = bench_aggregate_2000(200);
    println!("aggregate_ms_per_2000_nodes, 1 snapshot per interval: {one:.3} ms");
    for ticks in [12, 60] {
        let worst = bench_aggregate(2000, ticks, 10);
        let spread = bench_aggregate_spread(2000, ticks, 10);
        println!(
            "aggregate_ms_per_2000_nodes, {ticks} snapshots per interval: {worst:.3} ms with every \
             node active in every snapshot, {spread:.3} ms with each node polled once per interval"
        );
    }
}

#[test]
fn bench_function_runs() {
    // A smoke test of the function the bench calls: it returns a time, whatever it is.
    assert!(bench_aggregate(50, 2, 2) >= 0.0);
    assert!(bench_aggregate_spread(50, 4, 2) >= 0.0);
}
