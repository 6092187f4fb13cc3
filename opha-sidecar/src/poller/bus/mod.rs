//! The poller's bus sender: streams the replay log to every configured receiver (the
//! primaries and the paired mirror) over QUIC with mutual TLS.
//!
//! The protocol decisions are `opha_bus::sender::Sender`'s (one per receiver, pure); this
//! module is its driver:
//!
//! - [`start`]: loads the certificates, bumps and persists the epoch ([`epochs`]) *before*
//!   anything connects, registers one log cursor per receiver (`receiver:<peer id>`, created
//!   at the oldest record if missing; cursors of receivers no longer configured are removed,
//!   so they cannot hold the log forever), and starts one task per receiver.
//! - [`link`]: the task: connect (mTLS, the receiver's peer id and role required of its
//!   certificate), one bidirectional stream, hello, then batches of log records as the
//!   sender plans them; acknowledgements move the receiver's log cursor, so a segment is
//!   deleted only when every receiver has passed it. Reconnects with exponential backoff.
//! - [`wire`]: bus frames on a QUIC stream.
//!
//! With no `[[receiver]]` nothing here runs and no cursor is registered: the log keeps
//! everything, as before the bus existed.
//!
//! Fencing: an `opha_bus::fencing::Arbiter` is fed the reachability of the primaries (a
//! primary is reachable while its link is streaming); the active primary and the term are
//! exported as metrics, and the term is persisted in the epoch file before it is exposed, so
//! a term is never granted twice, also across restarts. [`fence`] sends the grant to every
//! connected primary (never to a mirror) and watches their answers: a primary silent for
//! `bus.failover_after` is unreachable, so failover does not wait for the QUIC idle timeout.

pub mod config;
pub mod epochs;
pub mod fence;
pub mod link;
pub mod wire;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use opha_bus::fencing::Arbiter;
use opha_common::wire::{PeerId, PeerRole};
use opha_identity::{ExpectPeer, PeerIdentity, TlsIdentity, Trust};
use opha_log::Log;
use tokio::sync::watch;

use super::shared::lock;
use super::shutdown::Shutdown;
use crate::config::{PollerConfig, bus::ReceiverEntry};
use epochs::EpochTable;

/// Prefix of the receivers' cursor names in the replay log.
pub const CURSOR_PREFIX: &str = "receiver:";

/// The log cursor of the receiver `peer`.
pub fn cursor_name(peer: &PeerId) -> String {
    format!("{CURSOR_PREFIX}{}", peer.as_str())
}

/// One receiver's link, as the metrics see it.
#[derive(Debug)]
pub struct LinkStatus {
    pub receiver: ReceiverEntry,
    /// Streaming (the handshake completed) now.
    pub connected: AtomicBool,
    /// First log position the receiver has not acknowledged.
    pub cursor: AtomicU64,
    /// The log's durable end as this link last saw it.
    pub head: AtomicU64,
    pub connects: AtomicU64,
    pub failures: AtomicU64,
    pub batches: AtomicU64,
    pub records_live: AtomicU64,
    pub records_backlog: AtomicU64,
    pub bytes: AtomicU64,
    pub acks: AtomicU64,
    pub retransmit_timeouts: AtomicU64,
    pub refused: AtomicU64,
    /// Grants sent (primaries only).
    pub grants_sent: AtomicU64,
    /// Links torn down because the primary did not answer grants for `failover_after`.
    pub fence_timeouts: AtomicU64,
    /// The primary's last answer said it acts for this poller.
    pub acting: AtomicBool,
    /// Records from this position on are not sent (`u64::MAX`: no limit). A demoted mirror
    /// drains up to its cut and sends nothing after it.
    pub limit: AtomicU64,
}

