//! Turning kernel ring-buffer records (traps and syslog datagrams) into [`Event`]s.
//!
//! Pure and I/O-free: [`decode`] takes a [`RingRecord`] and a [`DecodeContext`] (clock offset,
//! id seed) and always returns exactly one event, so nothing the kernel copied is ever dropped:
//!
//! - SNMP notifications ([`trap`]): v1 Trap-PDU, v2c SNMPv2-Trap and InformRequest, and the
//!   same PDUs in unencrypted SNMPv3 messages, decoded with the `snmp-parser` crate (rusticata,
//!   the parser Suricata uses) into [`EventKind::Trap`]. v1 traps are translated per RFC 3584
//!   §3.1 so that every trap carries an `snmpTrapOID` and the SNMPv2 varbind list.
//! - Syslog ([`syslog`]): RFC 5424 and RFC 3164 into [`EventKind::Syslog`], headers parsed with
//!   the `syslog_loose` crate behind a strict PRI check.
//! - Anything else becomes [`EventKind::Undecodable`] with the captured bytes (hex in JSON) and
//!   the reason in `details`. A record the kernel cut at its snap length (`cap_len < orig_len`)
//!   says so in `details`.
//!
//! The tenant is the kernel's (`RingRecord::tenant`, from the monitored-prefix map): nothing in
//! a packet can choose it. The subject is the sending node (source address and VLAN); its
//! inventory name is left `None` for the pipeline to fill in.
//!
//! # Severity
//!
//! | input | severity |
//! | --- | --- |
//! | trap linkDown, egpNeighborLoss | major |
//! | trap authenticationFailure | minor |
//! | trap coldStart, warmStart | warning |
//! | trap linkUp | info |
//! | any other trap (enterprise-specific: its meaning is in a MIB the poller does not have) | warning |
//! | syslog 0 emergency, 1 alert | critical |
//! | syslog 2 critical | major |
//! | syslog 3 error | minor |
//! | syslog 4 warning | warning |
//! | syslog 5 notice, 6 informational, 7 debug | info |
//! | undecodable | warning |

pub mod syslog;
pub mod trap;

use std::net::{IpAddr, Ipv6Addr};

use opha_common::node::NodeKey;
use opha_common::ringbuf::{RingKind, RingRecord};
use opha_common::wire::{
    Bytes, Event, EventId, EventKind, NodeRef, RawSource, Severity, Subject, TenantId,
};

/// What decoding needs besides the record: how to turn kernel timestamps into wall-clock time,
/// and a seed that makes event ids unique to this poller and boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeContext {
    /// Unix time minus `CLOCK_MONOTONIC` (the kernel's `bpf_ktime_get_ns`), nanoseconds.
    pub mono_to_unix_ns: i128,
    /// Mixed into every event id.
    pub id_seed: u128,
}

impl DecodeContext {
    /// Samples both clocks now. The seed hashes `poller` (its peer id) and the kernel's boot id,
    /// so ids differ across pollers and across reboots (where monotonic timestamps restart), yet
    /// a record read twice (after a crash before the ring buffer's consumer position moved) gets
    /// the same id both times.
    pub fn new(poller: &str) -> Self {
        let boot_id = std::fs::read("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let mut h = Fnv128::new();
        h.write(b"opha-decode-v1");
        h.write_len_prefixed(poller.as_bytes());
        h.write_len_prefixed(&boot_id);
        Self {
            mono_to_unix_ns: mono_to_unix_offset_ns(),
            id_seed: h.finish(),
        }
    }

    /// Call again after the wall clock steps (NTP) to refresh the offset: ids do not depend on
    /// it, so a record decoded before and after still gets the same id.
    pub fn resample_clock(&mut self) {
        self.mono_to_unix_ns = mono_to_unix_offset_ns();
    }

    /// A fixed context (tests, replays).
    pub const fn fixed(mono_to_unix_ns: i128, id_seed: u128) -> Self {
        Self {
            mono_to_unix_ns,
            id_seed,
        }
    }

    /// Unix milliseconds of a kernel timestamp (0 if the clocks say before 1970).
    pub fn time_ms(&self, ts_ns: u64) -> u64 {
        let unix_ns = i128::from(ts_ns) + self.mono_to_unix_ns;
        u64::try_from(unix_ns.max(0) / 1_000_000).unwrap_or(u64::MAX)
    }

    /// The id of the event decoded from `record`: a stable hash of the seed and every field of
    /// the record, so it is the same however often the record is decoded.
    pub fn event_id(&self, record: &RingRecord) -> EventId {
        let mut h = Fnv128::new();
        h.write(&self.id_seed.to_be_bytes());
        h.write(&record.ts_ns.to_le_bytes());
        h.write(&record.ifindex.to_le_bytes());
        h.write(&record.tenant.to_le_bytes());
        h.write(&record.src);
        h.write(&record.vlan.to_le_bytes());
        h.write(&record.src_port.to_le_bytes());
        h.write(&record.dst_port.to_le_bytes());
        h.write(&[record.kind]);
        h.write(&record.orig_len.to_le_bytes());
        h.write_len_prefixed(record.payload());
        EventId::from_u128(h.finish())
    }
}

/// Unix time minus `CLOCK_MONOTONIC`, sampled now.
fn mono_to_unix_offset_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = if rc == 0 {
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    } else {
        0
    };
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    unix - mono
}

