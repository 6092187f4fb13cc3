//! The aggregation core: kernel counters in, per-node metrics and state-change events out.
//!
//! A pure, deterministic state machine in the style of quinn-proto: no clocks, no maps, no
//! I/O. A driver reads the kernel (summed across CPUs), sweeps the in-flight requests older
//! than the poll timeout, and hands both to [`Aggregator::poll`] with the monotonic time the
//! snapshot was taken (`bpf_ktime_get_ns` clock) and the wall time for records. Equal inputs
//! from equal states give equal outputs, event ids included.
//!
//! # Metrics
//!
//! Every poll adds the counter deltas since the previous snapshot to the open interval. When
//! a snapshot's wall time reaches the end of the open interval (intervals are aligned to
//! multiples of [`AggConfig::interval_ms`]), one [`NodeMetrics`] per node with any activity is
//! emitted, covering the snapshots up to and including that one; the next interval starts from
//! it. Consecutive records therefore partition the counters exactly. When polls were missed
//! (the sidecar was down), the record that closes covers the whole gap and says so in
//! `interval_ms` (a multiple of the interval). The first interval after a cold start is
//! partial.
//!
//! - counts (requests, responses, errors, bytes) are counter deltas; timeouts are the swept
//!   in-flight entries reported during the interval;
//! - `loss_ppm` = (requests - responses) / requests of the interval, clamped to 0..=1 (late
//!   answers to the previous interval's requests can make responses exceed requests);
//! - RTT: see [`rtt`] (geometric bucket midpoints into an hdrhistogram, exact avg).
//!
//! **Counter resets.** A counter that only grows and is lower than in the previous snapshot
//! means the kernel's entry was recreated (maps reloaded without pins, the node evicted from
//! the map): the new value is then taken as the delta from zero, for every class of that node.
//! Counts between the last snapshot and the reset are lost; nothing is counted twice.
//!
//! **New nodes.** A node absent from the previous snapshot was created in the kernel since
//! then, so its whole counters are the delta. Only the very first snapshot of a core without
//! a checkpoint is a baseline: its counters hold history of unknown age and are not counted.
//!
//! # Restarts
//!
//! [`AggState`] (serde) holds the last snapshot's counters, the open interval's sums and every
//! state machine. A driver persists it and rebuilds the core with [`Aggregator::restore`];
//! with pinned maps the kernel kept counting, and the first poll after the restart takes the
//! delta from the persisted snapshot: no interval is counted twice, none is skipped. For
//! exactly-once, persist the state together with the poll's [`Output`] *before* appending the
//! output to the replay log, and on start append whatever part of that output the log lacks
//! (metrics are keyed by node and interval start, events by their deterministic id). Timeouts
//! swept after the last checkpoint are lost with a crash (the driver deleted them from the
//! kernel), so a driver should checkpoint every poll. If the monotonic clock goes backwards
//! (reboot), every time mark is dropped and the counters, recreated, count from zero.
//!
//! # State machine (per node)
//!
//! Per protocol class (ICMP, SNMP, TCP) and per TCP service port, a [`health::Hysteresis`]:
//!
//! - a *failed poll* is a request that got no response before the timeout: a swept in-flight
//!   entry, or a request known only from counters that stayed unanswered for the timeout (so
//!   an in-flight LRU eviction cannot hide an outage); each is counted once (the larger of the
//!   two estimates). Only *fresh* failures count: requests sent after the class's last
//!   response. ICMP unreachables leave their in-flight entry to time out, so they fail too.
//! - a *success* is a response of the class (SNMP error-status and TCP RST included: the host
//!   answered). Fresh failures were sent after every response of their tick, so a tick applies
//!   successes first, then failures.
//! - down after N consecutive failed polls ([`AggConfig::down_after`], default 3), up after M
//!   consecutive successes with no failure in between ([`AggConfig::up_after`], default 2).
//!   Fewer than N failures between successes change nothing.
//!
//! The node follows its *primary* class: ICMP if it is polled, else SNMP, else TCP.
//!
//! - **NodeDown** when the primary class is down and no other class has answered (is up and
//!   got a response) since the primary's failures began: "no poll class answers". Once.
//! - **NodeUp** when the primary class is up again, or another class answers. Once. The other
//!   classes and the ports then re-learn from that moment on, so their requests lost during the
//!   outage (still being swept) do not raise alarms.
//! - **SnmpDown** (degraded) when SNMP is down while the node is up and SNMP is not its
//!   primary class; **SnmpUp** when SNMP is up again. No SnmpDown while the node is down.
//! - **ServicePortDown/Up** per (node, port) while the node is not down. Timeouts carry the
//!   port (the in-flight key holds it), but the kernel counts SYN-ACKs and RSTs per node. With
//!   one check port ([`AggConfig::tcp_ports`]) they are that port's: exact. With several, a
//!   port is down after N fresh timeouts of its own, and a tick in which the node's TCP checks
//!   got SYN-ACKs and the port had no timeout counts as one (weak) success for it; M such
//!   ticks in a row clear its failures. A dead port polled rarely next to a live one polled
//!   often can then go unnoticed; RSTs on such nodes show in metrics only.
//! - **Rtt/LossAboveThreshold** and **...BelowThreshold** per class, once per interval from
//!   the interval's average RTT and loss, with a band ([`Thresholds`]); not evaluated while
//!   the node or the class is down (the down event says more).
//!
//! Each kind is an alarm flag in the state: a "down" is emitted only when the flag is clear,
//! an "up" only when it is set, so every real transition gives exactly one event.
//! [`Aggregator::tenant_counts`] counts nodes up, degraded, down and unknown per tenant.

