//! A userspace WAN emulator between two network namespaces: what `tc netem delay/loss/rate`
//! would do, for kernels without sch_netem (the CI kernel has none).
//!
//! ```text
//!  a [a_if] <-veth-> [wan_a] wan [wan_b] <-veth-> [b_if] b
//!                     \____ WanLink ____/
//! ```
//!
//! A [`WanLink`] bridges two interfaces of the `wan` namespace with one thread per way. Each
//! frame read (AF_PACKET, with the virtio-net header so checksum offload state travels on)
//! goes through, in this order:
//!
//! 1. **cut**: while the way is cut every frame is dropped (`dropped_cut`);
//! 2. **loss**: dropped with probability `loss` from a seeded RNG (`dropped_loss`), so a run
//!    with the same seed and the same frames drops the same ones;
//! 3. **rate**: a serialising transmitter of `rate_bps` bits/s (frame bytes, Ethernet header
//!    included, as tbf and netem count `skb->len`) with a queue of at most `queue_bytes`;
//!    a frame that does not fit is tail-dropped (`dropped_queue`);
//! 4. **delay**: held for `delay` ± a uniform `jitter` after it left the transmitter, without
//!    reordering (a frame is never released before the one in front of it);
//! 5. written out of the other interface. Frames in flight when the way is cut are lost too,
//!    like frames on a cut fibre.
//!
//! The rate limit is in userspace rather than tbf so that all four stages share one clock
//! and one set of counters; it is exact to the frame (the departure time of every frame is
//! computed, not sampled) and timer slack is set to 10 µs.
//!
//! Bounds: at most [`MAX_HELD_BYTES`] bytes of frames are held per way (beyond that frames
//! are dropped and counted as `dropped_overflow`); each thread wakes at least every 20 ms
//! to notice a stop request; Drop stops and joins both threads.
//!
//! [`WanPair`] builds the whole topology: namespaces `a` and `b` (IPv4 only, permanent
//! neighbours, so the only frames on the link are the tests' own) joined through `wan`.
//! GSO is turned off on the end interfaces (`gso_max_segs 1`), so a UDP GSO send (quinn
//! uses it) crosses the emulator as separate datagrams and loss hits datagrams, not bursts.

use std::{
    collections::VecDeque,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::netns::{
    NetNs, VIRTIO_NET_HDR_F_DATA_VALID, VNET_HDR_LEN, Veth, packet_socket, unique_base,
};

/// Frame bytes held (queued or delayed) per way at most.
pub const MAX_HELD_BYTES: usize = 64 << 20;

/// Default rate-limiter queue: 256 KiB, about 100 ms at 20 Mbit/s.
pub const DEFAULT_QUEUE_BYTES: usize = 256 << 10;

/// Frames read per wake-up before due frames are sent again, so a flood cannot starve the
/// delay line.
const RECV_BATCH: usize = 64;

/// One way through a [`WanLink`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Frames from `a` to `b`.
    AtoB = 0,
    /// Frames from `b` to `a`.
    BtoA = 1,
}

impl Way {
    pub const BOTH: [Way; 2] = [Way::AtoB, Way::BtoA];
}

/// What one way of the link does to frames. The default passes everything at once.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkConfig {
    /// One-way delay added to every frame.
    pub delay: Duration,
    /// Uniform jitter: each frame's delay is `delay ± jitter` (never below zero, never
    /// reordering).
    pub jitter: Duration,
    /// Share of frames dropped at random, 0.0 to 1.0.
    pub loss: f64,
    /// Bits per second of frame bytes (Ethernet header included); `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes the rate limiter queues at most; a frame that does not fit is dropped.
    pub queue_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            rate_bps: None,
            queue_bytes: DEFAULT_QUEUE_BYTES,
        }
    }
}

