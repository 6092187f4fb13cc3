//! The driver: segment files in a directory, a writer thread doing group commit, durable
//! cursors, segment deletion, metrics. All decisions are taken by the pure modules (`format`,
//! `book`, `budget`, `cursor`); this module does the I/O and the waiting.
//!
//! Appenders encode their records into a shared pending buffer under one lock and wait. The
//! writer thread takes everything pending, writes it with one `pwrite` per segment touched and
//! one `fdatasync`, then wakes the appenders whose records are now durable. Records queued while
//! an fsync runs form the next batch, so the number of fsyncs per second stays bounded by the
//! disk, not by the number of appenders.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::book::{AgeIndex, DurableMark, LogBook, SegmentMeta};
use crate::budget::{Admission, BudgetConfig, BudgetLevel, BudgetTransition, DiskBudget};
use crate::cursor::{Cursors, MAX_CURSORS, encode_cursors, validate_cursor_name};
use crate::error::Error;
use crate::format::{MAX_PAYLOAD_LEN, RecordClass, encode_frame, frame_len};
use crate::reader::LogReader;
use crate::recovery::{
    CURSOR_FILE, RecoveryReport, create_segment, recover, segment_path, sync_dir,
    write_file_durably,
};

/// How the log is opened and run.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Directory of the segment files (created if missing).
    pub dir: PathBuf,
    /// A segment is closed and a new one started when a record would take it past this size.
    /// Also the granularity of deletion.
    pub segment_bytes: u64,
    /// The longest the writer waits after the first pending record for more to join the same
    /// fsync. Zero still batches: records queued during an fsync share the next one.
    pub commit_window: Duration,
    /// The writer does not wait out the window once this many bytes are pending.
    pub batch_bytes: usize,
    /// Bytes that may wait for the writer; appenders block beyond it (bounded memory).
    pub max_pending_bytes: usize,
    /// The disk budget.
    pub budget: BudgetConfig,
    /// Check every record of every segment on open (true), or only the last segment's records
    /// and the other segments' headers (faster to open a large backlog; a damaged record in an
    /// older segment is then reported by the reader that meets it).
    pub verify_all_on_open: bool,
}

impl LogConfig {
    /// Defaults: 64 MiB segments, a 1 GiB budget, and no extra commit window: records queued
    /// while an fsync runs share the next one, which batches as well as a window under load
    /// (measured: same throughput with a 1 ms window) without delaying a lone appender.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            commit_window: Duration::ZERO,
            batch_bytes: 1 << 20,
            max_pending_bytes: 16 << 20,
            budget: BudgetConfig::new(1 << 30),
            verify_all_on_open: true,
        }
    }
}

/// What became of an appended record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    /// Durable (fsynced), with this sequence number.
    Durable(u64),
    /// A metric thinned away because the disk budget is exhausted (counted in the metrics).
    Thinned,
}

/// A record queued by `submit`; `wait` returns once it is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a submitted record is not durable until `wait` returns"]
pub struct Ticket {
    generation: u64,
    seq: u64,
}

impl Ticket {
    /// The sequence number the record will have once durable.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// What `submit` did with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    Queued(Ticket),
    Thinned,
}

/// A snapshot of the log's metrics.
#[derive(Clone, Debug)]
pub struct LogMetrics {
    pub records_appended: u64,
    pub bytes_appended: u64,
    /// fdatasync calls (one per batch, plus one per segment sealed).
    pub fsyncs: u64,
    /// Batches written.
    pub commits: u64,
    /// Batches whose write or fsync failed.
    pub failed_commits: u64,
    /// fsync latency, microseconds.
    pub fsync_latency_us: Histogram<u64>,
    /// Records not yet passed by every cursor (all records without a cursor).
    pub depth_records: u64,
    /// Bytes of the segments holding them.
    pub depth_bytes: u64,
    /// Age of the oldest record not passed by every cursor (upper bound, within ~1 s).
    pub oldest_unacked_age: Option<Duration>,
    pub segments: usize,
    pub oldest_seq: u64,
    pub next_seq: u64,
    /// Bytes the log uses on disk, with records queued but not yet durable.
    pub used_bytes: u64,
    pub budget_level: BudgetLevel,
    pub budget_limit_bytes: u64,
    pub metrics_thinned: u64,
    pub records_refused: u64,
    /// Budget alarms dropped because nobody took them (`take_budget_alarms`) for a long time.
    pub budget_alarms_dropped: u64,
    pub segments_deleted: u64,
}

