//! Appending the pipeline's records to the replay log, knowing exactly which became durable.
//!
//! `Log::append_batch` reports only "all durable" or an error; a caller that must advance its
//! source exactly past what is durable (the ring buffer) or keep exactly the rest for a retry
//! (the aggregator's pending output) needs one outcome per record. [`append`] submits the
//! batch, waits for all of it, and only when that fails asks ticket by ticket.

use std::time::{Duration, Instant};

use opha_common::wire::{Event, EventId, EventKind, PeerId, Record, Severity, Subject};
use opha_log::{Log, RecordClass, Submitted};

use crate::{
    daemons::state::PEER_TENANT,
    ingest::sink::{encode_record, record_class},
};

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Durable with this sequence number.
    Durable(u64),
    /// A metric the disk budget thinned away (counted by the log): nothing to retry.
    Thinned,
    /// Not durable: retry it. `out_of_space` when the disk or the budget is full.
    Failed { error: String, out_of_space: bool },
}

impl Outcome {
    /// Durable or deliberately thinned: the record needs nothing more.
    pub fn is_done(&self) -> bool {
        !matches!(self, Outcome::Failed { .. })
    }
}

/// The outcomes of one batch, in record order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Appended {
    pub outcomes: Vec<Outcome>,
}

impl Appended {
    /// Records at the start of the batch that need nothing more.
    pub fn done_prefix(&self) -> usize {
        self.outcomes.iter().take_while(|o| o.is_done()).count()
    }

    pub fn all_done(&self) -> bool {
        self.outcomes.iter().all(Outcome::is_done)
    }

    /// The first failure, for the log line.
    pub fn first_error(&self) -> Option<(&str, bool)> {
        self.outcomes.iter().find_map(|o| match o {
            Outcome::Failed {
                error,
                out_of_space,
            } => Some((error.as_str(), *out_of_space)),
            _ => None,
        })
    }

    pub fn durable(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Durable(_)))
            .count()
    }
}

/// Encodes records as the log stores them (postcard of `Record`, class event or metric). A
/// record that cannot be encoded (never happens with these types) is replaced by an event of
/// `poller` saying so, so that the batch keeps its one-record-per-input shape.
pub fn encode(records: &[Record], poller: &PeerId) -> Vec<(RecordClass, Vec<u8>)> {
    records
        .iter()
        .map(|r| match encode_record(r) {
            Ok(p) => (record_class(r), p),
            Err(e) => {
                log::error!("a record could not be encoded and is stored as a note: {e}");
                let note = Record::Event(Event {
                    id: random_event_id(),
                    time_ms: crate::poller::source::unix_ms(),
                    tenant: PEER_TENANT,
                    subject: Subject::Peer(poller.clone()),
                    kind: EventKind::External {
                        source: "opha-sidecar".into(),
                        name: "record not encodable".into(),
                    },
                    severity: Severity::Major,
                    details: format!("a {:?} record could not be encoded: {e}", r.kind()),
                });
                (RecordClass::Event, encode_record(&note).unwrap_or_default())
            }
        })
        .collect()
}

/// Appends `records` (encoded with [`encode`]) and waits until each is durable or failed.
/// Blocking: call from a dedicated thread or `spawn_blocking`.
pub fn append(log: &Log, records: &[(RecordClass, Vec<u8>)]) -> Appended {
    let mut submitted = Vec::with_capacity(records.len());
    let submit_error = log
        .submit_batch(
            records.iter().map(|(c, p)| (*c, p.as_slice())),
            &mut submitted,
        )
        .err();
    let all = submit_error.is_none() && log.wait_all(&submitted).is_ok();
    let mut outcomes = Vec::with_capacity(records.len());
    for s in &submitted {
        outcomes.push(match s {
            Submitted::Thinned => Outcome::Thinned,
            Submitted::Queued(t) if all => Outcome::Durable(t.seq()),
            Submitted::Queued(t) => match log.wait(*t) {
                Ok(seq) => Outcome::Durable(seq),
                Err(e) => Outcome::Failed {
                    out_of_space: e.is_out_of_space(),
                    error: e.to_string(),
                },
            },
        });
    }
    if let Some(e) = submit_error {
        let (error, out_of_space) = (e.to_string(), e.is_out_of_space());
        while outcomes.len() < records.len() {
            outcomes.push(Outcome::Failed {
                error: error.clone(),
                out_of_space,
            });
        }
    }
    Appended { outcomes }
}

/// A random event id (the kernel's CSPRNG; time and a counter if that fails), for events that
/// have no natural identity (log alarms, notes).
pub fn random_event_id() -> EventId {
    use std::sync::atomic::{AtomicU64, Ordering};
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the valid, exclusively borrowed
    // buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == buf.len() as isize {
        return EventId(buf);
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    EventId::from_u128((u128::from(nanos) << 64) | u128::from(count))
}

/// A random u64 (for id prefixes).
pub fn random_u64() -> u64 {
    let id = random_event_id().as_u128();
    (id >> 64) as u64 ^ id as u64
}

/// Retry pacing with a log line that is not repeated more than every 30 s.
#[derive(Debug)]
pub struct Backoff {
    what: &'static str,
    delay: Duration,
    last_line: Option<Instant>,
    failures: u64,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);
    const LINE_EVERY: Duration = Duration::from_secs(30);

    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            delay: Self::FIRST,
            last_line: None,
            failures: 0,
        }
    }

    /// Records a failure, logs it (rate-limited), and returns how long to wait.
    pub fn failed(&mut self, error: &str) -> Duration {
        self.failures += 1;
        let due = self
            .last_line
            .is_none_or(|t| t.elapsed() >= Self::LINE_EVERY);
        if due {
            log::error!(
                "{}: {error} (attempt {}; retrying, nothing is dropped)",
                self.what,
                self.failures
            );
            self.last_line = Some(Instant::now());
        }
        let d = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        d
    }

    /// Records a success; logs the recovery if failures were logged.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            log::info!("{}: recovered after {} attempts", self.what, self.failures);
        }
        self.failures = 0;
        self.delay = Self::FIRST;
        self.last_line = None;
    }

    pub fn failing(&self) -> bool {
        self.failures > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_of_a_log_that_works() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(opha_log::LogConfig::new(dir.path())).unwrap();
        let recs = vec![
            (RecordClass::Event, b"a".to_vec()),
            (RecordClass::Metric, b"b".to_vec()),
        ];
        let a = append(&log, &recs);
        assert!(a.all_done());
        assert_eq!(a.done_prefix(), 2);
        assert_eq!(a.durable(), 2);
        let seqs: Vec<u64> = a
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Durable(s) => *s,
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(seqs[1], seqs[0] + 1);
    }

    #[test]
    fn a_refused_record_fails_and_the_rest_of_the_batch_too() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(opha_log::LogConfig::new(dir.path())).unwrap();
        let big = vec![0u8; opha_log::format::MAX_PAYLOAD_LEN + 1];
        let recs = vec![
            (RecordClass::Event, b"ok".to_vec()),
            (RecordClass::Event, big),
            (RecordClass::Event, b"after".to_vec()),
        ];
        let a = append(&log, &recs);
        assert_eq!(a.outcomes.len(), 3);
        assert!(matches!(a.outcomes[0], Outcome::Durable(_)));
        assert!(!a.outcomes[1].is_done());
        assert!(!a.outcomes[2].is_done());
        assert_eq!(a.done_prefix(), 1);
        assert!(a.first_error().unwrap().0.contains("maximum"));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(random_event_id(), random_event_id());
    }
}