impl LinkConfig {
    /// The lab's WAN (issue 6): 40 ms each way (80 ms round trip), 0.5% loss, 20 Mbit/s.
    pub fn lab() -> Self {
        Self::default()
            .delay(Duration::from_millis(40))
            .loss(0.005)
            .rate(20_000_000)
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn jitter(mut self, j: Duration) -> Self {
        self.jitter = j;
        self
    }

    pub fn loss(mut self, share: f64) -> Self {
        self.loss = share;
        self
    }

    pub fn rate(mut self, bits_per_sec: u64) -> Self {
        self.rate_bps = Some(bits_per_sec);
        self
    }

    pub fn queue(mut self, bytes: usize) -> Self {
        self.queue_bytes = bytes;
        self
    }

    fn check(&self) -> Result<()> {
        ensure!(
            (0.0..=1.0).contains(&self.loss),
            "loss {} is not a share between 0 and 1",
            self.loss
        );
        ensure!(self.rate_bps != Some(0), "a rate of 0 bit/s passes nothing");
        ensure!(
            self.delay + self.jitter <= Duration::from_secs(60),
            "delay plus jitter above 60 s"
        );
        Ok(())
    }
}

/// Live counters of one way.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_cut: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_overflow: AtomicU64,
    send_errors: AtomicU64,
    socket_drops: AtomicU64,
    gso_frames: AtomicU64,
    queued_max_bytes: AtomicU64,
    held_max_frames: AtomicU64,
}

/// A snapshot of one way's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WayStats {
    /// Frames written out of the far side, and their bytes (without the virtio-net header).
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Frames dropped while the way was cut (on arrival or while held).
    pub dropped_cut: u64,
    /// Frames dropped by the random loss.
    pub dropped_loss: u64,
    /// Frames tail-dropped by the rate limiter's full queue.
    pub dropped_queue: u64,
    /// Frames dropped because [`MAX_HELD_BYTES`] were already held.
    pub dropped_overflow: u64,
    /// Frames whose send(2) failed.
    pub send_errors: u64,
    /// Frames the kernel dropped before the emulator read them (PACKET_STATISTICS): the
    /// emulator did not keep up. Any value above 0 means a measurement is not trustworthy.
    pub socket_drops: u64,
    /// GSO super-frames seen (forwarded whole); 0 when the ends have GSO off.
    pub gso_frames: u64,
    /// Largest rate-limiter backlog seen, in bytes.
    pub queued_max_bytes: u64,
    /// Most frames held at once (queued plus delayed).
    pub held_max_frames: u64,
}

impl WayStats {
    /// Every frame dropped on purpose or by accident.
    pub fn dropped(&self) -> u64 {
        self.dropped_cut
            + self.dropped_loss
            + self.dropped_queue
            + self.dropped_overflow
            + self.send_errors
    }
}