/// A durable, segmented, append-only log with named cursors.
pub struct Log {
    inner: Arc<Inner>,
    writer: Option<JoinHandle<()>>,
    recovery: RecoveryReport,
}

pub(crate) struct Inner {
    pub(crate) config: LogConfig,
    pub(crate) dir: PathBuf,
    dir_file: File,
    // Held for the flock: one process per log directory.
    _lock_file: File,
    pub(crate) state: Mutex<State>,
    /// The writer waits here for pending records.
    work: Condvar,
    /// Appenders wait here for durability.
    durable: Condvar,
    /// Appenders wait here for room in the pending buffer.
    room: Condvar,
    /// Serializes cursor file rewrites (taken before `state`, never after).
    cursor_io: Mutex<()>,
}

/// Everything behind the log's lock.
pub(crate) struct State {
    pub(crate) book: LogBook,
    budget: DiskBudget,
    pending: Vec<Chunk>,
    pending_bytes: usize,
    first_pending_at: Option<Instant>,
    writer_waiting: bool,
    pub(crate) durable: DurableMark,
    /// Bumped when a batch fails: every record queued before is then refused.
    generation: u64,
    /// For past generations, the sequence number below which their records were durable.
    generation_floors: VecDeque<(u64, u64)>,
    last_failure: Option<(io::ErrorKind, String)>,
    poisoned: Option<String>,
    closing: bool,
    alarms: VecDeque<BudgetTransition>,
    alarms_dropped: u64,
    age: AgeIndex,
    spare_buffers: Vec<Vec<u8>>,
    records_appended: u64,
    bytes_appended: u64,
    fsyncs: u64,
    commits: u64,
    failed_commits: u64,
    segments_deleted: u64,
    fsync_latency_us: Histogram<u64>,
}

/// Encoded records bound for one segment.
struct Chunk {
    /// The records start a new segment at `first_seq`.
    starts_segment: bool,
    first_seq: u64,
    end_seq: u64,
    bytes: Vec<u8>,
}

