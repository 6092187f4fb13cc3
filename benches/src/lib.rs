//! Benchmarks run by `cargo xtask bench`.

pub mod bus;
pub mod bus_env;
pub mod bus_failover;
pub mod bus_nats;
pub mod bus_wan;
pub mod ebpf;
pub mod host;
pub mod log;
