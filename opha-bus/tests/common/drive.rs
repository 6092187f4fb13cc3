//! A minimal event-driven driver for one sender and an ideal receiver that acks everything
//! `ack_delay` after it was sent (durable at once), for the timing tests.

use opha_bus::Nanos;
use opha_bus::compress::Compression;
use opha_bus::message::{Ack, Batch, BusFrame, BusMessage, EpochHeld, EpochStart, HelloAck};
use opha_bus::ranges::RangeSet;
use opha_bus::sender::{Plan, Sender, SenderConfig};

pub struct Sent {
    pub at: Nanos,
    pub plan: Plan,
    pub records: u64,
    pub wire_bytes: u64,
}

pub struct Drive {
    pub sender: Sender,
    pub now: Nanos,
    pub record_len: usize,
    pub ack_delay: Nanos,
    /// (due, epoch, first, end).
    acks: Vec<(Nanos, u64, u64)>,
    pub sent: Vec<Sent>,
    /// When each seq was sent first.
    pub first_sent: Vec<Option<Nanos>>,
    frame: BusFrame,
}

impl Drive {
    /// A connected sender whose log holds `backlog` records the receiver lacks.
    pub fn new(cfg: SenderConfig, backlog: u64, record_len: usize, ack_delay: Nanos) -> Self {
        let epochs = vec![EpochStart { epoch: 1, start: 0 }];
        let mut sender = Sender::new(cfg, epochs, 0, 0, backlog, 0).unwrap();
        let _hello = sender.connect();
        sender.handle(
            BusMessage::HelloAck(HelloAck {
                epochs: vec![EpochHeld {
                    epoch: 1,
                    held: RangeSet::new(),
                }],
            }),
            0,
        );
        Self {
            sender,
            now: 0,
            record_len,
            ack_delay,
            acks: Vec::new(),
            sent: Vec::new(),
            first_sent: vec![None; backlog as usize],
            frame: BusFrame::default(),
        }
    }

    /// Appends one record now.
    pub fn append(&mut self) -> u64 {
        let seq = self.sender.head();
        self.first_sent.push(None);
        self.sender.appended(seq + 1, self.now);
        seq
    }

    /// Sends everything the sender wants to send now (building real frames).
    pub fn flush(&mut self) {
        let payload = vec![0x5a; self.record_len];
        while let Some(plan) = self.sender.poll_transmit(self.now) {
            let mut n = 0u64;
            let mut bytes = 0usize;
            while n < plan.max_records && (n == 0 || bytes + self.record_len <= plan.max_bytes) {
                n += 1;
                bytes += self.record_len;
            }
            let recs = (plan.first..plan.first + n).map(|s| (s, payload.as_slice()));
            let batch = Batch::build(plan.epoch, recs, Compression::Off).unwrap();
            let wire = self.frame.encode(&BusMessage::Batch(batch)).unwrap().len() as u64;
            self.sender.on_sent(&plan, n, wire, self.now);
            for s in plan.first..plan.first + n {
                let slot = &mut self.first_sent[s as usize];
                slot.get_or_insert(self.now);
            }
            self.sent.push(Sent {
                at: self.now,
                plan,
                records: n,
                wire_bytes: wire,
            });
            self.acks
                .push((self.now + self.ack_delay, plan.first, plan.first + n));
        }
        while self.sender.poll_event().is_some() {}
    }

    /// Advances to `until`, waking at every sender timeout and ack.
    pub fn run_until(&mut self, until: Nanos) {
        loop {
            self.deliver_acks();
            self.flush();
            let next_ack = self.acks.iter().map(|a| a.0).min();
            // Acks due now (an ack delay of 0) are delivered before time moves: skipping them
            // would leave the window full until the retransmit timer, a stall of the model,
            // not of the sender. The byte bucket bounds what one instant can send, so this
            // terminates.
            if next_ack.is_some_and(|t| t <= self.now) {
                continue;
            }
            let next = [self.sender.poll_timeout(), next_ack]
                .into_iter()
                .flatten()
                .filter(|&t| t > self.now)
                .min();
            match next {
                Some(t) if t <= until => self.now = t,
                _ => {
                    self.now = until;
                    self.deliver_acks();
                    self.flush();
                    return;
                }
            }
        }
    }

    fn deliver_acks(&mut self) {
        let now = self.now;
        let (due, rest): (Vec<_>, Vec<_>) = self.acks.drain(..).partition(|a| a.0 <= now);
        self.acks = rest;
        for (_, first, end) in due {
            let sack: RangeSet = std::iter::once(first..end).collect();
            // Cumulative point 0 (from the epoch start) plus the range: the sender must
            // handle selective acks alone.
            let ack = Ack {
                epoch: 1,
                next: if first == 0 { end } else { 0 },
                sack: if first == 0 { RangeSet::new() } else { sack },
            };
            self.sender.handle(BusMessage::Ack(ack), now);
        }
    }
}
