//! One poller connection: identity, handshake, batches -> authorized commits -> acks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use opha_bus::message::{BusKind, BusMessage, Grant, Refuse, RefuseReason};
use opha_bus::receiver::{EpochState, PollerState, Receiver, ReceiverOutput, Store as BusStore};
use opha_common::wire::{PeerId, PeerRole, Record, TenantId};
use opha_identity::verify::CLOSE_REFUSED;
use opha_identity::{PeerIdentity, StreamKind};
use opha_store::Scope;
use tokio::sync::mpsc;

use super::Shared;
use super::metrics::Metrics;
use super::stream::{FrameReadError, read_frame, write_message};
use crate::ingest::sink::decode_record;

/// Frames waiting for the connection task (from all of its streams).
const FRAME_QUEUE: usize = 64;
/// Stores handed to the committer and not yet settled: bounds memory per connection (the
/// poller's window bounds it too).
const COMMIT_QUEUE: usize = 64;

/// Serves one incoming connection to its end.
pub async fn serve(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let (conn, id) = match shared.trust.accept(incoming).await {
        Ok(x) => x,
        Err(e) => {
            log::info!("refused a peer in the TLS handshake: {e}");
            return;
        }
    };
    if id.role == opha_common::wire::PeerRole::Primary {
        // Not a poller: a primary fetching a gap (authorized there).
        super::catchup::serve(shared, conn, id).await;
        return;
    }
    // A promoted mirror streams its own records in its poller's place (docs/mirror.md).
    let kind = if id.role == PeerRole::Mirror {
        StreamKind::MirrorRecords
    } else {
        StreamKind::PollerRecords
    };
    if let Err(e) = shared.trust.authorize_stream(shared.role, &id, kind) {
        log::warn!("{e}");
        shared.metrics.reject("wrong_role", 1);
        conn.close(CLOSE_REFUSED, b"only pollers may send records");
        return;
    }
    let Some(registered) = shared.registry.get(&id.peer_id) else {
        log::warn!("poller {} is not in the [[poller]] registry", id.peer_id);
        shared.metrics.reject("unregistered", 1);
        conn.close(CLOSE_REFUSED, b"poller not registered");
        return;
    };
    let allowed: BTreeSet<TenantId> = id
        .tenants
        .iter()
        .copied()
        .filter(|t| registered.contains(t))
        .collect();
    Metrics::add(&shared.metrics.connections_total, 1);
    Metrics::add(&shared.metrics.connections, 1);
    let settled = shared.register(&id.peer_id, &conn);
    {
        // A previous connection of this poller settles its stores before this one reads
        // the store's state.
        let _settled = settled.lock().await;
        let mirror = mirror_hook(&shared, &id.peer_id);
        if let Some(m) = mirror {
            m.connected(true);
        }
        if let Err(e) = session(&shared, &conn, &id, &allowed).await {
            log::info!("poller {}: connection ended: {e:#}", id.peer_id);
        }
        if let Some(m) = mirror {
            m.connected(false);
        }
        super::live::disconnected(&shared, &id.peer_id, &conn);
        // Before a newer connection of the poller may start: it acts only on its own grants.
        shared.fencing.disconnected(&id.peer_id);
    }
    shared.unregister(&id.peer_id, &conn);
    shared
        .metrics
        .connections
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
}

/// What the commit worker does with one bus store.
struct Job {
    ticket: u64,
    epoch: u64,
    parts: BTreeMap<Scope, Vec<(u64, Record)>>,
    /// reason -> count, for the report.
    refused: BTreeMap<String, u64>,
    received: Instant,
}

struct Done {
    ticket: u64,
    result: Result<(u64, u64), String>,
    received: Instant,
}

/// Builds the bus receiver's state from the store's ranges, with epoch starts from the hello.
fn state_from_store(
    held: Vec<(u64, opha_store::RangeSet)>,
    starts: &BTreeMap<u64, u64>,
) -> PollerState {
    let mut state = PollerState::default();
    for (epoch, held) in held {
        let start = starts
            .get(&epoch)
            .copied()
            .unwrap_or_else(|| held.iter().next().map_or(0, |r| r.start));
        state.epochs.insert(
            epoch,
            EpochState {
                start,
                end: None,
                held,
            },
        );
    }
    state
}

