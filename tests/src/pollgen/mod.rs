//! The poll generator: polls nodes the way an NMIS poller does, so the kernel programs and the
//! sidecar see realistic traffic, and counts exactly what it sent and got back per node and
//! class, so a test or the lab can compare with the kernel's counters one for one.
//!
//! - SNMP v2c: every `cycle`, per node a Get of the system scalars, then a GetBulk walk of the
//!   interface table (each request with `timeout` and `retries`, a fresh request-id per packet;
//!   responses matched by (address, request-id)). A node whose Get fails is not walked.
//! - ICMP echo every `ping_every`, through unprivileged ICMP datagram sockets (matched by
//!   (address, sequence); the kernel keeps one identifier per socket).
//! - TCP checks every `tcp_every` on each of `tcp_ports`: a connect; SYN-ACK = up, RST = answer
//!   with error.
//!
//! Each node's polls start at an even offset within their period (node i of N at
//! `period * i / N`), so load is spread, never a thundering herd; a global token bucket
//! (`rate_limit`) bounds the packet rate and `max_inflight` the jobs at once. With `fixed_rate`
//! the cycles are ignored: single requests (no retries) go out at that rate, round robin over
//! nodes and the configured kinds, and what was sent, answered and lost is counted exactly.
//!
//! Sockets are made in [`PollGen::new`] and TCP check sockets while running: create and run the
//! generator on a thread that is in the poller's network namespace.
//!
//! ```ignore
//! let stop = AtomicBool::new(false);
//! let stats = PollGen::new(Config::new(targets))?.run(Duration::from_secs(60), &stop).await?;
//! ```

pub mod ber;
pub mod net;
pub mod stats;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket as StdUdp},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use opha_common::node::ProtoClass;
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::UdpSocket,
    sync::{Notify, Semaphore, oneshot, watch},
    task::JoinSet,
    time::{Instant, sleep, sleep_until, timeout},
};

pub use self::stats::{ClassStats, NodeStats, PollStats};
use self::{
    ber::{Message, Oid, PduKind, Value},
    net::TcpOutcome,
    stats::{NodeAtomics, add},
};

/// sysDescr, sysObjectID, sysUpTime, sysContact, sysName, sysLocation (.0).
pub const SYSTEM_OIDS: [&str; 6] = [
    "1.3.6.1.2.1.1.1.0",
    "1.3.6.1.2.1.1.2.0",
    "1.3.6.1.2.1.1.3.0",
    "1.3.6.1.2.1.1.4.0",
    "1.3.6.1.2.1.1.5.0",
    "1.3.6.1.2.1.1.6.0",
];
/// ifTable.
pub const IF_TABLE: &str = "1.3.6.1.2.1.2.2";
/// sysUpTime.0: the single Get of the fixed-rate mode.
pub const SYS_UPTIME: &str = "1.3.6.1.2.1.1.3.0";

/// Most targets one generator takes (a range typo must not allocate the Internet).
pub const MAX_TARGETS: usize = 1_000_000;

/// A kind of request, for the fixed-rate mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// One SNMP Get of sysUpTime.0.
    Snmp,
    /// One ICMP echo.
    Icmp,
    /// One TCP check of the first configured port.
    Tcp,
}

impl std::str::FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "snmp" => Kind::Snmp,
            "icmp" | "ping" => Kind::Icmp,
            "tcp" => Kind::Tcp,
            _ => bail!("unknown request kind {s:?} (snmp, icmp, tcp)"),
        })
    }
}

/// What to poll and how.
#[derive(Clone, Debug)]
pub struct Config {
    pub targets: Vec<IpAddr>,
    pub community: String,
    pub snmp_port: u16,
    /// SNMP poll period per node (None: no SNMP).
    pub cycle: Option<Duration>,
    /// ICMP echo period per node (None: no pings).
    pub ping_every: Option<Duration>,
    pub tcp_ports: Vec<u16>,
    /// TCP check period per node and port.
    pub tcp_every: Duration,
    /// Per request (SNMP, ICMP) and per TCP connect.
    pub timeout: Duration,
    /// SNMP and ICMP retries after a timeout.
    pub retries: u32,
    /// Global bound on packets per second (retries included); None: unbounded.
    pub rate_limit: Option<f64>,
    /// Jobs (polls) at once.
    pub max_inflight: usize,
    /// GetBulk max-repetitions of the walks.
    pub max_repetitions: u32,
    /// Bound on the GetBulk requests of one walk.
    pub max_walk_requests: u32,
    /// Subtrees walked after the system Get.
    pub walk_roots: Vec<String>,
    pub icmp_data_len: usize,
    /// Fixed-rate mode: requests per second and the kinds to cycle through.
    pub fixed_rate: Option<(f64, Vec<Kind>)>,
    /// How long to keep reading after the last request was answered or timed out, so that
    /// late answers are counted as the kernel counts them.
    pub linger: Duration,
    /// Accept targets outside 198.18.0.0/15, 2001:db8::/32 and loopback (never in tests).
    pub any_target: bool,
}

