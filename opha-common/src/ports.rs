//! Run-time configuration: the `OPHA_PORTS` array (one entry) and the `OPHA_TCP_PORTS` bitmap.

pub const DEFAULT_SNMP_PORT: u16 = 161;
pub const DEFAULT_TRAP_PORT: u16 = 162;
pub const DEFAULT_SYSLOG_PORT: u16 = 514;

/// Bytes of a trap or syslog payload copied into the ring buffer.
pub const SNAP_LEN: usize = 512;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortConfig {
    pub snmp_port: u16,
    pub trap_port: u16,
    pub syslog_port: u16,
    pub _pad: u16,
    /// Bytes of trap and syslog payload copied to the ring buffer, 1..=SNAP_LEN.
    pub snap_len: u32,
    /// Set by the loader once it has written the configuration; until then the programs count
    /// packets as seen and nothing else.
    pub configured: u32,
    /// Bumped (never 0 once prefixes are set) each time the monitored prefixes change. Nodes
    /// cache their tenant with the generation it was looked up in, so a known node skips the
    /// LPM lookup until the prefixes change.
    pub prefix_gen: u32,
    pub _pad2: u32,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            snmp_port: DEFAULT_SNMP_PORT,
            trap_port: DEFAULT_TRAP_PORT,
            syslog_port: DEFAULT_SYSLOG_PORT,
            _pad: 0,
            snap_len: SNAP_LEN as u32,
            configured: 1,
            prefix_gen: 0,
            _pad2: 0,
        }
    }
}

/// The TCP service-check ports are a 65536-bit bitmap stored as `TCP_PORT_WORDS` u64 array
/// entries: one array lookup per TCP packet, no hashing.
pub const TCP_PORT_WORDS: u32 = 1024;

#[inline(always)]
pub const fn tcp_port_word(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1u64 << (port & 63))
}

crate::impl_pod!(PortConfig);
