//! The receiver's side of the API's poller config endpoints (`/api/v1/pollers/...`, see
//! [`opha_api::poller_config`]): an [`opha_api::poller_config::ConfigOps`] over
//! [`Shared::push_config`], [`Shared::config_status`] and the fencing state.
//!
//! Only the active primary may push: a push is refused (409) unless this receiver is a
//! primary that acts for the poller now ([`Shared::acting_term`]). The check is advisory for
//! the operator (a push stored here is only ever sent while this primary acts, with its term,
//! and the poller refuses a stale term), so losing the role right after the check is safe.

use std::sync::{Arc, Weak};

use opha_api::poller_config::{
    ConfigFailure, ConfigOps, ConfigProblem, ConfigStatus, PollerConfigView, PushRefusal,
};
use opha_common::wire::{PeerId, PeerRole};

use super::Shared;
use super::config_push::PollerConfigStatus;

/// Holds the receiver's state weakly: the API is part of that state, so a strong reference
/// would keep it alive forever.
pub struct ReceiverConfigOps(Weak<Shared>);

impl ReceiverConfigOps {
    pub fn new(shared: &Arc<Shared>) -> Self {
        Self(Arc::downgrade(shared))
    }
}

fn convert(shared: &Shared, poller: &PeerId, s: PollerConfigStatus) -> ConfigStatus {
    ConfigStatus {
        poller: s.poller,
        desired_version: s.desired_version,
        running_version: s.running_version,
        pending_version: s.pending_version,
        last_failure: s.last_failure.map(|f| ConfigFailure {
            version: f.version,
            kind: f.kind.to_string(),
            reason: f.reason,
        }),
        connected: s.connected,
        acting: shared.acting_term(poller).is_some(),
    }
}

impl ConfigOps for ReceiverConfigOps {
    /// Every poller of the registry, by id.
    fn statuses(&self) -> Vec<ConfigStatus> {
        let Some(shared) = self.0.upgrade() else {
            return Vec::new();
        };
        shared
            .registry
            .keys()
            .map(|p| convert(&shared, p, shared.config_status(p)))
            .collect()
    }

    fn get(&self, poller: &PeerId) -> Option<PollerConfigView> {
        let shared = self.0.upgrade()?;
        if !shared.registry.contains_key(poller) {
            return None;
        }
        Some(PollerConfigView {
            desired: shared
                .configs
                .desired(poller)
                .map(|d| (d.version, d.config)),
            status: convert(&shared, poller, shared.config_status(poller)),
        })
    }

    /// Blocking (the config is fsynced before its version is answered); the API calls it on
    /// a blocking thread.
    fn push(&self, poller: &PeerId, text: &str) -> Result<u64, PushRefusal> {
        let Some(shared) = self.0.upgrade() else {
            return Err(PushRefusal::NotActive("the receiver is stopping".into()));
        };
        if !shared.registry.contains_key(poller) {
            return Err(PushRefusal::UnknownPoller);
        }
        if shared.role != PeerRole::Primary {
            return Err(PushRefusal::NotActive(format!(
                "{} is a mirror; push at the poller's active primary",
                shared.me
            )));
        }
        if shared.acting_term(poller).is_none() {
            return Err(PushRefusal::NotActive(format!(
                "{} does not act as the active primary of {poller} now; push at the primary \
                 {poller} streams to",
                shared.me
            )));
        }
        shared.push_config(poller, text).map_err(|e| {
            PushRefusal::Invalid(
                e.problems
                    .into_iter()
                    .map(|p| ConfigProblem {
                        key: p.key,
                        message: p.message,
                        line: p.at.map(|(l, _)| l),
                        column: p.at.map(|(_, c)| c),
                    })
                    .collect(),
            )
        })
    }
}
