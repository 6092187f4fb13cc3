//! Fetching a gap from peers: the driver of [`opha_bus::fetch::GapPlanner`] on a primary.
//!
//! After a poller's handshake, the part of its announced epochs below the hello's `oldest`
//! that this primary does not hold can no longer come from the poller (its log deleted it).
//! One task per poller at a time (a handshake while one runs starts none) asks the `[[peer]]`
//! receivers, in the configured order, over QUIC with this primary's own certificate
//! (`StreamKind::Catchup`; [`super::catchup`] is the serving end). Each answer is checked
//! against its request (`FetchExchange`), and every record is stored through the same path
//! as the poller's own batches: its tenant must be one the poller may send for here (its
//! certificate's tenants ∩ the `[[poller]]` registry; a peer cannot inject records of other
//! tenants: those are refused and counted), and it is committed with the store's dedupe
//! ranges, so a fetched record is never stored twice.
//!
//! What no peer provides is counted (`opha_receiver_gap_unavailable_records_total`), logged
//! and reported as an event (source `opha-receiver`, name `gap_unavailable`, in the report
//! tenant's file): a real loss. It never holds up the poller's stream, which runs on its own
//! connection meanwhile. Losses already reported for a poller are not counted again by a
//! later fetch of this process (a later fetch still tries to find them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use opha_bus::fetch::{
    ExchangeEvent, FetchExchange, FetchFrame, FetchMessage, FetchRequest, GapPlanner, GapReport,
    PlanStep, gap_below_oldest,
};
use opha_bus::message::{Entry, Hello};
use opha_bus::ranges::RangeSet;
use opha_bus::receiver::PollerState;
use opha_common::wire::{Event, EventId, EventKind, PeerId, Record, Severity, Subject, TenantId};
use opha_identity::{ExpectPeer, TlsIdentity, Trust};
use opha_store::Scope;

use super::catchup::{read_fetch_frame, write_fetch};
use super::metrics::Metrics;
use super::{REPORT_TENANT, Shared};
use crate::config::receiver::{PeerEntry, ReceiverFileConfig};
use crate::ingest::sink::decode_record;

/// Longest wait for a peer's connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the next message of an answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The peers and the per-poller bookkeeping of one primary.
pub struct GapFetcher {
    peers: Vec<(PeerEntry, quinn::ClientConfig)>,
    running: Mutex<BTreeSet<PeerId>>,
    reported: Mutex<BTreeMap<PeerId, BTreeMap<u64, RangeSet>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
}

