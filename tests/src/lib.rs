//! Test harness shared by the integration tests, the lab and the benchmarks: packet builders,
//! network namespaces, pinned-instance guards and the root check.

pub mod browser;
pub mod checker;
pub mod home;
pub mod netns;
pub mod packets;
pub mod pins;
pub mod pollgen;
pub mod privilege;
pub mod wan;
