//! The replay log benchmark behind `cargo xtask bench log`.
//!
//! Three phases, one run, one disk:
//! 1. saturated: several writer threads append 100-byte records as fast as the log takes them,
//!    each record counted only once the log said it is fsynced: `durable_records_per_sec`;
//! 2. paced: the same writers offer a fixed load (`paced_records_per_sec`, default 500,000/s,
//!    the target rate) on a schedule; each record's latency runs from the moment the schedule
//!    says it is submitted (so a stalled writer is charged for the delay) until its writer
//!    learns it is durable: `append_to_durable_p99_ms`. At saturation latency only measures
//!    the queue, so the saturated phase's p99 is reported apart (`saturated_p99_ms`);
//! 3. redb: the same records inserted into redb by as many threads, in batches of the same
//!    size, each batch one transaction committed with `Durability::Immediate`:
//!    `redb_records_per_sec`, and `ratio_vs_redb` against phase 1.
//!
//! Writers keep a bounded number of records in flight (submit a batch, wait for all of it),
//! which is how the pipeline uses the log: read a batch from the kernel ring buffer, append it,
//! advance the ring buffer once it is durable.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::{BudgetConfig, Log, LogConfig, RecordClass, Submitted};

/// What the benchmark runs.
#[derive(Clone, Debug)]
pub struct LogBenchOptions {
    /// Scratch space for the log and the redb file (removed afterwards). Must be on the disk to
    /// measure, not a tmpfs.
    pub data_dir: PathBuf,
    pub writers: usize,
    pub record_bytes: usize,
    /// Records a writer submits before waiting for them; also the redb batch size.
    pub batch_records: usize,
    /// How long each of the three phases runs.
    pub duration: Duration,
    pub commit_window: Duration,
    /// The load offered in the paced phase, all writers together.
    pub paced_records_per_sec: u64,
}

impl Default for LogBenchOptions {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            writers: 4,
            record_bytes: 100,
            batch_records: 1000,
            duration: Duration::from_secs(3),
            commit_window: LogConfig::new("").commit_window,
            paced_records_per_sec: 500_000,
        }
    }
}

/// `target/bench-tmp` of the workspace (the target dir is on the build disk; /tmp may be a
/// tmpfs, where fsync costs nothing and the figures would mean nothing).
pub fn default_data_dir() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir.parent().unwrap_or(manifest_dir);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    target.join("bench-tmp")
}

/// Runs the benchmark with the default options. On failure the JSON holds `error` instead of
/// the figures.
pub fn run_log_bench() -> Value {
    run_log_bench_with(&LogBenchOptions::default())
}

/// Runs the benchmark with `options`.
pub fn run_log_bench_with(options: &LogBenchOptions) -> Value {
    match try_run(options) {
        Ok(value) => value,
        Err(error) => json!({ "error": error }),
    }
}

/// Removes a scratch path when dropped, also on an early return.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        let _ = std::fs::remove_file(&self.0);
    }
}

fn try_run(options: &LogBenchOptions) -> Result<Value, String> {
    if options.writers == 0 || options.batch_records == 0 {
        return Err("writers and batch_records must be at least 1".to_owned());
    }
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("creating {}: {e}", options.data_dir.display()))?;
    let tag = format!("{}-{}", std::process::id(), nonce());
    let saturated_dir = Scratch(options.data_dir.join(format!("log-{tag}")));
    let paced_dir = Scratch(options.data_dir.join(format!("log-paced-{tag}")));
    let redb_file = Scratch(options.data_dir.join(format!("redb-{tag}.redb")));

    let log = bench_log(options, &saturated_dir.0, None)?;
    drop(saturated_dir);
    let paced = bench_log(options, &paced_dir.0, Some(options.paced_records_per_sec))?;
    drop(paced_dir);
    let redb = bench_redb(options, &redb_file.0)?;
    let ratio = if redb.records_per_sec > 0.0 {
        log.records_per_sec / redb.records_per_sec
    } else {
        0.0
    };
    Ok(json!({
        "durable_records_per_sec": log.records_per_sec.round(),
        "saturated_p50_ms": log.p50_ms,
        "saturated_p99_ms": log.p99_ms,
        "fsyncs_per_sec": log.fsyncs_per_sec.round(),
        "records_per_fsync": log.records_per_fsync,
        "fsync_p99_ms": log.fsync_p99_ms,
        "paced_records_per_sec": options.paced_records_per_sec,
        "paced_achieved_records_per_sec": paced.records_per_sec.round(),
        "append_to_durable_p50_ms": paced.p50_ms,
        "append_to_durable_p99_ms": paced.p99_ms,
        "append_to_durable_max_ms": paced.max_ms,
        "paced_fsync_p99_ms": paced.fsync_p99_ms,
        "redb_records_per_sec": redb.records_per_sec.round(),
        "redb_commit_p99_ms": redb.commit_p99_ms,
        "ratio_vs_redb": (ratio * 100.0).round() / 100.0,
        "record_bytes": options.record_bytes,
        "writers": options.writers,
        "batch_records": options.batch_records,
        "commit_window_ms": options.commit_window.as_secs_f64() * 1000.0,
        "phase_seconds": options.duration.as_secs_f64(),
        "data_dir": options.data_dir.display().to_string(),
    }))
}