impl GapFetcher {
    /// The `[[peer]]` list with a client config each (the server must carry that peer id and
    /// role). Empty on a mirror (validation refuses `[[peer]]` there).
    pub fn new(cfg: &ReceiverFileConfig, trust: &Trust, own: &TlsIdentity) -> anyhow::Result<Self> {
        let mut peers = Vec::new();
        for (i, p) in cfg.peers.iter().enumerate() {
            let client = cfg
                .transport
                .client_config(
                    trust,
                    own,
                    ExpectPeer::receiver(p.id.clone(), &[p.role.peer_role()]),
                )
                .map_err(|e| anyhow!("peer[{i}]: {e}"))?;
            peers.push((p.clone(), client));
        }
        Ok(Self {
            peers,
            running: Mutex::new(BTreeSet::new()),
            reported: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
        })
    }

    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Stops running fetches (receiver shutdown).
    pub async fn stop(&self) {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Called once a poller's hello is accepted: starts a fetch of what is missing below its
/// `oldest`, unless one runs for this poller already. `held` is the state the handshake
/// answered from; `allowed` the tenants the poller may send for here.
pub fn after_handshake(
    shared: &Arc<Shared>,
    poller: &PeerId,
    hello: &Hello,
    held: &PollerState,
    allowed: &BTreeSet<TenantId>,
) {
    let gaps = &shared.gaps;
    if shared.role != opha_common::wire::PeerRole::Primary || gaps.peers.is_empty() {
        return;
    }
    let held: BTreeMap<u64, RangeSet> = held
        .epochs
        .iter()
        .map(|(&e, s)| (e, s.held.clone()))
        .collect();
    let missing = gap_below_oldest(hello, &held);
    if missing.is_empty() {
        return;
    }
    if !lock(&gaps.running).insert(poller.clone()) {
        return;
    }
    let total: u64 = missing.values().map(RangeSet::len).sum();
    log::info!(
        "poller {poller}: {total} record(s) below its log's oldest ({}) are missing here; \
         fetching them from {} peer(s)",
        hello.oldest,
        gaps.peers.len()
    );
    let (s, p, a) = (shared.clone(), poller.clone(), allowed.clone());
    lock(&gaps.tasks).spawn(async move {
        let report = fetch(&s, &p, &a, missing).await;
        finish(&s, &p, report).await;
        lock(&s.gaps.running).remove(&p);
    });
}

/// Runs the planner to its end.
async fn fetch(
    shared: &Arc<Shared>,
    poller: &PeerId,
    allowed: &BTreeSet<TenantId>,
    missing: BTreeMap<u64, RangeSet>,
) -> GapReport {
    let peers = &shared.gaps.peers;
    let mut plan = GapPlanner::new(poller.clone(), missing, peers.len());
    let mut link: Option<Link> = None;
    loop {
        let (peer, request) = match plan.step() {
            PlanStep::Fetch { peer, request } => (peer, request),
            PlanStep::Wait => unreachable!("one request at a time"),
            PlanStep::Finished(report) => {
                if let Some(l) = link.take() {
                    l.close().await;
                }
                return report;
            }
        };
        if link.as_ref().is_some_and(|l| l.peer != peer)
            && let Some(l) = link.take()
        {
            l.close().await;
        }
        if link.is_none() {
            let (entry, client) = &peers[peer];
            match Link::connect(peer, entry, client).await {
                Ok(l) => link = Some(l),
                Err(e) => {
                    log::warn!("gap fetch for {poller}: peer {}: {e:#}", entry.id);
                    plan.peer_failed();
                    continue;
                }
            }
        }
        let Some(l) = link.as_mut() else { continue };
        match exchange(shared, poller, allowed, l, request, &mut plan).await {
            Ok(()) => plan.answered(),
            Err(e) => {
                log::warn!("gap fetch for {poller}: peer {}: {e:#}", peers[peer].0.id);
                plan.peer_failed();
                if let Some(l) = link.take() {
                    l.close().await;
                }
            }
        }
    }
}

/// One request and its answer; records are stored as they arrive.
async fn exchange(
    shared: &Arc<Shared>,
    poller: &PeerId,
    allowed: &BTreeSet<TenantId>,
    link: &mut Link,
    request: FetchRequest,
    plan: &mut GapPlanner,
) -> anyhow::Result<()> {
    let epoch = request.epoch;
    write_fetch(&mut link.send, &FetchMessage::Request(request.clone())).await?;
    let mut ex = FetchExchange::new(request);
    let frame = FetchFrame::default();
    loop {
        let bytes = tokio::time::timeout(REPLY_TIMEOUT, read_fetch_frame(&mut link.recv, &frame))
            .await
            .context("the peer stopped answering")??
            .ok_or_else(|| anyhow!("the peer ended the stream inside an answer"))?;
        let msg = frame.decode(&bytes)?;
        match ex.handle(msg)? {
            ExchangeEvent::Entries(entries) => {
                let stored = store(shared, poller, allowed, epoch, entries).await?;
                plan.stored(epoch, &stored);
            }
            ExchangeEvent::Done { .. } => return Ok(()),
        }
    }
}

/// Decodes, authorizes and commits fetched records (blocking part off the runtime); returns
/// the seqs now durable here (new or already held).
async fn store(
    shared: &Arc<Shared>,
    poller: &PeerId,
    allowed: &BTreeSet<TenantId>,
    epoch: u64,
    entries: Vec<Entry>,
) -> anyhow::Result<RangeSet> {
    let mut parts: BTreeMap<Scope, Vec<(u64, Record)>> = BTreeMap::new();
    for e in entries {
        let record = match decode_record(&e.payload.0) {
            Ok(r) => r,
            Err(_) => {
                shared.metrics.reject("gap_undecodable", 1);
                continue;
            }
        };
        let scope = match record.tenant() {
            None => Scope::System,
            Some(t) if allowed.contains(&t) => Scope::Tenant(t),
            Some(t) => {
                // Not the poller's to send here, so not a peer's to hand us either.
                log::warn!(
                    "gap fetch for {poller}: record {epoch}/{} of tenant {t} refused",
                    e.seq
                );
                shared.metrics.reject("gap_wrong_tenant", 1);
                continue;
            }
        };
        parts.entry(scope).or_default().push((e.seq, record));
    }
    let (s, p) = (shared.clone(), poller.clone());
    let (held, stored) = tokio::task::spawn_blocking(move || {
        let mut tickets = Vec::new();
        for (scope, records) in parts {
            let seqs: RangeSet = records.iter().map(|(q, _)| *q..*q + 1).collect();
            let c = s.committer(scope)?;
            tickets.push((seqs, c.submit(p.clone(), epoch, records)));
        }
        let (mut held, mut stored) = (RangeSet::new(), 0u64);
        for (seqs, t) in tickets {
            let o = t.wait()?;
            stored += o.stored;
            for r in seqs.iter() {
                held.insert(r);
            }
        }
        Ok::<_, opha_store::StoreError>((held, stored))
    })
    .await??;
    Metrics::add(&shared.metrics.gap_fetched, stored);
    Metrics::add(&shared.metrics.stored, stored);
    Ok(held)
}

/// Counts and reports what no peer had.
async fn finish(shared: &Arc<Shared>, poller: &PeerId, report: GapReport) {
    let mut new = 0u64;
    let mut new_ranges: BTreeMap<u64, RangeSet> = BTreeMap::new();
    {
        let mut reported = lock(&shared.gaps.reported);
        let seen = reported.entry(poller.clone()).or_default();
        for (&epoch, set) in &report.unavailable {
            let known = seen.entry(epoch).or_default();
            for r in set.iter() {
                let before = known.len();
                known.insert(r.clone());
                let added = known.len() - before;
                if added > 0 {
                    new += added;
                    new_ranges.entry(epoch).or_default().insert(r);
                }
            }
        }
    }
    log::info!(
        "gap fetch for {poller}: {} record(s) fetched, {} unavailable",
        report.fetched,
        report.unavailable_records()
    );
    if new == 0 {
        return;
    }
    Metrics::add(&shared.metrics.gap_unavailable, new);
    let shown: Vec<String> = new_ranges
        .iter()
        .flat_map(|(e, set)| {
            set.iter()
                .take(8)
                .map(move |r| format!("{e}/{}..{}", r.start, r.end))
        })
        .take(16)
        .collect();
    let details = format!(
        "{new} record(s) of poller {poller} are lost for this receiver: its log no longer holds \
         them and no peer has them (epoch/seq ranges: {})",
        shown.join(", ")
    );
    log::error!("{details}");
    let (s, p) = (shared.clone(), poller.clone());
    let _ = tokio::task::spawn_blocking(move || report_loss(&s, &p, details)).await;
}

/// Stores the loss report under the receiver's own stream key, as reports of refused records.
fn report_loss(shared: &Shared, poller: &PeerId, details: String) {
    let (epoch, seq) = {
        let mut r = lock(&shared.reports);
        let seq = r.next;
        r.next += 1;
        (r.epoch, seq)
    };
    let id = (u128::from(epoch) << 64) | u128::from(seq);
    let event = Record::Event(Event {
        id: EventId::from_u128(id ^ super::hash_peer(&shared.me)),
        time_ms: super::now_ms(),
        tenant: REPORT_TENANT,
        subject: Subject::Peer(poller.clone()),
        kind: EventKind::External {
            source: "opha-receiver".into(),
            name: "gap_unavailable".into(),
        },
        severity: Severity::Critical,
        details,
    });
    let result = shared
        .committer(Scope::Tenant(REPORT_TENANT))
        .and_then(|c| c.commit(shared.me.clone(), epoch, vec![(seq, event)]));
    if let Err(e) = result {
        log::warn!("could not store the gap loss report for {poller}: {e}");
    }
}

/// A connection to one peer with its catchup stream.
struct Link {
    peer: usize,
    endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Link {
    async fn connect(
        peer: usize,
        entry: &PeerEntry,
        client: &quinn::ClientConfig,
    ) -> anyhow::Result<Link> {
        let addr = tokio::net::lookup_host(&entry.address)
            .await
            .with_context(|| format!("resolving {}", entry.address))?
            .next()
            .ok_or_else(|| anyhow!("{} resolves to no address", entry.address))?;
        let bind: SocketAddr = if addr.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quinn::Endpoint::client(bind).context("binding a UDP socket")?;
        let connecting = endpoint
            .connect_with(client.clone(), addr, opha_identity::SERVER_NAME)
            .context("connecting")?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .context("connect timed out")?
            .context("handshake")?;
        let (send, recv) = conn.open_bi().await.context("opening the stream")?;
        Ok(Link {
            peer,
            endpoint,
            conn,
            send,
            recv,
        })
    }

    async fn close(mut self) {
        let _ = self.send.finish();
        self.conn.close(0u32.into(), b"gap fetch done");
        let _ = tokio::time::timeout(Duration::from_millis(200), self.endpoint.wait_idle()).await;
    }
}