impl Config {
    /// NMIS-like defaults: a 5-minute SNMP cycle, a ping a minute, 2 s timeout, 1 retry.
    pub fn new(targets: Vec<IpAddr>) -> Self {
        Self {
            targets,
            community: "public".into(),
            snmp_port: 161,
            cycle: Some(Duration::from_secs(300)),
            ping_every: Some(Duration::from_secs(60)),
            tcp_ports: Vec::new(),
            tcp_every: Duration::from_secs(300),
            timeout: Duration::from_secs(2),
            retries: 1,
            rate_limit: None,
            max_inflight: 4096,
            max_repetitions: 25,
            max_walk_requests: 16,
            walk_roots: vec![IF_TABLE.into()],
            icmp_data_len: 56,
            fixed_rate: None,
            linger: Duration::from_millis(300),
            any_target: false,
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(!self.targets.is_empty(), "no targets");
        ensure!(
            self.targets.len() <= MAX_TARGETS,
            "{} targets, at most {MAX_TARGETS}",
            self.targets.len()
        );
        if !self.any_target
            && let Some(a) = self.targets.iter().find(|a| !allowed_target(a))
        {
            bail!(
                "target {a} is outside 198.18.0.0/15, 2001:db8::/32 and loopback (the test \
                 ranges); refused"
            );
        }
        for (name, d) in [
            ("cycle", self.cycle),
            ("ping period", self.ping_every),
            ("tcp period", Some(self.tcp_every)),
            ("timeout", Some(self.timeout)),
        ] {
            if let Some(d) = d {
                ensure!(d >= Duration::from_millis(1), "{name} {d:?} is below 1 ms");
            }
        }
        ensure!(self.retries <= 10, "retries {} above 10", self.retries);
        ensure!(self.max_inflight >= 1, "max_inflight must be at least 1");
        ensure!(
            (1..=1000).contains(&self.max_walk_requests),
            "max walk requests must be 1..=1000"
        );
        ensure!(
            (1..=1000).contains(&self.max_repetitions),
            "max-repetitions must be 1..=1000"
        );
        ensure!(self.icmp_data_len <= 1400, "ICMP data above 1400 bytes");
        if let Some(r) = self.rate_limit {
            ensure!(r > 0.0 && r <= 1e7, "rate limit {r} out of (0, 1e7]");
        }
        if let Some((r, kinds)) = &self.fixed_rate {
            ensure!(*r > 0.0 && *r <= 1e7, "rate {r} out of (0, 1e7]");
            ensure!(!kinds.is_empty(), "fixed rate without request kinds");
            ensure!(
                !kinds.contains(&Kind::Tcp) || !self.tcp_ports.is_empty(),
                "fixed-rate TCP checks need a --tcp-port"
            );
        }
        for r in &self.walk_roots {
            Oid::parse(r).with_context(|| format!("walk root {r:?}"))?;
        }
        Ok(())
    }
}

/// 198.18.0.0/15, 2001:db8::/32 or loopback.
pub fn allowed_target(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 198 && (o[1] & 0xfe) == 18) || v4.is_loopback()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (s[0] == 0x2001 && s[1] == 0xdb8) || v6.is_loopback()
        }
    }
}