mod bench;
pub mod config;
pub mod health;
pub mod ids;
pub mod rtt;
pub mod sim;
pub mod state;

pub use bench::{bench_aggregate, bench_aggregate_2000, bench_aggregate_spread};
pub use config::{AggConfig, Thresholds};
pub use health::{Health, Hysteresis, Transition};
pub use ids::{DeterministicIds, EventIdGen, IdInput, deterministic_id};
pub use state::{AggState, NodeHealth, NodeId, NodeInfo, NodeState, STATE_FORMAT};

use health::{Credit, Tick};
use opha_common::inflight::{InflightKey, InflightKind};
use opha_common::node::{NodeCounters, NodeKey, PROTO_CLASSES, ProtoClass};
use opha_common::wire::{
    ClassMetrics, Event, EventKind, NodeMetrics, NodeRef, PPM, PollClass, Record, RttStats,
    Severity, Subject, TenantId, TenantNodes,
};
use rtt::Percentiles;
use serde::{Deserialize, Serialize};
use state::{ClassSnap, Scratch, TickClass};
use std::collections::{BTreeMap, HashMap};

/// One poll's input.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// Monotonic time of the snapshot, ns (the kernel's clock).
    pub mono_ns: u64,
    /// Wall time of the snapshot, unix ms (record timestamps, interval boundaries).
    pub wall_ms: u64,
    /// Every node of the kernel's map, counters summed across CPUs.
    pub nodes: &'a [(NodeKey, NodeCounters)],
    /// In-flight entries older than the poll timeout, swept (and deleted) by the driver since
    /// the last poll: (key, sent_ns).
    pub timeouts: &'a [(InflightKey, u64)],
}

/// What a poll produced, in a deterministic order (metrics by node; events by node, state
/// changes before threshold events).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub metrics: Vec<NodeMetrics>,
    pub events: Vec<Event>,
}

impl Output {
    pub fn clear(&mut self) {
        self.metrics.clear();
        self.events.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.events.is_empty()
    }

    /// Events first (they matter more if the log is near its budget), then metrics.
    pub fn into_records(self) -> Vec<Record> {
        let mut v = Vec::with_capacity(self.events.len() + self.metrics.len());
        v.extend(self.events.into_iter().map(Record::Event));
        v.extend(self.metrics.into_iter().map(Record::NodeMetrics));
        v
    }
}

/// Node names and tenants from the inventory.
pub trait Inventory: Send + Sync {
    fn lookup(&self, key: &NodeKey) -> Option<NodeInfo>;
}

impl<F: Fn(&NodeKey) -> Option<NodeInfo> + Send + Sync> Inventory for F {
    fn lookup(&self, key: &NodeKey) -> Option<NodeInfo> {
        self(key)
    }
}

impl Inventory for HashMap<NodeKey, NodeInfo> {
    fn lookup(&self, key: &NodeKey) -> Option<NodeInfo> {
        self.get(key).cloned()
    }
}

impl Inventory for BTreeMap<NodeKey, NodeInfo> {
    fn lookup(&self, key: &NodeKey) -> Option<NodeInfo> {
        self.get(key).cloned()
    }
}

/// Node counts of one tenant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantCount {
    pub tenant: TenantId,
    pub nodes: u32,
    pub up: u32,
    pub degraded: u32,
    pub down: u32,
    pub unknown: u32,
}

impl TenantCount {
    /// The `PeerStatus` form (node count only).
    pub fn to_wire(&self) -> TenantNodes {
        TenantNodes {
            tenant: self.tenant,
            nodes: self.nodes,
        }
    }
}

/// Why a checkpoint cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RestoreError {
    #[error("aggregation state has format {found}, this build reads format {expected}")]
    Format { found: u32, expected: u32 },
}

/// A swept in-flight entry, keyed for grouping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SweptRec {
    id: NodeId,
    class: u8,
    port: u16,
    sent_ns: u64,
}

