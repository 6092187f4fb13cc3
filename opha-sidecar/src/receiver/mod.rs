//! The receiver roles (`primary`, `mirror`): the thin tokio/quinn driver around
//! [`opha_bus::receiver::Receiver`] and [`opha_store`].
//!
//! # Per connection
//! 1. TLS: [`opha_identity::Trust::accept`] verifies the client certificate (refusals counted
//!    by reason) and yields the peer's identity; only pollers may open record streams
//!    ([`opha_identity::Trust::authorize_stream`]); a poller missing from the `[[poller]]`
//!    registry is refused. Its tenants are the certificate's tenants ∩ the registry's.
//! 2. One connection per poller at a time: a new one closes the old one and waits until the
//!    old one's stores are settled, so the new handshake answers from settled state.
//! 3. The poller opens a bidirectional stream and sends `Hello`; the receiver's state is built
//!    from [`opha_store::Store::held_ranges`] over the poller's scopes (its tenants plus the
//!    system scope). Everything the receiver says (hello ack, acks, refusals) goes back on that
//!    stream. Batches come on that stream or on any unidirectional stream the poller opens
//!    (so a replaying backlog does not hold up live batches).
//! 4. Each `Store` output: payloads are decoded (postcard [`opha_common::wire::Record`], as the
//!    replay log holds them), each record's tenant is authorized, records are committed per
//!    scope with group commit ([`opha_store::Committer`]), strictly in ticket order, and only
//!    then [`opha_bus::receiver::Receiver::durable`] releases the ack.
//!
//! # Exactly once
//! The bus receiver's durable state is not a separate table: it is the store's dedupe ranges,
//! which each tenant file commits in the same transaction as its records. A ticket whose
//! records span several tenant files commits one transaction per file; a crash between them
//! leaves some files committed and no ack sent. On the next connection the handshake answers
//! the union of the files' ranges, so the poller resends only what is missing, and a record
//! is never in two files (its tenant picks the file), so nothing is stored twice
//! (`UNIQUE(poller, epoch, seq)` backs this up in each file).
//!
//! The store keeps only the held ranges per epoch, not where an epoch starts; the hello names
//! the starts, so the state handed to the bus receiver takes them from the hello (checks that
//! held records lie inside the announced epochs still apply).
//!
//! # Refused records
//! A record whose tenant the poller may not send for (or whose payload does not decode) is not
//! stored, is counted (`opha_receiver_rejects_total{reason}`) and is reported by an event; it
//! is still acknowledged as *consumed*, or the poller would resend it forever and stall its
//! stream. The report is an `External` event (source `opha-receiver`, name `tenant_refused`)
//! about the poller, stored under the receiver's own stream key (its peer id, an epoch taken
//! from the start time, a counter). The store's system scope takes only records without a
//! tenant and every `Event` carries one, so these reports go to reserved tenant 0's file
//! (`tenant-0.sqlite3`), which no poller may send for (the registry refuses tenant 0).