async fn session(
    shared: &Arc<Shared>,
    conn: &quinn::Connection,
    id: &PeerIdentity,
    allowed: &BTreeSet<TenantId>,
) -> anyhow::Result<()> {
    let frame = shared.bus.frame;
    let (mut send, mut recv) = conn.accept_bi().await?;
    // The poller's next bidirectional stream is its config stream (primaries push on it).
    let _config = super::config_push::spawn(shared, conn, &id.peer_id);
    let Some(first) = read_frame(&mut recv, &frame).await? else {
        return Ok(());
    };
    let hello = match frame.decode(&first) {
        Ok(BusMessage::Hello(h)) => h,
        other => {
            let detail = match other {
                Ok(m) => format!("expected a hello, got {:?}", m.kind()),
                Err(e) => e.to_string(),
            };
            shared.metrics.reject("handshake", 1);
            let refuse = BusMessage::Refuse(Refuse {
                reason: RefuseReason::NoHandshake,
                detail,
            });
            let _ = write_message(&mut send, &frame, &refuse).await;
            close_after_refusal(&mut send, conn, b"no handshake").await;
            return Ok(());
        }
    };
    let starts: BTreeMap<u64, u64> = hello.epochs.iter().map(|e| (e.epoch, e.start)).collect();
    let poller = id.peer_id.clone();
    let scopes = Shared::scopes(allowed);
    let s = shared.clone();
    let p = poller.clone();
    let held = tokio::task::spawn_blocking(move || s.store.held_ranges(&p, &scopes)).await??;
    let mut rx = Receiver::new(shared.bus.clone(), state_from_store(held, &starts));
    let mut head = hello.head;
    let current_epoch = hello.epoch;

    let (frames_tx, mut frames) = mpsc::channel::<Result<Vec<u8>, FrameReadError>>(FRAME_QUEUE);
    // The rest of the control stream, and every unidirectional stream the poller opens.
    tokio::spawn(pump(recv, frame, frames_tx.clone()));
    {
        let conn = conn.clone();
        let tx = frames_tx.clone();
        tokio::spawn(async move {
            while let Ok(r) = conn.accept_uni().await {
                tokio::spawn(pump(r, frame, tx.clone()));
            }
        });
    }
    drop(frames_tx);
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(COMMIT_QUEUE);
    // Unbounded: the worker must never wait for this loop, which may itself be waiting for
    // room in `jobs` (both bounded, a poller with more than 2 * COMMIT_QUEUE small batches in
    // flight deadlocked them). Its length stays within the jobs the loop has handed out.
    let (done_tx, mut done) = mpsc::unbounded_channel::<Done>();
    let worker = tokio::spawn(commit_worker(
        shared.clone(),
        poller.clone(),
        jobs_rx,
        done_tx,
    ));

    let mirror = mirror_hook(shared, &poller);
    if let Some(m) = mirror {
        m.seen();
    }
    let gap_hello = hello.clone();
    let outputs = rx.handle(BusMessage::Hello(hello), 0);
    let mut ctx = Ctx {
        shared,
        conn,
        send: &mut send,
        allowed,
        id,
        jobs: &jobs_tx,
        head: &mut head,
        received_at: Instant::now(),
    };
    ctx.apply(outputs).await?;
    if !rx.is_closed() {
        super::gap::after_handshake(shared, &poller, &gap_hello, rx.state(), allowed);
    }
    let mut link = super::live::Link::default();
    let lag = update_lag(shared, &poller, &rx, current_epoch, *ctx.head);
    if !rx.is_closed() {
        link.update(shared, &poller, lag);
    }

    let result: anyhow::Result<()> = loop {
        tokio::select! {
            f = frames.recv() => match f {
                Some(Ok(bytes)) => {
                    if let Some(m) = mirror {
                        // Any frame (batch, heartbeat) is a sign of life of the paired poller.
                        m.seen();
                    }
                    // Grants are the fencing driver's, not the bus receiver's.
                    if frame.header(&bytes).is_ok_and(|h| h.kind == BusKind::Grant)
                        && let Ok(BusMessage::Grant(g)) = frame.decode(&bytes)
                    {
                        if let Err(e) = on_grant(shared, &poller, g, ctx.send).await {
                            break Err(e);
                        }
                        continue;
                    }
                    let (before, dups_before) = (received(&rx), rx.stats().duplicates);
                    ctx.received_at = Instant::now();
                    let out = rx.handle_frame(&bytes, 0);
                    Metrics::add(&shared.metrics.received, received(&rx) - before);
                    Metrics::add(
                        &shared.metrics.duplicates,
                        rx.stats().duplicates - dups_before,
                    );
                    if let Err(e) = ctx.apply(out).await {
                        break Err(e);
                    }
                    if rx.is_closed() {
                        break Ok(());
                    }
                }
                Some(Err(e)) => {
                    // The stream lost its framing: nothing after this can be trusted.
                    shared.metrics.reject("malformed", 1);
                    let refuse = BusMessage::Refuse(Refuse {
                        reason: RefuseReason::Malformed,
                        detail: e.to_string(),
                    });
                    let _ = write_message(ctx.send, &frame, &refuse).await;
                    close_after_refusal(ctx.send, conn, b"malformed stream").await;
                    break Ok(());
                }
                None => break Ok(()),
            },
            d = done.recv() => match d {
                Some(d) => {
                    let out = settle(shared, &mut rx, d);
                    // Before the ack goes out: whoever sees the ack sees the state too.
                    let lag = update_lag(shared, &poller, &rx, current_epoch, *ctx.head);
                    link.update(shared, &poller, lag);
                    if let Err(e) = ctx.apply(out).await {
                        break Err(e);
                    }
                }
                None => break Err(anyhow::anyhow!("commit worker stopped")),
            },
            e = conn.closed() => break Err(e.into()),
        }
    };
    // Settle every store handed out before giving the poller's state to a new connection.
    drop(jobs_tx);
    while let Some(d) = done.recv().await {
        let _ = settle(shared, &mut rx, d);
    }
    let _ = worker.await;
    result
}