/// The aggregation core.
pub struct Aggregator {
    config: AggConfig,
    state: AggState,
    inventory: Option<Box<dyn Inventory>>,
    ids: Box<dyn EventIdGen>,
    pct: Percentiles,
    swept: Vec<SweptRec>,
    sent: Vec<u64>,
    /// Scratch: snapshot indices in node order, and those of nodes not in the state yet.
    order: Vec<usize>,
    fresh: Vec<usize>,
}

impl std::fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregator")
            .field("config", &self.config)
            .field("nodes", &self.state.nodes.len())
            .finish_non_exhaustive()
    }
}

impl Aggregator {
    /// A core without history: its first poll is a baseline.
    pub fn new(config: AggConfig) -> Self {
        Self {
            config,
            state: AggState::default(),
            inventory: None,
            ids: Box::new(DeterministicIds),
            pct: Percentiles::new(),
            swept: Vec::new(),
            sent: Vec::new(),
            order: Vec::new(),
            fresh: Vec::new(),
        }
    }

    /// A core continuing from a checkpoint.
    pub fn restore(config: AggConfig, state: AggState) -> Result<Self, RestoreError> {
        if state.format != state::STATE_FORMAT {
            return Err(RestoreError::Format {
                found: state.format,
                expected: state::STATE_FORMAT,
            });
        }
        let mut a = Self::new(config);
        a.state = state;
        Ok(a)
    }

    /// Names and tenants from `inv`; nodes are looked up again.
    pub fn set_inventory(&mut self, inv: impl Inventory + 'static) {
        self.inventory = Some(Box::new(inv));
        for n in self.state.nodes.values_mut() {
            n.info = None;
        }
    }

    pub fn with_inventory(mut self, inv: impl Inventory + 'static) -> Self {
        self.set_inventory(inv);
        self
    }

    /// Event ids from `ids` instead of [`DeterministicIds`].
    pub fn with_event_ids(mut self, ids: impl EventIdGen + 'static) -> Self {
        self.ids = Box::new(ids);
        self
    }

    pub fn config(&self) -> &AggConfig {
        &self.config
    }

    /// New settings from the next poll on (config push). The open interval closes when the
    /// new length has passed since its start; thresholds apply from the next judgement.
    pub fn set_config(&mut self, config: AggConfig) {
        self.config = config;
    }

    /// The state to persist (see the module docs).
    pub fn state(&self) -> &AggState {
        &self.state
    }

    pub fn into_state(self) -> AggState {
        self.state
    }

    /// The state, to seed in place (a mirror taking over, [`crate::mirror::NodeStates::seed`]):
    /// the inventory and event ids stay.
    pub fn state_mut(&mut self) -> &mut AggState {
        &mut self.state
    }

    pub fn node(&self, key: &NodeKey) -> Option<&NodeState> {
        self.state.nodes.get(&NodeId::from(key))
    }

    /// Node counts per tenant, ordered by tenant.
    pub fn tenant_counts(&self) -> Vec<TenantCount> {
        let mut m: BTreeMap<TenantId, TenantCount> = BTreeMap::new();
        for n in self.state.nodes.values() {
            let tenant = tenant_of(n, self.inventory.as_deref());
            let c = m.entry(tenant).or_insert_with(|| TenantCount {
                tenant,
                ..TenantCount::default()
            });
            c.nodes += 1;
            match n.health {
                NodeHealth::Up => c.up += 1,
                NodeHealth::Degraded => c.degraded += 1,
                NodeHealth::Down => c.down += 1,
                NodeHealth::Unknown => c.unknown += 1,
            }
        }
        m.into_values().collect()
    }

