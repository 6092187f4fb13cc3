//! A monitored node as records name it.

use super::alloc::string::String;
use crate::node::NodeKey;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use serde::{Deserialize, Serialize};

/// A node: address on a VLAN (the kernel's [`NodeKey`]), plus its inventory name when known so
/// that operators read names, not only addresses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeRef {
    /// Outermost VLAN id, 0 when untagged.
    pub vlan: u16,
    /// IPv4 nodes are `IpAddr::V4` (not IPv4-mapped IPv6): one spelling per node.
    pub addr: IpAddr,
    pub name: Option<String>,
}

impl NodeRef {
    pub fn new(vlan: u16, addr: IpAddr, name: Option<String>) -> Self {
        Self { vlan, addr, name }
    }

    /// From a kernel key; an IPv4-mapped address becomes `IpAddr::V4`.
    pub fn from_key(key: &NodeKey, name: Option<String>) -> Self {
        let v6 = Ipv6Addr::from(key.addr);
        let addr = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        Self::new(key.vlan, addr, name)
    }

    /// The kernel key of this node (IPv4 mapped into IPv6).
    pub fn key(&self) -> NodeKey {
        let addr = match self.addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6,
        };
        NodeKey::new(addr.octets(), self.vlan)
    }
}

impl From<Ipv4Addr> for NodeRef {
    fn from(a: Ipv4Addr) -> Self {
        Self::new(0, IpAddr::V4(a), None)
    }
}