/// Distinguishes runs within one process (tests run the benchmark in parallel).
fn nonce() -> u64 {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

struct LogFigures {
    records_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    fsyncs_per_sec: f64,
    records_per_fsync: f64,
    fsync_p99_ms: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

fn payload(writer: usize, record_bytes: usize) -> Vec<u8> {
    (0..record_bytes)
        .map(|i| (i * 31 + writer * 7) as u8)
        .collect()
}

/// Runs the log with `options.writers` threads, as fast as possible or paced to
/// `paced_records_per_sec` in total.
fn bench_log(
    options: &LogBenchOptions,
    dir: &Path,
    paced_records_per_sec: Option<u64>,
) -> Result<LogFigures, String> {
    let mut config = LogConfig::new(dir);
    config.commit_window = options.commit_window;
    // The budget is not what is measured: make it large enough never to thin.
    config.budget = BudgetConfig::new(1 << 40);
    let log = Arc::new(Log::open(config).map_err(|e| e.to_string())?);
    let started = Instant::now();
    let deadline = started + options.duration;
    let writers: Vec<_> = (0..options.writers)
        .map(|writer| {
            let log = Arc::clone(&log);
            let payload = payload(writer, options.record_bytes);
            let batch = options.batch_records;
            // Paced: one batch per interval per writer, the interval set by the rate.
            let interval = paced_records_per_sec.map(|rate| {
                Duration::from_secs_f64(batch as f64 * options.writers as f64 / rate.max(1) as f64)
            });
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                let mut latencies = histogram();
                let mut durable = 0u64;
                let mut submitted = Vec::with_capacity(batch);
                let records =
                    || std::iter::repeat_n((RecordClass::Metric, payload.as_slice()), batch);
                let mut scheduled = Instant::now();
                while Instant::now() < deadline {
                    submitted.clear();
                    // Every record of the batch is timed from before the first is submitted (or
                    // from when the schedule wanted it submitted), to the moment its writer
                    // learns that the last is durable.
                    let submitted_at = match interval {
                        Some(interval) => {
                            scheduled += interval;
                            if let Some(early) = scheduled.checked_duration_since(Instant::now()) {
                                std::thread::sleep(early);
                            }
                            scheduled
                        }
                        None => Instant::now(),
                    };
                    log.submit_batch(records(), &mut submitted)
                        .map_err(|e| e.to_string())?;
                    if submitted.iter().any(|s| matches!(s, Submitted::Thinned)) {
                        return Err("a record was thinned".to_owned());
                    }
                    log.wait_all(&submitted).map_err(|e| e.to_string())?;
                    let micros = (submitted_at.elapsed().as_micros() as u64).max(1);
                    let _ = latencies.record_n(micros, submitted.len() as u64);
                    durable += submitted.len() as u64;
                }
                Ok((durable, latencies))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut latencies = histogram();
    for writer in writers {
        let (durable, histogram) = writer
            .join()
            .map_err(|_| "a log writer panicked".to_owned())??;
        total += durable;
        latencies.add(&histogram).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = log.metrics();
    let ms = |micros: u64| micros as f64 / 1000.0;
    Ok(LogFigures {
        records_per_sec: total as f64 / elapsed,
        p50_ms: ms(latencies.value_at_quantile(0.50)),
        p99_ms: ms(latencies.value_at_quantile(0.99)),
        max_ms: ms(latencies.max()),
        fsyncs_per_sec: metrics.fsyncs as f64 / elapsed,
        records_per_fsync: if metrics.fsyncs > 0 {
            (metrics.records_appended as f64 / metrics.fsyncs as f64).round()
        } else {
            0.0
        },
        fsync_p99_ms: ms(metrics.fsync_latency_us.value_at_quantile(0.99)),
    })
}

struct RedbFigures {
    records_per_sec: f64,
    commit_p99_ms: f64,
}

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("records");

fn bench_redb(options: &LogBenchOptions, file: &Path) -> Result<RedbFigures, String> {
    let db = Arc::new(redb::Database::create(file).map_err(|e| format!("redb create: {e}"))?);
    let started = Instant::now();
    let deadline = started + options.duration;
    let writers: Vec<_> = (0..options.writers)
        .map(|writer| {
            let db = Arc::clone(&db);
            let payload = payload(writer, options.record_bytes);
            let batch = options.batch_records as u64;
            std::thread::spawn(move || -> Result<(u64, Histogram<u64>), String> {
                let mut commits = histogram();
                let mut inserted = 0u64;
                // Keys unique per writer, ascending, like sequence numbers.
                let mut key = (writer as u64) << 48;
                while Instant::now() < deadline {
                    let commit_started = Instant::now();
                    let mut txn = db.begin_write().map_err(|e| format!("redb begin: {e}"))?;
                    txn.set_durability(redb::Durability::Immediate)
                        .map_err(|e| format!("redb durability: {e}"))?;
                    {
                        let mut table = txn
                            .open_table(REDB_TABLE)
                            .map_err(|e| format!("redb table: {e}"))?;
                        for _ in 0..batch {
                            table
                                .insert(key, payload.as_slice())
                                .map_err(|e| format!("redb insert: {e}"))?;
                            key += 1;
                        }
                    }
                    txn.commit().map_err(|e| format!("redb commit: {e}"))?;
                    let _ = commits.record((commit_started.elapsed().as_micros() as u64).max(1));
                    inserted += batch;
                }
                Ok((inserted, commits))
            })
        })
        .collect();
    let mut total = 0u64;
    let mut commits = histogram();
    for writer in writers {
        let (inserted, histogram) = writer
            .join()
            .map_err(|_| "a redb writer panicked".to_owned())??;
        total += inserted;
        commits.add(&histogram).map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(RedbFigures {
        records_per_sec: total as f64 / elapsed,
        commit_p99_ms: commits.value_at_quantile(0.99) as f64 / 1000.0,
    })
}
