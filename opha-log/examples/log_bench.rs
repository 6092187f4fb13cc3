//! Runs the replay log benchmark and prints its JSON:
//! `cargo run --release -p opha-log --example log_bench [SECONDS_PER_PHASE] [WRITERS] [WINDOW_MS] [BATCH]`.

use std::time::Duration;

use opha_log::bench::{LogBenchOptions, run_log_bench_with};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut options = LogBenchOptions::default();
    if let Some(seconds) = args.next().and_then(|s| s.parse::<f64>().ok()) {
        options.duration = Duration::from_secs_f64(seconds);
    }
    if let Some(writers) = args.next().and_then(|s| s.parse().ok()) {
        options.writers = writers;
    }
    if let Some(window_ms) = args.next().and_then(|s| s.parse::<f64>().ok()) {
        options.commit_window = Duration::from_secs_f64(window_ms / 1000.0);
    }
    if let Some(batch) = args.next().and_then(|s| s.parse().ok()) {
        options.batch_records = batch;
    }
    let result = run_log_bench_with(&options);
    println!(
        "{}",
        serde_json::to_string_pretty(&result).unwrap_or_else(|e| e.to_string())
    );
    if result.get("error").is_some() {
        std::process::exit(1);
    }
}
