//! Crash safety: a child process appends at full speed (several threads, small segments so it
//! rolls over all the time, a cursor moving so segments get deleted) and is killed with SIGKILL
//! at random moments. It prints a sequence number only after `append` returned it durable. After
//! every kill the log is reopened and every acknowledged record must be there exactly once, in
//! order, with the bytes that were written.
//!
//! The child is this test binary run again with `OPHA_LOG_CRASH_CHILD_DIR` set (the test
//! `child_process_entry_point` does the appending then; without the variable it does nothing).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{ScratchDir, class_for, payload_for, small_segments};
use opha_log::{Log, Submitted};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "OPHA_LOG_CRASH_CHILD_DIR";
const CURSOR: &str = "receiver";
const SEGMENT_BYTES: u64 = 32 << 10;
/// How far behind the durable end the child keeps its cursor.
const CURSOR_LAG: u64 = 20_000;
const MIN_ROUNDS: usize = 50;
const MAX_ROUNDS: usize = 80;
/// Stop adding rounds past this (the minimum is always run).
const TIME_BUDGET: Duration = Duration::from_secs(45);
/// A child never killed (the parent died) stops by itself.
const CHILD_LIFETIME: Duration = Duration::from_secs(20);

/// The payload of the `counter`th record of appender `thread`: the two numbers, then filler
/// bytes derived from them, of a length derived from them. Any record read back can be checked
/// byte for byte, acknowledged or not.
fn payload(thread: u64, counter: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(120);
    bytes.extend_from_slice(&thread.to_le_bytes());
    bytes.extend_from_slice(&counter.to_le_bytes());
    let filler = payload_for(thread.wrapping_mul(1_000_003).wrapping_add(counter));
    bytes.extend_from_slice(&filler);
    bytes
}

/// The (thread, counter) a payload was made for, if it is one of ours, byte for byte.
fn payload_origin(bytes: &[u8]) -> Option<(u64, u64)> {
    let thread = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
    let counter = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
    (payload(thread, counter) == bytes).then_some((thread, counter))
}

/// Runs only as the child: appends until killed.
#[test]
fn child_process_entry_point() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let log = Arc::new(
        Log::open(small_segments(dir.as_ref(), SEGMENT_BYTES)).expect("child opens the log"),
    );
    log.add_cursor(CURSOR).expect("child adds the cursor");
    // Each child run numbers its records apart from earlier runs' (thread ids are unique).
    let run = u64::from(std::process::id()) << 8;
    let stop = Arc::new(AtomicBool::new(false));
    let appenders: Vec<_> = (0..4u64)
        .map(|t| {
            let log = Arc::clone(&log);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let thread = run | t;
                let mut rng = rand::rngs::StdRng::seed_from_u64(thread);
                let mut counter = 0u64;
                let mut out = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let batch = rng.random_range(1..64);
                    let mut tickets = Vec::with_capacity(batch);
                    for _ in 0..batch {
                        counter += 1;
                        match log
                            .submit(class_for(counter), &payload(thread, counter))
                            .expect("submit")
                        {
                            Submitted::Queued(ticket) => tickets.push((ticket, counter)),
                            Submitted::Thinned => panic!("no thinning below the budget"),
                        }
                    }
                    out.clear();
                    for (ticket, counter) in tickets {
                        let seq = log.wait(ticket).expect("append");
                        out.push_str(&format!("A {seq} {thread} {counter}\n"));
                    }
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(out.as_bytes()).expect("print acks");
                    stdout.flush().expect("flush acks");
                }
            })
        })
        .collect();
    let started = Instant::now();
    while started.elapsed() < CHILD_LIFETIME {
        std::thread::sleep(Duration::from_millis(15));
        // Move the cursor to some way behind the durable end, so old segments are deleted while
        // appends go on, and a good number of acknowledged records are checked in every round.
        let position = log
            .durable_next_seq()
            .saturating_sub(CURSOR_LAG)
            .max(log.oldest_seq());
        log.set_cursor(CURSOR, position).expect("move cursor");
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(format!("C {position}\n").as_bytes())
            .expect("print cursor");
        stdout.flush().expect("flush cursor");
    }
    stop.store(true, Ordering::Relaxed);
    for appender in appenders {
        let _ = appender.join();
    }
}

#[derive(Default)]
struct ChildOutput {
    /// (sequence, thread, counter) of every acknowledged record.
    acked: Vec<(u64, u64, u64)>,
    cursors: Vec<u64>,
}