    /// Takes one snapshot (and the timeouts swept with it); appends what it produced to `out`.
    pub fn poll(&mut self, input: &Input<'_>, out: &mut Output) {
        let now = input.mono_ns;
        let baseline = self.state.last_mono_ns.is_none();
        let prev_ns = match self.state.last_mono_ns {
            Some(last) if now < last => {
                for n in self.state.nodes.values_mut() {
                    n.last_seen_ns = now;
                    for c in &mut n.classes {
                        c.health.clock_restarted();
                        c.last_response_ns = 0;
                    }
                    for p in n.ports.values_mut() {
                        p.health.clock_restarted();
                    }
                }
                now
            }
            Some(last) => last,
            None => now,
        };

        // Drivers read a hash map: sort the snapshot (cheap, on indices) and walk it next to
        // the ordered state, instead of 2,000 tree lookups into a few MB of state.
        let id_of = |i: usize| NodeId::from(&input.nodes[i].0);
        self.order.clear();
        self.order.extend(0..input.nodes.len());
        if !self.order.is_sorted_by_key(|&i| id_of(i)) {
            self.order.sort_unstable_by_key(|&i| id_of(i));
        }
        self.fresh.clear();
        let mut states = self.state.nodes.iter_mut().peekable();
        for &i in &self.order {
            let id = id_of(i);
            while states.next_if(|(k, _)| **k < id).is_some() {}
            match states.peek_mut() {
                Some((k, node)) if **k == id => absorb(node, &input.nodes[i].1, baseline, now),
                _ => self.fresh.push(i),
            }
        }
        for &i in &self.fresh {
            let id = id_of(i);
            let node = self
                .state
                .nodes
                .entry(id)
                .or_insert_with(|| NodeState::new(id));
            absorb(node, &input.nodes[i].1, baseline, now);
        }

        self.swept.clear();
        for (key, sent_ns) in input.timeouts {
            let class = match key.kind {
                k if k == InflightKind::IcmpEcho as u8 => ProtoClass::IcmpEcho,
                k if k == InflightKind::SnmpRequestId as u8
                    || k == InflightKind::SnmpMsgId as u8 =>
                {
                    ProtoClass::Snmp
                }
                k if k == InflightKind::TcpSyn as u8 => ProtoClass::TcpCheck,
                // A kind this build does not know: not a poll it can judge.
                _ => continue,
            };
            let port = if class == ProtoClass::TcpCheck {
                key.port
            } else {
                0
            };
            self.swept.push(SweptRec {
                id: NodeId::from(&key.node),
                class: class as u8,
                port,
                sent_ns: *sent_ns,
            });
        }
        self.swept.sort_unstable();
        for s in &self.swept {
            let node = self.state.nodes.entry(s.id).or_insert_with(|| {
                let mut n = NodeState::new(s.id);
                n.last_seen_ns = now;
                n
            });
            node.scratch.dirty = true;
            let c = &mut node.classes[usize::from(s.class)];
            c.acc.timeouts += 1;
            c.tracked = true;
        }

        let mut ctx = Ctx {
            config: &self.config,
            inventory: self.inventory.as_deref(),
            ids: self.ids.as_mut(),
            out,
            wall_ms: input.wall_ms,
            now,
            prev_ns,
            sent: &mut self.sent,
        };
        let mut i = 0;
        for node in self.state.nodes.values_mut() {
            let start = i;
            while i < self.swept.len() && self.swept[i].id == node.id {
                i += 1;
            }
            evaluate(node, &self.swept[start..i], &mut ctx);
        }

        let iv = u64::from(self.config.interval_ms.max(1));
        let aligned = input.wall_ms - input.wall_ms % iv;
        let mut closed = false;
        match self.state.open_interval_ms {
            None => self.state.open_interval_ms = Some(aligned),
            Some(start) if input.wall_ms >= start.saturating_add(iv) => {
                closed = true;
                let len = u32::try_from(aligned - start).unwrap_or(u32::MAX);
                for node in self.state.nodes.values_mut() {
                    close_interval(node, start, len, &mut ctx, &mut self.pct);
                }
                self.state.open_interval_ms = Some(aligned);
                self.state.intervals_closed += 1;
            }
            Some(_) => {}
        }

        // Only when some node is missing from the snapshot (or at a close): a pass over every
        // node costs as much as an idle tick.
        if self.state.nodes.len() > input.nodes.len() || closed {
            let forget_ns = self.config.forget_after_ms.saturating_mul(1_000_000);
            self.state.nodes.retain(|_, n| {
                now.saturating_sub(n.last_seen_ns) < forget_ns
                    || n.classes.iter().any(|c| !c.acc.is_empty())
            });
        }
        self.state.last_mono_ns = Some(now);
        self.state.last_wall_ms = input.wall_ms;
    }
}

