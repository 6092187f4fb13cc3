//! End to end without sockets: a poller (replay log + sender) and a receiver (receiver +
//! store) over an in-memory channel that loses, delays, reorders and duplicates frames, with
//! random disconnects, receiver crashes (pending stores lost), poller restarts (new epoch)
//! and log truncation behind the cursor. 10,000 seeded scenarios.
//!
//! Checked at every step: an ack never covers a record that is not in the store; the cursor
//! never passes a record that is not in the store. At the end, after the network heals:
//! every record the poller logged is stored exactly once under its (epoch, seq), with its
//! bytes, and nothing else is stored.

mod common;

use common::Rng;
use opha_bus::compress::Compression;
use opha_bus::message::{Batch, BusFrame, BusMessage, EpochStart};
use opha_bus::receiver::{PollerState, Receiver, ReceiverConfig, ReceiverOutput, Store};
use opha_bus::sender::{Sender, SenderConfig, SenderEvent};
use opha_bus::{MILLI, Nanos};
use std::collections::{BTreeMap, VecDeque};

const SCENARIOS: u64 = 10_000;

struct Link {
    /// (deliver at, frame), in send order; delivery picks due frames in random order.
    queue: Vec<(Nanos, Vec<u8>)>,
}

impl Link {
    fn new() -> Self {
        Self { queue: Vec::new() }
    }

    fn send(&mut self, rng: &mut Rng, now: Nanos, frame: Vec<u8>, lossy: bool) {
        if lossy && rng.one_in(20) {
            return; // lost
        }
        let copies = if lossy && rng.one_in(20) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = if lossy { rng.below(8) * MILLI } else { MILLI };
            self.queue.push((now + delay, frame.clone()));
        }
    }

    fn take_due(&mut self, rng: &mut Rng, now: Nanos) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.queue.len() {
            if self.queue[i].0 <= now {
                due.push(self.queue.swap_remove(i).1);
            } else {
                i += 1;
            }
        }
        // Reorder what is due.
        for j in (1..due.len()).rev() {
            due.swap(j, rng.below(j as u64 + 1) as usize);
        }
        due
    }
}

struct Sim {
    rng: Rng,
    seed: u64,
    now: Nanos,
    frame: BusFrame,
    // poller
    log: Vec<Vec<u8>>,
    /// The epoch each record was appended in.
    log_epochs: Vec<u64>,
    oldest: u64,
    log_cursor: u64,
    epochs: Vec<EpochStart>,
    sender: Sender,
    scfg: SenderConfig,
    // receiver
    durable_state: PollerState,
    stored: BTreeMap<(u64, u64), (Vec<u8>, u32)>,
    receiver: Option<Receiver>,
    pending_stores: VecDeque<(Nanos, Store)>,
    // network
    up: bool,
    reconnect_at: Nanos,
    to_receiver: Link,
    to_poller: Link,
    lossy: bool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    restarts: u64,
    disconnects: u64,
    crashes: u64,
    duplicates: u64,
}