/// A grant from the poller: applied (its term persisted first when new) and answered; a
/// mirror drops it unanswered.
async fn on_grant(
    shared: &Arc<Shared>,
    poller: &PeerId,
    grant: Grant,
    send: &mut quinn::SendStream,
) -> anyhow::Result<()> {
    if shared.role != PeerRole::Primary {
        shared.metrics.reject("not_primary", 1);
        return Ok(());
    }
    let term = grant.term;
    let outcome = if shared.fencing.needs_persist(poller, &grant) {
        let (s, p) = (shared.clone(), poller.clone());
        tokio::task::spawn_blocking(move || s.fencing.on_grant(&p, &grant)).await?
    } else {
        shared.fencing.on_grant(poller, &grant)
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            // Not durable, not applied: the poller sends the grant again with its heartbeat.
            log::error!("fencing: {e:#}");
            shared.metrics.reject("fencing_store_failed", 1);
            return Ok(());
        }
    };
    if outcome.stale {
        log::warn!(
            "poller {poller}: stale grant (term {} below {}) ignored",
            term,
            outcome.answer.highest
        );
        shared.metrics.reject("stale_grant", 1);
    }
    write_message(send, &shared.bus.frame, &BusMessage::Term(outcome.answer)).await?;
    Ok(())
}

fn received(rx: &Receiver) -> u64 {
    rx.stats().records_new + rx.stats().duplicates
}

/// Sets and returns the poller's lag.
fn update_lag(shared: &Shared, poller: &PeerId, rx: &Receiver, epoch: u64, head: u64) -> u64 {
    let durable = rx
        .state()
        .epochs
        .get(&epoch)
        .map_or(0, |e| e.held.contiguous_end(e.start));
    let lag = head.saturating_sub(durable);
    shared.metrics.set_lag(poller.as_str(), lag);
    lag
}