/// Adds one node's snapshot to its state: deltas into the interval sums, evidence for the tick.
fn absorb(node: &mut NodeState, cur: &NodeCounters, baseline: bool, now: u64) {
    node.last_seen_ns = now;
    if cur.tenant != 0 {
        node.tenant = cur.tenant;
    }
    // Most nodes are idle in most ticks (a 1 s sweep, polls every minute or five).
    if let Some(p) = &node.prev
        && p.iter().zip(cur.classes.iter()).all(|(p, c)| p.same_as(c))
    {
        return;
    }
    node.scratch.absorbed = true;
    node.scratch.dirty = true;
    let cur_snap: [ClassSnap; PROTO_CLASSES] =
        std::array::from_fn(|i| ClassSnap::from(&cur.classes[i]));
    let zero = [ClassSnap::default(); PROTO_CLASSES];
    let prev = match &node.prev {
        Some(p) => {
            let reset = p
                .iter()
                .zip(cur.classes.iter())
                .any(|(p, c)| p.went_backwards(c));
            if reset { zero } else { *p }
        }
        // Baseline: history of unknown age, not counted. Otherwise created since the last
        // snapshot: all of it is new.
        None if baseline => cur_snap,
        None => zero,
    };
    for (i, st) in node.classes.iter_mut().enumerate() {
        let c = &cur.classes[i];
        let p = &prev[i];
        let d_req = c.requests.saturating_sub(p.requests);
        let d_resp = c.responses.saturating_sub(p.responses);
        let d_err = c.errors.saturating_sub(p.errors);
        let d_cnt = c.rtt_count.saturating_sub(p.rtt_count);
        let a = &mut st.acc;
        a.requests += d_req;
        a.responses += d_resp;
        a.errors += d_err;
        a.bytes_out += c.bytes_out.saturating_sub(p.bytes_out);
        a.bytes_in += c.bytes_in.saturating_sub(p.bytes_in);
        if d_cnt > 0 {
            for (acc, (x, y)) in a
                .rtt_hist
                .iter_mut()
                .zip(c.rtt_hist.iter().zip(p.rtt_hist.iter()))
            {
                // u32 per CPU, summed with wrapping: one wrap between snapshots is undone here.
                *acc += u64::from(x.wrapping_sub(*y));
            }
            a.rtt_count += d_cnt;
            a.rtt_sum_ns += c.rtt_sum_ns.saturating_sub(p.rtt_sum_ns);
            // A tick that moved the kernel's all-time extremes saw them: exact samples (see
            // `rtt`; after a reset `p` is zero, so the first tick always counts).
            if c.rtt_max_ns > p.rtt_max_ns {
                a.rtt_max_ns = a.rtt_max_ns.max(c.rtt_max_ns);
            }
            if c.rtt_min_ns != 0
                && (p.rtt_min_ns == 0 || c.rtt_min_ns < p.rtt_min_ns)
                && (a.rtt_min_ns == 0 || c.rtt_min_ns < a.rtt_min_ns)
            {
                a.rtt_min_ns = c.rtt_min_ns;
            }
        }
        st.last_response_ns = st.last_response_ns.max(c.last_response_ns);
        node.scratch.tick[i] = TickClass {
            responses: d_resp,
            errors: d_err,
            requests_before: st.requests_total,
        };
        st.requests_total += d_req;
        if d_req > 0 || (baseline && c.requests > 0) {
            st.tracked = true;
        }
    }
    node.prev = Some(cur_snap);
}

/// What the per-node evaluation needs besides the node.
struct Ctx<'a> {
    config: &'a AggConfig,
    inventory: Option<&'a dyn Inventory>,
    ids: &'a mut dyn EventIdGen,
    out: &'a mut Output,
    wall_ms: u64,
    now: u64,
    prev_ns: u64,
    sent: &'a mut Vec<u64>,
}

fn tenant_of(node: &NodeState, inv: Option<&dyn Inventory>) -> TenantId {
    let cached = node.info.as_ref().and_then(|i| i.tenant);
    cached
        .or_else(|| {
            if node.info.is_some() {
                None
            } else {
                inv.and_then(|inv| inv.lookup(&node.id.key()))
                    .and_then(|i| i.tenant)
            }
        })
        .unwrap_or(TenantId(node.tenant))
}

impl Ctx<'_> {
    fn node_ref(&self, node: &mut NodeState) -> (NodeRef, TenantId) {
        if node.info.is_none() {
            node.info = Some(
                self.inventory
                    .and_then(|inv| inv.lookup(&node.id.key()))
                    .unwrap_or_default(),
            );
        }
        let info = node.info.as_ref();
        let name = info.and_then(|i| i.name.clone());
        let tenant = info.and_then(|i| i.tenant).unwrap_or(TenantId(node.tenant));
        (NodeRef::from_key(&node.id.key(), name), tenant)
    }

    fn emit(&mut self, node: &mut NodeState, kind: EventKind, severity: Severity, details: String) {
        let key = node.id.key();
        let id = self.ids.id(&IdInput {
            poller: &self.config.poller,
            node: &key,
            kind: &kind,
            seq: node.event_seq,
        });
        node.event_seq += 1;
        let (node_ref, tenant) = self.node_ref(node);
        self.out.events.push(Event {
            id,
            time_ms: self.wall_ms,
            tenant,
            subject: Subject::Node(node_ref),
            kind,
            severity,
            details,
        });
    }

    /// Send times of `recs` into the scratch buffer.
    fn sent_of(&mut self, recs: &[SweptRec]) {
        self.sent.clear();
        self.sent.extend(recs.iter().map(|r| r.sent_ns));
    }
}

fn class_name(c: usize) -> &'static str {
    ProtoClass::ALL[c].name()
}

/// The part of `recs` (sorted) whose `key` equals `k`.
fn run_of<K: PartialEq>(recs: &[SweptRec], k: K, key: impl Fn(&SweptRec) -> K) -> &[SweptRec] {
    let start = recs.iter().position(|r| key(r) == k).unwrap_or(recs.len());
    let len = recs[start..].iter().take_while(|r| key(r) == k).count();
    &recs[start..start + len]
}

