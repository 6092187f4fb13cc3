//! Exact per-node counts of what the generator sent and received, per protocol class, in the
//! kernel programs' terms so the two can be compared one for one.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use opha_common::node::ProtoClass;
use serde_json::{Value as Json, json};

/// Counters of one node and class while the generator runs.
#[derive(Default)]
pub(crate) struct ClassAtomics {
    pub polls: AtomicU64,
    pub sent: AtomicU64,
    pub responses: AtomicU64,
    pub matched: AtomicU64,
    pub late: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
    pub failed: AtomicU64,
    pub malformed: AtomicU64,
    pub local_errors: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub rtt_ns_sum: AtomicU64,
    pub rtt_ns_max: AtomicU64,
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl ClassAtomics {
    pub fn rtt(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        add(&self.rtt_ns_sum, ns);
        self.rtt_ns_max.fetch_max(ns, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClassStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClassStats {
            polls: g(&self.polls),
            sent: g(&self.sent),
            responses: g(&self.responses),
            matched: g(&self.matched),
            late: g(&self.late),
            timeouts: g(&self.timeouts),
            errors: g(&self.errors),
            failed: g(&self.failed),
            malformed: g(&self.malformed),
            local_errors: g(&self.local_errors),
            bytes_out: g(&self.bytes_out),
            bytes_in: g(&self.bytes_in),
            rtt_ns_sum: g(&self.rtt_ns_sum),
            rtt_ns_max: g(&self.rtt_ns_max),
        }
    }
}

/// The three classes of one node, indexed by `ProtoClass as usize`.
#[derive(Default)]
pub(crate) struct NodeAtomics {
    pub class: [ClassAtomics; 3],
    /// Next ICMP echo sequence number to this node.
    pub icmp_seq: AtomicU64,
}

impl NodeAtomics {
    pub fn snapshot(&self) -> NodeStats {
        NodeStats {
            icmp: self.class[ProtoClass::IcmpEcho as usize].snapshot(),
            snmp: self.class[ProtoClass::Snmp as usize].snapshot(),
            tcp: self.class[ProtoClass::TcpCheck as usize].snapshot(),
        }
    }
}

/// What the generator did for one node and class.
///
/// In the kernel programs' terms: `sent` = requests (for TCP every SYN, retransmissions
/// included), `responses` = responses (every SNMP Response/Report, ICMP echo reply, TCP
/// SYN-ACK or RST from the node, also late ones), `errors` = errors (SNMP error-status != 0,
/// TCP RST, TCP checks failed by an ICMP unreachable), `bytes_out`/`bytes_in` = whole frames
/// with Ethernet header (not counted for TCP, whose SYN options the kernel chooses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClassStats {
    /// Polls started (an SNMP poll is a Get plus walks; a ping or a TCP check is one).
    pub polls: u64,
    /// Request packets that left.
    pub sent: u64,
    /// Well-formed responses received from the node.
    pub responses: u64,
    /// Responses that answered a request still waiting for them.
    pub matched: u64,
    /// Responses to nothing waiting: after their request timed out, or duplicates.
    pub late: u64,
    /// Requests not answered within the timeout.
    pub timeouts: u64,
    pub errors: u64,
    /// Requests given up after all retries.
    pub failed: u64,
    /// Datagrams from the node that did not decode.
    pub malformed: u64,
    /// Requests that could not be sent (socket errors).
    pub local_errors: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub rtt_ns_sum: u64,
    pub rtt_ns_max: u64,
}

impl ClassStats {
    pub fn add(&mut self, o: &ClassStats) {
        self.polls += o.polls;
        self.sent += o.sent;
        self.responses += o.responses;
        self.matched += o.matched;
        self.late += o.late;
        self.timeouts += o.timeouts;
        self.errors += o.errors;
        self.failed += o.failed;
        self.malformed += o.malformed;
        self.local_errors += o.local_errors;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.rtt_ns_sum += o.rtt_ns_sum;
        self.rtt_ns_max = self.rtt_ns_max.max(o.rtt_ns_max);
    }

    /// Mean RTT of the matched responses, in ms.
    pub fn rtt_avg_ms(&self) -> Option<f64> {
        (self.matched > 0).then(|| self.rtt_ns_sum as f64 / self.matched as f64 / 1e6)
    }

    pub fn to_json(&self) -> Json {
        json!({
            "polls": self.polls,
            "sent": self.sent,
            "responses": self.responses,
            "matched": self.matched,
            "late": self.late,
            "timeouts": self.timeouts,
            "errors": self.errors,
            "failed": self.failed,
            "malformed": self.malformed,
            "local_errors": self.local_errors,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "rtt_avg_ms": self.rtt_avg_ms(),
            "rtt_max_ms": self.rtt_ns_max as f64 / 1e6,
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStats {
    pub icmp: ClassStats,
    pub snmp: ClassStats,
    pub tcp: ClassStats,
}

impl NodeStats {
    pub fn class(&self, c: ProtoClass) -> &ClassStats {
        match c {
            ProtoClass::IcmpEcho => &self.icmp,
            ProtoClass::Snmp => &self.snmp,
            ProtoClass::TcpCheck => &self.tcp,
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default)]
pub struct PollStats {
    /// From the first request to the end of sending (the drain and linger not included).
    pub elapsed: Duration,
    pub nodes: BTreeMap<IpAddr, NodeStats>,
    /// Datagrams from addresses that are not targets.
    pub unknown_sources: u64,
    /// Jobs (polls, or single requests at a fixed rate) started.
    pub jobs: u64,
    /// At a fixed rate: jobs that were due but not started (in-flight bound reached, or the
    /// host too slow); they are dropped, never sent late.
    pub behind: u64,
    /// At a fixed rate: the rate asked for, in requests per second.
    pub rate: Option<f64>,
}

impl PollStats {
    pub fn total(&self, c: ProtoClass) -> ClassStats {
        let mut t = ClassStats::default();
        for n in self.nodes.values() {
            t.add(n.class(c));
        }
        t
    }

    /// Requests per second actually sent, all classes.
    pub fn sent_per_second(&self) -> f64 {
        let sent: u64 = ProtoClass::ALL.iter().map(|&c| self.total(c).sent).sum();
        sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self, per_node: bool) -> Json {
        let mut v = json!({
            "elapsed_s": self.elapsed.as_secs_f64(),
            "nodes": self.nodes.len(),
            "jobs": self.jobs,
            "behind": self.behind,
            "rate": self.rate,
            "sent_per_s": self.sent_per_second(),
            "unknown_sources": self.unknown_sources,
            "total": {
                "icmp": self.total(ProtoClass::IcmpEcho).to_json(),
                "snmp": self.total(ProtoClass::Snmp).to_json(),
                "tcp": self.total(ProtoClass::TcpCheck).to_json(),
            },
        });
        if per_node {
            v["per_node"] = self
                .nodes
                .iter()
                .map(|(a, n)| {
                    json!({
                        "addr": a.to_string(),
                        "icmp": n.icmp.to_json(),
                        "snmp": n.snmp.to_json(),
                        "tcp": n.tcp.to_json(),
                    })
                })
                .collect();
        }
        v
    }
}