/// Most budget alarms kept until `take_budget_alarms` (they only change with hysteresis, so a
/// few per hour at most); beyond, they are counted in `alarms_dropped`.
const MAX_QUEUED_ALARMS: usize = 256;
const MAX_GENERATION_FLOORS: usize = 1024;
const MAX_SPARE_BUFFERS: usize = 8;

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn lock_state(inner: &Inner) -> MutexGuard<'_, State> {
    lock(&inner.state)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves counters, not half-written files (I/O happens
    // outside it): the state is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Log {
    /// Opens (or creates) the log in `config.dir`, running recovery first. Damaged data never
    /// makes this fail: it is truncated or quarantined and reported in `recovery()`. Only I/O
    /// errors (permissions, a read-only file system) and a concurrent owner do.
    pub fn open(config: LogConfig) -> Result<Self, Error> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let lock_path = dir.join("LOCK");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a valid, owned descriptor.
        if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::WouldBlock {
                return Err(Error::Locked { dir });
            }
            return Err(Error::io(format!("locking {}", lock_path.display()), error));
        }
        let dir_file =
            File::open(&dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        let recovered = recover(&dir, &dir_file, config.verify_all_on_open, now_unix_ms())?;
        let segments: Vec<SegmentMeta> = recovered.segments;
        let active_meta = *segments
            .last()
            .expect("recovery leaves at least one segment");
        let mut age = AgeIndex::new(1000, 4096);
        for segment in &segments {
            age.note(segment.first_seq, segment.created_unix_ms);
        }
        let book = LogBook::new(segments, recovered.cursors, config.segment_bytes);
        let durable = DurableMark {
            next_seq: recovered.report.next_seq,
            active_first_seq: active_meta.first_seq,
            active_bytes: active_meta.bytes,
        };
        let mut budget = DiskBudget::new(config.budget.clone());
        let mut alarms = VecDeque::new();
        alarms.extend(budget.observe(book.used_bytes()));
        let collectable = book.collectable(durable.active_first_seq);
        let state = State {
            // Segments already collectable are deleted below, once the log is built.
            book,
            budget,
            pending: Vec::new(),
            pending_bytes: 0,
            first_pending_at: None,
            writer_waiting: false,
            durable,
            generation: 0,
            generation_floors: VecDeque::new(),
            last_failure: None,
            poisoned: None,
            closing: false,
            alarms,
            alarms_dropped: 0,
            age,
            spare_buffers: Vec::new(),
            records_appended: 0,
            bytes_appended: 0,
            fsyncs: 0,
            commits: 0,
            failed_commits: 0,
            segments_deleted: 0,
            fsync_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)
                .expect("constant histogram bounds are valid"),
        };
        let inner = Arc::new(Inner {
            config,
            dir,
            dir_file,
            _lock_file: lock_file,
            state: Mutex::new(state),
            work: Condvar::new(),
            durable: Condvar::new(),
            room: Condvar::new(),
            cursor_io: Mutex::new(()),
        });
        inner.delete_segments(collectable)?;
        let active = ActiveSegment {
            file: recovered.active,
            first_seq: active_meta.first_seq,
            written: active_meta.bytes,
            durable: active_meta.bytes,
        };
        let writer_inner = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("opha-log-writer".into())
            .spawn(move || writer_loop(&writer_inner, active))
            .map_err(|e| Error::io("starting the log writer thread", e))?;
        Ok(Self {
            inner,
            writer: Some(writer),
            recovery: recovered.report,
        })
    }

    /// What recovery found and did when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Appends one record and returns once it is durable (or thinned away).
    pub fn append(&self, class: RecordClass, payload: &[u8]) -> Result<Appended, Error> {
        match self.submit(class, payload)? {
            Submitted::Queued(ticket) => self.wait(ticket).map(Appended::Durable),
            Submitted::Thinned => Ok(Appended::Thinned),
        }
    }

    /// Appends records and returns once all are durable, one outcome per record, in order. On
    /// an error, records before the failing one may have been written (at least once: the
    /// caller that retries may store some twice).
    pub fn append_batch<'a>(
        &self,
        records: impl IntoIterator<Item = (RecordClass, &'a [u8])>,
    ) -> Result<Vec<Appended>, Error> {
        let mut submitted = Vec::new();
        self.submit_batch(records, &mut submitted)?;
        self.wait_all(&submitted)?;
        Ok(submitted
            .into_iter()
            .map(|s| match s {
                Submitted::Queued(ticket) => Appended::Durable(ticket.seq),
                Submitted::Thinned => Appended::Thinned,
            })
            .collect())
    }

    /// Queues a record for the next group commit without waiting for it. Blocks only while the
    /// pending buffer is full. The record is durable once `wait` returns.
    pub fn submit(&self, class: RecordClass, payload: &[u8]) -> Result<Submitted, Error> {
        let state = lock(&self.inner.state);
        self.inner.submit_locked(state, class, payload).1
    }

    /// Queues records under one lock (cheaper than `submit` per record), appending one entry
    /// per record to `out`, in order. On an error, `out` holds the records queued before it:
    /// those will be written; the failing one and the rest were not queued. This is what a
    /// caller needs to advance its own source (the kernel ring buffer) exactly past what the
    /// log took.
    pub fn submit_batch<'a>(
        &self,
        records: impl IntoIterator<Item = (RecordClass, &'a [u8])>,
        out: &mut Vec<Submitted>,
    ) -> Result<(), Error> {
        let mut state = lock(&self.inner.state);
        for (class, payload) in records {
            let (guard, result) = self.inner.submit_locked(state, class, payload);
            state = guard;
            out.push(result?);
        }
        Ok(())
    }

    /// Waits until a submitted record is durable; returns its sequence number.
    pub fn wait(&self, ticket: Ticket) -> Result<u64, Error> {
        let inner = &*self.inner;
        let mut state = lock(&inner.state);
        loop {
            match state.status(ticket) {
                TicketStatus::Durable => return Ok(ticket.seq),
                TicketStatus::Failed(error) => return Err(error),
                TicketStatus::Pending => {}
            }
            state = inner.durable.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until every queued record of `submitted` is durable (thinned ones have nothing to
    /// wait for). Fails if any of them failed.
    pub fn wait_all(&self, submitted: &[Submitted]) -> Result<(), Error> {
        let inner = &*self.inner;
        let mut state = lock(&inner.state);
        let mut next = 0;
        while next < submitted.len() {
            match submitted[next] {
                Submitted::Thinned => next += 1,
                Submitted::Queued(ticket) => match state.status(ticket) {
                    TicketStatus::Durable => next += 1,
                    TicketStatus::Failed(error) => return Err(error),
                    TicketStatus::Pending => {
                        state = inner.durable.wait(state).unwrap_or_else(|p| p.into_inner());
                    }
                },
            }
        }
        Ok(())
    }

    /// Registers a consumer cursor (durably). A new cursor starts at the oldest record in the
    /// log, so its consumer gets everything still kept; an existing one keeps its position.
    /// Returns the position.
    pub fn add_cursor(&self, name: &str) -> Result<u64, Error> {
        validate_cursor_name(name)?;
        let inner = &*self.inner;
        let _io = lock(&inner.cursor_io);
        let mut cursors = {
            let state = lock(&inner.state);
            if let Some(position) = state.book.cursors().get(name) {
                return Ok(*position);
            }
            if state.book.cursors().len() >= MAX_CURSORS {
                return Err(Error::TooManyCursors { max: MAX_CURSORS });
            }
            state.book.cursors().clone()
        };
        let position = lock(&inner.state).book.oldest_seq();
        cursors.insert(name.to_owned(), position);
        inner.store_cursors(cursors)?;
        Ok(position)
    }

    /// Moves a cursor (durably): its consumer has taken every record below `position`.
    /// Segments every cursor has passed are deleted.
    pub fn set_cursor(&self, name: &str, position: u64) -> Result<(), Error> {
        let inner = &*self.inner;
        let _io = lock(&inner.cursor_io);
        let cursors = {
            let state = lock(&inner.state);
            if !state.book.cursors().contains_key(name) {
                return Err(Error::UnknownCursor {
                    name: name.to_owned(),
                });
            }
            let (oldest, next) = (state.book.oldest_seq(), state.durable.next_seq);
            if position < oldest || position > next {
                return Err(Error::CursorOutOfRange {
                    name: name.to_owned(),
                    position,
                    oldest,
                    next,
                });
            }
            let mut cursors = state.book.cursors().clone();
            cursors.insert(name.to_owned(), position);
            cursors
        };
        inner.store_cursors(cursors)
    }

    /// Removes a cursor (durably); segments only it held back are deleted.
    pub fn remove_cursor(&self, name: &str) -> Result<(), Error> {
        let inner = &*self.inner;
        let _io = lock(&inner.cursor_io);
        let mut cursors = lock(&inner.state).book.cursors().clone();
        if cursors.remove(name).is_none() {
            return Err(Error::UnknownCursor {
                name: name.to_owned(),
            });
        }
        inner.store_cursors(cursors)
    }

    pub fn cursor(&self, name: &str) -> Option<u64> {
        lock(&self.inner.state).book.cursors().get(name).copied()
    }

    pub fn cursors(&self) -> Cursors {
        lock(&self.inner.state).book.cursors().clone()
    }

    /// Reads the durable records from `seq` on, in order. The reader stops (returns `None`) at
    /// the durable end and continues from there when called again after more appends.
    pub fn read_from(&self, seq: u64) -> LogReader {
        LogReader::new(Arc::clone(&self.inner), seq)
    }

    /// Reads from a cursor's position.
    pub fn read_cursor(&self, name: &str) -> Result<LogReader, Error> {
        let position = self.cursor(name).ok_or_else(|| Error::UnknownCursor {
            name: name.to_owned(),
        })?;
        Ok(self.read_from(position))
    }

    /// Sequence number of the oldest record kept.
    pub fn oldest_seq(&self) -> u64 {
        lock(&self.inner.state).book.oldest_seq()
    }

    /// Every record below this is durable.
    pub fn durable_next_seq(&self) -> u64 {
        lock(&self.inner.state).durable.next_seq
    }

    /// Budget level changes since the last call (alarms raised and cleared), oldest first.
    /// The pipeline turns them into alarm events.
    pub fn take_budget_alarms(&self) -> Vec<BudgetTransition> {
        lock(&self.inner.state).alarms.drain(..).collect()
    }

    pub fn metrics(&self) -> LogMetrics {
        let state = lock(&self.inner.state);
        let depth = state.book.depth();
        let unacked_from = state
            .book
            .min_cursor()
            .unwrap_or_else(|| state.book.oldest_seq());
        let oldest_unacked_age = (unacked_from < state.durable.next_seq)
            .then(|| state.age.appended_by(unacked_from))
            .flatten()
            .map(|ms| Duration::from_millis(now_unix_ms().saturating_sub(ms)));
        LogMetrics {
            records_appended: state.records_appended,
            bytes_appended: state.bytes_appended,
            fsyncs: state.fsyncs,
            commits: state.commits,
            failed_commits: state.failed_commits,
            fsync_latency_us: state.fsync_latency_us.clone(),
            depth_records: depth.records,
            depth_bytes: depth.bytes,
            oldest_unacked_age,
            segments: state.book.segments().count(),
            oldest_seq: state.book.oldest_seq(),
            next_seq: state.book.next_seq(),
            used_bytes: state.book.used_bytes(),
            budget_level: state.budget.level(),
            budget_limit_bytes: state.budget.config().limit_bytes,
            metrics_thinned: state.budget.thinned,
            records_refused: state.budget.refused,
            budget_alarms_dropped: state.alarms_dropped,
            segments_deleted: state.segments_deleted,
        }
    }

    /// Flushes what is pending and stops the writer. Dropping the log does the same.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        {
            let mut state = lock(&self.inner.state);
            state.closing = true;
            self.inner.work.notify_all();
            self.inner.room.notify_all();
        }
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl State {
    fn raise(&mut self, transition: BudgetTransition) {
        let verb = if transition.is_raised() {
            "raised"
        } else {
            "cleared"
        };
        let message = format!(
            "replay log disk budget {verb}: {} -> {} ({} of {} bytes)",
            transition.from.name(),
            transition.to.name(),
            transition.used_bytes,
            transition.limit_bytes
        );
        if transition.is_critical() {
            log::error!("{message}; intake blocked");
        } else {
            log::warn!("{message}");
        }
        if self.alarms.len() >= MAX_QUEUED_ALARMS {
            self.alarms.pop_front();
            self.alarms_dropped += 1;
        }
        self.alarms.push_back(transition);
    }
}

enum TicketStatus {
    Durable,
    Failed(Error),
    Pending,
}

impl State {
    fn status(&self, ticket: Ticket) -> TicketStatus {
        if ticket.generation == self.generation {
            if ticket.seq < self.durable.next_seq {
                return TicketStatus::Durable;
            }
            if let Some(reason) = &self.poisoned {
                return TicketStatus::Failed(Error::Poisoned {
                    reason: reason.clone(),
                });
            }
            return TicketStatus::Pending;
        }
        // A batch failed since the record was queued: it is durable only if it was below the
        // durable mark at that failure.
        let floor = self
            .generation_floors
            .iter()
            .find(|(generation, _)| *generation == ticket.generation)
            .map(|(_, floor)| *floor);
        if floor.is_some_and(|floor| ticket.seq < floor) {
            return TicketStatus::Durable;
        }
        let (kind, message) = self
            .last_failure
            .clone()
            .unwrap_or((io::ErrorKind::Other, "an earlier batch failed".to_owned()));
        TicketStatus::Failed(Error::write_failed(kind, &message))
    }
}

impl Inner {
    /// Queues one record. Takes the guard and gives it back because it may have to wait for
    /// room in the pending buffer.
    fn submit_locked<'a>(
        &'a self,
        mut state: MutexGuard<'a, State>,
        class: RecordClass,
        payload: &[u8],
    ) -> (MutexGuard<'a, State>, Result<Submitted, Error>) {
        if payload.len() > MAX_PAYLOAD_LEN {
            let error = Error::RecordTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD_LEN,
            };
            return (state, Err(error));
        }
        let frame = frame_len(payload.len());
        loop {
            if state.closing {
                return (state, Err(Error::Closed));
            }
            if let Some(reason) = &state.poisoned {
                let error = Error::Poisoned {
                    reason: reason.clone(),
                };
                return (state, Err(error));
            }
            if state.pending_bytes == 0
                || state.pending_bytes + frame <= self.config.max_pending_bytes
            {
                break;
            }
            if state.writer_waiting {
                self.work.notify_one();
            }
            state = self.room.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        let result = self.queue(&mut state, class, payload, frame);
        (state, result)
    }

    /// Admits (disk budget) and queues a record once there is room for it.
    fn queue(
        &self,
        state: &mut State,
        class: RecordClass,
        payload: &[u8],
        frame: usize,
    ) -> Result<Submitted, Error> {
        let used = state.book.used_bytes();
        let (admission, transition) = state.budget.admit(used, frame as u64, class);
        if let Some(transition) = transition {
            state.raise(transition);
        }
        match admission {
            Admission::Accept => {}
            Admission::Thin => return Ok(Submitted::Thinned),
            Admission::Refuse => {
                return Err(Error::BudgetExhausted {
                    used_bytes: used,
                    hard_limit_bytes: state.budget.config().hard_limit(),
                });
            }
        }
        let placement = state.book.place(frame as u64, now_unix_ms());
        let seq = placement.seq;
        if placement.starts_segment || state.pending.is_empty() {
            let bytes = state.spare_buffers.pop().unwrap_or_default();
            state.pending.push(Chunk {
                starts_segment: placement.starts_segment,
                first_seq: seq,
                end_seq: seq,
                bytes,
            });
        }
        if let Some(chunk) = state.pending.last_mut() {
            encode_frame(&mut chunk.bytes, seq, class, payload);
            chunk.end_seq = seq + 1;
        }
        if state.pending_bytes == 0 {
            state.first_pending_at = Some(Instant::now());
        }
        state.pending_bytes += frame;
        if state.writer_waiting
            && (state.pending_bytes == frame || state.pending_bytes >= self.config.batch_bytes)
        {
            self.work.notify_one();
        }
        Ok(Submitted::Queued(Ticket {
            generation: state.generation,
            seq,
        }))
    }

    /// Writes the cursor file atomically, then updates the book and deletes the segments every
    /// cursor has passed. Called with `cursor_io` held.
    fn store_cursors(&self, cursors: Cursors) -> Result<(), Error> {
        let path = self.dir.join(CURSOR_FILE);
        let temporary = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        write_file_durably(&temporary, &encode_cursors(&cursors))?;
        std::fs::rename(&temporary, &path)
            .map_err(|e| Error::io(format!("replacing {}", path.display()), e))?;
        sync_dir(&self.dir_file, &self.dir)?;
        let collectable = {
            let mut state = lock(&self.state);
            state.book.set_cursors(cursors);
            let active = state.durable.active_first_seq;
            if let Some(min) = state.book.min_cursor() {
                state.age.prune_below(min);
            }
            state.book.collectable(active)
        };
        self.delete_segments(collectable)
    }

    /// Deletes segments oldest first. Each is taken out of the book before its file goes, so a
    /// reader never looks for a file the book still lists; if the deletion fails, the file is
    /// found again (and deleted) on the next open.
    fn delete_segments(&self, segments: Vec<SegmentMeta>) -> Result<(), Error> {
        if segments.is_empty() {
            return Ok(());
        }
        for segment in &segments {
            {
                let mut state = lock(&self.state);
                if !state.book.remove_oldest(segment.first_seq) {
                    continue;
                }
                state.segments_deleted += 1;
            }
            let path = segment_path(&self.dir, segment.first_seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("deleting {}", path.display()), e)),
            }
        }
        sync_dir(&self.dir_file, &self.dir)?;
        let mut state = lock(&self.state);
        let used = state.book.used_bytes();
        if let Some(transition) = state.budget.observe(used) {
            state.raise(transition);
        }
        Ok(())
    }
}

