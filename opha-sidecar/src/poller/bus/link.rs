//! One receiver's link: the tokio task that drives an `opha_bus::sender::Sender`.
//!
//! Per connection: resolve, connect (mTLS; the client config requires the receiver's peer
//! id and role), open one bidirectional stream, send the sender's hello, then loop: feed the
//! sender the log's durable end and oldest record, send what it plans (records read from the
//! log on the blocking pool, payload bytes as stored), hand it what the receiver says (a
//! reader task decodes frames into a channel, so a slow write never delays reading acks),
//! and sleep until its timeout, a message, or a short poll of the log's end. The sender
//! outlives connections: its cursor and epochs stay, its in-flight state is reset.
//!
//! Cursor moves go to a writer task through a watch channel: it applies the latest position
//! with `Log::set_cursor` (an fsync) on the blocking pool, so a burst of acks costs one write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use opha_bus::message::{Batch, BusFrame, BusMessage, Term};
use opha_bus::sender::{Plan, Sender, SenderEvent};
use opha_bus::{Nanos, compress::Compression};
use opha_log::{Log, LogReader, Record};
use tokio::sync::{mpsc, oneshot, watch};

use super::fence::{self, FenceTask};
use super::wire::{read_message, write_message};
use super::{BusStatus, LinkStatus};
use crate::config::bus::ReceiverRole;
use crate::poller::shutdown::Shutdown;

/// How often the log's durable end is looked at while nothing else wakes the link. Records
/// wait at most this (plus the linger) before they are planned.
pub const LOG_POLL: Duration = Duration::from_millis(1);

pub struct Link {
    /// Index in the config's receivers.
    pub index: usize,
    pub cursor_name: String,
    pub client: quinn::ClientConfig,
    pub log: Arc<Log>,
    pub sender: Sender,
    pub status: Arc<LinkStatus>,
    pub bus: Arc<BusStatus>,
    pub stop: Shutdown,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Origin of the sender's clock.
    pub base: Instant,
}

/// How a session ended.
enum End {
    Stopped,
    Failed(anyhow::Error),
}

