//! Records and dedupe ranges commit atomically: kill -9 a child process that commits in a
//! loop (through the group committer, two pollers, two threads), at least 20 times. After
//! every kill, every batch the child reported committed is fully present, no batch is
//! partially present, nothing is stored twice, and the ranges describe exactly the records.
//!
//! The child is this test binary itself, re-executed with `OPHA_STORE_CRASH_CHILD` set.

// Single ranges are what a contiguous stream looks like.
#![allow(clippy::single_range_in_vec_init)]

mod common;

use common::*;
use opha_common::wire::{Record, Sequenced, TenantId, decode_frame};
use opha_store::{Committer, CommitterConfig, Store, StoreConfig};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "OPHA_STORE_CRASH_CHILD";
const ROUND_ENV: &str = "OPHA_STORE_CRASH_ROUND";
const TEST_NAME: &str = "kill_9_during_commits_leaves_whole_batches";
const BATCH: u64 = 25;
const ROUNDS: u32 = 24;
const TENANT: u32 = 5;

/// What the child writes at `seq`: derived from the key alone, so the parent can check content.
fn record_for(poller: &str, seq: u64) -> Record {
    let n = (seq % 97) as u16 + if poller == "p1" { 0 } else { 1000 };
    if seq.is_multiple_of(3) {
        metrics(TENANT, n, seq * 1000)
    } else {
        node_down(TENANT, n, seq * 1000)
    }
}

/// p1 keeps epoch 1 across restarts (resuming where the store says); p2 bumps its epoch every
/// start, as a restarted poller does.
fn epoch_for(poller: &str, round: u64) -> u64 {
    if poller == "p1" { 1 } else { round + 1 }
}

fn child(dir: &str, round: u64) {
    let store = Store::open(dir, StoreConfig::default()).expect("child: open store");
    let db = store
        .tenant(opha_common::wire::TenantId(TENANT))
        .expect("child: tenant");
    let committer = Committer::new(db.clone(), CommitterConfig::default()).expect("committer");
    let deadline = Instant::now() + Duration::from_secs(20);
    std::thread::scope(|s| {
        for name in ["p1", "p2"] {
            let committer = &committer;
            let db = &db;
            s.spawn(move || {
                let p = poller(name);
                let epoch = epoch_for(name, round);
                // Handshake: resume after what is held, re-sending the last two batches as a
                // replay would (they must come back as duplicates).
                let held_end = db
                    .held_ranges(&p)
                    .expect("held")
                    .into_iter()
                    .find(|(e, _)| *e == epoch)
                    .and_then(|(_, r)| r.iter().next_back().map(|r| r.end))
                    .unwrap_or(0);
                let mut start = held_end.saturating_sub(2 * BATCH);
                while Instant::now() < deadline && start < 1_000_000 {
                    let records: Vec<(u64, Record)> = (start..start + BATCH)
                        .map(|s| (s, record_for(name, s)))
                        .collect();
                    let o = committer
                        .commit(p.clone(), epoch, records)
                        .expect("child: commit");
                    assert_eq!(o.stored + o.duplicates, BATCH);
                    println!("COMMITTED {name} {epoch} {start} {}", start + BATCH);
                    start += BATCH;
                }
            });
        }
    });
}

#[test]
fn kill_9_during_commits_leaves_whole_batches() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var(ROUND_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(&dir, round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    // (poller, epoch) -> seqs the child reported durable.
    let mut reported: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("COMMITTED ") && tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for a durable batch of each poller, then kill at a random moment of the loop.
        let mut lines = Vec::new();
        while !["p1", "p2"]
            .iter()
            .all(|p| lines.iter().any(|l: &String| l.contains(&format!(" {p} "))))
        {
            lines.push(
                rx.recv_timeout(Duration::from_secs(30))
                    .expect("child commits"),
            );
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..60)));
        child.kill().expect("kill -9");
        let status = child.wait().expect("wait");
        assert!(!status.success(), "round {round}: child ended by itself");
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (name, epoch, start, end): (String, u64, u64, u64) = (
                f[1].to_string(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
            );
            reported
                .entry((name, epoch))
                .or_default()
                .extend(start..end);
        }
        check(dir.path(), &reported, round);
    }
    // Every round committed something, so both streams advanced across all rounds.
    let p2_epochs = reported.keys().filter(|(p, _)| p == "p2").count();
    assert_eq!(p2_epochs, ROUNDS as usize);
}

fn check(dir: &Path, reported: &BTreeMap<(String, u64), BTreeSet<u64>>, round: u32) {
    let store = Store::open(dir, StoreConfig::default()).expect("parent: open store");
    let db = store.tenant(TenantId(TENANT)).expect("parent: tenant");
    let conn = inspect(db.path());
    let mut st = conn
        .prepare("SELECT poller, epoch, seq, frame FROM records")
        .unwrap();
    let mut stored: BTreeMap<(String, u64), BTreeSet<u64>> = BTreeMap::new();
    let mut rows = 0u64;
    for row in st
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })
        .unwrap()
    {
        let (p, epoch, seq, frame) = row.unwrap();
        let s: Sequenced = decode_frame(&frame).expect("stored frame decodes");
        assert_eq!(
            (s.poller.as_str(), s.epoch, s.seq),
            (p.as_str(), epoch, seq)
        );
        assert_eq!(
            s.record,
            record_for(&p, seq),
            "content of {p}/{epoch}/{seq}"
        );
        assert!(
            stored.entry((p, epoch)).or_default().insert(seq),
            "duplicate"
        );
        rows += 1;
    }
    assert_eq!(rows, db.record_count().unwrap());
    for ((p, epoch), seqs) in reported {
        let have = stored
            .get(&(p.clone(), *epoch))
            .cloned()
            .unwrap_or_default();
        let missing: Vec<_> = seqs.difference(&have).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {p}/{epoch} lost reported {missing:?}"
        );
    }
    for ((p, epoch), seqs) in &stored {
        // Whole batches only: every aligned block is all there or not at all.
        for block in seqs.iter().map(|s| s / BATCH).collect::<BTreeSet<_>>() {
            let n = (block * BATCH..(block + 1) * BATCH)
                .filter(|s| seqs.contains(s))
                .count() as u64;
            assert_eq!(
                n, BATCH,
                "round {round}: {p}/{epoch} block {block} is partial"
            );
        }
        // The dedupe state describes exactly the stored records.
        let ranges: BTreeSet<u64> = stored_ranges(db.path(), p, *epoch)
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(&ranges, seqs, "round {round}: ranges of {p}/{epoch}");
    }
}