impl LinkStatus {
    fn new(receiver: ReceiverEntry, cursor: u64, head: u64) -> Self {
        Self {
            receiver,
            connected: AtomicBool::new(false),
            cursor: AtomicU64::new(cursor),
            head: AtomicU64::new(head),
            connects: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            records_live: AtomicU64::new(0),
            records_backlog: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            retransmit_timeouts: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            grants_sent: AtomicU64::new(0),
            fence_timeouts: AtomicU64::new(0),
            acting: AtomicBool::new(false),
            limit: AtomicU64::new(u64::MAX),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn cursor(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// See [`LinkStatus::limit`].
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }
}

/// Where a bus starts sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// A poller: each receiver from its cursor; a new epoch covers every record still kept.
    Cursors,
    /// A promoted mirror (its certificate has the mirror role): one new epoch starting at
    /// this log position, every receiver's cursor moved there; nothing before it is sent.
    Head(u64),
}

/// The bus as a whole: epoch, links, fencing.
#[derive(Debug)]
pub struct BusStatus {
    pub poller: PeerId,
    /// This run's epoch.
    pub epoch: u64,
    pub links: Vec<Arc<LinkStatus>>,
    /// `links` indexes of the primaries in preference order (the arbiter's order).
    primaries: Vec<usize>,
    fencing: Mutex<Fencing>,
    /// Bumped whenever a grant may have to change: a new grant, or a primary's answer that
    /// changed what it has seen or whether it acts. Every [`fence`] task watches it.
    fence_changes: watch::Sender<u64>,
    /// `bus.heartbeat`.
    pub heartbeat: Duration,
    /// `bus.failover_after`.
    pub failover_after: Duration,
    /// The running config, for config pushes ([`config`]); unset: pushes are rejected.
    pub config: std::sync::OnceLock<Arc<crate::poller::config_apply::LiveConfig>>,
}

#[derive(Debug)]
struct Fencing {
    arbiter: Arbiter,
    table: EpochTable,
    path: PathBuf,
    /// Per link (indexed like `links`; used for primaries only).
    views: Vec<fence::View>,
}

impl BusStatus {
    /// The active primary's peer id and the current term.
    pub fn active_primary(&self) -> (Option<PeerId>, u64) {
        let f = lock(&self.fencing);
        let active = f
            .arbiter
            .active()
            .and_then(|i| self.primaries.get(i))
            .and_then(|&l| self.links.get(l))
            .map(|l| l.receiver.peer.clone());
        (active, f.arbiter.term())
    }

    /// A link's reachability changed. Blocking (a new term is persisted before it counts):
    /// call from a blocking thread.
    pub fn observe(&self, link: usize, reachable: bool) {
        let Some(p) = self.primaries.iter().position(|&l| l == link) else {
            return;
        };
        let mut f = lock(&self.fencing);
        let before = f.arbiter.clone();
        if let Some(grant) = f.arbiter.observe(p, reachable) {
            self.commit_grant(&mut f, before, grant);
        }
    }

    /// A primary reported `term` above ours (our persisted term was lost or is older than a
    /// copy): grant again above it. Blocking, like [`BusStatus::observe`].
    pub fn observe_term(&self, term: u64) {
        let mut f = lock(&self.fencing);
        let before = f.arbiter.clone();
        if let Some(grant) = f.arbiter.observe_term(term) {
            log::warn!("bus: a primary has seen fencing term {term}, above ours: granting anew");
            self.commit_grant(&mut f, before, grant);
        }
    }

    /// Persists a new grant's term, then makes it current (tells the fence tasks).
    fn commit_grant(&self, f: &mut Fencing, before: Arbiter, grant: opha_bus::fencing::Grant) {
        f.table.term = grant.term;
        if let Err(e) = f.table.store(&f.path) {
            // A term that is not durable could be granted again after a restart: keep
            // the old grant (the next observation tries again).
            log::error!(
                "bus.epoch_file: persisting fencing term {}: {e}",
                grant.term
            );
            f.table.term = before.term();
            f.arbiter = before;
            return;
        }
        let active = grant
            .primary
            .and_then(|i| self.primaries.get(i))
            .and_then(|&l| self.links.get(l))
            .map_or("none".to_string(), |l| l.receiver.peer.to_string());
        log::info!("bus: active primary {active} (term {})", grant.term);
        self.fence_changes.send_modify(|g| *g += 1);
    }

