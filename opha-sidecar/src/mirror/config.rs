//! `[mirror]` in a mirror's receiver config: which poller it stands in for and when.
//!
//! ```toml
//! [mirror]
//! poller = "poller-1"             # the paired poller (also in [[poller]])
//! takeover_after = "30s"          # poller silence before an automatic promotion
//! return_after = "0s"             # poller streaming again this long before giving back
//! poller_config = "poller.toml"   # how the mirror polls on its own interface
//! state_file = "mirror-state.json" # default: <store.dir>/mirror-state.json
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use opha_common::wire::PeerId;
use serde::{Deserialize, Serialize};

use super::promotion::PromotionConfig;
use crate::config::{Problem, units};

/// `[mirror]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSection {
    /// The poller this mirror is paired with.
    pub poller: PeerId,
    #[serde(default = "default_takeover", with = "units::duration")]
    pub takeover_after: Duration,
    #[serde(default, with = "units::duration")]
    pub return_after: Duration,
    /// The poller config the mirror polls with (its `interface`, prefixes, ports, intervals;
    /// its `[[receiver]]`/`[bus]` are used while promoted). Relative to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poller_config: Option<PathBuf>,
    /// Where the reported node states and the role are persisted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
}

fn default_takeover() -> Duration {
    Duration::from_secs(30)
}

/// File name of the default `state_file` in the store directory.
pub const STATE_FILE: &str = "mirror-state.json";

impl MirrorSection {
    pub fn promotion_config(&self) -> PromotionConfig {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        PromotionConfig {
            takeover_after: ns(self.takeover_after),
            return_after: ns(self.return_after),
        }
    }

    /// Makes relative paths absolute against `base_dir`.
    pub fn resolve(&mut self, base_dir: &Path) {
        for p in [&mut self.poller_config, &mut self.state_file]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base_dir.join(&*p);
            }
        }
    }

    /// The state file (default in `store_dir`).
    pub fn state_file(&self, store_dir: &Path) -> PathBuf {
        self.state_file
            .clone()
            .unwrap_or_else(|| store_dir.join(STATE_FILE))
    }

    /// Rules of the section; `registered`: whether `poller` is in `[[poller]]`.
    pub fn validate(&self, registered: bool, p: &mut Vec<Problem>) {
        if self.takeover_after.is_zero() {
            p.push(Problem::new("mirror.takeover_after", "must be above 0"));
        }
        if !registered {
            p.push(Problem::new(
                "mirror.poller",
                format!(
                    "{} is not in [[poller]]: the mirror must receive its poller's stream",
                    self.poller
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults() {
        let m: MirrorSection = toml::from_str("poller = \"poller-1\"\n").unwrap();
        assert_eq!(m.takeover_after, Duration::from_secs(30));
        assert_eq!(m.promotion_config().return_after, 0);
        let m: MirrorSection = toml::from_str(
            "poller = \"poller-1\"\ntakeover_after = \"5s\"\nreturn_after = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(m.promotion_config().takeover_after, 5_000_000_000);
        assert!(toml::from_str::<MirrorSection>("poller = \"p\"\nbogus = 1\n").is_err());
        let mut p = Vec::new();
        m.validate(false, &mut p);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key, "mirror.poller");
    }
}
