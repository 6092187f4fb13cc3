//! Types shared by the kernel programs (`opha-ebpf`) and userspace (`opha-sidecar`).
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, has no implicit padding and is
//! built from fixed-size integers, so both sides agree on its layout. The `user` feature adds
//! `aya::Pod` implementations so userspace can use them as map keys and values.
#![no_std]

pub mod inflight;
pub mod node;
pub mod ports;
pub mod prefix;
pub mod ringbuf;
pub mod stats;
#[cfg(feature = "user")]
pub mod wire;

/// Directory under bpffs where each instance pins its maps and links:
/// `/sys/fs/bpf/opha/<instance>/`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/opha";

/// Names of the kernel programs in the object file.
pub const PROG_INGRESS: &str = "opha_ingress";
pub const PROG_EGRESS: &str = "opha_egress";

/// Implements `aya::Pod` for plain-old-data types when building for userspace.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_pod {
    ($($t:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C), has no padding and every bit pattern is valid.
            unsafe impl aya::Pod for $t {}
        )+
    };
}

// Layouts the kernel and userspace must agree on, checked at compile time.
const _: () = {
    assert!(core::mem::size_of::<node::NodeKey>() == 24);
    assert!(core::mem::size_of::<inflight::InflightKey>() == 32);
    assert!(core::mem::size_of::<node::NodeCounters>() == 3 * 176 + 16);
    assert!(core::mem::size_of::<ports::PortConfig>() == 24);
    assert!(core::mem::size_of::<prefix::PrefixKeyData>() == 18);
};