    /// Prometheus text for the bus.
    pub fn render(&self, out: &mut String) {
        let series: [Series; 15] = [
            (
                "opha_bus_connected",
                "gauge",
                "1 while the link to the receiver is streaming.",
                |l| u64::from(l.is_connected()),
            ),
            (
                "opha_bus_cursor",
                "gauge",
                "First log position the receiver has not acknowledged.",
                |l| l.cursor(),
            ),
            (
                "opha_bus_lag_records",
                "gauge",
                "Durable log records the receiver has not acknowledged.",
                |l| l.head.load(Ordering::Relaxed).saturating_sub(l.cursor()),
            ),
            (
                "opha_bus_connects_total",
                "counter",
                "Connections that completed the bus handshake.",
                |l| get(&l.connects),
            ),
            (
                "opha_bus_connect_failures_total",
                "counter",
                "Connections that failed or were lost.",
                |l| get(&l.failures),
            ),
            ("opha_bus_batches_total", "counter", "Batches sent.", |l| {
                get(&l.batches)
            }),
            (
                "opha_bus_records_live_total",
                "counter",
                "Records sent as live (appended since the handshake).",
                |l| get(&l.records_live),
            ),
            (
                "opha_bus_records_backlog_total",
                "counter",
                "Records sent as backlog (replay).",
                |l| get(&l.records_backlog),
            ),
            (
                "opha_bus_bytes_total",
                "counter",
                "Batch frame bytes sent (after compression).",
                |l| get(&l.bytes),
            ),
            (
                "opha_bus_acks_total",
                "counter",
                "Acknowledgements received.",
                |l| get(&l.acks),
            ),
            (
                "opha_bus_retransmit_timeouts_total",
                "counter",
                "Batches sent again after no acknowledgement.",
                |l| get(&l.retransmit_timeouts),
            ),
            (
                "opha_bus_refused_total",
                "counter",
                "Refusals received from the receiver.",
                |l| get(&l.refused),
            ),
            (
                "opha_bus_grants_sent_total",
                "counter",
                "Fencing grants sent (primaries only).",
                |l| get(&l.grants_sent),
            ),
            (
                "opha_bus_fencing_timeouts_total",
                "counter",
                "Links torn down because the primary did not answer grants for bus.failover_after.",
                |l| get(&l.fence_timeouts),
            ),
            (
                "opha_bus_primary_acting",
                "gauge",
                "1 while the primary's last answer said it acts for this poller.",
                |l| u64::from(l.acting.load(Ordering::Relaxed)),
            ),
        ];
        for (name, kind, help, f) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for l in &self.links {
                let r = &l.receiver;
                let _ = writeln!(
                    out,
                    "{name}{{receiver=\"{}\",role=\"{}\"}} {}",
                    r.peer.as_str(),
                    opha_identity::identity::role_name(r.role.peer_role()),
                    f(l)
                );
            }
        }
        if let Some(c) = self.config.get() {
            c.render(out);
        }
        let (active, term) = self.active_primary();
        let _ = writeln!(
            out,
            "# HELP opha_bus_epoch This run's epoch.\n# TYPE opha_bus_epoch gauge\nopha_bus_epoch {}",
            self.epoch
        );
        let _ = writeln!(
            out,
            "# HELP opha_bus_fencing_term Fencing term of the active primary grant.\n# TYPE opha_bus_fencing_term gauge\nopha_bus_fencing_term {term}"
        );
        let _ = writeln!(
            out,
            "# HELP opha_bus_active_primary 1 for the primary that is active for this poller.\n# TYPE opha_bus_active_primary gauge"
        );
        for &i in &self.primaries {
            if let Some(l) = self.links.get(i) {
                let is = active.as_ref() == Some(&l.receiver.peer);
                let _ = writeln!(
                    out,
                    "opha_bus_active_primary{{receiver=\"{}\"}} {}",
                    l.receiver.peer.as_str(),
                    u8::from(is)
                );
            }
        }
    }
}