/// Expands `FIRST-LAST` (both IPv4 or both IPv6, inclusive). IPv4 host bytes .0 and .255 are
/// skipped, as device addresses never use them.
pub fn parse_range(s: &str) -> Result<Vec<IpAddr>> {
    let (a, b) = s
        .split_once('-')
        .with_context(|| format!("range {s:?}: want FIRST-LAST"))?;
    let a: IpAddr = a
        .trim()
        .parse()
        .with_context(|| format!("range start {a:?}"))?;
    let b: IpAddr = b
        .trim()
        .parse()
        .with_context(|| format!("range end {b:?}"))?;
    let mut out = Vec::new();
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let (a, b) = (u32::from(a), u32::from(b));
            ensure!(a <= b, "range {s:?} runs backwards");
            ensure!(
                (b - a) as usize <= MAX_TARGETS,
                "range {s:?} above {MAX_TARGETS}"
            );
            for x in a..=b {
                if !matches!(x & 0xff, 0 | 255) {
                    out.push(IpAddr::V4(Ipv4Addr::from(x)));
                }
            }
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let (a, b) = (u128::from(a), u128::from(b));
            ensure!(a <= b, "range {s:?} runs backwards");
            ensure!(
                b - a <= MAX_TARGETS as u128,
                "range {s:?} above {MAX_TARGETS}"
            );
            out.extend((a..=b).map(|x| IpAddr::V6(Ipv6Addr::from(x))));
        }
        _ => bail!("range {s:?} mixes IPv4 and IPv6"),
    }
    Ok(out)
}

/// A targets file: one address or `FIRST-LAST` range per line; `#` starts a comment.
pub fn parse_targets(text: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.contains('-') {
            out.extend(parse_range(line).with_context(|| format!("line {}", i + 1))?);
        } else {
            out.push(
                line.parse()
                    .with_context(|| format!("line {}: address {line:?}", i + 1))?,
            );
        }
        ensure!(out.len() <= MAX_TARGETS, "more than {MAX_TARGETS} targets");
    }
    Ok(out)
}

/// The generator, with its sockets open.
pub struct PollGen {
    cfg: Config,
    snmp: [Option<StdUdp>; 2],
    icmp: [Option<StdUdp>; 2],
}

/// A request waiting for its answer.
struct Pending<T> {
    tx: oneshot::Sender<T>,
    sent_at: Instant,
}

type PendingMap<K, T> = Mutex<HashMap<K, Pending<T>>>;

/// Token bucket without burst: each packet takes the next slot `interval` after the last.
struct Limiter {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Limiter {
    fn slot(&self) -> Instant {
        let mut n = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if *n < now {
            *n = now;
        }
        let s = *n;
        *n += self.interval;
        s
    }
}

struct Shared {
    cfg: Config,
    community: Vec<u8>,
    system_oids: Vec<Oid>,
    walk_roots: Vec<Oid>,
    uptime: Oid,
    index: HashMap<IpAddr, usize>,
    nodes: Vec<NodeAtomics>,
    /// [IPv4, IPv6].
    snmp: [Option<UdpSocket>; 2],
    icmp: [Option<UdpSocket>; 2],
    snmp_pending: PendingMap<(IpAddr, i32), ()>,
    icmp_pending: PendingMap<(IpAddr, u16), ()>,
    next_request_id: AtomicU32,
    limiter: Option<Limiter>,
    /// Set when sending ends: no new polls, retries or walk steps (the first request of a
    /// poll already started still goes out, so a poll is never counted without a packet).
    stopping: AtomicBool,
    /// Set when the caller stopped the run: not even those.
    aborted: AtomicBool,
    stop_notify: Notify,
    unknown_sources: AtomicU64,
}

fn fam(a: &IpAddr) -> usize {
    usize::from(a.is_ipv6())
}

impl Shared {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn counters(&self, node: usize, c: ProtoClass) -> &stats::ClassAtomics {
        &self.nodes[node].class[c as usize]
    }

    /// Whether a request may still start: the first of a poll (`first`) unless the run was
    /// aborted, any other unless sending has ended.
    fn may_send(&self, first: bool) -> bool {
        if first {
            !self.aborted.load(Ordering::Relaxed)
        } else {
            !self.stopping()
        }
    }

    /// Waits for the rate limiter; false when the request may no longer start (see
    /// [`Shared::may_send`]). A first request waits at most max_inflight / rate_limit.
    async fn permit(&self, first: bool) -> bool {
        let Some(l) = &self.limiter else {
            return self.may_send(first);
        };
        let notified = self.stop_notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.may_send(first) {
            return false;
        }
        let slot = l.slot();
        loop {
            tokio::select! {
                _ = sleep_until(slot) => return self.may_send(first),
                _ = &mut notified => {
                    if !self.may_send(first) {
                        return false;
                    }
                    // Only `stopping` was announced; a first request keeps its slot.
                    notified.set(self.stop_notify.notified());
                    notified.as_mut().enable();
                    if !self.may_send(first) {
                        return false;
                    }
                }
            }
        }
    }

