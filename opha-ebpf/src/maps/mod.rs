//! Maps, one file per family. Maps that hold state are pinned by name, so a restarted sidecar
//! reopens them where it left them. Sizes here are defaults; the loader can override them.

pub mod config;
pub mod events;
pub mod inflight;
pub mod nodes;
pub mod prefixes;
pub mod stats;
pub mod userspace;