/// One tick of one node's state machines; emits the state-change events.
fn evaluate(node: &mut NodeState, swept: &[SweptRec], ctx: &mut Ctx<'_>) {
    // Without new evidence and with no request waiting to age, a tick changes nothing (the
    // last evaluation already settled every event condition): skip the node.
    let scratch = std::mem::take(&mut node.scratch);
    if !scratch.dirty && scratch.settled {
        node.scratch.settled = true;
        return;
    }
    evaluate_node(node, swept, &scratch, ctx);
    node.scratch.settled = node.classes.iter().all(|c| !c.health.has_pending())
        && node.ports.values().all(|p| !p.health.has_pending());
}

fn evaluate_node(node: &mut NodeState, swept: &[SweptRec], scratch: &Scratch, ctx: &mut Ctx<'_>) {
    let limits = ctx.config.limits();
    let timeout_ns = ctx.config.poll_timeout_ns();
    let (now, prev_ns) = (ctx.now, ctx.prev_ns);

    for ci in 0..PROTO_CLASSES {
        if !node.classes[ci].tracked {
            continue;
        }
        ctx.sent_of(run_of(swept, ci as u8, |r| r.class));
        let t = tick_of(scratch, node, ci);
        let cs = &mut node.classes[ci];
        let before = t.requests_before;
        let tick = Tick {
            now_ns: now,
            prev_ns,
            successes: t.responses,
            // The tick's responses came after the previous snapshot, whatever the stamp says.
            success_mark_ns: cs.last_response_ns.max(prev_ns),
            timeouts: ctx.sent,
            extra_failures: 0,
            requests: Some((before, cs.requests_total)),
            timeout_ns,
            limits,
        };
        cs.health.observe(&tick, Credit::Exact);
    }

    let tcp = ProtoClass::TcpCheck as usize;
    let tcp_swept = run_of(swept, tcp as u8, |r| r.class);
    for r in tcp_swept {
        node.ports.entry(r.port).or_default();
    }
    let single = single_port(&ctx.config.tcp_ports, node, tcp_swept);
    if let Some(p) = single
        && node.classes[tcp].tracked
    {
        node.ports.entry(p).or_default();
    }
    let t = tick_of(scratch, node, tcp);
    let rst = t.errors.min(t.responses);
    let clean = t.responses - rst;
    let tcp_mark = node.classes[tcp].last_response_ns.max(prev_ns);
    for (&port, ps) in node.ports.iter_mut() {
        let recs = run_of(tcp_swept, port, |r| r.port);
        ctx.sent_of(recs);
        let (successes, extra, credit) = if single.is_some() {
            (clean, rst, Credit::Exact)
        } else {
            (u64::from(clean > 0 && recs.is_empty()), 0, Credit::Weak)
        };
        let tick = Tick {
            now_ns: now,
            prev_ns,
            successes,
            success_mark_ns: tcp_mark,
            timeouts: ctx.sent,
            extra_failures: extra,
            requests: None,
            timeout_ns,
            limits,
        };
        ps.health.observe(&tick, credit);
    }

    let Some(p) = (0..PROTO_CLASSES).find(|&c| node.classes[c].tracked) else {
        return;
    };
    // The fields needed, not a clone: the hysteresis owns a Vec.
    let ph = PrimaryView {
        state: node.classes[p].health.state,
        fail_since_ns: node.classes[p].health.fail_since_ns,
        fail_streak: node.classes[p].health.fail_streak,
    };
    let alive_other = (0..PROTO_CLASSES).filter(|&c| c != p).any(|c| {
        let cs = &node.classes[c];
        cs.health.state == Health::Up && cs.last_response_ns > ph.fail_since_ns
    });
    let should_down = ph.state == Health::Down && !alive_other;
    let is_up = !should_down && (ph.state == Health::Up || alive_other);

    if should_down && !node.node_alarm {
        node.node_alarm = true;
        let details = format!(
            "{} unanswered for {} consecutive polls",
            class_name(p),
            ph.fail_streak
        );
        ctx.emit(node, EventKind::NodeDown, Severity::Critical, details);
    } else if node.node_alarm && is_up {
        node.node_alarm = false;
        let by = if ph.state == Health::Up {
            p
        } else {
            (0..PROTO_CLASSES)
                .find(|&c| c != p && node.classes[c].health.state == Health::Up)
                .unwrap_or(p)
        };
        let details = format!("{} answers again", class_name(by));
        ctx.emit(node, EventKind::NodeUp, Severity::Info, details);
        // Re-learn everything that is not plainly up, from the moment the node is known back:
        // also the primary class when another class brought the node up, or its stale Down
        // would take the node down again at the next tick. The class that brought it up keeps
        // its state but forgets failures of requests lost in the outage (still being swept),
        // or they would raise SnmpDown (or NodeDown) right after the recovery.
        let mark = node
            .classes
            .iter()
            .map(|c| c.last_response_ns)
            .max()
            .unwrap_or(0)
            .max(prev_ns);
        for (c, cs) in node.classes.iter_mut().enumerate() {
            let h = &cs.health;
            if c == by {
                cs.health.forgive(now, mark, cs.requests_total);
            } else if !(h.state == Health::Up && h.fail_streak == 0) {
                cs.health.rearm(now, mark, cs.requests_total);
            }
        }
        for ps in node.ports.values_mut() {
            let h = &ps.health;
            if !(h.state == Health::Up && h.fail_streak == 0) {
                ps.health.rearm(now, mark, 0);
            }
        }
    }

    let snmp = ProtoClass::Snmp as usize;
    let snmp_state = node.classes[snmp].health.state;
    if p != snmp && !node.node_alarm && is_up && snmp_state == Health::Down && !node.snmp_alarm {
        node.snmp_alarm = true;
        let details = format!(
            "snmp unanswered for {} consecutive polls while {} answers",
            node.classes[snmp].health.fail_streak,
            class_name(p)
        );
        ctx.emit(node, EventKind::SnmpDown, Severity::Major, details);
    } else if node.snmp_alarm && snmp_state == Health::Up {
        node.snmp_alarm = false;
        ctx.emit(
            node,
            EventKind::SnmpUp,
            Severity::Info,
            "snmp answers again".into(),
        );
    }

    let port_event = |ps: &state::PortState, node_alarm: bool| {
        (!node_alarm && ps.health.state == Health::Down && !ps.alarm)
            || (ps.alarm && ps.health.state == Health::Up)
    };
    // Rare: collect (and allocate) only when some port changes.
    let changed: Vec<(u16, Health, bool, u64)> = if node
        .ports
        .values()
        .any(|ps| port_event(ps, node.node_alarm))
    {
        node.ports
            .iter()
            .map(|(&port, ps)| (port, ps.health.state, ps.alarm, ps.health.fail_streak))
            .collect()
    } else {
        Vec::new()
    };
    for (port, state, alarm, fails) in changed {
        if !node.node_alarm && state == Health::Down && !alarm {
            set_port_alarm(node, port, true);
            let details = format!("tcp port {port} unanswered or refused {fails} times in a row");
            ctx.emit(
                node,
                EventKind::ServicePortDown { port },
                Severity::Major,
                details,
            );
        } else if alarm && state == Health::Up {
            set_port_alarm(node, port, false);
            let details = format!("tcp port {port} answers again");
            ctx.emit(
                node,
                EventKind::ServicePortUp { port },
                Severity::Info,
                details,
            );
        }
    }

    node.health = if node.node_alarm {
        NodeHealth::Down
    } else if is_up {
        if node.snmp_alarm || node.ports.values().any(|p| p.alarm) {
            NodeHealth::Degraded
        } else {
            NodeHealth::Up
        }
    } else {
        NodeHealth::Unknown
    };
}