pub mod catchup;
pub mod config_api;
pub mod config_push;
pub mod conn;
pub mod fencing;
pub mod gap;
pub mod live;
pub mod metrics;
pub mod stream;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use opha_common::wire::{
    Event, EventId, EventKind, PeerId, PeerRole, Record, Severity, Subject, TenantId,
};
use opha_identity::{PeerIdentity, TlsIdentity, Trust};
use opha_store::{Committer, CommitterConfig, Scope, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::receiver::ReceiverFileConfig;
pub use metrics::Metrics;

/// The tenant whose file holds the receiver's own reports (see the module docs).
pub const REPORT_TENANT: TenantId = TenantId(0);

/// State shared by every connection of one receiver.
pub struct Shared {
    pub me: PeerId,
    pub role: PeerRole,
    pub trust: Trust,
    pub registry: BTreeMap<PeerId, BTreeSet<TenantId>>,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub bus: opha_bus::receiver::ReceiverConfig,
    /// Which pollers this primary is active for ([`fencing`]).
    pub fencing: fencing::Fencing,
    /// Gap fetches from `[[peer]]` receivers ([`gap`]).
    pub gaps: gap::GapFetcher,
    /// Desired poller configs and their push status ([`config_push`]).
    pub configs: config_push::ConfigPushes,
    /// The Home view's live hub, when `[api]` serves ([`live`] feeds it).
    pub live: Option<Arc<opha_api::live::LiveHub>>,
    /// The HTTP API, when `[api]` serves (its counters go into `/metrics`).
    pub api: Option<Arc<opha_api::Api>>,
    /// A mirror's promotion hooks, with `[mirror]` ([`crate::mirror::driver`]).
    pub mirror: Option<Arc<crate::mirror::driver::Hook>>,
    committers: Mutex<HashMap<Scope, Arc<Committer>>>,
    sessions: Mutex<HashMap<PeerId, Session>>,
    reports: Mutex<ReportStream>,
}

struct Session {
    conn: quinn::Connection,
    settled: Arc<tokio::sync::Mutex<()>>,
}

struct ReportStream {
    epoch: u64,
    next: u64,
}

impl Shared {
    /// The group committer of `scope`, opened on first use (blocking: call off the runtime).
    pub fn committer(&self, scope: Scope) -> Result<Arc<Committer>, StoreError> {
        let mut c = self.committers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(x) = c.get(&scope) {
            return Ok(x.clone());
        }
        let db = self.store.scope(scope)?;
        let committer = Arc::new(Committer::new(db, CommitterConfig::default())?);
        c.insert(scope, committer.clone());
        Ok(committer)
    }

    /// The scopes `tenants` may write: theirs and the system scope (heartbeats, health).
    pub fn scopes(tenants: &BTreeSet<TenantId>) -> Vec<Scope> {
        let mut s: Vec<Scope> = tenants.iter().map(|&t| Scope::Tenant(t)).collect();
        s.push(Scope::System);
        s
    }

    /// Stores a report of refused records (blocking). Failures are logged only: the report is
    /// about records that are not stored anyway.
    pub fn report_refused(&self, poller: &PeerId, details: String) {
        let (epoch, seq) = {
            let mut r = self.reports.lock().unwrap_or_else(|p| p.into_inner());
            let seq = r.next;
            r.next += 1;
            (r.epoch, seq)
        };
        let time_ms = now_ms();
        let id = (u128::from(epoch) << 64) | u128::from(seq);
        let event = Record::Event(Event {
            id: EventId::from_u128(id ^ hash_peer(&self.me)),
            time_ms,
            tenant: REPORT_TENANT,
            subject: Subject::Peer(poller.clone()),
            kind: EventKind::External {
                source: "opha-receiver".into(),
                name: "tenant_refused".into(),
            },
            severity: Severity::Major,
            details,
        });
        let result = self
            .committer(Scope::Tenant(REPORT_TENANT))
            .and_then(|c| c.commit(self.me.clone(), epoch, vec![(seq, event)]));
        if let Err(e) = result {
            log::warn!("could not store the report of refused records from {poller}: {e}");
        }
    }

    /// Registers a new connection of `poller`, closing an older one; returns the lock that is
    /// held while a connection has unsettled stores.
    fn register(&self, poller: &PeerId, conn: &quinn::Connection) -> Arc<tokio::sync::Mutex<()>> {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let settled = match s.get(poller) {
            Some(old) => {
                old.conn.close(
                    opha_identity::verify::CLOSE_REFUSED,
                    b"replaced by a newer connection",
                );
                old.settled.clone()
            }
            None => Arc::new(tokio::sync::Mutex::new(())),
        };
        s.insert(
            poller.clone(),
            Session {
                conn: conn.clone(),
                settled: settled.clone(),
            },
        );
        settled
    }

    fn unregister(&self, poller: &PeerId, conn: &quinn::Connection) {
        let mut s = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if s.get(poller)
            .is_some_and(|x| x.conn.stable_id() == conn.stable_id())
        {
            s.remove(poller);
        }
    }

    /// The Prometheus text.
    pub fn render_metrics(&self) -> String {
        let mut o = self.metrics.render(self.trust.counters());
        metrics::render_fencing(&mut o, &self.fencing.snapshot());
        self.configs.render(&mut o);
        if let Some(api) = &self.api {
            o.push_str(&api.metrics().render());
        }
        if let Some(hub) = &self.live {
            o.push_str(&hub.render());
        }
        if let Some(m) = &self.mirror {
            m.render(&mut o);
        }
        o
    }

    /// The term this primary acts with as the active primary of `poller`, if it does now (the
    /// config push stamps its actions with it; the poller accepts only the current term).
    /// Validates and stores `toml_text` as `poller`'s config (errors name the key); returns
    /// its version. Pushed when this primary acts for the poller ([`config_push`]).
    /// Blocking (fsync): call from a blocking thread.
    pub fn push_config(
        &self,
        poller: &PeerId,
        toml_text: &str,
    ) -> Result<u64, crate::config::push::ValidationError> {
        if !self.registry.contains_key(poller) {
            return Err(crate::config::push::ValidationError::one(
                "poller",
                format!("{poller} is not in the [[poller]] registry"),
            ));
        }
        self.configs.set(poller, toml_text)
    }

    /// The page's config view of `poller`: desired, running, pending, last failure.
    pub fn config_status(&self, poller: &PeerId) -> config_push::PollerConfigStatus {
        self.configs.status(poller)
    }

    pub fn acting_term(&self, poller: &PeerId) -> Option<u64> {
        self.fencing.acting_term(poller)
    }
}

fn hash_peer(p: &PeerId) -> u128 {
    // FNV-1a: only spreads report ids of different receivers apart.
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in p.as_str().bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

/// Resolves once `stop` is true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it before anything else awaits.
    let _ = stop.wait_for(|s| *s).await;
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A running receiver.
pub struct RunningReceiver {
    /// The bound QUIC address.
    pub addr: SocketAddr,
    /// The bound metrics address, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// The bound HTTP API (and Home view) address, if `[api]` serves.
    pub api_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningReceiver {
    /// Stops accepting, closes connections, settles their stores and closes the store.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.endpoint.close(0u32.into(), b"shutting down");
        let _ = self.task.await;
        self.endpoint.wait_idle().await;
    }
}

/// Loads the receiver's own certificate and checks it matches `peer_id` and `role`.
fn own_identity(cfg: &ReceiverFileConfig) -> anyhow::Result<TlsIdentity> {
    let own = TlsIdentity::load(&cfg.tls.certificate, &cfg.tls.key)
        .with_context(|| "tls.certificate / tls.key".to_string())?;
    let leaf = own
        .chain
        .first()
        .context("tls.certificate: no certificate")?;
    let id = PeerIdentity::from_certificate(leaf).context("tls.certificate")?;
    if id.peer_id != cfg.peer_id {
        anyhow::bail!(
            "peer_id: {} but tls.certificate ({}) is for {}",
            cfg.peer_id,
            cfg.tls.certificate.display(),
            id.peer_id
        );
    }
    if id.role != cfg.role.peer_role() {
        anyhow::bail!(
            "role: {} but tls.certificate is for a {:?}",
            cfg.role.name(),
            id.role
        );
    }
    Ok(own)
}

/// Binds and starts a receiver on the current tokio runtime.
pub async fn start(cfg: &ReceiverFileConfig) -> anyhow::Result<RunningReceiver> {
    let own = own_identity(cfg)?;
    let trust = Trust::load_ca(&cfg.tls.ca)
        .context("tls.ca")?
        .with_deny_list(cfg.deny_list());
    let server = cfg
        .transport
        .server_config(&trust, &own)
        .context("transport")?;
    let dir = cfg.store.dir.clone();
    let store_cfg = cfg.store_config();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, store_cfg))
        .await?
        .with_context(|| format!("store.dir {}", cfg.store.dir.display()))?;
    let (me, dir) = (cfg.peer_id.clone(), cfg.store.dir.clone());
    let fencing = tokio::task::spawn_blocking(move || fencing::Fencing::open(me, &dir))
        .await?
        .context("store.dir: fencing terms")?;
    let dir = cfg.store.dir.clone();
    let configs = tokio::task::spawn_blocking(move || config_push::ConfigPushes::open(&dir))
        .await?
        .context("store.dir: poller configs")?;
    let endpoint = quinn::Endpoint::server(server, cfg.listen)
        .with_context(|| format!("listen {}", cfg.listen))?;
    let addr = endpoint.local_addr()?;
    let gaps = gap::GapFetcher::new(cfg, &trust, &own).context("peer")?;
    let store = Arc::new(store);
    // The API reads through the same Store (the same per-file handles: their read-only
    // connections, WAL readers beside the committers' writer); it never opens a writer.
    let (api, live, api_listener) = match cfg.api.as_ref().and_then(|a| Some((a, a.listen?))) {
        Some((a, listen)) => {
            let hub = opha_api::live::LiveHub::new(opha_api::live::LiveConfig::default());
            let api = opha_api::Api::new(store.clone(), a.api_config())?.with_live(hub.clone());
            let l = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("api.listen {listen}"))?;
            (Some(Arc::new(api)), Some(hub), Some(l))
        }
        None => (None, None, None),
    };
    let mirror = crate::mirror::driver::Hook::from_config(cfg)?;
    let shared = Arc::new(Shared {
        gaps,
        live,
        api,
        mirror,
        me: cfg.peer_id.clone(),
        role: cfg.role.peer_role(),
        trust,
        registry: cfg.registry(),
        store,
        metrics: Metrics::default(),
        bus: opha_bus::receiver::ReceiverConfig::default(),
        fencing,
        configs,
        committers: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        reports: Mutex::new(ReportStream {
            epoch: now_ms(),
            next: 0,
        }),
    });
    if let Some(api) = &shared.api {
        // The poller config endpoints serve from the state the API is part of.
        api.set_config_ops(Arc::new(config_api::ReceiverConfigOps::new(&shared)));
    }
    let (stop, stop_rx) = watch::channel(false);
    let metrics_addr = match cfg.metrics.listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("metrics.listen {a}"))?;
            let bound = l.local_addr()?;
            let s = shared.clone();
            let render: Arc<dyn Fn() -> String + Send + Sync> =
                Arc::new(move || s.render_metrics());
            tokio::spawn(metrics::serve(l, render, stop_rx.clone()));
            Some(bound)
        }
        None => None,
    };
    let api_addr = match (api_listener, &shared.api, &shared.live) {
        (Some(l), Some(api), Some(hub)) => {
            let bound = l.local_addr()?;
            let mut stop = stop_rx.clone();
            tokio::spawn(opha_api::server::serve(api.clone(), l, async move {
                stopped(&mut stop).await
            }));
            tokio::spawn(live::own_card(
                hub.clone(),
                shared.me.clone(),
                shared.role,
                stop_rx.clone(),
            ));
            log::info!("HTTP API and Home view on http://{bound}/");
            Some(bound)
        }
        _ => None,
    };
    tokio::spawn(retention(
        shared.clone(),
        cfg.store.retention_every,
        stop_rx.clone(),
    ));
    let task = tokio::spawn(accept_loop(endpoint.clone(), shared.clone(), stop_rx));
    log::info!(
        "{} {} listening on {addr} (QUIC), store {}",
        cfg.role.name(),
        cfg.peer_id,
        cfg.store.dir.display()
    );
    Ok(RunningReceiver {
        addr,
        metrics_addr,
        api_addr,
        shared,
        endpoint,
        stop,
        task,
    })
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            inc = endpoint.accept() => match inc {
                Some(inc) => {
                    conns.spawn(conn::serve(shared.clone(), inc));
                }
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Connections end when the endpoint closes; each settles its stores first.
    while conns.join_next().await.is_some() {}
    shared.gaps.stop().await;
    // Committers join their threads on drop: not on an async worker.
    let committers: Vec<_> = {
        let mut c = shared.committers.lock().unwrap_or_else(|p| p.into_inner());
        c.drain().map(|(_, v)| v).collect()
    };
    let _ = tokio::task::spawn_blocking(move || drop(committers)).await;
}