    /// Positive, never 0 (some agents treat 0 specially), unique for 2^31 requests.
    fn request_id(&self) -> i32 {
        loop {
            let id = (self.next_request_id.fetch_add(1, Ordering::Relaxed) & 0x7fff_ffff) as i32;
            if id != 0 {
                return id;
            }
        }
    }

    /// One SNMP request with retries; the response when one came in time.
    /// `poll`: this request starts a poll (counted in `polls` once it is sent).
    async fn snmp_request(
        &self,
        node: usize,
        addr: IpAddr,
        retries: u32,
        poll: bool,
        build: impl Fn(i32) -> Message,
    ) -> Option<()> {
        let c = self.counters(node, ProtoClass::Snmp);
        let Some(sock) = &self.snmp[fam(&addr)] else {
            add(&c.local_errors, 1);
            return None;
        };
        let target = SocketAddr::new(addr, self.cfg.snmp_port);
        let mut tried = false;
        for attempt in 0..=retries {
            if !self.permit(poll && attempt == 0).await {
                break;
            }
            if poll && attempt == 0 {
                add(&c.polls, 1);
            }
            tried = true;
            let id = self.request_id();
            let bytes = ber::encode(&build(id));
            let (tx, mut rx) = oneshot::channel();
            let key = (addr, id);
            // In the map before it leaves, so the fastest answer finds it.
            lock(&self.snmp_pending).insert(
                key,
                Pending {
                    tx,
                    sent_at: Instant::now(),
                },
            );
            match sock.send_to(&bytes, target).await {
                Ok(n) => {
                    add(&c.sent, 1);
                    add(&c.bytes_out, n as u64 + net::udp_overhead(&addr));
                }
                Err(_) => {
                    lock(&self.snmp_pending).remove(&key);
                    add(&c.local_errors, 1);
                    continue;
                }
            }
            if let Ok(Ok(())) = timeout(self.cfg.timeout, &mut rx).await {
                return Some(());
            }
            if lock(&self.snmp_pending).remove(&key).is_some() {
                add(&c.timeouts, 1);
            } else if rx.try_recv().is_ok() {
                // Answered just as the timer fired.
                return Some(());
            }
        }
        if tried {
            add(&c.failed, 1);
        }
        None
    }

    /// One ICMP echo (a poll) with retries; true when answered in time.
    async fn ping(&self, node: usize, addr: IpAddr, retries: u32) -> bool {
        let c = self.counters(node, ProtoClass::IcmpEcho);
        let v6 = addr.is_ipv6();
        let Some(sock) = &self.icmp[fam(&addr)] else {
            add(&c.local_errors, 1);
            return false;
        };
        let mut tried = false;
        for attempt in 0..=retries {
            if !self.permit(attempt == 0).await {
                break;
            }
            if attempt == 0 {
                add(&c.polls, 1);
            }
            tried = true;
            let seq = self.nodes[node].icmp_seq.fetch_add(1, Ordering::Relaxed) as u16;
            let key = (addr, seq);
            let msg = net::echo_request(v6, seq, self.cfg.icmp_data_len);
            let (tx, mut rx) = oneshot::channel();
            {
                let mut p = lock(&self.icmp_pending);
                // 65536 echoes to one node in flight: skip rather than mismatch.
                if p.contains_key(&key) {
                    add(&c.local_errors, 1);
                    continue;
                }
                p.insert(
                    key,
                    Pending {
                        tx,
                        sent_at: Instant::now(),
                    },
                );
            }
            match sock.send_to(&msg, SocketAddr::new(addr, 0)).await {
                Ok(n) => {
                    add(&c.sent, 1);
                    add(&c.bytes_out, n as u64 + net::icmp_overhead(&addr));
                }
                Err(_) => {
                    lock(&self.icmp_pending).remove(&key);
                    add(&c.local_errors, 1);
                    continue;
                }
            }
            if let Ok(Ok(())) = timeout(self.cfg.timeout, &mut rx).await {
                return true;
            }
            if lock(&self.icmp_pending).remove(&key).is_some() {
                add(&c.timeouts, 1);
            } else if rx.try_recv().is_ok() {
                return true;
            }
        }
        if tried {
            add(&c.failed, 1);
        }
        false
    }

