//! Benchmarks run by `cargo xtask bench`.

pub mod ebpf;
pub mod host;
pub mod log;