fn parse_child_output(stdout: impl std::io::Read) -> ChildOutput {
    let mut output = ChildOutput::default();
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        // A line cut by the kill has no newline: it was not fully printed, ignore it.
        let Some(text) = line
            .strip_suffix(b"\n")
            .and_then(|l| std::str::from_utf8(l).ok())
        else {
            continue;
        };
        let parts: Vec<&str> = text.split(' ').collect();
        let numbers: Option<Vec<u64>> = parts.iter().skip(1).map(|p| p.parse().ok()).collect();
        match (parts.first(), numbers.as_deref()) {
            (Some(&"A"), Some(&[seq, thread, counter])) => {
                output.acked.push((seq, thread, counter))
            }
            (Some(&"C"), Some(&[cursor])) => output.cursors.push(cursor),
            _ => {}
        }
    }
    output
}

#[test]
fn acknowledged_records_survive_sigkill_at_random_moments() {
    let dir = ScratchDir::new("crash");
    let exe = std::env::current_exe().expect("test binary path");
    let seed: u64 = std::env::var("OPHA_LOG_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64 ^ u64::from(std::process::id())
        });
    println!("crash safety seed {seed} (set OPHA_LOG_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // Acknowledged records not yet passed by the durable cursor: sequence -> (thread, counter).
    let mut outstanding: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    let mut printed_cursor = 0u64;
    let (mut total_acked, mut total_checked, mut truncations, mut rounds) =
        (0usize, 0usize, 0usize, 0usize);
    let mut max_acked = 0u64;

    while rounds < MAX_ROUNDS && (rounds < MIN_ROUNDS || started.elapsed() < TIME_BUDGET) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_process_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let collector = std::thread::spawn(move || parse_child_output(stdout));
        // Mostly mid-run, sometimes while the child is still opening (recovery) the log.
        let delay = if rng.random_bool(0.15) {
            rng.random_range(0..15)
        } else {
            rng.random_range(15..250)
        };
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().expect("reap the child");
        assert!(
            !status.success(),
            "the child must have been killed, not finished: {status:?}"
        );
        let output = collector.join().expect("collector thread");
        rounds += 1;
        total_acked += output.acked.len();
        for (seq, thread, counter) in &output.acked {
            max_acked = max_acked.max(*seq);
            let previous = outstanding.insert(*seq, (*thread, *counter));
            assert!(previous.is_none(), "sequence {seq} acknowledged twice");
        }
        if let Some(cursor) = output.cursors.iter().max() {
            printed_cursor = printed_cursor.max(*cursor);
        }

        let log = Log::open(small_segments(dir.path(), SEGMENT_BYTES))
            .expect("the log opens after a kill");
        let report = log.recovery().clone();
        assert!(
            report.quarantined.is_empty(),
            "round {rounds}: a kill must not corrupt a segment: {report:?}"
        );
        assert!(
            report.gaps.is_empty() && report.skipped.is_none(),
            "round {rounds}: {report:?}"
        );
        truncations += report.truncated.len();
        let cursor = log.cursor(CURSOR).unwrap_or(1);
        assert!(
            cursor >= printed_cursor,
            "round {rounds}: cursor {cursor} is behind the acknowledged {printed_cursor}"
        );
        assert!(
            log.oldest_seq() <= cursor,
            "round {rounds}: a segment the cursor had not passed was deleted"
        );
        outstanding = outstanding.split_off(&cursor);

        // Read everything kept: contiguous, in order, each record the one written for its number.
        let mut expected = log.oldest_seq();
        let mut present = BTreeMap::new();
        let mut origins = BTreeSet::new();
        for record in log.read_from(log.oldest_seq()) {
            let record = record.unwrap_or_else(|e| panic!("round {rounds}: reading the log: {e}"));
            assert_eq!(
                record.seq, expected,
                "round {rounds}: records out of order or duplicated"
            );
            let origin = payload_origin(&record.payload).unwrap_or_else(|| {
                panic!(
                    "round {rounds}: record {} holds bytes nobody wrote",
                    record.seq
                )
            });
            assert_eq!(record.class, class_for(origin.1));
            assert!(
                origins.insert(origin),
                "round {rounds}: record {origin:?} appended twice"
            );
            present.insert(record.seq, origin);
            expected += 1;
        }
        assert_eq!(expected, log.durable_next_seq());
        for (seq, origin) in &outstanding {
            assert_eq!(
                present.get(seq),
                Some(origin),
                "round {rounds}: acknowledged record {seq} {origin:?} is missing"
            );
        }
        total_checked += outstanding.len();
        drop(log);
    }
    println!(
        "crash safety: {rounds} kills in {:.1} s, {total_acked} acknowledged records (up to sequence {max_acked}), \
         {total_checked} acknowledged-record checks after reopen, {truncations} torn tails truncated",
        started.elapsed().as_secs_f64()
    );
    assert!(rounds >= MIN_ROUNDS);
    assert!(
        total_acked > 1000,
        "the child appended too little to mean anything: {total_acked}"
    );
}
