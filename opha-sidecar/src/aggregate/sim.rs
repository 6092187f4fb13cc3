//! A fake kernel for tests and benchmarks: counts polls the way the eBPF programs do (per node
//! and class, RTT histogram, in-flight requests), on a fake clock, with no kernel at all.

use super::{Aggregator, Input, Output};
use opha_common::inflight::{InflightKey, InflightKind};
use opha_common::node::{ClassCounters, NodeCounters, NodeKey, ProtoClass, rtt_bucket};
use std::collections::BTreeMap;

/// What became of one poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answered after `rtt_us`.
    Answer { rtt_us: u64 },
    /// A response that is also an error: TCP RST, SNMP error-status.
    Refused { rtt_us: u64 },
    /// No answer: the request stays in flight until swept.
    Lost,
    /// An ICMP unreachable about the request: an error, no response; the request stays in
    /// flight (as in the kernel).
    Unreachable,
}

/// Frame length counted per packet.
pub const FRAME_LEN: u64 = 100;

/// The fake kernel.
#[derive(Clone, Debug)]
pub struct FakeKernel {
    mono_ns: u64,
    mono0_ns: u64,
    wall0_ms: u64,
    nodes: BTreeMap<NodeKey, NodeCounters>,
    inflight: Vec<(InflightKey, u64)>,
    next_id: u32,
    /// Tenant given to nodes created by a poll.
    pub default_tenant: u32,
}

impl FakeKernel {
    /// A kernel whose clock reads `wall_ms` now (monotonic time starts at 1000 s).
    pub fn new(wall_ms: u64) -> Self {
        Self {
            mono_ns: 1_000_000_000_000,
            mono0_ns: 1_000_000_000_000,
            wall0_ms: wall_ms,
            nodes: BTreeMap::new(),
            inflight: Vec::new(),
            next_id: 1,
            default_tenant: 1,
        }
    }

    pub fn mono_ns(&self) -> u64 {
        self.mono_ns
    }

    pub fn wall_ms(&self) -> u64 {
        self.wall0_ms + (self.mono_ns - self.mono0_ns) / 1_000_000
    }

    pub fn advance_ms(&mut self, ms: u64) {
        self.mono_ns += ms * 1_000_000;
    }

    pub fn advance_ns(&mut self, ns: u64) {
        self.mono_ns += ns;
    }

    /// The machine rebooted: the monotonic clock restarts near 0, maps are empty; the wall
    /// clock goes on.
    pub fn reboot(&mut self, downtime_ms: u64) {
        let wall = self.wall_ms() + downtime_ms;
        self.mono_ns = 5_000_000_000;
        self.mono0_ns = self.mono_ns;
        self.wall0_ms = wall;
        self.recreate_maps();
    }

    /// Maps recreated (loaded again without pins): every counter restarts from zero.
    pub fn recreate_maps(&mut self) {
        self.nodes.clear();
        self.inflight.clear();
    }

    /// The node's entry is evicted from the map.
    pub fn evict(&mut self, node: &NodeKey) {
        self.nodes.remove(node);
    }

    pub fn set_tenant(&mut self, node: NodeKey, tenant: u32) {
        self.nodes.entry(node).or_default().tenant = tenant;
    }

    pub fn counters(&self, node: &NodeKey) -> Option<&NodeCounters> {
        self.nodes.get(node)
    }

    pub fn counters_mut(&mut self, node: NodeKey) -> &mut NodeCounters {
        let tenant = self.default_tenant;
        self.nodes.entry(node).or_insert_with(|| NodeCounters {
            tenant,
            ..NodeCounters::default()
        })
    }