/// This tick's counter evidence of class `ci`: none unless the counters changed.
fn tick_of(scratch: &Scratch, node: &NodeState, ci: usize) -> TickClass {
    if scratch.absorbed {
        scratch.tick[ci]
    } else {
        TickClass {
            requests_before: node.classes[ci].requests_total,
            ..TickClass::default()
        }
    }
}

/// What the node logic reads of its primary class.
struct PrimaryView {
    state: Health,
    fail_since_ns: u64,
    fail_streak: u64,
}

fn set_port_alarm(node: &mut NodeState, port: u16, on: bool) {
    if let Some(ps) = node.ports.get_mut(&port) {
        ps.alarm = on;
    }
}

/// The node's only check port, when it has exactly one (configured, tracked or timed out).
fn single_port(config: &[u16], node: &NodeState, swept: &[SweptRec]) -> Option<u16> {
    let mut only = None;
    let ports = config
        .iter()
        .copied()
        .chain(node.ports.keys().copied())
        .chain(swept.iter().map(|r| r.port));
    for p in ports {
        match only {
            None => only = Some(p),
            Some(q) if q != p => return None,
            Some(_) => {}
        }
    }
    only
}

/// Emits one node's metrics for the closed interval and its threshold events; resets sums.
fn close_interval(
    node: &mut NodeState,
    start_ms: u64,
    len_ms: u32,
    ctx: &mut Ctx<'_>,
    pct: &mut Percentiles,
) {
    if node.classes.iter().all(|c| c.acc.is_empty()) {
        return;
    }
    let all_time = |i: usize| {
        node.prev
            .map_or((0, 0), |p| (p[i].rtt_min_ns, p[i].rtt_max_ns))
    };
    let metrics: [ClassMetrics; PROTO_CLASSES] =
        std::array::from_fn(|i| class_metrics(&node.classes[i].acc, all_time(i), pct));
    for (i, m) in metrics.iter().enumerate() {
        thresholds(node, i, m, ctx);
    }
    let (node_ref, tenant) = ctx.node_ref(node);
    let [icmp, snmp, tcp] = metrics;
    ctx.out.metrics.push(NodeMetrics {
        node: node_ref,
        tenant,
        interval_start_ms: start_ms,
        interval_ms: len_ms,
        icmp,
        snmp,
        tcp,
    });
    for c in &mut node.classes {
        c.acc = Default::default();
    }
}