/// A commit result into the bus receiver.
fn settle(shared: &Shared, rx: &mut Receiver, d: Done) -> Vec<ReceiverOutput> {
    match d.result {
        Ok((stored, dups)) => {
            Metrics::add(&shared.metrics.stored, stored);
            Metrics::add(&shared.metrics.duplicates, dups);
            let out = rx.durable(d.ticket);
            if out
                .iter()
                .any(|o| matches!(o, ReceiverOutput::Transmit(BusMessage::Ack(_))))
            {
                shared.metrics.ack_latency(d.received.elapsed());
            }
            out
        }
        Err(e) => {
            log::warn!("store failed: {e}; the poller will send these records again");
            shared.metrics.reject("store_failed", 1);
            rx.store_failed(d.ticket);
            Vec::new()
        }
    }
}

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a quinn::Connection,
    send: &'a mut quinn::SendStream,
    allowed: &'a BTreeSet<TenantId>,
    id: &'a PeerIdentity,
    jobs: &'a mpsc::Sender<Job>,
    head: &'a mut u64,
    received_at: Instant,
}

impl Ctx<'_> {
    async fn apply(&mut self, outputs: Vec<ReceiverOutput>) -> anyhow::Result<()> {
        for o in outputs {
            match o {
                ReceiverOutput::Transmit(msg) => {
                    if let BusMessage::Refuse(r) = &msg {
                        log::warn!(
                            "poller {}: refused: {:?}: {}",
                            self.id.peer_id,
                            r.reason,
                            r.detail
                        );
                        self.shared.metrics.reject(refuse_name(r.reason), 1);
                    }
                    write_message(self.send, &self.shared.bus.frame, &msg).await?;
                }
                ReceiverOutput::Store(s) => {
                    let job = self.job(s);
                    self.jobs
                        .send(job)
                        .await
                        .map_err(|_| anyhow::anyhow!("commit worker stopped"))?;
                }
                ReceiverOutput::Close => {
                    close_after_refusal(self.send, self.conn, b"handshake refused").await;
                }
            }
        }
        Ok(())
    }

    /// Decodes and authorizes the records of one store.
    /// An event whose subject is the sending peer itself.
    fn is_own_peer_event(&self, record: &Record) -> bool {
        matches!(record, Record::Event(e)
            if matches!(&e.subject, opha_common::wire::Subject::Peer(p) if *p == self.id.peer_id))
    }

    fn job(&mut self, s: BusStore) -> Job {
        let mut parts: BTreeMap<Scope, Vec<(u64, Record)>> = BTreeMap::new();
        let mut refused: BTreeMap<String, u64> = BTreeMap::new();
        for e in s.entries {
            *self.head = (*self.head).max(e.seq.saturating_add(1));
            let record = match decode_record(&e.payload.0) {
                Ok(r) => r,
                Err(_) => {
                    *refused.entry("undecodable".into()).or_default() += 1;
                    continue;
                }
            };
            let scope = match record.tenant() {
                None => Scope::System,
                Some(t) if self.allowed.contains(&t) => Scope::Tenant(t),
                // The poller's events about itself (its daemons, its log) carry the operator's
                // tenant 0 (daemons::state::PEER_TENANT): stored in the operator's file, which
                // no tenant token reads. About anything else, tenant 0 is refused as usual.
                Some(t) if t == super::REPORT_TENANT && self.is_own_peer_event(&record) => {
                    Scope::Tenant(t)
                }
                Some(t) => {
                    let reason = if self.shared.trust.authorize_tenant(self.id, t).is_err() {
                        format!("wrong_tenant (tenant {t} not in the certificate)")
                    } else {
                        format!("unregistered_tenant (tenant {t} not in the registry)")
                    };
                    *refused.entry(reason).or_default() += 1;
                    continue;
                }
            };
            if let Some(m) = mirror_hook(self.shared, &self.id.peer_id) {
                m.record(&record);
            }
            parts.entry(scope).or_default().push((e.seq, record));
        }
        for (reason, n) in &refused {
            let key = reason.split(' ').next().unwrap_or(reason);
            self.shared.metrics.reject(key, *n);
        }
        Job {
            ticket: s.ticket,
            epoch: s.epoch,
            parts,
            refused,
            received: self.received_at,
        }
    }
}