    /// One poll of `node` in `class` (`port`: the service port for TCP, else ignored). The
    /// clock moves by the RTT of an answer, and 1 us after each poll.
    pub fn poll(&mut self, node: NodeKey, class: ProtoClass, port: u16, reply: Reply) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let sent = self.mono_ns;
        let (kind, port, id) = match class {
            ProtoClass::IcmpEcho => (InflightKind::IcmpEcho, 0, id),
            ProtoClass::Snmp => (InflightKind::SnmpRequestId, 40_000, id),
            ProtoClass::TcpCheck => (InflightKind::TcpSyn, port, id & 0xffff),
        };
        let key = InflightKey {
            node,
            kind: kind as u8,
            _pad: 0,
            port,
            id,
        };
        {
            let c = &mut self.counters_mut(node).classes[class as usize];
            c.requests += 1;
            c.bytes_out += FRAME_LEN;
        }
        match reply {
            Reply::Answer { rtt_us } | Reply::Refused { rtt_us } => {
                self.mono_ns += rtt_us * 1000;
                let now = self.mono_ns;
                let c = &mut self.counters_mut(node).classes[class as usize];
                respond(c, rtt_us * 1000, now);
                if matches!(reply, Reply::Refused { .. }) {
                    c.errors += 1;
                }
            }
            Reply::Lost => self.inflight.push((key, sent)),
            Reply::Unreachable => {
                let c = &mut self.counters_mut(node).classes[class as usize];
                c.errors += 1;
                c.bytes_in += FRAME_LEN;
                self.inflight.push((key, sent));
            }
        }
        self.mono_ns += 1_000;
    }

    /// Every node's counters (one CPU: already "summed").
    pub fn snapshot(&self) -> Vec<(NodeKey, NodeCounters)> {
        self.nodes.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Takes the in-flight entries older than `timeout_ns` out of the map, as the driver does.
    pub fn sweep(&mut self, timeout_ns: u64) -> Vec<(InflightKey, u64)> {
        let now = self.mono_ns;
        let (old, keep): (Vec<_>, Vec<_>) = self
            .inflight
            .drain(..)
            .partition(|(_, sent)| sent.saturating_add(timeout_ns) <= now);
        self.inflight = keep;
        old
    }

    /// Sweeps, snapshots and hands both to `agg`, as a driver's poll does.
    pub fn feed(&mut self, agg: &mut Aggregator, out: &mut Output) {
        let timeouts = self.sweep(agg.config().poll_timeout_ns());
        let nodes = self.snapshot();
        agg.poll(
            &Input {
                mono_ns: self.mono_ns,
                wall_ms: self.wall_ms(),
                nodes: &nodes,
                timeouts: &timeouts,
            },
            out,
        );
    }
}

fn respond(c: &mut ClassCounters, rtt_ns: u64, now: u64) {
    c.responses += 1;
    c.bytes_in += FRAME_LEN;
    c.rtt_sum_ns += rtt_ns;
    c.rtt_count += 1;
    if c.rtt_min_ns == 0 || rtt_ns < c.rtt_min_ns {
        c.rtt_min_ns = rtt_ns;
    }
    c.rtt_max_ns = c.rtt_max_ns.max(rtt_ns);
    c.rtt_hist[rtt_bucket(rtt_ns)] += 1;
    c.last_response_ns = c.last_response_ns.max(now);
}

/// One poll of a scenario round: (node, class, service port for TCP, what happens).
pub type Poll = (NodeKey, ProtoClass, u16, Reply);

/// A fake kernel driving a core in fixed rounds: each round sends its polls at the start,
/// then the clock moves to the end of the round and the driver's poll runs (sweep, snapshot,
/// [`Aggregator::poll`]). Everything emitted is also collected.
#[derive(Debug)]
pub struct Scenario {
    pub kernel: FakeKernel,
    pub agg: Aggregator,
    pub round_ms: u64,
    pub events: Vec<opha_common::wire::Event>,
    pub metrics: Vec<opha_common::wire::NodeMetrics>,
}

impl Scenario {
    /// Starts at `wall_ms` with a baseline poll.
    pub fn new(agg: Aggregator, wall_ms: u64, round_ms: u64) -> Self {
        let mut s = Self {
            kernel: FakeKernel::new(wall_ms),
            agg,
            round_ms,
            events: Vec::new(),
            metrics: Vec::new(),
        };
        s.feed();
        s
    }

    /// The driver's poll now; returns what it produced.
    pub fn feed(&mut self) -> Output {
        let mut out = Output::default();
        self.kernel.feed(&mut self.agg, &mut out);
        self.events.extend(out.events.iter().cloned());
        self.metrics.extend(out.metrics.iter().cloned());
        out
    }

    /// Sends `polls`, moves to the end of the round, feeds.
    pub fn round(&mut self, polls: &[Poll]) -> Output {
        let start = self.kernel.mono_ns();
        for &(node, class, port, reply) in polls {
            self.kernel.poll(node, class, port, reply);
        }
        let end = start + self.round_ms * 1_000_000;
        let now = self.kernel.mono_ns();
        self.kernel.advance_ns(end.saturating_sub(now));
        self.feed()
    }

    /// `n` rounds of the same polls; the events they produced.
    pub fn rounds(&mut self, n: usize, polls: &[Poll]) -> Vec<opha_common::wire::Event> {
        let mut ev = Vec::new();
        for _ in 0..n {
            ev.extend(self.round(polls).events);
        }
        ev
    }
}
