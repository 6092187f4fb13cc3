//! The live side of the Home view: a [`LiveHub`] the receiver publishes into, and the
//! Server-Sent Events stream (`GET /api/v1/live`) that carries it to pages.
//!
//! # Publishing (the receiver's side)
//! - [`LiveHub::publish_event`]: an event, once it is durable in the store.
//! - [`LiveHub::publish_service`]: a service check's new state, with the poller it came from.
//! - [`LiveHub::publish_heartbeat`] / [`LiveHub::publish_daemon`]: a peer's heartbeat and
//!   daemon health, as stored in the system scope.
//! - [`LiveHub::set_link`]: the receiver's live connection state of a peer ([`StreamState`]:
//!   streaming, catching up with its lag, disconnected). This is the only place that state
//!   exists: the summary reads it back through [`LiveHub::links`].
//!
//! Each call is cheap and never blocks: it merges into a small per-peer cache (one entry per
//! peer) and sends on bounded `tokio::sync::broadcast` channels.
//!
//! # Isolation at the source
//! There is one channel for operators and one per tenant. An event or service state goes to
//! its tenant's channel and the operators'; a peer update goes to the operators' in full, and
//! to the channel of each tenant the peer carries nodes for, cut to that tenant's node counts
//! (as `/api/v1/peers` shows it). A tenant token's subscription reads only its tenant's
//! channel, so another tenant's record never reaches its connection at all.
//!
//! # Bounds
//! Each channel holds at most [`LiveConfig::capacity`] messages. A subscriber that falls
//! further behind loses the oldest and is told so (`event: lagged`, `{"missed": n}`): the
//! page then reloads the snapshot (`/api/v1/summary`). Memory is bounded by the channels, not
//! by the slowest client. At most [`LiveConfig::max_subscribers`] streams are open at once
//! (more are answered 503).

use crate::token::PrincipalScope;
use opha_common::wire::{
    DaemonHealth, Event, PeerId, PeerRole, PeerStatus, PollerId, ReplayLogStatus, ServiceState,
    TenantId, TenantNodes,
};
use opha_store::event_kind_name;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// The daemons every peer card shows a light for, in card order.
pub const DAEMONS: [&str; 6] = [
    "opchartsd",
    "opeventsd",
    "opconfigd",
    "nmis9d",
    "omkd",
    "ophad",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveConfig {
    /// Messages each channel holds for a subscriber that has not read them yet.
    pub capacity: usize,
    /// Most live streams open at once.
    pub max_subscribers: usize,
    /// A comment line is sent this often on an idle stream, so a dead client is noticed
    /// and proxies keep the connection.
    pub keepalive: Duration,
    /// A lag change alone (same [`StreamState`] kind) is published at most this often per peer.
    pub lag_interval: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            capacity: 1024,
            max_subscribers: 256,
            keepalive: Duration::from_secs(15),
            lag_interval: Duration::from_secs(1),
        }
    }
}

/// A peer's stream to this primary, as the receiver knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StreamState {
    /// Connected and caught up.
    Streaming,
    /// Connected, replaying a backlog: `lag_records` behind its head.
    CatchingUp { lag_records: u64 },
    /// Not connected since `since_ms` (unix ms).
    Disconnected { since_ms: u64 },
    /// This peer is the one serving the page.
    Local,
    /// No live state known (e.g. the peer does not stream to this primary).
    Unknown,
}

impl StreamState {
    fn same_kind(&self, other: &StreamState) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// Connected (or local): counts the peer as up whatever its heartbeat's age.
    pub fn is_connected(&self) -> bool {
        matches!(
            self,
            StreamState::Streaming | StreamState::CatchingUp { .. } | StreamState::Local
        )
    }
}

/// One peer card: what the store's system scope says of the peer (heartbeat, daemon health)
/// merged with the receiver's live state. Fields are `None` when unknown; a live update
/// carries what it knows and the page merges it into the card.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerView {
    pub peer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<PeerRole>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the latest heartbeat was taken (the peer's clock), unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamState>,
    /// Node counts per tenant (only the token's tenant for a tenant token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<TenantNodes>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_total: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_log: Option<ReplayLogStatus>,
    /// Latest health of each daemon reported (a daemon never reported shows as missing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daemons: Option<Vec<DaemonHealth>>,
}

impl PeerView {
    /// A view with only the id: fill what is known.
    pub fn new(peer: &str) -> Self {
        Self {
            peer: peer.to_string(),
            role: None,
            region: None,
            version: None,
            heartbeat_ms: None,
            stream: None,
            nodes: None,
            nodes_total: None,
            replay_log: None,
            daemons: None,
        }
    }