/// FNV-1a, 128 bits: stable across Rust releases (unlike `DefaultHasher`), and ids need no
/// resistance to attackers (an attacker cannot choose the kernel timestamp they are hashed with).
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn write_len_prefixed(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_le_bytes());
        self.write(bytes);
    }

    fn finish(&self) -> u128 {
        self.0
    }
}

/// Why a payload could not be decoded (becomes the `details` of an undecodable event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable(pub String);

/// What a payload decoder produces: the kind, its severity and the details text.
pub(crate) struct Decoded {
    pub kind: EventKind,
    pub severity: Severity,
    pub details: String,
}

/// Decodes one ring-buffer record into an event. Never fails and never panics: whatever cannot
/// be decoded becomes an [`EventKind::Undecodable`] event with the raw bytes.
pub fn decode(record: &RingRecord, ctx: &DecodeContext) -> Event {
    let from = source_addr(record);
    let payload = record.payload();
    let truncated = truncation_note(record);
    let (source, result) = match kind_of(record) {
        Some(RingKind::Trap) => (RawSource::Trap, guarded(|| trap::decode(payload, from))),
        Some(RingKind::Syslog) => (RawSource::Syslog, guarded(|| syslog::decode(payload, from))),
        None => (
            RawSource::Trap,
            Err(Undecodable(format!(
                "unknown ring record kind {} (neither trap nor syslog)",
                record.kind
            ))),
        ),
    };
    let decoded = match result {
        Ok(mut d) => {
            if let Some(note) = &truncated {
                d.details.push_str(" [");
                d.details.push_str(note);
                d.details.push(']');
            }
            d
        }
        Err(Undecodable(reason)) => {
            let what = match source {
                RawSource::Trap => "trap",
                RawSource::Syslog => "syslog",
            };
            let mut details = format!(
                "undecodable {what} packet from {from} ({} bytes captured): {reason}",
                payload.len()
            );
            if let Some(note) = &truncated {
                details.push_str(" [");
                details.push_str(note);
                details.push(']');
            }
            Decoded {
                kind: EventKind::Undecodable {
                    source,
                    from,
                    raw: Bytes::from(payload),
                },
                severity: Severity::Warning,
                details,
            }
        }
    };
    Event {
        id: ctx.event_id(record),
        time_ms: ctx.time_ms(record.ts_ns),
        tenant: TenantId(record.tenant),
        subject: Subject::Node(NodeRef::from_key(
            &NodeKey::new(record.src, record.vlan),
            None,
        )),
        kind: decoded.kind,
        severity: decoded.severity,
        details: decoded.details,
    }
}

fn kind_of(record: &RingRecord) -> Option<RingKind> {
    match record.kind {
        k if k == RingKind::Trap as u8 => Some(RingKind::Trap),
        k if k == RingKind::Syslog as u8 => Some(RingKind::Syslog),
        _ => None,
    }
}

/// The sender, IPv4 unmapped (one spelling per node, as in [`NodeRef`]).
fn source_addr(record: &RingRecord) -> IpAddr {
    let v6 = Ipv6Addr::from(record.src);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

fn truncation_note(record: &RingRecord) -> Option<String> {
    let captured = record.payload().len();
    let orig = usize::from(record.orig_len);
    (captured < orig)
        .then(|| format!("truncated: {captured} of {orig} bytes captured (kernel snap length)"))
}

/// Runs a third-party parser so that a panic inside it (a bug we cannot fix here) becomes an
/// undecodable event instead of taking the pipeline down: defence in depth, the fuzz tests
/// find none.
fn guarded(f: impl FnOnce() -> Result<Decoded, Undecodable>) -> Result<Decoded, Undecodable> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(Undecodable("decoder panicked".into())))
}