    /// One TCP check (no retries: the kernel retransmits the SYN itself).
    async fn tcp_check(&self, node: usize, addr: IpAddr, port: u16) {
        let c = self.counters(node, ProtoClass::TcpCheck);
        if !self.permit(true).await {
            return;
        }
        add(&c.polls, 1);
        let start = Instant::now();
        let (fd, done) = match net::tcp_start(SocketAddr::new(addr, port)) {
            Ok(x) => x,
            Err(_) => {
                add(&c.local_errors, 1);
                return;
            }
        };
        let outcome = if done {
            TcpOutcome::Open
        } else {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same until the
            // AsyncFd is dropped.
            match unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE) } {
                Err(_) => {
                    add(&c.local_errors, 1);
                    return;
                }
                Ok(afd) => {
                    let r = timeout(self.cfg.timeout, afd.writable()).await;
                    let raw = afd.get_ref().as_raw_fd();
                    let outcome = match r {
                        Err(_) => TcpOutcome::Timeout,
                        Ok(Err(e)) => TcpOutcome::Local(e),
                        Ok(Ok(_)) => match net::so_error(raw) {
                            Ok(e) => net::tcp_outcome(e),
                            Err(e) => TcpOutcome::Local(e),
                        },
                    };
                    add(&c.sent, net::tcp_syns(raw));
                    // Dropping afd closes the socket (RST, SO_LINGER 0).
                    drop(afd);
                    outcome
                }
            }
        };
        if done {
            add(&c.sent, 1);
        }
        match outcome {
            TcpOutcome::Open => {
                add(&c.responses, 1);
                add(&c.matched, 1);
                c.rtt(start.elapsed());
            }
            TcpOutcome::Refused => {
                add(&c.responses, 1);
                add(&c.matched, 1);
                add(&c.errors, 1);
                c.rtt(start.elapsed());
            }
            TcpOutcome::Unreachable(_) => {
                add(&c.errors, 1);
                add(&c.failed, 1);
            }
            TcpOutcome::Timeout => {
                add(&c.timeouts, 1);
                add(&c.failed, 1);
            }
            TcpOutcome::Local(_) => add(&c.local_errors, 1),
        }
    }

    /// An NMIS-style SNMP poll: the system Get, then the walks.
    async fn snmp_poll(&self, node: usize, addr: IpAddr, replies: &ReplyBox) {
        let community = &self.community;
        let got = self
            .snmp_request(node, addr, self.cfg.retries, true, |id| {
                Message::request(PduKind::Get, community, id, &self.system_oids)
            })
            .await;
        if got.is_none() {
            return;
        }
        for root in &self.walk_roots {
            let mut cur = root.clone();
            for _ in 0..self.cfg.max_walk_requests {
                if self.stopping() {
                    return;
                }
                let from = cur.clone();
                let ok = self
                    .snmp_request(node, addr, self.cfg.retries, false, |id| {
                        replies.expect(addr, id);
                        Message::get_bulk(
                            community,
                            id,
                            0,
                            self.cfg.max_repetitions as i32,
                            std::slice::from_ref(&from),
                        )
                    })
                    .await;
                if ok.is_none() {
                    return;
                }
                let Some(last) = replies.take(addr) else {
                    break;
                };
                match last {
                    Some(oid) if oid.starts_with(root) && oid > cur => cur = oid,
                    _ => break,
                }
            }
        }
    }
}

/// The last varbind OID of walk responses, handed from the receiver to the walking poll:
/// (address) -> (request-id it waits for, Some(next OID) or None at the end of the view).
#[derive(Default)]
struct ReplyBox {
    slots: Mutex<HashMap<IpAddr, WalkSlot>>,
}

/// (request-id awaited, its answer once in: Some(next OID) or None at the end).
type WalkSlot = (i32, Option<Option<Oid>>);

impl ReplyBox {
    fn expect(&self, addr: IpAddr, id: i32) {
        lock(&self.slots).insert(addr, (id, None));
    }

    fn offer(&self, addr: IpAddr, id: i32, m: &Message) {
        let mut s = lock(&self.slots);
        if let Some((want, slot)) = s.get_mut(&addr)
            && *want == id
        {
            let next = if m.pdu.error_status != 0 {
                None
            } else {
                match m.pdu.varbinds.last() {
                    Some(vb)
                        if !matches!(
                            vb.value,
                            Value::EndOfMibView | Value::NoSuchObject | Value::NoSuchInstance
                        ) =>
                    {
                        Some(vb.oid.clone())
                    }
                    _ => None,
                }
            };
            *slot = Some(next);
        }
    }