fn payload(epoch: u64, seq: u64) -> Vec<u8> {
    let mut p = format!("record e{epoch} s{seq} ").into_bytes();
    p.resize(20 + (seq % 40) as usize, b'x');
    p
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let scfg = SenderConfig {
            max_batch_records: 1 + rng.below(16),
            max_batch_bytes: 64 + rng.below(2048) as usize,
            linger: rng.below(3) * MILLI,
            window_records: 32 + rng.below(64),
            replay_bytes_per_sec: if rng.one_in(2) { 0 } else { 200_000 },
            replay_records_per_sec: if rng.one_in(2) { 0 } else { 5_000 },
            replay_burst: 10 * MILLI,
            retransmit_after: 40 * MILLI,
            compression: if rng.one_in(10) {
                Compression::Zstd { level: 1 }
            } else {
                Compression::Off
            },
        };
        let epochs = vec![EpochStart { epoch: 1, start: 0 }];
        let sender = Sender::new(scfg.clone(), epochs.clone(), 0, 0, 0, 0).unwrap();
        Self {
            rng,
            seed,
            now: 0,
            frame: BusFrame::default(),
            log: Vec::new(),
            log_epochs: Vec::new(),
            oldest: 0,
            log_cursor: 0,
            epochs,
            sender,
            scfg,
            durable_state: PollerState::default(),
            stored: BTreeMap::new(),
            receiver: None,
            pending_stores: VecDeque::new(),
            up: false,
            reconnect_at: 0,
            to_receiver: Link::new(),
            to_poller: Link::new(),
            lossy: true,
            stats: Stats::default(),
        }
    }

    fn is_stored(&self, epoch: u64, seq: u64) -> bool {
        self.stored.contains_key(&(epoch, seq))
    }

    fn connect(&mut self) {
        self.up = true;
        self.receiver = Some(Receiver::new(
            ReceiverConfig {
                max_ahead: 1 << 16,
                ..ReceiverConfig::default()
            },
            self.durable_state.clone(),
        ));
        let hello = self.sender.connect();
        let f = self.frame.encode(&hello).unwrap();
        // The handshake rides the same (reliable within a connection) stream; it may be slow.
        self.to_receiver.send(&mut self.rng, self.now, f, false);
    }

    /// The connection drops. With `crash`, the receiver also loses its uncommitted stores;
    /// otherwise it settles them (commits) first, as a driver does before serving again.
    fn disconnect(&mut self, crash: bool) {
        self.up = false;
        self.to_receiver.queue.clear();
        self.to_poller.queue.clear();
        self.sender.disconnected();
        if crash {
            self.pending_stores.clear();
            self.stats.crashes += 1;
        } else {
            while !self.pending_stores.is_empty() {
                self.commit_one();
            }
        }
        if let Some(rx) = self.receiver.take() {
            self.stats.duplicates += rx.stats().duplicates;
        }
        self.reconnect_at = self.now + self.rng.below(30) * MILLI;
        self.stats.disconnects += 1;
    }

    fn restart_poller(&mut self) {
        if self.up {
            let crash = self.rng.one_in(2);
            self.disconnect(crash);
        }
        let head = self.log.len() as u64;
        let epoch = self.epochs.last().unwrap().epoch + 1 + self.rng.below(2);
        self.epochs.push(EpochStart { epoch, start: head });
        // Epochs entirely below the oldest record are dropped from the table.
        while self.epochs.len() > 1 && self.epochs[1].start <= self.oldest {
            self.epochs.remove(0);
        }
        self.sender = Sender::new(
            self.scfg.clone(),
            self.epochs.clone(),
            self.oldest,
            self.log_cursor,
            head,
            self.now,
        )
        .unwrap();
        self.stats.restarts += 1;
    }

    fn append(&mut self, n: u64) {
        for _ in 0..n {
            let seq = self.log.len() as u64;
            let e = self.epochs.last().unwrap().epoch;
            self.log.push(payload(e, seq));
            self.log_epochs.push(e);
        }
        self.sender.appended(self.log.len() as u64, self.now);
    }

    fn send_batches(&mut self) {
        while let Some(plan) = self.sender.poll_transmit(self.now) {
            let mut bytes = 0usize;
            let mut recs = Vec::new();
            for seq in plan.first..plan.first + plan.max_records {
                let p = &self.log[seq as usize];
                if !recs.is_empty() && bytes + p.len() > plan.max_bytes {
                    break;
                }
                assert_eq!(
                    self.log_epochs[seq as usize], plan.epoch,
                    "seed {}",
                    self.seed
                );
                bytes += p.len();
                recs.push((seq, p.as_slice()));
            }
            let n = recs.len() as u64;
            let batch = Batch::build(plan.epoch, recs, self.scfg.compression).unwrap();
            let f = self.frame.encode(&BusMessage::Batch(batch)).unwrap();
            self.sender.on_sent(&plan, n, f.len() as u64, self.now);
            let lossy = self.lossy;
            self.to_receiver.send(&mut self.rng, self.now, f, lossy);
        }
    }

    fn receiver_outputs(&mut self, outs: Vec<ReceiverOutput>) {
        for o in outs {
            match o {
                ReceiverOutput::Transmit(msg) => {
                    if let BusMessage::Ack(a) = &msg {
                        // Acks never precede durability.
                        let start = self.durable_state.epochs[&a.epoch].start;
                        for seq in start..a.next {
                            assert!(
                                self.is_stored(a.epoch, seq),
                                "seed {}: ack covers ({}, {seq}) not stored",
                                self.seed,
                                a.epoch
                            );
                        }
                        for r in a.sack.iter() {
                            for seq in r {
                                assert!(self.is_stored(a.epoch, seq), "seed {}", self.seed);
                            }
                        }
                    }
                    if let BusMessage::Refuse(r) = &msg {
                        panic!("seed {}: honest traffic refused: {r:?}", self.seed);
                    }
                    let f = self.frame.encode(&msg).unwrap();
                    let lossy = self.lossy && !matches!(msg, BusMessage::HelloAck(_));
                    self.to_poller.send(&mut self.rng, self.now, f, lossy);
                }
                ReceiverOutput::Store(s) => {
                    let at = self.now + self.rng.below(5) * MILLI;
                    self.pending_stores.push_back((at, s));
                }
                ReceiverOutput::Close => panic!("seed {}: closed", self.seed),
            }
        }
    }

    /// The store commits the oldest pending store (records and dedupe state together).
    fn commit_one(&mut self) {
        let Some((_, s)) = self.pending_stores.pop_front() else {
            return;
        };
        for e in &s.entries {
            let slot = self
                .stored
                .entry((s.epoch, e.seq))
                .or_insert((e.payload.0.clone(), 0));
            slot.1 += 1;
            assert_eq!(
                slot.1, 1,
                "seed {}: ({}, {}) stored twice",
                self.seed, s.epoch, e.seq
            );
            assert_eq!(slot.0, e.payload.0, "seed {}", self.seed);
        }
        // Before the receiver may ack: this is the transaction's dedupe state.
        let rx = self.receiver.as_mut().unwrap();
        let mut state = rx.state().clone();
        for e in &s.entries {
            state
                .epochs
                .get_mut(&s.epoch)
                .unwrap()
                .held
                .insert_one(e.seq);
        }
        self.durable_state = state;
        let outs = rx.durable(s.ticket);
        assert_eq!(rx.state(), &self.durable_state, "seed {}", self.seed);
        self.receiver_outputs(outs);
    }

    fn step(&mut self, appending: bool) {
        self.now += self.rng.below(3) * MILLI + self.rng.below(MILLI);
        if appending && self.rng.one_in(2) {
            let n = self.rng.below(4);
            self.append(n);
        }
        if appending && self.rng.one_in(150) {
            self.restart_poller();
        }
        if appending && self.up && self.rng.one_in(120) {
            let crash = self.rng.one_in(2);
            self.disconnect(crash);
        }
        if !self.up && self.now >= self.reconnect_at {
            self.connect();
        }
        if !self.up {
            return;
        }
        // Receiver side.
        for f in self.to_receiver.take_due(&mut self.rng, self.now) {
            let rx = self.receiver.as_mut().unwrap();
            let outs = rx.handle_frame(&f, self.now);
            self.receiver_outputs(outs);
        }
        while self
            .pending_stores
            .front()
            .is_some_and(|(at, _)| *at <= self.now)
        {
            self.commit_one();
        }
        // Poller side.
        for f in self.to_poller.take_due(&mut self.rng, self.now) {
            let msg = self.frame.decode(&f).unwrap();
            self.sender.handle(msg, self.now);
        }
        while let Some(ev) = self.sender.poll_event() {
            match ev {
                SenderEvent::AdvanceCursor(c) => {
                    assert!(c > self.log_cursor && c <= self.log.len() as u64);
                    for seq in self.log_cursor..c {
                        let e = self.log_epochs[seq as usize];
                        assert!(
                            self.is_stored(e, seq),
                            "seed {}: cursor passed ({e}, {seq}) not stored",
                            self.seed
                        );
                    }
                    self.log_cursor = c;
                    // The log deletes what every cursor passed, now and then.
                    if self.rng.one_in(3) {
                        self.oldest = c;
                        self.sender.truncated(c);
                    }
                }
                SenderEvent::Refused(r) => panic!("seed {}: refused {r:?}", self.seed),
            }
        }
        self.send_batches();
    }

    fn run(&mut self) {
        let steps = 100 + self.rng.below(200);
        for _ in 0..steps {
            self.step(true);
        }
        // Heal: no more faults or loss; everything must arrive.
        self.lossy = false;
        let mut guard = 0;
        while !(self.up
            && self.sender.caught_up()
            && self.pending_stores.is_empty()
            && self.to_receiver.queue.is_empty())
        {
            self.step(false);
            guard += 1;
            assert!(
                guard < 20_000,
                "seed {}: no convergence (cursor {} head {} in flight {})",
                self.seed,
                self.sender.cursor(),
                self.sender.head(),
                self.sender.in_flight()
            );
        }
        if let Some(rx) = &self.receiver {
            self.stats.duplicates += rx.stats().duplicates;
        }
        let head = self.log.len() as u64;
        assert_eq!(self.stored.len() as u64, head, "seed {}", self.seed);
        for seq in 0..head {
            let e = self.log_epochs[seq as usize];
            let (bytes, n) = self
                .stored
                .get(&(e, seq))
                .unwrap_or_else(|| panic!("seed {}: ({e}, {seq}) lost", self.seed));
            assert_eq!(*n, 1);
            assert_eq!(bytes, &payload(e, seq));
        }
    }
}

#[test]
fn every_record_stored_exactly_once_under_faults() {
    let mut totals = Stats::default();
    let mut records = 0u64;
    for seed in 0..SCENARIOS {
        let mut sim = Sim::new(0x0b05_0000_0000_0000 ^ seed);
        sim.run();
        records += sim.log.len() as u64;
        totals.restarts += sim.stats.restarts;
        totals.disconnects += sim.stats.disconnects;
        totals.crashes += sim.stats.crashes;
        totals.duplicates += sim.stats.duplicates;
    }
    println!(
        "{SCENARIOS} scenarios, {records} records, {} poller restarts, {} disconnects ({} receiver crashes), {} duplicates dropped",
        totals.restarts, totals.disconnects, totals.crashes, totals.duplicates
    );
    // The faults must actually have happened for the test to mean anything.
    assert!(totals.restarts > 1000 && totals.crashes > 1000 && totals.duplicates > 1000);
}