impl Counters {
    fn snapshot(&self) -> WayStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        WayStats {
            forwarded: g(&self.forwarded),
            forwarded_bytes: g(&self.forwarded_bytes),
            dropped_cut: g(&self.dropped_cut),
            dropped_loss: g(&self.dropped_loss),
            dropped_queue: g(&self.dropped_queue),
            dropped_overflow: g(&self.dropped_overflow),
            send_errors: g(&self.send_errors),
            socket_drops: g(&self.socket_drops),
            gso_frames: g(&self.gso_frames),
            queued_max_bytes: g(&self.queued_max_bytes),
            held_max_frames: g(&self.held_max_frames),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the control handle and one way's thread.
#[derive(Default)]
struct WayShared {
    config: Mutex<LinkConfig>,
    /// Bumped on every config change, so the thread copies the config only then.
    generation: AtomicU64,
    cut: AtomicBool,
    counters: Counters,
}

/// The emulator: two threads, one per way, between two interfaces of one namespace.
pub struct WanLink {
    ways: [Arc<WayShared>; 2],
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl WanLink {
    /// Bridges `a` and `b`, two interfaces of `ns` (up, no addresses), passing everything
    /// until configured. `seed` seeds the loss of both ways (each way its own stream).
    pub fn start(ns: &NetNs, a: &str, b: &str, seed: u64) -> Result<Self> {
        ns.ip(&["link", "set", a, "promisc", "on"])?;
        ns.ip(&["link", "set", b, "promisc", "on"])?;
        let (fa, fb) = ns.in_thread(|| Ok((packet_socket(a)?, packet_socket(b)?)))?;
        let (fa, fb) = (Arc::new(fa), Arc::new(fb));
        let mut link = Self {
            ways: Default::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for (from, to, way) in [
            (Arc::clone(&fa), Arc::clone(&fb), Way::AtoB),
            (fb, fa, Way::BtoA),
        ] {
            let shared = Arc::clone(&link.ways[way as usize]);
            let stop = Arc::clone(&link.stop);
            let rng =
                StdRng::seed_from_u64(seed ^ (way as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            // On failure Drop stops the thread already started.
            link.threads.push(
                thread::Builder::new()
                    .name(format!("wan-{way:?}"))
                    .spawn(move || Pump::new(&from, &to, &shared, rng).run(&stop))
                    .context("starting a WAN thread")?,
            );
        }
        Ok(link)
    }

    /// Sets what one way does to frames from now on (frames already held keep their times).
    pub fn set(&self, way: Way, config: LinkConfig) -> Result<()> {
        config.check()?;
        let w = &self.ways[way as usize];
        *w.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        w.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Sets both ways alike.
    pub fn set_both(&self, config: LinkConfig) -> Result<()> {
        for way in Way::BOTH {
            self.set(way, config.clone())?;
        }
        Ok(())
    }

    pub fn config(&self, way: Way) -> LinkConfig {
        self.ways[way as usize]
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cuts (true) or heals (false) one way. While cut, every frame is dropped, including
    /// frames already held.
    pub fn set_cut(&self, way: Way, cut: bool) {
        self.ways[way as usize].cut.store(cut, Ordering::SeqCst);
    }

    /// Cuts both ways: the link is down.
    pub fn cut(&self) {
        Way::BOTH.into_iter().for_each(|w| self.set_cut(w, true));
    }

    /// Heals both ways.
    pub fn heal(&self) {
        Way::BOTH.into_iter().for_each(|w| self.set_cut(w, false));
    }

    pub fn is_cut(&self, way: Way) -> bool {
        self.ways[way as usize].cut.load(Ordering::SeqCst)
    }

    /// The counters of one way so far.
    pub fn stats(&self, way: Way) -> WayStats {
        self.ways[way as usize].counters.snapshot()
    }

    /// Stops both threads and returns the final counters (a→b, b→a). Frames still held are
    /// discarded.
    pub fn stop(mut self) -> [WayStats; 2] {
        self.join();
        [self.stats(Way::AtoB), self.stats(Way::BtoA)]
    }

    fn join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.join();
    }
}

/// One way's forwarding loop and its state; only its thread touches it.
struct Pump<'a> {
    from: &'a OwnedFd,
    to: &'a OwnedFd,
    shared: &'a WayShared,
    rng: StdRng,
    config: LinkConfig,
    generation: u64,
    /// When the rate limiter's transmitter has sent everything queued so far.
    link_free_at: Instant,
    /// Release time of the last frame held: no frame is released before it (no reordering).
    last_due: Instant,
    held: VecDeque<(Instant, Vec<u8>)>,
    held_bytes: usize,
    next_socket_stats: Instant,
}

impl<'a> Pump<'a> {
    fn new(from: &'a OwnedFd, to: &'a OwnedFd, shared: &'a WayShared, rng: StdRng) -> Self {
        let now = Instant::now();
        Self {
            from,
            to,
            shared,
            rng,
            config: LinkConfig::default(),
            generation: u64::MAX,
            link_free_at: now,
            last_due: now,
            held: VecDeque::new(),
            held_bytes: 0,
            next_socket_stats: now,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        // Timers a few µs late rather than the default 50 µs: the delay is the point here.
        // SAFETY: prctl(2) on this thread only.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 10_000 as libc::c_ulong) };
        let mut buf = vec![0u8; VNET_HDR_LEN + 65_536];
        while !stop.load(Ordering::Relaxed) {
            self.refresh_config();
            let now = Instant::now();
            self.release(now);
            if now >= self.next_socket_stats {
                self.read_socket_stats();
                self.next_socket_stats = now + Duration::from_millis(100);
            }
            let wait = self
                .held
                .front()
                .map(|(due, _)| due.saturating_duration_since(now))
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(20));
            if !self.wait_readable(wait) {
                continue;
            }
            // A change made while this thread slept applies to the frames that woke it.
            self.refresh_config();
            for _ in 0..RECV_BATCH {
                let Some(n) = self.recv(&mut buf) else { break };
                self.admit(&buf[..n]);
            }
        }
        self.read_socket_stats();
    }

    fn refresh_config(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.config = self
                .shared
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            self.generation = generation;
        }
    }

    /// Sends (or, while cut, drops) every held frame that is due.
    fn release(&mut self, now: Instant) {
        let c = &self.shared.counters;
        while self.held.front().is_some_and(|(due, _)| *due <= now) {
            let Some((_, mut frame)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= frame.len();
            if self.shared.cut.load(Ordering::Relaxed) {
                bump(&c.dropped_cut);
                continue;
            }
            self.send(&mut frame);
        }
    }

    fn send(&self, frame: &mut [u8]) {
        let c = &self.shared.counters;
        // "Checksum verified" is receive-only information; NEEDS_CSUM travels on.
        frame[0] &= !VIRTIO_NET_HDR_F_DATA_VALID;
        // SAFETY: send(2) from a valid buffer on an open socket.
        let n = unsafe {
            libc::send(
                self.to.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        if n < 0 {
            bump(&c.send_errors);
        } else {
            bump(&c.forwarded);
            c.forwarded_bytes
                .fetch_add((frame.len() - VNET_HDR_LEN) as u64, Ordering::Relaxed);
        }
    }

    /// Applies cut, loss, rate and delay to one frame just read (virtio-net header first).
    fn admit(&mut self, frame: &[u8]) {
        let c = &self.shared.counters;
        let now = Instant::now();
        if frame[1] != 0 {
            bump(&c.gso_frames);
        }
        if self.shared.cut.load(Ordering::Relaxed) {
            bump(&c.dropped_cut);
            return;
        }
        if self.config.loss > 0.0 && self.rng.random::<f64>() < self.config.loss {
            bump(&c.dropped_loss);
            return;
        }
        let wire_len = (frame.len() - VNET_HDR_LEN) as u64;
        let departs = match self.config.rate_bps {
            None => now,
            Some(rate) => {
                let start = self.link_free_at.max(now);
                // Bytes still queued in front of this frame, from the transmitter's backlog.
                let backlog = (start - now).as_nanos() * u128::from(rate) / 8_000_000_000;
                let queued = backlog as u64 + wire_len;
                if queued > self.config.queue_bytes as u64 {
                    bump(&c.dropped_queue);
                    return;
                }
                c.queued_max_bytes.fetch_max(queued, Ordering::Relaxed);
                let tx_ns = u128::from(wire_len) * 8_000_000_000 / u128::from(rate);
                self.link_free_at = start + Duration::from_nanos(tx_ns as u64);
                self.link_free_at
            }
        };
        let mut delay = self.config.delay;
        if !self.config.jitter.is_zero() {
            let j = self.config.jitter.as_nanos() as i128;
            let offset = self.rng.random_range(-j..=j);
            let ns = (delay.as_nanos() as i128 + offset).max(0);
            delay = Duration::from_nanos(ns as u64);
        }
        let due = (departs + delay).max(self.last_due);
        if due <= now && self.held.is_empty() {
            let mut f = frame.to_vec();
            self.send(&mut f);
            return;
        }
        if self.held_bytes + frame.len() > MAX_HELD_BYTES {
            bump(&c.dropped_overflow);
            return;
        }
        self.last_due = due;
        self.held_bytes += frame.len();
        self.held.push_back((due, frame.to_vec()));
        c.held_max_frames
            .fetch_max(self.held.len() as u64, Ordering::Relaxed);
    }

    fn wait_readable(&self, wait: Duration) -> bool {
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: self.from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: ppoll(2) on one valid pollfd.
        unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) > 0 }
    }

    /// One frame (with its virtio-net header) that arrived on `from`, if any is waiting.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom(2) into buffers owned here.
            let n = unsafe {
                libc::recvfrom(
                    self.from.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n <= VNET_HDR_LEN as isize {
                return None;
            }
            // Our own sends on this interface are not input.
            if sll.sll_pkttype != libc::PACKET_OUTGOING {
                return Some(n as usize);
            }
        }
    }

    /// Adds the kernel's drop count of the receiving socket (reading it resets it).
    fn read_socket_stats(&self) {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt(2) into a struct of the size given.
        let r = unsafe {
            libc::getsockopt(
                self.from.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                &mut st as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        if r == 0 {
            self.shared
                .counters
                .socket_drops
                .fetch_add(u64::from(st.tp_drops), Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Two hosts across the emulator.

/// Fixed, locally administered MACs of the two ends, so neighbours can be permanent.
const A_MAC: &str = "02:6f:77:00:00:01";
const B_MAC: &str = "02:6f:77:00:00:02";

/// Addresses of a [`WanPair`]'s two ends (one /24 from 198.18.0.0/15).
#[derive(Clone, Debug)]
pub struct WanPairConfig {
    /// Short tag in every name.
    pub tag: String,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
    /// Seeds the link's random loss.
    pub seed: u64,
}

impl WanPairConfig {
    /// `a` = 198.19.254.1, `b` = 198.19.254.2 (outside the sites' device range).
    pub fn new(tag: &str, seed: u64) -> Self {
        Self {
            tag: tag.to_string(),
            a_addr: Ipv4Addr::new(198, 19, 254, 1),
            b_addr: Ipv4Addr::new(198, 19, 254, 2),
            seed,
        }
    }
}

/// Two hosts (`a`, `b`) whose only connection is a [`WanLink`] in the `wan` namespace. Both
/// have IPv6 off and permanent neighbours, so nothing but the test's traffic crosses. Drop
/// stops the emulator, then deletes the namespaces (and with them the veths and any process
/// left inside).
pub struct WanPair {
    // Field order is drop order: the emulator stops before its namespace goes.
    pub link: WanLink,
    _links: Vec<Veth>,
    pub a: NetNs,
    pub wan: NetNs,
    pub b: NetNs,
    pub a_if: String,
    pub b_if: String,
    pub a_addr: Ipv4Addr,
    pub b_addr: Ipv4Addr,
}

impl WanPair {
    pub fn new(cfg: &WanPairConfig) -> Result<Self> {
        for addr in [cfg.a_addr, cfg.b_addr] {
            let o = addr.octets();
            ensure!(
                o[0] == 198 && (o[1] & 0xfe) == 18,
                "{addr} is outside 198.18.0.0/15"
            );
        }
        let a = NetNs::new(&format!("{}-a", cfg.tag))?;
        let wan = NetNs::new(&format!("{}-w", cfg.tag))?;
        let b = NetNs::new(&format!("{}-b", cfg.tag))?;
        for ns in [&a, &wan, &b] {
            ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
            ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        }
        let base = unique_base("w");
        let (a_if, wan_a, wan_b, b_if) = (
            format!("{base}a"),
            format!("{base}y"),
            format!("{base}z"),
            format!("{base}b"),
        );
        let links = vec![
            Veth::new(&a, &a_if, Some(A_MAC), &wan, &wan_a, None)?,
            Veth::new(&wan, &wan_b, None, &b, &b_if, Some(B_MAC))?,
        ];
        let link = WanLink::start(&wan, &wan_a, &wan_b, cfg.seed)?;
        for (ns, dev, me, peer, peer_mac) in [
            (&a, &a_if, cfg.a_addr, cfg.b_addr, B_MAC),
            (&b, &b_if, cfg.b_addr, cfg.a_addr, A_MAC),
        ] {
            ns.ip_batch(&[
                format!("addr add {me}/24 dev {dev}"),
                // Segment GSO sends in the sender's kernel: the emulator sees real datagrams.
                format!("link set dev {dev} gso_max_segs 1"),
                format!("neigh replace {peer} lladdr {peer_mac} dev {dev} nud permanent"),
            ])?;
        }
        Ok(Self {
            link,
            _links: links,
            a,
            wan,
            b,
            a_if,
            b_if,
            a_addr: cfg.a_addr,
            b_addr: cfg.b_addr,
        })
    }
}

/// A UDP socket created (and bound to `bind`) inside `ns`; it stays there whatever thread
/// uses it later.
pub fn udp_socket(ns: &NetNs, bind: SocketAddr) -> Result<UdpSocket> {
    ns.in_thread(|| UdpSocket::bind(bind).with_context(|| format!("binding UDP {bind}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked() {
        assert!(LinkConfig::lab().check().is_ok());
        assert!(LinkConfig::default().loss(1.5).check().is_err());
        assert!(LinkConfig::default().loss(-0.1).check().is_err());
        assert!(LinkConfig::default().rate(0).check().is_err());
        assert!(
            LinkConfig::default()
                .delay(Duration::from_secs(61))
                .check()
                .is_err()
        );
        let lab = LinkConfig::lab();
        assert_eq!(
            (lab.delay, lab.loss, lab.rate_bps),
            (Duration::from_millis(40), 0.005, Some(20_000_000))
        );
    }
}