    /// What the answer to the awaited request said; None if it did not come.
    fn take(&self, addr: IpAddr) -> Option<Option<Oid>> {
        lock(&self.slots).remove(&addr).and_then(|(_, s)| s)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads SNMP datagrams until shut down: counts every response per node, hands matched ones
/// to their waiting request.
async fn snmp_receiver(
    sh: Arc<Shared>,
    replies: Arc<ReplyBox>,
    v6: usize,
    mut shut: watch::Receiver<bool>,
) {
    let Some(sock) = &sh.snmp[v6] else { return };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors on an unconnected socket and the like: keep reading.
                Err(_) => continue,
            },
            _ = shut.changed() => return,
        };
        let addr = canonical(from.ip());
        let Some(&node) = sh.index.get(&addr) else {
            add(&sh.unknown_sources, 1);
            continue;
        };
        let c = sh.counters(node, ProtoClass::Snmp);
        let m = match ber::decode(&buf[..n]) {
            Ok(m) if matches!(m.pdu.kind, PduKind::Response | PduKind::Report) => m,
            _ => {
                add(&c.malformed, 1);
                continue;
            }
        };
        add(&c.responses, 1);
        add(&c.bytes_in, n as u64 + net::udp_overhead(&addr));
        if m.pdu.error_status != 0 {
            add(&c.errors, 1);
        }
        replies.offer(addr, m.pdu.request_id, &m);
        let p = lock(&sh.snmp_pending).remove(&(addr, m.pdu.request_id));
        match p {
            Some(p) => {
                add(&c.matched, 1);
                c.rtt(p.sent_at.elapsed());
                let _ = p.tx.send(());
            }
            None => add(&c.late, 1),
        }
    }
}

/// Reads ICMP echo replies until shut down.
async fn icmp_receiver(sh: Arc<Shared>, v6: usize, mut shut: watch::Receiver<bool>) {
    let Some(sock) = &sh.icmp[v6] else { return };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
            _ = shut.changed() => return,
        };
        let addr = canonical(from.ip());
        let Some(&node) = sh.index.get(&addr) else {
            add(&sh.unknown_sources, 1);
            continue;
        };
        let c = sh.counters(node, ProtoClass::IcmpEcho);
        let Some(seq) = net::echo_reply_seq(v6 == 1, &buf[..n]) else {
            add(&c.malformed, 1);
            continue;
        };
        add(&c.responses, 1);
        add(&c.bytes_in, n as u64 + net::icmp_overhead(&addr));
        let p = lock(&sh.icmp_pending).remove(&(addr, seq));
        match p {
            Some(p) => {
                add(&c.matched, 1);
                c.rtt(p.sent_at.elapsed());
                let _ = p.tx.send(());
            }
            None => add(&c.late, 1),
        }
    }
}

fn canonical(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// A scheduled poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Job {
    Snmp(usize),
    Ping(usize),
    Tcp(usize, u16),
}

