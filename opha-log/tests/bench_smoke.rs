//! The benchmark runs end to end (briefly) and reports every figure. Performance itself is not
//! asserted: that is the benchmark's job, not a test's.

use std::time::Duration;

use opha_log::bench::{LogBenchOptions, run_log_bench_with};

#[test]
fn benchmark_reports_every_figure_and_cleans_up() {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("opha-log-bench-{}", std::process::id()));
    let options = LogBenchOptions {
        data_dir: data_dir.clone(),
        duration: Duration::from_millis(200),
        writers: 2,
        batch_records: 100,
        ..LogBenchOptions::default()
    };
    let result = run_log_bench_with(&options);
    assert!(result.get("error").is_none(), "{result}");
    for key in [
        "durable_records_per_sec",
        "append_to_durable_p99_ms",
        "redb_records_per_sec",
        "ratio_vs_redb",
    ] {
        let value = result[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {result}"));
        assert!(value > 0.0, "{key} = {value}");
    }
    let leftovers: Vec<_> = std::fs::read_dir(&data_dir).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "scratch files left behind: {leftovers:?}"
    );
    std::fs::remove_dir(&data_dir).unwrap();
}
