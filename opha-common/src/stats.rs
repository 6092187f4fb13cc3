//! Global statistics: the `OPHA_STATS` per-CPU array, one u64 per `Stat`.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Every packet either program saw.
    PacketsSeen = 0,
    /// Packets parsed down to a transport header (or ICMP).
    Parsed = 1,
    /// Responses matched to an in-flight request.
    Matched = 2,
    /// Packets that could not be parsed (truncated headers, bad BER, too many extension
    /// headers); passed unchanged.
    Malformed = 3,
    /// Responses without an in-flight request (late after eviction, duplicate, unsolicited).
    UnmatchedResponses = 4,
    /// Requests whose key was already in flight (a retransmission with the same id).
    InflightReplaced = 5,
    /// Requests inserted into the in-flight map.
    InflightInserted = 6,
    /// Ring buffer reservations that failed: a trap or syslog record lost in the kernel.
    RingbufDrops = 7,
    /// Nodes that could not be added because the node map was full.
    NodeMapFull = 8,
    /// Non-first IPv4/IPv6 fragments: counted and skipped.
    Fragments = 9,
    /// Traffic that is not polling (other ports, protocols, directions).
    NonPolling = 10,
    /// Polling-shaped traffic to or from addresses outside the monitored prefixes.
    OutsidePrefix = 11,
    TrapsCopied = 12,
    SyslogCopied = 13,
    /// In-flight inserts that failed (should never happen with an LRU map).
    InflightInsertFailed = 14,
    /// ICMP errors about one of our requests, attributed to the node.
    IcmpErrors = 15,
}

pub const STAT_COUNT: u32 = 16;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::PacketsSeen,
        Stat::Parsed,
        Stat::Matched,
        Stat::Malformed,
        Stat::UnmatchedResponses,
        Stat::InflightReplaced,
        Stat::InflightInserted,
        Stat::RingbufDrops,
        Stat::NodeMapFull,
        Stat::Fragments,
        Stat::NonPolling,
        Stat::OutsidePrefix,
        Stat::TrapsCopied,
        Stat::SyslogCopied,
        Stat::InflightInsertFailed,
        Stat::IcmpErrors,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Stat::PacketsSeen => "packets_seen",
            Stat::Parsed => "parsed",
            Stat::Matched => "matched",
            Stat::Malformed => "malformed",
            Stat::UnmatchedResponses => "unmatched_responses",
            Stat::InflightReplaced => "inflight_replaced",
            Stat::InflightInserted => "inflight_inserted",
            Stat::RingbufDrops => "ringbuf_drops",
            Stat::NodeMapFull => "node_map_full",
            Stat::Fragments => "fragments",
            Stat::NonPolling => "non_polling",
            Stat::OutsidePrefix => "outside_prefix",
            Stat::TrapsCopied => "traps_copied",
            Stat::SyslogCopied => "syslog_copied",
            Stat::InflightInsertFailed => "inflight_insert_failed",
            Stat::IcmpErrors => "icmp_errors",
        }
    }
}

/// Counters userspace keeps in the pinned `OPHA_USERSPACE` array (see `UserStat`).
pub const USER_STAT_COUNT: u32 = 4;

/// Indexes of `OPHA_USERSPACE`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserStat {
    /// In-flight entries removed by the sweep as timed out.
    InflightSwept = 0,
}
