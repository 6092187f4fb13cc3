//! Feeding the Home view's [`LiveHub`] (docs/api.md, "Feeding it"): what a commit made
//! durable, the pollers' stream states, and this receiver's own card.
//!
//! Cost on the commit path: one pass over a job's records to pick out events, service states,
//! heartbeats and daemon health (metrics, the bulk, are skipped); events and service states
//! are copied only while someone watches the live stream (heartbeats and health always, they
//! keep the hub's peer cards current and are few). Publishing is a broadcast send: it never
//! waits for a client.

use std::time::Duration;

use opha_api::live::{LiveHub, PeerView, StreamState};
use opha_common::wire::{DaemonHealth, Event, PeerId, PeerRole, PeerStatus, Record, ServiceState};
use tokio::sync::watch;

use super::{Shared, now_ms, stopped};

/// How often this receiver's own card is published.
pub const OWN_CARD_EVERY: Duration = Duration::from_secs(10);

/// The publishable records of one commit job, copied before the records go to the committer.
pub struct Pending<'a> {
    hub: Option<&'a LiveHub>,
    /// Whether anyone watches: events and service states are copied only then.
    watched: bool,
    events: Vec<(u64, Event)>,
    services: Vec<ServiceState>,
    heartbeats: Vec<PeerStatus>,
    daemons: Vec<DaemonHealth>,
}

impl<'a> Pending<'a> {
    pub fn new(hub: Option<&'a LiveHub>) -> Self {
        Self {
            watched: hub.is_some_and(|h| h.subscribers() > 0),
            hub,
            events: Vec::new(),
            services: Vec::new(),
            heartbeats: Vec::new(),
            daemons: Vec::new(),
        }
    }

    /// Picks out what the hub takes from `records` (seq, record) of one scope.
    pub fn collect(&mut self, records: &[(u64, Record)]) {
        if self.hub.is_none() {
            return;
        }
        for (seq, r) in records {
            match r {
                Record::Event(e) if self.watched => self.events.push((*seq, e.clone())),
                Record::ServiceState(s) if self.watched => self.services.push(s.clone()),
                Record::PeerStatus(s) => self.heartbeats.push(s.clone()),
                Record::DaemonHealth(d) => self.daemons.push(d.clone()),
                _ => {}
            }
        }
    }

    /// Publishes after the commit is durable. `fresh`: no record of the job was a duplicate
    /// in the store. Otherwise which ones were new is not known, and events and service
    /// states are left out rather than shown twice (the bus receiver drops resent records
    /// before they get here, so this is rare; the page's next summary reload covers it).
    /// Heartbeats and health merge into the peer cards, so repeating them is harmless.
    pub fn publish(self, poller: &PeerId, epoch: u64, fresh: bool) {
        let Some(hub) = self.hub else { return };
        if fresh {
            for (seq, e) in &self.events {
                hub.publish_event(poller, epoch, *seq, e);
            }
            for s in &self.services {
                hub.publish_service(poller, s);
            }
        }
        for s in &self.heartbeats {
            hub.publish_heartbeat(s);
        }
        for d in &self.daemons {
            hub.publish_daemon(poller, d);
        }
    }
}

/// A poller connection's stream state as the hub shows it: catching up (with its lag, as
/// `opha_receiver_poller_lag_records`) from the handshake until the first time nothing is
/// outstanding, streaming from then on (a batch in flight is not a backlog).
#[derive(Debug, Default)]
pub struct Link {
    caught_up: bool,
}

impl Link {
    pub fn update(&mut self, shared: &Shared, poller: &PeerId, lag: u64) {
        let Some(hub) = &shared.live else { return };
        self.caught_up |= lag == 0;
        let state = if self.caught_up {
            StreamState::Streaming
        } else {
            StreamState::CatchingUp { lag_records: lag }
        };
        // Only pollers open record streams (checked at connection).
        hub.set_link(poller, PeerRole::Poller, state);
    }
}

/// A poller connection ended: disconnected, unless a newer connection of the poller has
/// replaced it (that one's state stands) or it never got as far as the handshake.
pub fn disconnected(shared: &Shared, poller: &PeerId, conn: &quinn::Connection) {
    let Some(hub) = &shared.live else { return };
    let current = shared
        .sessions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(poller)
        .is_none_or(|s| s.conn.stable_id() == conn.stable_id());
    if current && hub.link(poller.as_str()).is_some_and(|s| s.is_connected()) {
        hub.set_link(
            poller,
            PeerRole::Poller,
            StreamState::Disconnected { since_ms: now_ms() },
        );
    }
}

/// This receiver's own card (`stream: local`), now and every [`OWN_CARD_EVERY`] (its
/// heartbeat time is the publication's) until `stop`.
pub async fn own_card(
    hub: std::sync::Arc<LiveHub>,
    me: PeerId,
    role: PeerRole,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let mut v = PeerView::new(me.as_str());
        v.role = Some(role);
        v.version = Some(env!("CARGO_PKG_VERSION").to_string());
        v.heartbeat_ms = Some(now_ms());
        v.stream = Some(StreamState::Local);
        hub.publish_peer(v);
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(OWN_CARD_EVERY) => {}
        }
    }
}
