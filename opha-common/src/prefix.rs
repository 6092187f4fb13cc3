//! Monitored prefixes: the `OPHA_PREFIXES` LPM trie.

/// The data part of an LPM trie key: VLAN id (big endian, always matched in full) then the
/// address (IPv4 mapped into IPv6). The trie's prefix length counts `16 + address bits`, so a
/// prefix applies to one VLAN only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixKeyData {
    pub vlan_be: [u8; 2],
    pub addr: [u8; 16],
}

/// Bits of the VLAN part of the key.
pub const PREFIX_VLAN_BITS: u32 = 16;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixValue {
    /// Tenant the nodes of this prefix belong to; never 0 for a configured prefix.
    pub tenant: u32,
    pub flags: u32,
}

crate::impl_pod!(PrefixKeyData, PrefixValue);
