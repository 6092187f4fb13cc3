//! Monitored prefixes, keyed by VLAN and address, mapping to tenant and flags.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{LpmTrie, lpm_trie::Key},
};
use opha_common::{
    node::NodeKey,
    prefix::{PREFIX_VLAN_BITS, PrefixKeyData, PrefixValue},
};

#[map]
pub static OPHA_PREFIXES: LpmTrie<PrefixKeyData, PrefixValue> =
    LpmTrie::pinned(16384, BPF_F_NO_PREALLOC);

#[inline(always)]
pub fn lookup(node: &NodeKey) -> Option<&'static PrefixValue> {
    let key = Key::new(
        PREFIX_VLAN_BITS + 128,
        PrefixKeyData {
            vlan_be: node.vlan.to_be_bytes(),
            addr: node.addr,
        },
    );
    OPHA_PREFIXES.get(&key)
}
