//! Run-time configuration the sidecar writes without reattaching.

use aya_ebpf::{macros::map, maps::Array};
use opha_common::ports::{PortConfig, TCP_PORT_WORDS, tcp_port_word};

#[map]
pub static OPHA_PORTS: Array<PortConfig> = Array::pinned(1, 0);

/// Bitmap of TCP service-check ports.
#[map]
pub static OPHA_TCP_PORTS: Array<u64> = Array::pinned(TCP_PORT_WORDS, 0);

#[inline(always)]
pub fn ports() -> Option<&'static PortConfig> {
    OPHA_PORTS.get(0)
}

#[inline(always)]
pub fn is_tcp_check_port(port: u16) -> bool {
    let (word, bit) = tcp_port_word(port);
    match OPHA_TCP_PORTS.get(word) {
        Some(w) => *w & bit != 0,
        None => false,
    }
}
