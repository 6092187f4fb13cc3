//! opha's userspace sidecar.

pub mod aggregate;
pub mod config;
pub mod daemons;
pub mod decode;
pub mod dump;
pub mod ingest;
pub mod inventory;
pub mod loader;
pub mod logdump;
pub mod mirror;
pub mod poller;
pub mod receiver;
pub mod ring;