impl PollGen {
    /// Validates the configuration and opens the SNMP and ICMP sockets the targets need (in
    /// the calling thread's network namespace).
    pub fn new(mut cfg: Config) -> Result<Self> {
        cfg.validate()?;
        let mut seen = HashSet::new();
        cfg.targets.retain(|a| seen.insert(*a));
        let (snmp_on, icmp_on) = match &cfg.fixed_rate {
            Some((_, k)) => (k.contains(&Kind::Snmp), k.contains(&Kind::Icmp)),
            None => (cfg.cycle.is_some(), cfg.ping_every.is_some()),
        };
        let mut snmp = [None, None];
        let mut icmp = [None, None];
        for v6 in [false, true] {
            if !cfg.targets.iter().any(|a| a.is_ipv6() == v6) {
                continue;
            }
            let i = usize::from(v6);
            if snmp_on {
                snmp[i] = Some(net::snmp_socket(v6).context("SNMP socket")?);
            }
            if icmp_on {
                icmp[i] = Some(net::ping_socket(v6).context("ICMP socket")?);
            }
        }
        Ok(Self { cfg, snmp, icmp })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Polls for `duration` or until `stop` is set, then waits for the answers still due
    /// (each request ends within its timeout and retries) and `linger` for late ones, and
    /// returns the counts. Must run inside a tokio runtime (timers and net enabled).
    pub async fn run(self, duration: Duration, stop: &AtomicBool) -> Result<PollStats> {
        let cfg = self.cfg;
        let to_tokio = |s: Option<StdUdp>| -> Result<Option<UdpSocket>> {
            s.map(|s| UdpSocket::from_std(s).context("registering a socket"))
                .transpose()
        };
        let [s4, s6] = self.snmp;
        let [i4, i6] = self.icmp;
        let parse =
            |v: &[String]| -> Result<Vec<Oid>> { v.iter().map(|s| Ok(Oid::parse(s)?)).collect() };
        let sh = Arc::new(Shared {
            community: cfg.community.as_bytes().to_vec(),
            system_oids: parse(&SYSTEM_OIDS.map(String::from))?,
            walk_roots: parse(&cfg.walk_roots)?,
            uptime: Oid::parse(SYS_UPTIME)?,
            index: cfg
                .targets
                .iter()
                .enumerate()
                .map(|(i, a)| (*a, i))
                .collect(),
            nodes: cfg.targets.iter().map(|_| NodeAtomics::default()).collect(),
            snmp: [to_tokio(s4)?, to_tokio(s6)?],
            icmp: [to_tokio(i4)?, to_tokio(i6)?],
            snmp_pending: Mutex::new(HashMap::new()),
            icmp_pending: Mutex::new(HashMap::new()),
            next_request_id: AtomicU32::new(rand::random::<u32>() & 0x3fff_ffff),
            limiter: cfg.rate_limit.map(|r| Limiter {
                interval: Duration::from_secs_f64(1.0 / r),
                next: Mutex::new(Instant::now()),
            }),
            stopping: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            stop_notify: Notify::new(),
            unknown_sources: AtomicU64::new(0),
            cfg,
        });
        let replies = Arc::new(ReplyBox::default());
        let (shut_tx, shut_rx) = watch::channel(false);
        let mut receivers = JoinSet::new();
        for f in 0..2 {
            receivers.spawn(snmp_receiver(
                Arc::clone(&sh),
                Arc::clone(&replies),
                f,
                shut_rx.clone(),
            ));
            receivers.spawn(icmp_receiver(Arc::clone(&sh), f, shut_rx.clone()));
        }

        let start = Instant::now();
        let deadline = start + duration;
        let mut jobs = JoinSet::new();
        let inflight = Arc::new(Semaphore::new(sh.cfg.max_inflight));
        let (issued, behind) = if let Some((rate, kinds)) = sh.cfg.fixed_rate.clone() {
            let total = (rate * duration.as_secs_f64()).round() as u64;
            fixed_rate(
                &sh,
                &mut jobs,
                &inflight,
                (rate, total),
                &kinds,
                start,
                stop,
            )
            .await
        } else {
            cycles(&sh, &replies, &mut jobs, &inflight, deadline, stop).await
        };
        let elapsed = start.elapsed();
        if stop.load(Ordering::Relaxed) {
            sh.aborted.store(true, Ordering::SeqCst);
        }
        sh.stopping.store(true, Ordering::SeqCst);
        sh.stop_notify.notify_waiters();
        // Every job ends: each request is bounded by its timeout and retries, and once
        // `stopping` is set only the first request of a started poll may still go out.
        while jobs.join_next().await.is_some() {}
        sleep(sh.cfg.linger).await;
        let _ = shut_tx.send(true);
        while receivers.join_next().await.is_some() {}

        Ok(PollStats {
            elapsed,
            nodes: sh
                .cfg
                .targets
                .iter()
                .zip(&sh.nodes)
                .map(|(a, n)| (*a, n.snapshot()))
                .collect(),
            unknown_sources: sh.unknown_sources.load(Ordering::Relaxed),
            jobs: issued,
            behind,
            rate: sh.cfg.fixed_rate.as_ref().map(|(r, _)| *r),
        })
    }
}

/// Sleeps until `until` in slices, false when `stop` was set meanwhile.
async fn wait_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        sleep_until(until.min(now + Duration::from_millis(50))).await;
    }
}