impl Link {
    fn now(&self) -> Nanos {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn peer(&self) -> String {
        self.status.receiver.peer.to_string()
    }

    pub async fn run(mut self) {
        let (cursor_tx, cursor_rx) = watch::channel(self.sender.cursor());
        let writer = tokio::spawn(write_cursors(
            self.log.clone(),
            self.cursor_name.clone(),
            cursor_rx,
            self.sender.cursor(),
        ));
        let mut backoff = self.reconnect_min;
        loop {
            let mut streamed = false;
            let end = self.session(&cursor_tx, &mut streamed).await;
            self.sender.disconnected();
            if self.status.connected.swap(false, Ordering::Relaxed) {
                self.reachable(false).await;
            }
            match end {
                End::Stopped => break,
                End::Failed(e) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "bus: receiver {} at {}: {e:#}",
                        self.peer(),
                        self.status.receiver.address
                    );
                }
            }
            if streamed {
                backoff = self.reconnect_min;
            }
            tokio::select! {
                _ = self.stop.wait() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.reconnect_max);
        }
        drop(cursor_tx);
        if let Err(e) = writer.await {
            log::error!(
                "bus: cursor writer of {} ended abnormally: {e}",
                self.peer()
            );
        }
    }

    async fn reachable(&self, up: bool) {
        let (bus, index) = (self.bus.clone(), self.index);
        let _ = tokio::task::spawn_blocking(move || bus.observe(index, up)).await;
    }

    async fn session(&mut self, cursor_tx: &watch::Sender<u64>, streamed: &mut bool) -> End {
        let stop = self.stop.clone();
        tokio::select! {
            _ = stop.wait() => End::Stopped,
            r = self.connect_and_stream(cursor_tx, streamed) => match r {
                Ok(()) => End::Stopped,
                Err(e) if self.stop.is_stopped() => {
                    log::debug!("bus: {} while stopping: {e:#}", self.peer());
                    End::Stopped
                }
                Err(e) => End::Failed(e),
            },
        }
    }

    async fn connect_and_stream(
        &mut self,
        cursor_tx: &watch::Sender<u64>,
        streamed: &mut bool,
    ) -> anyhow::Result<()> {
        let address = self.status.receiver.address.clone();
        let addr = tokio::net::lookup_host(&address)
            .await
            .with_context(|| format!("resolving {address}"))?
            .next()
            .ok_or_else(|| anyhow!("{address} resolves to no address"))?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
        let conn = endpoint
            .connect_with(self.client.clone(), addr, opha_identity::SERVER_NAME)
            .context("connecting")?
            .await
            .context("handshake")?;
        let result = self.stream(&conn, cursor_tx, streamed).await;
        let reason: &[u8] = if result.is_ok() {
            b"poller stopping"
        } else {
            b"poller error"
        };
        conn.close(0u32.into(), reason);
        // Let the close reach the receiver (bounded).
        let _ = tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        result
    }

    async fn stream(
        &mut self,
        conn: &quinn::Connection,
        cursor_tx: &watch::Sender<u64>,
        streamed: &mut bool,
    ) -> anyhow::Result<()> {
        let frame = BusFrame::default();
        let (mut send, mut recv) = conn.open_bi().await.context("opening the stream")?;
        let (tx, mut rx) = mpsc::channel::<anyhow::Result<BusMessage>>(64);
        let (answers_tx, answers_rx) = mpsc::channel::<Term>(fence::ANSWER_QUEUE);
        let reader = tokio::spawn(async move {
            loop {
                let item = match read_message(&mut recv, &frame).await {
                    Ok(Some(BusMessage::Term(t))) => {
                        // Fencing answers go to the fence task, never behind acks.
                        let _ = answers_tx.try_send(t);
                        continue;
                    }
                    Ok(Some(m)) => Ok(m),
                    Ok(None) => Err(anyhow!("the receiver finished the stream")),
                    Err(e) => Err(anyhow!("reading: {e}")),
                };
                let last = item.is_err();
                if tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        // The fence task (primaries only, once streaming) reports its failure here; until it
        // runs the sender stays here, so the receiver never resolves.
        let (failed_tx, mut failed) = oneshot::channel::<anyhow::Error>();
        let mut fence_start = Some((answers_rx, failed_tx));
        let mut _fence: Option<AbortOnDrop> = None;
        let mut _config: Option<AbortOnDrop> = None;

        let hello = self.sender.connect();
        write_message(&mut send, &frame, &hello)
            .await
            .context("sending hello")?;
        let compression = self.sender.config().compression;
        let mut cache: Option<LogReader> = None;
        loop {
            let now = self.now();
            let head = self.log.durable_next_seq().min(self.status.limit());
            self.sender.appended(head, now);
            self.sender.truncated(self.log.oldest_seq());
            self.status.head.store(head, Ordering::Relaxed);
            self.apply_events(cursor_tx)?;
            if !*streamed && self.sender.is_streaming() {
                *streamed = true;
                self.status.connected.store(true, Ordering::Relaxed);
                self.status.connects.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "bus: streaming to {} (epoch {})",
                    self.peer(),
                    self.bus.epoch
                );
                self.reachable(true).await;
                if self.status.receiver.role == ReceiverRole::Primary
                    && let Some((answers, failed)) = fence_start.take()
                {
                    let task = FenceTask {
                        link: self.index,
                        conn: conn.clone(),
                        bus: self.bus.clone(),
                        status: self.status.clone(),
                        answers,
                        failed,
                    };
                    _fence = Some(AbortOnDrop(tokio::spawn(task.run())));
                    // Config pushes from this primary (fenced there), on a stream of their own.
                    _config = Some(AbortOnDrop(tokio::spawn(super::config::run(
                        self.index,
                        conn.clone(),
                        self.bus.clone(),
                        self.status.clone(),
                    ))));
                }
            }
            while let Some(plan) = self.sender.poll_transmit(self.now()) {
                let (records, back) = read_plan(self.log.clone(), cache.take(), plan).await?;
                cache = back;
                let Some(records) = records else {
                    // Deleted under us: the sender learns the new oldest record and plans again.
                    let oldest = self.log.oldest_seq();
                    if oldest <= plan.first {
                        bail!("the replay log is missing record {}", plan.first);
                    }
                    self.sender.truncated(oldest);
                    continue;
                };
                let n = records.len() as u64;
                let bytes = send_batch(&mut send, &frame, plan.epoch, &records, compression)
                    .await
                    .context("sending a batch")?;
                self.sender.on_sent(&plan, n, bytes, self.now());
            }
            self.export_stats();
            let now = self.now();
            let wait = self
                .sender
                .poll_timeout()
                .map_or(LOG_POLL, |t| Duration::from_nanos(t.saturating_sub(now)))
                .min(LOG_POLL);
            tokio::select! {
                m = rx.recv() => match m {
                    Some(Ok(msg)) => self.sender.handle(msg, self.now()),
                    Some(Err(e)) => return Err(e),
                    None => bail!("the stream reader ended"),
                },
                _ = tokio::time::sleep(wait) => {}
                e = &mut failed => {
                    return Err(e.unwrap_or_else(|_| anyhow!("the fencing task ended")));
                }
            }
            // Take everything already queued before planning again.
            while let Ok(m) = rx.try_recv() {
                self.sender.handle(m?, self.now());
            }
        }
    }

    fn apply_events(&mut self, cursor_tx: &watch::Sender<u64>) -> anyhow::Result<()> {
        while let Some(ev) = self.sender.poll_event() {
            match ev {
                SenderEvent::AdvanceCursor(c) => {
                    self.status.cursor.store(c, Ordering::Relaxed);
                    cursor_tx.send_replace(c);
                }
                SenderEvent::Refused(r) => {
                    self.status.refused.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "bus: receiver {} refused: {:?}: {}",
                        self.peer(),
                        r.reason,
                        r.detail
                    );
                }
            }
        }
        Ok(())
    }

    fn export_stats(&self) {
        let s = self.sender.stats();
        let st = &self.status;
        st.batches.store(s.batches, Ordering::Relaxed);
        st.records_live.store(s.records_live, Ordering::Relaxed);
        st.records_backlog
            .store(s.records_backlog, Ordering::Relaxed);
        st.bytes.store(s.bytes, Ordering::Relaxed);
        st.acks.store(s.acks, Ordering::Relaxed);
        st.retransmit_timeouts
            .store(s.retransmit_timeouts, Ordering::Relaxed);
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send_batch(
    send: &mut quinn::SendStream,
    frame: &BusFrame,
    epoch: u64,
    records: &[Record],
    compression: Compression,
) -> anyhow::Result<u64> {
    let batch = Batch::build(
        epoch,
        records.iter().map(|r| (r.seq, r.payload.as_slice())),
        compression,
    )?;
    let n = write_message(send, frame, &BusMessage::Batch(batch)).await?;
    Ok(n as u64)
}

/// Reads the records of `plan` on the blocking pool: `plan.first` on, contiguous, at most
/// `max_records` and `max_bytes` (a first record larger than that still goes alone).
/// `None`: the log no longer holds `plan.first`. Returns the reader for reuse when it stopped
/// exactly after the last record returned.
async fn read_plan(
    log: Arc<Log>,
    cache: Option<LogReader>,
    plan: Plan,
) -> anyhow::Result<(Option<Vec<Record>>, Option<LogReader>)> {
    tokio::task::spawn_blocking(move || {
        let mut reader = match cache {
            Some(r) if r.position() == plan.first => r,
            _ => log.read_from(plan.first),
        };
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0usize;
        while (out.len() as u64) < plan.max_records {
            match reader.next() {
                None => break,
                Some(Ok(r)) => {
                    if r.seq != plan.first + out.len() as u64 {
                        // Not contiguous (cannot happen below the durable end).
                        return Ok((non_empty(out), None));
                    }
                    if !out.is_empty() && bytes + r.payload.len() > plan.max_bytes {
                        // `r` is consumed: the reader is past it, not reusable.
                        return Ok((Some(out), None));
                    }
                    bytes += r.payload.len();
                    out.push(r);
                }
                Some(Err(opha_log::Error::Gap { .. })) if out.is_empty() => {
                    return Ok((None, None));
                }
                Some(Err(opha_log::Error::Gap { .. })) => return Ok((Some(out), None)),
                Some(Err(e)) => return Err(anyhow!("reading the replay log: {e}")),
            }
        }
        if out.is_empty() {
            bail!(
                "the replay log has no record at {} below its durable end",
                plan.first
            );
        }
        Ok((Some(out), Some(reader)))
    })
    .await
    .map_err(|e| anyhow!("log reader task: {e}"))?
}

fn non_empty(v: Vec<Record>) -> Option<Vec<Record>> {
    (!v.is_empty()).then_some(v)
}

/// Applies the latest cursor position (coalescing bursts) until the link is gone.
async fn write_cursors(log: Arc<Log>, name: String, mut rx: watch::Receiver<u64>, mut done: u64) {
    loop {
        let closed = rx.changed().await.is_err();
        let want = *rx.borrow_and_update();
        if want > done {
            let (log2, name2) = (log.clone(), name.clone());
            match tokio::task::spawn_blocking(move || log2.set_cursor(&name2, want)).await {
                Ok(Ok(())) => done = want,
                Ok(Err(e)) => log::error!("bus: moving log cursor {name:?} to {want}: {e}"),
                Err(e) => log::error!("bus: cursor task: {e}"),
            }
        }
        if closed {
            break;
        }
    }
}