/// A per-link metric: name, type, help, value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&LinkStatus) -> u64,
);

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// The running bus.
pub struct Bus {
    pub status: Arc<BusStatus>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Bus {
    /// Waits for every link task (they end once `stop` is triggered).
    pub async fn join(self) {
        for t in self.tasks {
            if let Err(e) = t.await {
                log::error!("bus link ended abnormally: {e}");
            }
        }
    }
}

/// Starts the bus if receivers are configured (`Ok(None)` otherwise). Blocking (files, the
/// log's cursor file): call outside the async workers, before this run appends anything.
pub fn start(
    cfg: &PollerConfig,
    log: Arc<Log>,
    stop: Shutdown,
    rt: &tokio::runtime::Handle,
) -> anyhow::Result<Option<Bus>> {
    start_at(cfg, log, stop, rt, StartAt::Cursors)
}

/// [`start`], from where `at` says.
pub fn start_at(
    cfg: &PollerConfig,
    log: Arc<Log>,
    stop: Shutdown,
    rt: &tokio::runtime::Handle,
    at: StartAt,
) -> anyhow::Result<Option<Bus>> {
    if cfg.receivers.is_empty() {
        return Ok(None);
    }
    let (Some(cert), Some(key), Some(ca)) = (&cfg.bus.cert, &cfg.bus.key, &cfg.bus.ca) else {
        bail!("bus.cert, bus.key and bus.ca are required when a [[receiver]] is configured");
    };
    let own = TlsIdentity::load(cert, key).map_err(|e| anyhow!("bus.cert/bus.key: {e}"))?;
    let leaf = own
        .chain
        .first()
        .ok_or_else(|| anyhow!("bus.cert: no certificate"))?;
    let me = PeerIdentity::from_certificate(leaf)
        .map_err(|e| anyhow!("bus.cert: {}: {e}", cert.display()))?;
    let role = match at {
        StartAt::Cursors => PeerRole::Poller,
        StartAt::Head(_) => PeerRole::Mirror,
    };
    if me.peer_id != cfg.poller_id || me.role != role {
        bail!(
            "bus.cert: {} is for {} ({:?}), not for {:?} {}",
            cert.display(),
            me.peer_id,
            me.role,
            role,
            cfg.poller_id
        );
    }
    let trust = Trust::load_ca(ca).map_err(|e| anyhow!("bus.ca: {e}"))?;

    // The epoch first, durably: nothing may reach a receiver under an epoch a crash could
    // hand out again.
    let path = cfg.epoch_file();
    let mut table = EpochTable::load(&path).map_err(|e| anyhow!("bus.epoch_file: {e}"))?;
    let (oldest, head) = (log.oldest_seq(), log.durable_next_seq());
    let epoch = match at {
        StartAt::Cursors => table.bump(oldest, head),
        StartAt::Head(from) => {
            if from < oldest || from > head {
                bail!("bus: start position {from} outside the log ({oldest}..{head})");
            }
            table.restart_at(from)
        }
    };
    table
        .store(&path)
        .map_err(|e| anyhow!("bus.epoch_file: {e}"))?;

    // Cursors: one per configured receiver; those of receivers no longer configured go.
    let wanted: Vec<String> = cfg.receivers.iter().map(|r| cursor_name(&r.peer)).collect();
    for name in log.cursors().keys() {
        if name.starts_with(CURSOR_PREFIX) && !wanted.contains(name) {
            log::warn!("bus: removing the log cursor {name:?} of a receiver no longer configured");
            log.remove_cursor(name)
                .with_context(|| format!("log.dir: removing cursor {name:?}"))?;
        }
    }
    let mut links = Vec::new();
    let mut senders = Vec::new();
    let scfg = cfg.bus.sender_config();
    for (i, r) in cfg.receivers.iter().enumerate() {
        let name = &wanted[i];
        let mut cursor = log
            .add_cursor(name)
            .with_context(|| format!("receiver[{i}]: log cursor {name:?}"))?
            .min(head);
        if let StartAt::Head(from) = at {
            log.set_cursor(name, from)
                .with_context(|| format!("receiver[{i}]: moving log cursor {name:?} to {from}"))?;
            cursor = from;
        }
        let sender = opha_bus::sender::Sender::new(
            scfg.clone(),
            table.epochs.clone(),
            oldest,
            cursor,
            head,
            0,
        )
        .map_err(|e| anyhow!("receiver[{i}]: {e}"))?;
        let client = cfg
            .bus
            .transport
            .client_config(
                &trust,
                &own,
                ExpectPeer::receiver(r.peer.clone(), &[r.role.peer_role()]),
            )
            .map_err(|e| anyhow!("bus: {e}"))?;
        links.push(Arc::new(LinkStatus::new(r.clone(), cursor, head)));
        senders.push((sender, client, name.clone()));
    }
    let primaries = cfg.primary_order();
    let base = Instant::now();
    let status = Arc::new(BusStatus {
        poller: cfg.poller_id.clone(),
        epoch,
        links: links.clone(),
        fencing: Mutex::new(Fencing {
            arbiter: Arbiter::new(primaries.len(), table.term),
            table,
            path,
            // A grant of the previous run may still hold: its lease ends at the latest
            // `failover_after` after this start.
            views: vec![fence::View::new(base); links.len()],
        }),
        primaries,
        fence_changes: watch::channel(0).0,
        heartbeat: cfg.bus.heartbeat,
        failover_after: cfg.bus.failover_after,
        config: std::sync::OnceLock::new(),
    });
    log::info!(
        "bus: poller {} epoch {epoch}, {} receivers",
        cfg.poller_id,
        links.len()
    );
    let tasks = senders
        .into_iter()
        .enumerate()
        .map(|(i, (sender, client, cursor))| {
            let l = link::Link {
                index: i,
                cursor_name: cursor,
                client,
                log: log.clone(),
                sender,
                status: links[i].clone(),
                bus: status.clone(),
                stop: stop.clone(),
                reconnect_min: cfg.bus.reconnect_min,
                reconnect_max: cfg.bus.reconnect_max,
                base,
            };
            rt.spawn(l.run())
        })
        .collect();
    Ok(Some(Bus { status, tasks }))
}