fn to_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// Loss of an interval in ppm: unanswered requests over requests, rounded, 0 without requests.
pub fn loss_ppm(requests: u64, responses: u64) -> u32 {
    if requests == 0 {
        return 0;
    }
    let lost = u128::from(requests - responses.min(requests));
    let r = u128::from(requests);
    ((lost * u128::from(PPM) + r / 2) / r) as u32
}

/// `all_time`: the kernel's (min, max) RTT at the end of the interval.
fn class_metrics(a: &state::Accum, all_time: (u64, u64), pct: &mut Percentiles) -> ClassMetrics {
    let rtt = if let Some(avg_ns) = a.rtt_sum_ns.checked_div(a.rtt_count) {
        let (min_ns, max_ns) = rtt::interval_extremes(a, all_time);
        let min_ns = min_ns.min(avg_ns);
        let max_ns = max_ns.max(avg_ns);
        let (min_us, max_us) = (min_ns / 1000, max_ns / 1000);
        let [p50, p95, p99] = pct
            .compute(&a.rtt_hist)
            .map(|p| p.map(|v| v.clamp(min_us, max_us)))
            .unwrap_or([avg_ns / 1000; 3]);
        Some(RttStats {
            samples: a.rtt_count,
            min_us: to_u32(min_us),
            avg_us: to_u32(avg_ns / 1000),
            max_us: to_u32(max_us),
            p50_us: to_u32(p50),
            p95_us: to_u32(p95),
            p99_us: to_u32(p99),
        })
    } else {
        None
    };
    ClassMetrics {
        requests: a.requests,
        responses: a.responses,
        timeouts: a.timeouts,
        loss_ppm: loss_ppm(a.requests, a.responses),
        errors: a.errors,
        bytes_in: a.bytes_in,
        bytes_out: a.bytes_out,
        rtt,
    }
}

/// RTT and loss alarms of one class at the close of an interval.
fn thresholds(node: &mut NodeState, ci: usize, m: &ClassMetrics, ctx: &mut Ctx<'_>) {
    if node.node_alarm || node.classes[ci].health.state == Health::Down {
        return;
    }
    let class = PollClass::from(ProtoClass::ALL[ci]);
    let th = ctx.config.thresholds(class);
    if let (Some((above, below)), Some(rtt)) = (th.rtt(), m.rtt) {
        let v = rtt.avg_us;
        let alarm = node.classes[ci].rtt_alarm;
        if !alarm && v > above {
            node.classes[ci].rtt_alarm = true;
            let kind = EventKind::RttAboveThreshold {
                class,
                rtt_us: v,
                threshold_us: above,
            };
            let details = format!("{} average rtt {v} us above {above} us", class_name(ci));
            ctx.emit(node, kind, Severity::Warning, details);
        } else if alarm && v <= below {
            node.classes[ci].rtt_alarm = false;
            let kind = EventKind::RttBelowThreshold {
                class,
                rtt_us: v,
                threshold_us: above,
            };
            let details = format!(
                "{} average rtt {v} us back at or below {below} us",
                class_name(ci)
            );
            ctx.emit(node, kind, Severity::Info, details);
        }
    }
    if let Some((above, below)) = th.loss()
        && m.requests >= th.loss_min_requests.max(1)
    {
        let v = m.loss_ppm;
        let alarm = node.classes[ci].loss_alarm;
        if !alarm && v > above {
            node.classes[ci].loss_alarm = true;
            let kind = EventKind::LossAboveThreshold {
                class,
                loss_ppm: v,
                threshold_ppm: above,
            };
            let details = format!(
                "{} loss {}/{} requests ({v} ppm) above {above} ppm",
                class_name(ci),
                m.requests - m.responses.min(m.requests),
                m.requests
            );
            ctx.emit(node, kind, Severity::Minor, details);
        } else if alarm && v <= below {
            node.classes[ci].loss_alarm = false;
            let kind = EventKind::LossBelowThreshold {
                class,
                loss_ppm: v,
                threshold_ppm: above,
            };
            let details = format!(
                "{} loss {v} ppm back at or below {below} ppm",
                class_name(ci)
            );
            ctx.emit(node, kind, Severity::Info, details);
        }
    }
}