    /// From the store: a heartbeat, the peer's daemon health and its live state.
    pub fn from_status(
        status: &PeerStatus,
        daemons: Vec<DaemonHealth>,
        stream: StreamState,
    ) -> Self {
        let mut v = Self::new(status.peer.as_str());
        v.set_status(status);
        v.daemons = Some(daemons);
        v.stream = Some(stream);
        v
    }

    fn set_status(&mut self, s: &PeerStatus) {
        self.role = Some(s.role);
        self.region = Some(s.region.clone());
        self.version = Some(s.version.clone());
        self.heartbeat_ms = Some(s.time_ms);
        self.nodes_total = Some(s.nodes.iter().map(|n| u64::from(n.nodes)).sum());
        self.nodes = Some(s.nodes.clone());
        self.replay_log = Some(s.replay_log);
    }

    /// The tenants this view says the peer carries nodes for (`None`: not known).
    pub fn tenants(&self) -> Option<Vec<TenantId>> {
        self.nodes
            .as_ref()
            .map(|n| n.iter().filter(|t| t.nodes > 0).map(|t| t.tenant).collect())
    }

    /// This view as tenant `t` may see it: only `t`'s node counts; `None` when the peer
    /// carries none of `t`'s nodes (or that is not known).
    pub fn for_tenant(&self, t: TenantId) -> Option<PeerView> {
        let nodes: Vec<TenantNodes> = self
            .nodes
            .as_ref()?
            .iter()
            .filter(|n| n.tenant == t && n.nodes > 0)
            .copied()
            .collect();
        if nodes.is_empty() {
            return None;
        }
        let mut v = self.clone();
        v.nodes_total = Some(nodes.iter().map(|n| u64::from(n.nodes)).sum());
        v.nodes = Some(nodes);
        Some(v)
    }
}

/// A message of the live stream (the SSE `event:` name is [`LiveMessage::name`]).
#[derive(Clone, Debug, PartialEq)]
pub enum LiveMessage {
    /// A stored event, in the shape of an `/api/v1/events` item (without `cursor`).
    Event { tenant: TenantId, body: Value },
    /// A service check's state with its source poller.
    Service { tenant: TenantId, body: Value },
    /// A peer card update (merge into the card).
    Peer(PeerView),
}

impl LiveMessage {
    pub fn name(&self) -> &'static str {
        match self {
            LiveMessage::Event { .. } => "event",
            LiveMessage::Service { .. } => "service",
            LiveMessage::Peer(_) => "peer",
        }
    }

    pub fn data(&self) -> Value {
        match self {
            LiveMessage::Event { body, .. } | LiveMessage::Service { body, .. } => body.clone(),
            LiveMessage::Peer(v) => serde_json::to_value(v).unwrap_or(Value::Null),
        }
    }
}

type Tx = broadcast::Sender<Arc<LiveMessage>>;

#[derive(Default)]
struct PeerEntry {
    status: Option<PeerStatus>,
    daemons: BTreeMap<String, DaemonHealth>,
    role: Option<PeerRole>,
    link: Option<StreamState>,
    link_published: Option<Instant>,
}

impl PeerEntry {
    fn view(&self, peer: &str) -> PeerView {
        let mut v = PeerView::new(peer);
        if let Some(s) = &self.status {
            v.set_status(s);
        }
        if v.role.is_none() {
            v.role = self.role;
        }
        if !self.daemons.is_empty() {
            v.daemons = Some(self.daemons.values().cloned().collect());
        }
        v.stream = self.link;
        v
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum LiveItem {
    Message(Arc<LiveMessage>),
    /// This many messages were dropped because the subscriber fell behind.
    Lagged(u64),
    /// The hub is gone.
    Closed,
}

/// One open live stream. Dropping it frees its slot.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<LiveMessage>>,
    hub: Arc<LiveHub>,
}

impl Subscription {
    pub async fn next(&mut self) -> LiveItem {
        match self.rx.recv().await {
            Ok(m) => LiveItem::Message(m),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.hub.lagged.fetch_add(1, Ordering::Relaxed);
                LiveItem::Lagged(n)
            }
            Err(broadcast::error::RecvError::Closed) => LiveItem::Closed,
        }
    }