async fn retention(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(every) => {}
        }
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let mut scopes = vec![Scope::System];
            match s.store.tenants_on_disk() {
                Ok(t) => scopes.extend(t.into_iter().map(Scope::Tenant)),
                Err(e) => log::warn!("retention: {e}"),
            }
            for scope in scopes {
                match s.store.scope(scope).and_then(|db| db.apply_retention()) {
                    Ok(r) if r.deleted_by_age + r.deleted_by_size > 0 => log::info!(
                        "retention {scope}: deleted {} by age, {} by size",
                        r.deleted_by_age,
                        r.deleted_by_size
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("retention {scope}: {e}"),
                }
            }
        })
        .await;
    }
}

/// `opha-sidecar primary|mirror --config FILE [--check]`: runs until SIGINT/SIGTERM.
pub fn run(
    path: &Path,
    expect: crate::config::receiver::ReceiverRole,
    check: bool,
) -> anyhow::Result<()> {
    let cfg = ReceiverFileConfig::load(path)?;
    if cfg.role != expect {
        anyhow::bail!(
            "{}: role: {} but this command runs a {}",
            path.display(),
            cfg.role.name(),
            expect.name()
        );
    }
    if check {
        own_identity(&cfg)?;
        print!("{}", cfg.to_toml()?);
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let running = start(&cfg).await?;
        // A mirror polls with its own pipeline (docs/mirror.md).
        let driver = match (&running.shared.mirror, cfg.mirror.as_ref()) {
            (Some(hook), Some(m)) => match m.poller_config.clone() {
                Some(path) => {
                    let (hook, rt) = (hook.clone(), tokio::runtime::Handle::current());
                    Some(
                        tokio::task::spawn_blocking(move || {
                            crate::mirror::driver::MirrorDriver::start_from_file(hook, &path, &rt)
                        })
                        .await??,
                    )
                }
                None => {
                    log::warn!("mirror: no mirror.poller_config: this mirror only receives");
                    None
                }
            },
            _ => None,
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        log::info!("stopping");
        if let Some(d) = driver {
            tokio::task::spawn_blocking(move || d.shutdown()).await?;
        }
        running.shutdown().await;
        Ok(())
    })
}