/// The segment the writer appends to.
struct ActiveSegment {
    file: File,
    first_seq: u64,
    /// Bytes written (with `pwrite`).
    written: u64,
    /// Bytes known durable.
    durable: u64,
}

/// Why a batch failed, and whether the log is still in a known state.
struct BatchFailure {
    error: io::Error,
    context: &'static str,
    /// The log could not be returned to its durable state: refuse appends until reopened.
    poisoned: Option<String>,
}

/// Sets the poisoned flag if the writer thread dies, so no appender waits forever.
struct WriterGuard<'a>(&'a Inner);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        if std::thread::panicking() {
            state.poisoned = Some("the writer thread panicked".to_owned());
        } else {
            state.closing = true;
        }
        self.0.durable.notify_all();
        self.0.room.notify_all();
    }
}

fn writer_loop(inner: &Inner, mut active: ActiveSegment) {
    let _guard = WriterGuard(inner);
    loop {
        let chunks = {
            let mut state = lock(&inner.state);
            loop {
                if let Some(first_at) = state.first_pending_at {
                    let deadline = first_at + inner.config.commit_window;
                    let now = Instant::now();
                    if state.closing
                        || state.pending_bytes >= inner.config.batch_bytes
                        || now >= deadline
                    {
                        break;
                    }
                    state.writer_waiting = true;
                    state = inner
                        .work
                        .wait_timeout(state, deadline - now)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                    state.writer_waiting = false;
                    continue;
                }
                if state.closing || state.poisoned.is_some() {
                    return;
                }
                state.writer_waiting = true;
                state = inner.work.wait(state).unwrap_or_else(|p| p.into_inner());
                state.writer_waiting = false;
            }
            state.pending_bytes = 0;
            state.first_pending_at = None;
            inner.room.notify_all();
            std::mem::take(&mut state.pending)
        };

        let mut fsync_micros = Vec::new();
        let outcome = write_batch(inner, &mut active, &chunks, &mut fsync_micros);

        let mut state = lock(&inner.state);
        for micros in &fsync_micros {
            let _ = state.fsync_latency_us.record((*micros).max(1));
        }
        state.fsyncs += fsync_micros.len() as u64;
        state.durable = DurableMark {
            next_seq: outcome.durable_next_seq.unwrap_or(state.durable.next_seq),
            active_first_seq: active.first_seq,
            active_bytes: active.durable,
        };
        match outcome.failure {
            None => {
                let records: u64 = chunks.iter().map(|c| c.end_seq - c.first_seq).sum();
                let bytes: u64 = chunks.iter().map(|c| c.bytes.len() as u64).sum();
                state.records_appended += records;
                state.bytes_appended += bytes;
                state.commits += 1;
                if let Some(first) = chunks.first() {
                    state.age.note(first.first_seq, now_unix_ms());
                }
            }
            Some(failure) => {
                state.failed_commits += 1;
                let durable = state.durable;
                log::error!(
                    "replay log: {} failed: {}; refusing the {} records queued after sequence {}",
                    failure.context,
                    failure.error,
                    state.book.next_seq() - durable.next_seq,
                    durable.next_seq
                );
                // Records queued after the failed batch carry sequence numbers that must now be
                // reused (the log has no gaps), so they are refused too.
                state.book.rollback(durable);
                let refused = std::mem::take(&mut state.pending);
                recycle(&mut state, refused);
                state.pending_bytes = 0;
                state.first_pending_at = None;
                let generation = state.generation;
                if state.generation_floors.len() >= MAX_GENERATION_FLOORS {
                    state.generation_floors.pop_front();
                }
                state
                    .generation_floors
                    .push_back((generation, durable.next_seq));
                state.generation += 1;
                state.last_failure = Some((failure.error.kind(), failure.error.to_string()));
                if let Some(reason) = failure.poisoned {
                    log::error!("replay log: stopped: {reason}");
                    state.poisoned = Some(reason);
                }
                inner.room.notify_all();
            }
        }
        recycle(&mut state, chunks);
        inner.durable.notify_all();
    }
}

