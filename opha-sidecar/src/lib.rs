//! opha's userspace sidecar.

pub mod dump;
pub mod loader;
pub mod ring;
