//! Where accepted records go: a [`DurableSink`] answers only once they are durable.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opha_common::wire::{FrameKind, Record};
use opha_log::{Appended, Log, RecordClass};

/// Why a sink could not make records durable. Whatever the variant, the caller must treat none
/// of the records as durable (some may have been written: retrying may store them twice, which
/// event ids make recognisable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkError {
    /// Out of space (the replay log's disk budget): retry later.
    Full(String),
    /// The sink failed or is stopped: retry later.
    Unavailable(String),
    /// These records can never be stored (e.g. too large): do not retry them.
    Rejected(String),
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Full(m) => write!(f, "replay log full: {m}"),
            SinkError::Unavailable(m) => write!(f, "replay log unavailable: {m}"),
            SinkError::Rejected(m) => write!(f, "records refused by the replay log: {m}"),
        }
    }
}

impl std::error::Error for SinkError {}

/// Durable storage for records.
pub trait DurableSink: Send + Sync + 'static {
    /// Stores `records` and resolves once every one of them is durable, with their sequence
    /// numbers in order. An error means: treat none as stored.
    fn append(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<u64>, SinkError>> + Send;
}

/// The replay log's record class for a record: metrics may be thinned, everything else not.
pub fn record_class(record: &Record) -> RecordClass {
    match record.kind() {
        FrameKind::NodeMetrics => RecordClass::Metric,
        _ => RecordClass::Event,
    }
}

/// The payload a record is stored with in the replay log: its postcard encoding. The
/// (poller, epoch, seq) envelope is added when it is sent, from the log's sequence number.
pub fn encode_record(record: &Record) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(record).map_err(|e| e.to_string())
}

/// Reads a payload written by [`encode_record`].
pub fn decode_record(payload: &[u8]) -> Result<Record, String> {
    postcard::from_bytes(payload).map_err(|e| e.to_string())
}

/// How a [`LogSink`] encodes records.
pub type Encoder = fn(&Record) -> Result<Vec<u8>, String>;

/// A [`DurableSink`] on opha's replay log. The log's append blocks until the group commit's
/// fsync, so it runs on tokio's blocking pool (callers bound how many run at once).
#[derive(Clone)]
pub struct LogSink {
    log: Arc<Log>,
    encode: Encoder,
}

impl LogSink {
    /// Stores records encoded with [`encode_record`].
    pub fn new(log: Arc<Log>) -> Self {
        Self::with_encoder(log, encode_record)
    }

    pub fn with_encoder(log: Arc<Log>, encode: Encoder) -> Self {
        Self { log, encode }
    }

    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }
}

impl DurableSink for LogSink {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, SinkError> {
        let encoded = records
            .iter()
            .map(|r| Ok((record_class(r), (self.encode)(r)?)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(SinkError::Rejected)?;
        let log = self.log.clone();
        let appended = tokio::task::spawn_blocking(move || {
            log.append_batch(encoded.iter().map(|(class, p)| (*class, p.as_slice())))
        })
        .await
        .map_err(|e| SinkError::Unavailable(format!("append task failed: {e}")))?
        .map_err(log_error)?;
        appended
            .into_iter()
            .map(|a| match a {
                Appended::Durable(seq) => Ok(seq),
                // Only metrics are thinned; a sink that acknowledged one would lie.
                Appended::Thinned => Err(SinkError::Full(
                    "a metric record was thinned by the disk budget".into(),
                )),
            })
            .collect()
    }
}

fn log_error(e: opha_log::Error) -> SinkError {
    match e {
        opha_log::Error::BudgetExhausted { .. } | opha_log::Error::NoSpace { .. } => {
            SinkError::Full(e.to_string())
        }
        opha_log::Error::RecordTooLarge { .. } => SinkError::Rejected(e.to_string()),
        _ => SinkError::Unavailable(e.to_string()),
    }
}

/// An in-memory [`DurableSink`] for tests: records kept in order with sequence numbers from 0,
/// an optional delay per append, and a switch that makes appends fail.
#[derive(Default)]
pub struct MemorySink {
    records: Mutex<Vec<(u64, Record)>>,
    failing: AtomicBool,
    delay: Mutex<Option<Duration>>,
}

impl MemorySink {
    pub fn new() -> Self {
        Self::default()
    }

    /// While `true`, appends fail with [`SinkError::Unavailable`] and store nothing.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    /// Every append waits this long first (to hold requests in flight).
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Everything stored so far, with sequence numbers.
    pub fn records(&self) -> Vec<(u64, Record)> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl DurableSink for MemorySink {
    async fn append(&self, records: Vec<Record>) -> Result<Vec<u64>, SinkError> {
        let delay = *self.delay.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(SinkError::Unavailable("memory sink set to fail".into()));
        }
        let mut stored = self.records.lock().unwrap_or_else(|p| p.into_inner());
        let first = stored.len() as u64;
        let seqs = (first..first + records.len() as u64).collect();
        stored.extend((first..).zip(records));
        Ok(seqs)
    }
}

impl<S: DurableSink> DurableSink for Arc<S> {
    fn append(
        &self,
        records: Vec<Record>,
    ) -> impl Future<Output = Result<Vec<u64>, SinkError>> + Send {
        (**self).append(records)
    }
}