/// How long a refusal may take to reach the peer before the connection closes anyway.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Finishes the control stream and closes the connection once the peer has acknowledged the
/// refusal written on it (at most [`REFUSAL_GRACE`]): closing at once discards unsent stream
/// data, and the poller would see the close without the reason.
async fn close_after_refusal(send: &mut quinn::SendStream, conn: &quinn::Connection, why: &[u8]) {
    if send.finish().is_ok() {
        let _ = tokio::time::timeout(REFUSAL_GRACE, send.stopped()).await;
    }
    conn.close(CLOSE_REFUSED, why);
}

/// The mirror's promotion hook when `peer` is its paired poller (docs/mirror.md).
fn mirror_hook<'a>(shared: &'a Shared, peer: &PeerId) -> Option<&'a crate::mirror::driver::Hook> {
    shared.mirror.as_deref().filter(|m| m.is_poller(peer))
}

fn refuse_name(r: RefuseReason) -> &'static str {
    match r {
        RefuseReason::UnsupportedVersion => "unsupported_version",
        RefuseReason::NoHandshake => "no_handshake",
        RefuseReason::EpochRegressed => "epoch_regressed",
        RefuseReason::EpochConflict => "epoch_conflict",
        RefuseReason::UnknownEpoch => "unknown_epoch",
        RefuseReason::StaleEpoch => "stale_epoch",
        RefuseReason::SeqOutOfRange => "seq_out_of_range",
        RefuseReason::Malformed => "malformed",
        RefuseReason::Unauthorized => "unauthorized",
    }
}

/// Reads frames from one stream into the connection's queue.
async fn pump(
    mut recv: quinn::RecvStream,
    frame: opha_bus::message::BusFrame,
    tx: mpsc::Sender<Result<Vec<u8>, FrameReadError>>,
) {
    loop {
        match read_frame(&mut recv, &frame).await {
            Ok(Some(f)) => {
                if tx.send(Ok(f)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(FrameReadError::Read(_)) => return, // the connection is going away
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// Commits jobs strictly in ticket order (the bus receiver's `durable` needs that).
async fn commit_worker(
    shared: Arc<Shared>,
    poller: PeerId,
    mut jobs: mpsc::Receiver<Job>,
    done: mpsc::UnboundedSender<Done>,
) {
    while let Some(job) = jobs.recv().await {
        let s = shared.clone();
        let p = poller.clone();
        let ticket = job.ticket;
        let received = job.received;
        let result = tokio::task::spawn_blocking(move || commit(&s, &p, job))
            .await
            .unwrap_or_else(|e| Err(format!("commit task: {e}")));
        if done
            .send(Done {
                ticket,
                result,
                received,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Blocking: one transaction per scope (each with its own dedupe ranges), then the report.
fn commit(shared: &Shared, poller: &PeerId, job: Job) -> Result<(u64, u64), String> {
    // Submit every scope first so their commits overlap, then wait for all.
    let mut tickets = Vec::new();
    let mut live = super::live::Pending::new(shared.live.as_deref());
    for (scope, records) in job.parts {
        live.collect(&records);
        let c = shared.committer(scope).map_err(|e| e.to_string())?;
        tickets.push(c.submit(poller.clone(), job.epoch, records));
    }
    let (mut stored, mut dups) = (0, 0);
    let mut failed = None;
    for t in tickets {
        match t.wait() {
            Ok(o) => {
                stored += o.stored;
                dups += o.duplicates;
            }
            Err(e) => failed = Some(e.to_string()),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    live.publish(poller, job.epoch, dups == 0);
    if !job.refused.is_empty() {
        let details = job
            .refused
            .iter()
            .map(|(r, n)| format!("{n} record(s): {r}"))
            .collect::<Vec<_>>()
            .join("; ");
        shared.report_refused(
            poller,
            format!(
                "refused records of epoch {} from {poller}: {details}",
                job.epoch
            ),
        );
    }
    Ok((stored, dups))
}