/// The NMIS-like schedule: every node's polls at even offsets within their periods.
/// Returns (jobs started, 0).
async fn cycles(
    sh: &Arc<Shared>,
    replies: &Arc<ReplyBox>,
    jobs: &mut JoinSet<()>,
    inflight: &Arc<Semaphore>,
    deadline: Instant,
    stop: &AtomicBool,
) -> (u64, u64) {
    let cfg = &sh.cfg;
    let n = cfg.targets.len() as u32;
    let start = Instant::now();
    let mut heap: BinaryHeap<Reverse<(Instant, Job)>> = BinaryHeap::new();
    let period = |j: &Job| match j {
        Job::Snmp(_) => cfg.cycle.unwrap_or(Duration::MAX),
        Job::Ping(_) => cfg.ping_every.unwrap_or(Duration::MAX),
        Job::Tcp(..) => cfg.tcp_every,
    };
    let ports = cfg.tcp_ports.len() as u32;
    for i in 0..cfg.targets.len() {
        let iu = i as u32;
        if let Some(c) = cfg.cycle {
            heap.push(Reverse((start + c * iu / n, Job::Snmp(i))));
        }
        if let Some(p) = cfg.ping_every {
            heap.push(Reverse((start + p * iu / n, Job::Ping(i))));
        }
        for (k, &port) in cfg.tcp_ports.iter().enumerate() {
            let slot = cfg.tcp_every * (iu * ports + k as u32) / (n * ports);
            heap.push(Reverse((start + slot, Job::Tcp(i, port))));
        }
    }
    let mut issued = 0u64;
    // Bounded by the deadline: every pass either waits towards a due time or starts a job
    // and reschedules it one period later.
    while let Some(Reverse((due, job))) = heap.pop() {
        while jobs.try_join_next().is_some() {}
        if due >= deadline || !wait_until(due, stop).await {
            break;
        }
        let permit = tokio::select! {
            p = Arc::clone(inflight).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = sleep_until(deadline) => break,
        };
        let (sh2, rb) = (Arc::clone(sh), Arc::clone(replies));
        jobs.spawn(async move {
            let _permit = permit;
            match job {
                Job::Snmp(i) => sh2.snmp_poll(i, sh2.cfg.targets[i], &rb).await,
                Job::Ping(i) => {
                    sh2.ping(i, sh2.cfg.targets[i], sh2.cfg.retries).await;
                }
                Job::Tcp(i, port) => sh2.tcp_check(i, sh2.cfg.targets[i], port).await,
            }
        });
        issued += 1;
        if let Some(next) = due.checked_add(period(&job)) {
            heap.push(Reverse((next, job)));
        }
    }
    (issued, 0)
}

/// Fixed rate: `total` single requests, no retries, round robin over nodes and kinds, paced by
/// the clock (the k-th request is due at k / rate). Returns (started, dropped as behind).
async fn fixed_rate(
    sh: &Arc<Shared>,
    jobs: &mut JoinSet<()>,
    inflight: &Arc<Semaphore>,
    (rate, total): (f64, u64),
    kinds: &[Kind],
    start: Instant,
    stop: &AtomicBool,
) -> (u64, u64) {
    let n = sh.cfg.targets.len() as u64;
    let k = kinds.len() as u64;
    let (mut issued, mut behind, mut next) = (0u64, 0u64, 0u64);
    // Bounded by `total` requests; the last is due at (total - 1) / rate, before the end.
    while next < total && !stop.load(Ordering::Relaxed) {
        while jobs.try_join_next().is_some() {}
        let due = ((start.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
        while next < due {
            let Ok(permit) = Arc::clone(inflight).try_acquire_owned() else {
                // Full: what is due now is dropped and counted, never sent late in a burst.
                behind += due - next;
                next = due;
                break;
            };
            let kind = kinds[(next % k) as usize];
            let i = ((next / k) % n) as usize;
            let sh2 = Arc::clone(sh);
            jobs.spawn(async move {
                let _permit = permit;
                let addr = sh2.cfg.targets[i];
                match kind {
                    Kind::Snmp => {
                        let community = &sh2.community;
                        let oid = std::slice::from_ref(&sh2.uptime);
                        sh2.snmp_request(i, addr, 0, true, |id| {
                            Message::request(PduKind::Get, community, id, oid)
                        })
                        .await;
                    }
                    Kind::Icmp => {
                        sh2.ping(i, addr, 0).await;
                    }
                    Kind::Tcp => sh2.tcp_check(i, addr, sh2.cfg.tcp_ports[0]).await,
                }
            });
            issued += 1;
            next += 1;
        }
        tokio::task::yield_now().await;
        if next >= due {
            sleep(Duration::from_micros(500)).await;
        }
    }
    (issued, behind)
}