fn recycle(state: &mut State, chunks: Vec<Chunk>) {
    for mut chunk in chunks {
        if state.spare_buffers.len() < MAX_SPARE_BUFFERS && chunk.bytes.capacity() <= 4 << 20 {
            chunk.bytes.clear();
            state.spare_buffers.push(chunk.bytes);
        }
    }
}

struct BatchOutcome {
    /// The durable mark reached (records below it are durable), if it moved.
    durable_next_seq: Option<u64>,
    failure: Option<BatchFailure>,
}

/// Writes the chunks and fsyncs. A segment is sealed (fsynced) before the next one is created,
/// so only the last segment can ever have a torn tail. On failure, the active segment is cut
/// back to its durable length so the next batch starts from a clean end.
fn write_batch(
    inner: &Inner,
    active: &mut ActiveSegment,
    chunks: &[Chunk],
    fsyncs: &mut Vec<u64>,
) -> BatchOutcome {
    let mut durable_next_seq = None;
    for chunk in chunks {
        if chunk.starts_segment {
            if active.written > active.durable {
                if let Err(error) = timed_sync(&active.file, fsyncs) {
                    return fail(active, durable_next_seq, error, "sealing a segment", fsyncs);
                }
                active.durable = active.written;
            }
            durable_next_seq = Some(chunk.first_seq);
            match create_segment(&inner.dir, &inner.dir_file, chunk.first_seq, now_unix_ms()) {
                Ok(file) => {
                    *active = ActiveSegment {
                        file,
                        first_seq: chunk.first_seq,
                        written: crate::format::SEGMENT_HEADER_LEN as u64,
                        durable: crate::format::SEGMENT_HEADER_LEN as u64,
                    };
                }
                Err(error) => {
                    // A half-created file would be taken for the last segment on recovery,
                    // while the records go on in the previous one: it must go.
                    let path = segment_path(&inner.dir, chunk.first_seq);
                    let removed = match std::fs::remove_file(&path) {
                        Ok(()) => inner.dir_file.sync_all().is_ok(),
                        Err(e) => e.kind() == io::ErrorKind::NotFound,
                    };
                    let mut failure = fail(
                        active,
                        durable_next_seq,
                        error,
                        "creating a segment",
                        fsyncs,
                    );
                    if !removed
                        && let Some(f) = failure.failure.as_mut()
                        && f.poisoned.is_none()
                    {
                        f.poisoned = Some(format!(
                            "could not remove the half-created {}",
                            path.display()
                        ));
                    }
                    return failure;
                }
            }
        }
        if let Err(error) = active.file.write_all_at(&chunk.bytes, active.written) {
            active.written += chunk.bytes.len() as u64;
            return fail(active, durable_next_seq, error, "writing records", fsyncs);
        }
        active.written += chunk.bytes.len() as u64;
    }
    if let Err(error) = timed_sync(&active.file, fsyncs) {
        return fail(active, durable_next_seq, error, "fsync", fsyncs);
    }
    active.durable = active.written;
    BatchOutcome {
        durable_next_seq: chunks.last().map(|c| c.end_seq).or(durable_next_seq),
        failure: None,
    }
}