    /// Without waiting: `None` when nothing is queued.
    pub fn try_next(&mut self) -> Option<LiveItem> {
        match self.rx.try_recv() {
            Ok(m) => Some(LiveItem::Message(m)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                self.hub.lagged.fetch_add(1, Ordering::Relaxed);
                Some(LiveItem::Lagged(n))
            }
            Err(broadcast::error::TryRecvError::Closed) => Some(LiveItem::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }

    /// Messages held for this subscriber: at most the hub's capacity, however far behind it
    /// is (the channel is a ring; older ones are gone and reported as lagged).
    pub fn queued(&self) -> usize {
        self.rx.len().min(self.hub.config.capacity)
    }

    /// Messages published since this subscriber's position, including those it lost.
    pub fn behind(&self) -> usize {
        self.rx.len()
    }

    pub fn hub(&self) -> &Arc<LiveHub> {
        &self.hub
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many live streams are open ({0}); try again later")]
    TooMany(usize),
}

/// The hub: see the module docs.
pub struct LiveHub {
    config: LiveConfig,
    operators: Tx,
    tenants: Mutex<HashMap<TenantId, Tx>>,
    peers: Mutex<BTreeMap<String, PeerEntry>>,
    subscribers: AtomicUsize,
    published: AtomicU64,
    lagged: AtomicU64,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub")
            .field("config", &self.config)
            .field("subscribers", &self.subscribers())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LiveHub {
    pub fn new(config: LiveConfig) -> Arc<LiveHub> {
        let capacity = config.capacity.max(1);
        Arc::new(LiveHub {
            operators: broadcast::channel(capacity).0,
            config: LiveConfig { capacity, ..config },
            tenants: Mutex::new(HashMap::new()),
            peers: Mutex::new(BTreeMap::new()),
            subscribers: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &LiveConfig {
        &self.config
    }

    /// Live streams open now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Messages published (each counted once, whatever the channels it went to).
    pub fn published_total(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Times a subscriber fell behind and lost messages.
    pub fn lagged_total(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }

    /// The hub's counters in the Prometheus text format, for the primary's `/metrics`:
    /// `opha_live_subscribers`, `opha_live_published_total`, `opha_live_lagged_total`.
    pub fn render(&self) -> String {
        format!(
            "# HELP opha_live_subscribers Home view live streams open.\n\
             # TYPE opha_live_subscribers gauge\n\
             opha_live_subscribers {}\n\
             # HELP opha_live_published_total Messages published to the live streams.\n\
             # TYPE opha_live_published_total counter\n\
             opha_live_published_total {}\n\
             # HELP opha_live_lagged_total Times a live stream fell behind and lost messages.\n\
             # TYPE opha_live_lagged_total counter\n\
             opha_live_lagged_total {}\n",
            self.subscribers(),
            self.published_total(),
            self.lagged_total()
        )
    }

    /// Opens a stream for a token of `scope`: operators read every tenant, a tenant token
    /// only its own tenant's channel.
    pub fn subscribe(
        self: &Arc<Self>,
        scope: PrincipalScope,
    ) -> Result<Subscription, SubscribeError> {
        let max = self.config.max_subscribers;
        if self
            .subscribers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(SubscribeError::TooMany(max));
        }
        let rx = match scope {
            PrincipalScope::Operator => self.operators.subscribe(),
            PrincipalScope::Tenant(t) => lock(&self.tenants)
                .entry(t)
                .or_insert_with(|| broadcast::channel(self.config.capacity).0)
                .subscribe(),
        };
        Ok(Subscription {
            rx,
            hub: self.clone(),
        })
    }

    /// Sends to the operators and to tenant `t` (when someone listens there).
    fn send(&self, tenant: Option<(TenantId, Arc<LiveMessage>)>, operators: Arc<LiveMessage>) {
        self.published.fetch_add(1, Ordering::Relaxed);
        // No receivers is not an error: nobody is watching.
        let _ = self.operators.send(operators);
        if let Some((t, m)) = tenant {
            self.send_tenant(t, m);
        }
    }

    fn send_tenant(&self, t: TenantId, m: Arc<LiveMessage>) {
        let mut tenants = lock(&self.tenants);
        if let Some(tx) = tenants.get(&t) {
            if tx.receiver_count() == 0 {
                // Nobody of this tenant watches any more: forget the channel (and its queue).
                tenants.remove(&t);
            } else {
                let _ = tx.send(m);
            }
        }
    }

    /// An event that is now durable in the store. Its tenant is the event's, which the
    /// receiver has authorized before storing it.
    pub fn publish_event(&self, poller: &PollerId, epoch: u64, seq: u64, event: &Event) {
        let body = json!({
            "tenant": event.tenant.0,
            "poller": poller.as_str(),
            "epoch": epoch,
            "seq": seq,
            "kind": event_kind_name(&event.kind),
            "event": serde_json::to_value(event).unwrap_or(Value::Null),
        });
        let m = Arc::new(LiveMessage::Event {
            tenant: event.tenant,
            body,
        });
        self.send(Some((event.tenant, m.clone())), m);
    }

    /// A service check's latest state, from `poller`.
    pub fn publish_service(&self, poller: &PollerId, state: &ServiceState) {
        let body = json!({
            "tenant": state.tenant.0,
            "poller": poller.as_str(),
            "state": serde_json::to_value(state).unwrap_or(Value::Null),
        });
        let m = Arc::new(LiveMessage::Service {
            tenant: state.tenant,
            body,
        });
        self.send(Some((state.tenant, m.clone())), m);
    }

    /// Publishes a peer view: in full to operators, cut per tenant to each tenant it carries.
    fn send_peer(&self, view: PeerView) {
        self.published.fetch_add(1, Ordering::Relaxed);
        if let Some(ts) = view.tenants() {
            for t in ts {
                if let Some(v) = view.for_tenant(t) {
                    self.send_tenant(t, Arc::new(LiveMessage::Peer(v)));
                }
            }
        }
        let _ = self.operators.send(Arc::new(LiveMessage::Peer(view)));
    }

    /// A peer's heartbeat (as stored in the system scope).
    pub fn publish_heartbeat(&self, status: &PeerStatus) {
        let view = {
            let mut peers = lock(&self.peers);
            let e = peers.entry(status.peer.as_str().to_string()).or_default();
            e.status = Some(status.clone());
            e.view(status.peer.as_str())
        };
        self.send_peer(view);
    }

    /// A daemon's health on `peer` (the sender of the record).
    pub fn publish_daemon(&self, peer: &PeerId, health: &DaemonHealth) {
        let view = {
            let mut peers = lock(&self.peers);
            let e = peers.entry(peer.as_str().to_string()).or_default();
            e.daemons.insert(health.daemon.clone(), health.clone());
            e.view(peer.as_str())
        };
        self.send_peer(view);
    }

    /// The receiver's live state of `peer`'s stream. Call it on every change (connect,
    /// disconnect, lag); a change of lag alone is published at most once per
    /// [`LiveConfig::lag_interval`], a change of kind at once.
    pub fn set_link(&self, peer: &PeerId, role: PeerRole, state: StreamState) {
        let view = {
            let mut peers = lock(&self.peers);
            let e = peers.entry(peer.as_str().to_string()).or_default();
            let old = e.link.replace(state);
            e.role = Some(role);
            let now = Instant::now();
            let publish = match old {
                None => true,
                Some(o) if !o.same_kind(&state) => true,
                Some(o) if o == state => false,
                Some(_) => e
                    .link_published
                    .is_none_or(|t| now.duration_since(t) >= self.config.lag_interval),
            };
            if !publish {
                return;
            }
            e.link_published = Some(now);
            e.view(peer.as_str())
        };
        self.send_peer(view);
    }

    /// A whole card, e.g. this primary's own (`stream: Local`). Merged like any update.
    pub fn publish_peer(&self, view: PeerView) {
        if let Some(s) = view.stream {
            let mut peers = lock(&self.peers);
            let e = peers.entry(view.peer.clone()).or_default();
            e.link = Some(s);
            e.role = view.role.or(e.role);
        }
        self.send_peer(view);
    }

    /// The live state of every peer the receiver has reported, by peer id.
    pub fn links(&self) -> BTreeMap<String, (Option<PeerRole>, StreamState)> {
        lock(&self.peers)
            .iter()
            .filter_map(|(p, e)| e.link.map(|l| (p.clone(), (e.role, l))))
            .collect()
    }

    /// The live state of one peer.
    pub fn link(&self, peer: &str) -> Option<StreamState> {
        lock(&self.peers).get(peer).and_then(|e| e.link)
    }
}

/// One SSE frame: `event: NAME` and the JSON on one `data:` line (JSON has no raw newlines).
pub fn sse_frame(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The SSE frame of a subscription item, `None` when the stream must end.
pub fn sse_item(item: &LiveItem) -> Option<String> {
    match item {
        LiveItem::Message(m) => Some(sse_frame(m.name(), &m.data())),
        LiveItem::Lagged(n) => Some(sse_frame(
            "lagged",
            &json!({"missed": n, "action": "reload the snapshot (/api/v1/summary)"}),
        )),
        LiveItem::Closed => None,
    }
}

/// The first frame of a stream: who is listening and the server's clock (the page ages
/// heartbeats with it).
pub fn sse_hello(scope: PrincipalScope) -> String {
    let scope = match scope {
        PrincipalScope::Operator => json!({"role": "operator"}),
        PrincipalScope::Tenant(t) => json!({"role": "tenant", "tenant": t.0}),
    };
    sse_frame(
        "hello",
        &json!({"scope": scope, "server_time_ms": now_ms()}),
    )
}
