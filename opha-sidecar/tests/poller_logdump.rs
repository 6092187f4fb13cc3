//! `opha-sidecar log dump`: reads the log without opening it (works while its owner holds the
//! lock), prints exactly the records from `--from`, one JSON object per line, reports payloads
//! that do not decode instead of failing, and never changes a file.

use std::fs;

use opha_common::wire::{Event, EventId, EventKind, NodeRef, Record, Severity, Subject, TenantId};
use opha_log::{Log, LogConfig, RecordClass};
use opha_sidecar::ingest::sink::encode_record;
use opha_sidecar::logdump::{DumpError, DumpOptions, dump};

fn event(i: u128) -> Record {
    Record::Event(Event {
        id: EventId::from_u128(i),
        time_ms: 1_700_000_000_000,
        tenant: TenantId(1),
        subject: Subject::Node(NodeRef::new(0, "198.18.0.5".parse().unwrap(), None)),
        kind: EventKind::NodeDown,
        severity: Severity::Critical,
        // Padded, so that a few hundred fill several 64 KiB segments.
        details: format!("event {i} {}", "-".repeat(200)),
    })
}

fn run(dir: &std::path::Path, from: u64, json: bool) -> (Vec<String>, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    dump(
        &DumpOptions {
            dir: dir.to_path_buf(),
            from,
            json,
        },
        &mut out,
        &mut err,
    )
    .unwrap();
    (
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn dumps_a_live_log_from_a_sequence_without_touching_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = LogConfig::new(tmp.path());
    cfg.segment_bytes = 64 << 10;
    let log = Log::open(cfg).unwrap();
    let mut seqs = Vec::new();
    for i in 0..400u128 {
        let p = encode_record(&event(i)).unwrap();
        match log.append(RecordClass::Event, &p).unwrap() {
            opha_log::Appended::Durable(s) => seqs.push(s),
            other => panic!("{other:?}"),
        }
    }
    let bad = log.append(RecordClass::Metric, b"\xff\xff\xff").unwrap();
    let listing = |d: &std::path::Path| {
        let mut v: Vec<(String, u64)> = fs::read_dir(d)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().len(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let files_before = listing(tmp.path());
    assert!(files_before.len() > 2, "several segments: {files_before:?}");

    // The log is open (and locked) by `log`: the dump reads anyway.
    let (lines, err) = run(tmp.path(), 0, true);
    assert!(err.is_empty(), "{err}");
    assert_eq!(lines.len(), 401);
    let v: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, (l, s)) in v.iter().zip(&seqs).enumerate() {
        assert_eq!(l["seq"], *s);
        assert_eq!(l["class"], "event");
        assert!(
            l["record"]["event"]["details"]
                .as_str()
                .unwrap()
                .starts_with(&format!("event {i} "))
        );
        assert_eq!(l["record"]["event"]["kind"], "node_down");
    }
    let last = &v[400];
    assert_eq!(last["class"], "metric");
    assert!(last["error"].is_string(), "{last}");
    assert!(last.get("record").is_none());
    if let opha_log::Appended::Durable(s) = bad {
        assert_eq!(last["seq"], s);
    }

    // --from skips exactly what is below it, also across segments.
    let from = seqs[250];
    let (lines, _) = run(tmp.path(), from, true);
    assert_eq!(lines.len(), 151);
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["seq"], from);

    // Text mode: one line per record.
    let (text, _) = run(tmp.path(), seqs[399], false);
    assert_eq!(text.len(), 2);
    assert!(
        text[0].contains("node_down") && text[0].contains("event 399"),
        "{}",
        text[0]
    );
    assert!(text[1].contains("undecodable"), "{}", text[1]);

    assert_eq!(listing(tmp.path()), files_before, "the dump changed files");
    assert_eq!(log.durable_next_seq(), seqs[399] + 2);
}

#[test]
fn a_missing_directory_is_an_error_and_damage_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let err = dump(
        &DumpOptions {
            dir: missing.clone(),
            from: 0,
            json: true,
        },
        &mut Vec::new(),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(matches!(err, DumpError::NoLog(_)));
    assert!(!missing.exists(), "the dump must not create the directory");

    let dir = tmp.path().join("log");
    let mut cfg = LogConfig::new(&dir);
    cfg.segment_bytes = 64 << 10;
    {
        let log = Log::open(cfg).unwrap();
        for i in 0..400u128 {
            log.append(RecordClass::Event, &encode_record(&event(i)).unwrap())
                .unwrap();
        }
    }
    // Garble a byte in the middle of the first (sealed) segment.
    let mut segs: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segs.sort();
    let mut bytes = fs::read(&segs[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&segs[0], &bytes).unwrap();
    let (lines, err) = run(&dir, 0, true);
    assert!(err.contains("damaged"), "{err}");
    assert!(lines.len() < 400 && lines.len() > 100, "{}", lines.len());
}