fn timed_sync(file: &File, fsyncs: &mut Vec<u64>) -> io::Result<()> {
    let started = Instant::now();
    let result = file.sync_data();
    fsyncs.push(started.elapsed().as_micros() as u64);
    result
}

/// Cuts the active segment back to its durable length after a failed write or fsync. After a
/// failed fsync the page cache may hold anything for those bytes, so they are dropped and the
/// truncation itself synced; if that fails too, the log's state is unknown: poisoned.
fn fail(
    active: &mut ActiveSegment,
    durable_next_seq: Option<u64>,
    error: io::Error,
    context: &'static str,
    fsyncs: &mut Vec<u64>,
) -> BatchOutcome {
    let mut poisoned = None;
    if active.written > active.durable {
        let repaired = active
            .file
            .set_len(active.durable)
            .and_then(|()| timed_sync(&active.file, fsyncs));
        match repaired {
            Ok(()) => active.written = active.durable,
            Err(repair) => {
                poisoned = Some(format!(
                    "{context} failed ({error}) and cutting the segment back to {} bytes failed too ({repair})",
                    active.durable
                ));
            }
        }
    }
    BatchOutcome {
        durable_next_seq,
        failure: Some(BatchFailure {
            error,
            context,
            poisoned,
        }),
    }
}
